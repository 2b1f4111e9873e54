//! Ordering, rollback, adoption and restart cases of [`Group`].

#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;
use GroupAction::*;
use GroupEvent::*;

/// A group of four resources (block, filesystem, vip, service) and a fake clock.
struct H {
    g: Group,
    base: Instant,
    now: Instant,
}

impl H {
    fn new() -> H {
        let base = Instant::now();
        H {
            g: Group::new(4, RestartLimits::default()),
            base,
            now: base,
        }
    }

    fn at(&mut self, secs: u64) {
        self.now = self.base + Duration::from_secs(secs);
    }

    fn send(&mut self, input: GroupInput) -> Vec<GroupAction> {
        self.g.handle(input, self.now)
    }

    /// The step in flight (from the group's own state).
    fn inflight(&self) -> StepRef {
        self.g.inflight.expect("a step in flight").1
    }

    /// Answers the step in flight.
    fn done(&mut self, ok: bool) -> Vec<GroupAction> {
        let step = self.inflight();
        self.send(GroupInput::StepDone { step, ok })
    }

    /// Answers steps with success until none is in flight; returns the step kinds and
    /// indexes in order, and the reports.
    fn settle(&mut self, first: Vec<GroupAction>) -> (Vec<String>, Vec<GroupEvent>) {
        let mut steps = Vec::new();
        let mut reports = Vec::new();
        let mut actions = first;
        loop {
            for a in &actions {
                match a {
                    StartStep(s) => steps.push(format!("start{}", s.index)),
                    StopStep(s) => steps.push(format!("stop{}", s.index)),
                    Report(e) => reports.push(e.clone()),
                    _ => {}
                }
            }
            if self.g.inflight.is_none() {
                return (steps, reports);
            }
            actions = self.done(true);
        }
    }
}

