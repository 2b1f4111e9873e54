//! Harness for hablock's end-to-end tests on the host: two real `blockd` processes on
//! loopback addresses with real backing files, driven through their NBD exports by
//! real clients (`qemu-io`, `fio`, `nbdinfo`), killed with SIGKILL and restarted.
//!
//! Every pair lives in its own temporary directory with its own ports; processes are
//! killed and files removed when the [`Pair`] is dropped, also when a test fails (and
//! then the daemons' logs are printed).

#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod lab;
pub mod netns;

use anyhow::{bail, Context, Result};
use serde_json::Value;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

/// The two node names (the lab's).
pub const NODES: [&str; 2] = ["master", "slave"];

/// Where the hablock binaries are: `$HABLOCK_BIN_DIR`, or the cargo target directory
/// this test binary runs from.
pub fn bin(name: &str) -> PathBuf {
    let dir = match std::env::var_os("HABLOCK_BIN_DIR") {
        Some(d) => PathBuf::from(d),
        None => {
            let exe = std::env::current_exe().expect("current exe");
            // target/<profile>/deps/<test> -> target/<profile>
            exe.parent()
                .and_then(Path::parent)
                .expect("target dir")
                .to_path_buf()
        }
    };
    let p = dir.join(name);
    assert!(
        p.exists(),
        "{} is missing: build the binaries first (`cargo build --workspace --bins`) or set HABLOCK_BIN_DIR",
        p.display()
    );
    p
}

/// Fails loudly when a client program the tests rely on is missing.
pub fn require_tool(name: &str) {
    let ok = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {name}"))
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        ok,
        "{name} is not installed: run scripts/setup (the test cannot run without it)"
    );
}

static NEXT_PAIR: AtomicU16 = AtomicU16::new(0);

/// Loopback addresses and a port no other pair uses: each pair gets its own
/// `127.A.B.1` / `127.A.B.2` (A from the process id, B a counter) and a port the
/// kernel picked, so concurrent test runs never reach each other's daemons.
fn pair_addresses() -> (String, String, u16) {
    let a = (std::process::id() % 250) as u16 + 1;
    let b = NEXT_PAIR.fetch_add(1, Ordering::SeqCst) % 250 + 1;
    let master = format!("127.{a}.{b}.1");
    let slave = format!("127.{a}.{b}.2");
    loop {
        let port = std::net::TcpListener::bind((slave.as_str(), 0))
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap_or(0);
        if port != 0 && port < 60000 && std::net::TcpListener::bind((master.as_str(), port)).is_ok()
        {
            return (master, slave, port);
        }
    }
}

/// Settings of a test pair.
#[derive(Debug, Clone)]
pub struct PairOptions {
    /// Backing file size.
    pub size_bytes: u64,
    /// `after_sb_0pri`.
    pub after_sb_0pri: String,
    /// `after_sb_1pri`.
    pub after_sb_1pri: String,
    /// `resync_rate`.
    pub resync_rate: String,
    /// Extra lines appended to `[resources.r0]`.
    pub extra: String,
    /// The slave's backing size, when it differs from `size_bytes`.
    pub slave_size_bytes: Option<u64>,
    /// Metadata in a file of its own (`<node>.md`) instead of at the backing's end.
    pub external_metadata: bool,
}

impl Default for PairOptions {
    fn default() -> Self {
        PairOptions {
            size_bytes: 64 << 20,
            after_sb_0pri: "disconnect".into(),
            after_sb_1pri: "disconnect".into(),
            resync_rate: "1GiB".into(),
            extra: String::new(),
            slave_size_bytes: None,
            external_metadata: false,
        }
    }
}

/// Two blockd nodes on this host.
pub struct Pair {
    /// The temporary directory.
    pub dir: tempfile::TempDir,
    /// The config file.
    pub config: PathBuf,
    /// The replication port.
    pub port: u16,
    /// The slave's address (it listens; the master dials).
    pub slave_addr: String,
    procs: [Option<Child>; 2],
}

