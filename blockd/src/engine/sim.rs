//! A simulated two-node cluster for the engine: in-memory disks, an in-memory link
//! that can be cut, crashes that keep only what was persisted (and the disk, as after
//! `kill -9`), and deterministic delivery. Tests of protocol C, resync, split brain and
//! verify run here in microseconds.

use super::decide::{AfterSb0Pri, AfterSb1Pri, AfterSb2Pri, SplitBrainPolicy};
use super::*;
use crate::md::{Bitmap, BLOCK_BYTES};
use hablock_proto::peer::Frame;
use hablock_proto::types::ConnState;
use std::collections::VecDeque;

const SIZE: u64 = 64 * BLOCK_BYTES * 16; // 4 MiB

/// What survives a crash.
#[derive(Clone)]
struct Persisted {
    state: PersistedState,
    bitmap: Bitmap,
    al: Vec<u32>,
}

struct Node {
    name: &'static str,
    engine: Engine,
    disk: Vec<u8>,
    persisted: Persisted,
    /// Local operations waiting to complete.
    pending_io: VecDeque<Action>,
    completed: Vec<(ReqId, IoOutcome)>,
    want: bool,
    exported: bool,
    /// Every local read, write, trim and flush fails with EIO (the metadata area
    /// still works, as with failing sectors in the data area).
    failing: bool,
}

struct Cluster {
    a: Node,
    b: Node,
    /// Frames in flight a->b and b->a.
    ab: VecDeque<Frame>,
    ba: VecDeque<Frame>,
    link_up: bool,
    session: u64,
    connected: bool,
    now: u64,
    next_req: ReqId,
    policy: SplitBrainPolicy,
}

fn cfg(node: &str, peer: &str, policy: SplitBrainPolicy) -> EngineConfig {
    EngineConfig {
        resource: "r0".into(),
        node: node.into(),
        peer: peer.into(),
        usable_bytes: SIZE,
        policy,
        resync_rate_bps: 1 << 30,
        ping_interval_ms: 1000,
        peer_timeout_ms: 4000,
        al_extents: 64,
    }
}

fn fresh_persisted() -> Persisted {
    let mut bitmap = Bitmap::new(SIZE / BLOCK_BYTES);
    bitmap.set_all();
    Persisted {
        state: PersistedState {
            uuids: Uuids::default(),
            disk: DiskState::Inconsistent,
            primary: false,
            primary_since_ms: 0,
        },
        bitmap,
        al: Vec::new(),
    }
}

impl Node {
    fn new(name: &'static str, peer: &'static str, policy: SplitBrainPolicy, seed: u64) -> Node {
        let p = fresh_persisted();
        let engine = Engine::new(
            cfg(name, peer, policy),
            p.state,
            p.bitmap.clone(),
            &p.al,
            seed,
        );
        let mut n = Node {
            name,
            engine,
            disk: vec![0; SIZE as usize],
            persisted: p,
            pending_io: VecDeque::new(),
            completed: Vec::new(),
            want: false,
            exported: false,
            failing: false,
        };
        // Make the initial disk content differ between nodes (it is never synced yet).
        for (i, b) in n.disk.iter_mut().enumerate() {
            *b = (i as u8).wrapping_mul(seed as u8 | 1);
        }
        n
    }

    fn restart(&mut self, peer: &'static str, policy: SplitBrainPolicy, seed: u64) {
        let p = self.persisted.clone();
        self.engine = Engine::new(cfg(self.name, peer, policy), p.state, p.bitmap, &p.al, seed);
        self.pending_io.clear();
        self.want = false;
        self.exported = false;
    }
}

impl Cluster {
    fn new(policy: SplitBrainPolicy) -> Cluster {
        Cluster {
            a: Node::new("a", "b", policy, 1),
            b: Node::new("b", "a", policy, 2),
            ab: VecDeque::new(),
            ba: VecDeque::new(),
            link_up: true,
            session: 0,
            connected: false,
            now: 0,
            next_req: 1,
            policy,
        }
    }

    fn t(&self) -> Now {
        Now {
            mono_ms: self.now,
            wall_ms: 1_000_000 + self.now,
        }
    }

    fn node(&mut self, which: char) -> &mut Node {
        if which == 'a' {
            &mut self.a
        } else {
            &mut self.b
        }
    }

    /// Collects a node's actions: I/O is queued, frames go on the wire, persists are
    /// recorded.
    fn collect(&mut self, which: char) {
        let connected = self.connected;
        let (node, out) = if which == 'a' {
            (&mut self.a, &mut self.ab)
        } else {
            (&mut self.b, &mut self.ba)
        };
        let mut close = false;
        for act in node.engine.take_actions() {
            match act {
                Action::Send(f) => {
                    if connected {
                        out.push_back(f)
                    }
                }
                Action::CloseSession { session, .. } => close |= session == self.session,
                Action::Complete { req, outcome } => node.completed.push((req, outcome)),
                Action::PersistSuperblock(st) => node.persisted.state = st,
                Action::PersistActivityLog(ext) => {
                    node.persisted.bitmap = node.engine.bitmap.clone();
                    node.persisted.al = ext;
                }
                Action::PersistBitmap => node.persisted.bitmap = node.engine.bitmap.clone(),
                Action::SetExported(on) => node.exported = on,
                Action::WantConnection(on) => node.want = on,
                Action::Event { .. } => {}
                io => node.pending_io.push_back(io),
            }
        }
        if close {
            self.close_session(which);
        }
    }

    /// A node closed the session: what it sent before still arrives (TCP delivers
    /// before the FIN), then both see the session end.
    fn close_session(&mut self, closer: char) {
        if !self.connected {
            return;
        }
        self.connected = false;
        let (to, q) = if closer == 'a' {
            ('b', std::mem::take(&mut self.ab))
        } else {
            ('a', std::mem::take(&mut self.ba))
        };
        let t = self.t();
        let s = self.session;
        for frame in q {
            self.node(to)
                .engine
                .handle(t, Input::PeerFrame { session: s, frame });
            self.collect(to);
        }
        self.connected = true;
        self.drop_session();
    }

    /// The link or a node died: everything in flight is lost.
    fn drop_session(&mut self) {
        if !self.connected {
            return;
        }
        self.connected = false;
        self.ab.clear();
        self.ba.clear();
        let s = self.session;
        let t = self.t();
        for w in ['a', 'b'] {
            self.node(w).engine.handle(
                t,
                Input::PeerLost {
                    session: s,
                    reason: "closed".into(),
                },
            );
        }
        self.collect('a');
        self.collect('b');
    }

    fn try_connect(&mut self) {
        if self.connected || !self.link_up || !self.a.want || !self.b.want {
            return;
        }
        self.session += 1;
        self.connected = true;
        let t = self.t();
        let s = self.session;
        self.a.engine.handle(
            t,
            Input::PeerConnected {
                session: s,
                features: hablock_proto::peer::features::ALL,
            },
        );
        self.collect('a');
        self.b.engine.handle(
            t,
            Input::PeerConnected {
                session: s,
                features: hablock_proto::peer::features::ALL,
            },
        );
        self.collect('b');
    }

    /// Completes one local I/O of a node.
    fn complete_io(&mut self, which: char) -> bool {
        let t = self.t();
        let node = self.node(which);
        let Some(act) = node.pending_io.pop_front() else {
            return false;
        };
        if node.failing {
            let op = match act {
                Action::LocalRead { op, .. }
                | Action::LocalWrite { op, .. }
                | Action::LocalTrim { op, .. }
                | Action::LocalFlush { op } => op,
                _ => return true,
            };
            node.engine.handle(
                t,
                Input::LocalDone {
                    op,
                    outcome: IoOutcome::Failed(libc::EIO),
                },
            );
            self.collect(which);
            return true;
        }
        let (op, outcome) = match act {
            Action::LocalRead { op, offset, len } => {
                let o = offset as usize;
                (
                    op,
                    IoOutcome::Data(bytes::Bytes::copy_from_slice(
                        &node.disk[o..o + len as usize],
                    )),
                )
            }
            Action::LocalWrite {
                op, offset, data, ..
            } => {
                let o = offset as usize;
                node.disk[o..o + data.len()].copy_from_slice(&data);
                (op, IoOutcome::Done)
            }
            Action::LocalTrim {
                op, offset, len, ..
            } => {
                let o = offset as usize;
                node.disk[o..o + len as usize].fill(0);
                (op, IoOutcome::Done)
            }
            Action::LocalFlush { op } => (op, IoOutcome::Done),
            _ => return true,
        };
        node.engine.handle(t, Input::LocalDone { op, outcome });
        self.collect(which);
        true
    }

