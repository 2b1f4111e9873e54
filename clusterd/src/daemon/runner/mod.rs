//! The runner: the one task that owns the sans-IO core ([`Membership`], one
//! [`Group`] per configured group, [`crate::policy::decide`]) and turns its outputs into I/O:
//! heartbeats on every link, resource steps with their timeouts, the fence command,
//! control replies and events. Everything else (receivers, pollers, steps) talks to
//! it through [`Msg`]s.

mod commands;
mod forward;
mod placement;
mod steps;

use super::resources::Agent;
use crate::group::{Group, GroupInput, GroupState, RestartLimits};
use crate::membership::{HeartbeatSequencer, Membership, MembershipEvent};
use crate::policy::{Decision, FenceState};
use hablock_config::{Config, GroupResource};
use hablock_proto::admin::{AdminRequest, Command};
use hablock_proto::control::{ClusterEvent, ClusterRequest, ClusterResponse, Failover};
use hablock_proto::heartbeat::{self, GroupView, Heartbeat, MoveTarget, NodeView};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::AtomicBool;
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
        /// blockd reports the peer's copy UpToDate over a live replication link.
        peer_up_to_date: bool,
        /// blockd reports this node's disk detached after an I/O error (Diskless).
        local_disk_detached: bool,
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
    /// The configuration file, read again (`clusterctl reload`, SIGHUP).
    Reload {
        /// The file's path, for messages.
        config: String,
        /// Its new content, or why it does not load.
        loaded: Result<Box<Config>, String>,
        /// Where the answer goes (none for SIGHUP: the log is the answer).
        reply: Option<oneshot::Sender<ClusterResponse>>,
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
    /// The peer's copy of the group's block resource is UpToDate (true for a group
    /// without one): a holder moves the group there only then.
    peer_up_to_date: bool,
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
            peer_up_to_date: true,
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
    /// Per link: the last heartbeat could be sent (a route to the peer exists).
    send_ok: Vec<bool>,
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
            send_ok: vec![true; links],
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

    /// blockd's view for group `group`'s block resource (see [`Msg::PeerPrimary`]).
    fn on_blockd_poll(
        &mut self,
        group: usize,
        via_replication: bool,
        peer_up_to_date: bool,
        local_disk_detached: bool,
        now: Instant,
    ) {
        let Some(g) = self.groups.get_mut(group) else {
            return;
        };
        g.peer_up_to_date = peer_up_to_date;
        if g.peer_primary_via_replication != via_replication {
            info!(group = %g.name, peer = %self.peer, via_replication, "peer Primary on the replication link: {via_replication}");
        }
        g.peer_primary_via_replication = via_replication;
        // The block resource's health check: its disk attached. A detached disk
        // fails it (the group then moves to the node that has the data on its
        // own disk: a Diskless copy is never promoted); an attached one clears
        // a failure shown earlier.
        let Some(index) = g
            .agents
            .iter()
            .position(|a| matches!(a.config, GroupResource::Block { .. }))
        else {
            return;
        };
        let shown_failing = g.group.check_failing().get(index) == Some(&true);
        if local_disk_detached && g.group.state() == GroupState::Running {
            warn!(group = %g.name, "blockd detached the local disk: the group leaves this node");
            self.group_input(group, GroupInput::CheckFailed { index }, now);
        } else if !local_disk_detached && shown_failing {
            self.group_input(group, GroupInput::CheckOk { index }, now);
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
                peer_up_to_date,
                local_disk_detached,
            } => self.on_blockd_poll(
                group,
                via_replication,
                peer_up_to_date,
                local_disk_detached,
                now,
            ),
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
            Msg::Reload {
                config,
                loaded,
                reply,
            } => {
                let answer = self.reload(&config, loaded, now);
                if let Some(reply) = reply {
                    let _ = reply.send(answer);
                }
            }
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
                    let sent = sock.try_send_to(&bytes, to);
                    if let Err(e) = &sent {
                        debug!(link = i, %to, "heartbeat send: {e}");
                    }
                    if let Some(ok) = self.send_ok.get_mut(i) {
                        if *ok != sent.is_ok() {
                            match &sent {
                                Ok(_) => {
                                    info!(link = i, %to, "sending heartbeats on link {i} again")
                                }
                                Err(e) => {
                                    warn!(link = i, %to, "cannot send heartbeats on link {i}: {e}")
                                }
                            }
                        }
                        *ok = sent.is_ok();
                    }
                }
                Err(e) => warn!("cannot encode a heartbeat: {e}"),
            }
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
