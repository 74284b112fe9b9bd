//! Operator requests to a live document (SPEC §6): its state, presence, an update posted
//! over REST, deletion. Answers that reveal state are parked behind every commit issued so
//! far, like everything else the actor sends.

use std::sync::Arc;

use yrs::{ReadTxn, Transact};

use super::{DocActor, Parked};
use crate::document::events;
use crate::document::query::{format_ms, now_ms, ApplyRefusal, DocQuery, LockOp, LockReply};
use crate::locks::{Acquired, Lock};
use crate::presence::ConnId;
use crate::protocol::{close, Checked, CloseReason};
use crate::store::{Record, StoreError};

impl DocActor {
    pub(super) async fn handle_query(&mut self, query: DocQuery) {
        match query {
            DocQuery::Presence(reply) => {
                let list = self.presence.list();
                self.park(Parked::Call(Box::new(move || {
                    let _ = reply.send(list);
                })));
            }
            DocQuery::State { sv, reply } => {
                let data = self.doc.transact().encode_state_as_update_v1(&sv.unwrap_or_default());
                self.park(Parked::Call(Box::new(move || {
                    let _ = reply.send(data);
                })));
            }
            DocQuery::Apply { conn, update, user, reply } => {
                let result = self.apply_posted(conn, update, user).await;
                // After the commit (if any): "acknowledged" means "committed".
                self.park(Parked::Call(Box::new(move || {
                    let _ = reply.send(result);
                })));
            }
            DocQuery::Events { last_event_id, reply } => {
                // After everything committed so far, like any reply.
                self.park(Parked::Subscribe(last_event_id, reply));
            }
            DocQuery::Lock { op, user, reply } => {
                let result = self.lock_op(op, user).await;
                self.park(Parked::Call(Box::new(move || {
                    let _ = reply.send(result);
                })));
            }
            DocQuery::Delete(reply) => {
                // Whatever is queued commits first, so nothing lands after the delete.
                if !self.drain_commits().await {
                    let _ = reply.send(Err(StoreError::Closed));
                    return;
                }
                self.close_all(CloseReason::new(close::GOING_AWAY, "document deleted"));
                self.ot.close_all();
                let result = self.store.delete(self.name.as_arc().clone()).await;
                tracing::info!(doc = %self.name, ok = result.is_ok(), "document deleted");
                let _ = reply.send(result);
                self.deleted = true;
            }
        }
    }

    async fn apply_posted(
        &mut self,
        conn: ConnId,
        checked: Checked,
        user: Arc<str>,
    ) -> Result<Option<u64>, ApplyRefusal> {
        if self.shutting_down {
            return Err(ApplyRefusal::ShuttingDown);
        }
        // A REST caller has no connection to hold an update for, so one that cannot apply
        // completely is refused rather than held.
        let sv = self.doc.transact().state_vector();
        if checked.summary.first_missing_dependency(|c| sv.get(&yrs::ClientID::new(c))).is_some() {
            return Err(ApplyRefusal::MissingDependencies);
        }
        let before = self.last_seq;
        if !self.apply_ready(conn, checked, user, &sv).await {
            return Err(ApplyRefusal::Refused);
        }
        Ok((self.last_seq > before).then_some(self.last_seq))
    }

    async fn lock_op(&mut self, op: LockOp, user: Arc<str>) -> LockReply {
        let now = now_ms();
        match op {
            LockOp::List => Ok(self.locks.list(now)),
            LockOp::Acquire { key, ttl_ms } => {
                let (lock, how) = self.locks.acquire(&key, &user, ttl_ms, now)?;
                let record =
                    Record::LockSet { key: key.clone(), holder: user.clone(), expires_at_ms: lock.expires_at_ms };
                self.issue(None, user, Vec::new(), vec![record]).await;
                let action = if how == Acquired::New { "acquired" } else { "renewed" };
                self.park_lock_event(&lock, action);
                Ok(vec![lock])
            }
            LockOp::Release { key } => {
                let lock = self.locks.release(&key, &user, now)?;
                self.issue(None, user, Vec::new(), vec![Record::LockClear { key }]).await;
                self.park_lock_event(&lock, "released");
                Ok(vec![lock])
            }
        }
    }

    /// Removes expired locks, in memory and in the store, and announces them.
    pub(super) async fn expire_locks(&mut self) {
        for lock in self.locks.expire(now_ms()) {
            self.issue(None, lock.holder.clone(), Vec::new(), vec![Record::LockClear { key: lock.key.clone() }]).await;
            self.park_lock_event(&lock, "expired");
        }
    }

    fn park_lock_event(&mut self, lock: &Lock, action: &str) {
        let data = serde_json::json!({
            "key": &*lock.key,
            "holder": &*lock.holder,
            "action": action,
            "expires_at": format_ms(lock.expires_at_ms),
        });
        let server = serde_json::json!({"doc": self.name.as_str(), "key": &*lock.key, "holder": &*lock.holder, "action": action});
        if let Some(registry) = self.registry.upgrade() {
            registry.server_event("lock", server);
        }
        if self.events_followed() {
            self.park(Parked::Event(events::lock_event(data)));
        }
    }

    /// Waits for every queued commit, delivering what they release; `false` if one failed
    /// (handled as in the main loop: connections closed, the actor stops).
    pub(super) async fn drain_commits(&mut self) -> bool {
        while self.refresh_committed() < self.parking.issued() {
            let result = self.commits.clone().reached(self.parking.issued()).await;
            self.on_commit_result(result);
            if self.commit_failed {
                return false;
            }
        }
        true
    }
}
