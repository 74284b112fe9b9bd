//! One WebSocket connection to a document: reads frames, decodes them with `protocol`,
//! forwards them to the document actor, and writes what the actor queues in its outbox.
//!
//! One task per connection, reading and writing in one `select!` (no split halves, no second
//! task: less memory per idle connection). Refusals close the connection with a precise code
//! and are logged with the connection id and document; the document is not involved.
//! Called by `http` after the upgrade; knows nothing of warp.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use yrs::sync::AwarenessUpdate;

use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio_tungstenite::tungstenite::error::CapacityError;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

use crate::auth::Access;
use crate::config::Config;
use crate::docname::DocName;
use crate::document::DocMsg;
use crate::limits::{ConnPermit, Limiter};
use crate::metrics::METRICS;
use crate::outbox::{Next, Outbox, OutboxSender, Socket};
use crate::presence::ConnId;
use crate::protocol::{self, close, CloseReason, FrameLimits, Inbound};
use crate::registry::Registry;
use crate::validate::Limits;
use std::sync::atomic::Ordering::Relaxed;

/// How long to wait for the peer's close frame after sending ours.
const CLOSE_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);

/// How long our close frame may wait behind what the peer has not read yet. A slow consumer
/// closed with 1013 still has the kernel's socket buffers to read before it reaches the code;
/// a peer that reads nothing at all is dropped after this.
const CLOSE_SEND_TIMEOUT: Duration = Duration::from_secs(30);

/// Counts live sessions so that shutdown can wait for every close frame to be written.
#[derive(Debug, Default)]
pub struct Sessions {
    live: std::sync::atomic::AtomicUsize,
    ended: tokio::sync::Notify,
    /// Set at shutdown for sessions that no document closes (OT connections).
    closing: std::sync::atomic::AtomicBool,
    closing_notify: tokio::sync::Notify,
}

/// Held by one session for its whole life.
pub struct SessionGuard(Arc<Sessions>);

impl Sessions {
    pub fn enter(self: &Arc<Self>) -> SessionGuard {
        self.live.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        SessionGuard(self.clone())
    }

    /// Asks every session that waits on `closing` to close with 1001.
    pub fn close_all(&self) {
        self.closing.store(true, std::sync::atomic::Ordering::SeqCst);
        self.closing_notify.notify_waiters();
    }

    /// Resolves once `close_all` was called.
    pub async fn closing(&self) {
        loop {
            // Created before the check: `notify_waiters` reaches it even before it is polled.
            let notified = self.closing_notify.notified();
            if self.closing.load(std::sync::atomic::Ordering::SeqCst) {
                return;
            }
            notified.await;
        }
    }

    pub fn live(&self) -> usize {
        self.live.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Waits until no session is live (or `timeout`); returns how many still are.
    pub async fn drained(&self, timeout: Duration) -> usize {
        let wait = async {
            loop {
                let ended = self.ended.notified();
                if self.live() == 0 {
                    return;
                }
                ended.await;
            }
        };
        let _ = tokio::time::timeout(timeout, wait).await;
        self.live()
    }
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        self.0.live.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        self.0.ended.notify_waiters();
    }
}

/// Per-connection limits, from `Config`.
#[derive(Debug, Clone)]
pub struct SessionSettings {
    pub outbound_queue_bytes_max: usize,
    pub frame_limits: FrameLimits,
    pub ping_interval: Duration,
    pub idle_timeout: Duration,
    pub awareness_state_bytes_max: usize,
}

impl From<&Config> for SessionSettings {
    fn from(c: &Config) -> Self {
        SessionSettings {
            outbound_queue_bytes_max: c.outbound_queue_bytes_max,
            frame_limits: FrameLimits {
                update: Limits { any_depth_max: c.update_depth_max },
                awareness_clients_max: c.awareness_clients_per_message_max,
            },
            ping_interval: Duration::from_millis(c.ping_interval_ms.max(10)),
            idle_timeout: Duration::from_millis(c.idle_timeout_ms.max(10)),
            awareness_state_bytes_max: c.awareness_state_bytes_max,
        }
    }
}