    fn deliver(&mut self, to: char) -> bool {
        if !self.connected {
            return false;
        }
        let q = if to == 'b' {
            &mut self.ab
        } else {
            &mut self.ba
        };
        let Some(frame) = q.pop_front() else {
            return false;
        };
        let t = self.t();
        let s = self.session;
        self.node(to)
            .engine
            .handle(t, Input::PeerFrame { session: s, frame });
        self.collect(to);
        true
    }

    /// Runs for `ms` of simulated time, however far things get.
    fn run_for(&mut self, ms: u64) {
        let end = self.now + ms;
        while self.now < end {
            self.step();
        }
    }

    /// One step: connect, complete I/O and deliver frames; if none of it moved
    /// anything, 100 ms pass (a tick on both nodes). Returns whether anything moved.
    fn step(&mut self) -> bool {
        self.try_connect();
        let mut moved = false;
        moved |= self.complete_io('a');
        moved |= self.complete_io('b');
        moved |= self.deliver('a');
        moved |= self.deliver('b');
        if !moved {
            self.now += 100;
            let t = self.t();
            self.a.engine.handle(t, Input::Tick);
            self.collect('a');
            self.b.engine.handle(t, Input::Tick);
            self.collect('b');
        }
        moved
    }

    /// Runs until nothing moves (ticks advance time to drive resync pacing).
    fn settle(&mut self) {
        for _ in 0..100_000 {
            let moved = self.step();
            if !moved
                && self.a.pending_io.is_empty()
                && self.b.pending_io.is_empty()
                && self.ab.is_empty()
                && self.ba.is_empty()
                && self.quiet()
            {
                return;
            }
        }
        panic!("cluster did not settle");
    }

    fn quiet(&self) -> bool {
        let busy = |n: &Node| {
            matches!(
                n.engine.conn.state(),
                ConnState::SyncSource
                    | ConnState::SyncTarget
                    | ConnState::VerifySource
                    | ConnState::VerifyTarget
            )
        };
        !busy(&self.a)
            && !busy(&self.b)
            && (self.connected || !self.link_up || !self.a.want || !self.b.want)
    }

    fn cmd(&mut self, which: char, cmd: Command) -> CommandResult {
        let t = self.t();
        let r = self.node(which).engine.command(t, cmd);
        self.collect(which);
        r
    }

    fn submit(&mut self, which: char, request: IoRequest) -> ReqId {
        let req = self.next_req;
        self.next_req += 1;
        let t = self.t();
        self.node(which)
            .engine
            .handle(t, Input::Io { req, request });
        self.collect(which);
        req
    }

    fn write(&mut self, which: char, offset: u64, byte: u8, len: usize) -> ReqId {
        self.submit(
            which,
            IoRequest::Write {
                offset,
                data: vec![byte; len].into(),
                fua: false,
            },
        )
    }

    fn outcome(&self, which: char, req: ReqId) -> Option<IoOutcome> {
        let n = if which == 'a' { &self.a } else { &self.b };
        n.completed
            .iter()
            .find(|(r, _)| *r == req)
            .map(|(_, o)| o.clone())
    }

    fn cut(&mut self) {
        self.link_up = false;
        self.drop_session();
    }

    fn heal(&mut self) {
        self.link_up = true;
    }

    /// `kill -9`: the node learns nothing; it restarts from what it persisted.
    fn crash(&mut self, which: char) {
        let policy = self.policy;
        let (peer, seed) = if which == 'a' { ("b", 11) } else { ("a", 12) };
        self.node(which).restart(peer, policy, seed);
        self.drop_session();
        self.collect(which);
    }

    /// Both fresh nodes, `a` forced Primary, full initial sync done.
    fn synced(policy: SplitBrainPolicy) -> Cluster {
        let mut c = Cluster::new(policy);
        c.collect('a');
        c.collect('b');
        c.settle();
        assert_eq!(c.a.engine.conn.state(), ConnState::Connected);
        let r = c.cmd('a', Command::Primary { force: false });
        assert!(matches!(r, CommandResult::Refused(_)), "{r:?}");
        let r = c.cmd('a', Command::Primary { force: true });
        assert!(matches!(r, CommandResult::Ok(_)), "{r:?}");
        c.settle();
        assert_eq!(c.a.disk, c.b.disk, "initial sync must copy everything");
        assert_eq!(c.b.engine.disk, DiskState::UpToDate);
        assert_eq!(c.a.engine.status().peer_disk, DiskState::UpToDate);
        c
    }
}

fn default_policy() -> SplitBrainPolicy {
    SplitBrainPolicy::default()
}

#[test]
fn initial_sync_after_forced_promotion() {
    let c = Cluster::synced(default_policy());
    assert_eq!(c.a.engine.role(), Role::Primary);
    assert!(c.a.exported);
    assert_eq!(c.b.engine.bitmap.count(), 0);
    assert_eq!(c.a.engine.bitmap.count(), 0);
    assert_eq!(c.b.engine.status().resynced_bytes, SIZE);
}

/// A synced pair whose Primary rewrote every block while cut off, healed: the resync
/// of the whole device starts at 1 MiB/s (well over a second). Returns the Primary's
/// resynced bytes before it.
fn resync_everything_slowly() -> (Cluster, u64) {
    let mut c = Cluster::synced(default_policy());
    c.a.engine.cfg.resync_rate_bps = 1 << 20;
    c.cut();
    for block in 0..SIZE / BLOCK_BYTES {
        c.write('a', block * BLOCK_BYTES, 0x5a, BLOCK_BYTES as usize);
    }
    c.settle();
    let before = c.a.engine.status().resynced_bytes;
    c.heal();
    (c, before)
}

#[test]
fn a_target_that_crashes_mid_resync_resumes_where_it_stopped() {
    let (mut c, before) = resync_everything_slowly();
    c.run_for(2500);
    let partial = c.a.engine.status().resynced_bytes - before;
    assert!(
        partial > 0 && partial < SIZE,
        "the resync must be under way: {partial} of {SIZE}"
    );
    c.crash('b');
    c.settle();
    assert_eq!(c.a.disk, c.b.disk);
    let total = c.a.engine.status().resynced_bytes - before;
    // Only what was copied after the last persisted progress (at most a second's worth,
    // plus one burst in flight) is copied again; starting over would cost `partial`.
    let rate = 1u64 << 20;
    assert!(
        total <= SIZE + rate + (256 << 10),
        "resynced {total} bytes for {SIZE} ({partial} before the crash): the resync started over"
    );
}

#[test]
fn a_reloaded_resync_rate_paces_the_running_resync() {
    let (mut c, before) = resync_everything_slowly();
    c.run_for(1000);
    let slow = c.a.engine.status().resynced_bytes - before;
    assert!(slow < SIZE / 2, "at 1 MiB/s: {slow} bytes in a second");
    // Four times the rate, and the other policies: the resync speeds up at once.
    let faster = Tunables {
        resync_rate_bps: 4 << 20,
        policy: SplitBrainPolicy {
            zero_primaries: AfterSb0Pri::DiscardZeroChanges,
            ..default_policy()
        },
    };
    assert_eq!(c.cmd('a', Command::Tune(faster)), CommandResult::Ok(vec![]));
    assert_eq!(c.a.engine.cfg.policy, faster.policy);
    let mark = c.a.engine.status().resynced_bytes;
    c.run_for(500);
    let fast = c.a.engine.status().resynced_bytes - mark;
    assert!(
        fast > slow,
        "after the reload half a second copied {fast} bytes, a second before it {slow}"
    );
    c.settle();
    assert_eq!(c.a.disk, c.b.disk);
    // A rate of zero would stall the resync forever: refused, the rate stays.
    let stall = Tunables {
        resync_rate_bps: 0,
        ..faster
    };
    assert!(matches!(
        c.cmd('a', Command::Tune(stall)),
        CommandResult::Refused(_)
    ));
    assert_eq!(c.a.engine.cfg.resync_rate_bps, 4 << 20);
}

#[test]
fn write_completes_only_after_both_nodes_have_it() {
    let mut c = Cluster::synced(default_policy());
    let req = c.write('a', 8192, 0xab, 4096);
    // Local write done, peer not yet.
    assert!(c.complete_io('a'));
    assert_eq!(c.outcome('a', req), None);
    assert!(c.deliver('b'));
    assert!(c.complete_io('b'));
    assert_eq!(
        c.outcome('a', req),
        None,
        "the peer has written but the ack is on the wire"
    );
    assert!(c.deliver('a'));
    assert_eq!(c.outcome('a', req), Some(IoOutcome::Done));
    assert_eq!(&c.b.disk[8192..12288], &[0xab; 4096][..]);
}

