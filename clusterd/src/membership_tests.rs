//! Timing and ordering cases of [`Membership`], on a fake time base.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;
use hablock_proto::heartbeat::NodeView;
use MembershipEvent::*;

fn cfg() -> HeartbeatConfig {
    HeartbeatConfig {
        keepalive: Duration::from_millis(500),
        warntime: Duration::from_secs(2),
        deadtime: Duration::from_secs(3),
        initdead: Duration::from_secs(10),
        ..HeartbeatConfig::default()
    }
}

struct Clock(Instant);

impl Clock {
    fn at(&self, ms: u64) -> Instant {
        self.0 + Duration::from_millis(ms)
    }
}

fn setup(links: usize) -> (Membership, Clock) {
    let c = Clock(Instant::now());
    (Membership::new(&cfg(), links, c.at(0)), c)
}

fn hb(link: u8, generation: u64, sequence: u64) -> Heartbeat {
    Heartbeat {
        link,
        cluster_id: 7,
        node: "slave".into(),
        generation,
        sequence,
        view: NodeView::default(),
    }
}

/// Ticks every 100 ms from `from` to `to` (inclusive), collecting events other than
/// `SendHeartbeats`, with the time they fired.
fn run(m: &mut Membership, c: &Clock, from: u64, to: u64) -> Vec<(u64, MembershipEvent)> {
    let mut out = Vec::new();
    let mut t = from;
    while t <= to {
        for e in m.on_tick(c.at(t)) {
            if e != SendHeartbeats {
                out.push((t, e));
            }
        }
        t += 100;
    }
    out
}

#[test]
fn heartbeats_are_sent_at_once_then_every_keepalive_without_bursts() {
    let (mut m, c) = setup(2);
    assert_eq!(m.on_tick(c.at(0)), vec![SendHeartbeats]);
    assert_eq!(m.on_tick(c.at(499)), vec![]);
    assert_eq!(m.on_tick(c.at(500)), vec![SendHeartbeats]);
    assert_eq!(m.on_tick(c.at(700)), vec![]);
    // A tick 2.3 s late sends once, then paces from there.
    assert_eq!(m.on_tick(c.at(3000)), vec![SendHeartbeats]);
    assert_eq!(m.on_tick(c.at(3001)), vec![]);
    assert_eq!(m.on_tick(c.at(3499)), vec![]);
    assert_eq!(m.on_tick(c.at(3500)), vec![SendHeartbeats]);
}

#[test]
fn a_peer_never_heard_is_dead_after_initdead_not_deadtime() {
    let (mut m, c) = setup(2);
    assert_eq!(m.liveness(), PeerLiveness::Unknown);
    assert_eq!(run(&mut m, &c, 0, 9900), vec![]);
    assert_eq!(m.liveness(), PeerLiveness::Unknown);
    assert_eq!(
        run(&mut m, &c, 10_000, 20_000),
        vec![
            (10_000, LinkDown(0)),
            (10_000, LinkDown(1)),
            (10_000, PeerDead)
        ]
    );
    assert_eq!(m.liveness(), PeerLiveness::Dead);
    assert!(!m.peer_alive());
}

#[test]
fn first_heartbeat_brings_peer_and_link_up() {
    let (mut m, c) = setup(2);
    m.on_tick(c.at(0));
    let ev = m.on_heartbeat(1, &hb(1, 5, 1), c.at(300)).unwrap();
    assert_eq!(ev, vec![LinkUp(1), PeerUp { generation: 5 }]);
    assert!(m.peer_alive());
    assert_eq!(m.peer_generation(), Some(5));
    assert_eq!(m.last_heartbeat().unwrap().sequence, 1);
    // The same link again: nothing new.
    assert_eq!(m.on_heartbeat(1, &hb(1, 5, 2), c.at(800)).unwrap(), vec![]);
    // The other link's first packet: only that link comes up.
    assert_eq!(
        m.on_heartbeat(0, &hb(0, 5, 1), c.at(900)).unwrap(),
        vec![LinkUp(0)]
    );
    let links = m.links(c.at(1000));
    assert_eq!(links[0].state, LinkState::Up);
    assert_eq!(links[0].last_seen_age, Some(Duration::from_millis(100)));
    assert_eq!(links[1].last_seen_age, Some(Duration::from_millis(200)));
}

