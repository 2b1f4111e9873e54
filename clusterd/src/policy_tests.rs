//! Placement cases, symmetry, and a two-node simulation with random link cuts.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;
use proptest::prelude::*;

const NAMES: [&str; 2] = ["master", "slave"];

/// The truth about both nodes, and what each one hears.
#[derive(Debug, Clone)]
struct World {
    standby: [bool; 2],
    ping_ok: [bool; 2],
    holds: [bool; 2],
    failed: [bool; 2],
    /// `hears[i]`: node i receives node 1-i's heartbeats.
    hears: [bool; 2],
    /// The replication link is up (blockd sees the peer's role).
    replication: bool,
    preferred: Option<&'static str>,
    auto_failback: bool,
    moved_to: Option<&'static str>,
    fence: [FenceState; 2],
    /// Each node's copy is UpToDate (as the other's blockd reports it).
    up_to_date: [bool; 2],
}

impl World {
    fn new() -> World {
        World {
            standby: [false; 2],
            ping_ok: [true; 2],
            holds: [false; 2],
            failed: [false; 2],
            hears: [true; 2],
            replication: true,
            preferred: Some("master"),
            auto_failback: true,
            moved_to: None,
            fence: [FenceState::NotConfigured; 2],
            up_to_date: [true; 2],
        }
    }

    fn facts(&self, i: usize) -> NodeFacts<'static> {
        NodeFacts {
            name: NAMES[i],
            standby: self.standby[i],
            ping_ok: self.ping_ok[i],
            holds: self.holds[i],
            failed: self.failed[i],
        }
    }

    fn decide(&self, i: usize) -> Decision {
        let p = 1 - i;
        decide(&PlacementInput {
            me: self.facts(i),
            peer: self.facts(p),
            peer_alive: self.hears[i],
            preferred: self.preferred,
            auto_failback: self.auto_failback,
            moved_to: self.moved_to,
            // blockd: the peer is Primary exactly while it holds the group.
            peer_primary_via_replication: self.replication && self.holds[p],
            peer_up_to_date: self.up_to_date[p],
            fence: self.fence[i],
        })
    }

    fn verdicts(&self) -> [Verdict; 2] {
        [self.decide(0).verdict, self.decide(1).verdict]
    }

    /// Both nodes decide on the same snapshot, then carry out their verdicts
    /// (starting and stopping are instant here).
    fn step(&mut self) -> [Verdict; 2] {
        let v = self.verdicts();
        for (i, verdict) in v.iter().enumerate() {
            match verdict {
                Verdict::Acquire => self.holds[i] = true,
                Verdict::Release => self.holds[i] = false,
                _ => {}
            }
        }
        v
    }
}

use Verdict::*;

#[test]
fn cold_start_the_preferred_node_acquires() {
    let mut w = World::new();
    assert_eq!(w.step(), [Acquire, Wait]);
    assert_eq!(w.step(), [Hold, Wait]);
    assert!(w.decide(0).reason.contains("preferred"));
}

#[test]
fn without_preference_the_lower_name_acquires() {
    let mut w = World::new();
    w.preferred = None;
    assert_eq!(w.step(), [Acquire, Wait]);
    assert!(w.decide(0).reason.contains("holder"));
}

#[test]
fn a_dead_holder_is_taken_over() {
    let mut w = World::new();
    w.step();
    w.hears[1] = false; // the slave no longer hears the master
    w.replication = false;
    assert_eq!(w.decide(1).verdict, Acquire);
    assert!(w.decide(1).reason.contains("master is dead"));
}

#[test]
fn orderly_failback_holder_releases_first_then_preferred_acquires() {
    let mut w = World::new();
    w.holds = [false, true];
    // Master comes back; slave holds.
    let m = w.decide(0);
    assert_eq!(m.verdict, Wait);
    assert!(m.reason.contains("waiting for slave to release"), "{m:?}");
    assert_eq!(w.decide(1).verdict, Release);
    assert_eq!(w.step(), [Wait, Release]);
    assert_eq!(w.holds, [false, false]);
    assert_eq!(w.step(), [Acquire, Wait]);
    assert_eq!(w.step(), [Hold, Wait]);
}

