//! Fuzz target for OT operations: `Delta::from_json` under the server's limits and tight ones, and its round trip.
//! The check and its invariants are in `fuzz/checks.rs`.
#![no_main]

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    checks::delta(data);
});