#[test]
fn silence_is_late_once_at_warntime_then_dead_at_deadtime() {
    let (mut m, c) = setup(1);
    m.on_heartbeat(0, &hb(0, 5, 1), c.at(1000)).unwrap();
    let ev = run(&mut m, &c, 1000, 8000);
    assert_eq!(
        ev,
        vec![
            (
                3000,
                PeerLate {
                    silent_for: Duration::from_secs(2)
                }
            ),
            (4000, LinkDown(0)),
            (4000, PeerDead),
        ]
    );
    assert_eq!(m.liveness(), PeerLiveness::Dead);
    assert_eq!(m.peer_silent_for(c.at(8000)), Some(Duration::from_secs(7)));
}

#[test]
fn a_heartbeat_before_deadtime_resets_late_which_can_fire_again() {
    let (mut m, c) = setup(1);
    m.on_heartbeat(0, &hb(0, 5, 1), c.at(0)).unwrap();
    assert_eq!(run(&mut m, &c, 0, 2500).len(), 1);
    assert_eq!(m.on_heartbeat(0, &hb(0, 5, 2), c.at(2600)).unwrap(), vec![]);
    let ev = run(&mut m, &c, 2600, 5500);
    assert_eq!(
        ev,
        vec![(
            4600,
            PeerLate {
                silent_for: Duration::from_secs(2)
            }
        )]
    );
    assert!(m.peer_alive());
}

#[test]
fn dead_peer_returning_is_peer_up_without_restart() {
    let (mut m, c) = setup(1);
    m.on_heartbeat(0, &hb(0, 5, 1), c.at(0)).unwrap();
    run(&mut m, &c, 0, 5000);
    assert_eq!(m.liveness(), PeerLiveness::Dead);
    let ev = m.on_heartbeat(0, &hb(0, 5, 9), c.at(6000)).unwrap();
    assert_eq!(ev, vec![LinkUp(0), PeerUp { generation: 5 }]);
    // PeerDead is reported once per death.
    m.on_tick(c.at(6000));
    let deaths = run(&mut m, &c, 6000, 20_000)
        .into_iter()
        .filter(|(_, e)| *e == PeerDead)
        .count();
    assert_eq!(deaths, 1);
}

#[test]
fn one_silent_link_is_link_down_only() {
    let (mut m, c) = setup(2);
    m.on_heartbeat(0, &hb(0, 5, 1), c.at(0)).unwrap();
    m.on_heartbeat(1, &hb(1, 5, 1), c.at(0)).unwrap();
    let mut events = Vec::new();
    for i in 1..=20u64 {
        let t = i * 500;
        m.on_heartbeat(1, &hb(1, 5, 1 + i), c.at(t)).unwrap();
        events.extend(run(&mut m, &c, t, t + 400));
    }
    assert_eq!(events, vec![(3000, LinkDown(0))]);
    assert!(m.peer_alive());
    assert_eq!(m.links(c.at(10_000))[0].state, LinkState::Down);
    assert_eq!(m.links(c.at(10_000))[1].state, LinkState::Up);
    // The link comes back.
    assert_eq!(
        m.on_heartbeat(0, &hb(0, 5, 2), c.at(10_500)).unwrap(),
        vec![LinkUp(0)]
    );
}

#[test]
fn a_link_never_heard_goes_down_at_initdead_while_the_peer_lives() {
    let (mut m, c) = setup(2);
    let mut events = Vec::new();
    for i in 0..=24u64 {
        let t = i * 500;
        m.on_heartbeat(0, &hb(0, 5, 1 + i), c.at(t)).unwrap();
        events.extend(run(&mut m, &c, t, t + 400));
    }
    assert_eq!(events, vec![(10_000, LinkDown(1))]);
}

