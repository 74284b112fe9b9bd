//! Auth at the upgrade (SPEC §4): 401/403 with reasons, read grants, expiry during a
//! connection (4401), origin allow-list, the `token` subcommand, anonymous-mode binding.

use std::time::{SystemTime, UNIX_EPOCH};

use tokio_tungstenite::tungstenite::{self, client::IntoClientRequest};
use yserve::auth::{issue, Access, Secret};

use crate::support::{read_db, sql_texts, Client, TestServer};

const SECRET: &str = "test-secret";

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn token(sub: &str, grants: &[(&str, Access)], exp: u64) -> String {
    let secret: Secret = SECRET.parse().unwrap();
    let grants: Vec<(String, Access)> = grants.iter().map(|(p, a)| (p.to_string(), *a)).collect();
    issue(&secret, sub, &grants, exp).unwrap()
}

fn server() -> TestServer {
    TestServer::start_with(&["--jwt-secret", SECRET])
}

/// Tries an upgrade; returns the HTTP status and `WWW-Authenticate` of a refusal.
async fn refusal(request: impl IntoClientRequest + Unpin) -> (u16, Option<String>, String) {
    match tokio_tungstenite::connect_async(request).await {
        Err(tungstenite::Error::Http(r)) => (
            r.status().as_u16(),
            r.headers().get("www-authenticate").map(|v| v.to_str().unwrap().to_owned()),
            String::from_utf8_lossy(r.body().as_deref().unwrap_or_default()).into_owned(),
        ),
        Ok(_) => panic!("upgrade accepted"),
        Err(e) => panic!("{e}"),
    }
}

#[tokio::test]
async fn missing_invalid_and_expired_tokens_get_401_with_www_authenticate() {
    let server = server();
    let url = server.url("notes/a");
    for (target, reason) in [
        (url.clone(), "missing token"),
        (format!("{url}?token=garbage"), "invalid token"),
        (format!("{url}?token={}", token("alice", &[("*", Access::Write)], now() - 60)), "token expired"),
        (
            format!("{url}?token={}", issue(&"wrong".parse().unwrap(), "alice", &[], now() + 60).unwrap()),
            "invalid token",
        ),
    ] {
        let (status, www, body) = refusal(target.as_str()).await;
        assert_eq!(status, 401, "{reason}");
        assert!(www.unwrap().starts_with("Bearer"));
        assert!(body.contains(reason), "{body:?} should say {reason:?}");
    }
    assert!(!server.log().contains("garbage"), "tokens never appear in logs");
}

#[tokio::test]
async fn a_token_without_a_grant_for_the_document_gets_403() {
    let server = server();
    let t = token("alice", &[("notes/*", Access::Write)], now() + 60);
    let (status, _, body) = refusal(format!("{}?token={t}", server.url("other")).as_str()).await;
    assert_eq!((status, body.trim()), (403, "no grant for this document"));
    Client::synced(&format!("{}?token={t}", server.url("notes/x"))).await;
}

#[tokio::test]
async fn a_bearer_header_is_accepted_like_the_query_parameter() {
    let server = server();
    let t = token("alice", &[("*", Access::Write)], now() + 60);
    let mut request = server.url("doc").into_client_request().unwrap();
    request.headers_mut().insert("authorization", format!("Bearer {t}").parse().unwrap());
    let (ws, _) = tokio_tungstenite::connect_async(request).await.expect("bearer accepted");
    drop(ws);
}

#[tokio::test]
async fn read_grants_sync_but_their_updates_are_dropped() {
    let server = server();
    let writer_token = token("alice", &[("doc", Access::Write)], now() + 60);
    let reader_token = token("bob", &[("doc", Access::Read)], now() + 60);
    let mut writer = Client::synced(&format!("{}?token={writer_token}", server.url("doc"))).await;
    writer.insert(0, "by alice").await;
    writer.wait_echo().await;
    let mut reader = Client::synced(&format!("{}?token={reader_token}", server.url("doc"))).await;
    assert_eq!(reader.text(), "by alice");
    reader.insert(0, "by bob ").await;
    // The writer's next edit arrives at the reader; the reader's never reached anyone.
    writer.insert(8, "!").await;
    writer.wait_echo().await;
    reader.pump_until(|c| c.text().ends_with('!'), "writer's edit at the reader").await;
    assert_eq!(writer.text(), "by alice!");
    let (updates, _) = read_db(&server.db_path(), "doc");
    assert_eq!(updates.len(), 2);
    let origins = sql_texts(&server.db_path(), "SELECT origin FROM updates ORDER BY seq");
    assert_eq!(origins, vec!["alice", "alice"], "origin is the token's user");
    crate::support::wait_for_log(&server, "dropping updates from a read-only connection").await;
}

#[tokio::test]
async fn a_token_that_expires_during_the_connection_closes_it_with_4401() {
    let server = server();
    // exp is 4 s ago: within the 5 s leeway at the upgrade, past it a second later.
    let t = token("alice", &[("*", Access::Write)], now() - 4);
    let mut c = Client::synced(&format!("{}?token={t}", server.url("doc"))).await;
    assert_eq!(c.closed_with().await, (4401, "token expired".into()));
}

