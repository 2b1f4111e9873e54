//! Local I/O on the backing device.
//!
//! Reads, writes and flushes go through an io_uring queue ([`super::uring`]), except a
//! small read or write of an otherwise idle resource, which its task does itself
//! ([`Backing::write_now`], [`Backing::read_now`]), and an UpToDate Primary's frontend
//! reads, which the ublk queue threads read on their own rings
//! ([`super::local_reads`]); FUA writes carry `RWF_DSYNC`. Reads and writes aligned to
//! 4 KiB go through a second descriptor opened with `O_DIRECT` (when the filesystem
//! allows it), bypassing the page cache; others use the page cache, which the kernel
//! keeps coherent with direct I/O (it flushes and invalidates the range around each
//! one), and range locks keep overlapping writes from racing. Aligned reads must bypass
//! the cache too: a direct write over cached pages cannot be issued without blocking,
//! so io_uring hands it to a worker thread (in the lab, a resync had cached the whole
//! device and every later write took that detour). Discards and write-zeroes (rare) run
//! on tokio's blocking pool. Where io_uring is unavailable the daemon says so and uses
//! positioned reads and writes on the blocking pool instead. Durability policy: a write
//! completes when the kernel has it (it survives a crash of blockd, not a power loss, exactly like a
//! disk with a volatile cache); FUA writes and flushes call `fdatasync` before they
//! complete, and a failed `fdatasync` is reported to the issuer as an I/O error, never
//! retried (the kernel may have dropped the dirty pages).

use super::uring::{UringDone, UringOp, UringQueue};
use crate::aligned;
use crate::engine::IoOutcome;
use bytes::Bytes;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::sync::Arc;

/// Called with an operation's outcome, on whichever thread finished it (the ring thread
/// or tokio's blocking pool), so it must not block.
pub type Done = Box<dyn FnOnce(IoOutcome) + Send>;

/// The backing device of a resource.
#[derive(Debug, Clone)]
pub struct Backing {
    file: Arc<File>,
    /// The same device opened with O_DIRECT, where the filesystem allows it.
    direct: Option<Arc<File>>,
    is_block_device: bool,
    uring: Option<UringQueue>,
}

/// The errno of an I/O error (EIO when it has none).
pub fn errno(e: &io::Error) -> i32 {
    e.raw_os_error().unwrap_or(libc::EIO)
}

impl Backing {
    /// Opens the backing device read-write.
    pub fn open(path: &Path) -> io::Result<Backing> {
        let file = Arc::new(OpenOptions::new().read(true).write(true).open(path)?);
        let is_block_device = file.metadata()?.file_type().is_block_device();
        let direct = match OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(path)
        {
            Ok(f) => Some(Arc::new(f)),
            Err(e) => {
                tracing::info!(path = %path.display(), "O_DIRECT not available ({e}); writing through the page cache");
                None
            }
        };
        let uring = match UringQueue::start(file.clone(), direct.clone()) {
            Ok(q) => Some(q),
            Err(e) => {
                tracing::warn!(path = %path.display(), "io_uring unavailable ({e}); using the blocking thread pool");
                None
            }
        };
        Ok(Backing {
            file,
            direct,
            is_block_device,
            uring,
        })
    }

    /// The `O_DIRECT` descriptor, where the filesystem allows one.
    pub fn direct_file(&self) -> Option<&Arc<File>> {
        self.direct.as_ref()
    }

    /// Logical and physical block sizes of the backing device (512 and 4096 for a
    /// regular file): what a frontend reports as its own limits.
    pub fn block_sizes(&self) -> (u32, u32) {
        if !self.is_block_device {
            return (512, 4096);
        }
        let fd = self.file.as_raw_fd();
        let (mut logical, mut physical): (libc::c_int, libc::c_uint) = (0, 0);
        // SAFETY: both ioctls write one integer of the given type into a live local.
        let ok = unsafe {
            libc::ioctl(fd, BLKSSZGET, &mut logical as *mut libc::c_int) == 0
                && libc::ioctl(fd, BLKPBSZGET, &mut physical as *mut libc::c_uint) == 0
        };
        if ok && logical >= 512 {
            (logical as u32, physical.max(logical as u32))
        } else {
            (512, 4096)
        }
    }

    /// Reads `len` bytes at `offset`.
    pub fn read(&self, offset: u64, len: u32, done: Done) {
        if let Some(q) = &self.uring {
            return q.submit(UringOp::Read { offset, len }, finish(done));
        }
        let file = self.file.clone();
        run(
            move || {
                let mut buf = vec![0u8; len as usize];
                file.read_exact_at(&mut buf, offset)?;
                Ok(Some(buf.into()))
            },
            done,
        )
    }

