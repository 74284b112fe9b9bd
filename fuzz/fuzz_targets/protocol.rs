//! Fuzz target for y-websocket frames: `protocol::decode_frame` and the re-encoding of what it decodes.
//! The check and its invariants are in `fuzz/checks.rs`.
#![no_main]

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    checks::protocol(data);
});
