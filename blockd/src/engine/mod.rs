//! The replication engine of one resource, sans-IO.
//!
//! The engine owns the replication state (role, connection, disk states, generation
//! identifiers, dirty bitmap, activity log, in-flight requests, resync and verify) and
//! never performs I/O or reads a clock: the daemon feeds it [`Input`]s with the current
//! time ([`Now`]) and carries out the [`Action`]s it returns, **in order**. Persist
//! actions are carried out synchronously before the next action, which is what makes
//! "mark the bitmap / activity log before acknowledging" hold.
//!
//! Write path (protocol C): a frontend write takes its range lock (overlapping writes
//! keep their order on both nodes), makes sure its activity-log extent is persisted,
//! then issues the local write and the peer's `Data` at once; the request completes
//! when both are done. Without a peer the written blocks are marked in the dirty
//! bitmap instead, and only those are resynced later. A failed local disk is
//! detached and the peer serves what it held (the `detach` module).

pub mod decide;
mod detach;
pub mod ranges;
mod resync;
mod session;
mod verify;

#[cfg(test)]
mod sim;

use crate::md::{ActivityLog, Bitmap, BLOCK_BYTES};
use bytes::Bytes;
use decide::{Side, SplitBrainPolicy};
use hablock_proto::control::{IoStatistics, ResourceStatus, VerifyResult};
use hablock_proto::peer::{Frame, Message, NodeState};
use hablock_proto::types::{DiskState, Role, Uuids};
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};
use ranges::{Range, RangeLocks};
use std::collections::HashMap;
use tracing::{info, warn};

pub use session::Conn;

/// Largest write accepted in one request (it is replicated as one frame).
pub const MAX_WRITE_BYTES: u64 = 32 << 20;

/// Identifies a frontend request; chosen by the daemon.
pub type ReqId = u64;
/// Identifies a local I/O operation; chosen by the engine.
pub type OpId = u64;

/// The current time, passed with every input (the engine never reads a clock).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Now {
    /// Monotonic milliseconds (timeouts, rates).
    pub mono_ms: u64,
    /// Wall-clock milliseconds since the Unix epoch (recorded in metadata).
    pub wall_ms: u64,
}

/// A frontend request.
#[derive(Debug, Clone)]
pub enum IoRequest {
    /// Read `len` bytes at `offset`.
    Read {
        /// Byte offset.
        offset: u64,
        /// Length.
        len: u32,
    },
    /// Write `data` at `offset`.
    Write {
        /// Byte offset.
        offset: u64,
        /// The bytes.
        data: Bytes,
        /// Durable before completion.
        fua: bool,
    },
    /// Make every completed write durable on both nodes.
    Flush,
    /// Discard (`zeroes = false`) or write zeroes.
    Trim {
        /// Byte offset.
        offset: u64,
        /// Length.
        len: u64,
        /// Write zeroes rather than discard.
        zeroes: bool,
        /// Durable before completion.
        fua: bool,
    },
}

/// The outcome of a request or a local operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IoOutcome {
    /// Done, no data.
    Done,
    /// Done, with the data read (page-aligned when the backing device could read it
    /// with O_DIRECT).
    Data(Bytes),
    /// Failed with this errno.
    Failed(i32),
}

/// An operator command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Promote.
    Primary {
        /// Skip the safety checks (peer unknown, data Inconsistent).
        force: bool,
    },
    /// Demote (the daemon has checked that no frontend client is connected).
    Secondary,
    /// Leave StandAlone and connect.
    Connect {
        /// Become the sync target of a split brain.
        discard_my_data: bool,
    },
    /// Drop the connection and stay StandAlone.
    Disconnect,
    /// Start an online verify.
    Verify,
    /// Resync all local data from the peer.
    Invalidate,
    /// Stop using the local disk (`blockctl detach`), as after an I/O error: the peer
    /// serves the I/O from then on.
    Detach,
    /// Use a disk again after a detach (`blockctl attach`): the daemon has opened it
    /// and its metadata, whose generation identifiers these are. It is resynced in full
    /// from the peer.
    Attach {
        /// The identifiers in the disk's superblock.
        uuids: Uuids,
    },
    /// Take new settings from a reloaded configuration (any role, any state).
    Tune(Tunables),
}

/// The settings a running engine takes from a reloaded configuration; the rest of
/// [`EngineConfig`] is fixed for the engine's life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tunables {
    /// Resync and verify rate limit, bytes per second (a running resync or verify
    /// changes pace at the next tick).
    pub resync_rate_bps: u64,
    /// Split-brain policies (used at the next state exchange).
    pub policy: SplitBrainPolicy,
}

/// What happened to a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandResult {
    /// Carried out, with warnings for the operator.
    Ok(Vec<String>),
    /// Refused, with a one-line reason.
    Refused(String),
}

/// An input to the engine.
#[derive(Debug, Clone)]
pub enum Input {
    /// Time passed (drives pings, timeouts and resync pacing); sent every ~100 ms.
    Tick,
    /// A frontend request.
    Io {
        /// Its id.
        req: ReqId,
        /// The request.
        request: IoRequest,
    },
    /// A local operation finished.
    LocalDone {
        /// The operation.
        op: OpId,
        /// Its outcome.
        outcome: IoOutcome,
    },
    /// An authenticated session with the peer is up (handshake and authentication
    /// were done by the daemon, see [`crate::daemon`]).
    PeerConnected {
        /// Session number, chosen by the daemon, unique per daemon run.
        session: u64,
        /// Negotiated feature bits.
        features: u64,
    },
    /// A frame arrived on a session.
    PeerFrame {
        /// The session.
        session: u64,
        /// The frame.
        frame: Frame,
    },
    /// A frame arrived with a bad payload checksum.
    PeerCorrupt {
        /// The session.
        session: u64,
        /// Its kind.
        kind: u8,
        /// Its id.
        id: u64,
    },
    /// A session ended (socket closed, decode error, write error).
    PeerLost {
        /// The session.
        session: u64,
        /// Why.
        reason: String,
    },
}

