//! The control protocol (Unix socket in the run directory, root-only): requests from
//! `blockctl` and `clusterd` to `blockd`, and its replies and event stream.
//!
//! # Framing
//!
//! ```text
//! // { magic u32 "HBC1" | version u16 | reserved u16 | body_len u32 | body_crc u32 }
//! // { body: JSON object [u8; body_len] }
//! ```
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 4 | magic `48 42 43 31` ("HBC1") |
//! | 4 | 2 | version ([`CONTROL_VERSION`]), little-endian |
//! | 6 | 2 | reserved, 0 |
//! | 8 | 4 | body length, at most [`MAX_CONTROL_BODY`] (checked before reading it) |
//! | 12 | 4 | CRC32C of the body |
//!
//! The body is a JSON object: a [`Request`] tagged by `"cmd"`, a [`Response`] tagged
//! by `"reply"`.
//!
//! # Version policy
//!
//! Forward compatible by construction: readers skip JSON fields they do not know, so a
//! newer side may add fields freely; a field is never removed, renamed or retyped
//! (that would be a new `version`, refused by older readers). An unknown command is
//! answered with [`Response::BadRequest`] and the connection stays usable
//! ([`ControlError::UnknownCommand`]).

use crate::types::{ConnState, DiskState, Role};
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Frame magic: "HBC1".
pub const CONTROL_MAGIC: [u8; 4] = *b"HBC1";
/// The framing version this build writes and reads.
pub const CONTROL_VERSION: u16 = 1;
/// Largest body accepted.
pub const MAX_CONTROL_BODY: u32 = 1 << 20;
/// Size of the frame header.
pub const CONTROL_HEADER_LEN: usize = 16;

/// Errors decoding a control frame.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ControlError {
    /// Not a control frame.
    #[error("bad magic (not a hablock control frame)")]
    BadMagic,
    /// A framing version this build does not read.
    #[error("unsupported control protocol version {0}")]
    UnsupportedVersion(u16),
    /// The body is larger than [`MAX_CONTROL_BODY`].
    #[error("body of {0} bytes exceeds the limit")]
    TooLarge(u32),
    /// The body checksum does not match.
    #[error("body checksum mismatch")]
    BadChecksum,
    /// The body is not a JSON request/response.
    #[error("invalid body: {0}")]
    InvalidBody(String),
    /// A well-formed request with a command this build does not know.
    #[error("unknown command {0:?}")]
    UnknownCommand(String),
}

fn frame(body: Vec<u8>) -> Vec<u8> {
    let mut out = Vec::with_capacity(CONTROL_HEADER_LEN + body.len());
    out.extend_from_slice(&CONTROL_MAGIC);
    out.extend_from_slice(&CONTROL_VERSION.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(&body).to_le_bytes());
    out.extend_from_slice(&body);
    out
}

/// Encodes a request frame.
pub fn encode_request(req: &Request) -> Vec<u8> {
    // Serializing these plain types to JSON cannot fail; an empty object would be
    // refused by the reader rather than crash the writer.
    frame(serde_json::to_vec(req).unwrap_or_else(|_| b"{}".to_vec()))
}

/// Encodes a response frame.
pub fn encode_response(resp: &Response) -> Vec<u8> {
    frame(serde_json::to_vec(resp).unwrap_or_else(|_| b"{}".to_vec()))
}

/// Total length of the frame at the start of `buf`, once its header is complete.
pub fn frame_len(buf: &[u8]) -> Option<usize> {
    if buf.len() < CONTROL_HEADER_LEN {
        return None;
    }
    let len = u32::from_le_bytes([buf[8], buf[9], buf[10], buf[11]]);
    Some(CONTROL_HEADER_LEN + len as usize)
}

