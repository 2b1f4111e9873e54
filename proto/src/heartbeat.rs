//! The UDP heartbeat packet `clusterd` sends on every heartbeat link.
//!
//! One datagram is one packet: a fixed 32-byte head, the sender's name, the sender's
//! view of its groups, then an HMAC-SHA256 over every byte before it, keyed with the
//! cluster secret. All integers are little-endian.
//!
//! ```text
//! // { magic "HBHB" | version u8 | flags u8 | link u8 | name_len u8 | cluster_id u64
//! //   | generation u64 | sequence u64 } { name [u8; name_len] }
//! // { group_count u8 | [ name_len u8 | name [u8; name_len] | group_flags u8 ] }
//! // { mac [u8; 32] }
//! ```
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 4 | magic `48 42 48 42` ("HBHB") |
//! | 4 | 1 | version ([`VERSION`]) |
//! | 5 | 1 | flags ([`flags`]: standby, sees peer, ping ok; other bits must be 0) |
//! | 6 | 1 | link index (which of the configured heartbeat links it was sent on) |
//! | 7 | 1 | sender name length `n`, 1..=[`MAX_NAME`] |
//! | 8 | 8 | cluster id ([`cluster_id`] of the cluster name) |
//! | 16 | 8 | boot generation (chosen per daemon start, grows across restarts) |
//! | 24 | 8 | sequence (per link, grows by one per packet within a generation) |
//! | 32 | n | sender node name, UTF-8 |
//! | 32+n | 1 | group count `g`, 0..=[`MAX_GROUPS`] |
//! | … | g × (2+m) | per group: name length `m` (1..=[`MAX_NAME`]), name, [`group_flags`] (held, moved to sender or receiver, failed) |
//! | len−32 | 32 | HMAC-SHA256(secret, bytes 0..len−32) |
//!
//! The smallest packet is [`MIN_LEN`] bytes, the largest [`MAX_LEN`]; anything outside
//! is refused before any parsing.
//!
//! # Decoding order
//!
//! Length, magic, version, then the MAC (constant-time), and only then the fields: a
//! packet that fails authentication is never parsed. Every read is bounds-checked and
//! every length is capped, so decoding never panics on any input. Any single flipped
//! bit is rejected (magic, version or MAC).
//!
//! # Version policy
//!
//! A receiver accepts exactly [`VERSION`]. A new field or flag bit makes a new version
//! (unknown flag bits are refused, not ignored: a heartbeat whose meaning is unclear
//! must not keep a peer alive or move a group). Both nodes of a pair are upgraded one
//! after the other, so a future version 2 decoder will also accept version 1.
//!
//! # Replay
//!
//! The MAC proves the packet came from a holder of the secret; freshness comes from
//! the `(generation, sequence)` pair, which the membership layer checks (per link: the
//! same packet sent on two links is not a replay).

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use thiserror::Error;

/// Packet magic: the bytes "HBHB".
pub const MAGIC: [u8; 4] = *b"HBHB";
/// The only version this build speaks.
pub const VERSION: u8 = 1;
/// Longest node or group name, in bytes.
pub const MAX_NAME: usize = 64;
/// Most groups a packet describes.
pub const MAX_GROUPS: usize = 8;
/// Length of the MAC trailer.
pub const MAC_LEN: usize = 32;
/// Length of the fixed head before the sender's name.
pub const HEAD_LEN: usize = 32;
/// Smallest valid packet: a one-byte name, no groups.
pub const MIN_LEN: usize = HEAD_LEN + 1 + 1 + MAC_LEN;
/// Largest valid packet: longest name, most groups with longest names.
pub const MAX_LEN: usize = HEAD_LEN + MAX_NAME + 1 + MAX_GROUPS * (2 + MAX_NAME) + MAC_LEN;

/// Bits of the packet's flags byte.
pub mod flags {
    /// The sender is in standby: it runs no group.
    pub const STANDBY: u8 = 1 << 0;
    /// The sender currently considers the receiver alive.
    pub const SEES_PEER: u8 = 1 << 1;
    /// The sender reaches at least one ping target (or has none configured).
    pub const PING_OK: u8 = 1 << 2;
    /// Every bit this version defines.
    pub const ALL: u8 = STANDBY | SEES_PEER | PING_OK;
}

/// Bits of a group entry's flags byte.
pub mod group_flags {
    /// The group is not fully stopped on the sender (starting, running, stopping, or
    /// a stop that failed).
    pub const HELD: u8 = 1 << 0;
    /// An administrator moved the group to the sender (`clusterctl move GROUP sender`).
    pub const MOVE_TO_SENDER: u8 = 1 << 1;
    /// An administrator moved the group to the receiver.
    pub const MOVE_TO_RECEIVER: u8 = 1 << 2;
    /// The group failed on the sender (start failure or restart limit): the sender
    /// will not take it while the receiver can.
    pub const FAILED: u8 = 1 << 3;
    /// Every bit this version defines.
    pub const ALL: u8 = HELD | MOVE_TO_SENDER | MOVE_TO_RECEIVER | FAILED;
}

