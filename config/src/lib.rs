//! hablock's configuration file: one TOML file, identical on both nodes.
//!
//! [`Config::load`] reads it, replaces `{node}` in string values with the name of the
//! node reading it, and validates it. Every error names the file, the line, the key
//! and what was expected, e.g.
//! `hablock.toml:27: resources.r0.after_sb_0pri: unknown variant "foo", expected one of ...`.
//! Unknown keys are errors (every table denies unknown fields).
//!
//! The structs are the configuration reference: each field's doc states its default.

pub mod check;
pub mod cli;
pub mod reload;
mod types;
mod units;

pub use types::*;
pub use units::{format_size, parse_duration, parse_size};

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use thiserror::Error;

/// Where the configuration lives unless `--config` says otherwise.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/hablock/hablock.toml";
/// Where sockets live unless `--run-dir` says otherwise.
pub const DEFAULT_RUN_DIR: &str = "/run/hablock";
/// Longest node or group name, in bytes (a heartbeat packet carries them).
pub const MAX_NAME: usize = 64;
/// Most groups one cluster may have (a heartbeat packet describes all of them).
pub const MAX_GROUPS: usize = 8;

/// A configuration problem. The `Display` form is one line for the operator.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{file}: {source}")]
    Read {
        /// The file.
        file: String,
        /// Why.
        source: std::io::Error,
    },
    /// A key, a value or the syntax is wrong.
    #[error("{file}:{line}: {key}: {message}")]
    Invalid {
        /// The file.
        file: String,
        /// 1-based line (0 when unknown).
        line: usize,
        /// Dotted key path (`resources.r0.port`).
        key: String,
        /// What is wrong and what was expected.
        message: String,
    },
    /// The node is not in `[nodes]`.
    #[error("node {node:?} is not in [nodes] of {file} (known: {known})")]
    UnknownNode {
        /// The file.
        file: String,
        /// The node name asked for.
        node: String,
        /// Configured names.
        known: String,
    },
    /// The secret file is unusable.
    #[error("{path}: {message}")]
    Secret {
        /// The secret file.
        path: String,
        /// Why.
        message: String,
    },
}

fn line_of(text: &str, byte: usize) -> usize {
    text[..byte.min(text.len())]
        .bytes()
        .filter(|b| *b == b'\n')
        .count()
        + 1
}

/// Finds the line of `key` in table `table` (a dotted header such as `resources.r0`),
/// for errors found after parsing. Falls back to the table header, then 0.
fn locate(text: &str, table: &str, key: Option<&str>) -> usize {
    let mut current = String::new();
    let mut header_line = 0;
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if let Some(h) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            current = h.trim_matches(['[', ']']).trim().to_string();
            if current == table {
                header_line = i + 1;
            }
            continue;
        }
        if current == table {
            if let Some(k) = key {
                let name = line.split('=').next().unwrap_or("").trim();
                if name == k {
                    return i + 1;
                }
            }
        }
    }
    header_line
}

