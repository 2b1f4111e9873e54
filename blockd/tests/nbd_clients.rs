//! The NBD server against real, independent clients (`nbdinfo`, `nbdcopy`, `qemu-io`,
//! `fio --ioengine=nbd`) and against hand-made bad input, in-process over a Unix socket
//! in a temporary directory, backed by a 64 MiB in-memory device.
//!
//! A missing client binary fails the test (it does not skip): install `libnbd-bin`,
//! `qemu-utils` and `fio` (scripts/setup).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use blockd::nbd::{proto, serve_listener, NbdBackend};
use bytes::Bytes;
use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

const SIZE: usize = 64 << 20;
const EXPORT: &str = "r0";

/// Counts what the clients actually asked for.
#[derive(Default)]
struct Counts {
    reads: AtomicUsize,
    writes: AtomicUsize,
    fua_writes: AtomicUsize,
    flushes: AtomicUsize,
    trims: AtomicUsize,
    zeroes: AtomicUsize,
}

/// A test-only device: bytes in memory, flush a no-op, trim zeroes.
struct MemBackend {
    data: Mutex<Vec<u8>>,
    counts: Counts,
}

impl MemBackend {
    fn new() -> MemBackend {
        MemBackend {
            data: Mutex::new(vec![0u8; SIZE]),
            counts: Counts::default(),
        }
    }

    fn range(&self, offset: u64, len: u64) -> io::Result<std::ops::Range<usize>> {
        let end = offset
            .checked_add(len)
            .filter(|&e| e <= SIZE as u64)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
        Ok(offset as usize..end as usize)
    }

    fn fill(&self, offset: u64, len: u64) -> io::Result<()> {
        let r = self.range(offset, len)?;
        self.data.lock().unwrap()[r].fill(0);
        Ok(())
    }

    fn snapshot(&self, offset: usize, len: usize) -> Vec<u8> {
        self.data.lock().unwrap()[offset..offset + len].to_vec()
    }
}

impl NbdBackend for MemBackend {
    fn size_bytes(&self) -> u64 {
        SIZE as u64
    }

    async fn read(&self, offset: u64, len: u32) -> io::Result<Bytes> {
        self.counts.reads.fetch_add(1, Ordering::Relaxed);
        let r = self.range(offset, u64::from(len))?;
        Ok(Bytes::copy_from_slice(&self.data.lock().unwrap()[r]))
    }

    async fn write(&self, offset: u64, data: Bytes, fua: bool) -> io::Result<()> {
        self.counts.writes.fetch_add(1, Ordering::Relaxed);
        if fua {
            self.counts.fua_writes.fetch_add(1, Ordering::Relaxed);
        }
        let r = self.range(offset, data.len() as u64)?;
        self.data.lock().unwrap()[r].copy_from_slice(&data);
        Ok(())
    }

