//! End-to-end tests of clusterd: two nodes (blockd + clusterd each) and a client in
//! network namespaces joined by bridges; the client fetches a page from the VIP while
//! nodes lose power, links are cut and daemons crash. Root only (CI runs as root).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use hablock_tests::netns::{pcap_udp_payloads, Lab, LabOptions, HB_PORT, MASTER, SLAVE, VIP};
use hablock_tests::{edit_file, metric, prometheus_samples, qemu_io, FailingDisk};
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(20);

fn group(s: &serde_json::Value) -> &serde_json::Value {
    &s["groups"][0]
}

#[test]
fn master_holds_the_group_and_serves_the_vip() {
    let lab = Lab::running(LabOptions::default(), MASTER).unwrap();
    assert_eq!(lab.client_get_within(T).unwrap(), "hello from the VIP\n");
    let s = lab.status(SLAVE).unwrap();
    assert_eq!(group(&s)["holder"], MASTER);
    assert_eq!(s["nodes"][1]["name"], MASTER);
    assert_eq!(s["nodes"][1]["alive"], true);
    let links = s["nodes"][1]["links"].as_array().unwrap();
    assert_eq!(links.len(), 2);
    assert!(links
        .iter()
        .all(|l| l["up"] == true && l["last_seen_ms"].as_u64().unwrap() < 1000));
    assert!(s["last_failover"].is_null());
    let b = lab.block_status(MASTER).unwrap();
    assert_eq!(b["role"], "Primary");
    let human = lab.ctl_ok("clusterctl", MASTER, &["status"]).unwrap();
    assert!(human.contains("group web: held by master"), "{human}");
    eprintln!("{human}");

    // The same seen from the slave, as Prometheus metrics read by the reference parser.
    let m = prometheus_samples(&lab.ctl_ok("clusterctl", SLAVE, &["metrics"]).unwrap()).unwrap();
    let held = |node: &str| {
        metric(
            &m,
            "hablock_cluster_group_held",
            &[("group", "web"), ("node", node)],
        )
    };
    assert_eq!((held(MASTER).unwrap(), held(SLAVE).unwrap()), (1.0, 0.0));
    assert_eq!(
        metric(&m, "hablock_cluster_node_alive", &[("node", MASTER)]).unwrap(),
        1.0
    );
    let links: Vec<f64> = m
        .iter()
        .filter(|(n, l, _)| {
            n == "hablock_cluster_link_up" && l.get("node").map(String::as_str) == Some(MASTER)
        })
        .map(|s| s.2)
        .collect();
    assert_eq!(links, [1.0, 1.0]);
    assert_eq!(
        metric(
            &m,
            "hablock_cluster_group_state",
            &[("group", "web"), ("state", "stopped")]
        )
        .unwrap(),
        1.0
    );
    assert_eq!(metric(&m, "hablock_cluster_warnings", &[]).unwrap(), 0.0);
}

