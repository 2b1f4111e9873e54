//! blockd: hablock's replicated block device.
//!
//! - [`md`]: the on-disk metadata (superblock, generation identifiers, dirty bitmap,
//!   activity log) and `create-md`.
//! - [`engine`]: the sans-IO replication engine (protocol C, resync, split brain,
//!   verify): events in, actions out.
//! - [`nbd`]: the NBD frontend (fixed-newstyle server on a Unix socket).
//! - [`daemon`]: the thin shell that runs engines over tokio, io and sockets.

pub mod md;
pub mod nbd;
