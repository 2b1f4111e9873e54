//! The connection state and the state exchange that starts every session: both nodes
//! send their [`NodeState`] and dirty bitmap, then each runs [`decide`] and they agree
//! on the resync direction, or refuse (split brain, unrelated data).
//!
//! Authentication happened before (the daemon only hands over authenticated sessions).

use super::decide::{decide, is_split_brain, Decision, Refusal, Side, SyncScope};
use super::{Action, Engine};
use crate::md::BLOCK_BYTES;
use hablock_proto::peer::{features, state_flags, Message, NodeState};
use hablock_proto::types::{ConnState, DiskState, Role};
use tracing::{info, warn};

/// Words of bitmap per `BitmapChunk` frame (64 KiB of payload).
const BITMAP_WORDS_PER_FRAME: usize = 8192;

/// What the session is doing once established.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// In sync (or both Inconsistent, waiting for a forced promotion).
    Connected,
    /// Sending a resync.
    SyncSource,
    /// Receiving a resync.
    SyncTarget,
    /// Driving an online verify.
    VerifySource,
    /// Answering an online verify.
    VerifyTarget,
}

/// An established session.
#[derive(Debug)]
pub struct Established {
    session: u64,
    last_rx_ms: u64,
    last_ping_ms: u64,
    peer_role: Role,
    peer_disk: DiskState,
    /// Negotiated feature bits ([`hablock_proto::peer::features`]).
    features: u64,
    /// What the session is doing.
    pub mode: Mode,
}

/// A session exchanging states.
#[derive(Debug)]
pub struct Handshake {
    session: u64,
    features: u64,
    last_rx_ms: u64,
    peer: Option<NodeState>,
    peer_words: Vec<u64>,
    bitmap_done: bool,
}

/// The replication link of a resource.
#[derive(Debug)]
pub enum Conn {
    /// Not connecting.
    StandAlone {
        /// Why (shown in status).
        reason: Option<String>,
    },
    /// Waiting for the daemon to bring up a session.
    Connecting,
    /// States being exchanged.
    Handshake(Box<Handshake>),
    /// Up.
    Established(Box<Established>),
}

impl Conn {
    /// The pinned connection state name.
    pub fn state(&self) -> ConnState {
        match self {
            Conn::StandAlone { .. } => ConnState::StandAlone,
            Conn::Connecting | Conn::Handshake(_) => ConnState::Connecting,
            Conn::Established(e) => match e.mode {
                Mode::Connected => ConnState::Connected,
                Mode::SyncSource => ConnState::SyncSource,
                Mode::SyncTarget => ConnState::SyncTarget,
                Mode::VerifySource => ConnState::VerifySource,
                Mode::VerifyTarget => ConnState::VerifyTarget,
            },
        }
    }

    /// The current session, if any.
    pub fn session(&self) -> Option<u64> {
        match self {
            Conn::Handshake(h) => Some(h.session),
            Conn::Established(e) => Some(e.session),
            _ => None,
        }
    }

    /// Whether the session is established.
    pub fn is_established(&self) -> bool {
        matches!(self, Conn::Established(_))
    }

    /// Whether writes are mirrored to the peer: every established mode, unless the
    /// peer's disk is detached.
    pub fn replicating(&self) -> bool {
        matches!(self, Conn::Established(e) if e.peer_disk != DiskState::Diskless)
    }

    /// Whether the peer can serve reads for this node (its data is UpToDate and it
    /// speaks [`features::REMOTE_READ`]).
    pub fn serves_reads(&self) -> bool {
        matches!(self, Conn::Established(e)
            if e.peer_disk == DiskState::UpToDate && e.features & features::REMOTE_READ != 0)
    }

    /// Whether this node receives a resync.
    pub fn is_sync_target(&self) -> bool {
        self.mode() == Some(Mode::SyncTarget)
    }

    /// Whether this node sends a resync.
    pub fn is_sync_source(&self) -> bool {
        self.mode() == Some(Mode::SyncSource)
    }

    /// The established mode.
    pub fn mode(&self) -> Option<Mode> {
        match self {
            Conn::Established(e) => Some(e.mode),
            _ => None,
        }
    }

    pub(super) fn set_mode(&mut self, mode: Mode) {
        if let Conn::Established(e) = self {
            e.mode = mode;
        }
    }

