//! One Hocuspocus connection (`@hocuspocus/provider` v2, v3, v4): many documents on one
//! socket, each attached, authorized and detached on its own, on the shared loop (`session`).
//!
//! Frames are decoded by `crate::hocuspocus`; their y-protocols bodies by `protocol`, which
//! validates updates before the actor (and yrs) sees them. Each document gets its own
//! attachment, connection id and prefixed outbox sender, so the actor's y-websocket frames
//! reach the provider with the document's address in front.
//!
//! Auth, as `@hocuspocus/server` `ClientConnection` does it: the provider (v3, v4 always; v2
//! when it has a token) sends Auth Token first for each document; the token is our JWT
//! (SPEC §4). It is answered Authenticated with the scope (`readonly` for a read grant) or
//! PermissionDenied (the socket stays for the other documents). A Token for a document
//! already attached re-checks it (token refresh). Frames before a document's Auth are queued,
//! bounded in bytes, frames and documents (over: 4205, Hocuspocus's ResetConnection); with
//! auth off (development mode), a first frame that is not Auth attaches anonymously (v2's
//! anonymous mode). A document's token that expires closes the socket with 4401; the
//! provider reconnects and asks for a fresh token.
//!
//! Updates with write access are acknowledged by SyncStatus 1 only after their commit (the
//! actor parks the ack behind the update's ticket); a read-only connection's updates are
//! dropped and answered SyncStatus 0. Stateless is relayed to the document's other
//! Hocuspocus connections; BroadcastStateless from a client closes with 4205; Close detaches
//! that document only. A v4 provider is sent a Ping at every ping tick; every provider
//! also hears its own awareness echoed, which keeps it from reconnecting after 30 s silent.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::WebSocketStream;

use super::yjs::{awareness_allowed, gone};
use super::{serve, Clock, Link, Peer, Protocol, SessionSettings, Sessions};
use crate::auth::{Access, AuthError, Identity};
use crate::document::{Attachment, DocMsg, Registry};
use crate::hocuspocus::{self as wire, Address, Frame, Message, RESET_CONNECTION};
use crate::limits::{ConnPermit, Limiter};
use crate::metrics::METRICS;
use crate::outbox::{OutboxSender, Socket};
use crate::presence::ConnId;
use crate::protocol::{self, close, CloseReason, Inbound};

/// Longest time between two ticks (Ping to a v4 provider, token expiry checks). The provider
/// drops a socket that heard nothing for 30 s (`messageReconnectTimeout`), checking every 3 s;
/// a Ping every 10 s keeps one without awareness alive whatever `ping_interval` is.
const TICK_INTERVAL_MAX: std::time::Duration = std::time::Duration::from_secs(10);

/// The limits of a Hocuspocus connection (`app::hocuspocus_settings`).
#[derive(Debug, Clone)]
pub struct HocuspocusSettings {
    pub session: SessionSettings,
    /// Documents open or waiting for Auth at once.
    pub docs_max: usize,
    /// What may wait for documents' Auth, in bytes and frames.
    pub preauth_bytes_max: usize,
    pub preauth_frames_max: usize,
}

/// Checks a token at `now` (Unix seconds): `Auth::authenticate`, passed in by `http`.
pub type Authenticate = Arc<dyn Fn(Option<&str>, u64) -> Result<Identity, AuthError> + Send + Sync>;

pub struct HocuspocusParams {
    pub link: Link,
    pub sessions: Arc<Sessions>,
    pub authenticate: Authenticate,
    /// Development mode: no key, everyone may write everything.
    pub anonymous: bool,
    /// A fresh connection id for each document attached (`AppState::next_conn`).
    pub next_conn: Arc<dyn Fn() -> ConnId + Send + Sync>,
    /// The clock, in Unix seconds.
    pub now_unix: fn() -> u64,
    pub settings: HocuspocusSettings,
}