#[test]
fn power_loss_of_the_master_moves_the_vip_with_gratuitous_arp() {
    let mut lab = Lab::running(LabOptions::default(), MASTER).unwrap();
    lab.client_get_within(T).unwrap();
    let (mac_a, mac_b) = (lab.mac(MASTER).unwrap(), lab.mac(SLAVE).unwrap());
    let before = lab.client_neigh().unwrap();
    assert!(before.contains(&mac_a), "client's entry before: {before}");
    let mut cap = lab.capture("br0", &["arp"], false).unwrap();

    let t0 = Instant::now();
    lab.kill_all_in(MASTER);
    lab.unplug(MASTER).unwrap();
    let s = lab.wait_group(SLAVE, SLAVE, T).unwrap();
    let took = t0.elapsed();
    // The client has not sent anything since: its entry was rewritten by the GARP.
    let after = lab.client_neigh().unwrap();
    assert!(
        after.contains(&mac_b),
        "client's entry after takeover: {after}"
    );
    let so_far = std::fs::read_to_string(&cap.out).unwrap();
    assert!(
        !so_far.contains("tell 10.213.0.10"),
        "the client asked for the VIP itself:\n{so_far}"
    );
    lab.client_get_within(Duration::from_secs(5)).unwrap();

    let f = &s["last_failover"];
    assert_eq!(f["from"], MASTER);
    assert_eq!(f["to"], SLAVE);
    let detect = f["detect_ms"].as_u64().unwrap();
    assert!((900..3000).contains(&detect), "detect_ms {detect}");
    assert!(f["start_ms"].as_u64().is_some());
    assert_eq!(s["nodes"][1]["alive"], false);
    eprintln!("takeover in {took:?}: {f}");
    let m = prometheus_samples(&lab.ctl_ok("clusterctl", SLAVE, &["metrics"]).unwrap()).unwrap();
    assert_eq!(
        metric(&m, "hablock_cluster_node_alive", &[("node", MASTER)]).unwrap(),
        0.0
    );
    assert_eq!(
        metric(
            &m,
            "hablock_cluster_group_held",
            &[("group", "web"), ("node", SLAVE)]
        )
        .unwrap(),
        1.0
    );
    let failover = [("group", "web"), ("from", MASTER), ("to", SLAVE)];
    assert_eq!(
        metric(
            &m,
            "hablock_cluster_last_failover_detect_seconds",
            &failover
        )
        .unwrap(),
        detect as f64 / 1000.0
    );

    std::thread::sleep(Duration::from_millis(600));
    let text = std::fs::read_to_string(cap.finish()).unwrap();
    let garps = text
        .lines()
        .filter(|l| {
            l.contains(&format!("{mac_b} > ff:ff:ff:ff:ff:ff"))
                && l.contains(&format!("who-has {VIP} tell {VIP}"))
        })
        .count();
    assert!(
        garps >= 5,
        "expected 5 gratuitous ARPs from {mac_b}:\n{text}"
    );
}

/// A node that lost power comes back: with auto_failback the group returns to the
/// preferred node; without it, it stays where it runs.
fn master_returns(auto_failback: bool) {
    let opts = LabOptions {
        auto_failback,
        ..LabOptions::default()
    };
    let mut lab = Lab::running(opts, MASTER).unwrap();
    lab.kill_all_in(MASTER);
    lab.unplug(MASTER).unwrap();
    lab.wait_group(SLAVE, SLAVE, T).unwrap();
    lab.client_get_within(Duration::from_secs(5)).unwrap();

    lab.plug(MASTER).unwrap();
    lab.start(MASTER, "blockd").unwrap();
    lab.start(MASTER, "clusterd").unwrap();
    lab.wait_cluster(MASTER, "peer alive", T, |s| s["nodes"][1]["alive"] == true)
        .unwrap();
    if auto_failback {
        lab.wait_group(MASTER, MASTER, Duration::from_secs(40))
            .unwrap();
        lab.wait_group(SLAVE, MASTER, T).unwrap();
        assert_eq!(lab.block_status(MASTER).unwrap()["role"], "Primary");
    } else {
        // Give a wrong failback every chance to happen.
        std::thread::sleep(Duration::from_secs(3));
        lab.wait_group(MASTER, SLAVE, T).unwrap();
        assert_eq!(lab.block_status(SLAVE).unwrap()["role"], "Primary");
    }
    lab.client_get_within(Duration::from_secs(5)).unwrap();
}

#[test]
fn returning_master_takes_the_group_back_with_auto_failback() {
    master_returns(true);
}

#[test]
fn returning_master_leaves_the_group_without_auto_failback() {
    master_returns(false);
}

