//! `clusterctl`: the admin tool of clusterd.
//!
//! Exit codes: 0 ok, 1 refused (one line on stderr), 2 bad usage or configuration.

use clap::{Parser, Subcommand};
use hablock_config::cli::{clusterd_socket as control_socket, CommonOptions};
use hablock_proto::control::{self, ClusterRequest, ClusterResponse, ClusterStatus};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

/// Administer hablock's cluster manager.
#[derive(Debug, Parser)]
#[command(name = "clusterctl", version, about)]
struct Args {
    #[command(flatten)]
    common: CommonOptions,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Show the nodes, links, groups and the last failover.
    Status {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Put a node in standby: it gives its groups away (default: this node).
    Standby {
        /// Node name.
        node: Option<String>,
    },
    /// Take a node out of standby and forget group failures on it (default: this node).
    Online {
        /// Node name.
        node: Option<String>,
    },
    /// Run a group on a node.
    Move {
        /// Group name.
        group: String,
        /// Node name.
        node: String,
    },
    /// Make clusterd read its configuration file again: it applies the [heartbeat]
    /// timings, auto_failback and fence, and refuses (changing nothing) a file that
    /// changes anything else, naming what needs a restart.
    Reload,
    /// Check the configuration and what it asks of this host (the secret, heartbeat
    /// addresses, fence command, each group's mount point, filesystem support, VIP
    /// interface, service program or unit) without changing anything; safe while
    /// clusterd runs. Exit 1 if a problem is found.
    Check,
    /// Print the cluster's status as this node sees it as Prometheus metrics (text
    /// format 0.0.4), for node_exporter's textfile collector or a scraper.
    Metrics,
    /// Print the shell completion script (bash, zsh, fish, elvish, powershell).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Follow the cluster's events.
    Events {
        /// Print JSON, one object per line.
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

/// Prints `text` on stdout (see [`hablock_config::cli::print_out`]).
fn out(text: &str) -> Result<(), Failure> {
    hablock_config::cli::print_out(text).map_err(|e| refused(format!("writing the output: {e}")))
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("clusterctl: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}

struct Conn {
    stream: UnixStream,
    buf: Vec<u8>,
}

impl Conn {
    fn open(path: &Path) -> Result<Conn, Failure> {
        let stream = UnixStream::connect(path).map_err(|e| {
            refused(format!(
                "cannot reach clusterd at {}: {e} (is clusterd running?)",
                path.display()
            ))
        })?;
        Ok(Conn {
            stream,
            buf: Vec::new(),
        })
    }

    fn send(&mut self, req: &ClusterRequest) -> Result<(), Failure> {
        self.stream
            .write_all(&control::encode_cluster_request(req))
            .map_err(|e| refused(format!("control socket: {e}")))
    }

    fn recv(&mut self) -> Result<ClusterResponse, Failure> {
        loop {
            match control::decode_cluster_response(&self.buf) {
                Ok(Some((r, used))) => {
                    self.buf.drain(..used);
                    return Ok(r);
                }
                Ok(None) => {}
                Err(e) => return Err(refused(format!("bad reply from clusterd: {e}"))),
            }
            let mut chunk = [0u8; 8192];
            let n = self
                .stream
                .read(&mut chunk)
                .map_err(|e| refused(format!("control socket: {e}")))?;
            if n == 0 {
                return Err(refused("clusterd closed the connection"));
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

fn check(common: &CommonOptions) -> Result<(), Failure> {
    let (report, failed) =
        hablock_config::check::run(common, clusterd::check::check).map_err(usage)?;
    out(&report)?;
    failed.map_or(Ok(()), |m| Err(refused(m)))
}

fn run(args: Args) -> Result<(), Failure> {
    let sock = control_socket(&args.common.run_dir);
    let req = match args.cmd {
        Cmd::Status { json } => return status(&sock, json),
        Cmd::Events { json } => return events(&sock, json),
        Cmd::Check => return check(&args.common),
        Cmd::Completions { shell } => {
            hablock_config::cli::print_completions::<Args>(shell, "clusterctl");
            return Ok(());
        }
        Cmd::Metrics => return out(&clusterd::metrics::render(&fetch_status(&sock)?)),
        Cmd::Standby { node } => ClusterRequest::Standby { node },
        Cmd::Online { node } => ClusterRequest::Online { node },
        Cmd::Move { group, node } => ClusterRequest::Move { group, node },
        Cmd::Reload => ClusterRequest::Reload,
    };
    let mut c = Conn::open(&sock)?;
    c.stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(|e| refused(format!("control socket: {e}")))?;
    c.send(&req)?;
    expect_ok(c.recv()?)
}

fn expect_ok(r: ClusterResponse) -> Result<(), Failure> {
    match r {
        ClusterResponse::Reloaded { config, changes } => out(&hablock_config::reload::report(
            &config, &changes, "clusterd",
        )),
        ClusterResponse::Ok { warnings } => {
            for w in warnings {
                eprintln!("clusterctl: warning: {w}");
            }
            Ok(())
        }
        ClusterResponse::Refused { message } => Err(refused(message)),
        ClusterResponse::BadRequest { message } => Err(usage(message)),
        other => Err(refused(format!("unexpected reply {other:?}"))),
    }
}

/// clusterd's status, or the failure its answer means.
fn fetch_status(sock: &Path) -> Result<ClusterStatus, Failure> {
    let mut c = Conn::open(sock)?;
    c.stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| refused(format!("control socket: {e}")))?;
    c.send(&ClusterRequest::Status)?;
    match c.recv()? {
        ClusterResponse::Status(s) => Ok(s),
        other => expect_ok(other).and_then(|()| Err(refused("no status from clusterd"))),
    }
}

fn status(sock: &Path, json: bool) -> Result<(), Failure> {
    let st = fetch_status(sock)?;
    if json {
        let text = serde_json::to_string_pretty(&st)
            .map_err(|e| refused(format!("encoding the status: {e}")))?;
        out(&format!("{text}\n"))?;
    } else {
        out(&render(&st))?;
    }
    Ok(())
}

fn render(st: &ClusterStatus) -> String {
    use std::fmt::Write as _;
    let mut o = String::new();
    for n in &st.nodes {
        let me = if n.name == st.node {
            " (this node)"
        } else {
            ""
        };
        let state = if n.alive {
            "alive".to_string()
        } else if n.alive_via_replication {
            "NO HEARTBEATS, alive via replication".to_string()
        } else {
            n.liveness.to_uppercase()
        };
        let standby = if n.standby { ", standby" } else { "" };
        let ping = if n.ping_ok { "" } else { ", no ping target" };
        let _ = writeln!(o, "node {}{me}: {state}{standby}{ping}", n.name);
        if n.name != st.node {
            for (i, l) in n.links.iter().enumerate() {
                let seen = l
                    .last_seen_ms
                    .map(|ms| format!("{ms} ms ago"))
                    .unwrap_or_else(|| "never".into());
                let _ = writeln!(
                    o,
                    "  link {i} {:<16} {:<7} last heard {seen}",
                    l.address, l.state
                );
            }
        }
    }
    for g in &st.groups {
        let holder = g.holder.as_deref().unwrap_or("nobody");
        let _ = writeln!(
            o,
            "group {}: held by {holder}; here {} ({} — {})",
            g.name, g.state, g.verdict, g.reason
        );
        for r in &g.resources {
            let failing = if r.check_failing {
                " CHECK FAILING"
            } else {
                ""
            };
            let _ = writeln!(o, "  {:<10} {:<9} {}{failing}", r.kind, r.state, r.name);
        }
    }
    match &st.last_failover {
        Some(f) => {
            let _ = writeln!(
                o,
                "last failover: {} -> {} ({}): detected in {} ms, started in {} ms",
                f.from, f.to, f.group, f.detect_ms, f.start_ms
            );
        }
        None => {
            let _ = writeln!(o, "last failover: none");
        }
    }
    for w in &st.warnings {
        let _ = writeln!(o, "WARNING: {w}");
    }
    o
}

fn events(sock: &Path, json: bool) -> Result<(), Failure> {
    let mut c = Conn::open(sock)?;
    c.send(&ClusterRequest::Events)?;
    loop {
        match c.recv()? {
            ClusterResponse::Event(ev) => {
                if json {
                    match serde_json::to_string(&ev) {
                        Ok(t) => out(&format!("{t}\n"))?,
                        Err(e) => return Err(refused(format!("encoding an event: {e}"))),
                    }
                } else {
                    let group = ev
                        .group
                        .as_deref()
                        .map(|g| format!(" [{g}]"))
                        .unwrap_or_default();
                    out(&format!(
                        "{} {} {}{group}: {}\n",
                        ev.time_ms, ev.node, ev.kind, ev.message
                    ))?;
                }
            }
            other => return expect_ok(other),
        }
    }
}