/// One attached document.
struct Doc {
    address: Address,
    /// This document's id on the connection (the actor knows it by this).
    conn: ConnId,
    user: Arc<str>,
    access: Access,
    expires_at: Option<u64>,
    attachment: Attachment,
    dropped_updates: u64,
}

struct Hocuspocus {
    conn: ConnId,
    registry: Arc<Registry>,
    /// The connection's own sender: Auth answers, SyncStatus 0, Pings.
    sender: OutboxSender,
    limiter: Arc<Limiter>,
    /// One connection slot per user authenticated on this socket (the per-user cap).
    permits: HashMap<Arc<str>, ConnPermit>,
    docs: HashMap<String, Doc>,
    /// Frames of documents waiting for their Auth, by address.
    pending: HashMap<String, Vec<Bytes>>,
    pending_bytes: usize,
    pending_frames: usize,
    /// A v4 provider (its Auth carries its version): it understands Ping.
    pings: bool,
    authenticate: Authenticate,
    anonymous: bool,
    next_conn: Arc<dyn Fn() -> ConnId + Send + Sync>,
    now_unix: fn() -> u64,
    settings: HocuspocusSettings,
}

fn reset(reason: &'static str) -> CloseReason {
    CloseReason::new(RESET_CONNECTION, reason)
}

impl Protocol for Hocuspocus {
    const TEXT: bool = false;
    const CLOSING: &'static str = "hocuspocus: closing";
    const CONNECTION: &'static str = "a Hocuspocus connection";
    const ERROR: &'static str = "hocuspocus: connection error";
    type Kept = ();

    async fn on_frame(&mut self, frame: WsMessage) -> Option<CloseReason> {
        let WsMessage::Binary(frame) = frame else { return None };
        let conn = self.conn;
        let (address, message) = match wire::decode(&frame) {
            Ok(Frame::Pong | Frame::Ping) => return None,
            Ok(Frame::Doc { address, message }) => (address, message),
            Err(e) => {
                tracing::warn!(conn = conn.get(), error = %e, bytes = frame.len(), "hocuspocus: refused: bad frame (1007)");
                return Some(CloseReason::new(close::INVALID_PAYLOAD, "malformed message"));
            }
        };
        if let Some(doc) = self.docs.get(&address.raw) {
            // Every attached document's frames also count against its user's buckets.
            let user = doc.user.clone();
            if let Some(permit) = self.permits.get(&user) {
                if !self.limiter.allow_message(permit.key(), frame.len(), Instant::now().into_std()) {
                    tracing::warn!(conn = conn.get(), doc = %address.doc, user = %user, "hocuspocus: refused: rate limited (1008)");
                    return Some(CloseReason::new(close::POLICY_VIOLATION, "rate limited"));
                }
            }
            return self.on_doc_message(&address.raw, message).await;
        }
        match message {
            Message::Token { token, version } => self.authorize(address, token, version).await,
            Message::BroadcastStateless => {
                tracing::warn!(conn = conn.get(), doc = %address.doc, "hocuspocus: refused: BroadcastStateless from a client (4205)");
                Some(reset("broadcast stateless"))
            }
            Message::Close => {
                self.forget_pending(&address.raw);
                None
            }
            _ if self.anonymous => {
                // v2's anonymous mode: no Auth at all. With auth off every document is open.
                if let Some(reason) = self.attach(address.clone(), Identity::anonymous(), Access::Write, false).await {
                    return Some(reason);
                }
                self.on_doc_data(&address.raw, message).await
            }
            _ => self.queue(address, &frame),
        }
    }

    fn tick(&mut self) -> Option<CloseReason> {
        let now = (self.now_unix)();
        if let Some(doc) = self.docs.values().find(|d| d.expires_at.is_some_and(|at| at <= now)) {
            tracing::info!(conn = doc.conn.get(), doc = %doc.address.doc, user = %doc.user, "hocuspocus: closing: token expired (4401)");
            return Some(CloseReason::new(close::TOKEN_EXPIRED, "token expired"));
        }
        // A document whose actor stopped (it failed) cannot be written to any more; the
        // provider resyncs every document of the socket when it reconnects.
        if let Some(doc) = self.docs.values().find(|d| d.attachment.handle.is_closed()) {
            tracing::warn!(conn = doc.conn.get(), doc = %doc.address.doc, user = %doc.user, "hocuspocus: closing: document unavailable (1011)");
            return Some(gone());
        }
        if self.pings {
            let _ = self.sender.send(Bytes::from_static(&wire::PING));
        }
        None
    }

