//! The task that runs one resource: it owns the [`Engine`], the metadata store and the
//! backing device, feeds the engine its inputs and carries out its actions in order.

use super::io::{Backing, Done};
use super::local_reads::LocalReads;
use super::peer::{self, NewSession};
use super::sender;
use super::ublk::{self, Phase, UblkDevice, UblkSpec};
use crate::engine::{
    Action, Command, CommandResult, Engine, Input, IoOutcome, IoRequest, Now, OpId, ReqId,
};
use crate::md::{MdLocation, MdStore};
use crate::nbd::{self, NbdBackend};
use hablock_proto::control::{Event, ResourceStatus};
use hablock_proto::peer::encode_parts;
use hablock_proto::types::DiskState;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tracing::{error, info, warn};

/// Messages to a resource task.
#[derive(Debug)]
pub enum ResourceMsg {
    /// An engine input from a session or a local operation.
    Engine(Input),
    /// A frontend request.
    Io {
        /// The request.
        request: IoRequest,
        /// Where the outcome goes.
        reply: oneshot::Sender<IoOutcome>,
    },
    /// An operator command.
    Command {
        /// The command.
        cmd: Command,
        /// Where the result goes.
        reply: oneshot::Sender<CommandResult>,
    },
    /// `blockctl attach`: open the backing device and its metadata again, then use
    /// them (after a detach).
    Attach {
        /// Where the result goes.
        reply: oneshot::Sender<CommandResult>,
    },
    /// A status request.
    Status {
        /// Where the status goes.
        reply: oneshot::Sender<ResourceStatus>,
    },
    /// An authenticated session from the link task.
    Session(NewSession),
    /// A frontend device changed phase (the ublk device came up, failed or ended).
    FrontendChanged,
    /// Stop: persist and exit.
    Shutdown {
        /// Fired when done.
        done: oneshot::Sender<()>,
    },
}

/// A handle frontends use to submit requests.
#[derive(Debug, Clone)]
pub struct ResourceHandle {
    tx: mpsc::Sender<ResourceMsg>,
    size: u64,
}

impl ResourceHandle {
    /// Submits one request and waits for its outcome (a failure as an I/O error).
    pub(crate) async fn submit(&self, request: IoRequest) -> std::io::Result<IoOutcome> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(ResourceMsg::Io { request, reply })
            .await
            .map_err(|_| std::io::Error::from_raw_os_error(libc::ESHUTDOWN))?;
        let outcome = rx
            .await
            .map_err(|_| std::io::Error::from_raw_os_error(libc::EIO))?;
        match outcome {
            IoOutcome::Failed(e) => Err(std::io::Error::from_raw_os_error(e)),
            other => Ok(other),
        }
    }
}

impl NbdBackend for ResourceHandle {
    fn size_bytes(&self) -> u64 {
        self.size
    }

    async fn read(&self, offset: u64, len: u32) -> std::io::Result<bytes::Bytes> {
        match self.submit(IoRequest::Read { offset, len }).await? {
            IoOutcome::Data(d) => Ok(d),
            _ => Err(std::io::Error::from_raw_os_error(libc::EIO)),
        }
    }

    async fn write(&self, offset: u64, data: bytes::Bytes, fua: bool) -> std::io::Result<()> {
        self.submit(IoRequest::Write { offset, data, fua })
            .await
            .map(|_| ())
    }

    async fn flush(&self) -> std::io::Result<()> {
        self.submit(IoRequest::Flush).await.map(|_| ())
    }

    async fn trim(&self, offset: u64, len: u64, fua: bool) -> std::io::Result<()> {
        self.submit(IoRequest::Trim {
            offset,
            len,
            zeroes: false,
            fua,
        })
        .await
        .map(|_| ())
    }

    async fn write_zeroes(&self, offset: u64, len: u64, fua: bool) -> std::io::Result<()> {
        self.submit(IoRequest::Trim {
            offset,
            len,
            zeroes: true,
            fua,
        })
        .await
        .map(|_| ())
    }
}

/// Up to this many frontend requests and backing-device operations in flight, small
/// frames are sent from the resource task rather than by the writer thread
/// ([`sender::Writer`]).
const LIGHT_LOAD: usize = 2;

