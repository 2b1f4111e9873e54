//! The superblock: one 4 KiB slot (two on disk, written alternately) holding the
//! geometry, generation identifiers, disk state and role flags of a resource.
//!
//! ```text
//! offset  size  field
//! 0       8     magic "HABLKMD\0"
//! 8       4     format version u32 (= 1)
//! 12      8     seq u64 (the valid slot with the highest seq wins)
//! 20      8     usable_bytes u64
//! 28      4     block_size u32 (= 4096)
//! 32      4     al_extent_bytes u32 (= 4 MiB)
//! 36      4     al_slot_bytes u32 (= 8192)
//! 40      8     bitmap_bytes u64
//! 48      8     uuid current u64
//! 56      8     uuid bitmap u64
//! 64      8     uuid history[0] u64
//! 72      8     uuid history[1] u64
//! 80      1     disk_state u8 (DiskState::to_wire)
//! 81      4     flags u32 (bit 0 PRIMARY, bit 1 SPLIT_BRAIN_VICTIM)
//! 85      8     primary_since_ms u64
//! 93      8     device_id u64
//! 101     2     name_len u16 (<= 64)
//! 103     n     resource name, UTF-8
//! 103+n   4     crc32c of bytes [0, 103+n)
//! ...           zero up to 4096
//! ```

use hablock_proto::types::{DiskState, Uuids};

use super::layout::bitmap_bytes_for;
use super::{
    MdError, AL_EXTENT_BYTES, AL_SLOT_BYTES, BLOCK_BYTES, MAX_RESOURCE_NAME, SB_SLOT_BYTES,
};

/// The superblock magic.
pub const SB_MAGIC: [u8; 8] = *b"HABLKMD\0";
/// The only metadata format version this build reads and writes.
pub const FORMAT_VERSION: u32 = 1;
/// Flag: the node is (or was, when it crashed) Primary. Set before becoming Primary,
/// cleared on a clean demote or stop; found set at open = "crashed primary".
pub const FLAG_PRIMARY: u32 = 1 << 0;
/// Flag (reserved): this node's changes were discarded by split-brain recovery.
pub const FLAG_SPLIT_BRAIN_VICTIM: u32 = 1 << 1;

/// Bytes before the name.
const FIXED_BYTES: usize = 103;

/// The decoded contents of a superblock slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Superblock {
    /// Write sequence number; [`super::MdStore::write_superblock`] sets it.
    pub seq: u64,
    /// Bytes of data the resource exposes.
    pub usable_bytes: u64,
    /// Bytes of bitmap pages in the area.
    pub bitmap_bytes: u64,
    /// Generation identifiers (all 0 = just created, never synced or promoted).
    pub uuids: Uuids,
    /// State of the local data.
    pub disk: DiskState,
    /// [`FLAG_PRIMARY`], [`FLAG_SPLIT_BRAIN_VICTIM`]; unknown bits are preserved.
    pub flags: u32,
    /// When this node last became Primary (ms since the Unix epoch), 0 if never.
    pub primary_since_ms: u64,
    /// Random identity of this metadata, chosen at `create-md`.
    pub device_id: u64,
    /// The resource name (at most 64 bytes).
    pub resource: String,
}

/// Bounds-checked little-endian reader; running out of bytes is corruption.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    what: &'static str,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], MdError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len());
        let Some(end) = end else {
            return Err(MdError::Corrupt {
                what: self.what,
                detail: format!(
                    "truncated at byte {} (record is {} bytes)",
                    self.pos,
                    self.buf.len()
                ),
            });
        };
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], MdError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    fn u8(&mut self) -> Result<u8, MdError> {
        Ok(self.array::<1>()?[0])
    }
    fn u16(&mut self) -> Result<u16, MdError> {
        Ok(u16::from_le_bytes(self.array()?))
    }
    fn u32(&mut self) -> Result<u32, MdError> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    fn u64(&mut self) -> Result<u64, MdError> {
        Ok(u64::from_le_bytes(self.array()?))
    }
}

fn corrupt(what: &'static str, detail: impl Into<String>) -> MdError {
    MdError::Corrupt {
        what,
        detail: detail.into(),
    }
}

