//! What every hablock program shares on its command line and at start-up: the
//! `--config`/`--node`/`--run-dir` options, where the control sockets live in the run
//! directory, logging to stderr, the admin tools' output to stdout and their shell
//! completions.

use clap::Args;
use std::path::{Path, PathBuf};

/// `--config`, `--node`, `--run-dir`: every hablock program takes them.
#[derive(Debug, Clone, Args)]
pub struct CommonOptions {
    /// Configuration file.
    #[arg(long, global = true, default_value = crate::DEFAULT_CONFIG_PATH)]
    pub config: PathBuf,
    /// This node's name (default: the hostname).
    #[arg(long, global = true)]
    pub node: Option<String>,
    /// Run directory for sockets.
    #[arg(long, global = true, default_value = crate::DEFAULT_RUN_DIR)]
    pub run_dir: PathBuf,
}

impl CommonOptions {
    /// The node name: `--node`, or the hostname.
    pub fn node(&self) -> std::io::Result<String> {
        if let Some(n) = &self.node {
            return Ok(n.clone());
        }
        let h = nix::unistd::gethostname().map_err(|e| {
            std::io::Error::new(
                std::io::Error::from(e).kind(),
                format!("reading the hostname: {e}"),
            )
        })?;
        Ok(h.to_string_lossy().into_owned())
    }
}

/// Path of blockd's control socket in `run_dir`.
pub fn blockd_socket(run_dir: &Path) -> PathBuf {
    run_dir.join("blockd.sock")
}

/// Path of clusterd's control socket in `run_dir`.
pub fn clusterd_socket(run_dir: &Path) -> PathBuf {
    run_dir.join("clusterd.sock")
}

/// Writes `text` to stdout in one piece (a short report reaches a pipe in one write,
/// before its reader can leave). A reader that went away (`blockctl status | grep -q`,
/// `clusterctl events | head`) ends the program quietly with status 0: nobody is left
/// to read, which is not the command's failure. Other errors are returned.
pub fn print_out(text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        r => r,
    }
}

/// Prints the completion script of the admin tool `C` (invoked as `name`) for `shell`:
/// what `blockctl completions bash` and `clusterctl completions bash` print, and what
/// the Debian package installs.
pub fn print_completions<C: clap::CommandFactory>(shell: clap_complete::Shell, name: &str) {
    clap_complete::generate(shell, &mut C::command(), name, &mut std::io::stdout());
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