/// What the engine asks the daemon to do. Carried out in order.
#[derive(Debug, Clone)]
pub enum Action {
    /// Read from the backing device; answer with [`Input::LocalDone`] carrying data.
    LocalRead {
        /// Operation id.
        op: OpId,
        /// Byte offset.
        offset: u64,
        /// Length.
        len: u32,
    },
    /// Write to the backing device.
    LocalWrite {
        /// Operation id.
        op: OpId,
        /// Byte offset.
        offset: u64,
        /// The bytes.
        data: Bytes,
        /// Make it durable (fdatasync) before answering.
        fua: bool,
    },
    /// Discard or zero a range of the backing device.
    LocalTrim {
        /// Operation id.
        op: OpId,
        /// Byte offset.
        offset: u64,
        /// Length.
        len: u64,
        /// Write zeroes rather than discard.
        zeroes: bool,
        /// Make it durable before answering.
        fua: bool,
    },
    /// Make every completed local write durable.
    LocalFlush {
        /// Operation id.
        op: OpId,
    },
    /// Send a frame on the current session.
    Send(Frame),
    /// Close this session (if it is still open); reconnect if the engine still wants
    /// a connection.
    CloseSession {
        /// The session.
        session: u64,
        /// Why (logged).
        reason: String,
    },
    /// Complete a frontend request.
    Complete {
        /// The request.
        req: ReqId,
        /// Its outcome.
        outcome: IoOutcome,
    },
    /// Persist the superblock fields (synchronously, before the next action).
    PersistSuperblock(PersistedState),
    /// Persist the dirty pages of the bitmap, then the activity log with these extents.
    PersistActivityLog(Vec<u32>),
    /// Persist the dirty pages of the bitmap.
    PersistBitmap,
    /// Start (true) or stop (false) the frontends (the role changed).
    SetExported(bool),
    /// Whether the daemon should keep (re)connecting to the peer.
    WantConnection(bool),
    /// Something the operator should see in `events`.
    Event {
        /// Kind (`role`, `connection`, `disk`, `peer-role`, `peer-disk`, `split-brain`, ...).
        kind: &'static str,
        /// Previous value.
        old: Option<String>,
        /// New value.
        new: Option<String>,
        /// Free text.
        message: Option<String>,
    },
}

/// The superblock fields the engine owns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PersistedState {
    /// Generation identifiers.
    pub uuids: Uuids,
    /// Disk state.
    pub disk: DiskState,
    /// The node is (or was, when it crashed) Primary.
    pub primary: bool,
    /// When the node last became Primary.
    pub primary_since_ms: u64,
}

/// Static settings of an engine.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Resource name.
    pub resource: String,
    /// This node's name.
    pub node: String,
    /// The peer's name.
    pub peer: String,
    /// Usable size of the local backing device.
    pub usable_bytes: u64,
    /// Split-brain policies.
    pub policy: SplitBrainPolicy,
    /// Resync and verify rate limit, bytes per second.
    pub resync_rate_bps: u64,
    /// Interval between keepalive pings.
    pub ping_interval_ms: u64,
    /// Peer considered gone after this long without a frame or an ack.
    pub peer_timeout_ms: u64,
    /// Capacity of the activity log, in extents.
    pub al_extents: usize,
}

/// An application write (or trim) in flight on the Primary.
#[derive(Debug)]
struct AppWrite {
    req: ReqId,
    range: Range,
    payload: WritePayload,
    fua: bool,
    started: bool,
    /// Counted in the activity log (released on completion).
    al_held: bool,
    local_done: bool,
    /// Waiting for the peer's ack (sent at `sent_ms`).
    peer_pending: bool,
    /// The peer acknowledged it.
    mirrored: bool,
    /// The local half failed (the range stays marked for a resync).
    local_failed: bool,
    sent_ms: u64,
    error: Option<i32>,
}

#[derive(Debug, Clone)]
enum WritePayload {
    Data(Bytes),
    Trim { zeroes: bool },
}

#[derive(Debug)]
struct AppFlush {
    req: ReqId,
    local_done: bool,
    /// Sent to the peer (its durability then counts even if the local flush fails).
    sent: bool,
    peer_pending: bool,
    sent_ms: u64,
    error: Option<i32>,
}

/// What a local operation belongs to.
#[derive(Debug, Clone, Copy)]
enum OpKind {
    /// A frontend read (re-asked of the peer if the disk fails).
    AppRead { req: ReqId, offset: u64, len: u32 },
    /// The local half of an application write (id = write id).
    AppWrite(u64),
    /// The local half of an application flush (id = flush id).
    AppFlush(u64),
    /// Applying a peer's write or trim (answer with DataAck to this frame id on the
    /// session it came from, never on a later one).
    PeerWrite {
        session: u64,
        frame_id: u64,
        offset: u64,
        len: u64,
    },
    /// Applying a peer's flush.
    PeerFlush { session: u64, frame_id: u64 },
    /// Reading for a Diskless peer (answer with `ReadReply` on its session).
    PeerRead {
        session: u64,
        frame_id: u64,
        offset: u64,
    },
    /// Resync source reading a chunk.
    ResyncRead { chunk: u64 },
    /// Resync target writing a chunk.
    ResyncWrite {
        session: u64,
        frame_id: u64,
        offset: u64,
        len: u64,
    },
    /// Verify source reading its own copy.
    VerifyRead { chunk: u64 },
    /// Verify target reading to answer.
    VerifyAnswer {
        session: u64,
        frame_id: u64,
        offset: u64,
    },
}

impl OpKind {
    /// What the operation was, for the log of a detach.
    fn describe(&self) -> &'static str {
        match self {
            OpKind::AppRead { .. } => "read",
            OpKind::AppWrite(_) => "write",
            OpKind::AppFlush(_) => "flush",
            OpKind::PeerWrite { .. } => "write of a replicated block",
            OpKind::PeerFlush { .. } => "flush for the peer",
            OpKind::PeerRead { .. } => "read for the peer",
            OpKind::ResyncRead { .. } => "resync read",
            OpKind::ResyncWrite { .. } => "resync write",
            OpKind::VerifyRead { .. } | OpKind::VerifyAnswer { .. } => "verify read",
        }
    }
}

/// Who holds a range lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LockOwner {
    Write(u64),
    /// The local half of a peer's write or trim (op id): it waits for a resync chunk
    /// this node is sending over the same blocks.
    PeerWrite(u64),
    Resync(u64),
    Verify(u64),
}

/// The block data a frame carries (a replicated write or resync data), in bytes.
fn block_payload(frame: &Frame) -> u64 {
    match &frame.msg {
        Message::Data { payload, .. }
        | Message::RsData { payload, .. }
        | Message::ReadReply { payload, .. } => payload.len() as u64,
        _ => 0,
    }
}

/// How often a running resync persists its progress.
const BITMAP_PERSIST_INTERVAL_MS: u64 = 1000;