/// Where an administrator asked a group to run, relative to the packet's sender.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MoveTarget {
    /// On the sender.
    Sender,
    /// On the receiver.
    Receiver,
}

/// The sender's view of one group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupView {
    /// Group name (1..=[`MAX_NAME`] bytes).
    pub name: String,
    /// The group is not fully stopped on the sender.
    pub held: bool,
    /// The group failed on the sender and is not to be placed there.
    pub failed: bool,
    /// A pending administrator move, if any.
    pub moved_to: Option<MoveTarget>,
}

/// The sender's status carried in every heartbeat.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeView {
    /// The sender is in standby.
    pub standby: bool,
    /// The sender considers the receiver alive.
    pub sees_peer: bool,
    /// The sender reaches at least one ping target (true when none are configured).
    pub ping_ok: bool,
    /// The sender's groups (at most [`MAX_GROUPS`]).
    pub groups: Vec<GroupView>,
}

/// One heartbeat packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heartbeat {
    /// Index of the heartbeat link the packet was sent on.
    pub link: u8,
    /// [`cluster_id`] of the sender's cluster name.
    pub cluster_id: u64,
    /// Sender node name (1..=[`MAX_NAME`] bytes).
    pub node: String,
    /// Sender's boot generation: new at every daemon start, larger than the last one.
    pub generation: u64,
    /// Per-link sequence number within the generation.
    pub sequence: u64,
    /// The sender's status.
    pub view: NodeView,
}

/// Why a heartbeat could not be encoded or decoded.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum HeartbeatError {
    /// Fewer bytes than the smallest valid packet.
    #[error("heartbeat of {0} bytes is shorter than the minimum")]
    TooShort(usize),
    /// More bytes than the largest valid packet.
    #[error("heartbeat of {0} bytes is longer than the maximum")]
    TooLong(usize),
    /// The packet does not start with the magic.
    #[error("bad heartbeat magic")]
    BadMagic,
    /// The version is not one this build speaks.
    #[error("unsupported heartbeat version {0}")]
    UnsupportedVersion(u8),
    /// The MAC does not match: wrong secret, corruption or forgery.
    #[error("heartbeat authentication failed")]
    BadMac,
    /// The MAC matched but the fields do not parse (a peer bug, never corruption).
    #[error("malformed heartbeat: {0}")]
    Malformed(&'static str),
    /// The heartbeat to encode breaks a limit (name length, group count).
    #[error("cannot encode heartbeat: {0}")]
    Unencodable(&'static str),
}

type HmacSha256 = Hmac<Sha256>;

fn hmac(secret: &[u8]) -> HmacSha256 {
    // HMAC accepts keys of any length, so this cannot fail; fall back to an empty-key
    // MAC rather than panic (it would then never verify).
    match HmacSha256::new_from_slice(secret) {
        Ok(m) => m,
        Err(_) => HmacSha256::new(&Default::default()),
    }
}

/// The 64-bit id of a cluster name: the first 8 bytes (little-endian) of
/// SHA-256(`"hablock-cluster-v1\0"` | name). Two clusters sharing a port and a secret
/// by mistake still ignore each other.
pub fn cluster_id(name: &str) -> u64 {
    let digest = Sha256::new()
        .chain_update(b"hablock-cluster-v1\0")
        .chain_update(name.as_bytes())
        .finalize();
    let mut a = [0u8; 8];
    a.copy_from_slice(&digest[..8]);
    u64::from_le_bytes(a)
}

fn put_name(out: &mut Vec<u8>, name: &str, what: &'static str) -> Result<(), HeartbeatError> {
    if name.is_empty() || name.len() > MAX_NAME {
        return Err(HeartbeatError::Unencodable(what));
    }
    out.push(name.len() as u8);
    out.extend_from_slice(name.as_bytes());
    Ok(())
}

/// Encodes `hb` and appends its MAC keyed with `secret`.
///
/// Fails only when `hb` breaks a limit the decoder enforces (empty or too long names,
/// more than [`MAX_GROUPS`] groups), so every encoded packet decodes.
pub fn encode(hb: &Heartbeat, secret: &[u8]) -> Result<Vec<u8>, HeartbeatError> {
    let name_len = hb.node.len();
    if name_len == 0 || name_len > MAX_NAME {
        return Err(HeartbeatError::Unencodable(
            "node name must be 1 to 64 bytes",
        ));
    }
    if hb.view.groups.len() > MAX_GROUPS {
        return Err(HeartbeatError::Unencodable("more than 8 groups"));
    }
    let mut out = Vec::with_capacity(MAX_LEN);
    out.extend_from_slice(&MAGIC);
    out.push(VERSION);
    let v = &hb.view;
    let mut f = 0u8;
    if v.standby {
        f |= flags::STANDBY;
    }
    if v.sees_peer {
        f |= flags::SEES_PEER;
    }
    if v.ping_ok {
        f |= flags::PING_OK;
    }
    out.push(f);
    out.push(hb.link);
    out.push(name_len as u8);
    out.extend_from_slice(&hb.cluster_id.to_le_bytes());
    out.extend_from_slice(&hb.generation.to_le_bytes());
    out.extend_from_slice(&hb.sequence.to_le_bytes());
    out.extend_from_slice(hb.node.as_bytes());
    out.push(v.groups.len() as u8);
    for g in &v.groups {
        put_name(&mut out, &g.name, "group name must be 1 to 64 bytes")?;
        let mut gf = 0u8;
        if g.held {
            gf |= group_flags::HELD;
        }
        if g.failed {
            gf |= group_flags::FAILED;
        }
        match g.moved_to {
            None => {}
            Some(MoveTarget::Sender) => gf |= group_flags::MOVE_TO_SENDER,
            Some(MoveTarget::Receiver) => gf |= group_flags::MOVE_TO_RECEIVER,
        }
        out.push(gf);
    }
    let mac = hmac(secret).chain_update(&out).finalize().into_bytes();
    out.extend_from_slice(&mac);
    Ok(out)
}

/// A bounds-checked reader over the authenticated body.
struct Reader<'a> {
    b: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], HeartbeatError> {
        if self.b.len() < n {
            return Err(HeartbeatError::Malformed("truncated"));
        }
        let (head, rest) = self.b.split_at(n);
        self.b = rest;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, HeartbeatError> {
        Ok(self.take(1)?[0])
    }
    fn u64(&mut self) -> Result<u64, HeartbeatError> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(a))
    }
    fn name(&mut self, len: usize) -> Result<String, HeartbeatError> {
        if len == 0 || len > MAX_NAME {
            return Err(HeartbeatError::Malformed("name length out of range"));
        }
        let b = self.take(len)?;
        String::from_utf8(b.to_vec()).map_err(|_| HeartbeatError::Malformed("name is not UTF-8"))
    }
}

