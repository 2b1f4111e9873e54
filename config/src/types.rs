//! The configuration schema. Field docs are the reference (defaults included).

use crate::units;
use serde::{Deserialize, Deserializer};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

/// The whole file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `[cluster]`.
    pub cluster: ClusterConfig,
    /// `[nodes.NAME]`: exactly two.
    pub nodes: BTreeMap<String, NodeConfig>,
    /// `[heartbeat]` (clusterd).
    #[serde(default)]
    pub heartbeat: HeartbeatConfig,
    /// `[resources.NAME]`: replicated block devices.
    #[serde(default)]
    pub resources: BTreeMap<String, ResourceConfig>,
    /// `[groups.NAME]`: resource groups moved by clusterd.
    #[serde(default)]
    pub groups: BTreeMap<String, GroupConfig>,
}

/// `[cluster]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// Cluster name (required).
    pub name: String,
    /// Shared secret file (required, mode 0600): authenticates replication and
    /// heartbeats.
    pub secret_file: PathBuf,
}

/// `[nodes.NAME]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// Replication link address (required).
    pub address: IpAddr,
    /// One address per heartbeat link (required, same count on both nodes).
    pub heartbeat: Vec<IpAddr>,
}

/// `[heartbeat]`: Heartbeat's timing semantics.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HeartbeatConfig {
    /// UDP port (default 694).
    pub port: u16,
    /// Interval between heartbeats (default `"500ms"`).
    #[serde(deserialize_with = "units::duration")]
    pub keepalive: Duration,
    /// A peer silent this long is logged as late (default `"1s"`).
    #[serde(deserialize_with = "units::duration")]
    pub warntime: Duration,
    /// A peer silent on every link this long is dead (default `"2s"`: with the default
    /// keepalive, four heartbeats lost on every link; the replication link vetoes a
    /// takeover while the peer is still Primary on it).
    #[serde(deserialize_with = "units::duration")]
    pub deadtime: Duration,
    /// Grace at start-up before a never-seen peer is dead (default `"20s"`).
    #[serde(deserialize_with = "units::duration")]
    pub initdead: Duration,
    /// Move groups back to their preferred node when it returns (default true).
    pub auto_failback: bool,
    /// Ping targets (default none). A node that reaches none of them does not take a
    /// group over, and a holder that loses all of them hands its groups to a peer that
    /// still reaches one. With no targets, reachability is not considered.
    pub ping: Vec<IpAddr>,
    /// Command that fences the peer (powers it off) before a group is taken over from
    /// a peer declared dead (default none: take over without fencing). Exit status 0
    /// means fenced; anything else refuses the takeover. May contain `{node}`, and
    /// `{peer}` which clusterd replaces with the peer's name when it runs it.
    pub fence: Option<String>,
}

impl HeartbeatConfig {
    /// The keys whose values differ between `self` and `other`, in file order (for a
    /// reload: which changes a running clusterd can take and which need a restart).
    pub fn changed_keys(&self, other: &HeartbeatConfig) -> Vec<&'static str> {
        // Destructured, so that a new field cannot be forgotten here.
        let HeartbeatConfig {
            port,
            keepalive,
            warntime,
            deadtime,
            initdead,
            auto_failback,
            ping,
            fence,
        } = self;
        differing(&[
            ("port", *port == other.port),
            ("keepalive", *keepalive == other.keepalive),
            ("warntime", *warntime == other.warntime),
            ("deadtime", *deadtime == other.deadtime),
            ("initdead", *initdead == other.initdead),
            ("auto_failback", *auto_failback == other.auto_failback),
            ("ping", *ping == other.ping),
            ("fence", *fence == other.fence),
        ])
    }
}

impl Default for HeartbeatConfig {
    fn default() -> Self {
        HeartbeatConfig {
            port: 694,
            keepalive: Duration::from_millis(500),
            warntime: Duration::from_secs(1),
            deadtime: Duration::from_secs(2),
            initdead: Duration::from_secs(20),
            auto_failback: true,
            ping: Vec::new(),
            fence: None,
        }
    }
}

/// The keys of `(key, unchanged)` pairs whose value changed, in order.
fn differing(keys: &[(&'static str, bool)]) -> Vec<&'static str> {
    keys.iter()
        .filter(|(_, same)| !same)
        .map(|(key, _)| *key)
        .collect()
}

/// Where a resource keeps its metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetadataLocation {
    /// At the end of the backing device (`"internal"`).
    Internal,
    /// In a separate file (any other string: its path).
    External(PathBuf),
}

impl<'de> Deserialize<'de> for MetadataLocation {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if s == "internal" {
            Ok(MetadataLocation::Internal)
        } else if s.starts_with('/') {
            Ok(MetadataLocation::External(PathBuf::from(s)))
        } else {
            Err(serde::de::Error::custom(format!(
                "invalid value {s:?}, expected \"internal\" or an absolute path"
            )))
        }
    }
}

/// The replication protocol. Only C: a write completes when both nodes have it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum Protocol {
    /// Synchronous replication.
    C,
}

