//! An io_uring queue for the backing device: one thread owns the ring (submission
//! and completion); callers submit through a channel with a callback that the thread
//! calls with the result (no task to wake in between).
//!
//! The thread sleeps in `io_uring_enter` until a completion arrives; a submission
//! wakes it through an eventfd whose read is always armed in the ring. Buffers live in
//! the thread's slot table until their operation completes, so the kernel never sees a
//! freed buffer.

use super::HANDOVER_YIELD_BYTES;
use crate::aligned::{is_aligned, is_direct_ready, AlignedBuf};
use bytes::Bytes;
use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::mpsc;
use std::sync::Arc;

/// Queue depth of the ring.
const ENTRIES: u32 = 256;
/// `user_data` of the eventfd read.
const WAKE: u64 = u64::MAX;

/// One operation on the backing file.
#[derive(Debug)]
pub enum UringOp {
    /// Read `len` bytes at `offset`.
    Read {
        /// Byte offset.
        offset: u64,
        /// Length.
        len: u32,
    },
    /// Write at `offset`; `dsync` makes it durable before it completes (RWF_DSYNC).
    Write {
        /// Byte offset.
        offset: u64,
        /// The bytes.
        data: Bytes,
        /// Durable on completion.
        dsync: bool,
        /// Through the O_DIRECT descriptor (offset, length and buffer aligned).
        direct: bool,
    },
    /// `fdatasync`.
    Sync,
}

/// The result: read data, or nothing.
pub type UringResult = io::Result<Option<Bytes>>;

/// Called with an operation's result, on the ring thread.
pub type UringDone = Box<dyn FnOnce(UringResult) + Send>;

struct Submission {
    op: UringOp,
    done: UringDone,
}

/// A handle to the ring thread of one backing file.
#[derive(Clone)]
pub struct UringQueue {
    tx: mpsc::Sender<Submission>,
    wake: Arc<OwnedFd>,
}

impl std::fmt::Debug for UringQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UringQueue")
    }
}

impl UringQueue {
    /// Starts the ring thread for `file` (and its O_DIRECT twin, if any). Fails where
    /// io_uring is unavailable.
    pub fn start(file: Arc<File>, direct: Option<Arc<File>>) -> io::Result<UringQueue> {
        let ring = io_uring::IoUring::new(ENTRIES)?;
        // SAFETY: eventfd returns a new descriptor (or -1, checked) that we own.
        let efd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if efd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `efd` is a fresh, valid descriptor owned by nobody else.
        let wake = Arc::new(unsafe { OwnedFd::from_raw_fd(efd) });
        let (tx, rx) = mpsc::channel();
        let thread_wake = wake.clone();
        std::thread::Builder::new()
            .name("blockd-uring".into())
            .spawn(move || ring_thread(ring, file, direct, rx, thread_wake))?;
        Ok(UringQueue { tx, wake })
    }

    /// Starts one operation; `done` gets its result (here, at once, if the ring thread
    /// is gone).
    ///
    /// After a large write the caller gives the CPU away once, so that the ring thread
    /// (which, like all of blockd's threads, does not preempt it when woken) puts the
    /// write on the disk before the caller goes on, say, to receive the next 1 MiB
    /// block: the disk then works while the caller does.
    pub fn submit(&self, op: UringOp, done: UringDone) {
        let large =
            matches!(&op, UringOp::Write { data, .. } if data.len() >= HANDOVER_YIELD_BYTES);
        if let Err(mpsc::SendError(s)) = self.tx.send(Submission { op, done }) {
            (s.done)(Err(io::Error::from_raw_os_error(libc::ESHUTDOWN)));
            return;
        }
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a valid u64 to our eventfd.
        let _ = unsafe { libc::write(self.wake.as_raw_fd(), (&one as *const u64).cast(), 8) };
        if large {
            std::thread::yield_now();
        }
    }
}

