//! The replication link's sockets: dialing or accepting TCP, the authenticated
//! handshake (versions, features, resource name, HMAC challenge-response), and the
//! reader/writer tasks of an established session.
//!
//! The node whose name sorts first dials; the other listens. Only sessions that pass
//! authentication reach the engine, so garbage, a wrong secret or a wrong resource on
//! the port is refused here with a log line and never disturbs a running session.
//!
//! In a stream of large blocks (a sequential write, a resync) the reader yields to the
//! resource task after each one, which hands it to the disk (see `UringQueue::submit`)
//! before the reader receives the next: otherwise, with the data arriving faster than
//! one vCPU reads it, the reader took two or three 1 MiB blocks before the first went
//! to the disk, and the Primary's writes completed in bursts (lab, 1M QD4: +10% with
//! the yields of the ublk queue thread and of the submission together).

use super::resource::ResourceMsg;
use crate::aligned::ALIGN;
use crate::engine::Input;
use anyhow::{anyhow, bail, Context};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use hablock_proto::peer::{self, Decoded, Frame, Hello, Message};
use rand::RngCore;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedReadHalf;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, info, warn};

/// How long a handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// What a session needs to authenticate.
#[derive(Debug, Clone)]
pub struct LinkConfig {
    /// Resource name.
    pub resource: String,
    /// This node.
    pub node: String,
    /// The peer.
    pub peer: String,
    /// Shared secret.
    pub secret: Arc<Vec<u8>>,
    /// Local address (bound when dialing, listened on otherwise).
    pub local: SocketAddr,
    /// The peer's address.
    pub remote: SocketAddr,
    /// Pause between connection attempts.
    pub connect_interval: Duration,
}

/// An authenticated stream ready for the engine.
#[derive(Debug)]
pub struct NewSession {
    /// The stream.
    pub stream: TcpStream,
    /// Bytes read past the handshake.
    pub leftover: Vec<u8>,
    /// Negotiated features.
    pub features: u64,
    /// Fired (dropped) when the session ends.
    pub ended: oneshot::Sender<()>,
}

/// Runs the link: dials (if this node sorts first) or listens, forever.
pub async fn run_link(
    cfg: LinkConfig,
    to_resource: mpsc::Sender<ResourceMsg>,
    want: watch::Receiver<bool>,
) {
    if cfg.node < cfg.peer {
        dial_loop(cfg, to_resource, want).await
    } else {
        listen_loop(cfg, to_resource).await
    }
}

async fn dial_loop(
    cfg: LinkConfig,
    to_resource: mpsc::Sender<ResourceMsg>,
    mut want: watch::Receiver<bool>,
) {
    let mut last_error = String::new();
    loop {
        if want.wait_for(|w| *w).await.is_err() {
            return;
        }
        match dial_once(&cfg).await {
            Ok((stream, leftover, features)) => {
                last_error.clear();
                let (ended_tx, ended_rx) = oneshot::channel();
                let s = NewSession {
                    stream,
                    leftover,
                    features,
                    ended: ended_tx,
                };
                if to_resource.send(ResourceMsg::Session(s)).await.is_err() {
                    return;
                }
                let _ = ended_rx.await;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => {
                let msg = format!("{e:#}");
                if msg != last_error {
                    // Rate-limited: a peer that stays down is logged once.
                    warn!(resource = %cfg.resource, peer = %cfg.peer, addr = %cfg.remote, "connecting to peer failed: {msg}");
                    last_error = msg;
                }
                tokio::time::sleep(cfg.connect_interval).await;
            }
        }
    }
}

async fn dial_once(cfg: &LinkConfig) -> anyhow::Result<(TcpStream, Vec<u8>, u64)> {
    let socket = if cfg.remote.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    let mut local = cfg.local;
    local.set_port(0);
    socket
        .bind(local)
        .with_context(|| format!("binding {local}"))?;
    let mut stream = tokio::time::timeout(HANDSHAKE_TIMEOUT, socket.connect(cfg.remote))
        .await
        .map_err(|_| anyhow!("connect timed out"))?
        .context("connect")?;
    stream.set_nodelay(true)?;
    let (leftover, features) = tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake(&mut stream, cfg))
        .await
        .map_err(|_| anyhow!("handshake timed out"))??;
    Ok((stream, leftover, features))
}

