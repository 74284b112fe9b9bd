//! The document actor: one task per live document, owning its `yrs::Doc` (UTF-16 offsets, as
//! JavaScript clients count), its awareness table and its connections.
//!
//! Sessions talk to it through a `DocHandle` (bounded mailbox); it answers through each
//! connection's `OutboxSender` and never waits on a connection. The store is reached through
//! `Store`. The registry created it and is told when it unloads.
//!
//! **Persist before relay.** An update is applied to the in-memory doc and the delta of that
//! transaction is queued to the store under the next commit ticket. The relay frame goes with
//! it when nothing is parked: the store thread writes it to the connections right after the
//! commit (no wakeup of the actor). Otherwise it is parked behind the ticket like every other
//! frame. Tickets are acknowledged in order in the shared `Commits`; the actor is woken only
//! for the ticket something is parked behind (or when it waits to unload, or on a failure),
//! and each acknowledgement releases the frames parked behind it.
//! Anything else that reveals document state (SyncStep1's state vector, SyncStep2's diff) is
//! computed at once but parked behind every commit issued so far, so no connection ever sees
//! an update that is not committed. If a commit fails, nothing parked is sent: every
//! connection is closed with 1011 and the in-memory doc is dropped, so the next join reloads
//! what is actually stored.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Weak};
use std::time::Instant;

use bytes::Bytes;
use futures::FutureExt;
use tokio::sync::mpsc;
use yrs::updates::decoder::Decode;
use yrs::{Doc, OffsetKind, Options, ReadTxn, StateVector, Transact, Update};

use crate::docname::DocName;
use crate::metrics::METRICS;
use crate::outbox::{OutboxSender, SendError};
use crate::presence::{self, ConnId, Presence};
use crate::protocol::{self, close, Checked, CloseReason, Inbound};
use crate::store::{Commits, Record, Relay, Store, StoreError};
use std::sync::atomic::Ordering::Relaxed;

use super::events::{self, EventsState, Subscription};
use super::handle::{DocHandle, DocMsg, DocSettings, DocShared, Lifecycle};
use super::ot::{OtState, OT_ORIGIN};
use super::parking::Parking;

mod ot;
mod query;

/// A document unloading (or shutting down) with at least this many updates logged since its
/// last snapshot writes one, so that its next load replays no tail.
const SNAPSHOT_ON_UNLOAD_UPDATES_MIN: u64 = 16;

/// Updates one connection may have waiting for missing dependencies, and their bytes.
const HELD_UPDATES_MAX: usize = 256;
const HELD_BYTES_MAX: usize = 4 * 1024 * 1024;

struct Conn {
    outbox: OutboxSender,
    origin: Arc<str>,
    /// Client ids this connection has shown it speaks for: announced in its awareness or
    /// written with items. Only these may extend a known client's clocks with GC ranges.
    own: HashSet<u64>,
    /// Client ids whose awareness state this connection set (not the peers' states the
    /// stock client re-broadcasts); bounded by `awareness_clients_max`.
    announced: HashSet<u64>,
    /// Updates that cannot apply yet (they build on clocks the document does not have),
    /// kept out of yrs until their dependencies arrive; see `apply_update`.
    held: VecDeque<Held>,
    held_bytes: usize,
}

/// An update waiting for its dependencies, and the SyncStatus acknowledging it (Hocuspocus).
struct Held {
    update: Checked,
    ack: Option<Bytes>,
}

/// A frame to send once every commit up to a ticket is durable.
enum Parked {
    Broadcast(Bytes),
    To(ConnId, Bytes),
    /// Frames for OT connections (replies, acks, ops of subscribed texts).
    Peers(Vec<(crate::outbox::OutboxPeer, Bytes)>),
    /// A new event stream reader.
    Subscribe(Option<(u64, u64)>, tokio::sync::oneshot::Sender<Subscription>),
    /// An event for the document's event streams.
    Event(events::Event),
    /// Any deferred answer (operator queries, REST OT requests).
    Call(Box<dyn FnOnce() + Send>),
}

