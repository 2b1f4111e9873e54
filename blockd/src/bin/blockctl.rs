//! `blockctl`: the admin tool of blockd.
//!
//! Exit codes: 0 ok, 1 refused (one line on stderr), 2 bad usage or configuration.

use blockd::client::{Client, ClientError};
use clap::{Parser, Subcommand};
use hablock_config::cli::blockd_socket as control_socket;
use hablock_config::cli::CommonOptions;
use hablock_config::format_size;
use hablock_proto::control::{Request, ResourceStatus, Response};
use hablock_proto::types::{ConnState, DiskState, Role};
use std::process::ExitCode;
use std::time::Duration;

/// Administer hablock's replicated block devices.
#[derive(Debug, Parser)]
#[command(name = "blockctl", version, about)]
struct Args {
    #[command(flatten)]
    common: CommonOptions,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Write fresh metadata on a resource's backing device (blockd must not serve it).
    CreateMd {
        /// Resource name.
        resource: String,
        /// Overwrite a filesystem or existing metadata.
        #[arg(long)]
        force: bool,
    },
    /// Show the state of one resource or all.
    Status {
        /// Resource name.
        resource: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Promote to Primary.
    Primary {
        /// Resource name.
        resource: String,
        /// Promote even with the peer unknown or the data Inconsistent.
        #[arg(long)]
        force: bool,
    },
    /// Demote to Secondary.
    Secondary {
        /// Resource name.
        resource: String,
    },
    /// Connect to the peer (leave StandAlone).
    Connect {
        /// Resource name.
        resource: String,
        /// Resolve a split brain by discarding this node's changes.
        #[arg(long)]
        discard_my_data: bool,
    },
    /// Disconnect from the peer and stay StandAlone.
    Disconnect {
        /// Resource name.
        resource: String,
    },
    /// Compare both copies online; differences are marked for the next resync.
    Verify {
        /// Resource name.
        resource: String,
        /// Wait for the end, with a progress bar.
        #[arg(long)]
        wait: bool,
    },
    /// Mark all local data out of sync and resync it from the peer.
    Invalidate {
        /// Resource name.
        resource: String,
    },
    /// Stop using the local disk (before pulling it): the peer serves the I/O, as after
    /// an I/O error. Refused on a Primary whose peer has no UpToDate copy.
    Detach {
        /// Resource name.
        resource: String,
    },
    /// Use the local disk again after a detach (on a new disk, run `create-md --force`
    /// first): it is resynced in full from the peer. On a Primary (its device in use),
    /// the peer's UpToDate copy serves the reads of what is not copied yet.
    Attach {
        /// Resource name.
        resource: String,
    },
    /// Make blockd read its configuration file again: it applies each resource's
    /// `resync_rate` and `after_sb_*` policies, and refuses (changing nothing) a file
    /// that changes anything else, naming what needs a restart.
    Reload,
    /// Check the configuration and what it asks of this host (the secret, the
    /// replication address, each resource's backing device, metadata and ublk driver)
    /// without changing anything; safe while blockd runs. Exit 1 if a problem is found.
    Check,
    /// Print every resource's status as Prometheus metrics (text format 0.0.4), for
    /// node_exporter's textfile collector or a scraper.
    Metrics,
    /// Print the shell completion script (bash, zsh, fish, elvish, powershell).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print state changes as they happen.
    Events {
        /// Print JSON lines.
        #[arg(long)]
        json: bool,
    },
}

/// A failure with its exit code.
struct Failure {
    code: u8,
    message: String,
}

fn refused(message: impl Into<String>) -> Failure {
    Failure {
        code: 1,
        message: message.into(),
    }
}

fn usage(message: impl Into<String>) -> Failure {
    Failure {
        code: 2,
        message: message.into(),
    }
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Self {
        refused(e.to_string())
    }
}

/// Prints `text` on stdout (see [`hablock_config::cli::print_out`]).
fn out(text: &str) -> Result<(), Failure> {
    hablock_config::cli::print_out(text).map_err(|e| refused(format!("writing the output: {e}")))
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("blockctl: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}

fn run(args: Args) -> Result<(), Failure> {
    let sock = control_socket(&args.common.run_dir);
    let simple = |req: Request| -> Result<(), Failure> {
        let mut c = Client::connect(&sock)?;
        expect_ok(c.call(&req)?)
    };
    match args.cmd {
        Cmd::CreateMd { resource, force } => create_md(&args.common, &resource, force),
        Cmd::Status { resource, json } => status(&sock, resource, json),
        Cmd::Primary { resource, force } => simple(Request::Primary { resource, force }),
        Cmd::Secondary { resource } => simple(Request::Secondary { resource }),
        Cmd::Connect {
            resource,
            discard_my_data,
        } => simple(Request::Connect {
            resource,
            discard_my_data,
        }),
        Cmd::Disconnect { resource } => simple(Request::Disconnect { resource }),
        Cmd::Invalidate { resource } => simple(Request::Invalidate { resource }),
        Cmd::Detach { resource } => simple(Request::Detach { resource }),
        Cmd::Attach { resource } => simple(Request::Attach { resource }),
        Cmd::Verify { resource, wait } => verify(&sock, resource, wait),
        Cmd::Events { json } => events(&sock, json),
        Cmd::Reload => reload(&sock),
        Cmd::Check => check(&args.common),
        Cmd::Completions { shell } => {
            hablock_config::cli::print_completions::<Args>(shell, "blockctl");
            Ok(())
        }
        Cmd::Metrics => out(&blockd::metrics::render(&fetch_status(&sock, None)?)),
    }
}

fn check(common: &CommonOptions) -> Result<(), Failure> {
    let (report, failed) =
        hablock_config::check::run(common, blockd::check::check).map_err(usage)?;
    out(&report)?;
    failed.map_or(Ok(()), |m| Err(refused(m)))
}

fn reload(sock: &std::path::Path) -> Result<(), Failure> {
    let mut c = Client::connect(sock)?;
    match c.call(&Request::Reload)? {
        Response::Reloaded { config, changes } => {
            out(&hablock_config::reload::report(&config, &changes, "blockd"))
        }
        other => expect_ok(other),
    }
}

fn expect_ok(r: Response) -> Result<(), Failure> {
    match r {
        Response::Ok { warnings } => {
            for w in warnings {
                eprintln!("blockctl: warning: {w}");
            }
            Ok(())
        }
        Response::Refused { message } => Err(refused(message)),
        Response::BadRequest { message } => Err(usage(message)),
        other => Err(refused(format!("unexpected reply {other:?}"))),
    }
}

fn create_md(common: &CommonOptions, resource: &str, force: bool) -> Result<(), Failure> {
    let node = common.node().map_err(|e| usage(format!("{e:#}")))?;
    let cfg =
        hablock_config::Config::load(&common.config, &node).map_err(|e| usage(e.to_string()))?;
    let Some(r) = cfg.resources.get(resource) else {
        let known: Vec<&str> = cfg.resources.keys().map(String::as_str).collect();
        return Err(usage(format!(
            "no resource {resource:?} in {} (known: {})",
            common.config.display(),
            known.join(", ")
        )));
    };
    // Never write metadata under a running blockd that uses the disk (a detached one
    // is being replaced: `create-md`, then `attach`).
    if let Ok(mut c) = Client::connect(&control_socket(&common.run_dir)) {
        if let Ok(Response::Status(st)) = c.call(&Request::Status {
            resource: Some(resource.to_string()),
        }) {
            if st.resources.iter().any(|r| r.disk != DiskState::Diskless) {
                return Err(refused(format!(
                    "blockd is serving {resource} on its disk; stop it (or `blockctl detach {resource}`) before create-md"
                )));
            }
        }
    }
    let report =
        blockd::md::create_md(&r.backing, &blockd::daemon::md_location(r), resource, force)
            .map_err(|e| refused(e.to_string()))?;
    out(&format!(
        "{resource}: metadata written ({}); usable size {} bytes ({}), metadata {} bytes\n",
        report.location,
        report.usable_bytes,
        format_size(report.usable_bytes),
        report.md_bytes
    ))?;
    Ok(())
}

fn fetch_status(
    sock: &std::path::Path,
    resource: Option<String>,
) -> Result<Vec<ResourceStatus>, Failure> {
    let mut c = Client::connect(sock)?;
    match c.call(&Request::Status { resource })? {
        Response::Status(st) => Ok(st.resources),
        Response::Refused { message } => Err(refused(message)),
        other => Err(refused(format!("unexpected reply {other:?}"))),
    }
}

fn status(sock: &std::path::Path, resource: Option<String>, json: bool) -> Result<(), Failure> {
    let resources = fetch_status(sock, resource)?;
    if json {
        let report = hablock_proto::control::StatusReport { resources };
        let text = serde_json::to_string_pretty(&report).map_err(|e| refused(e.to_string()))?;
        out(&format!("{text}\n"))?;
        return Ok(());
    }
    out(&resources.iter().map(render_status).collect::<String>())
}

fn render_status(r: &ResourceStatus) -> String {
    let mut s = format!(
        "{name}  {role}/{peer_role}  {conn}  {disk}/{peer_disk}  {size}\n",
        name = r.name,
        role = r.role,
        peer_role = r.peer_role,
        conn = r.connection,
        disk = r.disk,
        peer_disk = r.peer_disk,
        size = format_size(r.size_bytes),
    );
    s += &format!(
        "    node {} peer {}  out-of-sync {}  resynced {}",
        r.node,
        r.peer,
        format_size(r.out_of_sync_bytes),
        format_size(r.resynced_bytes)
    );
    if r.split_brain {
        s += "  SPLIT BRAIN";
    }
    s += "\n";
    if let Some(p) = r.sync_progress {
        s += &format!("    {}: {:.1}%", r.connection, p * 100.0);
        if let Some(rate) = r.sync_rate_bps {
            s += &format!("  {}/s", format_size(rate));
        }
        if let Some(eta) = r.sync_eta_s {
            s += &format!("  eta {eta}s");
        }
        s += "\n";
    }
    if let Some(v) = &r.last_verify {
        s += &format!(
            "    last verify: {} out of sync of {}\n",
            format_size(v.out_of_sync_bytes),
            format_size(v.checked_bytes)
        );
    }
    if let Some(why) = &r.standalone_reason {
        s += &format!("    standalone: {why}\n");
    }
    if let Some(why) = &r.detach_reason {
        let served = if r.role == Role::Primary {
            "; I/O is served by the peer"
        } else {
            ""
        };
        s += &format!("    disk detached: {why}{served}\n");
    }
    if !r.devices.is_empty() {
        s += &format!("    devices: {}\n", r.devices.join(" "));
    }
    let io = &r.statistics;
    s += &format!(
        "    disk read {} written {}  net sent {} received {}  al {} bm {}\n",
        format_size(io.disk_read_bytes),
        format_size(io.disk_written_bytes),
        format_size(io.net_sent_bytes),
        format_size(io.net_received_bytes),
        io.al_writes,
        io.bitmap_writes,
    );
    s += &format!(
        "    pending: app {} peer {} local {}\n",
        io.app_pending, io.peer_pending, io.local_pending
    );
    s
}

fn verify(sock: &std::path::Path, resource: String, wait: bool) -> Result<(), Failure> {
    let before = fetch_status(sock, Some(resource.clone()))?
        .into_iter()
        .next()
        .and_then(|r| r.last_verify);
    let mut c = Client::connect(sock)?;
    expect_ok(c.call(&Request::Verify {
        resource: resource.clone(),
    })?)?;
    if !wait {
        return Ok(());
    }
    let bar = indicatif::ProgressBar::new(1000);
    bar.set_style(
        indicatif::ProgressStyle::with_template("verify {bar:40} {percent:>3}% {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let mut seen_running = false;
    let mut polls = 0u32;
    loop {
        std::thread::sleep(Duration::from_millis(200));
        polls += 1;
        let Some(r) = fetch_status(sock, Some(resource.clone()))?
            .into_iter()
            .next()
        else {
            return Err(refused("resource vanished"));
        };
        let running = matches!(
            r.connection,
            ConnState::VerifySource | ConnState::VerifyTarget
        );
        if running {
            seen_running = true;
            if let Some(p) = r.sync_progress {
                bar.set_position((p * 1000.0) as u64);
            }
        }
        let finished = !running && (seen_running || polls > 10) && r.last_verify != before;
        if finished {
            bar.finish_and_clear();
            let v = r
                .last_verify
                .unwrap_or(hablock_proto::control::VerifyResult {
                    checked_bytes: 0,
                    out_of_sync_bytes: 0,
                });
            out(&format!(
                "{resource}: verify done: {} out of sync ({} bytes)\n",
                format_size(v.out_of_sync_bytes),
                v.out_of_sync_bytes
            ))?;
            if v.out_of_sync_bytes > 0 {
                out(&format!("{resource}: resync them with `blockctl disconnect {resource} && blockctl connect {resource}`\n"))?;
            }
            return Ok(());
        }
        if !running && !matches!(r.connection, ConnState::Connected) {
            bar.finish_and_clear();
            return Err(refused(format!("verify interrupted: {}", r.connection)));
        }
    }
}

fn events(sock: &std::path::Path, json: bool) -> Result<(), Failure> {
    let mut c = Client::connect(sock)?;
    c.send(&Request::Events)?;
    loop {
        match c.recv()? {
            Response::Event(ev) => {
                if json {
                    let line = serde_json::to_string(&ev).map_err(|e| refused(e.to_string()))?;
                    out(&format!("{line}\n"))?;
                } else {
                    let change = match (&ev.old, &ev.new) {
                        (Some(o), Some(n)) => format!("{o} -> {n}"),
                        (None, Some(n)) => n.clone(),
                        _ => String::new(),
                    };
                    out(&format!(
                        "{} {} {} {} {}\n",
                        ev.time_ms,
                        ev.resource,
                        ev.kind,
                        change,
                        ev.message.clone().unwrap_or_default()
                    ))?;
                }
            }
            Response::Refused { message } => return Err(refused(message)),
            _ => {}
        }
    }
}
