//! Every refusal: its close code or status, and the document and other clients unharmed.

use futures::SinkExt;
use tokio_tungstenite::tungstenite::{self, Message};

use crate::support::{sqlite_only, Client, TestServer};

/// Connects, asserts the upgrade is refused with `status`, returns the body.
async fn upgrade_refused(url: &str, status: u16) -> String {
    match tokio_tungstenite::connect_async(url).await {
        Err(tungstenite::Error::Http(response)) => {
            assert_eq!(response.status().as_u16(), status, "{url}");
            String::from_utf8_lossy(response.body().as_deref().unwrap_or_default()).into_owned()
        }
        Ok(_) => panic!("{url}: upgrade accepted"),
        Err(e) => panic!("{url}: {e}"),
    }
}

#[tokio::test]
async fn invalid_document_names_are_refused_with_400_at_the_upgrade() {
    let server = TestServer::start();
    let base = format!("ws://127.0.0.1:{}", server.port);
    assert!(upgrade_refused(&format!("{base}/%FF%FE"), 400).await.contains("UTF-8"));
    assert!(upgrade_refused(&format!("{base}/a%0Ab"), 400).await.contains("control"));
    assert!(upgrade_refused(&format!("{base}/{}", "x".repeat(513)), 400).await.contains("513"));
    // The longest valid name works.
    Client::synced(&format!("{base}/{}", "x".repeat(512))).await;
}

/// The refused connection is closed; a peer on the same document keeps editing, and a
/// third client sees those edits.
async fn peers_unharmed(server: &TestServer, name: &str, mut peer: Client) {
    peer.insert(0, "after ").await;
    peer.wait_echo().await;
    let third = Client::synced(&server.url(name)).await;
    assert_eq!(third.text(), peer.text());
}

#[tokio::test]
async fn a_text_frame_closes_the_connection_with_1003() {
    let server = TestServer::start();
    let peer = Client::synced(&server.url("text")).await;
    let mut bad = Client::synced(&server.url("text")).await;
    bad.ws.send(Message::Text("hello".into())).await.unwrap();
    assert_eq!(bad.closed_with().await.0, 1003);
    peers_unharmed(&server, "text", peer).await;
    assert!(server.log().contains("text frame on a Yjs connection"));
}

#[tokio::test]
async fn malformed_and_truncated_messages_close_with_1007() {
    let server = TestServer::start();
    let mut peer = Client::synced(&server.url("bad")).await;
    peer.insert(0, "base").await;
    peer.wait_echo().await;
    let mut update = Vec::new();
    {
        let mut donor = Client::synced(&server.url("elsewhere")).await;
        update.extend(donor.edit_offline(|t, txn| yrs::Text::insert(t, txn, 0, "zzz")));
    }
    let frame = yserve::protocol::encode_update(update);
    let cases: Vec<Vec<u8>> = vec![
        vec![],                            // empty
        vec![0],                           // sync without a type
        vec![0, 9, 0],                     // unknown sync type
        vec![0, 2, 50, 1],                 // declared length past the end
        frame[..frame.len() - 3].to_vec(), // truncated real update
        vec![1, 5, 1, 2],                  // truncated awareness
        vec![0, 2, 3, 0xff, 0xff, 0xff],   // garbage update body
    ];
    for case in cases {
        let mut bad = Client::synced(&server.url("bad")).await;
        bad.send(case.clone()).await;
        assert_eq!(bad.closed_with().await.0, 1007, "frame {case:?}");
    }
    assert_eq!(peer.text(), "base");
    peers_unharmed(&server, "bad", peer).await;
    assert!(server.log().contains("refused: bad message") && server.log().contains("code=1007"));
}

#[tokio::test]
async fn a_message_over_the_size_limit_closes_with_1009() {
    let server = TestServer::start_with(&["--message-bytes-max", "65536"]);
    let peer = Client::synced(&server.url("big")).await;
    let mut bad = Client::synced(&server.url("big")).await;
    let big = "x".repeat(70_000);
    bad.insert(0, &big).await;
    assert_eq!(bad.closed_with().await.0, 1009);
    peers_unharmed(&server, "big", peer).await;
}

