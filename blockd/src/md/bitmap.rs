//! The in-memory dirty bitmap: one bit per 4 KiB data block, set = "out of sync with
//! the peer". Pure: no I/O; [`super::MdStore`] persists the pages it reports dirty.

use super::BLOCK_BYTES;

/// Data bits one 4 KiB bitmap page holds.
pub const BITS_PER_PAGE: u64 = BLOCK_BYTES * 8;
const WORDS_PER_PAGE: u64 = BITS_PER_PAGE / 64;

/// A dirty bitmap with a maintained population count and per-page dirty tracking.
///
/// Bits at or beyond [`Bitmap::len`] do not exist: setting them is ignored, reading
/// them gives `false`, and the unused high bits of the last word stay zero.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bitmap {
    bits: u64,
    words: Vec<u64>,
    count: u64,
    /// One flag per 4 KiB page: changed since the last persist.
    dirty: Vec<bool>,
    /// A bit was cleared since the last persist: the dirty pages say some blocks are in
    /// sync, which is only true once the data written to them is durable.
    cleared: bool,
}

/// The mask of bits `[lo, hi)` within one word (`lo < hi <= 64`).
fn mask(lo: u64, hi: u64) -> u64 {
    let n = hi - lo;
    if n >= 64 {
        u64::MAX
    } else {
        ((1u64 << n) - 1) << lo
    }
}

impl Bitmap {
    /// An all-clear bitmap of `bits` bits.
    pub fn new(bits: u64) -> Self {
        let nwords = bits.div_ceil(64);
        let npages = bits.div_ceil(BITS_PER_PAGE);
        Bitmap {
            bits,
            words: vec![0; usize::try_from(nwords).unwrap_or(usize::MAX)],
            count: 0,
            dirty: vec![false; usize::try_from(npages).unwrap_or(usize::MAX)],
            cleared: false,
        }
    }

    /// A bitmap of `bits` bits from its words (as loaded from disk), with nothing dirty.
    /// Missing words read as zero, extra words and bits beyond `bits` are dropped.
    pub fn from_words(bits: u64, words: &[u64]) -> Self {
        let mut bm = Bitmap::new(bits);
        bm.or_words(0, words);
        bm.clear_dirty();
        bm
    }

    /// Number of bits (data blocks).
    pub fn len(&self) -> u64 {
        self.bits
    }

    /// True when the bitmap has no bits at all.
    pub fn is_empty(&self) -> bool {
        self.bits == 0
    }

    /// Number of 4 KiB pages the bitmap occupies on disk.
    pub fn pages(&self) -> u64 {
        self.dirty.len() as u64
    }

    /// Sets `bit`; returns true if it was clear. Out-of-range bits are ignored.
    pub fn set(&mut self, bit: u64) -> bool {
        self.set_bits(bit, bit.saturating_add(1)) == 1
    }

    /// Reads `bit` (false when out of range).
    pub fn get(&self, bit: u64) -> bool {
        if bit >= self.bits {
            return false;
        }
        self.words[(bit / 64) as usize] & (1 << (bit % 64)) != 0
    }

    /// Marks every block the byte range `[offset, offset + len)` touches (partially or
    /// fully) as dirty; returns how many bits were newly set. `len == 0` sets nothing.
    pub fn set_range_bytes(&mut self, offset: u64, len: u64) -> u64 {
        if len == 0 {
            return 0;
        }
        let first = offset / BLOCK_BYTES;
        let end = offset.saturating_add(len).div_ceil(BLOCK_BYTES);
        self.set_bits(first, end)
    }

    /// Clears only the blocks the byte range `[offset, offset + len)` covers entirely
    /// (a block only partly covered may still differ from the peer).
    pub fn clear_range_full_blocks(&mut self, offset: u64, len: u64) {
        let first = offset.div_ceil(BLOCK_BYTES);
        let end = offset.saturating_add(len) / BLOCK_BYTES;
        self.clear_bits(first, end);
    }

