//! blockd: hablock's replicated block device.
//!
//! - [`md`]: the on-disk metadata (superblock, generation identifiers, dirty bitmap,
//!   activity log) and `create-md`.
//! - [`engine`]: the sans-IO replication engine (protocol C, resync, split brain,
//!   verify): events in, actions out.
//! - [`nbd`]: the NBD frontend (fixed-newstyle server on a Unix socket).
//! - [`daemon`]: the thin shell that runs engines over tokio, files and sockets.
//! - [`client`]: the control-socket client `blockctl` uses.
//! - [`metrics`]: `blockctl metrics`, the status as Prometheus metrics.
//! - [`check`]: `blockctl check`, what blockd needs from this host, looked at read-only.
//! - [`cli`]: options shared by the binaries.
//! - [`aligned`]: page-aligned buffers for O_DIRECT.

pub mod aligned;
pub mod check;
pub mod cli;
pub mod client;
pub mod daemon;
pub mod engine;
pub mod md;
pub mod metrics;
pub mod nbd;
