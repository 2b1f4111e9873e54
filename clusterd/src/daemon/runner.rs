//! The runner: the one task that owns the sans-IO core ([`Membership`], one
//! [`Group`] per configured group, [`policy::decide`]) and turns its outputs into I/O:
//! heartbeats on every link, resource steps with their timeouts, the fence command,
//! control replies and events. Everything else (receivers, pollers, steps) talks to
//! it through [`Msg`]s.

use super::resources::Agent;
use crate::group::{
    Group, GroupAction, GroupEvent, GroupInput, GroupState, RestartLimits, StepKind,
};
use crate::membership::{HeartbeatSequencer, LinkState, Membership, MembershipEvent, PeerLiveness};
use crate::policy::{self, Decision, FenceState, NodeFacts, PlacementInput, Verdict};
use hablock_config::{Config, GroupResource};
use hablock_proto::admin::{self, AdminRequest, Command};
use hablock_proto::control::{
    ClusterEvent, ClusterRequest, ClusterResponse, ClusterStatus, Failover, GroupResourceStatus,
    GroupStatus, LinkInfo, NodeStatus,
};
use hablock_proto::heartbeat::{self, GroupView, Heartbeat, MoveTarget, NodeView};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::UdpSocket;
use tokio::sync::{broadcast, mpsc, oneshot};
use tracing::{debug, info, warn};

/// A message to the runner.
#[derive(Debug)]
pub enum Msg {
    /// An authenticated heartbeat from the peer on a link.
    Heartbeat {
        /// The link.
        link: usize,
        /// The packet.
        hb: Heartbeat,
    },
    /// An input for a group (a step's result, a timeout, a health check).
    Group {
        /// Index of the group.
        group: usize,
        /// The input.
        input: GroupInput,
    },
    /// blockd's view of the peer for a group's block resource.
    PeerPrimary {
        /// Index of the group.
        group: usize,
        /// blockd reports the peer Primary over a live replication link.
        via_replication: bool,
    },
    /// An authenticated administrator request from the peer.
    Admin {
        /// The request.
        req: AdminRequest,
    },
    /// Result of a ping round.
    Ping(bool),
    /// Result of the fence command.
    Fenced(bool),
    /// A control request.
    Control {
        /// The request.
        req: ClusterRequest,
        /// Where the answer goes.
        reply: oneshot::Sender<ClusterResponse>,
    },
    /// SIGTERM: stop the groups held here, then exit.
    Shutdown,
}

/// Pause before retrying a stop that failed (the group halts meanwhile, still held).
pub const STOP_RETRY: Duration = Duration::from_secs(10);

/// Half the systemd watchdog interval, when `WATCHDOG_USEC` asks for pings. As
/// `sd_watchdog_enabled(3)`: `WATCHDOG_PID`, when set, must be this process.
pub fn watchdog_period() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.parse::<u32>().ok()? != std::process::id() {
            return None;
        }
    }
    (usec > 0).then(|| Duration::from_micros(usec / 2))
}

/// Wall clock in milliseconds since the Unix epoch.
pub fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Where the runner is heading with a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Goal {
    None,
    Running,
    Stopped,
}

/// A takeover in progress: when it started and how long detection took.
#[derive(Debug, Clone, Copy)]
struct Takeover {
    started: Instant,
    detect_ms: u64,
}

/// A `standby`/`online` forwarded to the peer, waiting for its heartbeats to show
/// the result.
struct Forward {
    command: Command,
    sequence: u64,
    sent_at: Instant,
    next_send: Instant,
    deadline: Instant,
    reply: oneshot::Sender<ClusterResponse>,
}

/// One group and what the runner knows about it.
pub struct GroupRt {
    /// The name.
    pub name: String,
    /// The preferred node.
    pub preferred: Option<String>,
    /// The agents, in start order.
    pub agents: Vec<Arc<Agent>>,
    /// The reconciler.
    pub group: Group,
    /// The whole group runs here: health checks are due.
    pub running_here: Arc<AtomicBool>,
    goal: Goal,
    moved_to: Option<String>,
    peer_move_seen: Option<Option<MoveTarget>>,
    peer_primary_via_replication: bool,
    last: Option<Decision>,
    takeover: Option<Takeover>,
    retry_stop_at: Option<Instant>,
}