/// Why the actor loop ended.
enum Exit {
    /// Unloaded or shut down cleanly; the registry entry is already gone.
    Done,
    /// Failed; connections must be closed with 1011 and the entry removed.
    Failed(&'static str),
}

pub(crate) struct DocActor {
    name: DocName,
    generation: u64,
    registry: Weak<dyn Lifecycle>,
    store: Store,
    settings: DocSettings,
    doc: Doc,
    presence: Presence,
    /// Client id → user who first wrote with it (identity binding), as stored.
    owners: HashMap<u64, Arc<str>>,
    conns: HashMap<ConnId, Conn>,
    shared: Arc<DocShared>,
    last_seq: u64,
    since_snapshot_updates: u64,
    since_snapshot_bytes: u64,
    /// Commit tickets and what waits for them (`commits` has the store's current figure).
    parking: Parking<Parked>,
    commits: Arc<Commits>,
    shutting_down: bool,
    /// Set once the document was deleted: the actor stops.
    deleted: bool,
    /// Set by a failed commit: the actor stops (connections are already closed).
    commit_failed: bool,
    ot: OtState,
    events: EventsState,
    locks: crate::locks::Locks,
    /// This document's share of the awareness gauge.
    presence_reported: usize,
}

impl DocActor {
    /// Spawns the actor; it loads the document before reading its mailbox.
    pub(crate) fn spawn(
        name: DocName,
        generation: u64,
        registry: Weak<dyn Lifecycle>,
        store: Store,
        settings: DocSettings,
    ) -> DocHandle {
        let (handle, rx) = DocHandle::channel();
        let shared = handle.shared.clone();
        let actor = DocActor {
            name,
            generation,
            registry,
            store,
            settings,
            doc: Doc::with_options(Options { offset_kind: OffsetKind::Utf16, ..Options::default() }),
            presence: Presence::default(),
            owners: HashMap::new(),
            conns: HashMap::new(),
            shared: shared.clone(),
            last_seq: 0,
            since_snapshot_updates: 0,
            since_snapshot_bytes: 0,
            parking: Parking::default(),
            commits: Arc::new(Commits::default()),
            shutting_down: false,
            deleted: false,
            commit_failed: false,
            ot: OtState::default(),
            events: EventsState::default(),
            locks: crate::locks::Locks::default(),
            presence_reported: 0,
        };
        // A root span: the actor outlives the session that happened to load it, and its log
        // lines must not carry that connection's conn and user.
        let span = tracing::info_span!(parent: None, "document", doc = %actor.name);
        tokio::spawn(tracing::Instrument::instrument(actor.run(rx), span));
        handle
    }

    async fn run(mut self, mut rx: mpsc::Receiver<DocMsg>) {
        let name = self.name.clone();
        let generation = self.generation;
        let registry = self.registry.clone();
        // A panic inside yrs must not take the process down: the document's connections are
        // closed (their outbox senders drop, which closes with 1011) and the entry removed.
        let result = std::panic::AssertUnwindSafe(self.run_inner(&mut rx)).catch_unwind().await;
        let failed = match result {
            Ok(Exit::Done) => false,
            Ok(Exit::Failed(why)) => {
                tracing::error!(doc = %name, reason = why, "document closed after a failure");
                true
            }
            Err(_) => {
                tracing::error!(doc = %name, "document actor panicked; its connections are closed with 1011");
                true
            }
        };
        if failed {
            if let Some(registry) = registry.upgrade() {
                registry.remove(&name, generation);
            }
        }
        crate::metrics::Metrics::adjust(&METRICS.awareness_states, self.presence_reported, 0);
        // Joins still queued get their outbox dropped, i.e. closed with 1011.
        rx.close();
        while rx.try_recv().is_ok() {}
    }

    async fn run_inner(&mut self, rx: &mut mpsc::Receiver<DocMsg>) -> Exit {
        if let Err(e) = self.load().await {
            tracing::error!(doc = %self.name, error = %e, "loading the document failed");
            return Exit::Failed("load failed");
        }
        let mut expiry = tokio::time::interval(self.settings.awareness_timeout / 10);
        expiry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let shared = self.shared.clone();
        let commits = self.commits.clone();
        loop {
            // While commits are outstanding, a failure must wake the actor; a success only
            // when something waits on it (relays of committed updates need no wakeup: the
            // store thread writes them itself).
            let outstanding = self.refresh_committed() < self.parking.issued();
            let target = self.wake_target();
            tokio::select! {
                result = commits.reached(target), if outstanding => match result {
                    Ok(committed) => self.on_committed(committed),
                    Err(e) => self.on_commit_result(Err(e)),
                },
                msg = rx.recv() => match msg {
                    Some(msg) => self.handle(msg).await,
                    None => return Exit::Failed("mailbox closed"),
                },
                _ = shared.wake.notified() => {
                    // Messages a connection sent before it left are handled before its leave.
                    while let Ok(msg) = rx.try_recv() {
                        self.handle(msg).await;
                    }
                    self.handle_left();
                }
                _ = expiry.tick(), if self.presence.needs_expiry() || !self.locks.is_empty() => {
                    self.expire_locks().await;
                    if let Some(removed) = self.presence.expire(Instant::now(), self.settings.awareness_timeout) {
                        self.report_presence();
                        self.park_presence_leaves(&removed);
                        self.broadcast(protocol::encode_awareness(removed));
                    }
                }
            }
            // A failed commit (here or awaited inside a handler) ends the document.
            if self.commit_failed {
                return Exit::Failed("commit failed");
            }
            if self.deleted {
                if let Some(registry) = self.registry.upgrade() {
                    registry.remove(&self.name, self.generation);
                }
                return Exit::Done;
            }
            if self.refresh_committed() == self.parking.issued() {
                // The next load starts from a snapshot with no tail to replay (a cold load of
                // the 260k-keystroke trace: ~19 ms instead of ~25 ms with a 778-update tail).
                if (self.shutting_down || self.idle()) && self.since_snapshot_updates >= SNAPSHOT_ON_UNLOAD_UPDATES_MIN
                {
                    self.write_snapshot(self.last_seq).await;
                }
                if self.shutting_down {
                    self.close_all(CloseReason::new(close::GOING_AWAY, "server shutting down"));
                    if let Some(registry) = self.registry.upgrade() {
                        registry.remove(&self.name, self.generation);
                    }
                    return Exit::Done;
                }
                if self.conns.is_empty() && self.try_unload() {
                    return Exit::Done;
                }
            }
        }
    }

