//! Resync: the source copies every block marked in its dirty bitmap (its own changes
//! ORed with the target's) to the target, at `resync_rate`, while application writes
//! go on. Each chunk holds its range lock from the local read until the target's ack,
//! so a chunk never overtakes (or is overtaken by) a write to the same blocks.
//!
//! The source declares the end with `ResyncDone` once its bitmap is empty; the target
//! then adopts the source's generation and becomes UpToDate.
//!
//! When the target is the Primary (a disk attached under it, see `detach`), the
//! writes come from the target: the source applies each one only once it holds the
//! range (after the ack of a chunk over it), and the target drops a chunk that meets
//! one of its writes in flight (read before the source had it), marking it again on
//! the source.

use super::ranges::Range;
use super::session::Mode;
use super::{Action, Engine, IoOutcome, LockOwner, OpKind};
use crate::md::BLOCK_BYTES;
use bytes::Bytes;
use hablock_proto::peer::Message;
use hablock_proto::types::{DiskState, Uuids};
use std::collections::{HashMap, VecDeque};
use tracing::{info, warn};

/// Largest resync chunk, in bitmap blocks (256 KiB).
const CHUNK_BLOCKS: u64 = 64;
/// Chunks in flight at once.
const WINDOW: usize = 16;

/// The source's resync.
#[derive(Debug)]
pub(super) struct Resync {
    cursor: u64,
    inflight: HashMap<u64, Chunk>,
    tokens: f64,
    last_tick_ms: u64,
}

#[derive(Debug)]
struct Chunk {
    offset: u64,
    len: u64,
    data: Option<Bytes>,
    /// The target marked some of these blocks out of sync again (it did not take the
    /// chunk, or wrote part of it): the ack leaves them marked.
    remarked: bool,
}

/// Rate samples for status: (mono ms, resynced bytes).
#[derive(Debug, Default)]
pub(super) struct RateMeter {
    samples: VecDeque<(u64, u64)>,
    /// Bits to copy when the current resync started (target and source).
    pub(super) total_bits: u64,
}

impl RateMeter {
    fn sample(&mut self, now: u64, bytes: u64) {
        self.samples.push_back((now, bytes));
        while self.samples.len() > 2 && self.samples.front().is_some_and(|(t, _)| now - t > 3000) {
            self.samples.pop_front();
        }
    }

    fn rate(&self) -> Option<u64> {
        let (t0, b0) = *self.samples.front()?;
        let (t1, b1) = *self.samples.back()?;
        if t1 <= t0 {
            return None;
        }
        Some((b1 - b0) * 1000 / (t1 - t0))
    }
}

impl Engine {
    pub(super) fn start_resync_source(&mut self) {
        let total = self.bitmap.count();
        info!(resource = %self.cfg.resource, peer = %self.cfg.peer, bytes = total * BLOCK_BYTES, "resync started as source");
        self.conn.set_mode(Mode::SyncSource);
        self.event(
            "resync-started",
            None,
            Some("SyncSource".into()),
            Some(format!("{} bytes", total * BLOCK_BYTES)),
        );
        self.set_peer_disk(DiskState::Inconsistent);
        self.meter = RateMeter {
            samples: VecDeque::new(),
            total_bits: total,
        };
        self.resync = Some(Resync {
            cursor: 0,
            inflight: HashMap::new(),
            tokens: self.burst(),
            last_tick_ms: self.now.mono_ms,
        });
    }

    pub(super) fn start_resync_target(&mut self) {
        let total = self.bitmap.count();
        info!(resource = %self.cfg.resource, peer = %self.cfg.peer, bytes = total * BLOCK_BYTES, "resync started as target");
        self.conn.set_mode(Mode::SyncTarget);
        self.event(
            "resync-started",
            None,
            Some("SyncTarget".into()),
            Some(format!("{} bytes", total * BLOCK_BYTES)),
        );
        self.meter = RateMeter {
            samples: VecDeque::new(),
            total_bits: total,
        };
        // Until the resync ends, this copy is a mix of old and new blocks.
        self.set_disk(DiskState::Inconsistent);
        self.persist_superblock();
    }

    fn burst(&self) -> f64 {
        (self.cfg.resync_rate_bps as f64 / 10.0).max((CHUNK_BLOCKS * BLOCK_BYTES) as f64)
    }

    pub(super) fn stop_resync(&mut self) {
        if let Some(rs) = self.resync.take() {
            for id in rs.inflight.keys() {
                self.release_lock(LockOwner::Resync(*id));
            }
            self.actions.push(Action::PersistBitmap);
        }
        if self.conn.is_sync_target() {
            self.actions.push(Action::PersistBitmap);
        }
    }

