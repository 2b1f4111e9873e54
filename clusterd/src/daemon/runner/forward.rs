//! Forwarded administrator requests: `standby`/`online` of the peer sent as
//! authenticated UDP requests ([`hablock_proto::admin`]) and answered once the peer's
//! heartbeats show the result; requests from the peer, accepted once per sequence in
//! its current generation; the rate-limited log of refused packets.

use super::{Forward, Runner};
use hablock_proto::admin::{self, AdminRequest, Command};
use hablock_proto::control::{ClusterRequest, ClusterResponse};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;
use tracing::{debug, info, warn};

impl Runner {
    /// Logs a refused packet, at most one warning per second (a peer or anyone on
    /// the LAN can trigger it); the rest go to debug.
    pub(super) fn refused(&mut self, now: Instant, what: &str) {
        self.dropped += 1;
        let quiet = self
            .last_drop_log
            .is_some_and(|t| now.saturating_duration_since(t) < Duration::from_secs(1));
        if quiet {
            debug!(peer = %self.peer, "{what}");
        } else {
            self.last_drop_log = Some(now);
            warn!(peer = %self.peer, refused_total = self.dropped, "{what}");
        }
    }

    /// The command to forward, when `req` is a standby/online of the peer.
    pub(super) fn forward_target(&self, req: &ClusterRequest) -> Option<Command> {
        match req {
            ClusterRequest::Standby { node: Some(n) } if *n == self.peer => Some(Command::Standby),
            ClusterRequest::Online { node: Some(n) } if *n == self.peer => Some(Command::Online),
            _ => None,
        }
    }

    pub(super) fn start_forward(
        &mut self,
        command: Command,
        reply: oneshot::Sender<ClusterResponse>,
        now: Instant,
    ) {
        let refuse = |message: String| ClusterResponse::Refused { message };
        if !self.membership.peer_alive() {
            let _ = reply.send(refuse(format!(
                "{} is not alive: cannot forward",
                self.peer
            )));
            return;
        }
        if self.forward.is_some() {
            let _ = reply.send(refuse("another forwarded request is pending".into()));
            return;
        }
        self.admin_sequence += 1;
        let wait = (self.cfg.heartbeat.deadtime * 2).max(Duration::from_secs(2));
        info!(peer = %self.peer, ?command, "forwarding to the peer");
        self.forward = Some(Forward {
            command,
            sequence: self.admin_sequence,
            sent_at: now,
            next_send: now,
            deadline: now + wait,
            reply,
        });
        self.forward_progress(now);
    }

    /// Sends a pending forwarded request again, or answers it once the peer's
    /// heartbeats show the result (or the wait is over).
    pub(super) fn forward_progress(&mut self, now: Instant) {
        let Some(f) = self.forward.as_mut() else {
            return;
        };
        let want_standby = f.command == Command::Standby;
        let heard_since = self
            .membership
            .peer_silent_for(now)
            .is_some_and(|s| now.saturating_duration_since(f.sent_at) > s);
        let shows = self
            .membership
            .last_heartbeat()
            .is_some_and(|h| h.view.standby == want_standby);
        if heard_since && shows && self.membership.peer_alive() {
            if let Some(f) = self.forward.take() {
                let _ = f.reply.send(ClusterResponse::Ok {
                    warnings: vec![format!("forwarded to {}", self.peer)],
                });
            }
            return;
        }
        if now >= f.deadline {
            if let Some(f) = self.forward.take() {
                let _ = f.reply.send(ClusterResponse::Refused {
                    message: format!("{} did not confirm the forwarded request", self.peer),
                });
            }
            return;
        }
        if now >= f.next_send {
            f.next_send = now + self.cfg.heartbeat.keepalive;
            let req = AdminRequest {
                command: f.command,
                cluster_id: self.cluster_id,
                generation: self.sequencer.generation(),
                sequence: f.sequence,
                sender: self.me.clone(),
                target: self.peer.clone(),
            };
            match admin::encode(&req, &self.secret) {
                Ok(bytes) => {
                    for (i, sock) in self.sockets.iter().enumerate() {
                        if let Some(peer) = self.peer_addrs.get(i) {
                            let to = SocketAddr::new(*peer, self.cfg.heartbeat.port);
                            if let Err(e) = sock.try_send_to(&bytes, to) {
                                debug!(link = i, %to, "admin request send: {e}");
                            }
                        }
                    }
                }
                Err(e) => warn!("cannot encode an admin request: {e}"),
            }
        }
    }

    /// A request forwarded by the peer: accepted once per sequence, only in the
    /// peer's current generation (no replay).
    pub(super) fn on_admin(&mut self, req: AdminRequest, now: Instant) {
        let current = self.membership.peer_generation();
        let fresh = Some(req.generation) == current
            && self.membership.peer_alive()
            && match self.admin_seen {
                Some((g, s)) if g == req.generation => req.sequence > s,
                _ => true,
            };
        if !fresh {
            // The sender repeats a request until it sees the result: not a replay.
            if self.admin_seen != Some((req.generation, req.sequence)) {
                self.refused(
                    now,
                    &format!(
                        "refused a stale or replayed admin request (generation {:#x}, sequence {})",
                        req.generation, req.sequence
                    ),
                );
            }
            return;
        }
        self.admin_seen = Some((req.generation, req.sequence));
        let local = match req.command {
            Command::Standby => ClusterRequest::Standby { node: None },
            Command::Online => ClusterRequest::Online { node: None },
        };
        info!(peer = %self.peer, command = ?req.command, "request forwarded by the peer");
        let r = self.control(local, now);
        if let ClusterResponse::Refused { message } = r {
            warn!(peer = %self.peer, "forwarded request refused: {message}");
        }
        self.send_heartbeats();
    }
}
