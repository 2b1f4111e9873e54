//! The metadata layer's error type.

use std::io;
use std::path::PathBuf;

/// Errors of the metadata layer: I/O failures, typed corruption, refusals.
#[derive(Debug, thiserror::Error)]
pub enum MdError {
    /// A system call on the metadata or backing device failed.
    #[error("{path}: {op}: {source}")]
    Io {
        /// The file the operation was on.
        path: PathBuf,
        /// What was being done ("read superblock slot A", "fdatasync", ...).
        op: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// Neither superblock slot carries the metadata magic: this area was never
    /// initialised with `create-md` (or the device changed size since).
    #[error("{path}: no hablock metadata found (run `blockctl create-md`)")]
    NoMetadata {
        /// The device that was searched.
        path: PathBuf,
    },
    /// A record does not start with its magic.
    #[error("{what}: bad magic")]
    BadMagic {
        /// Which record.
        what: &'static str,
    },
    /// A record's crc32c does not match its contents.
    #[error("{what}: bad checksum (stored {stored:#010x}, computed {computed:#010x})")]
    BadChecksum {
        /// Which record.
        what: &'static str,
        /// The crc found on disk.
        stored: u32,
        /// The crc of the bytes found on disk.
        computed: u32,
    },
    /// The superblock has a format version this build does not read.
    #[error(
        "metadata format version {found} is not supported (this build reads version {supported})"
    )]
    UnsupportedVersion {
        /// The version on disk.
        found: u32,
        /// The version this build reads and writes.
        supported: u32,
    },
    /// A record passed its checksum but holds an impossible value.
    #[error("{what}: corrupt: {detail}")]
    Corrupt {
        /// Which record.
        what: &'static str,
        /// What is wrong.
        detail: String,
    },
    /// The metadata describes a different size than the device has now.
    #[error("{path}: metadata is for {recorded} usable bytes but the device now gives {actual}")]
    SizeMismatch {
        /// The device.
        path: PathBuf,
        /// Usable bytes recorded in the superblock.
        recorded: u64,
        /// Usable bytes the current device size gives.
        actual: u64,
    },
    /// The device is too small to hold any data plus the metadata.
    #[error("{path}: device of {size} bytes is too small (need at least {min})")]
    TooSmall {
        /// The device.
        path: PathBuf,
        /// Its size.
        size: u64,
        /// The minimum size.
        min: u64,
    },
    /// `create-md` found something it would destroy and `force` was not given.
    #[error("{path} holds {what}; refusing to overwrite it (use --force)")]
    WouldOverwrite {
        /// The device that holds it.
        path: PathBuf,
        /// What was found ("an ext4 filesystem", "hablock metadata of resource r0 ...").
        what: String,
    },
    /// The caller passed a value the metadata cannot hold.
    #[error("invalid metadata argument: {0}")]
    Invalid(String),
}

impl MdError {
    /// Wraps an I/O error with the file and operation it came from.
    pub fn io(path: impl Into<PathBuf>, op: impl Into<String>, source: io::Error) -> Self {
        MdError::Io {
            path: path.into(),
            op: op.into(),
            source,
        }
    }
}
