//! The writer half of a replication session: small frames go out at once, the rest
//! through a thread that sends them in order, large data blocks without copying them
//! (`MSG_ZEROCOPY`).
//!
//! A plain `writev` copies every byte into socket buffers the kernel allocates (and,
//! with Debian's `init_on_alloc`, zeroes) for it: in the lab that was a quarter of the
//! Primary's CPU time on a 1 MiB sequential write. With `MSG_ZEROCOPY` the kernel
//! sends straight from our buffers and reports on the socket's error queue, by a
//! counter of send calls, when it no longer needs them; each call's buffers are held
//! until then. Our buffers are immutable (`Bytes`), so holding them is all it takes.
//! Over loopback, where the socket refuses `SO_ZEROCOPY`, or where the kernel reports
//! that it copied anyway (a device without scatter-gather), sends simply copy.
//!
//! Under load, small frames (4k writes, acknowledgements) would each cost a packet if
//! the thread sent them the moment it woke up: when the last batch held several
//! frames, it yields the CPU once first, so the resource task finishes the batch it is
//! handling and the frames share packets. In the lab (one vCPU per guest, 4k writes at
//! QD32) that made 0.26 acknowledgement packets per write instead of 0.35 and cut the
//! Secondary's CPU per write by 9–14%; where nothing else wants the CPU the yield
//! returns at once.
//! Frames that come one at a time (the acknowledgements of 1 MiB writes) go out at once.
//!
//! The writer is a thread, not a tokio task, because the error queue raises
//! `EPOLLERR`, which mio reports as "write side closed" for good: tokio's `writable()`
//! would then never wait again. The thread waits with `poll(2)`, where `POLLERR` just
//! means "notifications to read".

use super::resource::ResourceMsg;
use crate::engine::Input;
use bytes::{Buf, Bytes};
use hablock_proto::peer::Encoded;
use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::mpsc;
use tracing::{debug, warn};

/// `SO_ZEROCOPY` (asm-generic/socket.h).
const SO_ZEROCOPY: libc::c_int = 60;
/// `SO_EE_ORIGIN_ZEROCOPY` (linux/errqueue.h).
const SO_EE_ORIGIN_ZEROCOPY: u8 = 5;
/// `SO_EE_CODE_ZEROCOPY_COPIED`: the kernel copied the data after all.
const SO_EE_CODE_ZEROCOPY_COPIED: u8 = 1;
/// Fewer queued bytes than this are small frames: under a light load they go out from
/// the task at once, and the thread batches them (see the module doc).
const SMALL_BATCH: usize = 16 * 1024;
/// A send is zero-copy only when one of its buffers is at least this large: a batch
/// of 4 KiB blocks copies, because pinning each page and reaping the notification
/// cost more than copying it (in the lab, 3–5% more 4k QD32 writes per second).
const MIN_ZEROCOPY_BLOCK: usize = 64 * 1024;
/// With this much held, wait for the kernel to release some before sending more.
const MAX_HELD_BYTES: usize = 64 << 20;
/// At most this many buffers go into one `sendmsg`.
const MAX_IOV: usize = 64;
/// How long the end of a session waits for the kernel to release held buffers.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// The sending end of one replication session.
///
/// Under load, every frame goes straight to the session's writer thread, which sends
/// what is queued in order (many frames per send), data blocks with `MSG_ZEROCOPY`,
/// and waits for room in the socket. Under a light load the caller stages frames and
/// [`Writer::flush`]es them before it waits for more work: small ones then go out at
/// once from the caller (one non-blocking send, no thread hop: what a QD1 write waits
/// for) when nothing is queued before them. Dropping the `Writer` flushes, then lets
/// the thread finish and shut the write side down.
pub struct Writer {
    shared: Arc<Shared>,
    /// Keeps the socket open while either side may use its descriptor.
    wr: Arc<OwnedWriteHalf>,
    /// Frames staged since the last flush.
    staged: Outgoing,
}

/// What the caller and the writer thread share.
struct Shared {
    state: Mutex<Queue>,
    wake: Condvar,
}

#[derive(Default)]
struct Queue {
    /// Bytes waiting for the thread, in order.
    pending: Outgoing,
    /// The thread is sending bytes it took from `pending`.
    busy: bool,
    /// The caller is gone: finish and stop.
    closed: bool,
    /// A send failed; the session is over and nothing more is sent.
    failed: bool,
}