    async fn load(&mut self) -> Result<(), LoadError> {
        let started = Instant::now();
        let loaded = self.store.load(self.name.as_arc().clone()).await?;
        let tail_len = loaded.tail.len();
        {
            // One transaction for the snapshot and the whole tail: far cheaper than one each.
            let mut txn = self.doc.transact_mut();
            if let Some((_, data)) = &loaded.snapshot {
                txn.apply_update(Update::decode_v1(data)?)?;
            }
            for (_, data) in &loaded.tail {
                self.since_snapshot_bytes += data.len() as u64;
                txn.apply_update(Update::decode_v1(data)?)?;
            }
        }
        self.last_seq = loaded.last_seq;
        self.owners = loaded.owners.into_iter().map(|(client, user)| (client, user.into())).collect();
        // OT edits are written under this doc's own client id: nobody else may write with it.
        self.owners.entry(self.doc.client_id().get()).or_insert_with(|| OT_ORIGIN.into());
        self.ot_load(loaded.ot_texts);
        self.locks = crate::locks::Locks::from_stored(loaded.locks.into_iter().map(|(key, holder, expires_at_ms)| {
            crate::locks::Lock { key: key.into(), holder: holder.into(), expires_at_ms }
        }));
        self.since_snapshot_updates = tail_len as u64;
        tracing::debug!(
            doc = %self.name,
            seq = self.last_seq,
            snapshot = ?loaded.snapshot.as_ref().map(|(s, _)| *s),
            tail = tail_len,
            elapsed_us = started.elapsed().as_micros() as u64,
            "document loaded"
        );
        Ok(())
    }

    async fn handle(&mut self, msg: DocMsg) {
        match msg {
            DocMsg::Join { conn, outbox, origin } => {
                if self.shutting_down {
                    outbox.close(CloseReason::new(close::GOING_AWAY, "server shutting down"));
                    return;
                }
                self.conns.insert(
                    conn,
                    Conn {
                        outbox,
                        origin,
                        own: HashSet::new(),
                        announced: HashSet::new(),
                        held: VecDeque::new(),
                        held_bytes: 0,
                    },
                );
                // As the y-websocket server: SyncStep1 first, then who is here.
                let step1 = protocol::encode_sync_step1(&self.doc.transact().state_vector());
                self.park(Parked::To(conn, step1));
                if let Some(states) = self.presence.current() {
                    self.park(Parked::To(conn, protocol::encode_awareness(states)));
                }
            }
            DocMsg::Inbound { conn, user, msg } => self.handle_inbound(conn, user, msg).await,
            DocMsg::UpdateAcked { conn, user, update, ack } => {
                // Not applied while shutting down, so not acknowledged: the provider re-sends
                // it when it reconnects.
                if !self.shutting_down {
                    self.apply_update(conn, update, user, Some(ack)).await;
                }
            }
            DocMsg::Stateless { conn, body } => {
                // Stateless reveals no document state: it goes at once, to the document's
                // other Hocuspocus connections (a y-websocket client knows no type 5).
                let to: Vec<ConnId> = self
                    .conns
                    .iter()
                    .filter(|(id, c)| **id != conn && c.outbox.is_prefixed())
                    .map(|(id, _)| *id)
                    .collect();
                for id in to {
                    self.send_to(id, body.clone());
                }
            }
            DocMsg::Ot(req) => self.handle_ot(req).await,
            DocMsg::Query(query) => self.handle_query(query).await,
            DocMsg::Shutdown => self.shutting_down = true,
        }
    }

