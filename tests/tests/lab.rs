//! The two-VM lab driven from Rust (`HABLOCK_LAB=1`, set by `scripts/test`): power loss
//! of the Primary while this test writes numbered blocks through `/dev/ublkb0`; each
//! write is acknowledged when its `dd ... conv=fsync` returns. After the slave takes
//! over, every acknowledged block is there.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use hablock_tests::lab::{self, Lab};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn wait_for(lab: &Lab, node: &str, pattern: &str, secs: u64) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if let Ok((0, out)) = lab.exec(node, "blockctl status --json r0") {
            if out.contains(pattern) {
                return;
            }
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    panic!("timed out waiting for {pattern} on {node}");
}

#[test]
fn power_loss_of_the_primary_keeps_every_acknowledged_block() {
    if !lab::enabled() {
        eprintln!("lab tests need QEMU and minutes: run with HABLOCK_LAB=1 (scripts/test does)");
        return;
    }
    let lab = Arc::new(Lab::up().expect("lab up"));
    for node in ["master", "slave"] {
        lab.ok(node, "blockctl create-md --force r0 >/dev/null && (blockd >/tmp/blockd.log 2>&1 &); sleep 0.5")
            .unwrap();
    }
    wait_for(&lab, "master", "\"connection\": \"Connected\"", 30);
    lab.ok(
        "master",
        "blockctl primary --force r0 2>/dev/null && [ -b /dev/ublkb0 ]",
    )
    .unwrap();
    wait_for(&lab, "master", "\"peer_disk\": \"UpToDate\"", 120);

    // Numbered 4 KiB blocks, one acknowledged write each.
    let acked = Arc::new(AtomicUsize::new(0));
    let writer = {
        let (lab, acked) = (lab.clone(), acked.clone());
        std::thread::spawn(move || {
            for i in 0..10_000usize {
                let cmd = format!(
                    "printf 'hablock block {i:06}' | dd of=/dev/ublkb0 bs=4096 seek={i} conv=sync,fsync oflag=direct 2>/dev/null"
                );
                match lab.exec("master", &cmd) {
                    Ok((0, _)) => acked.store(i + 1, Ordering::SeqCst),
                    _ => return,
                }
            }
        })
    };
    std::thread::sleep(Duration::from_secs(6));
    lab.kill("master").unwrap();
    writer.join().unwrap();
    let n = acked.load(Ordering::SeqCst);
    assert!(n > 5, "only {n} writes acknowledged before the power loss");

    wait_for(&lab, "slave", "\"connection\": \"Connecting\"", 30);
    lab.ok(
        "slave",
        "blockctl primary --force r0 2>/dev/null && [ -b /dev/ublkb0 ]",
    )
    .unwrap();
    let out = lab
        .ok(
            "slave",
            &format!("dd if=/dev/ublkb0 bs=4096 count={n} iflag=direct 2>/dev/null | tr '\\0' '\\n' | grep '^hablock block'"),
        )
        .unwrap();
    let found: Vec<&str> = out.lines().collect();
    for i in 0..n {
        let want = format!("hablock block {i:06}");
        assert!(
            found.iter().any(|l| *l == want),
            "acknowledged block {i} of {n} is not on the slave"
        );
    }
    eprintln!("power loss: all {n} acknowledged blocks on the slave");
}