    async fn flush(&self) -> io::Result<()> {
        self.counts.flushes.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    async fn trim(&self, offset: u64, len: u64, _fua: bool) -> io::Result<()> {
        self.counts.trims.fetch_add(1, Ordering::Relaxed);
        self.fill(offset, len)
    }

    async fn write_zeroes(&self, offset: u64, len: u64, _fua: bool) -> io::Result<()> {
        self.counts.zeroes.fetch_add(1, Ordering::Relaxed);
        self.fill(offset, len)
    }
}

/// One server on its own runtime, listening in a temporary directory.
struct Server {
    backend: Arc<MemBackend>,
    clients: Arc<AtomicUsize>,
    shutdown: watch::Sender<bool>,
    socket: PathBuf,
    dir: tempfile::TempDir,
    task: Option<tokio::task::JoinHandle<Result<(), blockd::nbd::NbdError>>>,
    rt: tokio::runtime::Runtime,
}

impl Server {
    fn start() -> Server {
        let _ = tracing_subscriber::fmt()
            .with_test_writer()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| "blockd=debug".into()),
            )
            .try_init();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("nbd.sock");
        let backend = Arc::new(MemBackend::new());
        let clients = Arc::new(AtomicUsize::new(0));
        let (shutdown, rx) = watch::channel(false);
        let task = {
            let _guard = rt.enter();
            let listener = tokio::net::UnixListener::bind(&socket).unwrap();
            rt.spawn(serve_listener(
                listener,
                EXPORT.to_string(),
                backend.clone(),
                rx,
                clients.clone(),
            ))
        };
        Server {
            backend,
            clients,
            shutdown,
            socket,
            dir,
            task: Some(task),
            rt,
        }
    }

    fn uri(&self) -> String {
        self.uri_for(EXPORT)
    }

    fn uri_for(&self, export: &str) -> String {
        format!("nbd+unix:///{export}?socket={}", self.socket.display())
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Waits until the live-connection count reaches `n`.
    fn wait_clients(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.clients.load(Ordering::SeqCst) != n {
            assert!(
                Instant::now() < deadline,
                "expected {n} live clients, have {}",
                self.clients.load(Ordering::SeqCst)
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn counts(&self) -> &Counts {
        &self.backend.counts
    }
}

/// Fails (never skips) when a client binary is missing.
fn require_tool(name: &str) {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(name).is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "{name} is not installed (apt-get install -y libnbd-bin qemu-utils fio): \
         this test needs the real client and cannot run without it"
    );
}

/// Runs a client with a time limit and returns its output.
fn run(cmd: &mut Command) -> Output {
    let program = cmd.get_program().to_string_lossy().into_owned();
    require_tool(&program);
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {program}: {e}"));
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!("{program} hung: {}", text(&out));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn text(out: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn run_ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(out.status.success(), "{cmd:?} failed: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// qemu-io with the given commands; asserts success and no failed verification.
fn qemu_io(uri: &str, cmds: &[&str]) -> String {
    let mut c = Command::new("qemu-io");
    c.args(["-f", "raw"]);
    for cmd in cmds {
        c.args(["-c", cmd]);
    }
    c.arg(uri);
    let out = run(&mut c);
    let all = text(&out);
    assert!(out.status.success(), "qemu-io {cmds:?}: {all}");
    assert!(
        !all.contains("Pattern verification failed") && !all.contains("failed:"),
        "qemu-io {cmds:?}: {all}"
    );
    all
}

/// Connects and reads the 18-byte greeting.
fn raw_connect(socket: &Path) -> UnixStream {
    let mut s = UnixStream::connect(socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut greeting = [0u8; 18];
    s.read_exact(&mut greeting).unwrap();
    assert_eq!(greeting.to_vec(), proto::greeting());
    s
}

/// Connects and enters transmission with NBD_OPT_EXPORT_NAME (no zeroes).
fn raw_transmission(socket: &Path) -> UnixStream {
    let mut s = raw_connect(socket);
    s.write_all(&proto::FLAG_C_NO_ZEROES.to_be_bytes()).unwrap();
    let mut opt = proto::IHAVEOPT.to_be_bytes().to_vec();
    opt.extend_from_slice(&proto::opt::EXPORT_NAME.to_be_bytes());
    opt.extend_from_slice(&(EXPORT.len() as u32).to_be_bytes());
    opt.extend_from_slice(EXPORT.as_bytes());
    s.write_all(&opt).unwrap();
    let mut reply = [0u8; 10];
    s.read_exact(&mut reply).unwrap();
    assert_eq!(reply[..8], (SIZE as u64).to_be_bytes());
    assert_eq!(reply[8..], proto::TRANSMISSION_FLAGS.to_be_bytes());
    s
}

fn request(kind: u16, flags: u16, cookie: u64, offset: u64, length: u32) -> Vec<u8> {
    let mut r = proto::REQUEST_MAGIC.to_be_bytes().to_vec();
    r.extend_from_slice(&flags.to_be_bytes());
    r.extend_from_slice(&kind.to_be_bytes());
    r.extend_from_slice(&cookie.to_be_bytes());
    r.extend_from_slice(&offset.to_be_bytes());
    r.extend_from_slice(&length.to_be_bytes());
    r
}

/// Reads one simple reply: (error, cookie).
fn read_reply(s: &mut UnixStream) -> (u32, u64) {
    let mut r = [0u8; 16];
    s.read_exact(&mut r).unwrap();
    assert_eq!(r[..4], proto::SIMPLE_REPLY_MAGIC.to_be_bytes());
    let e = u32::from_be_bytes([r[4], r[5], r[6], r[7]]);
    let mut c = [0u8; 8];
    c.copy_from_slice(&r[8..]);
    (e, u64::from_be_bytes(c))
}

/// The server closes the connection: reads see EOF (or a reset) in time.
fn assert_closed(s: &mut UnixStream) {
    let mut buf = [0u8; 256];
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match s.read(&mut buf) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return,
            Err(e) => panic!("connection not closed by the server: {e}"),
        }
        assert!(Instant::now() < deadline, "connection not closed");
    }
}

/// `nbdinfo --json` sees the export, its size and every capability; `--list` uses
/// NBD_OPT_LIST.
#[test]
fn nbdinfo_shows_the_export() {
    let srv = Server::start();
    let info = run_ok(Command::new("nbdinfo").args(["--json", &srv.uri()]));
    let v: serde_json::Value = serde_json::from_str(&info).unwrap();
    let e = &v["exports"][0];
    assert_eq!(e["export-name"], EXPORT, "{info}");
    assert_eq!(e["export-size"], SIZE as u64, "{info}");
    for cap in [
        "can_flush",
        "can_fua",
        "can_trim",
        "can_zero",
        "can_multi_conn",
    ] {
        assert_eq!(e[cap], true, "{cap}: {info}");
    }
    assert_eq!(e["is_read_only"], false, "{info}");
    assert_eq!(e["block_size_minimum"], 512, "{info}");
    assert_eq!(e["block_size_preferred"], 4096, "{info}");
    assert_eq!(e["block_size_maximum"], 32 << 20, "{info}");
    let list = run_ok(Command::new("nbdinfo").args(["--list", "--json", &srv.uri()]));
    let v: serde_json::Value = serde_json::from_str(&list).unwrap();
    let names: Vec<_> = v["exports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["export-name"].clone())
        .collect();
    assert_eq!(names, [EXPORT], "{list}");
    srv.wait_clients(0);
}

/// qemu-io writes a 1 MiB pattern and reads it back; the bytes are in the backend.
#[test]
fn qemu_io_write_then_read_pattern() {
    let srv = Server::start();
    qemu_io(
        &srv.uri(),
        &[
            "write -P 0xab 0 1M",
            "read -P 0xab 0 1M",
            "read -P 0 1M 64k",
        ],
    );
    // A second connection sees the first one's data.
    qemu_io(&srv.uri(), &["read -P 0xab 512 4k"]);
    assert!(srv.backend.snapshot(0, 1 << 20).iter().all(|&b| b == 0xab));
    assert_eq!(srv.backend.snapshot(1 << 20, 1), [0]);
    assert!(srv.counts().writes.load(Ordering::Relaxed) >= 1);
}

/// Write zeroes (with and without permission to unmap), discard, flush and FUA
/// writes each reach the backend as the matching call.
#[test]
fn qemu_io_zeroes_discard_flush_fua() {
    let srv = Server::start();
    let uri = srv.uri();
    qemu_io(
        &uri,
        &[
            "write -P 0x5a 0 256k",
            "write -z 0 64k",
            "read -P 0 0 64k",
            "read -P 0x5a 64k 64k",
            "write -z -u 64k 64k",
            "read -P 0 64k 64k",
            "discard 128k 64k",
            "read -P 0 128k 64k",
            "read -P 0x5a 192k 64k",
            "flush",
            "write -f -P 0x77 1M 8k",
            "read -P 0x77 1M 8k",
        ],
    );
    let c = srv.counts();
    assert!(c.zeroes.load(Ordering::Relaxed) >= 1, "no WRITE_ZEROES");
    assert!(
        c.zeroes.load(Ordering::Relaxed) + c.trims.load(Ordering::Relaxed) >= 3,
        "zeroes {} trims {}",
        c.zeroes.load(Ordering::Relaxed),
        c.trims.load(Ordering::Relaxed)
    );
    assert!(c.trims.load(Ordering::Relaxed) >= 1, "no TRIM");
    assert!(c.flushes.load(Ordering::Relaxed) >= 1, "no FLUSH");
    assert!(c.fua_writes.load(Ordering::Relaxed) >= 1, "no FUA write");
    assert!(srv
        .backend
        .snapshot(1 << 20, 8192)
        .iter()
        .all(|&b| b == 0x77));
}

/// nbdcopy copies a file into the export and back out unchanged. The file is a
/// multiple of 512 bytes but not of 4096: libnbd refuses (client-side, `request is
/// unaligned`) to send requests below the advertised 512-byte minimum block size.
#[test]
fn nbdcopy_round_trip() {
    let srv = Server::start();
    let src = srv.path("src.bin");
    let data: Vec<u8> = (0..(8u32 << 20) + 7 * 512)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    std::fs::write(&src, &data).unwrap();
    run_ok(Command::new("nbdcopy").arg(&src).arg(srv.uri()));
    assert_eq!(srv.backend.snapshot(0, data.len()), data);
    let dst = srv.path("dst.bin");
    run_ok(Command::new("nbdcopy").arg(srv.uri()).arg(&dst));
    let back = std::fs::read(&dst).unwrap();
    assert_eq!(back.len(), SIZE);
    assert!(
        back[..data.len()] == data[..],
        "nbdcopy read back other bytes"
    );
    assert!(back[data.len()..].iter().all(|&b| b == 0));
    srv.wait_clients(0);
}

/// fio's nbd engine: random 4 KiB writes at queue depth 16, then a verify pass.
#[test]
fn fio_randwrite_verify() {
    let srv = Server::start();
    let log = srv.path("fio.log");
    let out = run(Command::new("fio").current_dir(srv.dir.path()).args([
        "--name=t",
        "--ioengine=nbd",
        &format!("--uri={}", srv.uri()),
        "--rw=randwrite",
        "--bs=4k",
        "--iodepth=16",
        "--size=16M",
        "--verify=crc32c",
        "--do_verify=1",
        "--output-format=json",
        &format!("--output={}", log.display()),
    ]));
    let report = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(out.status.success(), "fio: {}\n{report}", text(&out));
    let v: serde_json::Value = serde_json::from_str(&report).unwrap();
    let job = &v["jobs"][0];
    assert_eq!(job["error"], 0, "{report}");
    assert_eq!(job["write"]["io_bytes"], 16 << 20, "{report}");
    assert_eq!(
        job["read"]["io_bytes"],
        16 << 20,
        "verify must read: {report}"
    );
    assert!(srv.counts().reads.load(Ordering::Relaxed) >= 4096);
}

/// A wrong export name is refused (GO and EXPORT_NAME), and the server keeps serving.
#[test]
fn wrong_export_is_refused_and_server_keeps_serving() {
    let srv = Server::start();
    let out =
        run(Command::new("qemu-io").args(["-f", "raw", "-c", "read 0 4k", &srv.uri_for("nope")]));
    assert!(!out.status.success(), "qemu-io opened a wrong export");
    let out = run(Command::new("nbdinfo").arg(srv.uri_for("nope")));
    assert!(!out.status.success(), "nbdinfo opened a wrong export");
    // The old-style option: the server closes the connection.
    let mut s = raw_connect(&srv.socket);
    s.write_all(&0u32.to_be_bytes()).unwrap();
    let mut opt = proto::IHAVEOPT.to_be_bytes().to_vec();
    opt.extend_from_slice(&proto::opt::EXPORT_NAME.to_be_bytes());
    opt.extend_from_slice(&4u32.to_be_bytes());
    opt.extend_from_slice(b"nope");
    s.write_all(&opt).unwrap();
    assert_closed(&mut s);
    srv.wait_clients(0);
    qemu_io(&srv.uri(), &["write -P 1 0 4k", "read -P 1 0 4k"]);
}

/// Garbage in the handshake or in transmission closes that connection; the next real
/// client works.
#[test]
fn garbage_closes_the_connection_and_server_keeps_serving() {
    let srv = Server::start();
    // Garbage instead of options.
    let mut s = raw_connect(&srv.socket);
    s.write_all(&[0xde; 64]).unwrap();
    assert_closed(&mut s);
    // Not even waiting for the greeting.
    let mut s = UnixStream::connect(&srv.socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    assert_closed(&mut s);
    // An option with a huge length is refused before anything is allocated.
    let mut s = raw_connect(&srv.socket);
    s.write_all(&0u32.to_be_bytes()).unwrap();
    let mut opt = proto::IHAVEOPT.to_be_bytes().to_vec();
    opt.extend_from_slice(&proto::opt::GO.to_be_bytes());
    opt.extend_from_slice(&u32::MAX.to_be_bytes());
    s.write_all(&opt).unwrap();
    assert_closed(&mut s);
    // A bad request magic in transmission.
    let mut s = raw_transmission(&srv.socket);
    s.write_all(&[0x55; 28]).unwrap();
    assert_closed(&mut s);
    srv.wait_clients(0);
    qemu_io(&srv.uri(), &["write -P 2 0 4k", "read -P 2 0 4k"]);
}

/// Out-of-range, oversize and unknown requests get the documented errors; an
/// oversize write drops the connection (its payload cannot be skipped safely).
#[test]
fn request_errors() {
    let srv = Server::start();
    let mut s = raw_transmission(&srv.socket);
    srv.wait_clients(1);
    let size = SIZE as u64;
    // Read past the end.
    s.write_all(&request(0, 0, 1, size - 512, 1024)).unwrap();
    assert_eq!(read_reply(&mut s), (proto::err::EINVAL, 1));
    // Offset overflow.
    s.write_all(&request(0, 0, 2, u64::MAX, 512)).unwrap();
    assert_eq!(read_reply(&mut s), (proto::err::EINVAL, 2));
    // Oversize read.
    s.write_all(&request(0, 0, 3, 0, (32 << 20) + 1)).unwrap();
    assert_eq!(read_reply(&mut s), (proto::err::EINVAL, 3));
    // Write past the end: the payload is consumed, ENOSPC, the connection lives.
    let mut w = request(1, 0, 4, size, 512);
    w.extend_from_slice(&[7u8; 512]);
    s.write_all(&w).unwrap();
    assert_eq!(read_reply(&mut s), (proto::err::ENOSPC, 4));
    // Unknown command.
    s.write_all(&request(42, 0, 5, 0, 0)).unwrap();
    assert_eq!(read_reply(&mut s), (proto::err::EINVAL, 5));
    // Trim past the end.
    s.write_all(&request(4, 0, 6, size - 4096, 8192)).unwrap();
    assert_eq!(read_reply(&mut s), (proto::err::EINVAL, 6));
    // The connection still works: a read at the last sector.
    s.write_all(&request(0, 0, 7, size - 512, 512)).unwrap();
    assert_eq!(read_reply(&mut s), (0, 7));
    let mut data = [1u8; 512];
    s.read_exact(&mut data).unwrap();
    assert_eq!(data, [0u8; 512]);
    // Many requests in flight at once; every cookie answered exactly once.
    let mut batch = Vec::new();
    for i in 0..64u64 {
        batch.extend_from_slice(&request(0, 0, 100 + i, i * 4096, 4096));
    }
    s.write_all(&batch).unwrap();
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..64 {
        let (e, cookie) = read_reply(&mut s);
        assert_eq!(e, 0);
        let mut d = vec![0u8; 4096];
        s.read_exact(&mut d).unwrap();
        assert!(seen.insert(cookie), "cookie {cookie} answered twice");
    }
    assert_eq!(seen.len(), 64);
    // An oversize write: the server drops the connection.
    s.write_all(&request(1, 0, 8, 0, (32 << 20) + 1)).unwrap();
    assert_closed(&mut s);
    srv.wait_clients(0);
    assert_eq!(srv.backend.snapshot(size as usize - 512, 512), [0u8; 512]);
}

/// A client that pipelines large reads without reading the replies is stopped by the
/// per-connection in-flight budget (128 MiB: four 32 MiB reads) instead of making the
/// server buffer everything; once it reads, every request is answered.
#[test]
fn unread_replies_bound_the_reads_in_flight() {
    let srv = Server::start();
    let mut s = raw_transmission(&srv.socket);
    let max = 32u32 << 20;
    let mut batch = Vec::new();
    for i in 0..16u64 {
        batch.extend_from_slice(&request(0, 0, i, 0, max));
    }
    s.write_all(&batch).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while srv.counts().reads.load(Ordering::Relaxed) == 0 {
        assert!(Instant::now() < deadline, "no read started");
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(500));
    let started = srv.counts().reads.load(Ordering::Relaxed);
    assert!(started <= 4, "{started} reads in flight");
    let mut buf = vec![0u8; max as usize];
    for _ in 0..16 {
        assert_eq!(read_reply(&mut s).0, 0);
        s.read_exact(&mut buf).unwrap();
    }
    assert_eq!(srv.counts().reads.load(Ordering::Relaxed), 16);
}

/// Dropping the shutdown sender counts as shutdown: connections close, the listener
/// returns.
#[test]
fn dropped_shutdown_sender_stops_the_server() {
    let mut srv = Server::start();
    let mut a = raw_transmission(&srv.socket);
    let mut b = raw_connect(&srv.socket);
    srv.wait_clients(2);
    let (tx, _) = watch::channel(false);
    drop(std::mem::replace(&mut srv.shutdown, tx));
    let task = srv.task.take().unwrap();
    assert!(srv.rt.block_on(task).unwrap().is_ok());
    assert_closed(&mut a);
    assert_closed(&mut b);
    srv.wait_clients(0);
}

/// `clients` counts live connections; shutdown stops accepting and closes idle
/// connections once their requests are answered.
#[test]
fn client_count_and_shutdown() {
    let mut srv = Server::start();
    let mut a = raw_transmission(&srv.socket);
    let b = raw_transmission(&srv.socket);
    srv.wait_clients(2);
    drop(b);
    srv.wait_clients(1);
    // A clean disconnect.
    a.write_all(&request(2, 0, 9, 0, 0)).unwrap();
    assert_closed(&mut a);
    srv.wait_clients(0);
    let mut c = raw_transmission(&srv.socket);
    srv.wait_clients(1);
    srv.shutdown.send(true).unwrap();
    let task = srv.task.take().unwrap();
    let r = srv.rt.block_on(task).unwrap();
    assert!(r.is_ok(), "{r:?}");
    assert_closed(&mut c);
    srv.wait_clients(0);
    // No longer accepting.
    let refused = match UnixStream::connect(&srv.socket) {
        Err(_) => true,
        Ok(mut s) => {
            s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            let mut g = [0u8; 18];
            s.read_exact(&mut g).is_err()
        }
    };
    assert!(
        refused,
        "the server still greets new clients after shutdown"
    );
}