/// The replication engine of one resource.
pub struct Engine {
    cfg: EngineConfig,
    rng: StdRng,
    now: Now,
    role: Role,
    disk: DiskState,
    uuids: Uuids,
    primary_since_ms: u64,
    crashed_primary: bool,
    discard_my_data: bool,
    /// Size exported to clients (the smaller of both nodes once they have met).
    size_bytes: u64,
    bitmap: Bitmap,
    al: ActivityLog,
    conn: Conn,
    split_brain: bool,
    locks: RangeLocks<LockOwner>,
    writes: HashMap<u64, AppWrite>,
    flushes: HashMap<u64, AppFlush>,
    ops: HashMap<OpId, OpKind>,
    next_id: u64,
    resynced_bytes: u64,
    last_verify: Option<VerifyResult>,
    resync: Option<resync::Resync>,
    /// When a running resync next writes its progress (the bitmap) to disk.
    next_bitmap_persist_ms: u64,
    /// The ping that follows our last announced state change, until answered.
    state_sync: Option<u64>,
    meter: resync::RateMeter,
    verify: Option<verify::Verify>,
    /// The counters of [`IoStatistics`] (its `*_pending` fields are filled in by
    /// [`Engine::status`]).
    counters: IoStatistics,
    /// Reads asked of the peer while Diskless, by frame id.
    remote_reads: HashMap<u64, detach::RemoteRead>,
    /// After a detach: metadata writes queued from this index on are dropped.
    metadata_cutoff: Option<usize>,
    /// Why the disk was detached (the failed operation and its errno).
    detach_reason: Option<String>,
    /// Peer writes waiting for a range lock, with the local operation to issue then.
    waiting_peer_writes: HashMap<OpId, Action>,
    actions: Vec<Action>,
}

impl Engine {
    /// Builds the engine from its settings and the state read from the metadata.
    ///
    /// `al_extents` is the persisted activity log: when the node crashed while Primary
    /// (`state.primary`), every extent in it is marked out of sync, since writes in
    /// flight there may have reached one node only.
    pub fn new(
        cfg: EngineConfig,
        state: PersistedState,
        mut bitmap: Bitmap,
        al_extents: &[u32],
        seed: u64,
    ) -> Self {
        let crashed_primary = state.primary;
        if crashed_primary {
            for &e in al_extents {
                let offset = u64::from(e) * crate::md::AL_EXTENT_BYTES;
                if offset < cfg.usable_bytes {
                    let len = crate::md::AL_EXTENT_BYTES.min(cfg.usable_bytes - offset);
                    bitmap.set_range_bytes(offset, len);
                }
            }
        }
        let al = ActivityLog::new(cfg.al_extents, al_extents);
        let size_bytes = cfg.usable_bytes;
        let mut engine = Engine {
            rng: StdRng::seed_from_u64(seed),
            now: Now::default(),
            role: Role::Secondary,
            disk: state.disk,
            uuids: state.uuids,
            primary_since_ms: state.primary_since_ms,
            crashed_primary,
            discard_my_data: false,
            size_bytes,
            bitmap,
            al,
            conn: Conn::Connecting,
            split_brain: false,
            locks: RangeLocks::default(),
            writes: HashMap::new(),
            flushes: HashMap::new(),
            ops: HashMap::new(),
            next_id: (seed & 0xffff_ffff) << 20 | 1,
            resynced_bytes: 0,
            last_verify: None,
            resync: None,
            next_bitmap_persist_ms: 0,
            state_sync: None,
            meter: resync::RateMeter::default(),
            verify: None,
            counters: IoStatistics::default(),
            remote_reads: HashMap::new(),
            metadata_cutoff: None,
            detach_reason: None,
            waiting_peer_writes: HashMap::new(),
            actions: Vec::new(),
            cfg,
        };
        if crashed_primary {
            warn!(
                resource = %engine.cfg.resource,
                dirty_bytes = engine.bitmap.count() * BLOCK_BYTES,
                "node crashed while Primary: activity-log extents marked out of sync"
            );
            // The bitmap now covers the crash; the flag has done its job.
            engine.actions.push(Action::PersistBitmap);
            let st = engine.persisted_state();
            engine.actions.push(Action::PersistSuperblock(st));
        }
        engine.actions.push(Action::WantConnection(true));
        engine
    }

    /// Feeds one input.
    pub fn handle(&mut self, now: Now, input: Input) {
        self.now = now;
        match input {
            Input::Tick => self.on_tick(),
            Input::Io { req, request } => self.on_io(req, request),
            Input::LocalDone { op, outcome } => self.on_local_done(op, outcome),
            Input::PeerConnected { session, features } => self.on_peer_connected(session, features),
            Input::PeerFrame { session, frame } => {
                if self.conn.session() == Some(session) {
                    self.counters.net_received_bytes += block_payload(&frame);
                    self.on_frame(frame);
                }
            }
            Input::PeerCorrupt { session, kind, id } => {
                if self.conn.session() == Some(session) {
                    self.on_corrupt(kind, id);
                }
            }
            Input::PeerLost { session, reason } => {
                if self.conn.session() == Some(session) {
                    self.lose_session(&reason, false);
                }
            }
        }
        self.pump();
    }

    /// Carries out an operator command.
    pub fn command(&mut self, now: Now, cmd: Command) -> CommandResult {
        self.now = now;
        let needs_disks = match cmd {
            Command::Primary { .. } => self.role != Role::Primary,
            Command::Verify | Command::Invalidate => true,
            _ => false,
        };
        if needs_disks && self.diskless() {
            return CommandResult::Refused(
                "the local disk is detached (Diskless) after an I/O error; replace it, \
                 then `blockctl create-md` and restart blockd"
                    .into(),
            );
        }
        if cmd == Command::Verify && self.conn.peer_roles().1 == DiskState::Diskless {
            return CommandResult::Refused(format!(
                "the disk of {} is detached (Diskless): there is no second copy to compare",
                self.cfg.peer
            ));
        }
        let r = match cmd {
            Command::Primary { force } => self.cmd_primary(force),
            Command::Secondary => self.cmd_secondary(),
            Command::Connect { discard_my_data } => self.cmd_connect(discard_my_data),
            Command::Disconnect => self.cmd_disconnect(),
            Command::Verify => self.cmd_verify(),
            Command::Invalidate => self.cmd_invalidate(),
            Command::Detach => self.cmd_detach(),
            Command::Attach { uuids } => self.cmd_attach(uuids),
            Command::Tune(t) => self.cmd_tune(t),
        };
        self.pump();
        r
    }

