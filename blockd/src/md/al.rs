//! The activity log: the set of "hot" 4 MiB extents that may have writes in flight.
//!
//! Before a write is issued to an extent that is not hot, the extent is activated and
//! the new hot set is persisted (an AL slot write). After a primary crash, every
//! extent in the persisted set is marked out of sync, which bounds the resync to
//! `capacity × 4 MiB` instead of the whole device.
//!
//! [`ActivityLog`] is pure (no I/O); [`encode_al_slot`]/[`decode_al_slot`] are the
//! on-disk codec that [`super::MdStore`] uses:
//!
//! ```text
//! // { magic "HABLKAL\0" | seq u64 | count u32 | [extent u32; count] | crc32c u32 }
//! offset 0 magic, 8 seq, 16 count, 20 extents, 20 + 4*count crc; zero padded to 8 KiB
//! ```

use std::collections::HashMap;
use std::ops::RangeInclusive;

use super::{MdError, AL_EXTENT_BYTES, AL_SLOT_BYTES};

/// The activity-log slot magic.
pub const AL_MAGIC: [u8; 8] = *b"HABLKAL\0";
/// Most extents one 8 KiB slot holds: `(8192 - 8 - 8 - 4 - 4) / 4`.
pub const AL_MAX_EXTENTS: usize = (AL_SLOT_BYTES as usize - 24) / 4;

/// Encodes an AL slot (8 KiB, zero padded). Fails if `extents` has more than
/// [`AL_MAX_EXTENTS`] entries.
pub fn encode_al_slot(seq: u64, extents: &[u32]) -> Result<Vec<u8>, MdError> {
    if extents.len() > AL_MAX_EXTENTS {
        return Err(MdError::Invalid(format!(
            "{} activity-log extents (at most {AL_MAX_EXTENTS})",
            extents.len()
        )));
    }
    let mut b = Vec::with_capacity(AL_SLOT_BYTES as usize);
    b.extend_from_slice(&AL_MAGIC);
    b.extend_from_slice(&seq.to_le_bytes());
    b.extend_from_slice(&(extents.len() as u32).to_le_bytes());
    for e in extents {
        b.extend_from_slice(&e.to_le_bytes());
    }
    let crc = crc32c::crc32c(&b);
    b.extend_from_slice(&crc.to_le_bytes());
    b.resize(AL_SLOT_BYTES as usize, 0);
    Ok(b)
}

/// Decodes an AL slot into `(seq, extents)`. [`MdError::BadMagic`] when the slot was
/// never written, [`MdError::Corrupt`] for an impossible count, [`MdError::BadChecksum`].
/// Never panics.
pub fn decode_al_slot(buf: &[u8], what: &'static str) -> Result<(u64, Vec<u32>), MdError> {
    if buf.len() < 8 || buf[..8] != AL_MAGIC {
        return Err(MdError::BadMagic { what });
    }
    let truncated = || MdError::Corrupt {
        what,
        detail: format!("truncated record of {} bytes", buf.len()),
    };
    let word = |at: usize, n: usize| buf.get(at..at + n).ok_or_else(truncated);
    let seq = u64::from_le_bytes(word(8, 8)?.try_into().map_err(|_| truncated())?);
    let count = u32::from_le_bytes(word(16, 4)?.try_into().map_err(|_| truncated())?) as usize;
    // Cap before allocating.
    if count > AL_MAX_EXTENTS {
        return Err(MdError::Corrupt {
            what,
            detail: format!("{count} extents (at most {AL_MAX_EXTENTS})"),
        });
    }
    let end = 20 + 4 * count;
    let body = buf.get(..end).ok_or_else(truncated)?;
    let stored = u32::from_le_bytes(word(end, 4)?.try_into().map_err(|_| truncated())?);
    let computed = crc32c::crc32c(body);
    if stored != computed {
        return Err(MdError::BadChecksum {
            what,
            stored,
            computed,
        });
    }
    let extents = body[20..]
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    Ok((seq, extents))
}

/// Why an I/O cannot be admitted to the activity log right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AlError {
    /// Every evictable extent has I/O in flight: wait for a completion and retry.
    #[error("activity log full: all extents have I/O in flight")]
    Busy,
    /// The request spans more extents than the log can hold at once.
    #[error("request spans {extents} activity-log extents (capacity {capacity})")]
    RangeTooLarge {
        /// Extents the request spans.
        extents: u64,
        /// The log's capacity.
        capacity: usize,
    },
}

/// The in-memory hot set: an LRU of at most `capacity` extents with per-extent
/// in-flight I/O counters. Pure, no I/O.
#[derive(Debug, Clone)]
pub struct ActivityLog {
    capacity: usize,
    /// Hot extents, least recently used first.
    hot: Vec<u32>,
    /// In-flight I/O per hot extent (absent = 0).
    inflight: HashMap<u32, u32>,
}

