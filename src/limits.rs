//! Per-user rate limits and connection caps (SPEC §8). Time is passed in; no IO.
//! Called by `http` (connection caps at the upgrade) and `session` (every inbound message).
//!
//! A user's token buckets are shared by all of that user's connections, so opening more
//! sockets does not buy more throughput. Anonymous connections share no identity, so each
//! is keyed on its own (see `key_for`). A user's entry outlives their last connection until
//! its buckets have refilled, so closing and reopening a socket does not buy a fresh burst;
//! idle entries are swept on admission once there are many. An anonymous connection's entry
//! goes with it (its key is never used again).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Idle entries (users with no connection whose buckets may still be draining) are swept
/// on admission once there are more than this many, and more than online users.
const IDLE_SWEEP_MIN: usize = 1024;

/// The prefix of per-connection keys (anonymous mode).
const PER_CONNECTION_PREFIX: &str = "anonymous#";

#[derive(Debug, Clone)]
pub struct LimitSettings {
    pub messages_per_sec: f64,
    pub messages_burst: f64,
    pub bytes_per_sec: f64,
    pub bytes_burst: f64,
    pub connections_per_user_max: usize,
    pub connections_max: usize,
}

/// A token bucket: `burst` tokens at most, refilled at `rate` per second.
#[derive(Debug, Clone)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

impl Bucket {
    fn full(burst: f64, now: Instant) -> Bucket {
        Bucket { tokens: burst, last: now }
    }

    /// Whether the bucket has refilled to `burst` by `now`.
    fn refilled(&self, rate: f64, burst: f64, now: Instant) -> bool {
        self.tokens + now.saturating_duration_since(self.last).as_secs_f64() * rate >= burst
    }

    fn take(&mut self, n: f64, rate: f64, burst: f64, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(burst);
        self.last = now;
        if self.tokens >= n {
            self.tokens -= n;
            true
        } else {
            false
        }
    }
}

#[derive(Debug)]
struct UserState {
    messages: Bucket,
    bytes: Bucket,
    connections: usize,
}

#[derive(Debug, Default)]
struct Inner {
    users: HashMap<Arc<str>, UserState>,
    connections: usize,
    /// Entries with no connection.
    idle: usize,
}

#[derive(Debug)]
pub struct Limiter {
    settings: LimitSettings,
    inner: Mutex<Inner>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ConnRefusal {
    #[error("too many connections for this user")]
    PerUser,
    #[error("server at its connection limit")]
    Global,
}

/// One admitted connection; dropping it gives the slot back.
#[derive(Debug)]
pub struct ConnPermit {
    limiter: Arc<Limiter>,
    key: Arc<str>,
}

impl ConnPermit {
    pub fn key(&self) -> &Arc<str> {
        &self.key
    }
}

/// The rate-limit key: the user, or the connection itself when anonymous.
pub fn key_for(user: &Arc<str>, anonymous: bool, conn: u64) -> Arc<str> {
    if anonymous {
        format!("{PER_CONNECTION_PREFIX}{conn}").into()
    } else {
        user.clone()
    }
}

impl Limiter {
    pub fn new(settings: LimitSettings) -> Arc<Limiter> {
        Arc::new(Limiter { settings, inner: Mutex::default() })
    }

    pub fn admit(self: &Arc<Self>, key: Arc<str>, now: Instant) -> Result<ConnPermit, ConnRefusal> {
        let s = &self.settings;
        let mut inner = self.inner.lock().expect("limiter lock poisoned");
        if inner.connections >= s.connections_max {
            return Err(ConnRefusal::Global);
        }
        if inner.idle > IDLE_SWEEP_MIN && inner.idle > inner.users.len() - inner.idle {
            inner.users.retain(|_, u| {
                u.connections > 0
                    || !(u.messages.refilled(s.messages_per_sec, s.messages_burst, now)
                        && u.bytes.refilled(s.bytes_per_sec, s.bytes_burst, now))
            });
            inner.idle = inner.users.values().filter(|u| u.connections == 0).count();
        }
        let was_idle = inner.users.get(&key).is_some_and(|u| u.connections == 0);
        let user = inner.users.entry(key.clone()).or_insert_with(|| UserState {
            messages: Bucket::full(s.messages_burst, now),
            bytes: Bucket::full(s.bytes_burst, now),
            connections: 0,
        });
        if user.connections >= s.connections_per_user_max {
            return Err(ConnRefusal::PerUser);
        }
        user.connections += 1;
        inner.connections += 1;
        if was_idle {
            inner.idle -= 1;
        }
        Ok(ConnPermit { limiter: self.clone(), key })
    }

    /// Users with at least one connection (anonymous connections count one each).
    pub fn users_online(&self) -> usize {
        let inner = self.inner.lock().expect("limiter lock poisoned");
        inner.users.values().filter(|u| u.connections > 0).count()
    }