/// Turning auto_failback on in the file and reloading (`clusterctl reload`, what
/// `systemctl reload clusterd` runs, on the master; SIGHUP on the slave) brings the
/// group back to its preferred node with no daemon restarted; a change to the group
/// is refused as a whole, naming it, and changes nothing.
#[test]
fn reload_applies_auto_failback_without_a_restart_and_refuses_a_group_change() {
    let opts = LabOptions {
        auto_failback: false,
        ..LabOptions::default()
    };
    let lab = Lab::running(opts, MASTER).unwrap();
    let pids = [MASTER, SLAVE].map(|n| lab.pid(n, "clusterd").unwrap());
    lab.ctl_ok("clusterctl", MASTER, &["standby"]).unwrap();
    lab.wait_group(SLAVE, SLAVE, T).unwrap();
    lab.ctl_ok("clusterctl", MASTER, &["online"]).unwrap();
    std::thread::sleep(Duration::from_secs(2));
    lab.wait_group(MASTER, SLAVE, T).unwrap();

    edit_file(&lab.config, "auto_failback = false", "auto_failback = true");
    edit_file(&lab.config, "arp_count = 5", "arp_count = 3");
    let out = lab.ctl("clusterctl", MASTER, &["reload"]).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("groups.web needs a restart of clusterd"),
        "{stderr}"
    );
    std::thread::sleep(Duration::from_secs(2));
    lab.wait_group(MASTER, SLAVE, T).unwrap();

    edit_file(&lab.config, "arp_count = 3", "arp_count = 5");
    let slave = nix::unistd::Pid::from_raw(pids[1] as i32);
    nix::sys::signal::kill(slave, nix::sys::signal::Signal::SIGHUP).unwrap();
    let said = lab.ctl_ok("clusterctl", MASTER, &["reload"]).unwrap();
    assert!(
        said.contains("heartbeat.auto_failback false -> true"),
        "{said}"
    );
    lab.wait_group(MASTER, MASTER, Duration::from_secs(40))
        .unwrap();
    lab.wait_group(SLAVE, MASTER, T).unwrap();
    lab.client_get_within(Duration::from_secs(5)).unwrap();
    let log = std::fs::read_to_string(lab.log(SLAVE, "clusterd")).unwrap();
    assert!(
        log.contains("configuration reloaded: heartbeat.auto_failback false -> true"),
        "the slave's log: {log}"
    );
    assert_eq!(
        [MASTER, SLAVE].map(|n| lab.pid(n, "clusterd").unwrap()),
        pids,
        "a clusterd restarted"
    );
}

#[test]
fn clusterd_killed_and_restarted_readopts_the_running_group() {
    let mut lab = Lab::running(LabOptions::default(), MASTER).unwrap();
    lab.client_get_within(T).unwrap();
    let pid = lab.service_pid(MASTER).unwrap();
    lab.kill9(MASTER, "clusterd");
    std::thread::sleep(Duration::from_millis(300));
    lab.start(MASTER, "clusterd").unwrap();
    let s = lab.wait_group(MASTER, MASTER, T).unwrap();
    assert_eq!(
        lab.service_pid(MASTER),
        Some(pid),
        "the service was restarted"
    );
    assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());
    assert!(s["last_failover"].is_null());
    // The slave never took it.
    let s = lab.wait_group(SLAVE, MASTER, T).unwrap();
    assert!(s["last_failover"].is_null(), "{s}");
    let log = std::fs::read_to_string(lab.log(MASTER, "clusterd")).unwrap();
    assert!(
        log.contains("running=3 total=3"),
        "no re-adoption in the log"
    );
    lab.client_get_within(Duration::from_secs(5)).unwrap();
}

#[test]
fn one_heartbeat_link_cut_warns_without_failover() {
    let lab = Lab::running(LabOptions::default(), MASTER).unwrap();
    lab.set_link(MASTER, 0, false).unwrap();
    let s = lab
        .wait_cluster(SLAVE, "link 0 down", T, |s| {
            s["nodes"][1]["links"][0]["up"] == false
        })
        .unwrap();
    assert_eq!(s["nodes"][1]["links"][1]["up"], true);
    assert_eq!(s["nodes"][1]["alive"], true);
    let warnings = s["warnings"].to_string();
    assert!(warnings.contains("link 0"), "{s}");
    std::thread::sleep(Duration::from_secs(2));
    let s = lab.wait_group(SLAVE, MASTER, T).unwrap();
    assert!(s["last_failover"].is_null());
    lab.set_link(MASTER, 0, true).unwrap();
    lab.wait_cluster(SLAVE, "link 0 up again", T, |s| {
        s["nodes"][1]["links"][0]["up"] == true && s["warnings"].as_array().unwrap().is_empty()
    })
    .unwrap();
    lab.client_get_within(Duration::from_secs(5)).unwrap();
}

