//! One connection's socket, shared by its session and the document actors that write to it.
//!
//! A document actor relaying an update writes the WebSocket frame **straight to the socket**
//! (a non-blocking write, under a lock never held across an `.await`): no task wakes up, and
//! an idle connection costs one `sendto` per relayed frame. Only what the kernel does not
//! take at once goes to the connection's **backlog**, which its session drains as the socket
//! becomes writable. The backlog is bounded in bytes: a frame that would take it past the
//! limit closes the connection with 1013 instead, so a slow consumer is closed, never waited
//! on (which would stall every peer of the document) and never silently skipped (which would
//! leave it diverged). A document's close request drops the backlog and overtakes it; once
//! the session is closing with its own code, what it queued (its close frame last) goes out
//! whole, and later requests change nothing.
//!
//! The session reads and writes through tungstenite on a [`Socket`], which goes through the
//! same lock and backlog: the frames of both sides reach the wire whole and in order.
//!
//! Invariant: while the backlog is empty nobody waits for the socket to become writable (a
//! writer's readiness waker may be replaced by a no-op one); while it is not empty, only the
//! session writes to the socket, and the session is woken whenever it becomes non-empty.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::metrics::METRICS;
use crate::protocol::{close, CloseReason};

/// What a connection's socket must be: the upgraded HTTP connection, or a test's pipe.
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

/// The opcode of the data frames a connection carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opcode {
    /// Yjs connections.
    Binary = 0x2,
    /// ShareDB (OT) connections: every message is JSON.
    Text = 0x1,
}

/// A server ping (FIN, opcode 9, no payload, unmasked).
const PING: [u8; 2] = [0x89, 0x00];

/// Slices written per `writev` when draining the backlog.
const DRAIN_SLICES_MAX: usize = 64;

struct Chunk {
    bytes: Bytes,
    /// The last chunk of a frame: the wire is at a frame boundary once it is written.
    frame_end: bool,
}

struct State {
    io: Box<dyn Io>,
    backlog: VecDeque<Chunk>,
    backlog_bytes: usize,
    /// Part of the backlog's first frame is already on the wire: it must be finished before
    /// anything else (a close frame) can follow.
    mid_frame: bool,
    /// A close asked for by a writer (the document): the session closes with it.
    close: Option<CloseReason>,
    /// No more frames are accepted from documents (the session is ending).
    senders_closed: bool,
    /// A write failed: the connection is gone.
    broken: bool,
    /// The session's task, woken when the backlog becomes non-empty, on a close request and
    /// when the socket breaks.
    session: Option<Waker>,
}

struct Shared {
    state: Mutex<State>,
    queued_bytes_max: usize,
    opcode: Opcode,
}

/// The session's view of the socket, for tungstenite: reads, and writes that keep their
/// place in line with the documents' frames. A write is always accepted whole (what the
/// kernel does not take is queued), so tungstenite never holds half a frame; `flush` waits
/// until the backlog is written.
pub struct Socket {
    shared: Arc<Shared>,
}

/// The session's end: it drains the backlog and learns of close requests.
pub struct Outbox {
    shared: Arc<Shared>,
}

/// The document actor's end. Dropping it without a close (the actor died) closes the
/// connection with 1011, so no session waits on a document that is gone; except a prefixed
/// one (`prefixed`), one of several documents on a Hocuspocus connection.
pub struct OutboxSender {
    shared: Arc<Shared>,
    /// Written before every payload in the same frame (a Hocuspocus document's address).
    prefix: Option<Bytes>,
}

/// A further sender for a connection that several documents write to (an OT connection
/// subscribes to texts of many documents). Unlike `OutboxSender`, dropping it closes nothing:
/// one document going away must not end the connection to the others.
#[derive(Clone)]
pub struct OutboxPeer {
    shared: Arc<Shared>,
    prefix: Option<Bytes>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    /// A document asked to close the connection.
    Close(CloseReason),
    /// Writing to the socket failed: the peer is gone.
    Broken,
}

#[derive(Debug, PartialEq, Eq)]
pub enum SendError {
    /// The frame did not fit: the connection is now closing with 1013.
    Overflow,
    /// The connection is already closing; the frame was dropped.
    Closed,
}

pub const SLOW_CONSUMER: CloseReason = CloseReason::new(close::TRY_AGAIN_LATER, "slow consumer");