/// With little in flight and nothing waiting in the inbox, a local write of at most this
/// many bytes on a node without frontend requests (a Secondary), or a read with at most
/// one frontend request in flight (a Primary's single read), is done by the resource task
/// itself (a blocking `pread`/`pwritev2`, as long as the disk's latency) instead of by
/// the io_uring thread. Under QEMU's TCG every hand-over from one thread to another cost
/// 0.2–0.4 ms, longer than a 4 KiB write to the disk: a Secondary receiving one write at
/// a time now receives, writes and acknowledges it on one thread, as DRBD's receiver
/// does (4k QD1 write latency −19% in the lab), and a single read skips two hand-overs.
/// Under load the ring keeps many operations in flight. A Primary's own writes stay on
/// the ring: theirs is not the path its requests wait on (the peer's acknowledgement
/// is), and fio's next request would wait behind the disk.
const INLINE_IO_BYTES: usize = 64 * 1024;

/// A small local operation the resource task does itself ([`INLINE_IO_BYTES`]).
enum InlineIo {
    Write {
        op: OpId,
        offset: u64,
        data: bytes::Bytes,
        fua: bool,
    },
    Read {
        op: OpId,
        offset: u64,
        len: u32,
    },
}

struct Session {
    id: u64,
    writer: sender::Writer,
    reader: JoinHandle<()>,
    _ended: oneshot::Sender<()>,
}

struct NbdExport {
    path: PathBuf,
    shutdown: watch::Sender<bool>,
    clients: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

/// The live frontends of a Primary.
#[derive(Default)]
struct Frontends {
    nbd: Option<NbdExport>,
    ublk: Option<UblkDevice>,
    /// A ublk device being stopped (drained and deleted) off the async threads.
    ublk_stopping: Option<JoinHandle<()>>,
}

impl Frontends {
    /// Why the resource cannot be demoted now, if it cannot.
    fn busy(&self) -> Option<String> {
        let clients = self
            .nbd
            .as_ref()
            .map_or(0, |e| e.clients.load(Ordering::Relaxed));
        if clients > 0 {
            return Some(format!("{clients} NBD client(s) connected"));
        }
        match &self.ublk {
            Some(u) if u.in_use() => Some(format!(
                "{} is open (mounted or held by a process)",
                u.path().display()
            )),
            _ => None,
        }
    }

    /// Paths of the frontends that serve I/O.
    fn devices(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(u) = &self.ublk {
            if u.phase() == Phase::Live {
                out.push(u.path().display().to_string());
            }
        }
        if let Some(e) = &self.nbd {
            out.push(e.path.display().to_string());
        }
        out
    }

    /// A ublk device still starting or stopping holds role-change replies back.
    fn settled(&self) -> bool {
        self.ublk
            .as_ref()
            .is_none_or(|u| u.phase() != Phase::Starting)
            && self.ublk_stopping.as_ref().is_none_or(|h| h.is_finished())
    }

    /// Starts draining and deleting the ublk device, if there is one.
    fn stop_ublk(&mut self) {
        if let Some(u) = self.ublk.take() {
            self.ublk_stopping = Some(tokio::task::spawn_blocking(move || u.stop()));
        }
    }

