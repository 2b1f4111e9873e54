//! Reloading the configuration (`blockctl reload`, `systemctl reload blockd`, SIGHUP):
//! what a running blockd takes from the edited file and what needs a restart.
//!
//! A running resource takes its `resync_rate` (a running resync or verify changes pace
//! at once) and its `after_sb_*` split-brain policies (used at the next connection).
//! Everything else it was started with (addresses, ports, backing devices, ublk and NBD
//! frontends, timers, the secret file, the set of resources) needs a restart of blockd;
//! a file that changes any of it is refused as a whole, naming each key, and nothing is
//! applied. Sections blockd does not use (`[heartbeat]`, `[groups]`) are clusterd's.

use super::policy_of;
use super::resource::ResourceMsg;
use crate::engine::{Command, CommandResult, Tunables};
use hablock_config::{Config, ResourceConfig};
use hablock_proto::control::Response;
use std::collections::BTreeMap;
use std::path::PathBuf;
use tokio::sync::{mpsc, oneshot, Mutex};
use tracing::{info, warn};

/// The resource keys a running blockd applies on a reload.
const RELOADABLE: [&str; 4] = [
    "resync_rate",
    "after_sb_0pri",
    "after_sb_1pri",
    "after_sb_2pri",
];

/// What a reload does: new settings per resource, and a line per change.
#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    /// Resource name and its new settings, for each resource whose settings changed.
    pub tunes: Vec<(String, Tunables)>,
    /// One line per changed key, e.g. `r0: resync_rate 100.0 MiB/s -> 16.0 MiB/s`.
    pub changes: Vec<String>,
}

/// Compares the running configuration of `node` with a newly read one: the plan, or
/// every change that needs a restart (one line).
pub fn plan(running: &Config, new: &Config, node: &str) -> Result<Plan, String> {
    let mut restart = Vec::new();
    if running.cluster.secret_file != new.cluster.secret_file {
        restart.push("cluster.secret_file".to_string());
    }
    let address = |c: &Config, n: &str| c.nodes.get(n).map(|n| n.address);
    if address(running, node) != address(new, node) {
        restart.push(format!("nodes.{node}.address"));
    }
    if let (Some((old_peer, old_node)), Some((new_peer, new_node))) =
        (running.peer_of(node), new.peer_of(node))
    {
        if old_peer != new_peer {
            restart.push(format!("the peer ({old_peer} -> {new_peer})"));
        } else if old_node.address != new_node.address {
            restart.push(format!("nodes.{old_peer}.address"));
        }
    }
    let mut plan = Plan::default();
    for name in new.resources.keys() {
        if !running.resources.contains_key(name) {
            restart.push(format!("resources.{name} (added)"));
        }
    }
    for (name, old) in &running.resources {
        let Some(updated) = new.resources.get(name) else {
            restart.push(format!("resources.{name} (removed)"));
            continue;
        };
        let changed = old.changed_keys(updated);
        let (live, fixed): (Vec<&str>, Vec<&str>) =
            changed.into_iter().partition(|k| RELOADABLE.contains(k));
        restart.extend(fixed.iter().map(|k| format!("resources.{name}.{k}")));
        if !live.is_empty() {
            plan.changes
                .extend(live.iter().map(|k| describe(name, k, old, updated)));
            plan.tunes.push((name.clone(), tunables_of(updated)));
        }
    }
    if restart.is_empty() {
        Ok(plan)
    } else {
        Err(hablock_config::reload::restart_needed(&restart, "blockd"))
    }
}

/// The settings of `r` a running engine takes.
pub fn tunables_of(r: &ResourceConfig) -> Tunables {
    Tunables {
        resync_rate_bps: r.resync_rate,
        policy: policy_of(r),
    }
}

/// One line for reloadable key `key` of resource `name`: its old and new value.
fn describe(name: &str, key: &str, old: &ResourceConfig, new: &ResourceConfig) -> String {
    let rate = |b: u64| format!("{:.1} MiB/s", b as f64 / (1u64 << 20) as f64);
    let (from, to) = match key {
        "resync_rate" => (rate(old.resync_rate), rate(new.resync_rate)),
        "after_sb_0pri" => (
            kebab(&format!("{:?}", old.after_sb_0pri)),
            kebab(&format!("{:?}", new.after_sb_0pri)),
        ),
        "after_sb_1pri" => (
            kebab(&format!("{:?}", old.after_sb_1pri)),
            kebab(&format!("{:?}", new.after_sb_1pri)),
        ),
        _ => (
            kebab(&format!("{:?}", old.after_sb_2pri)),
            kebab(&format!("{:?}", new.after_sb_2pri)),
        ),
    };
    format!("{name}: {key} {from} -> {to}")
}

/// `DiscardSecondary` -> `discard-secondary`, as the configuration spells policies.
fn kebab(camel: &str) -> String {
    let mut out = String::new();
    for (i, c) in camel.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('-');
        }
        out.push(c.to_ascii_lowercase());
    }
    out
}

