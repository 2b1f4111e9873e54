//! One resource group on this node, sans-IO.
//!
//! A group is an ordered list of resources (block, filesystem, VIP, service). It is
//! started in order and stopped in reverse order, one step at a time. [`Group`] is a
//! reconciler: it has a goal (running or stopped), a state per resource, and at most
//! one step in flight; every input moves it one step closer to the goal. The daemon
//! carries out the returned [`GroupAction`]s and answers each step with its
//! [`StepRef`], so a late answer to a step that already timed out is ignored.
//!
//! Start and stop steps must be idempotent (starting a running resource or stopping a
//! stopped one succeeds and changes nothing), as OCF resource agents are.
//!
//! # Rules
//!
//! - **Start**: resources that are not running are started in order; a running one
//!   is never restarted. Then [`GroupEvent::Started`].
//! - **Failed start** (error or timeout) of resource `i`: `i` and everything started
//!   before it are stopped in reverse order, then [`GroupEvent::StartFailed`]; the
//!   group is [`GroupState::Failed`] and the caller offers it to the peer.
//! - **Stop**: resources that are not stopped are stopped in reverse order, then
//!   [`GroupEvent::Stopped`]. A failed stop halts the group ([`GroupEvent::StopFailed`],
//!   [`GroupState::Failed`]): what lies below it (the filesystem under a service, the
//!   block device under the filesystem) cannot be stopped safely, and the group keeps
//!   counting as held so the peer never takes it. A new `Stop` retries.
//! - **Probe** (daemon restart): every resource is probed at once; the group then
//!   reflects what runs ([`GroupEvent::Probed`]) and a later `Start` only starts what
//!   is missing.
//! - **Health check** failure of resource `i` while running: `i` and the resources
//!   after it are restarted (stopped in reverse, started in order), at most
//!   [`RestartLimits::max_restarts`] times within [`RestartLimits::window`]; one more
//!   failure stops the group ([`GroupEvent::RestartLimitReached`], then `Stopped`,
//!   [`GroupState::Failed`]) so the caller fails over.

use std::collections::VecDeque;
use std::fmt;
use std::time::{Duration, Instant};

/// Step timeouts and the local restart budget of a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestartLimits {
    /// Longest a start step may take (default 60 s).
    pub start_timeout: Duration,
    /// Longest a stop step may take (default 60 s).
    pub stop_timeout: Duration,
    /// Longest a probe may take (default 20 s).
    pub probe_timeout: Duration,
    /// Local restarts allowed within `window` before failing over (default 3).
    pub max_restarts: u32,
    /// The restart window (default 5 minutes).
    pub window: Duration,
}

impl Default for RestartLimits {
    fn default() -> Self {
        RestartLimits {
            start_timeout: Duration::from_secs(60),
            stop_timeout: Duration::from_secs(60),
            probe_timeout: Duration::from_secs(20),
            max_restarts: 3,
            window: Duration::from_secs(300),
        }
    }
}

/// Identifies one step: the resource index and a number unique within the group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct StepRef {
    /// Index of the resource in the group.
    pub index: usize,
    /// Unique per step; answers carry it back.
    pub seq: u64,
}

/// What a step does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepKind {
    /// Start the resource.
    Start,
    /// Stop the resource.
    Stop,
    /// Find out whether the resource runs.
    Probe,
}

/// An input to a group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupInput {
    /// Bring the group up on this node (reported with `Started` once up, even if it
    /// already was).
    Start,
    /// Take the group down on this node (reported with `Stopped` once down, even if it
    /// already was).
    Stop,
    /// Probe every resource (at daemon start, to re-adopt a running group). Ignored
    /// while a step is in flight.
    Probe,
    /// A start or stop step finished.
    StepDone {
        /// The step.
        step: StepRef,
        /// It succeeded.
        ok: bool,
    },
    /// A step's timeout fired.
    StepTimedOut {
        /// The step.
        step: StepRef,
    },
    /// A probe finished.
    ProbeResult {
        /// The probe.
        step: StepRef,
        /// The resource runs.
        running: bool,
    },
    /// The health check of a resource failed.
    CheckFailed {
        /// The resource.
        index: usize,
    },
    /// The health check of a resource passed.
    CheckOk {
        /// The resource.
        index: usize,
    },
    /// Forget a failure (`clusterctl online`): the group may start here again.
    ClearFailure,
}