#[test]
fn failback_waits_for_the_peer_to_demote_on_replication() {
    let mut w = World::new();
    let input = PlacementInput {
        me: w.facts(0),
        peer: w.facts(1),
        peer_alive: true,
        preferred: w.preferred,
        auto_failback: true,
        moved_to: None,
        peer_primary_via_replication: true,
        peer_up_to_date: true,
        fence: FenceState::NotConfigured,
    };
    let d = decide(&input);
    assert_eq!(d.verdict, Wait);
    assert!(d.reason.contains("demote"), "{d:?}");
    w.replication = false;
    assert_eq!(w.decide(0).verdict, Acquire);
}

#[test]
fn failback_waits_until_the_returning_node_is_resynced() {
    let mut w = World::new();
    // slave took over while master was away; master is back, resyncing.
    w.holds = [false, true];
    w.up_to_date = [false, true];
    let s = w.decide(1);
    assert_eq!(s.verdict, Hold);
    assert!(s.reason.contains("not UpToDate"), "{s:?}");
    assert_eq!(w.decide(0).verdict, Wait);
    // Standby still hands the group over at once.
    w.standby[1] = true;
    assert_eq!(w.decide(1).verdict, Release);
    w.standby[1] = false;
    // The resync is done: the orderly failback proceeds.
    w.up_to_date = [true, true];
    assert_eq!(w.step(), [Wait, Release]);
    assert_eq!(w.step(), [Acquire, Wait]);
}

#[test]
fn without_auto_failback_the_holder_keeps_the_group() {
    let mut w = World::new();
    w.auto_failback = false;
    w.holds = [false, true];
    assert_eq!(w.step(), [Wait, Hold]);
    assert!(w.decide(1).reason.contains("current holder"));
}

#[test]
fn standby_hands_over_and_online_takes_back() {
    let mut w = World::new();
    w.step();
    w.standby[0] = true;
    assert_eq!(w.step(), [Release, Wait]);
    assert_eq!(w.step(), [Wait, Acquire]);
    w.standby[0] = false;
    assert_eq!(w.step(), [Wait, Release]);
    assert_eq!(w.step(), [Acquire, Wait]);
}

#[test]
fn standby_on_both_stops_everything() {
    let mut w = World::new();
    w.step();
    w.standby = [true, true];
    assert_eq!(w.step(), [Release, Wait]);
    assert_eq!(w.step(), [Wait, Wait]);
    assert!(w.decide(0).reason.contains("no node is eligible"));
}

#[test]
fn standby_is_honoured_with_a_dead_peer() {
    let mut w = World::new();
    w.step();
    w.hears = [false, false];
    w.replication = false;
    w.standby[0] = true;
    assert_eq!(w.decide(0).verdict, Release);
    w.holds[0] = false;
    assert_eq!(w.decide(0).verdict, Wait);
}

#[test]
fn a_holder_that_loses_its_ping_targets_hands_over_to_a_peer_that_has_them() {
    let mut w = World::new();
    w.step();
    w.ping_ok[0] = false;
    assert_eq!(w.step(), [Release, Wait]);
    assert_eq!(w.step(), [Wait, Acquire]);
    // Both lose them: the group stays.
    w.ping_ok[1] = false;
    assert_eq!(w.step(), [Wait, Hold]);
}

#[test]
fn a_node_without_ping_targets_does_not_take_over_a_dead_peer() {
    let mut w = World::new();
    w.holds = [true, false];
    w.hears = [false, false];
    w.replication = false;
    w.ping_ok[1] = false;
    let d = w.decide(1);
    assert_eq!(d.verdict, Wait);
    assert!(d.reason.contains("ping"), "{d:?}");
    // A holder without ping and a dead peer keeps the group.
    w.ping_ok[0] = false;
    assert_eq!(w.decide(0).verdict, Hold);
}

#[test]
fn never_take_over_from_a_peer_primary_on_replication() {
    let mut w = World::new();
    w.step();
    w.hears = [false, false]; // heartbeat links cut, replication alive
    let d = w.decide(1);
    assert_eq!(d.verdict, Wait);
    assert!(d.reason.contains("alive via replication"), "{d:?}");
    assert_eq!(w.decide(0).verdict, Hold);
}

#[test]
fn fencing_comes_before_a_takeover_and_a_failed_fence_refuses_it() {
    let mut w = World::new();
    w.step();
    w.hears = [false, false];
    w.replication = false;
    let cases = [
        (FenceState::Needed, Fence, "fencing it"),
        (FenceState::InProgress, Wait, "fencing master"),
        (FenceState::Fenced, Acquire, "fenced"),
        (FenceState::Failed, Wait, "failed"),
        (FenceState::NotConfigured, Acquire, "dead"),
    ];
    for (fence, verdict, why) in cases {
        w.fence[1] = fence;
        let d = w.decide(1);
        assert_eq!(d.verdict, verdict, "{fence:?}");
        assert!(d.reason.contains(why), "{fence:?}: {d:?}");
    }
    // Fencing is not asked of a node that would not take over anyway.
    w.fence[1] = FenceState::Needed;
    w.standby[1] = true;
    assert_eq!(w.decide(1).verdict, Wait);
}

