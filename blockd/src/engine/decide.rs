//! What to do when two nodes meet: resync direction from the generation identifiers,
//! split-brain detection and the automatic split-brain recovery policies (DRBD's
//! `after-sb-0pri`, `after-sb-1pri`, `after-sb-2pri`).
//!
//! [`decide`] is a pure function of both sides' handshake state, antisymmetric by
//! construction: when node A concludes "I am the source", node B, calling it with the
//! arguments swapped, concludes "I am the target". Both sides therefore agree without
//! another round trip.

use hablock_proto::types::{DiskState, Role, Uuids};

pub use hablock_config::{AfterSb0Pri, AfterSb1Pri, AfterSb2Pri};

/// The three split-brain policies of a resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SplitBrainPolicy {
    /// Neither node Primary.
    pub zero_primaries: AfterSb0Pri,
    /// One node Primary.
    pub one_primary: AfterSb1Pri,
    /// Both nodes Primary.
    pub two_primaries: AfterSb2Pri,
}

impl Default for SplitBrainPolicy {
    fn default() -> Self {
        Self {
            zero_primaries: AfterSb0Pri::Disconnect,
            one_primary: AfterSb1Pri::Disconnect,
            two_primaries: AfterSb2Pri::Disconnect,
        }
    }
}

/// One side's state as exchanged in the handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Side {
    /// Node name (the last tie-breaker).
    pub node: String,
    /// Role at connect time.
    pub role: Role,
    /// Disk state at connect time.
    pub disk: DiskState,
    /// Generation identifiers.
    pub uuids: Uuids,
    /// Set bits in the dirty bitmap (changes since the bitmap generation).
    pub dirty_bits: u64,
    /// The node was Primary when it crashed.
    pub crashed_primary: bool,
    /// Wall-clock ms when the node last became Primary (0: never).
    pub primary_since_ms: u64,
    /// The operator asked this node to discard its data (`connect --discard-my-data`).
    pub discard_my_data: bool,
}

/// How the resync copies data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncScope {
    /// Only the blocks marked in either node's dirty bitmap.
    Bitmap,
    /// Every block.
    Full,
}

/// The outcome of a handshake, from the point of view of the first [`decide`] argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Nothing to copy.
    InSync,
    /// One side's disk is detached: connect without a resync (a Diskless Primary is
    /// served by the peer; the side with a disk keeps what the other lacks in its
    /// bitmap).
    Diskless,
    /// Neither side has data worth copying yet (fresh metadata on both): wait for a
    /// forced promotion.
    BothInconsistent,
    /// This node sends the resync.
    Source(SyncScope),
    /// This node receives the resync.
    Target(SyncScope),
    /// Refuse and stay StandAlone.
    Refuse(Refusal),
}

/// Why two nodes refuse to connect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Both sides changed the data independently and the policy says disconnect.
    SplitBrain,
    /// The generation identifiers share no history: these are different data sets.
    UnrelatedData,
    /// The resync would overwrite a Primary's data.
    PrimaryWouldBeTarget,
    /// The only node with newer data has Inconsistent data.
    SourceInconsistent,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Refusal::SplitBrain => "split brain detected, automatic recovery not allowed by policy",
            Refusal::UnrelatedData => "unrelated data (generation identifiers share no history)",
            Refusal::PrimaryWouldBeTarget => "the resync would overwrite the Primary's data",
            Refusal::SourceInconsistent => "the node with newer data is Inconsistent",
        })
    }
}

/// Whether the meeting was a split brain (both changed the data independently),
/// whatever the decision.
pub fn is_split_brain(me: &Side, peer: &Side) -> bool {
    let (a, b) = (&me.uuids, &peer.uuids);
    if a.current == b.current || a.current == 0 || b.current == 0 {
        return false;
    }
    // One side is simply ahead of the other: an ordinary resync.
    if (a.bitmap != 0 && a.bitmap == b.current) || (b.bitmap != 0 && b.bitmap == a.current) {
        return false;
    }
    (a.bitmap != 0 && (a.bitmap == b.bitmap || b.history.contains(&a.bitmap)))
        || (b.bitmap != 0 && a.history.contains(&b.bitmap))
}