impl ActivityLog {
    /// A log of `capacity` extents (clamped to 1..=[`AL_MAX_EXTENTS`]) starting from
    /// `initial` (the persisted list, least recently used first; only the most recent
    /// `capacity` entries are kept, duplicates dropped).
    pub fn new(capacity: usize, initial: &[u32]) -> Self {
        let capacity = capacity.clamp(1, AL_MAX_EXTENTS);
        let mut hot: Vec<u32> = Vec::new();
        for &e in initial.iter().rev() {
            if hot.len() == capacity {
                break;
            }
            if !hot.contains(&e) {
                hot.push(e);
            }
        }
        hot.reverse();
        ActivityLog {
            capacity,
            hot,
            inflight: HashMap::new(),
        }
    }

    /// The extents the byte range `[offset, offset + len)` touches (`len == 0` gives
    /// the extent holding `offset`). Extent numbers saturate at `u32::MAX`.
    pub fn extents_for(offset: u64, len: u64) -> RangeInclusive<u32> {
        let ext = |b: u64| u32::try_from(b / AL_EXTENT_BYTES).unwrap_or(u32::MAX);
        let last = offset.saturating_add(len.max(1) - 1);
        ext(offset)..=ext(last)
    }

    /// True if some extent of the range is not hot (activating it needs an AL write).
    pub fn needs_activation(&self, offset: u64, len: u64) -> bool {
        Self::extents_for(offset, len).any(|e| !self.hot.contains(&e))
    }

    /// Admits an I/O on `[offset, offset + len)`: makes its extents hot (most recently
    /// used) and counts the I/O in flight on each.
    ///
    /// Returns `Ok(Some(list))` when the hot set changed: the caller must persist
    /// `list` ([`super::MdStore::write_al`]) before issuing the write, hold back other
    /// writes to the newly hot extents until then, and must first have persisted the
    /// bitmap pages of any evicted extent. Evicts least recently used extents without
    /// in-flight I/O; if that is not enough, nothing changes and [`AlError::Busy`] is
    /// returned (retry after a [`ActivityLog::complete`]).
    pub fn activate(&mut self, offset: u64, len: u64) -> Result<Option<Vec<u32>>, AlError> {
        let range = Self::extents_for(offset, len);
        let span = u64::from(*range.end() - *range.start()) + 1;
        if span > self.capacity as u64 {
            return Err(AlError::RangeTooLarge {
                extents: span,
                capacity: self.capacity,
            });
        }
        let missing = range.clone().filter(|e| !self.hot.contains(e)).count();
        let evict = (self.hot.len() + missing).saturating_sub(self.capacity);
        let victims: Vec<u32> = self
            .hot
            .iter()
            .copied()
            .filter(|e| !range.contains(e) && self.inflight.get(e).copied().unwrap_or(0) == 0)
            .take(evict)
            .collect();
        if victims.len() < evict {
            return Err(AlError::Busy);
        }
        self.hot.retain(|e| !victims.contains(e));
        for e in range {
            self.hot.retain(|&h| h != e);
            self.hot.push(e);
            *self.inflight.entry(e).or_insert(0) += 1;
        }
        Ok((missing > 0).then(|| self.hot.clone()))
    }

