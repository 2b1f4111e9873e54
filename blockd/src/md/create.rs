//! `create-md`: initialise a metadata area, refusing to destroy a filesystem or
//! existing metadata unless forced.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

use hablock_proto::types::{DiskState, Uuids};

use super::store::open_rw;
use super::superblock::SB_MAGIC;
use super::{Bitmap, Layout, MdError, MdIo, MdLocation, Superblock};
use super::{AL_SLOT_BYTES, BLOCK_BYTES, MAX_RESOURCE_NAME, SB_SLOT_BYTES};

/// What [`create_md`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateReport {
    /// Bytes of data the resource exposes.
    pub usable_bytes: u64,
    /// Size of the whole metadata area.
    pub md_bytes: u64,
    /// Bytes of bitmap pages.
    pub bitmap_bytes: u64,
    /// Where the metadata went, for humans ("internal, at byte N of /dev/vdb").
    pub location: String,
}

impl fmt::Display for CreateReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "metadata created ({}): {} usable bytes, {} bytes of metadata ({} of bitmap)",
            self.location, self.usable_bytes, self.md_bytes, self.bitmap_bytes
        )
    }
}

/// Bytes from the device start that [`detect_signature`] looks at.
pub const SIGNATURE_PROBE_BYTES: usize = 65536 + 4096;

fn le32(b: &[u8], at: usize) -> u32 {
    b.get(at..at + 4)
        .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
        .unwrap_or(0)
}

/// Names a filesystem (or other content worth keeping) from the first bytes of a
/// device, e.g. `Some("an ext4 filesystem")`. `head` may be shorter than
/// [`SIGNATURE_PROBE_BYTES`] (a small device); missing bytes match nothing.
pub fn detect_signature(head: &[u8]) -> Option<&'static str> {
    let at = |off: usize, magic: &[u8]| head.get(off..off + magic.len()) == Some(magic);
    // ext2/3/4: superblock at 1024, s_magic 0xEF53 at +56; features at +92/+96/+100.
    if at(1080, &[0x53, 0xef]) {
        let compat = le32(head, 1024 + 0x5c);
        let incompat = le32(head, 1024 + 0x60);
        let ro_compat = le32(head, 1024 + 0x64);
        // extents, 64bit, mmp, flex_bg, ea_inode, dirdata, csum_seed, largedir,
        // inline_data, encrypt | huge_file, gdt_csum, dir_nlink, extra_isize, quota,
        // bigalloc, metadata_csum.
        if incompat & 0x1_f7c0 != 0 || ro_compat & 0x7f8 != 0 {
            return Some("an ext4 filesystem");
        }
        if compat & 0x4 != 0 {
            return Some("an ext3 filesystem");
        }
        return Some("an ext2 filesystem");
    }
    if at(0, b"XFSB") {
        return Some("an xfs filesystem");
    }
    if at(65536 + 64, b"_BHRfS_M") {
        return Some("a btrfs filesystem");
    }
    if at(0, b"LUKS\xba\xbe") {
        return Some("a LUKS encrypted volume");
    }
    if at(4086, b"SWAPSPACE2") {
        return Some("a swap area");
    }
    if at(512, b"EFI PART") {
        return Some("a GPT partition table");
    }
    None
}

/// Reads up to [`SIGNATURE_PROBE_BYTES`] from the start of a device of `size` bytes.
fn read_head(dev: &File, size: u64, path: &Path) -> Result<Vec<u8>, MdError> {
    let n = size.min(SIGNATURE_PROBE_BYTES as u64) as usize;
    let mut head = vec![0u8; n];
    MdIo::read_exact_at(dev, &mut head, 0)
        .map_err(|e| MdError::io(path, "read device start", e))?;
    Ok(head)
}

/// Describes existing hablock metadata in the superblock slots at `offsets`.
fn existing_md(
    dev: &File,
    offsets: [u64; 2],
    size: u64,
    path: &Path,
) -> Result<Option<String>, MdError> {
    let mut found = None;
    for off in offsets {
        if off + SB_SLOT_BYTES > size {
            continue;
        }
        let mut buf = vec![0u8; SB_SLOT_BYTES as usize];
        MdIo::read_exact_at(dev, &mut buf, off)
            .map_err(|e| MdError::io(path, "read superblock", e))?;
        match Superblock::decode(&buf, "superblock") {
            Ok(sb) => {
                let newer = matches!(&found, Some((seq, _)) if *seq >= sb.seq);
                if !newer {
                    let what = format!(
                        "hablock metadata of resource '{}' (current uuid {:016X})",
                        sb.resource, sb.uuids.current
                    );
                    found = Some((sb.seq, what));
                }
            }
            Err(_) if buf.starts_with(&SB_MAGIC) && found.is_none() => {
                found = Some((0, "damaged hablock metadata".to_owned()));
            }
            Err(_) => {}
        }
    }
    Ok(found.map(|(_, w)| w))
}

