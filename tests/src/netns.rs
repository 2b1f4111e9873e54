//! Harness for clusterd's host tests: a two-node cluster in network namespaces.
//!
//! Four namespaces per [`Lab`], with names unique to the test process and the lab
//! (`hbt-<pid>-<n>-{br,a,b,c}`):
//!
//! - `br`: two bridges, `br0` (the public LAN, 10.213.0.0/24) and `br1` (the
//!   replication link, 10.213.1.0/24), and the bridge ends of every veth pair
//!   (`a0`, `a1`, `b0`, `b1`, `c0`);
//! - `a` (master: eth0 10.213.0.151, eth1 10.213.1.2) and `b` (slave: .152, .3), each
//!   running blockd and clusterd with its own run directory;
//! - `c`: the client (eth0 10.213.0.10), which fetches `http://10.213.0.50/` (the VIP).
//!
//! Heartbeat link 0 is the LAN, link 1 the replication link. Dropping the [`Lab`]
//! kills every process it started and every process left in its namespaces, and
//! deletes the namespaces, also when the test fails (then the logs are printed).

use crate::{bin, require_tool, run_ok};
use anyhow::{bail, Context, Result};
use serde_json::Value;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// The two node names.
pub const MASTER: &str = "master";
/// The second node.
pub const SLAVE: &str = "slave";
/// The virtual IP.
pub const VIP: &str = "10.213.0.50";
/// clusterd's heartbeat port in the lab.
pub const HB_PORT: u16 = 694;

static NEXT_LAB: AtomicU32 = AtomicU32::new(0);

/// Settings of a lab.
#[derive(Debug, Clone)]
pub struct LabOptions {
    /// `[heartbeat] auto_failback`.
    pub auto_failback: bool,
    /// The service's `check` (`{dir}` is replaced with the lab directory).
    pub check: String,
    /// `[heartbeat]` timings: keepalive, warntime, deadtime, initdead (`None`: the
    /// keys are left out, so the configuration's defaults apply).
    pub timings: Option<[&'static str; 4]>,
    /// Extra lines for `[heartbeat]` (`{dir}` is replaced with the lab directory).
    pub heartbeat_extra: String,
}

impl Default for LabOptions {
    fn default() -> Self {
        LabOptions {
            auto_failback: true,
            check: format!("http://{VIP}/"),
            timings: Some(["200ms", "600ms", "1s", "2s"]),
            heartbeat_extra: String::new(),
        }
    }
}

/// A running two-node cluster in namespaces. See the module doc.
pub struct Lab {
    /// The temporary directory (config, secret, backing files, run dirs, logs).
    pub dir: tempfile::TempDir,
    /// Namespace name prefix `hbt-<pid>-<n>`.
    pub prefix: String,
    /// The config file.
    pub config: PathBuf,
    procs: Vec<(String, Child)>,
    namespaces: Vec<String>,
}

fn ip(args: &[&str]) -> Result<String> {
    run_ok(Command::new("ip").args(args))
}

impl Lab {
    /// The namespace of `what` (`br`, `c`, or a node name).
    pub fn ns(&self, what: &str) -> String {
        let short = match what {
            MASTER => "a",
            SLAVE => "b",
            other => other,
        };
        format!("{}-{short}", self.prefix)
    }

