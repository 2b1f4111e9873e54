//! The NBD wire protocol, sans-IO: constants, the option and request headers, the
//! replies. Fixed-newstyle handshake, simple replies only (structured replies are
//! declined, which every client accepts). All integers are big-endian.
//!
//! ```text
//! server greeting:  { "NBDMAGIC" u64 | "IHAVEOPT" u64 | handshake flags u16 }
//! client flags:     { flags u32 }
//! option:           { "IHAVEOPT" u64 | option u32 | length u32 | data }
//! option reply:     { 0x0003e889045565a9 u64 | option u32 | reply type u32 | length u32 | data }
//! request:          { 0x25609513 u32 | flags u16 | type u16 | cookie u64 | offset u64 | length u32 } [data]
//! simple reply:     { 0x67446698 u32 | error u32 | cookie u64 } [data]
//! ```

/// "NBDMAGIC".
pub const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
/// "IHAVEOPT".
pub const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
/// Option reply magic.
pub const REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
/// Request magic.
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
/// Simple reply magic.
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;

/// Handshake flag: fixed newstyle.
pub const FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
/// Handshake flag: no 124 zero bytes after EXPORT_NAME.
pub const FLAG_NO_ZEROES: u16 = 1 << 1;
/// Client flag: no zeroes.
pub const FLAG_C_NO_ZEROES: u32 = 1 << 1;

/// Options.
pub mod opt {
    /// Choose an export, old style.
    pub const EXPORT_NAME: u32 = 1;
    /// Give up.
    pub const ABORT: u32 = 2;
    /// List exports.
    pub const LIST: u32 = 3;
    /// Describe an export.
    pub const INFO: u32 = 6;
    /// Describe and choose an export.
    pub const GO: u32 = 7;
}

/// Option reply types.
pub mod rep {
    /// Done.
    pub const ACK: u32 = 1;
    /// One export in a LIST.
    pub const SERVER: u32 = 2;
    /// An info item.
    pub const INFO: u32 = 3;
    /// Unsupported option.
    pub const ERR_UNSUP: u32 = (1 << 31) + 1;
    /// Invalid option data.
    pub const ERR_INVALID: u32 = (1 << 31) + 3;
    /// Unknown export.
    pub const ERR_UNKNOWN: u32 = (1 << 31) + 6;
}

/// Info items.
pub mod info {
    /// Size and transmission flags.
    pub const EXPORT: u16 = 0;
    /// Block size constraints.
    pub const BLOCK_SIZE: u16 = 3;
}

/// Transmission flags.
pub mod tflag {
    /// Flags are valid.
    pub const HAS_FLAGS: u16 = 1 << 0;
    /// FLUSH supported.
    pub const SEND_FLUSH: u16 = 1 << 2;
    /// FUA supported.
    pub const SEND_FUA: u16 = 1 << 3;
    /// TRIM supported.
    pub const SEND_TRIM: u16 = 1 << 5;
    /// WRITE_ZEROES supported.
    pub const SEND_WRITE_ZEROES: u16 = 1 << 6;
    /// Several connections see one consistent device (flush is global).
    pub const CAN_MULTI_CONN: u16 = 1 << 8;
}

/// What this server offers.
pub const TRANSMISSION_FLAGS: u16 = tflag::HAS_FLAGS
    | tflag::SEND_FLUSH
    | tflag::SEND_FUA
    | tflag::SEND_TRIM
    | tflag::SEND_WRITE_ZEROES
    | tflag::CAN_MULTI_CONN;

/// Command flags.
pub mod cmdflag {
    /// Force unit access.
    pub const FUA: u16 = 1 << 0;
    /// WRITE_ZEROES must not punch a hole.
    pub const NO_HOLE: u16 = 1 << 1;
}

/// Largest request accepted (also advertised as the maximum block size).
pub const MAX_REQUEST: u32 = 32 << 20;
/// Largest option payload accepted.
pub const MAX_OPTION: u32 = 64 * 1024;

/// Error numbers on the wire.
pub mod err {
    /// Operation not permitted.
    pub const EPERM: u32 = 1;
    /// I/O error.
    pub const EIO: u32 = 5;
    /// Out of memory.
    pub const ENOMEM: u32 = 12;
    /// Invalid argument.
    pub const EINVAL: u32 = 22;
    /// No space left (write past the end).
    pub const ENOSPC: u32 = 28;
    /// Not supported.
    pub const ENOTSUP: u32 = 95;
    /// Server shutting down.
    pub const ESHUTDOWN: u32 = 108;
}