#[test]
fn all_heartbeat_links_cut_with_replication_alive_does_not_take_over() {
    let lab = Lab::running(LabOptions::default(), MASTER).unwrap();
    // Drop heartbeats (and only them) in the master's namespace, both directions.
    let rules = format!(
        "add table inet hbt\n\
         add chain inet hbt in {{ type filter hook input priority 0; }}\n\
         add chain inet hbt out {{ type filter hook output priority 0; }}\n\
         add rule inet hbt in udp dport {HB_PORT} drop\n\
         add rule inet hbt out udp dport {HB_PORT} drop\n"
    );
    let f = lab.dir.path().join("cut.nft");
    std::fs::write(&f, rules).unwrap();
    let out = lab
        .exec(MASTER, &["nft", "-f", f.to_str().unwrap()])
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = lab
        .wait_cluster(SLAVE, "peer dead by heartbeats", T, |s| {
            s["nodes"][1]["alive"] == false
        })
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let s2 = lab.status(SLAVE).unwrap();
    assert_eq!(s2["nodes"][1]["alive_via_replication"], true, "{s2}");
    assert!(
        s2["warnings"].to_string().contains("alive via replication"),
        "{s2}"
    );
    assert_eq!(group(&s2)["state"], "stopped", "{s2}");
    assert!(
        group(&s2)["reason"]
            .as_str()
            .unwrap()
            .contains("replication"),
        "{s}"
    );
    assert!(s2["last_failover"].is_null());
    assert_eq!(lab.block_status(SLAVE).unwrap()["role"], "Secondary");
    lab.client_get_within(Duration::from_secs(5)).unwrap();
    let human = lab.ctl_ok("clusterctl", SLAVE, &["status"]).unwrap();
    assert!(human.contains("alive via replication"), "{human}");
}

#[test]
fn failing_health_check_restarts_locally_then_fails_over() {
    let opts = LabOptions {
        check: "test -e {dir}/{node}.ok".into(),
        ..LabOptions::default()
    };
    let lab = Lab::running(opts, MASTER).unwrap();
    let first = lab.service_pid(MASTER).unwrap();
    std::fs::remove_file(lab.dir.path().join("master.ok")).unwrap();
    lab.wait_group(SLAVE, SLAVE, Duration::from_secs(40))
        .unwrap();
    lab.client_get_within(Duration::from_secs(5)).unwrap();
    let log = std::fs::read_to_string(lab.log(MASTER, "clusterd")).unwrap();
    let restarts = log.matches("health check failed: restarting").count();
    assert_eq!(restarts, 3, "local restarts before failing over");
    assert!(log.contains("RestartLimitReached"));
    assert_ne!(lab.service_pid(SLAVE), None);
    assert_ne!(lab.service_pid(MASTER), Some(first));
    let s = lab.status(MASTER).unwrap();
    assert_eq!(group(&s)["state"], "failed", "{s}");
    assert_eq!(group(&s)["holder"], SLAVE);
}