#[tokio::test]
async fn an_origin_outside_the_allow_list_gets_403() {
    let server = TestServer::start_with(&["--allowed-origin", "https://app.example"]);
    let mut request = server.url("doc").into_client_request().unwrap();
    request.headers_mut().insert("origin", "https://evil.example".parse().unwrap());
    let (status, _, body) = refusal(request).await;
    assert_eq!((status, body.trim()), (403, "origin not allowed"));
    let mut allowed = server.url("doc").into_client_request().unwrap();
    allowed.headers_mut().insert("origin", "https://app.example".parse().unwrap());
    tokio_tungstenite::connect_async(allowed).await.expect("allowed origin");
    Client::synced(&server.url("doc")).await; // no Origin header: not a browser
}

#[tokio::test]
async fn the_token_command_prints_a_token_the_server_accepts() {
    let server = server();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_yserve"))
        .args(["token", "--sub", "carol", "--doc", "team/*=write", "--ttl", "1h", "--jwt-secret", SECRET])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let t = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let mut c = Client::synced(&format!("{}?token={t}", server.url("team/x"))).await;
    c.insert(0, "hi").await;
    c.wait_echo().await;
    let (status, _, _) = refusal(format!("{}?token={t}", server.url("elsewhere")).as_str()).await;
    assert_eq!(status, 403);
}

#[test]
fn anonymous_mode_refuses_a_non_loopback_address() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_yserve"))
        .args(["serve", "--addr", "0.0.0.0:0", "--db"])
        .arg(dir.path().join("x.db"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--allow-anonymous"));
}

fn doc_with_client(id: u64) -> yrs::Doc {
    yrs::Doc::with_options(yrs::Options { client_id: yrs::ClientID::new(id), ..Default::default() })
}

#[tokio::test]
async fn a_client_id_belongs_to_the_first_user_who_wrote_with_it_across_restarts() {
    let mut server = server();
    let alice = token("alice", &[("doc", Access::Write)], now() + 600);
    let bob = token("bob", &[("doc", Access::Write)], now() + 600);
    let base = server.url("doc"); // the port stays the same across restarts
    let url = |t: &str| format!("{base}?token={t}");
    let mut a = Client::connect_with_doc(&url(&alice), doc_with_client(4242)).await;
    a.sync().await;
    a.insert(0, "alice's").await;
    a.wait_echo().await;
    drop(a);
    server.restart();

    // Bob writing new structs with Alice's client id is refused ...
    let mut b = Client::connect_with_doc(&url(&bob), doc_with_client(4242)).await;
    b.sync().await;
    b.edit(|t, txn| yrs::Text::insert(t, txn, 0, "forged ")).await;
    assert_eq!(b.closed_with().await, (1008, "client-id".into()));
    // ... and so is awareness for it, even from an otherwise honest client.
    let mut b2 = Client::synced(&url(&bob)).await;
    let forged = yrs::sync::awareness::AwarenessUpdate {
        clients: [(
            yrs::ClientID::new(4242),
            yrs::sync::awareness::AwarenessUpdateEntry { clock: 9, json: "{}".into() },
        )]
        .into_iter()
        .collect(),
    };
    b2.send(yserve::protocol::encode_awareness(forged)).await;
    assert_eq!(b2.closed_with().await, (1008, "client-id".into()));

    // Alice reconnecting with her own client id is fine; Bob with his own id too.
    let mut a = Client::connect_with_doc(&url(&alice), doc_with_client(4242)).await;
    a.sync().await;
    a.insert(0, "still ").await;
    a.wait_echo().await;
    let mut b3 = Client::synced(&url(&bob)).await;
    b3.insert(0, "bob ").await;
    b3.wait_echo().await;
    assert_eq!(Client::synced(&url(&alice)).await.text(), "bob still alice's");
    let owner = sql_texts(&server.db_path(), "SELECT user_id FROM client_owners WHERE client_id = 4242").remove(0);
    assert_eq!(owner, "alice");
}

#[tokio::test]
async fn json_logs_name_connection_user_and_document_on_refusals_and_never_the_token() {
    let server = TestServer::start_with(&["--jwt-secret", SECRET, "--log-format", "json"]);
    let t = token("alice", &[("*", Access::Write)], now() + 60);
    let url = format!("{}?token={t}", server.url("logged/doc"));
    let (mut ws, _) = tokio_tungstenite::connect_async(url.as_str()).await.unwrap();
    use futures::{SinkExt, StreamExt};
    ws.send(tungstenite::Message::Text("not yjs".into())).await.unwrap();
    // The refusal closes the connection with 1003.
    let closed = tokio::time::timeout(crate::support::TIMEOUT, async {
        while let Some(Ok(m)) = ws.next().await {
            if let tungstenite::Message::Close(f) = m {
                return f.map(|f| u16::from(f.code));
            }
        }
        None
    })
    .await
    .expect("closed in time");
    assert_eq!(closed, Some(1003));
    crate::support::wait_for_log(&server, "text frame on a Yjs connection").await;
    let log = server.log();
    assert!(!log.contains(&t), "tokens never appear in logs");
    let refusal = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|l| l["fields"]["message"].as_str().is_some_and(|m| m.contains("text frame")))
        .expect("the refusal is logged as JSON");
    // The session's span carries them; the line names them whatever the message.
    let span = &refusal["span"];
    assert_eq!(span["user"], "alice", "{refusal}");
    assert_eq!(span["doc"], "logged/doc", "{refusal}");
    assert!(span["conn"].as_u64().is_some(), "{refusal}");
}