fn idx(node: &str) -> usize {
    if node == NODES[0] {
        0
    } else {
        1
    }
}

impl Pair {
    /// Writes the config, the secret and the backing files; starts nothing.
    pub fn new(opts: PairOptions) -> Result<Pair> {
        let dir = tempfile::Builder::new()
            .prefix("hablock-test-")
            .tempdir_in("/var/tmp")?;
        let (master_addr, slave_addr, port) = pair_addresses();
        let secret = dir.path().join("secret");
        let random: u64 = fs::read("/proc/sys/kernel/random/uuid")
            .map(|b| {
                b.iter()
                    .fold(0u64, |h, x| h.wrapping_mul(31).wrapping_add(u64::from(*x)))
            })
            .unwrap_or(0);
        fs::write(
            &secret,
            format!("test-secret-{random:x}-{}\n", std::process::id()),
        )?;
        fs::set_permissions(&secret, fs::Permissions::from_mode(0o600))?;
        for n in NODES {
            let f = fs::File::create(dir.path().join(format!("{n}.img")))?;
            let size = if n == NODES[1] {
                opts.slave_size_bytes.unwrap_or(opts.size_bytes)
            } else {
                opts.size_bytes
            };
            f.set_len(size)?;
            fs::create_dir_all(dir.path().join(format!("run-{n}")))?;
        }
        let d = dir.path().display();
        let config = dir.path().join("hablock.toml");
        let text = format!(
            r#"[cluster]
name = "test"
secret_file = "{d}/secret"

[nodes.master]
address = "{master_addr}"
heartbeat = ["{master_addr}"]

[nodes.slave]
address = "{slave_addr}"
heartbeat = ["{slave_addr}"]

[heartbeat]
port = {hb}
keepalive = "500ms"
warntime = "2s"
deadtime = "3s"
initdead = "10s"
auto_failback = true

[resources.r0]
port = {port}
backing = "{d}/{{node}}.img"
metadata = "{md}"
protocol = "C"
nbd_socket = "{d}/run-{{node}}/r0.nbd"
resync_rate = "{rate}"
verify_alg = "crc32c"
after_sb_0pri = "{p0}"
after_sb_1pri = "{p1}"
after_sb_2pri = "disconnect"
peer_timeout = "5s"
{extra}
"#,
            hb = port + 1000,
            rate = opts.resync_rate,
            p0 = opts.after_sb_0pri,
            p1 = opts.after_sb_1pri,
            extra = opts.extra,
            md = if opts.external_metadata {
                format!("{d}/{{node}}.md")
            } else {
                "internal".to_string()
            },
        );
        fs::write(&config, text)?;
        Ok(Pair {
            dir,
            config,
            port,
            slave_addr,
            procs: [None, None],
        })
    }

    /// A pair with metadata created on both nodes, both daemons started and connected.
    pub fn started(opts: PairOptions) -> Result<Pair> {
        let mut p = Pair::new(opts)?;
        for n in NODES {
            p.blockctl_ok(n, &["create-md", "r0"])?;
        }
        for n in NODES {
            p.start(n)?;
        }
        p.wait_for(NODES[0], "connected", |s| s["connection"] == "Connected")?;
        Ok(p)
    }

    /// A started pair where master was forced Primary and the initial sync finished.
    pub fn synced(opts: PairOptions) -> Result<Pair> {
        let p = Pair::started(opts)?;
        p.blockctl_ok(NODES[0], &["primary", "--force", "r0"])?;
        p.wait_for(NODES[0], "initial sync", |s| {
            s["connection"] == "Connected" && s["peer_disk"] == "UpToDate"
        })?;
        p.wait_for(NODES[1], "initial sync on the peer", |s| {
            s["disk"] == "UpToDate"
        })?;
        Ok(p)
    }

