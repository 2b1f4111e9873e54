//! Placement: the facts about both nodes for each group, [`crate::policy::decide`],
//! and acting on its verdict (start, stop, fence).

use super::{Goal, GroupRt, Msg, Runner, Takeover};
use crate::group::{GroupInput, GroupState};
use crate::membership::PeerLiveness;
use crate::policy::{self, Decision, FenceState, NodeFacts, PlacementInput, Verdict};
use std::time::{Duration, Instant};
use tracing::{info, warn};

impl Runner {
    pub(super) fn peer_facts<'a>(&'a self, g: &GroupRt) -> (NodeFacts<'a>, bool) {
        let alive = self.membership.peer_alive();
        let hb = self.membership.last_heartbeat();
        let view = hb.and_then(|h| h.view.groups.iter().find(|v| v.name == g.name));
        let facts = NodeFacts {
            name: &self.peer,
            standby: hb.is_some_and(|h| h.view.standby),
            ping_ok: hb.is_none_or(|h| h.view.ping_ok),
            holds: alive && view.is_some_and(|v| v.held),
            failed: view.is_some_and(|v| v.failed),
        };
        (facts, alive)
    }

    /// Evaluates the placement of every group and acts on the verdicts.
    pub fn evaluate(&mut self, now: Instant) {
        for gi in 0..self.groups.len() {
            if self.groups[gi].group.state() == GroupState::Probing {
                continue;
            }
            let d = {
                let g = &self.groups[gi];
                let (peer, peer_alive) = self.peer_facts(g);
                let input = PlacementInput {
                    me: NodeFacts {
                        name: &self.me,
                        standby: self.standby,
                        ping_ok: self.ping_ok,
                        holds: g.group.held(),
                        failed: g.group.failed(),
                    },
                    peer,
                    peer_alive,
                    preferred: g.preferred.as_deref(),
                    auto_failback: self.cfg.heartbeat.auto_failback,
                    moved_to: g.moved_to.as_deref(),
                    peer_primary_via_replication: g.peer_primary_via_replication,
                    peer_up_to_date: g.peer_up_to_date,
                    fence: self.fence,
                };
                let mut d = policy::decide(&input);
                if self.membership.liveness() == PeerLiveness::Unknown
                    && matches!(d.verdict, Verdict::Acquire | Verdict::Fence)
                {
                    d = Decision {
                        verdict: Verdict::Wait,
                        reason: format!("waiting for {} (initdead)", self.peer),
                    };
                }
                d
            };
            let g = &mut self.groups[gi];
            if g.last.as_ref() != Some(&d) {
                info!(group = %g.name, node = %self.me, peer = %self.peer, verdict = %d.verdict, "{}", d.reason);
                let m = format!("{}: {}", d.verdict, d.reason);
                let name = g.name.clone();
                g.last = Some(d.clone());
                self.event("verdict", Some(&name), m);
            }
            let g = &mut self.groups[gi];
            match d.verdict {
                Verdict::Hold | Verdict::Acquire => {
                    // A takeover from a peer that was heard and then died (not a
                    // start alone after initdead).
                    if let (Verdict::Acquire, false, None, Some(detect_ms)) = (
                        d.verdict,
                        self.membership.peer_alive(),
                        g.takeover,
                        self.detect_ms,
                    ) {
                        g.takeover = Some(Takeover {
                            started: now,
                            detect_ms,
                        });
                    }
                    if g.goal != Goal::Running {
                        g.goal = Goal::Running;
                        self.group_input(gi, GroupInput::Start, now);
                    }
                }
                Verdict::Release => {
                    let backoff = g.retry_stop_at.is_some_and(|t| now < t);
                    if g.goal != Goal::Stopped && !backoff {
                        g.retry_stop_at = None;
                        g.goal = Goal::Stopped;
                        g.takeover = None;
                        self.group_input(gi, GroupInput::Stop, now);
                    }
                }
                Verdict::Wait => {}
                Verdict::Fence => {
                    if self.fence == FenceState::Needed {
                        self.fence = FenceState::InProgress;
                        self.spawn_fence();
                    }
                }
            }
        }
    }

    pub(super) fn spawn_fence(&self) {
        let Some(cmd) = self.cfg.heartbeat.fence.clone() else {
            return;
        };
        let cmd = cmd.replace("{peer}", &self.peer);
        let tx = self.tx.clone();
        warn!(peer = %self.peer, command = %cmd, "fencing the peer");
        self.event("fence", None, format!("running {cmd}"));
        tokio::spawn(async move {
            let ok = matches!(
                crate::daemon::resources::run_program(
                    "sh",
                    &["-c", &cmd],
                    Duration::from_secs(120)
                )
                .await,
                Ok((0, _))
            );
            let _ = tx.send(Msg::Fenced(ok)).await;
        });
    }
}