/// Checks the frame at the start of `buf`; returns the body and the frame length.
fn check(buf: &[u8]) -> Result<Option<(&[u8], usize)>, ControlError> {
    if buf.len() >= 4 && buf[0..4] != CONTROL_MAGIC {
        return Err(ControlError::BadMagic);
    }
    if buf.len() < CONTROL_HEADER_LEN {
        return Ok(None);
    }
    let version = u16::from_le_bytes([buf[4], buf[5]]);
    if version != CONTROL_VERSION {
        return Err(ControlError::UnsupportedVersion(version));
    }
    let len = u32::from_le_bytes([buf[8], buf[9], buf[10], buf[11]]);
    if len > MAX_CONTROL_BODY {
        return Err(ControlError::TooLarge(len));
    }
    let total = CONTROL_HEADER_LEN + len as usize;
    if buf.len() < total {
        return Ok(None);
    }
    let body = &buf[CONTROL_HEADER_LEN..total];
    let crc = u32::from_le_bytes([buf[12], buf[13], buf[14], buf[15]]);
    if crc32c::crc32c(body) != crc {
        return Err(ControlError::BadChecksum);
    }
    Ok(Some((body, total)))
}

/// Decodes a request frame; `Ok(None)` when more bytes are needed.
pub fn decode_request(buf: &[u8]) -> Result<Option<(Request, usize)>, ControlError> {
    let Some((body, total)) = check(buf)? else {
        return Ok(None);
    };
    match serde_json::from_slice::<Request>(body) {
        Ok(r) => Ok(Some((r, total))),
        Err(e) => {
            // Tell a newer client's command apart from garbage.
            if let Ok(serde_json::Value::Object(map)) =
                serde_json::from_slice::<serde_json::Value>(body)
            {
                if let Some(serde_json::Value::String(cmd)) = map.get("cmd") {
                    const KNOWN: [&str; 9] = [
                        "status",
                        "primary",
                        "secondary",
                        "connect",
                        "disconnect",
                        "verify",
                        "invalidate",
                        "events",
                        "reload",
                    ];
                    if !KNOWN.contains(&cmd.as_str()) {
                        return Err(ControlError::UnknownCommand(cmd.clone()));
                    }
                }
            }
            Err(ControlError::InvalidBody(e.to_string()))
        }
    }
}

/// Decodes a response frame; `Ok(None)` when more bytes are needed.
pub fn decode_response(buf: &[u8]) -> Result<Option<(Response, usize)>, ControlError> {
    let Some((body, total)) = check(buf)? else {
        return Ok(None);
    };
    serde_json::from_slice::<Response>(body)
        .map(|r| Some((r, total)))
        .map_err(|e| ControlError::InvalidBody(e.to_string()))
}

/// A request from an admin tool (or clusterd) to blockd.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "kebab-case")]
pub enum Request {
    /// Status of one resource, or all.
    Status {
        /// Resource name; all when absent.
        #[serde(default)]
        resource: Option<String>,
    },
    /// Promote.
    Primary {
        /// Resource name.
        resource: String,
        /// Promote even with the peer unknown or the data Inconsistent.
        #[serde(default)]
        force: bool,
    },
    /// Demote.
    Secondary {
        /// Resource name.
        resource: String,
    },
    /// Start connecting to the peer (leaves StandAlone).
    Connect {
        /// Resource name.
        resource: String,
        /// Resolve a split brain by making this node the sync target.
        #[serde(default)]
        discard_my_data: bool,
    },
    /// Drop the connection and stay StandAlone.
    Disconnect {
        /// Resource name.
        resource: String,
    },
    /// Start an online verify.
    Verify {
        /// Resource name.
        resource: String,
    },
    /// Mark all local data out of sync and resync it from the peer.
    Invalidate {
        /// Resource name.
        resource: String,
    },
    /// Stop using the local disk; the peer serves the I/O.
    Detach {
        /// Resource name.
        resource: String,
    },
    /// Open the local disk again after a detach; it is resynced in full.
    Attach {
        /// Resource name.
        resource: String,
    },
    /// Subscribe: the connection then carries [`Response::Event`]s until closed.
    Events,
    /// Read the configuration file again and apply what a running daemon can change
    /// (answered with [`Response::Reloaded`], or `Refused` naming what needs a restart).
    Reload,
}

/// A reply from blockd.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "kebab-case")]
pub enum Response {
    /// The command was carried out.
    Ok {
        /// Warnings the operator should see (e.g. a forced promotion).
        #[serde(default)]
        warnings: Vec<String>,
    },
    /// The command was refused; `message` is one line.
    Refused {
        /// Why.
        message: String,
    },
    /// The request could not be understood (bad usage).
    BadRequest {
        /// Why.
        message: String,
    },
    /// Status report.
    Status(StatusReport),
    /// One event (on an `events` subscription).
    Event(Event),
    /// The configuration was read again and applied.
    Reloaded {
        /// The file that was read.
        config: String,
        /// What changed, one line each (`r0: resync_rate 104857600 -> 16777216`); empty
        /// when nothing did.
        #[serde(default)]
        changes: Vec<String>,
    },
}