    pub(super) fn resync_tick(&mut self) {
        let now = self.now.mono_ms;
        let rate = self.cfg.resync_rate_bps as f64;
        let burst = self.burst();
        if let Some(rs) = &mut self.resync {
            let dt = now.saturating_sub(rs.last_tick_ms) as f64 / 1000.0;
            rs.last_tick_ms = now;
            rs.tokens = (rs.tokens + rate * dt).min(burst);
        }
        if self.resync.is_some() || self.conn.is_sync_target() {
            let bytes = self.resynced_bytes;
            self.meter.sample(now, bytes);
        }
    }

    /// Starts as many chunks as the window and the rate allow; finishes the resync
    /// when nothing is left.
    pub(super) fn resync_pump(&mut self) {
        let mut wrapped = false;
        loop {
            let Some(rs) = &self.resync else { return };
            if rs.inflight.len() >= WINDOW || rs.tokens <= 0.0 {
                return;
            }
            let start = rs.cursor;
            let Some(first) = self.bitmap.next_set(start) else {
                if rs.inflight.is_empty() {
                    if self.bitmap.count() == 0 {
                        self.finish_resync_source();
                        return;
                    }
                    // Bits set behind the cursor (a failed or busy chunk): go round
                    // again, once per pump.
                    if wrapped {
                        return;
                    }
                    wrapped = true;
                    if let Some(rs) = &mut self.resync {
                        rs.cursor = 0;
                    }
                    continue;
                }
                return;
            };
            let mut n = 1;
            while n < CHUNK_BLOCKS && self.bitmap.get(first + n) {
                n += 1;
            }
            let offset = first * BLOCK_BYTES;
            if offset >= self.size_bytes {
                // Bits beyond the agreed size mean nothing.
                self.bitmap
                    .clear_range_full_blocks(offset, (self.bitmap.len() - first) * BLOCK_BYTES);
                continue;
            }
            let len = (n * BLOCK_BYTES).min(self.size_bytes - offset);
            let id = self.alloc_id();
            if !self
                .locks
                .try_acquire(LockOwner::Resync(id), Range::new(offset, len))
            {
                // An application write holds it; it will be retried after the cursor wraps.
                if let Some(rs) = &mut self.resync {
                    rs.cursor = first + n;
                }
                continue;
            }
            let Some(rs) = &mut self.resync else { return };
            rs.cursor = first + n;
            rs.tokens -= len as f64;
            rs.inflight.insert(
                id,
                Chunk {
                    offset,
                    len,
                    data: None,
                    remarked: false,
                },
            );
            self.ops.insert(id, OpKind::ResyncRead { chunk: id });
            // The resync read can never exceed CHUNK_BLOCKS * BLOCK_BYTES.
            self.actions.push(Action::LocalRead {
                op: id,
                offset,
                len: len as u32,
            });
        }
    }

    pub(super) fn resync_read_done(&mut self, chunk: u64, outcome: IoOutcome) {
        let Some(rs) = &mut self.resync else { return };
        let Some(c) = rs.inflight.get_mut(&chunk) else {
            return;
        };
        match outcome {
            IoOutcome::Data(data) => {
                let offset = c.offset;
                c.data = Some(data.clone());
                self.send(
                    chunk,
                    Message::RsData {
                        offset,
                        payload: data,
                    },
                );
            }
            _ => {
                warn!(resource = %self.cfg.resource, offset = c.offset, "resync read failed; will retry");
                rs.inflight.remove(&chunk);
                self.release_lock(LockOwner::Resync(chunk));
            }
        }
    }

    pub(super) fn on_rs_ack(&mut self, id: u64) {
        let Some(rs) = &mut self.resync else { return };
        let Some(c) = rs.inflight.remove(&id) else {
            return;
        };
        if !c.remarked {
            self.bitmap.clear_range_full_blocks(c.offset, c.len);
            self.resynced_bytes += c.len;
        }
        self.release_lock(LockOwner::Resync(id));
    }

    /// The peer says it lacks these blocks: marked, including under a chunk in flight
    /// (the peer sends this before the chunk's ack, which must not clear them).
    pub(super) fn on_out_of_sync(&mut self, offset: u64, len: u64) {
        self.bitmap.set_range_bytes(offset, len);
        if let Some(rs) = &mut self.resync {
            let end = offset.saturating_add(len);
            for c in rs.inflight.values_mut() {
                if c.offset < end && offset < c.offset + c.len {
                    c.remarked = true;
                }
            }
        }
    }