    /// Whether any block the byte range `[offset, offset + len)` touches is marked.
    pub fn any_set_bytes(&self, offset: u64, len: u64) -> bool {
        if len == 0 {
            return false;
        }
        let end = offset.saturating_add(len).div_ceil(BLOCK_BYTES);
        self.next_set(offset / BLOCK_BYTES)
            .is_some_and(|bit| bit < end)
    }

    /// Number of set bits, in O(1).
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The first set bit at or after `from`.
    pub fn next_set(&self, from: u64) -> Option<u64> {
        if from >= self.bits {
            return None;
        }
        let mut w = (from / 64) as usize;
        let mut word = self.words[w] & (u64::MAX << (from % 64));
        loop {
            if word != 0 {
                return Some(w as u64 * 64 + u64::from(word.trailing_zeros()));
            }
            w += 1;
            word = *self.words.get(w)?;
        }
    }

    /// The raw little-endian-on-disk words (bit i = bit i % 64 of word i / 64).
    pub fn words(&self) -> &[u64] {
        &self.words
    }

    /// ORs `words` into the bitmap starting at word `first_word` (e.g. a peer's bitmap
    /// received in chunks). Words beyond the end and bits beyond `len()` are ignored.
    pub fn or_words(&mut self, first_word: u64, words: &[u64]) {
        let nwords = self.words.len() as u64;
        for (i, &w) in words.iter().enumerate() {
            let idx = first_word.saturating_add(i as u64);
            if idx >= nwords {
                break;
            }
            let hi = (self.bits - idx * 64).min(64);
            let add = w & mask(0, hi);
            let old = self.words[idx as usize];
            let new = old | add;
            if new != old {
                self.words[idx as usize] = new;
                self.count += u64::from(new.count_ones() - old.count_ones());
                self.dirty[(idx / WORDS_PER_PAGE) as usize] = true;
            }
        }
    }

    /// Sets every bit (e.g. after `invalidate`, or a fresh `create-md`).
    pub fn set_all(&mut self) {
        self.set_bits(0, self.bits);
    }

    /// Clears every bit (e.g. after a completed full sync).
    pub fn clear_all(&mut self) {
        self.clear_bits(0, self.bits);
    }

    /// The pages (indices) changed since the last [`Bitmap::clear_dirty`].
    pub fn dirty_pages(&self) -> Vec<u64> {
        (0..self.dirty.len() as u64)
            .filter(|&p| self.dirty[p as usize])
            .collect()
    }

    /// Returns the dirty pages and forgets them.
    pub fn take_dirty_pages(&mut self) -> Vec<u64> {
        let pages = self.dirty_pages();
        self.clear_dirty();
        pages
    }

    /// Forgets which pages changed (after they were persisted).
    pub fn clear_dirty(&mut self) {
        self.dirty.iter_mut().for_each(|d| *d = false);
        self.cleared = false;
    }

    /// True when a bit was cleared since the last [`Bitmap::clear_dirty`]: persisting
    /// the dirty pages then records blocks as in sync, so the data device must be
    /// flushed first.
    pub fn has_cleared_bits(&self) -> bool {
        self.cleared
    }

    /// Marks every page dirty, so the next persist writes the whole bitmap.
    pub fn mark_all_dirty(&mut self) {
        self.dirty.iter_mut().for_each(|d| *d = true);
    }

    /// Encodes page `page` as its 4 KiB on-disk form (little-endian words, zero padded
    /// past the last bit).
    pub fn encode_page(&self, page: u64, out: &mut [u8; BLOCK_BYTES as usize]) {
        out.fill(0);
        let first = page.saturating_mul(WORDS_PER_PAGE) as usize;
        let words = self.words.get(first..).unwrap_or(&[]);
        for (chunk, w) in out.chunks_exact_mut(8).zip(words) {
            chunk.copy_from_slice(&w.to_le_bytes());
        }
    }