    /// Takes the actions produced so far (and counts the I/O they ask for).
    pub fn take_actions(&mut self) -> Vec<Action> {
        self.drop_metadata_writes();
        let c = &mut self.counters;
        for a in &self.actions {
            match a {
                Action::LocalRead { len, .. } => c.disk_read_bytes += u64::from(*len),
                Action::LocalWrite { data, .. } => c.disk_written_bytes += data.len() as u64,
                Action::Send(frame) => c.net_sent_bytes += block_payload(frame),
                Action::PersistActivityLog(_) => c.al_writes += 1,
                Action::PersistBitmap => c.bitmap_writes += 1,
                _ => {}
            }
        }
        std::mem::take(&mut self.actions)
    }

    /// Operations on the backing device asked for and not yet done (`LocalDone`).
    pub fn local_ops_in_flight(&self) -> usize {
        self.ops.len()
    }

    /// The bitmap, for the daemon to persist its dirty pages.
    pub fn bitmap_mut(&mut self) -> &mut Bitmap {
        &mut self.bitmap
    }

    /// Whether the backing device is in use (not detached after an I/O error).
    pub fn disk_attached(&self) -> bool {
        !self.diskless()
    }

    /// This node's role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// Whether a frontend read of any range may be served from the local disk as it is
    /// now, without asking the engine: this node is Primary and its disk UpToDate, so
    /// every block there holds the last acknowledged write (the engine would itself
    /// answer the read with [`Action::LocalRead`]). Changes only inside `handle` and
    /// `command`; a daemon that serves reads on other threads publishes it after each.
    pub fn reads_locally(&self) -> bool {
        self.role == Role::Primary && self.disk == DiskState::UpToDate
    }

    /// Size exported to clients.
    pub fn size_bytes(&self) -> u64 {
        self.size_bytes
    }

    /// Whether nothing is in flight (no request, no local operation).
    pub fn is_idle(&self) -> bool {
        self.writes.is_empty()
            && self.flushes.is_empty()
            && self.ops.is_empty()
            && self.remote_reads.is_empty()
    }

    /// The superblock fields as they should be persisted now (a detached disk is
    /// `Inconsistent` on disk: it is never trusted again without a resync).
    pub fn persisted_state(&self) -> PersistedState {
        PersistedState {
            uuids: self.uuids,
            disk: if self.diskless() {
                DiskState::Inconsistent
            } else {
                self.disk
            },
            primary: self.role == Role::Primary,
            primary_since_ms: self.primary_since_ms,
        }
    }

    /// Status for `blockctl status` (the daemon fills in `devices`).
    pub fn status(&self) -> ResourceStatus {
        let (peer_role, peer_disk) = self.conn.peer_roles();
        let (progress, rate, eta) = self.sync_figures();
        ResourceStatus {
            name: self.cfg.resource.clone(),
            node: self.cfg.node.clone(),
            peer: self.cfg.peer.clone(),
            role: self.role,
            peer_role,
            connection: self.conn.state(),
            disk: self.disk,
            peer_disk,
            size_bytes: self.size_bytes,
            out_of_sync_bytes: self.out_of_sync_bytes(),
            resynced_bytes: self.resynced_bytes,
            split_brain: self.split_brain,
            sync_progress: progress,
            sync_rate_bps: rate,
            sync_eta_s: eta,
            devices: Vec::new(),
            last_verify: self.last_verify.clone(),
            standalone_reason: self.conn.standalone_reason(),
            detach_reason: self.detach_reason.clone(),
            statistics: self.statistics(),
        }
    }

    /// The counters with what is in flight now.
    fn statistics(&self) -> IoStatistics {
        let app_reads = self
            .ops
            .values()
            .filter(|k| matches!(k, OpKind::AppRead { .. }))
            .count()
            + self.remote_reads.len();
        let peer_pending = self.writes.values().filter(|w| w.peer_pending).count()
            + self.flushes.values().filter(|f| f.peer_pending).count();
        IoStatistics {
            app_pending: (self.writes.len() + self.flushes.len() + app_reads) as u64,
            peer_pending: peer_pending as u64,
            local_pending: self.ops.len() as u64,
            ..self.counters.clone()
        }
    }

    fn out_of_sync_bytes(&self) -> u64 {
        (self.bitmap.count() * BLOCK_BYTES).min(self.cfg.usable_bytes)
    }

    fn alloc_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    fn new_uuid(&mut self) -> u64 {
        loop {
            let v = self.rng.next_u64();
            if v != 0 {
                return v;
            }
        }
    }

    fn event(
        &mut self,
        kind: &'static str,
        old: Option<String>,
        new: Option<String>,
        msg: Option<String>,
    ) {
        self.actions.push(Action::Event {
            kind,
            old,
            new,
            message: msg,
        });
    }

    fn set_role(&mut self, role: Role) {
        if self.role != role {
            info!(resource = %self.cfg.resource, old = %self.role, new = %role, "role change");
            let old = self.role;
            self.role = role;
            self.event("role", Some(old.to_string()), Some(role.to_string()), None);
        }
    }

    fn set_disk(&mut self, disk: DiskState) {
        if self.disk != disk {
            info!(resource = %self.cfg.resource, old = %self.disk, new = %disk, "disk state change");
            let old = self.disk;
            self.disk = disk;
            self.event("disk", Some(old.to_string()), Some(disk.to_string()), None);
        }
    }

    fn persist_superblock(&mut self) {
        let st = self.persisted_state();
        self.actions.push(Action::PersistSuperblock(st));
    }

    /// Starts a new data generation before the first write that is not mirrored
    /// (lazily, as DRBD: a Primary that loses its peer but writes nothing keeps its
    /// generation, so reconnecting needs no resync and is no split brain).
    fn begin_divergence(&mut self) {
        if self.role == Role::Primary && self.uuids.bitmap == 0 {
            self.uuids.bitmap = self.uuids.current;
            self.uuids.current = self.new_uuid();
            info!(resource = %self.cfg.resource, "writing without the peer: new data generation");
            self.persist_superblock();
        }
    }

    fn my_state(&self) -> NodeState {
        let mut flags = 0;
        if self.crashed_primary {
            flags |= hablock_proto::peer::state_flags::CRASHED_PRIMARY;
        }
        if self.discard_my_data {
            flags |= hablock_proto::peer::state_flags::DISCARD_MY_DATA;
        }
        NodeState {
            role: self.role,
            disk: self.disk,
            usable_bytes: self.cfg.usable_bytes,
            uuids: self.uuids,
            flags,
            primary_since_ms: self.primary_since_ms,
            dirty_bits: self.bitmap.count(),
        }
    }

    fn my_side(&self) -> Side {
        Side {
            node: self.cfg.node.clone(),
            role: self.role,
            disk: self.disk,
            uuids: self.uuids,
            dirty_bits: self.bitmap.count(),
            crashed_primary: self.crashed_primary,
            primary_since_ms: self.primary_since_ms,
            discard_my_data: self.discard_my_data,
        }
    }

