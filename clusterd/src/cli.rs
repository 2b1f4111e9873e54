//! Options and helpers shared by `clusterd` and `clusterctl` (the same
//! `--config`/`--node`/`--run-dir` as blockd's tools).

use anyhow::Context;
use clap::Args;
use std::path::{Path, PathBuf};

/// `--config`, `--node`, `--run-dir`: every hablock program takes them.
#[derive(Debug, Clone, Args)]
pub struct CommonOptions {
    /// Configuration file.
    #[arg(long, global = true, default_value = hablock_config::DEFAULT_CONFIG_PATH)]
    pub config: PathBuf,
    /// This node's name (default: the hostname).
    #[arg(long, global = true)]
    pub node: Option<String>,
    /// Run directory for sockets.
    #[arg(long, global = true, default_value = hablock_config::DEFAULT_RUN_DIR)]
    pub run_dir: PathBuf,
}

impl CommonOptions {
    /// The node name: `--node`, or the hostname.
    pub fn node(&self) -> anyhow::Result<String> {
        if let Some(n) = &self.node {
            return Ok(n.clone());
        }
        let h = nix::unistd::gethostname().context("reading the hostname")?;
        Ok(h.to_string_lossy().into_owned())
    }
}

/// Path of clusterd's control socket in `run_dir`.
pub fn control_socket(run_dir: &Path) -> PathBuf {
    run_dir.join("clusterd.sock")
}

/// Path of blockd's control socket in `run_dir`.
pub fn blockd_socket(run_dir: &Path) -> PathBuf {
    run_dir.join("blockd.sock")
}

/// Logs to stderr (journald picks it up under systemd); `RUST_LOG` filters.
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}