/// Decides what happens when `me` meets `peer`.
pub fn decide(me: &Side, peer: &Side, policy: &SplitBrainPolicy) -> Decision {
    if me.disk == DiskState::Diskless || peer.disk == DiskState::Diskless {
        return Decision::Diskless;
    }
    let raw = decide_direction(me, peer, policy);
    // Safety nets that hold whatever the identifiers say. A Primary may be the target
    // only while its own disk is Inconsistent (attached again after a failure): its
    // clients' data is the peer's then.
    match raw {
        Decision::Target(_) if me.role == Role::Primary && me.disk != DiskState::Inconsistent => {
            Decision::Refuse(Refusal::PrimaryWouldBeTarget)
        }
        Decision::Source(_)
            if peer.role == Role::Primary && peer.disk != DiskState::Inconsistent =>
        {
            Decision::Refuse(Refusal::PrimaryWouldBeTarget)
        }
        Decision::Source(_) if me.disk == DiskState::Inconsistent => {
            Decision::Refuse(Refusal::SourceInconsistent)
        }
        Decision::Target(_) if peer.disk == DiskState::Inconsistent => {
            Decision::Refuse(Refusal::SourceInconsistent)
        }
        other => other,
    }
}

#[cfg(test)]
fn flip(d: Decision) -> Decision {
    match d {
        Decision::Source(s) => Decision::Target(s),
        Decision::Target(s) => Decision::Source(s),
        other => other,
    }
}

fn decide_direction(me: &Side, peer: &Side, policy: &SplitBrainPolicy) -> Decision {
    let (a, b) = (&me.uuids, &peer.uuids);
    let me_inc = me.disk == DiskState::Inconsistent;
    let peer_inc = peer.disk == DiskState::Inconsistent;

    if a.current == 0 && b.current == 0 {
        return Decision::BothInconsistent;
    }
    if a.current == 0 {
        return if peer_inc {
            Decision::BothInconsistent
        } else {
            Decision::Target(SyncScope::Full)
        };
    }
    if b.current == 0 {
        return if me_inc {
            Decision::BothInconsistent
        } else {
            Decision::Source(SyncScope::Full)
        };
    }

    if a.current == b.current {
        return same_generation(me, peer);
    }

    if is_split_brain(me, peer) {
        return split_brain(me, peer, policy);
    }
    let a_ahead = a.bitmap != 0 && a.bitmap == b.current;
    let b_ahead = b.bitmap != 0 && b.bitmap == a.current;
    match (a_ahead, b_ahead) {
        (true, false) => return Decision::Source(SyncScope::Bitmap),
        (false, true) => return Decision::Target(SyncScope::Bitmap),
        (true, true) => return Decision::Refuse(Refusal::UnrelatedData),
        (false, false) => {}
    }
    let a_descends = a.history.contains(&b.current);
    let b_descends = b.history.contains(&a.current);
    match (a_descends, b_descends) {
        (true, false) => Decision::Source(SyncScope::Full),
        (false, true) => Decision::Target(SyncScope::Full),
        _ => Decision::Refuse(Refusal::UnrelatedData),
    }
}

