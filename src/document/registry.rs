//! The registry of live documents: a small synchronous map from `DocName` to the document
//! actor's handle, with the number of attachments (connections) of each.
//!
//! Called by sessions (`attach`) and by document actors (`try_unload`, `remove`).
//!
//! **Invariant:** a document is loaded at most once at a time, and a join never races an
//! unload. Both go through the one mutex: `attach` counts itself in under the lock, and an
//! actor unloads only under the lock, only when that count is zero and only after its commits
//! are acknowledged. So a join either finds the live actor (which then will not unload) or
//! finds no entry and starts a fresh actor that loads the committed state from the store.
//! The lock is never held across an `.await`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

use super::actor::DocActor;
use super::events::ServerEvents;
use super::handle::{DocHandle, DocMsg, DocSettings, Lifecycle};
use crate::docname::DocName;
use crate::presence::ConnId;
use crate::store::Store;

#[derive(Debug)]
struct Entry {
    handle: DocHandle,
    generation: u64,
    attached: usize,
}

#[derive(Debug, Default)]
struct Inner {
    docs: HashMap<DocName, Entry>,
    next_generation: u64,
    shutting_down: bool,
}

#[derive(Debug)]
pub struct Registry {
    inner: Mutex<Inner>,
    /// Server-wide activity for `GET /api/events`.
    pub events: ServerEvents,
    store: Store,
    settings: DocSettings,
    /// Notified whenever an entry is removed (shutdown waits for the map to empty).
    removed: Notify,
}

#[derive(Debug, thiserror::Error)]
#[error("server is shutting down")]
pub struct ShuttingDown;

/// One connection's hold on a live document; dropping it tells the actor the connection left.
#[derive(Debug)]
pub struct Attachment {
    registry: Arc<Registry>,
    name: DocName,
    generation: u64,
    conn: ConnId,
    pub handle: DocHandle,
}

impl Registry {
    pub fn new(store: Store, settings: DocSettings) -> Arc<Registry> {
        Arc::new(Registry {
            inner: Mutex::default(),
            events: ServerEvents::new(),
            store,
            settings,
            removed: Notify::new(),
        })
    }

    /// Attaches a connection to a document, starting (and loading) it if it is not live.
    pub fn attach(self: &Arc<Self>, name: &DocName, conn: ConnId) -> Result<Attachment, ShuttingDown> {
        let mut inner = self.lock();
        if inner.shutting_down {
            return Err(ShuttingDown);
        }
        if let Some(entry) = inner.docs.get_mut(name) {
            entry.attached += 1;
            let (handle, generation) = (entry.handle.clone(), entry.generation);
            return Ok(Attachment { registry: self.clone(), name: name.clone(), generation, conn, handle });
        }
        inner.next_generation += 1;
        let generation = inner.next_generation;
        let home: std::sync::Weak<dyn Lifecycle> = Arc::downgrade(self) as std::sync::Weak<Registry>;
        let handle = DocActor::spawn(name.clone(), generation, home, self.store.clone(), self.settings.clone());
        inner.docs.insert(name.clone(), Entry { handle: handle.clone(), generation, attached: 1 });
        self.events.emit("document_opened", serde_json::json!({ "doc": name.as_str() }));
        Ok(Attachment { registry: self.clone(), name: name.clone(), generation, conn, handle })
    }

    /// Whether `shutdown` has begun (no new attachments).
    pub fn is_shutting_down(&self) -> bool {
        self.inner.lock().expect("registry lock poisoned").shutting_down
    }

    /// Attachments (connections, OT sessions, requests) per live document.
    pub fn attachments(&self) -> HashMap<Arc<str>, usize> {
        self.lock().docs.iter().map(|(name, e)| (name.as_arc().clone(), e.attached)).collect()
    }

    pub fn live_documents(&self) -> usize {
        self.lock().docs.len()
    }

    /// Refuses new attachments, asks every actor to commit and close with 1001, and waits
    /// (at most `timeout`) for all of them to finish. Returns the documents still live.
    pub async fn shutdown(&self, timeout: Duration) -> usize {
        let handles: Vec<DocHandle> = {
            let mut inner = self.lock();
            inner.shutting_down = true;
            inner.docs.values().map(|e| e.handle.clone()).collect()
        };
        for handle in handles {
            let _ = handle.send(DocMsg::Shutdown).await;
        }
        let wait = async {
            loop {
                let removed = self.removed.notified();
                if self.live_documents() == 0 {
                    return;
                }
                removed.await;
            }
        };
        let _ = tokio::time::timeout(timeout, wait).await;
        self.live_documents()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("registry lock poisoned")
    }
}

impl Lifecycle for Registry {
    /// Called by an idle actor with nothing pending: removes it if nobody attached meanwhile.
    fn try_unload(&self, name: &DocName, generation: u64) -> bool {
        let mut inner = self.lock();
        let unload = inner.docs.get(name).is_some_and(|e| e.generation == generation && e.attached == 0);
        if unload {
            inner.docs.remove(name);
            drop(inner);
            self.events.emit("document_closed", serde_json::json!({ "doc": name.as_str() }));
            self.removed.notify_waiters();
        }
        unload
    }

    /// Removes an actor's entry whatever its attachments (it failed or shut down).
    fn remove(&self, name: &DocName, generation: u64) {
        let mut inner = self.lock();
        if inner.docs.get(name).is_some_and(|e| e.generation == generation) {
            inner.docs.remove(name);
            self.events.emit("document_closed", serde_json::json!({ "doc": name.as_str() }));
        }
        drop(inner);
        self.removed.notify_waiters();
    }

    /// Whether anything (a connection, an OT session, a REST request) holds the document.
    fn is_attached(&self, name: &DocName, generation: u64) -> bool {
        self.lock().docs.get(name).is_some_and(|e| e.generation == generation && e.attached > 0)
    }

    fn server_event(&self, kind: &'static str, data: serde_json::Value) {
        self.events.emit(kind, data);
    }
}

impl Drop for Attachment {
    fn drop(&mut self) {
        let mut inner = self.registry.lock();
        if let Some(entry) = inner.docs.get_mut(&self.name).filter(|e| e.generation == self.generation) {
            entry.attached -= 1;
        }
        drop(inner);
        self.handle.shared.left.lock().expect("left lock poisoned").push(self.conn);
        self.handle.shared.wake.notify_one();
    }
}
