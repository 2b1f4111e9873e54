//! The daemon's options from the command line every hablock program shares
//! ([`hablock_config::cli`]).

use crate::daemon::DaemonOptions;
use anyhow::Context;
use hablock_config::cli::CommonOptions;

/// The daemon's options: `--config`, `--node` (default: the hostname), `--run-dir`.
pub fn daemon_options(common: &CommonOptions) -> anyhow::Result<DaemonOptions> {
    Ok(DaemonOptions {
        config: common.config.clone(),
        node: common.node().context("this node's name")?,
        run_dir: common.run_dir.clone(),
    })
}
