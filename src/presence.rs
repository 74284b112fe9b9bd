//! The awareness table of one document, sans IO: which client ids are present, their JSON
//! state and clock, which connection announced them, and when they were last renewed.
//!
//! Owned by the document actor; time is passed in. The acceptance rule is the one of
//! y-protocols `applyAwarenessUpdate`: an entry wins if its clock is newer, or if it has the
//! same clock, a `null` state, and the client is present (a removal). Every accepted entry is
//! relayed, renewals included: the stock client reconnects after 30 s without a message,
//! so echoing its own 15 s renewals back keeps a lone client connected.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use yrs::sync::awareness::{AwarenessUpdate, AwarenessUpdateEntry};
use yrs::ClientID;

pub use crate::conn::ConnId;

const NULL_STATE: &str = "null";

/// Removed clients' clocks are remembered this long so that a late, older update cannot
/// resurrect them; after that the entry is forgotten to bound the table.
const REMOVED_KEEP: Duration = Duration::from_secs(60);

#[derive(Debug)]
struct ClientState {
    clock: u32,
    /// `None` once removed (only the clock is kept).
    json: Option<Arc<str>>,
    renewed_at: Instant,
    /// When the current state first appeared (renewals keep it).
    since: Instant,
    owner: Option<ConnId>,
}

/// One present client, for operators (`GET /api/docs/{name}/presence`).
#[derive(Debug, Clone, PartialEq)]
pub struct PresentClient {
    pub client: u64,
    pub state: Arc<str>,
    pub since: Instant,
    pub renewed_at: Instant,
}

#[derive(Debug, Default)]
pub struct Presence {
    clients: HashMap<ClientID, ClientState>,
}

impl Presence {
    /// Applies an awareness update sent by `conn`; returns the accepted entries to relay.
    pub fn apply(&mut self, conn: ConnId, update: AwarenessUpdate, now: Instant) -> Option<AwarenessUpdate> {
        let mut accepted = HashMap::new();
        for (client, entry) in update.clients {
            if !self.accepts(client, &entry) {
                continue;
            }
            let is_null = is_removal(&entry);
            let since = match self.clients.get(&client) {
                Some(cur) if cur.json.is_some() => cur.since,
                _ => now,
            };
            self.clients.insert(
                client,
                ClientState {
                    clock: entry.clock,
                    json: (!is_null).then(|| entry.json.clone()),
                    renewed_at: now,
                    since,
                    owner: (!is_null).then_some(conn),
                },
            );
            accepted.insert(client, entry);
        }
        (!accepted.is_empty()).then_some(AwarenessUpdate { clients: accepted })
    }

    /// Whether `apply` would take this entry: a newer clock, or a same-clock removal of a
    /// present client.
    pub fn accepts(&self, client: ClientID, entry: &AwarenessUpdateEntry) -> bool {
        match self.clients.get(&client) {
            None => true,
            Some(cur) => {
                cur.clock < entry.clock || (cur.clock == entry.clock && is_removal(entry) && cur.json.is_some())
            }
        }
    }

    /// Removes every client announced by a connection that has ended.
    pub fn remove_connection(&mut self, conn: ConnId, now: Instant) -> Option<AwarenessUpdate> {
        self.remove_where(now, |state| state.owner == Some(conn))
    }

    /// Removes states not renewed within `timeout` and forgets long-removed clients.
    pub fn expire(&mut self, now: Instant, timeout: Duration) -> Option<AwarenessUpdate> {
        self.clients.retain(|_, s| s.json.is_some() || now.saturating_duration_since(s.renewed_at) < REMOVED_KEEP);
        self.remove_where(now, |state| now.saturating_duration_since(state.renewed_at) >= timeout)
    }

    /// The current states, for a new connection or a query-awareness message.
    pub fn current(&self) -> Option<AwarenessUpdate> {
        let clients: HashMap<_, _> = self
            .clients
            .iter()
            .filter_map(|(id, s)| {
                s.json.as_ref().map(|json| (*id, AwarenessUpdateEntry { clock: s.clock, json: json.clone() }))
            })
            .collect();
        (!clients.is_empty()).then_some(AwarenessUpdate { clients })
    }

    /// Every client with a state, by client id.
    pub fn list(&self) -> Vec<PresentClient> {
        let mut out: Vec<PresentClient> = self
            .clients
            .iter()
            .filter_map(|(id, s)| {
                s.json.as_ref().map(|json| PresentClient {
                    client: id.get(),
                    state: json.clone(),
                    since: s.since,
                    renewed_at: s.renewed_at,
                })
            })
            .collect();
        out.sort_by_key(|p| p.client);
        out
    }

    /// Whether `client` has a state.
    pub fn is_present(&self, client: u64) -> bool {
        self.clients.get(&ClientID::new(client)).is_some_and(|s| s.json.is_some())
    }

