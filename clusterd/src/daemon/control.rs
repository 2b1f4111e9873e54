//! clusterd's control socket, `<run-dir>/clusterd.sock` (mode 0600): `clusterctl`
//! sends [`ClusterRequest`]s and gets [`ClusterResponse`]s (framing in
//! [`hablock_proto::control`]). Requests go to the runner; `events` subscribes to the
//! event stream. A malformed request is answered with `bad-request` and logged; the
//! daemon carries on.

use super::reload::ReloadSource;
use super::runner::Msg;
use hablock_proto::control::{self, ClusterEvent, ClusterRequest, ClusterResponse, ControlError};
use std::path::Path;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{broadcast, mpsc, oneshot};
use tracing::{debug, warn};

/// Creates the socket (0600) at `path`.
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Accepts control connections forever.
pub async fn serve(
    listener: UnixListener,
    runner: mpsc::Sender<Msg>,
    events: broadcast::Sender<ClusterEvent>,
    source: Arc<ReloadSource>,
) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let runner = runner.clone();
                let events = events.clone();
                let source = source.clone();
                tokio::spawn(async move {
                    if let Err(e) = serve_connection(stream, runner, events, &source).await {
                        debug!("control connection: {e}");
                    }
                });
            }
            Err(e) => {
                warn!("control socket accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

async fn reply(stream: &mut UnixStream, r: &ClusterResponse) -> std::io::Result<()> {
    stream.write_all(&control::encode_cluster_response(r)).await
}

async fn serve_connection(
    mut stream: UnixStream,
    runner: mpsc::Sender<Msg>,
    events: broadcast::Sender<ClusterEvent>,
    source: &ReloadSource,
) -> std::io::Result<()> {
    let mut buf = Vec::new();
    loop {
        let request = loop {
            match control::decode_cluster_request(&buf) {
                Ok(Some((req, used))) => {
                    buf.drain(..used);
                    break req;
                }
                Ok(None) => {}
                Err(ControlError::UnknownCommand(cmd)) => {
                    let skip = control::frame_len(&buf).unwrap_or(buf.len());
                    buf.drain(..skip.min(buf.len()));
                    warn!("control: unknown command {cmd:?}");
                    let message = format!("unknown command {cmd:?}");
                    reply(&mut stream, &ClusterResponse::BadRequest { message }).await?;
                    continue;
                }
                Err(e) => {
                    warn!("control: refusing a malformed request: {e}");
                    let message = format!("malformed request: {e}");
                    let _ = reply(&mut stream, &ClusterResponse::BadRequest { message }).await;
                    return Ok(());
                }
            }
            if buf.len() > control::MAX_CONTROL_BODY as usize + 64 {
                return Ok(());
            }
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        debug!(?request, "control request");
        if request == ClusterRequest::Events {
            return stream_events(stream, events.subscribe()).await;
        }
        let (tx, rx) = oneshot::channel();
        let msg = if request == ClusterRequest::Reload {
            source.message(Some(tx))
        } else {
            Msg::Control {
                req: request,
                reply: tx,
            }
        };
        let response = if runner.send(msg).await.is_err() {
            ClusterResponse::Refused {
                message: "clusterd is shutting down".into(),
            }
        } else {
            rx.await.unwrap_or(ClusterResponse::Refused {
                message: "clusterd is shutting down".into(),
            })
        };
        reply(&mut stream, &response).await?;
    }
}

async fn stream_events(
    mut stream: UnixStream,
    mut rx: broadcast::Receiver<ClusterEvent>,
) -> std::io::Result<()> {
    loop {
        match rx.recv().await {
            Ok(ev) => reply(&mut stream, &ClusterResponse::Event(ev)).await?,
            Err(broadcast::error::RecvError::Lagged(n)) => {
                warn!("events subscriber lagged; {n} events dropped");
            }
            Err(broadcast::error::RecvError::Closed) => return Ok(()),
        }
    }
}
