use std::time::{Duration, Instant};

use crate::support::{Client, TestServer};

#[tokio::test]
async fn awareness_is_relayed_to_everyone_including_the_sender() {
    let server = TestServer::start();
    let mut a = Client::synced(&server.url("aw")).await;
    let mut b = Client::synced(&server.url("aw")).await;
    let id = a.doc.client_id().get();
    a.set_awareness(1, r#"{"user":{"name":"ann"}}"#).await;
    a.pump_until(|c| c.sees_presence(id), "echo to sender").await;
    b.pump_until(|c| c.sees_presence(id), "relay to peer").await;
    // A renewal (same state, newer clock) is echoed too: it keeps the stock client alive.
    a.set_awareness(2, r#"{"user":{"name":"ann"}}"#).await;
    a.pump_until(|c| c.awareness.get(&id).is_some_and(|(clock, _)| *clock == 2), "renewal echo").await;
}

#[tokio::test]
async fn a_new_connection_receives_current_awareness_states() {
    let server = TestServer::start();
    let mut a = Client::synced(&server.url("aw2")).await;
    let id = a.doc.client_id().get();
    a.set_awareness(1, r#"{"cursor":3}"#).await;
    a.pump_until(|c| c.sees_presence(id), "echo").await;
    let mut late = Client::connect(&server.url("aw2")).await;
    late.pump_until(|c| c.sees_presence(id), "initial awareness").await;
}

#[tokio::test]
async fn awareness_is_removed_when_a_client_drops_abruptly() {
    let server = TestServer::start();
    let mut a = Client::synced(&server.url("drop")).await;
    let mut b = Client::synced(&server.url("drop")).await;
    let id = b.doc.client_id().get();
    b.set_awareness(1, r#"{"user":"bob"}"#).await;
    a.pump_until(|c| c.sees_presence(id), "bob present").await;
    // No close frame: the TCP connection is reset (linger 0 makes close send RST).
    crate::support::reset_connection(b);
    let started = Instant::now();
    a.pump_until(|c| !c.sees_presence(id), "bob removed").await;
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(a.awareness[&id].0, 1, "removal keeps the clock, as y-protocols does for remote clients");
}

#[tokio::test]
async fn awareness_states_not_renewed_expire() {
    let server = TestServer::start_with(&["--awareness-timeout-ms", "600"]);
    let mut a = Client::synced(&server.url("expire")).await;
    let mut b = Client::synced(&server.url("expire")).await;
    let id = b.doc.client_id().get();
    b.set_awareness(1, r#"{"user":"quiet"}"#).await;
    a.pump_until(|c| c.sees_presence(id), "present").await;
    // b stays connected but never renews.
    a.pump_until(|c| !c.sees_presence(id), "expired").await;
}
