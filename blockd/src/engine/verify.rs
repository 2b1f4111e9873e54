//! Online verify: the source walks the whole device in chunks; for each it reads its
//! own copy and asks the peer for the checksums (CRC32C per 4 KiB) of the same range,
//! holding the range lock so that no write lands in between. Differing blocks are
//! marked out of sync on both nodes; the next resync (`disconnect` + `connect`)
//! repairs them, as in DRBD.
//!
//! The source is the node the command ran on, unless that node is Secondary and the
//! peer Primary: then the Primary drives it (only it can order verify reads against
//! application writes).

use super::ranges::Range;
use super::session::Mode;
use super::{CommandResult, Engine, IoOutcome, LockOwner, OpKind};
use hablock_proto::control::VerifyResult;
use hablock_proto::peer::{Message, VERIFY_BLOCK};
use hablock_proto::types::Role;
use std::collections::HashMap;
use tracing::{info, warn};

/// Verify chunk (256 KiB).
const CHUNK_BYTES: u64 = 256 * 1024;
/// Chunks in flight at once.
const WINDOW: usize = 8;

/// The source's verify.
#[derive(Debug)]
pub(super) struct Verify {
    cursor: u64,
    checked: u64,
    out_of_sync: u64,
    inflight: HashMap<u64, VChunk>,
    tokens: f64,
    last_tick_ms: u64,
}

#[derive(Debug, Default)]
struct VChunk {
    offset: u64,
    len: u64,
    local: Option<Vec<u32>>,
    remote: Option<Vec<u32>>,
}

/// CRC32C of each [`VERIFY_BLOCK`] of `data`.
pub(super) fn block_checksums(data: &[u8]) -> Vec<u32> {
    data.chunks(VERIFY_BLOCK as usize)
        .map(crc32c::crc32c)
        .collect()
}

impl Engine {
    pub(super) fn cmd_verify(&mut self) -> CommandResult {
        match self.conn.mode() {
            Some(Mode::Connected) => {}
            Some(m) => {
                return CommandResult::Refused(format!("busy ({m:?}); retry when Connected"))
            }
            None => {
                return CommandResult::Refused(format!(
                    "not connected to {} ({}); verify compares both copies",
                    self.cfg.peer,
                    self.conn.state()
                ))
            }
        }
        let (peer_role, _) = self.conn.peer_roles();
        if self.role != Role::Primary && peer_role == Role::Primary {
            self.send(0, Message::VerifyStart);
            return CommandResult::Ok(vec![format!(
                "verify runs on {}, the Primary",
                self.cfg.peer
            )]);
        }
        info!(resource = %self.cfg.resource, peer = %self.cfg.peer, "online verify started");
        self.conn.set_mode(Mode::VerifySource);
        self.event(
            "connection",
            Some("Connected".into()),
            Some("VerifySource".into()),
            None,
        );
        self.verify = Some(Verify {
            cursor: 0,
            checked: 0,
            out_of_sync: 0,
            inflight: HashMap::new(),
            tokens: (self.cfg.resync_rate_bps as f64 / 10.0).max(CHUNK_BYTES as f64),
            last_tick_ms: self.now.mono_ms,
        });
        CommandResult::Ok(vec![])
    }

    pub(super) fn stop_verify(&mut self) {
        if let Some(v) = self.verify.take() {
            for id in v.inflight.keys() {
                self.release_lock(LockOwner::Verify(*id));
            }
        }
    }

    pub(super) fn verify_progress(&self) -> Option<f64> {
        let v = self.verify.as_ref()?;
        Some(v.checked as f64 / self.size_bytes.max(1) as f64)
    }

    pub(super) fn verify_tick(&mut self) {
        let now = self.now.mono_ms;
        let rate = self.cfg.resync_rate_bps as f64;
        if let Some(v) = &mut self.verify {
            let dt = now.saturating_sub(v.last_tick_ms) as f64 / 1000.0;
            v.last_tick_ms = now;
            v.tokens = (v.tokens + rate * dt).min((rate / 10.0).max(CHUNK_BYTES as f64));
        }
    }

    pub(super) fn verify_pump(&mut self) {
        loop {
            let size = self.size_bytes;
            let Some(v) = &self.verify else { return };
            if v.cursor >= size {
                if v.inflight.is_empty() {
                    self.finish_verify();
                }
                return;
            }
            if v.inflight.len() >= WINDOW || v.tokens <= 0.0 {
                return;
            }
            let offset = v.cursor;
            let len = CHUNK_BYTES.min(size - offset);
            let id = self.alloc_id();
            if !self
                .locks
                .try_acquire(LockOwner::Verify(id), Range::new(offset, len))
            {
                // A write holds it; retry on the next input.
                return;
            }
            let Some(v) = &mut self.verify else { return };
            v.cursor += len;
            v.tokens -= len as f64;
            v.inflight.insert(
                id,
                VChunk {
                    offset,
                    len,
                    ..Default::default()
                },
            );
            self.ops.insert(id, OpKind::VerifyRead { chunk: id });
            // A verify chunk is at most CHUNK_BYTES.
            self.actions.push(super::Action::LocalRead {
                op: id,
                offset,
                len: len as u32,
            });
            self.send(
                id,
                Message::VerifyReq {
                    offset,
                    len: len as u32,
                },
            );
        }
    }