    async fn handle_inbound(&mut self, conn: ConnId, user: Arc<str>, msg: Inbound) {
        match msg {
            Inbound::SyncStep1(sv) => {
                if self.conns.contains_key(&conn) {
                    let diff = self.doc.transact().encode_state_as_update_v1(&sv);
                    self.park(Parked::To(conn, protocol::encode_sync_step2(diff)));
                }
            }
            Inbound::SyncStep2(update) | Inbound::Update(update) => {
                if self.shutting_down {
                    // Not applied, so not lost: the client re-sends it when it reconnects.
                    return;
                }
                // Updates of a connection that already left are still applied: edits are
                // never dropped for want of a reply address.
                self.apply_update(conn, update, user, None).await;
            }
            Inbound::Awareness(mut update) => {
                // Awareness of a connection that is gone would be owned by nobody.
                let Some(c) = self.conns.get(&conn) else { return };
                let origin = c.origin.clone();
                // Entries for client ids another user owns. The stock y-websocket client
                // re-broadcasts every awareness update it receives (its awareness `update`
                // handler has no origin filter), so a peer's state coming back to us is not
                // a forgery: it is no newer than ours, or a removal. Those are dropped here
                // (a removal is not this user's to make). A state the table would take, a
                // newer clock, is a forgery, and its sender is refused.
                let foreign: Vec<yrs::ClientID> =
                    update.clients.keys().filter(|id| self.owned_by_other(id.get(), &origin)).copied().collect();
                for id in foreign {
                    let entry = update.clients.remove(&id).expect("key listed above");
                    if !presence::is_removal(&entry) && self.presence.accepts(id, &entry) {
                        tracing::warn!(conn = conn.get(), doc = %self.name, user = %origin, client = id.get(), clock = entry.clock, "refused: awareness for another user's client id (1008)");
                        self.refuse(conn, CloseReason::new(close::POLICY_VIOLATION, "client-id"));
                        return;
                    }
                }
                // Identity binding covers awareness too (SPEC §4): the first user whose
                // connection announces a client id owns it for this document, as if it had
                // written with it; otherwise a client id that only ever showed presence could
                // be taken over by anyone with a higher clock. The claim is in `owners` at
                // once, so a forger is refused from the next message on, and it is stored
                // like an update's claim. The relay does not wait for that commit: awareness
                // reveals no document state.
                let claims: Vec<u64> = if self.settings.bind_client_ids {
                    update
                        .clients
                        .iter()
                        .filter(|(id, entry)| !presence::is_removal(entry) && !self.owners.contains_key(&id.get()))
                        .map(|(id, _)| id.get())
                        .collect()
                } else {
                    Vec::new()
                };
                // Only states that are news count as announced: a peer's state re-broadcast
                // by the stock client is never newer than the table's.
                let news =
                    update.clients.iter().filter(|(id, e)| !presence::is_removal(e) && self.presence.accepts(**id, e));
                let news: Vec<u64> = news.map(|(id, _)| id.get()).collect();
                if let Some(c) = self.conns.get_mut(&conn) {
                    c.own.extend(update.clients.keys().map(|id| id.get()));
                    c.announced.extend(news);
                    if c.announced.len() > self.settings.awareness_clients_max {
                        let (user, count) = (c.origin.clone(), c.announced.len());
                        tracing::warn!(conn = conn.get(), doc = %self.name, user = %user, count, max = self.settings.awareness_clients_max, "refused: awareness for too many client ids (1008)");
                        self.refuse(conn, CloseReason::new(close::POLICY_VIOLATION, "awareness too large"));
                        return;
                    }
                }
                if !claims.is_empty() {
                    for client in &claims {
                        self.owners.insert(*client, origin.clone());
                    }
                    if !self.issue(None, origin, claims, Vec::new()).await {
                        return;
                    }
                }
                let was_present: Vec<(u64, bool)> =
                    update.clients.keys().map(|c| (c.get(), self.presence.is_present(c.get()))).collect();
                if let Some(accepted) = self.presence.apply(conn, update, Instant::now()) {
                    if self.events_followed() {
                        for (client, entry) in &accepted.clients {
                            let before = was_present.iter().any(|(c, p)| *c == client.get() && *p);
                            self.park_presence_event(client.get(), before, &entry.json);
                        }
                    }
                    self.broadcast(protocol::encode_awareness(accepted));
                }
                self.report_presence();
            }
            Inbound::QueryAwareness => {
                if let Some(states) = self.presence.current() {
                    self.send_to(conn, protocol::encode_awareness(states));
                }
            }
            Inbound::Auth | Inbound::Unknown(_) => {}
        }
    }