#[test]
fn the_statistics_count_each_byte_where_it_went_and_show_what_is_in_flight() {
    let mut c = Cluster::synced(default_policy());
    let a0 = c.a.engine.status().statistics;
    let b0 = c.b.engine.status().statistics;
    // The initial sync: read on the source, sent, received and written on the target.
    assert_eq!(a0.disk_read_bytes, SIZE);
    assert_eq!(a0.net_sent_bytes, SIZE);
    assert_eq!(b0.net_received_bytes, SIZE);
    assert_eq!(b0.disk_written_bytes, SIZE);
    assert_eq!(
        (a0.app_pending, a0.peer_pending, a0.local_pending),
        (0, 0, 0)
    );
    // Resync progress reached both bitmaps on disk.
    assert!(
        a0.bitmap_writes > 0 && b0.bitmap_writes > 0,
        "{a0:?} {b0:?}"
    );

    // A replicated write, step by step: pending on the Primary until the peer's ack.
    let req = c.write('a', 8192, 0xab, 4096);
    let a = c.a.engine.status().statistics;
    assert_eq!((a.app_pending, a.peer_pending, a.local_pending), (1, 1, 1));
    assert_eq!(a.net_sent_bytes - a0.net_sent_bytes, 4096);
    assert_eq!(a.disk_written_bytes - a0.disk_written_bytes, 4096);
    assert!(c.complete_io('a'));
    assert_eq!(c.a.engine.status().statistics.local_pending, 0);
    assert!(c.deliver('b'));
    let b = c.b.engine.status().statistics;
    assert_eq!(b.net_received_bytes - b0.net_received_bytes, 4096);
    assert_eq!(
        (
            b.disk_written_bytes - b0.disk_written_bytes,
            b.local_pending
        ),
        (4096, 1)
    );
    assert!(c.complete_io('b'));
    assert!(c.deliver('a'));
    assert_eq!(c.outcome('a', req), Some(IoOutcome::Done));
    let a = c.a.engine.status().statistics;
    assert_eq!((a.app_pending, a.peer_pending, a.local_pending), (0, 0, 0));

    // A read is local only.
    let r = c.submit(
        'a',
        IoRequest::Read {
            offset: 8192,
            len: 4096,
        },
    );
    assert_eq!(c.a.engine.status().statistics.app_pending, 1);
    c.settle();
    assert!(matches!(c.outcome('a', r), Some(IoOutcome::Data(_))));
    let a2 = c.a.engine.status().statistics;
    assert_eq!(a2.disk_read_bytes - a.disk_read_bytes, 4096);
    assert_eq!(a2.net_sent_bytes, a.net_sent_bytes);

    // The first write made extent 0 hot (one activity-log update); the next in it
    // needs none.
    assert_eq!(a2.al_writes, a0.al_writes + 1);
    let w = c.write('a', 0, 1, 4096);
    c.settle();
    assert_eq!(c.outcome('a', w), Some(IoOutcome::Done));
    assert_eq!(c.a.engine.status().statistics.al_writes, a2.al_writes);
}

#[test]
fn demotion_is_confirmed_once_the_peer_has_seen_it() {
    let mut c = Cluster::synced(default_policy());
    assert!(matches!(
        c.cmd('a', Command::Secondary),
        CommandResult::Ok(_)
    ));
    assert!(
        !c.a.engine.peer_knows_state(),
        "the daemon must wait before answering"
    );
    assert!(c.deliver('b')); // State
    assert!(c.deliver('b')); // Ping
    assert!(c.deliver('a')); // PingAck
    assert!(c.a.engine.peer_knows_state());
    assert!(matches!(
        c.cmd('b', Command::Primary { force: false }),
        CommandResult::Ok(_)
    ));
}

#[test]
fn secondary_serves_no_io() {
    let mut c = Cluster::synced(default_policy());
    let req = c.write('b', 0, 1, 512);
    assert_eq!(c.outcome('b', req), Some(IoOutcome::Failed(libc::EIO)));
}

#[test]
fn overlapping_writes_keep_their_order_on_both_nodes() {
    let mut c = Cluster::synced(default_policy());
    let r1 = c.write('a', 0, 1, 8192);
    let r2 = c.write('a', 4096, 2, 8192);
    // The second waits for the first: only one local write is queued.
    assert_eq!(c.a.pending_io.len(), 1);
    c.settle();
    assert_eq!(c.outcome('a', r1), Some(IoOutcome::Done));
    assert_eq!(c.outcome('a', r2), Some(IoOutcome::Done));
    assert_eq!(&c.a.disk[4096..12288], &[2u8; 8192][..]);
    assert_eq!(c.a.disk[..12288], c.b.disk[..12288]);
}

#[test]
fn primary_needs_force_while_peer_unknown_and_is_refused_while_peer_primary() {
    let mut c = Cluster::synced(default_policy());
    let r = c.cmd('b', Command::Primary { force: true });
    assert!(
        matches!(r, CommandResult::Refused(ref m) if m.contains("Primary")),
        "{r:?}"
    );
    c.cut();
    let r = c.cmd('b', Command::Primary { force: false });
    assert!(
        matches!(r, CommandResult::Refused(ref m) if m.contains("unknown")),
        "{r:?}"
    );
}

#[test]
fn disconnected_writes_resync_only_the_written_blocks() {
    let mut c = Cluster::synced(default_policy());
    c.cut();
    for i in 0..10 {
        let r = c.write('a', i * 65536, 7, 4096);
        c.settle();
        assert_eq!(c.outcome('a', r), Some(IoOutcome::Done));
    }
    assert_eq!(c.a.engine.status().out_of_sync_bytes, 10 * 4096);
    let before = c.b.engine.status().resynced_bytes;
    c.heal();
    c.settle();
    assert_eq!(c.a.disk, c.b.disk);
    assert_eq!(c.b.engine.status().resynced_bytes - before, 10 * 4096);
    assert_eq!(c.a.engine.status().out_of_sync_bytes, 0);
}

#[test]
fn write_in_flight_when_the_link_drops_is_marked_and_completes() {
    let mut c = Cluster::synced(default_policy());
    let r = c.write('a', 0, 9, 4096);
    c.cut();
    c.settle();
    assert_eq!(c.outcome('a', r), Some(IoOutcome::Done));
    assert_eq!(c.a.engine.bitmap.count(), 1);
    c.heal();
    c.settle();
    assert_eq!(c.a.disk, c.b.disk);
}

#[test]
fn secondary_crash_and_restart_resyncs_the_difference() {
    let mut c = Cluster::synced(default_policy());
    let r = c.write('a', 0, 3, 4096);
    c.settle();
    assert_eq!(c.outcome('a', r), Some(IoOutcome::Done));
    c.crash('b');
    let r = c.write('a', 1 << 20, 4, 4096);
    c.settle();
    assert_eq!(c.outcome('a', r), Some(IoOutcome::Done));
    c.settle();
    assert_eq!(c.a.disk, c.b.disk);
    assert_eq!(c.b.engine.disk, DiskState::UpToDate);
}

#[test]
fn primary_crash_peer_promoted_old_primary_becomes_target() {
    let mut c = Cluster::synced(default_policy());
    // Acked writes.
    for i in 0..4 {
        let r = c.write('a', i * 4096, 5, 4096);
        c.settle();
        assert_eq!(c.outcome('a', r), Some(IoOutcome::Done));
    }
    // A write that reached a's disk only, then a crashes.
    let unacked = c.write('a', 2 << 20, 6, 4096);
    assert!(c.complete_io('a'));
    c.ab.clear();
    assert_eq!(c.outcome('a', unacked), None);
    c.crash('a');
    let r = c.cmd('b', Command::Primary { force: false });
    assert!(matches!(r, CommandResult::Refused(_)));
    c.link_up = false;
    c.settle();
    let r = c.cmd('b', Command::Primary { force: true });
    assert!(matches!(r, CommandResult::Ok(_)), "{r:?}");
    // Every acked write is on b.
    assert_eq!(&c.b.disk[..4 * 4096], &[5u8; 4 * 4096][..]);
    let r = c.write('b', 3 << 20, 8, 4096);
    c.settle();
    assert_eq!(c.outcome('b', r), Some(IoOutcome::Done));
    c.heal();
    c.settle();
    assert_eq!(
        c.b.engine.conn.state(),
        ConnState::Connected,
        "{:?} {:?}",
        c.b.engine.status(),
        c.a.engine.status()
    );
    assert_eq!(
        c.a.disk, c.b.disk,
        "the crashed primary's stray write is overwritten"
    );
    assert_eq!(c.a.engine.disk, DiskState::UpToDate);
}