    /// Dropping the attachments tells the actors the connection left.
    fn detach(self) {
        for doc in self.docs.values().filter(|d| d.dropped_updates > 0) {
            tracing::info!(conn = doc.conn.get(), doc = %doc.address.doc, user = %doc.user, dropped_updates = doc.dropped_updates, "hocuspocus: read-only document closed");
        }
    }
}

impl Hocuspocus {
    /// Queues a frame of a document that has not authenticated yet, within the caps.
    fn queue(&mut self, address: Address, frame: &Bytes) -> Option<CloseReason> {
        let conn = self.conn.get();
        if let Some(reason) = self.over_docs_cap(&address) {
            return Some(reason);
        }
        if self.pending_bytes + frame.len() > self.settings.preauth_bytes_max
            || self.pending_frames + 1 > self.settings.preauth_frames_max
        {
            tracing::warn!(conn, doc = %address.doc, bytes = self.pending_bytes + frame.len(), frames = self.pending_frames + 1, "hocuspocus: refused: too much sent before Auth (4205)");
            return Some(reset("too much before auth"));
        }
        self.pending_bytes += frame.len();
        self.pending_frames += 1;
        self.pending.entry(address.raw).or_default().push(frame.clone());
        None
    }

    /// 4205 if `address` would be one document more than a socket may have open or waiting
    /// (a document already waiting for its Auth is not a new one).
    fn over_docs_cap(&self, address: &Address) -> Option<CloseReason> {
        let new = !self.pending.contains_key(&address.raw);
        if new && self.docs.len() + self.pending.len() >= self.settings.docs_max {
            tracing::warn!(conn = self.conn.get(), doc = %address.doc, max = self.settings.docs_max, "hocuspocus: refused: too many documents on one connection (4205)");
            return Some(reset("too many documents"));
        }
        None
    }

    fn forget_pending(&mut self, raw: &str) -> Vec<Bytes> {
        let frames = self.pending.remove(raw).unwrap_or_default();
        self.pending_frames -= frames.len();
        self.pending_bytes -= frames.iter().map(Bytes::len).sum::<usize>();
        frames
    }

    fn deny(&mut self, address: &Address, user: Option<&str>, reason: &str, why: &str) {
        tracing::warn!(conn = self.conn.get(), doc = %address.doc, user = user.unwrap_or("-"), reason = why, "hocuspocus: refused: {reason} (PermissionDenied)");
        METRICS.refused(&format!("hocuspocus permission-denied {reason}"));
        let _ = self.sender.send(wire::encode_permission_denied(address, reason));
    }

    /// An Auth Token: for a new document, authenticate and attach it; for an attached one,
    /// re-check (token refresh). Refused: PermissionDenied, and the document is let go.
    async fn authorize(&mut self, address: Address, token: &str, version: Option<&str>) -> Option<CloseReason> {
        if version.is_some() {
            self.pings = true;
        }
        let identity = match (self.authenticate)(Some(token), (self.now_unix)()) {
            Ok(identity) => identity,
            Err(e) => {
                let reason = if e == AuthError::Expired { "token expired" } else { "unauthorized" };
                self.deny(&address, None, reason, &e.to_string());
                self.let_go(&address.raw);
                return None;
            }
        };
        let Some(access) = identity.access(address.doc.as_str()) else {
            self.deny(&address, Some(&identity.user), "forbidden", "no grant for the document");
            self.let_go(&address.raw);
            return None;
        };
        if let Some(doc) = self.docs.get_mut(&address.raw) {
            if doc.user == identity.user {
                doc.access = access;
                doc.expires_at = identity.expires_at;
                tracing::debug!(conn = doc.conn.get(), doc = %address.doc, user = %doc.user, ?access, "hocuspocus: token refreshed");
                let _ = self.sender.send(wire::encode_authenticated(&address, access == Access::Read));
                return None;
            }
            // Another user on the same address: a new attachment under the new identity.
            self.docs.remove(&address.raw);
        }
        self.attach(address, identity, access, true).await
    }