/// Online-verify checksum.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VerifyAlg {
    /// CRC32C per 4 KiB block.
    Crc32c,
}

/// Split-brain recovery with no Primary (DRBD's `after-sb-0pri`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AfterSb0Pri {
    /// Stay StandAlone.
    Disconnect,
    /// The node without changes becomes the sync target.
    DiscardZeroChanges,
    /// The node with fewer changes becomes the sync target.
    DiscardLeastChanges,
    /// The node promoted last becomes the sync target.
    DiscardYoungerPrimary,
    /// The node promoted first becomes the sync target.
    DiscardOlderPrimary,
}

/// Split-brain recovery with one Primary (DRBD's `after-sb-1pri`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AfterSb1Pri {
    /// Stay StandAlone.
    Disconnect,
    /// The Secondary becomes the sync target.
    DiscardSecondary,
    /// As `after_sb_0pri`, if that discards the Secondary; else disconnect.
    Consensus,
}

/// Split-brain recovery with two Primaries (DRBD's `after-sb-2pri`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AfterSb2Pri {
    /// Stay StandAlone.
    Disconnect,
}

fn default_resync_rate() -> u64 {
    100 << 20
}
fn default_ping_interval() -> Duration {
    Duration::from_millis(500)
}
fn default_peer_timeout() -> Duration {
    Duration::from_secs(2)
}
fn default_connect_interval() -> Duration {
    Duration::from_secs(1)
}
fn default_al_extents() -> u32 {
    1024
}
fn default_ublk_queues() -> u16 {
    1
}
fn default_ublk_depth() -> u16 {
    128
}
fn default_sb0() -> AfterSb0Pri {
    AfterSb0Pri::Disconnect
}
fn default_sb1() -> AfterSb1Pri {
    AfterSb1Pri::Disconnect
}
fn default_sb2() -> AfterSb2Pri {
    AfterSb2Pri::Disconnect
}
fn default_protocol() -> Protocol {
    Protocol::C
}
fn default_verify_alg() -> VerifyAlg {
    VerifyAlg::Crc32c
}

/// `[resources.NAME]`: one replicated block device.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourceConfig {
    /// Replication TCP port on each node's address (required).
    pub port: u16,
    /// Backing file or block device (required).
    pub backing: PathBuf,
    /// `"internal"` (end of the backing device) or a path (required).
    pub metadata: MetadataLocation,
    /// Only `"C"` (default).
    #[serde(default = "default_protocol")]
    pub protocol: Protocol,
    /// Serves `/dev/ublkb<id>` while Primary (default: no ublk device).
    #[serde(default)]
    pub ublk_id: Option<u32>,
    /// NBD export socket while Primary (default: none).
    #[serde(default)]
    pub nbd_socket: Option<PathBuf>,
    /// Resync and verify rate, bytes per second (default `"100MiB"`).
    #[serde(default = "default_resync_rate", deserialize_with = "units::size")]
    pub resync_rate: u64,
    /// Online-verify checksum: `"crc32c"` (default).
    #[serde(default = "default_verify_alg")]
    pub verify_alg: VerifyAlg,
    /// Split brain, no Primary (default `disconnect`).
    #[serde(default = "default_sb0")]
    pub after_sb_0pri: AfterSb0Pri,
    /// Split brain, one Primary (default `disconnect`).
    #[serde(default = "default_sb1")]
    pub after_sb_1pri: AfterSb1Pri,
    /// Split brain, two Primaries (default `disconnect`).
    #[serde(default = "default_sb2")]
    pub after_sb_2pri: AfterSb2Pri,
    /// Keepalive ping interval on the replication link (default `"500ms"`).
    #[serde(
        default = "default_ping_interval",
        deserialize_with = "units::duration"
    )]
    pub ping_interval: Duration,
    /// The peer is gone after this long without a packet or a write ack (default `"2s"`).
    #[serde(default = "default_peer_timeout", deserialize_with = "units::duration")]
    pub peer_timeout: Duration,
    /// Pause between connection attempts (default `"1s"`).
    #[serde(
        default = "default_connect_interval",
        deserialize_with = "units::duration"
    )]
    pub connect_interval: Duration,
    /// Activity-log size in 4 MiB extents (default 1024 = 4 GiB hot).
    #[serde(default = "default_al_extents")]
    pub al_extents: u32,
    /// ublk queues (default 1).
    #[serde(default = "default_ublk_queues")]
    pub ublk_queues: u16,
    /// ublk queue depth (default 128).
    #[serde(default = "default_ublk_depth")]
    pub ublk_depth: u16,
}