#[test]
fn forged_replayed_and_garbage_input_is_refused_and_the_daemon_keeps_running() {
    use std::io::{Read, Write};
    let lab = Lab::running(LabOptions::default(), MASTER).unwrap();
    // Capture real heartbeats from the slave to the master on the replication bridge.
    let mut cap = lab
        .capture(
            "b1",
            &[
                "udp",
                "and",
                "dst",
                "host",
                "10.213.1.2",
                "and",
                "dst",
                "port",
                &HB_PORT.to_string(),
            ],
            true,
        )
        .unwrap();
    std::thread::sleep(Duration::from_millis(700));
    let pcap = cap.finish();
    let captured = pcap_udp_payloads(&pcap).unwrap();
    assert!(
        captured.len() >= 2,
        "captured {} heartbeats",
        captured.len()
    );

    // A heartbeat signed with the wrong secret, sent from the slave's address.
    let forged = {
        let hb = hablock_proto::heartbeat::Heartbeat {
            link: 1,
            cluster_id: hablock_proto::heartbeat::cluster_id("lab"),
            node: SLAVE.into(),
            generation: u64::MAX / 2,
            sequence: 1,
            view: Default::default(),
        };
        hablock_proto::heartbeat::encode(&hb, b"not the secret").unwrap()
    };
    let replay = captured.clone();
    lab.in_ns(SLAVE, move || {
        let s = std::net::UdpSocket::bind("10.213.1.3:0").unwrap();
        let to = format!("10.213.1.2:{HB_PORT}");
        s.send_to(&forged, &to).unwrap();
        for p in &replay {
            s.send_to(p, &to).unwrap();
            s.send_to(p, &to).unwrap();
        }
        s.send_to(b"garbage \x00\xff", &to).unwrap();
        s.send_to(&[0u8; 1500], &to).unwrap();
    })
    .unwrap();
    lab.in_ns("c", move || {
        let s = std::net::UdpSocket::bind("10.213.0.10:0").unwrap();
        s.send_to(b"HBHB\x01garbage", format!("10.213.0.151:{HB_PORT}"))
            .unwrap();
    })
    .unwrap();

    // Garbage on the control socket: answered with bad-request, the daemon lives on.
    let sock = lab.run_dir(MASTER).join("clusterd.sock");
    let mut c = std::os::unix::net::UnixStream::connect(&sock).unwrap();
    c.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    let mut reply = Vec::new();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = c.read_to_end(&mut reply);
    assert!(String::from_utf8_lossy(&reply).contains("bad-request"));
    let mut c = std::os::unix::net::UnixStream::connect(&sock).unwrap();
    c.write_all(&[0xffu8; 64]).unwrap();
    drop(c);

    // A config with an unknown key: exit 2, naming the key.
    let bad = lab.dir.path().join("bad.toml");
    let text = std::fs::read_to_string(&lab.config).unwrap();
    std::fs::write(
        &bad,
        text.replace("auto_failback =", "bogus_key = 1\nauto_failback ="),
    )
    .unwrap();
    let out = std::process::Command::new(hablock_tests::bin("clusterd"))
        .args([
            "--config",
            bad.to_str().unwrap(),
            "--node",
            MASTER,
            "--run-dir",
        ])
        .arg(lab.dir.path().join("run-bad"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("bogus_key"));

    // Still running, still holding, peer still alive, nothing failed over.
    std::thread::sleep(Duration::from_millis(500));
    let s = lab.wait_group(MASTER, MASTER, T).unwrap();
    assert_eq!(s["nodes"][1]["alive"], true);
    assert!(s["last_failover"].is_null());
    let log = std::fs::read_to_string(lab.log(MASTER, "clusterd")).unwrap();
    assert!(
        log.contains("heartbeat authentication failed"),
        "forgery not logged"
    );
    assert!(log.contains("replayed heartbeat"), "replay not logged");
    assert!(
        log.contains("malformed request"),
        "control garbage not logged"
    );
    lab.client_get_within(Duration::from_secs(5)).unwrap();
}

#[test]
fn sigterm_stops_the_group_and_the_peer_takes_it_at_once() {
    let mut lab = Lab::running(LabOptions::default(), MASTER).unwrap();
    let t0 = Instant::now();
    let st = lab.terminate(MASTER, "clusterd", T).unwrap();
    assert!(st.success(), "clusterd exited with {st}");
    assert_eq!(lab.service_pid(MASTER), None, "the service was not stopped");
    assert_eq!(lab.block_status(MASTER).unwrap()["role"], "Secondary");
    lab.wait_group(SLAVE, SLAVE, T).unwrap();
    lab.client_get_within(Duration::from_secs(5)).unwrap();
    eprintln!("switchover on SIGTERM in {:?}", t0.elapsed());
    assert!(!lab.run_dir(MASTER).join("clusterd.sock").exists());
}

#[test]
fn move_standby_online_and_events() {
    use std::io::Read;
    let lab = Lab::running(LabOptions::default(), MASTER).unwrap();
    let mut events = lab
        .tool("clusterctl", MASTER)
        .args(["events", "--json"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));

    // Refusals and usage errors.
    let out = lab
        .ctl("clusterctl", MASTER, &["move", "web", "nowhere"])
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no node"));
    let out = lab
        .ctl("clusterctl", MASTER, &["move", "nogroup", SLAVE])
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let out = lab.ctl("clusterctl", MASTER, &["move", "web"]).unwrap();
    assert_eq!(out.status.code(), Some(2));

    // An administrator's move, issued on the node that holds the group.
    lab.ctl_ok("clusterctl", MASTER, &["move", "web", SLAVE])
        .unwrap();
    lab.wait_group(SLAVE, SLAVE, T).unwrap();
    lab.wait_group(MASTER, SLAVE, T).unwrap();
    lab.client_get_within(Duration::from_secs(5)).unwrap();
    // And back, issued on the other node.
    lab.ctl_ok("clusterctl", MASTER, &["move", "web", MASTER])
        .unwrap();
    lab.wait_group(MASTER, MASTER, T).unwrap();

    // Standby gives the group away; online takes it back (auto_failback).
    lab.ctl_ok("clusterctl", MASTER, &["standby"]).unwrap();
    let s = lab.wait_group(SLAVE, SLAVE, T).unwrap();
    assert_eq!(s["nodes"][1]["standby"], true);
    lab.ctl_ok("clusterctl", MASTER, &["online"]).unwrap();
    lab.wait_group(MASTER, MASTER, T).unwrap();

    let _ = events.kill();
    let _ = events.wait();
    let mut text = String::new();
    events
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut text)
        .unwrap();
    let kinds: Vec<String> = text
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["kind"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    for k in ["move", "verdict", "group", "standby", "online"] {
        assert!(kinds.iter().any(|x| x == k), "no {k} event in {kinds:?}");
    }
}

#[test]
fn standby_and_online_of_the_peer_are_forwarded_and_cannot_be_replayed() {
    let lab = Lab::running(LabOptions::default(), MASTER).unwrap();
    let mut cap = lab
        .capture(
            "b1",
            &[
                "udp",
                "and",
                "dst",
                "host",
                "10.213.1.2",
                "and",
                "dst",
                "port",
                &HB_PORT.to_string(),
            ],
            true,
        )
        .unwrap();
    // Issued on the slave, about the master.
    let out = lab.ctl("clusterctl", SLAVE, &["standby", MASTER]).unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("forwarded"));
    let s = lab.wait_group(MASTER, SLAVE, T).unwrap();
    assert_eq!(s["nodes"][0]["standby"], true);
    let requests: Vec<Vec<u8>> = pcap_udp_payloads(&cap.finish())
        .unwrap()
        .into_iter()
        .filter(|p| p.starts_with(b"HBRQ"))
        .collect();
    assert!(!requests.is_empty(), "no forwarded request captured");

    lab.ctl_ok("clusterctl", SLAVE, &["online", MASTER])
        .unwrap();
    lab.wait_group(MASTER, MASTER, T).unwrap();

    // The captured standby request, replayed from the slave's own address: refused.
    lab.in_ns(SLAVE, move || {
        let s = std::net::UdpSocket::bind("10.213.1.3:0").unwrap();
        for p in &requests {
            s.send_to(p, format!("10.213.1.2:{HB_PORT}")).unwrap();
        }
    })
    .unwrap();
    std::thread::sleep(Duration::from_secs(1));
    let s = lab.wait_group(MASTER, MASTER, T).unwrap();
    assert_eq!(s["nodes"][0]["standby"], false, "{s}");
    let log = std::fs::read_to_string(lab.log(MASTER, "clusterd")).unwrap();
    assert!(log.contains("refused a stale or replayed admin request"));

    let out = lab
        .ctl("clusterctl", SLAVE, &["standby", "nobody"])
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
}