/// `blockctl status --json` prints this object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusReport {
    /// One entry per resource.
    pub resources: Vec<ResourceStatus>,
}

/// Status of one resource (the pinned fields of DESIGN.md and more).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResourceStatus {
    /// Resource name.
    pub name: String,
    /// This node's name.
    #[serde(default)]
    pub node: String,
    /// The peer's node name.
    #[serde(default)]
    pub peer: String,
    /// This node's role.
    pub role: Role,
    /// The peer's role.
    pub peer_role: Role,
    /// Replication link state.
    pub connection: ConnState,
    /// This node's disk.
    pub disk: DiskState,
    /// The peer's disk.
    pub peer_disk: DiskState,
    /// Usable size exported to clients.
    pub size_bytes: u64,
    /// Bytes marked out of sync in this node's bitmap.
    pub out_of_sync_bytes: u64,
    /// Total bytes sent or received by resync since the daemon started.
    pub resynced_bytes: u64,
    /// A split brain was detected and is unresolved.
    pub split_brain: bool,
    /// Progress of the running resync or verify (0..1), or null.
    pub sync_progress: Option<f64>,
    /// Resync rate over the last seconds, bytes per second (null when not syncing).
    #[serde(default)]
    pub sync_rate_bps: Option<u64>,
    /// Estimated seconds left of the running resync (null when not syncing).
    #[serde(default)]
    pub sync_eta_s: Option<u64>,
    /// Paths of the live frontends (NBD socket, /dev/ublkbN).
    pub devices: Vec<String>,
    /// Result of the last completed online verify.
    #[serde(default)]
    pub last_verify: Option<VerifyResult>,
    /// Why the connection is StandAlone, if it is.
    #[serde(default)]
    pub standalone_reason: Option<String>,
    /// Why the disk is Diskless, if it was detached after an I/O error.
    #[serde(default)]
    pub detach_reason: Option<String>,
    /// I/O counters since blockd started and what is in flight now.
    #[serde(default)]
    pub statistics: IoStatistics,
}

/// A resource's I/O counters since blockd started, and what is in flight now: what
/// DRBD shows as `dr dw ns nr al bm` and `ap pe lo`. Counters only grow; the three
/// `*_pending` figures are a snapshot (a value that stays up while nothing completes
/// means stuck I/O).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IoStatistics {
    /// Bytes read from the local backing device (frontend reads, resync and verify).
    pub disk_read_bytes: u64,
    /// Bytes written to the local backing device (frontend writes, the peer's writes
    /// and resync data applied here).
    pub disk_written_bytes: u64,
    /// Block data sent to the peer (replicated writes, resync data), payload bytes.
    pub net_sent_bytes: u64,
    /// Block data received from the peer, payload bytes.
    pub net_received_bytes: u64,
    /// Activity-log updates written (a write entered an extent that was not hot).
    pub al_writes: u64,
    /// Writes of the bitmap's dirty pages (while the peer is away, and resync progress).
    pub bitmap_writes: u64,
    /// Frontend requests in flight now.
    pub app_pending: u64,
    /// Writes and flushes sent to the peer and not acknowledged yet.
    pub peer_pending: u64,
    /// Operations on the local backing device in flight now.
    pub local_pending: u64,
}

/// Outcome of an online verify.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyResult {
    /// Bytes compared.
    pub checked_bytes: u64,
    /// Bytes found different (and marked out of sync).
    pub out_of_sync_bytes: u64,
}

/// Something that happened to a resource (`blockctl events`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Wall-clock time, milliseconds since the Unix epoch.
    pub time_ms: u64,
    /// Resource name.
    pub resource: String,
    /// What kind of change: `role`, `peer-role`, `connection`, `disk`, `peer-disk`,
    /// `split-brain`, `resync-started`, `resync-finished`, `verify-finished`, `refused`.
    pub kind: String,
    /// Previous value, when the event is a change.
    #[serde(default)]
    pub old: Option<String>,
    /// New value, when the event is a change.
    #[serde(default)]
    pub new: Option<String>,
    /// Free text.
    #[serde(default)]
    pub message: Option<String>,
}