#[test]
fn primary_crash_without_failover_resyncs_its_activity_log() {
    let mut c = Cluster::synced(default_policy());
    let _unacked = c.write('a', 2 << 20, 6, 4096);
    assert!(c.complete_io('a'));
    c.ab.clear();
    c.crash('a');
    c.settle();
    assert_eq!(c.a.engine.conn.state(), ConnState::Connected);
    assert_eq!(c.a.disk, c.b.disk);
}

fn split_brain_cluster(policy: SplitBrainPolicy, a_writes: u64, b_writes: u64) -> Cluster {
    let mut c = Cluster::synced(policy);
    c.cut();
    for i in 0..a_writes {
        c.write('a', i * 4096, 0xaa, 4096);
    }
    c.settle();
    let r = c.cmd('b', Command::Primary { force: true });
    assert!(matches!(r, CommandResult::Ok(_)));
    c.now += 10_000;
    for i in 0..b_writes {
        c.write('b', (i + 100) * 4096, 0xbb, 4096);
    }
    c.settle();
    c
}

fn policy(p0: AfterSb0Pri, p1: AfterSb1Pri) -> SplitBrainPolicy {
    SplitBrainPolicy {
        zero_primaries: p0,
        one_primary: p1,
        two_primaries: AfterSb2Pri::Disconnect,
    }
}

#[test]
fn split_brain_disconnect_policy_stays_standalone_until_operator_discards() {
    let mut c = split_brain_cluster(default_policy(), 3, 2);
    c.cmd('a', Command::Secondary);
    c.cmd('b', Command::Secondary);
    c.heal();
    c.settle();
    assert_eq!(c.a.engine.conn.state(), ConnState::StandAlone);
    assert_eq!(c.b.engine.conn.state(), ConnState::StandAlone);
    assert!(c.a.engine.status().split_brain && c.b.engine.status().split_brain);
    assert_ne!(c.a.disk, c.b.disk);
    // The operator picks b as the victim.
    assert!(matches!(
        c.cmd(
            'b',
            Command::Connect {
                discard_my_data: true
            }
        ),
        CommandResult::Ok(_)
    ));
    assert!(matches!(
        c.cmd(
            'a',
            Command::Connect {
                discard_my_data: false
            }
        ),
        CommandResult::Ok(_)
    ));
    c.settle();
    assert_eq!(c.a.disk, c.b.disk);
    assert_eq!(&c.b.disk[..4096], &[0xaa; 4096][..], "a's changes won");
    assert!(!c.b.engine.status().split_brain);
}

#[test]
fn split_brain_discard_zero_changes() {
    let mut c = split_brain_cluster(
        policy(AfterSb0Pri::DiscardZeroChanges, AfterSb1Pri::Disconnect),
        3,
        0,
    );
    c.cmd('a', Command::Secondary);
    c.cmd('b', Command::Secondary);
    c.heal();
    c.settle();
    assert_eq!(c.a.engine.conn.state(), ConnState::Connected);
    assert_eq!(c.a.disk, c.b.disk);
    assert_eq!(&c.b.disk[..4096], &[0xaa; 4096][..]);
}

#[test]
fn split_brain_discard_least_changes() {
    let mut c = split_brain_cluster(
        policy(AfterSb0Pri::DiscardLeastChanges, AfterSb1Pri::Disconnect),
        1,
        5,
    );
    c.cmd('a', Command::Secondary);
    c.cmd('b', Command::Secondary);
    c.heal();
    c.settle();
    assert_eq!(c.a.disk, c.b.disk);
    assert_eq!(
        &c.a.disk[100 * 4096..101 * 4096],
        &[0xbb; 4096][..],
        "b had more changes and wins"
    );
    assert_ne!(
        &c.a.disk[..4096],
        &[0xaa; 4096][..],
        "a's single change is discarded"
    );
}

#[test]
fn split_brain_discard_younger_and_older_primary() {
    // b became Primary later (younger).
    let mut c = split_brain_cluster(
        policy(AfterSb0Pri::DiscardYoungerPrimary, AfterSb1Pri::Disconnect),
        2,
        2,
    );
    c.cmd('a', Command::Secondary);
    c.cmd('b', Command::Secondary);
    c.heal();
    c.settle();
    assert_eq!(c.a.disk, c.b.disk);
    assert_eq!(&c.b.disk[..4096], &[0xaa; 4096][..]);

    let mut c = split_brain_cluster(
        policy(AfterSb0Pri::DiscardOlderPrimary, AfterSb1Pri::Disconnect),
        2,
        2,
    );
    c.cmd('a', Command::Secondary);
    c.cmd('b', Command::Secondary);
    c.heal();
    c.settle();
    assert_eq!(c.a.disk, c.b.disk);
    assert_eq!(&c.a.disk[100 * 4096..101 * 4096], &[0xbb; 4096][..]);
}

#[test]
fn split_brain_one_primary_discard_secondary_and_consensus() {
    let mut c = split_brain_cluster(
        policy(AfterSb0Pri::Disconnect, AfterSb1Pri::DiscardSecondary),
        2,
        3,
    );
    c.cmd('a', Command::Secondary);
    c.heal();
    c.settle();
    assert_eq!(c.b.engine.role(), Role::Primary);
    assert_eq!(c.a.disk, c.b.disk);
    assert_eq!(&c.a.disk[100 * 4096..101 * 4096], &[0xbb; 4096][..]);

    // consensus with discard-least-changes: the secondary (a) has fewer changes: agree.
    let mut c = split_brain_cluster(
        policy(AfterSb0Pri::DiscardLeastChanges, AfterSb1Pri::Consensus),
        1,
        3,
    );
    c.cmd('a', Command::Secondary);
    c.heal();
    c.settle();
    assert_eq!(c.a.engine.conn.state(), ConnState::Connected);
    assert_eq!(c.a.disk, c.b.disk);

    // consensus where the 0pri verdict would discard the Primary: disconnect.
    let mut c = split_brain_cluster(
        policy(AfterSb0Pri::DiscardLeastChanges, AfterSb1Pri::Consensus),
        5,
        1,
    );
    c.cmd('a', Command::Secondary);
    c.heal();
    c.settle();
    assert_eq!(c.a.engine.conn.state(), ConnState::StandAlone);
    assert!(c.b.engine.status().split_brain);
}

#[test]
fn split_brain_two_primaries_disconnect() {
    let mut c = split_brain_cluster(
        policy(
            AfterSb0Pri::DiscardZeroChanges,
            AfterSb1Pri::DiscardSecondary,
        ),
        1,
        1,
    );
    c.heal();
    c.settle();
    assert_eq!(c.a.engine.conn.state(), ConnState::StandAlone);
    assert_eq!(c.b.engine.conn.state(), ConnState::StandAlone);
    assert!(c.a.engine.status().split_brain);
}

#[test]
fn verify_finds_and_resync_repairs_a_silent_difference() {
    let mut c = Cluster::synced(default_policy());
    c.b.disk[5000] ^= 0xff;
    assert!(matches!(c.cmd('a', Command::Verify), CommandResult::Ok(_)));
    c.settle();
    let v = c.a.engine.status().last_verify.unwrap();
    assert_eq!(v.out_of_sync_bytes, 4096);
    assert_eq!(v.checked_bytes, SIZE);
    assert_eq!(c.b.engine.status().out_of_sync_bytes, 4096);
    c.cmd('a', Command::Disconnect);
    c.cmd(
        'a',
        Command::Connect {
            discard_my_data: false,
        },
    );
    c.settle();
    assert_eq!(c.a.disk, c.b.disk);
    c.cmd('b', Command::Verify);
    c.settle();
    assert_eq!(
        c.a.engine.status().last_verify.unwrap().out_of_sync_bytes,
        0
    );
}

#[test]
fn writes_during_resync_stay_correct() {
    let mut c = Cluster::synced(default_policy());
    c.cut();
    for i in 0..64 {
        c.write('a', i * 4096, 1, 4096);
    }
    c.settle();
    c.heal();
    c.try_connect();
    // Interleave new writes with the resync.
    for i in 0..64 {
        c.write('a', i * 4096 + 2048, 2, 4096);
        c.complete_io('a');
        c.deliver('b');
        c.complete_io('b');
        c.deliver('a');
    }
    c.settle();
    assert_eq!(c.a.disk, c.b.disk);
}

