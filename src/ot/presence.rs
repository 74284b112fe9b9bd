//! ShareDB presence at `/api/ot` (SPEC §5): cursors and selections of OT clients, relayed
//! between the connections subscribed to a channel. Follows sharedb 7's `lib/agent.js`:
//!
//! - `{a:'ps', ch, seq}` subscribes; the reply echoes `ch` and `seq`, and every other
//!   subscriber is asked (`{a:'pr', ch}`) to send its presence again, so the newcomer sees it.
//! - `{a:'pu', ch, seq}` unsubscribes; `{a:'pr', ch}` asks the others to resend.
//! - `{a:'p', ch, id, p, pv, c?, d?, v?, t?}` is relayed, with the sender's `src`, to every
//!   subscriber of `ch` except the sender's own connection(s), and echoed back to the sender as
//!   its acknowledgement. `p: null` withdraws it.
//! - When a connection unsubscribes or ends, a `p: null` goes out for every presence it sent
//!   on that channel, so nobody keeps a dead cursor.
//!
//! Doc presence (with `c`/`d`) goes through the document actor, as ShareDB's
//! `transformPresenceToLatestVersion`: a `{index, length}` range is transformed through every
//! op since its `v` (rich-text's `transformPresence`), and sent at the text's current version,
//! parked behind the ops before it. A withdrawal (`p: null`) gets the current version too: the
//! stock client ignores a presence older than its document until a newer one comes, and a
//! withdrawn client sends none. Presence on other channels is relayed as sent.
//!
//! Channels are per document: `{collection}.{id}`, as `DocPresence` names them. A connection
//! needs a grant on every document a channel could name (each prefix before a `.` that is a
//! valid document name), so a dot in a name can never open another document's presence.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;

use crate::presence::ConnId;

/// Where a subscriber's frames go (the server's is `outbox::OutboxPeer`). Sending never
/// waits: a peer too slow for its queue is closed by whoever implements it.
pub trait Peer: Clone {
    fn send_frame(&self, frame: Bytes);
}

/// Presence ids one connection may have live on one channel (ShareDB clients use one per
/// editor; the bound keeps a client from growing the server's memory without limit).
pub const IDS_PER_CHANNEL_MAX: usize = 16;

struct Member<P> {
    src: Arc<str>,
    peer: P,
}

/// Who is subscribed to which channel, shared by every OT connection of the server.
pub struct Hub<P> {
    channels: Mutex<HashMap<Arc<str>, HashMap<ConnId, Member<P>>>>,
}

impl<P> Default for Hub<P> {
    fn default() -> Self {
        Hub { channels: Mutex::default() }
    }
}

impl<P: Peer> Hub<P> {
    /// Subscribes `conn` to `channel` (again, if it already was) and asks the others to resend
    /// their presence. Returns false if it was already subscribed.
    pub fn subscribe(&self, channel: &Arc<str>, conn: ConnId, src: &Arc<str>, peer: P) -> bool {
        let fresh = {
            let mut channels = self.channels.lock().expect("presence hub lock");
            channels.entry(channel.clone()).or_default().insert(conn, Member { src: src.clone(), peer }).is_none()
        };
        self.request(channel, src);
        fresh
    }

    pub fn unsubscribe(&self, channel: &str, conn: ConnId) {
        let mut channels = self.channels.lock().expect("presence hub lock");
        if let Some(members) = channels.get_mut(channel) {
            members.remove(&conn);
            if members.is_empty() {
                channels.remove(channel);
            }
        }
    }

    /// Asks every subscriber but `src`'s connections to send their presence again.
    pub fn request(&self, channel: &str, src: &str) {
        self.broadcast(channel, src, Bytes::from(crate::ot::sharedb::presence_request(channel)));
    }

    /// Writes `frame` to every subscriber of `channel` whose client id is not `src`. The
    /// writes happen outside the lock (each one may be a syscall).
    pub fn broadcast(&self, channel: &str, src: &str, frame: Bytes) {
        for peer in self.peers(channel, src) {
            peer.send_frame(frame.clone());
        }
    }

    /// The subscribers of `channel` whose client id is not `src` (ShareDB does not send a
    /// presence back to its own client as a remote one).
    pub fn peers(&self, channel: &str, src: &str) -> Vec<P> {
        let channels = self.channels.lock().expect("presence hub lock");
        let Some(members) = channels.get(channel) else { return Vec::new() };
        members.values().filter(|m| &*m.src != src).map(|m| m.peer.clone()).collect()
    }

    /// `conn`'s client id changed (a handshake handed back an earlier one).
    pub fn rename(&self, channel: &str, conn: ConnId, src: &Arc<str>) {
        let mut channels = self.channels.lock().expect("presence hub lock");
        if let Some(member) = channels.get_mut(channel).and_then(|members| members.get_mut(&conn)) {
            member.src = src.clone();
        }
    }
}

/// The document names a channel could refer to: each prefix before a `.`.
pub fn channel_documents(channel: &str) -> impl Iterator<Item = &str> {
    channel.match_indices('.').map(move |(i, _)| &channel[..i]).filter(|p| !p.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_channel_names_each_prefix_before_a_dot() {
        assert_eq!(channel_documents("notes.body").collect::<Vec<_>>(), vec!["notes"]);
        assert_eq!(channel_documents("a.b.c").collect::<Vec<_>>(), vec!["a", "a.b"]);
        assert_eq!(channel_documents("lobby").count(), 0);
        assert_eq!(channel_documents(".x").count(), 0);
    }
}
