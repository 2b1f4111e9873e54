//! The heartbeat links: one UDP socket per configured heartbeat address of this node
//! (link i = the i-th address), bound to `[heartbeat] port`. Received datagrams are
//! authenticated and checked (cluster, sender, source address) here; what passes
//! goes to the runner. The same sockets carry the peer's forwarded administrator
//! requests ([`hablock_proto::admin`]). Everything refused is logged, rate-limited.

use super::runner::Msg;
use hablock_proto::admin;
use hablock_proto::heartbeat::{self, Heartbeat};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tracing::{debug, warn};

/// Counts of refused datagrams, for status.
#[derive(Debug, Default)]
pub struct DropCounters {
    /// Failed authentication, bad magic/version/length.
    pub bad_packet: AtomicU64,
    /// Authenticated, but from another cluster, node or source address.
    pub wrong_sender: AtomicU64,
}

/// What a receiver checks a datagram against.
#[derive(Debug, Clone)]
pub struct ReceiverConfig {
    /// The cluster secret.
    pub secret: Arc<Vec<u8>>,
    /// [`heartbeat::cluster_id`] of the cluster name.
    pub cluster_id: u64,
    /// This node's name.
    pub me: String,
    /// The peer's name.
    pub peer: String,
    /// The peer's address on each link.
    pub peer_addrs: Vec<IpAddr>,
}

/// Binds a non-blocking UDP socket with `IP_FREEBIND`: the address need not exist
/// yet (an interface still down at boot), heartbeats flow once it does.
pub fn bind_freebind(addr: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    use nix::sys::socket::{self, sockopt, AddressFamily, SockFlag, SockType, SockaddrStorage};
    use std::os::fd::AsRawFd;
    let family = if addr.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    let fd = socket::socket(
        family,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )?;
    if let Err(e) = socket::setsockopt(&fd, sockopt::IpFreebind, &true) {
        debug!(%addr, "IP_FREEBIND: {e}");
    }
    socket::bind(fd.as_raw_fd(), &SockaddrStorage::from(addr))?;
    Ok(std::net::UdpSocket::from(fd))
}

/// Binds one socket per address.
pub async fn bind(addrs: &[IpAddr], port: u16) -> anyhow::Result<Vec<Arc<UdpSocket>>> {
    use anyhow::Context;
    let mut out = Vec::new();
    for a in addrs {
        let s = bind_freebind(SocketAddr::new(*a, port))
            .and_then(UdpSocket::from_std)
            .with_context(|| format!("binding heartbeat UDP {a}:{port}"))?;
        out.push(Arc::new(s));
    }
    Ok(out)
}

/// A rate limiter for log lines a peer (or anyone on the LAN) can trigger.
struct LogLimit {
    last: Option<Instant>,
    suppressed: u64,
}

impl LogLimit {
    /// Some(suppressed count) when a line may be logged now.
    fn allow(&mut self) -> Option<u64> {
        let now = Instant::now();
        match self.last {
            Some(t) if now.duration_since(t) < Duration::from_secs(1) => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

/// Receives on link `link` forever, sending accepted heartbeats to the runner.
pub async fn receive(
    link: usize,
    sock: Arc<UdpSocket>,
    cfg: ReceiverConfig,
    tx: mpsc::Sender<Msg>,
    drops: Arc<DropCounters>,
) {
    let mut buf = vec![0u8; 2048];
    let mut limit = LogLimit {
        last: None,
        suppressed: 0,
    };
    loop {
        let (n, from) = match sock.recv_from(&mut buf).await {
            Ok(r) => r,
            Err(e) => {
                debug!(link, "heartbeat receive: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let refuse = |why: String, counter: &AtomicU64, limit: &mut LogLimit| {
            counter.fetch_add(1, Ordering::Relaxed);
            if let Some(suppressed) = limit.allow() {
                warn!(link, %from, suppressed, "refused heartbeat datagram: {why}");
            }
        };
        if admin::is_admin(&buf[..n]) {
            let req = match admin::decode(&buf[..n], &cfg.secret) {
                Ok(r) => r,
                Err(e) => {
                    refuse(format!("admin request: {e}"), &drops.bad_packet, &mut limit);
                    continue;
                }
            };
            let sender_ok = req.cluster_id == cfg.cluster_id
                && req.sender == cfg.peer
                && req.target == cfg.me
                && cfg.peer_addrs.get(link) == Some(&from.ip());
            if !sender_ok {
                refuse(
                    "admin request from another cluster, node or address".into(),
                    &drops.wrong_sender,
                    &mut limit,
                );
                continue;
            }
            if tx.send(Msg::Admin { req }).await.is_err() {
                return;
            }
            continue;
        }
        let hb: Heartbeat = match heartbeat::decode(&buf[..n], &cfg.secret) {
            Ok(hb) => hb,
            Err(e) => {
                refuse(e.to_string(), &drops.bad_packet, &mut limit);
                continue;
            }
        };
        if hb.cluster_id != cfg.cluster_id {
            refuse(
                "from another cluster".into(),
                &drops.wrong_sender,
                &mut limit,
            );
            continue;
        }
        if hb.node != cfg.peer {
            refuse(
                format!("from node {:?}, not the peer", hb.node),
                &drops.wrong_sender,
                &mut limit,
            );
            continue;
        }
        if cfg.peer_addrs.get(link) != Some(&from.ip()) {
            refuse(
                "source address is not the peer's address on this link".into(),
                &drops.wrong_sender,
                &mut limit,
            );
            continue;
        }
        if tx.send(Msg::Heartbeat { link, hb }).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn binds_an_address_that_is_not_configured_yet() {
        // TEST-NET-1: never configured on a test machine.
        let s = bind_freebind("192.0.2.77:0".parse().unwrap());
        assert!(s.is_ok(), "{s:?}");
    }
}
