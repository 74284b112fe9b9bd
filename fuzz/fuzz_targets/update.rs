//! decode -> validate -> apply -> encode, as the server does with an inbound frame.
//!
//! The server applies inside `catch_unwind` and rebuilds the document from the store when
//! yrs panics, so a panicking apply is contained (tested in tests/it/hostile.rs). What
//! must never happen is what containment cannot catch: an abort (stack overflow, huge
//! allocation) anywhere, or an update that applies cleanly and leaves the document unable
//! to encode its full state. That one would be committed, and every later join would fail.
#![no_main]

use libfuzzer_sys::fuzz_target;
use yrs::updates::decoder::Decode;
use yrs::{Any, Doc, Map, ReadTxn, StateVector, Text, Transact, Update};
use yserve::validate::{inspect_update_v1, Limits};

fn base_doc() -> Doc {
    let doc = Doc::with_client_id(1);
    let t = doc.get_or_insert_text("t");
    let m = doc.get_or_insert_map("m");
    let mut txn = doc.transact_mut();
    t.insert(&mut txn, 0, "hello world");
    t.remove_range(&mut txn, 2, 3);
    m.insert(&mut txn, "k", Any::from(1.0));
    drop(txn);
    doc
}

fuzz_target!(|data: &[u8]| {
    let Ok(summary) = inspect_update_v1(data, &Limits::default()) else { return };
    let doc = base_doc();
    // As the document actor: updates that cannot apply completely are held outside yrs.
    let sv = doc.transact().state_vector();
    if summary.first_missing_dependency(|c| sv.get(&yrs::ClientID::new(c))).is_some() {
        return;
    }
    let Ok(update) = Update::decode_v1(data) else { return };
    // As the document actor: a panic here is contained (silenced for the fuzzer's hook).
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let applied = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut txn = doc.transact_mut();
        txn.apply_update(update).is_ok().then(|| txn.encode_update_v1())
    }));
    std::panic::set_hook(hook);
    if let Ok(Some(_delta)) = applied {
        // Applied cleanly and committed: the document must still encode (not contained).
        let _ = doc.transact().encode_state_as_update_v1(&StateVector::default());
    }
});
