//! Control requests answered by the runner (`standby`, `online`, `move` of this
//! node) and the status report.

use super::{Goal, Runner};
use crate::daemon::reload;
use crate::group::{GroupInput, GroupState};
use crate::membership::{LinkState, PeerLiveness};
use hablock_config::Config;
use hablock_proto::control::{
    ClusterRequest, ClusterResponse, ClusterStatus, GroupResourceStatus, GroupStatus, LinkInfo,
    NodeStatus,
};
use std::time::Instant;
use tracing::{info, warn};

impl Runner {
    /// Applies a configuration read again (see [`crate::daemon::reload`]): `Reloaded`
    /// with what changed, or `Refused` with nothing applied. The outcome is logged.
    pub(super) fn reload(
        &mut self,
        config: &str,
        loaded: Result<Box<Config>, String>,
        now: Instant,
    ) -> ClusterResponse {
        let planned = loaded.and_then(|new| reload::plan(&self.cfg, &new).map(|c| (new, c)));
        let (new, changes) = match planned {
            Ok(p) => p,
            Err(message) => {
                warn!(config, "{message}");
                return ClusterResponse::Refused { message };
            }
        };
        self.membership.set_timing(&new.heartbeat, now);
        self.cfg = *new;
        if changes.is_empty() {
            info!(config, "configuration reloaded: no change for clusterd");
        }
        for change in &changes {
            info!(config, "configuration reloaded: {change}");
            self.event("reload", None, change.clone());
        }
        ClusterResponse::Reloaded {
            config: config.to_string(),
            changes,
        }
    }

    pub(super) fn known_node(&self, node: &str) -> bool {
        node == self.me || node == self.peer
    }

    pub(super) fn control(&mut self, req: ClusterRequest, now: Instant) -> ClusterResponse {
        let refused = |message: String| ClusterResponse::Refused { message };
        let ok = ClusterResponse::Ok { warnings: vec![] };
        match req {
            ClusterRequest::Status => ClusterResponse::Status(self.status(now)),
            ClusterRequest::Events | ClusterRequest::Reload => ClusterResponse::BadRequest {
                message: "handled by the control socket".into(),
            },
            ClusterRequest::Standby { node } | ClusterRequest::Online { node }
                if node.as_deref().is_some_and(|n| !self.known_node(n)) =>
            {
                refused(format!(
                    "no node {:?} (known: {}, {})",
                    node.unwrap_or_default(),
                    self.me,
                    self.peer
                ))
            }
            ClusterRequest::Standby { node } => {
                let node = node.unwrap_or_else(|| self.me.clone());
                if node != self.me {
                    return refused(format!("{node} is not this node"));
                }
                if self.shutting_down {
                    return refused("clusterd is shutting down".into());
                }
                self.standby = true;
                info!(node = %self.me, "standby");
                self.event("standby", None, format!("{} in standby", self.me));
                ok
            }
            ClusterRequest::Online { node } => {
                let node = node.unwrap_or_else(|| self.me.clone());
                if node != self.me {
                    return refused(format!("{node} is not this node"));
                }
                if self.shutting_down {
                    return refused("clusterd is shutting down".into());
                }
                self.standby = false;
                for gi in 0..self.groups.len() {
                    if self.groups[gi].group.failed() {
                        self.groups[gi].goal = Goal::None;
                    }
                    self.group_input(gi, GroupInput::ClearFailure, now);
                }
                info!(node = %self.me, "online");
                self.event("online", None, format!("{} online", self.me));
                ok
            }
            ClusterRequest::Move { group, node } => {
                if !self.known_node(&node) {
                    return refused(format!(
                        "no node {node:?} (known: {}, {})",
                        self.me, self.peer
                    ));
                }
                let Some(gi) = self.groups.iter().position(|g| g.name == group) else {
                    let known: Vec<&str> = self.groups.iter().map(|g| g.name.as_str()).collect();
                    return refused(format!("no group {group:?} (known: {})", known.join(", ")));
                };
                if node == self.peer && !self.membership.peer_alive() {
                    return refused(format!("{node} is not alive"));
                }
                if node == self.me {
                    if self.groups[gi].group.failed() {
                        self.groups[gi].goal = Goal::None;
                    }
                    self.group_input(gi, GroupInput::ClearFailure, now);
                }
                self.groups[gi].moved_to = Some(node.clone());
                info!(group = %group, "moved to {node} by an administrator");
                self.event("move", Some(&group), format!("{group} moved to {node}"));
                self.send_heartbeats();
                ok
            }
        }
    }

