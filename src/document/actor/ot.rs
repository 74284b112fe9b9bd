//! The OT side of a document actor (SPEC §5): one `Sequencer` per root text that OT clients
//! have used, the OT subscribers of each, and the two directions of the bridge.
//!
//! - **OT → Yjs.** A submitted op is transformed by the sequencer, checked against the text
//!   (`ytext::check_applies`), applied in a yrs transaction, and the op (as applied) is stored
//!   in the same store command as the Yjs update it produced. The ack, the op for the other
//!   OT subscribers and the update for the Yjs connections are all parked behind that commit.
//! - **Yjs → OT.** Each sequenced text is observed; a Yjs update that changes it becomes the
//!   text's next op (from the text event's delta, `src = "yjs"`), stored with the update.
//!
//! Sequencers of every stored text are rebuilt at load, so Yjs edits made while no OT client
//! is connected still become versioned ops. Every reply that reveals state is parked behind
//! every commit issued so far, like the Yjs replies.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use serde_json::Value;
use yrs::{Observable, Out, ReadTxn, TextRef, Transact, WriteTxn};

use super::{DocActor, Parked};
use crate::document::ot::{
    presence_to_latest, OtKind, OtReply, OtReplyTo, OtRequest, OtText, Subscriber, OT_ORIGIN, STORED,
};
use crate::ot::delta::Delta;
use crate::ot::error::OtError;
use crate::ot::sequencer::{LoggedOp, Prepared, Sequencer, FIRST_VERSION, YJS_SRC};
use crate::ot::{sharedb, ytext};
use crate::outbox::OutboxPeer;
use crate::protocol::{self, close, CloseReason};
use crate::store::{Record, StoredText};

impl DocActor {
    /// Rebuilds the sequencers from the store (at load and after a rebuild); subscribers of
    /// the previous state are kept.
    pub(super) fn ot_load(&mut self, stored: Vec<StoredText>) {
        let mut old = std::mem::take(&mut self.ot.texts);
        // A fresh doc (load, rebuild) has no observers yet.
        self.ot.observed.clear();
        self.ot.drain_events();
        for t in stored {
            let name: Arc<str> = t.text.as_str().into();
            let mut ops = Vec::with_capacity(t.ops.len());
            for (v, src, seq, json) in t.ops {
                // Stored ops were checked when they were submitted, or come from Yjs edits,
                // which no OT limit bounds (a paste of any size): load them without limits.
                let parsed = serde_json::from_str::<Value>(&json).ok().and_then(|j| Delta::from_json(&j, &STORED).ok());
                match parsed {
                    Some(op) => ops.push(LoggedOp { v, src: src.into(), seq, op }),
                    None => {
                        // Keep only the contiguous newest run; older base versions re-fetch.
                        tracing::error!(doc = %self.name, text = %name, v, "stored op does not parse; dropping older ops");
                        ops.clear();
                    }
                }
            }
            if ops.last().is_some_and(|op| op.v + 1 != t.version) {
                ops.clear();
            }
            let seq = Sequencer::new(t.epoch.into(), t.version, ops, self.settings.ot.log_ops_max);
            let mut text = self.observe_text(&name, seq);
            if let Some(prev) = old.remove(&name) {
                text.subscribers = prev.subscribers;
            }
            self.ot.texts.insert(name, text);
        }
    }

    fn observe_text(&mut self, name: &Arc<str>, seq: Sequencer) -> OtText {
        let text = self.observe_root(name);
        OtText { seq, text, subscribers: HashMap::new() }
    }

    /// Observes root text `name` (already checked to be text-like): each transaction that
    /// changes it leaves its delta in the events list. For sequencers and event streams.
    pub(super) fn observe_root(&mut self, name: &Arc<str>) -> TextRef {
        let text = self.doc.transact_mut().get_or_insert_text(name.clone());
        self.ot.observed.insert(name.clone());
        let events = self.ot.events.clone();
        let key = name.clone();
        // Keyed observers live as long as the doc (a rebuild replaces both).
        text.observe("yserve-ot", move |txn: &yrs::TransactionMut, event: &yrs::types::text::TextEvent| {
            let delta = ytext::from_event(event.delta(txn));
            if !delta.is_noop() {
                events.lock().expect("ot events lock poisoned").push((key.clone(), delta));
            }
        });
        text
    }

    /// Whether root `name` is observed already.
    pub(super) fn is_observed(&self, name: &str) -> bool {
        self.ot.observed.contains(name)
    }

    /// The text deltas the last transaction left.
    pub(super) fn take_text_deltas(&mut self) -> Vec<(Arc<str>, Delta)> {
        self.ot.drain_events()
    }

