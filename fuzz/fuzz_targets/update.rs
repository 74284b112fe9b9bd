//! Fuzz target for v1 updates: decode, validate, apply, encode, as the document actor does.
//! The check and its invariants are in `fuzz/checks.rs`.
#![no_main]

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    checks::update(data, true);
});
