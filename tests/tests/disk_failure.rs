//! A failing backing device under a running pair (DRBD's `on-io-error detach`): the
//! master's backing file lives on a small tmpfs that the test fills ([`FailingDisk`]),
//! so every write to a hole of the (sparse) file fails with `ENOSPC`, a real error from
//! the kernel. Real daemons, real NBD clients (qemu-io, fio with verify).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use hablock_tests::{
    metric, prometheus_samples, qemu_io, require_tool, FailingDisk, Pair, PairOptions, NODES,
};
use std::path::Path;
use std::process::Command;

const MASTER: &str = NODES[0];
const SLAVE: &str = NODES[1];

/// fio writes `size` bytes at `offset` through `uri` and reads them back verified; its
/// state files go to `dir`.
fn fio_verify(dir: &Path, uri: &str, offset: &str, size: &str) -> String {
    require_tool("fio");
    let out = Command::new("fio")
        .current_dir(dir)
        .args([
            "--name=hablock",
            "--ioengine=nbd",
            &format!("--uri={uri}"),
            "--rw=randwrite",
            "--bs=16k",
            "--iodepth=8",
            &format!("--offset={offset}"),
            &format!("--size={size}"),
            "--verify=crc32c",
            "--do_verify=1",
            "--randrepeat=1",
        ])
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "fio failed: {text}");
    assert!(!text.contains("verify: bad"), "{text}");
    text
}

/// The master's disk fails under load: it detaches, goes on serving its export
/// through the slave (writes and reads, verified by fio), a switchover keeps every
/// byte, and a replaced disk, attached to the running blockd, is resynced in full.
#[test]
fn a_primary_whose_disk_fails_serves_through_the_peer_until_the_disk_is_replaced() {
    let mut p = Pair::new(PairOptions::default()).unwrap();
    // The master's backing: a sparse file on a tmpfs with room for its metadata only.
    let disk = FailingDisk::under(
        &p.backing(MASTER),
        &p.dir.path().join("master-disk"),
        64 << 20,
    )
    .unwrap();
    for n in NODES {
        p.blockctl_ok(n, &["create-md", "r0"]).unwrap();
        p.start(n).unwrap();
    }
    p.wait_for(MASTER, "connected", |s| s["connection"] == "Connected")
        .unwrap();
    p.blockctl_ok(MASTER, &["primary", "--force", "r0"])
        .unwrap();
    p.wait_for(SLAVE, "initial sync", |s| s["disk"] == "UpToDate")
        .unwrap();
    let uri = p.nbd_uri(MASTER);
    qemu_io(&uri, &["write -P 0xa1 0 4M", "flush"]).unwrap();

    disk.fail().unwrap();
    // This write fails on the master's disk: it completes from the slave's copy.
    qemu_io(&uri, &["write -P 0xb7 8M 4M", "flush"]).unwrap();
    let s = p
        .wait_for(MASTER, "the detach", |s| s["disk"] == "Diskless")
        .unwrap();
    assert_eq!(s["role"], "Primary");
    assert_eq!(s["connection"], "Connected");
    assert_eq!(s["peer_disk"], "UpToDate");
    assert_eq!(s["detach_reason"], "local write failed (errno 28)");
    let human = p.blockctl_ok(MASTER, &["status"]).unwrap();
    assert!(
        human.contains("disk detached: local write failed (errno 28)"),
        "{human}"
    );
    assert!(
        p.tail(MASTER).contains("the disk is detached"),
        "{}",
        p.tail(MASTER)
    );
    let t = p
        .wait_for(SLAVE, "the peer's detach", |s| s["peer_disk"] == "Diskless")
        .unwrap();
    assert!(t["out_of_sync_bytes"].as_u64().unwrap() >= 4 << 20, "{t}");
    // Reads come from the slave now: the data of before and after the failure.
    qemu_io(&uri, &["read -P 0xa1 0 4M", "read -P 0xb7 8M 4M"]).unwrap();
    fio_verify(p.dir.path(), &uri, "16M", "16M");
    let samples = prometheus_samples(&p.blockctl_ok(MASTER, &["metrics"]).unwrap()).unwrap();
    let state =
        |name, value| metric(&samples, name, &[("resource", "r0"), ("state", value)]).unwrap();
    assert_eq!(state("hablock_block_disk_state", "Diskless"), 1.0);
    assert_eq!(state("hablock_block_peer_disk_state", "UpToDate"), 1.0);
    // The slave's file has what the master acknowledged.
    let slave_img = std::fs::read(p.backing(SLAVE)).unwrap();
    assert!(slave_img[8 << 20..12 << 20].iter().all(|&b| b == 0xb7));
    // Verify needs two copies; the detached node cannot be promoted again.
    assert_eq!(
        p.blockctl(MASTER, &["verify", "r0"]).unwrap().status.code(),
        Some(1)
    );

    // Switchover to the slave: every byte is there.
    p.blockctl_ok(MASTER, &["secondary", "r0"]).unwrap();
    assert_eq!(
        p.blockctl(MASTER, &["primary", "r0"])
            .unwrap()
            .status
            .code(),
        Some(1)
    );
    p.blockctl_ok(SLAVE, &["primary", "r0"]).unwrap();
    qemu_io(
        &p.nbd_uri(SLAVE),
        &["read -P 0xa1 0 4M", "read -P 0xb7 8M 4M"],
    )
    .unwrap();
    fio_verify(p.dir.path(), &p.nbd_uri(SLAVE), "40M", "8M");

    // Attaching the disk that still fails: the resync onto it fails and detaches it
    // again; the Primary is not disturbed.
    p.blockctl_ok(MASTER, &["attach", "r0"]).unwrap();
    p.wait_for(MASTER, "the failing disk detached again", |s| {
        s["disk"] == "Diskless" && s["connection"] == "Connected"
    })
    .unwrap();
    qemu_io(&p.nbd_uri(SLAVE), &["read -P 0xb7 8M 4M"]).unwrap();
    // The disk is replaced under the running blockd: new metadata, `blockctl attach`,
    // a full resync.
    drop(disk);
    std::fs::remove_file(p.backing(MASTER)).unwrap();
    std::fs::File::create(p.backing(MASTER))
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    p.blockctl_ok(MASTER, &["create-md", "--force", "r0"])
        .unwrap();
    p.blockctl_ok(MASTER, &["attach", "r0"]).unwrap();
    let s = p
        .wait_for(MASTER, "the resync to the new disk", |s| {
            s["disk"] == "UpToDate" && s["connection"] == "Connected"
        })
        .unwrap();
    assert!(s["detach_reason"].is_null(), "{s}");
    p.blockctl_ok(SLAVE, &["verify", "--wait", "r0"]).unwrap();
    assert_eq!(
        p.status(SLAVE).unwrap()["last_verify"]["out_of_sync_bytes"],
        0
    );
}