    /// Creates the namespaces, the network, the config and the backing files.
    pub fn new(opts: LabOptions) -> Result<Lab> {
        require_tool("busybox");
        require_tool("curl");
        let n = NEXT_LAB.fetch_add(1, Ordering::SeqCst);
        let prefix = format!("hbt-{}-{n}", std::process::id());
        let dir = tempfile::Builder::new()
            .prefix("hablock-cluster-")
            .tempdir_in("/var/tmp")?;
        let mut lab = Lab {
            dir,
            prefix,
            config: PathBuf::new(),
            procs: Vec::new(),
            namespaces: Vec::new(),
        };
        for s in ["br", "a", "b", "c"] {
            let name = format!("{}-{s}", lab.prefix);
            ip(&["netns", "add", &name])?;
            lab.namespaces.push(name.clone());
            ip(&["-n", &name, "link", "set", "lo", "up"])?;
        }
        let br = lab.ns("br");
        for b in ["br0", "br1"] {
            ip(&["-n", &br, "link", "add", b, "type", "bridge"])?;
            ip(&["-n", &br, "link", "set", b, "up"])?;
        }
        lab.plug(MASTER)?;
        lab.plug(SLAVE)?;
        let c = lab.ns("c");
        ip(&[
            "-n", &br, "link", "add", "c0", "type", "veth", "peer", "name", "eth0", "netns", &c,
        ])?;
        ip(&["-n", &br, "link", "set", "c0", "master", "br0", "up"])?;
        ip(&["-n", &c, "addr", "add", "10.213.0.10/24", "dev", "eth0"])?;
        ip(&["-n", &c, "link", "set", "eth0", "up"])?;

        let d = lab.dir.path().to_path_buf();
        let secret = d.join("secret");
        fs::write(&secret, format!("lab-secret-{}\n", lab.prefix))?;
        fs::set_permissions(&secret, fs::Permissions::from_mode(0o600))?;
        fs::create_dir_all(d.join("www"))?;
        fs::write(d.join("www/index.html"), "hello from the VIP\n")?;
        for node in [MASTER, SLAVE] {
            fs::File::create(d.join(format!("{node}.img")))?.set_len(32 << 20)?;
            fs::create_dir_all(d.join(format!("run-{node}")))?;
            fs::write(d.join(format!("{node}.ok")), "")?;
        }
        let dd = d.display();
        let timings = match opts.timings {
            Some([keepalive, warntime, deadtime, initdead]) => format!(
                "keepalive = \"{keepalive}\"\nwarntime = \"{warntime}\"\ndeadtime = \"{deadtime}\"\ninitdead = \"{initdead}\""
            ),
            None => String::new(),
        };
        let check = opts.check.replace("{dir}", &dd.to_string());
        let text = format!(
            r#"[cluster]
name = "lab"
secret_file = "{dd}/secret"

[nodes.master]
address = "10.213.1.2"
heartbeat = ["10.213.0.151", "10.213.1.2"]

[nodes.slave]
address = "10.213.1.3"
heartbeat = ["10.213.0.152", "10.213.1.3"]

[heartbeat]
port = {HB_PORT}
{timings}
auto_failback = {fb}
{hb_extra}

[resources.r0]
port = 7789
backing = "{dd}/{{node}}.img"
metadata = "internal"
resync_rate = "1GiB"
after_sb_0pri = "discard-zero-changes"
after_sb_1pri = "discard-secondary"
after_sb_2pri = "disconnect"
ping_interval = "200ms"
peer_timeout = "1s"
connect_interval = "200ms"

[groups.web]
preferred = "master"
resources = [
  {{ type = "block", resource = "r0" }},
  {{ type = "vip", address = "{VIP}/24", interface = "eth0", arp_count = 5, arp_interval = "100ms" }},
  {{ type = "service", exec = "busybox httpd -f -p {VIP}:80 -h {dd}/www", check = "{check}" }},
]
"#,
            fb = opts.auto_failback,
            hb_extra = opts.heartbeat_extra.replace("{dir}", &dd.to_string()),
        );
        lab.config = d.join("hablock.toml");
        fs::write(&lab.config, text)?;
        Ok(lab)
    }