// ---- clusterd's control socket (`clusterctl` <-> `clusterd`) ----
//
// Same framing as above; the bodies are [`ClusterRequest`] (tagged by `"cmd"`) and
// [`ClusterResponse`] (tagged by `"reply"`). Same version policy.

/// The commands clusterd knows, for telling a newer client's command from garbage.
const CLUSTER_COMMANDS: [&str; 6] = ["status", "standby", "online", "move", "events", "reload"];

/// A request from `clusterctl` to `clusterd`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "kebab-case")]
pub enum ClusterRequest {
    /// The cluster's status ([`ClusterResponse::Status`]).
    Status,
    /// Put a node in standby (it gives its groups away); this node when absent.
    Standby {
        /// Node name.
        #[serde(default)]
        node: Option<String>,
    },
    /// Take a node out of standby and forget group failures on it; this node when
    /// absent.
    Online {
        /// Node name.
        #[serde(default)]
        node: Option<String>,
    },
    /// Run a group on a node (sticky until the next move).
    Move {
        /// Group name.
        group: String,
        /// Node name.
        node: String,
    },
    /// Subscribe: the connection then carries [`ClusterResponse::Event`]s until closed.
    Events,
    /// Read the configuration file again and apply what a running clusterd can change
    /// (answered with [`ClusterResponse::Reloaded`], or `Refused` naming what needs a
    /// restart).
    Reload,
}

/// A reply from clusterd.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "kebab-case")]
pub enum ClusterResponse {
    /// The command was carried out (or forwarded).
    Ok {
        /// Warnings the operator should see.
        #[serde(default)]
        warnings: Vec<String>,
    },
    /// The command was refused; `message` is one line.
    Refused {
        /// Why.
        message: String,
    },
    /// The request could not be understood.
    BadRequest {
        /// Why.
        message: String,
    },
    /// Status report.
    Status(ClusterStatus),
    /// One event (on an `events` subscription).
    Event(ClusterEvent),
    /// The configuration was read again and applied.
    Reloaded {
        /// The file that was read.
        config: String,
        /// What changed, one line each (`heartbeat.deadtime 3s -> 5s`); empty when
        /// nothing did.
        #[serde(default)]
        changes: Vec<String>,
    },
}

/// `clusterctl status --json` prints this object (the pinned fields of DESIGN.md and
/// more).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterStatus {
    /// The node that answered.
    pub node: String,
    /// Both nodes, this one first.
    pub nodes: Vec<NodeStatus>,
    /// Every configured group.
    pub groups: Vec<GroupStatus>,
    /// The last takeover from a dead peer this node carried out, if any.
    pub last_failover: Option<Failover>,
    /// Conditions the operator should look at (a heartbeat link down, a late peer).
    #[serde(default)]
    pub warnings: Vec<String>,
}

/// One node in [`ClusterStatus`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// Node name.
    pub name: String,
    /// Alive (always true for the answering node).
    pub alive: bool,
    /// In standby.
    #[serde(default)]
    pub standby: bool,
    /// `alive`, `dead` or `unknown` (not heard yet, within `initdead`).
    #[serde(default)]
    pub liveness: String,
    /// Reaches a ping target (or none configured).
    #[serde(default)]
    pub ping_ok: bool,
    /// Heartbeats are not heard, but blockd reports the node Primary on a live
    /// replication link.
    #[serde(default)]
    pub alive_via_replication: bool,
    /// Heartbeat links: for the peer, what this node hears on each; for this node,
    /// its own addresses.
    pub links: Vec<LinkInfo>,
}

/// One heartbeat link in [`NodeStatus`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LinkInfo {
    /// The node's address on the link.
    pub address: String,
    /// Heartbeats arrive on it (for this node: the last heartbeat could be sent on it,
    /// i.e. a route to the peer's address exists).
    pub up: bool,
    /// `up`, `down` or `unknown`.
    #[serde(default)]
    pub state: String,
    /// Milliseconds since the last valid heartbeat on it (null: never).
    pub last_seen_ms: Option<u64>,
}