#[test]
fn invalidate_resyncs_everything_from_the_peer() {
    let mut c = Cluster::synced(default_policy());
    c.b.disk[100] ^= 1;
    assert!(matches!(
        c.cmd('a', Command::Invalidate),
        CommandResult::Refused(_)
    ));
    assert!(matches!(
        c.cmd('b', Command::Invalidate),
        CommandResult::Ok(_)
    ));
    c.settle();
    assert_eq!(c.a.disk, c.b.disk);
    assert_eq!(c.b.engine.disk, DiskState::UpToDate);
}

#[test]
fn corrupt_data_packet_is_resent() {
    let mut c = Cluster::synced(default_policy());
    let req = c.write('a', 0, 0x55, 4096);
    let frame = c.ab.pop_front().unwrap();
    let t = c.t();
    let s = c.session;
    c.b.engine.handle(
        t,
        Input::PeerCorrupt {
            session: s,
            kind: hablock_proto::peer::kind_of(&frame.msg),
            id: frame.id,
        },
    );
    c.collect('b');
    c.settle();
    assert_eq!(c.outcome('a', req), Some(IoOutcome::Done));
    assert_eq!(c.a.disk, c.b.disk);
}

#[test]
fn silent_peer_times_out_and_writes_complete_marked() {
    let mut c = Cluster::synced(default_policy());
    let req = c.write('a', 0, 1, 4096);
    c.complete_io('a');
    c.ab.clear(); // the peer never answers
    for _ in 0..50 {
        c.now += 100;
        let t = c.t();
        c.a.engine.handle(t, Input::Tick);
        c.collect('a');
    }
    assert_eq!(c.outcome('a', req), Some(IoOutcome::Done));
    assert_eq!(c.a.engine.bitmap.count(), 1);
}

mod random {
    //! Random interleavings of writes, link cuts, crashes and switchovers: every
    //! acknowledged write survives, and the copies converge.
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    #[derive(Debug, Clone)]
    enum Op {
        Write(u64),
        Step(u8),
        Cut,
        Heal,
        CrashPrimary,
        CrashSecondary,
        Switchover,
        Settle,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => (0u64..48).prop_map(Op::Write),
            8 => any::<u8>().prop_map(Op::Step),
            1 => Just(Op::Cut),
            1 => Just(Op::Heal),
            1 => Just(Op::CrashPrimary),
            1 => Just(Op::CrashSecondary),
            1 => Just(Op::Switchover),
            1 => Just(Op::Settle),
        ]
    }

    struct Model {
        /// Block -> value of the last acknowledged write (None: unknown, a write was
        /// lost in a crash before its acknowledgement).
        known: HashMap<u64, Option<u8>>,
        inflight: HashMap<ReqId, (char, u64, u8)>,
        next_val: u8,
    }

    impl Model {
        fn absorb(&mut self, c: &mut Cluster) {
            for node in ['a', 'b'] {
                let done: Vec<(ReqId, IoOutcome)> = std::mem::take(&mut c.node(node).completed);
                for (req, outcome) in done {
                    if let Some((_, block, val)) = self.inflight.remove(&req) {
                        assert_eq!(outcome, IoOutcome::Done);
                        self.known.insert(block, Some(val));
                    }
                }
            }
        }

        /// A node that says its reads may bypass the engine holds every acknowledged
        /// block that no write is changing right now.
        fn check_local_reads(&self, c: &Cluster) {
            for n in [&c.a, &c.b] {
                if !n.engine.reads_locally() {
                    continue;
                }
                for (block, val) in &self.known {
                    let Some(v) = val else { continue };
                    if self.inflight.values().any(|(_, b, _)| b == block) {
                        continue;
                    }
                    let o = (*block * BLOCK_BYTES) as usize;
                    assert!(
                        n.disk[o..o + BLOCK_BYTES as usize].iter().all(|b| b == v),
                        "{} reads locally but its block {block} is stale",
                        n.name
                    );
                }
            }
        }

        fn lose_inflight_of(&mut self, node: char) {
            let lost: Vec<ReqId> = self
                .inflight
                .iter()
                .filter(|(_, (n, _, _))| *n == node)
                .map(|(r, _)| *r)
                .collect();
            for r in lost {
                if let Some((_, block, _)) = self.inflight.remove(&r) {
                    self.known.insert(block, None);
                }
            }
        }
    }

    fn primary(c: &Cluster) -> Option<char> {
        if c.a.engine.role() == Role::Primary {
            Some('a')
        } else if c.b.engine.role() == Role::Primary {
            Some('b')
        } else {
            None
        }
    }

    fn healthy(c: &Cluster) -> bool {
        c.connected
            && c.a.engine.conn.state() == ConnState::Connected
            && c.b.engine.conn.state() == ConnState::Connected
            && c.a.engine.disk == DiskState::UpToDate
            && c.b.engine.disk == DiskState::UpToDate
    }

    fn run(ops: Vec<Op>) {
        let mut c = Cluster::synced(default_policy());
        let mut m = Model {
            known: HashMap::new(),
            inflight: HashMap::new(),
            next_val: 1,
        };
        for op in ops {
            match op {
                Op::Write(block) => {
                    if let Some(p) = primary(&c) {
                        let val = m.next_val;
                        m.next_val = m.next_val.wrapping_add(1).max(1);
                        let req = c.write(p, block * BLOCK_BYTES, val, BLOCK_BYTES as usize);
                        m.inflight.insert(req, (p, block, val));
                    }
                }
                Op::Step(choice) => {
                    let _ = match choice % 4 {
                        0 => c.complete_io('a'),
                        1 => c.complete_io('b'),
                        2 => c.deliver('a'),
                        _ => c.deliver('b'),
                    };
                }
                Op::Cut => c.cut(),
                Op::Heal => c.heal(),
                Op::CrashPrimary => {
                    // Failing over to a stale node loses writes by definition: only crash
                    // the Primary while its peer is in sync (what fencing guarantees).
                    if let Some(p) = primary(&c) {
                        if healthy(&c) {
                            let other = if p == 'a' { 'b' } else { 'a' };
                            c.crash(p);
                            m.lose_inflight_of(p);
                            let r = c.cmd(other, Command::Primary { force: true });
                            assert!(
                                matches!(r, CommandResult::Ok(_)),
                                "{r:?} {:?} {}",
                                c.node(other).engine.status(),
                                c.connected
                            );
                        }
                    }
                }
                Op::CrashSecondary => {
                    if let Some(p) = primary(&c) {
                        let other = if p == 'a' { 'b' } else { 'a' };
                        c.crash(other);
                    }
                }
                Op::Switchover => {
                    if let Some(p) = primary(&c) {
                        if healthy(&c) {
                            c.settle();
                            m.absorb(&mut c);
                            let other = if p == 'a' { 'b' } else { 'a' };
                            if healthy(&c) {
                                assert!(matches!(
                                    c.cmd(p, Command::Secondary),
                                    CommandResult::Ok(_)
                                ));
                                // The peer learns of the demotion from the state update.
                                c.settle();
                                let r = c.cmd(other, Command::Primary { force: false });
                                assert!(matches!(r, CommandResult::Ok(_)), "{r:?}");
                            }
                        }
                    }
                }
                Op::Settle => c.settle(),
            }
            m.absorb(&mut c);
            m.check_local_reads(&c);
        }
        c.heal();
        c.settle();
        m.absorb(&mut c);
        assert!(
            m.inflight.is_empty(),
            "every request completes once the cluster settles"
        );
        assert!(
            healthy(&c),
            "a: {:?}\nb: {:?}",
            c.a.engine.status(),
            c.b.engine.status()
        );
        assert_eq!(c.a.disk, c.b.disk, "the copies converge");
        let p = primary(&c).expect("a primary");
        let disk = if p == 'a' { &c.a.disk } else { &c.b.disk };
        for (block, val) in &m.known {
            if let Some(v) = val {
                let o = (*block * BLOCK_BYTES) as usize;
                assert!(
                    disk[o..o + BLOCK_BYTES as usize].iter().all(|b| b == v),
                    "acknowledged write to block {block} lost"
                );
            }
        }
    }

    #[test]
    fn crash_failover_then_write_in_flight_when_the_link_is_cut() {
        run(vec![Op::CrashPrimary, Op::Settle, Op::Write(0), Op::Cut]);
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]
        #[test]
        fn acknowledged_writes_survive_and_copies_converge(ops in proptest::collection::vec(op(), 1..80)) {
            run(ops);
        }
    }
}

// ---- a failing local disk ----

fn read(c: &mut Cluster, which: char, offset: u64, len: u32) -> ReqId {
    c.submit(which, IoRequest::Read { offset, len })
}