    /// Applies an update, then any held update it makes applicable.
    ///
    /// yrs keeps updates with missing dependencies "pending", and in 0.28.1 that path is
    /// unsound (the fuzz target found a use-after-free in `BlockStore::split_block` there).
    /// So yrs only ever gets updates that apply completely; the others wait here, per
    /// connection and bounded. The stock client can legitimately send one: right after
    /// reconnecting it sends new local edits before its SyncStep2 carries the offline edits
    /// they build on. Held updates of a connection that ends are dropped: the client
    /// uploads everything the server lacks when it reconnects.
    ///
    /// `ack` (a Hocuspocus SyncStatus) is parked behind the update's own commit, so it
    /// leaves after it; a held update keeps its ack until it applies.
    async fn apply_update(&mut self, conn: ConnId, checked: Checked, origin: Arc<str>, ack: Option<Bytes>) {
        let mut next = Some((conn, checked, origin, ack));
        while let Some((conn, checked, origin, ack)) = next.take() {
            let sv = self.doc.transact().state_vector();
            if let Some((client, clock)) = checked.summary.first_missing_dependency(|c| sv.get(&yrs::ClientID::new(c)))
            {
                self.hold(conn, Held { update: checked, ack }, client, clock);
                return;
            }
            if !self.apply_ready(conn, checked, origin, &sv).await {
                return;
            }
            if let Some(ack) = ack {
                self.park(Parked::To(conn, ack));
            }
            next = self.take_ready_held();
        }
    }

    fn hold(&mut self, conn: ConnId, held: Held, client: u64, clock: u32) {
        let checked = &held.update;
        let Some(c) = self.conns.get_mut(&conn) else { return };
        if c.held.len() >= HELD_UPDATES_MAX || c.held_bytes + checked.bytes > HELD_BYTES_MAX {
            tracing::warn!(conn = conn.get(), doc = %self.name, user = %c.origin, client, clock, "refused: too many updates waiting for missing dependencies (1008)");
            self.refuse(conn, CloseReason::new(close::POLICY_VIOLATION, "missing dependencies"));
            return;
        }
        tracing::debug!(conn = conn.get(), doc = %self.name, client, clock, "holding an update until its dependencies arrive");
        c.held_bytes += checked.bytes;
        c.held.push_back(held);
    }

    /// The first held update (of any connection) that now applies completely.
    fn take_ready_held(&mut self) -> Option<(ConnId, Checked, Arc<str>, Option<Bytes>)> {
        if self.conns.values().all(|c| c.held.is_empty()) {
            return None;
        }
        let sv = self.doc.transact().state_vector();
        for (id, c) in self.conns.iter_mut().filter(|(_, c)| !c.held.is_empty()) {
            let ready = c
                .held
                .iter()
                .position(|h| h.update.summary.first_missing_dependency(|k| sv.get(&yrs::ClientID::new(k))).is_none());
            if let Some(i) = ready {
                let Held { update, ack } = c.held.remove(i).expect("index from position");
                c.held_bytes -= update.bytes;
                return Some((*id, update, c.origin.clone(), ack));
            }
        }
        None
    }

