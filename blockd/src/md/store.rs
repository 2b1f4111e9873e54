//! [`MdStore`]: an open metadata area (superblock, bitmap, activity log) with
//! synchronous, durable writes.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

use super::al::{decode_al_slot, encode_al_slot};
use super::{Bitmap, Layout, MdError, MdIo, MdLocation, Superblock, BLOCK_BYTES, SB_SLOT_BYTES};
use super::{AL_SLOT_BYTES, BITS_PER_PAGE};

/// Which kind of area a device holds, for [`MdStore::open_io`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AreaKind {
    /// The device is the backing device; the area is at its end.
    Internal,
    /// The device is a separate metadata file; the area is at its start and
    /// describes a backing device of `backing_size` bytes.
    External {
        /// Size of the backing (data) device.
        backing_size: u64,
    },
}

/// An open metadata area.
pub struct MdStore {
    io: Box<dyn MdIo>,
    path: PathBuf,
    layout: Layout,
    sb: Superblock,
    /// Slot (0 = A, 1 = B) holding `sb`; the next write goes to the other one.
    sb_slot: u64,
    al: Vec<u32>,
    al_seq: u64,
    /// Slot holding the current AL; the next write goes to the other one.
    al_slot: u64,
    /// The data device when it is not the one holding the area (external metadata):
    /// flushed before bitmap pages that record blocks as in sync are written.
    data: Option<(Box<dyn MdIo>, PathBuf)>,
}

impl std::fmt::Debug for MdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MdStore")
            .field("path", &self.path)
            .field("layout", &self.layout)
            .field("sb", &self.sb)
            .field("al", &self.al)
            .finish_non_exhaustive()
    }
}

/// Opens a file or block device for reading and writing.
pub(super) fn open_rw(path: &Path) -> Result<File, MdError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| MdError::io(path, "open", e))
}

/// Size of a file or block device.
pub(super) fn device_size(path: &Path) -> Result<u64, MdError> {
    let mut f = File::open(path).map_err(|e| MdError::io(path, "open", e))?;
    f.size().map_err(|e| MdError::io(path, "get size", e))
}

const SLOT_NAMES_SB: [&str; 2] = ["superblock slot A", "superblock slot B"];
const SLOT_NAMES_AL: [&str; 2] = ["activity-log slot A", "activity-log slot B"];

/// Picks the valid slot with the highest seq. `Ok(None)` when neither slot was ever
/// written (both lack the magic). A slot of a newer format version makes the whole
/// area unreadable (falling back to an older slot would silently roll back state);
/// otherwise, with no valid slot, the first corruption error is returned.
fn pick<T>(slots: [Result<(u64, T), MdError>; 2]) -> Result<Option<(u64, T, u64)>, MdError> {
    let mut best: Option<(u64, T, u64)> = None;
    let mut err: Option<MdError> = None;
    for (i, r) in slots.into_iter().enumerate() {
        match r {
            Ok((seq, v)) => {
                if best.as_ref().is_none_or(|b| seq > b.0) {
                    best = Some((seq, v, i as u64));
                }
            }
            Err(e @ MdError::UnsupportedVersion { .. }) => return Err(e),
            Err(MdError::BadMagic { .. }) => {}
            Err(e) => {
                err.get_or_insert(e);
            }
        }
    }
    match (best, err) {
        (Some(b), _) => Ok(Some(b)),
        (None, Some(e)) => Err(e),
        (None, None) => Ok(None),
    }
}

impl MdStore {
    /// Opens the metadata of the resource whose backing device is `backing`.
    ///
    /// Reads the superblock (best valid slot), checks it against the device size, and
    /// reads the activity log. The bitmap is read by [`MdStore::load_bitmap`].
    pub fn open(backing: &Path, loc: &MdLocation) -> Result<MdStore, MdError> {
        let store = MdStore::open_area(backing, loc, open_rw)?;
        match loc {
            MdLocation::Internal => Ok(store),
            MdLocation::External(_) => {
                // Only ever flushed (`fdatasync` needs no write access).
                let data = File::open(backing).map_err(|e| MdError::io(backing, "open", e))?;
                Ok(store.with_data_device(Box::new(data), backing))
            }
        }
    }

    /// Opens the area read-only, to look at it (`blockctl check`); a write through it
    /// fails. Safe while a blockd serves the resource: nothing is locked or changed.
    pub fn inspect(backing: &Path, loc: &MdLocation) -> Result<MdStore, MdError> {
        MdStore::open_area(backing, loc, |p| {
            File::open(p).map_err(|e| MdError::io(p, "open", e))
        })
    }

