//! The clusterd daemon: a thin tokio shell around the sans-IO core.
//!
//! - [`links`]: UDP heartbeat sockets, one per link; authentication and sender checks.
//! - [`runner`]: the task that owns membership, groups and placement and turns their
//!   outputs into I/O.
//! - [`resources`]: the resource agents (block, filesystem, VIP with gratuitous ARP,
//!   service) and health checks.
//! - [`control`]: the control socket `<run-dir>/clusterd.sock`.
//!
//! Background tasks poll blockd for the peer's role on the replication link, run the
//! health checks of running groups and the ping targets, and turn SIGTERM into an
//! orderly stop of the groups held here.

pub mod control;
pub mod links;
pub mod reload;
pub mod resources;
pub mod runner;

use anyhow::{bail, Context};
use hablock_config::Config;
use resources::{Agent, AgentContext};
use runner::{GroupRt, Msg, Runner, RunnerParts};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{broadcast, mpsc};
use tracing::{info, warn, Instrument};

/// How often a running group's health checks run.
pub const CHECK_INTERVAL: Duration = Duration::from_secs(2);
/// Timeout of one health check.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(3);
/// Timeout of one blockd request.
pub const BLOCKD_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the daemon finds its configuration and puts its socket.
#[derive(Debug, Clone)]
pub struct DaemonOptions {
    /// The configuration file.
    pub config: PathBuf,
    /// This node's name.
    pub node: String,
    /// The run directory.
    pub run_dir: PathBuf,
}

