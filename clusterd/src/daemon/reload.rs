//! Reloading the configuration (`clusterctl reload`, `systemctl reload clusterd`,
//! SIGHUP): what a running clusterd takes from the edited file and what needs a
//! restart.
//!
//! A running clusterd takes the `[heartbeat]` timings (`keepalive`, `warntime`,
//! `deadtime`, `initdead`: a silence under way is judged by the new ones; the pace of
//! the blockd and ping probes, derived from `keepalive` at start, stays),
//! `auto_failback` and `fence`. Everything else it was started with (the cluster's name
//! and secret file, the nodes and their heartbeat addresses, the heartbeat port, the
//! ping targets, the groups) needs a restart, which moves the groups held here: a file
//! that changes any of it is refused as a whole, naming each key, and nothing is
//! applied. `[resources]` is blockd's.

use super::runner::Msg;
use hablock_config::Config;
use hablock_proto::control::ClusterResponse;
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;
use tokio::sync::oneshot;

/// The `[heartbeat]` keys a running clusterd applies on a reload.
const RELOADABLE: [&str; 6] = [
    "keepalive",
    "warntime",
    "deadtime",
    "initdead",
    "auto_failback",
    "fence",
];

/// Where the daemon reads its configuration again.
#[derive(Debug, Clone)]
pub struct ReloadSource {
    /// The configuration file.
    pub path: PathBuf,
    /// This node's name.
    pub node: String,
}

impl ReloadSource {
    /// Reads the file as it is now into a message for the runner, which applies it
    /// and answers on `reply`.
    pub fn message(&self, reply: Option<oneshot::Sender<ClusterResponse>>) -> Msg {
        let loaded = Config::load(&self.path, &self.node)
            .map(Box::new)
            .map_err(|e| format!("not reloaded, nothing changed: {e}"));
        Msg::Reload {
            config: self.path.display().to_string(),
            loaded,
            reply,
        }
    }
}

/// Compares the running configuration with a newly read one: one line per change
/// to apply, or every change that needs a restart (one line).
pub fn plan(running: &Config, new: &Config) -> Result<Vec<String>, String> {
    let mut restart = Vec::new();
    if running.cluster != new.cluster {
        restart.push("[cluster]".to_string());
    }
    if running.nodes != new.nodes {
        restart.push("[nodes]".to_string());
    }
    let (old_hb, new_hb) = (&running.heartbeat, &new.heartbeat);
    let changed = old_hb.changed_keys(new_hb);
    let (live, fixed): (Vec<&str>, Vec<&str>) =
        changed.into_iter().partition(|k| RELOADABLE.contains(k));
    restart.extend(fixed.iter().map(|k| format!("heartbeat.{k}")));
    let groups: BTreeSet<&String> = running.groups.keys().chain(new.groups.keys()).collect();
    restart.extend(
        groups
            .into_iter()
            .filter(|name| running.groups.get(*name) != new.groups.get(*name))
            .map(|name| format!("groups.{name}")),
    );
    if !restart.is_empty() {
        return Err(hablock_config::reload::restart_needed(&restart, "clusterd"));
    }
    Ok(live
        .iter()
        .map(|k| {
            let (from, to) = match *k {
                "keepalive" => (duration(old_hb.keepalive), duration(new_hb.keepalive)),
                "warntime" => (duration(old_hb.warntime), duration(new_hb.warntime)),
                "deadtime" => (duration(old_hb.deadtime), duration(new_hb.deadtime)),
                "initdead" => (duration(old_hb.initdead), duration(new_hb.initdead)),
                "auto_failback" => (
                    old_hb.auto_failback.to_string(),
                    new_hb.auto_failback.to_string(),
                ),
                _ => (command(&old_hb.fence), command(&new_hb.fence)),
            };
            format!("heartbeat.{k} {from} -> {to}")
        })
        .collect())
}

/// `3s`, `500ms`: as the configuration spells durations.
fn duration(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

/// A fence command, quoted, or `none`.
fn command(c: &Option<String>) -> String {
    c.as_ref()
        .map_or_else(|| "none".to_string(), |c| format!("{c:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../../../config/tests/data/hablock.toml");

    fn parse(text: &str) -> Config {
        match Config::parse_str(text, "hablock.toml", "master") {
            Ok(c) => c,
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn the_same_file_changes_nothing() {
        let c = parse(EXAMPLE);
        assert_eq!(plan(&c, &c), Ok(vec![]));
    }

    #[test]
    fn timings_failback_and_fence_are_applied_with_a_line_each() {
        let new = EXAMPLE
            .replace("deadtime = \"3s\"", "deadtime = \"5s\"")
            .replace("keepalive = \"500ms\"", "keepalive = \"1s\"")
            .replace(
                "auto_failback = true",
                "auto_failback = false\nfence = \"true {peer}\"",
            )
            // blockd's section is not clusterd's business.
            .replace("resync_rate = \"100MiB\"", "resync_rate = \"16MiB\"");
        assert_eq!(
            plan(&parse(EXAMPLE), &parse(&new)),
            Ok(vec![
                "heartbeat.keepalive 500ms -> 1s".to_string(),
                "heartbeat.deadtime 3s -> 5s".to_string(),
                "heartbeat.auto_failback true -> false".to_string(),
                "heartbeat.fence none -> \"true {peer}\"".to_string(),
            ])
        );
    }

    #[test]
    fn what_needs_a_restart_is_refused_as_a_whole_and_named() {
        let new = EXAMPLE
            .replace("deadtime = \"3s\"", "deadtime = \"5s\"")
            .replace("port = 694", "port = 695")
            .replace("10.213.0.50/24", "10.213.0.51/24")
            .replace("\"10.213.0.152\"", "\"10.213.0.153\"");
        assert_eq!(
            plan(&parse(EXAMPLE), &parse(&new)),
            Err(
                "not reloaded, nothing changed: [nodes], heartbeat.port, groups.web need a \
                 restart of clusterd"
                    .to_string()
            )
        );
        let one = EXAMPLE.replace("preferred = \"master\"", "preferred = \"slave\"");
        assert_eq!(
            plan(&parse(EXAMPLE), &parse(&one)),
            Err("not reloaded, nothing changed: groups.web needs a restart of clusterd".into())
        );
    }
}