fn power_loss_with_fence(command: &str) -> Lab {
    let opts = LabOptions {
        heartbeat_extra: format!("fence = \"{command}\""),
        ..LabOptions::default()
    };
    let mut lab = Lab::running(opts, MASTER).unwrap();
    lab.kill_all_in(MASTER);
    lab.unplug(MASTER).unwrap();
    lab
}

#[test]
fn takeover_waits_for_a_successful_fence() {
    let lab = power_loss_with_fence("echo {peer} > {dir}/fenced");
    let s = lab.wait_group(SLAVE, SLAVE, T).unwrap();
    let fenced = std::fs::read_to_string(lab.dir.path().join("fenced")).unwrap();
    assert_eq!(fenced.trim(), MASTER);
    assert_eq!(s["last_failover"]["from"], MASTER);
    let log = std::fs::read_to_string(lab.log(SLAVE, "clusterd")).unwrap();
    let fenced_at = log
        .find("fencing master: done")
        .expect("no fence in the log");
    let acquire_at = log
        .find("dead and was fenced")
        .expect("no takeover after fencing");
    assert!(fenced_at < acquire_at);
    lab.client_get_within(Duration::from_secs(5)).unwrap();
}

#[test]
fn a_failed_fence_never_takes_over() {
    let lab = power_loss_with_fence("exit 1");
    let s = lab
        .wait_cluster(SLAVE, "fencing failed", T, |s| {
            group(s)["reason"]
                .as_str()
                .is_some_and(|r| r.contains("fencing master failed"))
        })
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let s2 = lab.status(SLAVE).unwrap();
    assert_eq!(group(&s2)["state"], "stopped", "{s} {s2}");
    assert_eq!(lab.block_status(SLAVE).unwrap()["role"], "Secondary");
}