pub struct SessionParams {
    pub conn: ConnId,
    pub doc: DocName,
    /// Who writes through this connection (the `origin` column of the log).
    pub user: Arc<str>,
    pub access: Access,
    /// When the token expires (4401); `None` when anonymous.
    pub expires_in: Option<Duration>,
    /// This connection's slot in the connection caps and its rate-limit key.
    pub permit: ConnPermit,
    pub limiter: Arc<Limiter>,
    pub settings: SessionSettings,
    /// The connection's socket as the document writes to it (`outbox::link`).
    pub outbox: Outbox,
    pub sender: OutboxSender,
}

pub async fn run(mut ws: WebSocketStream<Socket>, registry: Arc<Registry>, params: SessionParams) {
    let SessionParams { conn, doc, user, access, expires_in, permit, limiter, settings, outbox, sender } = params;
    let mut ping = tokio::time::interval(settings.ping_interval);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_heard = Instant::now();
    let expiry = tokio::time::sleep(expires_in.unwrap_or(Duration::from_secs(10 * 365 * 86_400)));
    tokio::pin!(expiry);
    let mut dropped_updates = 0u64;
    let attachment = match registry.attach(&doc, conn) {
        Ok(a) => a,
        Err(_) => {
            close_with(&mut ws, CloseReason::new(close::GOING_AWAY, "server shutting down")).await;
            return;
        }
    };
    tracing::debug!(conn, doc = %doc, user = %user, ?access, "connection opened");
    registry.events.emit("user_joined", serde_json::json!({ "user": &*user, "doc": doc.as_str(), "conn": conn }));
    let join = DocMsg::Join { conn, outbox: sender, origin: user.clone() };
    let mut refusal = attachment.handle.send(join).await.err().map(|_| gone());

    while refusal.is_none() {
        tokio::select! {
            // Documents write relayed frames to the socket themselves; this drains what the
            // socket did not take at once, and hears their close requests.
            next = outbox.next() => match next {
                Next::Close(reason) => refusal = Some(reason),
                Next::Broken => break,
            },
            _ = &mut expiry, if expires_in.is_some() => {
                tracing::info!(conn, doc = %doc, user = %user, "closing: token expired (4401)");
                refusal = Some(CloseReason::new(close::TOKEN_EXPIRED, "token expired"));
            }
            _ = ping.tick() => {
                if last_heard.elapsed() >= settings.idle_timeout {
                    tracing::info!(conn, doc = %doc, user = %user, "closing: no message or pong (4408)");
                    refusal = Some(CloseReason::new(close::IDLE_TIMEOUT, "idle timeout"));
                } else {
                    outbox.ping();
                }
            }
            msg = ws.next() => {
                // Any frame, pongs included, shows the peer is alive.
                if let Some(Ok(m)) = &msg {
                    last_heard = Instant::now();
                    METRICS.bytes_received.fetch_add(m.len() as u64, Relaxed);
                }
                match msg {
                    None => break,
                    Some(Ok(Message::Binary(frame))) if !limiter.allow_message(permit.key(), frame.len(), Instant::now().into_std()) => {
                        tracing::warn!(conn, doc = %doc, user = %user, bytes = frame.len(), "refused: rate limited (1008)");
                        refusal = Some(CloseReason::new(close::POLICY_VIOLATION, "rate limited"));
                    }
                    Some(Ok(Message::Binary(frame))) => match protocol::decode_frame_with(&frame, &settings.frame_limits) {
                        Ok(Inbound::Auth | Inbound::Unknown(_)) => {}
                        // Read grants sync and share awareness; their updates are dropped (not
                        // applied, stored or relayed), counted, and logged once.
                        Ok(Inbound::SyncStep2(c) | Inbound::Update(c)) if access == Access::Read => {
                            if !c.summary.runs.is_empty() || c.summary.deleted_ranges > 0 {
                                dropped_updates += 1;
                                if dropped_updates == 1 {
                                    tracing::warn!(conn, doc = %doc, user = %user, "dropping updates from a read-only connection");
                                }
                            }
                        }
                        Ok(Inbound::Awareness(update)) if !awareness_allowed(&update, &settings) => {
                            tracing::warn!(conn, doc = %doc, user = %user, "refused: awareness state over its size limit (1008)");
                            refusal = Some(CloseReason::new(close::POLICY_VIOLATION, "awareness too large"));
                        }
                        Ok(msg) => {
                            if attachment.handle.send(DocMsg::Inbound { conn, user: user.clone(), msg }).await.is_err() {
                                refusal = Some(gone());
                            }
                        }
                        Err(e) => {
                            tracing::warn!(conn, doc = %doc, user = %user, error = %e, bytes = frame.len(), code = e.close_reason().code, "refused: bad message");
                            refusal = Some(e.close_reason());
                        }
                    },
                    Some(Ok(Message::Text(_))) => {
                        tracing::warn!(conn, doc = %doc, user = %user, "refused: text frame on a Yjs connection (1003)");
                        refusal = Some(CloseReason::new(close::UNSUPPORTED_DATA, "text frames are not supported"));
                    }
                    // tungstenite answers pings and close frames itself while we keep reading.
                    Some(Ok(_)) => {}
                    Some(Err(WsError::Capacity(CapacityError::MessageTooLong { size, max_size }))) => {
                        tracing::warn!(conn, doc = %doc, user = %user, size, max_size, "refused: message too big (1009)");
                        refusal = Some(CloseReason::new(close::MESSAGE_TOO_BIG, "message too big"));
                    }
                    Some(Err(e)) => {
                        tracing::debug!(conn, doc = %doc, error = %e, "connection error");
                        break;
                    }
                }
            }
        }
    }
    // Whatever ends the session, the actor stops queueing for it; dropping the attachment
    // tells the actor the connection left (its awareness states are removed).
    outbox.close();
    drop(attachment);
    if let Some(reason) = refusal {
        if reason.code != close::GOING_AWAY {
            METRICS.refused(&format!("{} {}", reason.code, reason.reason));
        }
        close_with(&mut ws, reason).await;
    }
    if dropped_updates > 0 {
        tracing::info!(conn, doc = %doc, user = %user, dropped_updates, "read-only connection closed");
    }
    registry.events.emit("user_left", serde_json::json!({ "user": &*user, "doc": doc.as_str(), "conn": conn }));
    tracing::debug!(conn, doc = %doc, "connection closed");
}