    /// The sequencer of `name`, created (and stored) on first use.
    async fn ot_text(&mut self, name: &Arc<str>) -> Result<(), OtError> {
        if self.ot.texts.contains_key(name) {
            return Ok(());
        }
        ytext::check_root(&self.doc.transact(), name)?;
        let epoch = new_epoch();
        let seq = Sequencer::new(epoch.clone(), FIRST_VERSION, Vec::new(), self.settings.ot.log_ops_max);
        let text = self.observe_text(name, seq);
        self.ot.texts.insert(name.clone(), text);
        let record = Record::Text { text: name.clone(), epoch, version: FIRST_VERSION };
        if !self.issue(None, OT_ORIGIN.into(), Vec::new(), vec![record]).await {
            return Err(OtError::Unavailable);
        }
        Ok(())
    }

    pub(super) async fn handle_ot(&mut self, req: OtRequest) {
        let OtRequest { conn, user, text, kind, reply } = req;
        // A ShareDB request that reaches a stopping document (its session had it on the way
        // when the server began to stop) is left unanswered: an error would make the stock
        // client hard-roll-back, dropping the op and every pending one, while an unanswered op
        // is re-sent after the reconnect (the socket closes with 1001). REST callers get 503.
        if self.shutting_down && matches!(reply, OtReplyTo::Wire { .. }) {
            tracing::debug!(conn = conn.get(), doc = %self.name, text = %text, "ot request left unanswered: shutting down");
            return;
        }
        let result = match kind {
            OtKind::Fetch { from } => self.ot_read(&text, from).await,
            OtKind::Subscribe { from, src } => {
                let result = self.ot_read(&text, from).await;
                if let (Ok(_), OtReplyTo::Wire { outbox, .. }, Some(t)) =
                    (&result, &reply, self.ot.texts.get_mut(&text))
                {
                    t.subscribers.insert(conn, Subscriber { outbox: outbox.clone(), src });
                }
                result
            }
            OtKind::Unsubscribe => {
                if let Some(t) = self.ot.texts.get_mut(&text) {
                    t.subscribers.remove(&conn);
                }
                Ok(OtReply::Unsubscribed)
            }
            OtKind::Presence { msg, src, hub, ack } => match (
                // A withdrawal does not create (and store) a sequencer.
                if msg.p.is_null() { Ok(()) } else { self.ot_text(&text).await },
                &reply,
            ) {
                (Err(_), _) if !ack => return,
                (Ok(()), OtReplyTo::Wire { outbox, .. }) => {
                    let (v, p) = match self.ot.texts.get(&text) {
                        Some(t) => presence_to_latest(&t.seq, msg.v, &msg.p, &src),
                        None => (msg.v, msg.p.clone()),
                    };
                    let peers = hub.peers(&msg.ch, &src);
                    let frame = Bytes::from(sharedb::presence(&sharedb::Presence { v, p, ..msg }, &src));
                    let mut frames: Vec<(OutboxPeer, Bytes)> =
                        peers.into_iter().map(|peer| (peer, frame.clone())).collect();
                    // The sender's acknowledgement is the presence as relayed (ShareDB's reply).
                    if ack {
                        frames.push((outbox.clone(), frame));
                    }
                    // Behind the ops before it, so that no receiver sees a `v` ahead of its text.
                    self.park(Parked::Peers(frames));
                    return;
                }
                (Ok(()), OtReplyTo::Rest(_)) => Err(OtError::BadMessage("presence is not served over REST".into())),
                (Err(e), _) => Err(e),
            },
            OtKind::Submit { v, src, seq, op, writable } => {
                let result = self.ot_submit(&text, v, src, seq, op, writable, &user).await;
                if let Err(e) = &result {
                    crate::metrics::METRICS.refused(e.code());
                    tracing::info!(conn = conn.get(), doc = %self.name, user = %user, text = %text, code = e.code(), error = %e, "op refused");
                }
                result
            }
        };
        self.ot_reply(&text, reply, result);
    }