impl Writer {
    /// Starts the writer of session `session` on `wr`; a failed send (or a thread that
    /// cannot start) reaches the resource as `PeerLost`.
    pub fn start(
        wr: OwnedWriteHalf,
        session: u64,
        to_resource: mpsc::Sender<ResourceMsg>,
    ) -> Writer {
        let shared = Arc::new(Shared {
            state: Mutex::new(Queue::default()),
            wake: Condvar::new(),
        });
        let wr = Arc::new(wr);
        let (sh, w, tx) = (shared.clone(), wr.clone(), to_resource.clone());
        let started = std::thread::Builder::new()
            .name("blockd-send".into())
            .spawn(move || run_writer(&sh, &w, session, &tx));
        if let Err(e) = started {
            let reason = format!("cannot start the replication writer: {e}");
            lock(&shared).failed = true;
            tokio::spawn(async move {
                let _ = to_resource
                    .send(ResourceMsg::Engine(Input::PeerLost { session, reason }))
                    .await;
            });
        }
        Writer {
            shared,
            wr,
            staged: Outgoing::default(),
        }
    }

    /// Sends `frame` after everything sent before it: staged under a `light_load`
    /// (until [`Writer::flush`]), else handed to the thread at once, as is a large
    /// backlog.
    pub fn send(&mut self, frame: Encoded, light_load: bool) {
        self.staged.push(frame.head.into());
        self.staged.push(frame.bulk);
        if !light_load || self.staged.remaining() >= SMALL_BATCH {
            self.flush(false);
        }
    }

    /// Sends (or hands to the thread) everything staged; `light_load` allows sending
    /// small frames from here.
    pub fn flush(&mut self, light_load: bool) {
        if !self.staged.has_remaining() {
            return;
        }
        let mut out = std::mem::take(&mut self.staged);
        let mut q = lock(&self.shared);
        if q.failed || q.closed {
            return;
        }
        if light_load && !q.busy && !q.pending.has_remaining() && out.remaining() < SMALL_BATCH {
            // In order: nothing is queued or in flight before it. An error leaves the
            // bytes to the thread, whose send reports it.
            if let Ok(n) = send_some(self.wr.as_ref().as_ref().as_raw_fd(), &out, false) {
                out.advance(n);
            }
            if !out.has_remaining() {
                return;
            }
        }
        q.pending.append(out);
        drop(q);
        self.shared.wake.notify_one();
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.flush(false);
        lock(&self.shared).closed = true;
        self.shared.wake.notify_one();
    }
}

/// The queue, whoever panicked while holding it (its state stays consistent: every
/// change under the lock is a single assignment or append).
fn lock(shared: &Shared) -> MutexGuard<'_, Queue> {
    shared.state.lock().unwrap_or_else(|e| e.into_inner())
}

fn run_writer(
    shared: &Shared,
    wr: &OwnedWriteHalf,
    session: u64,
    to_resource: &mpsc::Sender<ResourceMsg>,
) {
    let fd = wr.as_ref().as_raw_fd();
    // Over loopback the kernel copies zero-copy sends anyway (into the receiver), after
    // pinning the pages and before a notification: only the overhead would remain.
    let loopback = wr.peer_addr().is_ok_and(|a| a.ip().is_loopback());
    let mut sender = Sender::new(fd, !loopback);
    let mut batching = false;
    loop {
        let mut out = {
            let mut q = lock(shared);
            q.busy = false;
            while !q.pending.has_remaining() && !q.closed {
                q = shared.wake.wait(q).unwrap_or_else(|e| e.into_inner());
            }
            if batching && q.pending.remaining() < SMALL_BATCH && !q.closed {
                // Small frames come in batches: let whoever queues them (still running,
                // on a busy CPU) queue the rest first, so they share packets. See the
                // module doc.
                drop(q);
                std::thread::yield_now();
                q = lock(shared);
            }
            if !q.pending.has_remaining() {
                break;
            }
            q.busy = true;
            std::mem::take(&mut q.pending)
        };
        // The last batch held several frames: more parts than one data frame's head
        // and body (an acknowledgement is a head alone).
        batching = out.parts.len() > 2;
        if let Err(e) = sender.send_all(fd, &mut out) {
            lock(shared).failed = true;
            let reason = format!("write error: {e}");
            let _ =
                to_resource.blocking_send(ResourceMsg::Engine(Input::PeerLost { session, reason }));
            break;
        }
    }
    // The write side shuts down when the last handle on `wr` goes; the kernel may
    // still send from held buffers until it releases them.
    sender.drain(fd);
}

