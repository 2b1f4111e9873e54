//! A failed local disk (DRBD's default `on-io-error detach`).
//!
//! When an operation on the backing device fails, the node stops using that device
//! for good and goes `Diskless`; the failed operation and everything after it are
//! served by the peer where the peer has the data:
//!
//! - A Diskless Primary keeps its device: writes and trims go to the peer only (and
//!   complete when it acknowledges them), flushes are the peer's, and reads are asked
//!   of the peer ([`Message::ReadReq`], answered with `ReadReply` or `ReadError`). A
//!   write whose local half failed completes successfully once the peer has it. Without
//!   a peer that has the data, requests fail with `EIO`: there is no copy left.
//! - A Diskless Secondary answers replicated writes with `OutOfSync` (the Primary keeps
//!   them in its bitmap), and the Primary stops sending them once it sees the state.
//! - The node that still has a disk starts a new data generation the moment it learns
//!   of the detach and marks in its bitmap every write it applies from then on, so the
//!   detached disk, if it comes back, is resynced from it.
//! - The detach writes, best effort (the disk is failing), an `Inconsistent`
//!   superblock and a full bitmap: a restart on the same disk never trusts it.
//! - Metadata writes after the detach are dropped: they would go to the failed disk
//!   (and could block the resource on it).
//!
//! The operator can also detach a disk (`blockctl detach`, before pulling it) and
//! attach one again (`blockctl attach`, after `create-md` on a new one, or on the old
//! one): an attached disk is Inconsistent and resynced in full from the peer.
//!
//! A Primary attaches without leaving its session: it becomes the sync target of its
//! Secondary while its device stays in use. Until the resync ends its own disk is
//! trusted only where the bitmap says it is in sync: a read that touches a marked
//! block is asked of the peer; a write goes to both disks as usual (and clears the
//! marks of the blocks it covers once both have it), and fails, as on a Diskless
//! Primary, when the peer is gone. A resync chunk that meets one of its writes in
//! flight is stale (the source applies that write only after the chunk's
//! acknowledgement, see `resync`): it is skipped and marked again on the source. If
//! the attached disk fails too, the Primary detaches it again and stays connected: the
//! peer stops the resync and serves the device as before.

use super::session::Mode;
use super::{Action, CommandResult, Engine, OpKind, ReqId, MAX_WRITE_BYTES};
use crate::engine::IoOutcome;
use crate::md::ActivityLog;
use hablock_proto::peer::Message;
use hablock_proto::types::{DiskState, Role, Uuids};
use tracing::{error, info, warn};

/// Whether a failed local operation's errno means the disk failed. A request the
/// device refuses as such (not supported, invalid) fails alone: it says nothing about
/// the disk.
pub(super) fn is_disk_failure(errno: i32) -> bool {
    !matches!(errno, libc::EOPNOTSUPP | libc::EINVAL)
}

/// A read asked of the peer by a Diskless Primary.
#[derive(Debug, Clone, Copy)]
pub(super) struct RemoteRead {
    pub(super) req: ReqId,
    pub(super) len: u32,
    /// When it was asked (unanswered after `peer_timeout`, the session is lost).
    pub(super) sent_ms: u64,
}

impl Engine {
    /// Whether the local disk is detached.
    pub(super) fn diskless(&self) -> bool {
        self.disk == DiskState::Diskless
    }

    /// Whether this node's own disk cannot serve its I/O alone: detached, or attached
    /// again and not yet resynced. Its writes then count only once the peer has them.
    pub(super) fn needs_peer(&self) -> bool {
        self.diskless() || self.disk == DiskState::Inconsistent
    }

    /// Whether a read of this range must be asked of the peer: a disk being resynced
    /// lacks the blocks its bitmap marks.
    pub(super) fn stale_here(&self, offset: u64, len: u64) -> bool {
        self.disk == DiskState::Inconsistent && self.bitmap.any_set_bytes(offset, len)
    }

    /// A local `what` failed with `errno`: stop using the disk (once).
    pub(super) fn detach(&mut self, what: &str, errno: i32) {
        self.detach_because(format!("local {what} failed (errno {errno})"));
    }

