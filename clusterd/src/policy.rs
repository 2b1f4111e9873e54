//! Where a group runs: the placement decision, as pure functions.
//!
//! Both nodes evaluate the same rules on the same facts (their own, and the peer's
//! from its heartbeats), so while they hear each other they agree on one rightful
//! holder ([`rightful_holder`], symmetric in its two nodes) and never both decide to
//! hold a group. [`decide`] turns that into this node's [`Verdict`].
//!
//! # Rules, peer alive
//!
//! A node is *eligible* for a group when it is not in standby, reaches a ping target
//! (or has none), and the group has not failed on it. Then:
//!
//! 1. exactly one node eligible: that one (a holder that loses every ping target hands
//!    over to a peer that still reaches one; a standby node gives its groups away);
//! 2. both eligible: an administrator's `move GROUP NODE` target; else the preferred
//!    node when `auto_failback` is on or nobody holds the group; else the current
//!    holder (no needless move); else the preferred node, else the lower node name;
//! 3. neither eligible: the group stays where it runs unless that node is in standby
//!    (nobody takes over when both lost their ping targets).
//!
//! **Orderly failback**: the holder releases first; the rightful node acquires only
//! once the peer's heartbeat says the group is no longer held there
//! ([`Verdict::Wait`] until then). A node never acquires while blockd reports the peer
//! Primary on a live replication link.
//!
//! # Rules, peer dead
//!
//! A holder keeps its groups (unless in standby). A node that does not hold the group
//! takes it over only if it is eligible, blockd does not report the peer Primary over
//! a live replication link ("peer alive via replication": heartbeats may be cut while
//! the peer runs), and, when a fence command is configured, only after the peer was
//! fenced ([`Verdict::Fence`], then [`FenceState::Fenced`]); a failed fence never
//! takes over.
//!
//! # What this cannot prevent
//!
//! The rules agree only on the facts both nodes have. A change (standby, a move) that
//! one node has not heard yet can make both acquire within one heartbeat interval; the
//! "both hold" rule resolves it on the next evaluation, and blockd refuses a second
//! Primary on a connected resource. With the heartbeat links cut and no fence command,
//! both nodes hold (split brain): configure a fence command, or rely on the
//! replication link check.

use std::fmt;

/// What one node knows about a node for one group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeFacts<'a> {
    /// Node name.
    pub name: &'a str,
    /// The node is in standby.
    pub standby: bool,
    /// The node reaches at least one ping target (true when none are configured).
    pub ping_ok: bool,
    /// The group is not fully stopped on the node.
    pub holds: bool,
    /// The group failed on the node (start failure or restart limit).
    pub failed: bool,
}

impl NodeFacts<'_> {
    /// Eligible to run the group.
    pub fn eligible(&self) -> bool {
        !self.standby && self.ping_ok && !self.failed
    }
}

/// Fencing of a dead peer, as far as this node knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FenceState {
    /// No fence command is configured: take over without fencing.
    NotConfigured,
    /// Configured, not run yet for this death of the peer.
    Needed,
    /// The fence command runs.
    InProgress,
    /// The fence command succeeded.
    Fenced,
    /// The fence command failed: never take over on this death.
    Failed,
}

/// Everything the decision for one group on this node depends on.
#[derive(Debug, Clone, Copy)]
pub struct PlacementInput<'a> {
    /// This node.
    pub me: NodeFacts<'a>,
    /// The peer, from its last heartbeat (only its name matters while it is dead).
    pub peer: NodeFacts<'a>,
    /// Membership says the peer is alive.
    pub peer_alive: bool,
    /// The group's preferred node.
    pub preferred: Option<&'a str>,
    /// `[heartbeat] auto_failback`.
    pub auto_failback: bool,
    /// An administrator's `move GROUP NODE` target, if any.
    pub moved_to: Option<&'a str>,
    /// blockd reports the peer Primary over a live replication link for the group's
    /// block resource.
    pub peer_primary_via_replication: bool,
    /// blockd reports the peer's copy of the group's block resource UpToDate over a live
    /// replication link (true for a group without one). An eligible holder gives the
    /// group to the peer (failback, a move) only then: until its resync is done the peer
    /// could not promote, and the group would be down meanwhile.
    pub peer_up_to_date: bool,
    /// Fencing of the peer, for a takeover from a dead peer.
    pub fence: FenceState,
}

/// What this node should do with the group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Keep it running here.
    Hold,
    /// Start it here.
    Acquire,
    /// Stop it here.
    Release,
    /// Do not run it here; nothing to do now.
    Wait,
    /// Run the fence command against the peer, then decide again with its result.
    Fence,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Verdict::Hold => "hold",
            Verdict::Acquire => "acquire",
            Verdict::Release => "release",
            Verdict::Wait => "wait",
            Verdict::Fence => "fence",
        })
    }
}

/// A verdict and why, for logs and status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// What to do.
    pub verdict: Verdict,
    /// Why, in a few words.
    pub reason: String,
}

fn decision(verdict: Verdict, reason: impl Into<String>) -> Decision {
    Decision {
        verdict,
        reason: reason.into(),
    }
}