impl GroupRt {
    /// A group with its agents; nothing known yet.
    pub fn new(name: String, preferred: Option<String>, agents: Vec<Arc<Agent>>) -> GroupRt {
        let n = agents.len();
        GroupRt {
            name,
            preferred,
            agents,
            group: Group::new(n, RestartLimits::default()),
            running_here: Arc::new(AtomicBool::new(false)),
            goal: Goal::None,
            moved_to: None,
            peer_move_seen: None,
            peer_primary_via_replication: false,
            last: None,
            takeover: None,
            retry_stop_at: None,
        }
    }
}

/// The runner's state.
pub struct Runner {
    /// This node.
    pub me: String,
    /// The peer.
    pub peer: String,
    cfg: Config,
    secret: Arc<Vec<u8>>,
    cluster_id: u64,
    membership: Membership,
    sequencer: HeartbeatSequencer,
    sockets: Vec<Arc<UdpSocket>>,
    my_addrs: Vec<IpAddr>,
    peer_addrs: Vec<IpAddr>,
    standby: bool,
    ping_ok: bool,
    fence: FenceState,
    detect_ms: Option<u64>,
    /// The groups.
    pub groups: Vec<GroupRt>,
    last_failover: Option<Failover>,
    events: broadcast::Sender<ClusterEvent>,
    tx: mpsc::Sender<Msg>,
    shutting_down: bool,
    dropped: u64,
    last_drop_log: Option<Instant>,
    admin_sequence: u64,
    admin_seen: Option<(u64, u64)>,
    forward: Option<Forward>,
}

/// What the runner is built from.
pub struct RunnerParts {
    /// This node's name.
    pub me: String,
    /// The peer's name.
    pub peer: String,
    /// The configuration.
    pub cfg: Config,
    /// The cluster secret.
    pub secret: Arc<Vec<u8>>,
    /// One bound socket per link.
    pub sockets: Vec<Arc<UdpSocket>>,
    /// The groups.
    pub groups: Vec<GroupRt>,
    /// The event stream.
    pub events: broadcast::Sender<ClusterEvent>,
    /// The runner's own inbox sender (for steps and timeouts).
    pub tx: mpsc::Sender<Msg>,
}

impl Runner {
    /// A runner that has heard nothing yet; it probes every group first.
    pub fn new(p: RunnerParts, now: Instant) -> Runner {
        let my_addrs = p
            .cfg
            .nodes
            .get(&p.me)
            .map(|n| n.heartbeat.clone())
            .unwrap_or_default();
        let peer_addrs = p
            .cfg
            .nodes
            .get(&p.peer)
            .map(|n| n.heartbeat.clone())
            .unwrap_or_default();
        let generation = crate::membership::boot_generation(wall_ms(), rand::random());
        let links = my_addrs.len();
        Runner {
            membership: Membership::new(&p.cfg.heartbeat, links, now),
            sequencer: HeartbeatSequencer::new(generation, links),
            cluster_id: heartbeat::cluster_id(&p.cfg.cluster.name),
            ping_ok: true,
            fence: FenceState::NotConfigured,
            detect_ms: None,
            standby: false,
            last_failover: None,
            shutting_down: false,
            dropped: 0,
            last_drop_log: None,
            admin_sequence: 0,
            admin_seen: None,
            forward: None,
            me: p.me,
            peer: p.peer,
            cfg: p.cfg,
            secret: p.secret,
            sockets: p.sockets,
            my_addrs,
            peer_addrs,
            groups: p.groups,
            events: p.events,
            tx: p.tx,
        }
    }

    fn event(&self, kind: &str, group: Option<&str>, message: String) {
        let _ = self.events.send(ClusterEvent {
            time_ms: wall_ms(),
            node: self.me.clone(),
            kind: kind.to_string(),
            group: group.map(str::to_string),
            message,
        });
    }

