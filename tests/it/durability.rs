use crate::support::{read_db, text_of_updates, Client, TestServer};
use yrs::updates::decoder::Decode;
use yrs::{Doc, GetString, ReadTxn, Transact, Update};

#[tokio::test]
async fn restart_keeps_every_update() {
    let mut server = TestServer::start();
    let url = server.url("keep");
    let mut a = Client::synced(&url).await;
    for word in ["one ", "two ", "three"] {
        let at = a.text().len() as u32;
        a.insert(at, word).await;
        a.wait_echo().await;
    }
    drop(a);
    server.restart();
    assert_eq!(Client::synced(&url).await.text(), "one two three");
}

#[tokio::test]
async fn an_update_a_peer_has_received_survives_kill_9() {
    let mut server = TestServer::start();
    let url = server.url("crash");
    let mut a = Client::synced(&url).await;
    let mut b = Client::synced(&url).await;
    a.insert(0, "durable").await;
    b.pump_until(|c| c.text() == "durable", "relay").await;
    server.kill9();
    drop((a, b));
    server.restart_after_crash();
    assert_eq!(Client::synced(&url).await.text(), "durable");
}

#[tokio::test]
async fn sigterm_closes_connections_with_1001_and_exits_0() {
    let mut server = TestServer::start();
    let mut a = Client::synced(&server.url("bye")).await;
    a.insert(0, "kept").await;
    a.wait_echo().await;
    let stopping = std::thread::spawn({
        let pid = server.pid();
        move || std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status()
    });
    let (code, _) = a.closed_with().await;
    assert_eq!(code, 1001);
    stopping.join().unwrap().unwrap();
    assert_eq!(server.wait_exit(), Some(0));
    server.restart_after_crash();
    assert_eq!(Client::synced(&server.url("bye")).await.text(), "kept");
}

#[tokio::test]
async fn snapshot_plus_tail_loads_the_same_state_as_the_full_log() {
    let mut server = TestServer::start_with(&["--snapshot-updates", "10"]);
    let url = server.url("snap");
    let mut a = Client::synced(&url).await;
    let mut expected = String::new();
    for i in 0..35u32 {
        let piece = format!("{i} ");
        let at = expected.len() as u32;
        if i % 7 == 6 {
            a.edit(|t, txn| yrs::Text::remove_range(t, txn, 0, 2)).await;
            expected.drain(..2);
        } else {
            a.insert(at, &piece).await;
            expected.push_str(&piece);
        }
        a.wait_echo().await;
    }
    drop(a);
    assert_eq!(server.stop(), Some(0));

    let (updates, snapshots) = read_db(&server.db_path(), "snap");
    assert_eq!(updates.len(), 35);
    assert_eq!(snapshots.iter().map(|s| s.0).collect::<Vec<_>>(), vec![10, 20, 30]);
    let full = text_of_updates(updates.iter().map(|(_, d)| d.as_slice()));
    assert_eq!(full, expected);
    for (seq, snapshot) in &snapshots {
        // Each snapshot equals the merge of the log up to its seq ...
        let upto = text_of_updates(updates.iter().filter(|(s, _)| s <= seq).map(|(_, d)| d.as_slice()));
        assert_eq!(text_of_updates([snapshot.as_slice()]), upto, "snapshot at {seq}");
        // ... and the snapshot plus the later updates equals the whole log, state vector too.
        let tail = updates.iter().filter(|(s, _)| s > seq).map(|(_, d)| d.as_slice());
        let from_snapshot = doc_of(std::iter::once(snapshot.as_slice()).chain(tail));
        let from_log = doc_of(updates.iter().map(|(_, d)| d.as_slice()));
        assert_eq!(from_snapshot.transact().state_vector(), from_log.transact().state_vector());
        assert_eq!(
            from_snapshot.get_or_insert_text("t").get_string(&from_snapshot.transact()),
            from_log.get_or_insert_text("t").get_string(&from_log.transact())
        );
    }
    server.restart_after_crash();
    assert_eq!(Client::synced(&url).await.text(), expected);
    assert!(server.log().contains("snapshot=Some(30) tail=5"), "loaded from the latest snapshot:\n{}", server.log());
}

fn doc_of<'a>(updates: impl Iterator<Item = &'a [u8]>) -> Doc {
    let doc = Doc::new();
    {
        let mut txn = doc.transact_mut();
        for u in updates {
            txn.apply_update(Update::decode_v1(u).unwrap()).unwrap();
        }
    }
    doc
}

#[tokio::test]
async fn a_reconnecting_client_that_repeats_known_state_adds_nothing_to_the_log() {
    let server = TestServer::start();
    let url = server.url("dedupe");
    let mut a = Client::synced(&url).await;
    a.insert(0, "abc").await;
    a.wait_echo().await;
    let doc = Doc::new();
    {
        let mut txn = doc.transact_mut();
        let update = a.doc.transact().encode_state_as_update_v1(&Default::default());
        txn.apply_update(Update::decode_v1(&update).unwrap()).unwrap();
    }
    // Same content, so its SyncStep2 and a full re-send are all duplicates.
    let mut again = Client::connect_with_doc(&url, doc).await;
    again.sync().await;
    let full = again.doc.transact().encode_state_as_update_v1(&Default::default());
    again.send(yserve::protocol::encode_update(full)).await;
    again.insert(3, "d").await;
    again.wait_echo().await;
    let (updates, _) = read_db(&server.db_path(), "dedupe");
    assert_eq!(updates.len(), 2, "only the two real changes are logged");
}

#[test]
fn sigterm_right_after_the_listening_line_is_a_clean_shutdown() {
    // The signal handlers are installed before the line is printed: a script that sends
    // SIGTERM as soon as it reads the address must not kill the process (exit by signal).
    for _ in 0..20 {
        let mut server = TestServer::start();
        assert_eq!(server.stop(), Some(0));
    }
}
