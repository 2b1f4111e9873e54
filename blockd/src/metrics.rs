//! `blockctl metrics`: the resources' status as Prometheus metrics
//! ([`hablock_proto::metrics`]), one sample per resource (label `resource`), states as
//! one 0/1 sample per possible value (label `state`), so that an alert can say
//! `hablock_block_connection_state{state="StandAlone"} == 1` or
//! `hablock_block_peer_pending > 0 for 1m`.

use hablock_proto::control::{IoStatistics, ResourceStatus};
use hablock_proto::metrics::{flag, Kind, MetricsText, Sample};
use hablock_proto::types::{ConnState, DiskState, Role};

/// A metric taken from [`IoStatistics`]: name, type, help, the field.
type IoField = (&'static str, Kind, &'static str, fn(&IoStatistics) -> u64);

const IO_FIELDS: [IoField; 9] = [
    (
        "hablock_block_disk_read_bytes_total",
        Kind::Counter,
        "Bytes read from the local backing device.",
        |s| s.disk_read_bytes,
    ),
    (
        "hablock_block_disk_written_bytes_total",
        Kind::Counter,
        "Bytes written to the local backing device.",
        |s| s.disk_written_bytes,
    ),
    (
        "hablock_block_net_sent_bytes_total",
        Kind::Counter,
        "Block data sent to the peer.",
        |s| s.net_sent_bytes,
    ),
    (
        "hablock_block_net_received_bytes_total",
        Kind::Counter,
        "Block data received from the peer.",
        |s| s.net_received_bytes,
    ),
    (
        "hablock_block_al_writes_total",
        Kind::Counter,
        "Activity-log updates written.",
        |s| s.al_writes,
    ),
    (
        "hablock_block_bitmap_writes_total",
        Kind::Counter,
        "Writes of the bitmap's dirty pages.",
        |s| s.bitmap_writes,
    ),
    (
        "hablock_block_app_pending",
        Kind::Gauge,
        "Frontend requests in flight.",
        |s| s.app_pending,
    ),
    (
        "hablock_block_peer_pending",
        Kind::Gauge,
        "Writes and flushes awaiting the peer's acknowledgement.",
        |s| s.peer_pending,
    ),
    (
        "hablock_block_local_pending",
        Kind::Gauge,
        "Operations on the local backing device in flight.",
        |s| s.local_pending,
    ),
];

