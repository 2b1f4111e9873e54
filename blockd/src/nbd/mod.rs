//! The NBD frontend: a fixed-newstyle NBD server on a Unix socket, serving one export
//! (named after the resource) through an [`NbdBackend`] — in blockd, the replication
//! engine. Requests on a connection run concurrently (replies may come back out of
//! order, matched by cookie), which is what queue depth 32 needs.

pub mod proto;

use bytes::Bytes;
use proto::{cmdflag, err, opt, rep, Command};
use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::UnixListener;
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tracing::{debug, info_span, warn, Instrument};

/// What the NBD server serves.
pub trait NbdBackend: Send + Sync + 'static {
    /// Export size.
    fn size_bytes(&self) -> u64;
    /// Reads `len` bytes at `offset`.
    fn read(&self, offset: u64, len: u32) -> impl Future<Output = io::Result<Bytes>> + Send;
    /// Writes `data` at `offset`; durable first with `fua`.
    fn write(
        &self,
        offset: u64,
        data: Bytes,
        fua: bool,
    ) -> impl Future<Output = io::Result<()>> + Send;
    /// Makes completed writes durable.
    fn flush(&self) -> impl Future<Output = io::Result<()>> + Send;
    /// Discards a range.
    fn trim(&self, offset: u64, len: u64, fua: bool)
        -> impl Future<Output = io::Result<()>> + Send;
    /// Writes zeroes over a range.
    fn write_zeroes(
        &self,
        offset: u64,
        len: u64,
        fua: bool,
    ) -> impl Future<Output = io::Result<()>> + Send;
}

/// Errors that end a connection.
#[derive(Debug, Error)]
pub enum NbdError {
    /// Socket I/O.
    #[error("nbd socket: {0}")]
    Io(#[from] io::Error),
    /// The client broke the protocol.
    #[error("nbd protocol: {0}")]
    Protocol(#[from] proto::ParseError),
    /// The client asked for another export.
    #[error("unknown export {0:?}")]
    UnknownExport(String),
    /// A request larger than the server accepts.
    #[error("request of {0} bytes is too large")]
    TooLarge(u32),
}

/// Accepts clients until `shutdown` turns true; `clients` counts live connections.
pub async fn serve_listener<B: NbdBackend>(
    listener: UnixListener,
    export: String,
    backend: Arc<B>,
    mut shutdown: watch::Receiver<bool>,
    clients: Arc<AtomicUsize>,
) -> Result<(), NbdError> {
    loop {
        tokio::select! {
            r = listener.accept() => {
                let (stream, _) = r?;
                let (backend, export, clients, shutdown) = (backend.clone(), export.clone(), clients.clone(), shutdown.clone());
                clients.fetch_add(1, Ordering::SeqCst);
                let span = info_span!("nbd", export = %export);
                tokio::spawn(async move {
                    let r = serve_connection_until(stream, &export, backend, shutdown).await;
                    clients.fetch_sub(1, Ordering::SeqCst);
                    match r {
                        Ok(()) => debug!("client disconnected"),
                        Err(NbdError::Io(e)) if e.kind() == io::ErrorKind::UnexpectedEof => debug!("client went away"),
                        Err(e) => warn!("client connection closed: {e}"),
                    }
                }.instrument(span));
            }
            _ = shutdown_signalled(&mut shutdown) => return Ok(()),
        }
    }
}

/// Resolves once `shutdown` reads true, or once its sender is gone (the listener's
/// owner no longer exists, so nobody could ever stop us otherwise).
async fn shutdown_signalled(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|&stop| stop).await;
}

/// Serves one client connection until it disconnects.
pub async fn serve_connection<B: NbdBackend, S>(
    stream: S,
    export: &str,
    backend: Arc<B>,
) -> Result<(), NbdError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (_tx, rx) = watch::channel(false);
    serve_connection_until(stream, export, backend, rx).await
}

async fn serve_connection_until<B: NbdBackend, S>(
    stream: S,
    export: &str,
    backend: Arc<B>,
    shutdown: watch::Receiver<bool>,
) -> Result<(), NbdError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut rd, mut wr) = tokio::io::split(stream);
    let mut stop = shutdown.clone();
    tokio::select! {
        r = handshake(&mut rd, &mut wr, export, backend.size_bytes()) => if !r? {
            return Ok(());
        },
        _ = shutdown_signalled(&mut stop) => return Ok(()),
    }
    transmission(rd, wr, backend, shutdown).await
}