    /// Number of clients with a state.
    pub fn len(&self) -> usize {
        self.clients.values().filter(|s| s.json.is_some()).count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether `expire` has anything to do: a present client, or a removed one whose clock
    /// is still remembered. The latter must be forgotten in time even when nobody is present,
    /// or a document where clients keep joining and leaving grows its table until it unloads.
    pub fn needs_expiry(&self) -> bool {
        !self.clients.is_empty()
    }

    // Removal keeps the clock: peers accept a same-clock `null` for a present client, which
    // is what y-protocols `removeAwarenessStates` sends for remote clients.
    fn remove_where(&mut self, now: Instant, pred: impl Fn(&ClientState) -> bool) -> Option<AwarenessUpdate> {
        let null: Arc<str> = NULL_STATE.into();
        let mut removed = HashMap::new();
        for (id, state) in self.clients.iter_mut() {
            if state.json.is_some() && pred(state) {
                state.json = None;
                state.owner = None;
                state.renewed_at = now;
                removed.insert(*id, AwarenessUpdateEntry { clock: state.clock, json: null.clone() });
            }
        }
        (!removed.is_empty()).then_some(AwarenessUpdate { clients: removed })
    }
}

/// A `null` state: y-protocols' way of saying the client is gone.
pub fn is_removal(entry: &AwarenessUpdateEntry) -> bool {
    &*entry.json == NULL_STATE
}

#[cfg(test)]
mod tests {
    use super::*;

    fn update(entries: &[(u64, u32, &str)]) -> AwarenessUpdate {
        AwarenessUpdate {
            clients: entries
                .iter()
                .map(|&(id, clock, json)| (ClientID::new(id), AwarenessUpdateEntry { clock, json: json.into() }))
                .collect(),
        }
    }

    #[test]
    fn newer_clock_wins_and_older_is_dropped() {
        let mut p = Presence::default();
        let t = Instant::now();
        assert!(p.apply(ConnId(1), update(&[(10, 2, "{\"a\":1}")]), t).is_some());
        assert!(p.apply(ConnId(1), update(&[(10, 1, "{\"a\":0}")]), t).is_none());
        assert!(p.apply(ConnId(1), update(&[(10, 2, "{\"a\":9}")]), t).is_none());
        assert_eq!(&*p.current().unwrap().clients[&ClientID::new(10)].json, "{\"a\":1}");
    }

    #[test]
    fn renewal_with_same_state_is_relayed() {
        let mut p = Presence::default();
        let t = Instant::now();
        p.apply(ConnId(1), update(&[(10, 1, "{}")]), t);
        assert!(p.apply(ConnId(1), update(&[(10, 2, "{}")]), t).is_some());
    }

    #[test]
    fn same_clock_null_removes_a_present_client() {
        let mut p = Presence::default();
        let t = Instant::now();
        p.apply(ConnId(1), update(&[(10, 3, "{}")]), t);
        assert!(p.apply(ConnId(1), update(&[(10, 3, "null")]), t).is_some());
        assert!(p.is_empty());
        // A second removal with the same clock is not news.
        assert!(p.apply(ConnId(1), update(&[(10, 3, "null")]), t).is_none());
    }

    #[test]
    fn ending_a_connection_removes_only_its_clients() {
        let mut p = Presence::default();
        let t = Instant::now();
        p.apply(ConnId(1), update(&[(10, 1, "{}"), (11, 1, "{}")]), t);
        p.apply(ConnId(2), update(&[(20, 1, "{}")]), t);
        let removed = p.remove_connection(ConnId(1), t).unwrap();
        let mut ids: Vec<u64> = removed.clients.keys().map(|c| c.get()).collect();
        ids.sort();
        assert_eq!(ids, vec![10, 11]);
        assert!(removed.clients.values().all(|e| &*e.json == "null" && e.clock == 1));
        assert_eq!(p.len(), 1);
        assert!(p.remove_connection(ConnId(1), t).is_none());
    }

    #[test]
    fn removed_clients_are_forgotten_even_when_nobody_is_present() {
        let mut p = Presence::default();
        let t0 = Instant::now();
        for conn in 0..100 {
            p.apply(ConnId(conn), update(&[(conn, 1, "{}")]), t0);
            p.remove_connection(ConnId(conn), t0);
        }
        assert!(p.is_empty());
        assert!(p.needs_expiry(), "the removed clocks still need forgetting");
        assert!(p.expire(t0 + REMOVED_KEEP + Duration::from_secs(1), Duration::from_secs(30)).is_none());
        assert!(!p.needs_expiry());
        assert!(p.clients.is_empty());
    }

    #[test]
    fn states_not_renewed_expire() {
        let mut p = Presence::default();
        let t0 = Instant::now();
        let timeout = Duration::from_secs(30);
        p.apply(ConnId(1), update(&[(10, 1, "{}")]), t0);
        p.apply(ConnId(1), update(&[(11, 1, "{}")]), t0 + Duration::from_secs(20));
        assert!(p.expire(t0 + Duration::from_secs(29), timeout).is_none());
        let removed = p.expire(t0 + Duration::from_secs(31), timeout).unwrap();
        assert_eq!(removed.clients.keys().map(|c| c.get()).collect::<Vec<_>>(), vec![10]);
        assert_eq!(p.len(), 1);
    }
}
