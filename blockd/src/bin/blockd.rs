//! `blockd`: the replicated block device daemon (foreground; systemd `Type=notify`).

use anyhow::Context;
use clap::Parser;
use hablock_config::cli::CommonOptions;

/// hablock's block daemon: serves every configured resource, mirrors each write to the
/// peer before acknowledging it (protocol C).
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    #[command(flatten)]
    common: CommonOptions,
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    hablock_config::cli::init_tracing();
    keep_io_buffers_in_the_heap();
    let opts = match blockd::cli::daemon_options(&args.common) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("blockd: {e:#}");
            return std::process::ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("blockd: {e:#}");
            return std::process::ExitCode::from(1);
        }
    };
    match rt.block_on(blockd::daemon::run(opts)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("blockd: {e:#}");
            std::process::ExitCode::from(if is_config_error(&e) { 2 } else { 1 })
        }
    }
}

fn is_config_error(e: &anyhow::Error) -> bool {
    e.chain()
        .any(|c| c.downcast_ref::<hablock_config::ConfigError>().is_some())
}

/// Every request allocates and frees buffers of up to a few hundred KiB. By default
/// glibc serves each from a fresh `mmap`, so the kernel faults in and zeroes every
/// page of every request, then trims the heap again. Raising both thresholds keeps the freed
/// buffers in the heap for the next request; the cost is that blockd keeps up to
/// the trim threshold of freed memory.
fn keep_io_buffers_in_the_heap() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only changes allocator parameters; it is called before any
    // other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 16 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 64 << 20);
    }
}