/// Buffers queued for sending, in order.
#[derive(Default)]
struct Outgoing {
    parts: VecDeque<Bytes>,
    remaining: usize,
}

impl Outgoing {
    /// Queues `part` after what is queued.
    fn push(&mut self, part: Bytes) {
        if !part.is_empty() {
            self.remaining += part.len();
            self.parts.push_back(part);
        }
    }

    /// Queues what is left of `other` after what is queued.
    fn append(&mut self, other: Outgoing) {
        self.remaining += other.remaining;
        self.parts.extend(other.parts);
    }

    /// One of the buffers the next send takes (the first [`MAX_IOV`]) is at least
    /// [`MIN_ZEROCOPY_BLOCK`] long: worth sending without copying.
    fn holds_large_block(&self) -> bool {
        self.parts
            .iter()
            .take(MAX_IOV)
            .any(|p| p.len() >= MIN_ZEROCOPY_BLOCK)
    }

    /// Handles on the buffers holding the first `n` queued bytes.
    fn owners_of_first(&self, n: usize) -> Vec<Bytes> {
        let mut held = Vec::new();
        let mut left = n;
        for part in &self.parts {
            if left == 0 {
                break;
            }
            held.push(part.clone());
            left = left.saturating_sub(part.len());
        }
        held
    }
}

impl Buf for Outgoing {
    fn remaining(&self) -> usize {
        self.remaining
    }

    fn chunk(&self) -> &[u8] {
        self.parts.front().map_or(&[], |p| &p[..])
    }

    fn chunks_vectored<'a>(&'a self, dst: &mut [IoSlice<'a>]) -> usize {
        let mut n = 0;
        for (slot, part) in dst.iter_mut().zip(&self.parts) {
            *slot = IoSlice::new(part);
            n += 1;
        }
        n
    }

    fn advance(&mut self, mut cnt: usize) {
        self.remaining -= cnt.min(self.remaining);
        while cnt > 0 {
            let Some(front) = self.parts.front_mut() else {
                return;
            };
            if cnt < front.len() {
                front.advance(cnt);
                return;
            }
            cnt -= front.len();
            self.parts.pop_front();
        }
    }
}

/// The sending side of one replication socket.
struct Sender {
    /// Zero-copy sends are on (the socket accepted `SO_ZEROCOPY`, and the kernel has
    /// not reported copying).
    zerocopy: bool,
    /// The counter the kernel gives the next zero-copy send call.
    next_call: u32,
    /// Buffers of zero-copy calls the kernel has not released, oldest first.
    held: VecDeque<(u32, Vec<Bytes>)>,
    /// Bytes referenced by `held` (counting each call's buffers whole).
    held_bytes: usize,
}

impl Sender {
    /// Prepares the socket `fd` for zero-copy sends if `wanted` and the kernel
    /// allows them.
    fn new(fd: RawFd, wanted: bool) -> Sender {
        Sender {
            zerocopy: wanted && enable_zerocopy(fd),
            next_call: 0,
            held: VecDeque::new(),
            held_bytes: 0,
        }
    }

    /// Sends everything queued in `out`, waiting for room as needed.
    fn send_all(&mut self, fd: RawFd, out: &mut Outgoing) -> io::Result<()> {
        while out.has_remaining() {
            self.reap(fd)?;
            if self.held_bytes > MAX_HELD_BYTES {
                wait(fd, 0, Duration::from_millis(100))?;
                continue;
            }
            let zerocopy = self.zerocopy && out.holds_large_block();
            match send_some(fd, out, zerocopy) {
                Ok(n) => {
                    if zerocopy {
                        let owners = out.owners_of_first(n);
                        self.held_bytes += owners.iter().map(Bytes::len).sum::<usize>();
                        self.held.push_back((self.next_call, owners));
                        self.next_call = self.next_call.wrapping_add(1);
                    }
                    out.advance(n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    wait(fd, libc::POLLOUT, Duration::from_secs(1))?;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // Too much memory pinned on this socket: copy this time.
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) && zerocopy => {
                    match send_some(fd, out, false) {
                        Ok(n) => out.advance(n),
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            wait(fd, libc::POLLOUT, Duration::from_secs(1))?;
                        }
                        Err(e) => return Err(e),
                    }
                }
                Err(e) => return Err(e),
            }
        }
        self.reap(fd)
    }