/// `blockctl detach` and `attach` on the Secondary while fio writes through the
/// Primary: the writes go on (marked for the Secondary), the same disk attached again
/// is resynced in full, and both copies end identical.
#[test]
fn the_operator_detaches_and_attaches_the_secondary_disk_under_load() {
    let p = Pair::synced(PairOptions::default()).unwrap();
    let uri = p.nbd_uri(MASTER);
    qemu_io(&uri, &["write -P 0x3c 0 8M", "flush"]).unwrap();
    // No new metadata under a blockd that uses the disk.
    let out = p.blockctl(SLAVE, &["create-md", "--force", "r0"]).unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("detach"));
    p.blockctl_ok(SLAVE, &["detach", "r0"]).unwrap();
    let s = p.status(SLAVE).unwrap();
    assert_eq!(s["disk"], "Diskless");
    assert_eq!(s["detach_reason"], "detached by the operator");
    let human = p.blockctl_ok(SLAVE, &["status"]).unwrap();
    assert!(
        human.contains("disk detached: detached by the operator\n"),
        "a Secondary serves no I/O: {human}"
    );
    p.wait_for(MASTER, "the peer's detach", |s| {
        s["peer_disk"] == "Diskless"
    })
    .unwrap();
    // A Primary whose peer is Diskless keeps its own disk.
    assert_eq!(
        p.blockctl(MASTER, &["detach", "r0"]).unwrap().status.code(),
        Some(1)
    );
    fio_verify(p.dir.path(), &uri, "16M", "16M");
    assert!(
        p.status(MASTER).unwrap()["out_of_sync_bytes"]
            .as_u64()
            .unwrap()
            > 0
    );
    p.blockctl_ok(SLAVE, &["attach", "r0"]).unwrap();
    p.wait_for(MASTER, "the resync of the attached disk", |s| {
        s["peer_disk"] == "UpToDate" && s["out_of_sync_bytes"] == 0
    })
    .unwrap();
    p.blockctl_ok(MASTER, &["verify", "--wait", "r0"]).unwrap();
    assert_eq!(
        p.status(MASTER).unwrap()["last_verify"]["out_of_sync_bytes"],
        0
    );
    qemu_io(&uri, &["read -P 0x3c 0 8M"]).unwrap();
}