#[test]
fn replays_are_dropped_per_link() {
    let (mut m, c) = setup(2);
    m.on_heartbeat(0, &hb(0, 5, 10), c.at(0)).unwrap();
    assert_eq!(
        m.on_heartbeat(0, &hb(0, 5, 10), c.at(10)),
        Err(DropReason::Replay {
            link: 0,
            sequence: 10,
            highest: 10
        })
    );
    assert!(matches!(
        m.on_heartbeat(0, &hb(0, 5, 3), c.at(10)),
        Err(DropReason::Replay { .. })
    ));
    // The same sequence on the other link is that link's first packet.
    assert_eq!(
        m.on_heartbeat(1, &hb(1, 5, 10), c.at(10)).unwrap(),
        vec![LinkUp(1)]
    );
    assert_eq!(m.on_heartbeat(0, &hb(0, 5, 11), c.at(20)).unwrap(), vec![]);
}

#[test]
fn a_dropped_packet_does_not_keep_the_peer_alive() {
    let (mut m, c) = setup(1);
    m.on_heartbeat(0, &hb(0, 5, 10), c.at(0)).unwrap();
    for t in (500..4000).step_by(500) {
        assert!(m.on_heartbeat(0, &hb(0, 5, 10), c.at(t)).is_err());
    }
    let ev = run(&mut m, &c, 0, 4000);
    assert!(ev.contains(&(3000, PeerDead)), "{ev:?}");
}

#[test]
fn a_new_generation_is_a_restart_and_resets_sequences() {
    let (mut m, c) = setup(2);
    m.on_heartbeat(0, &hb(0, 5, 100), c.at(0)).unwrap();
    m.on_heartbeat(1, &hb(1, 5, 100), c.at(0)).unwrap();
    let ev = m.on_heartbeat(0, &hb(0, 9, 1), c.at(100)).unwrap();
    assert_eq!(ev, vec![PeerRestarted { old: 5, new: 9 }]);
    assert_eq!(m.peer_generation(), Some(9));
    // Link 1's counter started over too.
    assert_eq!(m.on_heartbeat(1, &hb(1, 9, 1), c.at(100)).unwrap(), vec![]);
    // The old generation is refused from now on.
    assert_eq!(
        m.on_heartbeat(0, &hb(0, 5, 101), c.at(200)),
        Err(DropReason::OldGeneration {
            generation: 5,
            current: 9
        })
    );
    // An older, never-seen generation is refused while the peer is alive.
    assert!(matches!(
        m.on_heartbeat(0, &hb(0, 7, 1), c.at(200)),
        Err(DropReason::OldGeneration { .. })
    ));
}

#[test]
fn restart_while_dead_reports_restart_then_up() {
    let (mut m, c) = setup(1);
    m.on_heartbeat(0, &hb(0, 5, 1), c.at(0)).unwrap();
    run(&mut m, &c, 0, 4000);
    let ev = m.on_heartbeat(0, &hb(0, 6, 1), c.at(5000)).unwrap();
    assert_eq!(
        ev,
        vec![
            PeerRestarted { old: 5, new: 6 },
            LinkUp(0),
            PeerUp { generation: 6 }
        ]
    );
}

#[test]
fn a_lower_generation_is_taken_back_once_dead_but_never_a_retired_one() {
    let (mut m, c) = setup(1);
    m.on_heartbeat(0, &hb(0, 5, 1), c.at(0)).unwrap();
    m.on_heartbeat(0, &hb(0, 9, 1), c.at(100)).unwrap();
    run(&mut m, &c, 100, 5000);
    assert_eq!(m.liveness(), PeerLiveness::Dead);
    // 5 was superseded: a replay of it must not resurrect the peer.
    assert!(matches!(
        m.on_heartbeat(0, &hb(0, 5, 2), c.at(5100)),
        Err(DropReason::OldGeneration { .. })
    ));
    assert!(!m.peer_alive());
    // 7 was never seen: a restart whose clock stepped back.
    let ev = m.on_heartbeat(0, &hb(0, 7, 1), c.at(5200)).unwrap();
    assert_eq!(ev[0], PeerRestarted { old: 9, new: 7 });
    assert!(m.peer_alive());
}

