//! Fuzz target for REST inputs: `/api/` paths, `?sv=`, lock TTLs and bodies, OT submit bodies.
//! The check and its invariants are in `fuzz/checks.rs`.
#![no_main]

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    checks::rest(data);
});
