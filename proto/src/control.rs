//! The control protocol (Unix socket in the run directory, root-only).
//!
//! TO BE COMPLETED by the codec work: framing (layout comment, encode/decode, golden
//! vectors). Bodies are JSON objects: unknown fields are skipped, so a newer peer's
//! additions never break an older one. The types below are the frozen interface.

use crate::types::{ConnState, DiskState, Role};
use serde::{Deserialize, Serialize};

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
    /// Subscribe: the connection then carries [`Response::Event`]s until closed.
    Events,
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
