//! On-disk metadata of a resource: superblock (generation identifiers, disk state,
//! role flags), the persistent dirty bitmap and the activity log, plus `create-md`.
//!
//! All I/O here is synchronous (`pread`/`pwrite` + `fdatasync`); the daemon calls it
//! from a blocking thread. The pure pieces ([`Bitmap`], [`ActivityLog`], the codecs)
//! do no I/O at all.
//!
//! # Layout
//!
//! Internal metadata lives at the *end* of the backing device, external metadata at
//! the *start* of a separate file. The metadata area has the same layout in both
//! cases, offsets counted from the area start (`B` = bitmap bytes, a multiple of 4 KiB):
//!
//! ```text
//! offset        size     content
//! 0             B        dirty bitmap pages (4 KiB each; bit i = data block i of 4 KiB)
//! B             8 KiB    activity-log slot A
//! B + 8 KiB     8 KiB    activity-log slot B
//! B + 16 KiB    4 KiB    superblock slot A
//! B + 20 KiB    4 KiB    superblock slot B
//! B + 24 KiB             end of the area (= md_bytes)
//! ```
//!
//! - Internal: the area ends at the backing size rounded down to 4 KiB, so both
//!   superblock slots sit at fixed offsets from the device end. `usable_bytes` is the
//!   largest multiple of 4 KiB that fits before the area with a bitmap that covers it
//!   (see [`Layout::internal`]).
//! - External: the area starts at byte 0 of the metadata file; `usable_bytes` is the
//!   backing size rounded down to 4 KiB.
//!
//! The record grammars (all integers little-endian):
//!
//! ```text
//! superblock slot (4 KiB, zero padded):
//! // { magic "HABLKMD\0" | version u32 | seq u64 | usable_bytes u64 | block_size u32
//! //   | al_extent_bytes u32 | al_slot_bytes u32 | bitmap_bytes u64
//! //   | uuid current u64 | uuid bitmap u64 | uuid history[0] u64 | uuid history[1] u64
//! //   | disk_state u8 | flags u32 | primary_since_ms u64 | device_id u64
//! //   | name_len u16 | name [u8; name_len <= 64] | crc32c u32 (over all bytes before it) }
//! activity-log slot (8 KiB, zero padded):
//! // { magic "HABLKAL\0" | seq u64 | count u32 | [extent u32; count <= 2042]
//! //   | crc32c u32 (over all bytes before it) }
//! bitmap page (4 KiB):
//! // { [word u64; 512] }   bit i of the bitmap = bit (i % 64) of word i / 64
//! ```
//!
//! Superblock and activity-log writes alternate between their two slots (the slot is
//! chosen by `seq`); a reader takes the valid slot with the highest `seq`, so a torn
//! write leaves the previous record readable.
//!
//! # Version policy
//!
//! The superblock carries a format version ([`FORMAT_VERSION`], currently 1). A reader
//! refuses any other version with [`MdError::UnsupportedVersion`] (0 is never written;
//! a newer version may move fields, so it is not parsed at all). The version is checked
//! right after the magic, before the checksum, so a newer format is reported as such
//! and not as corruption. Fields are never reused; a format change bumps the version.
//!
//! # Durability (fsync policy)
//!
//! Every write method ends with `fdatasync` and returns only after it succeeded. If a
//! write or the `fdatasync` fails the error is returned, the in-memory view of the store
//! does not advance (same `seq`, bitmap pages stay dirty), and the caller must treat the
//! metadata as *not persisted*: it must not acknowledge the I/O that depended on it. A
//! retry rewrites the same bytes to the same slot/pages (never relies on a second
//! `fdatasync` to flush the first attempt's pages, which Linux may have dropped).

mod al;
mod bitmap;
mod create;
mod error;
mod io;
mod layout;
mod store;
mod superblock;

pub use al::{decode_al_slot, encode_al_slot, ActivityLog, AlError, AL_MAGIC, AL_MAX_EXTENTS};
pub use bitmap::{Bitmap, BITS_PER_PAGE};
pub use create::{create_md, detect_signature, CreateReport, SIGNATURE_PROBE_BYTES};
pub use error::MdError;
pub use io::MdIo;
pub use layout::{bitmap_bytes_for, Layout, MdLocation};
pub use store::{AreaKind, MdStore};
pub use superblock::{Superblock, FLAG_PRIMARY, FLAG_SPLIT_BRAIN_VICTIM, FORMAT_VERSION, SB_MAGIC};

/// Bytes of data covered by one bitmap bit (and the metadata page size).
pub const BLOCK_BYTES: u64 = 4096;
/// Bytes of data covered by one activity-log extent.
pub const AL_EXTENT_BYTES: u64 = 4 << 20;
/// Size of one activity-log slot.
pub const AL_SLOT_BYTES: u64 = 8192;
/// Size of one superblock slot.
pub const SB_SLOT_BYTES: u64 = 4096;
/// Longest resource name the superblock stores, in bytes.
pub const MAX_RESOURCE_NAME: usize = 64;