fn gone() -> CloseReason {
    CloseReason::new(close::INTERNAL_ERROR, "document unavailable")
}

/// The awareness cap a session can check alone: each state's JSON size. How many client ids
/// a connection announces is counted by the document, which knows whose states are news.
fn awareness_allowed(update: &AwarenessUpdate, settings: &SessionSettings) -> bool {
    update.clients.values().all(|e| e.json.len() <= settings.awareness_state_bytes_max)
}

/// Sends a close frame and waits (bounded) for the peer's, so the code reaches the client.
/// Whatever the backlog still holds goes out first; a peer that reads nothing gets
/// `CLOSE_SEND_TIMEOUT`, not a wait forever. After a refused oversized message the WebSocket
/// stream is mid-frame and unusable; the rest is then read raw and discarded, because closing
/// a socket with unread input sends a TCP reset that can destroy our close frame before the
/// client reads it.
pub(crate) async fn close_with<S>(ws: &mut WebSocketStream<S>, reason: CloseReason)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    // tungstenite gives up on a stream after a capacity error and reports it ended.
    let broken = reason.code == close::MESSAGE_TOO_BIG;
    let frame = CloseFrame { code: CloseCode::from(reason.code), reason: reason.reason.into() };
    if !matches!(tokio::time::timeout(CLOSE_SEND_TIMEOUT, ws.send(Message::Close(Some(frame)))).await, Ok(Ok(()))) {
        return;
    }
    let drain = async {
        if !broken {
            loop {
                match ws.next().await {
                    Some(Ok(_)) => continue,
                    None => return,
                    Some(Err(_)) => break,
                }
            }
        }
        // On the heap, and only here: an array in this future would be reserved in every
        // session task's state (4 KiB per idle connection).
        let mut sink = vec![0u8; 4096];
        while let Ok(n) = ws.get_mut().read(&mut sink).await {
            if n == 0 {
                return;
            }
        }
    };
    let _ = tokio::time::timeout(CLOSE_HANDSHAKE_TIMEOUT, drain).await;
}
