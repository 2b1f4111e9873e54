//! Range locks: no two operations on overlapping byte ranges run at once.
//!
//! Every write, trim, resync chunk and verify chunk holds its range from start until it
//! is done on **both** nodes; a peer's write or trim holds it on the node applying it,
//! until it is written there. This keeps overlapping writes in submission order on both
//! nodes, and keeps resync and verify reads from racing with application writes.
//! Waiters are granted in FIFO order: a waiter never overtakes an earlier waiter that
//! overlaps it.

use std::collections::VecDeque;

/// A half-open byte range `[start, end)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    /// First byte.
    pub start: u64,
    /// One past the last byte.
    pub end: u64,
}

impl Range {
    /// The range of `len` bytes at `offset`.
    pub fn new(offset: u64, len: u64) -> Self {
        Range {
            start: offset,
            end: offset.saturating_add(len),
        }
    }

    fn overlaps(&self, other: &Range) -> bool {
        self.start < other.end && other.start < self.end
    }
}

/// The lock table. `T` identifies a holder or waiter.
#[derive(Debug)]
pub struct RangeLocks<T> {
    held: Vec<(T, Range)>,
    waiting: VecDeque<(T, Range)>,
}

impl<T: Copy + PartialEq> Default for RangeLocks<T> {
    fn default() -> Self {
        Self {
            held: Vec::new(),
            waiting: VecDeque::new(),
        }
    }
}

impl<T: Copy + PartialEq> RangeLocks<T> {
    /// Whether `range` could be taken right now without waiting.
    pub fn is_free(&self, range: Range) -> bool {
        !self.held.iter().any(|(_, r)| r.overlaps(&range))
            && !self.waiting.iter().any(|(_, r)| r.overlaps(&range))
    }

    /// Takes `range` for `who` if free (returns true), otherwise queues it (false).
    pub fn acquire_or_wait(&mut self, who: T, range: Range) -> bool {
        if self.is_free(range) {
            self.held.push((who, range));
            true
        } else {
            self.waiting.push_back((who, range));
            false
        }
    }

    /// Takes `range` if free; never queues.
    pub fn try_acquire(&mut self, who: T, range: Range) -> bool {
        if self.is_free(range) {
            self.held.push((who, range));
            true
        } else {
            false
        }
    }

    /// Releases what `who` holds; returns the waiters that now hold their range, in order.
    pub fn release(&mut self, who: T) -> Vec<T> {
        self.held.retain(|(w, _)| *w != who);
        let mut granted = Vec::new();
        let mut still: VecDeque<(T, Range)> = VecDeque::new();
        while let Some((w, r)) = self.waiting.pop_front() {
            let blocked = self.held.iter().any(|(_, h)| h.overlaps(&r))
                || still.iter().any(|(_, s)| s.overlaps(&r));
            if blocked {
                still.push_back((w, r));
            } else {
                self.held.push((w, r));
                granted.push(w);
            }
        }
        self.waiting = still;
        granted
    }

    /// Number of held ranges.
    pub fn held_count(&self) -> usize {
        self.held.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlapping_waiters_keep_fifo_order() {
        let mut l = RangeLocks::default();
        assert!(l.acquire_or_wait(1, Range::new(0, 4096)));
        assert!(!l.acquire_or_wait(2, Range::new(0, 4096)));
        assert!(!l.acquire_or_wait(3, Range::new(2048, 4096)));
        // Disjoint from holders but overlapping waiter 3: must wait behind it.
        assert!(!l.acquire_or_wait(4, Range::new(5000, 100)));
        assert!(l.acquire_or_wait(5, Range::new(1 << 20, 4096)));
        assert_eq!(l.release(1), vec![2]);
        assert_eq!(l.release(2), vec![3]);
        assert_eq!(l.release(3), vec![4]);
    }

    #[test]
    fn adjacent_ranges_do_not_conflict() {
        let mut l = RangeLocks::default();
        assert!(l.acquire_or_wait(1, Range::new(0, 4096)));
        assert!(l.acquire_or_wait(2, Range::new(4096, 4096)));
        assert!(!l.try_acquire(3, Range::new(4095, 2)));
        assert_eq!(l.held_count(), 2);
    }
}