    /// Probes every group (at start: re-adopt what runs).
    pub fn start(&mut self, now: Instant) {
        for gi in 0..self.groups.len() {
            self.group_input(gi, GroupInput::Probe, now);
        }
    }

    /// Runs until shutdown completes.
    pub async fn run(mut self, mut rx: mpsc::Receiver<Msg>) {
        let watchdog = watchdog_period();
        let mut next_watchdog = Instant::now();
        let mut shutdown_deadline: Option<Instant> = None;
        self.start(Instant::now());
        loop {
            let now = Instant::now();
            let mut wake = self
                .membership
                .next_deadline()
                .min(now + Duration::from_millis(250));
            if watchdog.is_some() {
                wake = wake.min(next_watchdog);
            }
            tokio::select! {
                msg = rx.recv() => match msg {
                    Some(m) => self.handle(m, Instant::now()),
                    None => break,
                },
                _ = tokio::time::sleep_until(tokio::time::Instant::from_std(wake)) => {}
            }
            let now = Instant::now();
            self.tick(now);
            if let Some(period) = watchdog {
                if now >= next_watchdog {
                    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Watchdog]);
                    next_watchdog = now + period;
                }
            }
            if self.shutting_down {
                let deadline = *shutdown_deadline.get_or_insert(now + Duration::from_secs(180));
                let done = self
                    .groups
                    .iter()
                    .all(|g| !g.group.held() || g.group.failed());
                if done || now >= deadline {
                    if !done {
                        warn!("giving up waiting for the groups to stop");
                    }
                    self.send_heartbeats();
                    info!("every group held here is stopped");
                    break;
                }
            }
        }
    }

    /// Handles one message.
    pub fn handle(&mut self, msg: Msg, now: Instant) {
        match msg {
            Msg::Heartbeat { link, hb } => self.on_heartbeat(link, hb, now),
            Msg::Group { group, input } => self.group_input(group, input, now),
            Msg::PeerPrimary {
                group,
                via_replication,
            } => {
                if let Some(g) = self.groups.get_mut(group) {
                    if g.peer_primary_via_replication != via_replication {
                        info!(group = %g.name, peer = %self.peer, via_replication, "peer Primary on the replication link: {via_replication}");
                    }
                    g.peer_primary_via_replication = via_replication;
                }
            }
            Msg::Ping(ok) => {
                if ok != self.ping_ok {
                    warn!(node = %self.me, ping_ok = ok, "ping targets reachable: {ok}");
                    self.event("ping", None, format!("ping targets reachable: {ok}"));
                }
                self.ping_ok = ok;
            }
            Msg::Fenced(ok) => {
                self.fence = if ok {
                    FenceState::Fenced
                } else {
                    FenceState::Failed
                };
                let m = format!(
                    "fencing {}: {}",
                    self.peer,
                    if ok { "done" } else { "FAILED" }
                );
                if ok {
                    info!(peer = %self.peer, "{m}");
                } else {
                    warn!(peer = %self.peer, "{m}");
                }
                self.event("fence", None, m);
            }
            Msg::Admin { req } => self.on_admin(req, now),
            Msg::Control { req, reply } => match self.forward_target(&req) {
                Some(command) => self.start_forward(command, reply, now),
                None => {
                    let r = self.control(req, now);
                    let _ = reply.send(r);
                }
            },
            Msg::Shutdown => {
                info!(node = %self.me, "SIGTERM: stopping the groups held here");
                self.shutting_down = true;
                self.standby = true;
            }
        }
        self.evaluate(now);
    }

    /// Time passed.
    pub fn tick(&mut self, now: Instant) {
        for ev in self.membership.on_tick(now) {
            self.membership_event(ev, now);
        }
        self.forward_progress(now);
        self.evaluate(now);
    }

    /// Logs a refused packet, at most one warning per second (a peer or anyone on
    /// the LAN can trigger it); the rest go to debug.
    fn refused(&mut self, now: Instant, what: &str) {
        self.dropped += 1;
        let quiet = self
            .last_drop_log
            .is_some_and(|t| now.saturating_duration_since(t) < Duration::from_secs(1));
        if quiet {
            debug!(peer = %self.peer, "{what}");
        } else {
            self.last_drop_log = Some(now);
            warn!(peer = %self.peer, refused_total = self.dropped, "{what}");
        }
    }

    /// The command to forward, when `req` is a standby/online of the peer.
    fn forward_target(&self, req: &ClusterRequest) -> Option<Command> {
        match req {
            ClusterRequest::Standby { node: Some(n) } if *n == self.peer => Some(Command::Standby),
            ClusterRequest::Online { node: Some(n) } if *n == self.peer => Some(Command::Online),
            _ => None,
        }
    }

    fn start_forward(
        &mut self,
        command: Command,
        reply: oneshot::Sender<ClusterResponse>,
        now: Instant,
    ) {
        let refuse = |message: String| ClusterResponse::Refused { message };
        if !self.membership.peer_alive() {
            let _ = reply.send(refuse(format!(
                "{} is not alive: cannot forward",
                self.peer
            )));
            return;
        }
        if self.forward.is_some() {
            let _ = reply.send(refuse("another forwarded request is pending".into()));
            return;
        }
        self.admin_sequence += 1;
        let wait = (self.cfg.heartbeat.deadtime * 2).max(Duration::from_secs(2));
        info!(peer = %self.peer, ?command, "forwarding to the peer");
        self.forward = Some(Forward {
            command,
            sequence: self.admin_sequence,
            sent_at: now,
            next_send: now,
            deadline: now + wait,
            reply,
        });
        self.forward_progress(now);
    }

    /// Sends a pending forwarded request again, or answers it once the peer's
    /// heartbeats show the result (or the wait is over).
    fn forward_progress(&mut self, now: Instant) {
        let Some(f) = self.forward.as_mut() else {
            return;
        };
        let want_standby = f.command == Command::Standby;
        let heard_since = self
            .membership
            .peer_silent_for(now)
            .is_some_and(|s| now.saturating_duration_since(f.sent_at) > s);
        let shows = self
            .membership
            .last_heartbeat()
            .is_some_and(|h| h.view.standby == want_standby);
        if heard_since && shows && self.membership.peer_alive() {
            if let Some(f) = self.forward.take() {
                let _ = f.reply.send(ClusterResponse::Ok {
                    warnings: vec![format!("forwarded to {}", self.peer)],
                });
            }
            return;
        }
        if now >= f.deadline {
            if let Some(f) = self.forward.take() {
                let _ = f.reply.send(ClusterResponse::Refused {
                    message: format!("{} did not confirm the forwarded request", self.peer),
                });
            }
            return;
        }
        if now >= f.next_send {
            f.next_send = now + self.cfg.heartbeat.keepalive;
            let req = AdminRequest {
                command: f.command,
                cluster_id: self.cluster_id,
                generation: self.sequencer.generation(),
                sequence: f.sequence,
                sender: self.me.clone(),
                target: self.peer.clone(),
            };
            match admin::encode(&req, &self.secret) {
                Ok(bytes) => {
                    for (i, sock) in self.sockets.iter().enumerate() {
                        if let Some(peer) = self.peer_addrs.get(i) {
                            let to = SocketAddr::new(*peer, self.cfg.heartbeat.port);
                            if let Err(e) = sock.try_send_to(&bytes, to) {
                                debug!(link = i, %to, "admin request send: {e}");
                            }
                        }
                    }
                }
                Err(e) => warn!("cannot encode an admin request: {e}"),
            }
        }
    }

    /// A request forwarded by the peer: accepted once per sequence, only in the
    /// peer's current generation (no replay).
    fn on_admin(&mut self, req: AdminRequest, now: Instant) {
        let current = self.membership.peer_generation();
        let fresh = Some(req.generation) == current
            && self.membership.peer_alive()
            && match self.admin_seen {
                Some((g, s)) if g == req.generation => req.sequence > s,
                _ => true,
            };
        if !fresh {
            // The sender repeats a request until it sees the result: not a replay.
            if self.admin_seen != Some((req.generation, req.sequence)) {
                self.refused(
                    now,
                    &format!(
                        "refused a stale or replayed admin request (generation {:#x}, sequence {})",
                        req.generation, req.sequence
                    ),
                );
            }
            return;
        }
        self.admin_seen = Some((req.generation, req.sequence));
        let local = match req.command {
            Command::Standby => ClusterRequest::Standby { node: None },
            Command::Online => ClusterRequest::Online { node: None },
        };
        info!(peer = %self.peer, command = ?req.command, "request forwarded by the peer");
        let r = self.control(local, now);
        if let ClusterResponse::Refused { message } = r {
            warn!(peer = %self.peer, "forwarded request refused: {message}");
        }
        self.send_heartbeats();
    }

    fn on_heartbeat(&mut self, link: usize, hb: Heartbeat, now: Instant) {
        match self.membership.on_heartbeat(link, &hb, now) {
            Ok(events) => {
                for ev in events {
                    self.membership_event(ev, now);
                }
            }
            Err(e) => {
                self.refused(now, &format!("heartbeat on link {link} refused: {e}"));
                return;
            }
        }
        // An administrator's move issued on the peer: adopt it when it changes.
        for g in &mut self.groups {
            let adv = hb
                .view
                .groups
                .iter()
                .find(|v| v.name == g.name)
                .and_then(|v| v.moved_to);
            if g.peer_move_seen != Some(adv) {
                g.peer_move_seen = Some(adv);
                if let Some(t) = adv {
                    let node = match t {
                        MoveTarget::Sender => self.peer.clone(),
                        MoveTarget::Receiver => self.me.clone(),
                    };
                    if g.moved_to.as_deref() != Some(node.as_str()) {
                        info!(group = %g.name, peer = %self.peer, "moved to {node} by an administrator on {}", self.peer);
                        if node == self.me {
                            g.group.handle(GroupInput::ClearFailure, now);
                        }
                        g.moved_to = Some(node);
                    }
                }
            }
        }
    }

    fn membership_event(&mut self, ev: MembershipEvent, now: Instant) {
        let peer = self.peer.clone();
        match ev {
            MembershipEvent::SendHeartbeats => {
                // A probing group counts as held; advertising that would make a
                // peer that really holds it release it (both hold -> tie-break).
                // Probes take milliseconds: stay silent until they are done.
                if self
                    .groups
                    .iter()
                    .all(|g| g.group.state() != GroupState::Probing)
                {
                    self.send_heartbeats();
                }
            }
            MembershipEvent::PeerUp { generation } => {
                info!(peer = %peer, generation = format!("{generation:#x}"), "peer is alive");
                self.fence = FenceState::NotConfigured;
                self.detect_ms = None;
                self.event("peer-up", None, format!("{peer} is alive"));
            }
            MembershipEvent::PeerRestarted { old, new } => {
                info!(peer = %peer, "peer restarted ({old:#x} -> {new:#x})");
                self.event("peer-restarted", None, format!("{peer} restarted"));
            }
            MembershipEvent::PeerLate { silent_for } => {
                warn!(peer = %peer, "peer is late: silent for {silent_for:?}");
                self.event(
                    "peer-late",
                    None,
                    format!("{peer} silent for {silent_for:?}"),
                );
            }
            MembershipEvent::PeerDead => {
                let silent = self.membership.peer_silent_for(now);
                self.detect_ms = silent.map(|d| d.as_millis() as u64);
                self.fence = if self.cfg.heartbeat.fence.is_some() {
                    FenceState::Needed
                } else {
                    FenceState::NotConfigured
                };
                warn!(peer = %peer, ?silent, "peer is DEAD");
                self.event(
                    "peer-dead",
                    None,
                    format!("{peer} declared dead after {silent:?} of silence"),
                );
            }
            MembershipEvent::LinkUp(i) => {
                let a = self
                    .peer_addrs
                    .get(i)
                    .map(|a| a.to_string())
                    .unwrap_or_default();
                info!(peer = %peer, link = i, address = %a, "heartbeat link up");
                self.event("link-up", None, format!("link {i} ({a}) up"));
            }
            MembershipEvent::LinkDown(i) => {
                let a = self
                    .peer_addrs
                    .get(i)
                    .map(|a| a.to_string())
                    .unwrap_or_default();
                warn!(peer = %peer, link = i, address = %a, "heartbeat link DOWN");
                self.event("link-down", None, format!("link {i} ({a}) down"));
            }
        }
    }

    fn node_view(&self) -> NodeView {
        NodeView {
            standby: self.standby,
            sees_peer: self.membership.peer_alive(),
            ping_ok: self.ping_ok,
            groups: self
                .groups
                .iter()
                .map(|g| GroupView {
                    name: g.name.clone(),
                    held: g.group.held(),
                    failed: g.group.failed(),
                    moved_to: match g.moved_to.as_deref() {
                        Some(n) if n == self.me => Some(MoveTarget::Sender),
                        Some(n) if n == self.peer => Some(MoveTarget::Receiver),
                        _ => None,
                    },
                })
                .collect(),
        }
    }

    fn send_heartbeats(&mut self) {
        let view = self.node_view();
        for (i, sock) in self.sockets.iter().enumerate() {
            let (Some(seq), Some(peer)) = (self.sequencer.next(i), self.peer_addrs.get(i)) else {
                continue;
            };
            let hb = Heartbeat {
                link: i as u8,
                cluster_id: self.cluster_id,
                node: self.me.clone(),
                generation: self.sequencer.generation(),
                sequence: seq,
                view: view.clone(),
            };
            match heartbeat::encode(&hb, &self.secret) {
                Ok(bytes) => {
                    let to = SocketAddr::new(*peer, self.cfg.heartbeat.port);
                    if let Err(e) = sock.try_send_to(&bytes, to) {
                        debug!(link = i, %to, "heartbeat send: {e}");
                    }
                }
                Err(e) => warn!("cannot encode a heartbeat: {e}"),
            }
        }
    }

    /// Feeds a group and carries out its actions.
    fn group_input(&mut self, gi: usize, input: GroupInput, now: Instant) {
        let Some(g) = self.groups.get_mut(gi) else {
            return;
        };
        let actions = g.group.handle(input, now);
        self.group_actions(gi, actions, now);
    }

    fn group_actions(&mut self, gi: usize, actions: Vec<GroupAction>, now: Instant) {
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

    fn group_event(&mut self, gi: usize, ev: GroupEvent, now: Instant) {
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
        self.event("group", Some(&name), msg);
    }

    fn peer_facts<'a>(&'a self, g: &GroupRt) -> (NodeFacts<'a>, bool) {
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

    fn spawn_fence(&self) {
        let Some(cmd) = self.cfg.heartbeat.fence.clone() else {
            return;
        };
        let cmd = cmd.replace("{peer}", &self.peer);
        let tx = self.tx.clone();
        warn!(peer = %self.peer, command = %cmd, "fencing the peer");
        self.event("fence", None, format!("running {cmd}"));
        tokio::spawn(async move {
            let ok = matches!(
                super::resources::run_program("sh", &["-c", &cmd], Duration::from_secs(120)).await,
                Ok((0, _))
            );
            let _ = tx.send(Msg::Fenced(ok)).await;
        });
    }

    fn known_node(&self, node: &str) -> bool {
        node == self.me || node == self.peer
    }

    fn control(&mut self, req: ClusterRequest, now: Instant) -> ClusterResponse {
        let refused = |message: String| ClusterResponse::Refused { message };
        let ok = ClusterResponse::Ok { warnings: vec![] };
        match req {
            ClusterRequest::Status => ClusterResponse::Status(self.status(now)),
            ClusterRequest::Events => ClusterResponse::BadRequest {
                message: "events handled elsewhere".into(),
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
                links: self
                    .my_addrs
                    .iter()
                    .map(|a| LinkInfo {
                        address: a.to_string(),
                        up: true,
                        state: "up".into(),
                        last_seen_ms: None,
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

/// The block resource a group depends on, if any.
pub fn block_resource(resources: &[GroupResource]) -> Option<String> {
    resources.iter().find_map(|r| match r {
        GroupResource::Block { resource } => Some(resource.clone()),
        _ => None,
    })
}
