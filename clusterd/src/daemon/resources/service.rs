//! The service resource: a supervised foreground process (`exec`, run with `sh -c`)
//! or a systemd unit (`unit`).
//!
//! An `exec` service runs in its own session and process group; its pid and start
//! time are kept in `<run-dir>/service-<group>-<index>.pid`, so a restarted clusterd
//! re-adopts a running service (probe = that process is alive) instead of restarting
//! it. Stop: SIGTERM to the process group, SIGKILL after [`STOP_GRACE`].

use super::{run_program, AgentContext, StepError, StepResult};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::path::PathBuf;
use std::time::Duration;

/// How long a stopped service may take to exit after SIGTERM.
pub const STOP_GRACE: Duration = Duration::from_secs(5);
/// A started process that exits within this time failed to start.
const START_GRACE: Duration = Duration::from_millis(200);
const SYSTEMCTL_TIMEOUT: Duration = Duration::from_secs(90);

/// The pid file of an `exec` service.
pub fn pid_file(ctx: &AgentContext) -> PathBuf {
    ctx.run_dir
        .join(format!("service-{}-{}.pid", ctx.group, ctx.index))
}

/// Field 22 of /proc/PID/stat (start time in clock ticks) and whether it is a zombie.
fn proc_start(pid: i32) -> Option<(u64, bool)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces and parentheses: parse after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let state = fields.first()?;
    let start = fields.get(19)?.parse().ok()?;
    Some((start, *state == "Z" || *state == "X"))
}

/// The pid recorded in the pid file, if that process is still the one started.
pub fn recorded_pid(ctx: &AgentContext) -> Option<i32> {
    let text = std::fs::read_to_string(pid_file(ctx)).ok()?;
    let mut it = text.split_whitespace();
    let pid: i32 = it.next()?.parse().ok()?;
    let start: u64 = it.next()?.parse().ok()?;
    match proc_start(pid) {
        Some((s, false)) if s == start && pid > 1 => Some(pid),
        _ => None,
    }
}

/// Starts the service.
pub async fn start(ctx: &AgentContext, exec: Option<&str>, unit: Option<&str>) -> StepResult {
    if let Some(unit) = unit {
        return systemctl("start", unit).await;
    }
    let Some(cmdline) = exec else {
        return Err(StepError::Failed(
            "service has neither exec nor unit".into(),
        ));
    };
    if recorded_pid(ctx).is_some() {
        return Ok(());
    }
    let mut cmd = tokio::process::Command::new("sh");
    cmd.arg("-c")
        .arg(format!("exec {cmdline}"))
        .stdin(std::process::Stdio::null())
        .kill_on_drop(false);
    // SAFETY: setsid is async-signal-safe; the closure touches no other state.
    unsafe {
        cmd.pre_exec(|| {
            nix::unistd::setsid().map_err(std::io::Error::from)?;
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| StepError::io(format!("starting {cmdline}"), e))?;
    let Some(pid) = child.id() else {
        return Err(StepError::Failed(format!("{cmdline} exited at once")));
    };
    let pid = pid as i32;
    let Some((start, _)) = proc_start(pid) else {
        return Err(StepError::Failed(format!("{cmdline} exited at once")));
    };
    let path = pid_file(ctx);
    if let Err(e) = std::fs::write(&path, format!("{pid} {start}\n")) {
        // Without a pid file it could never be stopped or re-adopted: do not leave it.
        let _ = kill(Pid::from_raw(-pid), Signal::SIGKILL);
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        let _ = child.wait().await;
        return Err(StepError::io(format!("writing {}", path.display()), e));
    }
    // Reap it when it exits (the health check notices it is gone).
    tokio::spawn(async move {
        let status = child.wait().await;
        tracing::warn!(pid, ?status, "service process exited");
    });
    tokio::time::sleep(START_GRACE).await;
    if recorded_pid(ctx).is_none() {
        return Err(StepError::Failed(format!(
            "{cmdline} exited within {START_GRACE:?}"
        )));
    }
    tracing::info!(pid, service = cmdline, "service started");
    Ok(())
}

/// Stops the service: SIGTERM to its process group, SIGKILL after [`STOP_GRACE`].
pub async fn stop(ctx: &AgentContext, exec: Option<&str>, unit: Option<&str>) -> StepResult {
    if let Some(unit) = unit {
        return systemctl("stop", unit).await;
    }
    let _ = exec;
    let path = pid_file(ctx);
    if let Some(pid) = recorded_pid(ctx) {
        let _ = kill(Pid::from_raw(-pid), Signal::SIGTERM);
        let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        let deadline = tokio::time::Instant::now() + STOP_GRACE;
        while recorded_pid(ctx).is_some() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        if recorded_pid(ctx).is_some() {
            tracing::warn!(pid, "service ignored SIGTERM; sending SIGKILL");
            let _ = kill(Pid::from_raw(-pid), Signal::SIGKILL);
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
            while recorded_pid(ctx).is_some() && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            if recorded_pid(ctx).is_some() {
                return Err(StepError::Failed(format!("pid {pid} survived SIGKILL")));
            }
        }
    }
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(StepError::io(format!("removing {}", path.display()), e)),
    }
}

/// The service runs: its recorded process is alive, or the unit is active.
pub async fn probe(ctx: &AgentContext, exec: Option<&str>, unit: Option<&str>) -> StepResult<bool> {
    if let Some(unit) = unit {
        let (code, _) = run_program(
            "systemctl",
            &["is-active", "--quiet", unit],
            SYSTEMCTL_TIMEOUT,
        )
        .await?;
        return Ok(code == 0);
    }
    let _ = exec;
    Ok(recorded_pid(ctx).is_some())
}

async fn systemctl(verb: &str, unit: &str) -> StepResult {
    let (code, out) = run_program("systemctl", &[verb, unit], SYSTEMCTL_TIMEOUT).await?;
    if code != 0 {
        return Err(StepError::Failed(format!(
            "systemctl {verb} {unit}: {}",
            out.trim()
        )));
    }
    Ok(())
}
