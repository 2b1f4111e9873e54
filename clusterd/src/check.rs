//! `clusterctl check`: what clusterd needs from this host, looked at before it is
//! started or reloaded: the file, the secret, this node's heartbeat addresses, the fence
//! command, and for each group what its resources need here (a mount point and the
//! filesystem's kernel support and `fsck` helper, the VIP's interface, the service's
//! program or unit, the health probe's program).
//!
//! Nothing is changed, so a check is safe while clusterd runs the groups.

use hablock_config::check::{self, Finding};
use hablock_config::{Config, GroupResource};
use std::path::Path;
use std::process::{Command, Stdio};

/// Every finding for `node`'s part of `cfg` (loaded from `path`), in file order.
pub fn check(cfg: &Config, path: &Path, node: &str) -> Vec<Finding> {
    let mut findings = vec![check::config_loaded(cfg, path, node), check::secret(cfg)];
    if let Some(me) = cfg.nodes.get(node) {
        for (i, addr) in me.heartbeat.iter().enumerate() {
            let subject = format!("heartbeat link {}", i + 1);
            findings.push(check::address(&subject, *addr, "heartbeats"));
        }
    }
    if let Some(fence) = &cfg.heartbeat.fence {
        findings.push(check::command("fence", fence));
    }
    for (group, g) in &cfg.groups {
        for r in &g.resources {
            group_resource(group, r, &mut findings);
        }
    }
    findings
}

fn group_resource(group: &str, r: &GroupResource, findings: &mut Vec<Finding>) {
    match r {
        // The resource is blockd's: `blockctl check` looks at it.
        GroupResource::Block { .. } => {}
        GroupResource::Filesystem {
            mountpoint,
            fstype,
            fsck,
            ..
        } => {
            let subject = format!("{group} filesystem");
            findings.push(mountpoint_of(&subject, mountpoint));
            findings.push(kernel_filesystem(&subject, fstype));
            if *fsck {
                findings.push(fsck_helper(&subject, fstype));
            }
        }
        GroupResource::Vip {
            address, interface, ..
        } => {
            let subject = format!("{group} vip");
            findings.push(match nix::net::if_::if_nametoindex(interface.as_str()) {
                Ok(_) => Finding::ok(subject, format!("{address} on {interface}")),
                Err(e) => Finding::problem(
                    subject,
                    format!("{address}: interface {interface} does not exist here ({e})"),
                ),
            });
        }
        GroupResource::Service {
            exec,
            unit,
            check: probe,
        } => {
            let subject = format!("{group} service");
            if let Some(cmdline) = exec {
                findings.push(check::command(&subject, cmdline));
            }
            if let Some(unit) = unit {
                findings.push(systemd_unit(&subject, unit));
            }
            match probe {
                Some(url) if url.starts_with("http://") => {
                    findings.push(Finding::ok(format!("{group} check"), url.clone()));
                }
                Some(cmdline) => findings.push(check::command(&format!("{group} check"), cmdline)),
                None => {}
            }
        }
    }
}

/// A mount point clusterd can use: a directory, or a path it will create.
fn mountpoint_of(subject: &str, mountpoint: &Path) -> Finding {
    let shown = mountpoint.display();
    match std::fs::metadata(mountpoint) {
        Ok(m) if m.is_dir() => Finding::ok(subject, format!("mount point {shown}")),
        Ok(_) => Finding::problem(subject, format!("mount point {shown} is not a directory")),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Finding::ok(
            subject,
            format!("mount point {shown} (created at the first mount)"),
        ),
        Err(e) => Finding::problem(subject, format!("mount point {shown}: {e}")),
    }
}

/// The kernel mounts `fstype`: listed in /proc/filesystems, or a module modprobe finds.
fn kernel_filesystem(subject: &str, fstype: &str) -> Finding {
    let listed = std::fs::read_to_string("/proc/filesystems").is_ok_and(|t| {
        t.lines()
            .any(|l| l.split_whitespace().last() == Some(fstype))
    });
    if listed {
        return Finding::ok(subject, format!("the kernel mounts {fstype}"));
    }
    if check::module_loadable(fstype) {
        Finding::ok(
            subject,
            format!("the kernel mounts {fstype} (its module loads at the first mount)"),
        )
    } else {
        Finding::problem(
            subject,
            format!("this kernel cannot mount {fstype} (not in /proc/filesystems, no module)"),
        )
    }
}

/// The `fsck.<fstype>` helper clusterd runs before mounting.
fn fsck_helper(subject: &str, fstype: &str) -> Finding {
    let helper = format!("fsck.{fstype}");
    match check::find_program(&helper) {
        Some(p) => Finding::ok(subject, format!("{} found", p.display())),
        None => Finding::problem(
            subject,
            format!("{helper} is not installed (install its tools, or set fsck = false)"),
        ),
    }
}

/// A systemd unit systemd knows.
fn systemd_unit(subject: &str, unit: &str) -> Finding {
    let state = Command::new("systemctl")
        .args(["show", "--property=LoadState", "--value", unit])
        .stderr(Stdio::null())
        .output();
    match state {
        Ok(o) if o.status.success() => {
            let state = String::from_utf8_lossy(&o.stdout).trim().to_string();
            if state == "loaded" {
                Finding::ok(subject, format!("unit {unit} (loaded)"))
            } else {
                Finding::problem(subject, format!("unit {unit}: systemd says {state}"))
            }
        }
        Ok(o) => Finding::problem(
            subject,
            format!("unit {unit}: systemctl failed ({})", o.status),
        ),
        Err(e) => Finding::problem(subject, format!("unit {unit}: cannot run systemctl ({e})")),
    }
}