    pub(super) fn verify_read_done(&mut self, chunk: u64, outcome: IoOutcome) {
        let Some(v) = &mut self.verify else { return };
        let Some(c) = v.inflight.get_mut(&chunk) else {
            return;
        };
        c.local = Some(match outcome {
            IoOutcome::Data(d) => block_checksums(&d),
            // An unreadable local block cannot match anything.
            _ => Vec::new(),
        });
        self.verify_compare(chunk);
    }

    pub(super) fn on_verify_reply(&mut self, id: u64, _offset: u64, checksums: Vec<u32>) {
        let Some(v) = &mut self.verify else { return };
        let Some(c) = v.inflight.get_mut(&id) else {
            return;
        };
        c.remote = Some(checksums);
        self.verify_compare(id);
    }

    fn verify_compare(&mut self, id: u64) {
        let Some(v) = &mut self.verify else { return };
        let ready = v
            .inflight
            .get(&id)
            .is_some_and(|c| c.local.is_some() && c.remote.is_some());
        if !ready {
            return;
        }
        let Some(c) = v.inflight.remove(&id) else {
            return;
        };
        let (local, remote) = (c.local.unwrap_or_default(), c.remote.unwrap_or_default());
        let blocks = c.len.div_ceil(u64::from(VERIFY_BLOCK));
        let mut bad = Vec::new();
        for b in 0..blocks {
            let i = b as usize;
            if local.get(i).is_none() || local.get(i) != remote.get(i) {
                let off = c.offset + b * u64::from(VERIFY_BLOCK);
                bad.push((off, u64::from(VERIFY_BLOCK).min(c.offset + c.len - off)));
            }
        }
        v.checked += c.len;
        v.out_of_sync += bad.iter().map(|(_, len)| len).sum::<u64>();
        for (off, len) in bad {
            self.bitmap.set_range_bytes(off, len);
            self.send(0, Message::OutOfSync { offset: off, len });
        }
        self.release_lock(LockOwner::Verify(id));
    }

    fn finish_verify(&mut self) {
        let Some(v) = self.verify.take() else { return };
        let result = VerifyResult {
            checked_bytes: v.checked,
            out_of_sync_bytes: v.out_of_sync,
        };
        if v.out_of_sync > 0 {
            warn!(resource = %self.cfg.resource, peer = %self.cfg.peer, out_of_sync_bytes = v.out_of_sync,
                "online verify found differences; they are marked and resync on the next connect");
        } else {
            info!(resource = %self.cfg.resource, peer = %self.cfg.peer, checked = v.checked, "online verify found no difference");
        }
        self.actions.push(super::Action::PersistBitmap);
        self.send(
            0,
            Message::VerifyDone {
                out_of_sync_bytes: v.out_of_sync,
            },
        );
        self.last_verify = Some(result);
        self.conn.set_mode(Mode::Connected);
        self.event(
            "verify-finished",
            None,
            None,
            Some(format!("{} bytes out of sync", v.out_of_sync)),
        );
        self.event(
            "connection",
            Some("VerifySource".into()),
            Some("Connected".into()),
            None,
        );
    }

    pub(super) fn on_verify_req(&mut self, frame_id: u64, offset: u64, len: u32) {
        if self.conn.mode() == Some(Mode::Connected) {
            self.conn.set_mode(Mode::VerifyTarget);
            self.event(
                "connection",
                Some("Connected".into()),
                Some("VerifyTarget".into()),
                None,
            );
        }
        let len = u64::from(len).min(self.size_bytes.saturating_sub(offset));
        let op = self.alloc_id();
        let session = self.conn.session().unwrap_or(0);
        self.ops.insert(
            op,
            OpKind::VerifyAnswer {
                session,
                frame_id,
                offset,
            },
        );
        // Bounded by the u32 of the request.
        self.actions.push(super::Action::LocalRead {
            op,
            offset,
            len: len as u32,
        });
    }

    pub(super) fn verify_answer(
        &mut self,
        session: u64,
        frame_id: u64,
        offset: u64,
        outcome: IoOutcome,
    ) {
        let checksums = match outcome {
            IoOutcome::Data(d) => block_checksums(&d),
            _ => Vec::new(),
        };
        self.send_on(
            session,
            frame_id,
            Message::VerifyReply { offset, checksums },
        );
    }

    pub(super) fn on_verify_done(&mut self, out_of_sync_bytes: u64) {
        self.last_verify = Some(VerifyResult {
            checked_bytes: self.size_bytes,
            out_of_sync_bytes,
        });
        if self.conn.mode() == Some(Mode::VerifyTarget) {
            self.conn.set_mode(Mode::Connected);
            self.event(
                "connection",
                Some("VerifyTarget".into()),
                Some("Connected".into()),
                None,
            );
        }
        self.actions.push(super::Action::PersistBitmap);
        self.event(
            "verify-finished",
            None,
            None,
            Some(format!("{out_of_sync_bytes} bytes out of sync")),
        );
    }
}