    /// Lets go of a document: its attachment (the actor hears it left) or its queued frames.
    fn let_go(&mut self, raw: &str) {
        self.docs.remove(raw);
        self.forget_pending(raw);
    }

    /// Attaches a document (answering Authenticated when `answer`), then replays what was
    /// queued for it.
    async fn attach(
        &mut self,
        address: Address,
        identity: Identity,
        access: Access,
        answer: bool,
    ) -> Option<CloseReason> {
        if let Some(reason) = self.over_docs_cap(&address) {
            return Some(reason);
        }
        let user = identity.user.clone();
        if !self.anonymous && !self.permits.contains_key(&user) {
            match self.limiter.admit(user.clone(), Instant::now().into_std()) {
                Ok(permit) => {
                    self.permits.insert(user.clone(), permit);
                }
                Err(refusal) => {
                    self.deny(&address, Some(&user), "too many connections", &refusal.to_string());
                    self.forget_pending(&address.raw);
                    return None;
                }
            }
        }
        let conn = (self.next_conn)();
        let attachment = match self.registry.attach(&address.doc, conn) {
            Ok(a) => a,
            Err(_) => return Some(CloseReason::new(close::GOING_AWAY, "server shutting down")),
        };
        if answer {
            let _ = self.sender.send(wire::encode_authenticated(&address, access == Access::Read));
        }
        tracing::debug!(conn = self.conn.get(), doc_conn = conn.get(), doc = %address.doc, user = %user, ?access, "hocuspocus: document attached");
        let join = DocMsg::Join { conn, outbox: self.sender.prefixed(address.prefix()), origin: user.clone() };
        if attachment.handle.send(join).await.is_err() {
            return Some(gone());
        }
        let raw = address.raw.clone();
        let doc = Doc { address, conn, user, access, expires_at: identity.expires_at, attachment, dropped_updates: 0 };
        self.docs.insert(raw.clone(), doc);
        for frame in self.forget_pending(&raw) {
            let reason = match wire::decode(&frame) {
                Ok(Frame::Doc { message, .. }) => self.on_doc_data(&raw, message).await,
                _ => None,
            };
            if reason.is_some() {
                return reason;
            }
        }
        None
    }

    /// One message for an attached document.
    async fn on_doc_message(&mut self, raw: &str, message: Message<'_>) -> Option<CloseReason> {
        match message {
            Message::Token { token, version } => {
                let address = self.docs.get(raw).map(|d| d.address.clone())?;
                self.authorize(address, token, version).await
            }
            other => self.on_doc_data(raw, other).await,
        }
    }