    /// Sends our state followed by a ping: its answer tells that the peer has
    /// processed the state (the link is ordered and the peer handles frames in order).
    fn announce_state(&mut self) {
        let st = self.my_state();
        self.send(0, Message::State(st));
        let id = self.alloc_id();
        self.send(id, Message::Ping);
        self.state_sync = Some(id);
    }

    /// Whether the peer has seen our last role change (always true without a peer).
    /// The daemon answers `primary`/`secondary` only then, so that a promotion on the
    /// other node right after a demotion here is never refused.
    pub fn peer_knows_state(&self) -> bool {
        self.state_sync.is_none() || !self.conn.is_established()
    }

    fn send(&mut self, id: u64, msg: Message) {
        self.actions.push(Action::Send(Frame { id, msg }));
    }

    /// Sends only if `session` is still the current one (answers to a lost session's
    /// requests must never reach a later session, whose ids mean something else).
    fn send_on(&mut self, session: u64, id: u64, msg: Message) {
        if self.conn.session() == Some(session) {
            self.send(id, msg);
        }
    }

    // ---- frontend requests ----

    fn on_io(&mut self, req: ReqId, request: IoRequest) {
        if self.role != Role::Primary {
            // A Secondary serves no I/O.
            self.actions.push(Action::Complete {
                req,
                outcome: IoOutcome::Failed(libc::EIO),
            });
            return;
        }
        match request {
            IoRequest::Read { offset, len } => {
                if !self.in_bounds(offset, u64::from(len)) {
                    self.actions.push(Action::Complete {
                        req,
                        outcome: IoOutcome::Failed(libc::EINVAL),
                    });
                    return;
                }
                if self.diskless() || self.stale_here(offset, u64::from(len)) {
                    self.remote_read(req, offset, len);
                    return;
                }
                let op = self.alloc_id();
                self.ops.insert(op, OpKind::AppRead { req, offset, len });
                self.actions.push(Action::LocalRead { op, offset, len });
            }
            IoRequest::Write { offset, data, fua } => {
                let len = data.len() as u64;
                self.submit_write(req, offset, len, WritePayload::Data(data), fua);
            }
            IoRequest::Trim {
                offset,
                len,
                zeroes,
                fua,
            } => {
                self.submit_write(req, offset, len, WritePayload::Trim { zeroes }, fua);
            }
            IoRequest::Flush => {
                let id = self.alloc_id();
                let peer = self.conn.replicating();
                let local = !self.diskless();
                if !peer && self.needs_peer() {
                    // No good copy here and none reachable: nothing can be made durable.
                    self.actions.push(Action::Complete {
                        req,
                        outcome: IoOutcome::Failed(libc::EIO),
                    });
                    return;
                }
                self.flushes.insert(
                    id,
                    AppFlush {
                        req,
                        local_done: !local,
                        sent: peer,
                        peer_pending: peer,
                        sent_ms: self.now.mono_ms,
                        error: None,
                    },
                );
                if local {
                    self.ops.insert(id, OpKind::AppFlush(id));
                    self.actions.push(Action::LocalFlush { op: id });
                }
                if peer {
                    self.send(id, Message::Flush);
                }
            }
        }
    }

    fn in_bounds(&self, offset: u64, len: u64) -> bool {
        offset
            .checked_add(len)
            .is_some_and(|end| end <= self.size_bytes)
    }

    fn submit_write(
        &mut self,
        req: ReqId,
        offset: u64,
        len: u64,
        payload: WritePayload,
        fua: bool,
    ) {
        if !self.in_bounds(offset, len) {
            self.actions.push(Action::Complete {
                req,
                outcome: IoOutcome::Failed(libc::ENOSPC),
            });
            return;
        }
        if len == 0 {
            self.actions.push(Action::Complete {
                req,
                outcome: IoOutcome::Done,
            });
            return;
        }
        let id = self.alloc_id();
        let range = Range::new(offset, len);
        self.writes.insert(
            id,
            AppWrite {
                req,
                range,
                payload,
                fua,
                started: false,
                al_held: false,
                local_done: false,
                peer_pending: false,
                mirrored: false,
                local_failed: false,
                sent_ms: 0,
                error: None,
            },
        );
        if self.locks.acquire_or_wait(LockOwner::Write(id), range) {
            self.start_write(id);
        }
    }

    /// The write holds its range: persist its activity-log extents, then issue the
    /// local write and the peer's copy together.
    fn start_write(&mut self, id: u64) {
        let replicating = self.conn.replicating();
        let diskless = self.diskless();
        let needs_peer = self.needs_peer();
        let Some(w) = self.writes.get_mut(&id) else {
            return;
        };
        w.started = true;
        let (offset, len) = (w.range.start, w.range.end - w.range.start);
        let payload = w.payload.clone();
        let fua = w.fua;
        if needs_peer && !replicating {
            // The peer's copy is the only good one: without it the write has nowhere
            // to go that a read could trust.
            w.local_done = true;
            w.error = Some(libc::EIO);
            self.finish_write_if_done(id);
            return;
        }
        if replicating {
            w.peer_pending = true;
            w.sent_ms = self.now.mono_ms;
        }
        if diskless {
            w.local_done = true;
            self.send_write(id, offset, len, &payload, fua);
            return;
        }
        match self.al.activate(offset, len) {
            Ok(changed) => {
                w.al_held = true;
                if let Some(extents) = changed {
                    self.actions.push(Action::PersistActivityLog(extents));
                }
            }
            Err(e) => {
                // The activity log cannot cover this write (larger than the log, or
                // every extent busy): mark the range in the persisted bitmap instead,
                // which covers a crash just as well; the mark is cleared once both
                // nodes have the write.
                warn!(resource = %self.cfg.resource, offset, len, "activity log: {e}; marking the bitmap instead");
                self.bitmap.set_range_bytes(offset, len);
                self.actions.push(Action::PersistBitmap);
            }
        }
        self.ops.insert(id, OpKind::AppWrite(id));
        match &payload {
            WritePayload::Data(data) => {
                self.actions.push(Action::LocalWrite {
                    op: id,
                    offset,
                    data: data.clone(),
                    fua,
                });
            }
            WritePayload::Trim { zeroes } => {
                self.actions.push(Action::LocalTrim {
                    op: id,
                    offset,
                    len,
                    zeroes: *zeroes,
                    fua,
                });
            }
        }
        if replicating {
            self.send_write(id, offset, len, &payload, fua);
        } else {
            self.begin_divergence();
            self.bitmap.set_range_bytes(offset, len);
        }
    }