/// What happened, for logs, events and the caller's placement decisions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupEvent {
    /// Probing finished.
    Probed {
        /// Resources found running.
        running: usize,
        /// Resources in the group.
        total: usize,
    },
    /// Every resource runs.
    Started,
    /// Every resource is stopped.
    Stopped,
    /// Resource `index` failed to start; everything is stopped again.
    StartFailed {
        /// The resource.
        index: usize,
    },
    /// Resource `index` failed to stop; the group halts, still held.
    StopFailed {
        /// The resource.
        index: usize,
    },
    /// Resource `index` failed its health check and is being restarted.
    Restarting {
        /// The resource.
        index: usize,
    },
    /// Resource `index` failed its health check once more than the limit allows:
    /// the group is being stopped so it can fail over.
    RestartLimitReached {
        /// The resource.
        index: usize,
    },
}

/// What the daemon must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupAction {
    /// Start a resource; answer with [`GroupInput::StepDone`].
    StartStep(StepRef),
    /// Stop a resource; answer with [`GroupInput::StepDone`].
    StopStep(StepRef),
    /// Probe a resource; answer with [`GroupInput::ProbeResult`].
    Probe(StepRef),
    /// Fire [`GroupInput::StepTimedOut`] for `step` after `after`, unless it finished.
    ArmTimeout {
        /// The step.
        step: StepRef,
        /// What it does.
        kind: StepKind,
        /// Delay.
        after: Duration,
    },
    /// Report an event.
    Report(GroupEvent),
}

/// State of one resource, for status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResourceState {
    /// Not running.
    Stopped,
    /// A start step is in flight.
    Starting,
    /// Running.
    Running,
    /// A stop step is in flight.
    Stopping,
    /// A step failed or timed out: its state is unknown until stopped.
    Failed,
}

impl ResourceState {
    /// The lowercase status name (`stopped|starting|running|stopping|failed`).
    pub fn as_str(self) -> &'static str {
        match self {
            ResourceState::Stopped => "stopped",
            ResourceState::Starting => "starting",
            ResourceState::Running => "running",
            ResourceState::Stopping => "stopping",
            ResourceState::Failed => "failed",
        }
    }
}

impl fmt::Display for ResourceState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// State of the whole group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupState {
    /// Probes are in flight.
    Probing,
    /// Nothing runs.
    Stopped,
    /// Starting resource `i`.
    Starting(usize),
    /// Everything runs.
    Running,
    /// Stopping resource `i`.
    Stopping(usize),
    /// Some resources run, some do not, and nothing is in flight (after a probe).
    Partial,
    /// A start failed (everything stopped again), the restart limit was reached, or a
    /// stop failed (halted, still held).
    Failed,
}

/// Where the group is heading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Goal {
    /// No decision yet (after a probe).
    None,
    Running,
    Stopped,
}

/// Why the group failed, if it did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    /// A start failed; reported once the rollback is done.
    Start(usize),
    /// The restart limit was reached.
    RestartLimit,
    /// A stop failed: halted.
    Stop(usize),
}

/// One group on this node. See the module doc.
#[derive(Debug, Clone)]
pub struct Group {
    limits: RestartLimits,
    resources: Vec<ResourceState>,
    goal: Goal,
    inflight: Option<(StepKind, StepRef)>,
    probes: Vec<StepRef>,
    next_seq: u64,
    restart_from: Option<usize>,
    restarts: VecDeque<Instant>,
    check_failing: Vec<bool>,
    failure: Option<Failure>,
    /// The last report about the settled state (Started/Stopped), to report once.
    settled: Option<GroupEvent>,
}

impl Group {
    /// A group of `resources` resources, all assumed stopped (send
    /// [`GroupInput::Probe`] first when they may be running).
    pub fn new(resources: usize, limits: RestartLimits) -> Group {
        Group {
            limits,
            resources: vec![ResourceState::Stopped; resources],
            goal: Goal::Stopped,
            inflight: None,
            probes: Vec::new(),
            next_seq: 1,
            restart_from: None,
            restarts: VecDeque::new(),
            check_failing: vec![false; resources],
            failure: None,
            settled: Some(GroupEvent::Stopped),
        }
    }