impl Superblock {
    /// Encodes the superblock as one full 4 KiB slot.
    pub fn encode(&self) -> Result<Vec<u8>, MdError> {
        let name = self.resource.as_bytes();
        if name.len() > MAX_RESOURCE_NAME {
            return Err(MdError::Invalid(format!(
                "resource name of {} bytes (at most {MAX_RESOURCE_NAME})",
                name.len()
            )));
        }
        let mut b = Vec::with_capacity(SB_SLOT_BYTES as usize);
        b.extend_from_slice(&SB_MAGIC);
        b.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        b.extend_from_slice(&self.seq.to_le_bytes());
        b.extend_from_slice(&self.usable_bytes.to_le_bytes());
        b.extend_from_slice(&(BLOCK_BYTES as u32).to_le_bytes());
        b.extend_from_slice(&(AL_EXTENT_BYTES as u32).to_le_bytes());
        b.extend_from_slice(&(AL_SLOT_BYTES as u32).to_le_bytes());
        b.extend_from_slice(&self.bitmap_bytes.to_le_bytes());
        b.extend_from_slice(&self.uuids.current.to_le_bytes());
        b.extend_from_slice(&self.uuids.bitmap.to_le_bytes());
        b.extend_from_slice(&self.uuids.history[0].to_le_bytes());
        b.extend_from_slice(&self.uuids.history[1].to_le_bytes());
        b.push(self.disk.to_wire());
        b.extend_from_slice(&self.flags.to_le_bytes());
        b.extend_from_slice(&self.primary_since_ms.to_le_bytes());
        b.extend_from_slice(&self.device_id.to_le_bytes());
        b.extend_from_slice(&(name.len() as u16).to_le_bytes());
        b.extend_from_slice(name);
        let crc = crc32c::crc32c(&b);
        b.extend_from_slice(&crc.to_le_bytes());
        b.resize(SB_SLOT_BYTES as usize, 0);
        Ok(b)
    }

    /// Decodes one slot. Checks, in order: magic ([`MdError::BadMagic`]), version
    /// ([`MdError::UnsupportedVersion`]), length, checksum ([`MdError::BadChecksum`]),
    /// then field values ([`MdError::Corrupt`]). Never panics.
    pub fn decode(buf: &[u8], what: &'static str) -> Result<Superblock, MdError> {
        if buf.len() < SB_MAGIC.len() || buf[..SB_MAGIC.len()] != SB_MAGIC {
            return Err(MdError::BadMagic { what });
        }
        let mut r = Reader { buf, pos: 8, what };
        let version = r.u32()?;
        if version != FORMAT_VERSION {
            return Err(MdError::UnsupportedVersion {
                found: version,
                supported: FORMAT_VERSION,
            });
        }
        let seq = r.u64()?;
        let usable_bytes = r.u64()?;
        let block_size = r.u32()?;
        let al_extent = r.u32()?;
        let al_slot = r.u32()?;
        let bitmap_bytes = r.u64()?;
        let uuids = Uuids {
            current: r.u64()?,
            bitmap: r.u64()?,
            history: [r.u64()?, r.u64()?],
        };
        let disk = r.u8()?;
        let flags = r.u32()?;
        let primary_since_ms = r.u64()?;
        let device_id = r.u64()?;
        let name_len = usize::from(r.u16()?);
        if name_len > MAX_RESOURCE_NAME {
            return Err(corrupt(
                what,
                format!("resource name length {name_len} > {MAX_RESOURCE_NAME}"),
            ));
        }
        let name = r.take(name_len)?;
        let covered = r.pos;
        debug_assert_eq!(covered, FIXED_BYTES + name_len);
        let stored = r.u32()?;
        let computed = crc32c::crc32c(&buf[..covered]);
        if stored != computed {
            return Err(MdError::BadChecksum {
                what,
                stored,
                computed,
            });
        }
        if u64::from(block_size) != BLOCK_BYTES
            || u64::from(al_extent) != AL_EXTENT_BYTES
            || u64::from(al_slot) != AL_SLOT_BYTES
        {
            return Err(corrupt(
                what,
                format!("geometry block={block_size} al_extent={al_extent} al_slot={al_slot}"),
            ));
        }
        if usable_bytes == 0 || usable_bytes % BLOCK_BYTES != 0 {
            return Err(corrupt(what, format!("usable_bytes {usable_bytes}")));
        }
        if bitmap_bytes % BLOCK_BYTES != 0 || bitmap_bytes < bitmap_bytes_for(usable_bytes) {
            return Err(corrupt(
                what,
                format!("bitmap_bytes {bitmap_bytes} for usable_bytes {usable_bytes}"),
            ));
        }
        let disk = DiskState::from_wire(disk)
            .ok_or_else(|| corrupt(what, format!("disk state {disk}")))?;
        let resource = std::str::from_utf8(name)
            .map_err(|_| corrupt(what, "resource name is not UTF-8"))?
            .to_owned();
        Ok(Superblock {
            seq,
            usable_bytes,
            bitmap_bytes,
            uuids,
            disk,
            flags,
            primary_since_ms,
            device_id,
            resource,
        })
    }

