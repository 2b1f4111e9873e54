//! The synchronous I/O the metadata store needs, behind a trait so tests can inject
//! faults (failed writes, failed `fdatasync`) at the I/O boundary.

use std::fs::File;
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::FileExt;

/// Positional, synchronous I/O on the device that holds the metadata area.
pub trait MdIo: Send {
    /// Reads exactly `buf.len()` bytes at `offset` (`pread`).
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Writes all of `buf` at `offset` (`pwrite`).
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Makes every completed write durable (`fdatasync`).
    fn sync_data(&self) -> io::Result<()>;
    /// The device size in bytes (for a block device, its `BLKGETSIZE64` size).
    fn size(&mut self) -> io::Result<u64>;
}

impl MdIo for File {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        FileExt::read_exact_at(self, buf, offset)
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        FileExt::write_all_at(self, buf, offset)
    }

    fn sync_data(&self) -> io::Result<()> {
        File::sync_data(self)
    }

    fn size(&mut self) -> io::Result<u64> {
        // Seeking to the end gives the size of regular files and block devices alike.
        self.seek(SeekFrom::End(0))
    }
}