    /// Why the ublk device failed to start, if it did.
    fn ublk_failure(&self) -> Option<String> {
        match self.ublk.as_ref().map(|u| u.phase()) {
            Some(Phase::Failed(reason)) => Some(reason),
            _ => None,
        }
    }
}

/// The ublk frontend of a resource.
#[derive(Debug, Clone)]
pub struct UblkConfig {
    /// Device id (`/dev/ublkb<id>`).
    pub id: u32,
    /// Hardware queues.
    pub queues: u16,
    /// Queue depth.
    pub depth: u16,
    /// Re-attach to the device a crashed blockd left (found at start-up).
    pub recover: bool,
}

/// Everything a resource task needs.
pub struct ResourceTask {
    /// Resource name.
    pub name: String,
    /// The engine.
    pub engine: Engine,
    /// The metadata store.
    pub md: MdStore,
    /// The backing device.
    pub backing: Backing,
    /// The backing device's path (opened again by `attach`).
    pub backing_path: PathBuf,
    /// Where its metadata lives.
    pub md_location: MdLocation,
    /// The ublk device served while Primary.
    pub ublk: Option<UblkConfig>,
    /// NBD socket path, if configured.
    pub nbd_socket: Option<PathBuf>,
    /// Where events go.
    pub events: broadcast::Sender<Event>,
    /// Whether the link should connect.
    pub want_link: watch::Sender<bool>,
    /// Inbox.
    pub rx: mpsc::Receiver<ResourceMsg>,
    /// A sender to the inbox, for completions.
    pub tx: mpsc::Sender<ResourceMsg>,
    /// When the task was made: the engine's monotonic clock counts from here.
    pub started: Instant,
    /// Whether frontend reads may bypass this task, published after each batch.
    pub local_reads: Arc<LocalReads>,
}

fn now(start: Instant) -> Now {
    let wall_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    Now {
        mono_ms: start.elapsed().as_millis() as u64,
        wall_ms,
    }
}

impl ResourceTask {
    /// Runs until shutdown.
    pub async fn run(mut self) {
        let start = self.started;
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut pending: HashMap<ReqId, oneshot::Sender<IoOutcome>> = HashMap::new();
        let mut next_req: ReqId = 1;
        let mut next_session: u64 = 1;
        let mut session: Option<Session> = None;
        let mut fronts = Frontends::default();
        let mut shutdown_done: Option<oneshot::Sender<()>> = None;
        let mut leave_primary = false;
        // Role changes answered once the peer has seen them (or after a grace period)
        // and the ublk device has settled; `true` marks a promotion.
        let mut awaiting: Vec<(oneshot::Sender<CommandResult>, CommandResult, Instant, bool)> =
            Vec::new();
        // Demotions waiting for frontend users to go away.
        let mut pending_demotions: Vec<(oneshot::Sender<CommandResult>, Instant)> = Vec::new();
        self.recover_primary(start);
        self.execute(&mut pending, &mut session, &mut fronts);
        loop {
            // Frames staged while handling the last message go out before waiting for
            // the next one: from here while little is in flight (latency), else by
            // the writer thread.
            if let Some(s) = session.as_mut() {
                s.writer.flush(self.light_load(&pending));
            }
            tokio::select! {
                _ = tick.tick() => {
                    self.engine.handle(now(start), Input::Tick);
                }
                msg = self.rx.recv() => {
                    let Some(msg) = msg else { break };
                    match msg {
                        ResourceMsg::Engine(input) => self.engine.handle(now(start), input),
                        ResourceMsg::Io { request, reply } => {
                            let req = next_req;
                            next_req += 1;
                            pending.insert(req, reply);
                            self.engine.handle(now(start), Input::Io { req, request });
                        }
                        ResourceMsg::Command { cmd, reply } => {
                            if cmd == Command::Secondary && fronts.busy().is_some() {
                                // A client that just closed its socket (or a mount just
                                // released) may not be noticed yet: give it a moment.
                                pending_demotions.push((reply, Instant::now() + Duration::from_millis(1500)));
                                continue;
                            }
                            let promotion = matches!(cmd, Command::Primary { .. });
                            let role_change = promotion || cmd == Command::Secondary;
                            let r = self.engine.command(now(start), cmd);
                            if role_change {
                                awaiting.push((reply, r, Instant::now() + Duration::from_secs(2), promotion));
                            } else {
                                let _ = reply.send(r);
                            }
                        }
                        ResourceMsg::Attach { reply } => {
                            let _ = reply.send(self.attach(start));
                        }
                        ResourceMsg::Status { reply } => {
                            let mut st = self.engine.status();
                            st.devices.extend(fronts.devices());
                            let io = &mut st.statistics;
                            io.disk_read_bytes += self.local_reads.read_bytes();
                            io.app_pending += self.local_reads.in_flight();
                            io.local_pending += self.local_reads.in_flight();
                            let _ = reply.send(st);
                        }
                        ResourceMsg::Session(s) => {
                            let id = next_session;
                            next_session += 1;
                            let features = s.features;
                            // The engine closes the old session when it sees the new one.
                            let old = session.replace(self.start_session(id, s));
                            if let Some(old) = old {
                                old.reader.abort();
                            }
                            self.engine.handle(now(start), Input::PeerConnected { session: id, features });
                        }
                        ResourceMsg::FrontendChanged => {}
                        ResourceMsg::Shutdown { done } => {
                            shutdown_done = Some(done);
                            // The device's in-flight I/O still needs answers while it
                            // stops: the loop runs until it is gone.
                            if fronts.ublk.as_ref().is_some_and(|u| u.in_use()) {
                                if let Some(u) = fronts.ublk.take() {
                                    warn!(resource = %self.name, device = %u.path().display(), "left in place with its I/O held: a restarted blockd re-attaches it");
                                    u.abandon();
                                    leave_primary = true;
                                }
                            } else {
                                fronts.stop_ublk();
                            }
                        }
                    }
                }
            }
            self.execute(&mut pending, &mut session, &mut fronts);
            if !pending_demotions.is_empty() {
                let busy = fronts.busy();
                let now_i = Instant::now();
                for (reply, deadline) in std::mem::take(&mut pending_demotions) {
                    match &busy {
                        None => {
                            let r = self.engine.command(now(start), Command::Secondary);
                            self.execute(&mut pending, &mut session, &mut fronts);
                            awaiting.push((reply, r, now_i + Duration::from_secs(2), false));
                        }
                        Some(why) if now_i >= deadline => {
                            let _ = reply.send(CommandResult::Refused(format!(
                                "{} is in use: {why}",
                                self.name
                            )));
                        }
                        Some(_) => pending_demotions.push((reply, deadline)),
                    }
                }
            }
            if !awaiting.is_empty() {
                self.answer_role_changes(
                    start,
                    &mut awaiting,
                    &mut pending,
                    &mut session,
                    &mut fronts,
                );
            }
            if shutdown_done.is_some() && fronts.settled() {
                break;
            }
        }
        self.stop(&mut fronts, leave_primary).await;
        if let Some(s) = session.take() {
            s.reader.abort();
        }
        if let Some(done) = shutdown_done {
            let _ = done.send(());
        }
    }

