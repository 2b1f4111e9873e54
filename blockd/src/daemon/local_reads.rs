//! Reads a frontend may take straight from the backing device, without the resource
//! task.
//!
//! A read of an UpToDate Primary is answered from its own disk whatever else is going
//! on ([`Engine::reads_locally`](crate::engine::Engine::reads_locally)), so the engine
//! adds nothing to it but two thread hand-overs: frontend → resource task → frontend.
//! The resource task publishes here, after every batch of the engine's work and before
//! it answers any request of that batch, whether that holds now, with the backing
//! device's `O_DIRECT` descriptor. A ublk queue thread then reads a block-aligned range
//! on its own io_uring and commits it in place. When the disk is detached, resyncing,
//! or the node is Secondary, the gate is closed and reads go through the engine as
//! before; a read that fails or comes back short is handed to the engine too, which
//! decides (detach, the peer's copy).
//!
//! Writes never take this path: they need the activity log, the peer and their order.
//! Ordering against them needs nothing more: a read the block layer issues after a
//! write completed sees it (the write was on the local disk before it was
//! acknowledged), and overlapping requests in flight together have no defined order
//! on any block device.

use crate::aligned::is_direct_range;
use std::fs::File;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// The gate and the counters of one resource's frontend reads that bypass its task.
#[derive(Debug)]
pub struct LocalReads {
    /// The backing device's `O_DIRECT` descriptor while reads may bypass the engine.
    open: Mutex<Option<Arc<File>>>,
    /// The exported size: no read past it bypasses the engine's checks.
    size_bytes: u64,
    /// Bytes read this way (added to the resource's `disk_read_bytes`).
    read_bytes: AtomicU64,
    /// Reads in flight this way.
    in_flight: AtomicU64,
}

/// One read allowed past the engine: the descriptor to read from. Dropping it without
/// [`LocalRead::done`] counts nothing read.
#[derive(Debug)]
pub struct LocalRead<'a> {
    reads: &'a LocalReads,
    file: Arc<File>,
}

impl LocalReads {
    /// A closed gate for a device of `size_bytes`.
    pub fn new(size_bytes: u64) -> LocalReads {
        LocalReads {
            open: Mutex::new(None),
            size_bytes,
            read_bytes: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
        }
    }

    /// Opens the gate on `file` (the backing device's `O_DIRECT` descriptor) or, with
    /// `None`, closes it. Reads already started finish on the descriptor they hold.
    pub fn publish(&self, file: Option<&Arc<File>>) {
        let Ok(mut open) = self.open.lock() else {
            return;
        };
        if open.as_ref().map(Arc::as_ptr) != file.map(Arc::as_ptr) {
            *open = file.cloned();
        }
    }

    /// The descriptor to read `len` bytes at `offset` from, if such a read may bypass
    /// the engine now: the gate is open and the range is inside the device and aligned
    /// for `O_DIRECT`.
    pub fn begin(&self, offset: u64, len: usize) -> Option<LocalRead<'_>> {
        let inside = offset
            .checked_add(len as u64)
            .is_some_and(|end| end <= self.size_bytes);
        if !inside || !is_direct_range(offset, len) {
            return None;
        }
        let file = self.open.lock().ok()?.clone()?;
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        Some(LocalRead { reads: self, file })
    }

    /// Bytes read so far this way.
    pub fn read_bytes(&self) -> u64 {
        self.read_bytes.load(Ordering::Relaxed)
    }

    /// Reads in flight this way now.
    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }
}

impl LocalRead<'_> {
    /// The descriptor to read from.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// The read returned its `len` bytes.
    pub fn done(self, len: usize) {
        self.reads
            .read_bytes
            .fetch_add(len as u64, Ordering::Relaxed);
    }
}

impl Drop for LocalRead<'_> {
    fn drop(&mut self) {
        self.reads.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file() -> Arc<File> {
        Arc::new(tempfile::tempfile().expect("a temporary file"))
    }

    #[test]
    fn reads_pass_only_through_an_open_gate_inside_the_device_and_aligned() {
        let reads = LocalReads::new(1 << 20);
        assert!(reads.begin(0, 4096).is_none(), "closed at first");
        let f = file();
        reads.publish(Some(&f));
        for (offset, len) in [(0, 0), (512, 4096), (0, 4097), ((1 << 20) - 4096, 8192)] {
            assert!(reads.begin(offset, len).is_none(), "{offset} {len}");
        }
        assert!(reads.begin(u64::MAX - 4095, 4096).is_none(), "no overflow");
        let r = reads
            .begin((1 << 20) - 8192, 8192)
            .expect("an aligned read inside");
        assert!(Arc::ptr_eq(&r.file, &f));
        reads.publish(None);
        assert!(reads.begin(0, 4096).is_none(), "closed again");
        // A read that began before the gate closed keeps its descriptor.
        assert_eq!(r.file().metadata().map(|m| m.len()).ok(), Some(0));
        r.done(8192);
        assert_eq!(reads.read_bytes(), 8192);
    }

    #[test]
    fn the_counters_show_what_is_in_flight_and_what_was_read() {
        let reads = LocalReads::new(1 << 20);
        reads.publish(Some(&file()));
        let a = reads.begin(0, 4096).expect("open");
        let b = reads.begin(4096, 8192).expect("open");
        assert_eq!(reads.in_flight(), 2);
        a.done(4096);
        drop(b); // failed: handed to the engine, counted there
        assert_eq!(reads.in_flight(), 0);
        assert_eq!(reads.read_bytes(), 4096);
    }

    #[test]
    fn publishing_another_descriptor_replaces_the_old_one() {
        let reads = LocalReads::new(1 << 20);
        let (old, new) = (file(), file());
        reads.publish(Some(&old));
        reads.publish(Some(&new));
        let r = reads.begin(0, 4096).expect("open");
        assert!(Arc::ptr_eq(&r.file, &new));
    }
}