    /// The peer's role and disk as last reported.
    pub fn peer_roles(&self) -> (Role, DiskState) {
        match self {
            Conn::Established(e) => (e.peer_role, e.peer_disk),
            _ => (Role::Unknown, DiskState::DUnknown),
        }
    }

    /// Why StandAlone.
    pub fn standalone_reason(&self) -> Option<String> {
        match self {
            Conn::StandAlone { reason } => reason.clone(),
            _ => None,
        }
    }

    pub(super) fn touch(&mut self, now: u64) {
        match self {
            Conn::Handshake(h) => h.last_rx_ms = now,
            Conn::Established(e) => e.last_rx_ms = now,
            _ => {}
        }
    }

    pub(super) fn timed_out(&self, now: u64, timeout: u64) -> Option<&'static str> {
        match self {
            Conn::Handshake(h) if now.saturating_sub(h.last_rx_ms) > timeout => {
                Some("peer timed out during the state exchange")
            }
            Conn::Established(e) if now.saturating_sub(e.last_rx_ms) > timeout => {
                Some("peer timed out (no packet within peer_timeout)")
            }
            _ => None,
        }
    }

    pub(super) fn ping_due(&mut self, now: u64, interval: u64) -> bool {
        if let Conn::Established(e) = self {
            if now.saturating_sub(e.last_ping_ms) >= interval {
                e.last_ping_ms = now;
                return true;
            }
        }
        false
    }
}

impl Engine {
    pub(super) fn on_peer_connected(&mut self, session: u64, features: u64) {
        if matches!(self.conn, Conn::StandAlone { .. }) {
            self.actions.push(Action::CloseSession {
                session,
                reason: "StandAlone: not accepting a session".into(),
            });
            return;
        }
        if self.conn.session().is_some() {
            // A newer authenticated session replaces the old one (the peer restarted).
            self.lose_session("replaced by a new session from the peer", false);
        }
        self.conn = Conn::Handshake(Box::new(Handshake {
            session,
            features,
            last_rx_ms: self.now.mono_ms,
            peer: None,
            peer_words: Vec::new(),
            bitmap_done: false,
        }));
        let st = self.my_state();
        self.send(0, Message::State(st));
        let words = self.bitmap.words().to_vec();
        let mut first = 0usize;
        loop {
            let end = (first + BITMAP_WORDS_PER_FRAME).min(words.len());
            let last = end == words.len();
            self.send(
                0,
                Message::BitmapChunk {
                    first_word: first as u64,
                    words: words[first..end].to_vec(),
                    last,
                },
            );
            if last {
                break;
            }
            first = end;
        }
    }

    pub(super) fn on_handshake_frame(&mut self, frame: hablock_proto::peer::Frame) {
        let Conn::Handshake(h) = &mut self.conn else {
            return;
        };
        match frame.msg {
            Message::State(st) => h.peer = Some(st),
            Message::BitmapChunk {
                first_word,
                words,
                last,
            } => {
                let Ok(first) = usize::try_from(first_word) else {
                    self.lose_session("protocol error: bitmap chunk out of range", false);
                    return;
                };
                // Cap at what our own bitmap can hold (sizes may differ; the smaller wins).
                let cap = self.bitmap.words().len();
                if first <= cap {
                    let end = (first + words.len()).min(cap);
                    if h.peer_words.len() < end {
                        h.peer_words.resize(end, 0);
                    }
                    h.peer_words[first..end].copy_from_slice(&words[..end - first]);
                }
                h.bitmap_done = last;
            }
            Message::Refuse { reason } => {
                warn!(resource = %self.cfg.resource, peer = %self.cfg.peer, %reason, "peer refused the session");
                self.refuse_standalone(
                    &format!("peer refused: {reason}"),
                    reason.contains("split brain"),
                );
                return;
            }
            Message::Ping => {
                self.send(frame.id, Message::PingAck);
                return;
            }
            Message::PingAck => return,
            other => {
                let _ = other;
                self.lose_session(
                    "protocol error: unexpected packet during the state exchange",
                    false,
                );
                return;
            }
        }
        let ready = matches!(&self.conn, Conn::Handshake(h) if h.peer.is_some() && h.bitmap_done);
        if ready {
            self.conclude_handshake();
        }
    }

