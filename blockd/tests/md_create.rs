//! `create-md` refuses to overwrite real filesystems (made with the real mkfs tools)
//! and existing metadata unless forced.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;

use blockd::md::{create_md, MdError, MdLocation, MdStore};

const FS_SIZE: u64 = 300 << 20;

fn sparse(dir: &Path, name: &str, size: u64) -> PathBuf {
    let p = dir.join(name);
    File::create(&p).unwrap().set_len(size).unwrap();
    p
}

/// Runs a mkfs tool; a missing tool fails the test (it must not pass silently).
fn mkfs(tool: &str, args: &[&str], dev: &Path) {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain(["/usr/sbin", "/sbin", "/usr/bin"].map(PathBuf::from))
        .map(|d| d.join(tool))
        .find(|p| p.is_file());
    let Some(bin) = found else {
        panic!("{tool} is not installed: this test needs e2fsprogs, xfsprogs and btrfs-progs (run scripts/setup)");
    };
    let out = Command::new(&bin).args(args).arg(dev).output().unwrap();
    assert!(
        out.status.success(),
        "{tool} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn refused_then_forced(tool: &str, args: &[&str], expect: &str) {
    let dir = tempfile::tempdir().unwrap();
    let dev = sparse(dir.path(), "dev", FS_SIZE);
    mkfs(tool, args, &dev);
    let err = create_md(&dev, &MdLocation::Internal, "r0", false).unwrap_err();
    match &err {
        MdError::WouldOverwrite { what, .. } => assert_eq!(what, expect),
        other => panic!("expected WouldOverwrite, got {other}"),
    }
    let msg = err.to_string();
    assert_eq!(
        msg,
        format!(
            "{} holds {expect}; refusing to overwrite it (use --force)",
            dev.display()
        )
    );
    create_md(&dev, &MdLocation::Internal, "r0", true).unwrap();
    MdStore::open(&dev, &MdLocation::Internal).unwrap();
}

#[test]
fn refuses_ext4() {
    refused_then_forced("mkfs.ext4", &["-F", "-q"], "an ext4 filesystem");
}

#[test]
fn refuses_ext3() {
    refused_then_forced("mkfs.ext3", &["-F", "-q"], "an ext3 filesystem");
}

#[test]
fn refuses_ext2() {
    refused_then_forced("mkfs.ext2", &["-F", "-q"], "an ext2 filesystem");
}

#[test]
fn refuses_xfs() {
    refused_then_forced("mkfs.xfs", &["-f", "-q"], "an xfs filesystem");
}

#[test]
fn refuses_btrfs() {
    refused_then_forced("mkfs.btrfs", &["-f", "-q"], "a btrfs filesystem");
}

#[test]
fn refuses_existing_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let dev = sparse(dir.path(), "dev", 32 << 20);
    create_md(&dev, &MdLocation::Internal, "db", false).unwrap();
    let mut store = MdStore::open(&dev, &MdLocation::Internal).unwrap();
    let mut sb = store.superblock().clone();
    sb.uuids.current = 0x1234_5678_9ABC_DEF0;
    store.write_superblock(&sb).unwrap();
    let id = sb.device_id;
    drop(store);

    let err = create_md(&dev, &MdLocation::Internal, "db", false).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, MdError::WouldOverwrite { .. }), "{msg}");
    assert!(
        msg.contains("resource 'db'") && msg.contains("123456789ABCDEF0"),
        "{msg}"
    );

    create_md(&dev, &MdLocation::Internal, "db2", true).unwrap();
    let store = MdStore::open(&dev, &MdLocation::Internal).unwrap();
    assert_eq!(store.superblock().resource, "db2");
    assert_eq!(store.superblock().uuids.current, 0);
    assert_ne!(store.superblock().device_id, id);
}

#[test]
fn external_checks_the_metadata_file() {
    let dir = tempfile::tempdir().unwrap();
    let dev = sparse(dir.path(), "dev", 64 << 20);
    let md = sparse(dir.path(), "md", FS_SIZE);
    mkfs("mkfs.ext4", &["-F", "-q"], &md);
    let loc = MdLocation::External(md.clone());
    let err = create_md(&dev, &loc, "r0", false).unwrap_err();
    assert!(
        err.to_string()
            .starts_with(&format!("{} holds an ext4 filesystem", md.display())),
        "{err}"
    );
    create_md(&dev, &loc, "r0", true).unwrap();
    // Now the metadata itself is found.
    let err = create_md(&dev, &loc, "r0", false).unwrap_err();
    assert!(
        err.to_string()
            .contains("hablock metadata of resource 'r0'"),
        "{err}"
    );
    // A filesystem on the backing is kept with external metadata: not a refusal.
    mkfs("mkfs.ext4", &["-F", "-q"], &dev);
    create_md(&dev, &loc, "r0", true).unwrap();
    MdStore::open(&dev, &loc).unwrap();
}

#[test]
fn too_small_and_bad_name() {
    let dir = tempfile::tempdir().unwrap();
    let dev = sparse(dir.path(), "dev", 20 * 1024);
    let err = create_md(&dev, &MdLocation::Internal, "r0", false).unwrap_err();
    assert!(
        matches!(err, MdError::TooSmall { size: 20480, .. }),
        "{err}"
    );
    let dev = sparse(dir.path(), "dev2", 1 << 20);
    let err = create_md(&dev, &MdLocation::Internal, &"x".repeat(65), false).unwrap_err();
    assert!(matches!(err, MdError::Invalid(_)), "{err}");
    let err = MdStore::open(&dev, &MdLocation::Internal).unwrap_err();
    assert!(matches!(err, MdError::NoMetadata { .. }), "{err}");
}
