//! Advisory field locks of one document (SPEC §6), sans IO: who holds which key until when.
//! Time is passed in (unix milliseconds), so expiry is tested without waiting.
//!
//! Owned by the document actor, which stores every change in SQLite (`locks` table, with
//! the update log's transaction rules), announces it on the event streams, and enforces a
//! lock on a key that names a root text: OT and REST-OT writes to it by anyone but the
//! holder are refused. Binary Yjs updates are not checked (a lock is advisory; a CRDT
//! update may touch many texts at once).

use std::collections::HashMap;
use std::sync::Arc;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lock {
    pub key: Arc<str>,
    pub holder: Arc<str>,
    pub expires_at_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LockError {
    #[error("'{key}' is locked by {holder}")]
    Held { key: Arc<str>, holder: Arc<str>, expires_at_ms: u64 },
    #[error("'{key}' is not locked")]
    NotLocked { key: Arc<str> },
}

/// What an acquisition did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acquired {
    New,
    Renewed,
}

#[derive(Debug, Default)]
pub struct Locks {
    held: HashMap<Arc<str>, Lock>,
}

impl Locks {
    pub fn from_stored(locks: impl IntoIterator<Item = Lock>) -> Locks {
        Locks { held: locks.into_iter().map(|l| (l.key.clone(), l)).collect() }
    }

    /// Takes `key` for `holder` until `now + ttl`, or renews it if `holder` has it. An
    /// expired lock counts as free.
    pub fn acquire(
        &mut self,
        key: &Arc<str>,
        holder: &Arc<str>,
        ttl_ms: u64,
        now_ms: u64,
    ) -> Result<(Lock, Acquired), LockError> {
        let how = match self.live(key, now_ms) {
            Some(l) if l.holder != *holder => {
                return Err(LockError::Held {
                    key: key.clone(),
                    holder: l.holder.clone(),
                    expires_at_ms: l.expires_at_ms,
                })
            }
            Some(_) => Acquired::Renewed,
            None => Acquired::New,
        };
        let lock = Lock { key: key.clone(), holder: holder.clone(), expires_at_ms: now_ms.saturating_add(ttl_ms) };
        self.held.insert(key.clone(), lock.clone());
        Ok((lock, how))
    }

    /// Releases `key`; only its holder may.
    pub fn release(&mut self, key: &Arc<str>, holder: &Arc<str>, now_ms: u64) -> Result<Lock, LockError> {
        match self.live(key, now_ms) {
            None => Err(LockError::NotLocked { key: key.clone() }),
            Some(l) if l.holder != *holder => {
                Err(LockError::Held { key: key.clone(), holder: l.holder.clone(), expires_at_ms: l.expires_at_ms })
            }
            Some(_) => Ok(self.held.remove(key).expect("checked live")),
        }
    }

    /// Removes and returns the locks that have expired.
    pub fn expire(&mut self, now_ms: u64) -> Vec<Lock> {
        let expired: Vec<Arc<str>> =
            self.held.values().filter(|l| l.expires_at_ms <= now_ms).map(|l| l.key.clone()).collect();
        expired.into_iter().filter_map(|k| self.held.remove(&k)).collect()
    }

    /// The live lock on `key`, if any.
    pub fn live(&self, key: &str, now_ms: u64) -> Option<&Lock> {
        self.held.get(key).filter(|l| l.expires_at_ms > now_ms)
    }

    /// Refuses a write to `key` by `user` while someone else holds it.
    pub fn check_write(&self, key: &str, user: &str, now_ms: u64) -> Result<(), LockError> {
        match self.live(key, now_ms) {
            Some(l) if &*l.holder != user => {
                Err(LockError::Held { key: l.key.clone(), holder: l.holder.clone(), expires_at_ms: l.expires_at_ms })
            }
            _ => Ok(()),
        }
    }

    pub fn list(&self, now_ms: u64) -> Vec<Lock> {
        let mut out: Vec<Lock> = self.held.values().filter(|l| l.expires_at_ms > now_ms).cloned().collect();
        out.sort_by(|a, b| a.key.cmp(&b.key));
        out
    }

    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(x: &str) -> Arc<str> {
        x.into()
    }

    #[test]
    fn a_lock_is_exclusive_until_it_expires() {
        let mut locks = Locks::default();
        let (l, how) = locks.acquire(&s("title"), &s("alice"), 1000, 0).unwrap();
        assert_eq!((l.expires_at_ms, how), (1000, Acquired::New));
        assert_eq!(
            locks.acquire(&s("title"), &s("bob"), 1000, 999),
            Err(LockError::Held { key: s("title"), holder: s("alice"), expires_at_ms: 1000 })
        );
        // Expired: free for anyone, even before the sweep removes it.
        assert_eq!(locks.acquire(&s("title"), &s("bob"), 1000, 1000).unwrap().1, Acquired::New);
    }

    #[test]
    fn the_holder_renews_and_releases_others_cannot() {
        let mut locks = Locks::default();
        locks.acquire(&s("k"), &s("alice"), 1000, 0).unwrap();
        let (l, how) = locks.acquire(&s("k"), &s("alice"), 1000, 500).unwrap();
        assert_eq!((l.expires_at_ms, how), (1500, Acquired::Renewed));
        assert!(matches!(locks.release(&s("k"), &s("bob"), 600), Err(LockError::Held { .. })));
        assert_eq!(locks.release(&s("k"), &s("alice"), 600).unwrap().holder, s("alice"));
        assert_eq!(locks.release(&s("k"), &s("alice"), 700), Err(LockError::NotLocked { key: s("k") }));
    }

    #[test]
    fn expiry_removes_only_expired_locks() {
        let mut locks = Locks::default();
        locks.acquire(&s("a"), &s("u"), 100, 0).unwrap();
        locks.acquire(&s("b"), &s("u"), 300, 0).unwrap();
        assert!(locks.expire(99).is_empty());
        assert_eq!(locks.expire(100).iter().map(|l| l.key.clone()).collect::<Vec<_>>(), vec![s("a")]);
        assert_eq!(locks.list(100).len(), 1);
        assert!(locks.check_write("b", "other", 200).is_err());
        assert!(locks.check_write("b", "u", 200).is_ok());
        assert!(locks.check_write("b", "other", 300).is_ok());
    }
}