    /// Answers the role changes that are ready: the peer has seen the new role (or the
    /// grace period ended) and the ublk device has settled. A promotion whose ublk device
    /// failed to start is undone and refused.
    fn answer_role_changes(
        &mut self,
        start: Instant,
        awaiting: &mut Vec<(oneshot::Sender<CommandResult>, CommandResult, Instant, bool)>,
        pending: &mut HashMap<ReqId, oneshot::Sender<IoOutcome>>,
        session: &mut Option<Session>,
        fronts: &mut Frontends,
    ) {
        let known = self.engine.peer_knows_state();
        let settled = fronts.settled();
        let now_i = Instant::now();
        let (ready, wait): (Vec<_>, Vec<_>) = awaiting
            .drain(..)
            .partition(|(_, _, deadline, _)| settled && (known || now_i >= *deadline));
        *awaiting = wait;
        for (reply, r, _, promotion) in ready {
            let failure = fronts.ublk_failure();
            match (promotion, &r, failure) {
                (true, CommandResult::Ok(_), Some(why)) => {
                    error!(resource = %self.name, "promotion undone: {why}");
                    self.engine.command(now(start), Command::Secondary);
                    self.execute(pending, session, fronts);
                    let _ = reply.send(CommandResult::Refused(format!(
                        "{}: the ublk device did not start ({why}); still Secondary",
                        self.name
                    )));
                }
                _ => {
                    let _ = reply.send(r);
                }
            }
        }
    }

    /// After a crash while Primary, blockd found this resource's ublk device waiting for
    /// a new server: promote again so the device can be re-attached. If the promotion is
    /// refused, the device is deleted (its held I/O fails) rather than left hanging.
    fn recover_primary(&mut self, start: Instant) {
        let Some(u) = self.ublk.as_mut().filter(|u| u.recover) else {
            return;
        };
        let id = u.id;
        // The device proves this node was Primary until the crash; the peer is not
        // connected yet, so only the "peer unknown" check is skipped: stale data is not
        // promoted.
        let result = if self.engine.persisted_state().disk == DiskState::UpToDate {
            self.engine
                .command(now(start), Command::Primary { force: true })
        } else {
            CommandResult::Refused("local data is not UpToDate".into())
        };
        match result {
            CommandResult::Ok(_) => {
                info!(resource = %self.name, ublk = id, "Primary again to re-attach /dev/ublkb{id} left by a crashed blockd");
            }
            CommandResult::Refused(why) => {
                u.recover = false;
                error!(resource = %self.name, ublk = id, "cannot re-attach /dev/ublkb{id} ({why}): deleting it; its held I/O fails");
                tokio::task::spawn_blocking(move || {
                    if let Err(e) = ublk::delete(id) {
                        warn!(ublk = id, "deleting /dev/ublkb{id}: {e}");
                    }
                });
            }
        }
    }

