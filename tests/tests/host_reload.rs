//! Reloading blockd's configuration on this host, the way an operator does: edit the
//! file, then `blockctl reload` (what `systemctl reload blockd` runs) or SIGHUP. Real
//! daemons, a real resync whose pace the reload changes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use hablock_tests::{edit_file, Pair, PairOptions, NODES};
use std::time::{Duration, Instant};

const MASTER: &str = NODES[0];

#[test]
fn reload_applies_the_resync_rate_and_policies_and_refuses_what_needs_a_restart() {
    // 64 MiB at 1 MiB/s: the initial sync would take over a minute.
    let p = Pair::started(PairOptions {
        resync_rate: "1MiB".into(),
        ..Default::default()
    })
    .unwrap();
    p.blockctl_ok(MASTER, &["primary", "--force", "r0"])
        .unwrap();
    p.wait_for(MASTER, "resync running", |s| {
        s["connection"] == "SyncSource"
    })
    .unwrap();

    // A new port needs a restart: refused as a whole, the rate stays.
    let (port, moved) = (
        format!("port = {}\n", p.port),
        format!("port = {}\n", p.port + 1),
    );
    edit_file(&p.config, &port, &moved);
    edit_file(
        &p.config,
        "resync_rate = \"1MiB\"",
        "resync_rate = \"1GiB\"",
    );
    let out = p.blockctl(MASTER, &["reload"]).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("resources.r0.port needs a restart of blockd"),
        "{stderr}"
    );
    std::thread::sleep(Duration::from_secs(2));
    let s = p.status(MASTER).unwrap();
    assert_eq!(
        s["connection"], "SyncSource",
        "the refused rate was applied: {s}"
    );

    // The port back, the rate alone, by SIGHUP: the running resync speeds up.
    edit_file(&p.config, &moved, &port);
    let pid = nix::unistd::Pid::from_raw(p.pid(MASTER).unwrap());
    let sent = Instant::now();
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).unwrap();
    p.wait_for(MASTER, "the resync to finish", |s| {
        s["peer_disk"] == "UpToDate"
    })
    .unwrap();
    // At 1 MiB/s what was left would have taken 60 s more.
    assert!(
        sent.elapsed() < Duration::from_secs(30),
        "the resync took {:?} after the reload",
        sent.elapsed()
    );
    let log = std::fs::read_to_string(p.log(MASTER)).unwrap();
    assert!(
        log.contains("configuration reloaded: r0: resync_rate 1.0 MiB/s -> 1024.0 MiB/s"),
        "{}",
        p.tail(MASTER)
    );

    // A policy by `blockctl reload`: it says what changed; the same file again, nothing.
    edit_file(
        &p.config,
        "after_sb_1pri = \"disconnect\"",
        "after_sb_1pri = \"discard-secondary\"",
    );
    let said = p.blockctl_ok(MASTER, &["reload"]).unwrap();
    assert!(
        said.contains("r0: after_sb_1pri disconnect -> discard-secondary"),
        "{said}"
    );
    let said = p.blockctl_ok(MASTER, &["reload"]).unwrap();
    assert!(said.contains("no change for blockd"), "{said}");

    // A file that does not load is refused with its line.
    edit_file(
        &p.config,
        "resync_rate = \"1GiB\"",
        "resync_rate = \"fast\"",
    );
    let out = p.blockctl(MASTER, &["reload"]).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("resync_rate"), "{stderr}");
}