/// Wraps an upgraded connection. The backlog holds at most `queued_bytes_max` bytes, except
/// that one frame larger than that is still accepted when the backlog is empty (one large
/// initial sync can always be delivered).
pub fn link(io: impl Io, queued_bytes_max: usize, opcode: Opcode) -> (Socket, Outbox, OutboxSender) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            io: Box::new(io),
            backlog: VecDeque::new(),
            backlog_bytes: 0,
            mid_frame: false,
            close: None,
            senders_closed: false,
            broken: false,
            session: None,
        }),
        queued_bytes_max,
        opcode,
    });
    (Socket { shared: shared.clone() }, Outbox { shared: shared.clone() }, OutboxSender { shared, prefix: None })
}

/// The header of an unmasked, final frame of `len` payload bytes (RFC 6455 §5.2).
fn header(opcode: Opcode, len: usize) -> ([u8; 10], usize) {
    let mut h = [0u8; 10];
    h[0] = 0x80 | opcode as u8;
    if len < 126 {
        h[1] = len as u8;
        (h, 2)
    } else if len <= u16::MAX as usize {
        h[1] = 126;
        h[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        (h, 4)
    } else {
        h[1] = 127;
        h[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        (h, 10)
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().expect("outbox lock poisoned")
    }

    /// Writes a data frame from a document, `prefix` then `payload`: straight to the socket
    /// when nothing is queued before it, else into the backlog. The prefix is a slice of its
    /// own in the same `writev`, so a relay frame encoded once serves every connection.
    fn send(&self, prefix: Option<&Bytes>, payload: Bytes) -> Result<(), SendError> {
        let plen = prefix.map_or(0, Bytes::len);
        let (h, hlen) = header(self.opcode, plen + payload.len());
        let total = hlen + plen + payload.len();
        let mut state = self.lock();
        if state.close.is_some() || state.senders_closed || state.broken {
            return Err(SendError::Closed);
        }
        METRICS.bytes_sent.fetch_add((plen + payload.len()) as u64, Relaxed);
        if !state.backlog.is_empty() {
            if state.backlog_bytes + total > self.queued_bytes_max {
                let waker = state.request_close(SLOW_CONSUMER);
                drop(state);
                wake(waker);
                return Err(SendError::Overflow);
            }
            state.push(Bytes::copy_from_slice(&h[..hlen]), false);
            if let Some(prefix) = prefix {
                state.push(prefix.clone(), false);
            }
            state.push(payload, true);
            return Ok(());
        }
        let mut cx = Context::from_waker(Waker::noop());
        let empty = Bytes::new();
        let prefix = prefix.unwrap_or(&empty);
        let slices = [IoSlice::new(&h[..hlen]), IoSlice::new(prefix), IoSlice::new(&payload)];
        let written = match Pin::new(&mut state.io).poll_write_vectored(&mut cx, &slices) {
            Poll::Ready(Ok(n)) if n == total => return Ok(()),
            Poll::Ready(Ok(n)) => n,
            Poll::Pending => 0,
            Poll::Ready(Err(_)) => {
                state.broken = true;
                let waker = state.session.take();
                drop(state);
                wake(waker);
                return Err(SendError::Closed);
            }
        };
        if written < hlen {
            state.push(Bytes::copy_from_slice(&h[written..hlen]), false);
            if plen > 0 {
                state.push(prefix.clone(), false);
            }
            state.push(payload, true);
        } else if written < hlen + plen {
            state.push(prefix.slice(written - hlen..), false);
            state.push(payload, true);
        } else {
            state.push(payload.slice(written - hlen - plen..), true);
        }
        state.mid_frame = written > 0;
        let waker = state.session.take();
        drop(state);
        wake(waker);
        Ok(())
    }

    fn close(&self, reason: CloseReason) {
        let waker = self.lock().request_close(reason);
        wake(waker);
    }
}

impl State {
    fn push(&mut self, bytes: Bytes, frame_end: bool) {
        self.backlog_bytes += bytes.len();
        self.backlog.push_back(Chunk { bytes, frame_end });
    }

    /// Records a writer's close (the first one wins) and drops the backlog, except the rest
    /// of a frame already partly on the wire.
    fn request_close(&mut self, reason: CloseReason) -> Option<Waker> {
        // The session is already closing with its own code: what it queued (its close frame
        // included) must go out, so a later request (the document dropping its sender as the
        // connection leaves) changes nothing.
        if self.senders_closed {
            return None;
        }
        if self.close.is_none() {
            self.close = Some(reason);
            let keep =
                if self.mid_frame { self.backlog.iter().position(|c| c.frame_end).map_or(0, |i| i + 1) } else { 0 };
            self.backlog.truncate(keep);
            self.backlog_bytes = self.backlog.iter().map(|c| c.bytes.len()).sum();
        }
        self.session.take()
    }

    /// Writes what the socket takes of the backlog. `Ready(Ok)` once it is empty; `Pending`
    /// with `cx` registered for writability otherwise.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.backlog.is_empty() {
            let slices: Vec<IoSlice<'_>> =
                self.backlog.iter().take(DRAIN_SLICES_MAX).map(|c| IoSlice::new(&c.bytes)).collect();
            let n = match Pin::new(&mut self.io).poll_write_vectored(cx, &slices) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            };
            self.advance(n);
        }
        Poll::Ready(Ok(()))
    }

    fn advance(&mut self, mut n: usize) {
        self.backlog_bytes -= n;
        while n > 0 {
            let front = self.backlog.front_mut().expect("wrote no more than the backlog");
            if n < front.bytes.len() {
                let _ = front.bytes.split_to(n);
                self.mid_frame = true;
                return;
            }
            n -= front.bytes.len();
            self.mid_frame = !front.frame_end;
            self.backlog.pop_front();
        }
    }

    /// Writes a whole frame (or frames) from the session side, in line after the backlog.
    fn write_from_session(&mut self, buf: &[u8], cx: &mut Context<'_>) -> io::Result<Option<Waker>> {
        if self.broken {
            return Err(io::ErrorKind::BrokenPipe.into());
        }
        let written = if self.backlog.is_empty() {
            match Pin::new(&mut self.io).poll_write(cx, buf) {
                Poll::Ready(Ok(n)) if n == buf.len() => return Ok(None),
                Poll::Ready(Ok(n)) => n,
                Poll::Pending => 0,
                Poll::Ready(Err(e)) => {
                    self.broken = true;
                    return Err(e);
                }
            }
        } else {
            self.push(Bytes::copy_from_slice(buf), true);
            return Ok(None);
        };
        self.push(Bytes::copy_from_slice(&buf[written..]), true);
        self.mid_frame = written > 0;
        Ok(self.session.take())
    }
}