/// One group in [`ClusterStatus`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupStatus {
    /// Group name.
    pub name: String,
    /// The node holding it (not fully stopped there), or null.
    pub holder: Option<String>,
    /// The group's state on the answering node (`running`, `stopped`, `starting`,
    /// `stopping`, `partial`, `probing`, `failed`).
    #[serde(default)]
    pub state: String,
    /// The answering node's last placement verdict and why.
    #[serde(default)]
    pub verdict: String,
    /// Why.
    #[serde(default)]
    pub reason: String,
    /// An administrator's move target, if any.
    #[serde(default)]
    pub moved_to: Option<String>,
    /// The resources, in start order, with their state on the answering node.
    pub resources: Vec<GroupResourceStatus>,
}

/// One resource of a group in [`GroupStatus`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupResourceStatus {
    /// `block`, `filesystem`, `vip`, `service`.
    #[serde(rename = "type")]
    pub kind: String,
    /// What it is (resource name, mountpoint, address, command).
    #[serde(default)]
    pub name: String,
    /// `stopped|starting|running|stopping|failed` on the answering node.
    pub state: String,
    /// Its last health check failed.
    #[serde(default)]
    pub check_failing: bool,
}

/// A takeover from a dead peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failover {
    /// The dead peer.
    pub from: String,
    /// The node that took over.
    pub to: String,
    /// From the peer's last heartbeat to its declaration as dead, milliseconds.
    pub detect_ms: u64,
    /// From the start of the takeover until the group ran, milliseconds.
    pub start_ms: u64,
    /// The group taken over.
    #[serde(default)]
    pub group: String,
    /// Wall-clock time of the takeover's end, milliseconds since the Unix epoch.
    #[serde(default)]
    pub time_ms: u64,
}

/// Something that happened in the cluster (`clusterctl events`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterEvent {
    /// Wall-clock time, milliseconds since the Unix epoch.
    pub time_ms: u64,
    /// The node reporting it.
    pub node: String,
    /// `peer-up`, `peer-dead`, `peer-late`, `peer-restarted`, `link-up`,
    /// `link-down`, `group`, `verdict`, `standby`, `online`, `move`, `fence`,
    /// `failover`, `refused`.
    pub kind: String,
    /// The group concerned, if any.
    #[serde(default)]
    pub group: Option<String>,
    /// Free text.
    pub message: String,
}

/// Encodes a clusterd request frame.
pub fn encode_cluster_request(req: &ClusterRequest) -> Vec<u8> {
    frame(serde_json::to_vec(req).unwrap_or_else(|_| b"{}".to_vec()))
}

/// Encodes a clusterd response frame.
pub fn encode_cluster_response(resp: &ClusterResponse) -> Vec<u8> {
    frame(serde_json::to_vec(resp).unwrap_or_else(|_| b"{}".to_vec()))
}

/// Decodes a clusterd request frame; `Ok(None)` when more bytes are needed.
pub fn decode_cluster_request(buf: &[u8]) -> Result<Option<(ClusterRequest, usize)>, ControlError> {
    let Some((body, total)) = check(buf)? else {
        return Ok(None);
    };
    match serde_json::from_slice::<ClusterRequest>(body) {
        Ok(r) => Ok(Some((r, total))),
        Err(e) => {
            if let Ok(serde_json::Value::Object(map)) =
                serde_json::from_slice::<serde_json::Value>(body)
            {
                if let Some(serde_json::Value::String(cmd)) = map.get("cmd") {
                    if !CLUSTER_COMMANDS.contains(&cmd.as_str()) {
                        return Err(ControlError::UnknownCommand(cmd.clone()));
                    }
                }
            }
            Err(ControlError::InvalidBody(e.to_string()))
        }
    }
}

/// Decodes a clusterd response frame; `Ok(None)` when more bytes are needed.
pub fn decode_cluster_response(
    buf: &[u8],
) -> Result<Option<(ClusterResponse, usize)>, ControlError> {
    let Some((body, total)) = check(buf)? else {
        return Ok(None);
    };
    serde_json::from_slice::<ClusterResponse>(body)
        .map(|r| Some((r, total)))
        .map_err(|e| ControlError::InvalidBody(e.to_string()))
}