    /// Connects a node's eth0/eth1 to the bridges (again, after [`Lab::unplug`]).
    pub fn plug(&self, node: &str) -> Result<()> {
        let (short, last0, last1) = if node == MASTER {
            ("a", "151", "2")
        } else {
            ("b", "152", "3")
        };
        let (br, ns) = (self.ns("br"), self.ns(node));
        for (i, last) in [(0, last0), (1, last1)] {
            let here = format!("{short}{i}");
            let there = format!("eth{i}");
            ip(&[
                "-n", &br, "link", "add", &here, "type", "veth", "peer", "name", &there, "netns",
                &ns,
            ])?;
            ip(&[
                "-n",
                &br,
                "link",
                "set",
                &here,
                "master",
                &format!("br{i}"),
                "up",
            ])?;
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("10.213.{i}.{last}/24"),
                "dev",
                &there,
            ])?;
            ip(&["-n", &ns, "link", "set", &there, "up"])?;
        }
        Ok(())
    }

    /// Removes a node's veths (its network is gone, as at power loss).
    pub fn unplug(&self, node: &str) -> Result<()> {
        let short = if node == MASTER { "a" } else { "b" };
        for i in 0..2 {
            ip(&["-n", &self.ns("br"), "link", "del", &format!("{short}{i}")])?;
        }
        Ok(())
    }

    /// Sets the bridge end of a node's link `i` down or up (a cut cable).
    pub fn set_link(&self, node: &str, i: usize, up: bool) -> Result<()> {
        let short = if node == MASTER { "a" } else { "b" };
        ip(&[
            "-n",
            &self.ns("br"),
            "link",
            "set",
            &format!("{short}{i}"),
            if up { "up" } else { "down" },
        ])?;
        Ok(())
    }

    /// The run directory of a node.
    pub fn run_dir(&self, node: &str) -> PathBuf {
        self.dir.path().join(format!("run-{node}"))
    }

    /// A node's log of `program`.
    pub fn log(&self, node: &str, program: &str) -> PathBuf {
        self.dir.path().join(format!("{node}-{program}.log"))
    }

    /// A hablock program with this lab's `--config`, `--node` and `--run-dir`, run
    /// outside the namespaces (the tools only use Unix sockets).
    pub fn tool(&self, program: &str, node: &str) -> Command {
        let mut c = Command::new(bin(program));
        c.arg("--config")
            .arg(&self.config)
            .arg("--node")
            .arg(node)
            .arg("--run-dir")
            .arg(self.run_dir(node));
        c
    }

    /// Starts a daemon (`blockd` or `clusterd`) inside the node's namespace.
    pub fn start(&mut self, node: &str, program: &str) -> Result<()> {
        self.start_with_env(node, program, &[])
    }

    /// [`Lab::start`] with extra environment variables.
    pub fn start_with_env(
        &mut self,
        node: &str,
        program: &str,
        env: &[(&str, &str)],
    ) -> Result<()> {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log(node, program))?;
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns(node)])
            .arg(bin(program))
            .arg("--config")
            .arg(&self.config)
            .arg("--node")
            .arg(node)
            .arg("--run-dir")
            .arg(self.run_dir(node))
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {program} on {node}"))?;
        self.procs.push((format!("{node}-{program}"), child));
        let deadline = Instant::now() + Duration::from_secs(10);
        let ctl = if program == "blockd" {
            "blockctl"
        } else {
            "clusterctl"
        };
        while Instant::now() < deadline {
            let st = self.tool(ctl, node).args(["status", "--json"]).output()?;
            if st.status.success() {
                return Ok(());
            }
            let key = format!("{node}-{program}");
            if let Some((_, c)) = self.procs.iter_mut().find(|(k, _)| *k == key) {
                if let Some(st) = c.try_wait()? {
                    bail!(
                        "{program} on {node} exited with {st}: {}",
                        self.tail(node, program)
                    );
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!(
            "{program} on {node} did not come up: {}",
            self.tail(node, program)
        )
    }

    /// The pid of a daemon this lab started.
    pub fn pid(&self, node: &str, program: &str) -> Option<u32> {
        let key = format!("{node}-{program}");
        self.procs
            .iter()
            .rev()
            .find(|(k, _)| *k == key)
            .map(|(_, c)| c.id())
    }

    /// Sends SIGTERM to a daemon and waits up to `timeout` for it to exit; its status.
    pub fn terminate(
        &mut self,
        node: &str,
        program: &str,
        timeout: Duration,
    ) -> Result<std::process::ExitStatus> {
        let key = format!("{node}-{program}");
        let Some(pos) = self.procs.iter().position(|(k, _)| *k == key) else {
            bail!("{program} is not running on {node}");
        };
        let (_, mut c) = self.procs.remove(pos);
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(c.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )?;
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(st) = c.try_wait()? {
                return Ok(st);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = c.kill();
        let _ = c.wait();
        bail!("{program} on {node} did not exit within {timeout:?} of SIGTERM")
    }

    /// SIGKILLs a daemon.
    pub fn kill9(&mut self, node: &str, program: &str) {
        let key = format!("{node}-{program}");
        for (k, c) in &mut self.procs {
            if *k == key {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        self.procs.retain(|(k, _)| *k != key);
    }

    /// SIGKILLs every process in a node's namespace (power loss).
    pub fn kill_all_in(&mut self, node: &str) {
        self.kill9(node, "clusterd");
        self.kill9(node, "blockd");
        kill_ns_pids(&self.ns(node));
    }

    /// Runs a hablock tool against a node.
    pub fn ctl(&self, program: &str, node: &str, args: &[&str]) -> Result<Output> {
        self.tool(program, node)
            .args(args)
            .output()
            .with_context(|| format!("running {program}"))
    }

    /// Runs a hablock tool and fails unless it exits 0.
    pub fn ctl_ok(&self, program: &str, node: &str, args: &[&str]) -> Result<String> {
        let out = self.ctl(program, node, args)?;
        if !out.status.success() {
            bail!(
                "{program} {} on {node} failed ({}): {}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `clusterctl status --json` of a node.
    pub fn status(&self, node: &str) -> Result<Value> {
        Ok(serde_json::from_str(&self.ctl_ok(
            "clusterctl",
            node,
            &["status", "--json"],
        )?)?)
    }

    /// `blockctl status --json r0` of a node (the resource object).
    pub fn block_status(&self, node: &str) -> Result<Value> {
        let v: Value =
            serde_json::from_str(&self.ctl_ok("blockctl", node, &["status", "--json", "r0"])?)?;
        Ok(v["resources"][0].clone())
    }

    /// Waits up to `timeout` until `pred` holds on a node's cluster status.
    pub fn wait_cluster(
        &self,
        node: &str,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Result<Value> {
        let deadline = Instant::now() + timeout;
        let mut last = Value::Null;
        while Instant::now() < deadline {
            if let Ok(s) = self.status(node) {
                if pred(&s) {
                    return Ok(s);
                }
                last = s;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("timed out waiting for {what} on {node}; last status: {last}")
    }

    /// Waits up to `timeout` until `pred` holds on a node's blockd status.
    pub fn wait_block(
        &self,
        node: &str,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Result<Value> {
        let deadline = Instant::now() + timeout;
        let mut last = Value::Null;
        while Instant::now() < deadline {
            if let Ok(s) = self.block_status(node) {
                if pred(&s) {
                    return Ok(s);
                }
                last = s;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("timed out waiting for {what} on {node}; last blockd status: {last}")
    }

    /// Both blockd up with fresh metadata and synced, both Secondary.
    pub fn start_blockd_synced(&mut self) -> Result<()> {
        for n in [MASTER, SLAVE] {
            self.ctl_ok("blockctl", n, &["create-md", "r0"])?;
        }
        for n in [MASTER, SLAVE] {
            self.start(n, "blockd")?;
        }
        self.ctl_ok("blockctl", MASTER, &["primary", "--force", "r0"])?;
        let t = Duration::from_secs(60);
        self.wait_block(MASTER, "initial sync", t, |s| {
            s["connection"] == "Connected" && s["peer_disk"] == "UpToDate"
        })?;
        self.wait_block(SLAVE, "initial sync on the peer", t, |s| {
            s["disk"] == "UpToDate"
        })?;
        self.ctl_ok("blockctl", MASTER, &["secondary", "r0"])?;
        Ok(())
    }

    /// A synced pair with clusterd on both nodes and the group running on `holder`.
    pub fn running(opts: LabOptions, holder: &str) -> Result<Lab> {
        let mut lab = Lab::new(opts)?;
        lab.start_blockd_synced()?;
        lab.start(MASTER, "clusterd")?;
        lab.start(SLAVE, "clusterd")?;
        lab.wait_group(holder, holder, Duration::from_secs(20))?;
        Ok(lab)
    }

    /// Waits until `node` reports the group `web` running and held by `holder`.
    pub fn wait_group(&self, node: &str, holder: &str, timeout: Duration) -> Result<Value> {
        self.wait_cluster(node, &format!("web running on {holder}"), timeout, |s| {
            let g = &s["groups"][0];
            g["holder"] == holder
                && (node != holder || g["state"] == "running")
                && g["resources"].as_array().is_some_and(|r| {
                    r.iter()
                        .all(|r| r["state"] == (if node == holder { "running" } else { "stopped" }))
                })
        })
    }

    /// Runs a command inside a namespace; returns its output.
    pub fn exec(&self, what: &str, args: &[&str]) -> Result<Output> {
        Command::new("ip")
            .args(["netns", "exec", &self.ns(what)])
            .args(args)
            .output()
            .context("ip netns exec")
    }

    /// The client fetches `http://VIP/` (2 s timeout); the body.
    pub fn client_get(&self) -> Result<String> {
        let out = self.exec(
            "c",
            &[
                "curl",
                "-s",
                "-f",
                "--max-time",
                "2",
                &format!("http://{VIP}/"),
            ],
        )?;
        if !out.status.success() {
            bail!(
                "client GET http://{VIP}/ failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// One quick client GET (500 ms timeout): for measuring when the VIP serves again.
    pub fn client_get_quick(&self) -> bool {
        self.exec(
            "c",
            &[
                "curl",
                "-s",
                "-f",
                "--max-time",
                "0.5",
                &format!("http://{VIP}/"),
            ],
        )
        .is_ok_and(|o| o.status.success())
    }

    /// Retries [`Lab::client_get`] until it succeeds or `timeout` passes.
    pub fn client_get_within(&self, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.client_get() {
                Ok(b) => return Ok(b),
                Err(e) if Instant::now() >= deadline => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// The client's neighbour entry for the VIP (`ip neigh show`).
    pub fn client_neigh(&self) -> Result<String> {
        ip(&["-n", &self.ns("c"), "neigh", "show", VIP])
    }

    /// The MAC address of a node's eth0.
    pub fn mac(&self, node: &str) -> Result<String> {
        let out = ip(&["-n", &self.ns(node), "-o", "link", "show", "eth0"])?;
        let mut it = out.split_whitespace();
        while let Some(w) = it.next() {
            if w == "link/ether" {
                if let Some(m) = it.next() {
                    return Ok(m.to_string());
                }
            }
        }
        bail!("no MAC in {out}")
    }

    /// The pid recorded in a node's service pid file (group web, resource 2).
    pub fn service_pid(&self, node: &str) -> Option<i32> {
        let text = fs::read_to_string(self.run_dir(node).join("service-web-2.pid")).ok()?;
        text.split_whitespace().next()?.parse().ok()
    }

    /// Starts a background capture on an interface of the bridge namespace (a bridge
    /// sees only broadcasts and its own traffic; a port sees all of its node's);
    /// stopped on drop or with
    /// [`Capture::finish`].
    pub fn capture(&self, bridge: &str, filter: &[&str], pcap: bool) -> Result<Capture> {
        require_tool("tcpdump");
        let out = self.dir.path().join(format!(
            "capture-{bridge}.{}",
            if pcap { "pcap" } else { "txt" }
        ));
        let mut c = Command::new("ip");
        c.args([
            "netns",
            "exec",
            &self.ns("br"),
            "tcpdump",
            "--immediate-mode",
            "-Z",
            "root",
            "-i",
            bridge,
            "-n",
            "-e",
            "-l",
            "-U",
        ]);
        if pcap {
            c.arg("-w").arg(&out);
        }
        c.args(filter);
        let file = fs::File::create(if pcap {
            self.dir.path().join("tcpdump.log")
        } else {
            out.clone()
        })?;
        let err = fs::File::create(self.dir.path().join(format!("tcpdump-{bridge}.err")))?;
        let child = c.stdout(file).stderr(err).spawn()?;
        // tcpdump says "listening on" once the capture runs.
        let errpath = self.dir.path().join(format!("tcpdump-{bridge}.err"));
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline
            && !fs::read_to_string(&errpath)
                .unwrap_or_default()
                .contains("listening on")
        {
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Capture {
            child: Some(child),
            out,
        })
    }

    /// The last lines of a node's daemon log.
    pub fn tail(&self, node: &str, program: &str) -> String {
        let text = fs::read_to_string(self.log(node, program)).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(80)..].join("\n")
    }

    /// Runs `f` on a new thread inside a namespace (sockets it creates live there).
    pub fn in_ns<T: Send + 'static>(
        &self,
        what: &str,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T> {
        let path = format!("/var/run/netns/{}", self.ns(what));
        let h = std::thread::spawn(move || -> Result<T> {
            let file = fs::File::open(&path).with_context(|| format!("opening {path}"))?;
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                .with_context(|| format!("setns {path}"))?;
            Ok(f())
        });
        match h.join() {
            Ok(r) => r,
            Err(_) => bail!("the namespace thread panicked"),
        }
    }
}

fn kill_ns_pids(ns: &str) {
    if let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() {
        for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            if let Ok(pid) = pid.parse::<i32>() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for (_, c) in &mut self.procs {
            let _ = c.kill();
            let _ = c.wait();
        }
        for ns in &self.namespaces {
            kill_ns_pids(ns);
        }
        if std::thread::panicking() {
            for n in [MASTER, SLAVE] {
                for p in ["blockd", "clusterd"] {
                    eprintln!("----- {p} log of {n} -----\n{}", self.tail(n, p));
                }
            }
            if std::env::var_os("HABLOCK_KEEP_FAILED").is_some() {
                if let Ok(empty) = tempfile::tempdir() {
                    let kept = std::mem::replace(&mut self.dir, empty).keep();
                    eprintln!("kept {}", kept.display());
                }
            }
        }
        std::thread::sleep(Duration::from_millis(50));
        for ns in &self.namespaces {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// A running tcpdump.
pub struct Capture {
    child: Option<Child>,
    /// The capture file (text, or pcap with `-w`).
    pub out: PathBuf,
}

impl Capture {
    /// Stops tcpdump (flushing its output) and returns the capture file's path.
    pub fn finish(&mut self) -> PathBuf {
        if let Some(mut c) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGINT,
            );
            let deadline = Instant::now() + Duration::from_secs(3);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        self.out.clone()
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.finish();
    }
}

/// UDP payloads of a classic pcap file of Ethernet/IPv4 frames.
pub fn pcap_udp_payloads(path: &Path) -> Result<Vec<Vec<u8>>> {
    let b = fs::read(path)?;
    if b.len() < 24 {
        bail!("short pcap");
    }
    let mut out = Vec::new();
    let mut off = 24;
    while off + 16 <= b.len() {
        let caplen = u32::from_le_bytes(b[off + 8..off + 12].try_into()?) as usize;
        let start = off + 16;
        let end = start + caplen;
        if end > b.len() {
            break;
        }
        let f = &b[start..end];
        if f.len() > 14 + 20 + 8 && f[12..14] == [0x08, 0x00] && f[23] == 17 {
            let ihl = usize::from(f[14] & 0x0f) * 4;
            let udp = 14 + ihl;
            if f.len() >= udp + 8 {
                out.push(f[udp + 8..].to_vec());
            }
        }
        off = end;
    }
    Ok(out)
}
