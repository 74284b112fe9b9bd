//! One WebSocket connection: the loop every session runs, whatever its protocol.
//!
//! One task per connection, reading and writing in one `select!` (no split halves, no second
//! task: less memory per idle connection). The loop drains the outbox, pings, and owns the
//! refusals every protocol shares: shutdown (1001, for connections no document closes),
//! token expiry (4401), silence (4408), rate limit (1008), oversized messages (1009), the
//! wrong kind of data frame (1003); then the close tail (the refusal metric, `close_with`).
//! The protocols plug into it as a `Protocol`:
//!
//! - `yjs`: a Yjs connection to one document (binary frames, decoded by `protocol`).
//! - `ot`: a ShareDB connection at `/api/ot` (JSON text frames, `crate::ot`).
//! - `hocuspocus`: a Hocuspocus connection at `/` or `/api/hocuspocus` (binary frames for
//!   many documents, decoded by `crate::hocuspocus`).
//!
//! Refusals are logged with the connection id (and the document, for Yjs); the document is
//! not involved. Called by `http` after the upgrade; knows nothing of warp.

pub mod hocuspocus;
pub mod ot;
pub mod yjs;

use std::sync::Arc;
use std::time::Duration;

use tokio::time::{Instant, Interval, Sleep};

use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio_tungstenite::tungstenite::error::CapacityError;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

use crate::docname::DocName;
use crate::limits::{ConnPermit, Limiter};
use crate::metrics::METRICS;
use crate::outbox::{Next, Outbox, OutboxSender, Socket};
use crate::presence::ConnId;
use crate::protocol::{close, CloseReason, FrameLimits};
use std::sync::atomic::Ordering::Relaxed;

/// Per-connection limits of every protocol (`app::session_settings` makes them from `Config`).
#[derive(Debug, Clone)]
pub struct SessionSettings {
    pub outbound_queue_bytes_max: usize,
    pub frame_limits: FrameLimits,
    pub ping_interval: Duration,
    pub idle_timeout: Duration,
    pub awareness_state_bytes_max: usize,
}

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

/// What every session is given for its connection, whatever its protocol.
pub struct Link {
    pub conn: ConnId,
    /// When the token expires (4401); `None` when anonymous.
    pub expires_in: Option<Duration>,
    /// This connection's slot in the connection caps and its rate-limit key.
    pub permit: ConnPermit,
    pub limiter: Arc<Limiter>,
    /// The connection's socket as documents write to it (`outbox::link`).
    pub outbox: Outbox,
    pub sender: OutboxSender,
}

/// One protocol plugged into the loop (`serve`).
pub(crate) trait Protocol {
    /// Whether it speaks text frames (else binary); the other kind is refused with 1003.
    const TEXT: bool;
    /// Its own wording of the lines the loop logs: "{CLOSING}: token expired (4401)",
    /// "refused: text frame on {CONNECTION} (1003)" (or binary), "{ERROR}".
    const CLOSING: &'static str;
    const CONNECTION: &'static str;
    const ERROR: &'static str;
    /// What `detach` keeps for after the close frame.
    type Kept;
    /// One data frame of the protocol's kind, within the rate limit; `Some` closes.
    async fn on_frame(&mut self, frame: Message) -> Option<CloseReason>;
    /// At every ping tick, before the ping: the protocol's own timers; `Some` closes.
    fn tick(&mut self) -> Option<CloseReason> {
        None
    }
    /// When the loop ends, before the outbox closes.
    async fn leave(&mut self) {}
    /// After the outbox closed and before the close frame: lets go of the documents.
    fn detach(self) -> Self::Kept;
}

/// What the loop knows of a connection, whatever its protocol.
pub(crate) struct Peer<'a> {
    pub conn: ConnId,
    pub user: Arc<str>,
    /// The document, for the log lines of a connection to one.
    pub doc: Option<DocName>,
    pub expires_in: Option<Duration>,
    pub permit: &'a ConnPermit,
    pub limiter: &'a Limiter,
    pub idle_timeout: Duration,
    /// Closes the connection with 1001 at shutdown; `None` when documents close it.
    pub sessions: Option<&'a Sessions>,
}

/// The connection's timers, started when it opens.
pub(crate) struct Clock {
    ping: Interval,
    expiry: Sleep,
    last_heard: Instant,
}

impl Clock {
    pub fn start(ping_interval: Duration, expires_in: Option<Duration>) -> Self {
        let mut ping = tokio::time::interval(ping_interval);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let last_heard = Instant::now();
        let expiry = tokio::time::sleep(expires_in.unwrap_or(Duration::from_secs(10 * 365 * 86_400)));
        Clock { ping, expiry, last_heard }
    }
}

