//! Metadata store on real files: create/open round trips, torn and corrupt slots,
//! bitmap and activity-log persistence.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use blockd::md::{
    create_md, ActivityLog, Bitmap, MdError, MdLocation, MdStore, Superblock, BITS_PER_PAGE,
    BLOCK_BYTES, FLAG_PRIMARY,
};
use hablock_proto::types::{DiskState, Uuids};

fn sparse(dir: &Path, name: &str, size: u64) -> PathBuf {
    let p = dir.join(name);
    File::create(&p).unwrap().set_len(size).unwrap();
    p
}

fn rw(p: &Path) -> File {
    OpenOptions::new().read(true).write(true).open(p).unwrap()
}

/// Offsets of the two superblock slots and which one holds the newest seq.
fn sb_slots(store: &MdStore) -> ([u64; 2], usize) {
    let l = store.layout();
    let offs = [l.sb_slot_offset(0), l.sb_slot_offset(1)];
    let f = File::open(store.path()).unwrap();
    let seqs: Vec<u64> = offs
        .iter()
        .map(|&o| {
            let mut b = vec![0u8; 4096];
            f.read_exact_at(&mut b, o).unwrap();
            Superblock::decode(&b, "t").map(|s| s.seq).unwrap_or(0)
        })
        .collect();
    (offs, usize::from(seqs[1] > seqs[0]))
}

fn flip_byte(path: &Path, off: u64) {
    let f = rw(path);
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, off).unwrap();
    b[0] ^= 0x5a;
    f.write_all_at(&b, off).unwrap();
}

#[test]
fn internal_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let dev = sparse(dir.path(), "dev", 64 << 20);
    let rep = create_md(&dev, &MdLocation::Internal, "r0", false).unwrap();
    assert_eq!(rep.usable_bytes, (64 << 20) - 4096 - 24 * 1024);
    assert_eq!(rep.md_bytes, 28 * 1024);
    assert!(rep.location.starts_with("internal"), "{}", rep.location);

    let store = MdStore::open(&dev, &MdLocation::Internal).unwrap();
    let sb = store.superblock();
    assert_eq!(sb.resource, "r0");
    assert_eq!(sb.uuids, Uuids::default());
    assert_eq!(sb.disk, DiskState::Inconsistent);
    assert_eq!(sb.flags, 0);
    assert_ne!(sb.device_id, 0);
    assert_eq!(store.usable_bytes(), rep.usable_bytes);
    assert!(store.al_extents().is_empty());
    let bm = store.load_bitmap().unwrap();
    assert_eq!(bm.len(), rep.usable_bytes / BLOCK_BYTES);
    assert_eq!(
        bm.count(),
        bm.len(),
        "everything out of sync after create-md"
    );
}

#[test]
fn external_round_trip_and_size_mismatch() {
    let dir = tempfile::tempdir().unwrap();
    let dev = sparse(dir.path(), "dev", (300 << 20) + 100);
    let md = dir.path().join("md"); // does not exist yet
    let loc = MdLocation::External(md.clone());
    let rep = create_md(&dev, &loc, "web", false).unwrap();
    assert_eq!(rep.usable_bytes, 300 << 20);
    assert_eq!(rep.bitmap_bytes, 3 * 4096);
    assert_eq!(std::fs::metadata(&md).unwrap().len(), rep.md_bytes);
    assert_eq!(
        std::fs::metadata(&dev).unwrap().len(),
        (300 << 20) + 100,
        "backing untouched"
    );

    let store = MdStore::open(&dev, &loc).unwrap();
    assert_eq!(store.superblock().resource, "web");
    assert_eq!(store.load_bitmap().unwrap().count(), 300 << 8);
    drop(store);

    File::options()
        .write(true)
        .open(&dev)
        .unwrap()
        .set_len((300 << 20) + 8192)
        .unwrap();
    let err = MdStore::open(&dev, &loc).unwrap_err();
    assert!(
        matches!(err, MdError::SizeMismatch { recorded, actual, .. }
        if recorded == 300 << 20 && actual == (300 << 20) + 8192),
        "{err}"
    );
}

#[test]
fn superblock_updates_persist_and_torn_write_falls_back() {
    let dir = tempfile::tempdir().unwrap();
    let dev = sparse(dir.path(), "dev", 16 << 20);
    create_md(&dev, &MdLocation::Internal, "r0", false).unwrap();
    let mut store = MdStore::open(&dev, &MdLocation::Internal).unwrap();
    let seq0 = store.superblock().seq;

    let mut sb = store.superblock().clone();
    sb.uuids = Uuids {
        current: 0xAAAA,
        bitmap: 0,
        history: [0, 0],
    };
    sb.disk = DiskState::UpToDate;
    store.write_superblock(&sb).unwrap();
    sb.flags |= FLAG_PRIMARY;
    sb.primary_since_ms = 42;
    store.write_superblock(&sb).unwrap();
    assert_eq!(store.superblock().seq, seq0 + 2);
    drop(store);

    let store = MdStore::open(&dev, &MdLocation::Internal).unwrap();
    let got = store.superblock().clone();
    assert!(got.was_primary());
    assert_eq!(
        (got.uuids.current, got.disk, got.primary_since_ms),
        (0xAAAA, DiskState::UpToDate, 42)
    );

    // Tear the newest slot: the previous superblock (not yet Primary) comes back.
    let (offs, newest) = sb_slots(&store);
    drop(store);
    flip_byte(&dev, offs[newest] + 50);
    let mut store = MdStore::open(&dev, &MdLocation::Internal).unwrap();
    assert_eq!(store.superblock().seq, seq0 + 1);
    assert!(!store.superblock().was_primary());
    assert_eq!(store.superblock().uuids.current, 0xAAAA);

    // The next write replaces the torn slot, never the good one.
    let mut sb = store.superblock().clone();
    sb.uuids.current = 0xBBBB;
    store.write_superblock(&sb).unwrap();
    let (_, newest2) = sb_slots(&store);
    assert_eq!(newest2, newest);
    drop(store);
    let store = MdStore::open(&dev, &MdLocation::Internal).unwrap();
    assert_eq!(store.superblock().uuids.current, 0xBBBB);
    assert_eq!(store.superblock().seq, seq0 + 2);

    // Both slots corrupt: a checksum error, not silently "no metadata".
    let (offs, _) = sb_slots(&store);
    drop(store);
    flip_byte(&dev, offs[0] + 30);
    flip_byte(&dev, offs[1] + 30);
    let err = MdStore::open(&dev, &MdLocation::Internal).unwrap_err();
    assert!(matches!(err, MdError::BadChecksum { .. }), "{err}");

    // Both wiped: no metadata.
    let f = rw(&dev);
    f.write_all_at(&[0u8; 4096], offs[0]).unwrap();
    f.write_all_at(&[0u8; 4096], offs[1]).unwrap();
    let err = MdStore::open(&dev, &MdLocation::Internal).unwrap_err();
    assert!(matches!(err, MdError::NoMetadata { .. }), "{err}");
}