    /// `data` ready for the O_DIRECT descriptor, and whether it is: block-aligned writes
    /// bypass the page cache, their buffer copied to an aligned one only if it is not
    /// aligned already.
    fn for_direct(&self, offset: u64, data: Bytes) -> (Bytes, bool) {
        if self.direct.is_none() || !aligned::is_direct_ready(offset, &data) {
            return (data, false);
        }
        let data = if aligned::is_aligned(&data) {
            data
        } else {
            aligned::AlignedBuf::copy_of(&data).map_or(data, aligned::AlignedBuf::into_bytes)
        };
        let direct = aligned::is_aligned(&data);
        (data, direct)
    }

    /// Writes `data` at `offset`; with `fua`, makes it durable first.
    pub fn write(&self, offset: u64, data: Bytes, fua: bool, done: Done) {
        if let Some(q) = &self.uring {
            let (data, direct) = self.for_direct(offset, data);
            let op = UringOp::Write {
                offset,
                data,
                dsync: fua,
                direct,
            };
            return q.submit(op, finish(done));
        }
        let file = self.file.clone();
        run(
            move || {
                file.write_all_at(&data, offset)?;
                if fua {
                    file.sync_data()?;
                }
                Ok(None)
            },
            done,
        )
    }

    /// Writes `data` at `offset` on the calling thread and returns when the kernel has
    /// it (durable first with `fua`), through the same descriptors as [`Backing::write`].
    /// For a small write when nothing else is in flight: handing it to the ring thread
    /// and its completion back costs two thread hand-overs, more than the write itself.
    pub fn write_now(&self, offset: u64, data: Bytes, fua: bool) -> IoOutcome {
        let (buf, direct) = self.for_direct(offset, data);
        let direct = self
            .direct
            .as_ref()
            .filter(|_| direct)
            .map(|d| d.as_raw_fd());
        let flags = if fua { libc::RWF_DSYNC } else { 0 };
        let mut done = 0;
        while done < buf.len() {
            // A short O_DIRECT write that stopped off a block boundary is finished
            // through the page cache, as in the ring.
            let fd = match direct {
                Some(fd) if done.is_multiple_of(aligned::ALIGN) => fd,
                _ => self.file.as_raw_fd(),
            };
            let rest = &buf[done..];
            let iov = libc::iovec {
                iov_base: rest.as_ptr() as *mut libc::c_void,
                iov_len: rest.len(),
            };
            let Ok(pos) = libc::off_t::try_from(offset + done as u64) else {
                return IoOutcome::Failed(libc::EINVAL);
            };
            // SAFETY: one iovec describing `rest`, which outlives the call; the kernel
            // only reads from it.
            let n = unsafe { libc::pwritev2(fd, &iov, 1, pos, flags) };
            match n {
                n if n > 0 => done += n as usize,
                0 => return IoOutcome::Failed(libc::EIO),
                _ => {
                    let e = io::Error::last_os_error();
                    if e.kind() != io::ErrorKind::Interrupted {
                        return IoOutcome::Failed(errno(&e));
                    }
                }
            }
        }
        IoOutcome::Done
    }

    /// Reads `len` bytes at `offset` on the calling thread, through the same
    /// descriptors as [`Backing::read`] (see [`Backing::write_now`] for when).
    pub fn read_now(&self, offset: u64, len: u32) -> IoOutcome {
        let len = len as usize;
        let direct = self
            .direct
            .as_ref()
            .filter(|_| aligned::is_direct_range(offset, len));
        let file = direct.unwrap_or(&self.file);
        match aligned::AlignedBuf::read_at(file.as_fd(), len, offset) {
            Ok(b) => IoOutcome::Data(b.into_bytes()),
            Err(e) => IoOutcome::Failed(errno(&e)),
        }
    }

    /// Makes every completed write durable.
    pub fn flush(&self, done: Done) {
        if let Some(q) = &self.uring {
            return q.submit(UringOp::Sync, finish(done));
        }
        let file = self.file.clone();
        run(
            move || {
                file.sync_data()?;
                Ok(None)
            },
            done,
        )
    }

    /// Discards (`zeroes = false`) or zeroes a range. Discarded ranges read back as
    /// zeroes here, so both nodes stay identical whatever the device does with discards.
    pub fn trim(&self, offset: u64, len: u64, zeroes: bool, fua: bool, done: Done) {
        let file = self.file.clone();
        let block = self.is_block_device;
        run(
            move || {
                zero_range(&file, block, offset, len, zeroes)?;
                if fua {
                    file.sync_data()?;
                }
                Ok(None)
            },
            done,
        )
    }
}

fn outcome(r: io::Result<Option<Bytes>>) -> IoOutcome {
    match r {
        Ok(Some(data)) => IoOutcome::Data(data),
        Ok(None) => IoOutcome::Done,
        Err(e) => IoOutcome::Failed(errno(&e)),
    }
}