#[tokio::test]
async fn a_consumer_that_stops_reading_is_closed_with_1013() {
    let server = TestServer::start_with(&["--outbound-queue-bytes-max", "262144"]);
    let mut writer = Client::synced(&server.url("slow")).await;
    let mut slow = Client::synced(&server.url("slow")).await;
    // `slow` reads nothing while ~24 MB of updates are relayed: more than the kernel's socket
    // buffers on loopback plus the 256 KiB queue.
    let chunk = "y".repeat(60_000);
    for _ in 0..400 {
        writer.edit(|t, txn| yrs::Text::insert(t, txn, 0, &chunk)).await;
        // The writer reads its echoes, so only `slow` falls behind.
        writer.wait_echo().await;
    }
    // A slow consumer is slow: it gets to reading well after the close was decided, and the
    // close frame still waits for it behind what the kernel already holds.
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    // Everything queued before the close is dropped; the close frame is what arrives.
    let (code, reason) = slow.closed_with().await;
    assert_eq!((code, reason.as_str()), (1013, "slow consumer"));
    assert!(server.log().contains("slow consumer"));
    peers_unharmed(&server, "slow", writer).await;
}

#[tokio::test]
async fn a_failed_commit_closes_the_document_with_1011_and_relays_nothing() {
    if sqlite_only("a commit fails while another SQLite connection holds the write lock") {
        return;
    }
    let server = TestServer::start_with(&["--store-busy-timeout-ms", "100"]);
    let url = server.url("locked");
    let mut a = Client::synced(&url).await;
    a.insert(0, "committed ").await;
    a.wait_echo().await;
    let mut b = Client::synced(&url).await;
    let mut other = Client::synced(&server.url("other")).await;

    // An operator's sqlite3 holds the write lock: the next commit times out and fails.
    let lock = rusqlite::Connection::open(server.db_path()).unwrap();
    lock.execute_batch("BEGIN IMMEDIATE").unwrap();
    a.insert(10, "lost").await;
    assert_eq!(a.closed_with().await.0, 1011);
    assert_eq!(b.closed_with().await.0, 1011);
    assert_eq!(b.text(), "committed ", "the uncommitted update was never relayed");
    assert!(server.log().contains("commit failed"));
    lock.execute_batch("ROLLBACK").unwrap();

    // The server keeps serving: the document reloads what is stored.
    let fresh = Client::synced(&url).await;
    assert_eq!(fresh.text(), "committed ");
    other.insert(0, "fine").await;
    other.pump_until(|c| c.text() == "fine", "other document still works").await;
}

/// A connection the session refuses (a text frame: 1003) while its backlog is full still
/// gets its close frame, after everything queued: the document dropping its sender as the
/// connection leaves must not truncate the session's close frame away. One worker thread
/// makes the order deterministic (the actor runs once the session waits in `close_with`).
#[tokio::test]
async fn a_refusal_behind_a_full_backlog_still_sends_its_close_frame_after_the_backlog() {
    use futures::SinkExt;
    let server = TestServer::start_with(&["--outbound-queue-bytes-max", "67108864", "--worker-threads", "1"]);
    let mut writer = Client::synced(&server.url("stall-refused")).await;
    let mut stalled = Client::synced(&server.url("stall-refused")).await;
    // ~24 MB, more than the loopback socket buffers: most of it waits in the server's backlog.
    crate::support::send_24_mb(&mut writer).await;
    // The store thread relays an update to the writer and to `stalled` one after the other:
    // the writer's echo of update 400 does not prove the frame for `stalled` is queued yet.
    // Relays leave in commit order, so the echo of one more update proves update 400's is.
    let queued = writer.text();
    writer.edit(|t, txn| yrs::Text::insert(t, txn, 0, "last")).await;
    writer.wait_echo().await;
    let maybe_also_last = writer.text();
    stalled.ws.send(tokio_tungstenite::tungstenite::Message::Text("not yjs".into())).await.unwrap();
    assert_eq!(stalled.closed_with().await.0, 1003);
    let got = stalled.text();
    assert!(got == queued || got == maybe_also_last, "what was queued went out before the close frame");
}