    fn conclude_handshake(&mut self) {
        // The session stays in Handshake while deciding, so actions go to it.
        let Conn::Handshake(h) = &mut self.conn else {
            return;
        };
        let Some(peer) = h.peer.take() else { return };
        let peer_words = std::mem::take(&mut h.peer_words);
        let (session, features) = (h.session, h.features);

        // Sizes: the smaller one wins, but a Primary never shrinks under its clients.
        let smaller = peer.usable_bytes.min(self.cfg.usable_bytes);
        if self.role == Role::Primary && smaller < self.size_bytes {
            let why = format!(
                "peer {} has {} usable bytes, less than the {} this Primary exports",
                self.cfg.peer, peer.usable_bytes, self.size_bytes
            );
            self.refuse_standalone(&why, false);
            return;
        }
        if peer.usable_bytes != self.cfg.usable_bytes {
            warn!(resource = %self.cfg.resource, peer = %self.cfg.peer, mine = self.cfg.usable_bytes, theirs = peer.usable_bytes,
                "backing sizes differ; using the smaller: {smaller} bytes");
        }
        self.size_bytes = smaller;

        let me = self.my_side();
        let them = Side {
            node: self.cfg.peer.clone(),
            role: peer.role,
            disk: peer.disk,
            uuids: peer.uuids,
            dirty_bits: peer.dirty_bits,
            crashed_primary: peer.flags & state_flags::CRASHED_PRIMARY != 0,
            primary_since_ms: peer.primary_since_ms,
            discard_my_data: peer.flags & state_flags::DISCARD_MY_DATA != 0,
        };
        let decision = decide(&me, &them, &self.cfg.policy);
        let split = decision != Decision::Diskless && is_split_brain(&me, &them);
        info!(resource = %self.cfg.resource, peer = %self.cfg.peer, ?decision, split_brain = split,
            my_uuids = ?self.uuids, peer_uuids = ?peer.uuids, "state exchange done");
        if split {
            self.event("split-brain", None, None, Some(format!("{decision:?}")));
        }
        match decision {
            Decision::Refuse(r) => {
                let sb = r == Refusal::SplitBrain;
                if sb {
                    warn!(resource = %self.cfg.resource, peer = %self.cfg.peer,
                        "split brain detected: both nodes changed the data; not connecting (resolve with `blockctl connect --discard-my-data` on the victim)");
                } else {
                    warn!(resource = %self.cfg.resource, peer = %self.cfg.peer, reason = %r, "refusing the peer");
                }
                self.refuse_standalone(&r.to_string(), sb);
            }
            d => {
                self.split_brain = false;
                self.discard_my_data = false;
                self.conn = Conn::Established(Box::new(Established {
                    session,
                    last_rx_ms: self.now.mono_ms,
                    last_ping_ms: self.now.mono_ms,
                    peer_role: peer.role,
                    peer_disk: peer.disk,
                    features,
                    mode: Mode::Connected,
                }));
                self.event(
                    "connection",
                    Some("Connecting".into()),
                    Some("Connected".into()),
                    None,
                );
                self.event("peer-role", None, Some(peer.role.to_string()), None);
                match d {
                    Decision::Diskless if peer.disk == DiskState::Diskless => self.peer_detached(),
                    Decision::Source(scope) => {
                        self.mark_resync_set(scope, &peer_words);
                        self.start_resync_source();
                    }
                    Decision::Target(scope) => {
                        self.mark_resync_set(scope, &peer_words);
                        self.start_resync_target();
                    }
                    _ => {
                        // In sync: any stale bits (a crash that wrote nothing) are moot.
                        if d == Decision::InSync && self.bitmap.count() > 0 {
                            self.bitmap.clear_all();
                            self.actions.push(Action::PersistBitmap);
                        }
                        if self.role == Role::Primary || peer.role == Role::Primary {
                            self.crashed_primary = false;
                        }
                    }
                }
            }
        }
    }

    /// The blocks to copy: everything, or what either node marked.
    fn mark_resync_set(&mut self, scope: SyncScope, peer_words: &[u64]) {
        match scope {
            SyncScope::Full => self.bitmap.set_all(),
            SyncScope::Bitmap => self.bitmap.or_words(0, peer_words),
        }
        self.actions.push(Action::PersistBitmap);
    }

    /// The peer refused, or we did: no reconnection until the operator says so.
    pub(super) fn refuse_standalone(&mut self, reason: &str, split_brain: bool) {
        if let Some(_s) = self.conn.session() {
            self.send(
                0,
                Message::Refuse {
                    reason: reason.to_string(),
                },
            );
        }
        self.lose_session(reason, true);
        if split_brain {
            self.split_brain = true;
        }
        self.set_conn(Conn::StandAlone {
            reason: Some(reason.to_string()),
        });
    }

