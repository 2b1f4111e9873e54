//! The filesystem agent on a real ext4 in a loop device (root): fsck + mount, probe,
//! and an unmount that finds the mount point busy, kills the holder and retries.
//! The netns cluster tests leave the filesystem out (the VM lab covers it in place).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use clusterd::daemon::resources::filesystem;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

struct Loop {
    dev: PathBuf,
    mountpoint: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.mountpoint, nix::mount::MntFlags::MNT_DETACH);
        let _ = Command::new("losetup").arg("-d").arg(&self.dev).status();
    }
}

fn ext4_loop() -> Loop {
    let dir = tempfile::Builder::new()
        .prefix("hablock-fs-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let img = dir.path().join("fs.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(32 << 20)
        .unwrap();
    let ok = Command::new("mkfs.ext4")
        .args(["-q", "-F"])
        .arg(&img)
        .status()
        .expect("mkfs.ext4 (e2fsprogs: run scripts/setup)");
    assert!(ok.success());
    let out = Command::new("losetup")
        .args(["-f", "--show"])
        .arg(&img)
        .output()
        .expect("losetup (root only)");
    assert!(
        out.status.success(),
        "losetup failed (this test needs root and loop devices): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dev = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    Loop {
        dev,
        mountpoint: dir.path().join("mnt"),
        _dir: dir,
    }
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.contains(") Z "))
        .unwrap_or(false)
}

#[tokio::test]
async fn mount_probe_and_busy_unmount() {
    let l = ext4_loop();
    let (dev, mp) = (l.dev.as_path(), l.mountpoint.as_path());
    assert!(!filesystem::probe(dev, mp).await.unwrap());
    filesystem::start(dev, mp, "ext4", None, true)
        .await
        .unwrap();
    assert!(filesystem::probe(dev, mp).await.unwrap());
    // Idempotent.
    filesystem::start(dev, mp, "ext4", None, true)
        .await
        .unwrap();
    std::fs::write(mp.join("file"), "data").unwrap();

    // A process whose working directory is on the filesystem keeps it busy.
    let mut holder = Command::new("sh")
        .args(["-c", "exec sleep 1000"])
        .current_dir(mp)
        .spawn()
        .unwrap();
    let pid = holder.id();
    let reaper = std::thread::spawn(move || holder.wait());
    std::thread::sleep(Duration::from_millis(100));
    assert!(filesystem::holders(mp).contains(&(pid as i32)));
    filesystem::stop(dev, mp).await.unwrap();
    assert!(!filesystem::probe(dev, mp).await.unwrap());
    let _ = reaper.join();
    assert!(!alive(pid), "the holder survived");
    // Idempotent.
    filesystem::stop(dev, mp).await.unwrap();

    // The data is there after a new mount.
    filesystem::start(dev, mp, "ext4", None, true)
        .await
        .unwrap();
    assert_eq!(std::fs::read_to_string(mp.join("file")).unwrap(), "data");
    filesystem::stop(dev, mp).await.unwrap();
}

#[tokio::test]
async fn fsck_failure_refuses_to_mount() {
    let l = ext4_loop();
    // Destroy the primary superblock: fsck.ext4 -p does not repair that (exit >= 4).
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&l.dev)
        .unwrap();
    use std::os::unix::fs::FileExt;
    f.write_all_at(&[0u8; 4096], 0).unwrap();
    f.sync_all().unwrap();
    drop(f);
    let err = filesystem::start(&l.dev, &l.mountpoint, "ext4", None, true)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("fsck.ext4"), "{err}");
    assert!(!filesystem::probe(&l.dev, &l.mountpoint).await.unwrap());
}
