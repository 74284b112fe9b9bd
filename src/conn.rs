//! `ConnId`: one connection's id, unique for the lifetime of the process (WebSocket sessions
//! of every protocol, and REST requests that attach to a document). Allocated by
//! `app::AppState::next_conn`; carried by the document actor, the awareness table and the
//! store's relays. Plain data.

/// Identifies one connection (or one REST request's attachment) for the lifetime of the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

impl ConnId {
    /// The number, for log fields and metrics.
    pub fn get(self) -> u64 {
        self.0
    }
}

impl std::fmt::Display for ConnId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}