    /// Opens the device holding `loc`'s area with `open` and reads the area.
    fn open_area(
        backing: &Path,
        loc: &MdLocation,
        open: impl Fn(&Path) -> Result<File, MdError>,
    ) -> Result<MdStore, MdError> {
        match loc {
            MdLocation::Internal => {
                MdStore::open_io(Box::new(open(backing)?), backing, AreaKind::Internal)
            }
            MdLocation::External(md) => {
                let backing_size = device_size(backing)?;
                MdStore::open_io(Box::new(open(md)?), md, AreaKind::External { backing_size })
            }
        }
    }

    /// Names the data device of an external area (`path` is for messages): bitmap
    /// writes that record blocks as in sync flush it first. Without it, the device
    /// holding the area is the one flushed (right for internal metadata).
    pub fn with_data_device(mut self, io: Box<dyn MdIo>, path: &Path) -> MdStore {
        self.data = Some((io, path.to_path_buf()));
        self
    }

    /// Opens the area on an already open device (`path` is for messages). This is the
    /// seam where tests inject I/O faults.
    pub fn open_io(mut io: Box<dyn MdIo>, path: &Path, kind: AreaKind) -> Result<MdStore, MdError> {
        let path = path.to_path_buf();
        let size = io.size().map_err(|e| MdError::io(&path, "get size", e))?;
        let no_md = || MdError::NoMetadata { path: path.clone() };
        let layout = match kind {
            AreaKind::Internal => Layout::internal(size),
            AreaKind::External { backing_size } => Layout::external(backing_size),
        }
        .ok_or_else(no_md)?;
        if kind != AreaKind::Internal && size < layout.md_bytes() {
            return Err(no_md());
        }

        let read_slot = |off: u64, len: u64, what: &str| -> Result<Vec<u8>, MdError> {
            let mut buf = vec![0u8; len as usize];
            io.read_exact_at(&mut buf, off)
                .map_err(|e| MdError::io(&path, format!("read {what} at {off}"), e))?;
            Ok(buf)
        };
        let mut sbs = Vec::with_capacity(2);
        for slot in 0..2u64 {
            let what = SLOT_NAMES_SB[slot as usize];
            let buf = read_slot(layout.sb_slot_offset(slot), SB_SLOT_BYTES, what)?;
            sbs.push(Superblock::decode(&buf, what).map(|sb| (sb.seq, sb)));
        }
        let [a, b]: [_; 2] = sbs.try_into().map_err(|_| no_md())?;
        let (_, sb, sb_slot) = pick([a, b])?.ok_or_else(no_md)?;
        if sb.usable_bytes != layout.usable_bytes || sb.bitmap_bytes != layout.bitmap_bytes {
            return Err(MdError::SizeMismatch {
                path,
                recorded: sb.usable_bytes,
                actual: layout.usable_bytes,
            });
        }

        let mut als = Vec::with_capacity(2);
        for slot in 0..2u64 {
            let what = SLOT_NAMES_AL[slot as usize];
            let buf = read_slot(layout.al_slot_offset(slot), AL_SLOT_BYTES, what)?;
            als.push(decode_al_slot(&buf, what));
        }
        let [a, b]: [_; 2] = als.try_into().map_err(|_| no_md())?;
        // Never written (fresh create-md): empty log; the first write goes to slot A.
        let (al_seq, al, al_slot) = pick([a, b])?.unwrap_or((0, Vec::new(), 1));

        Ok(MdStore {
            io,
            path,
            layout,
            sb,
            sb_slot,
            al,
            al_seq,
            al_slot,
            data: None,
        })
    }

    /// The current superblock.
    pub fn superblock(&self) -> &Superblock {
        &self.sb
    }

    /// The area's geometry.
    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// The device holding the area.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes of data the resource exposes.
    pub fn usable_bytes(&self) -> u64 {
        self.layout.usable_bytes
    }