/// Runs the daemon until SIGTERM (or SIGINT) and the groups held here are stopped.
pub async fn run(opts: DaemonOptions) -> anyhow::Result<()> {
    let cfg = Config::load(&opts.config, &opts.node)
        .with_context(|| format!("loading {}", opts.config.display()))?;
    let secret = Arc::new(cfg.read_secret().context("reading the shared secret")?);
    let Some((peer, _)) = cfg.peer_of(&opts.node) else {
        bail!("no peer for node {} in the configuration", opts.node);
    };
    let peer = peer.to_string();
    let me = opts.node.clone();
    let my_addrs = cfg
        .nodes
        .get(&me)
        .map(|n| n.heartbeat.clone())
        .context("this node is not configured")?;
    let peer_addrs = cfg
        .nodes
        .get(&peer)
        .map(|n| n.heartbeat.clone())
        .unwrap_or_default();

    std::fs::create_dir_all(&opts.run_dir)
        .with_context(|| format!("creating {}", opts.run_dir.display()))?;
    let sock = hablock_config::cli::clusterd_socket(&opts.run_dir);
    if std::os::unix::net::UnixStream::connect(&sock).is_ok() {
        bail!(
            "another clusterd is running with run directory {}",
            opts.run_dir.display()
        );
    }

    let sockets = links::bind(&my_addrs, cfg.heartbeat.port).await?;
    let (tx, rx) = mpsc::channel::<Msg>(1024);
    let (events, _) = broadcast::channel(1024);
    let drops = Arc::new(links::DropCounters::default());
    let node_span = tracing::info_span!("clusterd", node = %me, peer = %peer);

    let mut groups = Vec::new();
    for (name, g) in &cfg.groups {
        let agents = g
            .resources
            .iter()
            .enumerate()
            .map(|(index, r)| {
                Arc::new(Agent {
                    config: r.clone(),
                    ctx: AgentContext {
                        run_dir: opts.run_dir.clone(),
                        group: name.clone(),
                        index,
                        blockd_timeout: BLOCKD_TIMEOUT,
                    },
                })
            })
            .collect();
        groups.push(GroupRt::new(name.clone(), g.preferred.clone(), agents));
    }

    for (i, s) in sockets.iter().enumerate() {
        let rcfg = links::ReceiverConfig {
            secret: secret.clone(),
            cluster_id: hablock_proto::heartbeat::cluster_id(&cfg.cluster.name),
            me: me.clone(),
            peer: peer.clone(),
            peer_addrs: peer_addrs.clone(),
        };
        tokio::spawn(
            links::receive(i, s.clone(), rcfg, tx.clone(), drops.clone())
                .instrument(tracing::info_span!("link", node = %me, peer = %peer, link = i)),
        );
    }

    // blockd's view of the peer, per group with a block resource.
    let poll = cfg
        .heartbeat
        .keepalive
        .clamp(Duration::from_millis(100), Duration::from_secs(1));
    for (gi, (name, g)) in cfg.groups.iter().enumerate() {
        let Some(res) = runner::block_resource(&g.resources) else {
            continue;
        };
        let (tx, run_dir) = (tx.clone(), opts.run_dir.clone());
        let span = tracing::info_span!("blockd-poll", node = %me, group = %name, resource = %res);
        tokio::spawn(
            async move {
                let mut last_err = String::new();
                loop {
                    let (via, peer_up_to_date, local_disk_detached) =
                        match resources::block::status(&run_dir, &res, BLOCKD_TIMEOUT).await {
                            Ok(s) => {
                                last_err.clear();
                                (
                                    resources::block::peer_primary_via_replication(&s),
                                    resources::block::peer_up_to_date(&s),
                                    s.disk == hablock_proto::types::DiskState::Diskless,
                                )
                            }
                            Err(e) => {
                                let e = e.to_string();
                                if e != last_err {
                                    warn!("blockd status: {e}");
                                    last_err = e;
                                }
                                (false, false, false)
                            }
                        };
                    let msg = Msg::PeerPrimary {
                        group: gi,
                        via_replication: via,
                        peer_up_to_date,
                        local_disk_detached,
                    };
                    if tx.send(msg).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(poll).await;
                }
            }
            .instrument(span),
        );
    }

    // Health checks of the groups running here.
    for (gi, g) in groups.iter().enumerate() {
        let (agents, running, tx) = (g.agents.clone(), g.running_here.clone(), tx.clone());
        let span = tracing::info_span!("check", node = %me, group = %g.name);
        tokio::spawn(
            async move {
                loop {
                    tokio::time::sleep(CHECK_INTERVAL).await;
                    if !running.load(Ordering::Relaxed) {
                        continue;
                    }
                    for (index, a) in agents.iter().enumerate() {
                        let Some(ok) = a.check(CHECK_TIMEOUT).await else {
                            continue;
                        };
                        // The group may have stopped while the check ran.
                        if !running.load(Ordering::Relaxed) {
                            break;
                        }
                        let input = if ok {
                            crate::group::GroupInput::CheckOk { index }
                        } else {
                            warn!(index, "health check failed");
                            crate::group::GroupInput::CheckFailed { index }
                        };
                        if tx.send(Msg::Group { group: gi, input }).await.is_err() {
                            return;
                        }
                    }
                }
            }
            .instrument(span),
        );
    }

    if !cfg.heartbeat.ping.is_empty() {
        let (targets, tx) = (cfg.heartbeat.ping.clone(), tx.clone());
        let every = cfg.heartbeat.keepalive * 2;
        tokio::spawn(ping_loop(targets, every, tx).instrument(node_span.clone()));
    }

    let runner = Runner::new(
        RunnerParts {
            me: me.clone(),
            peer: peer.clone(),
            cfg,
            secret,
            sockets,
            groups,
            events: events.clone(),
            tx: tx.clone(),
        },
        Instant::now(),
    );

    let listener = control::bind(&sock).with_context(|| format!("creating {}", sock.display()))?;
    let source = Arc::new(reload::ReloadSource {
        path: opts.config.clone(),
        node: me.clone(),
    });
    tokio::spawn(
        control::serve(listener, tx.clone(), events, source.clone()).instrument(node_span.clone()),
    );
    {
        let tx = tx.clone();
        tokio::spawn(async move {
            wait_for_signal().await;
            let _ = tx.send(Msg::Shutdown).await;
        });
    }
    tokio::spawn(reload_on_sighup(source, tx.clone()).instrument(node_span.clone()));
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
    info!(node = %me, peer = %peer, socket = %sock.display(), "clusterd ready");
    drop(tx);
    runner.run(rx).instrument(node_span).await;
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
    let _ = std::fs::remove_file(&sock);
    Ok(())
}

/// Pings every target every `every` (`ping -c1 -W1`, from iputils or busybox); sends
/// whether any answered.
async fn ping_loop(targets: Vec<std::net::IpAddr>, every: Duration, tx: mpsc::Sender<Msg>) {
    let has_ping = std::process::Command::new("sh")
        .args(["-c", "command -v ping"])
        .stdout(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    loop {
        let mut any = false;
        for t in &targets {
            let t = t.to_string();
            let r = if has_ping {
                resources::run_program("ping", &["-c1", "-W1", &t], Duration::from_secs(3)).await
            } else {
                resources::run_program(
                    "busybox",
                    &["ping", "-c1", "-W1", &t],
                    Duration::from_secs(3),
                )
                .await
            };
            if matches!(r, Ok((0, _))) {
                any = true;
                break;
            }
        }
        if tx.send(Msg::Ping(any)).await.is_err() {
            return;
        }
        tokio::time::sleep(every).await;
    }
}

/// Reloads the configuration on each SIGHUP (the outcome goes to the log).
async fn reload_on_sighup(source: Arc<reload::ReloadSource>, tx: mpsc::Sender<Msg>) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            warn!("cannot watch SIGHUP, reload with `clusterctl reload` only: {e}");
            return;
        }
    };
    while hup.recv().await.is_some() {
        info!("SIGHUP: reloading the configuration");
        if tx.send(source.message(None)).await.is_err() {
            return;
        }
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