/// The deterministic tie-break: the preferred node if it is one of the two, else the
/// lower name.
fn tie_break<'a>(a: &NodeFacts<'a>, b: &NodeFacts<'a>, preferred: Option<&str>) -> &'a str {
    match preferred {
        Some(p) if p == a.name => a.name,
        Some(p) if p == b.name => b.name,
        _ => a.name.min(b.name),
    }
}

/// The node that should hold the group while both nodes are alive and hear each
/// other, with the rule that chose it; None when no node should. Symmetric: swapping
/// `a` and `b` gives the same answer.
pub fn rightful_holder<'a>(
    a: &NodeFacts<'a>,
    b: &NodeFacts<'a>,
    preferred: Option<&str>,
    auto_failback: bool,
    moved_to: Option<&str>,
) -> Option<(&'a str, &'static str)> {
    match (a.eligible(), b.eligible()) {
        (true, false) => Some((a.name, "the only eligible node")),
        (false, true) => Some((b.name, "the only eligible node")),
        (true, true) => {
            if let Some(m) = moved_to {
                if m == a.name || m == b.name {
                    let name = if m == a.name { a.name } else { b.name };
                    return Some((name, "moved there by an administrator"));
                }
            }
            let nobody_holds = !a.holds && !b.holds;
            match preferred {
                Some(p) if (p == a.name || p == b.name) && (auto_failback || nobody_holds) => {
                    let name = if p == a.name { a.name } else { b.name };
                    return Some((name, "the preferred node"));
                }
                _ => {}
            }
            match (a.holds, b.holds) {
                (true, false) => Some((a.name, "the current holder")),
                (false, true) => Some((b.name, "the current holder")),
                _ => Some((tie_break(a, b, preferred), "the tie-break")),
            }
        }
        (false, false) => {
            let a_keeps = a.holds && !a.standby;
            let b_keeps = b.holds && !b.standby;
            match (a_keeps, b_keeps) {
                (true, false) => Some((a.name, "the holder; no node is eligible")),
                (false, true) => Some((b.name, "the holder; no node is eligible")),
                (true, true) => Some((tie_break(a, b, preferred), "the tie-break")),
                (false, false) => None,
            }
        }
    }
}

/// This node's verdict for the group. See the module doc for the rules.
pub fn decide(input: &PlacementInput<'_>) -> Decision {
    let me = &input.me;
    let peer = &input.peer;
    if !input.peer_alive {
        return decide_alone(input);
    }
    let holder = rightful_holder(
        me,
        peer,
        input.preferred,
        input.auto_failback,
        input.moved_to,
    );
    match holder {
        Some((name, why)) if name == me.name => {
            if me.holds {
                decision(Verdict::Hold, format!("this node is {why}"))
            } else if peer.holds {
                decision(
                    Verdict::Wait,
                    format!(
                        "this node is {why}; waiting for {} to release it",
                        peer.name
                    ),
                )
            } else if input.peer_primary_via_replication {
                decision(
                    Verdict::Wait,
                    format!(
                        "this node is {why}; waiting for {} to demote (Primary on replication)",
                        peer.name
                    ),
                )
            } else {
                decision(Verdict::Acquire, format!("this node is {why}"))
            }
        }
        Some((name, why)) => {
            if me.holds && me.eligible() && !input.peer_up_to_date {
                decision(
                    Verdict::Hold,
                    format!("{name} is {why}, but its data is not UpToDate yet: the group moves once its resync is done"),
                )
            } else if me.holds {
                decision(Verdict::Release, format!("{name} is {why}"))
            } else {
                decision(Verdict::Wait, format!("{name} is {why}"))
            }
        }
        None => {
            if me.holds {
                decision(Verdict::Release, "both nodes are in standby")
            } else {
                decision(Verdict::Wait, "no node is eligible")
            }
        }
    }
}

/// The verdict while the peer is dead (or not heard since start).
fn decide_alone(input: &PlacementInput<'_>) -> Decision {
    let me = &input.me;
    let peer = input.peer.name;
    if me.holds {
        return if me.standby {
            decision(Verdict::Release, "this node is in standby (peer dead)")
        } else {
            decision(Verdict::Hold, format!("{peer} is dead"))
        };
    }
    if me.standby {
        return decision(Verdict::Wait, "this node is in standby");
    }
    if me.failed {
        return decision(Verdict::Wait, "the group failed on this node");
    }
    if !me.ping_ok {
        return decision(Verdict::Wait, "this node reaches no ping target");
    }
    if input.peer_primary_via_replication {
        return decision(
            Verdict::Wait,
            format!("{peer} alive via replication (Primary on a live replication link)"),
        );
    }
    match input.fence {
        FenceState::NotConfigured => decision(Verdict::Acquire, format!("{peer} is dead")),
        FenceState::Fenced => decision(Verdict::Acquire, format!("{peer} is dead and was fenced")),
        FenceState::Needed => decision(
            Verdict::Fence,
            format!("{peer} is dead; fencing it before taking over"),
        ),
        FenceState::InProgress => decision(Verdict::Wait, format!("fencing {peer}")),
        FenceState::Failed => decision(
            Verdict::Wait,
            format!("fencing {peer} failed; not taking over"),
        ),
    }
}

#[cfg(test)]
#[path = "policy_tests.rs"]
mod tests;