    /// The status report.
    pub fn status(&self, now: Instant) -> ClusterStatus {
        let peer_alive = self.membership.peer_alive();
        let liveness = match self.membership.liveness() {
            PeerLiveness::Alive => "alive",
            PeerLiveness::Dead => "dead",
            PeerLiveness::Unknown => "unknown",
        };
        let peer_hb = self.membership.last_heartbeat();
        let via_replication = self.groups.iter().any(|g| g.peer_primary_via_replication);
        let mut warnings = Vec::new();
        let links = self.membership.links(now);
        let peer_links: Vec<LinkInfo> = links
            .iter()
            .enumerate()
            .map(|(i, l)| LinkInfo {
                address: self
                    .peer_addrs
                    .get(i)
                    .map(|a| a.to_string())
                    .unwrap_or_default(),
                up: l.state == LinkState::Up,
                state: l.state.as_str().to_string(),
                last_seen_ms: l.last_seen_age.map(|d| d.as_millis() as u64),
            })
            .collect();
        for (i, l) in peer_links.iter().enumerate() {
            if !l.up && peer_alive {
                warnings.push(format!(
                    "heartbeat link {i} to {} ({}) is down; the peer is heard on another link",
                    self.peer, l.address
                ));
            }
        }
        if !peer_alive && via_replication {
            warnings.push(format!(
                "no heartbeats from {}, but it is Primary on a live replication link: alive via replication, not taking over",
                self.peer
            ));
        }
        if let Some(s) = self.membership.peer_silent_for(now) {
            if peer_alive && s >= self.cfg.heartbeat.warntime {
                warnings.push(format!(
                    "{} is late: silent for {} ms",
                    self.peer,
                    s.as_millis()
                ));
            }
        }
        let nodes = vec![
            NodeStatus {
                name: self.me.clone(),
                alive: true,
                standby: self.standby,
                liveness: "alive".into(),
                ping_ok: self.ping_ok,
                alive_via_replication: false,
                // This node's side of each link: can it send heartbeats on it?
                links: self
                    .my_addrs
                    .iter()
                    .enumerate()
                    .map(|(i, a)| {
                        let up = self.send_ok.get(i).copied().unwrap_or(false);
                        LinkInfo {
                            address: a.to_string(),
                            up,
                            state: if up { "up" } else { "down" }.into(),
                            last_seen_ms: None,
                        }
                    })
                    .collect(),
            },
            NodeStatus {
                name: self.peer.clone(),
                alive: peer_alive,
                standby: peer_alive && peer_hb.is_some_and(|h| h.view.standby),
                liveness: liveness.into(),
                ping_ok: peer_hb.is_none_or(|h| h.view.ping_ok),
                alive_via_replication: !peer_alive && via_replication,
                links: peer_links,
            },
        ];
        let groups = self
            .groups
            .iter()
            .map(|g| {
                let (peer, _) = self.peer_facts(g);
                let holder = if g.group.held() {
                    Some(self.me.clone())
                } else if peer.holds {
                    Some(self.peer.clone())
                } else {
                    None
                };
                let state = match g.group.state() {
                    GroupState::Probing => "probing",
                    GroupState::Stopped => "stopped",
                    GroupState::Starting(_) => "starting",
                    GroupState::Running => "running",
                    GroupState::Stopping(_) => "stopping",
                    GroupState::Partial => "partial",
                    GroupState::Failed => "failed",
                };
                let failing = g.group.check_failing();
                GroupStatus {
                    name: g.name.clone(),
                    holder,
                    state: state.into(),
                    verdict: g
                        .last
                        .as_ref()
                        .map(|d| d.verdict.to_string())
                        .unwrap_or_default(),
                    reason: g
                        .last
                        .as_ref()
                        .map(|d| d.reason.clone())
                        .unwrap_or_default(),
                    moved_to: g.moved_to.clone(),
                    resources: g
                        .group
                        .resource_states()
                        .iter()
                        .zip(&g.agents)
                        .enumerate()
                        .map(|(i, (s, a))| GroupResourceStatus {
                            kind: a.kind().into(),
                            name: a.describe(),
                            state: s.as_str().into(),
                            check_failing: failing.get(i).copied().unwrap_or(false),
                        })
                        .collect(),
                }
            })
            .collect();
        ClusterStatus {
            node: self.me.clone(),
            nodes,
            groups,
            last_failover: self.last_failover.clone(),
            warnings,
        }
    }
}