    /// Applies an update that applies completely; `false` if it was refused.
    /// `sv` is the doc's state vector before it.
    async fn apply_ready(&mut self, conn: ConnId, checked: Checked, origin: Arc<str>, sv: &StateVector) -> bool {
        let Checked { update, summary, .. } = checked;
        // Identity binding: new structs for a client id bound to another user are refused;
        // unbound client ids the update writes are claimed for this user with the update.
        let new_clients: Vec<u64> =
            summary.runs.iter().filter(|r| r.end > sv.get(&yrs::ClientID::new(r.client))).map(|r| r.client).collect();
        if let Some(client) = new_clients.iter().copied().find(|c| self.owned_by_other(*c, &origin)) {
            tracing::warn!(conn = conn.get(), doc = %self.name, user = %origin, client, "refused: update for another user's client id (1008)");
            self.refuse(conn, CloseReason::new(close::POLICY_VIOLATION, "client-id"));
            return false;
        }
        let claims: Vec<u64> = if self.settings.bind_client_ids {
            new_clients.into_iter().filter(|c| !self.owners.contains_key(c)).collect()
        } else {
            Vec::new()
        };
        if let Some(client) = self.squatted_client(conn, &summary, sv) {
            tracing::warn!(conn = conn.get(), doc = %self.name, client, "refused: GC range over another client's clocks (1008)");
            self.refuse(conn, CloseReason::new(close::POLICY_VIOLATION, "client-id squatting"));
            return false;
        }
        if let Some(c) = self.conns.get_mut(&conn) {
            c.own.extend(summary.runs.iter().filter(|r| r.has_items).map(|r| r.client));
        }
        // Defence in depth: `validate` refuses every input known to make yrs panic, but a
        // panic inside apply (or the delta encode) is still contained here, before anything
        // is stored or relayed; the doc may be half-changed, so it is rebuilt from the store.
        // (Updates that apply and break only a later full encode, like legacy JSON content,
        // do not trip the delta encode: `validate` must refuse those.)
        let doc = &self.doc;
        let applied = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let mut txn = doc.transact_mut();
            txn.apply_update(update)?;
            // Only what this transaction changed is stored and relayed: a reconnecting
            // client's SyncStep2 repeats much the server already has, and that is not news.
            Ok::<_, yrs::error::UpdateError>(txn.has_changes().then(|| txn.encode_update_v1()))
        }));
        let delta = match applied {
            Ok(Ok(Some(delta))) => delta,
            Ok(Ok(None)) => {
                self.ot_discard_events();
                return true;
            }
            Ok(Err(e)) => {
                self.ot_discard_events();
                tracing::warn!(conn = conn.get(), doc = %self.name, error = %e, "refused: update does not apply (1007)");
                self.refuse(conn, CloseReason::new(close::INVALID_PAYLOAD, "update does not apply"));
                self.rebuild().await;
                return false;
            }
            Err(_) => {
                self.ot_discard_events();
                tracing::warn!(conn = conn.get(), doc = %self.name, "refused: update breaks the document (1008); rebuilding it from the store");
                self.refuse(conn, CloseReason::new(close::POLICY_VIOLATION, "update breaks the document"));
                self.rebuild().await;
                return false;
            }
        };
        self.last_seq += 1;
        let seq = self.last_seq;
        tracing::trace!(conn = conn.get(), doc = %self.name, seq, bytes = delta.len(), "update applied");
        self.since_snapshot_updates += 1;
        self.since_snapshot_bytes += delta.len() as u64;
        let size = delta.len();
        let relay = protocol::encode_update(delta.clone());
        for client in &claims {
            self.owners.insert(*client, origin.clone());
        }
        let mut deltas = self.take_text_deltas();
        if self.events_followed() {
            deltas.extend(self.observe_new_roots());
        }
        let (ot_records, ot_frames) = self.ot_from_yjs(seq, &origin, &deltas);
        // With nothing parked, the store thread writes the relay right after the commit; else
        // it is parked, so that it leaves after what was parked before it.
        let delegated = self.parking.is_empty().then(|| Relay {
            frame: relay.clone(),
            to: self.conns.iter().map(|(id, c)| (*id, c.outbox.peer())).collect(),
        });
        let relayed_by_store = delegated.is_some();
        if !self.issue_relayed(Some((seq, delta)), origin.clone(), claims, ot_records, delegated).await {
            return false;
        }
        METRICS.updates_received.fetch_add(1, Relaxed);
        METRICS.updates_relayed.fetch_add(self.conns.len() as u64, Relaxed);
        if !relayed_by_store {
            self.park(Parked::Broadcast(relay));
        }
        if !ot_frames.is_empty() {
            self.park(Parked::Peers(ot_frames));
        }
        if self.events_followed() {
            self.park(Parked::Event(events::update_event(seq, &origin, size, &deltas)));
        }
        self.snapshot_if_due().await;
        true
    }

    /// Queues one store command (an update and/or OT state, committed together) and takes a
    /// ticket for it: whatever is parked from now on waits for its commit. `false` if the
    /// store is gone (the main loop then fails the document).
    async fn issue(
        &mut self,
        update: Option<(u64, Vec<u8>)>,
        origin: Arc<str>,
        claims: Vec<u64>,
        ot: Vec<Record>,
    ) -> bool {
        self.issue_relayed(update, origin, claims, ot, None).await
    }

    /// `issue`, with a frame the store thread writes to connections once it is committed.
    async fn issue_relayed(
        &mut self,
        update: Option<(u64, Vec<u8>)>,
        origin: Arc<str>,
        claims: Vec<u64>,
        ot: Vec<Record>,
        relay: Option<Relay>,
    ) -> bool {
        let ticket = self.parking.next_ticket();
        let name = self.name.as_arc().clone();
        let commits = self.commits.clone();
        if let Err(e) = self.store.append_ticketed(name, update, origin, claims, ot, commits, ticket, relay).await {
            tracing::error!(doc = %self.name, error = %e, "store unavailable");
            // The main loop sees the failure and ends the document.
            self.parking.issue();
            self.commits.fail(e);
            return false;
        }
        self.parking.issue();
        true
    }

    /// Catches up with the store's acknowledgements (delivering what they release); returns
    /// the committed ticket. A failure is left to the main loop.
    fn refresh_committed(&mut self) -> u64 {
        if self.parking.outstanding() {
            if let Ok(committed) = self.commits.committed() {
                if committed > self.parking.committed() {
                    self.on_committed(committed);
                }
            }
        }
        self.parking.committed()
    }

    /// The ticket whose commit the actor must hear of: the first one something is parked
    /// behind, or the last one when the document waits to unload or shut down.
    fn wake_target(&self) -> u64 {
        self.parking.wake_target(self.conns.is_empty() || self.shutting_down)
    }

    async fn snapshot_if_due(&mut self) {
        if self.since_snapshot_updates >= self.settings.snapshot_updates
            || self.since_snapshot_bytes >= self.settings.snapshot_bytes
        {
            self.write_snapshot(self.last_seq).await;
        }
    }

    /// Keeps the process-wide awareness gauge in step with this document's table.
    fn report_presence(&mut self) {
        let now = self.presence.len();
        crate::metrics::Metrics::adjust(&METRICS.awareness_states, self.presence_reported, now);
        self.presence_reported = now;
    }

    fn park_presence_event(&mut self, client: u64, was_present: bool, json: &str) {
        let state: serde_json::Value = serde_json::from_str(json).unwrap_or(serde_json::Value::Null);
        let action = match (state.is_null(), was_present) {
            (true, _) => "leave",
            (false, true) => "change",
            (false, false) => "join",
        };
        self.park(Parked::Event(events::presence_event(client, action, state)));
    }

    fn park_presence_leaves(&mut self, removed: &yrs::sync::AwarenessUpdate) {
        if self.events_followed() {
            for client in removed.clients.keys() {
                self.park(Parked::Event(events::presence_event(client.get(), "leave", serde_json::Value::Null)));
            }
        }
    }

    /// Nobody is connected: no Yjs connection, and no attachment (OT, REST) either.
    fn idle(&self) -> bool {
        self.conns.is_empty() && self.registry.upgrade().is_none_or(|r| !r.is_attached(&self.name, self.generation))
    }

    /// A GC range beyond the document's clock for a client the document already knows, sent
    /// by a connection that never spoke for that client, would make that client's next edits
    /// look already-known and vanish. A client's own offline edits, deleted and collected
    /// before sync, are still accepted: its awareness or items name it first.
    fn squatted_client(&self, conn: ConnId, summary: &crate::validate::Summary, sv: &StateVector) -> Option<u64> {
        let own = self.conns.get(&conn).map(|c| &c.own);
        summary.runs.iter().find_map(|run| {
            let known = sv.get(&yrs::ClientID::new(run.client));
            let extends = run.gc.iter().any(|&(_, end)| end > known);
            let speaks_for = run.has_items || own.is_some_and(|o| o.contains(&run.client));
            (known > 0 && extends && !speaks_for).then_some(run.client)
        })
    }

    fn owned_by_other(&self, client: u64, user: &str) -> bool {
        self.settings.bind_client_ids && self.owners.get(&client).is_some_and(|owner| &**owner != user)
    }

    fn refuse(&mut self, conn: ConnId, reason: CloseReason) {
        if let Some(c) = self.conns.get(&conn) {
            c.outbox.close(reason);
        }
        self.remove_conn(conn);
    }

    /// Replaces a doc that yrs may have left inconsistent with the stored state: waits for
    /// every queued commit (delivering what they release), then loads from the store.
    async fn rebuild(&mut self) {
        if !self.drain_commits().await {
            // The main loop ends the document after this handler.
            return;
        }
        self.doc = Doc::with_options(Options { offset_kind: OffsetKind::Utf16, ..Options::default() });
        self.since_snapshot_bytes = 0;
        if let Err(e) = self.load().await {
            tracing::error!(doc = %self.name, error = %e, "rebuilding the document failed");
            self.close_all(CloseReason::new(close::INTERNAL_ERROR, "document failed"));
        }
    }

    /// The doc now holds exactly updates 1..=seq, so its full state is the snapshot at `seq`.
    /// It is queued after the append of `seq`, so it commits with or after it.
    async fn write_snapshot(&mut self, seq: u64) {
        let data = self.doc.transact().encode_state_as_update_v1(&StateVector::default());
        let bytes = data.len();
        if let Err(e) = self.store.snapshot(self.name.as_arc().clone(), seq, data).await {
            tracing::error!(doc = %self.name, error = %e, "snapshot not queued");
            return;
        }
        tracing::debug!(doc = %self.name, seq, bytes, "snapshot queued");
        self.since_snapshot_updates = 0;
        self.since_snapshot_bytes = 0;
    }

    /// Sends a frame once everything issued so far is committed (at once if nothing is).
    fn park(&mut self, frame: Parked) {
        self.refresh_committed();
        if let Some(frame) = self.parking.park(frame) {
            self.deliver(frame);
        }
    }

    /// The one place a commit's outcome is handled. A failure closes every connection (1011,
    /// nothing parked is sent) and marks the actor failed; the main loop then stops it.
    fn on_commit_result(&mut self, result: Result<u64, StoreError>) {
        match result {
            Ok(ticket) => self.on_committed(ticket),
            Err(e) => {
                tracing::error!(doc = %self.name, error = %e, "commit failed");
                self.close_all(CloseReason::new(close::INTERNAL_ERROR, "commit failed"));
                self.close_ot_peers(CloseReason::new(close::INTERNAL_ERROR, "commit failed"));
                self.parking.fail();
                self.commit_failed = true;
            }
        }
    }

    fn on_committed(&mut self, ticket: u64) {
        self.parking.acknowledge(ticket);
        while let Some(frame) = self.parking.pop_released() {
            self.deliver(frame);
        }
    }

    fn deliver(&mut self, frame: Parked) {
        match frame {
            Parked::Broadcast(bytes) => self.broadcast(bytes),
            Parked::To(conn, bytes) => self.send_to(conn, bytes),
            Parked::Peers(frames) => self.deliver_peers(frames),
            Parked::Call(answer) => answer(),
            Parked::Event(event) => self.publish(event),
            Parked::Subscribe(last, reply) => self.subscribe_events(last, reply),
        }
    }

    /// Whether anyone reads this document's events (text deltas are only computed then).
    fn events_followed(&self) -> bool {
        self.events.followed()
    }

    fn publish(&mut self, event: events::Event) {
        let dropped = self.events.publish(event, self.last_seq);
        if dropped > 0 {
            tracing::warn!(doc = %self.name, dropped, "event stream reader too slow; dropping it (it resumes with Last-Event-ID)");
            METRICS.refused("sse reader too slow");
        }
    }

    /// A new event stream reader, resuming after `last` if given. Parked like the frames:
    /// the reader starts after everything committed so far.
    fn subscribe_events(&mut self, last: Option<(u64, u64)>, reply: tokio::sync::oneshot::Sender<Subscription>) {
        self.observe_text_roots();
        let _ = reply.send(self.events.subscribe(last, self.last_seq));
    }

    /// Sends to every connection, the sender included (y-websocket relays to all).
    fn broadcast(&mut self, frame: Bytes) {
        let failed: Vec<(ConnId, SendError)> =
            self.conns.iter().filter_map(|(id, c)| c.outbox.send(frame.clone()).err().map(|e| (*id, e))).collect();
        for (conn, error) in failed {
            self.send_failed(conn, error);
        }
    }

    fn send_to(&mut self, conn: ConnId, frame: Bytes) {
        if let Some(Err(e)) = self.conns.get(&conn).map(|c| c.outbox.send(frame)) {
            self.send_failed(conn, e);
        }
    }

    fn send_failed(&mut self, conn: ConnId, error: SendError) {
        if error == SendError::Overflow {
            tracing::warn!(conn = conn.get(), doc = %self.name, "refused: slow consumer, outbound queue full (1013)");
        }
        self.remove_conn(conn);
    }

    fn remove_conn(&mut self, conn: ConnId) {
        self.conns.remove(&conn);
        self.ot.remove_conn(conn);
        if let Some(removed) = self.presence.remove_connection(conn, Instant::now()) {
            self.report_presence();
            self.park_presence_leaves(&removed);
            self.broadcast(protocol::encode_awareness(removed));
        }
    }

    fn handle_left(&mut self) {
        let left = std::mem::take(&mut *self.shared.left.lock().expect("left lock poisoned"));
        for conn in left {
            self.remove_conn(conn);
        }
    }

    fn close_all(&mut self, reason: CloseReason) {
        for (_, c) in self.conns.drain() {
            c.outbox.close(reason.clone());
        }
    }

    fn try_unload(&mut self) -> bool {
        let Some(registry) = self.registry.upgrade() else {
            return true;
        };
        let unloaded = registry.try_unload(&self.name, self.generation);
        if unloaded {
            tracing::debug!(doc = %self.name, seq = self.last_seq, "document unloaded");
        }
        unloaded
    }
}

#[derive(Debug, thiserror::Error)]
enum LoadError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("stored update does not decode: {0}")]
    Decode(#[from] yrs::encoding::read::Error),
    #[error("stored update does not apply: {0}")]
    Apply(#[from] yrs::error::UpdateError),
}