    /// True when [`FLAG_PRIMARY`] is set (at open: the node crashed while Primary).
    pub fn was_primary(&self) -> bool {
        self.flags & FLAG_PRIMARY != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> Superblock {
        Superblock {
            seq: 7,
            usable_bytes: 0x1000_0000,
            bitmap_bytes: 0x2000,
            uuids: Uuids {
                current: 0x1122_3344_5566_7788,
                bitmap: 0x99,
                history: [0xaa, 0xbb],
            },
            disk: DiskState::UpToDate,
            flags: FLAG_PRIMARY,
            primary_since_ms: 1_700_000_000_000,
            device_id: 0x0102_0304_0506_0708,
            resource: "r0".into(),
        }
    }

    /// The frozen on-disk form of `sample()`. Changing it means a format change:
    /// bump FORMAT_VERSION instead.
    const GOLDEN: &[u8] = &[
        b'H', b'A', b'B', b'L', b'K', b'M', b'D', 0, // magic
        1, 0, 0, 0, // version
        7, 0, 0, 0, 0, 0, 0, 0, // seq
        0, 0, 0, 0x10, 0, 0, 0, 0, // usable_bytes 256 MiB
        0, 0x10, 0, 0, // block_size 4096
        0, 0, 0x40, 0, // al_extent_bytes 4 MiB
        0, 0x20, 0, 0, // al_slot_bytes 8192
        0, 0x20, 0, 0, 0, 0, 0, 0, // bitmap_bytes 8192
        0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11, // uuid current
        0x99, 0, 0, 0, 0, 0, 0, 0, // uuid bitmap
        0xaa, 0, 0, 0, 0, 0, 0, 0, // history[0]
        0xbb, 0, 0, 0, 0, 0, 0, 0, // history[1]
        3, // disk UpToDate
        1, 0, 0, 0, // flags PRIMARY
        0x00, 0x68, 0xe5, 0xcf, 0x8b, 0x01, 0, 0, // primary_since_ms 1.7e12
        8, 7, 6, 5, 4, 3, 2, 1, // device_id
        2, 0, b'r', b'0', // name
    ];

    #[test]
    fn golden_bytes() {
        let enc = sample().encode().unwrap();
        assert_eq!(enc.len(), 4096);
        assert_eq!(&enc[..GOLDEN.len()], GOLDEN);
        let crc = crc32c::crc32c(GOLDEN);
        assert_eq!(&enc[GOLDEN.len()..GOLDEN.len() + 4], &crc.to_le_bytes());
        assert_eq!(crc, GOLDEN_CRC);
        assert!(enc[GOLDEN.len() + 4..].iter().all(|&b| b == 0));
        assert_eq!(Superblock::decode(&enc, "sb").unwrap(), sample());
    }
    const GOLDEN_CRC: u32 = 0x17bb_6b40;

    #[test]
    fn corruption_is_typed() {
        let enc = sample().encode().unwrap();
        let mut b = enc.clone();
        b[0] ^= 1;
        assert!(matches!(
            Superblock::decode(&b, "sb"),
            Err(MdError::BadMagic { .. })
        ));
        let mut b = enc.clone();
        b[8] = 2;
        assert!(matches!(
            Superblock::decode(&b, "sb"),
            Err(MdError::UnsupportedVersion {
                found: 2,
                supported: 1
            })
        ));
        let mut b = enc.clone();
        b[8] = 0;
        assert!(matches!(
            Superblock::decode(&b, "sb"),
            Err(MdError::UnsupportedVersion { found: 0, .. })
        ));
        let mut b = enc.clone();
        b[50] ^= 0x40;
        assert!(matches!(
            Superblock::decode(&b, "sb"),
            Err(MdError::BadChecksum { .. })
        ));
        let mut b = enc.clone();
        b[101] = 65;
        assert!(matches!(
            Superblock::decode(&b, "sb"),
            Err(MdError::Corrupt { .. })
        ));
        assert!(matches!(
            Superblock::decode(&enc[..60], "sb"),
            Err(MdError::Corrupt { .. })
        ));
        // Valid crc, impossible disk state.
        let mut b = enc[..FIXED_BYTES + 2].to_vec();
        b[80] = 9;
        let crc = crc32c::crc32c(&b);
        b.extend_from_slice(&crc.to_le_bytes());
        assert!(matches!(
            Superblock::decode(&b, "sb"),
            Err(MdError::Corrupt { .. })
        ));
    }

    #[test]
    fn name_too_long_refused() {
        let mut sb = sample();
        sb.resource = "x".repeat(65);
        assert!(matches!(sb.encode(), Err(MdError::Invalid(_))));
        sb.resource = "x".repeat(64);
        assert_eq!(Superblock::decode(&sb.encode().unwrap(), "sb").unwrap(), sb);
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = Superblock::decode(&bytes, "sb");
        }

        #[test]
        fn decode_never_panics_with_magic(mut bytes in proptest::collection::vec(any::<u8>(), 8..300), v1 in any::<bool>()) {
            bytes[..8].copy_from_slice(&SB_MAGIC);
            if v1 && bytes.len() >= 12 {
                bytes[8..12].copy_from_slice(&1u32.to_le_bytes());
            }
            let _ = Superblock::decode(&bytes, "sb");
        }

        #[test]
        fn round_trip(seq: u64, usable in 1u64..1 << 40, cur: u64, bm: u64, h0: u64, h1: u64,
                      disk in 0u8..5, flags: u32, since: u64, id: u64, name in "[a-z0-9_-]{0,64}") {
            let usable = usable * BLOCK_BYTES;
            let sb = Superblock { seq, usable_bytes: usable, bitmap_bytes: bitmap_bytes_for(usable),
                uuids: Uuids { current: cur, bitmap: bm, history: [h0, h1] },
                disk: DiskState::from_wire(disk).unwrap(), flags, primary_since_ms: since,
                device_id: id, resource: name };
            prop_assert_eq!(Superblock::decode(&sb.encode().unwrap(), "sb").unwrap(), sb);
        }
    }
}