#[test]
fn a_primary_whose_disk_fails_detaches_and_serves_its_device_through_the_peer() {
    let mut c = Cluster::synced(default_policy());
    let a_before = c.a.disk.clone();
    assert!(c.a.engine.reads_locally());
    assert!(!c.b.engine.reads_locally(), "a Secondary serves no reads");
    c.a.failing = true;
    // The write whose local half fails completes: the peer has it.
    let w1 = c.write('a', 8192, 0x11, 4096);
    c.settle();
    assert_eq!(c.outcome('a', w1), Some(IoOutcome::Done));
    assert_eq!(c.a.engine.disk, DiskState::Diskless);
    assert!(!c.a.engine.reads_locally(), "reads go to the peer");
    assert_eq!(
        c.a.engine.status().detach_reason.as_deref(),
        Some("local write failed (errno 5)")
    );
    assert_eq!(c.b.engine.status().peer_disk, DiskState::Diskless);
    assert_eq!(c.b.engine.status().detach_reason, None);
    assert_eq!(&c.b.disk[8192..12288], &[0x11; 4096][..]);
    // Reads are served by the peer, writes and flushes go to the peer only.
    let w2 = c.write('a', 65536, 0x22, 8192);
    let f = c.submit('a', IoRequest::Flush);
    c.settle();
    assert_eq!(c.outcome('a', w2), Some(IoOutcome::Done));
    assert_eq!(c.outcome('a', f), Some(IoOutcome::Done));
    let r = read(&mut c, 'a', 8192, 4096);
    let r2 = read(&mut c, 'a', 65536 + 4096, 4096);
    c.settle();
    assert_eq!(
        c.outcome('a', r),
        Some(IoOutcome::Data(vec![0x11; 4096].into()))
    );
    assert_eq!(
        c.outcome('a', r2),
        Some(IoOutcome::Data(vec![0x22; 4096].into()))
    );
    assert_eq!(c.a.disk, a_before, "nothing is written to the failed disk");
    // The peer holds the only copy: a new generation, and what the detached disk lacks
    // is marked (the failed write, told with OutOfSync, and the later ones).
    assert_ne!(c.b.engine.uuids.bitmap, 0);
    assert!(c.b.engine.bitmap.get(8192 / BLOCK_BYTES));
    assert!(c.b.engine.bitmap.get(65536 / BLOCK_BYTES));
    // The detach wrote an Inconsistent superblock and a full bitmap; later metadata
    // writes (which would go to the failing disk) are dropped.
    assert_eq!(c.a.persisted.state.disk, DiskState::Inconsistent);
    assert_eq!(c.a.persisted.bitmap.count(), SIZE / BLOCK_BYTES);
    assert!(matches!(
        c.cmd('a', Command::Verify),
        CommandResult::Refused(_)
    ));
    assert!(matches!(
        c.cmd('b', Command::Verify),
        CommandResult::Refused(_)
    ));
    // Without the peer there is no copy left: I/O fails.
    c.cut();
    let w3 = c.write('a', 0, 0x33, 4096);
    let r3 = read(&mut c, 'a', 0, 4096);
    let f3 = c.submit('a', IoRequest::Flush);
    c.settle();
    for req in [w3, r3, f3] {
        assert_eq!(c.outcome('a', req), Some(IoOutcome::Failed(libc::EIO)));
    }
}

#[test]
fn reads_and_writes_in_flight_when_the_primary_disk_fails_are_finished_by_the_peer() {
    let mut c = Cluster::synced(default_policy());
    c.write('a', 0, 0x44, 4096);
    c.settle();
    c.a.failing = true;
    // A read already at the local disk when it fails is asked of the peer instead.
    let r = read(&mut c, 'a', 0, 4096);
    let w = c.write('a', 4096, 0x55, 4096);
    c.settle();
    assert_eq!(
        c.outcome('a', r),
        Some(IoOutcome::Data(vec![0x44; 4096].into()))
    );
    assert_eq!(c.outcome('a', w), Some(IoOutcome::Done));
    // The peer goes away with a read and a write waiting for it: both fail.
    let r = read(&mut c, 'a', 0, 4096);
    let w = c.write('a', 8192, 0x66, 4096);
    c.cut();
    c.settle();
    assert_eq!(c.outcome('a', r), Some(IoOutcome::Failed(libc::EIO)));
    assert_eq!(c.outcome('a', w), Some(IoOutcome::Failed(libc::EIO)));
    assert!(c.a.engine.is_idle());
}

#[test]
fn a_read_the_peer_never_answers_fails_after_the_peer_timeout() {
    let mut c = Cluster::synced(default_policy());
    c.a.failing = true;
    let w = c.write('a', 0, 0x61, 4096);
    c.settle();
    assert_eq!(c.outcome('a', w), Some(IoOutcome::Done));
    // The peer's disk hangs on the read (its pings still flow).
    let r = read(&mut c, 'a', 0, 4096);
    assert!(c.deliver('b'));
    assert!(matches!(
        c.b.pending_io.pop_back(),
        Some(Action::LocalRead { .. })
    ));
    c.run_for(3000);
    assert_eq!(c.outcome('a', r), None, "within peer_timeout it waits");
    c.run_for(2000);
    assert_eq!(c.outcome('a', r), Some(IoOutcome::Failed(libc::EIO)));
}

#[test]
fn a_detached_primary_restarted_on_its_old_disk_is_resynced_from_the_peer() {
    let mut c = Cluster::synced(default_policy());
    c.a.failing = true;
    for block in 0..8u64 {
        c.write('a', block * 65536, 0x70 + block as u8, 4096);
    }
    c.settle();
    assert_eq!(c.a.engine.disk, DiskState::Diskless);
    // The disk comes back (a loose cable): blockd restarts on it. It says Inconsistent,
    // so it becomes the target of the peer, which it must not overwrite.
    c.a.failing = false;
    c.crash('a');
    c.settle();
    assert_eq!(c.a.engine.disk, DiskState::UpToDate);
    assert_eq!(c.a.disk, c.b.disk);
    assert_eq!(&c.a.disk[65536..65536 + 4096], &[0x71; 4096][..]);
}

#[test]
fn the_operator_detaches_a_secondary_disk_and_attaches_a_new_one_resynced_in_full() {
    let mut c = Cluster::synced(default_policy());
    assert!(matches!(
        c.cmd(
            'a',
            Command::Attach {
                uuids: Uuids::default()
            }
        ),
        CommandResult::Refused(_)
    ));
    assert_eq!(c.cmd('b', Command::Detach), CommandResult::Ok(vec![]));
    c.settle();
    assert_eq!(c.b.engine.disk, DiskState::Diskless);
    assert_eq!(
        c.b.engine.status().detach_reason.as_deref(),
        Some("detached by the operator")
    );
    assert_eq!(c.a.engine.status().peer_disk, DiskState::Diskless);
    // The Primary goes on alone; b's old disk gets nothing.
    let b_before = c.b.disk.clone();
    for block in 0..4u64 {
        c.write('a', block * 131072, 0xa0 + block as u8, 8192);
    }
    c.settle();
    assert_eq!(c.b.disk, b_before);
    // A new disk: fresh metadata (generation 0), attached, everything copied.
    c.b.disk = vec![0x77; SIZE as usize];
    let r = c.cmd(
        'b',
        Command::Attach {
            uuids: Uuids::default(),
        },
    );
    assert!(matches!(r, CommandResult::Ok(_)), "{r:?}");
    c.settle();
    assert_eq!(c.b.engine.disk, DiskState::UpToDate);
    assert_eq!(c.b.engine.status().detach_reason, None);
    assert_eq!(c.a.engine.status().peer_disk, DiskState::UpToDate);
    assert_eq!(c.a.disk, c.b.disk);
    assert_eq!(c.b.persisted.state.disk, DiskState::UpToDate);
    assert_eq!(c.a.engine.bitmap.count(), 0);
}