    async fn ot_read(&mut self, name: &Arc<str>, from: Option<u64>) -> Result<OtReply, OtError> {
        self.ot_text(name).await?;
        let t = &self.ot.texts[name];
        let epoch = t.seq.epoch.clone();
        match from {
            None => {
                Ok(OtReply::Snapshot { v: t.seq.version(), epoch, data: ytext::read(&self.doc.transact(), &t.text) })
            }
            Some(from) => {
                let ops = t.seq.ops_since(from)?.cloned().collect();
                Ok(OtReply::Ops { v: t.seq.version(), epoch, ops })
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn ot_submit(
        &mut self,
        name: &Arc<str>,
        v: Option<u64>,
        src: Arc<str>,
        seq: u64,
        op: Delta,
        writable: bool,
        user: &Arc<str>,
    ) -> Result<OtReply, OtError> {
        if !writable {
            return Err(OtError::ReadOnly);
        }
        if self.shutting_down {
            return Err(OtError::Unavailable);
        }
        if let Err(crate::locks::LockError::Held { holder, .. }) =
            self.locks.check_write(name, user, crate::document::query::now_ms())
        {
            return Err(OtError::Locked { holder: holder.to_string() });
        }
        self.ot_text(name).await?;
        let t = &self.ot.texts[name];
        let epoch = t.seq.epoch.clone();
        let base = v.unwrap_or(t.seq.version());
        let op = match t.seq.prepare(base, &src, seq, op)? {
            Prepared::AlreadySubmitted { v } => {
                let missed = t.seq.ops_since(base)?.take_while(|o| o.v < v).cloned().collect();
                return Ok(OtReply::Submitted { v, epoch, src, seq, missed });
            }
            Prepared::Apply(op) => op,
        };
        let missed: Vec<Arc<LoggedOp>> = t.seq.ops_since(base)?.cloned().collect();
        let text = t.text.clone();
        // Nothing invalid reaches yrs: the op is checked against the text as it is now.
        let doc = &self.doc;
        let applied = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let mut txn = doc.transact_mut();
            let current = ytext::read(&txn, &text);
            ytext::check_applies(&current, &op)?;
            ytext::apply(&mut txn, &text, &op);
            Ok::<_, OtError>(txn.has_changes().then(|| txn.encode_update_v1()))
        }));
        // Our own op is logged as submitted, not as yrs reports it.
        self.ot.drain_events();
        let update = match applied {
            Ok(Ok(update)) => update,
            Ok(Err(e)) => return Err(e),
            Err(_) => {
                tracing::error!(doc = %self.name, text = %name, "applying an op panicked; rebuilding the document from the store");
                self.rebuild().await;
                return Err(OtError::Unavailable);
            }
        };
        let t = self.ot.texts.get_mut(name).expect("sequencer created above");
        let logged = t.seq.commit(src.clone(), seq, op);
        crate::metrics::METRICS.ot_ops.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let record = Record::Op {
            text: name.clone(),
            version: logged.v,
            op: logged.op.to_json().to_string(),
            src: src.clone(),
            seq,
            user: user.clone(),
            keep_from: t.seq.keep_from(),
        };
        let frames = op_frames(self.name.as_str(), name, t, &logged);
        let update = update.map(|data| {
            self.last_seq += 1;
            self.since_snapshot_updates += 1;
            self.since_snapshot_bytes += data.len() as u64;
            (self.last_seq, data)
        });
        let relay = update.as_ref().map(|(_, data)| protocol::encode_update(data.clone()));
        let event = update.as_ref().filter(|_| self.events_followed()).map(|(seq, data)| {
            super::events::update_event(*seq, OT_ORIGIN, data.len(), &[(name.clone(), logged.op.clone())])
        });
        if !self.issue(update, OT_ORIGIN.into(), Vec::new(), vec![record]).await {
            return Err(OtError::Unavailable);
        }
        if let Some(relay) = relay {
            self.park(Parked::Broadcast(relay));
        }
        self.park(Parked::Peers(frames));
        if let Some(event) = event {
            self.park(Parked::Event(event));
        }
        self.snapshot_if_due().await;
        Ok(OtReply::Submitted { v: logged.v, epoch, src, seq, missed })
    }

    /// After a Yjs update was applied as `update_seq`: each sequenced text it changed gets its
    /// next op. Returns what to store with the update and the frames for OT subscribers.
    pub(super) fn ot_from_yjs(
        &mut self,
        update_seq: u64,
        user: &Arc<str>,
        deltas: &[(Arc<str>, Delta)],
    ) -> (Vec<Record>, Vec<(OutboxPeer, Bytes)>) {
        let mut records = Vec::new();
        let mut frames = Vec::new();
        for (name, delta) in deltas {
            let Some(t) = self.ot.texts.get_mut(name) else { continue };
            let logged = t.seq.commit(YJS_SRC.into(), update_seq, delta.clone());
            crate::metrics::METRICS.ot_ops.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            records.push(Record::Op {
                text: name.clone(),
                version: logged.v,
                op: logged.op.to_json().to_string(),
                src: YJS_SRC.into(),
                seq: update_seq,
                user: user.clone(),
                keep_from: t.seq.keep_from(),
            });
            frames.extend(op_frames(self.name.as_str(), name, t, &logged));
        }
        (records, frames)
    }

    /// Drops whatever text events a transaction left (one that was not stored).
    pub(super) fn ot_discard_events(&mut self) {
        self.ot.drain_events();
    }