    /// Sets bits `[start, end)` (clamped to the bitmap); returns how many were newly set.
    fn set_bits(&mut self, start: u64, end: u64) -> u64 {
        let end = end.min(self.bits);
        if start >= end {
            return 0;
        }
        let mut added = 0;
        for w in start / 64..=(end - 1) / 64 {
            let lo = start.max(w * 64) - w * 64;
            let hi = end.min(w * 64 + 64) - w * 64;
            let old = self.words[w as usize];
            let new = old | mask(lo, hi);
            if new != old {
                self.words[w as usize] = new;
                added += u64::from(new.count_ones() - old.count_ones());
                self.dirty[(w / WORDS_PER_PAGE) as usize] = true;
            }
        }
        self.count += added;
        added
    }

    /// Clears bits `[start, end)` (clamped to the bitmap).
    fn clear_bits(&mut self, start: u64, end: u64) {
        let end = end.min(self.bits);
        if start >= end {
            return;
        }
        for w in start / 64..=(end - 1) / 64 {
            let lo = start.max(w * 64) - w * 64;
            let hi = end.min(w * 64 + 64) - w * 64;
            let old = self.words[w as usize];
            let new = old & !mask(lo, hi);
            if new != old {
                self.words[w as usize] = new;
                self.count -= u64::from(old.count_ones() - new.count_ones());
                self.dirty[(w / WORDS_PER_PAGE) as usize] = true;
                self.cleared = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn basics() {
        let mut bm = Bitmap::new(100);
        assert!(bm.set(3));
        assert!(!bm.set(3));
        assert!(!bm.set(100), "out of range is ignored");
        assert_eq!(bm.count(), 1);
        assert_eq!(bm.next_set(0), Some(3));
        assert_eq!(bm.next_set(4), None);
        // Bytes 4095..4097 touch blocks 0 and 1.
        assert_eq!(bm.set_range_bytes(4095, 2), 2);
        // Clearing [1, 8193) covers block 1 fully, blocks 0 and 2 partly.
        bm.clear_range_full_blocks(1, 8192);
        assert!(bm.get(0) && !bm.get(1) && bm.get(3));
        bm.set_all();
        assert_eq!(bm.count(), 100);
        assert_eq!(bm.words()[1], (1 << 36) - 1, "no bits past len");
        bm.clear_all();
        assert_eq!(bm.count(), 0);
    }

    #[test]
    fn dirty_pages_tracked() {
        let mut bm = Bitmap::new(3 * BITS_PER_PAGE);
        assert!(bm.dirty_pages().is_empty());
        bm.set(BITS_PER_PAGE + 5);
        bm.set(3 * BITS_PER_PAGE - 1);
        assert_eq!(bm.take_dirty_pages(), vec![1, 2]);
        bm.set(BITS_PER_PAGE + 5);
        assert!(bm.dirty_pages().is_empty(), "no change, no dirty page");
        bm.or_words(0, &[0, 1]);
        assert_eq!(bm.dirty_pages(), vec![0]);
    }

    #[test]
    fn or_words_masks_tail() {
        let mut bm = Bitmap::new(70);
        bm.or_words(0, &[u64::MAX, u64::MAX, u64::MAX]);
        assert_eq!(bm.count(), 70);
        assert_eq!(bm.words(), &[u64::MAX, 0x3f]);
        let copy = Bitmap::from_words(70, bm.words());
        assert_eq!(copy.count(), 70);
        assert!(copy.dirty_pages().is_empty());
    }

    #[test]
    fn encode_page_le() {
        let mut bm = Bitmap::new(BITS_PER_PAGE + 64);
        bm.set(0);
        bm.set(9);
        bm.set(BITS_PER_PAGE + 63);
        let mut page = [0u8; 4096];
        bm.encode_page(0, &mut page);
        assert_eq!(&page[..3], &[0x01, 0x02, 0x00]);
        bm.encode_page(1, &mut page);
        assert_eq!(&page[..8], &[0, 0, 0, 0, 0, 0, 0, 0x80]);
        assert!(page[8..].iter().all(|&b| b == 0));
    }

    #[derive(Debug, Clone)]
    enum Op {
        Set(u64),
        SetRange(u64, u64),
        ClearFull(u64, u64),
        Or(u64, Vec<u64>),
        SetAll,
        ClearAll,
    }

    fn op(bits: u64) -> impl Strategy<Value = Op> {
        let bytes = bits * BLOCK_BYTES + 2 * BLOCK_BYTES;
        prop_oneof![
            (0..bits + 3).prop_map(Op::Set),
            (0..bytes, 0..bytes / 2).prop_map(|(o, l)| Op::SetRange(o, l)),
            (0..bytes, 0..bytes / 2).prop_map(|(o, l)| Op::ClearFull(o, l)),
            (
                0..bits / 64 + 2,
                proptest::collection::vec(any::<u64>(), 0..4)
            )
                .prop_map(|(f, w)| Op::Or(f, w)),
            Just(Op::SetAll),
            Just(Op::ClearAll),
        ]
    }

    fn apply_model(m: &mut [bool], op: &Op) {
        let n = m.len() as u64;
        let mut set = |b: u64, v: bool| {
            if b < n {
                m[b as usize] = v;
            }
        };
        match op {
            Op::Set(b) => set(*b, true),
            Op::SetRange(o, l) => {
                if *l > 0 {
                    for b in o / BLOCK_BYTES..=(o + l - 1) / BLOCK_BYTES {
                        set(b, true);
                    }
                }
            }
            Op::ClearFull(o, l) => {
                for b in 0..n {
                    if b * BLOCK_BYTES >= *o && (b + 1) * BLOCK_BYTES <= o + l {
                        set(b, false);
                    }
                }
            }
            Op::Or(f, ws) => {
                for (i, w) in ws.iter().enumerate() {
                    for j in 0..64 {
                        if w & (1 << j) != 0 {
                            set((f + i as u64) * 64 + j, true);
                        }
                    }
                }
            }
            Op::SetAll => (0..n).for_each(|b| set(b, true)),
            Op::ClearAll => (0..n).for_each(|b| set(b, false)),
        }
    }

    proptest! {
        #[test]
        fn matches_vec_bool_model(
            (bits, ops) in (1u64..300).prop_flat_map(|b| (Just(b), proptest::collection::vec(op(b), 0..40)))
        ) {
            let mut bm = Bitmap::new(bits);
            let mut model = vec![false; bits as usize];
            for op in &ops {
                let before = model.iter().filter(|&&b| b).count() as u64;
                match op {
                    Op::Set(b) => { let was_clear = *b < bits && !model[*b as usize]; prop_assert_eq!(bm.set(*b), was_clear); }
                    Op::SetRange(o, l) => { let added = bm.set_range_bytes(*o, *l); apply_model(&mut model, op);
                        prop_assert_eq!(added, model.iter().filter(|&&b| b).count() as u64 - before); continue; }
                    Op::ClearFull(o, l) => bm.clear_range_full_blocks(*o, *l),
                    Op::Or(f, w) => bm.or_words(*f, w),
                    Op::SetAll => bm.set_all(),
                    Op::ClearAll => bm.clear_all(),
                }
                apply_model(&mut model, op);
            }
            let naive = model.iter().filter(|&&b| b).count() as u64;
            prop_assert_eq!(bm.count(), naive);
            let popcount: u64 = bm.words().iter().map(|w| u64::from(w.count_ones())).sum();
            prop_assert_eq!(popcount, naive);
            for (i, &m) in model.iter().enumerate() {
                prop_assert_eq!(bm.get(i as u64), m);
            }
            let expected_next = model.iter().position(|&b| b).map(|p| p as u64);
            prop_assert_eq!(bm.next_set(0), expected_next);
            let mid = bits / 2;
            let expected_mid = model.iter().skip(mid as usize).position(|&b| b).map(|p| p as u64 + mid);
            prop_assert_eq!(bm.next_set(mid), expected_mid);
        }
    }
}
