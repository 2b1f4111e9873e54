//! `clusterctl metrics`: the cluster's status as this node sees it, as Prometheus
//! metrics ([`hablock_proto::metrics`]): whether each node is alive and each heartbeat
//! link up, where each group runs and whether it runs here, failed resources and
//! health checks, and the last takeover. Alerts such as
//! `hablock_cluster_node_alive == 0`, `hablock_cluster_link_up == 0` or
//! `sum by (group) (hablock_cluster_group_held) == 0` follow from them.

use hablock_proto::control::ClusterStatus;
use hablock_proto::metrics::{flag, Kind, MetricsText, Sample};

/// The metrics of `st`.
pub fn render(st: &ClusterStatus) -> String {
    let mut m = MetricsText::new();
    let nodes = |value: fn(&hablock_proto::control::NodeStatus) -> f64| -> Vec<Sample<'_>> {
        st.nodes
            .iter()
            .map(|n| (vec![("node", n.name.as_str())], value(n)))
            .collect()
    };
    m.family(
        "hablock_cluster_node_alive",
        Kind::Gauge,
        "1 while the node is alive (heard on a heartbeat link, or this node).",
        &nodes(|n| flag(n.alive)),
    );
    m.family(
        "hablock_cluster_node_standby",
        Kind::Gauge,
        "1 while the node is in standby.",
        &nodes(|n| flag(n.standby)),
    );
    m.family(
        "hablock_cluster_node_ping_ok",
        Kind::Gauge,
        "1 while the node reaches a ping target (or none is configured).",
        &nodes(|n| flag(n.ping_ok)),
    );
    let links = |value: fn(&hablock_proto::control::LinkInfo) -> Option<f64>| -> Vec<Sample<'_>> {
        st.nodes
            .iter()
            .filter(|n| n.name != st.node)
            .flat_map(|n| {
                n.links.iter().filter_map(move |l| {
                    value(l).map(|v| {
                        (
                            vec![("node", n.name.as_str()), ("address", l.address.as_str())],
                            v,
                        )
                    })
                })
            })
            .collect()
    };
    m.family(
        "hablock_cluster_link_up",
        Kind::Gauge,
        "1 while the peer's heartbeats arrive on this link.",
        &links(|l| Some(flag(l.up))),
    );
    m.family(
        "hablock_cluster_link_last_heartbeat_seconds",
        Kind::Gauge,
        "Seconds since the peer's last valid heartbeat on this link.",
        &links(|l| l.last_seen_ms.map(|ms| ms as f64 / 1000.0)),
    );
    let held: Vec<Sample<'_>> = st
        .groups
        .iter()
        .flat_map(|g| {
            st.nodes.iter().map(move |n| {
                (
                    vec![("group", g.name.as_str()), ("node", n.name.as_str())],
                    flag(g.holder.as_deref() == Some(n.name.as_str())),
                )
            })
        })
        .collect();
    m.family(
        "hablock_cluster_group_held",
        Kind::Gauge,
        "1 for the node that holds the group.",
        &held,
    );
    let here: Vec<Sample<'_>> = st
        .groups
        .iter()
        .map(|g| {
            (
                vec![("group", g.name.as_str()), ("state", g.state.as_str())],
                1.0,
            )
        })
        .collect();
    m.family("hablock_cluster_group_state", Kind::Gauge, "The group's state on this node (running, stopped, starting, stopping, partial, probing, failed).", &here);
    let resources =
        |value: fn(&hablock_proto::control::GroupResourceStatus) -> f64| -> Vec<Sample<'_>> {
            st.groups
                .iter()
                .flat_map(|g| {
                    g.resources.iter().map(move |r| {
                        (
                            vec![
                                ("group", g.name.as_str()),
                                ("type", r.kind.as_str()),
                                ("name", r.name.as_str()),
                            ],
                            value(r),
                        )
                    })
                })
                .collect()
        };
    m.family(
        "hablock_cluster_resource_failed",
        Kind::Gauge,
        "1 while the resource has failed on this node.",
        &resources(|r| flag(r.state == "failed")),
    );
    m.family(
        "hablock_cluster_resource_check_failing",
        Kind::Gauge,
        "1 while the resource's last health check failed.",
        &resources(|r| flag(r.check_failing)),
    );
    if let Some(f) = &st.last_failover {
        let labels = || {
            vec![
                ("group", f.group.as_str()),
                ("from", f.from.as_str()),
                ("to", f.to.as_str()),
            ]
        };
        m.family(
            "hablock_cluster_last_failover_timestamp_seconds",
            Kind::Gauge,
            "When this node last took a group over from a dead peer (Unix time).",
            &[(labels(), f.time_ms as f64 / 1000.0)],
        );
        m.family(
            "hablock_cluster_last_failover_detect_seconds",
            Kind::Gauge,
            "From the peer's last heartbeat to its declaration as dead, in the last takeover.",
            &[(labels(), f.detect_ms as f64 / 1000.0)],
        );
        m.family(
            "hablock_cluster_last_failover_start_seconds",
            Kind::Gauge,
            "From the start of the last takeover until the group ran.",
            &[(labels(), f.start_ms as f64 / 1000.0)],
        );
    }
    m.family(
        "hablock_cluster_warnings",
        Kind::Gauge,
        "Conditions clusterctl status warns about (a link down, a late peer).",
        &[(vec![], st.warnings.len() as f64)],
    );
    m.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use hablock_proto::control::{
        Failover, GroupResourceStatus, GroupStatus, LinkInfo, NodeStatus,
    };

    fn node(name: &str, alive: bool, links: Vec<LinkInfo>) -> NodeStatus {
        NodeStatus {
            name: name.into(),
            alive,
            standby: false,
            liveness: if alive { "alive" } else { "dead" }.into(),
            ping_ok: true,
            alive_via_replication: false,
            links,
        }
    }

    fn link(address: &str, up: bool, last_seen_ms: Option<u64>) -> LinkInfo {
        LinkInfo {
            address: address.into(),
            up,
            state: if up { "up" } else { "down" }.into(),
            last_seen_ms,
        }
    }

    #[test]
    fn a_takeover_as_the_slave_reports_it() {
        let st = ClusterStatus {
            node: "slave".into(),
            nodes: vec![
                node("slave", true, vec![link("10.213.0.152", true, None)]),
                node(
                    "master",
                    false,
                    vec![
                        link("10.213.0.151", false, Some(4500)),
                        link("10.213.1.2", false, None),
                    ],
                ),
            ],
            groups: vec![GroupStatus {
                name: "web".into(),
                holder: Some("slave".into()),
                state: "running".into(),
                verdict: "run here".into(),
                reason: String::new(),
                moved_to: None,
                resources: vec![GroupResourceStatus {
                    kind: "service".into(),
                    name: "httpd".into(),
                    state: "running".into(),
                    check_failing: true,
                }],
            }],
            last_failover: Some(Failover {
                from: "master".into(),
                to: "slave".into(),
                detect_ms: 3000,
                start_ms: 250,
                group: "web".into(),
                time_ms: 1_700_000_000_500,
            }),
            warnings: vec!["master is dead".into()],
        };
        let text = render(&st);
        let has = |line: &str| assert!(text.lines().any(|l| l == line), "no {line:?} in:\n{text}");
        has("hablock_cluster_node_alive{node=\"master\"} 0");
        has("hablock_cluster_node_alive{node=\"slave\"} 1");
        // Links are the peer's, as this node hears them; one never heard has no age.
        has("hablock_cluster_link_up{node=\"master\",address=\"10.213.0.151\"} 0");
        has("hablock_cluster_link_last_heartbeat_seconds{node=\"master\",address=\"10.213.0.151\"} 4.5");
        assert!(!text.contains("address=\"10.213.1.2\"} NaN"), "{text}");
        assert!(
            !text.contains("hablock_cluster_link_up{node=\"slave\""),
            "{text}"
        );
        has("hablock_cluster_group_held{group=\"web\",node=\"slave\"} 1");
        has("hablock_cluster_group_held{group=\"web\",node=\"master\"} 0");
        has("hablock_cluster_group_state{group=\"web\",state=\"running\"} 1");
        has("hablock_cluster_resource_check_failing{group=\"web\",type=\"service\",name=\"httpd\"} 1");
        has("hablock_cluster_resource_failed{group=\"web\",type=\"service\",name=\"httpd\"} 0");
        has("hablock_cluster_last_failover_detect_seconds{group=\"web\",from=\"master\",to=\"slave\"} 3");
        has("hablock_cluster_last_failover_timestamp_seconds{group=\"web\",from=\"master\",to=\"slave\"} 1700000000.5");
        has("hablock_cluster_warnings 1");
    }
}