/// Calls an operation's [`Done`] exactly once: with its outcome, or with EIO if it is
/// dropped unanswered (the thread running the operation panicked or went away), so
/// the resource never waits for an operation forever.
struct Answer(Option<Done>);

impl Answer {
    fn send(mut self, o: IoOutcome) {
        if let Some(done) = self.0.take() {
            done(o);
        }
    }
}

impl Drop for Answer {
    fn drop(&mut self) {
        if let Some(done) = self.0.take() {
            done(IoOutcome::Failed(libc::EIO));
        }
    }
}

fn finish(done: Done) -> UringDone {
    let answer = Answer(Some(done));
    Box::new(move |r| answer.send(outcome(r)))
}

/// Runs `f` on tokio's blocking pool (the caller is on a runtime thread).
fn run<F>(f: F, done: Done)
where
    F: FnOnce() -> io::Result<Option<Bytes>> + Send + 'static,
{
    let answer = Answer(Some(done));
    tokio::task::spawn_blocking(move || answer.send(outcome(f())));
}

/// Both discard and write-zeroes leave zeroes: a discard that left stale data on one
/// node only would make the copies differ.
fn zero_range(
    file: &File,
    block_device: bool,
    offset: u64,
    len: u64,
    _zeroes: bool,
) -> io::Result<()> {
    let fd = file.as_raw_fd();
    if block_device {
        // BLKZEROOUT uses the device's write-zeroes (or a discard that guarantees
        // zeroes); BLKDISCARD alone may leave stale data.
        let range: [u64; 2] = [offset, len];
        // SAFETY: `range` is a valid [u64; 2] that outlives the call; the ioctl reads it.
        let rc = unsafe { libc::ioctl(fd, BLKZEROOUT, range.as_ptr()) };
        if rc == 0 {
            return Ok(());
        }
        return write_zeroes(file, offset, len);
    }
    let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
    let (Ok(off), Ok(l)) = (i64::try_from(offset), i64::try_from(len)) else {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    };
    // SAFETY: plain syscall on an owned, open descriptor.
    let rc = unsafe { libc::fallocate(fd, mode, off, l) };
    if rc == 0 {
        return Ok(());
    }
    write_zeroes(file, offset, len)
}

/// `_IO(0x12, 127)`: zero a byte range of a block device.
const BLKZEROOUT: libc::c_ulong = 0x127f;
/// `_IO(0x12, 104)`: logical block size.
const BLKSSZGET: libc::c_ulong = 0x1268;
/// `_IO(0x12, 123)`: physical block size.
const BLKPBSZGET: libc::c_ulong = 0x127b;

