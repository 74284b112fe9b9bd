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
use tokio::sync::{mpsc, oneshot};
use yrs::{Out, ReadTxn, Transact};

use super::DocActor;
use crate::ot::delta::Delta;
use crate::ot::ytext;

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

impl DocActor {
    /// Whether anyone reads this document's events (text deltas are only computed then).
    pub(super) fn events_followed(&self) -> bool {
        !self.events.readers.is_empty()
    }

    pub(super) fn publish(&mut self, event: Event) {
        let e = &mut self.events;
        if !e.started {
            e.seq = self.last_seq;
            e.started = true;
        }
        match event.seq {
            Some(seq) => {
                e.seq = seq;
                e.n = 0;
            }
            None => e.n += 1,
        }
        let streamed =
            Arc::new(StreamEvent { id: format_event_id(e.seq, e.n), kind: event.kind, data: event.data.to_string() });
        e.ring.push_back((e.seq, e.n, streamed.clone()));
        while e.ring.len() > RING_EVENTS_MAX {
            e.ring.pop_front();
        }
        let dropped = e.fan_out(&streamed);
        if dropped > 0 {
            tracing::warn!(doc = %self.name, dropped, "event stream reader too slow; dropping it (it resumes with Last-Event-ID)");
            crate::metrics::METRICS.refused("sse reader too slow");
        }
    }

    /// A new reader, resuming after `last` if given.
    pub(super) fn subscribe_events(&mut self, last: Option<(u64, u64)>, reply: oneshot::Sender<Subscription>) {
        if !self.events.started {
            self.events.seq = self.last_seq;
            self.events.started = true;
        }
        self.observe_text_roots();
        // With no reader, update events are not published, so the ring stops short of the
        // last update: it must not claim to cover a reader that resumes; the log does.
        self.events.readers.retain(|r| !r.is_closed());
        if self.events.readers.is_empty() && self.events.seq < self.last_seq {
            self.events.ring.clear();
            self.events.seq = self.last_seq;
            self.events.n = 0;
        }
        let (tx, rx) = mpsc::channel(RING_EVENTS_MAX + READER_QUEUE_EVENTS_MAX);
        let mut replay_from_store = None;
        if let Some(last) = last {
            let covered = self.events.ring.front().is_some_and(|(s, n, _)| (*s, *n) <= last);
            if covered {
                for (s, n, event) in &self.events.ring {
                    if (*s, *n) > last {
                        let _ = tx.try_send(event.clone());
                    }
                }
            } else if last.0 < self.events.seq {
                // Older than the ring: the updates since then come from the log; the ring's
                // events after the newest of them follow.
                replay_from_store = Some((last.0, self.events.seq));
                for (s, n, event) in &self.events.ring {
                    if *s > self.events.seq || (*s == self.events.seq && *n > 0) {
                        let _ = tx.try_send(event.clone());
                    }
                }
            }
        }
        // Parked like the frames: the reader starts after everything committed so far.
        self.events.readers.push(tx);
        let _ = reply.send(Subscription { replay_from_store, live: rx });
    }

    /// Observes every root text not observed yet, so the update events carry their deltas.
    fn observe_text_roots(&mut self) {
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
