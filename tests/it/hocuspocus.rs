//! The Hocuspocus door (SPEC §9) over raw frames: each refusal, SyncStatus after commit,
//! read-only scope, several documents on one socket. The stock providers are driven in
//! `tests/interop/hocuspocus.test.mjs`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use yrs::{Text, Transact};
use yserve::auth::{issue, Access, Secret};
use yserve::hocuspocus::{self as wire, Address, Frame};
use yserve::protocol;

use crate::support::{new_doc, read_db, Client, TestServer};

const SECRET: &str = "hocuspocus-secret";

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

fn token(sub: &str, grants: &[(&str, Access)], exp_in: i64) -> String {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64;
    let grants: Vec<(String, Access)> = grants.iter().map(|(p, a)| (p.to_string(), *a)).collect();
    issue(&SECRET.parse::<Secret>().unwrap(), sub, &grants, (now + exp_in) as u64).unwrap()
}

fn addr(name: &str) -> Address {
    Address::parse(name).unwrap()
}

/// `varString(name) · varUint(2) · varUint(0) · varString(token) · varString(version)`.
fn auth_frame(name: &str, token: &str) -> Vec<u8> {
    let mut body = vec![2, 0];
    put_string(&mut body, token);
    put_string(&mut body, "4.0.0");
    wire::frame(&addr(name), &body).to_vec()
}

fn put_string(out: &mut Vec<u8>, s: &str) {
    let mut n = s.len();
    while n >= 0x80 {
        out.push((n as u8 & 0x7f) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
    out.extend_from_slice(s.as_bytes());
}

fn update_frame(name: &str, s: &str) -> Vec<u8> {
    let doc = new_doc();
    let text = doc.get_or_insert_text("t");
    let update = {
        let mut txn = doc.transact_mut();
        text.insert(&mut txn, 0, s);
        txn.encode_update_v1()
    };
    wire::frame(&addr(name), &protocol::encode_update(update)).to_vec()
}

async fn connect(server: &TestServer, path: &str) -> Ws {
    let (ws, _) =
        tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{}{path}", server.port)).await.expect("connect");
    ws
}

async fn send(ws: &mut Ws, frame: Vec<u8>) {
    ws.send(Message::Binary(frame.into())).await.expect("send");
}

/// The next frame for `name` whose body starts with `kind` (others are skipped).
async fn next_of(ws: &mut Ws, name: &str, kind: u8) -> Vec<u8> {
    let wait = async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Binary(b))) => {
                    if let Ok(Frame::Doc { address, .. }) = wire::decode(&b) {
                        let body = &b[address.prefix().len()..];
                        if address.raw == name && body.first() == Some(&kind) {
                            return body.to_vec();
                        }
                    }
                }
                Some(Ok(_)) => {}
                other => panic!("connection ended waiting for type {kind} of {name}: {other:?}"),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), wait).await.expect("frame in time")
}

async fn closed_with(ws: &mut Ws) -> u16 {
    let wait = async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(Some(f)))) => return u16::from(f.code),
                Some(Ok(_)) => {}
                other => panic!("no close frame: {other:?}"),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), wait).await.expect("close in time")
}

#[tokio::test]
async fn broadcast_stateless_from_a_client_is_closed_with_4205() {
    let server = TestServer::start();
    let mut ws = connect(&server, "/").await;
    send(&mut ws, wire::frame(&addr("d"), &[6, 1, b'x']).to_vec()).await;
    assert_eq!(closed_with(&mut ws).await, wire::RESET_CONNECTION);
    assert!(server.log().contains("BroadcastStateless"));
}

