//! The service agent with real processes: start, probe through the pid file (what a
//! restarted clusterd re-adopts), stop with SIGTERM and, for a process that ignores
//! it, SIGKILL; a command that exits at once fails to start; health checks.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use clusterd::daemon::resources::{check, service, AgentContext};
use std::time::Duration;

fn ctx(dir: &tempfile::TempDir, index: usize) -> AgentContext {
    AgentContext {
        run_dir: dir.path().to_path_buf(),
        group: "g".into(),
        index,
        blockd_timeout: Duration::from_secs(1),
    }
}

#[tokio::test]
async fn start_probe_readopt_and_stop() {
    let dir = tempfile::tempdir().unwrap();
    let c = ctx(&dir, 0);
    let exec = Some("sleep 1000");
    assert!(!service::probe(&c, exec, None).await.unwrap());
    service::start(&c, exec, None).await.unwrap();
    let pid = service::recorded_pid(&c).unwrap();
    assert!(service::probe(&c, exec, None).await.unwrap());
    // Idempotent: a second start keeps the same process.
    service::start(&c, exec, None).await.unwrap();
    assert_eq!(service::recorded_pid(&c), Some(pid));
    // A fresh context (a restarted clusterd) sees the same process.
    assert!(service::probe(&ctx(&dir, 0), exec, None).await.unwrap());
    service::stop(&c, exec, None).await.unwrap();
    assert!(!service::probe(&c, exec, None).await.unwrap());
    assert!(!service::pid_file(&c).exists());
    service::stop(&c, exec, None).await.unwrap();
}

#[tokio::test]
async fn a_process_ignoring_sigterm_is_killed() {
    let dir = tempfile::tempdir().unwrap();
    let c = ctx(&dir, 1);
    let exec = Some("sh -c 'trap \"\" TERM; while :; do sleep 1; done'");
    service::start(&c, exec, None).await.unwrap();
    let t0 = std::time::Instant::now();
    service::stop(&c, exec, None).await.unwrap();
    assert!(t0.elapsed() >= service::STOP_GRACE);
    assert!(!service::probe(&c, exec, None).await.unwrap());
}

#[tokio::test]
async fn a_command_that_exits_at_once_fails_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let c = ctx(&dir, 2);
    assert!(service::start(&c, Some("false"), None).await.is_err());
    assert!(!service::probe(&c, Some("false"), None).await.unwrap());
}

#[tokio::test]
async fn command_and_http_checks() {
    let t = Duration::from_secs(2);
    assert!(check::run("true", t).await);
    assert!(!check::run("exit 3", t).await);
    assert!(!check::run("sleep 5", Duration::from_millis(200)).await);
    // A one-shot HTTP server on loopback.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        use std::io::{Read, Write};
        for reply in ["HTTP/1.0 200 OK\r\n\r\nok", "HTTP/1.0 503 Busy\r\n\r\n"] {
            let (mut s, _) = l.accept().unwrap();
            let mut buf = [0u8; 512];
            let _ = s.read(&mut buf);
            s.write_all(reply.as_bytes()).unwrap();
        }
    });
    assert!(check::run(&format!("http://127.0.0.1:{port}/"), t).await);
    assert!(!check::run(&format!("http://127.0.0.1:{port}/"), t).await);
    server.join().unwrap();
    // Nothing listens there any more.
    assert!(!check::run(&format!("http://127.0.0.1:{port}/"), t).await);
}