    /// Any message but Auth for an attached document (also what was queued before its Auth).
    async fn on_doc_data(&mut self, raw: &str, message: Message<'_>) -> Option<CloseReason> {
        let body = match message {
            Message::Yjs(body) => body,
            Message::Token { .. } => return None,
            Message::Stateless(payload) => {
                let doc = self.docs.get(raw)?;
                let msg = DocMsg::Stateless { conn: doc.conn, body: wire::encode_stateless_body(payload) };
                return doc.attachment.handle.send(msg).await.err().map(|_| gone());
            }
            Message::BroadcastStateless => {
                let doc = self.docs.get(raw)?;
                tracing::warn!(conn = doc.conn.get(), doc = %doc.address.doc, user = %doc.user, "hocuspocus: refused: BroadcastStateless from a client (4205)");
                return Some(reset("broadcast stateless"));
            }
            Message::Close => {
                if let Some(doc) = self.docs.remove(raw) {
                    tracing::debug!(conn = doc.conn.get(), doc = %doc.address.doc, user = %doc.user, "hocuspocus: document detached by the provider");
                }
                return None;
            }
            Message::OtherAuth(_) | Message::Ignored(_) => return None,
        };
        let doc = self.docs.get_mut(raw)?;
        let (conn, user) = (doc.conn, doc.user.clone());
        let decoded = protocol::decode_frame_with(&body, &self.settings.session.frame_limits);
        let step2 = matches!(decoded, Ok(Inbound::SyncStep2(_)));
        match decoded {
            Ok(Inbound::Auth | Inbound::Unknown(_)) => None,
            // Read grants sync and share awareness; their updates are dropped (not applied,
            // stored or relayed), counted, and answered SyncStatus 0 as Hocuspocus does. A
            // SyncStep2 with nothing in it (the provider had nothing new) is answered 1.
            Ok(Inbound::SyncStep2(c) | Inbound::Update(c)) if doc.access == Access::Read => {
                let empty = c.summary.is_empty();
                let saved = step2 && empty;
                if !empty {
                    doc.dropped_updates += 1;
                    if doc.dropped_updates == 1 {
                        tracing::warn!(conn = conn.get(), doc = %doc.address.doc, user = %user, "hocuspocus: dropping updates from a read-only document");
                    }
                }
                let status = if saved { wire::SYNC_STATUS_SAVED } else { wire::SYNC_STATUS_REFUSED };
                let _ = self.sender.send(wire::frame(&doc.address, &status));
                None
            }
            Ok(Inbound::SyncStep2(update) | Inbound::Update(update)) => {
                let ack = Bytes::from_static(&wire::SYNC_STATUS_SAVED);
                let msg = DocMsg::UpdateAcked { conn, user, update, ack };
                doc.attachment.handle.send(msg).await.err().map(|_| gone())
            }
            Ok(Inbound::Awareness(update)) if !awareness_allowed(&update, &self.settings.session) => {
                tracing::warn!(conn = conn.get(), doc = %doc.address.doc, user = %user, "hocuspocus: refused: awareness state over its size limit (1008)");
                Some(CloseReason::new(close::POLICY_VIOLATION, "awareness too large"))
            }
            Ok(msg) => {
                let msg = DocMsg::Inbound { conn, user, msg };
                doc.attachment.handle.send(msg).await.err().map(|_| gone())
            }
            Err(e) => {
                tracing::warn!(conn = conn.get(), doc = %doc.address.doc, user = %user, error = %e, bytes = body.len(), code = e.close_reason().code, "hocuspocus: refused: bad message");
                Some(e.close_reason())
            }
        }
    }
}

pub async fn run(mut ws: WebSocketStream<Socket>, registry: Arc<Registry>, params: HocuspocusParams) {
    let HocuspocusParams { link, sessions, authenticate, anonymous, next_conn, now_unix, settings } = params;
    let Link { conn, expires_in: _, permit, limiter, outbox, sender } = link;
    let clock = Clock::start(settings.session.ping_interval.min(TICK_INTERVAL_MAX), None);
    tracing::debug!(conn = conn.get(), "hocuspocus: connection opened");
    let peer = Peer {
        conn,
        user: "-".into(),
        doc: None,
        expires_in: None,
        permit: &permit,
        limiter: &limiter,
        idle_timeout: settings.session.idle_timeout,
        sessions: Some(&sessions),
    };
    let proto = Hocuspocus {
        conn,
        registry,
        sender,
        limiter: limiter.clone(),
        permits: HashMap::new(),
        docs: HashMap::new(),
        pending: HashMap::new(),
        pending_bytes: 0,
        pending_frames: 0,
        pings: false,
        authenticate,
        anonymous,
        next_conn,
        now_unix,
        settings,
    };
    serve(&mut ws, &outbox, peer, clock, proto, None).await;
    tracing::debug!(conn = conn.get(), "hocuspocus: connection closed");
}