/// An operation in the ring, with the memory the kernel uses.
struct Slot {
    op: UringOp,
    /// A read's buffer (page-aligned, so an aligned read can use O_DIRECT).
    buf: Option<AlignedBuf>,
    /// Bytes done so far (short reads and writes are resubmitted for the rest).
    done_bytes: usize,
    reply: UringDone,
}

fn sqe_for(
    fd: RawFd,
    direct_fd: RawFd,
    slot: &mut Slot,
    user_data: u64,
) -> io_uring::squeue::Entry {
    use io_uring::{opcode, types};
    let d = slot.done_bytes;
    match &slot.op {
        UringOp::Read { offset, len } => {
            let buf = slot.buf.as_mut().map_or(&mut [][..], |b| b.as_mut());
            let rest = &mut buf[d..*len as usize];
            // Direct when the offset, what is left and where it goes are block-aligned.
            let use_direct = is_direct_ready(offset + d as u64, rest) && is_aligned(rest);
            let f = if use_direct { direct_fd } else { fd };
            opcode::Read::new(types::Fd(f), rest.as_mut_ptr(), rest.len() as u32)
                .offset(offset + d as u64)
                .build()
                .user_data(user_data)
        }
        UringOp::Write {
            offset,
            data,
            dsync,
            direct,
        } => {
            let rest = &data[d..];
            let flags = if *dsync { libc::RWF_DSYNC } else { 0 };
            // A short O_DIRECT write leaves an aligned remainder only if the kernel
            // stopped on a block boundary; otherwise finish through the page cache.
            let use_direct = *direct && d.is_multiple_of(crate::aligned::ALIGN);
            let f = if use_direct { direct_fd } else { fd };
            opcode::Write::new(types::Fd(f), rest.as_ptr(), rest.len() as u32)
                .offset(offset + d as u64)
                .rw_flags(flags)
                .build()
                .user_data(user_data)
        }
        UringOp::Sync => opcode::Fsync::new(types::Fd(fd))
            .flags(types::FsyncFlags::DATASYNC)
            .build()
            .user_data(user_data),
    }
}