#[tokio::test]
async fn a_document_logs_under_its_own_span_not_the_session_that_loaded_it() {
    let server = TestServer::start_with(&["--jwt-secret", SECRET, "--log-format", "json"]);
    let grants = [("doc", Access::Write)];
    let url = |user: &str| format!("{}?token={}", server.url("doc"), token(user, &grants, now() + 600));
    // Alice's connection loads the document and stays connected.
    let mut a = Client::connect_with_doc(&url("alice"), doc_with_client(4242)).await;
    a.sync().await;
    a.insert(0, "alice's").await;
    a.wait_echo().await;
    // Bob's update with Alice's client id is refused inside the document actor.
    let mut b = Client::connect_with_doc(&url("bob"), doc_with_client(4242)).await;
    b.sync().await;
    b.edit(|t, txn| yrs::Text::insert(t, txn, 0, "forged ")).await;
    assert_eq!(b.closed_with().await, (1008, "client-id".into()));
    crate::support::wait_for_log(&server, "update for another user's client id").await;
    let line = server
        .log()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|l| l["fields"]["message"].as_str().is_some_and(|m| m.contains("another user's client id")))
        .expect("the refusal is logged as JSON");
    assert_eq!(line["fields"]["user"], "bob", "{line}");
    // The document's span must not inherit the session of whoever happened to load it.
    let spans = line["spans"].as_array().expect("spans");
    assert_eq!(spans.len(), 1, "{line}");
    assert_eq!(spans[0]["name"], "document", "{line}");
    assert_eq!(spans[0]["doc"], "doc", "{line}");
}

#[tokio::test]
async fn a_client_id_announced_only_in_awareness_is_bound_for_awareness_and_updates_across_restarts() {
    let mut server = server();
    let grants = [("doc", Access::Write)];
    let base = server.url("doc");
    let url = |user: &str| format!("{base}?token={}", token(user, &grants, now() + 600));
    let alice_state = r#"{"user":{"name":"real"}}"#;
    let mut a = Client::connect_with_doc(&url("alice"), doc_with_client(777)).await;
    a.sync().await;
    a.set_awareness(1, alice_state).await;
    let mut b = Client::synced(&url("bob")).await;
    b.pump_until(|c| c.sees_presence(777), "Bob sees Alice's state").await;
    // Bob re-broadcasting Alice's state as it is, as the stock client does, is no forgery.
    b.send(yserve::protocol::encode_awareness(awareness(777, 1, alice_state))).await;
    b.insert(0, "bob ").await;
    b.wait_echo().await;
    assert!(b.closed.is_none(), "an echo of a peer's state is not refused");
    // A newer state for Alice's client id from Bob is.
    b.send(yserve::protocol::encode_awareness(awareness(777, 2, r#"{"user":{"name":"forged"}}"#))).await;
    assert_eq!(b.closed_with().await, (1008, "client-id".into()));
    // The claim is stored, although Alice never wrote with that id (it was queued before
    // Bob's update, whose echo he has seen, so it is committed).
    let owner = sql_texts(&server.db_path(), "SELECT user_id FROM client_owners WHERE client_id = 777").remove(0);
    assert_eq!(owner, "alice");
    drop(a);
    server.restart();
    // ... and binds updates too, after a restart.
    let mut b = Client::connect_with_doc(&url("bob"), doc_with_client(777)).await;
    b.sync().await;
    b.edit(|t, txn| yrs::Text::insert(t, txn, 0, "forged ")).await;
    assert_eq!(b.closed_with().await, (1008, "client-id".into()));
    let mut a = Client::connect_with_doc(&url("alice"), doc_with_client(777)).await;
    a.sync().await;
    a.insert(0, "alice ").await;
    a.wait_echo().await;
    assert_eq!(a.text(), "alice bob ");
}

fn awareness(client: u64, clock: u32, json: &str) -> yrs::sync::awareness::AwarenessUpdate {
    yrs::sync::awareness::AwarenessUpdate {
        clients: [(
            yrs::ClientID::new(client),
            yrs::sync::awareness::AwarenessUpdateEntry { clock, json: json.into() },
        )]
        .into_iter()
        .collect(),
    }
}