#[test]
fn a_holder_that_loses_its_ping_target_hands_the_group_over() {
    let opts = LabOptions {
        heartbeat_extra: "ping = [\"10.213.0.10\"]".into(),
        ..LabOptions::default()
    };
    let lab = Lab::running(opts, MASTER).unwrap();
    // The master's LAN cable is cut: it no longer reaches the client, but still hears
    // the slave on the replication link.
    lab.set_link(MASTER, 0, false).unwrap();
    let s = lab.wait_group(SLAVE, SLAVE, T).unwrap();
    assert_eq!(s["nodes"][1]["alive"], true);
    assert_eq!(s["nodes"][1]["ping_ok"], false);
    lab.client_get_within(Duration::from_secs(5)).unwrap();
}

#[test]
fn a_restarted_clusterd_without_blockd_does_not_claim_the_group() {
    let mut lab = Lab::running(LabOptions::default(), MASTER).unwrap();
    lab.kill9(SLAVE, "clusterd");
    lab.kill9(SLAVE, "blockd");
    lab.start(SLAVE, "clusterd").unwrap();
    let s = lab
        .wait_cluster(SLAVE, "probed and master heard", T, |s| {
            group(s)["state"] == "stopped" && s["nodes"][1]["alive"] == true
        })
        .unwrap();
    assert_eq!(group(&s)["holder"], MASTER, "{s}");
    std::thread::sleep(Duration::from_secs(1));
    lab.wait_group(MASTER, MASTER, T).unwrap();
    lab.start(SLAVE, "blockd").unwrap();
    lab.wait_block(SLAVE, "reconnected", T, |b| b["connection"] == "Connected")
        .unwrap();
    lab.wait_group(SLAVE, MASTER, T).unwrap();
    lab.client_get_within(Duration::from_secs(5)).unwrap();
}

