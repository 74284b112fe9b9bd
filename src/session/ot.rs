//! One ShareDB connection at `/api/ot`: JSON text frames in, requests forwarded to the
//! document actors of the collections they name, replies and subscribed ops written back
//! from one outbox (so an ack never overtakes an op its client must see first).
//!
//! The `Protocol` the shared loop (`session`) runs for an OT connection; the wire, the
//! deltas and the presence channels are `crate::ot`. Ordinary errors (a bad op, a version
//! too old) are error replies and the connection stays open, as with ShareDB; only the
//! loop's refusals (1001, 1003, 1008, 1009, 4401, 4408) close it.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use super::{serve, Clock, Link, Peer, Protocol, Sessions};

use crate::auth::{Access, Identity};
use crate::docname::DocName;
use crate::document::{Attachment, Registry};
use crate::document::{DocMsg, OtKind, OtReplyTo, OtRequest};
use crate::metrics::METRICS;
use crate::ot::delta::{Delta, DeltaLimits};
use crate::ot::error::OtError;
use crate::ot::presence::{channel_documents, Hub, IDS_PER_CHANNEL_MAX};
use crate::ot::sharedb::{self, OpBody, Presence, Request};
use crate::outbox::{OutboxPeer, Socket};
use crate::presence::ConnId;
use crate::protocol::CloseReason;

/// Per-connection settings, from `Config`.
#[derive(Debug, Clone)]
pub struct OtSessionSettings {
    pub outbound_queue_bytes_max: usize,
    pub ping_interval: Duration,
    pub idle_timeout: Duration,
    pub op_limits: DeltaLimits,
    /// Documents one connection may have open at once (and presence channels).
    pub docs_max: usize,
    /// Largest presence value (`p`, as JSON) accepted; the awareness-state bound.
    pub presence_bytes_max: usize,
}

pub struct OtSessionParams {
    /// Its outbox takes text frames.
    pub link: Link,
    pub sessions: Arc<Sessions>,
    pub identity: Identity,
    pub settings: OtSessionSettings,
    /// The server's presence channels (`ot::presence`).
    pub presence: Arc<Hub<OutboxPeer>>,
}

struct Session {
    conn: ConnId,
    identity: Identity,
    /// The client id: the `src` of this connection's ops.
    src: Arc<str>,
    /// The id this connection was given; `src` differs after a handshake that handed back
    /// an earlier one (a reconnecting client).
    own_id: Arc<str>,
    registry: Arc<Registry>,
    docs: HashMap<DocName, Attachment>,
    peer: OutboxPeer,
    settings: OtSessionSettings,
    presence: Arc<Hub<OutboxPeer>>,
    /// Presence channels this connection is subscribed to.
    subscribed: HashSet<Arc<str>>,
    /// What it takes to withdraw each presence this connection has shown, per channel and
    /// presence id: the last message with `p` set to null (its value is not kept). Sent to
    /// the others when the connection unsubscribes or ends.
    sent: HashMap<Arc<str>, HashMap<String, Presence>>,
}

impl Protocol for Session {
    const TEXT: bool = true;
    const CLOSING: &'static str = "closing ot connection";
    const CONNECTION: &'static str = "an OT connection";
    const ERROR: &'static str = "ot connection error";
    type Kept = ();

    /// Ordinary errors are error replies: the connection stays open.
    async fn on_frame(&mut self, frame: Message) -> Option<CloseReason> {
        if let Message::Text(text) = frame {
            self.handle_frame(text.as_str()).await;
        }
        None
    }

    /// Before the connection goes: out of every channel, and its presences withdrawn.
    async fn leave(&mut self) {
        for ch in std::mem::take(&mut self.subscribed) {
            self.presence.unsubscribe(&ch, self.conn);
        }
        let channels: Vec<Arc<str>> = self.sent.keys().cloned().collect();
        for ch in channels {
            self.withdraw(&ch).await;
        }
    }

    /// Drops the attachments.
    fn detach(self) {}
}

pub async fn run(mut ws: WebSocketStream<Socket>, registry: Arc<Registry>, params: OtSessionParams) {
    let OtSessionParams { link, sessions, identity, settings, presence } = params;
    let Link { conn, expires_in, permit, limiter, outbox, sender } = link;
    let own_id: Arc<str> = client_id(conn).into();
    let user = identity.user.clone();
    let clock = Clock::start(settings.ping_interval, expires_in);
    let peer = Peer {
        conn,
        user: user.clone(),
        doc: None,
        expires_in,
        permit: &permit,
        limiter: &limiter,
        idle_timeout: settings.idle_timeout,
        sessions: Some(&sessions),
    };
    let session = Session {
        conn,
        src: own_id.clone(),
        own_id,
        identity,
        registry,
        docs: HashMap::new(),
        peer: sender.peer(),
        settings,
        presence,
        subscribed: HashSet::new(),
        sent: HashMap::new(),
    };
    tracing::debug!(conn = conn.get(), user = %user, "ot connection opened");
    serve(&mut ws, &outbox, peer, clock, session, None).await;
    drop(sender);
    tracing::debug!(conn = conn.get(), "ot connection closed");
}