    /// Waits (at most [`DRAIN_TIMEOUT`]) until the kernel has released every held
    /// buffer.
    fn drain(&mut self, fd: RawFd) {
        let deadline = Instant::now() + DRAIN_TIMEOUT;
        while !self.held.is_empty() && Instant::now() < deadline {
            if self.reap(fd).is_err() || wait(fd, 0, Duration::from_millis(50)).is_err() {
                break;
            }
        }
        if !self.held.is_empty() {
            warn!(
                calls = self.held.len(),
                "the kernel still holds replication buffers at the end of the session"
            );
        }
    }

    /// Releases the buffers of every call the kernel reports done.
    fn reap(&mut self, fd: RawFd) -> io::Result<()> {
        if self.held.is_empty() {
            return Ok(());
        }
        while let Some(done) = read_notification(fd)? {
            if done.copied && self.zerocopy {
                debug!("the kernel copies zero-copy sends on this socket; copying instead");
                self.zerocopy = false;
            }
            self.release(done.first, done.last);
        }
        Ok(())
    }

    /// Drops the buffers of calls `first..=last` (the counter wraps).
    fn release(&mut self, first: u32, last: u32) {
        let span = last.wrapping_sub(first);
        let mut held_bytes = self.held_bytes;
        self.held.retain(|(call, owners)| {
            let done = call.wrapping_sub(first) <= span;
            if done {
                held_bytes -= owners.iter().map(Bytes::len).sum::<usize>();
            }
            !done
        });
        self.held_bytes = held_bytes;
    }
}

/// Waits until `fd` has `events` (or an error, a hang-up, or notifications on its
/// error queue, which `poll` always reports) or `timeout` passes.
fn wait(fd: RawFd, events: libc::c_short, timeout: Duration) -> io::Result<()> {
    let mut p = libc::pollfd {
        fd,
        events,
        revents: 0,
    };
    let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
    // SAFETY: one live pollfd, as the count says.
    let rc = unsafe { libc::poll(&mut p, 1, ms) };
    if rc < 0 {
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
    Ok(())
}

/// Turns `SO_ZEROCOPY` on; false (logged) where the socket refuses it.
fn enable_zerocopy(fd: RawFd) -> bool {
    let one: libc::c_int = 1;
    // SAFETY: setsockopt reads `one` (a live c_int of the given size) and nothing
    // else; `fd` is an open socket for the whole call.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            SO_ZEROCOPY,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        debug!(
            "SO_ZEROCOPY refused ({}); replication copies",
            io::Error::last_os_error()
        );
    }
    rc == 0
}

