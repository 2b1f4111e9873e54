//! The sans-IO core of `clusterd`, hablock's cluster manager.
//!
//! Three pure state machines and one pure function; none of them performs I/O or
//! reads a clock (every input carries `now`). The daemon is a thin shell that
//! receives and sends heartbeats, runs resource steps, and feeds the results back.
//!
//! - [`membership`]: peer liveness from heartbeats on every link (Heartbeat's
//!   `keepalive`, `warntime`, `deadtime`, `initdead`), per-link state, replay checks.
//! - [`group`]: one resource group on this node: ordered start, reverse stop,
//!   rollback of a failed start, re-adoption by probing, local restarts of a failing
//!   service up to a limit.
//! - [`policy`]: where a group should run, decided the same way on both nodes.

pub mod group;
pub mod membership;
pub mod policy;
