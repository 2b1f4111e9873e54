//! The blockd daemon: a thin shell that runs one [`crate::engine::Engine`] per
//! configured resource and does its I/O (backing device, peer sockets, NBD frontend,
//! control socket, signals, systemd notification).

pub mod control;
pub mod io;
pub mod local_reads;
pub mod peer;
pub mod reload;
pub mod resource;
pub mod sender;
pub mod ublk;
pub mod uring;

/// A write at least this large is followed, once handed to the next thread on its way
/// (the ublk queue thread's to the resource task, a submission to the io_uring
/// thread), by one yield of the CPU, so that thread starts on it before this one goes
/// on with the next block: all of blockd's threads are `SCHED_BATCH`, so a wake-up
/// alone does not preempt.
const HANDOVER_YIELD_BYTES: usize = 64 * 1024;

use crate::engine::{decide, Engine, EngineConfig, PersistedState};
use crate::md::{MdStore, FLAG_PRIMARY};
use anyhow::{bail, Context};
use hablock_config::{Config, ResourceConfig};
use local_reads::LocalReads;
use resource::{ResourceMsg, ResourceTask};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tracing::{info, warn, Instrument};

/// Where the daemon finds its configuration and puts its sockets.
#[derive(Debug, Clone)]
pub struct DaemonOptions {
    /// The configuration file.
    pub config: PathBuf,
    /// This node's name.
    pub node: String,
    /// The run directory (control socket).
    pub run_dir: PathBuf,
}

/// The engine's split-brain policy from the configuration.
pub fn policy_of(r: &ResourceConfig) -> decide::SplitBrainPolicy {
    decide::SplitBrainPolicy {
        zero_primaries: r.after_sb_0pri,
        one_primary: r.after_sb_1pri,
        two_primaries: r.after_sb_2pri,
    }
}

/// Where a resource keeps its metadata.
pub fn md_location(r: &ResourceConfig) -> crate::md::MdLocation {
    match &r.metadata {
        hablock_config::MetadataLocation::Internal => crate::md::MdLocation::Internal,
        hablock_config::MetadataLocation::External(p) => crate::md::MdLocation::External(p.clone()),
    }
}