fn write_zeroes(file: &File, offset: u64, len: u64) -> io::Result<()> {
    let zero = vec![0u8; 1 << 20];
    let mut done = 0;
    while done < len {
        let n = (len - done).min(zero.len() as u64);
        file.write_all_at(&zero[..n as usize], offset + done)?;
        done += n;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::oneshot;

    /// Runs one operation and waits for its outcome.
    async fn wait(start: impl FnOnce(Done)) -> IoOutcome {
        let (tx, rx) = oneshot::channel();
        start(Box::new(move |o| {
            let _ = tx.send(o);
        }));
        rx.await.unwrap_or(IoOutcome::Failed(libc::EIO))
    }

    #[tokio::test]
    async fn an_operation_dropped_unanswered_reports_an_io_error() {
        let got = wait(|d| drop(finish(d))).await;
        assert_eq!(got, IoOutcome::Failed(libc::EIO));
        let got = wait(|d| run(|| panic!("the operation panicked"), d)).await;
        assert_eq!(got, IoOutcome::Failed(libc::EIO));
        let got = wait(|d| finish(d)(Ok(None))).await;
        assert_eq!(got, IoOutcome::Done);
    }

    #[tokio::test]
    async fn direct_and_buffered_writes_read_back_coherently() {
        let f = tempfile::NamedTempFile::new_in("/var/tmp").unwrap();
        f.as_file().set_len(1 << 20).unwrap();
        let b = Backing::open(f.path()).unwrap();
        assert!(
            b.direct.is_some(),
            "O_DIRECT should be available on /var/tmp"
        );
        // Aligned (direct, from an unaligned Vec), then unaligned over it (buffered).
        let aligned: Bytes = vec![1u8; 8192].into();
        assert_eq!(
            wait(|d| b.write(4096, aligned, false, d)).await,
            IoOutcome::Done
        );
        assert_eq!(
            wait(|d| b.write(4096 + 100, vec![2u8; 10].into(), true, d)).await,
            IoOutcome::Done
        );
        let IoOutcome::Data(got) = wait(|d| b.read(4096, 8192, d)).await else {
            panic!("read failed")
        };
        assert_eq!(&got[..100], &[1u8; 100][..]);
        assert_eq!(&got[100..110], &[2u8; 10][..]);
        assert_eq!(&got[110..], &[1u8; 8082][..]);
        // Direct over buffered: the page cache must not hide it.
        assert_eq!(
            wait(|d| b.write(4096, vec![3u8; 4096].into(), false, d)).await,
            IoOutcome::Done
        );
        let IoOutcome::Data(got) = wait(|d| b.read(4096, 4096, d)).await else {
            panic!("read failed")
        };
        assert_eq!(got, vec![3u8; 4096]);
        assert_eq!(wait(|d| b.flush(d)).await, IoOutcome::Done);
    }

    #[tokio::test]
    async fn writes_and_reads_done_on_the_calling_thread_match_the_rings() {
        let f = tempfile::NamedTempFile::new_in("/var/tmp").unwrap();
        f.as_file().set_len(1 << 20).unwrap();
        let b = Backing::open(f.path()).unwrap();
        // Aligned offset and length from an unaligned buffer (copied, then direct), an
        // unaligned one over it (page cache), and a FUA write.
        let mut v = vec![0u8; 8193];
        v[1..].fill(4);
        let unaligned = Bytes::from(v).slice(1..);
        assert!(!aligned::is_aligned(&unaligned));
        assert_eq!(b.write_now(8192, unaligned, false), IoOutcome::Done);
        assert_eq!(
            b.write_now(8192 + 10, vec![5u8; 20].into(), true),
            IoOutcome::Done
        );
        assert_eq!(cached_pages(f.as_file(), 8192 + 4096, 4096), 0, "direct");
        // Each path sees what the other wrote.
        let IoOutcome::Data(got) = wait(|d| b.read(8192, 8192, d)).await else {
            panic!("read failed")
        };
        assert_eq!(&got[..10], &[4u8; 10][..]);
        assert_eq!(&got[10..30], &[5u8; 20][..]);
        assert_eq!(&got[30..], &[4u8; 8162][..]);
        assert_eq!(
            wait(|d| b.write(16384, vec![6u8; 4096].into(), false, d)).await,
            IoOutcome::Done
        );
        assert_eq!(
            b.read_now(16384, 4096),
            IoOutcome::Data(vec![6u8; 4096].into())
        );
        let IoOutcome::Data(got) = b.read_now(8192 + 5, 30) else {
            panic!("read failed")
        };
        assert_eq!(&got[..5], &[4u8; 5][..]);
        assert_eq!(&got[5..25], &[5u8; 20][..]);
        // Past the end: an error, not a short read.
        assert!(matches!(
            b.read_now((1 << 20) - 4096, 8192),
            IoOutcome::Failed(_)
        ));
    }

    /// Pages of `f` in `[offset, offset + len)` that are in the page cache.
    fn cached_pages(f: &File, offset: usize, len: usize) -> usize {
        let page = 4096;
        // SAFETY: a private read-only mapping of an open file, unmapped below; mincore
        // writes one byte per page into a vector of exactly that many bytes.
        unsafe {
            let p = libc::mmap(
                std::ptr::null_mut(),
                offset + len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                f.as_raw_fd(),
                0,
            );
            assert_ne!(p, libc::MAP_FAILED);
            let mut v = vec![0u8; (offset + len) / page];
            assert_eq!(libc::mincore(p, offset + len, v.as_mut_ptr()), 0);
            libc::munmap(p, offset + len);
            v[offset / page..].iter().filter(|b| **b & 1 != 0).count()
        }
    }

    #[tokio::test]
    async fn aligned_reads_bypass_the_page_cache() {
        let f = tempfile::NamedTempFile::new_in("/var/tmp").unwrap();
        f.as_file().set_len(1 << 20).unwrap();
        let b = Backing::open(f.path()).unwrap();
        // Written with O_DIRECT: nothing of it is cached.
        let data: Bytes = vec![9u8; 65536].into();
        assert_eq!(
            wait(|d| b.write(65536, data, true, d)).await,
            IoOutcome::Done
        );
        assert_eq!(cached_pages(f.as_file(), 65536, 65536), 0);
        let IoOutcome::Data(got) = wait(|d| b.read(65536, 65536, d)).await else {
            panic!("read failed")
        };
        assert_eq!(got, vec![9u8; 65536]);
        assert!(aligned::is_aligned(&got), "ready for an O_DIRECT write");
        // A cached page would make the next direct write over it take io_uring's
        // blocking detour.
        assert_eq!(cached_pages(f.as_file(), 65536, 65536), 0);
        // An unaligned read goes through the cache.
        let IoOutcome::Data(got) = wait(|d| b.read(65536 + 512, 1024, d)).await else {
            panic!("read failed")
        };
        assert_eq!(got, vec![9u8; 1024]);
    }
}