#[test]
fn newer_version_in_any_slot_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let dev = sparse(dir.path(), "dev", 16 << 20);
    create_md(&dev, &MdLocation::Internal, "r0", false).unwrap();
    let store = MdStore::open(&dev, &MdLocation::Internal).unwrap();
    let (offs, newest) = sb_slots(&store);
    drop(store);
    // Even the older slot: falling back past a newer format would roll state back.
    rw(&dev)
        .write_all_at(&2u32.to_le_bytes(), offs[1 - newest] + 8)
        .unwrap();
    let err = MdStore::open(&dev, &MdLocation::Internal).unwrap_err();
    assert!(
        matches!(
            err,
            MdError::UnsupportedVersion {
                found: 2,
                supported: 1
            }
        ),
        "{err}"
    );
}

#[test]
fn bitmap_writes_only_dirty_pages() {
    let dir = tempfile::tempdir().unwrap();
    let dev = sparse(dir.path(), "dev", 300 << 20);
    create_md(&dev, &MdLocation::Internal, "r0", false).unwrap();
    let mut store = MdStore::open(&dev, &MdLocation::Internal).unwrap();
    let mut bm = store.load_bitmap().unwrap();
    assert!(bm.pages() >= 3);
    bm.clear_all();
    assert_eq!(store.write_bitmap(&mut bm).unwrap(), bm.pages() as usize);
    assert_eq!(store.write_bitmap(&mut bm).unwrap(), 0, "nothing dirty");

    // Scribble on page 0 behind the store's back, then dirty only page 1.
    let area = store.layout().area_offset;
    rw(&dev).write_all_at(&[0xff; 8], area).unwrap();
    bm.set_range_bytes(BITS_PER_PAGE * BLOCK_BYTES + 8192, 4096);
    assert_eq!(store.write_bitmap(&mut bm).unwrap(), 1);

    let back = store.load_bitmap().unwrap();
    assert_eq!(back.words()[0], u64::MAX, "page 0 was not rewritten");
    assert!(back.get(BITS_PER_PAGE + 2));
    assert_eq!(back.count(), 65);

    // write_bitmap_all rewrites everything.
    assert_eq!(
        store.write_bitmap_all(&mut bm).unwrap(),
        bm.pages() as usize
    );
    let back = store.load_bitmap().unwrap();
    assert_eq!(back, Bitmap::from_words(bm.len(), bm.words()));
    assert_eq!(back.count(), 1);

    assert!(matches!(
        store.write_bitmap(&mut Bitmap::new(3)),
        Err(MdError::Invalid(_))
    ));
}

#[test]
fn activity_log_persists_and_torn_slot_falls_back() {
    let dir = tempfile::tempdir().unwrap();
    let dev = sparse(dir.path(), "dev", 64 << 20);
    create_md(&dev, &MdLocation::Internal, "r0", false).unwrap();
    let mut store = MdStore::open(&dev, &MdLocation::Internal).unwrap();
    let mut al = ActivityLog::new(2, store.al_extents());
    let mb4 = 4 << 20;
    let list = al.activate(0, 4096).unwrap().unwrap();
    store.write_al(&list).unwrap();
    let list = al.activate(3 * mb4, 4096).unwrap().unwrap();
    store.write_al(&list).unwrap();
    al.complete(0, 4096);
    let list = al.activate(5 * mb4, 4096).unwrap().unwrap();
    assert_eq!(list, vec![3, 5]);
    store.write_al(&list).unwrap();
    let layout = store.layout();
    drop(store);

    let store = MdStore::open(&dev, &MdLocation::Internal).unwrap();
    assert_eq!(store.al_extents(), &[3, 5]);
    let al = ActivityLog::new(8, store.al_extents());
    assert_eq!(al.hot(), &[3, 5]);
    drop(store);

    // Third write went to slot A (writes alternate A, B, A); tear it.
    flip_byte(&dev, layout.al_slot_offset(0) + 21);
    let store = MdStore::open(&dev, &MdLocation::Internal).unwrap();
    assert_eq!(store.al_extents(), &[0, 3]);
    drop(store);
    flip_byte(&dev, layout.al_slot_offset(1) + 21);
    let err = MdStore::open(&dev, &MdLocation::Internal).unwrap_err();
    assert!(matches!(err, MdError::BadChecksum { .. }), "{err}");
}