fn wake(waker: Option<Waker>) {
    if let Some(w) = waker {
        w.wake();
    }
}

impl OutboxSender {
    /// Sends `payload` as one data frame. Errors say the connection is closing; the caller
    /// forgets it (the session ends it).
    pub fn send(&self, payload: Bytes) -> Result<(), SendError> {
        self.shared.send(self.prefix.as_ref(), payload)
    }

    /// A further sender to the same connection whose every frame starts with `prefix` (one
    /// Hocuspocus document's address). Dropping it closes nothing: the connection's other
    /// documents go on.
    pub fn prefixed(&self, prefix: Bytes) -> OutboxSender {
        OutboxSender { shared: self.shared.clone(), prefix: Some(prefix) }
    }

    /// Whether frames get a prefix (the connection speaks Hocuspocus).
    pub fn is_prefixed(&self) -> bool {
        self.prefix.is_some()
    }

    pub fn peer(&self) -> OutboxPeer {
        OutboxPeer { shared: self.shared.clone(), prefix: self.prefix.clone() }
    }

    /// Asks the session to close the connection; the backlog is dropped.
    pub fn close(&self, reason: CloseReason) {
        self.shared.close(reason);
    }
}

impl Drop for OutboxSender {
    fn drop(&mut self) {
        if self.prefix.is_none() {
            self.close(CloseReason::new(close::INTERNAL_ERROR, "document closed"));
        }
    }
}

impl std::fmt::Debug for OutboxSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OutboxSender")
    }
}

impl crate::ot::presence::Peer for OutboxPeer {
    /// A consumer too slow for its queue is closed with 1013 by its outbox.
    fn send_frame(&self, frame: Bytes) {
        let _ = self.send(frame);
    }
}

impl OutboxPeer {
    pub fn send(&self, payload: Bytes) -> Result<(), SendError> {
        self.shared.send(self.prefix.as_ref(), payload)
    }