    /// Persists `sb` (its `seq` is ignored and set to the current seq + 1) into the slot
    /// not holding the current superblock, then `fdatasync`s. The geometry fields must
    /// be unchanged.
    pub fn write_superblock(&mut self, sb: &Superblock) -> Result<(), MdError> {
        if sb.usable_bytes != self.layout.usable_bytes
            || sb.bitmap_bytes != self.layout.bitmap_bytes
        {
            return Err(MdError::Invalid(format!(
                "superblock geometry {}/{} differs from the area's {}/{}",
                sb.usable_bytes,
                sb.bitmap_bytes,
                self.layout.usable_bytes,
                self.layout.bitmap_bytes
            )));
        }
        let mut next = sb.clone();
        next.seq = self.sb.seq.wrapping_add(1);
        let bytes = next.encode()?;
        let slot = 1 - self.sb_slot;
        let off = self.layout.sb_slot_offset(slot);
        self.io.write_all_at(&bytes, off).map_err(|e| {
            MdError::io(
                &self.path,
                format!("write {}", SLOT_NAMES_SB[slot as usize]),
                e,
            )
        })?;
        // fsync policy: on failure the error goes to the caller, which must treat the
        // superblock as not persisted; our state does not advance, so a retry rewrites
        // the same seq into the same slot (the other slot still holds the previous one).
        self.io
            .sync_data()
            .map_err(|e| MdError::io(&self.path, "fdatasync after superblock write", e))?;
        self.sb = next;
        self.sb_slot = slot;
        Ok(())
    }

    /// Reads the persisted bitmap (nothing dirty).
    pub fn load_bitmap(&self) -> Result<Bitmap, MdError> {
        let bits = self.layout.bits();
        let pages = bits.div_ceil(BITS_PER_PAGE);
        let mut buf = vec![0u8; (pages * BLOCK_BYTES) as usize];
        self.io
            .read_exact_at(&mut buf, self.layout.area_offset)
            .map_err(|e| MdError::io(&self.path, "read bitmap", e))?;
        let words: Vec<u64> = buf
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
            .collect();
        Ok(Bitmap::from_words(bits, &words))
    }

    /// Writes the bitmap's dirty pages, `fdatasync`s, then marks them clean. Returns
    /// how many pages were written (0 = nothing to do, no sync).
    ///
    /// When bits were cleared since the last write, the data device is flushed before
    /// any page is written: a cleared bit says "this block is in sync", which must not
    /// reach the disk while the data that made it so may still sit in a volatile cache
    /// (a crash would leave a stale block that no resync ever revisits).
    pub fn write_bitmap(&mut self, bm: &mut Bitmap) -> Result<usize, MdError> {
        if bm.len() != self.layout.bits() {
            return Err(MdError::Invalid(format!(
                "bitmap of {} bits for an area of {} bits",
                bm.len(),
                self.layout.bits()
            )));
        }
        let pages = bm.dirty_pages();
        if pages.is_empty() {
            return Ok(0);
        }
        if bm.has_cleared_bits() {
            self.flush_data()?;
        }
        let mut page = [0u8; BLOCK_BYTES as usize];
        for &p in &pages {
            bm.encode_page(p, &mut page);
            let off = self.layout.area_offset + p * BLOCK_BYTES;
            self.io
                .write_all_at(&page, off)
                .map_err(|e| MdError::io(&self.path, format!("write bitmap page {p}"), e))?;
        }
        // fsync policy: on failure the pages stay dirty in `bm` and the error goes to
        // the caller, which must not acknowledge writes whose bits these pages carry;
        // a retry rewrites every dirty page before syncing again.
        self.io
            .sync_data()
            .map_err(|e| MdError::io(&self.path, "fdatasync after bitmap write", e))?;
        bm.clear_dirty();
        Ok(pages.len())
    }

    /// Makes every completed write to the data device durable.
    fn flush_data(&self) -> Result<(), MdError> {
        let (io, path) = match &self.data {
            Some((io, path)) => (io, path),
            None => (&self.io, &self.path),
        };
        io.sync_data().map_err(|e| {
            MdError::io(
                path,
                "flush the data device before recording blocks as in sync",
                e,
            )
        })
    }

    /// Writes every page of the bitmap (e.g. after `set_all`), then `fdatasync`s.
    pub fn write_bitmap_all(&mut self, bm: &mut Bitmap) -> Result<usize, MdError> {
        bm.mark_all_dirty();
        self.write_bitmap(bm)
    }

    /// The persisted activity log (least recently used first).
    pub fn al_extents(&self) -> &[u32] {
        &self.al
    }

