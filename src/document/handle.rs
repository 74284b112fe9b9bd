//! How the rest of the server talks to a document actor: its `DocHandle` (a bounded mailbox
//! of `DocMsg`), the state an attachment shares with it for leaving from a `Drop`, its
//! settings, and `Lifecycle`, the little the actor asks of whoever keeps the live documents
//! (the registry), so that the actor needs no registry type.
//!
//! Plain types; no task is spawned here (`actor` does that).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, Notify};

use super::ot::{OtRequest, OtSettings};
use super::query::DocQuery;
use crate::docname::DocName;
use crate::outbox::OutboxSender;
use crate::presence::ConnId;
use crate::protocol::{Checked, Inbound};

/// Messages queued for one document; the bound back-pressures sessions, not the actor.
const MAILBOX_MESSAGES_MAX: usize = 1024;

/// Tunables of every document, from `Config`.
#[derive(Debug, Clone)]
pub struct DocSettings {
    /// Identity binding (auth on): a client id belongs to the first user who wrote with it.
    pub bind_client_ids: bool,
    pub snapshot_updates: u64,
    pub snapshot_bytes: u64,
    pub awareness_timeout: Duration,
    /// Client ids one connection may announce in awareness (a page normally has one).
    pub awareness_clients_max: usize,
    pub ot: OtSettings,
}

pub enum DocMsg {
    /// A connection joins; the actor sends it SyncStep1 and the current awareness states.
    Join { conn: ConnId, outbox: OutboxSender, origin: Arc<str> },
    /// A message from a connection; `user` is its authenticated user (the log's origin).
    Inbound { conn: ConnId, user: Arc<str>, msg: Inbound },
    /// An update from a Hocuspocus connection, with the SyncStatus frame that acknowledges
    /// it: sent only once the update is committed (or found to hold nothing new, behind
    /// every commit issued before it); never if it is refused or never applied.
    UpdateAcked { conn: ConnId, user: Arc<str>, update: Checked, ack: Bytes },
    /// A Hocuspocus Stateless body, relayed to the document's other Hocuspocus connections.
    Stateless { conn: ConnId, body: Bytes },
    /// A request of an OT client (ShareDB connection or REST) about one root text.
    Ot(OtRequest),
    /// An operator request (REST): state, presence, a posted update, deletion.
    Query(DocQuery),
    /// Commit what is pending, close every connection with 1001 and stop.
    Shutdown,
}

/// State shared between the actor and its attachments, outside the mailbox so that a
/// connection can leave from a synchronous `Drop` without waiting.
#[derive(Debug, Default)]
pub(crate) struct DocShared {
    pub(crate) left: Mutex<Vec<ConnId>>,
    pub(crate) wake: Notify,
}

#[derive(Clone, Debug)]
pub struct DocHandle {
    tx: mpsc::Sender<DocMsg>,
    pub(crate) shared: Arc<DocShared>,
}

#[derive(Debug, thiserror::Error)]
#[error("document actor has stopped")]
pub struct DocGone;

impl DocHandle {
    pub async fn send(&self, msg: DocMsg) -> Result<(), DocGone> {
        self.tx.send(msg).await.map_err(|_| DocGone)
    }

    /// Whether the actor has stopped (it failed, or unloaded after its last attachment).
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }

    /// As `send`, handing the message back if the actor has stopped (to retry elsewhere).
    pub async fn try_deliver(&self, msg: DocMsg) -> Result<(), DocMsg> {
        self.tx.send(msg).await.map_err(|e| e.0)
    }

    /// A handle and the mailbox its actor reads.
    pub(crate) fn channel() -> (DocHandle, mpsc::Receiver<DocMsg>) {
        let (tx, rx) = mpsc::channel(MAILBOX_MESSAGES_MAX);
        (DocHandle { tx, shared: Arc::new(DocShared::default()) }, rx)
    }
}

/// What a document actor asks of the registry that started it, by name and generation (a
/// later actor of the same name has a higher one). Implemented by `registry::Registry`.
pub(crate) trait Lifecycle: Send + Sync {
    /// Removes the actor's entry whatever its attachments (it failed, shut down or was
    /// deleted).
    fn remove(&self, name: &DocName, generation: u64);
    /// Whether anything (a connection, an OT session, a REST request) holds the document.
    fn is_attached(&self, name: &DocName, generation: u64) -> bool;
    /// Removes the entry if nobody is attached; `true` if it did (the actor then stops).
    fn try_unload(&self, name: &DocName, generation: u64) -> bool;
    /// A server-wide event for `GET /api/events`.
    fn server_event(&self, kind: &'static str, data: serde_json::Value);
}