/// A client id ShareDB clients accept (a string) and that never collides across
/// connections of one server run, nor (with the time part) across restarts.
fn client_id(conn: ConnId) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    format!("{:x}{:x}", nanos & 0xffff_ffff_ffff, conn.get())
}

impl Session {
    async fn handle_frame(&mut self, frame: &str) {
        let parsed = match sharedb::parse(frame) {
            Ok(p) => p,
            Err(reply) => {
                METRICS.refused("ERR_MESSAGE_BADLY_FORMED");
                tracing::info!(conn = self.conn.get(), user = %self.identity.user, "ot: badly formed message");
                self.reply(reply);
                return;
            }
        };
        for request in parsed.requests {
            self.handle(request, &parsed.echo).await;
        }
    }

    fn reply(&self, frame: String) {
        let _ = self.peer.send(Bytes::from(frame));
    }

    async fn handle(&mut self, request: Request, echo: &Value) {
        match request {
            Request::Handshake { id } => {
                // A reconnecting client hands back its previous id, so that the ops it
                // re-sends keep their `src` (ShareDB's agent does the same).
                if let Some(id) = id.filter(|id| sharedb::valid_src(id)) {
                    self.src = id.into();
                    for ch in &self.subscribed {
                        self.presence.rename(ch, self.conn, &self.src);
                    }
                }
                self.reply(sharedb::handshake(&self.src));
            }
            Request::Ping => self.reply(sharedb::pong()),
            Request::Fetch { c, d, v } => self.forward(&c, &d, "f", echo, OtKind::Fetch { from: v }).await,
            Request::Subscribe { c, d, v } => {
                let kind = OtKind::Subscribe { from: v, src: self.src.clone() };
                self.forward(&c, &d, "s", echo, kind).await
            }
            Request::Unsubscribe { c, d } => self.forward(&c, &d, "u", echo, OtKind::Unsubscribe).await,
            Request::PresenceSubscribe { ch, seq } => {
                let ch: Arc<str> = ch.into();
                if let Err(e) = self.presence_allowed(&ch, !self.has_channel(&ch)) {
                    return self.reply(sharedb::error_reply(echo.clone(), &e));
                }
                self.subscribed.insert(ch.clone());
                self.presence.subscribe(&ch, self.conn, &self.src, self.peer.clone());
                self.reply(sharedb::presence_subscription_reply("ps", &ch, seq));
                // As sharedb's agent, whose request carries the connection's own id: a client
                // that reconnected (and handed back its old id) is asked to resend as well, so
                // the others see its cursor again.
                if self.own_id != self.src {
                    self.reply(sharedb::presence_request(&ch));
                }
            }
            Request::PresenceUnsubscribe { ch, seq } => {
                if self.subscribed.remove(ch.as_str()) {
                    self.presence.unsubscribe(&ch, self.conn);
                }
                self.withdraw(&ch).await;
                self.reply(sharedb::presence_subscription_reply("pu", &ch, seq));
            }
            Request::PresenceRequest { ch } => match self.presence_allowed(&ch, false) {
                Ok(()) => self.presence.request(&ch, &self.src),
                Err(e) => self.reply(sharedb::error_reply(echo.clone(), &e)),
            },
            Request::Presence(msg) => {
                if let Err(e) = self.check_presence(&msg) {
                    METRICS.refused(e.code());
                    tracing::info!(conn = self.conn.get(), user = %self.identity.user, channel = %msg.ch, code = e.code(), error = %e, "presence refused");
                    return self.reply(sharedb::error_reply(echo.clone(), &e));
                }
                let channel = self.sent.entry(msg.ch.as_str().into()).or_default();
                if msg.p.is_null() {
                    channel.remove(&msg.id);
                    if channel.is_empty() {
                        self.sent.remove(msg.ch.as_str());
                    }
                } else {
                    channel.insert(msg.id.clone(), Presence { p: Value::Null, ..msg.clone() });
                }
                self.send_presence(msg, echo).await;
            }
            Request::Op { c, d, v, src, seq, body } => {
                let op = match body {
                    OpBody::Edit(op) => Delta::from_json(&op, &self.settings.op_limits).map_err(OtError::from),
                    OpBody::Create | OpBody::Delete => Err(OtError::CreateOrDelete),
                };
                let op = match op {
                    Ok(op) => op,
                    Err(e) => {
                        tracing::info!(conn = self.conn.get(), user = %self.identity.user, doc = %c, text = %d, code = e.code(), error = %e, "op refused");
                        self.reply(sharedb::error_reply(echo.clone(), &e));
                        return;
                    }
                };
                let src = src.map(Arc::from).unwrap_or_else(|| self.src.clone());
                let writable = self.identity.access(&c) == Some(Access::Write);
                self.forward(&c, &d, "op", echo, OtKind::Submit { v, src, seq, op, writable }).await
            }
        }
    }

