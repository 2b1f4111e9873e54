//! Peer liveness from heartbeats, sans-IO (Heartbeat's timing semantics).
//!
//! The daemon feeds [`Membership`] every authenticated heartbeat from the peer
//! ([`Membership::on_heartbeat`]) and a tick every so often ([`Membership::on_tick`]);
//! both return [`MembershipEvent`]s to act on, in order. [`Membership::next_deadline`]
//! says when the next tick is due at the latest.
//!
//! # Timing
//!
//! - every `keepalive`: [`MembershipEvent::SendHeartbeats`] (on every link);
//! - a peer silent on every link for `warntime`: [`MembershipEvent::PeerLate`], once
//!   per silence;
//! - a peer silent on every link for `deadtime`: [`MembershipEvent::PeerDead`]; a peer
//!   never heard since start is declared dead after `initdead` instead;
//! - one link silent for `deadtime` (or never heard for `initdead`):
//!   [`MembershipEvent::LinkDown`], a warning only while another link carries
//!   heartbeats; the first packet on a link: [`MembershipEvent::LinkUp`].
//!
//! # Generations and replay
//!
//! Each daemon start picks a new boot generation, larger than its previous ones (the
//! daemon uses [`boot_generation`]: wall-clock milliseconds and random low bits).
//! Sequence numbers are **per link** and start again in every generation, so the same
//! state sent on two links is never mistaken for a replay. A packet is accepted when:
//!
//! - its generation is the current one and its sequence is above the highest one seen
//!   on that link (otherwise [`DropReason::Replay`]);
//! - or its generation is larger than the current one: the peer restarted
//!   ([`MembershipEvent::PeerRestarted`]), every link's sequence starts over;
//! - or the peer is dead and the generation was never seen: a restarted peer whose
//!   clock stepped back is taken back once it has been dead for `deadtime`.
//!
//! Superseded generations are remembered (the last [`RETIRED_GENERATIONS`]) and never
//! accepted again; other old generations are [`DropReason::OldGeneration`].

use hablock_config::HeartbeatConfig;
use hablock_proto::heartbeat::Heartbeat;
use std::collections::VecDeque;
use std::time::{Duration, Instant};
use thiserror::Error;

/// How many superseded peer generations are remembered and refused.
pub const RETIRED_GENERATIONS: usize = 16;

/// A new boot generation from the wall clock (milliseconds since the Unix epoch) and
/// 16 random bits: larger than any earlier start's unless the clock stepped back.
pub fn boot_generation(wall_ms: u64, random: u16) -> u64 {
    (wall_ms << 16) | u64::from(random)
}

/// What the daemon must do or report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MembershipEvent {
    /// Send one heartbeat on every link now.
    SendHeartbeats,
    /// The peer is alive (first heartbeat, or back after being dead).
    PeerUp {
        /// Its boot generation.
        generation: u64,
    },
    /// The peer restarted: a new boot generation replaced the one we knew.
    PeerRestarted {
        /// The generation we knew.
        old: u64,
        /// The new one.
        new: u64,
    },
    /// The peer has been silent on every link longer than `warntime` (once per silence).
    PeerLate {
        /// Time since the last valid heartbeat.
        silent_for: Duration,
    },
    /// The peer is dead: silent on every link for `deadtime` (`initdead` before it was
    /// ever heard).
    PeerDead,
    /// Heartbeats arrive again on this link.
    LinkUp(usize),
    /// This link has been silent for `deadtime` (or never carried a heartbeat within
    /// `initdead`).
    LinkDown(usize),
}

/// Why a valid, authenticated heartbeat was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DropReason {
    /// The link index is not a configured link.
    #[error("heartbeat on unknown link {0}")]
    UnknownLink(usize),
    /// The packet says it was sent on another link than the one it arrived on
    /// (crossed cabling or addresses).
    #[error("heartbeat for link {claimed} arrived on link {arrived}")]
    LinkMismatch {
        /// The link it arrived on.
        arrived: usize,
        /// The link the sender meant.
        claimed: u8,
    },
    /// Sequence not above the highest seen on this link in this generation.
    #[error("replayed heartbeat: sequence {sequence} <= {highest} on link {link}")]
    Replay {
        /// The link.
        link: usize,
        /// The packet's sequence.
        sequence: u64,
        /// The highest sequence accepted on the link.
        highest: u64,
    },
    /// A generation older than the current one, or one that was superseded.
    #[error("heartbeat from old generation {generation:#x} (current {current:#x})")]
    OldGeneration {
        /// The packet's generation.
        generation: u64,
        /// The current generation.
        current: u64,
    },
}

/// Liveness of the peer as a whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerLiveness {
    /// Never heard, still within `initdead`.
    Unknown,
    /// A valid heartbeat arrived within `deadtime`.
    Alive,
    /// Declared dead.
    Dead,
}

