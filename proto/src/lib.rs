//! hablock's wire formats, with no I/O.
//!
//! - [`peer`]: the replication protocol spoken between the two `blockd` of a resource
//!   over TCP (handshake, authentication, data, acks, resync, verify).
//! - [`control`]: the control protocol on the Unix socket in the run directory
//!   (`blockctl` and `clusterd` talk to `blockd` through it).
//! - [`heartbeat`]: the authenticated UDP heartbeat `clusterd` sends on every link.
//! - [`admin`]: the authenticated UDP request that forwards `standby`/`online` to
//!   the peer.
//! - [`types`]: the state enums both protocols and the status output share.
//! - [`metrics`]: the Prometheus text format `blockctl metrics` and `clusterctl metrics`
//!   print.

pub mod admin;
pub mod control;
pub mod heartbeat;
pub mod metrics;
pub mod peer;
pub mod types;