    /// A channel is open to this connection if it has a grant on every document the channel
    /// could name (`ot::presence`). `new` counts it against the per-connection bound.
    fn presence_allowed(&self, ch: &str, new: bool) -> Result<(), OtError> {
        let mut docs = channel_documents(ch).filter(|d| DocName::new(d).is_ok()).peekable();
        if docs.peek().is_none() {
            return Err(OtError::BadMessage(format!(
                "presence channel '{ch}' names no document (expected 'document.text')"
            )));
        }
        if let Some(doc) = docs.find(|d| self.identity.access(d).is_none()) {
            tracing::warn!(conn = self.conn.get(), user = %self.identity.user, doc, channel = ch, "ot: no grant for the presence channel");
            return Err(OtError::Forbidden);
        }
        let open = self.subscribed.len() + self.sent.keys().filter(|k| !self.subscribed.contains(*k)).count();
        if new && open >= self.settings.docs_max {
            return Err(OtError::BadMessage(format!(
                "too many presence channels on one connection (max {})",
                self.settings.docs_max
            )));
        }
        Ok(())
    }

    /// Doc presence goes through its document, which moves it to the text's current version
    /// (`document::actor::ot`) and acknowledges it; other channels' presence is relayed as sent and
    /// echoed here, as ShareDB replies to a presence.
    async fn send_presence(&mut self, msg: Presence, echo: &Value) {
        if let (Some(c), Some(d)) = (msg.c.clone(), msg.d.clone()) {
            let kind = OtKind::Presence { msg, src: self.src.clone(), hub: self.presence.clone(), ack: true };
            return self.forward(&c, &d, "p", echo, kind).await;
        }
        let frame = self.relay_as_sent(&msg);
        let _ = self.peer.send(frame);
    }

    /// Relays `msg` to the channel's other subscribers without a document; returns the frame.
    fn relay_as_sent(&self, msg: &Presence) -> Bytes {
        let frame = Bytes::from(sharedb::presence(msg, &self.src));
        self.presence.broadcast(&msg.ch, &self.src, frame.clone());
        frame
    }

    /// Whether this connection already uses channel `ch` (subscribed, or shown presence on it).
    fn has_channel(&self, ch: &str) -> bool {
        self.subscribed.contains(ch) || self.sent.contains_key(ch)
    }

    /// The request `forward` and withdrawals send to a document actor.
    fn ot_request(&self, text: &DocName, action: &'static str, echo: Value, kind: OtKind) -> OtRequest {
        let reply = OtReplyTo::Wire { outbox: self.peer.clone(), action, echo };
        OtRequest { conn: self.conn, user: self.identity.user.clone(), text: text.as_arc().clone(), kind, reply }
    }

    fn check_presence(&self, msg: &Presence) -> Result<(), OtError> {
        match (&msg.c, &msg.d) {
            (None, None) => {}
            (Some(c), Some(d)) if msg.ch == format!("{c}.{d}") => {}
            _ => return Err(OtError::BadMessage("presence channel is not 'c.d'".into())),
        }
        if let Some(t) = msg.t.as_deref().filter(|t| *t != sharedb::RICH_TEXT_URI) {
            return Err(OtError::PresenceType(t.to_owned()));
        }
        let bytes = msg.p.to_string().len();
        if bytes > self.settings.presence_bytes_max {
            return Err(OtError::BadMessage(format!(
                "presence value too big ({bytes} bytes, max {})",
                self.settings.presence_bytes_max
            )));
        }
        self.presence_allowed(&msg.ch, !self.has_channel(&msg.ch))?;
        let known = self.sent.get(msg.ch.as_str());
        if !msg.p.is_null() && known.is_some_and(|ids| !ids.contains_key(&msg.id) && ids.len() >= IDS_PER_CHANNEL_MAX) {
            return Err(OtError::BadMessage(format!(
                "too many presence ids on one channel (max {IDS_PER_CHANNEL_MAX})"
            )));
        }
        Ok(())
    }