/// Both sides carry the same data generation: only an interrupted resync, a crashed
/// Primary's activity log or verify findings (dirty bits) need copying.
fn same_generation(me: &Side, peer: &Side) -> Decision {
    let me_inc = me.disk == DiskState::Inconsistent;
    let peer_inc = peer.disk == DiskState::Inconsistent;
    match (me_inc, peer_inc) {
        (true, true) => return Decision::BothInconsistent,
        (true, false) => return Decision::Target(SyncScope::Bitmap),
        (false, true) => return Decision::Source(SyncScope::Bitmap),
        (false, false) => {}
    }
    let work =
        me.dirty_bits > 0 || peer.dirty_bits > 0 || me.crashed_primary || peer.crashed_primary;
    if !work {
        return Decision::InSync;
    }
    // Blocks to copy on equal generations (a crashed Primary's activity log, verify
    // findings): a Primary's copy is the one clients see, so it is the reference; then
    // the crashed Primary's; then a deterministic pick.
    if me.role == Role::Primary && peer.role != Role::Primary {
        return Decision::Source(SyncScope::Bitmap);
    }
    if peer.role == Role::Primary && me.role != Role::Primary {
        return Decision::Target(SyncScope::Bitmap);
    }
    if me.crashed_primary != peer.crashed_primary {
        return if me.crashed_primary {
            Decision::Source(SyncScope::Bitmap)
        } else {
            Decision::Target(SyncScope::Bitmap)
        };
    }
    if me.node < peer.node {
        Decision::Source(SyncScope::Bitmap)
    } else {
        Decision::Target(SyncScope::Bitmap)
    }
}

/// Which side loses under an automatic policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Victim {
    Me,
    Peer,
    Nobody,
}

fn split_brain(me: &Side, peer: &Side, policy: &SplitBrainPolicy) -> Decision {
    // The operator's word comes first.
    let victim = match (me.discard_my_data, peer.discard_my_data) {
        (true, false) => Victim::Me,
        (false, true) => Victim::Peer,
        (true, true) => Victim::Nobody,
        (false, false) => {
            let me_pri = me.role == Role::Primary;
            let peer_pri = peer.role == Role::Primary;
            match (me_pri, peer_pri) {
                (false, false) => zero_primaries(me, peer, policy.zero_primaries),
                (true, true) => match policy.two_primaries {
                    AfterSb2Pri::Disconnect => Victim::Nobody,
                },
                (true, false) => one_primary(me, peer, policy, Victim::Peer),
                (false, true) => one_primary(me, peer, policy, Victim::Me),
            }
        }
    };
    // A split brain's changes on both sides are tracked relative to the same ancestor
    // only when the bitmap generations match; otherwise copy everything.
    let scope = if me.uuids.bitmap != 0 && me.uuids.bitmap == peer.uuids.bitmap {
        SyncScope::Bitmap
    } else {
        SyncScope::Full
    };
    match victim {
        Victim::Me => Decision::Target(scope),
        Victim::Peer => Decision::Source(scope),
        Victim::Nobody => Decision::Refuse(Refusal::SplitBrain),
    }
}

fn one_primary(me: &Side, peer: &Side, policy: &SplitBrainPolicy, secondary: Victim) -> Victim {
    match policy.one_primary {
        AfterSb1Pri::Disconnect => Victim::Nobody,
        AfterSb1Pri::DiscardSecondary => secondary,
        AfterSb1Pri::Consensus => {
            if zero_primaries(me, peer, policy.zero_primaries) == secondary {
                secondary
            } else {
                Victim::Nobody
            }
        }
    }
}

fn zero_primaries(me: &Side, peer: &Side, policy: AfterSb0Pri) -> Victim {
    match policy {
        AfterSb0Pri::Disconnect => Victim::Nobody,
        AfterSb0Pri::DiscardZeroChanges => match (me.dirty_bits == 0, peer.dirty_bits == 0) {
            (true, false) => Victim::Me,
            (false, true) => Victim::Peer,
            // Neither wrote: any direction gives the same data.
            (true, true) => by_name(me, peer),
            (false, false) => Victim::Nobody,
        },
        AfterSb0Pri::DiscardLeastChanges => match me.dirty_bits.cmp(&peer.dirty_bits) {
            std::cmp::Ordering::Less => Victim::Me,
            std::cmp::Ordering::Greater => Victim::Peer,
            std::cmp::Ordering::Equal => {
                zero_primaries(me, peer, AfterSb0Pri::DiscardYoungerPrimary)
            }
        },
        AfterSb0Pri::DiscardYoungerPrimary => {
            match me.primary_since_ms.cmp(&peer.primary_since_ms) {
                std::cmp::Ordering::Greater => Victim::Me,
                std::cmp::Ordering::Less => Victim::Peer,
                std::cmp::Ordering::Equal => Victim::Nobody,
            }
        }
        AfterSb0Pri::DiscardOlderPrimary => match me.primary_since_ms.cmp(&peer.primary_since_ms) {
            std::cmp::Ordering::Less => Victim::Me,
            std::cmp::Ordering::Greater => Victim::Peer,
            std::cmp::Ordering::Equal => Victim::Nobody,
        },
    }
}