    /// Persists a new activity log into the slot not holding the current one, then
    /// `fdatasync`s.
    pub fn write_al(&mut self, extents: &[u32]) -> Result<(), MdError> {
        let seq = self.al_seq.wrapping_add(1);
        let bytes = encode_al_slot(seq, extents)?;
        let slot = 1 - self.al_slot;
        let off = self.layout.al_slot_offset(slot);
        self.io.write_all_at(&bytes, off).map_err(|e| {
            MdError::io(
                &self.path,
                format!("write {}", SLOT_NAMES_AL[slot as usize]),
                e,
            )
        })?;
        // fsync policy: on failure the caller must not issue the writes this activation
        // admitted; our state does not advance, a retry rewrites the same slot.
        self.io
            .sync_data()
            .map_err(|e| MdError::io(&self.path, "fdatasync after activity-log write", e))?;
        self.al = extents.to_vec();
        self.al_seq = seq;
        self.al_slot = slot;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::md::create_md;
    use std::io;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    /// In-memory device whose writes and syncs can be made to fail.
    #[derive(Clone, Default)]
    struct FaultyIo {
        data: Arc<Mutex<Vec<u8>>>,
        fail_sync: Arc<AtomicBool>,
        fail_write: Arc<AtomicBool>,
        writes: Arc<AtomicUsize>,
        /// Which device this is in `log`.
        name: &'static str,
        /// Every write and sync, in order, across the devices sharing it.
        log: Arc<Mutex<Vec<String>>>,
    }

    impl FaultyIo {
        /// An in-memory copy of `path`, logging as `name` into `log`.
        fn of(path: &Path, name: &'static str, log: &Arc<Mutex<Vec<String>>>) -> FaultyIo {
            FaultyIo {
                data: Arc::new(Mutex::new(std::fs::read(path).unwrap())),
                name,
                log: log.clone(),
                ..FaultyIo::default()
            }
        }

        fn take_log(&self) -> Vec<String> {
            std::mem::take(&mut *self.log.lock().unwrap())
        }
    }

    impl MdIo for FaultyIo {
        fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
            let d = self.data.lock().unwrap();
            let src = d
                .get(offset as usize..offset as usize + buf.len())
                .ok_or(io::ErrorKind::UnexpectedEof)?;
            buf.copy_from_slice(src);
            Ok(())
        }
        fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
            if self.fail_write.load(Ordering::SeqCst) {
                return Err(io::Error::from_raw_os_error(libc::ENOSPC));
            }
            self.writes.fetch_add(1, Ordering::SeqCst);
            self.log
                .lock()
                .unwrap()
                .push(format!("{} write", self.name));
            let mut d = self.data.lock().unwrap();
            d[offset as usize..offset as usize + buf.len()].copy_from_slice(buf);
            Ok(())
        }
        fn sync_data(&self) -> io::Result<()> {
            if self.fail_sync.load(Ordering::SeqCst) {
                return Err(io::Error::from_raw_os_error(libc::EIO));
            }
            self.log.lock().unwrap().push(format!("{} sync", self.name));
            Ok(())
        }
        fn size(&mut self) -> io::Result<u64> {
            Ok(self.data.lock().unwrap().len() as u64)
        }
    }

    fn faulty_store() -> (MdStore, FaultyIo) {
        let dir = tempfile::tempdir().unwrap();
        let dev = dir.path().join("dev");
        File::create(&dev).unwrap().set_len(4 << 20).unwrap();
        create_md(&dev, &MdLocation::Internal, "r0", false).unwrap();
        let io = FaultyIo {
            data: Arc::new(Mutex::new(std::fs::read(&dev).unwrap())),
            ..FaultyIo::default()
        };
        let store = MdStore::open_io(Box::new(io.clone()), &dev, AreaKind::Internal).unwrap();
        (store, io)
    }

    fn reopen(io: &FaultyIo) -> MdStore {
        MdStore::open_io(Box::new(io.clone()), Path::new("mem"), AreaKind::Internal).unwrap()
    }

    #[test]
    fn failed_fdatasync_does_not_advance_superblock() {
        let (mut store, io) = faulty_store();
        let mut sb = store.superblock().clone();
        let seq = sb.seq;
        sb.uuids.current = 7;
        io.fail_sync.store(true, Ordering::SeqCst);
        let err = store.write_superblock(&sb).unwrap_err();
        assert!(err.to_string().contains("fdatasync"), "{err}");
        assert_eq!(store.superblock().seq, seq);
        assert_eq!(store.superblock().uuids.current, 0);
        io.fail_sync.store(false, Ordering::SeqCst);
        store.write_superblock(&sb).unwrap();
        assert_eq!(store.superblock().seq, seq + 1);
        assert_eq!(reopen(&io).superblock().uuids.current, 7);
        // A failed write likewise leaves the store where it was.
        io.fail_write.store(true, Ordering::SeqCst);
        sb.uuids.current = 8;
        assert!(matches!(
            store.write_superblock(&sb),
            Err(MdError::Io { .. })
        ));
        assert_eq!(store.superblock().uuids.current, 7);
    }

    #[test]
    fn failed_fdatasync_keeps_bitmap_pages_dirty() {
        let (mut store, io) = faulty_store();
        let mut bm = store.load_bitmap().unwrap();
        bm.clear_all();
        io.fail_sync.store(true, Ordering::SeqCst);
        assert!(store.write_bitmap(&mut bm).is_err());
        assert_eq!(
            bm.dirty_pages(),
            vec![0],
            "still dirty: the retry rewrites it"
        );
        io.fail_sync.store(false, Ordering::SeqCst);
        let before = io.writes.load(Ordering::SeqCst);
        assert_eq!(store.write_bitmap(&mut bm).unwrap(), 1);
        assert_eq!(io.writes.load(Ordering::SeqCst), before + 1);
        assert_eq!(reopen(&io).load_bitmap().unwrap().count(), 0);
    }

    #[test]
    fn failed_fdatasync_does_not_advance_al() {
        let (mut store, io) = faulty_store();
        store.write_al(&[1]).unwrap();
        io.fail_sync.store(true, Ordering::SeqCst);
        assert!(store.write_al(&[1, 2]).is_err());
        assert_eq!(store.al_extents(), &[1]);
        io.fail_sync.store(false, Ordering::SeqCst);
        store.write_al(&[1, 2]).unwrap();
        assert_eq!(reopen(&io).al_extents(), &[1, 2]);
    }

    #[test]
    fn cleared_bits_are_written_only_after_the_data_is_flushed() {
        let (mut store, io) = faulty_store();
        let mut bm = store.load_bitmap().unwrap();
        bm.clear_all();
        store.write_bitmap(&mut bm).unwrap();
        io.take_log();

        // Bits set: out of sync, safe to record at once (no flush first).
        bm.set(5);
        store.write_bitmap(&mut bm).unwrap();
        assert_eq!(io.take_log(), [" write", " sync"]);

        // A bit cleared: the device (here also the data device) is flushed first.
        bm.clear_all();
        store.write_bitmap(&mut bm).unwrap();
        assert_eq!(io.take_log(), [" sync", " write", " sync"]);
        assert!(!bm.has_cleared_bits());
    }

    #[test]
    fn external_metadata_flushes_the_data_device_before_cleared_bits() {
        let dir = tempfile::tempdir().unwrap();
        let (backing, md) = (dir.path().join("data"), dir.path().join("md"));
        File::create(&backing).unwrap().set_len(4 << 20).unwrap();
        create_md(&backing, &MdLocation::External(md.clone()), "r0", false).unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (md_io, data_io) = (
            FaultyIo::of(&md, "md", &log),
            FaultyIo::of(&backing, "data", &log),
        );
        let kind = AreaKind::External {
            backing_size: 4 << 20,
        };
        let mut store = MdStore::open_io(Box::new(md_io.clone()), &md, kind)
            .unwrap()
            .with_data_device(Box::new(data_io.clone()), &backing);
        let mut bm = store.load_bitmap().unwrap();
        assert!(bm.count() > 0, "a new area is all out of sync");

        // The data device refuses the flush: nothing is written, the pages stay dirty.
        data_io.fail_sync.store(true, Ordering::SeqCst);
        bm.clear_all();
        let err = store.write_bitmap(&mut bm).unwrap_err();
        assert!(err.to_string().contains("flush the data device"), "{err}");
        assert_eq!(md_io.writes.load(Ordering::SeqCst), 0);
        assert!(!bm.dirty_pages().is_empty() && bm.has_cleared_bits());

        data_io.fail_sync.store(false, Ordering::SeqCst);
        store.write_bitmap(&mut bm).unwrap();
        assert_eq!(md_io.take_log(), ["data sync", "md write", "md sync"]);
        let reopened = MdStore::open_io(Box::new(md_io.clone()), &md, kind).unwrap();
        assert_eq!(reopened.load_bitmap().unwrap().count(), 0);
    }
}