/// Checks and decodes one packet (the whole datagram) with the cluster `secret`.
pub fn decode(bytes: &[u8], secret: &[u8]) -> Result<Heartbeat, HeartbeatError> {
    if bytes.len() < MIN_LEN {
        return Err(HeartbeatError::TooShort(bytes.len()));
    }
    if bytes.len() > MAX_LEN {
        return Err(HeartbeatError::TooLong(bytes.len()));
    }
    if bytes[0..4] != MAGIC {
        return Err(HeartbeatError::BadMagic);
    }
    if bytes[4] != VERSION {
        return Err(HeartbeatError::UnsupportedVersion(bytes[4]));
    }
    let (body, mac) = bytes.split_at(bytes.len() - MAC_LEN);
    hmac(secret)
        .chain_update(body)
        .verify_slice(mac)
        .map_err(|_| HeartbeatError::BadMac)?;

    let mut r = Reader { b: &body[5..] };
    let f = r.u8()?;
    if f & !flags::ALL != 0 {
        return Err(HeartbeatError::Malformed("unknown flag bits"));
    }
    let link = r.u8()?;
    let name_len = r.u8()? as usize;
    let cluster_id = r.u64()?;
    let generation = r.u64()?;
    let sequence = r.u64()?;
    let node = r.name(name_len)?;
    let count = r.u8()? as usize;
    if count > MAX_GROUPS {
        return Err(HeartbeatError::Malformed("more than 8 groups"));
    }
    let mut groups = Vec::with_capacity(count);
    for _ in 0..count {
        let len = r.u8()? as usize;
        let name = r.name(len)?;
        let gf = r.u8()?;
        if gf & !group_flags::ALL != 0 {
            return Err(HeartbeatError::Malformed("unknown group flag bits"));
        }
        let moved_to = match (
            gf & group_flags::MOVE_TO_SENDER != 0,
            gf & group_flags::MOVE_TO_RECEIVER != 0,
        ) {
            (false, false) => None,
            (true, false) => Some(MoveTarget::Sender),
            (false, true) => Some(MoveTarget::Receiver),
            (true, true) => return Err(HeartbeatError::Malformed("group moved to both nodes")),
        };
        groups.push(GroupView {
            name,
            held: gf & group_flags::HELD != 0,
            failed: gf & group_flags::FAILED != 0,
            moved_to,
        });
    }
    if !r.b.is_empty() {
        return Err(HeartbeatError::Malformed("trailing bytes"));
    }
    Ok(Heartbeat {
        link,
        cluster_id,
        node,
        generation,
        sequence,
        view: NodeView {
            standby: f & flags::STANDBY != 0,
            sees_peer: f & flags::SEES_PEER != 0,
            ping_ok: f & flags::PING_OK != 0,
            groups,
        },
    })
}