impl ResourceConfig {
    /// The keys whose values differ between `self` and `other`, in file order (for a
    /// reload: which changes a running daemon can take and which need a restart).
    pub fn changed_keys(&self, other: &ResourceConfig) -> Vec<&'static str> {
        // Destructured, so that a new field cannot be forgotten here.
        let ResourceConfig {
            port,
            backing,
            metadata,
            protocol,
            ublk_id,
            nbd_socket,
            resync_rate,
            verify_alg,
            after_sb_0pri,
            after_sb_1pri,
            after_sb_2pri,
            ping_interval,
            peer_timeout,
            connect_interval,
            al_extents,
            ublk_queues,
            ublk_depth,
        } = self;
        differing(&[
            ("port", *port == other.port),
            ("backing", *backing == other.backing),
            ("metadata", *metadata == other.metadata),
            ("protocol", *protocol == other.protocol),
            ("ublk_id", *ublk_id == other.ublk_id),
            ("nbd_socket", *nbd_socket == other.nbd_socket),
            ("resync_rate", *resync_rate == other.resync_rate),
            ("verify_alg", *verify_alg == other.verify_alg),
            ("after_sb_0pri", *after_sb_0pri == other.after_sb_0pri),
            ("after_sb_1pri", *after_sb_1pri == other.after_sb_1pri),
            ("after_sb_2pri", *after_sb_2pri == other.after_sb_2pri),
            ("ping_interval", *ping_interval == other.ping_interval),
            ("peer_timeout", *peer_timeout == other.peer_timeout),
            (
                "connect_interval",
                *connect_interval == other.connect_interval,
            ),
            ("al_extents", *al_extents == other.al_extents),
            ("ublk_queues", *ublk_queues == other.ublk_queues),
            ("ublk_depth", *ublk_depth == other.ublk_depth),
        ])
    }
}

/// `[groups.NAME]`: resources started in order on one node, stopped in reverse.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupConfig {
    /// The node the group runs on when both are up (default: none).
    #[serde(default)]
    pub preferred: Option<String>,
    /// The ordered resources.
    pub resources: Vec<GroupResource>,
}

fn default_true() -> bool {
    true
}
fn default_arp_count() -> u32 {
    5
}
fn default_arp_interval() -> Duration {
    Duration::from_millis(200)
}

/// One resource of a group, tagged by `type`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum GroupResource {
    /// Promote/demote a block resource through blockd.
    Block {
        /// The `[resources]` name.
        resource: String,
    },
    /// Check and mount a filesystem.
    Filesystem {
        /// Block device.
        device: PathBuf,
        /// Mount point.
        mountpoint: PathBuf,
        /// Filesystem type.
        fstype: String,
        /// Mount options (default none).
        #[serde(default)]
        options: Option<String>,
        /// Run `fsck -p` before mounting (default true).
        #[serde(default = "default_true")]
        fsck: bool,
    },
    /// A virtual IP announced with gratuitous ARP.
    Vip {
        /// Address with prefix (`"10.213.0.50/24"`).
        address: IpPrefix,
        /// Interface.
        interface: String,
        /// Gratuitous ARPs sent (default 5, as IPaddr2).
        #[serde(default = "default_arp_count")]
        arp_count: u32,
        /// Between gratuitous ARPs (default `"200ms"`).
        #[serde(default = "default_arp_interval", deserialize_with = "units::duration")]
        arp_interval: Duration,
    },
    /// A supervised process (`exec`) or a systemd unit (`unit`), with an optional
    /// health `check` (http:// URL or command).
    Service {
        /// Foreground command line.
        #[serde(default)]
        exec: Option<String>,
        /// systemd unit.
        #[serde(default)]
        unit: Option<String>,
        /// Health probe.
        #[serde(default)]
        check: Option<String>,
    },
}

/// An address with its prefix length (`"10.213.0.50/24"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpPrefix {
    /// The address.
    pub addr: IpAddr,
    /// The prefix length.
    pub prefix_len: u8,
}

impl std::fmt::Display for IpPrefix {
    /// As written in the file: `10.213.0.50/24`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

impl<'de> Deserialize<'de> for IpPrefix {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let (addr, prefix_len) = split_prefix(&s).map_err(serde::de::Error::custom)?;
        Ok(IpPrefix { addr, prefix_len })
    }
}

/// Splits `"10.213.0.50/24"` into address and prefix length.
pub fn split_prefix(s: &str) -> Result<(IpAddr, u8), String> {
    let bad = || {
        format!("invalid address {s:?}; expected an address with prefix such as \"10.213.0.50/24\"")
    };
    let (ip, len) = s.split_once('/').ok_or_else(bad)?;
    let ip: IpAddr = ip.parse().map_err(|_| bad())?;
    let len: u8 = len.parse().map_err(|_| bad())?;
    Ok((ip, len))
}