    /// Opens the backing device and its metadata again and hands them to the engine
    /// (which takes them only after a detach); on success they replace the failed ones.
    fn attach(&mut self, start: Instant) -> CommandResult {
        if self.engine.disk_attached() {
            return CommandResult::Refused(format!("the disk of {} is attached", self.name));
        }
        let path = self.backing_path.display();
        let md = match MdStore::open(&self.backing_path, &self.md_location) {
            Ok(md) => md,
            Err(e) => {
                return CommandResult::Refused(format!(
                    "opening the metadata of {path}: {e} (on a new disk, run `blockctl create-md --force {}` first)",
                    self.name
                ))
            }
        };
        if md.usable_bytes() < self.engine.size_bytes() {
            return CommandResult::Refused(format!(
                "{path} holds {} usable bytes, less than the {} {} exports",
                md.usable_bytes(),
                self.engine.size_bytes(),
                self.name
            ));
        }
        let backing = match Backing::open(&self.backing_path) {
            Ok(b) => b,
            Err(e) => return CommandResult::Refused(format!("opening {path}: {e}")),
        };
        let uuids = md.superblock().uuids;
        let r = self.engine.command(now(start), Command::Attach { uuids });
        if matches!(r, CommandResult::Ok(_)) {
            info!(resource = %self.name, backing = %path, "disk attached");
            self.md = md;
            self.backing = backing;
        }
        r
    }

    fn start_session(&self, id: u64, s: NewSession) -> Session {
        let (rd, wr) = s.stream.into_split();
        let reader = tokio::spawn(peer::read_session(rd, s.leftover, id, self.tx.clone()));
        Session {
            id,
            writer: sender::Writer::start(wr, id, self.tx.clone()),
            reader,
            _ended: s.ended,
        }
    }

    async fn stop(&mut self, fronts: &mut Frontends, leave_primary: bool) {
        if let Some(u) = fronts.ublk.take() {
            let _ = tokio::task::spawn_blocking(move || u.stop()).await;
        }
        if let Some(e) = fronts.nbd.take() {
            let _ = e.shutdown.send(true);
            e.task.abort();
            let _ = std::fs::remove_file(&e.path);
        }
        if !self.engine.disk_attached() {
            // The detach persisted what it could; the failed disk gets nothing more.
            info!(resource = %self.name, "stopped (the disk is detached)");
            return;
        }
        let clean = self.engine.is_idle();
        let mut st = self.engine.persisted_state();
        if clean && !leave_primary && self.engine.role() == hablock_proto::types::Role::Primary {
            // A clean stop: no write can be half-done, so the crash flag is not needed.
            st.primary = false;
        }
        if let Err(e) = self.md.write_bitmap(self.engine.bitmap_mut()) {
            error!(resource = %self.name, "persisting the bitmap at shutdown failed: {e}");
        }
        self.persist_superblock(&st);
        info!(resource = %self.name, "stopped");
    }

    fn persist_superblock(&mut self, st: &crate::engine::PersistedState) {
        let mut sb = self.md.superblock().clone();
        sb.uuids = st.uuids;
        sb.disk = st.disk;
        sb.primary_since_ms = st.primary_since_ms;
        if st.primary {
            sb.flags |= crate::md::FLAG_PRIMARY;
        } else {
            sb.flags &= !crate::md::FLAG_PRIMARY;
        }
        if let Err(e) = self.md.write_superblock(&sb) {
            // The caller's guarantee rests on this write: make it loud.
            error!(resource = %self.name, "persisting the superblock failed: {e}");
        }
    }

    /// Little is in flight: small frames may go out from here ([`LIGHT_LOAD`]).
    fn light_load(&self, pending: &HashMap<ReqId, oneshot::Sender<IoOutcome>>) -> bool {
        pending.len() + self.engine.local_ops_in_flight() <= LIGHT_LOAD
    }