#[tokio::test]
async fn too_much_before_auth_is_closed_with_4205_frames_bytes_and_documents() {
    let server = TestServer::start_with(&[
        "--jwt-secret",
        SECRET,
        "--hocuspocus-preauth-frames-max",
        "3",
        "--hocuspocus-preauth-bytes-max",
        "1000",
        "--hocuspocus-docs-per-connection-max",
        "2",
    ]);
    let step1 = wire::frame(&addr("d"), &[0, 0, 1, 0]).to_vec();
    let mut ws = connect(&server, "/api/hocuspocus").await;
    for _ in 0..4 {
        send(&mut ws, step1.clone()).await;
    }
    assert_eq!(closed_with(&mut ws).await, wire::RESET_CONNECTION, "frames");
    let mut ws = connect(&server, "/").await;
    send(&mut ws, update_frame("d", &"x".repeat(1200))).await;
    assert_eq!(closed_with(&mut ws).await, wire::RESET_CONNECTION, "bytes");
    let mut ws = connect(&server, "/").await;
    for name in ["a", "b", "c"] {
        send(&mut ws, wire::frame(&addr(name), &[0, 0, 1, 0]).to_vec()).await;
    }
    assert_eq!(closed_with(&mut ws).await, wire::RESET_CONNECTION, "documents");
    assert!(server.log().contains("too much sent before Auth") && server.log().contains("too many documents"));
}

#[tokio::test]
async fn a_malformed_frame_or_update_is_closed_with_1007_or_1008() {
    let server = TestServer::start();
    let mut ws = connect(&server, "/").await;
    send(&mut ws, vec![0x80, 0x04, b'a']).await;
    assert_eq!(closed_with(&mut ws).await, 1007);
    // An update `protocol` refuses, on a document attached by its first frame (anonymous
    // mode): it never reaches yrs.
    let mut ws = connect(&server, "/").await;
    send(&mut ws, wire::frame(&addr("h"), &[0, 2, 3, 0xff, 0xff, 0xff]).to_vec()).await;
    let code = closed_with(&mut ws).await;
    assert!(code == 1007 || code == 1008, "hostile or malformed update: {code}");
}

#[tokio::test]
async fn bad_expired_and_forbidden_tokens_get_permission_denied_and_the_socket_stays() {
    let server = TestServer::start_with(&["--jwt-secret", SECRET]);
    let mut ws = connect(&server, "/").await;
    let cases = [
        ("bad", "garbage".to_owned(), "unauthorized"),
        ("old", token("alice", &[("*", Access::Write)], -3600), "token expired"),
        ("private", token("alice", &[("public/*", Access::Write)], 3600), "forbidden"),
    ];
    for (name, t, reason) in &cases {
        send(&mut ws, auth_frame(name, t)).await;
        let body = next_of(&mut ws, name, 2).await;
        assert_eq!(u64::from(body[1]), wire::auth::PERMISSION_DENIED, "{name}");
        assert_eq!(&body[3..], reason.as_bytes(), "{name}");
    }
    // The same socket still serves a document the token grants.
    send(&mut ws, auth_frame("public/x", &token("alice", &[("public/*", Access::Write)], 3600))).await;
    let body = next_of(&mut ws, "public/x", 2).await;
    assert_eq!(&body[..3], &[2, wire::auth::AUTHENTICATED as u8, 10]);
    assert_eq!(&body[3..], b"read-write");
    assert!(!server.log().contains("garbage"), "tokens never appear in logs");
}

#[tokio::test]
async fn sync_status_1_is_sent_only_after_the_update_is_stored() {
    let server = TestServer::start();
    let mut ws = connect(&server, "/").await;
    send(&mut ws, auth_frame("durable", "")).await;
    assert_eq!(u64::from(next_of(&mut ws, "durable", 2).await[1]), wire::auth::AUTHENTICATED);
    send(&mut ws, update_frame("durable", "saved")).await;
    assert_eq!(next_of(&mut ws, "durable", 8).await, wire::SYNC_STATUS_SAVED);
    let (updates, _) = read_db(&server.db_path(), "durable");
    assert_eq!(updates.len(), 1, "committed before its SyncStatus");
}

#[tokio::test]
async fn a_read_only_update_is_answered_sync_status_0_and_dropped() {
    let server = TestServer::start_with(&["--jwt-secret", SECRET]);
    let mut ws = connect(&server, "/").await;
    send(&mut ws, auth_frame("ro", &token("bob", &[("ro", Access::Read)], 3600))).await;
    let body = next_of(&mut ws, "ro", 2).await;
    assert_eq!(&body[3..], b"readonly");
    send(&mut ws, update_frame("ro", "nope")).await;
    assert_eq!(next_of(&mut ws, "ro", 8).await, wire::SYNC_STATUS_REFUSED);
    // Nothing stored or relayed: a y-websocket reader sees an empty document.
    let reader =
        Client::synced(&format!("{}?token={}", server.url("ro"), token("eve", &[("ro", Access::Read)], 3600))).await;
    assert_eq!(reader.text(), "");
}