    /// Takes one message of `bytes` from the key's buckets; `false` means rate limited.
    pub fn allow_message(&self, key: &Arc<str>, bytes: usize, now: Instant) -> bool {
        let s = &self.settings;
        let mut inner = self.inner.lock().expect("limiter lock poisoned");
        let Some(user) = inner.users.get_mut(key) else { return true };
        // Check both before taking from either, so a refused message costs nothing.
        let mut messages = user.messages.clone();
        let mut bytes_bucket = user.bytes.clone();
        let ok = messages.take(1.0, s.messages_per_sec, s.messages_burst, now)
            && bytes_bucket.take(bytes as f64, s.bytes_per_sec, s.bytes_burst, now);
        if ok {
            user.messages = messages;
            user.bytes = bytes_bucket;
        }
        ok
    }
}

impl Drop for ConnPermit {
    fn drop(&mut self) {
        let mut inner = self.limiter.inner.lock().expect("limiter lock poisoned");
        inner.connections -= 1;
        if let Some(user) = inner.users.get_mut(&self.key) {
            user.connections -= 1;
            if user.connections == 0 {
                if self.key.starts_with(PER_CONNECTION_PREFIX) {
                    inner.users.remove(&self.key);
                } else {
                    inner.idle += 1;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn settings() -> LimitSettings {
        LimitSettings {
            messages_per_sec: 10.0,
            messages_burst: 20.0,
            bytes_per_sec: 1000.0,
            bytes_burst: 5000.0,
            connections_per_user_max: 2,
            connections_max: 3,
        }
    }

    #[test]
    fn bursts_pass_then_the_rate_applies() {
        let limiter = Limiter::new(settings());
        let t = Instant::now();
        let key: Arc<str> = "u".into();
        let _p = limiter.admit(key.clone(), t).unwrap();
        assert_eq!((0..30).filter(|_| limiter.allow_message(&key, 1, t)).count(), 20);
        assert!(limiter.allow_message(&key, 1, t + Duration::from_millis(100)));
        assert!(!limiter.allow_message(&key, 1, t + Duration::from_millis(100)));
    }

    #[test]
    fn bytes_are_limited_too_and_a_refusal_costs_nothing() {
        let limiter = Limiter::new(settings());
        let t = Instant::now();
        let key: Arc<str> = "u".into();
        let _p = limiter.admit(key.clone(), t).unwrap();
        assert!(limiter.allow_message(&key, 4000, t));
        assert!(!limiter.allow_message(&key, 4000, t));
        assert!(limiter.allow_message(&key, 1000, t));
    }

    #[test]
    fn a_users_connections_share_buckets_and_a_cap() {
        let limiter = Limiter::new(settings());
        let t = Instant::now();
        let key: Arc<str> = "u".into();
        let a = limiter.admit(key.clone(), t).unwrap();
        let _b = limiter.admit(key.clone(), t).unwrap();
        assert_eq!(limiter.admit(key.clone(), t).unwrap_err(), ConnRefusal::PerUser);
        let _c = limiter.admit("v".into(), t).unwrap();
        assert_eq!(limiter.admit("w".into(), t).unwrap_err(), ConnRefusal::Global);
        drop(a);
        let _d = limiter.admit(key.clone(), t).unwrap();
    }

    #[test]
    fn a_reconnect_does_not_refill_a_drained_bucket() {
        let limiter = Limiter::new(settings());
        let t = Instant::now();
        let key: Arc<str> = "u".into();
        let p = limiter.admit(key.clone(), t).unwrap();
        assert_eq!((0..30).filter(|_| limiter.allow_message(&key, 1, t)).count(), 20);
        drop(p);
        let _p = limiter.admit(key.clone(), t).unwrap();
        assert!(!limiter.allow_message(&key, 1, t), "the new connection shares the drained bucket");
        assert!(limiter.allow_message(&key, 1, t + Duration::from_millis(100)), "which refills at its rate");
        assert_eq!(limiter.inner.lock().unwrap().idle, 0);
    }

    #[test]
    fn anonymous_entries_go_with_their_connection_and_idle_users_are_swept_once_refilled() {
        let limiter = Limiter::new(LimitSettings { connections_per_user_max: 10, connections_max: 10, ..settings() });
        let t = Instant::now();
        let anonymous = limiter.admit(key_for(&"anonymous".into(), true, 7), t).unwrap();
        drop(anonymous);
        assert!(limiter.inner.lock().unwrap().users.is_empty());
        for i in 0..=IDLE_SWEEP_MIN {
            let key: Arc<str> = format!("user{i}").into();
            let p = limiter.admit(key.clone(), t).unwrap();
            assert!(limiter.allow_message(&key, 1, t));
            drop(p);
        }
        assert_eq!(limiter.inner.lock().unwrap().idle, IDLE_SWEEP_MIN + 1);
        // Not refilled yet: nothing is swept.
        let _p = limiter.admit("late".into(), t).unwrap();
        assert_eq!(limiter.inner.lock().unwrap().users.len(), IDLE_SWEEP_MIN + 2);
        // Refilled (one message at 10/s takes 0.1 s): swept at the next admission.
        let _q = limiter.admit("later".into(), t + Duration::from_millis(200)).unwrap();
        let inner = limiter.inner.lock().unwrap();
        assert_eq!((inner.users.len(), inner.idle), (2, 0));
    }
}