/// Maps an errno to the NBD error set.
pub fn wire_errno(errno: i32) -> u32 {
    match errno {
        libc::EPERM | libc::EROFS | libc::EACCES => err::EPERM,
        libc::ENOMEM => err::ENOMEM,
        libc::EINVAL => err::EINVAL,
        libc::ENOSPC | libc::EFBIG => err::ENOSPC,
        libc::EOPNOTSUPP => err::ENOTSUP,
        libc::ESHUTDOWN => err::ESHUTDOWN,
        _ => err::EIO,
    }
}

/// Command types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Read.
    Read,
    /// Write (data follows).
    Write,
    /// Disconnect.
    Disc,
    /// Flush.
    Flush,
    /// Discard.
    Trim,
    /// Write zeroes.
    WriteZeroes,
    /// Anything else (answered EINVAL).
    Other(u16),
}

impl Command {
    fn from_wire(t: u16) -> Command {
        match t {
            0 => Command::Read,
            1 => Command::Write,
            2 => Command::Disc,
            3 => Command::Flush,
            4 => Command::Trim,
            6 => Command::WriteZeroes,
            other => Command::Other(other),
        }
    }
}

/// A request header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    /// Command flags.
    pub flags: u16,
    /// Command.
    pub command: Command,
    /// Client's cookie, echoed in the reply.
    pub cookie: u64,
    /// Byte offset.
    pub offset: u64,
    /// Length.
    pub length: u32,
}

/// Length of a request header.
pub const REQUEST_LEN: usize = 28;

/// Why a request header is unacceptable (the connection is closed).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Wrong request magic.
    #[error("bad request magic {0:#x}")]
    BadMagic(u32),
    /// Wrong option magic.
    #[error("bad option magic {0:#x}")]
    BadOptionMagic(u64),
    /// An option with an oversized payload.
    #[error("option payload of {0} bytes is too large")]
    OptionTooLarge(u32),
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

fn be64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a)
}

/// Parses a request header; `Ok(None)` when `buf` is shorter than a header.
pub fn parse_request(buf: &[u8]) -> Result<Option<Request>, ParseError> {
    if buf.len() < REQUEST_LEN {
        return Ok(None);
    }
    let magic = be32(&buf[0..4]);
    if magic != REQUEST_MAGIC {
        return Err(ParseError::BadMagic(magic));
    }
    Ok(Some(Request {
        flags: u16::from_be_bytes([buf[4], buf[5]]),
        command: Command::from_wire(u16::from_be_bytes([buf[6], buf[7]])),
        cookie: be64(&buf[8..16]),
        offset: be64(&buf[16..24]),
        length: be32(&buf[24..28]),
    }))
}

/// An option header: (option, payload length).
pub const OPTION_LEN: usize = 16;

/// Parses an option header; `Ok(None)` when `buf` is too short.
pub fn parse_option(buf: &[u8]) -> Result<Option<(u32, u32)>, ParseError> {
    if buf.len() < OPTION_LEN {
        return Ok(None);
    }
    let magic = be64(&buf[0..8]);
    if magic != IHAVEOPT {
        return Err(ParseError::BadOptionMagic(magic));
    }
    let len = be32(&buf[12..16]);
    if len > MAX_OPTION {
        return Err(ParseError::OptionTooLarge(len));
    }
    Ok(Some((be32(&buf[8..12]), len)))
}

/// The server's greeting.
pub fn greeting() -> Vec<u8> {
    let mut out = Vec::with_capacity(18);
    out.extend_from_slice(&NBDMAGIC.to_be_bytes());
    out.extend_from_slice(&IHAVEOPT.to_be_bytes());
    out.extend_from_slice(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
    out
}

/// An option reply.
pub fn option_reply(option: u32, reply: u32, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(20 + data.len());
    out.extend_from_slice(&REPLY_MAGIC.to_be_bytes());
    out.extend_from_slice(&option.to_be_bytes());
    out.extend_from_slice(&reply.to_be_bytes());
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(data);
    out
}

/// `NBD_INFO_EXPORT` payload.
pub fn info_export(size: u64) -> Vec<u8> {
    let mut d = info::EXPORT.to_be_bytes().to_vec();
    d.extend_from_slice(&size.to_be_bytes());
    d.extend_from_slice(&TRANSMISSION_FLAGS.to_be_bytes());
    d
}

/// `NBD_INFO_BLOCK_SIZE` payload: 512 minimum, 4096 preferred, [`MAX_REQUEST`] max.
pub fn info_block_size() -> Vec<u8> {
    let mut d = info::BLOCK_SIZE.to_be_bytes().to_vec();
    d.extend_from_slice(&512u32.to_be_bytes());
    d.extend_from_slice(&4096u32.to_be_bytes());
    d.extend_from_slice(&MAX_REQUEST.to_be_bytes());
    d
}

/// A simple reply header.
pub fn simple_reply(cookie: u64, error: u32) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[0..4].copy_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
    out[4..8].copy_from_slice(&error.to_be_bytes());
    out[8..16].copy_from_slice(&cookie.to_be_bytes());
    out
}