/// One `sendmsg` of as much of `out` as the socket takes.
fn send_some(fd: RawFd, out: &Outgoing, zerocopy: bool) -> io::Result<usize> {
    let mut slices = [IoSlice::new(&[]); MAX_IOV];
    let n = out.chunks_vectored(&mut slices);
    // SAFETY: an all-zero msghdr is valid (no name, no control data).
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    // IoSlice is guaranteed ABI-compatible with iovec.
    msg.msg_iov = slices.as_mut_ptr().cast();
    msg.msg_iovlen = n as _;
    let mut flags = libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL;
    if zerocopy {
        flags |= libc::MSG_ZEROCOPY;
    }
    // SAFETY: `msg` points to `n` live slices borrowed from `out`, which outlives the
    // call; with MSG_ZEROCOPY the caller keeps the buffers until the kernel releases them.
    let rc = unsafe { libc::sendmsg(fd, &msg, flags) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(rc as usize)
}

/// A completion from the error queue: zero-copy calls `first..=last` are done.
struct Notification {
    first: u32,
    last: u32,
    copied: bool,
}

/// Reads one zero-copy completion from the socket's error queue, if there is one.
fn read_notification(fd: RawFd) -> io::Result<Option<Notification>> {
    loop {
        // Room for one cmsg carrying a sock_extended_err (and an address after it).
        let mut control = [0u64; 16];
        // SAFETY: an all-zero msghdr is valid; the fields set below point to `control`.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(&control) as _;
        // SAFETY: `msg` describes a live control buffer of the stated size and no data.
        let rc = unsafe { libc::recvmsg(fd, &mut msg, libc::MSG_ERRQUEUE | libc::MSG_DONTWAIT) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::WouldBlock => Ok(None),
                io::ErrorKind::Interrupted => continue,
                _ => Err(e),
            };
        }
        // SAFETY: the kernel filled `msg.msg_control` with `msg_controllen` bytes of
        // well-formed cmsgs; CMSG_FIRSTHDR/NXTHDR stay within them.
        let mut cmsg = unsafe { libc::CMSG_FIRSTHDR(&msg) };
        while !cmsg.is_null() {
            // SAFETY: `cmsg` is non-null and points into `control` (see above).
            let (level, kind) = unsafe { ((*cmsg).cmsg_level, (*cmsg).cmsg_type) };
            let is_recverr = (level == libc::SOL_IP && kind == libc::IP_RECVERR)
                || (level == libc::SOL_IPV6 && kind == libc::IPV6_RECVERR);
            if is_recverr {
                // SAFETY: an IP(V6)_RECVERR cmsg carries a sock_extended_err; it may be
                // unaligned within the buffer, hence read_unaligned.
                let err: libc::sock_extended_err = unsafe {
                    std::ptr::read_unaligned(
                        libc::CMSG_DATA(cmsg).cast::<libc::sock_extended_err>(),
                    )
                };
                if err.ee_errno == 0 && err.ee_origin == SO_EE_ORIGIN_ZEROCOPY {
                    return Ok(Some(Notification {
                        first: err.ee_info,
                        last: err.ee_data,
                        copied: err.ee_code & SO_EE_CODE_ZEROCOPY_COPIED != 0,
                    }));
                }
            }
            // SAFETY: as for CMSG_FIRSTHDR.
            cmsg = unsafe { libc::CMSG_NXTHDR(&msg, cmsg) };
        }
        // Something else on the error queue (not ours): read on.
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn queue(parts: &[&'static [u8]]) -> Outgoing {
        let mut out = Outgoing::default();
        for p in parts {
            out.push(Bytes::from_static(p));
        }
        out
    }

    #[test]
    fn only_a_send_with_a_large_block_is_zero_copy() {
        static SMALL: [u8; 4096] = [0; 4096];
        static LARGE: [u8; MIN_ZEROCOPY_BLOCK] = [0; MIN_ZEROCOPY_BLOCK];
        let small_batch = queue(&[&SMALL[..]; 32]);
        assert!(small_batch.remaining() >= SMALL_BATCH);
        assert!(!small_batch.holds_large_block(), "4k blocks copy");
        assert!(queue(&[&SMALL[..], &[1, 2], &LARGE[..]]).holds_large_block());
        let mut beyond_one_send = queue(&[&SMALL[..]; MAX_IOV]);
        beyond_one_send.push(Bytes::from_static(&LARGE));
        assert!(
            !beyond_one_send.holds_large_block(),
            "only what the next sendmsg takes counts"
        );
    }

    #[test]
    fn outgoing_gives_the_bytes_in_order_across_partial_writes() {
        let mut out = queue(&[&[1, 2, 3], &[4, 5, 6, 7], &[], &[8], &[9, 10], &[11]]);
        assert_eq!(out.remaining(), 11);
        let mut slices = [IoSlice::new(&[]); 8];
        assert_eq!(
            out.chunks_vectored(&mut slices),
            5,
            "empty parts are skipped"
        );
        // A short write ends inside the second part, then one inside the fourth.
        let mut got = Vec::new();
        for step in [5, 4, 2] {
            let mut taken = 0;
            while taken < step {
                let c = out.chunk();
                let n = c.len().min(step - taken);
                got.extend_from_slice(&c[..n]);
                out.advance(n);
                taken += n;
            }
        }
        assert_eq!(got, (1..=11).collect::<Vec<u8>>());
        assert_eq!(out.remaining(), 0);
        assert!(out.chunk().is_empty());
    }

    #[test]
    fn a_send_holds_exactly_the_buffers_it_touched() {
        let out = queue(&[&[1, 2, 3], &[4, 5, 6, 7], &[8]]);
        assert_eq!(out.owners_of_first(0).len(), 0);
        assert_eq!(out.owners_of_first(3).len(), 1);
        assert_eq!(out.owners_of_first(4).len(), 2);
        assert_eq!(out.owners_of_first(8).len(), 3);
    }

    #[test]
    fn release_handles_ranges_across_the_counter_wrap() {
        let mut s = Sender {
            zerocopy: true,
            next_call: 0,
            held: VecDeque::new(),
            held_bytes: 0,
        };
        for call in [u32::MAX - 1, u32::MAX, 0, 1] {
            s.held.push_back((call, vec![Bytes::from_static(&[0; 10])]));
            s.held_bytes += 10;
        }
        s.release(u32::MAX, 0);
        let left: Vec<u32> = s.held.iter().map(|(c, _)| *c).collect();
        assert_eq!(left, vec![u32::MAX - 1, 1]);
        assert_eq!(s.held_bytes, 20);
    }

    /// A TCP pair over loopback; the sending side non-blocking, as tokio leaves it.
    fn pair() -> (std::net::TcpStream, std::net::TcpStream) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let a = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (b, _) = l.accept().unwrap();
        a.set_nonblocking(true).unwrap();
        (a, b)
    }

    #[test]
    fn large_sends_arrive_intact_and_every_buffer_is_released() {
        let (tx, mut rx) = pair();
        let fd = tx.as_raw_fd();
        // Wanted even over loopback, where the kernel copies after all: the protocol
        // (counters, notifications, release) is the same as on a real link.
        let mut sender = Sender::new(fd, true);
        assert!(sender.zerocopy, "TCP accepts SO_ZEROCOPY");
        let blocks: Vec<Bytes> = (0..40u8)
            .map(|i| Bytes::from(vec![i; 256 * 1024 + usize::from(i)]))
            .collect();
        let total: usize = blocks.iter().map(Bytes::len).sum();
        let reader = std::thread::spawn(move || {
            let mut got = vec![0u8; total];
            rx.read_exact(&mut got).unwrap();
            got
        });
        for chunk in blocks.chunks(3) {
            let mut out = Outgoing::default();
            for b in chunk {
                out.push(b.clone());
            }
            sender.send_all(fd, &mut out).unwrap();
        }
        let got = reader.join().unwrap();
        assert_eq!(got, blocks.concat());
        sender.drain(fd);
        assert!(sender.held.is_empty(), "held: {}", sender.held.len());
        assert_eq!(sender.held_bytes, 0);
        // Only our clones are gone: each block is uniquely owned again.
        for b in blocks {
            assert!(b.is_unique());
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn small_and_large_frames_keep_their_order_and_the_end_is_a_clean_shutdown() {
        let (tx, mut rx) = pair();
        let stream = tokio::net::TcpStream::from_std(tx).unwrap();
        let (_rd, wr) = stream.into_split();
        let (to_resource, _from_writer) = mpsc::channel(4);
        let mut writer = Writer::start(wr, 1, to_resource);
        // Alternating direct sends (small) and thread sends (large), so each kind
        // often follows the other while it is still in flight.
        let frames: Vec<Encoded> = (0..200u32)
            .map(|i| Encoded {
                head: i.to_le_bytes().to_vec(),
                bulk: Bytes::from(vec![i as u8; if i % 2 == 0 { 100 } else { 100_000 }]),
            })
            .collect();
        let want: Vec<u8> = frames
            .iter()
            .flat_map(|f| [&f.head[..], &f.bulk[..]].concat())
            .collect();
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            rx.read_to_end(&mut got).unwrap();
            got
        });
        for (i, f) in frames.into_iter().enumerate() {
            writer.send(f, i % 5 != 0);
            if i % 3 == 0 {
                writer.flush(i % 2 == 0);
            }
        }
        drop(writer);
        let got = tokio::task::spawn_blocking(move || reader.join().unwrap())
            .await
            .unwrap();
        assert_eq!(got.len(), want.len());
        assert!(got == want, "the stream differs from the frames in order");
    }
}
