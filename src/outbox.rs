//! The outbound queue of one connection, bounded in bytes.
//!
//! The document actor pushes encoded frames without ever waiting; the session pops them and
//! writes them to the socket. A push that would take the queue past its byte limit closes the
//! connection with 1013 instead: a slow consumer is closed, never waited on (which would stall
//! every peer of the document) and never silently skipped (which would leave it diverged).
//! A close request overtakes queued frames.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::Notify;

use crate::protocol::{close, CloseReason};

#[derive(Debug)]
struct State {
    frames: VecDeque<Bytes>,
    queued_bytes: usize,
    close: Option<CloseReason>,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    notify: Notify,
    queued_bytes_max: usize,
}

/// The session's end.
#[derive(Debug)]
pub struct Outbox {
    shared: Arc<Shared>,
}

/// The document actor's end. Dropping it without a close (the actor died) closes the
/// connection with 1011, so no session waits on a document that is gone.
#[derive(Debug)]
pub struct OutboxSender {
    shared: Arc<Shared>,
}

/// A further sender for a connection that several documents write to (an OT connection
/// subscribes to texts of many documents). Unlike `OutboxSender`, dropping it closes nothing:
/// one document going away must not end the connection to the others.
#[derive(Debug, Clone)]
pub struct OutboxPeer {
    shared: Arc<Shared>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    Frame(Bytes),
    Close(CloseReason),
}

#[derive(Debug, PartialEq, Eq)]
pub enum SendError {
    /// The frame did not fit: the connection is now closing with 1013.
    Overflow,
    /// The connection is already closing; the frame was dropped.
    Closed,
}

pub fn outbox(queued_bytes_max: usize) -> (OutboxSender, Outbox) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State { frames: VecDeque::new(), queued_bytes: 0, close: None }),
        notify: Notify::new(),
        queued_bytes_max,
    });
    (OutboxSender { shared: shared.clone() }, Outbox { shared })
}

pub const SLOW_CONSUMER: CloseReason = CloseReason::new(close::TRY_AGAIN_LATER, "slow consumer");

impl OutboxSender {
    /// Queues a frame. A frame larger than the whole limit is still accepted into an empty
    /// queue, so one large initial sync can always be delivered.
    pub fn send(&self, frame: Bytes) -> Result<(), SendError> {
        push(&self.shared, frame)
    }

    pub fn peer(&self) -> OutboxPeer {
        OutboxPeer { shared: self.shared.clone() }
    }

    /// Asks the session to close the connection; queued frames are dropped.
    pub fn close(&self, reason: CloseReason) {
        close_shared(&self.shared, reason);
    }
}

impl OutboxPeer {
    pub fn send(&self, frame: Bytes) -> Result<(), SendError> {
        push(&self.shared, frame)
    }

    pub fn close(&self, reason: CloseReason) {
        close_shared(&self.shared, reason);
    }

    /// Whether two peers write to the same connection.
    pub fn same(&self, other: &OutboxPeer) -> bool {
        Arc::ptr_eq(&self.shared, &other.shared)
    }
}

fn push(shared: &Shared, frame: Bytes) -> Result<(), SendError> {
    {
        let mut state = shared.state.lock().expect("outbox lock poisoned");
        if state.close.is_some() {
            return Err(SendError::Closed);
        }
        let queued = state.queued_bytes + frame.len();
        if queued > shared.queued_bytes_max && !state.frames.is_empty() {
            state.close = Some(SLOW_CONSUMER);
            state.frames.clear();
            state.queued_bytes = 0;
            drop(state);
            shared.notify.notify_one();
            return Err(SendError::Overflow);
        }
        state.queued_bytes = queued;
        state.frames.push_back(frame);
    }
    shared.notify.notify_one();
    Ok(())
}

fn close_shared(shared: &Shared, reason: CloseReason) {
    {
        let mut state = shared.state.lock().expect("outbox lock poisoned");
        if state.close.is_none() {
            state.close = Some(reason);
            state.frames.clear();
            state.queued_bytes = 0;
        }
    }
    shared.notify.notify_one();
}

impl Drop for OutboxSender {
    fn drop(&mut self) {
        self.close(CloseReason::new(close::INTERNAL_ERROR, "document closed"));
    }
}

impl Outbox {
    /// Waits for the next frame to write, or the close to perform. Cancel-safe.
    pub async fn next(&self) -> Next {
        loop {
            {
                let mut state = self.shared.state.lock().expect("outbox lock poisoned");
                if let Some(reason) = &state.close {
                    return Next::Close(reason.clone());
                }
                if let Some(frame) = state.frames.pop_front() {
                    state.queued_bytes -= frame.len();
                    return Next::Frame(frame);
                }
            }
            // `notify_one` stores a permit when nobody waits, so a push between the unlock
            // above and this await is not lost.
            self.shared.notify.notified().await;
        }
    }

    /// Closes from the session side (the connection ended); later sends fail.
    pub fn close(&self, reason: CloseReason) {
        let mut state = self.shared.state.lock().expect("outbox lock poisoned");
        state.close.get_or_insert(reason);
        state.frames.clear();
        state.queued_bytes = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(n: usize) -> Bytes {
        Bytes::from(vec![0u8; n])
    }

    #[tokio::test]
    async fn frames_come_out_in_order() {
        let (tx, rx) = outbox(100);
        tx.send(frame(1)).unwrap();
        tx.send(frame(2)).unwrap();
        assert_eq!(rx.next().await, Next::Frame(frame(1)));
        assert_eq!(rx.next().await, Next::Frame(frame(2)));
    }

    #[tokio::test]
    async fn overflow_closes_with_1013_and_overtakes_queued_frames() {
        let (tx, rx) = outbox(100);
        tx.send(frame(60)).unwrap();
        assert_eq!(tx.send(frame(60)), Err(SendError::Overflow));
        assert_eq!(rx.next().await, Next::Close(SLOW_CONSUMER));
        assert_eq!(tx.send(frame(1)), Err(SendError::Closed));
    }

    #[tokio::test]
    async fn popped_frames_free_their_bytes() {
        let (tx, rx) = outbox(100);
        for _ in 0..10 {
            tx.send(frame(60)).unwrap();
            assert_eq!(rx.next().await, Next::Frame(frame(60)));
        }
    }

    #[tokio::test]
    async fn one_oversized_frame_fits_an_empty_queue() {
        let (tx, rx) = outbox(100);
        tx.send(frame(500)).unwrap();
        assert_eq!(rx.next().await, Next::Frame(frame(500)));
    }

    #[tokio::test]
    async fn dropping_the_sender_closes_with_1011() {
        let (tx, rx) = outbox(100);
        drop(tx);
        assert!(matches!(rx.next().await, Next::Close(r) if r.code == close::INTERNAL_ERROR));
    }
}