fn ring_thread(
    mut ring: io_uring::IoUring,
    file: Arc<File>,
    direct: Option<Arc<File>>,
    rx: mpsc::Receiver<Submission>,
    wake: Arc<OwnedFd>,
) {
    use io_uring::{opcode, types};
    let fd = file.as_raw_fd();
    let direct_fd = direct.as_ref().map_or(fd, |f| f.as_raw_fd());
    let mut slots: Vec<Option<Slot>> = Vec::new();
    let mut free: Vec<usize> = Vec::new();
    let mut wake_buf = [0u8; 8];
    let mut backlog: VecDeque<u64> = VecDeque::new();
    let mut wake_armed = false;
    loop {
        if !wake_armed {
            let e = opcode::Read::new(types::Fd(wake.as_raw_fd()), wake_buf.as_mut_ptr(), 8)
                .build()
                .user_data(WAKE);
            // SAFETY: `wake_buf` lives as long as this thread; only one wake read is in
            // flight at a time.
            if unsafe { ring.submission().push(&e) }.is_ok() {
                wake_armed = true;
            }
        }
        // New submissions. The thread lives as long as the daemon: when every sender
        // is gone it simply finishes what is in flight and sleeps.
        while let Ok(s) = rx.try_recv() {
            let buf = match &s.op {
                UringOp::Read { len, .. } => match AlignedBuf::zeroed(*len as usize) {
                    Some(b) => Some(b),
                    None => {
                        (s.done)(Err(io::Error::from_raw_os_error(libc::ENOMEM)));
                        continue;
                    }
                },
                _ => None,
            };
            let slot = Slot {
                op: s.op,
                buf,
                done_bytes: 0,
                reply: s.done,
            };
            let idx = match free.pop() {
                Some(i) => {
                    slots[i] = Some(slot);
                    i
                }
                None => {
                    slots.push(Some(slot));
                    slots.len() - 1
                }
            };
            backlog.push_back(idx as u64);
        }
        // Queue what fits.
        while let Some(&idx) = backlog.front() {
            let Some(Some(slot)) = slots.get_mut(idx as usize) else {
                backlog.pop_front();
                continue;
            };
            let e = sqe_for(fd, direct_fd, slot, idx);
            // SAFETY: the slot (and its buffer or Arc'd data) stays in `slots` until its
            // completion is reaped below.
            if unsafe { ring.submission().push(&e) }.is_err() {
                break;
            }
            backlog.pop_front();
        }
        if let Err(e) = ring.submit_and_wait(1) {
            if e.raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            // The ring is unusable: fail everything in flight.
            for s in slots.iter_mut().filter_map(Option::take) {
                (s.reply)(Err(io::Error::from_raw_os_error(
                    e.raw_os_error().unwrap_or(libc::EIO),
                )));
            }
            return;
        }
        let done: Vec<(u64, i32)> = ring
            .completion()
            .map(|c| (c.user_data(), c.result()))
            .collect();
        for (ud, res) in done {
            if ud == WAKE {
                // Submissions are picked up at the top of the loop.
                wake_armed = false;
                continue;
            }
            let idx = ud as usize;
            let Some(slot) = slots.get_mut(idx).and_then(Option::as_mut) else {
                continue;
            };
            if res < 0 {
                if let Some(s) = slots[idx].take() {
                    (s.reply)(Err(io::Error::from_raw_os_error(-res)));
                }
                free.push(idx);
                continue;
            }
            let total = match &slot.op {
                UringOp::Read { len, .. } => *len as usize,
                UringOp::Write { data, .. } => data.len(),
                UringOp::Sync => 0,
            };
            slot.done_bytes += res as usize;
            let short = slot.done_bytes < total;
            if short && res == 0 {
                // End of file on a read, or no progress on a write.
                if let Some(s) = slots[idx].take() {
                    (s.reply)(Err(io::Error::from_raw_os_error(libc::EIO)));
                }
                free.push(idx);
            } else if short {
                backlog.push_back(ud);
            } else if let Some(s) = slots[idx].take() {
                let out = match s.op {
                    UringOp::Read { .. } => s.buf.map(AlignedBuf::into_bytes),
                    _ => None,
                };
                (s.reply)(Ok(out));
                free.push(idx);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::oneshot;

    impl UringQueue {
        async fn run(&self, op: UringOp) -> UringResult {
            let (tx, rx) = oneshot::channel();
            self.submit(
                op,
                Box::new(move |r| {
                    let _ = tx.send(r);
                }),
            );
            rx.await
                .map_err(|_| io::Error::from_raw_os_error(libc::EIO))?
        }
    }

    #[tokio::test]
    async fn write_read_sync_round_trip() {
        let f = tempfile::tempfile().unwrap();
        f.set_len(1 << 20).unwrap();
        let q = UringQueue::start(Arc::new(f), None).unwrap();
        let data: Bytes = vec![0x5a; 8192].into();
        q.run(UringOp::Write {
            offset: 4096,
            data,
            dsync: true,
            direct: false,
        })
        .await
        .unwrap();
        q.run(UringOp::Sync).await.unwrap();
        let got = q
            .run(UringOp::Read {
                offset: 4096,
                len: 8192,
            })
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got, vec![0x5a; 8192]);
        // Many at once.
        let mut tasks = Vec::new();
        for i in 0..200u64 {
            let q = q.clone();
            tasks.push(tokio::spawn(async move {
                let d: Bytes = vec![i as u8; 4096].into();
                q.run(UringOp::Write {
                    offset: i * 4096,
                    data: d,
                    dsync: false,
                    direct: false,
                })
                .await
                .unwrap();
                q.run(UringOp::Read {
                    offset: i * 4096,
                    len: 4096,
                })
                .await
                .unwrap()
                .unwrap()
            }));
        }
        for (i, t) in tasks.into_iter().enumerate() {
            assert_eq!(t.await.unwrap(), vec![i as u8; 4096]);
        }
        // Reading past the end fails instead of hanging.
        assert!(q
            .run(UringOp::Read {
                offset: (1 << 20) - 100,
                len: 4096
            })
            .await
            .is_err());
    }
}