async fn listen_loop(cfg: LinkConfig, to_resource: mpsc::Sender<ResourceMsg>) {
    let listener = loop {
        match TcpListener::bind(cfg.local).await {
            Ok(l) => break l,
            Err(e) => {
                warn!(resource = %cfg.resource, addr = %cfg.local, "cannot listen for the peer: {e}; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    };
    info!(resource = %cfg.resource, addr = %cfg.local, "listening for peer {}", cfg.peer);
    loop {
        let (mut stream, from) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                warn!(resource = %cfg.resource, "accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let cfg = cfg.clone();
        let to_resource = to_resource.clone();
        tokio::spawn(async move {
            let _ = stream.set_nodelay(true);
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake(&mut stream, &cfg)).await {
                Ok(Ok((leftover, features))) => {
                    let (ended, _rx) = oneshot::channel();
                    let s = NewSession {
                        stream,
                        leftover,
                        features,
                        ended,
                    };
                    let _ = to_resource.send(ResourceMsg::Session(s)).await;
                }
                Ok(Err(e)) => {
                    warn!(resource = %cfg.resource, peer = %cfg.peer, %from, "refused a connection: {e:#}")
                }
                Err(_) => {
                    warn!(resource = %cfg.resource, %from, "refused a connection: handshake timed out")
                }
            }
        });
    }
}

/// Reads one frame (during the handshake; the buffer keeps what follows it).
async fn read_frame(stream: &mut TcpStream, buf: &mut Vec<u8>) -> anyhow::Result<Frame> {
    loop {
        match peer::decode(buf) {
            Ok(Some((Decoded::Frame(f), used))) => {
                buf.drain(..used);
                return Ok(f);
            }
            Ok(Some((Decoded::Corrupt { kind, .. }, _))) => {
                bail!(
                    "corrupt {} packet during the handshake",
                    peer::kind_name(kind)
                )
            }
            Ok(None) => {}
            Err(e) => bail!("not a hablock peer ({e})"),
        }
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await.context("reading")?;
        if n == 0 {
            bail!("connection closed during the handshake");
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

async fn send_frame(stream: &mut TcpStream, frame: &Frame) -> anyhow::Result<()> {
    let mut out = Vec::new();
    peer::encode(frame, &mut out);
    stream.write_all(&out).await.context("writing")?;
    Ok(())
}

async fn refuse(stream: &mut TcpStream, reason: String) -> anyhow::Error {
    let _ = send_frame(
        stream,
        &Frame {
            id: 0,
            msg: Message::Refuse {
                reason: reason.clone(),
            },
        },
    )
    .await;
    anyhow!(reason)
}

/// Both sides: Hello, check it, answer the challenge, check the answer.
async fn handshake(stream: &mut TcpStream, cfg: &LinkConfig) -> anyhow::Result<(Vec<u8>, u64)> {
    let mut nonce = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut nonce);
    let mine = Hello {
        min_version: peer::MIN_PROTOCOL_VERSION,
        max_version: peer::PROTOCOL_VERSION,
        features: peer::features::ALL,
        resource: cfg.resource.clone(),
        node: cfg.node.clone(),
        nonce,
    };
    send_frame(
        stream,
        &Frame {
            id: 0,
            msg: Message::Hello(mine.clone()),
        },
    )
    .await?;
    let mut buf = Vec::new();
    let theirs = match read_frame(stream, &mut buf).await?.msg {
        Message::Hello(h) => h,
        Message::Refuse { reason } => bail!("peer refused: {reason}"),
        _ => bail!("protocol error: expected Hello"),
    };
    if theirs.resource != cfg.resource {
        return Err(refuse(
            stream,
            format!(
                "wrong resource: this node serves {:?}, the peer asked for {:?}",
                cfg.resource, theirs.resource
            ),
        )
        .await);
    }
    if theirs.node != cfg.peer {
        return Err(refuse(
            stream,
            format!(
                "unexpected node {:?}: resource {} is shared with {:?}",
                theirs.node, cfg.resource, cfg.peer
            ),
        )
        .await);
    }
    let (_version, features) = match peer::negotiate(&mine, &theirs) {
        Ok(v) => v,
        Err(e) => return Err(refuse(stream, format!("protocol versions: {e}")).await),
    };
    let mac = peer::auth_mac(&cfg.secret, &theirs.nonce, &cfg.resource, &cfg.node);
    send_frame(
        stream,
        &Frame {
            id: 0,
            msg: Message::Auth { mac },
        },
    )
    .await?;
    let answer = match read_frame(stream, &mut buf).await?.msg {
        Message::Auth { mac } => mac,
        Message::Refuse { reason } => bail!("peer refused: {reason}"),
        _ => bail!("protocol error: expected Auth"),
    };
    if !peer::verify_auth_mac(&cfg.secret, &nonce, &cfg.resource, &cfg.peer, &answer) {
        return Err(refuse(
            stream,
            "authentication failed (wrong shared secret?)".into(),
        )
        .await);
    }
    debug!(resource = %cfg.resource, peer = %cfg.peer, features, "peer authenticated");
    Ok((buf, features))
}

/// Runs the reader half: frames become engine inputs until the stream ends. Data
/// blocks stay in the memory they were read into (no copy on the way to the disk):
/// large ones in page-aligned memory of their own, ready for O_DIRECT.
pub async fn read_session(
    mut rd: OwnedReadHalf,
    leftover: Vec<u8>,
    session: u64,
    to_resource: mpsc::Sender<ResourceMsg>,
) {
    let mut frames = FrameReader::new(&leftover);
    let reason = loop {
        let input = match frames.next(&mut rd).await {
            Ok(Decoded::Frame(frame)) => Input::PeerFrame { session, frame },
            Ok(Decoded::Corrupt { kind, id }) => Input::PeerCorrupt { session, kind, id },
            Err(reason) => break reason,
        };
        if to_resource.send(ResourceMsg::Engine(input)).await.is_err() {
            return;
        }
        if frames.after_large_block {
            // Let the resource task put this block on the disk before the next one is
            // received (see the module doc).
            tokio::task::yield_now().await;
        }
    };
    let _ = to_resource
        .send(ResourceMsg::Engine(Input::PeerLost { session, reason }))
        .await;
}

/// The read buffer's free space before each read.
const READ_CHUNK: usize = 1 << 20;

/// Data blocks at least this large that have not fully arrived are received into
/// page-aligned memory of their own, which the O_DIRECT write then uses as it is
/// (smaller ones are copied into aligned memory by the write).
const ALIGNED_BLOCK_MIN: usize = 64 * 1024;

/// Cuts a stream into frames.
///
/// A large block goes from the socket straight into its aligned memory only for the
/// part of it that the read buffer does not already hold: the rest was read with the
/// frames before it and is copied over. In a stream of large blocks (a sequential
/// write, a resync) a read of up to [`READ_CHUNK`] at a frame's start would take much
/// of the next block with its head, so after a large block the reader first reads
/// only up to the next frame's head; small frames keep sharing reads.
struct FrameReader {
    /// What was read past the last frame.
    buf: BytesMut,
    /// The last frame carried a large block: the next one probably does too.
    after_large_block: bool,
}

impl FrameReader {
    /// A reader whose stream starts with `leftover` (read along with the handshake).
    fn new(leftover: &[u8]) -> FrameReader {
        FrameReader {
            buf: BytesMut::from(leftover),
            after_large_block: false,
        }
    }

    /// Reads the next frame from `rd`; the reason the stream cannot go on otherwise.
    async fn next<R: AsyncRead + Unpin>(&mut self, rd: &mut R) -> Result<Decoded, String> {
        let protocol = |e: peer::FrameError| format!("protocol error: {e}");
        let buf = &mut self.buf;
        loop {
            if let Some(decoded) = peer::decode_from(buf).map_err(protocol)? {
                self.after_large_block = carries_large_block(&decoded);
                return Ok(decoded);
            }
            let layout = peer::block_layout(buf).map_err(protocol)?;
            if let Some(layout) =
                layout.filter(|l| l.block_len >= ALIGNED_BLOCK_MIN && buf.len() >= l.head_len)
            {
                let head = buf.split_to(layout.head_len);
                let block = read_aligned_block(rd, buf, layout.block_len).await?;
                self.after_large_block = true;
                return peer::decode_parts(&head, block).map_err(protocol);
            }
            if self.after_large_block && buf.len() < peer::MAX_BLOCK_HEAD_LEN {
                let want = peer::MAX_BLOCK_HEAD_LEN - buf.len();
                buf.reserve(want);
                read_some(rd, &mut (&mut *buf).limit(want)).await?;
                continue;
            }
            // Room for a whole large frame, so a data block arrives in few reads.
            buf.reserve(READ_CHUNK);
            read_some(rd, buf).await?;
        }
    }
}

/// `decoded` is a data frame whose block is large enough for aligned memory of its own.
fn carries_large_block(decoded: &Decoded) -> bool {
    match decoded {
        Decoded::Frame(Frame {
            msg:
                Message::Data { payload, .. }
                | Message::RsData { payload, .. }
                | Message::ReadReply { payload, .. },
            ..
        }) => payload.len() >= ALIGNED_BLOCK_MIN,
        _ => false,
    }
}

/// Receives a `len`-byte block into page-aligned memory, starting with the part of it
/// `buf` already holds.
async fn read_aligned_block<R: AsyncRead + Unpin>(
    rd: &mut R,
    buf: &mut BytesMut,
    len: usize,
) -> Result<Bytes, String> {
    let mut block = BytesMut::with_capacity(len + ALIGN);
    let pad = block.as_ptr().align_offset(ALIGN);
    block.put_bytes(0, pad);
    block.advance(pad);
    let have = buf.len().min(len);
    block.extend_from_slice(&buf[..have]);
    buf.advance(have);
    // The capacity covers the block, so the memory never moves.
    while block.len() < len {
        let want = len - block.len();
        read_some(rd, &mut (&mut block).limit(want)).await?;
    }
    Ok(block.freeze())
}

/// One read into `buf`; the reason the stream ended if it did.
async fn read_some<R: AsyncRead + Unpin, B: BufMut>(rd: &mut R, buf: &mut B) -> Result<(), String> {
    match rd.read_buf(buf).await {
        Ok(0) => Err("peer closed the connection".to_string()),
        Ok(_) => Ok(()),
        Err(e) => Err(format!("read error: {e}")),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::aligned::is_aligned;

    fn data(offset: u64, len: usize, fill: u8) -> Frame {
        Frame {
            id: offset,
            msg: Message::Data {
                offset,
                fua: false,
                payload: Bytes::from(vec![fill; len]),
            },
        }
    }

    async fn next_input(rx: &mut mpsc::Receiver<ResourceMsg>) -> Input {
        match rx.recv().await {
            Some(ResourceMsg::Engine(input)) => input,
            _ => panic!("the reader sent something else"),
        }
    }

    /// A large block that arrives in pieces lands in page-aligned memory (so the
    /// O_DIRECT write takes it as it is); the frames around it and a corrupt one decode
    /// as they would in one piece.
    #[tokio::test]
    async fn large_blocks_are_received_into_aligned_memory() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let (rd, _wr) = server.into_split();
        let (tx, mut rx) = mpsc::channel(8);
        let reader = tokio::spawn(read_session(rd, Vec::new(), 7, tx));

        let big = data(1 << 20, 256 * 1024, 0xa5);
        let mut corrupt = Vec::new();
        peer::encode(&data(2 << 20, 128 * 1024, 0x11), &mut corrupt);
        let last = corrupt.len() - 1;
        corrupt[last] ^= 0xff;
        let mut wire = Vec::new();
        peer::encode(&data(0, 4096, 1), &mut wire);
        peer::encode(&big, &mut wire);
        wire.extend_from_slice(&corrupt);
        peer::encode(&data(4096, 4096, 2), &mut wire);
        // In pieces, cut inside the large block's head and inside its block.
        for piece in [
            &wire[..4096 + 32 + 9 + 20],
            &wire[4096 + 61..100_000],
            &wire[100_000..],
        ] {
            client.write_all(piece).await.unwrap();
            client.flush().await.unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        drop(client);

        let mut frames = Vec::new();
        loop {
            match next_input(&mut rx).await {
                Input::PeerFrame { session: 7, frame } => frames.push(frame),
                Input::PeerCorrupt { session: 7, id, .. } => assert_eq!(id, 2 << 20),
                Input::PeerLost { session: 7, reason } => {
                    assert_eq!(reason, "peer closed the connection");
                    break;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(frames.len(), 3);
        assert_eq!(frames[1], big);
        let Message::Data { payload, .. } = &frames[1].msg else {
            panic!("not data");
        };
        assert!(is_aligned(payload), "the large block is not page-aligned");
        assert_eq!(frames[0], data(0, 4096, 1));
        assert_eq!(frames[2], data(4096, 4096, 2));
        reader.await.unwrap();
    }

    /// A stream source that has everything available at once and records each read:
    /// where in the stream it started and how many bytes it delivered.
    struct RecordingStream {
        wire: Vec<u8>,
        pos: usize,
        reads: Vec<(usize, usize)>,
    }

    impl AsyncRead for RecordingStream {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            let this = &mut *self;
            let n = buf.remaining().min(this.wire.len() - this.pos);
            buf.put_slice(&this.wire[this.pos..this.pos + n]);
            this.reads.push((this.pos, n));
            this.pos += n;
            std::task::Poll::Ready(Ok(()))
        }
    }

    /// In a stream of large blocks that is all there at once, each block after the
    /// first goes from the socket straight into its own memory: the read that takes a
    /// frame's head stops there instead of taking the block with it (and copying it).
    /// Small frames in between still decode, and share reads.
    #[tokio::test]
    async fn blocks_after_a_large_block_are_read_head_first() {
        let rs = |offset: u64, len: usize, fill: u8| Frame {
            id: offset,
            msg: Message::RsData {
                offset,
                payload: Bytes::from(vec![fill; len]),
            },
        };
        let sent = vec![
            data(0, 4096, 1),
            data(1 << 20, 1 << 20, 2),
            rs(2 << 20, 256 * 1024, 3),
            data(3 << 20, 1 << 20, 4),
            Frame {
                id: 9,
                msg: Message::Ping,
            },
            data(8192, 4096, 5),
            data(4 << 20, 128 * 1024, 6),
        ];
        let mut wire = Vec::new();
        let mut starts = Vec::new();
        for f in &sent {
            starts.push(wire.len());
            peer::encode(f, &mut wire);
        }
        let end = wire.len();
        let mut rd = RecordingStream {
            wire,
            pos: 0,
            reads: Vec::new(),
        };
        let mut frames = FrameReader::new(&[]);
        let mut got = Vec::new();
        loop {
            match frames.next(&mut rd).await {
                Ok(Decoded::Frame(f)) => got.push(f),
                Ok(other) => panic!("unexpected {other:?}"),
                Err(reason) => {
                    assert_eq!(reason, "peer closed the connection");
                    break;
                }
            }
        }
        assert_eq!(got, sent);
        // The frames that follow a large block and carry one themselves.
        for i in [2, 3] {
            let head_end = starts[i] + peer::MAX_BLOCK_HEAD_LEN;
            let (pos, n) = *rd
                .reads
                .iter()
                .find(|(pos, n)| (*pos..pos + n).contains(&starts[i]))
                .unwrap();
            assert!(
                pos + n <= head_end,
                "frame {i}: read {pos}+{n} past its head"
            );
        }
        // A head-first read takes the whole head in one read.
        assert!(rd
            .reads
            .iter()
            .all(|(_, n)| *n == 0 || *n >= peer::MAX_BLOCK_HEAD_LEN));
        // After the small frames, reads are large again: the 4k frame's rest came with
        // the whole 128 KiB block.
        assert!(rd
            .reads
            .iter()
            .any(|(pos, n)| (starts[5]..starts[6]).contains(pos) && pos + n == end));
    }
}