    fn send_write(&mut self, id: u64, offset: u64, len: u64, payload: &WritePayload, fua: bool) {
        let msg = match payload {
            WritePayload::Data(data) => Message::Data {
                offset,
                fua,
                payload: data.clone(),
            },
            WritePayload::Trim { zeroes } => Message::Trim {
                offset,
                len,
                zeroes: *zeroes,
            },
        };
        self.send(id, msg);
    }

    fn finish_write_if_done(&mut self, id: u64) {
        let done = self
            .writes
            .get(&id)
            .is_some_and(|w| w.local_done && !w.peer_pending);
        if !done {
            return;
        }
        let Some(w) = self.writes.remove(&id) else {
            return;
        };
        let (offset, len) = (w.range.start, w.range.end - w.range.start);
        let on_both = w.error.is_none() && w.mirrored && !w.local_failed && !self.diskless();
        if w.al_held {
            self.al.complete(offset, len);
        }
        if on_both && (!w.al_held || self.conn.is_sync_target()) {
            // Marked instead of logged, or a Primary's stale block its write replaced:
            // both nodes now hold the same data there.
            self.bitmap.clear_range_full_blocks(offset, len);
        }
        let outcome = match w.error {
            Some(e) => IoOutcome::Failed(e),
            None => IoOutcome::Done,
        };
        self.actions.push(Action::Complete {
            req: w.req,
            outcome,
        });
        self.release_lock(LockOwner::Write(id));
    }

    fn finish_flush_if_done(&mut self, id: u64) {
        let done = self
            .flushes
            .get(&id)
            .is_some_and(|f| f.local_done && !f.peer_pending);
        if done {
            if let Some(f) = self.flushes.remove(&id) {
                let outcome = match f.error {
                    Some(e) => IoOutcome::Failed(e),
                    None => IoOutcome::Done,
                };
                self.actions.push(Action::Complete {
                    req: f.req,
                    outcome,
                });
            }
        }
    }

    fn on_local_done(&mut self, op: OpId, outcome: IoOutcome) {
        let Some(kind) = self.ops.remove(&op) else {
            return;
        };
        let failed = match outcome {
            IoOutcome::Failed(e) => Some(e),
            _ => None,
        };
        if let Some(e) = failed.filter(|e| detach::is_disk_failure(*e)) {
            self.detach(kind.describe(), e);
        }
        match kind {
            OpKind::AppRead { req, offset, len } => {
                if failed.is_some() && self.conn.serves_reads() {
                    self.remote_read(req, offset, len);
                } else {
                    self.actions.push(Action::Complete { req, outcome });
                }
            }
            OpKind::AppWrite(id) => {
                let attached = !self.diskless();
                if let Some(w) = self.writes.get_mut(&id) {
                    w.local_done = true;
                    if let Some(e) = failed {
                        w.local_failed = true;
                        let r = w.range;
                        if attached {
                            // The local copy of this range is now unknown.
                            self.bitmap.set_range_bytes(r.start, r.end - r.start);
                        }
                        // The peer's copy (sent or already acknowledged) carries the
                        // write; without one it fails.
                        if !w.peer_pending && !w.mirrored {
                            w.error = Some(e);
                            warn!(resource = %self.cfg.resource, offset = r.start, errno = e, "local write failed and the peer does not have it");
                        }
                    }
                }
                self.finish_write_if_done(id);
            }
            OpKind::AppFlush(id) => {
                if let Some(f) = self.flushes.get_mut(&id) {
                    f.local_done = true;
                    if !f.sent {
                        f.error = f.error.or(failed);
                    }
                }
                self.finish_flush_if_done(id);
            }
            OpKind::PeerRead {
                session,
                frame_id,
                offset,
            } => self.peer_read_done(session, frame_id, offset, outcome),
            OpKind::PeerWrite {
                session,
                frame_id,
                offset,
                len,
            } => {
                let this_session = self.conn.session() == Some(session);
                if failed.is_some() {
                    warn!(resource = %self.cfg.resource, offset, "local write of a peer block failed");
                    self.bitmap.set_range_bytes(offset, len);
                    self.send_on(session, 0, Message::OutOfSync { offset, len });
                } else if this_session && (self.conn.is_sync_target() || self.conn.is_sync_source())
                {
                    // The block is now identical on both nodes (as a source: the
                    // Primary target wrote it too, or detaches if it could not).
                    self.bitmap.clear_range_full_blocks(offset, len);
                }
                self.send_on(session, frame_id, Message::DataAck);
                self.release_lock(LockOwner::PeerWrite(op));
            }
            OpKind::PeerFlush { session, frame_id } => {
                self.send_on(session, frame_id, Message::FlushAck)
            }
            OpKind::ResyncRead { chunk } => self.resync_read_done(chunk, outcome),
            OpKind::ResyncWrite {
                session,
                frame_id,
                offset,
                len,
            } => self.resync_write_done(op, session, frame_id, offset, len, failed.is_none()),
            OpKind::VerifyRead { chunk } => self.verify_read_done(chunk, outcome),
            OpKind::VerifyAnswer {
                session,
                frame_id,
                offset,
            } => self.verify_answer(session, frame_id, offset, outcome),
        }
    }

    // ---- peer frames on an established session ----