    pub(super) fn on_rs_nack(&mut self, id: u64) {
        let Some(rs) = &mut self.resync else { return };
        let Some(c) = rs.inflight.get(&id) else {
            return;
        };
        warn!(resource = %self.cfg.resource, offset = c.offset, "peer got a corrupt resync block; resending");
        if let Some(data) = c.data.clone() {
            let offset = c.offset;
            self.send(
                id,
                Message::RsData {
                    offset,
                    payload: data,
                },
            );
        }
    }

    fn finish_resync_source(&mut self) {
        self.resync = None;
        if self.uuids.bitmap != 0 {
            self.uuids.history = [self.uuids.bitmap, self.uuids.history[0]];
            self.uuids.bitmap = 0;
        }
        self.crashed_primary = false;
        info!(resource = %self.cfg.resource, peer = %self.cfg.peer, "resync finished as source");
        self.actions.push(Action::PersistBitmap);
        self.persist_superblock();
        let uuids = self.uuids;
        self.send(0, Message::ResyncDone { uuids });
        self.conn.set_mode(Mode::Connected);
        self.set_peer_disk(DiskState::UpToDate);
        self.event("resync-finished", None, None, None);
        self.event(
            "connection",
            Some("SyncSource".into()),
            Some("Connected".into()),
            None,
        );
    }

    pub(super) fn on_rs_data(&mut self, frame_id: u64, offset: u64, payload: Bytes) {
        let len = payload.len() as u64;
        let op = self.alloc_id();
        if self.diskless()
            || !self
                .locks
                .try_acquire(LockOwner::Resync(op), Range::new(offset, len))
        {
            // A write of this Primary's to these blocks is in flight: the source read
            // the chunk before it had that write (it applies the write only after the
            // chunk's ack), so the chunk is stale. Marked again on the source, which
            // sends the blocks once more after the write. (Or the disk is detached and
            // the source has not heard of it yet.)
            self.send(0, Message::OutOfSync { offset, len });
            self.send(frame_id, Message::RsAck);
            return;
        }
        let session = self.conn.session().unwrap_or(0);
        self.ops.insert(
            op,
            OpKind::ResyncWrite {
                session,
                frame_id,
                offset,
                len,
            },
        );
        self.actions.push(Action::LocalWrite {
            op,
            offset,
            data: payload,
            fua: false,
        });
    }

    pub(super) fn resync_write_done(
        &mut self,
        op: u64,
        session: u64,
        frame_id: u64,
        offset: u64,
        len: u64,
        ok: bool,
    ) {
        self.release_lock(LockOwner::Resync(op));
        if ok {
            self.bitmap.clear_range_full_blocks(offset, len);
            self.resynced_bytes += len;
            self.send_on(session, frame_id, Message::RsAck);
        } else {
            warn!(resource = %self.cfg.resource, offset, "writing a resync block failed");
            self.bitmap.set_range_bytes(offset, len);
            self.send_on(session, 0, Message::OutOfSync { offset, len });
            self.send_on(session, frame_id, Message::RsAck);
        }
    }

    pub(super) fn on_resync_done(&mut self, source: Uuids) {
        if !self.conn.is_sync_target() {
            return;
        }
        let old = self.uuids.current;
        let history = if old == source.current || old == 0 {
            self.uuids.history
        } else {
            [old, self.uuids.history[0]]
        };
        self.uuids = Uuids {
            current: source.current,
            bitmap: 0,
            history,
        };
        self.bitmap.clear_all();
        self.crashed_primary = false;
        self.actions.push(Action::PersistBitmap);
        self.set_disk(DiskState::UpToDate);
        self.persist_superblock();
        self.conn.set_mode(Mode::Connected);
        info!(resource = %self.cfg.resource, peer = %self.cfg.peer, "resync finished as target; data UpToDate");
        self.event("resync-finished", None, None, None);
        self.event(
            "connection",
            Some("SyncTarget".into()),
            Some("Connected".into()),
            None,
        );
    }

    /// (progress 0..1, rate bytes/s, eta s) of the running resync or verify.
    pub(super) fn sync_figures(&self) -> (Option<f64>, Option<u64>, Option<u64>) {
        match self.conn.mode() {
            Some(Mode::SyncSource) | Some(Mode::SyncTarget) => {
                let total = self.meter.total_bits.max(1);
                let left = self.bitmap.count().min(total);
                let progress = 1.0 - left as f64 / total as f64;
                let rate = self.meter.rate();
                let eta = rate.filter(|r| *r > 0).map(|r| left * BLOCK_BYTES / r);
                (Some(progress), rate, eta)
            }
            Some(Mode::VerifySource) => (self.verify_progress(), None, None),
            _ => (None, None, None),
        }
    }
}