/// Runs the connection until it ends or is refused (unless `refusal` is already set), then
/// the close tail: `leave`, the outbox closed, `detach`, and the close frame. Returns what
/// `detach` kept.
pub(crate) async fn serve<P: Protocol>(
    ws: &mut WebSocketStream<Socket>,
    outbox: &Outbox,
    peer: Peer<'_>,
    clock: Clock,
    mut proto: P,
    mut refusal: Option<CloseReason>,
) -> P::Kept {
    let Peer { conn, user, doc, expires_in, permit, limiter, idle_timeout, sessions } = peer;
    let Clock { mut ping, expiry, mut last_heard } = clock;
    tokio::pin!(expiry);
    let (wrong_kind, wrong_reason) = match P::TEXT {
        true => ("binary", "binary frames are not supported"),
        false => ("text", "text frames are not supported"),
    };
    let doc = doc.as_ref().map(tracing::field::display);
    while refusal.is_none() {
        tokio::select! {
            // Documents write to the socket themselves; this drains what the socket did not
            // take at once (it still goes out before a shutdown's close frame), and hears
            // their close requests.
            next = outbox.next() => match next {
                Next::Close(reason) => refusal = Some(reason),
                Next::Broken => break,
            },
            _ = closing(sessions) => {
                refusal = Some(CloseReason::new(close::GOING_AWAY, "server shutting down"));
            }
            _ = &mut expiry, if expires_in.is_some() => {
                tracing::info!(conn = conn.get(), doc, user = %user, "{}: token expired (4401)", P::CLOSING);
                refusal = Some(CloseReason::new(close::TOKEN_EXPIRED, "token expired"));
            }
            _ = ping.tick() => {
                if last_heard.elapsed() >= idle_timeout {
                    tracing::info!(conn = conn.get(), doc, user = %user, "{}: no message or pong (4408)", P::CLOSING);
                    refusal = Some(CloseReason::new(close::IDLE_TIMEOUT, "idle timeout"));
                } else if let Some(reason) = proto.tick() {
                    refusal = Some(reason);
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
                    Some(Ok(frame @ (Message::Binary(_) | Message::Text(_)))) if frame.is_text() == P::TEXT => {
                        if !limiter.allow_message(permit.key(), frame.len(), Instant::now().into_std()) {
                            tracing::warn!(conn = conn.get(), doc, user = %user, bytes = frame.len(), "refused: rate limited (1008)");
                            refusal = Some(CloseReason::new(close::POLICY_VIOLATION, "rate limited"));
                        } else {
                            // Boxed: the loop's future would otherwise keep room for the
                            // largest frame handler in every idle connection (1.5 KiB for
                            // y-websocket), for one allocation per frame received.
                            refusal = Box::pin(proto.on_frame(frame)).await;
                        }
                    }
                    Some(Ok(Message::Binary(_) | Message::Text(_))) => {
                        tracing::warn!(conn = conn.get(), doc, user = %user, "refused: {wrong_kind} frame on {} (1003)", P::CONNECTION);
                        refusal = Some(CloseReason::new(close::UNSUPPORTED_DATA, wrong_reason));
                    }
                    // tungstenite answers pings and close frames itself while we keep reading.
                    Some(Ok(_)) => {}
                    Some(Err(WsError::Capacity(CapacityError::MessageTooLong { size, max_size }))) => {
                        tracing::warn!(conn = conn.get(), doc, user = %user, size, max_size, "refused: message too big (1009)");
                        refusal = Some(CloseReason::new(close::MESSAGE_TOO_BIG, "message too big"));
                    }
                    Some(Err(e)) => {
                        tracing::debug!(conn = conn.get(), doc, error = %e, "{}", P::ERROR);
                        break;
                    }
                }
            }
        }
    }
    // Whatever ends the session, the actors stop queueing for it; detaching tells them the
    // connection left (its awareness states are removed).
    proto.leave().await;
    outbox.close();
    let kept = proto.detach();
    if let Some(reason) = refusal {
        if reason.code != close::GOING_AWAY {
            METRICS.refused(&format!("{} {}", reason.code, reason.reason));
        }
        close_with(ws, reason).await;
    }
    kept
}

/// Resolves at shutdown for sessions given `sessions`; never for the others.
async fn closing(sessions: Option<&Sessions>) {
    match sessions {
        Some(s) => s.closing().await,
        None => std::future::pending().await,
    }
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