impl Config {
    /// Reads, expands and validates the configuration for `node`.
    pub fn load(path: &Path, node: &str) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            file: path.display().to_string(),
            source,
        })?;
        Config::parse_str(&text, &path.display().to_string(), node)
    }

    /// Parses `text` (errors name `file`), expands `{node}` and validates.
    pub fn parse_str(text: &str, file: &str, node: &str) -> Result<Config, ConfigError> {
        let de = toml::Deserializer::new(text);
        let mut cfg: Config = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            let inner = e.into_inner();
            let line = inner.span().map(|s| line_of(text, s.start)).unwrap_or(0);
            let message = inner.message().trim().replace('`', "\"");
            ConfigError::Invalid {
                file: file.to_string(),
                line,
                key,
                message,
            }
        })?;
        if !cfg.nodes.contains_key(node) {
            return Err(ConfigError::UnknownNode {
                file: file.to_string(),
                node: node.to_string(),
                known: cfg.nodes.keys().cloned().collect::<Vec<_>>().join(", "),
            });
        }
        cfg.expand(node);
        cfg.validate(text, file)?;
        Ok(cfg)
    }

    /// Replaces `{node}` in every string value.
    fn expand(&mut self, node: &str) {
        let s = |v: &mut String| *v = v.replace("{node}", node);
        let p = |v: &mut PathBuf| *v = PathBuf::from(v.to_string_lossy().replace("{node}", node));
        s(&mut self.cluster.name);
        if let Some(f) = &mut self.heartbeat.fence {
            s(f);
        }
        p(&mut self.cluster.secret_file);
        for r in self.resources.values_mut() {
            p(&mut r.backing);
            if let MetadataLocation::External(m) = &mut r.metadata {
                p(m);
            }
            if let Some(n) = &mut r.nbd_socket {
                p(n);
            }
        }
        for g in self.groups.values_mut() {
            for item in &mut g.resources {
                match item {
                    GroupResource::Block { resource } => s(resource),
                    GroupResource::Filesystem {
                        device,
                        mountpoint,
                        fstype,
                        options,
                        ..
                    } => {
                        p(device);
                        p(mountpoint);
                        s(fstype);
                        if let Some(o) = options {
                            s(o);
                        }
                    }
                    GroupResource::Vip { interface, .. } => s(interface),
                    GroupResource::Service { exec, unit, check } => {
                        for v in [exec, unit, check].into_iter().flatten() {
                            s(v);
                        }
                    }
                }
            }
        }
    }

    /// Checks what the types cannot: cross references, orderings, uniqueness.
    pub fn validate(&self, text: &str, file: &str) -> Result<(), ConfigError> {
        let err = |table: &str, key: Option<&str>, message: String| {
            let line = locate(text, table, key);
            let path = match key {
                Some(k) => format!("{table}.{k}"),
                None => table.to_string(),
            };
            ConfigError::Invalid {
                file: file.to_string(),
                line,
                key: path,
                message,
            }
        };
        if self.nodes.len() != 2 {
            return Err(err(
                "nodes",
                None,
                format!("exactly two nodes are expected, found {}", self.nodes.len()),
            ));
        }
        let lens: Vec<usize> = self.nodes.values().map(|n| n.heartbeat.len()).collect();
        for (name, n) in &self.nodes {
            if name.len() > MAX_NAME {
                return Err(err(
                    &format!("nodes.{name}"),
                    None,
                    format!("node names are at most {MAX_NAME} bytes"),
                ));
            }
            if n.heartbeat.is_empty() {
                return Err(err(
                    &format!("nodes.{name}"),
                    Some("heartbeat"),
                    "at least one heartbeat address is expected".into(),
                ));
            }
            if n.heartbeat.len() != lens[0] {
                return Err(err(
                    &format!("nodes.{name}"),
                    Some("heartbeat"),
                    "both nodes must list the same number of heartbeat links".into(),
                ));
            }
        }
        let hb = &self.heartbeat;
        if hb.keepalive.is_zero() {
            return Err(err(
                "heartbeat",
                Some("keepalive"),
                "must be more than 0".into(),
            ));
        }
        if hb.deadtime <= hb.keepalive {
            return Err(err(
                "heartbeat",
                Some("deadtime"),
                "must be longer than keepalive".into(),
            ));
        }
        if hb.warntime >= hb.deadtime {
            return Err(err(
                "heartbeat",
                Some("warntime"),
                "must be shorter than deadtime".into(),
            ));
        }
        if hb.initdead < hb.deadtime {
            return Err(err(
                "heartbeat",
                Some("initdead"),
                "must be at least deadtime".into(),
            ));
        }
        let mut ports: BTreeMap<u16, &str> = BTreeMap::new();
        for (name, r) in &self.resources {
            let table = format!("resources.{name}");
            if r.port == 0 {
                return Err(err(&table, Some("port"), "must not be 0".into()));
            }
            if let Some(other) = ports.insert(r.port, name) {
                return Err(err(
                    &table,
                    Some("port"),
                    format!("port {} is already used by resource {other}", r.port),
                ));
            }
            if r.resync_rate == 0 {
                return Err(err(
                    &table,
                    Some("resync_rate"),
                    "must be more than 0".into(),
                ));
            }
            if r.peer_timeout <= r.ping_interval {
                return Err(err(
                    &table,
                    Some("peer_timeout"),
                    "must be longer than ping_interval".into(),
                ));
            }
            if name.len() > 64 {
                return Err(err(
                    &table,
                    None,
                    "resource names are at most 64 bytes".into(),
                ));
            }
        }
        if self.groups.len() > MAX_GROUPS {
            return Err(err(
                "groups",
                None,
                format!(
                    "at most {MAX_GROUPS} groups are supported, found {}",
                    self.groups.len()
                ),
            ));
        }
        if hb.fence.as_deref().is_some_and(|f| f.trim().is_empty()) {
            return Err(err(
                "heartbeat",
                Some("fence"),
                "must be a command, or be left out".into(),
            ));
        }
        for (name, g) in &self.groups {
            let table = format!("groups.{name}");
            if name.len() > MAX_NAME {
                return Err(err(
                    &table,
                    None,
                    format!("group names are at most {MAX_NAME} bytes"),
                ));
            }
            if let Some(p) = &g.preferred {
                if !self.nodes.contains_key(p) {
                    return Err(err(
                        &table,
                        Some("preferred"),
                        format!("{p:?} is not a node in [nodes]"),
                    ));
                }
            }
            for item in &g.resources {
                match item {
                    GroupResource::Block { resource } if !self.resources.contains_key(resource) => {
                        return Err(err(
                            &table,
                            Some("resources"),
                            format!("block resource {resource:?} is not in [resources]"),
                        ));
                    }
                    GroupResource::Vip { address, .. } => {
                        let max = if address.addr.is_ipv4() { 32 } else { 128 };
                        if address.prefix_len > max {
                            let len = address.prefix_len;
                            return Err(err(
                                &table,
                                Some("resources"),
                                format!("vip prefix /{len} is longer than {max}"),
                            ));
                        }
                    }
                    GroupResource::Service { exec, unit, .. }
                        if exec.is_some() == unit.is_some() =>
                    {
                        return Err(err(
                            &table,
                            Some("resources"),
                            "a service needs exactly one of exec or unit".into(),
                        ));
                    }
                    _ => {}
                }
            }
        }
        Ok(())
    }

    /// The other node: its name and settings.
    pub fn peer_of(&self, node: &str) -> Option<(&str, &NodeConfig)> {
        self.nodes
            .iter()
            .find(|(n, _)| n.as_str() != node)
            .map(|(n, c)| (n.as_str(), c))
    }

    /// Reads the shared secret, refusing a file others can read.
    pub fn read_secret(&self) -> Result<Vec<u8>, ConfigError> {
        use std::os::unix::fs::PermissionsExt;
        let path = &self.cluster.secret_file;
        let shown = path.display().to_string();
        let meta = std::fs::metadata(path).map_err(|e| ConfigError::Secret {
            path: shown.clone(),
            message: e.to_string(),
        })?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(ConfigError::Secret {
                path: shown.clone(),
                message: format!("mode {mode:04o}, must be 0600 (chmod 600 {shown})"),
            });
        }
        let mut secret = std::fs::read(path).map_err(|e| ConfigError::Secret {
            path: shown.clone(),
            message: e.to_string(),
        })?;
        while secret.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
            secret.pop();
        }
        if secret.is_empty() {
            return Err(ConfigError::Secret {
                path: shown,
                message: "the secret is empty".into(),
            });
        }
        Ok(secret)
    }
}
