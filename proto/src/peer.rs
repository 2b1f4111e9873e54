//! The peer replication protocol (TCP between the two `blockd` of one resource).
//!
//! TO BE COMPLETED by the codec work: layout comment, encode/decode, golden vectors.
//! The types below are the frozen interface the engine is written against.

use crate::types::{DiskState, Role, Uuids};

/// The protocol version this build speaks (the highest it accepts).
pub const PROTOCOL_VERSION: u8 = 1;
/// The lowest protocol version this build accepts.
pub const MIN_PROTOCOL_VERSION: u8 = 1;
/// Largest payload accepted in one frame; larger lengths are refused before allocating.
pub const MAX_PAYLOAD: u32 = 4 * 1024 * 1024 + 4096;
/// Size of the fixed frame header.
pub const HEADER_LEN: usize = 32;
/// Granularity of the checksums in a [`Message::VerifyReply`].
pub const VERIFY_BLOCK: u32 = 4096;

/// Feature bits offered in [`Hello::features`]; the session uses the intersection.
pub mod features {
    /// Trim and write-zeroes are replicated as [`super::Message::Trim`].
    pub const TRIM: u64 = 1 << 0;
    /// Online verify ([`super::Message::VerifyReq`] and friends).
    pub const VERIFY: u64 = 1 << 1;
    /// Everything this build implements.
    pub const ALL: u64 = TRIM | VERIFY;
}

/// Flag bits of [`NodeState::flags`].
pub mod state_flags {
    /// The node was Primary when it last stopped without demoting (a crash).
    pub const CRASHED_PRIMARY: u32 = 1 << 0;
    /// The node resolved a split brain by discarding its own changes at `connect`.
    pub const DISCARD_MY_DATA: u32 = 1 << 1;
}

/// One frame: a request id (0 when the message has none) and a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Request id: matches acks to requests. Carried in the header, so it is known
    /// even when the payload is corrupt.
    pub id: u64,
    /// The message.
    pub msg: Message,
}

/// Sent first by both sides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// Lowest protocol version the sender accepts.
    pub min_version: u8,
    /// Highest protocol version the sender speaks.
    pub max_version: u8,
    /// Feature bits ([`features`]).
    pub features: u64,
    /// Resource name; must match the receiver's.
    pub resource: String,
    /// Sender's node name.
    pub node: String,
    /// Random challenge the receiver must answer in [`Message::Auth`].
    pub nonce: [u8; 32],
}

/// A node's view of its own state, exchanged after authentication and on every change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeState {
    /// The sender's role.
    pub role: Role,
    /// The sender's disk state.
    pub disk: DiskState,
    /// Usable size of the sender's backing device.
    pub usable_bytes: u64,
    /// The sender's generation identifiers.
    pub uuids: Uuids,
    /// [`state_flags`].
    pub flags: u32,
    /// Wall-clock milliseconds when the sender last became Primary (0: never).
    pub primary_since_ms: u64,
    /// Number of set bits in the sender's dirty bitmap.
    pub dirty_bits: u64,
}

/// Messages of the peer protocol. The wire kind of each is documented in the codec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// Version, features, names and a challenge.
    Hello(Hello),
    /// HMAC-SHA256 answer to the peer's challenge ([`auth_mac`]).
    Auth {
        /// The MAC.
        mac: [u8; 32],
    },
    /// The sender refuses the session; the reason is logged by the receiver.
    Refuse {
        /// Human-readable reason.
        reason: String,
    },
    /// The sender's state.
    State(NodeState),
    /// A piece of the sender's dirty bitmap: 64 bits per word, word `first_word` first.
    BitmapChunk {
        /// Index of the first word.
        first_word: u64,
        /// Bitmap words (bit i of word w is block w*64+i).
        words: Vec<u64>,
        /// This is the last chunk.
        last: bool,
    },
    /// A replicated write; answered with `DataAck` (or `DataNack` on a checksum error).
    Data {
        /// Byte offset on the device.
        offset: u64,
        /// Must be durable before it is acknowledged.
        fua: bool,
        /// The bytes.
        payload: Vec<u8>,
    },
    /// The write (or trim) with this frame id is done on the sender.
    DataAck,
    /// The frame with this id arrived corrupt; resend it.
    DataNack,
    /// A replicated discard (`zeroes = false`) or write-zeroes; answered with `DataAck`.
    Trim {
        /// Byte offset.
        offset: u64,
        /// Length in bytes.
        len: u64,
        /// Write zeroes rather than discard.
        zeroes: bool,
    },
    /// Make every acknowledged write durable; answered with `FlushAck`.
    Flush,
    /// The flush with this id is done.
    FlushAck,
    /// Keepalive.
    Ping,
    /// Keepalive answer.
    PingAck,
    /// A resync block from the sync source; answered with `RsAck` (or `RsNack`).
    RsData {
        /// Byte offset.
        offset: u64,
        /// The bytes.
        payload: Vec<u8>,
    },
    /// The resync block with this id is written.
    RsAck,
    /// The resync block with this id arrived corrupt; resend it.
    RsNack,
    /// The source has sent every out-of-sync block; the target adopts the source's
    /// generation identifiers.
    ResyncDone {
        /// The source's identifiers after the resync.
        uuids: Uuids,
    },
    /// The range is out of sync (found by verify); mark it in the bitmap.
    OutOfSync {
        /// Byte offset.
        offset: u64,
        /// Length in bytes.
        len: u64,
    },
    /// Verify: send the checksums of this range.
    VerifyReq {
        /// Byte offset.
        offset: u64,
        /// Length in bytes (a multiple of [`VERIFY_BLOCK`] except at the device end).
        len: u32,
    },
    /// Verify: checksums (CRC32C) of each [`VERIFY_BLOCK`] of the requested range.
    VerifyReply {
        /// Byte offset of the range.
        offset: u64,
        /// One checksum per block.
        checksums: Vec<u32>,
    },
    /// Ask the peer (the Primary) to run an online verify as its source.
    VerifyStart,
    /// The online verify finished.
    VerifyDone {
        /// Bytes found out of sync.
        out_of_sync_bytes: u64,
    },
}
