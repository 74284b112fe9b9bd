//! Limits (SPEC §8): rate limits, connection caps, idle timeout, awareness caps. Each
//! refusal is checked for its code, and others keep working.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio_tungstenite::tungstenite;
use yrs::sync::awareness::{AwarenessUpdate, AwarenessUpdateEntry};
use yserve::auth::{issue, Access};

use crate::support::{Client, TestServer};

#[tokio::test]
async fn a_client_flooding_messages_is_closed_with_rate_limited_and_others_keep_editing() {
    let server = TestServer::start_with(&["--rate-messages-per-sec", "5", "--rate-messages-burst", "20"]);
    let mut calm = Client::synced(&server.url("flood")).await;
    let mut flood = Client::synced(&server.url("flood")).await;
    for i in 0..40u32 {
        flood.set_awareness(i + 1, "{}").await;
    }
    assert_eq!(flood.closed_with().await, (1008, "rate limited".into()));
    calm.insert(0, "fine").await;
    calm.wait_echo().await;
    assert!(server.log().contains("refused: rate limited (1008)"));
}

fn token(sub: &str) -> String {
    let exp = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() + 600;
    issue(&"k".parse().unwrap(), sub, &[("*".into(), Access::Write)], exp).unwrap()
}

async fn upgrade_status(url: &str) -> Result<(), (u16, Option<String>)> {
    match tokio_tungstenite::connect_async(url).await {
        Ok((ws, _)) => {
            // Keep the connection open for the caller's count by leaking it into a task.
            tokio::spawn(async move {
                let _ws = ws;
                tokio::time::sleep(Duration::from_secs(30)).await;
            });
            Ok(())
        }
        Err(tungstenite::Error::Http(r)) => {
            Err((r.status().as_u16(), r.headers().get("retry-after").map(|v| v.to_str().unwrap().to_owned())))
        }
        Err(e) => panic!("{e}"),
    }
}

#[tokio::test]
async fn connection_caps_answer_429_per_user_and_503_globally_with_retry_after() {
    let server =
        TestServer::start_with(&["--jwt-secret", "k", "--connections-per-user-max", "2", "--connections-max", "3"]);
    let url = |user: &str| format!("{}?token={}", server.url("caps"), token(user));
    upgrade_status(&url("alice")).await.unwrap();
    upgrade_status(&url("alice")).await.unwrap();
    assert_eq!(upgrade_status(&url("alice")).await, Err((429, Some("5".into()))));
    upgrade_status(&url("bob")).await.unwrap();
    assert_eq!(upgrade_status(&url("carol")).await, Err((503, Some("5".into()))));
}

#[tokio::test]
async fn a_connection_silent_past_the_idle_timeout_is_closed_with_4408() {
    let server = TestServer::start_with(&["--ping-interval-ms", "100", "--idle-timeout-ms", "500"]);
    // This client reads (and so answers pings) all along: it stays.
    let mut lively = Client::synced(&server.url("idle")).await;
    let mut silent = Client::synced(&server.url("idle")).await;
    lively.pump_for(Duration::from_millis(1500)).await;
    assert!(lively.closed.is_none());
    // `silent` read nothing for 1.5 s, so it answered no ping.
    assert_eq!(silent.closed_with().await, (4408, "idle timeout".into()));
}

#[tokio::test]
async fn awareness_over_its_size_or_client_count_limits_is_refused() {
    let server = TestServer::start_with(&["--awareness-state-bytes-max", "100"]);
    let mut peer = Client::synced(&server.url("aw")).await;
    let mut big = Client::synced(&server.url("aw")).await;
    big.set_awareness(1, &format!("{{\"name\":\"{}\"}}", "x".repeat(200))).await;
    assert_eq!(big.closed_with().await, (1008, "awareness too large".into()));
    let mut many = Client::synced(&server.url("aw")).await;
    let update = AwarenessUpdate {
        clients: (1..=9u64)
            .map(|id| (yrs::ClientID::new(id), AwarenessUpdateEntry { clock: 1, json: "{}".into() }))
            .collect(),
    };
    many.send(yserve::protocol::encode_awareness(update)).await;
    assert_eq!(many.closed_with().await, (1008, "awareness too large".into()));
    peer.set_awareness(1, r#"{"name":"ok"}"#).await;
    let id = peer.doc.client_id().get();
    peer.pump_until(|c| c.sees_presence(id), "peer's own awareness").await;
}

#[tokio::test]
async fn reconnecting_does_not_buy_a_fresh_burst() {
    let server =
        TestServer::start_with(&["--jwt-secret", "k", "--rate-messages-per-sec", "1", "--rate-messages-burst", "20"]);
    let url = format!("{}?token={}", server.url("burst"), token("mallory"));
    // The handshake (SyncStep1, SyncStep2) takes two messages; spend most of the rest.
    let mut first = Client::synced(&url).await;
    for i in 0..15u32 {
        first.set_awareness(i + 1, "{}").await;
    }
    first.insert(0, "x").await;
    first.wait_echo().await;
    drop(first);
    // A new connection of the same user shares the drained bucket instead of a new one.
    let mut second = Client::synced(&url).await;
    for i in 0..10u32 {
        second.set_awareness(i + 1, "{}").await;
    }
    assert_eq!(second.closed_with().await, (1008, "rate limited".into()));
}