    /// Marks an I/O admitted by [`ActivityLog::activate`] as completed.
    pub fn complete(&mut self, offset: u64, len: u64) {
        for e in Self::extents_for(offset, len) {
            if let Some(n) = self.inflight.get_mut(&e) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    self.inflight.remove(&e);
                }
            }
        }
    }

    /// The hot extents, least recently used first (what is persisted).
    pub fn hot(&self) -> &[u32] {
        &self.hot
    }

    /// The capacity in extents.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// In-flight I/O on extent `e`.
    pub fn inflight(&self, e: u32) -> u32 {
        self.inflight.get(&e).copied().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MB4: u64 = AL_EXTENT_BYTES;

    #[test]
    fn slot_codec() {
        let b = encode_al_slot(5, &[1, 2, 0xdead_beef]).unwrap();
        assert_eq!(b.len(), 8192);
        assert_eq!(&b[..8], b"HABLKAL\0");
        assert_eq!(&b[8..20], &[5, 0, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0]);
        assert_eq!(
            &b[20..32],
            &[1, 0, 0, 0, 2, 0, 0, 0, 0xef, 0xbe, 0xad, 0xde]
        );
        assert_eq!(&b[32..36], &crc32c::crc32c(&b[..32]).to_le_bytes());
        assert_eq!(
            decode_al_slot(&b, "al").unwrap(),
            (5, vec![1, 2, 0xdead_beef])
        );
        let full: Vec<u32> = (0..AL_MAX_EXTENTS as u32).collect();
        let b = encode_al_slot(1, &full).unwrap();
        assert_eq!(decode_al_slot(&b, "al").unwrap().1, full);
        assert!(encode_al_slot(1, &vec![0; AL_MAX_EXTENTS + 1]).is_err());
        let mut bad = encode_al_slot(5, &[1]).unwrap();
        bad[20] = 9;
        assert!(matches!(
            decode_al_slot(&bad, "al"),
            Err(MdError::BadChecksum { .. })
        ));
        assert!(matches!(
            decode_al_slot(&[0; 8192], "al"),
            Err(MdError::BadMagic { .. })
        ));
    }

    #[test]
    fn extents_for_ranges() {
        assert_eq!(ActivityLog::extents_for(0, 4096), 0..=0);
        assert_eq!(ActivityLog::extents_for(MB4 - 1, 2), 0..=1);
        assert_eq!(ActivityLog::extents_for(MB4, MB4), 1..=1);
        assert_eq!(ActivityLog::extents_for(MB4, 0), 1..=1);
        assert_eq!(
            ActivityLog::extents_for(u64::MAX, u64::MAX),
            u32::MAX..=u32::MAX
        );
    }

    #[test]
    fn lru_eviction_skips_inflight() {
        let mut al = ActivityLog::new(3, &[]);
        assert!(al.needs_activation(0, 4096));
        assert_eq!(al.activate(0, 4096), Ok(Some(vec![0])));
        assert_eq!(al.activate(MB4, 4096), Ok(Some(vec![0, 1])));
        assert_eq!(al.activate(2 * MB4, 4096), Ok(Some(vec![0, 1, 2])));
        // Already hot: no AL write, but becomes most recent.
        assert!(!al.needs_activation(0, 4096));
        assert_eq!(al.activate(0, 4096), Ok(None));
        assert_eq!(al.hot(), &[1, 2, 0]);
        // Everything in flight: a new extent cannot get in.
        assert_eq!(al.activate(3 * MB4, 4096), Err(AlError::Busy));
        assert_eq!(al.hot(), &[1, 2, 0], "a refused activate changes nothing");
        al.complete(2 * MB4, 4096);
        // Extent 1 is least recent but busy; 2 is idle and goes.
        assert_eq!(al.activate(3 * MB4, 4096), Ok(Some(vec![1, 0, 3])));
        al.complete(MB4, 4096);
        al.complete(0, 4096);
        al.complete(0, 4096);
        assert_eq!(al.activate(4 * MB4, 4096), Ok(Some(vec![0, 3, 4])));
        assert_eq!(al.inflight(3), 1);
        assert_eq!(
            al.activate(0, 4 * MB4),
            Err(AlError::RangeTooLarge {
                extents: 4,
                capacity: 3
            })
        );
    }

    #[test]
    fn spanning_request_needs_both_extents() {
        let mut al = ActivityLog::new(2, &[7, 8]);
        al.activate(MB4 - 512, 1024).unwrap();
        assert_eq!(al.hot(), &[0, 1]);
        assert_eq!(al.inflight(0), 1);
        assert_eq!(al.inflight(1), 1);
    }

    #[test]
    fn initial_is_truncated_to_most_recent() {
        let al = ActivityLog::new(2, &[1, 2, 3, 3]);
        assert_eq!(al.hot(), &[2, 3]);
    }

    proptest! {
        #[test]
        fn al_decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64), magic: bool) {
            let mut bytes = bytes;
            if magic && bytes.len() >= 8 { bytes[..8].copy_from_slice(&AL_MAGIC); }
            let _ = decode_al_slot(&bytes, "al");
        }

        /// Invariants under random activate/complete: at most `capacity` hot extents, and
        /// every extent with I/O in flight is hot.
        #[test]
        fn al_invariants(ops in proptest::collection::vec((any::<bool>(), 0u64..10, 1u64..3), 0..100)) {
            let mut al = ActivityLog::new(4, &[]);
            let mut admitted: Vec<(u64, u64)> = Vec::new();
            for (act, ext, n) in ops {
                if act || admitted.is_empty() {
                    let (off, len) = (ext * MB4 + 7, (n - 1) * MB4 + 1);
                    if al.activate(off, len).is_ok() { admitted.push((off, len)); }
                } else {
                    let (off, len) = admitted.remove(ext as usize % admitted.len());
                    al.complete(off, len);
                }
                prop_assert!(al.hot().len() <= 4);
                for &(off, len) in &admitted {
                    for e in ActivityLog::extents_for(off, len) {
                        prop_assert!(al.hot().contains(&e));
                        prop_assert!(al.inflight(e) > 0);
                    }
                }
            }
        }
    }
}
