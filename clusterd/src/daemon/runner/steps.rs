//! Carrying out a group's actions: resource steps (start, stop, probe) run as tasks
//! that report back with their step reference, their timeouts, and the group's
//! events (logs, the event stream, the end of a takeover).

use super::{wall_ms, Goal, Msg, Runner, STOP_RETRY};
use crate::group::{GroupAction, GroupEvent, GroupInput, GroupState, StepKind};
use hablock_proto::control::Failover;
use std::sync::atomic::Ordering;
use std::time::Instant;
use tracing::{info, warn};

impl Runner {
    /// Feeds a group and carries out its actions.
    pub(super) fn group_input(&mut self, gi: usize, input: GroupInput, now: Instant) {
        let Some(g) = self.groups.get_mut(gi) else {
            return;
        };
        let actions = g.group.handle(input, now);
        self.group_actions(gi, actions, now);
    }

    pub(super) fn group_actions(&mut self, gi: usize, actions: Vec<GroupAction>, now: Instant) {
        for a in actions {
            let Some(g) = self.groups.get_mut(gi) else {
                return;
            };
            let name = g.name.clone();
            match a {
                GroupAction::StartStep(step)
                | GroupAction::StopStep(step)
                | GroupAction::Probe(step) => {
                    let Some(agent) = g.agents.get(step.index).cloned() else {
                        continue;
                    };
                    let kind = match a {
                        GroupAction::StartStep(_) => StepKind::Start,
                        GroupAction::StopStep(_) => StepKind::Stop,
                        _ => StepKind::Probe,
                    };
                    info!(group = %name, resource = agent.kind(), what = %agent.describe(), "{kind:?}");
                    let tx = self.tx.clone();
                    let span = tracing::info_span!("step", node = %self.me, group = %name, resource = agent.kind());
                    tokio::spawn(tracing::Instrument::instrument(
                        async move {
                            let input = match kind {
                                StepKind::Start | StepKind::Stop => {
                                    let r = if kind == StepKind::Start {
                                        agent.start().await
                                    } else {
                                        agent.stop().await
                                    };
                                    if let Err(e) = &r {
                                        warn!("{kind:?} of {} failed: {e}", agent.describe());
                                    }
                                    GroupInput::StepDone {
                                        step,
                                        ok: r.is_ok(),
                                    }
                                }
                                StepKind::Probe => match agent.probe().await {
                                    Ok(running) => GroupInput::ProbeResult { step, running },
                                    Err(e) => {
                                        warn!("probe of {} failed: {e}", agent.describe());
                                        GroupInput::StepTimedOut { step }
                                    }
                                },
                            };
                            let _ = tx.send(Msg::Group { group: gi, input }).await;
                        },
                        span,
                    ));
                }
                GroupAction::ArmTimeout { step, after, .. } => {
                    let tx = self.tx.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(after).await;
                        let _ = tx
                            .send(Msg::Group {
                                group: gi,
                                input: GroupInput::StepTimedOut { step },
                            })
                            .await;
                    });
                }
                GroupAction::Report(ev) => self.group_event(gi, ev, now),
            }
        }
        if let Some(g) = self.groups.get(gi) {
            g.running_here
                .store(g.group.state() == GroupState::Running, Ordering::Relaxed);
        }
    }

    pub(super) fn group_event(&mut self, gi: usize, ev: GroupEvent, now: Instant) {
        let me = self.me.clone();
        let peer = self.peer.clone();
        let Some(g) = self.groups.get_mut(gi) else {
            return;
        };
        let name = g.name.clone();
        let msg = format!("{ev:?}");
        match &ev {
            GroupEvent::Started => {
                info!(group = %name, node = %me, "group running");
                if let Some(t) = g.takeover.take() {
                    let f = Failover {
                        from: peer.clone(),
                        to: me.clone(),
                        detect_ms: t.detect_ms,
                        start_ms: now.saturating_duration_since(t.started).as_millis() as u64,
                        group: name.clone(),
                        time_ms: wall_ms(),
                    };
                    info!(group = %name, peer = %peer, detect_ms = f.detect_ms, start_ms = f.start_ms, "failover complete");
                    self.last_failover = Some(f);
                    self.event(
                        "failover",
                        Some(&name),
                        format!("took {name} over from {peer}"),
                    );
                }
            }
            GroupEvent::Stopped => info!(group = %name, node = %me, "group stopped"),
            GroupEvent::StartFailed { .. }
            | GroupEvent::StopFailed { .. }
            | GroupEvent::RestartLimitReached { .. } => {
                warn!(group = %name, node = %me, "{msg}");
                g.goal = Goal::None;
                g.takeover = None;
                if matches!(ev, GroupEvent::StopFailed { .. }) {
                    // Halted, still held: retry the stop later, not in a tight loop.
                    g.retry_stop_at = Some(now + STOP_RETRY);
                }
            }
            GroupEvent::Restarting { index } => {
                warn!(group = %name, node = %me, index, "health check failed: restarting");
            }
            GroupEvent::Probed { running, total } => {
                info!(group = %name, node = %me, running, total, "probed");
            }
        }
        let released = matches!(
            ev,
            GroupEvent::Stopped
                | GroupEvent::StartFailed { .. }
                | GroupEvent::RestartLimitReached { .. }
        );
        self.event("group", Some(&name), msg);
        if released {
            // The peer may be waiting to take the group: tell it now rather than at
            // the next keepalive.
            self.send_heartbeats();
        }
    }
}
