//! Property test: random interleavings of edits from several yrs docs, some made offline and
//! uploaded on reconnect, converge through the server. Seeded; set YSERVE_TEST_SEED to replay.

use crate::support::{Client, TestServer};
use yrs::{Doc, GetString, Text, Transact};

fn seed() -> u64 {
    match std::env::var("YSERVE_TEST_SEED") {
        Ok(s) => s.parse().expect("YSERVE_TEST_SEED is a u64"),
        Err(_) => fastrand::u64(..),
    }
}

#[tokio::test]
async fn random_interleavings_of_edits_converge() {
    let seed = seed();
    println!("seed {seed} (replay with YSERVE_TEST_SEED={seed})");
    let mut rng = fastrand::Rng::with_seed(seed);
    let server = TestServer::start_with(&["--snapshot-updates", "25"]);
    let url = server.url("prop");
    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(Some(Client::synced(&url).await));
    }
    let mut offline: Vec<Option<Doc>> = vec![None, None, None, None];
    let alphabet = ['a', 'b', 'é', '😀', ' '];
    for _step in 0..300 {
        let i = rng.usize(..clients.len());
        match rng.u8(..10) {
            // Edit: insert or delete at a random place, online or offline.
            0..=6 => {
                let ch = alphabet[rng.usize(..alphabet.len())].to_string();
                let delete = rng.bool();
                let pick = rng.usize(..);
                // Positions in UTF-16 code units on character boundaries, as an editor makes them.
                let edit = |t: &yrs::TextRef, txn: &mut yrs::TransactionMut| {
                    let s = t.get_string(txn);
                    let mut starts = vec![0u32];
                    for c in s.chars() {
                        starts.push(starts.last().unwrap() + c.len_utf16() as u32);
                    }
                    let chars = starts.len() - 1;
                    if delete && chars > 0 {
                        let at = pick % chars;
                        t.remove_range(txn, starts[at], starts[at + 1] - starts[at]);
                    } else {
                        t.insert(txn, starts[pick % (chars + 1)], &ch);
                    }
                };
                if let Some(c) = clients[i].as_mut() {
                    c.edit(edit).await;
                } else {
                    let doc = offline[i].as_ref().expect("offline doc");
                    let text = doc.get_or_insert_text("t");
                    edit(&text, &mut doc.transact_mut());
                }
            }
            // Go offline (keeping the doc) or come back (uploading offline edits).
            7 => match clients[i].take() {
                Some(c) => offline[i] = Some(c.doc),
                None => {
                    let doc = offline[i].take().expect("offline doc");
                    clients[i] = Some(Client::connect_with_doc(&url, doc).await);
                }
            },
            // Let some client read what has arrived.
            _ => {
                if let Some(c) = clients[i].as_mut() {
                    server_progress(c).await;
                }
            }
        }
    }
    for i in 0..clients.len() {
        if clients[i].is_none() {
            let doc = offline[i].take().unwrap();
            clients[i] = Some(Client::connect_with_doc(&url, doc).await);
        }
    }
    // Every client uploads what it has (its SyncStep2 answers the server's SyncStep1), then
    // sends a marker and waits for its echo: a connection's messages are applied in order,
    // so the echo proves all its earlier edits, deletions included, were committed (a
    // deletion alone changes no state vector, so it cannot be waited for directly).
    for c in clients.iter_mut().flatten() {
        c.sync().await;
        c.edit(|t, txn| t.insert(txn, 0, "|")).await;
        c.wait_echo().await;
    }
    let fresh = Client::synced(&url).await;
    let target = fresh.text();
    let mut texts = Vec::new();
    for c in clients.iter_mut().flatten() {
        c.pump_until(|c| c.text() == target, "convergence").await;
        texts.push(c.text());
    }
    assert!(texts.iter().all(|t| *t == fresh.text()), "seed {seed}: diverged {texts:?} vs {:?}", fresh.text());
}

/// Pumps whatever is immediately available (a short bounded read).
async fn server_progress(c: &mut Client) {
    let deadline = std::time::Duration::from_millis(5);
    let _ = tokio::time::timeout(deadline, c.pump_until(|_| false, "progress")).await;
}