    /// Stops using the disk (once), for `cause`.
    fn detach_because(&mut self, cause: String) {
        if self.diskless() {
            return;
        }
        let reason = format!("{cause}; the disk is detached");
        error!(resource = %self.cfg.resource, peer = %self.cfg.peer, "{reason}");
        if self.conn.replicating() {
            // The peer keeps what this disk may lack: every write in flight here.
            let ranges: Vec<_> = self
                .writes
                .values()
                .filter(|w| w.started)
                .map(|w| w.range)
                .collect();
            for r in ranges {
                self.send(
                    0,
                    Message::OutOfSync {
                        offset: r.start,
                        len: r.end - r.start,
                    },
                );
            }
        }
        // What a restart on this disk finds (best effort: the disk is failing).
        self.bitmap.set_all();
        self.actions.push(Action::PersistBitmap);
        let mut st = self.persisted_state();
        st.disk = DiskState::Inconsistent;
        self.actions.push(Action::PersistSuperblock(st));
        self.metadata_cutoff = Some(self.actions.len());
        let old = self.disk;
        self.disk = DiskState::Diskless;
        self.event(
            "disk",
            Some(old.to_string()),
            Some(DiskState::Diskless.to_string()),
            Some(reason),
        );
        self.detach_reason = Some(cause);
        if self.role == Role::Primary && self.conn.is_sync_target() {
            // The disk attached under this Primary fails during its resync: the session
            // stays (the peer serves the device again, its writes in flight included),
            // the peer stops sending when it learns of the detach.
            self.conn.set_mode(Mode::Connected);
            self.announce_state();
        } else if self.resync.is_some() || self.conn.is_sync_target() || self.verify.is_some() {
            // Its resync or verify cannot go on: the next session starts over from the
            // states, where this disk is Diskless.
            self.lose_session("the local disk failed during a resync or verify", false);
        } else if self.conn.is_established() {
            self.announce_state();
        }
    }

    /// `blockctl detach`: a Primary keeps its data only if the peer serves it.
    pub(super) fn cmd_detach(&mut self) -> CommandResult {
        if self.diskless() {
            return CommandResult::Ok(vec![]);
        }
        if self.role == Role::Primary && !self.conn.serves_reads() {
            return CommandResult::Refused(format!(
                "{} has no UpToDate copy connected: this Primary would be left without data",
                self.cfg.peer
            ));
        }
        self.detach_because("detached by the operator".into());
        CommandResult::Ok(vec![])
    }

    /// `blockctl attach`: the disk the daemon opened (its metadata has `uuids`) is
    /// taken as Inconsistent, everything marked, and resynced from the peer. A
    /// Secondary renegotiates its session; a Primary keeps it (its device is in use)
    /// and needs the peer's UpToDate copy, which serves its reads meanwhile.
    pub(super) fn cmd_attach(&mut self, uuids: Uuids) -> CommandResult {
        if !self.diskless() {
            return CommandResult::Refused("the disk is attached".into());
        }
        let primary = self.role == Role::Primary;
        if primary && !self.conn.serves_reads() {
            return CommandResult::Refused(format!(
                "{} has no UpToDate copy connected to resync this Primary's disk from",
                self.cfg.peer
            ));
        }
        if !self.ops.is_empty() {
            return CommandResult::Refused(
                "operations on the failed disk are still in flight; retry in a moment".into(),
            );
        }
        // A Primary's new disk belongs to no generation until the resync gives it the
        // peer's (a reconnection in between then copies everything again).
        self.uuids = if primary { Uuids::default() } else { uuids };
        self.al = ActivityLog::new(self.cfg.al_extents, &[]);
        self.bitmap.set_all();
        self.metadata_cutoff = None;
        self.detach_reason = None;
        info!(resource = %self.cfg.resource, "disk attached: resynced in full from the peer");
        self.set_disk(DiskState::Inconsistent);
        self.actions.push(Action::PersistBitmap);
        self.persist_superblock();
        if primary {
            // The peer marks everything, then learns of the disk and starts sending.
            let len = self.size_bytes;
            self.send(0, Message::OutOfSync { offset: 0, len });
            self.start_resync_target();
            self.announce_state();
            return CommandResult::Ok(vec![format!(
                "the disk is resynced in full from {}, which serves the reads of what is not copied yet",
                self.cfg.peer
            )]);
        }
        if self.conn.session().is_some() {
            self.lose_session("renegotiating after attach", false);
        }
        CommandResult::Ok(vec![format!(
            "the disk is resynced in full from {}",
            self.cfg.peer
        )])
    }

    /// The Primary attached a disk within the session (see [`Engine::cmd_attach`]):
    /// this node, with the data, sends it everything.
    pub(super) fn peer_attached(&mut self) {
        if self.disk == DiskState::UpToDate && self.conn.mode() == Some(Mode::Connected) {
            info!(resource = %self.cfg.resource, peer = %self.cfg.peer, "the Primary attached a disk: resyncing it");
            self.start_resync_source();
        }
    }