#[test]
fn a_primary_detaches_and_attaches_only_with_an_uptodate_peer_connected() {
    let mut c = Cluster::synced(default_policy());
    c.cut();
    c.settle();
    assert!(matches!(
        c.cmd('a', Command::Detach),
        CommandResult::Refused(_)
    ));
    assert_eq!(c.a.engine.disk, DiskState::UpToDate);
    c.heal();
    c.settle();
    assert_eq!(c.cmd('a', Command::Detach), CommandResult::Ok(vec![]));
    c.settle();
    let w = c.write('a', 0, 0xb1, 4096);
    c.settle();
    assert_eq!(c.outcome('a', w), Some(IoOutcome::Done));
    c.cut();
    c.settle();
    assert!(matches!(
        c.cmd(
            'a',
            Command::Attach {
                uuids: c.a.engine.uuids
            }
        ),
        CommandResult::Refused(_)
    ));
    c.heal();
    c.settle();
    // Demoted, the old disk comes back: it holds stale data and is copied over.
    assert_eq!(c.cmd('a', Command::Secondary), CommandResult::Ok(vec![]));
    c.settle();
    let uuids = c.a.persisted.state.uuids;
    assert!(matches!(
        c.cmd('a', Command::Attach { uuids }),
        CommandResult::Ok(_)
    ));
    c.settle();
    assert_eq!(c.a.engine.disk, DiskState::UpToDate);
    assert_eq!(c.a.disk, c.b.disk);
    assert_eq!(&c.a.disk[..4096], &[0xb1; 4096][..]);
}

#[test]
fn a_request_the_disk_refuses_fails_alone_without_a_detach() {
    let mut c = Cluster::synced(default_policy());
    let w = c.write('a', 0, 0x91, 4096);
    let Some(Action::LocalWrite { op, .. }) = c.a.pending_io.pop_front() else {
        panic!("no local write queued");
    };
    let t = c.t();
    c.a.engine.handle(
        t,
        Input::LocalDone {
            op,
            outcome: IoOutcome::Failed(libc::EOPNOTSUPP),
        },
    );
    c.collect('a');
    c.settle();
    assert_eq!(c.a.engine.disk, DiskState::UpToDate);
    // The peer has it: the write completes; the local range is marked for a resync.
    assert_eq!(c.outcome('a', w), Some(IoOutcome::Done));
    assert!(c.a.engine.bitmap.get(0));
}

#[test]
fn a_secondary_whose_disk_fails_detaches_and_the_primary_goes_on_alone() {
    let mut c = Cluster::synced(default_policy());
    c.b.failing = true;
    // Two writes on the wire: the first fails on b's disk, the second reaches b once it
    // is Diskless (it has nothing to write it to and says so).
    let w1 = c.write('a', 0, 0x81, 4096);
    let w1b = c.write('a', 262144, 0x83, 4096);
    c.settle();
    assert_eq!(c.outcome('a', w1), Some(IoOutcome::Done));
    assert_eq!(c.outcome('a', w1b), Some(IoOutcome::Done));
    assert!(c.a.engine.bitmap.get(262144 / BLOCK_BYTES));
    assert_eq!(c.b.engine.disk, DiskState::Diskless);
    assert_eq!(c.a.engine.status().peer_disk, DiskState::Diskless);
    assert_eq!(c.a.engine.status().connection, ConnState::Connected);
    // Writes are no longer sent; the Primary marks them and starts a new generation.
    let b_before = c.b.disk.clone();
    let w2 = c.write('a', 131072, 0x82, 4096);
    c.settle();
    assert_eq!(c.outcome('a', w2), Some(IoOutcome::Done));
    assert_eq!(c.b.disk, b_before);
    assert!(c.a.engine.bitmap.get(0));
    assert!(c.a.engine.bitmap.get(131072 / BLOCK_BYTES));
    assert_ne!(c.a.engine.uuids.bitmap, 0);
    assert!(c.a.engine.status().out_of_sync_bytes > 0);
    // A Diskless node cannot be promoted.
    assert!(matches!(
        c.cmd('b', Command::Primary { force: true }),
        CommandResult::Refused(_)
    ));
    // The disk is replaced and blockd restarted on it: a full resync from the Primary.
    c.b.failing = false;
    c.b.persisted = fresh_persisted();
    c.crash('b');
    c.settle();
    assert_eq!(c.b.engine.disk, DiskState::UpToDate);
    assert_eq!(c.a.disk, c.b.disk);
}

// ---- a Primary attaching a disk: resynced while its device is in use ----

/// `a`, Primary, has its disk detached by the operator, writes on through `b` (blocks
/// 0..8 hold 0x10 + block), then attaches a new disk full of garbage.
fn primary_attaching_a_new_disk() -> Cluster {
    let mut c = Cluster::synced(default_policy());
    assert_eq!(c.cmd('a', Command::Detach), CommandResult::Ok(vec![]));
    c.settle();
    for block in 0..8u64 {
        c.write(
            'a',
            block * BLOCK_BYTES,
            0x10 + block as u8,
            BLOCK_BYTES as usize,
        );
    }
    c.settle();
    c.a.disk = vec![0x77; SIZE as usize];
    let r = c.cmd(
        'a',
        Command::Attach {
            uuids: Uuids::default(),
        },
    );
    assert!(matches!(r, CommandResult::Ok(_)), "{r:?}");
    c
}

fn block_of(byte: u8) -> Vec<u8> {
    vec![byte; BLOCK_BYTES as usize]
}

#[test]
fn a_primary_attaches_a_new_disk_and_serves_its_device_while_the_peer_resyncs_it() {
    let mut c = primary_attaching_a_new_disk();
    assert_eq!(c.a.engine.disk, DiskState::Inconsistent);
    assert_eq!(c.a.engine.conn.state(), ConnState::SyncTarget);
    assert_eq!(c.a.persisted.state.disk, DiskState::Inconsistent);
    // Before any chunk: reads are the peer's data, never the new disk's garbage.
    let r = read(&mut c, 'a', 0, 2 * BLOCK_BYTES as u32);
    // A full-block write and a partial one while the resync runs.
    let w1 = c.write('a', 2 * BLOCK_BYTES, 0x22, BLOCK_BYTES as usize);
    let w2 = c.write('a', 3 * BLOCK_BYTES + 512, 0x33, 1024);
    let f = c.submit('a', IoRequest::Flush);
    c.settle();
    let mut expected = block_of(0x10);
    expected.extend(block_of(0x11));
    assert_eq!(c.outcome('a', r), Some(IoOutcome::Data(expected.into())));
    for req in [w1, w2, f] {
        assert_eq!(c.outcome('a', req), Some(IoOutcome::Done));
    }
    assert_eq!(c.a.engine.disk, DiskState::UpToDate);
    assert_eq!(c.a.engine.conn.state(), ConnState::Connected);
    assert_eq!(c.b.engine.conn.state(), ConnState::Connected);
    assert_eq!(c.a.persisted.state.disk, DiskState::UpToDate);
    assert_eq!(c.a.engine.bitmap.count(), 0);
    assert_eq!(c.b.engine.bitmap.count(), 0);
    assert!(c.a.disk == c.b.disk, "the copies differ");
    let b = BLOCK_BYTES as usize;
    assert_eq!(&c.a.disk[2 * b..3 * b], &block_of(0x22)[..]);
    let mut block3 = block_of(0x13);
    block3[512..1536].fill(0x33);
    assert_eq!(&c.a.disk[3 * b..4 * b], &block3[..]);
    // UpToDate: reads are local again.
    let r = read(&mut c, 'a', 0, 4096);
    assert!(matches!(
        c.a.pending_io.back(),
        Some(Action::LocalRead { offset: 0, .. })
    ));
    c.settle();
    assert_eq!(
        c.outcome('a', r),
        Some(IoOutcome::Data(vec![0x10; 4096].into()))
    );
}

#[test]
fn a_resync_chunk_that_meets_a_write_of_the_primary_in_flight_is_sent_again_after_it() {
    let mut c = primary_attaching_a_new_disk();
    // b learns of the disk and reads its first chunks.
    while c.deliver('b') {}
    assert_eq!(c.b.engine.conn.state(), ConnState::SyncSource);
    assert!(!c.b.pending_io.is_empty());
    // a writes block 0 now: b reads the chunk before it has the write.
    let w = c.write('a', 0, 0xee, BLOCK_BYTES as usize);
    while c.complete_io('b') {}
    // The chunk reaches a while the write is in flight there: it must not land.
    while c.deliver('a') {}
    assert_ne!(
        &c.a.disk[..8],
        &[0x10; 8][..],
        "a stale chunk overwrote block 0"
    );
    c.settle();
    assert_eq!(c.outcome('a', w), Some(IoOutcome::Done));
    assert_eq!(c.a.engine.disk, DiskState::UpToDate);
    assert_eq!(&c.a.disk[..BLOCK_BYTES as usize], &block_of(0xee)[..]);
    assert!(c.a.disk == c.b.disk, "the copies differ");
}