    fn on_frame(&mut self, frame: Frame) {
        self.conn.touch(self.now.mono_ms);
        if !self.conn.is_established() {
            self.on_handshake_frame(frame);
            return;
        }
        let id = frame.id;
        match frame.msg {
            Message::Data {
                offset, payload, ..
            } if self.diskless() => self.skip_peer_write(id, offset, payload.len() as u64),
            Message::Trim { offset, len, .. } if self.diskless() => {
                self.skip_peer_write(id, offset, len)
            }
            Message::Data {
                offset,
                fua,
                payload,
            } => {
                let len = payload.len() as u64;
                self.mark_if_peer_diskless(offset, len);
                let op = self.peer_write_op(id, offset, len);
                let local = Action::LocalWrite {
                    op,
                    offset,
                    data: payload,
                    fua,
                };
                self.start_peer_write(op, Range::new(offset, len), local);
            }
            Message::Trim {
                offset,
                len,
                zeroes,
            } => {
                self.mark_if_peer_diskless(offset, len);
                let op = self.peer_write_op(id, offset, len);
                let local = Action::LocalTrim {
                    op,
                    offset,
                    len,
                    zeroes,
                    fua: false,
                };
                self.start_peer_write(op, Range::new(offset, len), local);
            }
            Message::DataAck => {
                if let Some(w) = self.writes.get_mut(&id) {
                    w.peer_pending = false;
                    w.mirrored = true;
                    if self.conn.is_sync_source() {
                        let r = w.range;
                        self.bitmap
                            .clear_range_full_blocks(r.start, r.end - r.start);
                    }
                    self.finish_write_if_done(id);
                }
            }
            Message::DataNack => {
                // The peer got a corrupt copy: send it again.
                if let Some(w) = self.writes.get(&id) {
                    let (offset, len) = (w.range.start, w.range.end - w.range.start);
                    let (payload, fua) = (w.payload.clone(), w.fua);
                    warn!(resource = %self.cfg.resource, offset, "peer reported a corrupt data packet; resending");
                    self.send_write(id, offset, len, &payload, fua);
                }
            }
            Message::Flush if self.diskless() => self.send(id, Message::FlushAck),
            Message::Flush => {
                let op = self.alloc_id();
                let session = self.conn.session().unwrap_or(0);
                self.ops.insert(
                    op,
                    OpKind::PeerFlush {
                        session,
                        frame_id: id,
                    },
                );
                self.actions.push(Action::LocalFlush { op });
            }
            Message::FlushAck => {
                if let Some(f) = self.flushes.get_mut(&id) {
                    f.peer_pending = false;
                    self.finish_flush_if_done(id);
                }
            }
            Message::ReadReq { offset, len } => self.on_read_req(id, offset, len),
            Message::ReadReply { payload, .. } => self.on_read_answer(id, Ok(payload)),
            Message::ReadError { errno } => self.on_read_answer(id, Err(errno)),
            Message::Ping => self.send(id, Message::PingAck),
            Message::PingAck => {
                if self.state_sync == Some(id) {
                    self.state_sync = None;
                }
            }
            Message::State(st) => self.on_peer_state_update(st),
            Message::RsData { offset, payload } => self.on_rs_data(id, offset, payload),
            Message::RsAck => self.on_rs_ack(id),
            Message::RsNack => self.on_rs_nack(id),
            Message::ResyncDone { uuids } => self.on_resync_done(uuids),
            Message::OutOfSync { offset, len } => self.on_out_of_sync(offset, len),
            Message::VerifyReq { .. } if self.diskless() => {
                self.lose_session("verify asked of a detached disk", false);
            }
            Message::VerifyReq { offset, len } => self.on_verify_req(id, offset, len),
            Message::VerifyReply { offset, checksums } => {
                self.on_verify_reply(id, offset, checksums)
            }
            Message::VerifyStart => {
                if let CommandResult::Refused(why) = self.cmd_verify() {
                    warn!(resource = %self.cfg.resource, %why, "peer asked for a verify; refused");
                }
            }
            Message::VerifyDone { out_of_sync_bytes } => self.on_verify_done(out_of_sync_bytes),
            Message::Refuse { reason } => {
                warn!(resource = %self.cfg.resource, peer = %self.cfg.peer, %reason, "peer refused the session");
                self.lose_session(&format!("peer refused: {reason}"), false);
            }
            other @ (Message::Hello(_) | Message::Auth { .. } | Message::BitmapChunk { .. }) => {
                let kind = format!("{other:?}");
                let kind = kind
                    .split(['(', ' ', '{'])
                    .next()
                    .unwrap_or("?")
                    .to_string();
                self.lose_session(
                    &format!("protocol error: unexpected {kind} on an established session"),
                    false,
                );
            }
        }
    }

    /// A write applied here while the peer's disk is detached is one that disk lacks.
    fn mark_if_peer_diskless(&mut self, offset: u64, len: u64) {
        if self.conn.peer_roles().1 == DiskState::Diskless {
            self.bitmap.set_range_bytes(offset, len);
        }
    }

    /// Issues the local half of a peer's write or trim once it holds its range: a
    /// resync chunk this node is sending over the same blocks must reach the peer
    /// before the write changes them here (see `resync`).
    fn start_peer_write(&mut self, op: OpId, range: Range, local: Action) {
        if self.locks.acquire_or_wait(LockOwner::PeerWrite(op), range) {
            self.actions.push(local);
        } else {
            self.waiting_peer_writes.insert(op, local);
        }
    }

    /// Releases a range lock and starts the writes that waited for it.
    fn release_lock(&mut self, owner: LockOwner) {
        for next in self.locks.release(owner) {
            match next {
                LockOwner::Write(n) => self.start_write(n),
                LockOwner::PeerWrite(op) => {
                    if let Some(local) = self.waiting_peer_writes.remove(&op) {
                        self.actions.push(local);
                    }
                }
                // Resync and verify chunks never wait: they skip a busy range.
                LockOwner::Resync(_) | LockOwner::Verify(_) => {}
            }
        }
    }

    /// Registers the local half of a peer's write or trim (acknowledged on the session
    /// it came from).
    fn peer_write_op(&mut self, frame_id: u64, offset: u64, len: u64) -> OpId {
        let op = self.alloc_id();
        let session = self.conn.session().unwrap_or(0);
        self.ops.insert(
            op,
            OpKind::PeerWrite {
                session,
                frame_id,
                offset,
                len,
            },
        );
        op
    }

    fn on_corrupt(&mut self, kind: u8, id: u64) {
        let name = hablock_proto::peer::kind_name(kind);
        warn!(resource = %self.cfg.resource, peer = %self.cfg.peer, kind = name, id, "checksum mismatch on a packet from the peer");
        match name {
            "Data" => self.send(id, Message::DataNack),
            "RsData" => self.send(id, Message::RsNack),
            _ => self.lose_session(&format!("corrupt {name} packet"), false),
        }
    }

    fn on_tick(&mut self) {
        let now = self.now.mono_ms;
        if let Some(reason) = self.conn.timed_out(now, self.cfg.peer_timeout_ms) {
            self.lose_session(reason, false);
            return;
        }
        if !self.conn.is_established() {
            return;
        }
        let overdue = self
            .writes
            .values()
            .filter(|w| w.peer_pending)
            .map(|w| w.sent_ms)
            .chain(
                self.flushes
                    .values()
                    .filter(|f| f.peer_pending)
                    .map(|f| f.sent_ms),
            )
            .chain(self.remote_reads.values().map(|r| r.sent_ms))
            .any(|t| now.saturating_sub(t) > self.cfg.peer_timeout_ms);
        if overdue {
            self.lose_session("peer did not answer a write or a read in time", false);
            return;
        }
        if self.conn.ping_due(now, self.cfg.ping_interval_ms) {
            self.send(0, Message::Ping);
        }
        self.resync_tick();
        self.verify_tick();
        // Resync progress reaches the disk every second on both sides, so a node that
        // crashes mid-resync resumes where it stopped instead of starting over.
        let resyncing = self.resync.is_some() || self.conn.is_sync_target();
        if resyncing && now >= self.next_bitmap_persist_ms {
            self.next_bitmap_persist_ms = now + BITMAP_PERSIST_INTERVAL_MS;
            self.actions.push(Action::PersistBitmap);
        }
    }