/// Reloads the configuration of a running daemon, one reload at a time.
pub struct Reloader {
    path: PathBuf,
    node: String,
    /// The configuration in force (the last one applied).
    running: Mutex<Config>,
    resources: BTreeMap<String, mpsc::Sender<ResourceMsg>>,
}

impl Reloader {
    /// A reloader for a daemon started from `path` as `node` with `running`.
    pub fn new(
        path: PathBuf,
        node: String,
        running: Config,
        resources: BTreeMap<String, mpsc::Sender<ResourceMsg>>,
    ) -> Reloader {
        Reloader {
            path,
            node,
            running: Mutex::new(running),
            resources,
        }
    }

    /// Reads the file again and applies it: `Reloaded` with what changed, or `Refused`
    /// (a file that does not load, or a change that needs a restart) with nothing
    /// applied.
    pub async fn reload(&self) -> Response {
        let mut running = self.running.lock().await;
        let shown = self.path.display().to_string();
        let refused = |message: String| {
            warn!(config = %shown, "{message}");
            Response::Refused { message }
        };
        let new = match Config::load(&self.path, &self.node) {
            Ok(c) => c,
            Err(e) => return refused(format!("not reloaded, nothing changed: {e}")),
        };
        let plan = match plan(&running, &new, &self.node) {
            Ok(p) => p,
            Err(message) => return refused(message),
        };
        for (name, tunables) in &plan.tunes {
            let Some(tx) = self.resources.get(name) else {
                continue;
            };
            let (reply, rx) = oneshot::channel();
            let cmd = Command::Tune(*tunables);
            let result = match tx.send(ResourceMsg::Command { cmd, reply }).await {
                Ok(()) => rx.await.ok(),
                Err(_) => None,
            };
            match result {
                Some(CommandResult::Ok(_)) => {}
                Some(CommandResult::Refused(why)) => return refused(format!("{name}: {why}")),
                None => return refused(format!("{name} is shutting down")),
            }
        }
        *running = new;
        if plan.changes.is_empty() {
            info!(config = %shown, "configuration reloaded: no change for blockd");
        }
        for change in &plan.changes {
            info!(config = %shown, "configuration reloaded: {change}");
        }
        Response::Reloaded {
            config: shown,
            changes: plan.changes,
        }
    }
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
        assert_eq!(plan(&c, &c, "master"), Ok(Plan::default()));
    }

    #[test]
    fn rate_and_policies_are_applied_with_a_line_each() {
        let old = parse(EXAMPLE);
        let new = parse(
            &EXAMPLE
                .replace("resync_rate = \"100MiB\"", "resync_rate = \"16MiB\"")
                .replace(
                    "after_sb_1pri = \"discard-secondary\"",
                    "after_sb_1pri = \"disconnect\"",
                )
                // clusterd's sections are not blockd's business.
                .replace("deadtime = \"3s\"", "deadtime = \"5s\""),
        );
        let p = plan(&old, &new, "master").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            p.changes,
            [
                "r0: resync_rate 100.0 MiB/s -> 16.0 MiB/s",
                "r0: after_sb_1pri discard-secondary -> disconnect"
            ]
        );
        assert_eq!(
            p.tunes,
            [("r0".to_string(), tunables_of(&new.resources["r0"]))]
        );
        assert_eq!(p.tunes[0].1.resync_rate_bps, 16 << 20);
    }

    #[test]
    fn what_needs_a_restart_is_refused_as_a_whole_and_named() {
        let old = parse(EXAMPLE);
        let new = parse(
            &EXAMPLE
                .replace("resync_rate = \"100MiB\"", "resync_rate = \"16MiB\"")
                .replace("port = 7789", "port = 7790")
                .replace("address = \"10.213.1.3\"", "address = \"10.213.1.4\"")
                .replace("backing = \"/dev/vdb\"", "backing = \"/dev/vdc\""),
        );
        let Err(why) = plan(&old, &new, "master") else {
            panic!("a new port was accepted");
        };
        assert_eq!(
            why,
            "not reloaded, nothing changed: nodes.slave.address, resources.r0.port, \
             resources.r0.backing need a restart of blockd"
        );
    }

    #[test]
    fn added_and_removed_resources_need_a_restart() {
        let old = parse(EXAMPLE);
        let added = format!(
            "{EXAMPLE}\n[resources.r1]\nport = 7790\nbacking = \"/dev/vdc\"\nmetadata = \"internal\"\n"
        );
        let Err(why) = plan(&old, &parse(&added), "master") else {
            panic!("an added resource was accepted");
        };
        assert!(why.contains("resources.r1 (added)"), "{why}");
        let Err(why) = plan(&parse(&added), &old, "master") else {
            panic!("a removed resource was accepted");
        };
        assert!(why.contains("resources.r1 (removed)"), "{why}");
    }

    #[test]
    fn policy_names_are_spelled_as_in_the_file() {
        assert_eq!(kebab("DiscardZeroChanges"), "discard-zero-changes");
        assert_eq!(kebab("Disconnect"), "disconnect");
    }
}
