//! Everything that belongs to a document while it is live.
//!
//! - `registry`: the small synchronous map from name to live actor (attach, unload, shutdown).
//! - `actor`: the document actor, one task per live document owning its `yrs::Doc`, awareness,
//!   locks, OT sequencers and connections ("persist before relay" is its invariant).
//! - `handle`: how others talk to an actor (`DocHandle`, `DocMsg`), and `Lifecycle`, what the
//!   actor asks of the registry.
//! - `parking`: the commit-ticket bookkeeping behind "persist before relay", as plain data.
//! - `events`: the document's event streams and the server-wide ones (SSE), as plain data.
//! - `ot`, `query`: the OT and operator requests an actor answers, and their replies.
//!
//! Files import downwards only: `registry` → `actor` → `handle`, `parking`, `events`, `ot`,
//! `query`; `actor/ot.rs` and `actor/query.rs` continue `impl DocActor` and nothing imports
//! them. This file declares and re-exports; it defines nothing.

mod actor;
pub mod events;
mod handle;
pub mod ot;
mod parking;
pub mod query;
pub mod registry;

pub use events::{format_event_id, parse_event_id, ServerEvents, StreamEvent, Subscription};
pub use handle::{DocGone, DocHandle, DocMsg, DocSettings};
pub use ot::{OtKind, OtReply, OtReplyTo, OtRequest, OtSettings, OT_ORIGIN};
pub use query::{format_ms, ApplyRefusal, DocQuery, LockOp, LockReply};
pub use registry::{Attachment, Registry, ShuttingDown};