    /// Tells the channel's other subscribers that this connection's presences there are gone.
    /// A doc presence is withdrawn through its document (at the text's current version), but
    /// only one this session is attached to: a withdrawal never loads (or re-creates) a
    /// document and never answers with an error. Otherwise it is relayed as kept.
    async fn withdraw(&mut self, ch: &str) {
        for (id, msg) in self.sent.remove(ch).into_iter().flatten() {
            let target = match (&msg.c, &msg.d) {
                (Some(c), Some(d)) => DocName::new(c)
                    .ok()
                    .and_then(|doc| self.docs.get(&doc))
                    .map(|a| a.handle.clone())
                    .zip(DocName::new(d).ok()),
                _ => None,
            };
            if let Some((handle, text)) = target {
                let echo = serde_json::json!({"a": "p", "ch": ch, "id": id});
                let kind = OtKind::Presence {
                    msg: msg.clone(),
                    src: self.src.clone(),
                    hub: self.presence.clone(),
                    ack: false,
                };
                if handle.try_deliver(DocMsg::Ot(self.ot_request(&text, "p", echo, kind))).await.is_ok() {
                    continue;
                }
            }
            self.relay_as_sent(&msg);
        }
    }

    /// Sends a request to the document `c`; its actor replies through this connection's outbox.
    async fn forward(&mut self, c: &str, d: &str, action: &'static str, echo: &Value, kind: OtKind) {
        let error_echo = || {
            if action == "op" || action == "p" {
                echo.clone()
            } else {
                serde_json::json!({"a": action, "c": c, "d": d})
            }
        };
        let (doc, text) = match (DocName::new(c), DocName::new(d)) {
            (Ok(doc), Ok(text)) => (doc, text),
            (Err(e), _) | (_, Err(e)) => {
                return self.reply(sharedb::error_reply(error_echo(), &OtError::BadMessage(e.to_string())));
            }
        };
        if self.identity.access(doc.as_str()).is_none() {
            tracing::warn!(conn = self.conn.get(), user = %self.identity.user, doc = %doc, "ot: no grant for the document");
            return self.reply(sharedb::error_reply(error_echo(), &OtError::Forbidden));
        }
        if !self.docs.contains_key(&doc) {
            if self.docs.len() >= self.settings.docs_max {
                let e = OtError::BadMessage(format!(
                    "too many documents open on one connection (max {})",
                    self.settings.docs_max
                ));
                return self.reply(sharedb::error_reply(error_echo(), &e));
            }
            match self.registry.attach(&doc, self.conn) {
                Ok(a) => {
                    self.docs.insert(doc.clone(), a);
                }
                // Stopping: unanswered (see `unavailable`).
                Err(_) => return,
            }
        }
        let mut request = self.ot_request(&text, action, error_echo(), kind);
        // An actor that failed (a commit error) has stopped; a fresh attachment loads the
        // document again from the store. One retry: a second failure is reported.
        for attempt in 0..2 {
            let handle = self.docs[&doc].handle.clone();
            match handle.try_deliver(DocMsg::Ot(request)).await {
                Ok(()) => return,
                Err(DocMsg::Ot(back)) if attempt == 0 => {
                    request = back;
                    self.docs.remove(&doc);
                    match self.registry.attach(&doc, self.conn) {
                        Ok(a) => {
                            self.docs.insert(doc.clone(), a);
                        }
                        Err(_) => break,
                    }
                }
                Err(_) => break,
            }
        }
        self.docs.remove(&doc);
        self.unavailable(error_echo());
    }

    /// The document could not take a request. While the server stops, that is left
    /// unanswered: the stock client answers any op error but ERR_OP_SUBMIT_REJECTED with a
    /// hard rollback that throws away the op and every pending one, whereas an unanswered op
    /// is sent again after it reconnects (the socket is about to close with 1001).
    fn unavailable(&mut self, echo: serde_json::Value) {
        if self.registry.is_shutting_down() {
            tracing::debug!(conn = self.conn.get(), "ot: request left unanswered, the server is stopping");
            return;
        }
        self.reply(sharedb::error_reply(echo, &OtError::Unavailable));
    }
}

impl Drop for Session {
    /// A session that did not `leave()` (its task panicked) still leaves every channel, and
    /// its cursors are withdrawn as sent (possibly at an old version: better than a ghost).
    fn drop(&mut self) {
        for ch in std::mem::take(&mut self.subscribed) {
            self.presence.unsubscribe(&ch, self.conn);
        }
        for msg in std::mem::take(&mut self.sent).into_values().flat_map(HashMap::into_values) {
            self.relay_as_sent(&msg);
        }
    }
}
