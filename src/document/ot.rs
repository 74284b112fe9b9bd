//! The OT side of a document, as data (SPEC §5): the requests OT clients (ShareDB connections,
//! REST) send a document actor, its replies, and the per-text state it keeps: one `Sequencer`
//! per root text OT clients have used, with that text's OT subscribers.
//!
//! The bridge itself (OT → Yjs and Yjs → OT, run by the actor) is in `actor/ot.rs`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde_json::Value;
use tokio::sync::oneshot;
use yrs::TextRef;

use crate::ot::delta::{Delta, DeltaLimits};
use crate::ot::error::OtError;
use crate::ot::sequencer::{LoggedOp, Sequencer};
use crate::ot::sharedb;
use crate::outbox::OutboxPeer;
use crate::presence::ConnId;

/// Bounds for ops read back from the store: none beyond JavaScript's lengths.
pub(crate) const STORED: DeltaLimits =
    DeltaLimits { components_max: usize::MAX, insert_units_max: u64::MAX, len_max: 1 << 53 };

/// The `origin` of updates made through OT, in the update log (SPEC §3).
pub const OT_ORIGIN: &str = "ot";

/// A request from an OT client (ShareDB connection or REST) about one text of this document.
pub struct OtRequest {
    pub conn: ConnId,
    pub user: Arc<str>,
    pub text: Arc<str>,
    pub kind: OtKind,
    pub reply: OtReplyTo,
}

pub enum OtKind {
    /// The snapshot (`from: None`) or every op since `from`.
    Fetch {
        from: Option<u64>,
    },
    /// As `Fetch`, then every later op, until unsubscribed or gone. `src` is the connection's
    /// client id: its own ops are acknowledged to it, not sent again.
    Subscribe {
        from: Option<u64>,
        src: Arc<str>,
    },
    Unsubscribe,
    /// A doc presence (cursor) of connection `src`: transformed to the current version and
    /// sent to the channel's other subscribers in `hub`, and to the sender as its ack.
    Presence {
        msg: sharedb::Presence,
        src: Arc<str>,
        hub: Arc<crate::ot::presence::Hub<OutboxPeer>>,
        /// Echo it to the sender (not for the withdrawals of a leaving connection).
        ack: bool,
    },
    /// `v: None` means "at the current version" (ShareDB).
    Submit {
        v: Option<u64>,
        src: Arc<str>,
        seq: u64,
        op: Delta,
        writable: bool,
    },
}

/// Where the answer goes: a ShareDB connection's outbox (in order with the ops it is
/// subscribed to), or a REST handler waiting on a oneshot.
pub enum OtReplyTo {
    /// `action` is the single-document action replied to (`f`, `s`, `u`, `op`); `echo` the
    /// request, for an op's error reply.
    Wire {
        outbox: OutboxPeer,
        action: &'static str,
        echo: Value,
    },
    Rest(oneshot::Sender<Result<OtReply, OtError>>),
}

#[derive(Debug, Clone)]
pub enum OtReply {
    Snapshot {
        v: u64,
        epoch: Arc<str>,
        data: Delta,
    },
    Ops {
        v: u64,
        epoch: Arc<str>,
        ops: Vec<Arc<LoggedOp>>,
    },
    /// Committed (or found already committed) at `v`; `missed` are the ops between the
    /// submitter's base version and `v`, which it had not seen.
    Submitted {
        v: u64,
        epoch: Arc<str>,
        src: Arc<str>,
        seq: u64,
        missed: Vec<Arc<LoggedOp>>,
    },
    Unsubscribed,
}

/// Tunables of the OT layer, from `Config`.
#[derive(Debug, Clone)]
pub struct OtSettings {
    /// Ops kept per text (in memory and in `ot_ops`); older base versions must re-fetch.
    pub log_ops_max: usize,
    pub op_limits: DeltaLimits,
}

pub(crate) struct Subscriber {
    pub(crate) outbox: OutboxPeer,
    pub(crate) src: Arc<str>,
}

pub(crate) struct OtText {
    pub(crate) seq: Sequencer,
    pub(crate) text: TextRef,
    pub(crate) subscribers: HashMap<ConnId, Subscriber>,
}

/// Text deltas observed during a transaction, drained right after it.
type Events = Arc<Mutex<Vec<(Arc<str>, Delta)>>>;

#[derive(Default)]
pub(crate) struct OtState {
    pub(crate) texts: HashMap<Arc<str>, OtText>,
    /// Every observed root text: sequenced ones, and those an event stream follows.
    pub(crate) observed: std::collections::HashSet<Arc<str>>,
    pub(crate) events: Events,
}