fn strs(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[test]
fn start_runs_in_order_with_a_timeout_per_step() {
    let mut h = H::new();
    let a = h.send(GroupInput::Start);
    let s0 = h.inflight();
    assert_eq!(
        a,
        vec![
            StartStep(s0),
            ArmTimeout {
                step: s0,
                kind: StepKind::Start,
                after: Duration::from_secs(60)
            }
        ]
    );
    assert_eq!(h.g.state(), GroupState::Starting(0));
    assert!(h.g.held());
    assert_eq!(h.g.resource_states()[0], ResourceState::Starting);
    let (steps, reports) = h.settle(vec![]);
    assert_eq!(steps, strs(&["start1", "start2", "start3"]));
    assert_eq!(reports, vec![Started]);
    assert_eq!(h.g.state(), GroupState::Running);
    assert_eq!(h.g.resource_states(), vec![ResourceState::Running; 4]);
}

#[test]
fn stop_runs_in_reverse_order() {
    let mut h = H::new();
    let a = h.send(GroupInput::Start);
    h.settle(a);
    let a = h.send(GroupInput::Stop);
    let (steps, reports) = h.settle(a);
    assert_eq!(steps, strs(&["stop3", "stop2", "stop1", "stop0"]));
    assert_eq!(reports, vec![Stopped]);
    assert_eq!(h.g.state(), GroupState::Stopped);
    assert!(!h.g.held());
    assert!(!h.g.failed());
}

#[test]
fn a_failed_start_stops_what_started_in_reverse_then_reports() {
    let mut h = H::new();
    h.send(GroupInput::Start);
    h.done(true);
    h.done(true);
    assert_eq!(h.g.state(), GroupState::Starting(2));
    let a = h.done(false);
    assert!(matches!(a[0], StopStep(s) if s.index == 2), "{a:?}");
    assert_eq!(h.g.resource_states()[2], ResourceState::Stopping);
    let (steps, reports) = h.settle(a);
    assert_eq!(steps, strs(&["stop2", "stop1", "stop0"]));
    assert_eq!(reports, vec![StartFailed { index: 2 }]);
    assert_eq!(h.g.state(), GroupState::Failed);
    assert!(!h.g.held());
    assert!(h.g.failed());
    // A new Start clears the failure and tries again.
    let a = h.send(GroupInput::Start);
    let (steps, reports) = h.settle(a);
    assert_eq!(steps, strs(&["start0", "start1", "start2", "start3"]));
    assert_eq!(reports, vec![Started]);
    assert!(!h.g.failed());
}

#[test]
fn a_start_timeout_is_a_failure_and_its_late_answer_is_ignored() {
    let mut h = H::new();
    h.send(GroupInput::Start);
    h.done(true);
    let s1 = h.inflight();
    let a = h.send(GroupInput::StepTimedOut { step: s1 });
    assert!(matches!(a[0], StopStep(s) if s.index == 1));
    let stop1 = h.inflight();
    // The start of 1 answers late: not taken for the stop's answer.
    assert_eq!(h.send(GroupInput::StepDone { step: s1, ok: true }), vec![]);
    assert_eq!(h.inflight(), stop1);
    // A timeout of a finished step is ignored too.
    assert_eq!(h.send(GroupInput::StepTimedOut { step: s1 }), vec![]);
    let (steps, reports) = h.settle(vec![]);
    assert_eq!(steps, strs(&["stop0"]));
    assert_eq!(reports, vec![StartFailed { index: 1 }]);
}

#[test]
fn a_failed_stop_halts_and_keeps_the_group_held_until_a_new_stop() {
    let mut h = H::new();
    let a = h.send(GroupInput::Start);
    h.settle(a);
    h.send(GroupInput::Stop);
    h.done(true); // stop3
    let a = h.done(false); // stop2 fails
    assert_eq!(a, vec![Report(StopFailed { index: 2 })]);
    assert_eq!(h.g.state(), GroupState::Failed);
    assert!(h.g.held());
    assert!(h.g.failed());
    assert_eq!(
        h.g.resource_states(),
        vec![
            ResourceState::Running,
            ResourceState::Running,
            ResourceState::Failed,
            ResourceState::Stopped
        ]
    );
    // Clearing does not un-halt a failed stop; only a new Stop retries.
    assert_eq!(h.send(GroupInput::ClearFailure), vec![]);
    let a = h.send(GroupInput::Stop);
    let (steps, reports) = h.settle(a);
    assert_eq!(steps, strs(&["stop2", "stop1", "stop0"]));
    assert_eq!(reports, vec![Stopped]);
    assert!(!h.g.held());
}

#[test]
fn a_stop_timeout_is_a_stop_failure() {
    let mut h = H::new();
    let a = h.send(GroupInput::Start);
    h.settle(a);
    h.send(GroupInput::Stop);
    let s3 = h.inflight();
    let a = h.send(GroupInput::StepTimedOut { step: s3 });
    assert_eq!(a, vec![Report(StopFailed { index: 3 })]);
    assert!(h.g.held());
}

#[test]
fn probing_everything_running_adopts_without_restarting() {
    let mut h = H::new();
    let a = h.send(GroupInput::Probe);
    let probes: Vec<StepRef> = a
        .iter()
        .filter_map(|x| match x {
            GroupAction::Probe(s) => Some(*s),
            _ => None,
        })
        .collect();
    assert_eq!(probes.len(), 4);
    assert_eq!(a.len(), 8, "a probe and a timeout each");
    assert_eq!(h.g.state(), GroupState::Probing);
    assert!(h.g.held(), "unknown while probing: counts as held");
    let mut last = vec![];
    for s in probes.iter().rev() {
        last = h.send(GroupInput::ProbeResult {
            step: *s,
            running: true,
        });
    }
    assert_eq!(
        last,
        vec![Report(Probed {
            running: 4,
            total: 4
        })]
    );
    assert_eq!(h.g.state(), GroupState::Running);
    let a = h.send(GroupInput::Start);
    assert_eq!(a, vec![Report(Started)]);
}

#[test]
fn probing_a_partial_group_starts_only_what_is_missing() {
    let mut h = H::new();
    let a = h.send(GroupInput::Probe);
    let probes: Vec<StepRef> = a
        .iter()
        .filter_map(|x| match x {
            GroupAction::Probe(s) => Some(*s),
            _ => None,
        })
        .collect();
    // A Start while probing waits for the probes.
    assert_eq!(h.send(GroupInput::Start), vec![]);
    for (i, s) in probes.iter().enumerate() {
        h.send(GroupInput::ProbeResult {
            step: *s,
            running: i == 0 || i == 1 || i == 3,
        });
    }
    assert_eq!(h.g.state(), GroupState::Starting(2));
    let (steps, reports) = h.settle(vec![]);
    assert_eq!(
        steps,
        strs(&[]),
        "only 2 was missing; it was already started"
    );
    assert_eq!(reports, vec![Started]);
}

#[test]
fn a_probe_partial_without_a_decision_is_partial_and_a_stop_stops_only_what_runs() {
    let mut h = H::new();
    let a = h.send(GroupInput::Probe);
    let probes: Vec<StepRef> = a
        .iter()
        .filter_map(|x| match x {
            GroupAction::Probe(s) => Some(*s),
            _ => None,
        })
        .collect();
    h.send(GroupInput::ProbeResult {
        step: probes[0],
        running: true,
    });
    h.send(GroupInput::ProbeResult {
        step: probes[1],
        running: false,
    });
    h.send(GroupInput::ProbeResult {
        step: probes[2],
        running: false,
    });
    // Probe 3 times out: it may be running.
    let a = h.send(GroupInput::StepTimedOut { step: probes[3] });
    assert_eq!(
        a,
        vec![Report(Probed {
            running: 1,
            total: 4
        })]
    );
    assert_eq!(h.g.state(), GroupState::Partial);
    assert_eq!(h.g.resource_states()[3], ResourceState::Failed);
    assert!(h.g.held());
    let a = h.send(GroupInput::Stop);
    let (steps, reports) = h.settle(a);
    assert_eq!(steps, strs(&["stop3", "stop0"]));
    assert_eq!(reports, vec![Stopped]);
}

#[test]
fn probing_nothing_running_is_stopped() {
    let mut h = H::new();
    let a = h.send(GroupInput::Probe);
    let mut last = vec![];
    for x in a {
        if let GroupAction::Probe(step) = x {
            last = h.send(GroupInput::ProbeResult {
                step,
                running: false,
            });
        }
    }
    assert_eq!(
        last,
        vec![Report(Probed {
            running: 0,
            total: 4
        })]
    );
    assert_eq!(h.g.state(), GroupState::Stopped);
    assert!(!h.g.held());
}

#[test]
fn a_stop_while_starting_waits_for_the_step_then_unwinds() {
    let mut h = H::new();
    h.send(GroupInput::Start);
    h.done(true);
    assert_eq!(h.send(GroupInput::Stop), vec![]);
    assert_eq!(h.g.state(), GroupState::Starting(1));
    let a = h.done(true);
    let (steps, reports) = h.settle(a);
    assert_eq!(steps, strs(&["stop1", "stop0"]));
    assert_eq!(reports, vec![Stopped]);
}

#[test]
fn a_start_while_stopping_waits_for_the_step_then_starts_again() {
    let mut h = H::new();
    let a = h.send(GroupInput::Start);
    h.settle(a);
    h.send(GroupInput::Stop);
    h.done(true); // stop3
    assert_eq!(h.send(GroupInput::Start), vec![]);
    let a = h.done(true); // stop2 done
    let (steps, reports) = h.settle(a);
    assert_eq!(steps, strs(&["start2", "start3"]));
    assert_eq!(reports, vec![Started]);
}

#[test]
fn a_failing_check_restarts_the_resource_and_those_after_it() {
    let mut h = H::new();
    let a = h.send(GroupInput::Start);
    h.settle(a);
    let a = h.send(GroupInput::CheckFailed { index: 2 });
    assert_eq!(a[0], Report(Restarting { index: 2 }));
    assert!(h.g.check_failing()[2]);
    let (steps, reports) = h.settle(a);
    assert_eq!(steps, strs(&["stop3", "stop2", "start2", "start3"]));
    assert_eq!(reports, vec![Restarting { index: 2 }, Started]);
    h.send(GroupInput::CheckOk { index: 2 });
    assert!(!h.g.check_failing()[2]);
}

#[test]
fn the_fourth_failure_within_the_window_fails_the_group_over() {
    let mut h = H::new();
    let a = h.send(GroupInput::Start);
    h.settle(a);
    for t in [0, 60, 120] {
        h.at(t);
        let a = h.send(GroupInput::CheckFailed { index: 3 });
        let (steps, _) = h.settle(a);
        assert_eq!(steps, strs(&["stop3", "start3"]));
    }
    h.at(180);
    let a = h.send(GroupInput::CheckFailed { index: 3 });
    let (steps, reports) = h.settle(a);
    assert_eq!(steps, strs(&["stop3", "stop2", "stop1", "stop0"]));
    assert_eq!(reports, vec![RestartLimitReached { index: 3 }, Stopped]);
    assert_eq!(h.g.state(), GroupState::Failed);
    assert!(h.g.failed());
    assert!(!h.g.held());
}

#[test]
fn failures_older_than_the_window_do_not_count() {
    let mut h = H::new();
    let a = h.send(GroupInput::Start);
    h.settle(a);
    for t in [0, 100, 200, 300, 400, 500, 600] {
        h.at(t);
        let a = h.send(GroupInput::CheckFailed { index: 3 });
        let (_, reports) = h.settle(a);
        assert_eq!(reports[0], Restarting { index: 3 }, "at {t}s");
    }
    assert_eq!(h.g.state(), GroupState::Running);
}

#[test]
fn checks_are_ignored_unless_running() {
    let mut h = H::new();
    assert_eq!(h.send(GroupInput::CheckFailed { index: 3 }), vec![]);
    h.send(GroupInput::Start);
    assert_eq!(h.send(GroupInput::CheckFailed { index: 0 }), vec![]);
    assert_eq!(h.send(GroupInput::CheckFailed { index: 9 }), vec![]);
    assert_eq!(h.g.state(), GroupState::Starting(0));
}

#[test]
fn restart_limit_failure_is_cleared_by_clear_failure() {
    let mut h = H::new();
    h.g = Group::new(
        1,
        RestartLimits {
            max_restarts: 0,
            ..RestartLimits::default()
        },
    );
    let a = h.send(GroupInput::Start);
    h.settle(a);
    let a = h.send(GroupInput::CheckFailed { index: 0 });
    let (_, reports) = h.settle(a);
    assert_eq!(reports, vec![RestartLimitReached { index: 0 }, Stopped]);
    assert!(h.g.failed());
    h.send(GroupInput::ClearFailure);
    assert!(!h.g.failed());
    assert_eq!(h.g.state(), GroupState::Stopped);
}

#[test]
fn repeated_commands_are_acknowledged_and_empty_groups_work() {
    let mut h = H::new();
    assert_eq!(h.send(GroupInput::Stop), vec![Report(Stopped)]);
    let a = h.send(GroupInput::Start);
    h.settle(a);
    assert_eq!(h.send(GroupInput::Start), vec![Report(Started)]);
    let mut g = Group::new(0, RestartLimits::default());
    let now = h.now;
    assert_eq!(g.handle(GroupInput::Start, now), vec![Report(Started)]);
    assert_eq!(
        g.handle(GroupInput::Probe, now),
        vec![Report(Probed {
            running: 0,
            total: 0
        })]
    );
}

#[test]
fn resource_state_names() {
    let names: Vec<&str> = [
        ResourceState::Stopped,
        ResourceState::Starting,
        ResourceState::Running,
        ResourceState::Stopping,
        ResourceState::Failed,
    ]
    .iter()
    .map(|s| s.as_str())
    .collect();
    assert_eq!(
        names,
        ["stopped", "starting", "running", "stopping", "failed"]
    );
    assert_eq!(ResourceState::Running.to_string(), "running");
}
