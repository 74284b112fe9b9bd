//! Fuzz target for SSE `Last-Event-ID`: `parse_event_id` and the ids the server writes.
//! The check and its invariants are in `fuzz/checks.rs`.
#![no_main]

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    checks::event_id(data);
});
