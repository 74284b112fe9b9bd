//! One Yjs WebSocket connection to a document: binary frames decoded with `protocol` and
//! forwarded to the document actor, which writes to the connection through its outbox.
//!
//! The `Protocol` the shared loop (`session`) runs for a Yjs connection. Its own refusals:
//! malformed or hostile messages (1007, 1008), oversized awareness states (1008), a document
//! gone (1011). Updates from read-only connections are dropped, not refused.

use std::sync::Arc;

use yrs::sync::AwarenessUpdate;

use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use super::{close_with, serve, Clock, Link, Peer, Protocol, SessionSettings};
use crate::auth::Access;
use crate::docname::DocName;
use crate::document::DocMsg;
use crate::document::{Attachment, Registry};
use crate::outbox::Socket;
use crate::presence::ConnId;
use crate::protocol::{self, close, CloseReason, Inbound};

pub struct SessionParams {
    pub link: Link,
    pub doc: DocName,
    /// Who writes through this connection (the `origin` column of the log).
    pub user: Arc<str>,
    pub access: Access,
    pub settings: SessionSettings,
}

/// A Yjs connection's side of the loop: its attachment to the document.
struct Yjs {
    conn: ConnId,
    doc: DocName,
    user: Arc<str>,
    access: Access,
    settings: SessionSettings,
    attachment: Attachment,
    dropped_updates: u64,
}

impl Protocol for Yjs {
    const TEXT: bool = false;
    const CLOSING: &'static str = "closing";
    const CONNECTION: &'static str = "a Yjs connection";
    const ERROR: &'static str = "connection error";
    /// How many updates of a read-only connection were dropped.
    type Kept = u64;

    async fn on_frame(&mut self, frame: Message) -> Option<CloseReason> {
        let Message::Binary(frame) = frame else { return None };
        let (conn, doc, user) = (self.conn, &self.doc, &self.user);
        match protocol::decode_frame_with(&frame, &self.settings.frame_limits) {
            Ok(Inbound::Auth | Inbound::Unknown(_)) => None,
            // Read grants sync and share awareness; their updates are dropped (not applied,
            // stored or relayed), counted, and logged once.
            Ok(Inbound::SyncStep2(c) | Inbound::Update(c)) if self.access == Access::Read => {
                if !c.summary.is_empty() {
                    self.dropped_updates += 1;
                    if self.dropped_updates == 1 {
                        tracing::warn!(conn = conn.get(), doc = %doc, user = %user, "dropping updates from a read-only connection");
                    }
                }
                None
            }
            Ok(Inbound::Awareness(update)) if !awareness_allowed(&update, &self.settings) => {
                tracing::warn!(conn = conn.get(), doc = %doc, user = %user, "refused: awareness state over its size limit (1008)");
                Some(CloseReason::new(close::POLICY_VIOLATION, "awareness too large"))
            }
            Ok(msg) => {
                let msg = DocMsg::Inbound { conn, user: user.clone(), msg };
                self.attachment.handle.send(msg).await.err().map(|_| gone())
            }
            Err(e) => {
                tracing::warn!(conn = conn.get(), doc = %doc, user = %user, error = %e, bytes = frame.len(), code = e.close_reason().code, "refused: bad message");
                Some(e.close_reason())
            }
        }
    }

    /// Dropping the attachment tells the actor the connection left (its awareness states
    /// are removed).
    fn detach(self) -> u64 {
        self.dropped_updates
    }
}

pub async fn run(mut ws: WebSocketStream<Socket>, registry: Arc<Registry>, params: SessionParams) {
    let SessionParams { link, doc, user, access, settings } = params;
    let Link { conn, expires_in, permit, limiter, outbox, sender } = link;
    let clock = Clock::start(settings.ping_interval, expires_in);
    let attachment = match registry.attach(&doc, conn) {
        Ok(a) => a,
        Err(_) => {
            close_with(&mut ws, CloseReason::new(close::GOING_AWAY, "server shutting down")).await;
            return;
        }
    };
    tracing::debug!(conn = conn.get(), doc = %doc, user = %user, ?access, "connection opened");
    registry.events.emit("user_joined", serde_json::json!({ "user": &*user, "doc": doc.as_str(), "conn": conn.get() }));
    let join = DocMsg::Join { conn, outbox: sender, origin: user.clone() };
    let refusal = attachment.handle.send(join).await.err().map(|_| gone());
    let peer = Peer {
        conn,
        user: user.clone(),
        doc: Some(doc.clone()),
        expires_in,
        permit: &permit,
        limiter: &limiter,
        idle_timeout: settings.idle_timeout,
        sessions: None,
    };
    let yjs = Yjs { conn, doc: doc.clone(), user: user.clone(), access, settings, attachment, dropped_updates: 0 };
    let dropped_updates = serve(&mut ws, &outbox, peer, clock, yjs, refusal).await;
    if dropped_updates > 0 {
        tracing::info!(conn = conn.get(), doc = %doc, user = %user, dropped_updates, "read-only connection closed");
    }
    registry.events.emit("user_left", serde_json::json!({ "user": &*user, "doc": doc.as_str(), "conn": conn.get() }));
    tracing::debug!(conn = conn.get(), doc = %doc, "connection closed");
}

pub(super) fn gone() -> CloseReason {
    CloseReason::new(close::INTERNAL_ERROR, "document unavailable")
}

/// The awareness cap a session can check alone: each state's JSON size. How many client ids
/// a connection announces is counted by the document, which knows whose states are news.
pub(super) fn awareness_allowed(update: &AwarenessUpdate, settings: &SessionSettings) -> bool {
    update.clients.values().all(|e| e.json.len() <= settings.awareness_state_bytes_max)
}
