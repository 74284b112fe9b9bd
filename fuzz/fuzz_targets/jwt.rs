//! Fuzz target for JWTs (`auth::Auth::authenticate`): raw tokens, and header + claims signed
//! with the server's secret.
//! The check and its invariants are in `fuzz/checks.rs`.
#![no_main]

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    checks::jwt(data);
});