#[test]
fn notifies_systemd_ready_and_pings_the_watchdog() {
    let mut lab = Lab::new(LabOptions::default()).unwrap();
    lab.start_blockd_synced().unwrap();
    let path = lab.dir.path().join("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    lab.start_with_env(
        MASTER,
        "clusterd",
        &[
            ("NOTIFY_SOCKET", path.to_str().unwrap()),
            ("WATCHDOG_USEC", "400000"),
        ],
    )
    .unwrap();
    let mut seen = String::new();
    let mut buf = [0u8; 512];
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline
        && !(seen.contains("READY=1") && seen.matches("WATCHDOG=1").count() >= 3)
    {
        if let Ok(n) = sock.recv(&mut buf) {
            seen.push_str(&String::from_utf8_lossy(&buf[..n]));
            seen.push('\n');
        }
    }
    assert!(seen.contains("READY=1"), "{seen}");
    assert!(seen.matches("WATCHDOG=1").count() >= 3, "{seen}");
    let st = lab.terminate(MASTER, "clusterd", T).unwrap();
    assert!(st.success());
}

#[test]
fn clusterd_starts_before_its_addresses_exist() {
    let mut lab = Lab::running(LabOptions::default(), MASTER).unwrap();
    lab.kill9(SLAVE, "clusterd");
    lab.unplug(SLAVE).unwrap();
    lab.start(SLAVE, "clusterd").unwrap();
    std::thread::sleep(Duration::from_millis(300));
    lab.plug(SLAVE).unwrap();
    let s = lab
        .wait_cluster(SLAVE, "master heard on both links", T, |s| {
            s["nodes"][1]["links"]
                .as_array()
                .unwrap()
                .iter()
                .all(|l| l["up"] == true)
        })
        .unwrap();
    assert_eq!(group(&s)["holder"], MASTER);
    lab.wait_group(MASTER, MASTER, T).unwrap();
}

/// The holder's disk fails: blockd detaches it and keeps the device served through the
/// peer (the write that hit the failure completes), the block resource's health check
/// fails, a local restart cannot promote a Diskless copy, and the group moves to the
/// node that has the data on its own disk.
#[test]
fn a_holder_whose_disk_fails_hands_the_group_to_the_peer() {
    let mut lab = Lab::new(LabOptions::default()).unwrap();
    let dir = lab.dir.path().to_path_buf();
    edit_file(
        &lab.config,
        "connect_interval = \"200ms\"",
        &format!(
            "connect_interval = \"200ms\"\nnbd_socket = \"{}/run-{{node}}/r0.nbd\"",
            dir.display()
        ),
    );
    let disk =
        FailingDisk::under(&dir.join("master.img"), &dir.join("master-disk"), 32 << 20).unwrap();
    lab.start_blockd_synced().unwrap();
    lab.start(MASTER, "clusterd").unwrap();
    lab.start(SLAVE, "clusterd").unwrap();
    lab.wait_group(MASTER, MASTER, T).unwrap();
    let uri = |node: &str| format!("nbd+unix:///r0?socket={}/run-{node}/r0.nbd", dir.display());

    disk.fail().unwrap();
    qemu_io(&uri(MASTER), &["write -P 0xc3 4M 1M", "flush"]).unwrap();
    let b = lab
        .wait_block(MASTER, "the detach", T, |b| b["disk"] == "Diskless")
        .unwrap();
    assert_eq!(b["peer_disk"], "UpToDate");
    let s = lab
        .wait_group(SLAVE, SLAVE, Duration::from_secs(40))
        .unwrap();
    assert_eq!(group(&s)["holder"], SLAVE);
    lab.client_get_within(Duration::from_secs(5)).unwrap();
    let log = std::fs::read_to_string(lab.log(MASTER, "clusterd")).unwrap();
    assert!(
        log.contains("blockd detached the local disk: the group leaves this node"),
        "{log}"
    );
    assert_eq!(group(&lab.status(MASTER).unwrap())["state"], "failed");
    assert_eq!(lab.block_status(MASTER).unwrap()["role"], "Secondary");
    let slave = lab.block_status(SLAVE).unwrap();
    assert_eq!(slave["role"], "Primary");
    assert_eq!(slave["peer_disk"], "Diskless");
    // What the master acknowledged after its disk failed is on the new holder.
    qemu_io(&uri(SLAVE), &["read -P 0xc3 4M 1M"]).unwrap();
}