    /// Feeds one input; returns the actions to carry out, in order.
    pub fn handle(&mut self, input: GroupInput, now: Instant) -> Vec<GroupAction> {
        let mut out = Vec::new();
        match input {
            GroupInput::Start => {
                self.goal = Goal::Running;
                self.settled = None;
                self.failure = None;
                self.restart_from = None;
            }
            GroupInput::Stop => {
                self.goal = Goal::Stopped;
                self.settled = None;
                self.restart_from = None;
                if matches!(self.failure, Some(Failure::Stop(_))) {
                    self.failure = None;
                }
            }
            GroupInput::ClearFailure => {
                if !matches!(self.failure, Some(Failure::Stop(_))) {
                    self.failure = None;
                }
            }
            GroupInput::Probe => {
                if self.inflight.is_none() && self.probes.is_empty() {
                    self.goal = Goal::None;
                    self.settled = None;
                    for index in 0..self.resources.len() {
                        let step = self.step(index);
                        self.probes.push(step);
                        out.push(GroupAction::Probe(step));
                        out.push(GroupAction::ArmTimeout {
                            step,
                            kind: StepKind::Probe,
                            after: self.limits.probe_timeout,
                        });
                    }
                    if self.resources.is_empty() {
                        out.push(GroupAction::Report(GroupEvent::Probed {
                            running: 0,
                            total: 0,
                        }));
                    }
                }
            }
            GroupInput::ProbeResult { step, running } => {
                self.probe_answer(step, Some(running), &mut out);
            }
            GroupInput::StepDone { step, ok } => self.step_answer(step, ok, &mut out),
            GroupInput::StepTimedOut { step } => {
                if self.probes.contains(&step) {
                    self.probe_answer(step, None, &mut out);
                } else {
                    self.step_answer(step, false, &mut out);
                }
            }
            GroupInput::CheckFailed { index } => self.check_failed(index, now, &mut out),
            GroupInput::CheckOk { index } => {
                if let Some(f) = self.check_failing.get_mut(index) {
                    *f = false;
                }
            }
        }
        self.reconcile(&mut out);
        out
    }

    fn step(&mut self, index: usize) -> StepRef {
        let seq = self.next_seq;
        self.next_seq += 1;
        StepRef { index, seq }
    }

    fn probe_answer(&mut self, step: StepRef, running: Option<bool>, out: &mut Vec<GroupAction>) {
        let Some(pos) = self.probes.iter().position(|p| *p == step) else {
            return;
        };
        self.probes.swap_remove(pos);
        self.resources[step.index] = match running {
            Some(true) => ResourceState::Running,
            Some(false) => ResourceState::Stopped,
            // No answer: it may run; a stop or a start step settles it.
            None => ResourceState::Failed,
        };
        if self.probes.is_empty() {
            let running = self
                .resources
                .iter()
                .filter(|r| **r == ResourceState::Running)
                .count();
            out.push(GroupAction::Report(GroupEvent::Probed {
                running,
                total: self.resources.len(),
            }));
            if running == self.resources.len() {
                self.settled = Some(GroupEvent::Started);
            } else if self.resources.iter().all(|r| *r == ResourceState::Stopped) {
                self.settled = Some(GroupEvent::Stopped);
            }
        }
    }

    fn step_answer(&mut self, step: StepRef, ok: bool, out: &mut Vec<GroupAction>) {
        let Some((kind, current)) = self.inflight else {
            return;
        };
        if current != step {
            return; // A late answer to a step that already timed out.
        }
        self.inflight = None;
        let i = step.index;
        match (kind, ok) {
            (StepKind::Start, true) => self.resources[i] = ResourceState::Running,
            (StepKind::Stop, true) => self.resources[i] = ResourceState::Stopped,
            (StepKind::Start, false) => {
                self.resources[i] = ResourceState::Failed;
                if self.goal == Goal::Running {
                    self.goal = Goal::Stopped;
                    self.restart_from = None;
                    self.failure = Some(Failure::Start(i));
                }
            }
            (StepKind::Stop, false) => {
                self.resources[i] = ResourceState::Failed;
                self.failure = Some(Failure::Stop(i));
                out.push(GroupAction::Report(GroupEvent::StopFailed { index: i }));
            }
            (StepKind::Probe, _) => {}
        }
    }

    fn check_failed(&mut self, index: usize, now: Instant, out: &mut Vec<GroupAction>) {
        if index >= self.resources.len() || self.state() != GroupState::Running {
            return;
        }
        self.check_failing[index] = true;
        while let Some(t) = self.restarts.front() {
            if now.saturating_duration_since(*t) >= self.limits.window {
                self.restarts.pop_front();
            } else {
                break;
            }
        }
        if self.restarts.len() >= self.limits.max_restarts as usize {
            self.restarts.clear();
            out.push(GroupAction::Report(GroupEvent::RestartLimitReached {
                index,
            }));
            self.goal = Goal::Stopped;
            self.failure = Some(Failure::RestartLimit);
        } else {
            self.restarts.push_back(now);
            out.push(GroupAction::Report(GroupEvent::Restarting { index }));
            self.restart_from = Some(index);
        }
    }

