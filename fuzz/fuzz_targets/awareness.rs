//! Fuzz target for awareness payloads: decode, then the document's awareness table (accept, renew, remove).
//! The check and its invariants are in `fuzz/checks.rs`.
#![no_main]

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    checks::awareness(data);
});