fn by_name(me: &Side, peer: &Side) -> Victim {
    if me.node > peer.node {
        Victim::Me
    } else {
        Victim::Peer
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn side(node: &str, current: u64, bitmap: u64) -> Side {
        Side {
            node: node.into(),
            role: Role::Secondary,
            disk: DiskState::UpToDate,
            uuids: Uuids {
                current,
                bitmap,
                history: [0, 0],
            },
            dirty_bits: 0,
            crashed_primary: false,
            primary_since_ms: 0,
            discard_my_data: false,
        }
    }

    fn policy(p0: AfterSb0Pri, p1: AfterSb1Pri) -> SplitBrainPolicy {
        SplitBrainPolicy {
            zero_primaries: p0,
            one_primary: p1,
            two_primaries: AfterSb2Pri::Disconnect,
        }
    }

    #[test]
    fn a_detached_disk_on_either_side_connects_without_a_resync() {
        // Even with generations that would otherwise mean a resync or a split brain.
        let mut a = side("a", 5, 0);
        let mut b = side("b", 7, 5);
        a.role = Role::Primary;
        a.disk = DiskState::Diskless;
        let p = SplitBrainPolicy::default();
        assert_eq!(decide(&a, &b, &p), Decision::Diskless);
        assert_eq!(decide(&b, &a, &p), Decision::Diskless);
        a.disk = DiskState::UpToDate;
        b.disk = DiskState::Diskless;
        assert_eq!(decide(&a, &b, &p), Decision::Diskless);
        assert_eq!(decide(&b, &a, &p), Decision::Diskless);
    }

    #[test]
    fn fresh_metadata_on_both_waits_for_force() {
        let mut a = side("a", 0, 0);
        let mut b = side("b", 0, 0);
        a.disk = DiskState::Inconsistent;
        b.disk = DiskState::Inconsistent;
        assert_eq!(
            decide(&a, &b, &SplitBrainPolicy::default()),
            Decision::BothInconsistent
        );
    }

    #[test]
    fn forced_primary_fully_syncs_fresh_peer() {
        let a = side("a", 7, 0);
        let mut b = side("b", 0, 0);
        b.disk = DiskState::Inconsistent;
        assert_eq!(
            decide(&a, &b, &SplitBrainPolicy::default()),
            Decision::Source(SyncScope::Full)
        );
        assert_eq!(
            decide(&b, &a, &SplitBrainPolicy::default()),
            Decision::Target(SyncScope::Full)
        );
    }

    #[test]
    fn changed_side_is_bitmap_source() {
        let a = side("a", 9, 7);
        let b = side("b", 7, 0);
        assert_eq!(
            decide(&a, &b, &SplitBrainPolicy::default()),
            Decision::Source(SyncScope::Bitmap)
        );
        assert_eq!(
            decide(&b, &a, &SplitBrainPolicy::default()),
            Decision::Target(SyncScope::Bitmap)
        );
    }

    #[test]
    fn older_generation_in_history_gets_full_sync() {
        let mut a = side("a", 11, 0);
        a.uuids.history = [9, 7];
        let b = side("b", 7, 0);
        assert_eq!(
            decide(&a, &b, &SplitBrainPolicy::default()),
            Decision::Source(SyncScope::Full)
        );
    }

    #[test]
    fn unrelated_data_is_refused() {
        let a = side("a", 11, 3);
        let b = side("b", 12, 4);
        assert_eq!(
            decide(&a, &b, &SplitBrainPolicy::default()),
            Decision::Refuse(Refusal::UnrelatedData)
        );
    }

    #[test]
    fn crashed_primary_is_source_of_its_activity_log() {
        let mut a = side("a", 5, 0);
        a.crashed_primary = true;
        a.dirty_bits = 1024;
        let b = side("b", 5, 0);
        assert_eq!(
            decide(&a, &b, &SplitBrainPolicy::default()),
            Decision::Source(SyncScope::Bitmap)
        );
        assert_eq!(
            decide(&b, &a, &SplitBrainPolicy::default()),
            Decision::Target(SyncScope::Bitmap)
        );
    }

    #[test]
    fn primary_is_a_target_only_onto_an_attached_inconsistent_disk() {
        let mut a = side("a", 7, 0);
        a.role = Role::Primary;
        let b = side("b", 9, 7);
        assert_eq!(
            decide(&a, &b, &SplitBrainPolicy::default()),
            Decision::Refuse(Refusal::PrimaryWouldBeTarget)
        );
        // A new disk attached under the Primary: no generation, Inconsistent.
        let mut a = side("a", 0, 0);
        a.role = Role::Primary;
        a.disk = DiskState::Inconsistent;
        let p = SplitBrainPolicy::default();
        assert_eq!(decide(&a, &b, &p), Decision::Target(SyncScope::Full));
        assert_eq!(decide(&b, &a, &p), Decision::Source(SyncScope::Full));
    }

    fn split(a_dirty: u64, b_dirty: u64) -> (Side, Side) {
        let mut a = side("a", 10, 5);
        let mut b = side("b", 11, 5);
        a.dirty_bits = a_dirty;
        b.dirty_bits = b_dirty;
        (a, b)
    }

    #[test]
    fn split_brain_default_disconnects() {
        let (a, b) = split(3, 4);
        assert!(is_split_brain(&a, &b));
        assert_eq!(
            decide(&a, &b, &SplitBrainPolicy::default()),
            Decision::Refuse(Refusal::SplitBrain)
        );
    }

    #[test]
    fn discard_zero_changes() {
        let p = policy(AfterSb0Pri::DiscardZeroChanges, AfterSb1Pri::Disconnect);
        let (a, b) = split(0, 4);
        assert_eq!(decide(&a, &b, &p), Decision::Target(SyncScope::Bitmap));
        assert_eq!(decide(&b, &a, &p), Decision::Source(SyncScope::Bitmap));
        let (a, b) = split(2, 4);
        assert_eq!(decide(&a, &b, &p), Decision::Refuse(Refusal::SplitBrain));
    }

    #[test]
    fn discard_least_changes() {
        let p = policy(AfterSb0Pri::DiscardLeastChanges, AfterSb1Pri::Disconnect);
        let (a, b) = split(2, 4);
        assert_eq!(decide(&a, &b, &p), Decision::Target(SyncScope::Bitmap));
        assert_eq!(decide(&b, &a, &p), Decision::Source(SyncScope::Bitmap));
    }

    #[test]
    fn discard_younger_and_older_primary() {
        let (mut a, mut b) = split(2, 4);
        a.primary_since_ms = 1000;
        b.primary_since_ms = 2000;
        let young = policy(AfterSb0Pri::DiscardYoungerPrimary, AfterSb1Pri::Disconnect);
        assert_eq!(decide(&a, &b, &young), Decision::Source(SyncScope::Bitmap));
        assert_eq!(decide(&b, &a, &young), Decision::Target(SyncScope::Bitmap));
        let old = policy(AfterSb0Pri::DiscardOlderPrimary, AfterSb1Pri::Disconnect);
        assert_eq!(decide(&a, &b, &old), Decision::Target(SyncScope::Bitmap));
    }

    #[test]
    fn one_primary_policies() {
        let (mut a, b) = split(2, 4);
        a.role = Role::Primary;
        let ds = policy(AfterSb0Pri::Disconnect, AfterSb1Pri::DiscardSecondary);
        assert_eq!(decide(&a, &b, &ds), Decision::Source(SyncScope::Bitmap));
        assert_eq!(decide(&b, &a, &ds), Decision::Target(SyncScope::Bitmap));
        // consensus: least-changes discards a (the primary): no agreement.
        let c = policy(AfterSb0Pri::DiscardLeastChanges, AfterSb1Pri::Consensus);
        assert_eq!(decide(&a, &b, &c), Decision::Refuse(Refusal::SplitBrain));
        // consensus: zero-changes with the secondary unchanged: agreement.
        let (mut a, b) = split(2, 0);
        a.role = Role::Primary;
        let c = policy(AfterSb0Pri::DiscardZeroChanges, AfterSb1Pri::Consensus);
        assert_eq!(decide(&a, &b, &c), Decision::Source(SyncScope::Bitmap));
        let d = policy(AfterSb0Pri::DiscardZeroChanges, AfterSb1Pri::Disconnect);
        assert_eq!(decide(&a, &b, &d), Decision::Refuse(Refusal::SplitBrain));
    }

    #[test]
    fn two_primaries_disconnect() {
        let (mut a, mut b) = split(0, 4);
        a.role = Role::Primary;
        b.role = Role::Primary;
        let p = policy(
            AfterSb0Pri::DiscardZeroChanges,
            AfterSb1Pri::DiscardSecondary,
        );
        assert_eq!(decide(&a, &b, &p), Decision::Refuse(Refusal::SplitBrain));
    }

    #[test]
    fn discard_my_data_wins() {
        let (mut a, b) = split(5, 4);
        a.discard_my_data = true;
        assert_eq!(
            decide(&a, &b, &SplitBrainPolicy::default()),
            Decision::Target(SyncScope::Bitmap)
        );
        assert_eq!(
            decide(&b, &a, &SplitBrainPolicy::default()),
            Decision::Source(SyncScope::Bitmap)
        );
    }

    fn arb_side(name: &'static str) -> impl Strategy<Value = Side> {
        (
            0u64..4,
            0u64..4,
            0u64..4,
            0u64..4,
            prop_oneof![Just(Role::Primary), Just(Role::Secondary)],
            prop_oneof![Just(DiskState::UpToDate), Just(DiskState::Inconsistent)],
            0u64..3,
            any::<bool>(),
            0u64..3,
            any::<bool>(),
        )
            .prop_map(
                move |(c, b, h0, h1, role, disk, dirty, crashed, since, discard)| Side {
                    node: name.into(),
                    role,
                    disk,
                    uuids: Uuids {
                        current: c,
                        bitmap: b,
                        history: [h0, h1],
                    },
                    dirty_bits: dirty,
                    crashed_primary: crashed,
                    primary_since_ms: since,
                    discard_my_data: discard,
                },
            )
    }

    proptest! {
        /// Both nodes always reach mirror-image conclusions, under every policy.
        #[test]
        fn decisions_are_antisymmetric(
            a in arb_side("a"), b in arb_side("b"),
            p0 in 0usize..5, p1 in 0usize..3,
        ) {
            let p0s = [AfterSb0Pri::Disconnect, AfterSb0Pri::DiscardZeroChanges,
                AfterSb0Pri::DiscardLeastChanges, AfterSb0Pri::DiscardYoungerPrimary,
                AfterSb0Pri::DiscardOlderPrimary];
            let p1s = [AfterSb1Pri::Disconnect, AfterSb1Pri::DiscardSecondary, AfterSb1Pri::Consensus];
            let p = policy(p0s[p0], p1s[p1]);
            let ab = decide(&a, &b, &p);
            let ba = decide(&b, &a, &p);
            prop_assert_eq!(flip(ab.clone()), ba.clone(), "a->b {:?} b->a {:?}", ab, ba);
            // A Primary receives only onto an Inconsistent disk (attached again), an
            // Inconsistent node never sends.
            if let Decision::Target(_) = ab { prop_assert!(a.role != Role::Primary || a.disk == DiskState::Inconsistent); prop_assert!(b.disk != DiskState::Inconsistent); }
            if let Decision::Source(_) = ab { prop_assert!(b.role != Role::Primary || b.disk == DiskState::Inconsistent); prop_assert!(a.disk != DiskState::Inconsistent); }
        }
    }
}
