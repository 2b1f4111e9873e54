//! The two-VM lab from Rust: a thin wrapper over `vm-images/lab` (which boots the
//! `master` and `slave` QEMU guests in their own network namespace). Dropping a [`Lab`]
//! removes everything; when the test is failing it first prints every guest's console
//! and daemon logs (`vm-images/lab logs`).

use anyhow::{bail, Context, Result};
use std::path::PathBuf;
use std::process::Command;

/// The running lab.
pub struct Lab {
    script: PathBuf,
}

/// Whether lab tests should run: they need QEMU and root, and take minutes, so they run
/// when `HABLOCK_LAB=1` (set by `scripts/test`).
pub fn enabled() -> bool {
    std::env::var("HABLOCK_LAB").as_deref() == Ok("1")
}

impl Lab {
    /// Builds what is missing and boots both guests (`vm-images/lab up`).
    pub fn up() -> Result<Lab> {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .context("workspace root")?
            .to_path_buf();
        let lab = Lab {
            script: root.join("vm-images/lab"),
        };
        lab.run(&["down"])?;
        lab.run(&["up"])?;
        Ok(lab)
    }

    fn run(&self, args: &[&str]) -> Result<(i32, String)> {
        let out = Command::new(&self.script)
            .args(args)
            .output()
            .with_context(|| format!("running vm-images/lab {}", args.join(" ")))?;
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stderr));
        Ok((out.status.code().unwrap_or(-1), text))
    }

    /// Runs `cmd` in `node`'s shell: its exit code and output.
    pub fn exec(&self, node: &str, cmd: &str) -> Result<(i32, String)> {
        self.run(&["exec", node, "--", cmd])
    }

    /// Runs `cmd` in `node`'s shell and fails unless it exits 0; its output.
    pub fn ok(&self, node: &str, cmd: &str) -> Result<String> {
        let (rc, out) = self.exec(node, cmd)?;
        if rc != 0 {
            bail!("on {node}: `{cmd}` exited {rc}: {out}");
        }
        Ok(out)
    }

    /// Power loss: kills the guest's QEMU.
    pub fn kill(&self, node: &str) -> Result<()> {
        self.run(&["kill", node]).map(|_| ())
    }

    /// Boots the guest again on the same disks and waits until it answers.
    pub fn boot(&self, node: &str) -> Result<()> {
        match self.run(&["boot", node])? {
            (0, _) => Ok(()),
            (rc, out) => bail!("boot {node} exited {rc}: {out}"),
        }
    }

    /// Cuts (`up = false`) or restores a guest's link (`eth0` public, `eth1` replication).
    pub fn link(&self, node: &str, iface: &str, up: bool) -> Result<()> {
        let state = if up { "up" } else { "down" };
        match self.run(&["link", node, iface, state])? {
            (0, _) => Ok(()),
            (rc, out) => bail!("link {node} {iface} {state} exited {rc}: {out}"),
        }
    }

    /// Every guest's console tail and daemon logs.
    pub fn logs(&self) -> String {
        self.run(&["logs"]).map(|(_, out)| out).unwrap_or_default()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
        let _ = self.run(&["down"]);
    }
}