#[test]
fn retired_generations_are_bounded() {
    let (mut m, c) = setup(1);
    for g in 1..=(RETIRED_GENERATIONS as u64 + 5) {
        m.on_heartbeat(0, &hb(0, g, 1), c.at(g)).unwrap();
    }
    assert_eq!(m.retired.len(), RETIRED_GENERATIONS);
}

#[test]
fn bad_links_are_dropped() {
    let (mut m, c) = setup(2);
    assert_eq!(
        m.on_heartbeat(2, &hb(2, 5, 1), c.at(0)),
        Err(DropReason::UnknownLink(2))
    );
    assert_eq!(
        m.on_heartbeat(0, &hb(1, 5, 1), c.at(0)),
        Err(DropReason::LinkMismatch {
            arrived: 0,
            claimed: 1
        })
    );
    assert_eq!(m.liveness(), PeerLiveness::Unknown);
}

#[test]
fn next_deadline_tracks_the_earliest_timer() {
    let (mut m, c) = setup(1);
    assert_eq!(m.next_deadline(), c.at(0));
    m.on_tick(c.at(0));
    assert_eq!(m.next_deadline(), c.at(500));
    m.on_heartbeat(0, &hb(0, 5, 1), c.at(100)).unwrap();
    // Not sending until 500, late at 2100, dead at 3100: the send is first.
    assert_eq!(m.next_deadline(), c.at(500));
    let mut m = Membership::new(
        &HeartbeatConfig {
            keepalive: Duration::from_secs(60),
            ..cfg()
        },
        1,
        c.at(0),
    );
    m.on_tick(c.at(0));
    assert_eq!(m.next_deadline(), c.at(10_000));
    m.on_heartbeat(0, &hb(0, 5, 1), c.at(100)).unwrap();
    assert_eq!(m.next_deadline(), c.at(2100));
    m.on_tick(c.at(2100));
    assert_eq!(m.next_deadline(), c.at(3100));
}

#[test]
fn sequencer_counts_per_link() {
    let mut s = HeartbeatSequencer::new(boot_generation(1_000, 7), 2);
    assert_eq!(s.generation(), (1_000 << 16) | 7);
    assert_eq!(s.next(0), Some(1));
    assert_eq!(s.next(0), Some(2));
    assert_eq!(s.next(1), Some(1));
    assert_eq!(s.next(2), None);
    assert!(boot_generation(1_001, 0) > boot_generation(1_000, u16::MAX));
}

#[test]
fn reloaded_timings_apply_to_a_silence_under_way_and_to_the_pace() {
    let (mut m, c) = setup(1);
    m.on_tick(c.at(0));
    m.on_heartbeat(0, &hb(0, 1, 1), c.at(0)).unwrap();
    // Silent from 0; at 1 s the deadtime drops from 3 s to 1.5 s and the keepalive
    // from 500 ms to 200 ms.
    assert!(run(&mut m, &c, 100, 1000).is_empty());
    let faster = HeartbeatConfig {
        keepalive: Duration::from_millis(200),
        warntime: Duration::from_secs(1),
        deadtime: Duration::from_millis(1500),
        ..cfg()
    };
    m.set_timing(&faster, c.at(1000));
    let events = run(&mut m, &c, 1100, 2000);
    assert!(events.contains(&(1500, PeerDead)), "{events:?}");
    let sends = (2100..=3000)
        .step_by(100)
        .filter(|t| m.on_tick(c.at(*t)).contains(&SendHeartbeats))
        .count();
    assert_eq!(sends, 5, "one heartbeat every 200 ms");
}
