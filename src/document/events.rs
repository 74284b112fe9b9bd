//! A document's event streams (SPEC §6, `GET /api/docs/{name}/events`): `update` events
//! (seq, origin, size, and the delta of every changed root text), `presence` (join, change,
//! leave), `lock` changes. Events are parked like frames, so an update's event goes out only
//! after its commit.
//!
//! Event ids are `SEQ.N`: the seq of the latest update event, and a counter of the events
//! since it. A reconnecting reader sends its last id (`Last-Event-ID`): the recent events
//! after it are replayed from a bounded ring. If the ring no longer reaches back that far,
//! the updates it missed are replayed from the store's log instead (without their text
//! deltas, marked `replayed`), so no update is ever skipped; missed presence changes are
//! not replayed (presence is ephemeral; `GET …/presence` has the current state).
//! Each reader has a bounded queue; a reader too slow to keep up is dropped (its stream
//! ends) rather than buffered without bound, and resumes with its last id.

use std::collections::VecDeque;
use std::sync::Arc;

use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::ot::delta::Delta;

/// Recent events kept for readers that resume.
const RING_EVENTS_MAX: usize = 1024;
/// Events queued for one reader before it is dropped as too slow.
const READER_QUEUE_EVENTS_MAX: usize = 256;

/// An event before it has an id.
pub struct Event {
    kind: &'static str,
    /// Set for `update` events: the update's seq.
    seq: Option<u64>,
    data: Value,
}

/// An event as streamed.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamEvent {
    pub id: String,
    pub kind: &'static str,
    pub data: String,
}

/// A new reader's stream: first the updates to replay from the store (`seq` in
/// `(after, upto]`, if any), then `live`.
pub struct Subscription {
    pub replay_from_store: Option<(u64, u64)>,
    pub live: mpsc::Receiver<Arc<StreamEvent>>,
}

#[derive(Default)]
pub(crate) struct EventsState {
    readers: Vec<mpsc::Sender<Arc<StreamEvent>>>,
    ring: VecDeque<(u64, u64, Arc<StreamEvent>)>,
    /// The id of the last event: `(seq, n)`.
    seq: u64,
    n: u64,
    started: bool,
}

impl EventsState {
    /// Queues an event to every reader; a reader whose queue is full is dropped (its stream
    /// ends), as is one that went away. Returns how many were dropped for being slow.
    fn fan_out(&mut self, event: &Arc<StreamEvent>) -> usize {
        let mut slow = 0;
        self.readers.retain(|r| match r.try_send(event.clone()) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                slow += 1;
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        });
        slow
    }
}

pub fn update_event(seq: u64, origin: &str, size: usize, deltas: &[(Arc<str>, Delta)]) -> Event {
    let mut texts = serde_json::Map::new();
    for (name, delta) in deltas {
        texts.insert(name.to_string(), delta.to_json());
    }
    Event { kind: "update", seq: Some(seq), data: json!({"seq": seq, "origin": origin, "size": size, "texts": texts}) }
}

/// `action` is `join`, `change` or `leave`.
pub fn presence_event(client: u64, action: &str, state: Value) -> Event {
    Event { kind: "presence", seq: None, data: json!({"client_id": client, "action": action, "state": state}) }
}

pub fn lock_event(data: Value) -> Event {
    Event { kind: "lock", seq: None, data }
}

/// An event's id, `SEQ.N`: what a reader sends back as `Last-Event-ID`.
pub fn format_event_id(seq: u64, n: u64) -> String {
    format!("{seq}.{n}")
}

/// Parses a `Last-Event-ID` of the form `SEQ.N`.
pub fn parse_event_id(id: &str) -> Option<(u64, u64)> {
    let (seq, n) = id.trim().split_once('.')?;
    Some((seq.parse().ok()?, n.parse().ok()?))
}

impl EventsState {
    /// Whether anyone reads this document's events (text deltas are only computed then).
    pub(crate) fn followed(&self) -> bool {
        !self.readers.is_empty()
    }

    /// Gives `event` its id, keeps it in the ring and queues it to every reader; returns
    /// how many readers were dropped for being too slow. `last_seq` is the document's.
    pub(crate) fn publish(&mut self, event: Event, last_seq: u64) -> usize {
        if !self.started {
            self.seq = last_seq;
            self.started = true;
        }
        match event.seq {
            Some(seq) => {
                self.seq = seq;
                self.n = 0;
            }
            None => self.n += 1,
        }
        let streamed = Arc::new(StreamEvent {
            id: format_event_id(self.seq, self.n),
            kind: event.kind,
            data: event.data.to_string(),
        });
        self.ring.push_back((self.seq, self.n, streamed.clone()));
        while self.ring.len() > RING_EVENTS_MAX {
            self.ring.pop_front();
        }
        self.fan_out(&streamed)
    }