/// Runs the daemon until SIGTERM or SIGINT.
pub async fn run(opts: DaemonOptions) -> anyhow::Result<()> {
    let cfg = Config::load(&opts.config, &opts.node)
        .with_context(|| format!("loading {}", opts.config.display()))?;
    let secret = Arc::new(cfg.read_secret().context("reading the shared secret")?);
    let Some((peer_name, peer_node)) = cfg.peer_of(&opts.node) else {
        bail!("no peer for node {} in the configuration", opts.node);
    };
    let peer_name = peer_name.to_string();
    let peer_addr = peer_node.address;
    let my_addr = cfg
        .nodes
        .get(&opts.node)
        .map(|n| n.address)
        .context("this node is not configured")?;

    std::fs::create_dir_all(&opts.run_dir)
        .with_context(|| format!("creating {}", opts.run_dir.display()))?;
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&opts.run_dir, std::fs::Permissions::from_mode(0o700));
    }
    let sock = hablock_config::cli::blockd_socket(&opts.run_dir);
    if std::os::unix::net::UnixStream::connect(&sock).is_ok() {
        bail!(
            "another blockd is running with run directory {}",
            opts.run_dir.display()
        );
    }

    let (events, _) = broadcast::channel(1024);
    let mut inboxes = BTreeMap::new();
    for (name, r) in &cfg.resources {
        let md = MdStore::open(&r.backing, &md_location(r)).with_context(|| {
            format!("resource {name}: opening the metadata of {} (did you run `blockctl create-md {name}`?)", r.backing.display())
        })?;
        let backing = io::Backing::open(&r.backing)
            .with_context(|| format!("resource {name}: opening {}", r.backing.display()))?;
        let sb = md.superblock().clone();
        let bitmap = md
            .load_bitmap()
            .with_context(|| format!("resource {name}: reading the bitmap"))?;
        let state = PersistedState {
            uuids: sb.uuids,
            disk: sb.disk,
            primary: sb.flags & FLAG_PRIMARY != 0,
            primary_since_ms: sb.primary_since_ms,
        };
        let ecfg = EngineConfig {
            resource: name.clone(),
            node: opts.node.clone(),
            peer: peer_name.clone(),
            usable_bytes: md.usable_bytes(),
            policy: policy_of(r),
            resync_rate_bps: r.resync_rate,
            ping_interval_ms: r.ping_interval.as_millis() as u64,
            peer_timeout_ms: r.peer_timeout.as_millis() as u64,
            al_extents: r.al_extents as usize,
        };
        let engine = Engine::new(ecfg, state, bitmap, md.al_extents(), rand::random());
        let (tx, rx) = mpsc::channel(8192);
        let (want_tx, want_rx) = watch::channel(false);
        let link = peer::LinkConfig {
            resource: name.clone(),
            node: opts.node.clone(),
            peer: peer_name.clone(),
            secret: secret.clone(),
            local: SocketAddr::new(my_addr, r.port),
            remote: SocketAddr::new(peer_addr, r.port),
            connect_interval: r.connect_interval,
        };
        let span = tracing::info_span!("resource", resource = %name, peer = %peer_name);
        tokio::spawn(peer::run_link(link, tx.clone(), want_rx).instrument(span.clone()));
        let ublk = match r.ublk_id {
            Some(id) => Some(resource::UblkConfig {
                id,
                queues: r.ublk_queues,
                depth: r.ublk_depth,
                recover: find_left_device(name, id).await,
            }),
            None => None,
        };
        let local_reads = Arc::new(LocalReads::new(engine.size_bytes()));
        let task = ResourceTask {
            name: name.clone(),
            engine,
            md,
            backing,
            backing_path: r.backing.clone(),
            md_location: md_location(r),
            ublk,
            nbd_socket: r.nbd_socket.clone(),
            events: events.clone(),
            want_link: want_tx,
            rx,
            tx: tx.clone(),
            started: std::time::Instant::now(),
            local_reads,
        };
        info!(resource = %name, peer = %peer_name, backing = %r.backing.display(), "resource up");
        tokio::spawn(task.run().instrument(span));
        inboxes.insert(name.clone(), tx);
    }

    let reloader = Arc::new(reload::Reloader::new(
        opts.config.clone(),
        opts.node.clone(),
        cfg.clone(),
        inboxes.clone(),
    ));
    let listener = control::bind(&sock).with_context(|| format!("creating {}", sock.display()))?;
    tokio::spawn(control::serve(
        listener,
        control::ControlState {
            resources: inboxes.clone(),
            events,
            reloader: reloader.clone(),
        },
    ));
    tokio::spawn(reload_on_sighup(reloader));
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
    let mut watchdog_usec = 0;
    if sd_notify::watchdog_enabled(false, &mut watchdog_usec) {
        tokio::spawn(ping_watchdog(
            std::time::Duration::from_micros(watchdog_usec),
            inboxes.clone(),
        ));
    }
    info!(node = %opts.node, socket = %sock.display(), "blockd ready");

    wait_for_signal().await;
    info!("stopping");
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
    for (name, tx) in &inboxes {
        let (done, rx) = oneshot::channel();
        if tx.send(ResourceMsg::Shutdown { done }).await.is_ok() && rx.await.is_err() {
            warn!(resource = %name, "resource task ended without confirming shutdown");
        }
    }
    let _ = std::fs::remove_file(&sock);
    Ok(())
}

/// Whether a crashed blockd left ublk device `id` waiting for a new server (then it is
/// re-attached); a leftover in any other state is deleted.
async fn find_left_device(resource: &str, id: u32) -> bool {
    let found = tokio::task::spawn_blocking(move || ublk::probe(id))
        .await
        .unwrap_or(ublk::Existing::None);
    match found {
        ublk::Existing::None => false,
        ublk::Existing::Recoverable => {
            info!(
                resource,
                ublk = id,
                "found /dev/ublkb{id} left by a crashed blockd, its I/O held: re-attaching"
            );
            true
        }
        ublk::Existing::Other(state) => {
            warn!(
                resource,
                ublk = id,
                state,
                "deleting a leftover /dev/ublkb{id}"
            );
            let _ = tokio::task::spawn_blocking(move || ublk::delete(id)).await;
            false
        }
    }
}

/// Pings systemd's watchdog at half its interval, but only while every resource task
/// answers a status request: a stuck resource gets blockd restarted (and its ublk
/// device re-attached) instead of hanging its I/O forever.
async fn ping_watchdog(
    interval: std::time::Duration,
    resources: BTreeMap<String, mpsc::Sender<ResourceMsg>>,
) {
    let period = interval / 2;
    loop {
        tokio::time::sleep(period).await;
        let mut healthy = true;
        for (name, tx) in &resources {
            let (reply, rx) = oneshot::channel();
            let answered = tx.send(ResourceMsg::Status { reply }).await.is_ok()
                && matches!(tokio::time::timeout(period, rx).await, Ok(Ok(_)));
            if !answered {
                warn!(resource = %name, "resource task does not answer: not pinging the watchdog");
                healthy = false;
            }
        }
        if healthy {
            let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Watchdog]);
        }
    }
}

/// Reloads the configuration on each SIGHUP (the outcome goes to the log).
async fn reload_on_sighup(reloader: Arc<reload::Reloader>) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            warn!("cannot watch SIGHUP, reload with `blockctl reload` only: {e}");
            return;
        }
    };
    while hup.recv().await.is_some() {
        info!("SIGHUP: reloading the configuration");
        reloader.reload().await;
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
