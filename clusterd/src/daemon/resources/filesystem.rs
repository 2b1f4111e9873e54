//! The filesystem resource: `fsck.<fstype> -p DEVICE` (exit 0 and 1 pass), mount,
//! and unmount on stop; an unmount refused with EBUSY kills the processes using the
//! mount point (SIGTERM, then SIGKILL) and retries. Probe: the mount point is mounted
//! from that device (`/proc/self/mountinfo`).

use super::{run_program, StepError, StepResult};
use nix::mount::{MntFlags, MsFlags};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::path::{Path, PathBuf};
use std::time::Duration;

const FSCK_TIMEOUT: Duration = Duration::from_secs(600);

/// Undoes the octal escapes (`\040` for a space) of /proc/self/mountinfo.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() {
            if let Some(v) = std::str::from_utf8(&b[i + 1..i + 4])
                .ok()
                .and_then(|d| u8::from_str_radix(d, 8).ok())
            {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// (mount point, source) of every mount in a mountinfo text.
pub fn parse_mountinfo(text: &str) -> Vec<(PathBuf, String)> {
    text.lines()
        .filter_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            let mountpoint = pre.split_whitespace().nth(4)?;
            let source = post.split_whitespace().nth(1)?;
            Some((PathBuf::from(unescape(mountpoint)), unescape(source)))
        })
        .collect()
}

fn canonical(p: &Path) -> PathBuf {
    std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf())
}

/// The mount point is mounted from the device.
pub async fn probe(device: &Path, mountpoint: &Path) -> StepResult<bool> {
    let text = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| StepError::io("reading /proc/self/mountinfo", e))?;
    let (dev, mp) = (canonical(device), canonical(mountpoint));
    Ok(parse_mountinfo(&text)
        .iter()
        .any(|(m, s)| *m == mp && canonical(Path::new(s)) == dev))
}

/// Checks and mounts.
pub async fn start(
    device: &Path,
    mountpoint: &Path,
    fstype: &str,
    options: Option<&str>,
    fsck: bool,
) -> StepResult {
    if probe(device, mountpoint).await? {
        return Ok(());
    }
    let dev = device.display().to_string();
    if fsck {
        let prog = format!("fsck.{fstype}");
        let (code, out) = run_program(&prog, &["-p", &dev], FSCK_TIMEOUT).await?;
        if code != 0 && code != 1 {
            return Err(StepError::Failed(format!(
                "{prog} -p {dev} exited {code}: {}",
                out.trim()
            )));
        }
    }
    std::fs::create_dir_all(mountpoint)
        .map_err(|e| StepError::io(format!("creating {}", mountpoint.display()), e))?;
    nix::mount::mount(
        Some(device),
        mountpoint,
        Some(fstype),
        MsFlags::empty(),
        options,
    )
    .map_err(|e| {
        StepError::io(
            format!("mounting {dev} on {}", mountpoint.display()),
            e.into(),
        )
    })
}

/// Processes whose cwd, root, open files or mappings lie under `mountpoint`.
pub fn holders(mountpoint: &Path) -> Vec<i32> {
    let me = std::process::id() as i32;
    let under = |p: &Path| p.starts_with(mountpoint);
    let mut pids = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return pids;
    };
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        if pid == me {
            continue;
        }
        let base = entry.path();
        let mut uses = ["cwd", "root"]
            .iter()
            .any(|l| std::fs::read_link(base.join(l)).is_ok_and(|p| under(&p)));
        if !uses {
            if let Ok(fds) = std::fs::read_dir(base.join("fd")) {
                uses = fds
                    .flatten()
                    .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|p| under(&p)));
            }
        }
        if !uses {
            if let Ok(maps) = std::fs::read_to_string(base.join("maps")) {
                uses = maps.lines().any(|l| {
                    l.split_whitespace()
                        .nth(5)
                        .is_some_and(|p| under(Path::new(p)))
                });
            }
        }
        if uses {
            pids.push(pid);
        }
    }
    pids
}

/// Unmounts; on EBUSY kills the holders (SIGTERM, then SIGKILL) and retries.
pub async fn stop(device: &Path, mountpoint: &Path) -> StepResult {
    let mut signal = Signal::SIGTERM;
    for _attempt in 0..6 {
        if !probe(device, mountpoint).await? {
            return Ok(());
        }
        match nix::mount::umount2(mountpoint, MntFlags::empty()) {
            Ok(()) => return Ok(()),
            Err(nix::errno::Errno::EBUSY) => {
                let pids = holders(mountpoint);
                tracing::warn!(mountpoint = %mountpoint.display(), ?pids, ?signal, "unmount busy: killing the processes using it");
                for pid in pids {
                    let _ = kill(Pid::from_raw(pid), signal);
                }
                // Up to 500 ms for them to go (their I/O in flight completes first).
                for _ in 0..10 {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    if holders(mountpoint).is_empty() {
                        break;
                    }
                }
                signal = Signal::SIGKILL;
            }
            Err(e) => {
                return Err(StepError::io(
                    format!("unmounting {}", mountpoint.display()),
                    e.into(),
                ))
            }
        }
    }
    Err(StepError::Failed(format!(
        "{} stays busy",
        mountpoint.display()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_lines() {
        let text = "36 35 98:0 / /srv rw,noatime master:1 - ext4 /dev/ublkb0 rw,errors=continue\n\
                    37 35 98:1 / /mnt/with\\040space rw - ext4 /dev/vdc rw\n";
        assert_eq!(
            parse_mountinfo(text),
            vec![
                (PathBuf::from("/srv"), "/dev/ublkb0".to_string()),
                (PathBuf::from("/mnt/with space"), "/dev/vdc".to_string()),
            ]
        );
    }
}
