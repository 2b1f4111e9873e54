//! The takeover benchmark behind `scripts/bench --failover` (ignored by default):
//! power loss of the master in network namespaces, `HABLOCK_BENCH_RUNS` times (3 by
//! default) per timing set, printing the median detection time (the peer's last
//! heartbeat to its declaration as dead) and the median time from the power loss
//! until the client gets the page from the VIP again.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use hablock_tests::netns::{Lab, LabOptions, MASTER, SLAVE};
use std::time::{Duration, Instant};

fn median(v: &mut [u64]) -> u64 {
    v.sort_unstable();
    v[v.len() / 2]
}

#[test]
#[ignore = "benchmark: run with scripts/bench --failover"]
fn failover_bench() {
    let runs: usize = std::env::var("HABLOCK_BENCH_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let defaults = hablock_config::HeartbeatConfig::default();
    let default_label = format!(
        "defaults (keepalive {}ms, deadtime {}ms)",
        defaults.keepalive.as_millis(),
        defaults.deadtime.as_millis()
    );
    let sets: [(&str, Option<[&'static str; 4]>); 3] = [
        (
            "test timings (keepalive 200ms, deadtime 1s)",
            Some(["200ms", "600ms", "1s", "2s"]),
        ),
        // No [heartbeat] timing keys: the configuration's defaults.
        (&default_label, None),
        (
            "seed paper (keepalive 2s, deadtime 15s)",
            Some(["2s", "5s", "15s", "90s"]),
        ),
    ];
    let mut report = Vec::new();
    for (label, timings) in sets {
        let (mut detect, mut takeover, mut serve) = (Vec::new(), Vec::new(), Vec::new());
        for run in 0..runs {
            let opts = LabOptions {
                timings,
                ..LabOptions::default()
            };
            let mut lab = Lab::running(opts, MASTER).unwrap();
            lab.client_get_within(Duration::from_secs(20)).unwrap();
            let t0 = Instant::now();
            lab.kill_all_in(MASTER);
            lab.unplug(MASTER).unwrap();
            while !lab.client_get_quick() {
                assert!(
                    t0.elapsed() < Duration::from_secs(120),
                    "the VIP never came back"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
            let served = t0.elapsed().as_millis() as u64;
            let s = lab
                .wait_group(SLAVE, SLAVE, Duration::from_secs(20))
                .unwrap();
            let f = &s["last_failover"];
            let (d, st) = (
                f["detect_ms"].as_u64().unwrap(),
                f["start_ms"].as_u64().unwrap(),
            );
            eprintln!(
                "{label} run {}: detect {d} ms, start {st} ms, VIP serves after {served} ms",
                run + 1
            );
            detect.push(d);
            takeover.push(st);
            serve.push(served);
        }
        report.push(format!(
            "{label:<48} median detect {:>6} ms   start {:>5} ms   power loss -> VIP serves {:>6} ms   ({runs} runs)",
            median(&mut detect),
            median(&mut takeover),
            median(&mut serve)
        ));
    }
    println!();
    for r in report {
        println!("{r}");
    }
}