#[test]
fn fencing_is_not_needed_while_the_peer_is_alive() {
    let mut w = World::new();
    w.fence = [FenceState::Needed; 2];
    assert_eq!(w.step(), [Acquire, Wait]);
}

#[test]
fn an_administrator_move_overrides_preference_and_failback() {
    let mut w = World::new();
    w.step();
    w.moved_to = Some("slave");
    assert_eq!(w.step(), [Release, Wait]);
    assert_eq!(w.step(), [Wait, Acquire]);
    assert!(w.decide(1).reason.contains("administrator"));
    // A move to a node that cannot run it is ignored.
    w.standby[1] = true;
    assert_eq!(w.step(), [Wait, Release]);
    assert_eq!(w.step(), [Acquire, Wait]);
    // A move to an unknown node is ignored.
    w.standby[1] = false;
    w.moved_to = Some("third");
    assert_eq!(w.step(), [Hold, Wait]);
}

#[test]
fn a_group_that_failed_on_a_node_goes_to_the_other() {
    let mut w = World::new();
    w.failed[0] = true;
    assert_eq!(w.step(), [Wait, Acquire]);
    // Failed on both: it stays where it is (nobody better).
    w.failed[1] = true;
    assert_eq!(w.step(), [Wait, Hold]);
    // A dead peer does not make a failed node take it.
    w.holds = [false, false];
    w.hears = [false, false];
    w.replication = false;
    let d = w.decide(0);
    assert_eq!(d.verdict, Wait);
    assert!(d.reason.contains("failed"));
}

#[test]
fn both_holding_after_a_partition_heals_resolves_to_one() {
    let mut w = World::new();
    w.holds = [true, true];
    w.replication = false;
    assert_eq!(w.step(), [Hold, Release]);
    w.holds = [true, true];
    w.auto_failback = false;
    w.preferred = None;
    assert_eq!(w.step(), [Hold, Release], "tie-break: the lower name");
    w.holds = [true, true];
    w.preferred = Some("slave");
    assert_eq!(w.step(), [Release, Hold]);
}

#[test]
fn verdict_names() {
    let names: Vec<String> = [Hold, Acquire, Release, Wait, Fence]
        .iter()
        .map(|v| v.to_string())
        .collect();
    assert_eq!(names, ["hold", "acquire", "release", "wait", "fence"]);
}

fn arb_facts(name: &'static str) -> impl Strategy<Value = NodeFacts<'static>> {
    any::<(bool, bool, bool, bool)>().prop_map(move |(standby, ping_ok, holds, failed)| NodeFacts {
        name,
        standby,
        ping_ok,
        holds,
        failed,
    })
}

fn arb_target() -> impl Strategy<Value = Option<&'static str>> {
    prop_oneof![
        Just(None),
        Just(Some("master")),
        Just(Some("slave")),
        Just(Some("other"))
    ]
}

fn arb_fence() -> impl Strategy<Value = FenceState> {
    prop_oneof![
        Just(FenceState::NotConfigured),
        Just(FenceState::Needed),
        Just(FenceState::InProgress),
        Just(FenceState::Fenced),
        Just(FenceState::Failed),
    ]
}

