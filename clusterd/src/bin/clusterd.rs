//! `clusterd`: the cluster daemon (foreground; systemd `Type=notify`).
//!
//! Exit codes: 0 clean stop, 1 runtime failure, 2 bad usage or configuration.

use anyhow::Context;
use clap::Parser;
use clusterd::daemon::DaemonOptions;
use hablock_config::cli::CommonOptions;

/// hablock's cluster daemon: heartbeats over every link, moves the resource groups
/// (block device, filesystem, virtual IP, service) to the surviving node.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    #[command(flatten)]
    common: CommonOptions,
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    hablock_config::cli::init_tracing();
    let node = match args.common.node() {
        Ok(n) => n,
        Err(e) => {
            eprintln!("clusterd: {e:#}");
            return std::process::ExitCode::from(2);
        }
    };
    let opts = DaemonOptions {
        config: args.common.config.clone(),
        node,
        run_dir: args.common.run_dir.clone(),
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("clusterd: {e:#}");
            return std::process::ExitCode::from(1);
        }
    };
    match rt.block_on(clusterd::daemon::run(opts)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("clusterd: {e:#}");
            let config = e
                .chain()
                .any(|c| c.downcast_ref::<hablock_config::ConfigError>().is_some());
            std::process::ExitCode::from(if config { 2 } else { 1 })
        }
    }
}