/// The Primary's disk is replaced without moving its export: detached, a new disk full
/// of garbage with fresh metadata, `blockctl attach` on the Primary. The slave resyncs
/// it while the export serves reads (the data never comes from the half-copied disk)
/// and writes verified by fio; at the end both copies are identical.
#[test]
fn a_primary_attaches_a_replaced_disk_and_serves_its_export_while_it_is_resynced() {
    let p = Pair::synced(PairOptions {
        resync_rate: "8MiB".into(),
        ..PairOptions::default()
    })
    .unwrap();
    let uri = p.nbd_uri(MASTER);
    qemu_io(&uri, &["write -P 0x5e 0 16M", "flush"]).unwrap();
    p.blockctl_ok(MASTER, &["detach", "r0"]).unwrap();
    qemu_io(&uri, &["write -P 0x6f 16M 4M", "flush"]).unwrap();
    // Without an UpToDate peer connected, the Primary cannot attach.
    let out = p.blockctl(MASTER, &["disconnect", "r0"]).unwrap();
    assert!(out.status.success(), "{out:?}");
    let out = p.blockctl(MASTER, &["attach", "r0"]).unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no UpToDate copy"),
        "{out:?}"
    );
    p.blockctl_ok(MASTER, &["connect", "r0"]).unwrap();
    p.wait_for(MASTER, "the reconnection", |s| {
        s["connection"] == "Connected" && s["peer_disk"] == "UpToDate"
    })
    .unwrap();

    // The new disk: garbage everywhere, then fresh metadata.
    std::fs::remove_file(p.backing(MASTER)).unwrap();
    std::fs::write(p.backing(MASTER), vec![0x99; 64 << 20]).unwrap();
    p.blockctl_ok(MASTER, &["create-md", "--force", "r0"])
        .unwrap();
    let out = p.blockctl(MASTER, &["attach", "r0"]).unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("serves the reads"),
        "{out:?}"
    );
    let s = p.status(MASTER).unwrap();
    assert_eq!(s["role"], "Primary");
    assert_eq!(s["disk"], "Inconsistent");
    assert_eq!(s["connection"], "SyncTarget");
    assert!(s["detach_reason"].is_null(), "{s}");
    // While the resync runs (8 MiB/s, 64 MiB): reads and verified writes.
    qemu_io(&uri, &["read -P 0x5e 0 16M", "read -P 0x6f 16M 4M"]).unwrap();
    fio_verify(p.dir.path(), &uri, "24M", "16M");
    assert_eq!(p.status(MASTER).unwrap()["connection"], "SyncTarget");
    p.wait_for(MASTER, "the resync of the attached disk", |s| {
        s["disk"] == "UpToDate" && s["connection"] == "Connected"
    })
    .unwrap();
    assert!(p
        .wait_for(SLAVE, "the end of the resync", |s| s["out_of_sync_bytes"]
            == 0)
        .is_ok());
    p.blockctl_ok(MASTER, &["verify", "--wait", "r0"]).unwrap();
    assert_eq!(
        p.status(MASTER).unwrap()["last_verify"]["out_of_sync_bytes"],
        0
    );
    let img = std::fs::read(p.backing(MASTER)).unwrap();
    assert!(img[..16 << 20].iter().all(|&b| b == 0x5e));
    assert!(img[16 << 20..20 << 20].iter().all(|&b| b == 0x6f));
    qemu_io(&uri, &["read -P 0x5e 0 16M", "read -P 0x6f 16M 4M"]).unwrap();
}