    pub fn close(&self, reason: CloseReason) {
        self.shared.close(reason);
    }

    /// Whether two peers write to the same connection.
    pub fn same(&self, other: &OutboxPeer) -> bool {
        Arc::ptr_eq(&self.shared, &other.shared)
    }
}

impl std::fmt::Debug for OutboxPeer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OutboxPeer")
    }
}

impl Outbox {
    /// Writes the backlog as the socket takes it, until a document asks to close or the
    /// socket breaks. Cancel-safe.
    pub async fn next(&self) -> Next {
        std::future::poll_fn(|cx| self.poll_next(cx)).await
    }

    fn poll_next(&self, cx: &mut Context<'_>) -> Poll<Next> {
        let mut state = self.shared.lock();
        if let Some(reason) = &state.close {
            return Poll::Ready(Next::Close(reason.clone()));
        }
        if state.broken {
            return Poll::Ready(Next::Broken);
        }
        if let Poll::Ready(Err(_)) = state.poll_drain(cx) {
            state.broken = true;
            return Poll::Ready(Next::Broken);
        }
        if !state.session.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            state.session = Some(cx.waker().clone());
        }
        Poll::Pending
    }

    /// Sends a ping, in line after the backlog; never waits.
    pub fn ping(&self) {
        let mut cx = Context::from_waker(Waker::noop());
        let waker = self.shared.lock().write_from_session(&PING, &mut cx).unwrap_or(None);
        wake(waker);
    }

    /// The session is ending: documents' frames are refused from now on. What is queued
    /// still goes out before the session's close frame.
    pub fn close(&self) {
        self.shared.lock().senders_closed = true;
    }

    /// Bytes waiting in the backlog.
    #[cfg(test)]
    fn queued(&self) -> usize {
        self.shared.lock().backlog_bytes
    }
}

