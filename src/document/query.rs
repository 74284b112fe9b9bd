//! The operator requests a live document answers (SPEC §6), as data: its state, presence,
//! an update posted over REST, advisory locks, deletion. The actor answers them in
//! `actor/query.rs`.

use std::sync::Arc;

use tokio::sync::oneshot;
use yrs::StateVector;

use super::events::Subscription;
use crate::locks::{Lock, LockError};
use crate::presence::{ConnId, PresentClient};
use crate::protocol::Checked;
use crate::store::StoreError;

pub enum DocQuery {
    /// The present awareness states.
    Presence(oneshot::Sender<Vec<PresentClient>>),
    /// The current state as a v1 update: everything, or the diff against `sv`.
    State { sv: Option<StateVector>, reply: oneshot::Sender<Vec<u8>> },
    /// An update posted over REST by `user`; answered after its commit with its `seq`
    /// (`None`: nothing new).
    Apply { conn: ConnId, update: Checked, user: Arc<str>, reply: oneshot::Sender<Result<Option<u64>, ApplyRefusal>> },
    /// A new event stream reader, resuming after `(seq, n)` if given.
    Events { last_event_id: Option<(u64, u64)>, reply: oneshot::Sender<Subscription> },
    /// Takes, renews, releases or lists advisory locks (`user` is the caller).
    Lock { op: LockOp, user: Arc<str>, reply: oneshot::Sender<LockReply> },
    /// Closes every connection, deletes the document from the store, and stops the actor.
    Delete(oneshot::Sender<Result<bool, StoreError>>),
}

pub enum LockOp {
    Acquire { key: Arc<str>, ttl_ms: u64 },
    Release { key: Arc<str> },
    List,
}

pub type LockReply = Result<Vec<Lock>, LockError>;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ApplyRefusal {
    #[error("the update depends on changes the document does not have (missing dependencies)")]
    MissingDependencies,
    #[error("the update was refused (another user's client id, GC squatting, or it does not apply)")]
    Refused,
    #[error("the server is shutting down")]
    ShuttingDown,
}

pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

pub fn format_ms(ms: u64) -> String {
    humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms)).to_string()
}
