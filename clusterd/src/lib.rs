//! `clusterd`, hablock's cluster manager: a sans-IO core and a thin daemon shell.
//!
//! The core is three pure state machines and one pure function; none of them performs
//! I/O or reads a clock (every input carries `now`):
//!
//! - [`membership`]: peer liveness from heartbeats on every link (Heartbeat's
//!   `keepalive`, `warntime`, `deadtime`, `initdead`), per-link state, replay checks.
//! - [`group`]: one resource group on this node: ordered start, reverse stop,
//!   rollback of a failed start, re-adoption by probing, local restarts of a failing
//!   service up to a limit.
//! - [`policy`]: where a group should run, decided the same way on both nodes.
//!
//! The shell ([`daemon`]) receives and sends heartbeats, runs resource steps (blockd,
//! mounts, addresses, gratuitous ARP, services) and feeds the results back; [`cli`]
//! holds what `clusterd` and `clusterctl` share; [`check`] is `clusterctl check`, what clusterd needs from
//! this host, looked at without changing anything; [`metrics`] is `clusterctl metrics`.

pub mod check;
pub mod daemon;
pub mod group;
pub mod membership;
pub mod metrics;
pub mod policy;