impl AsyncRead for Socket {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.shared.lock().io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Socket {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let result = self.shared.lock().write_from_session(buf, cx);
        Poll::Ready(result.map(|waker| {
            wake(waker);
            buf.len()
        }))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut state = self.shared.lock();
        match state.poll_drain(cx) {
            Poll::Ready(Ok(())) => Pin::new(&mut state.io).poll_flush(cx),
            Poll::Ready(Err(e)) => {
                state.broken = true;
                Poll::Ready(Err(e))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut state = self.shared.lock();
        match state.poll_drain(cx) {
            Poll::Ready(Ok(())) => Pin::new(&mut state.io).poll_shutdown(cx),
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{duplex, AsyncReadExt, AsyncWriteExt, DuplexStream};

    fn payload(n: usize, byte: u8) -> Bytes {
        Bytes::from(vec![byte; n])
    }

    /// A link over an in-memory pipe whose buffer holds `pipe` bytes.
    fn pipe_link(pipe: usize, max: usize) -> (Socket, Outbox, OutboxSender, DuplexStream) {
        let (ours, theirs) = duplex(pipe);
        let (socket, outbox, sender) = link(ours, max, Opcode::Binary);
        (socket, outbox, sender, theirs)
    }

    /// Reads one unmasked frame: (first byte, payload).
    async fn read_frame(peer: &mut DuplexStream) -> (u8, Vec<u8>) {
        let b0 = peer.read_u8().await.unwrap();
        let len = match peer.read_u8().await.unwrap() {
            126 => peer.read_u16().await.unwrap() as usize,
            127 => peer.read_u64().await.unwrap() as usize,
            n => n as usize,
        };
        let mut data = vec![0; len];
        peer.read_exact(&mut data).await.unwrap();
        (b0, data)
    }

    #[test]
    fn headers_follow_rfc_6455() {
        assert_eq!(header(Opcode::Binary, 5).0[..2], [0x82, 5]);
        assert_eq!(header(Opcode::Text, 125).0[..2], [0x81, 125]);
        assert_eq!(header(Opcode::Binary, 126).0[..4], [0x82, 126, 0, 126]);
        assert_eq!(header(Opcode::Binary, 65_535).0[..4], [0x82, 126, 0xff, 0xff]);
        let (h, n) = header(Opcode::Binary, 65_536);
        assert_eq!((n, h[..10].to_vec()), (10, vec![0x82, 127, 0, 0, 0, 0, 0, 1, 0, 0]));
    }

    #[tokio::test]
    async fn a_frame_goes_straight_to_the_socket() {
        let (_socket, outbox, tx, mut peer) = pipe_link(1024, 100);
        tx.send(payload(3, 7)).unwrap();
        assert_eq!(outbox.queued(), 0, "nothing queued: the write went through");
        assert_eq!(read_frame(&mut peer).await, (0x82, vec![7; 3]));
    }

    #[tokio::test]
    async fn what_the_socket_does_not_take_is_drained_in_order_by_the_session() {
        let (_socket, outbox, tx, mut peer) = pipe_link(64, 100_000);
        for i in 0..20u8 {
            tx.send(payload(300, i)).unwrap();
        }
        assert!(outbox.queued() > 0);
        let drain = tokio::spawn(async move {
            let next = outbox.next().await;
            (next, outbox)
        });
        for i in 0..20u8 {
            assert_eq!(read_frame(&mut peer).await, (0x82, vec![i; 300]));
        }
        drop(tx);
        let (next, _) = drain.await.unwrap();
        assert!(matches!(next, Next::Close(r) if r.code == close::INTERNAL_ERROR));
    }

    #[tokio::test]
    async fn overflow_closes_with_1013_and_overtakes_the_backlog() {
        let (_socket, outbox, tx, _peer) = pipe_link(16, 100);
        tx.send(payload(60, 1)).unwrap();
        tx.send(payload(30, 2)).unwrap();
        assert_eq!(tx.send(payload(60, 3)), Err(SendError::Overflow));
        assert_eq!(outbox.next().await, Next::Close(SLOW_CONSUMER));
        assert_eq!(tx.send(payload(1, 4)), Err(SendError::Closed));
    }

    #[tokio::test]
    async fn a_close_keeps_the_rest_of_a_frame_already_on_the_wire() {
        let (mut socket, outbox, tx, mut peer) = pipe_link(16, 10_000);
        tx.send(payload(40, 1)).unwrap();
        tx.send(payload(40, 2)).unwrap();
        tx.close(CloseReason::new(close::POLICY_VIOLATION, "x"));
        let queued = outbox.queued();
        assert!(queued > 0 && queued <= 40, "the first frame's rest, not the second frame: {queued}");
        // The session writes its close frame (as tungstenite would) and flushes.
        let flush = tokio::spawn(async move {
            socket.write_all(&[0x88, 0x00]).await.unwrap();
            socket.flush().await.unwrap();
        });
        assert_eq!(read_frame(&mut peer).await, (0x82, vec![1; 40]));
        assert_eq!(read_frame(&mut peer).await, (0x88, vec![]));
        flush.await.unwrap();
    }

    #[tokio::test]
    async fn one_oversized_frame_fits_an_empty_backlog() {
        let (_socket, outbox, tx, mut peer) = pipe_link(64, 100);
        tx.send(payload(500, 9)).unwrap();
        let reader = tokio::spawn(async move { read_frame(&mut peer).await });
        tokio::select! {
            next = outbox.next() => panic!("unexpected {next:?}"),
            frame = reader => assert_eq!(frame.unwrap(), (0x82, vec![9; 500])),
        }
    }

    #[tokio::test]
    async fn session_writes_and_pings_keep_their_place_in_line() {
        let (mut socket, outbox, tx, mut peer) = pipe_link(16, 10_000);
        tx.send(payload(30, 1)).unwrap();
        // The peer reads what fit: the socket has room again, but the backlog is not empty,
        // so what follows must still queue behind it.
        let mut wire = vec![0; 16];
        peer.read_exact(&mut wire).await.unwrap();
        outbox.ping();
        socket.write_all(&[0x8a, 0x00]).await.unwrap(); // a pong, as tungstenite writes it
        tx.send(payload(2, 2)).unwrap();
        let flush = tokio::spawn(async move { socket.flush().await.unwrap() });
        let mut rest = vec![0; 2 + 30 + 2 + 2 + 2 + 2 - 16];
        peer.read_exact(&mut rest).await.unwrap();
        wire.extend(rest);
        let mut want = vec![0x82, 30];
        want.extend([1; 30]);
        want.extend([0x89, 0x00, 0x8a, 0x00, 0x82, 2, 2, 2]);
        assert_eq!(wire, want);
        flush.await.unwrap();
    }

    #[tokio::test]
    async fn a_prefixed_sender_writes_its_prefix_in_the_frame_whatever_the_socket_takes() {
        for pipe in [2, 3, 5, 64] {
            let (_socket, outbox, tx, mut peer) = pipe_link(pipe, 10_000);
            let doc = tx.prefixed(Bytes::from_static(b"\x01d"));
            doc.send(payload(3, 7)).unwrap();
            doc.peer().send(payload(1, 8)).unwrap();
            let drain = tokio::spawn(async move {
                let next = outbox.next().await;
                (next, outbox)
            });
            assert_eq!(read_frame(&mut peer).await, (0x82, vec![1, b'd', 7, 7, 7]), "pipe {pipe}");
            assert_eq!(read_frame(&mut peer).await, (0x82, vec![1, b'd', 8]), "pipe {pipe}");
            // Dropping a document's prefixed sender leaves the connection open.
            drop(doc);
            assert!(!drain.is_finished());
            drop(tx);
            assert!(matches!(drain.await.unwrap().0, Next::Close(r) if r.code == close::INTERNAL_ERROR));
        }
    }

    #[tokio::test]
    async fn dropping_the_sender_closes_with_1011() {
        let (_socket, outbox, tx, _peer) = pipe_link(64, 100);
        drop(tx);
        assert!(matches!(outbox.next().await, Next::Close(r) if r.code == close::INTERNAL_ERROR));
    }

    #[tokio::test]
    async fn a_gone_peer_breaks_the_link_and_refuses_frames() {
        let (_socket, outbox, tx, peer) = pipe_link(64, 100);
        drop(peer);
        assert_eq!(tx.send(payload(3, 1)), Err(SendError::Closed));
        assert_eq!(outbox.next().await, Next::Broken);
    }

    #[tokio::test]
    async fn after_the_session_closes_documents_are_refused_but_the_backlog_still_goes_out() {
        let (mut socket, outbox, tx, mut peer) = pipe_link(16, 10_000);
        tx.send(payload(30, 1)).unwrap();
        outbox.close();
        assert_eq!(tx.send(payload(1, 2)), Err(SendError::Closed));
        let flush = tokio::spawn(async move { socket.flush().await.unwrap() });
        assert_eq!(read_frame(&mut peer).await, (0x82, vec![1; 30]));
        flush.await.unwrap();
    }

    /// The session refuses a connection with a backlog pending: it stops documents' frames,
    /// tungstenite queues its close frame behind the backlog, and then the document drops its
    /// sender as the connection leaves (a close request). That request must not truncate the
    /// session's close frame away.
    #[tokio::test]
    async fn the_sessions_own_close_frame_survives_the_document_dropping_its_sender() {
        let (mut socket, outbox, tx, mut peer) = pipe_link(16, 10_000);
        tx.send(payload(40, 1)).unwrap();
        tx.send(payload(40, 2)).unwrap();
        // The session refuses (say 1003): documents are refused from now on...
        outbox.close();
        // ...and tungstenite writes the close frame (code 1003), queued behind the backlog.
        socket.write_all(&[0x88, 0x02, 0x03, 0xeb]).await.unwrap();
        // The actor handles the leave: the connection's sender is dropped.
        drop(tx);
        let flush = tokio::spawn(async move {
            socket.flush().await.unwrap();
            socket
        });
        let mut frames = Vec::new();
        let got_close = tokio::time::timeout(std::time::Duration::from_secs(2), async {
            loop {
                let frame = read_frame(&mut peer).await;
                let is_close = frame.0 == 0x88;
                frames.push(frame);
                if is_close {
                    break;
                }
            }
        })
        .await;
        let _socket = flush.await.unwrap();
        assert!(
            got_close.is_ok(),
            "the session's close frame never reached the wire; frames seen: {:?}",
            frames.iter().map(|(b0, d)| (*b0, d.len())).collect::<Vec<_>>()
        );
        assert_eq!(frames.last().unwrap(), &(0x88, vec![0x03, 0xeb]));
        assert_eq!(
            frames[..frames.len() - 1].to_vec(),
            vec![(0x82, vec![1; 40]), (0x82, vec![2; 40])],
            "what was queued goes out before the session's close frame"
        );
    }
}