    /// Progress the background work after every input.
    fn pump(&mut self) {
        self.resync_pump();
        self.verify_pump();
    }

    // ---- commands ----

    fn cmd_primary(&mut self, force: bool) -> CommandResult {
        if self.role == Role::Primary {
            return CommandResult::Ok(vec![]);
        }
        let (peer_role, _) = self.conn.peer_roles();
        if peer_role == Role::Primary {
            return CommandResult::Refused(format!(
                "peer {} is Primary; demote it first (at most one Primary)",
                self.cfg.peer
            ));
        }
        if self.conn.is_sync_target() {
            return CommandResult::Refused(
                "this node is a resync target (its data is Inconsistent); wait for the resync"
                    .into(),
            );
        }
        let mut warnings = Vec::new();
        if !self.conn.is_established() {
            if !force {
                return CommandResult::Refused(format!(
                    "peer {} is unknown ({}); use --force only if you know it is not Primary",
                    self.cfg.peer,
                    self.conn.state()
                ));
            }
            warnings.push(format!(
                "forced promotion with peer {} unknown: if it is Primary too, this is a split brain",
                self.cfg.peer
            ));
        }
        let mut renegotiate = false;
        if self.disk != DiskState::UpToDate {
            if !force {
                return CommandResult::Refused(format!(
                    "local data is {}; use --force to promote it anyway",
                    self.disk
                ));
            }
            warnings.push(format!(
                "forced promotion of {} data: it is declared UpToDate and becomes the sync source",
                self.disk
            ));
            self.set_disk(DiskState::UpToDate);
            // Everything this node had marked is now, by decree, the truth.
            self.bitmap.clear_all();
            self.actions.push(Action::PersistBitmap);
            if self.uuids.current != 0 {
                self.uuids.history = [self.uuids.current, self.uuids.history[0]];
            }
            self.uuids.current = self.new_uuid();
            self.uuids.bitmap = 0;
            renegotiate = self.conn.is_established();
        }
        for w in &warnings {
            warn!(resource = %self.cfg.resource, "{w}");
        }
        self.primary_since_ms = self.now.wall_ms;
        self.set_role(Role::Primary);
        self.persist_superblock();
        self.actions.push(Action::SetExported(true));
        if renegotiate {
            self.lose_session("renegotiating after a forced promotion", false);
        } else if self.conn.is_established() {
            self.announce_state();
        }
        CommandResult::Ok(warnings)
    }

    fn cmd_secondary(&mut self) -> CommandResult {
        if self.role != Role::Primary {
            return CommandResult::Ok(vec![]);
        }
        if !self.writes.is_empty() || !self.flushes.is_empty() || !self.remote_reads.is_empty() {
            return CommandResult::Refused(
                "I/O is still in flight; retry when the device is idle".into(),
            );
        }
        self.actions.push(Action::SetExported(false));
        self.set_role(Role::Secondary);
        self.actions.push(Action::PersistBitmap);
        self.persist_superblock();
        if self.conn.is_established() {
            self.announce_state();
        }
        CommandResult::Ok(vec![])
    }

    fn cmd_connect(&mut self, discard_my_data: bool) -> CommandResult {
        if !matches!(self.conn, Conn::StandAlone { .. }) {
            if discard_my_data {
                return CommandResult::Refused(
                    "already connecting or connected; disconnect first".into(),
                );
            }
            return CommandResult::Ok(vec![]);
        }
        if discard_my_data && self.role == Role::Primary {
            return CommandResult::Refused(
                "a Primary cannot discard its data; demote it first".into(),
            );
        }
        self.discard_my_data = discard_my_data;
        self.set_conn(Conn::Connecting);
        self.actions.push(Action::WantConnection(true));
        CommandResult::Ok(vec![])
    }

    fn cmd_disconnect(&mut self) -> CommandResult {
        if matches!(self.conn, Conn::StandAlone { .. }) {
            return CommandResult::Ok(vec![]);
        }
        self.lose_session("disconnect command", true);
        self.set_conn(Conn::StandAlone {
            reason: Some("disconnected by the operator".into()),
        });
        CommandResult::Ok(vec![])
    }

    fn cmd_tune(&mut self, t: Tunables) -> CommandResult {
        if t.resync_rate_bps == 0 {
            return CommandResult::Refused("a resync rate of 0 would never finish".into());
        }
        if t.resync_rate_bps != self.cfg.resync_rate_bps {
            info!(resource = %self.cfg.resource, old = self.cfg.resync_rate_bps, new = t.resync_rate_bps, "resync rate changed");
        }
        if t.policy != self.cfg.policy {
            info!(resource = %self.cfg.resource, old = ?self.cfg.policy, new = ?t.policy, "split-brain policy changed");
        }
        self.cfg.resync_rate_bps = t.resync_rate_bps;
        self.cfg.policy = t.policy;
        CommandResult::Ok(vec![])
    }

    fn cmd_invalidate(&mut self) -> CommandResult {
        if self.role == Role::Primary {
            return CommandResult::Refused(
                "cannot invalidate a Primary's data; demote it first".into(),
            );
        }
        if self.conn.is_sync_source() {
            return CommandResult::Refused(
                "this node is the resync source; wait for the resync".into(),
            );
        }
        self.bitmap.set_all();
        self.set_disk(DiskState::Inconsistent);
        self.actions.push(Action::PersistBitmap);
        self.persist_superblock();
        if self.conn.is_established() {
            self.lose_session("renegotiating after invalidate", false);
        }
        CommandResult::Ok(vec![
            "all local data marked out of sync; it is resynced from the peer".into(),
        ])
    }

    fn set_conn(&mut self, conn: Conn) {
        let (old, new) = (self.conn.state(), conn.state());
        self.conn = conn;
        if old != new {
            info!(resource = %self.cfg.resource, peer = %self.cfg.peer, old = %old, new = %new, "connection state change");
            self.event(
                "connection",
                Some(old.to_string()),
                Some(new.to_string()),
                self.conn.standalone_reason(),
            );
        }
    }
}
