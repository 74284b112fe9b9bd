//! Integration tests: the real binary on port 0 with a temporary database, driven by yrs
//! clients over real WebSockets.

mod support;

// The fuzz targets' checks, shared as source with `fuzz/` (see tests/it/decoders.rs).
#[path = "../../fuzz/checks.rs"]
mod checks;

mod api;
mod auth;
mod awareness;
mod cli;
mod decoders;
mod demo;
mod durability;
mod hostile;
mod limits;
mod ot;
mod property;
mod refusals;
mod sync;