    /// Drops the metadata writes queued after the detach's own (see the module doc).
    pub(super) fn drop_metadata_writes(&mut self) {
        let Some(cut) = self.metadata_cutoff else {
            return;
        };
        let mut i = 0;
        self.actions.retain(|a| {
            let keep = i < cut
                || !matches!(
                    a,
                    Action::PersistBitmap
                        | Action::PersistActivityLog(_)
                        | Action::PersistSuperblock(_)
                );
            i += 1;
            keep
        });
        self.metadata_cutoff = Some(0);
    }

    /// The peer's disk is detached (learned from its state): this node holds the only
    /// copy, so it starts a new data generation (see the module doc).
    pub(super) fn peer_detached(&mut self) {
        if self.diskless() || self.uuids.bitmap != 0 {
            return;
        }
        self.uuids.bitmap = self.uuids.current;
        self.uuids.current = self.new_uuid();
        info!(resource = %self.cfg.resource, peer = %self.cfg.peer, "the peer's disk is detached: new data generation");
        self.persist_superblock();
    }

    /// A replicated write reached this Diskless node: nothing to write it to. The
    /// Primary keeps the range in its bitmap.
    pub(super) fn skip_peer_write(&mut self, frame_id: u64, offset: u64, len: u64) {
        self.send(0, Message::OutOfSync { offset, len });
        self.send(frame_id, Message::DataAck);
    }

    /// A frontend read on a Diskless Primary: asked of the peer, or failed.
    pub(super) fn remote_read(&mut self, req: ReqId, offset: u64, len: u32) {
        if !self.conn.serves_reads() {
            self.actions.push(Action::Complete {
                req,
                outcome: IoOutcome::Failed(libc::EIO),
            });
            return;
        }
        let id = self.alloc_id();
        let sent_ms = self.now.mono_ms;
        self.remote_reads
            .insert(id, RemoteRead { req, len, sent_ms });
        self.send(id, Message::ReadReq { offset, len });
    }

    /// The peer asks for a range of our disk.
    pub(super) fn on_read_req(&mut self, frame_id: u64, offset: u64, len: u32) {
        let refused = if self.disk != DiskState::UpToDate {
            Some(libc::EIO)
        } else if u64::from(len) > MAX_WRITE_BYTES || !self.in_bounds(offset, u64::from(len)) {
            Some(libc::EINVAL)
        } else {
            None
        };
        if let Some(errno) = refused {
            self.send(
                frame_id,
                Message::ReadError {
                    errno: errno as u32,
                },
            );
            return;
        }
        let op = self.alloc_id();
        let session = self.conn.session().unwrap_or(0);
        self.ops.insert(
            op,
            OpKind::PeerRead {
                session,
                frame_id,
                offset,
            },
        );
        self.actions.push(Action::LocalRead { op, offset, len });
    }

    /// Our read for the peer finished.
    pub(super) fn peer_read_done(
        &mut self,
        session: u64,
        frame_id: u64,
        offset: u64,
        outcome: IoOutcome,
    ) {
        let msg = match outcome {
            IoOutcome::Data(payload) => Message::ReadReply { offset, payload },
            IoOutcome::Failed(e) => Message::ReadError { errno: e as u32 },
            IoOutcome::Done => Message::ReadError {
                errno: libc::EIO as u32,
            },
        };
        self.send_on(session, frame_id, msg);
    }

    /// The peer answered one of our reads.
    pub(super) fn on_read_answer(&mut self, frame_id: u64, data: Result<bytes::Bytes, u32>) {
        let Some(r) = self.remote_reads.remove(&frame_id) else {
            return;
        };
        let outcome = match data {
            Ok(d) if d.len() == r.len as usize => IoOutcome::Data(d),
            Ok(d) => {
                warn!(resource = %self.cfg.resource, peer = %self.cfg.peer, asked = r.len, got = d.len(), "the peer answered a read with the wrong length");
                IoOutcome::Failed(libc::EIO)
            }
            Err(errno) => {
                warn!(resource = %self.cfg.resource, peer = %self.cfg.peer, errno, "the peer could not serve a read");
                IoOutcome::Failed(libc::EIO)
            }
        };
        self.actions.push(Action::Complete {
            req: r.req,
            outcome,
        });
    }

    /// The session ended: reads asked of the peer fail.
    pub(super) fn fail_remote_reads(&mut self) {
        for (_, r) in std::mem::take(&mut self.remote_reads) {
            self.actions.push(Action::Complete {
                req: r.req,
                outcome: IoOutcome::Failed(libc::EIO),
            });
        }
    }
}