    /// A new reader, resuming after `last` if given; `last_seq` is the document's.
    pub(crate) fn subscribe(&mut self, last: Option<(u64, u64)>, last_seq: u64) -> Subscription {
        if !self.started {
            self.seq = last_seq;
            self.started = true;
        }
        // With no reader, update events are not published, so the ring stops short of the
        // last update: it must not claim to cover a reader that resumes; the log does.
        self.readers.retain(|r| !r.is_closed());
        if self.readers.is_empty() && self.seq < last_seq {
            self.ring.clear();
            self.seq = last_seq;
            self.n = 0;
        }
        let (tx, rx) = mpsc::channel(RING_EVENTS_MAX + READER_QUEUE_EVENTS_MAX);
        let mut replay_from_store = None;
        if let Some(last) = last {
            let covered = self.ring.front().is_some_and(|(s, n, _)| (*s, *n) <= last);
            if covered {
                for (s, n, event) in &self.ring {
                    if (*s, *n) > last {
                        let _ = tx.try_send(event.clone());
                    }
                }
            } else if last.0 < self.seq {
                // Older than the ring: the updates since then come from the log; the ring's
                // events after the newest of them follow.
                replay_from_store = Some((last.0, self.seq));
                for (s, n, event) in &self.ring {
                    if *s > self.seq || (*s == self.seq && *n > 0) {
                        let _ = tx.try_send(event.clone());
                    }
                }
            }
        }
        self.readers.push(tx);
        Subscription { replay_from_store, live: rx }
    }
}

/// Server-wide events (documents opened and closed, users joining and leaving), fanned out
/// to `GET /api/events` readers. Bounded: a reader that falls more than
/// `SERVER_EVENTS_MAX` behind is dropped. Ids are a per-process counter; there is no
/// replay (the activity is ephemeral, `GET /api/stats` and `/api/docs` give the state).
pub struct ServerEvents {
    tx: tokio::sync::broadcast::Sender<Arc<StreamEvent>>,
    next: std::sync::atomic::AtomicU64,
}

const SERVER_EVENTS_MAX: usize = 1024;

impl std::fmt::Debug for ServerEvents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerEvents").field("readers", &self.tx.receiver_count()).finish()
    }
}

impl ServerEvents {
    pub(crate) fn new() -> ServerEvents {
        ServerEvents { tx: tokio::sync::broadcast::channel(SERVER_EVENTS_MAX).0, next: Default::default() }
    }

    pub fn emit(&self, kind: &'static str, data: serde_json::Value) {
        if self.tx.receiver_count() == 0 {
            return;
        }
        let id = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        let _ = self.tx.send(Arc::new(StreamEvent { id: id.to_string(), kind, data: data.to_string() }));
    }

    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Arc<StreamEvent>> {
        self.tx.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(n: u64) -> Arc<StreamEvent> {
        Arc::new(StreamEvent { id: format!("{n}.0"), kind: "update", data: "{}".into() })
    }

    #[test]
    fn a_reader_whose_queue_is_full_is_dropped_and_the_others_keep_receiving() {
        let mut state = EventsState::default();
        let (slow_tx, _slow_rx) = mpsc::channel(2);
        let (fast_tx, mut fast_rx) = mpsc::channel(2);
        state.readers.push(slow_tx);
        state.readers.push(fast_tx);
        for n in 0..5 {
            let dropped = state.fan_out(&event(n));
            // The slow reader never reads: its third event does not fit.
            assert_eq!(dropped, usize::from(n == 2), "event {n}");
            assert_eq!(fast_rx.try_recv().unwrap().id, format!("{n}.0"));
        }
        assert_eq!(state.readers.len(), 1);
    }

    #[test]
    fn a_reader_that_went_away_is_forgotten_without_counting_as_slow() {
        let mut state = EventsState::default();
        let (tx, rx) = mpsc::channel(2);
        state.readers.push(tx);
        drop(rx);
        assert_eq!(state.fan_out(&event(1)), 0);
        assert!(state.readers.is_empty());
    }

    #[test]
    fn event_ids_parse_as_seq_and_counter() {
        assert_eq!(parse_event_id("42.3"), Some((42, 3)));
        assert_eq!(parse_event_id(" 7.0 "), Some((7, 0)));
        assert_eq!(parse_event_id("42"), None);
        assert_eq!(parse_event_id("a.b"), None);
    }
}