#[test]
fn a_skipped_last_chunk_is_sent_again_before_the_resync_ends() {
    let mut c = primary_attaching_a_new_disk();
    // b reads every chunk (the window holds them all); a writes part of a block of the
    // last one.
    while c.deliver('b') {}
    let last = SIZE - BLOCK_BYTES;
    let w = c.write('a', last + 512, 0xd4, 1024);
    while c.complete_io('b') {}
    // Every chunk but the last lands on a and is acknowledged to b first.
    let chunks = c.ba.len();
    for _ in 0..chunks - 1 {
        c.deliver('a');
    }
    while c.complete_io('a') {}
    while c.deliver('b') {}
    // Then the last one, which meets the write.
    while c.deliver('a') {}
    c.settle();
    assert_eq!(c.outcome('a', w), Some(IoOutcome::Done));
    assert_eq!(c.a.engine.disk, DiskState::UpToDate);
    assert!(c.a.disk == c.b.disk, "the copies differ");
}

#[test]
fn the_source_holds_a_write_of_the_primary_until_the_chunk_it_overlaps_is_acknowledged() {
    let mut c = primary_attaching_a_new_disk();
    // b learns of the disk and reads its first chunk; then a's write to block 0
    // reaches it. Its disk could finish the write before the read: the write waits.
    while c.deliver('b') {}
    assert!(matches!(
        c.b.pending_io.front(),
        Some(Action::LocalRead { offset: 0, .. })
    ));
    let w = c.write('a', 0, 0xee, BLOCK_BYTES as usize);
    while c.deliver('b') {}
    assert!(
        !c.b.pending_io
            .iter()
            .any(|a| matches!(a, Action::LocalWrite { offset: 0, .. })),
        "the write was issued under the chunk's read"
    );
    c.settle();
    assert_eq!(c.outcome('a', w), Some(IoOutcome::Done));
    assert_eq!(&c.b.disk[..BLOCK_BYTES as usize], &block_of(0xee)[..]);
    assert!(c.a.disk == c.b.disk, "the copies differ");
}

#[test]
fn a_disk_that_fails_again_under_the_primary_during_its_resync_is_detached_without_failing_io() {
    let mut c = primary_attaching_a_new_disk();
    c.a.failing = true;
    let w = c.write('a', 5 * BLOCK_BYTES, 0x55, BLOCK_BYTES as usize);
    let r = read(&mut c, 'a', 0, 4096);
    c.settle();
    assert_eq!(c.outcome('a', w), Some(IoOutcome::Done));
    assert_eq!(
        c.outcome('a', r),
        Some(IoOutcome::Data(vec![0x10; 4096].into()))
    );
    assert_eq!(c.a.engine.disk, DiskState::Diskless);
    assert_eq!(c.a.engine.conn.state(), ConnState::Connected);
    assert_eq!(c.b.engine.conn.state(), ConnState::Connected);
    assert_eq!(c.b.engine.status().peer_disk, DiskState::Diskless);
    let b = BLOCK_BYTES as usize;
    assert_eq!(&c.b.disk[5 * b..6 * b], &block_of(0x55)[..]);
    // The peer serves the device again.
    let r = read(&mut c, 'a', 5 * BLOCK_BYTES, 4096);
    c.settle();
    assert_eq!(
        c.outcome('a', r),
        Some(IoOutcome::Data(vec![0x55; 4096].into()))
    );
}

#[test]
fn a_primary_whose_peer_goes_away_during_the_resync_fails_io_and_resumes_on_reconnect() {
    let mut c = primary_attaching_a_new_disk();
    c.cut();
    c.settle();
    assert_eq!(c.a.engine.disk, DiskState::Inconsistent);
    // No good copy reachable: nothing is served from the half-copied disk.
    let r = read(&mut c, 'a', 0, 4096);
    let w = c.write('a', 0, 0x44, 4096);
    c.settle();
    assert_eq!(c.outcome('a', r), Some(IoOutcome::Failed(libc::EIO)));
    assert_eq!(c.outcome('a', w), Some(IoOutcome::Failed(libc::EIO)));
    c.heal();
    c.settle();
    assert_eq!(c.a.engine.disk, DiskState::UpToDate);
    assert!(c.a.disk == c.b.disk, "the copies differ");
    assert_eq!(&c.a.disk[..BLOCK_BYTES as usize], &block_of(0x10)[..]);
}

mod primary_target_prop {
    //! Random interleavings of a Primary's reads and writes with the resync onto the
    //! disk it attached (and link cuts): every read returns the last acknowledged data,
    //! and the copies converge.
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    const BLOCKS: u64 = 24;

    #[derive(Debug, Clone)]
    enum Op {
        /// Block, byte offset inside it (0: the whole block), length.
        Write(u64, u64, u64),
        Read(u64),
        Step(u8),
        Cut,
        Heal,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0..BLOCKS).prop_map(|b| Op::Write(b, 0, BLOCK_BYTES)),
            2 => (0..BLOCKS, 0u64..7, 1u64..8).prop_map(|(b, o, l)| Op::Write(b, o * 512, l.min(8 - o) * 512)),
            3 => (0..BLOCKS).prop_map(Op::Read),
            10 => any::<u8>().prop_map(Op::Step),
            1 => Just(Op::Cut),
            1 => Just(Op::Heal),
        ]
    }

    struct Model {
        /// Block -> its content as acknowledged (None: a failed write left it unknown).
        blocks: HashMap<u64, Option<Vec<u8>>>,
        writes: HashMap<ReqId, (u64, u64, u8, u64)>,
        reads: HashMap<ReqId, u64>,
        next_val: u8,
    }

    impl Model {
        fn busy(&self, block: u64) -> bool {
            self.writes.values().any(|w| w.0 == block) || self.reads.values().any(|b| *b == block)
        }

        fn absorb(&mut self, c: &mut Cluster) {
            for (req, outcome) in std::mem::take(&mut c.a.completed) {
                if let Some((block, off, val, len)) = self.writes.remove(&req) {
                    match outcome {
                        IoOutcome::Done => {
                            if let Some(Some(content)) = self.blocks.get_mut(&block) {
                                content[off as usize..(off + len) as usize].fill(val);
                            }
                        }
                        _ => {
                            self.blocks.insert(block, None);
                        }
                    }
                } else if let Some(block) = self.reads.remove(&req) {
                    if let (IoOutcome::Data(d), Some(Some(content))) =
                        (&outcome, self.blocks.get(&block))
                    {
                        assert_eq!(&d[..], &content[..], "read of block {block}");
                    }
                }
            }
        }
    }

    fn run(ops: Vec<Op>) {
        let mut c = primary_attaching_a_new_disk();
        let b = BLOCK_BYTES as usize;
        let mut m = Model {
            blocks: (0..BLOCKS)
                .map(|i| {
                    (
                        i,
                        Some(c.b.disk[i as usize * b..(i as usize + 1) * b].to_vec()),
                    )
                })
                .collect(),
            writes: HashMap::new(),
            reads: HashMap::new(),
            next_val: 1,
        };
        for op in ops {
            match op {
                Op::Write(block, off, len) if !m.busy(block) => {
                    let val = m.next_val;
                    m.next_val = m.next_val.wrapping_add(1).max(1);
                    let req = c.write('a', block * BLOCK_BYTES + off, val, len as usize);
                    m.writes.insert(req, (block, off, val, len));
                }
                Op::Read(block) if !m.busy(block) => {
                    let req = read(&mut c, 'a', block * BLOCK_BYTES, BLOCK_BYTES as u32);
                    m.reads.insert(req, block);
                }
                Op::Write(..) | Op::Read(_) => {}
                Op::Step(choice) => {
                    let _ = match choice % 4 {
                        0 => c.complete_io('a'),
                        1 => c.complete_io('b'),
                        2 => c.deliver('a'),
                        _ => c.deliver('b'),
                    };
                }
                Op::Cut => c.cut(),
                Op::Heal => c.heal(),
            }
            m.absorb(&mut c);
        }
        c.heal();
        c.settle();
        m.absorb(&mut c);
        assert!(
            m.writes.is_empty() && m.reads.is_empty(),
            "every request completes"
        );
        assert_eq!(
            c.a.engine.disk,
            DiskState::UpToDate,
            "{:?}",
            c.a.engine.status()
        );
        assert_eq!(c.b.engine.disk, DiskState::UpToDate);
        assert!(c.a.disk == c.b.disk, "the copies converge");
        for (block, content) in &m.blocks {
            if let Some(content) = content {
                let o = *block as usize * b;
                assert_eq!(&c.a.disk[o..o + b], &content[..], "block {block}");
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]
        #[test]
        fn reads_see_acknowledged_writes_and_the_copies_converge(ops in proptest::collection::vec(op(), 1..120)) {
            run(ops);
        }
    }
}