    /// Whether a small local operation may be done by this task right now
    /// ([`INLINE_IO_BYTES`]): at most `requests` frontend requests in flight, little in
    /// flight in all, and nothing waiting in the inbox (a message behind this one, the
    /// next of a burst of peer writes or of fio's requests, would wait for the disk, and
    /// a burst would reach the disk one write at a time).
    fn may_inline(
        &self,
        pending: &HashMap<ReqId, oneshot::Sender<IoOutcome>>,
        requests: usize,
    ) -> bool {
        pending.len() <= requests && self.light_load(pending) && self.rx.is_empty()
    }

    /// Carries out the engine's actions until it has none left. A small local read or
    /// write of an otherwise idle node is done right here, once the frames of its batch
    /// are out ([`INLINE_IO_BYTES`]), and its outcome goes straight back to the engine.
    fn execute(
        &mut self,
        pending: &mut HashMap<ReqId, oneshot::Sender<IoOutcome>>,
        session: &mut Option<Session>,
        fronts: &mut Frontends,
    ) {
        let mut inline = Vec::new();
        loop {
            let actions = self.engine.take_actions();
            // Before any request of the batch is answered: a write acknowledged with
            // the disk just detached must not be read back from that disk.
            self.local_reads.publish(
                self.backing
                    .direct_file()
                    .filter(|_| self.engine.reads_locally()),
            );
            if actions.is_empty() {
                if inline.is_empty() {
                    return;
                }
                // What the batch staged leaves before this thread waits on the disk.
                if let Some(s) = session.as_mut() {
                    s.writer.flush(self.light_load(pending));
                }
                for io in inline.drain(..) {
                    let (op, outcome) = match io {
                        InlineIo::Write {
                            op,
                            offset,
                            data,
                            fua,
                        } => (op, self.backing.write_now(offset, data, fua)),
                        InlineIo::Read { op, offset, len } => {
                            (op, self.backing.read_now(offset, len))
                        }
                    };
                    self.engine
                        .handle(now(self.started), Input::LocalDone { op, outcome });
                }
                continue;
            }
            for action in actions {
                let action = match action {
                    // A Secondary's write (or an idle Primary's resync): a Primary's
                    // own write is not what its request waits for, the peer's
                    // acknowledgement is.
                    Action::LocalWrite {
                        op,
                        offset,
                        data,
                        fua,
                    } if data.len() <= INLINE_IO_BYTES && self.may_inline(pending, 0) => {
                        inline.push(InlineIo::Write {
                            op,
                            offset,
                            data,
                            fua,
                        });
                        continue;
                    }
                    // A read for the peer, or the one request of a Primary: what it
                    // waits for.
                    Action::LocalRead { op, offset, len }
                        if len as usize <= INLINE_IO_BYTES && self.may_inline(pending, 1) =>
                    {
                        inline.push(InlineIo::Read { op, offset, len });
                        continue;
                    }
                    other => other,
                };
                self.execute_one(action, pending, session, fronts);
            }
        }
    }