    /// The run directory of a node.
    pub fn run_dir(&self, node: &str) -> PathBuf {
        self.dir.path().join(format!("run-{node}"))
    }

    /// The NBD URI of a node's export.
    pub fn nbd_uri(&self, node: &str) -> String {
        format!(
            "nbd+unix:///r0?socket={}/r0.nbd",
            self.run_dir(node).display()
        )
    }

    /// A node's backing file.
    pub fn backing(&self, node: &str) -> PathBuf {
        self.dir.path().join(format!("{node}.img"))
    }

    /// A node's daemon log.
    pub fn log(&self, node: &str) -> PathBuf {
        self.dir.path().join(format!("{node}.log"))
    }

    /// Starts a node's blockd and waits for its control socket.
    pub fn start(&mut self, node: &str) -> Result<()> {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log(node))?;
        let child = self
            .command("blockd", node)
            .env("RUST_LOG", "info")
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("spawning blockd")?;
        self.procs[idx(node)] = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.blockctl(node, &["status", "--json"])?.status.success() {
                return Ok(());
            }
            if let Some(c) = self.procs[idx(node)].as_mut() {
                if let Some(st) = c.try_wait()? {
                    bail!("blockd on {node} exited with {st}: {}", self.tail(node));
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("blockd on {node} did not come up: {}", self.tail(node))
    }

    /// The pid of a node's blockd.
    pub fn pid(&self, node: &str) -> Option<i32> {
        self.procs[idx(node)].as_ref().map(|c| c.id() as i32)
    }

    /// SIGKILLs a node's blockd (a crash at an arbitrary instant).
    pub fn kill9(&mut self, node: &str) {
        if let Some(mut c) = self.procs[idx(node)].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stops a node's blockd with SIGTERM and waits for it.
    pub fn stop(&mut self, node: &str) -> Result<()> {
        if let Some(mut c) = self.procs[idx(node)].take() {
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            )?;
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if c.try_wait()?.is_some() {
                    return Ok(());
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            bail!("blockd on {node} did not stop on SIGTERM");
        }
        Ok(())
    }

    /// A hablock program (`blockd`, `blockctl`) with this pair's `--config`, `--node`
    /// and `--run-dir` for `node`.
    pub fn command(&self, program: &str, node: &str) -> Command {
        let mut c = Command::new(bin(program));
        c.arg("--config")
            .arg(&self.config)
            .arg("--node")
            .arg(node)
            .arg("--run-dir")
            .arg(self.run_dir(node));
        c
    }

    /// Runs blockctl against a node.
    pub fn blockctl(&self, node: &str, args: &[&str]) -> Result<Output> {
        self.command("blockctl", node)
            .args(args)
            .output()
            .context("running blockctl")
    }

    /// Runs blockctl and fails unless it exits 0.
    pub fn blockctl_ok(&self, node: &str, args: &[&str]) -> Result<String> {
        let out = self.blockctl(node, args)?;
        if !out.status.success() {
            bail!(
                "blockctl {} on {node} failed ({}): {}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `status --json` of resource r0 on a node.
    pub fn status(&self, node: &str) -> Result<Value> {
        let text = self.blockctl_ok(node, &["status", "--json", "r0"])?;
        let v: Value = serde_json::from_str(&text)?;
        Ok(v["resources"][0].clone())
    }

    /// Waits (up to 60 s) until `pred` holds on a node's status.
    pub fn wait_for(&self, node: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Result<Value> {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut last = Value::Null;
        while Instant::now() < deadline {
            if let Ok(s) = self.status(node) {
                if pred(&s) {
                    return Ok(s);
                }
                last = s;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!("timed out waiting for {what} on {node}; last status: {last}")
    }

    /// The last lines of a node's log.
    pub fn tail(&self, node: &str) -> String {
        let text = fs::read_to_string(self.log(node)).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(60)..].join("\n")
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        for n in NODES {
            self.kill9(n);
        }
        if std::thread::panicking() {
            for n in NODES {
                eprintln!("----- blockd log of {n} -----\n{}", self.tail(n));
            }
            if std::env::var_os("HABLOCK_KEEP_FAILED").is_some() {
                if let Ok(empty) = tempfile::tempdir() {
                    let kept = std::mem::replace(&mut self.dir, empty).keep();
                    eprintln!("kept {}", kept.display());
                }
            }
        }
    }
}

/// One sample of a Prometheus text: metric name, labels, value.
pub type MetricSample = (String, std::collections::BTreeMap<String, String>, f64);

/// Parses Prometheus text with the reference parser (Debian's python3-prometheus-client,
/// run by the system Python): every sample, or an error if the parser rejects the text.
pub fn prometheus_samples(text: &str) -> Result<Vec<MetricSample>> {
    const PARSE: &str = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
out = []
for family in text_string_to_metric_families(sys.stdin.read()):
    for s in family.samples:
        out.append([s.name, s.labels, s.value if s.value == s.value else None])
print(json.dumps(out))
"#;
    let mut child = Command::new("/usr/bin/python3")
        .args(["-c", PARSE])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running /usr/bin/python3 (scripts/setup installs python3-prometheus-client)")?;
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().context("python's stdin")?;
        stdin.write_all(text.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "the Prometheus parser rejected the text: {}\n{text}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let parsed: Vec<(
        String,
        std::collections::BTreeMap<String, String>,
        Option<f64>,
    )> = serde_json::from_slice(&out.stdout).context("the parser's output")?;
    Ok(parsed
        .into_iter()
        .map(|(n, l, v)| (n, l, v.unwrap_or(f64::NAN)))
        .collect())
}

/// The value of the sample `name` whose labels include `labels`; fails if there is none.
pub fn metric(samples: &[MetricSample], name: &str, labels: &[(&str, &str)]) -> Result<f64> {
    samples
        .iter()
        .find(|(n, l, _)| {
            n == name
                && labels
                    .iter()
                    .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.2)
        .with_context(|| format!("no sample {name}{labels:?}"))
}

/// Runs a program, returning its output; fails with its stderr unless it exits 0.
pub fn run_ok(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}{}",
            out.status,
            stdout,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(stdout)
}

/// `qemu-io` commands against an NBD URI; fails on a non-zero exit or a pattern error.
pub fn qemu_io(uri: &str, cmds: &[&str]) -> Result<String> {
    require_tool("qemu-io");
    let mut c = Command::new("qemu-io");
    c.args(["-f", "raw"]);
    for cmd in cmds {
        c.args(["-c", cmd]);
    }
    c.arg(uri);
    let out = run_ok(&mut c)?;
    if out.contains("Pattern verification failed") || out.contains("failed:") {
        bail!("qemu-io reported a failure: {out}");
    }
    Ok(out)
}

/// A node's backing file on a small tmpfs of its own, to make the disk fail on demand:
/// the file is sparse, so once the filesystem is full ([`FailingDisk::fail`]) every
/// write into a hole fails with `ENOSPC`, a real error from the kernel (this host has
/// no device-mapper for `error`/`flakey` targets). A symlink stays at the backing's
/// path. Lazily unmounted when dropped, also when a test fails.
pub struct FailingDisk {
    dir: PathBuf,
}

impl FailingDisk {
    /// Mounts a tmpfs at `dir` and replaces the file at `backing` with a sparse one of
    /// `size` bytes on it; the tmpfs has room for the metadata blockd writes.
    pub fn under(backing: &Path, dir: &Path, size: u64) -> Result<FailingDisk> {
        fs::create_dir_all(dir)?;
        run_ok(
            Command::new("mount")
                .args(["-t", "tmpfs", "-o"])
                .arg(format!("size={}", size + (4 << 20)))
                .arg("hablock-test-disk")
                .arg(dir),
        )?;
        let disk = FailingDisk {
            dir: dir.to_path_buf(),
        };
        let img = dir.join("backing.img");
        fs::File::create(&img)?.set_len(size)?;
        if backing.exists() || backing.is_symlink() {
            fs::remove_file(backing)?;
        }
        std::os::unix::fs::symlink(&img, backing)?;
        Ok(disk)
    }

    /// Fills the filesystem: from now on a write that needs a new page fails.
    pub fn fail(&self) -> Result<()> {
        use std::io::Write;
        let mut f = fs::File::create(self.dir.join("fill"))?;
        let chunk = vec![0x5au8; 1 << 20];
        loop {
            if let Err(e) = f.write_all(&chunk) {
                if e.raw_os_error() == Some(libc::ENOSPC) {
                    return Ok(());
                }
                return Err(e.into());
            }
        }
    }
}

impl Drop for FailingDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}

/// Replaces `from` by `to` in the file at `path` (an operator's edit of a config file);
/// fails the test if `from` is not there.
pub fn edit_file(path: &Path, from: &str, to: &str) {
    let text = fs::read_to_string(path).unwrap_or_default();
    assert!(text.contains(from), "no {from:?} in {}", path.display());
    if let Err(e) = fs::write(path, text.replace(from, to)) {
        panic!("writing {}: {e}", path.display());
    }
}

/// A client process the test started, in a process group of its own: the whole group
/// is killed once the process has exited and when the test ends, also on failure, so
/// that nothing it forked outlives the test (a fio job process whose server died can
/// spin for ever after fio itself has exited).
pub struct ClientProcess(Child);

impl ClientProcess {
    /// Starts `cmd` in a new process group.
    pub fn spawn(cmd: &mut Command) -> Result<ClientProcess> {
        use std::os::unix::process::CommandExt;
        let program = cmd.get_program().to_string_lossy().into_owned();
        let child = cmd
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {program}"))?;
        Ok(ClientProcess(child))
    }

    /// Waits up to `limit` for the process to exit, else kills it; then kills what is
    /// left of its group. Its exit status.
    pub fn wait_at_most(&mut self, limit: Duration) -> Result<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        let status = loop {
            if let Some(status) = self.0.try_wait()? {
                break status;
            }
            if Instant::now() >= deadline {
                let _ = self.0.kill();
                break self.0.wait()?;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        self.kill_group();
        Ok(status)
    }

    fn kill_group(&self) {
        let group = nix::unistd::Pid::from_raw(self.0.id() as i32);
        let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
    }
}

impl Drop for ClientProcess {
    fn drop(&mut self) {
        self.kill_group();
        let _ = self.0.wait();
    }
}

/// The first `max` bytes of a file (for logs that may be huge).
pub fn head(path: &Path, max: usize) -> String {
    use std::io::Read;
    let mut buf = Vec::new();
    if let Ok(f) = fs::File::open(path) {
        let _ = f.take(max as u64).read_to_end(&mut buf);
    }
    String::from_utf8_lossy(&buf).into_owned()
}

/// A minimal NBD client (fixed newstyle, `NBD_OPT_GO`, simple replies) that knows
/// exactly which writes the server acknowledged: the reference for crash tests.
pub mod nbd_client {
    use anyhow::{bail, Context, Result};
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;
    use std::path::Path;

    /// A connected client.
    pub struct NbdClient {
        stream: UnixStream,
        /// Export size.
        pub size: u64,
    }

    fn be32(b: &[u8]) -> u32 {
        u32::from_be_bytes([b[0], b[1], b[2], b[3]])
    }

    impl NbdClient {
        /// Connects and selects `export`.
        pub fn connect(socket: &Path, export: &str) -> Result<NbdClient> {
            let mut s = UnixStream::connect(socket)
                .with_context(|| format!("connecting {}", socket.display()))?;
            let mut hello = [0u8; 18];
            s.read_exact(&mut hello)?;
            if &hello[0..8] != b"NBDMAGIC" || &hello[8..16] != b"IHAVEOPT" {
                bail!("not an NBD server");
            }
            s.write_all(&3u32.to_be_bytes())?; // fixed newstyle, no zeroes
            let mut opt = b"IHAVEOPT".to_vec();
            opt.extend_from_slice(&7u32.to_be_bytes()); // GO
            opt.extend_from_slice(&((4 + export.len() + 2) as u32).to_be_bytes());
            opt.extend_from_slice(&(export.len() as u32).to_be_bytes());
            opt.extend_from_slice(export.as_bytes());
            opt.extend_from_slice(&0u16.to_be_bytes());
            s.write_all(&opt)?;
            let mut size = 0;
            loop {
                let mut h = [0u8; 20];
                s.read_exact(&mut h)?;
                let (rep, len) = (be32(&h[12..16]), be32(&h[16..20]) as usize);
                let mut data = vec![0u8; len];
                s.read_exact(&mut data)?;
                match rep {
                    1 => break,
                    3 if data.len() >= 10 && data[0..2] == [0, 0] => {
                        size = u64::from_be_bytes(data[2..10].try_into()?);
                    }
                    3 => {}
                    other => bail!(
                        "NBD_OPT_GO refused ({other:#x}): {}",
                        String::from_utf8_lossy(&data)
                    ),
                }
            }
            Ok(NbdClient { stream: s, size })
        }

        fn request(
            &mut self,
            kind: u16,
            cookie: u64,
            offset: u64,
            len: u32,
            data: &[u8],
        ) -> Result<()> {
            let mut r = Vec::with_capacity(28 + data.len());
            r.extend_from_slice(&0x2560_9513u32.to_be_bytes());
            r.extend_from_slice(&0u16.to_be_bytes());
            r.extend_from_slice(&kind.to_be_bytes());
            r.extend_from_slice(&cookie.to_be_bytes());
            r.extend_from_slice(&offset.to_be_bytes());
            r.extend_from_slice(&len.to_be_bytes());
            r.extend_from_slice(data);
            self.stream.write_all(&r)?;
            Ok(())
        }

        fn reply(&mut self) -> Result<(u64, u32)> {
            let mut h = [0u8; 16];
            self.stream.read_exact(&mut h)?;
            if be32(&h[0..4]) != 0x6744_6698 {
                bail!("bad reply magic");
            }
            Ok((u64::from_be_bytes(h[8..16].try_into()?), be32(&h[4..8])))
        }

        /// Reads a range.
        pub fn read(&mut self, offset: u64, len: u32) -> Result<Vec<u8>> {
            self.request(0, 1, offset, len, &[])?;
            let (_, err) = self.reply()?;
            if err != 0 {
                bail!("read error {err}");
            }
            let mut data = vec![0u8; len as usize];
            self.stream.read_exact(&mut data)?;
            Ok(data)
        }

        /// Writes `blocks` (offset, data) keeping `depth` in flight; returns the
        /// offsets whose write the server acknowledged, until the connection breaks.
        pub fn write_pipelined(&mut self, blocks: &[(u64, Vec<u8>)], depth: usize) -> Vec<usize> {
            let mut acked = Vec::new();
            let mut next = 0;
            let mut inflight = 0;
            loop {
                while inflight < depth && next < blocks.len() {
                    let (off, data) = &blocks[next];
                    if self
                        .request(1, next as u64, *off, data.len() as u32, data)
                        .is_err()
                    {
                        return acked;
                    }
                    next += 1;
                    inflight += 1;
                }
                if inflight == 0 {
                    return acked;
                }
                match self.reply() {
                    Ok((cookie, 0)) => {
                        acked.push(cookie as usize);
                        inflight -= 1;
                    }
                    Ok((_, _)) => inflight -= 1,
                    Err(_) => return acked,
                }
            }
        }
    }
}
