//! Where the metadata area sits and how big its parts are (see the module docs of
//! [`crate::md`] for the byte layout).

use std::path::PathBuf;

use super::bitmap::BITS_PER_PAGE;
use super::{AL_SLOT_BYTES, BLOCK_BYTES, SB_SLOT_BYTES};

/// Where a resource keeps its metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MdLocation {
    /// At the end of the backing device; the usable size shrinks accordingly.
    Internal,
    /// At the start of this separate file or device; the whole backing is usable.
    External(PathBuf),
}

/// Bytes after the bitmap: two activity-log slots and two superblock slots.
const TAIL_BYTES: u64 = 2 * AL_SLOT_BYTES + 2 * SB_SLOT_BYTES;

/// The computed geometry of one metadata area.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// Byte offset of the area on the device that holds it.
    pub area_offset: u64,
    /// Bytes of data the resource exposes (a multiple of 4 KiB).
    pub usable_bytes: u64,
    /// Bytes of bitmap pages (a multiple of 4 KiB, enough for `usable_bytes`).
    pub bitmap_bytes: u64,
}

/// Bitmap bytes (whole 4 KiB pages) needed to cover `usable` bytes of data.
pub fn bitmap_bytes_for(usable: u64) -> u64 {
    let bits = usable / BLOCK_BYTES;
    bits.div_ceil(BITS_PER_PAGE) * BLOCK_BYTES
}

impl Layout {
    /// Smallest area: one bitmap page plus the slots.
    pub const MIN_MD_BYTES: u64 = BLOCK_BYTES + TAIL_BYTES;

    /// Internal metadata on a backing device of `backing_size` bytes, or `None` if the
    /// device cannot hold at least one data block plus the metadata.
    ///
    /// The area ends at `backing_size` rounded down to 4 KiB. With `E` that end and
    /// `p` bitmap pages, `usable(p) = E - 24 KiB - p * 4 KiB`; we take the smallest
    /// `p` whose pages cover `usable(p)` (the fixed point of `p = pages(usable(p))`),
    /// which gives the largest usable size.
    pub fn internal(backing_size: u64) -> Option<Layout> {
        let end = backing_size / BLOCK_BYTES * BLOCK_BYTES;
        let usable_for = |pages: u64| -> Option<u64> {
            end.checked_sub(TAIL_BYTES + pages.checked_mul(BLOCK_BYTES)?)
        };
        let pages_for = |usable: u64| bitmap_bytes_for(usable) / BLOCK_BYTES;
        // pages(usable(p)) is non-increasing in p; start from an upper bound and
        // step down while a smaller p still covers its usable size.
        let mut p = pages_for(end).max(1);
        while p > 1 {
            match usable_for(p - 1) {
                Some(u) if pages_for(u) < p => p -= 1,
                _ => break,
            }
        }
        let usable = usable_for(p)?;
        if usable < BLOCK_BYTES || pages_for(usable) > p {
            return None;
        }
        Some(Layout {
            area_offset: usable,
            usable_bytes: usable,
            bitmap_bytes: p * BLOCK_BYTES,
        })
    }

    /// External metadata for a backing device of `backing_size` bytes, or `None` if
    /// the backing holds less than one block.
    pub fn external(backing_size: u64) -> Option<Layout> {
        let usable = backing_size / BLOCK_BYTES * BLOCK_BYTES;
        if usable == 0 {
            return None;
        }
        Some(Layout {
            area_offset: 0,
            usable_bytes: usable,
            bitmap_bytes: bitmap_bytes_for(usable),
        })
    }

    /// Size of the whole metadata area.
    pub fn md_bytes(&self) -> u64 {
        self.bitmap_bytes + TAIL_BYTES
    }

    /// Number of bitmap bits (data blocks).
    pub fn bits(&self) -> u64 {
        self.usable_bytes / BLOCK_BYTES
    }

    /// Device offset of activity-log slot `slot` (0 = A, 1 = B).
    pub fn al_slot_offset(&self, slot: u64) -> u64 {
        self.area_offset + self.bitmap_bytes + (slot & 1) * AL_SLOT_BYTES
    }

    /// Device offset of superblock slot `slot` (0 = A, 1 = B).
    pub fn sb_slot_offset(&self, slot: u64) -> u64 {
        self.area_offset + self.bitmap_bytes + 2 * AL_SLOT_BYTES + (slot & 1) * SB_SLOT_BYTES
    }

    /// Device offsets of the two superblock slots of internal metadata on a device
    /// of `backing_size` bytes (they do not depend on the bitmap size), or `None` if
    /// the device is smaller than two slots.
    pub fn internal_sb_offsets(backing_size: u64) -> Option<[u64; 2]> {
        let end = backing_size / BLOCK_BYTES * BLOCK_BYTES;
        let a = end.checked_sub(2 * SB_SLOT_BYTES)?;
        Some([a, a + SB_SLOT_BYTES])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_small_device() {
        // 1 MiB: 1 page, usable = 1 MiB - 28 KiB.
        let l = Layout::internal(1 << 20).unwrap();
        assert_eq!(l.bitmap_bytes, 4096);
        assert_eq!(l.usable_bytes, (1 << 20) - 28 * 1024);
        assert_eq!(l.area_offset + l.md_bytes(), 1 << 20);
        assert_eq!(
            l.sb_slot_offset(1) + SB_SLOT_BYTES,
            (1 << 20),
            "slot B ends the device"
        );
        assert_eq!(
            Layout::internal_sb_offsets(1 << 20).unwrap()[0],
            l.sb_slot_offset(0)
        );
    }

    #[test]
    fn internal_fixed_point_at_page_boundaries() {
        // One page covers exactly 128 MiB of data.
        let per_page = BITS_PER_PAGE * BLOCK_BYTES;
        for size in [
            per_page + TAIL_BYTES + 4096,
            per_page + TAIL_BYTES + 4096 + 1,
            per_page + TAIL_BYTES + 4095,
            per_page + TAIL_BYTES + 8192,
            10 * per_page,
            (1u64 << 40) + 12345,
        ] {
            let l = Layout::internal(size).unwrap();
            assert_eq!(l.usable_bytes % BLOCK_BYTES, 0);
            assert!(bitmap_bytes_for(l.usable_bytes) <= l.bitmap_bytes, "{size}");
            assert!(l.area_offset + l.md_bytes() <= size);
            assert_eq!(l.area_offset + l.md_bytes(), size / 4096 * 4096);
            // Maximal: one more block would need more pages than would fit.
            let bigger = l.usable_bytes + BLOCK_BYTES;
            assert!(bigger + bitmap_bytes_for(bigger) + TAIL_BYTES > size / 4096 * 4096);
        }
        let l = Layout::internal(per_page + TAIL_BYTES + 4096).unwrap();
        assert_eq!((l.usable_bytes, l.bitmap_bytes), (per_page, 4096));
    }

    #[test]
    fn too_small() {
        assert!(Layout::internal(0).is_none());
        assert!(Layout::internal(TAIL_BYTES + 4096).is_none());
        assert!(Layout::internal(TAIL_BYTES + 8192).is_some());
        assert!(Layout::external(4095).is_none());
        assert!(Layout::external(4096).is_some());
    }

    #[test]
    fn external() {
        let l = Layout::external(300 << 20).unwrap();
        assert_eq!(l.usable_bytes, 300 << 20);
        assert_eq!(l.bitmap_bytes, 3 * 4096);
        assert_eq!(l.sb_slot_offset(0), 3 * 4096 + 16384);
    }
}