/// One random change to the world between two evaluation rounds.
#[derive(Debug, Clone)]
enum Change {
    Nothing,
    Standby(usize, bool),
    Ping(usize, bool),
    Failed(usize, bool),
    Hears(usize, bool),
    Replication(bool),
    Move(Option<&'static str>),
    Fence(usize, FenceState),
    /// Every heartbeat link is cut both ways.
    Cut,
    /// Every heartbeat link works again.
    Heal,
}

fn arb_change() -> impl Strategy<Value = Change> {
    let node = 0usize..2;
    prop_oneof![
        3 => Just(Change::Nothing),
        1 => (node.clone(), any::<bool>()).prop_map(|(i, b)| Change::Standby(i, b)),
        1 => (node.clone(), any::<bool>()).prop_map(|(i, b)| Change::Ping(i, b)),
        1 => (node.clone(), any::<bool>()).prop_map(|(i, b)| Change::Failed(i, b)),
        2 => (node.clone(), any::<bool>()).prop_map(|(i, b)| Change::Hears(i, b)),
        1 => any::<bool>().prop_map(Change::Replication),
        1 => arb_target().prop_map(Change::Move),
        1 => (node, arb_fence()).prop_map(|(i, f)| Change::Fence(i, f)),
        1 => Just(Change::Cut),
        2 => Just(Change::Heal),
    ]
}

impl World {
    /// Like [`World::step`], but a release takes until the next round to finish (the
    /// group is still held while it stops), as in the daemon; a Hold or Acquire
    /// cancels a release in progress.
    fn step_async(&mut self, stopping: &mut [bool; 2]) -> [Verdict; 2] {
        let v = self.verdicts();
        for (i, verdict) in v.iter().enumerate() {
            match verdict {
                Verdict::Acquire => {
                    self.holds[i] = true;
                    stopping[i] = false;
                }
                Verdict::Hold => stopping[i] = false,
                Verdict::Release if !stopping[i] => stopping[i] = true,
                Verdict::Release | Verdict::Wait | Verdict::Fence => {
                    if stopping[i] {
                        self.holds[i] = false;
                        stopping[i] = false;
                    }
                }
            }
        }
        v
    }

    fn apply(&mut self, c: &Change) {
        match *c {
            Change::Nothing => {}
            Change::Standby(i, b) => self.standby[i] = b,
            Change::Ping(i, b) => self.ping_ok[i] = b,
            Change::Failed(i, b) => self.failed[i] = b,
            Change::Hears(i, b) => self.hears[i] = b,
            Change::Replication(b) => self.replication = b,
            Change::Move(m) => self.moved_to = m,
            Change::Fence(i, f) => self.fence[i] = f,
            Change::Cut => self.hears = [false, false],
            Change::Heal => self.hears = [true, true],
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn rightful_holder_is_symmetric(
        a in arb_facts("master"),
        b in arb_facts("slave"),
        preferred in arb_target(),
        auto_failback in any::<bool>(),
        moved_to in arb_target(),
    ) {
        prop_assert_eq!(
            rightful_holder(&a, &b, preferred, auto_failback, moved_to),
            rightful_holder(&b, &a, preferred, auto_failback, moved_to)
        );
    }

    /// Two nodes that hear each other never both decide to hold or acquire, from any
    /// state (including both holding after a partition); a node acquires only once
    /// the peer no longer holds the group (orderly failback: releases take a round to
    /// finish here); and a stable, connected pair with an eligible node ends up
    /// running the group on exactly one node.
    #[test]
    fn connected_nodes_never_both_hold(
        preferred in arb_target(),
        auto_failback in any::<bool>(),
        start_holds in any::<(bool, bool)>(),
        changes in proptest::collection::vec(arb_change(), 1..60),
    ) {
        let mut w = World::new();
        w.preferred = preferred;
        w.auto_failback = auto_failback;
        w.holds = [start_holds.0, start_holds.1];
        let mut stopping = [false; 2];
        for c in &changes {
            w.apply(c);
            let connected = w.hears == [true, true];
            let before = w.clone();
            let v = w.step_async(&mut stopping);
            let keeps = |x: Verdict| matches!(x, Verdict::Hold | Verdict::Acquire);
            if connected {
                prop_assert!(
                    !(keeps(v[0]) && keeps(v[1])),
                    "both keep: {:?} in {:?}", v, before
                );
                for i in 0..2 {
                    prop_assert!(
                        !(v[i] == Verdict::Acquire && before.holds[1 - i]),
                        "node {} acquires while the peer holds: {:?} in {:?}", i, v, before
                    );
                }
            }
        }
        // Liveness: heal everything and let it settle.
        w.hears = [true, true];
        for _ in 0..6 {
            w.step_async(&mut stopping);
        }
        let verdicts = w.verdicts();
        let eligible = w.facts(0).eligible() || w.facts(1).eligible();
        if eligible {
            prop_assert!(
                w.holds == [true, false] || w.holds == [false, true],
                "nobody runs the group: {:?} {:?}", w, verdicts
            );
        }
        // Settled: nobody wants to change anything any more.
        for v in verdicts {
            prop_assert!(matches!(v, Verdict::Hold | Verdict::Wait), "{:?} in {:?}", v, w);
        }
    }
}
