use yrs::{Doc, Text, Transact};

use crate::support::{Client, TestServer};

#[tokio::test]
async fn late_joiner_receives_existing_text() {
    let server = TestServer::start();
    let mut a = Client::synced(&server.url("notes")).await;
    a.insert(0, "hello").await;
    a.wait_echo().await;
    let b = Client::synced(&server.url("notes")).await;
    assert_eq!(b.text(), "hello");
}

#[tokio::test]
async fn updates_are_relayed_to_every_connection_including_the_sender() {
    let server = TestServer::start();
    let mut a = Client::synced(&server.url("relay")).await;
    let mut b = Client::synced(&server.url("relay")).await;
    // A second doc applying only what it receives proves the echo reached the sender's socket.
    let mut echo_only = Client::synced(&server.url("relay")).await;
    a.insert(0, "x").await;
    b.pump_until(|c| c.text() == "x", "relay to peer").await;
    echo_only.pump_until(|c| c.text() == "x", "relay to third").await;
    a.wait_echo().await;
}

#[tokio::test]
async fn a_single_threaded_server_relays_and_persists_like_the_default_one() {
    let mut server = TestServer::start_with(&["--worker-threads", "1"]);
    let mut a = Client::synced(&server.url("one-thread")).await;
    let mut b = Client::synced(&server.url("one-thread")).await;
    a.insert(0, "one thread").await;
    b.pump_until(|c| c.text() == "one thread", "relay to peer").await;
    a.wait_echo().await;
    drop((a, b));
    server.restart();
    assert_eq!(Client::synced(&server.url("one-thread")).await.text(), "one thread");
}

#[tokio::test]
async fn offline_edits_reconcile_on_reconnect() {
    let server = TestServer::start();
    let url = server.url("offline");
    let mut online = Client::synced(&url).await;
    online.insert(0, "server side. ").await;
    online.wait_echo().await;

    // A doc edited while disconnected, then connected: its edits travel in its SyncStep2.
    let doc = Doc::new();
    {
        let text = doc.get_or_insert_text("t");
        let mut txn = doc.transact_mut();
        text.insert(&mut txn, 0, "offline edit");
    }
    let mut returning = Client::connect_with_doc(&url, doc).await;
    returning.sync().await;
    returning.wait_echo().await;
    assert!(returning.text().contains("server side. "));
    online.pump_until(|c| c.text().contains("offline edit"), "relay of offline edit").await;
    assert_eq!(online.text(), returning.text());
    let fresh = Client::synced(&url).await;
    assert_eq!(fresh.text(), online.text());
}

#[tokio::test]
async fn documents_are_isolated_by_name_including_slashes_and_unicode() {
    let server = TestServer::start();
    let mut a = Client::synced(&server.url("team/notes/caf%C3%A9")).await;
    a.insert(0, "A").await;
    a.wait_echo().await;
    let mut b = Client::synced(&server.url("team/notes")).await;
    b.insert(0, "B").await;
    b.wait_echo().await;
    assert_eq!(Client::synced(&server.url("team/notes/café")).await.text(), "A");
    assert_eq!(Client::synced(&server.url("team/notes")).await.text(), "B");
    let (updates, _) = crate::support::read_db(&server.db_path(), "team/notes/café");
    assert_eq!(updates.len(), 1);
}

#[tokio::test]
async fn concurrent_joins_load_the_document_once() {
    let server = TestServer::start();
    let url = server.url("crowd");
    let mut first = Client::synced(&url).await;
    first.insert(0, "seed").await;
    first.wait_echo().await;
    drop(first);
    // Wait for the unload, so the 20 joins below race to load it.
    crate::support::wait_for_log(&server, "document unloaded").await;
    let joins = (0..20).map(|_| Client::synced(&url));
    let clients = futures::future::join_all(joins).await;
    assert!(clients.iter().all(|c| c.text() == "seed"));
    let log = server.log();
    assert_eq!(log.matches("document loaded").count(), 2, "one load per lifetime:\n{log}");
}

#[tokio::test]
async fn a_join_racing_an_unload_gets_the_full_state() {
    let server = TestServer::start();
    let url = server.url("race");
    let mut expected = String::new();
    for i in 0..40 {
        let mut writer = Client::synced(&url).await;
        let piece = format!("{i},");
        writer.insert(expected.len() as u32, &piece).await;
        expected.push_str(&piece);
        writer.wait_echo().await;
        // The writer leaves (the document starts unloading) and a reader joins at once.
        drop(writer);
        let reader = Client::synced(&url).await;
        assert_eq!(reader.text(), expected, "round {i}");
    }
    assert!(server.log().contains("document unloaded"), "the unload path was exercised");
}

#[tokio::test]
async fn unknown_message_types_and_auth_messages_are_ignored() {
    let server = TestServer::start();
    let mut a = Client::synced(&server.url("unknown")).await;
    a.send(vec![42u8, 1, 2, 3]).await;
    a.send(vec![2u8, 0, 0]).await; // auth message from a client
    a.insert(0, "still here").await;
    a.wait_echo().await;
    assert!(a.closed.is_none());
}

#[tokio::test]
async fn query_awareness_returns_current_states() {
    let server = TestServer::start();
    let mut a = Client::synced(&server.url("query")).await;
    a.set_awareness(1, r#"{"user":"a"}"#).await;
    let id = a.doc.client_id().get();
    a.pump_until(|c| c.sees_presence(id), "own awareness echo").await;
    let mut b = Client::synced(&server.url("query")).await;
    b.awareness.clear();
    b.send(vec![3u8]).await;
    b.pump_until(|c| c.sees_presence(id), "query-awareness answer").await;
}

#[tokio::test]
async fn many_small_updates_keep_their_order_and_content() {
    let server = TestServer::start();
    let mut a = Client::synced(&server.url("burst")).await;
    let mut b = Client::synced(&server.url("burst")).await;
    for i in 0..500u32 {
        a.edit(|t, txn| t.insert(txn, i, "x")).await;
    }
    b.pump_until(|c| c.text().len() == 500, "500 updates").await;
    let (updates, _) = crate::support::read_db(&server.db_path(), "burst");
    assert_eq!(updates.len(), 500);
    assert!(updates.windows(2).all(|w| w[1].0 == w[0].0 + 1), "seq strictly increasing by one");
}

/// Documents write relayed frames straight to the socket and queue what the kernel does not
/// take; the session drains that backlog, and its own frames (here a pong) queue behind it.
/// A reader that stalls past the kernel's buffers and then reads gets every frame whole and
/// in order.
#[tokio::test]
async fn a_reader_that_stalls_then_reads_gets_every_frame_whole_and_in_order() {
    use futures::SinkExt;
    let server = TestServer::start_with(&["--outbound-queue-bytes-max", "67108864"]);
    let mut writer = Client::synced(&server.url("stall")).await;
    let mut stalled = Client::synced(&server.url("stall")).await;
    // ~24 MB: more than the kernel's socket buffers on loopback, so most of it waits in the
    // server's backlog while `stalled` reads nothing.
    crate::support::send_24_mb(&mut writer).await;
    // The server answers this ping while the backlog is full: the pong must queue behind it.
    stalled.ws.send(tokio_tungstenite::tungstenite::Message::Ping("mid-backlog".into())).await.unwrap();
    let want = writer.text();
    stalled.pump_until(|c| c.text().len() == want.len(), "the whole backlog").await;
    assert!(stalled.text() == want, "the stalled reader converged to the writer's text");
    assert!(stalled.closed.is_none());
}
