//! The resource agents: start, stop and probe one resource of a group. Every step is
//! idempotent (starting a running resource or stopping a stopped one succeeds and
//! changes nothing), as the group reconciler requires.

pub mod block;
pub mod check;
pub mod filesystem;
pub mod garp;
pub mod service;
pub mod vip;

use hablock_config::GroupResource;
use std::path::PathBuf;
use std::time::Duration;
use thiserror::Error;

/// Why a step failed.
#[derive(Debug, Error)]
pub enum StepError {
    /// The step was refused or did not reach its goal.
    #[error("{0}")]
    Failed(String),
    /// A system call or a program failed to run.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The cause.
        source: std::io::Error,
    },
}

impl StepError {
    /// An I/O error with context.
    pub fn io(what: impl Into<String>, source: std::io::Error) -> StepError {
        StepError::Io {
            what: what.into(),
            source,
        }
    }
}

/// Result of a step.
pub type StepResult<T = ()> = Result<T, StepError>;

/// Everything a resource agent needs besides its configuration.
#[derive(Debug, Clone)]
pub struct AgentContext {
    /// The run directory (blockd's socket, pid files).
    pub run_dir: PathBuf,
    /// The group's name.
    pub group: String,
    /// Index of the resource in the group.
    pub index: usize,
    /// Timeout of one blockd request.
    pub blockd_timeout: Duration,
}

/// One configured resource with the agent that drives it.
#[derive(Debug, Clone)]
pub struct Agent {
    /// The configuration.
    pub config: GroupResource,
    /// Context.
    pub ctx: AgentContext,
}

impl Agent {
    /// The resource's type name (`block`, `filesystem`, `vip`, `service`).
    pub fn kind(&self) -> &'static str {
        match &self.config {
            GroupResource::Block { .. } => "block",
            GroupResource::Filesystem { .. } => "filesystem",
            GroupResource::Vip { .. } => "vip",
            GroupResource::Service { .. } => "service",
        }
    }

    /// A short description (resource, mountpoint, address, command or unit).
    pub fn describe(&self) -> String {
        match &self.config {
            GroupResource::Block { resource } => resource.clone(),
            GroupResource::Filesystem { mountpoint, .. } => mountpoint.display().to_string(),
            GroupResource::Vip {
                address, interface, ..
            } => format!("{address} on {interface}"),
            GroupResource::Service { exec, unit, .. } => {
                exec.clone().or_else(|| unit.clone()).unwrap_or_default()
            }
        }
    }

    /// Starts the resource.
    pub async fn start(&self) -> StepResult {
        match &self.config {
            GroupResource::Block { resource } => block::promote(&self.ctx, resource).await,
            GroupResource::Filesystem {
                device,
                mountpoint,
                fstype,
                options,
                fsck,
            } => filesystem::start(device, mountpoint, fstype, options.as_deref(), *fsck).await,
            GroupResource::Vip {
                address,
                interface,
                arp_count,
                arp_interval,
            } => vip::start(address, interface, *arp_count, *arp_interval).await,
            GroupResource::Service { exec, unit, .. } => {
                service::start(&self.ctx, exec.as_deref(), unit.as_deref()).await
            }
        }
    }

    /// Stops the resource.
    pub async fn stop(&self) -> StepResult {
        match &self.config {
            GroupResource::Block { resource } => block::demote(&self.ctx, resource).await,
            GroupResource::Filesystem {
                device, mountpoint, ..
            } => filesystem::stop(device, mountpoint).await,
            GroupResource::Vip {
                address, interface, ..
            } => vip::stop(address, interface).await,
            GroupResource::Service { exec, unit, .. } => {
                service::stop(&self.ctx, exec.as_deref(), unit.as_deref()).await
            }
        }
    }

    /// Whether the resource runs on this node.
    pub async fn probe(&self) -> StepResult<bool> {
        match &self.config {
            GroupResource::Block { resource } => block::probe(&self.ctx, resource).await,
            GroupResource::Filesystem {
                device, mountpoint, ..
            } => filesystem::probe(device, mountpoint).await,
            GroupResource::Vip {
                address, interface, ..
            } => vip::probe(address, interface).await,
            GroupResource::Service { exec, unit, .. } => {
                service::probe(&self.ctx, exec.as_deref(), unit.as_deref()).await
            }
        }
    }

    /// The health check of a running resource: `None` when it has none. A service
    /// run by `exec` fails it when its process is gone; its `check` runs after that.
    /// (A block resource's check is the runner's poll of blockd: its disk attached.)
    pub async fn check(&self, timeout: Duration) -> Option<bool> {
        let GroupResource::Service { exec, unit, check } = &self.config else {
            return None;
        };
        if exec.is_some() {
            match service::probe(&self.ctx, exec.as_deref(), unit.as_deref()).await {
                Ok(true) => {}
                _ => return Some(false),
            }
        }
        match check {
            Some(c) => Some(check::run(c, timeout).await),
            None if exec.is_some() => Some(true),
            None => None,
        }
    }
}

/// Runs a program to completion with a timeout; returns its exit code and output.
pub async fn run_program(
    program: &str,
    args: &[&str],
    timeout: Duration,
) -> StepResult<(i32, String)> {
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let what = format!("{program} {}", args.join(" "));
    match tokio::time::timeout(timeout, cmd.output()).await {
        Err(_) => Err(StepError::Failed(format!("{what}: timed out"))),
        Ok(Err(e)) => Err(StepError::io(what, e)),
        Ok(Ok(out)) => {
            let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
            text.push_str(&String::from_utf8_lossy(&out.stderr));
            Ok((out.status.code().unwrap_or(-1), text))
        }
    }
}