/// The metrics of `resources`.
pub fn render(resources: &[ResourceStatus]) -> String {
    let mut m = MetricsText::new();
    let per = |value: &dyn Fn(&ResourceStatus) -> Option<f64>| -> Vec<Sample<'_>> {
        resources
            .iter()
            .filter_map(|r| value(r).map(|v| (vec![("resource", r.name.as_str())], v)))
            .collect()
    };
    let info: Vec<Sample<'_>> = resources
        .iter()
        .map(|r| {
            let labels = vec![
                ("resource", r.name.as_str()),
                ("node", r.node.as_str()),
                ("peer", r.peer.as_str()),
            ];
            (labels, 1.0)
        })
        .collect();
    m.family(
        "hablock_block_info",
        Kind::Gauge,
        "A resource blockd serves, with this node and its peer.",
        &info,
    );
    m.family(
        "hablock_block_primary",
        Kind::Gauge,
        "1 while this node is Primary.",
        &per(&|r| Some(flag(r.role == Role::Primary))),
    );
    m.family(
        "hablock_block_peer_primary",
        Kind::Gauge,
        "1 while the peer is known to be Primary.",
        &per(&|r| Some(flag(r.peer_role == Role::Primary))),
    );
    let conn: Vec<Sample<'_>> = resources
        .iter()
        .flat_map(|r| {
            ConnState::ALL.iter().map(move |s| {
                (
                    vec![("resource", r.name.as_str()), ("state", s.as_str())],
                    flag(r.connection == *s),
                )
            })
        })
        .collect();
    m.family(
        "hablock_block_connection_state",
        Kind::Gauge,
        "The replication link's state (1 for the current one).",
        &conn,
    );
    for (name, help, peer) in [
        (
            "hablock_block_disk_state",
            "This node's disk state (1 for the current one).",
            false,
        ),
        (
            "hablock_block_peer_disk_state",
            "The peer's disk state as last known (1 for the current one).",
            true,
        ),
    ] {
        let disk: Vec<Sample<'_>> = resources
            .iter()
            .flat_map(|r| {
                let now = if peer { r.peer_disk } else { r.disk };
                DiskState::ALL.iter().map(move |s| {
                    (
                        vec![("resource", r.name.as_str()), ("state", s.as_str())],
                        flag(now == *s),
                    )
                })
            })
            .collect();
        m.family(name, Kind::Gauge, help, &disk);
    }
    m.family(
        "hablock_block_split_brain",
        Kind::Gauge,
        "1 while a split brain is unresolved.",
        &per(&|r| Some(flag(r.split_brain))),
    );
    m.family(
        "hablock_block_size_bytes",
        Kind::Gauge,
        "Size the device exports.",
        &per(&|r| Some(r.size_bytes as f64)),
    );
    m.family(
        "hablock_block_out_of_sync_bytes",
        Kind::Gauge,
        "Bytes marked out of sync in this node's bitmap.",
        &per(&|r| Some(r.out_of_sync_bytes as f64)),
    );
    m.family(
        "hablock_block_resynced_bytes_total",
        Kind::Counter,
        "Bytes sent or received by resync.",
        &per(&|r| Some(r.resynced_bytes as f64)),
    );
    m.family(
        "hablock_block_sync_progress_ratio",
        Kind::Gauge,
        "Progress of the running resync or verify, 0 to 1.",
        &per(&|r| r.sync_progress),
    );
    m.family(
        "hablock_block_sync_rate_bytes_per_second",
        Kind::Gauge,
        "Rate of the running resync.",
        &per(&|r| r.sync_rate_bps.map(|v| v as f64)),
    );
    for (name, kind, help, get) in IO_FIELDS {
        m.family(name, kind, help, &per(&|r| Some(get(&r.statistics) as f64)));
    }
    m.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resource(name: &str) -> ResourceStatus {
        ResourceStatus {
            name: name.into(),
            node: "master".into(),
            peer: "slave".into(),
            role: Role::Primary,
            peer_role: Role::Secondary,
            connection: ConnState::SyncSource,
            disk: DiskState::UpToDate,
            peer_disk: DiskState::Inconsistent,
            size_bytes: 1 << 30,
            out_of_sync_bytes: 4096,
            resynced_bytes: 8192,
            split_brain: false,
            sync_progress: Some(0.25),
            sync_rate_bps: Some(100 << 20),
            sync_eta_s: Some(3),
            devices: vec!["/dev/ublkb0".into()],
            last_verify: None,
            standalone_reason: None,
            detach_reason: None,
            statistics: IoStatistics {
                disk_written_bytes: 1 << 20,
                peer_pending: 2,
                ..IoStatistics::default()
            },
        }
    }

    #[test]
    fn one_sample_per_resource_and_one_per_state() {
        let mut idle = resource("r1");
        idle.connection = ConnState::Connected;
        idle.sync_progress = None;
        idle.sync_rate_bps = None;
        let text = render(&[resource("r0"), idle]);
        let has = |line: &str| assert!(text.lines().any(|l| l == line), "no {line:?} in:\n{text}");
        has("hablock_block_info{resource=\"r0\",node=\"master\",peer=\"slave\"} 1");
        has("hablock_block_primary{resource=\"r0\"} 1");
        has("hablock_block_connection_state{resource=\"r0\",state=\"SyncSource\"} 1");
        has("hablock_block_connection_state{resource=\"r0\",state=\"Connected\"} 0");
        has("hablock_block_connection_state{resource=\"r1\",state=\"Connected\"} 1");
        has("hablock_block_peer_disk_state{resource=\"r0\",state=\"Inconsistent\"} 1");
        has("hablock_block_sync_progress_ratio{resource=\"r0\"} 0.25");
        has("hablock_block_disk_written_bytes_total{resource=\"r0\"} 1048576");
        has("hablock_block_peer_pending{resource=\"r0\"} 2");
        // A figure a resource does not have (no resync running) is left out.
        assert!(
            !text.contains("hablock_block_sync_progress_ratio{resource=\"r1\"}"),
            "{text}"
        );
        let states = text
            .lines()
            .filter(|l| l.starts_with("hablock_block_connection_state{resource=\"r0\""))
            .count();
        assert_eq!(states, ConnState::ALL.len());
        assert_eq!(
            text.matches("# TYPE hablock_block_disk_written_bytes_total counter")
                .count(),
            1
        );
    }
}