#[tokio::test]
async fn the_per_user_connection_cap_refuses_a_document_with_permission_denied() {
    let server = TestServer::start_with(&["--jwt-secret", SECRET, "--connections-per-user-max", "1"]);
    let t = token("carol", &[("*", Access::Write)], 3600);
    let _held = Client::synced(&format!("{}?token={t}", server.url("held"))).await;
    let mut ws = connect(&server, "/").await;
    send(&mut ws, auth_frame("capped", &t)).await;
    let body = next_of(&mut ws, "capped", 2).await;
    assert_eq!(u64::from(body[1]), wire::auth::PERMISSION_DENIED);
    assert_eq!(&body[3..], b"too many connections");
}

#[tokio::test]
async fn documents_on_one_socket_are_separate_and_close_detaches_only_one() {
    let server = TestServer::start();
    let mut ws = connect(&server, "/").await;
    for name in ["one", "two"] {
        send(&mut ws, auth_frame(name, "")).await;
        next_of(&mut ws, name, 2).await;
    }
    send(&mut ws, update_frame("one", "first")).await;
    assert_eq!(next_of(&mut ws, "one", 8).await, wire::SYNC_STATUS_SAVED);
    send(&mut ws, wire::frame(&addr("one"), &[7]).to_vec()).await;
    send(&mut ws, update_frame("two", "second")).await;
    assert_eq!(next_of(&mut ws, "two", 8).await, wire::SYNC_STATUS_SAVED);
    let y = Client::synced(&server.url("two")).await;
    assert_eq!(y.text(), "second");
    let y = Client::synced(&server.url("one")).await;
    assert_eq!(y.text(), "first");
}

#[tokio::test]
async fn a_document_token_that_expires_while_open_closes_the_socket_with_4401() {
    let server = TestServer::start_with(&["--jwt-secret", SECRET, "--ping-interval-ms", "200"]);
    let mut ws = connect(&server, "/").await;
    // Valid for about two more seconds (the server allows five seconds of leeway).
    send(&mut ws, auth_frame("short", &token("alice", &[("*", Access::Write)], -3))).await;
    assert_eq!(u64::from(next_of(&mut ws, "short", 2).await[1]), wire::auth::AUTHENTICATED);
    assert_eq!(closed_with(&mut ws).await, 4401);
}

#[tokio::test]
async fn frames_sent_before_auth_are_replayed_once_it_succeeds() {
    let server = TestServer::start_with(&["--jwt-secret", SECRET]);
    let mut ws = connect(&server, "/").await;
    // SyncStep1 with an empty state vector, queued: the document is not authorized yet.
    send(&mut ws, wire::frame(&addr("early"), &[0, 0, 1, 0]).to_vec()).await;
    send(&mut ws, update_frame("early", "queued")).await;
    send(&mut ws, auth_frame("early", &token("alice", &[("early", Access::Write)], 3600))).await;
    assert_eq!(u64::from(next_of(&mut ws, "early", 2).await[1]), wire::auth::AUTHENTICATED);
    assert_eq!(next_of(&mut ws, "early", 8).await, wire::SYNC_STATUS_SAVED, "the queued update applied");
    let t = token("bob", &[("early", Access::Read)], 3600);
    assert_eq!(Client::synced(&format!("{}?token={t}", server.url("early"))).await.text(), "queued");
}

#[tokio::test]
async fn query_awareness_is_answered_with_the_documents_states() {
    let server = TestServer::start();
    let mut y = Client::synced(&server.url("aware")).await;
    y.set_awareness(1, r#"{"user":"ann"}"#).await;
    y.pump_until(|c| !c.awareness.is_empty(), "own awareness echoed").await;
    let mut ws = connect(&server, "/").await;
    send(&mut ws, auth_frame("aware", "")).await;
    next_of(&mut ws, "aware", 2).await;
    send(&mut ws, wire::frame(&addr("aware"), &[3]).to_vec()).await;
    // The join sends the states once; the query sends them again.
    for _ in 0..2 {
        let body = next_of(&mut ws, "aware", 1).await;
        assert!(String::from_utf8_lossy(&body).contains("ann"));
    }
}