/// Parses the export name of an INFO or GO option payload.
pub fn parse_go(data: &[u8]) -> Option<String> {
    if data.len() < 4 {
        return None;
    }
    let n = be32(&data[0..4]) as usize;
    let name = data.get(4..4usize.checked_add(n)?)?;
    let rest = &data[4 + n..];
    if rest.len() < 2 {
        return None;
    }
    let count = u16::from_be_bytes([rest[0], rest[1]]) as usize;
    if rest.len() != 2 + 2 * count {
        return None;
    }
    String::from_utf8(name.to_vec()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn golden_greeting_and_reply() {
        assert_eq!(
            greeting(),
            [
                0x4e, 0x42, 0x44, 0x4d, 0x41, 0x47, 0x49, 0x43, 0x49, 0x48, 0x41, 0x56, 0x45, 0x4f,
                0x50, 0x54, 0x00, 0x03
            ]
        );
        assert_eq!(
            simple_reply(0x0102030405060708, 5),
            [0x67, 0x44, 0x66, 0x98, 0, 0, 0, 5, 1, 2, 3, 4, 5, 6, 7, 8]
        );
    }

    #[test]
    fn golden_option_replies() {
        // GO answered with NBD_INFO_EXPORT for a 64 MiB export.
        assert_eq!(
            option_reply(opt::GO, rep::INFO, &info_export(64 << 20)),
            [
                0x00, 0x03, 0xe8, 0x89, 0x04, 0x55, 0x65, 0xa9, 0, 0, 0, 7, 0, 0, 0, 3, 0, 0, 0,
                12, 0, 0, 0, 0, 0, 0, 0x04, 0, 0, 0, 0x01, 0x6d
            ]
        );
        // NBD_INFO_BLOCK_SIZE: 512 / 4096 / 32 MiB.
        assert_eq!(
            info_block_size(),
            [0, 3, 0, 0, 2, 0, 0, 0, 0x10, 0, 0x02, 0, 0, 0]
        );
        // Structured replies declined.
        assert_eq!(
            option_reply(8, rep::ERR_UNSUP, &[]),
            [
                0x00, 0x03, 0xe8, 0x89, 0x04, 0x55, 0x65, 0xa9, 0, 0, 0, 8, 0x80, 0, 0, 1, 0, 0, 0,
                0
            ]
        );
        let opt_hdr = [
            0x49, 0x48, 0x41, 0x56, 0x45, 0x4f, 0x50, 0x54, 0, 0, 0, 7, 0, 0, 0, 8,
        ];
        assert_eq!(parse_option(&opt_hdr), Ok(Some((opt::GO, 8))));
        assert_eq!(parse_option(&opt_hdr[..15]), Ok(None));
        let mut huge = opt_hdr;
        huge[12] = 0xff;
        assert!(parse_option(&huge).is_err());
    }

    #[test]
    fn golden_request() {
        let b = [
            0x25, 0x60, 0x95, 0x13, 0x00, 0x01, 0x00, 0x01, 0, 0, 0, 0, 0, 0, 0, 9, 0, 0, 0, 0, 0,
            0, 0x10, 0, 0, 0, 0x10, 0,
        ];
        let r = parse_request(&b).unwrap().unwrap();
        assert_eq!(
            r,
            Request {
                flags: cmdflag::FUA,
                command: Command::Write,
                cookie: 9,
                offset: 4096,
                length: 4096
            }
        );
        assert_eq!(parse_request(&b[..27]), Ok(None));
        let mut bad = b;
        bad[0] = 0;
        assert!(parse_request(&bad).is_err());
    }

    #[test]
    fn go_payload() {
        let mut d = 2u32.to_be_bytes().to_vec();
        d.extend_from_slice(b"r0");
        d.extend_from_slice(&1u16.to_be_bytes());
        d.extend_from_slice(&3u16.to_be_bytes());
        assert_eq!(parse_go(&d), Some("r0".into()));
        assert_eq!(parse_go(&d[..5]), None);
    }

    proptest! {
        #[test]
        fn parsers_never_panic(b in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = parse_request(&b);
            let _ = parse_option(&b);
            let _ = parse_go(&b);
        }
    }
}