    fn execute_one(
        &mut self,
        action: Action,
        pending: &mut HashMap<ReqId, oneshot::Sender<IoOutcome>>,
        session: &mut Option<Session>,
        fronts: &mut Frontends,
    ) {
        match action {
            Action::LocalRead { op, offset, len } => {
                self.backing.read(offset, len, self.local_done(op));
            }
            Action::LocalWrite {
                op,
                offset,
                data,
                fua,
            } => {
                self.backing.write(offset, data, fua, self.local_done(op));
            }
            Action::LocalTrim {
                op,
                offset,
                len,
                zeroes,
                fua,
            } => {
                self.backing
                    .trim(offset, len, zeroes, fua, self.local_done(op));
            }
            Action::LocalFlush { op } => {
                self.backing.flush(self.local_done(op));
            }
            Action::Send(frame) => {
                if let Some(s) = session {
                    s.writer
                        .send(encode_parts(&frame), self.light_load(pending));
                }
            }
            Action::CloseSession {
                session: id,
                reason,
            } => {
                if session.as_ref().is_some_and(|s| s.id == id) {
                    if let Some(s) = session.take() {
                        info!(resource = %self.name, session = s.id, %reason, "closing peer session");
                        s.reader.abort();
                    }
                }
            }
            Action::Complete { req, outcome } => {
                if let Some(reply) = pending.remove(&req) {
                    let _ = reply.send(outcome);
                }
            }
            Action::PersistSuperblock(st) => self.persist_superblock(&st),
            Action::PersistActivityLog(extents) => {
                if let Err(e) = self.md.write_bitmap(self.engine.bitmap_mut()) {
                    error!(resource = %self.name, "persisting the bitmap failed: {e}");
                }
                if let Err(e) = self.md.write_al(&extents) {
                    error!(resource = %self.name, "persisting the activity log failed: {e}");
                }
            }
            Action::PersistBitmap => {
                if let Err(e) = self.md.write_bitmap(self.engine.bitmap_mut()) {
                    error!(resource = %self.name, "persisting the bitmap failed: {e}");
                }
            }
            Action::SetExported(on) => {
                if on {
                    if fronts.ublk.is_none() {
                        fronts.ublk = self.start_ublk();
                    }
                    if fronts.nbd.is_none() {
                        fronts.nbd = self.start_export();
                    }
                } else {
                    fronts.stop_ublk();
                    if let Some(e) = fronts.nbd.take() {
                        let _ = e.shutdown.send(true);
                        e.task.abort();
                        let _ = std::fs::remove_file(&e.path);
                        info!(resource = %self.name, path = %e.path.display(), "NBD export removed");
                    }
                }
            }
            Action::WantConnection(on) => {
                let _ = self.want_link.send(on);
            }
            Action::Event {
                kind,
                old,
                new,
                message,
            } => {
                let time_ms = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_millis() as u64)
                    .unwrap_or(0);
                let _ = self.events.send(Event {
                    time_ms,
                    resource: self.name.clone(),
                    kind: kind.to_string(),
                    old,
                    new,
                    message,
                });
            }
        }
    }

    /// Where the outcome of local operation `op` goes: straight into the inbox from the
    /// thread that finished it (no task in between); a full inbox is waited for on a
    /// task, never on that thread.
    fn local_done(&self, op: OpId) -> Done {
        let tx = self.tx.clone();
        let runtime = tokio::runtime::Handle::current();
        Box::new(move |outcome| {
            let msg = ResourceMsg::Engine(Input::LocalDone { op, outcome });
            if let Err(mpsc::error::TrySendError::Full(msg)) = tx.try_send(msg) {
                runtime.spawn(async move {
                    let _ = tx.send(msg).await;
                });
            }
        })
    }

    fn handle(&self) -> ResourceHandle {
        ResourceHandle {
            tx: self.tx.clone(),
            size: self.engine.size_bytes(),
        }
    }

    /// Adds (or re-attaches) the ublk device, when one is configured.
    fn start_ublk(&mut self) -> Option<UblkDevice> {
        let (logical_block, physical_block) = self.backing.block_sizes();
        let size_bytes = self.engine.size_bytes();
        let handle = self.handle();
        let u = self.ublk.as_mut()?;
        let spec = UblkSpec {
            resource: self.name.clone(),
            id: u.id,
            queues: u.queues,
            depth: u.depth,
            size_bytes,
            logical_block,
            physical_block,
            recover: u.recover,
        };
        u.recover = false;
        Some(UblkDevice::start(
            spec,
            handle,
            self.local_reads.clone(),
            self.tx.clone(),
        ))
    }

    fn start_export(&self) -> Option<NbdExport> {
        let path = self.nbd_socket.clone()?;
        let _ = std::fs::remove_file(&path);
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let listener = match tokio::net::UnixListener::bind(&path) {
            Ok(l) => l,
            Err(e) => {
                warn!(resource = %self.name, path = %path.display(), "cannot create the NBD socket: {e}");
                return None;
            }
        };
        let (shutdown, shutdown_rx) = watch::channel(false);
        let clients = Arc::new(AtomicUsize::new(0));
        let handle = Arc::new(self.handle());
        let name = self.name.clone();
        let c = clients.clone();
        let task = tokio::spawn(async move {
            if let Err(e) =
                nbd::serve_listener(listener, name.clone(), handle, shutdown_rx, c).await
            {
                warn!(resource = %name, "NBD listener ended: {e}");
            }
        });
        info!(resource = %self.name, path = %path.display(), "NBD export up");
        Some(NbdExport {
            path,
            shutdown,
            clients,
            task,
        })
    }
}