/// State of one heartbeat link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkState {
    /// Never heard, still within `initdead`.
    Unknown,
    /// Heartbeats arrive.
    Up,
    /// Silent for `deadtime` (or never heard within `initdead`).
    Down,
}

impl LinkState {
    /// Lowercase name for status output.
    pub fn as_str(self) -> &'static str {
        match self {
            LinkState::Unknown => "unknown",
            LinkState::Up => "up",
            LinkState::Down => "down",
        }
    }
}

/// Status of one link, for `clusterctl status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkStatus {
    /// Its state.
    pub state: LinkState,
    /// Time since the last valid heartbeat on it (None: never).
    pub last_seen_age: Option<Duration>,
}

#[derive(Debug, Clone, Default)]
struct Link {
    state: Option<LinkState>,
    last_seen: Option<Instant>,
    highest_seq: Option<u64>,
}

impl Link {
    fn state(&self) -> LinkState {
        self.state.unwrap_or(LinkState::Unknown)
    }
}

/// Peer liveness, per-link liveness and heartbeat pacing. See the module doc.
#[derive(Debug, Clone)]
pub struct Membership {
    keepalive: Duration,
    warntime: Duration,
    deadtime: Duration,
    initdead: Duration,
    started: Instant,
    next_send: Instant,
    liveness: PeerLiveness,
    generation: Option<u64>,
    retired: VecDeque<u64>,
    last_seen: Option<Instant>,
    late_reported: bool,
    links: Vec<Link>,
    last_heartbeat: Option<Heartbeat>,
}

impl Membership {
    /// A membership that has heard nothing yet, with `links` heartbeat links, started
    /// at `now`. The first tick sends heartbeats at once.
    pub fn new(config: &HeartbeatConfig, links: usize, now: Instant) -> Membership {
        Membership {
            keepalive: config.keepalive,
            warntime: config.warntime,
            deadtime: config.deadtime,
            initdead: config.initdead,
            started: now,
            next_send: now,
            liveness: PeerLiveness::Unknown,
            generation: None,
            retired: VecDeque::new(),
            last_seen: None,
            late_reported: false,
            links: vec![Link::default(); links],
            last_heartbeat: None,
        }
    }

    /// Takes the timings of a reloaded configuration at `now`: a silence under way is
    /// judged by the new `warntime`, `deadtime` and `initdead` from the next tick on,
    /// and the next heartbeat goes out within the new `keepalive`.
    pub fn set_timing(&mut self, config: &HeartbeatConfig, now: Instant) {
        self.keepalive = config.keepalive;
        self.warntime = config.warntime;
        self.deadtime = config.deadtime;
        self.initdead = config.initdead;
        self.next_send = self.next_send.min(now + self.keepalive);
    }

    /// An authenticated heartbeat from the peer arrived on `link` (the daemon has
    /// checked the MAC, the cluster id and the sender's name).
    pub fn on_heartbeat(
        &mut self,
        link: usize,
        hb: &Heartbeat,
        now: Instant,
    ) -> Result<Vec<MembershipEvent>, DropReason> {
        if link >= self.links.len() {
            return Err(DropReason::UnknownLink(link));
        }
        if usize::from(hb.link) != link {
            return Err(DropReason::LinkMismatch {
                arrived: link,
                claimed: hb.link,
            });
        }
        let mut events = Vec::new();
        match self.generation {
            None => self.generation = Some(hb.generation),
            Some(current) if hb.generation == current => {
                if let Some(highest) = self.links[link].highest_seq {
                    if hb.sequence <= highest {
                        return Err(DropReason::Replay {
                            link,
                            sequence: hb.sequence,
                            highest,
                        });
                    }
                }
            }
            Some(current) => {
                let newer = hb.generation > current;
                let retired = self.retired.contains(&hb.generation);
                let dead = self.liveness == PeerLiveness::Dead;
                if retired || !(newer || dead) {
                    return Err(DropReason::OldGeneration {
                        generation: hb.generation,
                        current,
                    });
                }
                if self.retired.len() == RETIRED_GENERATIONS {
                    self.retired.pop_front();
                }
                self.retired.push_back(current);
                self.generation = Some(hb.generation);
                for l in &mut self.links {
                    l.highest_seq = None;
                }
                events.push(MembershipEvent::PeerRestarted {
                    old: current,
                    new: hb.generation,
                });
            }
        }
        let l = &mut self.links[link];
        l.highest_seq = Some(hb.sequence);
        l.last_seen = Some(now);
        if l.state() != LinkState::Up {
            l.state = Some(LinkState::Up);
            events.push(MembershipEvent::LinkUp(link));
        }
        self.last_seen = Some(now);
        self.late_reported = false;
        if self.liveness != PeerLiveness::Alive {
            self.liveness = PeerLiveness::Alive;
            events.push(MembershipEvent::PeerUp {
                generation: hb.generation,
            });
        }
        self.last_heartbeat = Some(hb.clone());
        Ok(events)
    }