/// Initialises the metadata of a resource whose backing device is `backing`.
///
/// Writes a bitmap with every bit set (all out of sync until the initial sync), empty
/// activity-log slots and a superblock (uuids all 0, disk Inconsistent, flags 0, a
/// random device id) into both slots, with `fdatasync` before and after the
/// superblock. Without `force` it refuses ([`MdError::WouldOverwrite`]) when the
/// device that receives the metadata holds a filesystem signature (for internal
/// metadata the filesystem would also be truncated) or hablock metadata.
///
/// External metadata leaves the backing device untouched (that is how replication is
/// put under an existing filesystem), so only the metadata file is checked; a missing
/// metadata file is created, a short regular one extended.
pub fn create_md(
    backing: &Path,
    loc: &MdLocation,
    resource: &str,
    force: bool,
) -> Result<CreateReport, MdError> {
    if resource.len() > MAX_RESOURCE_NAME {
        return Err(MdError::Invalid(format!(
            "resource name '{resource}' is longer than {MAX_RESOURCE_NAME} bytes"
        )));
    }
    let (dev, dev_path, layout, location): (File, PathBuf, Layout, String) = match loc {
        MdLocation::Internal => {
            let mut dev = open_rw(backing)?;
            let size = dev
                .size()
                .map_err(|e| MdError::io(backing, "get size", e))?;
            let layout = Layout::internal(size).ok_or(MdError::TooSmall {
                path: backing.to_path_buf(),
                size,
                min: Layout::MIN_MD_BYTES + BLOCK_BYTES,
            })?;
            let location = format!(
                "internal, at byte {} of {}",
                layout.area_offset,
                backing.display()
            );
            (dev, backing.to_path_buf(), layout, location)
        }
        MdLocation::External(md) => {
            let size = super::store::device_size(backing)?;
            let layout = Layout::external(size).ok_or(MdError::TooSmall {
                path: backing.to_path_buf(),
                size,
                min: BLOCK_BYTES,
            })?;
            let dev = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(md)
                .map_err(|e| MdError::io(md, "open", e))?;
            let location = format!("external, at the start of {}", md.display());
            (dev, md.clone(), layout, location)
        }
    };
    let mut dev = dev;
    let size = dev
        .size()
        .map_err(|e| MdError::io(&dev_path, "get size", e))?;

    if !force {
        let head = read_head(&dev, size, &dev_path)?;
        if let Some(what) = detect_signature(&head) {
            return Err(MdError::WouldOverwrite {
                path: dev_path,
                what: what.to_owned(),
            });
        }
        let offsets = [layout.sb_slot_offset(0), layout.sb_slot_offset(1)];
        if let Some(what) = existing_md(&dev, offsets, size, &dev_path)? {
            return Err(MdError::WouldOverwrite {
                path: dev_path,
                what,
            });
        }
    }

    if size < layout.area_offset + layout.md_bytes() {
        let is_file = dev
            .metadata()
            .map_err(|e| MdError::io(&dev_path, "stat", e))?
            .file_type()
            .is_file();
        if !is_file {
            return Err(MdError::TooSmall {
                path: dev_path,
                size,
                min: layout.md_bytes(),
            });
        }
        dev.set_len(layout.area_offset + layout.md_bytes())
            .map_err(|e| MdError::io(&dev_path, "extend metadata file", e))?;
    }

    let write = |buf: &[u8], off: u64, what: &str| {
        MdIo::write_all_at(&dev, buf, off)
            .map_err(|e| MdError::io(&dev_path, format!("write {what}"), e))
    };
    let sync = |what: &str| {
        // fsync policy: a failed fdatasync fails create-md; nothing is reported created.
        MdIo::sync_data(&dev)
            .map_err(|e| MdError::io(&dev_path, format!("fdatasync after {what}"), e))
    };

    // 1. Invalidate old superblocks and activity log, write the all-set bitmap.
    let tail = vec![0u8; (2 * AL_SLOT_BYTES + 2 * SB_SLOT_BYTES) as usize];
    write(
        &tail,
        layout.al_slot_offset(0),
        "activity log and superblock slots",
    )?;
    let mut bm = Bitmap::new(layout.bits());
    bm.set_all();
    let mut page = [0u8; BLOCK_BYTES as usize];
    for p in 0..layout.bitmap_bytes / BLOCK_BYTES {
        // Pages past the bitmap's last bit (internal layout slack) are written as zero.
        bm.encode_page(p, &mut page);
        write(&page, layout.area_offset + p * BLOCK_BYTES, "bitmap")?;
    }
    sync("bitmap")?;

    // 2. The superblock, into both slots (seq 1 in A, seq 2 in B).
    let mut sb = Superblock {
        seq: 1,
        usable_bytes: layout.usable_bytes,
        bitmap_bytes: layout.bitmap_bytes,
        uuids: Uuids::default(),
        disk: DiskState::Inconsistent,
        flags: 0,
        primary_since_ms: 0,
        device_id: rand::random::<u64>() | 1,
        resource: resource.to_owned(),
    };
    write(&sb.encode()?, layout.sb_slot_offset(0), "superblock slot A")?;
    sb.seq = 2;
    write(&sb.encode()?, layout.sb_slot_offset(1), "superblock slot B")?;
    sync("superblock")?;

    tracing::info!(resource, %location, usable = layout.usable_bytes, "created metadata");
    Ok(CreateReport {
        usable_bytes: layout.usable_bytes,
        md_bytes: layout.md_bytes(),
        bitmap_bytes: layout.bitmap_bytes,
        location,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_from_bytes() {
        let mut head = vec![0u8; SIGNATURE_PROBE_BYTES];
        assert_eq!(detect_signature(&head), None);
        assert_eq!(detect_signature(&[]), None);
        head[1080] = 0x53;
        head[1081] = 0xef;
        assert_eq!(detect_signature(&head), Some("an ext2 filesystem"));
        head[1024 + 0x5c] = 0x4;
        assert_eq!(detect_signature(&head), Some("an ext3 filesystem"));
        head[1024 + 0x60] = 0x40;
        assert_eq!(detect_signature(&head), Some("an ext4 filesystem"));
        let mut head = vec![0u8; SIGNATURE_PROBE_BYTES];
        head[65536 + 64..65536 + 72].copy_from_slice(b"_BHRfS_M");
        assert_eq!(detect_signature(&head), Some("a btrfs filesystem"));
        assert_eq!(detect_signature(&head[..65536 + 70]), None, "short device");
        assert_eq!(detect_signature(b"XFSB"), Some("an xfs filesystem"));
    }
}