    pub(super) fn on_peer_state_update(&mut self, st: NodeState) {
        let Conn::Established(e) = &mut self.conn else {
            return;
        };
        let (old_role, old_disk) = (e.peer_role, e.peer_disk);
        e.peer_role = st.role;
        e.peer_disk = st.disk;
        if old_role != st.role {
            info!(resource = %self.cfg.resource, peer = %self.cfg.peer, old = %old_role, new = %st.role, "peer role change");
            self.event(
                "peer-role",
                Some(old_role.to_string()),
                Some(st.role.to_string()),
                None,
            );
        }
        if old_disk != st.disk {
            self.event(
                "peer-disk",
                Some(old_disk.to_string()),
                Some(st.disk.to_string()),
                None,
            );
            if st.disk == DiskState::Diskless {
                warn!(resource = %self.cfg.resource, peer = %self.cfg.peer, "the peer's disk is detached");
                if self.conn.is_sync_source() {
                    // Its disk failed during the resync onto it (a Primary's, see
                    // `detach`): nothing more to send.
                    self.stop_resync();
                    self.conn.set_mode(Mode::Connected);
                }
                self.peer_detached();
            } else if old_disk == DiskState::Diskless
                && st.disk == DiskState::Inconsistent
                && st.role == Role::Primary
            {
                self.peer_attached();
            }
        }
    }

    pub(super) fn set_peer_disk(&mut self, disk: DiskState) {
        if let Conn::Established(e) = &mut self.conn {
            if e.peer_disk != disk {
                let old = e.peer_disk;
                e.peer_disk = disk;
                self.event(
                    "peer-disk",
                    Some(old.to_string()),
                    Some(disk.to_string()),
                    None,
                );
            }
        }
    }

    /// Ends the current session: every write waiting for the peer is marked in the
    /// bitmap and completes on its local result; resync and verify stop.
    pub(super) fn lose_session(&mut self, reason: &str, standalone: bool) {
        let Some(session) = self.conn.session() else {
            if standalone {
                self.actions.push(Action::WantConnection(false));
            }
            return;
        };
        warn!(resource = %self.cfg.resource, peer = %self.cfg.peer, %reason, "connection to peer lost");
        self.actions.push(Action::CloseSession {
            session,
            reason: reason.to_string(),
        });
        let was_established = self.conn.is_established();
        let (old_peer_role, _) = self.conn.peer_roles();
        self.set_conn(if standalone {
            Conn::StandAlone {
                reason: Some(reason.to_string()),
            }
        } else {
            Conn::Connecting
        });
        if standalone {
            self.actions.push(Action::WantConnection(false));
        }
        if old_peer_role != Role::Unknown {
            self.event(
                "peer-role",
                Some(old_peer_role.to_string()),
                Some("Unknown".into()),
                None,
            );
        }
        self.stop_resync();
        self.stop_verify();
        self.fail_remote_reads();
        if !was_established {
            return;
        }
        let pending: Vec<u64> = self
            .writes
            .iter()
            .filter(|(_, w)| w.peer_pending)
            .map(|(id, _)| *id)
            .collect();
        // Without a good copy here the writes fail (the peer's was the only one that
        // counted); otherwise the generation changes before any completes without the
        // peer.
        let needs_peer = self.needs_peer();
        if !pending.is_empty() && !needs_peer {
            self.begin_divergence();
        }
        let mut marked = 0;
        for id in pending {
            if let Some(w) = self.writes.get_mut(&id) {
                w.peer_pending = false;
                if needs_peer {
                    w.error = Some(libc::EIO);
                }
                let r = w.range;
                marked += self.bitmap.set_range_bytes(r.start, r.end - r.start);
            }
            self.finish_write_if_done(id);
        }
        if marked > 0 {
            info!(resource = %self.cfg.resource, bytes = marked * BLOCK_BYTES, "writes in flight to the lost peer marked out of sync");
        }
        let flushes: Vec<u64> = self.flushes.keys().copied().collect();
        for id in flushes {
            if let Some(f) = self.flushes.get_mut(&id) {
                if needs_peer && f.peer_pending {
                    f.error = Some(libc::EIO);
                }
                f.peer_pending = false;
            }
            self.finish_flush_if_done(id);
        }
    }
}