/// Option haggling; true when the client entered transmission.
async fn handshake<R, W>(rd: &mut R, wr: &mut W, export: &str, size: u64) -> Result<bool, NbdError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    wr.write_all(&proto::greeting()).await?;
    let client_flags = rd.read_u32().await?;
    let no_zeroes = client_flags & proto::FLAG_C_NO_ZEROES != 0;
    let known = |name: &str| name == export || name.is_empty();
    loop {
        let mut hdr = [0u8; proto::OPTION_LEN];
        rd.read_exact(&mut hdr).await?;
        let Some((option, len)) = proto::parse_option(&hdr)? else {
            continue;
        };
        let mut data = vec![0u8; len as usize];
        rd.read_exact(&mut data).await?;
        match option {
            opt::EXPORT_NAME => {
                let name = String::from_utf8_lossy(&data).into_owned();
                if !known(&name) {
                    return Err(NbdError::UnknownExport(name));
                }
                let mut out = size.to_be_bytes().to_vec();
                out.extend_from_slice(&proto::TRANSMISSION_FLAGS.to_be_bytes());
                if !no_zeroes {
                    out.extend_from_slice(&[0u8; 124]);
                }
                wr.write_all(&out).await?;
                return Ok(true);
            }
            opt::ABORT => {
                wr.write_all(&proto::option_reply(option, rep::ACK, &[]))
                    .await?;
                return Ok(false);
            }
            opt::LIST => {
                let mut d = (export.len() as u32).to_be_bytes().to_vec();
                d.extend_from_slice(export.as_bytes());
                wr.write_all(&proto::option_reply(option, rep::SERVER, &d))
                    .await?;
                wr.write_all(&proto::option_reply(option, rep::ACK, &[]))
                    .await?;
            }
            opt::INFO | opt::GO => match proto::parse_go(&data) {
                None => {
                    wr.write_all(&proto::option_reply(option, rep::ERR_INVALID, &[]))
                        .await?
                }
                Some(name) if !known(&name) => {
                    warn!(asked = %name, "client asked for an unknown export");
                    let msg = format!("no export {name:?}; this server exports {export:?}");
                    wr.write_all(&proto::option_reply(
                        option,
                        rep::ERR_UNKNOWN,
                        msg.as_bytes(),
                    ))
                    .await?;
                }
                Some(_) => {
                    wr.write_all(&proto::option_reply(
                        option,
                        rep::INFO,
                        &proto::info_export(size),
                    ))
                    .await?;
                    wr.write_all(&proto::option_reply(
                        option,
                        rep::INFO,
                        &proto::info_block_size(),
                    ))
                    .await?;
                    wr.write_all(&proto::option_reply(option, rep::ACK, &[]))
                        .await?;
                    if option == opt::GO {
                        return Ok(true);
                    }
                }
            },
            _ => {
                wr.write_all(&proto::option_reply(option, rep::ERR_UNSUP, &[]))
                    .await?
            }
        }
    }
}

/// A reply header, its read data, and the share of the in-flight budget it holds until
/// it is on the socket.
type Reply = ([u8; 16], Option<Bytes>, Option<OwnedSemaphorePermit>);

/// Unit of the per-connection in-flight budget.
const BUDGET_UNIT: u32 = 4096;
/// Per-connection in-flight budget, in [`BUDGET_UNIT`]s: 128 MiB of read buffers and
/// write payloads. A client that sends requests without reading replies stops being
/// read once this is spent (so memory stays bounded); QD32 x 1 MiB uses a quarter.
const BUDGET_UNITS: u32 = (128 << 20) / BUDGET_UNIT;

/// What a request costs against the budget: its data, at least one unit.
fn cost(req: &proto::Request) -> u32 {
    match req.command {
        Command::Read | Command::Write => req
            .length
            .min(proto::MAX_REQUEST)
            .div_ceil(BUDGET_UNIT)
            .max(1),
        _ => 1,
    }
}

async fn transmission<B, R, W>(
    mut rd: R,
    mut wr: W,
    backend: Arc<B>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), NbdError>
