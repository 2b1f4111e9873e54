//! The control socket: `blockctl` and `clusterd` send [`Request`]s and get
//! [`Response`]s (see [`hablock_proto::control`] for the framing). The socket lives in
//! the run directory with mode 0600: only root may steer the daemon.

use super::reload::Reloader;
use super::resource::ResourceMsg;
use crate::engine::{Command, CommandResult};
use hablock_proto::control::{self, ControlError, Event, Request, Response, StatusReport};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{broadcast, mpsc, oneshot};
use tracing::{debug, warn};

/// Routes requests to resource tasks.
#[derive(Clone)]
pub struct ControlState {
    /// Resource name -> inbox.
    pub resources: BTreeMap<String, mpsc::Sender<ResourceMsg>>,
    /// The event stream.
    pub events: broadcast::Sender<Event>,
    /// Reloads the configuration.
    pub reloader: Arc<Reloader>,
}

/// Creates the socket (0600) at `path`.
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Accepts control connections forever.
pub async fn serve(listener: UnixListener, state: ControlState) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let state = state.clone();
                tokio::spawn(async move {
                    if let Err(e) = serve_connection(stream, state).await {
                        warn!("control connection: {e}");
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

async fn serve_connection(mut stream: UnixStream, state: ControlState) -> std::io::Result<()> {
    let mut buf = Vec::new();
    loop {
        let request = loop {
            match control::decode_request(&buf) {
                Ok(Some((req, used))) => {
                    buf.drain(..used);
                    break req;
                }
                Ok(None) => {}
                Err(ControlError::UnknownCommand(cmd)) => {
                    // A newer client: answer and keep the connection.
                    let skip = control::frame_len(&buf).unwrap_or(buf.len());
                    buf.drain(..skip.min(buf.len()));
                    let r = Response::BadRequest {
                        message: format!("unknown command {cmd:?}"),
                    };
                    stream.write_all(&control::encode_response(&r)).await?;
                    continue;
                }
                Err(e) => {
                    warn!("control: refusing a malformed request: {e}");
                    let r = Response::BadRequest {
                        message: format!("malformed request: {e}"),
                    };
                    let _ = stream.write_all(&control::encode_response(&r)).await;
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
        if request == Request::Events {
            return stream_events(stream, state.events.subscribe()).await;
        }
        let response = dispatch(&state, request).await;
        stream
            .write_all(&control::encode_response(&response))
            .await?;
    }
}

async fn stream_events(
    mut stream: UnixStream,
    mut rx: broadcast::Receiver<Event>,
) -> std::io::Result<()> {
    loop {
        match rx.recv().await {
            Ok(ev) => {
                stream
                    .write_all(&control::encode_response(&Response::Event(ev)))
                    .await?
            }
            Err(broadcast::error::RecvError::Lagged(n)) => {
                warn!("events subscriber lagged; {n} events dropped");
            }
            Err(broadcast::error::RecvError::Closed) => return Ok(()),
        }
    }
}

fn unknown(state: &ControlState, name: &str) -> Response {
    let known: Vec<&str> = state.resources.keys().map(String::as_str).collect();
    Response::Refused {
        message: format!("no resource {name:?} (known: {})", known.join(", ")),
    }
}

async fn dispatch(state: &ControlState, request: Request) -> Response {
    let (name, cmd) = match request {
        Request::Status { resource } => return status(state, resource).await,
        Request::Reload => return state.reloader.reload().await,
        Request::Events => {
            return Response::BadRequest {
                message: "events handled elsewhere".into(),
            }
        }
        Request::Primary { resource, force } => (resource, Command::Primary { force }),
        Request::Secondary { resource } => (resource, Command::Secondary),
        Request::Connect {
            resource,
            discard_my_data,
        } => (resource, Command::Connect { discard_my_data }),
        Request::Disconnect { resource } => (resource, Command::Disconnect),
        Request::Verify { resource } => (resource, Command::Verify),
        Request::Invalidate { resource } => (resource, Command::Invalidate),
        Request::Detach { resource } => (resource, Command::Detach),
        Request::Attach { resource } => {
            return ask(state, &resource, |reply| ResourceMsg::Attach { reply }).await
        }
    };
    ask(state, &name, |reply| ResourceMsg::Command { cmd, reply }).await
}

/// Sends resource `name` the message `msg` makes with a reply channel; the reply.
async fn ask(
    state: &ControlState,
    name: &str,
    msg: impl FnOnce(oneshot::Sender<CommandResult>) -> ResourceMsg,
) -> Response {
    let Some(tx) = state.resources.get(name) else {
        return unknown(state, name);
    };
    let (reply, rx) = oneshot::channel();
    if tx.send(msg(reply)).await.is_err() {
        return Response::Refused {
            message: format!("{name} is shutting down"),
        };
    }
    match rx.await {
        Ok(CommandResult::Ok(warnings)) => Response::Ok { warnings },
        Ok(CommandResult::Refused(message)) => Response::Refused { message },
        Err(_) => Response::Refused {
            message: format!("{name} is shutting down"),
        },
    }
}

async fn status(state: &ControlState, resource: Option<String>) -> Response {
    let names: Vec<String> = match resource {
        Some(n) if !state.resources.contains_key(&n) => return unknown(state, &n),
        Some(n) => vec![n],
        None => state.resources.keys().cloned().collect(),
    };
    let mut resources = Vec::new();
    for n in names {
        let Some(tx) = state.resources.get(&n) else {
            continue;
        };
        let (reply, rx) = oneshot::channel();
        if tx.send(ResourceMsg::Status { reply }).await.is_ok() {
            if let Ok(st) = rx.await {
                resources.push(st);
            }
        }
    }
    Response::Status(StatusReport { resources })
}
