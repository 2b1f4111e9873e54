//! State names shared by the peer protocol, the control protocol and `status`.
//!
//! The string forms (serde and `Display`) are the pinned user-facing names from
//! DESIGN.md; the numeric forms are the peer protocol's wire values and never change.

use serde::{Deserialize, Serialize};
use std::fmt;

/// A node's role for one resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Role {
    /// Serves no I/O; receives the peer's writes.
    Secondary,
    /// Serves I/O through its frontends and mirrors every write to the peer.
    Primary,
    /// Not known (the peer while disconnected).
    Unknown,
}

/// The state of a node's copy of the data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum DiskState {
    /// No backing device attached.
    Diskless,
    /// The data is not usable as a whole (a resync target, or never synced).
    Inconsistent,
    /// Consistent but known to be older than the peer's.
    Outdated,
    /// The newest data.
    UpToDate,
    /// Not known (the peer's disk while disconnected).
    DUnknown,
}

/// The replication link's state for one resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ConnState {
    /// Not trying to connect (after `disconnect`, or a refused peer / split brain).
    StandAlone,
    /// Trying to reach the peer.
    Connecting,
    /// Connected and in sync.
    Connected,
    /// Connected, sending a resync to the peer.
    SyncSource,
    /// Connected, receiving a resync from the peer.
    SyncTarget,
    /// Connected, running an online verify as the driving side.
    VerifySource,
    /// Connected, answering the peer's online verify.
    VerifyTarget,
}

macro_rules! wire_enum {
    ($ty:ident { $($variant:ident = $val:expr),* $(,)? }) => {
        impl $ty {
            /// The value of this state on the wire.
            pub fn to_wire(self) -> u8 {
                match self { $($ty::$variant => $val),* }
            }
            /// Decodes a wire value; `None` for a value this version does not know.
            pub fn from_wire(v: u8) -> Option<Self> {
                match v { $($val => Some($ty::$variant),)* _ => None }
            }
        }
        impl $ty {
            /// Every value, in wire order.
            pub const ALL: &'static [$ty] = &[$($ty::$variant),*];
            /// The name shown to people and in JSON.
            pub fn as_str(self) -> &'static str {
                match self { $($ty::$variant => stringify!($variant)),* }
            }
        }
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

wire_enum!(Role { Secondary = 0, Primary = 1, Unknown = 2 });
wire_enum!(DiskState { Diskless = 0, Inconsistent = 1, Outdated = 2, UpToDate = 3, DUnknown = 4 });
wire_enum!(ConnState {
    StandAlone = 0,
    Connecting = 1,
    Connected = 2,
    SyncSource = 3,
    SyncTarget = 4,
    VerifySource = 5,
    VerifyTarget = 6,
});

/// Generation identifiers of a node's data, as in DRBD.
///
/// `current` changes whenever the data starts to diverge from what the peer has
/// (a Primary losing its peer, a forced promotion); `bitmap` holds the `current` of the
/// moment the dirty bitmap started tracking changes (0 when it tracks nothing);
/// `history` keeps the two previous `bitmap` values. 0 means "none".
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Uuids {
    /// Identifies the data as it is now.
    pub current: u64,
    /// The `current` the dirty bitmap is relative to, or 0.
    pub bitmap: u64,
    /// Older generations, newest first.
    pub history: [u64; 2],
}
