//! The UDP administrator request `clusterd` forwards to its peer: `clusterctl standby
//! PEER` and `clusterctl online PEER` run on one node and act on the other.
//!
//! Sent on every heartbeat link to the peer's heartbeat port, next to the heartbeats
//! (a different magic tells them apart). All integers are little-endian.
//!
//! ```text
//! // { magic "HBRQ" | version u8 | command u8 | sender_len u8 | target_len u8
//! //   | cluster_id u64 | generation u64 | sequence u64 }
//! // { sender [u8; sender_len] } { target [u8; target_len] } { mac [u8; 32] }
//! ```
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 4 | magic `48 42 52 51` ("HBRQ") |
//! | 4 | 1 | version ([`VERSION`]) |
//! | 5 | 1 | command ([`Command`]: 1 standby, 2 online; others refused) |
//! | 6 | 1 | sender name length `s`, 1..=[`MAX_NAME`] |
//! | 7 | 1 | target name length `t`, 1..=[`MAX_NAME`] |
//! | 8 | 8 | cluster id ([`crate::heartbeat::cluster_id`]) |
//! | 16 | 8 | the sender's boot generation (the one in its heartbeats) |
//! | 24 | 8 | request sequence, from 1, grows by one per request within a generation |
//! | 32 | s | sender node name |
//! | 32+s | t | target node name (the receiver) |
//! | len−32 | 32 | HMAC-SHA256(secret, bytes 0..len−32) |
//!
//! Decoding checks length, magic, version and the MAC (constant-time) before any
//! field. Freshness is the receiver's job: it accepts a request only in the sender's
//! current generation (known from its heartbeats) and with a sequence above the last
//! one accepted, so a captured request cannot be replayed. The sender repeats a
//! request (same sequence) until the peer's heartbeats show the result.
//!
//! Version policy: as the heartbeat's; a receiver accepts exactly [`VERSION`].

use crate::heartbeat::{HeartbeatError, MAX_NAME};
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Packet magic: the bytes "HBRQ".
pub const MAGIC: [u8; 4] = *b"HBRQ";
/// The only version this build speaks.
pub const VERSION: u8 = 1;
/// Length of the MAC trailer.
pub const MAC_LEN: usize = 32;
/// Length of the fixed head.
pub const HEAD_LEN: usize = 32;
/// Smallest valid packet.
pub const MIN_LEN: usize = HEAD_LEN + 2 + MAC_LEN;
/// Largest valid packet.
pub const MAX_LEN: usize = HEAD_LEN + 2 * MAX_NAME + MAC_LEN;

/// What the sender asks the receiver to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Go to standby (give the groups away).
    Standby = 1,
    /// Leave standby and forget group failures.
    Online = 2,
}

/// One administrator request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminRequest {
    /// The command.
    pub command: Command,
    /// [`crate::heartbeat::cluster_id`] of the cluster name.
    pub cluster_id: u64,
    /// The sender's boot generation.
    pub generation: u64,
    /// Request sequence within the generation.
    pub sequence: u64,
    /// Sender node name.
    pub sender: String,
    /// Target node name.
    pub target: String,
}

fn mac(secret: &[u8]) -> Hmac<Sha256> {
    match Hmac::<Sha256>::new_from_slice(secret) {
        Ok(m) => m,
        Err(_) => Hmac::<Sha256>::new(&Default::default()),
    }
}

/// True when `bytes` starts with this packet's magic (the receiver's dispatch).
pub fn is_admin(bytes: &[u8]) -> bool {
    bytes.len() >= 4 && bytes[0..4] == MAGIC
}

/// Encodes and signs a request; fails on names outside 1..=[`MAX_NAME`] bytes.
pub fn encode(r: &AdminRequest, secret: &[u8]) -> Result<Vec<u8>, HeartbeatError> {
    for n in [&r.sender, &r.target] {
        if n.is_empty() || n.len() > MAX_NAME {
            return Err(HeartbeatError::Unencodable(
                "node name must be 1 to 64 bytes",
            ));
        }
    }
    let mut out = Vec::with_capacity(MAX_LEN);
    out.extend_from_slice(&MAGIC);
    out.push(VERSION);
    out.push(r.command as u8);
    out.push(r.sender.len() as u8);
    out.push(r.target.len() as u8);
    out.extend_from_slice(&r.cluster_id.to_le_bytes());
    out.extend_from_slice(&r.generation.to_le_bytes());
    out.extend_from_slice(&r.sequence.to_le_bytes());
    out.extend_from_slice(r.sender.as_bytes());
    out.extend_from_slice(r.target.as_bytes());
    let m = mac(secret).chain_update(&out).finalize().into_bytes();
    out.extend_from_slice(&m);
    Ok(out)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// Checks and decodes one datagram with the cluster `secret`.
pub fn decode(bytes: &[u8], secret: &[u8]) -> Result<AdminRequest, HeartbeatError> {
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
    let (body, m) = bytes.split_at(bytes.len() - MAC_LEN);
    mac(secret)
        .chain_update(body)
        .verify_slice(m)
        .map_err(|_| HeartbeatError::BadMac)?;
    let command = match body[5] {
        1 => Command::Standby,
        2 => Command::Online,
        _ => return Err(HeartbeatError::Malformed("unknown command")),
    };
    let (s, t) = (usize::from(body[6]), usize::from(body[7]));
    if s == 0 || t == 0 || s > MAX_NAME || t > MAX_NAME {
        return Err(HeartbeatError::Malformed("name length out of range"));
    }
    if body.len() != HEAD_LEN + s + t {
        return Err(HeartbeatError::Malformed("length does not match the names"));
    }
    let name = |b: &[u8]| {
        String::from_utf8(b.to_vec()).map_err(|_| HeartbeatError::Malformed("name is not UTF-8"))
    };
    Ok(AdminRequest {
        command,
        cluster_id: u64_at(body, 8),
        generation: u64_at(body, 16),
        sequence: u64_at(body, 24),
        sender: name(&body[HEAD_LEN..HEAD_LEN + s])?,
        target: name(&body[HEAD_LEN + s..])?,
    })
}