    fn begin(&mut self, kind: StepKind, index: usize, out: &mut Vec<GroupAction>) {
        let step = self.step(index);
        self.inflight = Some((kind, step));
        self.settled = None;
        let after = match kind {
            StepKind::Start => {
                out.push(GroupAction::StartStep(step));
                self.limits.start_timeout
            }
            StepKind::Stop => {
                out.push(GroupAction::StopStep(step));
                self.limits.stop_timeout
            }
            StepKind::Probe => self.limits.probe_timeout,
        };
        out.push(GroupAction::ArmTimeout { step, kind, after });
    }

    fn reconcile(&mut self, out: &mut Vec<GroupAction>) {
        if self.inflight.is_some() || !self.probes.is_empty() {
            return;
        }
        if matches!(self.failure, Some(Failure::Stop(_))) {
            return; // Halted until a new Stop.
        }
        let last_not = |rs: &[ResourceState], s: ResourceState, from: usize| {
            (from..rs.len()).rev().find(|&j| rs[j] != s)
        };
        match self.goal {
            Goal::None => {}
            Goal::Running => {
                if let Some(from) = self.restart_from {
                    if let Some(j) = last_not(&self.resources, ResourceState::Stopped, from) {
                        return self.begin(StepKind::Stop, j, out);
                    }
                    self.restart_from = None;
                }
                if let Some(i) = self
                    .resources
                    .iter()
                    .position(|r| *r != ResourceState::Running)
                {
                    return self.begin(StepKind::Start, i, out);
                }
                self.settle(GroupEvent::Started, out);
            }
            Goal::Stopped => {
                if let Some(j) = last_not(&self.resources, ResourceState::Stopped, 0) {
                    return self.begin(StepKind::Stop, j, out);
                }
                match self.failure {
                    Some(Failure::Start(index)) if self.settled.is_none() => {
                        self.settled = Some(GroupEvent::StartFailed { index });
                        out.push(GroupAction::Report(GroupEvent::StartFailed { index }));
                    }
                    Some(Failure::Start(_)) => {}
                    _ => self.settle(GroupEvent::Stopped, out),
                }
            }
        }
    }

    fn settle(&mut self, event: GroupEvent, out: &mut Vec<GroupAction>) {
        if self.settled.as_ref() != Some(&event) {
            self.settled = Some(event.clone());
            out.push(GroupAction::Report(event));
        }
    }

    /// The group's state.
    pub fn state(&self) -> GroupState {
        if !self.probes.is_empty() {
            return GroupState::Probing;
        }
        match self.inflight {
            Some((StepKind::Start, s)) => return GroupState::Starting(s.index),
            Some((StepKind::Stop, s)) => return GroupState::Stopping(s.index),
            _ => {}
        }
        if self.failure.is_some() {
            return GroupState::Failed;
        }
        if self.resources.iter().all(|r| *r == ResourceState::Running) {
            GroupState::Running
        } else if self.resources.iter().all(|r| *r == ResourceState::Stopped) {
            GroupState::Stopped
        } else {
            GroupState::Partial
        }
    }

    /// The state of every resource, in group order.
    pub fn resource_states(&self) -> Vec<ResourceState> {
        let mut states = self.resources.clone();
        if let Some((kind, s)) = self.inflight {
            states[s.index] = match kind {
                StepKind::Start => ResourceState::Starting,
                StepKind::Stop => ResourceState::Stopping,
                StepKind::Probe => states[s.index],
            };
        }
        states
    }

    /// The group is not fully stopped here (or may not be: probing, a failed stop).
    /// This is what the heartbeat advertises as held: the peer never starts a group
    /// this node holds.
    pub fn held(&self) -> bool {
        self.inflight.is_some()
            || !self.probes.is_empty()
            || self.resources.iter().any(|r| *r != ResourceState::Stopped)
    }

    /// The group failed here (start failure, restart limit, stop failure) and should
    /// not be started here again until [`GroupInput::ClearFailure`] or a `Start`.
    pub fn failed(&self) -> bool {
        self.failure.is_some()
    }

    /// Resources whose last health check failed.
    pub fn check_failing(&self) -> &[bool] {
        &self.check_failing
    }
}

#[cfg(test)]
#[path = "group_tests.rs"]
mod tests;
