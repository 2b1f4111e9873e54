//! The block resource: promote and demote a blockd resource through blockd's control
//! socket (`<run-dir>/blockd.sock`), and read its status.

use super::{AgentContext, StepError, StepResult};
use hablock_config::cli::blockd_socket;
use hablock_proto::control::{self, Request, ResourceStatus, Response};
use hablock_proto::types::{ConnState, DiskState, Role};
use std::path::Path;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// One request to blockd and its reply, within `timeout`.
pub async fn call(sock: &Path, req: &Request, timeout: Duration) -> StepResult<Response> {
    let fut = async {
        let mut s = UnixStream::connect(sock)
            .await
            .map_err(|e| StepError::io(format!("connecting {}", sock.display()), e))?;
        s.write_all(&control::encode_request(req))
            .await
            .map_err(|e| StepError::io("writing to blockd", e))?;
        let mut buf = Vec::new();
        loop {
            match control::decode_response(&buf) {
                Ok(Some((r, _))) => return Ok(r),
                Ok(None) => {}
                Err(e) => return Err(StepError::Failed(format!("bad reply from blockd: {e}"))),
            }
            let mut chunk = [0u8; 8192];
            let n = s
                .read(&mut chunk)
                .await
                .map_err(|e| StepError::io("reading from blockd", e))?;
            if n == 0 {
                return Err(StepError::Failed("blockd closed the connection".into()));
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    };
    match tokio::time::timeout(timeout, fut).await {
        Ok(r) => r,
        Err(_) => Err(StepError::Failed("blockd did not answer in time".into())),
    }
}

/// The status of one blockd resource.
pub async fn status(
    run_dir: &Path,
    resource: &str,
    timeout: Duration,
) -> StepResult<ResourceStatus> {
    let req = Request::Status {
        resource: Some(resource.to_string()),
    };
    match call(&blockd_socket(run_dir), &req, timeout).await? {
        Response::Status(mut r) if !r.resources.is_empty() => Ok(r.resources.swap_remove(0)),
        Response::Refused { message } | Response::BadRequest { message } => {
            Err(StepError::Failed(message))
        }
        other => Err(StepError::Failed(format!("unexpected reply {other:?}"))),
    }
}

/// The replication link is established (the peer's role is known and live).
pub fn connected(c: ConnState) -> bool {
    !matches!(c, ConnState::StandAlone | ConnState::Connecting)
}

/// blockd reports the peer Primary over a live replication link.
pub fn peer_primary_via_replication(s: &ResourceStatus) -> bool {
    s.peer_role == Role::Primary && connected(s.connection)
}

/// blockd reports the peer's copy UpToDate over a live replication link (a resync to it
/// is done): the group may move there.
pub fn peer_up_to_date(s: &ResourceStatus) -> bool {
    s.peer_disk == hablock_proto::types::DiskState::UpToDate && connected(s.connection)
}

/// Longest a promotion waits for the local data to become UpToDate (a resync after
/// the peer returned).
pub const PROMOTE_WAIT: std::time::Duration = std::time::Duration::from_secs(40);

/// Promotes the resource. With the peer unreachable on the replication link the
/// promotion is forced (clusterd only gets here once the policy decided the peer is
/// dead and not Primary on a live link); data that is not UpToDate is never forced:
/// a running resync is waited for (up to [`PROMOTE_WAIT`]).
pub async fn promote(ctx: &AgentContext, resource: &str) -> StepResult {
    let deadline = tokio::time::Instant::now() + PROMOTE_WAIT;
    let st = loop {
        let st = status(&ctx.run_dir, resource, ctx.blockd_timeout).await?;
        if st.role == Role::Primary {
            return Ok(());
        }
        let syncing = st.connection == ConnState::SyncTarget;
        if st.disk == DiskState::UpToDate && !syncing {
            break st;
        }
        if st.disk == DiskState::Diskless {
            return Err(StepError::Failed(format!(
                "{resource}: the local disk is detached (Diskless) after an I/O error"
            )));
        }
        if !connected(st.connection) || tokio::time::Instant::now() >= deadline {
            return Err(StepError::Failed(format!(
                "{resource}: local data is {} ({}), refusing to promote it",
                st.disk, st.connection
            )));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let force = !connected(st.connection);
    let req = Request::Primary {
        resource: resource.to_string(),
        force,
    };
    expect_ok(call(&blockd_socket(&ctx.run_dir), &req, ctx.blockd_timeout).await?)
}

/// Demotes the resource.
pub async fn demote(ctx: &AgentContext, resource: &str) -> StepResult {
    let req = Request::Secondary {
        resource: resource.to_string(),
    };
    expect_ok(call(&blockd_socket(&ctx.run_dir), &req, ctx.blockd_timeout).await?)
}

/// The resource is Primary here. A blockd that is not running holds no Primary role
/// (its socket is absent or refuses): that answers "not running", not "unknown".
pub async fn probe(ctx: &AgentContext, resource: &str) -> StepResult<bool> {
    let sock = blockd_socket(&ctx.run_dir);
    if let Err(e) = UnixStream::connect(&sock).await {
        if matches!(
            e.kind(),
            std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
        ) {
            tracing::warn!(
                resource,
                "blockd is not running: {resource} is not Primary here"
            );
            return Ok(false);
        }
    }
    Ok(status(&ctx.run_dir, resource, ctx.blockd_timeout)
        .await?
        .role
        == Role::Primary)
}

fn expect_ok(r: Response) -> StepResult {
    match r {
        Response::Ok { .. } => Ok(()),
        Response::Refused { message } | Response::BadRequest { message } => {
            Err(StepError::Failed(message))
        }
        other => Err(StepError::Failed(format!("unexpected reply {other:?}"))),
    }
}
