//! The OT compatibility layer (SPEC §5): clients that speak Quill Delta ops (the stock
//! `sharedb` client with the `rich-text` type, or the REST mirror) edit the same root
//! `Y.Text`s as Yjs clients.
//!
//! - `delta`: the Quill Delta algebra (compose, transform), pure.
//! - `sequencer`: versions, the op log and ShareDB's submit rules for one text, pure.
//! - `ytext`: deltas to and from a `Y.Text`, with the checks that keep bad ops out of yrs.
//! - `sharedb`: the ShareDB wire messages, pure.
//! - `presence`: ShareDB presence channels (cursors of OT clients), relayed between connections.
//! - `error`: every OT error with its ShareDB code and HTTP status.
//!
//! The sequencers themselves live in the document actor (`document::actor::ot`, their state
//! in `document::ot`), the WebSocket connection in `session::ot`.

pub mod delta;
pub mod error;
pub mod presence;
pub mod sequencer;
pub mod sharedb;
pub mod ytext;