    /// Time passed: send heartbeats when due, detect late and dead peers and links.
    pub fn on_tick(&mut self, now: Instant) -> Vec<MembershipEvent> {
        let mut events = Vec::new();
        if now >= self.next_send {
            events.push(MembershipEvent::SendHeartbeats);
            self.next_send += self.keepalive;
            if self.next_send <= now {
                // A late tick: do not send a burst to catch up.
                self.next_send = now + self.keepalive;
            }
        }
        let since_start = now.saturating_duration_since(self.started);
        for (i, l) in self.links.iter_mut().enumerate() {
            let expired = match l.last_seen {
                Some(t) => now.saturating_duration_since(t) >= self.deadtime,
                None => since_start >= self.initdead,
            };
            if expired && l.state() != LinkState::Down {
                l.state = Some(LinkState::Down);
                events.push(MembershipEvent::LinkDown(i));
            }
        }
        match (self.liveness, self.last_seen) {
            (PeerLiveness::Alive, Some(t)) => {
                let silent = now.saturating_duration_since(t);
                if silent >= self.deadtime {
                    self.liveness = PeerLiveness::Dead;
                    events.push(MembershipEvent::PeerDead);
                } else if silent >= self.warntime && !self.late_reported {
                    self.late_reported = true;
                    events.push(MembershipEvent::PeerLate { silent_for: silent });
                }
            }
            (PeerLiveness::Unknown, _) if since_start >= self.initdead => {
                self.liveness = PeerLiveness::Dead;
                events.push(MembershipEvent::PeerDead);
            }
            _ => {}
        }
        events
    }

    /// The latest instant at which [`Membership::on_tick`] must be called for the
    /// timers to be on time (it may be called more often).
    pub fn next_deadline(&self) -> Instant {
        let mut at = self.next_send;
        let mut consider = |t: Instant| at = at.min(t);
        match (self.liveness, self.last_seen) {
            (PeerLiveness::Alive, Some(t)) => {
                if !self.late_reported {
                    consider(t + self.warntime);
                }
                consider(t + self.deadtime);
            }
            (PeerLiveness::Unknown, _) => consider(self.started + self.initdead),
            _ => {}
        }
        for l in &self.links {
            if l.state() == LinkState::Down {
                continue;
            }
            match l.last_seen {
                Some(t) => consider(t + self.deadtime),
                None => consider(self.started + self.initdead),
            }
        }
        at
    }

    /// The peer's liveness.
    pub fn liveness(&self) -> PeerLiveness {
        self.liveness
    }

    /// The peer is alive.
    pub fn peer_alive(&self) -> bool {
        self.liveness == PeerLiveness::Alive
    }

    /// The peer's current boot generation, once heard.
    pub fn peer_generation(&self) -> Option<u64> {
        self.generation
    }

    /// The last accepted heartbeat: the peer's latest view of itself (stale once the
    /// peer is dead).
    pub fn last_heartbeat(&self) -> Option<&Heartbeat> {
        self.last_heartbeat.as_ref()
    }

    /// Time since the last valid heartbeat on any link (None: never heard).
    pub fn peer_silent_for(&self, now: Instant) -> Option<Duration> {
        self.last_seen.map(|t| now.saturating_duration_since(t))
    }

    /// Status of every link, in link order.
    pub fn links(&self, now: Instant) -> Vec<LinkStatus> {
        self.links
            .iter()
            .map(|l| LinkStatus {
                state: l.state(),
                last_seen_age: l.last_seen.map(|t| now.saturating_duration_since(t)),
            })
            .collect()
    }
}

/// The sending side: the boot generation and one sequence counter per link.
#[derive(Debug, Clone)]
pub struct HeartbeatSequencer {
    generation: u64,
    next: Vec<u64>,
}

impl HeartbeatSequencer {
    /// Counters for `links` links in boot generation `generation`.
    pub fn new(generation: u64, links: usize) -> HeartbeatSequencer {
        HeartbeatSequencer {
            generation,
            next: vec![1; links],
        }
    }

    /// This daemon's boot generation.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The sequence number for the next packet on `link` (None: no such link).
    pub fn next(&mut self, link: usize) -> Option<u64> {
        let n = self.next.get_mut(link)?;
        let seq = *n;
        *n = n.saturating_add(1);
        Some(seq)
    }
}

#[cfg(test)]
#[path = "membership_tests.rs"]
mod tests;
