//! yserve: a durable, y-websocket-compatible Yjs sync server on SQLite.
//! See ARCHITECTURE.md for the code map and invariants.

pub mod api_error;
pub mod app;
pub mod auth;
pub mod cli;
pub mod config;
pub mod conn;
pub mod dblock;
pub mod demo;
pub mod docname;
pub mod document;
pub mod hocuspocus;
pub mod http;
pub mod limits;
pub mod locks;
pub mod metrics;
pub mod ot;
pub mod outbox;
pub mod presence;
pub mod protocol;
pub mod render;
pub mod rest;
pub mod server;
pub mod session;
pub mod store;
pub mod validate;