    fn ot_reply(&mut self, text: &str, reply: OtReplyTo, result: Result<OtReply, OtError>) {
        match reply {
            OtReplyTo::Rest(tx) => self.park(Parked::Call(Box::new(move || {
                let _ = tx.send(result);
            }))),
            OtReplyTo::Wire { outbox, action, echo } => {
                let c = self.name.as_str();
                let frames: Vec<String> = match result {
                    Ok(OtReply::Snapshot { v, data, .. }) => vec![sharedb::snapshot_reply(action, c, text, v, &data)],
                    Ok(OtReply::Ops { ops, .. }) => ops
                        .iter()
                        .map(|o| sharedb::op(c, text, o))
                        .chain(std::iter::once(sharedb::empty_reply(action, c, text)))
                        .collect(),
                    Ok(OtReply::Submitted { v, src, seq, missed, .. }) => missed
                        .iter()
                        .map(|o| sharedb::op(c, text, o))
                        .chain(std::iter::once(sharedb::ack(c, text, &src, seq, v)))
                        .collect(),
                    Ok(OtReply::Unsubscribed) => vec![sharedb::empty_reply(action, c, text)],
                    Err(e) => {
                        // An op's or a presence's error echoes the request: the client matches
                        // it by `seq` (op) or by `ch` and `id` (presence).
                        let echo = if action == "op" || action == "p" {
                            echo
                        } else {
                            serde_json::json!({"a": action, "c": c, "d": text})
                        };
                        vec![sharedb::error_reply(echo, &e)]
                    }
                };
                let frames = frames.into_iter().map(|f| (outbox.clone(), Bytes::from(f))).collect();
                self.park(Parked::Peers(frames));
            }
        }
    }

    /// After a failed commit: every OT connection waiting on this document (subscribed, or
    /// with a reply parked) is closed, so that its client reconnects and re-sends what was
    /// not acknowledged, as a ShareDB client does, instead of waiting forever.
    pub(super) fn close_ot_peers(&mut self, reason: CloseReason) {
        for t in self.ot.texts.values() {
            for s in t.subscribers.values() {
                s.outbox.close(reason.clone());
            }
        }
        for parked in self.parking.iter() {
            if let Parked::Peers(frames) = parked {
                for (outbox, _) in frames {
                    outbox.close(reason.clone());
                }
            }
        }
    }

    /// Sends OT frames; a subscriber whose queue overflows is closed (1013) like a Yjs one.
    pub(super) fn deliver_peers(&mut self, frames: Vec<(OutboxPeer, Bytes)>) {
        for (outbox, frame) in frames {
            if outbox.send(frame).is_err() {
                outbox.close(CloseReason::new(close::TRY_AGAIN_LATER, "slow consumer"));
            }
        }
    }
}

/// The op frame for every subscriber of `t` but the one that submitted it (ShareDB skips an
/// agent's own ops: its ack covers them).
fn op_frames(doc: &str, text: &str, t: &OtText, logged: &LoggedOp) -> Vec<(OutboxPeer, Bytes)> {
    if t.subscribers.is_empty() {
        return Vec::new();
    }
    let frame = Bytes::from(sharedb::op(doc, text, logged));
    t.subscribers.values().filter(|s| s.src != logged.src).map(|s| (s.outbox.clone(), frame.clone())).collect()
}

/// Unique enough to tell two sequencer lifetimes of one text apart.
fn new_epoch() -> Arc<str> {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    format!("{nanos:x}").into()
}

impl DocActor {
    /// Observes every root text not observed yet, so the update events carry their deltas.
    pub(super) fn observe_text_roots(&mut self) {
        let names: Vec<Arc<str>> = {
            let txn = self.doc.transact();
            txn.root_refs()
                .filter(|(name, out)| {
                    !self.is_observed(name)
                        && matches!(out, Out::YText(_) | Out::UndefinedRef(_))
                        && ytext::check_root(&txn, name).is_ok()
                })
                .map(|(name, _)| Arc::from(name))
                .collect()
        };
        for name in names {
            self.observe_root(&name);
        }
    }

    /// After an update: root texts it created are observed from now on; their delta for
    /// this update is their whole content.
    pub(super) fn observe_new_roots(&mut self) -> Vec<(Arc<str>, Delta)> {
        let names: Vec<Arc<str>> = {
            let txn = self.doc.transact();
            txn.root_refs()
                .filter(|(name, _)| !self.is_observed(name) && ytext::check_root(&txn, name).is_ok())
                .map(|(name, _)| Arc::from(name))
                .collect()
        };
        let mut deltas = Vec::new();
        for name in names {
            let text = self.observe_root(&name);
            let content = ytext::read(&self.doc.transact(), &text);
            if !content.is_noop() {
                deltas.push((name, content));
            }
        }
        deltas
    }
}