where
    B: NbdBackend,
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let (tx, mut rx) = mpsc::unbounded_channel::<Reply>();
    let writer = tokio::spawn(async move {
        while let Some((hdr, data, permit)) = rx.recv().await {
            wr.write_all(&hdr).await?;
            if let Some(d) = data {
                wr.write_all(&d).await?;
            }
            drop(permit);
        }
        wr.flush().await?;
        Ok::<(), io::Error>(())
    });
    let size = backend.size_bytes();
    let budget = Arc::new(Semaphore::new(BUDGET_UNITS as usize));
    let result = loop {
        let mut hdr = [0u8; proto::REQUEST_LEN];
        let read = tokio::select! {
            r = rd.read_exact(&mut hdr) => r,
            _ = shutdown_signalled(&mut shutdown) => break Ok(()),
        };
        if let Err(e) = read {
            break if e.kind() == io::ErrorKind::UnexpectedEof {
                Ok(())
            } else {
                Err(e.into())
            };
        }
        let req = match proto::parse_request(&hdr) {
            Ok(Some(r)) => r,
            Ok(None) => continue,
            Err(e) => break Err(e.into()),
        };
        let permit = tokio::select! {
            p = budget.clone().acquire_many_owned(cost(&req)) => p.ok(),
            _ = shutdown_signalled(&mut shutdown) => break Ok(()),
        };
        let end = req.offset.checked_add(u64::from(req.length));
        let in_range = end.is_some_and(|e| e <= size);
        let fua = req.flags & cmdflag::FUA != 0;
        let reply = |e: u32| (proto::simple_reply(req.cookie, e), None, None);
        match req.command {
            Command::Disc => break Ok(()),
            Command::Write => {
                if req.length > proto::MAX_REQUEST {
                    break Err(NbdError::TooLarge(req.length));
                }
                let data = match read_payload(&mut rd, req.length as usize).await {
                    Ok(d) => d,
                    Err(e) => break Err(e.into()),
                };
                if !in_range {
                    let _ = tx.send(reply(err::ENOSPC));
                    continue;
                }
                let (b, tx) = (backend.clone(), tx.clone());
                tokio::spawn(async move {
                    let e = b
                        .write(req.offset, data, fua)
                        .await
                        .err()
                        .map_or(0, |e| proto::wire_errno(errno(&e)));
                    let _ = tx.send((proto::simple_reply(req.cookie, e), None, permit));
                });
            }
            Command::Read => {
                if req.length > proto::MAX_REQUEST || !in_range {
                    let _ = tx.send(reply(err::EINVAL));
                    continue;
                }
                let (b, tx) = (backend.clone(), tx.clone());
                tokio::spawn(async move {
                    let r = match b.read(req.offset, req.length).await {
                        Ok(d) if d.len() == req.length as usize => {
                            (proto::simple_reply(req.cookie, 0), Some(d), permit)
                        }
                        Ok(d) => {
                            warn!(
                                asked = req.length,
                                got = d.len(),
                                "backend read of the wrong length"
                            );
                            (proto::simple_reply(req.cookie, err::EIO), None, permit)
                        }
                        Err(e) => (
                            proto::simple_reply(req.cookie, proto::wire_errno(errno(&e))),
                            None,
                            permit,
                        ),
                    };
                    let _ = tx.send(r);
                });
            }
            Command::Flush => {
                let (b, tx) = (backend.clone(), tx.clone());
                tokio::spawn(async move {
                    let e = b
                        .flush()
                        .await
                        .err()
                        .map_or(0, |e| proto::wire_errno(errno(&e)));
                    let _ = tx.send((proto::simple_reply(req.cookie, e), None, permit));
                });
            }
            Command::Trim | Command::WriteZeroes => {
                if !in_range {
                    let _ = tx.send(reply(err::EINVAL));
                    continue;
                }
                let (b, tx) = (backend.clone(), tx.clone());
                let zeroes = req.command == Command::WriteZeroes;
                tokio::spawn(async move {
                    let len = u64::from(req.length);
                    let r = if zeroes {
                        b.write_zeroes(req.offset, len, fua).await
                    } else {
                        b.trim(req.offset, len, fua).await
                    };
                    let e = r.err().map_or(0, |e| proto::wire_errno(errno(&e)));
                    let _ = tx.send((proto::simple_reply(req.cookie, e), None, permit));
                });
            }
            Command::Other(t) => {
                debug!(command = t, "unsupported NBD command");
                let _ = tx.send(reply(err::EINVAL));
            }
        }
    };
    // Let in-flight requests answer, then close.
    drop(tx);
    match writer.await {
        Ok(Ok(())) | Err(_) => {}
        Ok(Err(e)) if result.is_ok() => return Err(e.into()),
        Ok(Err(_)) => {}
    }
    result
}

/// Reads a write payload; block-multiple payloads land in a page-aligned buffer so
/// the backing device can take them with O_DIRECT without another copy.
async fn read_payload<R: AsyncRead + Unpin>(rd: &mut R, len: usize) -> io::Result<Bytes> {
    if len.is_multiple_of(crate::aligned::ALIGN) && len > 0 {
        if let Some(mut buf) = crate::aligned::AlignedBuf::zeroed(len) {
            rd.read_exact(buf.as_mut()).await?;
            return Ok(buf.into_bytes());
        }
    }
    let mut data = vec![0u8; len];
    rd.read_exact(&mut data).await?;
    Ok(Bytes::from(data))
}

fn errno(e: &io::Error) -> i32 {
    e.raw_os_error().unwrap_or(libc::EIO)
}
