//! Fuzz target for ShareDB JSON messages on `/api/ot`: `ot::sharedb::parse`, with the ops it carries.
//! The check and its invariants are in `fuzz/checks.rs`.
#![no_main]

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    checks::sharedb(data);
});