impl OtState {
    pub(crate) fn remove_conn(&mut self, conn: ConnId) {
        for t in self.texts.values_mut() {
            t.subscribers.remove(&conn);
        }
    }

    /// Forgets every sequencer and subscriber (the document was deleted).
    pub(crate) fn close_all(&mut self) {
        self.texts.clear();
        self.observed.clear();
        self.drain_events();
    }

    pub(crate) fn drain_events(&self) -> Vec<(Arc<str>, Delta)> {
        std::mem::take(&mut *self.events.lock().expect("ot events lock poisoned"))
    }
}

/// ShareDB's `transformPresenceToLatestVersion` for rich-text: a presence `p` sent at `v`,
/// moved through every op since (rich-text's `transformPresence`: both ends of the range,
/// an insert at a boundary pushes it unless the op is the presence owner's own), and the
/// version it is now at. `null` stays `null` at the current version. A `v` the log cannot
/// bridge (ahead, or older than the ops kept) is left as sent, and the client sorts it out
/// (it fetches, or asks for presence again); so is a value that is not an `{index, length}`.
pub(crate) fn presence_to_latest(seq: &Sequencer, v: Option<u64>, p: &Value, src: &str) -> (Option<u64>, Value) {
    let current = seq.version();
    if p.is_null() {
        return (Some(current), Value::Null);
    }
    let Some(from) = v else { return (Some(current), p.clone()) };
    let range = p.get("index").and_then(Value::as_u64).zip(p.get("length").and_then(Value::as_u64));
    let (Some((mut index, length)), Ok(ops)) = (range, seq.ops_since(from)) else {
        return (v, p.clone());
    };
    let mut end = index.saturating_add(length);
    for op in ops {
        let own = &*op.src == src;
        index = op.op.transform_position(index, !own);
        end = op.op.transform_position(end, !own);
    }
    let mut moved = p.clone();
    moved["index"] = index.into();
    moved["length"] = end.saturating_sub(index).into();
    (Some(current), moved)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ot::sequencer::FIRST_VERSION;
    use serde_json::json;

    /// A text at version 3: "abc" inserted at 0 by `other`, then "X" at 1 by `me`.
    fn sequencer() -> Sequencer {
        let mut seq = Sequencer::new("e".into(), FIRST_VERSION, Vec::new(), 100);
        for (src, op) in [("other", json!([{"insert": "abc"}])), ("me", json!([{"retain": 1}, {"insert": "X"}]))] {
            seq.commit(src.into(), 1, Delta::from_json(&op, &STORED).unwrap());
        }
        seq
    }

    #[test]
    fn a_stale_range_moves_through_every_later_op_and_keeps_its_other_fields() {
        let seq = sequencer();
        assert_eq!(seq.version(), 3);
        // A cursor at 0 of the empty text (v1), with another field.
        let (v, p) = presence_to_latest(&seq, Some(1), &json!({"index": 0, "length": 0, "name": "me"}), "me");
        // Another's insert at the cursor does not push it; my "X" at 1 is after it.
        assert_eq!((v, p), (Some(3), json!({"index": 0, "length": 0, "name": "me"})));
        let (v, p) = presence_to_latest(&seq, Some(2), &json!({"index": 1, "length": 2}), "me");
        assert_eq!((v, p), (Some(3), json!({"index": 2, "length": 2})), "my own insert at the start pushes it");
        let (v, p) = presence_to_latest(&seq, Some(2), &json!({"index": 1, "length": 2}), "someone");
        assert_eq!((v, p), (Some(3), json!({"index": 1, "length": 3})), "another's insert at the start does not");
        let (v, p) = presence_to_latest(&seq, Some(3), &json!({"index": 4, "length": 0}), "me");
        assert_eq!((v, p), (Some(3), json!({"index": 4, "length": 0})), "up to date: unchanged");
    }

    #[test]
    fn a_withdrawal_is_at_the_current_version_and_what_cannot_be_moved_is_left_as_sent() {
        let seq = sequencer();
        assert_eq!(presence_to_latest(&seq, Some(1), &Value::Null, "me"), (Some(3), Value::Null));
        assert_eq!(presence_to_latest(&seq, None, &Value::Null, "me"), (Some(3), Value::Null));
        let range = json!({"index": 1, "length": 0});
        assert_eq!(presence_to_latest(&seq, Some(9), &range, "me"), (Some(9), range.clone()), "ahead of the text");
        assert_eq!(presence_to_latest(&seq, Some(0), &range, "me"), (Some(0), range.clone()), "older than the log");
        let odd = json!({"index": -1, "length": 0});
        assert_eq!(presence_to_latest(&seq, Some(1), &odd, "me"), (Some(1), odd.clone()), "not a range");
    }
}
