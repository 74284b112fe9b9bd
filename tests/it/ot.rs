//! The OT layer (SPEC §5, §8) over the ShareDB protocol at `/api/ot` and the REST mirror.
//! Every refusal is checked for its exact ShareDB error code (and HTTP status), and then that
//! the text, the connection and the other clients still work. Then the behaviours: stale ops
//! transformed, resubmissions acknowledged once, the Yjs bridge both ways, and the op log,
//! version and epoch across a restart.

use std::time::{SystemTime, UNIX_EPOCH};

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::{self, Message};
use yrs::{Array, GetString, Map, ReadTxn, Text, Transact, XmlElementPrelim, XmlFragment, XmlTextPrelim};
use yserve::auth::{issue, Access};

use crate::support::{sqlite_only, with_db, Client, TestServer, Ws, TIMEOUT};

const RICH_TEXT: &str = "http://sharejs.org/types/rich-text/v1";
const SECRET: &str = "ot-test-secret";

const BADLY_FORMED: &str = "ERR_MESSAGE_BADLY_FORMED";
const OP_BADLY_FORMED: &str = "ERR_OT_OP_BADLY_FORMED";
const VERSION_NEWER: &str = "ERR_OP_VERSION_NEWER_THAN_CURRENT_SNAPSHOT";
const OPS_NOT_FOUND: &str = "ERR_SUBMIT_TRANSFORM_OPS_NOT_FOUND";
const NOT_APPLIED: &str = "ERR_OT_OP_NOT_APPLIED";
const TYPE_NOT_RECOGNIZED: &str = "ERR_DOC_TYPE_NOT_RECOGNIZED";
const ALREADY_CREATED: &str = "ERR_DOC_ALREADY_CREATED";
const SUBMIT_REJECTED: &str = "ERR_OP_SUBMIT_REJECTED";
/// What `OtError::Forbidden` (no grant for the document) maps to.
const READS_REJECTED: &str = "ERR_SNAPSHOT_READS_REJECTED";

/// A ShareDB connection speaking raw JSON frames, as the stock client does.
pub(crate) struct Ot {
    pub(crate) ws: Ws,
    /// The client id from the handshake: the `src` of this connection's ops.
    pub(crate) id: String,
    seq: u64,
    /// Ops pushed to this connection (it subscribed) that arrived while waiting for a reply.
    pushed: std::collections::VecDeque<Value>,
}

fn ot_url(server: &TestServer, token: Option<&str>) -> String {
    match token {
        Some(t) => format!("ws://127.0.0.1:{}/api/ot?token={t}", server.port),
        None => format!("ws://127.0.0.1:{}/api/ot", server.port),
    }
}

impl Ot {
    pub(crate) async fn connect(server: &TestServer) -> Ot {
        Self::connect_url(&ot_url(server, None), None).await
    }

    async fn connect_with_token(server: &TestServer, token: &str) -> Ot {
        Self::connect_url(&ot_url(server, Some(token)), None).await
    }

    /// Connects and handshakes; `id` is a previous client id handed back (a reconnect).
    async fn connect_url(url: &str, id: Option<&str>) -> Ot {
        let (ws, _) = tokio::time::timeout(TIMEOUT, tokio_tungstenite::connect_async(url))
            .await
            .expect("timed out connecting")
            .expect("connect");
        let mut ot = Ot { ws, id: String::new(), seq: 0, pushed: Default::default() };
        let mut hs = json!({"a": "hs", "protocol": 1, "protocolMinor": 2});
        if let Some(id) = id {
            hs["id"] = id.into();
        }
        let reply = ot.request(hs).await;
        assert_eq!(reply["a"], "hs", "{reply}");
        assert_eq!(reply["protocol"], 1, "{reply}");
        ot.id = reply["id"].as_str().expect("handshake id").to_owned();
        ot
    }

    pub(crate) async fn send(&mut self, msg: &Value) {
        self.send_raw(&msg.to_string()).await;
    }

    async fn send_raw(&mut self, text: &str) {
        tokio::time::timeout(TIMEOUT, self.ws.send(Message::Text(text.into())))
            .await
            .expect("timed out sending")
            .expect("send");
    }

    /// The next message: a pushed op that arrived while waiting for a reply, or the next frame.
    async fn recv(&mut self) -> Value {
        match self.pushed.pop_front() {
            Some(op) => op,
            None => self.recv_frame().await,
        }
    }

    /// The next message that is not a pushed op (those are kept for `recv`).
    async fn reply(&mut self) -> Value {
        loop {
            let m = self.recv_frame().await;
            if m["a"] == "op" && m.get("op").is_some() && m.get("error").is_none() {
                self.pushed.push_back(m);
            } else {
                return m;
            }
        }
    }

    /// The next JSON frame; panics after `TIMEOUT` or if the connection ends.
    pub(crate) async fn recv_frame(&mut self) -> Value {
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        loop {
            let frame =
                tokio::time::timeout_at(deadline, self.ws.next()).await.expect("timed out waiting for a message");
            match frame {
                Some(Ok(Message::Text(t))) => return serde_json::from_str(&t).expect("server sent JSON"),
                Some(Ok(Message::Close(f))) => panic!("connection closed {f:?} while waiting for a message"),
                Some(Ok(_)) => {}
                Some(Err(e)) => panic!("socket error while waiting for a message: {e}"),
                None => panic!("socket ended while waiting for a message"),
            }
        }
    }

    async fn request(&mut self, msg: Value) -> Value {
        self.send(&msg).await;
        self.reply().await
    }

    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    /// A fetch or subscribe that must succeed: the version and the document's ops.
    async fn snapshot(&mut self, action: &str, c: &str, d: &str) -> (u64, Value) {
        let reply = self.request(json!({"a": action, "c": c, "d": d})).await;
        assert!(reply.get("error").is_none(), "{action} refused: {reply}");
        assert_eq!((reply["a"].as_str(), reply["c"].as_str(), reply["d"].as_str()), (Some(action), Some(c), Some(d)));
        assert_eq!(reply["data"]["type"], RICH_TEXT, "{reply}");
        (reply["data"]["v"].as_u64().expect("version"), reply["data"]["data"]["ops"].clone())
    }

    async fn fetch(&mut self, c: &str, d: &str) -> (u64, Value) {
        self.snapshot("f", c, d).await
    }

    pub(crate) async fn subscribe(&mut self, c: &str, d: &str) -> (u64, Value) {
        self.snapshot("s", c, d).await
    }

    /// The text's version and plain content.
    pub(crate) async fn text(&mut self, c: &str, d: &str) -> (u64, String) {
        let (v, ops) = self.fetch(c, d).await;
        (v, plain(&ops))
    }

    /// Sends an op message; returns the ops sent before the reply, and the reply (ack or error).
    async fn submit_msg(&mut self, msg: Value) -> (Vec<Value>, Value) {
        self.send(&msg).await;
        let mut ops = Vec::new();
        loop {
            let m = self.recv_frame().await;
            if m.get("error").is_some() || (m["a"] == "op" && m.get("op").is_none()) {
                return (ops, m);
            }
            ops.push(m);
        }
    }

    async fn submit(&mut self, c: &str, d: &str, v: u64, op: Value) -> (Vec<Value>, Value) {
        let seq = self.next_seq();
        self.submit_msg(json!({"a": "op", "c": c, "d": d, "v": v, "seq": seq, "op": op})).await
    }

    /// Submits an op that must be acknowledged; returns the version it was committed at.
    async fn commit(&mut self, c: &str, d: &str, v: u64, op: Value) -> u64 {
        let seq = self.seq + 1;
        let (_, ack) = self.submit(c, d, v, op).await;
        assert!(ack.get("error").is_none(), "op refused: {ack}");
        assert_eq!((ack["src"].as_str(), ack["seq"].as_u64()), (Some(self.id.as_str()), Some(seq)), "{ack}");
        ack["v"].as_u64().expect("ack version")
    }

    /// Submits an op that must be refused; returns the error code (the request is echoed).
    async fn refused(&mut self, c: &str, d: &str, v: u64, op: Value) -> String {
        let (_, reply) = self.submit(c, d, v, op.clone()).await;
        assert_eq!(reply["op"], op, "the request is echoed: {reply}");
        code(&reply).to_owned()
    }

    /// Reads until the server's close frame; returns its code and reason.
    async fn closed_with(&mut self) -> (u16, String) {
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        loop {
            let frame = tokio::time::timeout_at(deadline, self.ws.next()).await.expect("timed out waiting for close");
            match frame {
                Some(Ok(Message::Close(f))) => {
                    return f.map_or((1005, String::new()), |f| (u16::from(f.code), f.reason.to_string()))
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => panic!("socket error while waiting for close: {e}"),
                None => panic!("socket ended without a close frame"),
            }
        }
    }
}

/// The error code of an error reply.
fn code(reply: &Value) -> &str {
    reply["error"]["code"].as_str().unwrap_or_else(|| panic!("not an error reply: {reply}"))
}

/// The text of a document delta, embeds left out.
pub(crate) fn plain(ops: &Value) -> String {
    ops.as_array().expect("ops").iter().filter_map(|c| c["insert"].as_str()).collect()
}

/// After a refusal: the same connection's next valid op is acknowledged at the current version,
/// a Yjs client already connected and one joining now both see it, and the Yjs client's own
/// next edit becomes the text's next version.
async fn still_works(yjs_url: &str, doc: &str, ot: &mut Ot, yjs: &mut Client) {
    let (v, before) = ot.text(doc, "t").await;
    assert_eq!(ot.commit(doc, "t", v, json!([{"insert": "ok "}])).await, v);
    let want = format!("ok {before}");
    yjs.pump_until(|c| c.text() == want, "the OT op at the Yjs client").await;
    assert_eq!(Client::synced(yjs_url).await.text(), want);
    let end = want.encode_utf16().count() as u32;
    yjs.insert(end, "!").await;
    yjs.wait_echo().await;
    assert_eq!(ot.text(doc, "t").await, (v + 2, format!("{want}!")));
}

/// A document whose text `t` holds `content`, written by OT; returns the version.
async fn seeded(ot: &mut Ot, doc: &str, content: &str) -> u64 {
    let (v, _) = ot.fetch(doc, "t").await;
    ot.commit(doc, "t", v, json!([{"insert": content}])).await + 1
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn token(sub: &str, grants: &[(&str, Access)]) -> String {
    let grants: Vec<(String, Access)> = grants.iter().map(|(p, a)| (p.to_string(), *a)).collect();
    issue(&SECRET.parse().unwrap(), sub, &grants, now() + 600).unwrap()
}

/// One HTTP/1.1 request on a fresh connection: the status and the JSON body.
async fn http(server: &TestServer, method: &str, path: &str, token: Option<&str>, body: &str) -> (u16, Value) {
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let exchange = async {
        let mut tcp = TcpStream::connect(("127.0.0.1", server.port)).await.expect("connect");
        tcp.write_all(request.as_bytes()).await.expect("write request");
        let mut response = Vec::new();
        tcp.read_to_end(&mut response).await.expect("read response");
        response
    };
    let response = tokio::time::timeout(TIMEOUT, exchange).await.expect("timed out waiting for the HTTP response");
    let response = String::from_utf8(response).expect("UTF-8 response");
    let (head, body) = response.split_once("\r\n\r\n").expect("HTTP response");
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("status");
    let body =
        if head.to_ascii_lowercase().contains("transfer-encoding: chunked") { dechunk(body) } else { body.into() };
    (status, serde_json::from_str(&body).unwrap_or(Value::String(body)))
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).expect("chunk size");
        if size == 0 {
            break;
        }
        out.push_str(&rest[..size]);
        body = &rest[size + 2..];
    }
    out
}

fn text_path(doc: &str) -> String {
    format!("/api/docs/{doc}/texts/t")
}

/// An HTTP refusal: status and error code.
fn refusal((status, body): (u16, Value)) -> (u16, String) {
    (status, body["error"]["code"].as_str().unwrap_or_else(|| panic!("{status}: not an error body: {body}")).to_owned())
}

// ---------------------------------------------------------------------------------------
// Refusals on the ShareDB connection.

#[tokio::test]
async fn badly_formed_messages_get_err_message_badly_formed_and_the_connection_stays_open() {
    let server = TestServer::start();
    let mut yjs = Client::synced(&server.url("msgs")).await;
    let mut ot = Ot::connect(&server).await;
    seeded(&mut ot, "msgs", "base").await;
    for frame in [
        "not json",
        "{\"a\":",
        "[1, 2]",
        "\"hs\"",
        "42",
        "null",
        r#"{"c":"msgs","d":"t"}"#,
        r#"{"a":7,"c":"msgs","d":"t"}"#,
        r#"{"a":"zz","c":"msgs","d":"t"}"#,
        r#"{"a":"qf","id":1,"c":"msgs","q":{}}"#,
        r#"{"a":"f","d":"t"}"#,
        r#"{"a":"f","c":"msgs"}"#,
        r#"{"a":"f","c":"","d":"t"}"#,
        r#"{"a":"s","c":5,"d":"t"}"#,
        r#"{"a":"f","c":"ms\u0001gs","d":"t"}"#,
        r#"{"a":"f","c":"msgs","d":"t","v":-1}"#,
        r#"{"a":"f","c":"msgs","d":"t","v":"1"}"#,
        r#"{"a":"op","c":"msgs","d":"t","v":2,"op":[{"insert":"x"}]}"#,
        r#"{"a":"op","c":"msgs","d":"t","v":2,"seq":"1","op":[{"insert":"x"}]}"#,
        r#"{"a":"op","c":"msgs","d":"t","v":2,"seq":1}"#,
        r#"{"a":"op","d":"t","v":2,"seq":1,"op":[{"insert":"x"}]}"#,
        r#"{"a":"op","c":"msgs","d":"t","v":2,"seq":1,"src":"yjs","op":[{"insert":"x"}]}"#,
        r#"{"a":"op","c":"msgs","d":"t","v":2,"seq":1,"src":7,"op":[{"insert":"x"}]}"#,
        r#"{"a":"bs","c":"msgs","b":{"t":"x"}}"#,
        r#"{"a":"bf","c":"msgs","b":7}"#,
    ] {
        ot.send_raw(frame).await;
        let reply = ot.reply().await;
        assert_eq!(code(&reply), BADLY_FORMED, "{frame}: {reply}");
        assert!(!reply["error"]["message"].as_str().unwrap().is_empty());
    }
    // An object's fields are echoed, so the client can match the reply to its request.
    let reply = ot.request(json!({"a": "zz", "c": "msgs", "d": "t", "extra": 1})).await;
    assert_eq!((reply["a"].as_str(), reply["extra"].as_u64()), (Some("zz"), Some(1)));
    assert_eq!(ot.text("msgs", "t").await, (2, "base".into()), "nothing was applied");
    still_works(&server.url("msgs"), "msgs", &mut ot, &mut yjs).await;
}

#[tokio::test]
async fn badly_formed_ops_get_err_ot_op_badly_formed_and_change_nothing() {
    let server = TestServer::start();
    let mut yjs = Client::synced(&server.url("ops")).await;
    let mut ot = Ot::connect(&server).await;
    let v = seeded(&mut ot, "ops", "hello").await;
    for op in [
        json!("insert x"),
        json!(5),
        json!(null),
        json!({"ops": 5}),
        json!({"ops": [], "extra": 1}),
        json!([5]),
        json!([[{"insert": "x"}]]),
        json!([{}]),
        json!([{"insert": ""}]),
        json!([{"insert": 5}]),
        json!([{"retain": "2"}]),
        json!([{"retain": -1}]),
        json!([{"retain": 1.5}]),
        json!([{"delete": 1e300}]),
        json!([{"retain": {"image": 1}}]),
        json!([{"insert": "x", "foo": 1}]),
        json!([{"insert": "x", "retain": 1}]),
        json!([{"retain": 1, "delete": 1}]),
        json!([{"delete": 1, "attributes": {"bold": true}}]),
        json!([{"insert": "x", "attributes": 5}]),
        json!([{"replace": 1}]),
        json!([{"replace": 1, "insert": {"image": "x"}}]),
        json!([{"replace": -1, "insert": "x"}]),
        json!([{"retain": 1}, {"insert": "x"}, {"bogus": 1}]),
    ] {
        assert_eq!(ot.refused("ops", "t", v, op.clone()).await, OP_BADLY_FORMED, "{op}");
    }
    assert_eq!(ot.text("ops", "t").await, (v, "hello".into()));
    yjs.pump_until(|c| c.text() == "hello", "the text at the Yjs client").await;
    // Zero lengths are accepted and dropped, as rich-text does (`{"retain": 0}` is what a
    // client writes for an edit at the start).
    assert_eq!(ot.commit("ops", "t", v, json!([{"retain": 0}, {"insert": ">"}, {"delete": 0}])).await, v);
    assert_eq!(ot.commit("ops", "t", v + 1, json!([{"replace": 0, "insert": "<"}])).await, v + 1);
    yjs.pump_until(|c| c.text() == "<>hello", "ops with zero lengths").await;
    still_works(&server.url("ops"), "ops", &mut ot, &mut yjs).await;
}

#[tokio::test]
async fn ops_over_the_insert_and_component_limits_are_badly_formed() {
    let server = TestServer::start_with(&["--ot-op-insert-units-max", "10", "--ot-op-components-max", "4"]);
    let mut yjs = Client::synced(&server.url("big")).await;
    let mut ot = Ot::connect(&server).await;
    let (v, _) = ot.fetch("big", "t").await;
    // Units are UTF-16: five emoji and one letter are 11.
    for op in [
        json!([{"insert": "x".repeat(11)}]),
        json!([{"insert": "😀😀😀😀😀x"}]),
        json!([{"insert": "x".repeat(6)}, {"insert": "y".repeat(5)}]),
        json!([{"insert": "x".repeat(10)}, {"insert": {"image": "a.png"}}]),
        json!([{"insert": "a"}, {"insert": "b"}, {"insert": "c"}, {"insert": "d"}, {"insert": "e"}]),
        json!([{"retain": 1}, {"retain": 1}, {"retain": 1}, {"retain": 1}, {"retain": 1}]),
    ] {
        assert_eq!(ot.refused("big", "t", v, op.clone()).await, OP_BADLY_FORMED, "{op}");
    }
    assert_eq!(ot.text("big", "t").await, (v, String::new()));
    // At the limits exactly: accepted.
    assert_eq!(ot.commit("big", "t", v, json!([{"insert": "😀😀😀😀x"}, {"insert": "y"}])).await, v);
    assert_eq!(
        ot.commit("big", "t", v + 1, json!([{"insert": "a"}, {"insert": "b"}, {"retain": 2}, {"insert": "c"}])).await,
        v + 1
    );
    yjs.pump_until(|c| c.text() == "ab😀c😀😀😀xy", "ops at the limits").await;
    still_works(&server.url("big"), "big", &mut ot, &mut yjs).await;
}

#[tokio::test]
async fn a_version_newer_than_the_text_gets_err_op_version_newer_than_current_snapshot() {
    let server = TestServer::start();
    let mut yjs = Client::synced(&server.url("newer")).await;
    let mut ot = Ot::connect(&server).await;
    let v = seeded(&mut ot, "newer", "abc").await;
    for future in [v + 1, v + 100, u64::from(u32::MAX) + 7] {
        assert_eq!(ot.refused("newer", "t", future, json!([{"insert": "x"}])).await, VERSION_NEWER, "v={future}");
    }
    // A versioned fetch or subscribe from the future too.
    for action in ["f", "s"] {
        let reply = ot.request(json!({"a": action, "c": "newer", "d": "t", "v": v + 1})).await;
        assert_eq!((reply["a"].as_str(), code(&reply)), (Some(action), VERSION_NEWER), "{reply}");
    }
    assert_eq!(ot.text("newer", "t").await, (v, "abc".into()));
    still_works(&server.url("newer"), "newer", &mut ot, &mut yjs).await;
}

#[tokio::test]
async fn a_base_version_older_than_the_kept_log_gets_err_submit_transform_ops_not_found() {
    let mut server = TestServer::start_with(&["--ot-log-ops-max", "3"]);
    let mut ot = Ot::connect(&server).await;
    let (first, _) = ot.fetch("old", "t").await;
    assert_eq!(first, 1);
    for v in 1..=5 {
        assert_eq!(ot.commit("old", "t", v, json!([{"insert": "x"}])).await, v);
    }
    // Versions 3, 4 and 5 are kept: a client based on 1 or 2 must fetch again.
    for base in [1, 2] {
        assert_eq!(ot.refused("old", "t", base, json!([{"insert": "Y"}])).await, OPS_NOT_FOUND, "v={base}");
        let reply = ot.request(json!({"a": "f", "c": "old", "d": "t", "v": base})).await;
        assert_eq!(code(&reply), OPS_NOT_FOUND, "{reply}");
    }
    let (status, body) = http(&server, "GET", "/api/docs/old/texts/t/ops?from=1", None, "").await;
    assert_eq!(refusal((status, body)), (409, OPS_NOT_FOUND.into()));
    assert_eq!(ot.text("old", "t").await, (6, "xxxxx".into()));

    // The oldest kept base still works: the op is transformed past the three committed
    // inserts at 0 (each wins the tie) and the submitter gets them first.
    let mut other = Ot::connect(&server).await;
    let (missed, ack) = other.submit("old", "t", 3, json!([{"insert": "Y"}])).await;
    assert!(ack.get("error").is_none(), "{ack}");
    assert_eq!(ack["v"], 6);
    assert_eq!(missed.iter().map(|m| m["v"].as_u64().unwrap()).collect::<Vec<_>>(), vec![3, 4, 5]);
    assert_eq!(ot.text("old", "t").await, (7, "xxxYxx".into()));
    let yjs = Client::synced(&server.url("old")).await;
    assert_eq!(yjs.text(), "xxxYxx");

    // Only the kept ops are stored, and the bound holds after a restart.
    let versions: Vec<i64> = with_db(&server.db_path(), |db| {
        db.rows("SELECT version FROM ot_ops WHERE text = 't' ORDER BY version", &[], |r| r.int(0)).unwrap()
    });
    assert_eq!(versions, vec![4, 5, 6]);
    drop((ot, other, yjs));
    server.restart();
    let mut ot = Ot::connect(&server).await;
    assert_eq!(ot.refused("old", "t", 3, json!([{"insert": "Z"}])).await, OPS_NOT_FOUND);
    let mut yjs = Client::synced(&server.url("old")).await;
    still_works(&server.url("old"), "old", &mut ot, &mut yjs).await;
}

#[tokio::test]
async fn ops_longer_than_the_text_get_err_ot_op_not_applied_and_leave_it_unchanged() {
    let server = TestServer::start();
    let mut yjs = Client::synced(&server.url("long")).await;
    let mut ot = Ot::connect(&server).await;
    let v = seeded(&mut ot, "long", "hello").await;
    for op in [
        json!([{"retain": 6}, {"insert": "x"}]),
        json!([{"retain": 6}]),
        json!([{"retain": 5}, {"retain": 1, "attributes": {"bold": true}}]),
        json!([{"retain": 3}, {"delete": 3}]),
        json!([{"delete": 6}]),
        json!([{"insert": "x"}, {"delete": 6}]),
        json!([{"replace": 6, "insert": "x"}]),
        json!([{"retain": 2147483648_u64}, {"insert": "x"}]),
    ] {
        assert_eq!(ot.refused("long", "t", v, op.clone()).await, NOT_APPLIED, "{op}");
    }
    // Still too long once transformed: based on the empty text at version 1, it retains
    // past the end of "hello", committed since.
    assert_eq!(ot.refused("long", "t", 1, json!([{"retain": 1}, {"insert": "x"}])).await, NOT_APPLIED);
    assert_eq!(ot.text("long", "t").await, (v, "hello".into()));
    yjs.pump_until(|c| c.text() == "hello", "the text at the Yjs client").await;
    // Exactly as long as the text is fine.
    assert_eq!(ot.commit("long", "t", v, json!([{"retain": 5}, {"insert": "!"}])).await, v);
    assert_eq!(ot.commit("long", "t", v + 1, json!([{"retain": 5}, {"delete": 1}])).await, v + 1);
    still_works(&server.url("long"), "long", &mut ot, &mut yjs).await;
}

#[tokio::test]
async fn a_boundary_inside_a_surrogate_pair_gets_err_ot_op_not_applied() {
    let server = TestServer::start();
    let mut yjs = Client::synced(&server.url("pair")).await;
    let mut ot = Ot::connect(&server).await;
    let v = seeded(&mut ot, "pair", "a😀b").await;
    for op in [
        json!([{"retain": 2}, {"insert": "x"}]),
        json!([{"retain": 2}, {"delete": 1}]),
        json!([{"retain": 2}, {"delete": 2}]),
        json!([{"delete": 2}]),
        json!([{"retain": 2}, {"retain": 1, "attributes": {"bold": true}}]),
    ] {
        assert_eq!(ot.refused("pair", "t", v, op.clone()).await, NOT_APPLIED, "{op}");
    }
    assert_eq!(ot.text("pair", "t").await, (v, "a😀b".into()));
    yjs.pump_until(|c| c.text() == "a😀b", "the text at the Yjs client").await;
    // The whole pair is fine.
    assert_eq!(ot.commit("pair", "t", v, json!([{"retain": 1}, {"delete": 2}])).await, v);
    yjs.pump_until(|c| c.text() == "ab", "the emoji deleted").await;
    still_works(&server.url("pair"), "pair", &mut ot, &mut yjs).await;
}

/// A retain followed by an insert or a delete repeats a boundary; the check must still look
/// at every later boundary of the op.
#[tokio::test]
async fn a_delete_ending_inside_a_surrogate_pair_is_refused_and_the_emoji_survives() {
    let server = TestServer::start();
    let mut yjs = Client::synced(&server.url("half")).await;
    let mut ot = Ot::connect(&server).await;
    let v = seeded(&mut ot, "half", "a😀b😀c").await;
    for op in [
        json!([{"retain": 1}, {"delete": 1}]),
        json!([{"retain": 1}, {"insert": "x"}, {"retain": 4}, {"insert": "y"}]),
        json!([{"retain": 1}, {"delete": 2}, {"retain": 2}, {"insert": "y"}]),
    ] {
        let (_, reply) = ot.submit("half", "t", v, op.clone()).await;
        let (_, text) = ot.text("half", "t").await;
        assert_eq!(reply.get("error").map(|_| code(&reply)), Some(NOT_APPLIED), "{op} was accepted; text now {text:?}");
        assert_eq!(text, "a😀b😀c");
    }
    still_works(&server.url("half"), "half", &mut ot, &mut yjs).await;
}

/// A Yjs client writes root `m` as another type; returns it (still connected).
async fn yjs_root_of_another_type(server: &TestServer, doc: &str, write: impl FnOnce(&yrs::Doc) -> Vec<u8>) -> Client {
    let mut writer = Client::synced(&server.url(doc)).await;
    let update = write(&writer.doc);
    writer.send(yserve::protocol::encode_update(update)).await;
    writer.wait_echo().await;
    writer
}

/// OT fetch, subscribe and op on root `m`, and REST on it, are all refused with
/// ERR_DOC_TYPE_NOT_RECOGNIZED naming `found`; the root is left alone; text `t` works.
async fn wrong_root_refused(server: &TestServer, doc: &str, found: &str, mut yjs: Client) {
    let mut ot = Ot::connect(server).await;
    for action in ["f", "s"] {
        let reply = ot.request(json!({"a": action, "c": doc, "d": "m"})).await;
        assert_eq!(code(&reply), TYPE_NOT_RECOGNIZED, "{action}: {reply}");
        assert_eq!(
            (reply["a"].as_str(), reply["c"].as_str(), reply["d"].as_str()),
            (Some(action), Some(doc), Some("m"))
        );
        let message = reply["error"]["message"].as_str().unwrap();
        assert!(message.contains(&format!("is a {found}")), "{action}: {message:?} should name {found}");
    }
    assert_eq!(ot.refused(doc, "m", 1, json!([{"insert": "x"}])).await, TYPE_NOT_RECOGNIZED);
    let path = format!("/api/docs/{doc}/texts/m");
    assert_eq!(refusal(http(server, "GET", &path, None, "").await), (409, TYPE_NOT_RECOGNIZED.into()));
    let submit = json!({"v": 1, "src": "rest1", "seq": 1, "op": [{"insert": "x"}]}).to_string();
    assert_eq!(refusal(http(server, "POST", &path, None, &submit).await), (409, TYPE_NOT_RECOGNIZED.into()));
    let sequenced = with_db(&server.db_path(), |db| {
        db.one("SELECT count(*) FROM ot_texts WHERE text = 'm'", &[], |r| r.int(0)).unwrap()
    });
    assert_eq!(sequenced, 0, "no sequencer for a root that is not a text");
    // A newcomer gets the root's content as written.
    let newcomer = Client::synced(&server.url(doc)).await;
    let theirs = newcomer.doc.transact().encode_state_as_update_v1(&yrs::StateVector::default());
    let ours = yjs.doc.transact().encode_state_as_update_v1(&yrs::StateVector::default());
    assert_eq!(theirs, ours);
    still_works(&server.url(doc), doc, &mut ot, &mut yjs).await;
}

#[tokio::test]
async fn a_map_root_gets_err_doc_type_not_recognized() {
    let server = TestServer::start();
    let yjs = yjs_root_of_another_type(&server, "map", |d| {
        let m = d.get_or_insert_map("m");
        let mut txn = d.transact_mut();
        m.insert(&mut txn, "k", "v");
        m.insert(&mut txn, "n", 1);
        txn.encode_update_v1()
    })
    .await;
    wrong_root_refused(&server, "map", "Y.Map", yjs).await;
}

#[tokio::test]
async fn an_array_root_gets_err_doc_type_not_recognized() {
    let server = TestServer::start();
    let yjs = yjs_root_of_another_type(&server, "array", |d| {
        let a = d.get_or_insert_array("m");
        let mut txn = d.transact_mut();
        a.push_back(&mut txn, 1);
        a.push_back(&mut txn, "two");
        txn.encode_update_v1()
    })
    .await;
    wrong_root_refused(&server, "array", "Y.Array", yjs).await;
}

#[tokio::test]
async fn an_array_root_of_strings_gets_err_doc_type_not_recognized() {
    let server = TestServer::start();
    let yjs = yjs_root_of_another_type(&server, "strings", |d| {
        let a = d.get_or_insert_array("m");
        let mut txn = d.transact_mut();
        a.push_back(&mut txn, "abc");
        txn.encode_update_v1()
    })
    .await;
    wrong_root_refused(&server, "strings", "Y.Array", yjs).await;
}

#[tokio::test]
async fn an_xml_fragment_root_gets_err_doc_type_not_recognized() {
    let server = TestServer::start();
    let yjs = yjs_root_of_another_type(&server, "xml", |d| {
        let x = d.get_or_insert_xml_fragment("m");
        let mut txn = d.transact_mut();
        x.push_back(&mut txn, XmlElementPrelim::empty("p"));
        txn.encode_update_v1()
    })
    .await;
    wrong_root_refused(&server, "xml", "Y.XmlFragment", yjs).await;
}

#[tokio::test]
async fn an_xml_fragment_root_of_text_nodes_gets_err_doc_type_not_recognized() {
    let server = TestServer::start();
    let yjs = yjs_root_of_another_type(&server, "xmltext", |d| {
        let x = d.get_or_insert_xml_fragment("m");
        let mut txn = d.transact_mut();
        x.push_back(&mut txn, XmlTextPrelim::new("hello"));
        txn.encode_update_v1()
    })
    .await;
    wrong_root_refused(&server, "xmltext", "Y.XmlFragment", yjs).await;
}

#[tokio::test]
async fn create_and_delete_ops_get_err_doc_already_created() {
    let server = TestServer::start();
    let mut yjs = Client::synced(&server.url("cd")).await;
    let mut ot = Ot::connect(&server).await;
    let v = seeded(&mut ot, "cd", "keep").await;
    for body in [
        json!({"create": {"type": RICH_TEXT, "data": [{"insert": "new"}]}}),
        json!({"create": {"type": "http://sharejs.org/types/JSONv0"}}),
        json!({"del": true}),
    ] {
        let mut msg = json!({"a": "op", "c": "cd", "d": "t", "v": v, "seq": ot.next_seq()});
        for (k, val) in body.as_object().unwrap() {
            msg[k] = val.clone();
        }
        let (_, reply) = ot.submit_msg(msg.clone()).await;
        assert_eq!(code(&reply), ALREADY_CREATED, "{msg}: {reply}");
    }
    assert_eq!(ot.text("cd", "t").await, (v, "keep".into()));
    still_works(&server.url("cd"), "cd", &mut ot, &mut yjs).await;
}

#[tokio::test]
async fn a_binary_frame_closes_the_ot_connection_with_1003_and_others_keep_working() {
    let server = TestServer::start();
    let mut yjs = Client::synced(&server.url("bin")).await;
    let mut ot = Ot::connect(&server).await;
    ot.subscribe("bin", "t").await;
    let mut bad = Ot::connect(&server).await;
    bad.fetch("bin", "t").await;
    tokio::time::timeout(TIMEOUT, bad.ws.send(Message::Binary(vec![0, 1, 2].into()))).await.unwrap().unwrap();
    assert_eq!(bad.closed_with().await.0, 1003);
    still_works(&server.url("bin"), "bin", &mut ot, &mut yjs).await;
    assert!(server.log().contains("binary frame on an OT connection"));
}

#[tokio::test]
async fn a_message_over_message_bytes_max_closes_the_ot_connection_with_1009() {
    let server = TestServer::start_with(&["--message-bytes-max", "65536"]);
    let mut yjs = Client::synced(&server.url("huge")).await;
    let mut ot = Ot::connect(&server).await;
    seeded(&mut ot, "huge", "small").await;
    let mut bad = Ot::connect(&server).await;
    let big = json!({"a": "op", "c": "huge", "d": "t", "v": 2, "seq": 1, "op": [{"insert": "x".repeat(70_000)}]});
    bad.send(&big).await;
    // The close frame must reach the client: the server has to drain what it did not read
    // (as the Yjs session does), or the kernel answers that data with a reset that can
    // overtake the close frame.
    assert_eq!(bad.closed_with().await.0, 1009);
    assert!(server.log().contains("refused: message too big (1009)"));
    assert_eq!(ot.text("huge", "t").await, (2, "small".into()));
    still_works(&server.url("huge"), "huge", &mut ot, &mut yjs).await;
}

#[tokio::test]
async fn more_documents_than_ot_docs_per_connection_max_are_refused_as_badly_formed() {
    let server = TestServer::start_with(&["--ot-docs-per-connection-max", "2"]);
    let mut yjs = Client::synced(&server.url("d1")).await;
    let mut ot = Ot::connect(&server).await;
    ot.fetch("d1", "t").await;
    ot.subscribe("d2", "t").await;
    // Another text of an open document is fine; a third document is not.
    ot.fetch("d2", "other").await;
    for msg in [
        json!({"a": "f", "c": "d3", "d": "t"}),
        json!({"a": "s", "c": "d3", "d": "t"}),
        json!({"a": "op", "c": "d3", "d": "t", "v": 1, "seq": 1, "op": [{"insert": "x"}]}),
    ] {
        let reply = ot.request(msg.clone()).await;
        assert_eq!(code(&reply), BADLY_FORMED, "{msg}: {reply}");
        assert!(reply["error"]["message"].as_str().unwrap().contains("too many documents"), "{reply}");
    }
    // Another connection opens it; this one keeps working on the documents it has.
    assert_eq!(Ot::connect(&server).await.text("d3", "t").await, (1, String::new()));
    still_works(&server.url("d1"), "d1", &mut ot, &mut yjs).await;
}

#[tokio::test]
async fn an_ot_connection_flooding_messages_is_closed_with_1008_and_others_keep_working() {
    let server = TestServer::start_with(&["--rate-messages-per-sec", "5", "--rate-messages-burst", "20"]);
    let mut yjs = Client::synced(&server.url("flood")).await;
    let mut calm = Ot::connect(&server).await;
    calm.fetch("flood", "t").await;
    let mut flood = Ot::connect(&server).await;
    for _ in 0..40 {
        flood.send(&json!({"a": "pp"})).await;
    }
    assert_eq!(flood.closed_with().await, (1008, "rate limited".into()));
    still_works(&server.url("flood"), "flood", &mut calm, &mut yjs).await;
}

#[tokio::test]
async fn an_ot_connection_silent_past_the_idle_timeout_is_closed_with_4408() {
    let server = TestServer::start_with(&["--ping-interval-ms", "100", "--idle-timeout-ms", "500"]);
    let mut lively = Ot::connect(&server).await;
    let mut silent = Ot::connect(&server).await;
    // `lively` reads (and so answers pings) for 1.5 s; `silent` reads nothing.
    let _ = tokio::time::timeout(std::time::Duration::from_millis(1500), lively.recv_frame()).await;
    assert_eq!(silent.closed_with().await, (4408, "idle timeout".into()));
    assert_eq!(lively.text("idle", "t").await, (1, String::new()));
}

#[tokio::test]
async fn an_ot_connection_whose_token_expires_is_closed_with_4401() {
    let server = TestServer::start_with(&["--jwt-secret", SECRET]);
    // exp is 4 s ago: within the 5 s leeway at the upgrade, past it a second later.
    let grants = vec![("*".to_string(), Access::Write)];
    let expiring = issue(&SECRET.parse().unwrap(), "alice", &grants, now() - 4).unwrap();
    let mut ot = Ot::connect_with_token(&server, &expiring).await;
    ot.fetch("exp", "t").await;
    assert_eq!(ot.closed_with().await, (4401, "token expired".into()));
    let mut fresh = Ot::connect_with_token(&server, &token("alice", &[("*", Access::Write)])).await;
    assert_eq!(fresh.text("exp", "t").await, (1, String::new()));
}

/// A commit that fails (an operator's `sqlite3` holds the write lock past the busy timeout)
/// fails the document; the OT submitter must hear of it (an error reply or a close) rather than
/// wait forever for an ack, and the text reloads without the op.
#[tokio::test]
async fn a_failed_commit_is_reported_to_ot_clients_and_the_text_recovers() {
    if sqlite_only("a commit fails while another SQLite connection holds the write lock") {
        return;
    }
    let server = TestServer::start_with(&["--store-busy-timeout-ms", "100"]);
    let mut ot = Ot::connect(&server).await;
    let v = seeded(&mut ot, "locked", "committed").await;
    let mut subscriber = Ot::connect(&server).await;
    subscriber.subscribe("locked", "t").await;
    let lock = rusqlite::Connection::open(server.db_path()).unwrap();
    lock.execute_batch("BEGIN IMMEDIATE").unwrap();
    ot.send(&json!({"a": "op", "c": "locked", "d": "t", "v": v, "seq": 99, "op": [{"insert": "lost "}]})).await;
    let answer = tokio::time::timeout(TIMEOUT, ot.ws.next()).await;
    lock.execute_batch("ROLLBACK").unwrap();
    // Either an error reply, or (what the server does) a 1011 close: the stock client then
    // reconnects and re-sends its unacknowledged op.
    let (answered, closed) = match answer {
        Err(_) => (false, false),
        Ok(Some(Ok(Message::Text(t)))) => {
            let reply: Value = serde_json::from_str(&t).unwrap();
            assert_eq!(code(&reply), "ERR_UNKNOWN_ERROR", "{reply}");
            (true, false)
        }
        Ok(Some(Ok(Message::Close(f)))) => {
            assert_eq!(f.map(|f| u16::from(f.code)), Some(1011));
            (true, true)
        }
        Ok(other) => panic!("unexpected {other:?}"),
    };
    assert!(server.log().contains("commit failed"));
    let mut problems = Vec::new();
    if !answered {
        problems
            .push(format!("no answer within {TIMEOUT:?} to the op whose commit failed: the submitter waits forever"));
    }
    // Once the store is free again, requests work: on the same connection if it stayed
    // open, on a new one (as the client reconnects) if it was closed.
    if closed {
        ot = Ot::connect(&server).await;
    }
    let reply = ot.request(json!({"a": "f", "c": "locked", "d": "t"})).await;
    if reply.get("error").is_some() {
        problems.push(format!("the connection's next fetch, with the store free again, was refused: {reply}"));
    }
    assert_eq!(ot.text("locked", "t").await, (v, "committed".into()));
    let mut fresh = Ot::connect(&server).await;
    assert_eq!(fresh.text("locked", "t").await, (v, "committed".into()));
    let mut yjs = Client::synced(&server.url("locked")).await;
    still_works(&server.url("locked"), "locked", &mut fresh, &mut yjs).await;
    // A subscriber of the failed document either hears of the failure (a close) or keeps
    // getting the text's ops; it must not silently stop receiving them.
    let deadline = tokio::time::Instant::now() + TIMEOUT / 3;
    let heard = loop {
        match tokio::time::timeout_at(deadline, subscriber.ws.next()).await {
            Err(_) => break None,
            Ok(Some(Ok(Message::Text(t)))) => {
                let m: Value = serde_json::from_str(&t).unwrap();
                if m["a"] == "op" && m["v"].as_u64() > Some(v) {
                    break Some(format!("op {m}"));
                }
            }
            Ok(Some(Ok(Message::Close(f)))) => break Some(format!("close {f:?}")),
            Ok(Some(Ok(_))) => {}
            Ok(other) => break Some(format!("{other:?}")),
        }
    };
    if heard.is_none() {
        problems.push("a subscriber of the failed document was neither closed nor sent later ops".to_string());
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    still_works(&server.url("locked"), "locked", &mut fresh, &mut yjs).await;
}

// ---------------------------------------------------------------------------------------
// Auth: on the ShareDB connection and on REST.

#[tokio::test]
async fn without_a_token_the_ot_upgrade_is_refused_with_401() {
    let server = TestServer::start_with(&["--jwt-secret", SECRET]);
    for url in [ot_url(&server, None), ot_url(&server, Some("garbage"))] {
        match tokio_tungstenite::connect_async(url.as_str()).await {
            Err(tungstenite::Error::Http(r)) => assert_eq!(r.status().as_u16(), 401, "{url}"),
            Ok(_) => panic!("{url}: upgrade accepted"),
            Err(e) => panic!("{url}: {e}"),
        }
    }
}

#[tokio::test]
async fn no_grant_and_read_grants_are_refused_per_document_and_writers_keep_working() {
    let server = TestServer::start_with(&["--jwt-secret", SECRET]);
    let writer_token = token("alice", &[("g*", Access::Write)]);
    let reader_token = token("bob", &[("g", Access::Read)]);
    let stranger_token = token("carol", &[("other", Access::Write)]);
    let mut yjs = Client::synced(&format!("{}?token={writer_token}", server.url("g"))).await;
    let mut writer = Ot::connect_with_token(&server, &writer_token).await;
    let v = seeded(&mut writer, "g", "shared").await;

    // No grant for the document: every request on it is refused, one for another document works.
    let mut stranger = Ot::connect_with_token(&server, &stranger_token).await;
    for action in ["f", "s"] {
        let reply = stranger.request(json!({"a": action, "c": "g", "d": "t"})).await;
        assert_eq!(code(&reply), READS_REJECTED, "{action}: {reply}");
        assert!(reply.get("data").is_none(), "nothing of the text leaks: {reply}");
    }
    assert_eq!(stranger.refused("g", "t", v, json!([{"insert": "x"}])).await, READS_REJECTED);
    assert_eq!(stranger.text("other", "t").await, (1, String::new()));

    // A read grant fetches and subscribes, and sees the writer's ops, but cannot submit.
    let mut reader = Ot::connect_with_token(&server, &reader_token).await;
    assert_eq!(reader.subscribe("g", "t").await.0, v);
    assert_eq!(reader.refused("g", "t", v, json!([{"insert": "x"}])).await, SUBMIT_REJECTED);
    assert_eq!(writer.text("g", "t").await, (v, "shared".into()));
    assert_eq!(writer.commit("g", "t", v, json!([{"insert": "more "}])).await, v);
    let op = reader.recv().await;
    assert_eq!((op["v"].as_u64(), op["src"].as_str()), (Some(v), Some(writer.id.as_str())), "{op}");
    yjs.pump_until(|c| c.text() == "more shared", "the writer's op").await;

    // REST: the same grants.
    let path = text_path("g");
    let submit = |seq: u64| json!({"v": v + 1, "src": "rest1", "seq": seq, "op": [{"insert": "x"}]}).to_string();
    assert_eq!(refusal(http(&server, "GET", &path, None, "").await).0, 401);
    assert_eq!(refusal(http(&server, "GET", &path, Some("garbage"), "").await).0, 401);
    assert_eq!(refusal(http(&server, "POST", &path, None, &submit(1)).await).0, 401);
    assert_eq!(refusal(http(&server, "GET", &path, Some(&stranger_token), "").await), (403, READS_REJECTED.into()));
    let ops_path = format!("{path}/ops?from=1");
    assert_eq!(refusal(http(&server, "GET", &ops_path, Some(&stranger_token), "").await), (403, READS_REJECTED.into()));
    assert_eq!(
        refusal(http(&server, "POST", &path, Some(&stranger_token), &submit(1)).await),
        (403, READS_REJECTED.into())
    );
    let (status, body) = http(&server, "GET", &path, Some(&reader_token), "").await;
    assert_eq!((status, body["text"].as_str()), (200, Some("more shared")), "{body}");
    assert_eq!(
        refusal(http(&server, "POST", &path, Some(&reader_token), &submit(1)).await),
        (403, SUBMIT_REJECTED.into())
    );
    let (status, body) = http(&server, "POST", &path, Some(&writer_token), &submit(2)).await;
    assert_eq!((status, body["v"].as_u64()), (200, Some(v + 1)), "{body}");
    yjs.pump_until(|c| c.text() == "xmore shared", "the REST op").await;
    still_works(&format!("{}?token={writer_token}", server.url("g")), "g", &mut writer, &mut yjs).await;
}

#[tokio::test]
async fn a_text_locked_by_another_user_refuses_their_ops_with_err_op_submit_rejected() {
    let server = TestServer::start_with(&["--jwt-secret", SECRET]);
    let alice = token("alice", &[("lk", Access::Write)]);
    let bob = token("bob", &[("lk", Access::Write)]);
    let alice_url = format!("{}?token={alice}", server.url("lk"));
    let mut yjs = Client::synced(&alice_url).await;
    let mut a = Ot::connect_with_token(&server, &alice).await;
    let mut b = Ot::connect_with_token(&server, &bob).await;
    let v = seeded(&mut a, "lk", "text").await;
    let (status, body) = http(&server, "POST", "/api/docs/lk/locks/t?ttl=60s", Some(&alice), "").await;
    assert_eq!((status, body["holder"].as_str()), (200, Some("alice")), "{body}");

    // Bob's writes to the locked text are refused, on both wires; reads are not.
    let (_, reply) = b.submit("lk", "t", v, json!([{"insert": "b"}])).await;
    assert_eq!(code(&reply), SUBMIT_REJECTED, "{reply}");
    assert!(reply["error"]["message"].as_str().unwrap().contains("alice"), "{reply}");
    let submit = json!({"v": v, "src": "bobrest", "seq": 1, "op": [{"insert": "b"}]}).to_string();
    assert_eq!(
        refusal(http(&server, "POST", &text_path("lk"), Some(&bob), &submit).await),
        (423, SUBMIT_REJECTED.into())
    );
    assert_eq!(b.text("lk", "t").await, (v, "text".into()));
    // Another text of the document is not locked; the holder writes the locked one.
    assert_eq!(b.commit("lk", "other", 1, json!([{"insert": "free"}])).await, 1);
    assert_eq!(a.commit("lk", "t", v, json!([{"insert": "a"}])).await, v);

    // Released: Bob writes again.
    let (status, body) = http(&server, "DELETE", "/api/docs/lk/locks/t", Some(&alice), "").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(b.commit("lk", "t", v + 1, json!([{"insert": "b"}])).await, v + 1);
    yjs.pump_until(|c| c.text() == "batext", "both ops").await;
    still_works(&alice_url, "lk", &mut a, &mut yjs).await;
}

#[tokio::test]
async fn rest_refusals_get_their_status_and_sharedb_code_and_the_text_keeps_working() {
    let server = TestServer::start_with(&["--ot-log-ops-max", "2"]);
    let mut yjs = Client::synced(&server.url("rest")).await;
    let mut ot = Ot::connect(&server).await;
    let v = seeded(&mut ot, "rest", "hello").await;
    let path = text_path("rest");
    let post = |body: Value| body.to_string();
    for (method, target, body, want) in [
        ("GET", "/api/docs/rest/texts".to_string(), String::new(), (404, "")),
        ("GET", format!("{path}/nope"), String::new(), (404, "")),
        ("GET", "/api/docs/rest/textz/t".to_string(), String::new(), (404, "")),
        ("PUT", path.clone(), String::new(), (405, "")),
        ("DELETE", path.clone(), String::new(), (405, "")),
        ("POST", format!("{path}/ops"), post(json!({"v": v, "src": "r", "seq": 1, "op": []})), (405, "")),
        ("GET", "/api/docs/a%FFb/texts/t".to_string(), String::new(), (400, BADLY_FORMED)),
        ("GET", format!("{path}/ops?from=x"), String::new(), (400, BADLY_FORMED)),
        ("GET", format!("{path}/ops?from=-1"), String::new(), (400, BADLY_FORMED)),
        ("POST", path.clone(), "not json".to_string(), (400, BADLY_FORMED)),
        ("POST", path.clone(), String::new(), (400, BADLY_FORMED)),
        ("POST", path.clone(), post(json!({"v": v, "seq": 1, "op": [{"insert": "x"}]})), (400, BADLY_FORMED)),
        (
            "POST",
            path.clone(),
            post(json!({"v": v, "src": "yjs", "seq": 1, "op": [{"insert": "x"}]})),
            (400, BADLY_FORMED),
        ),
        ("POST", path.clone(), post(json!({"v": v, "src": "r", "op": [{"insert": "x"}]})), (400, BADLY_FORMED)),
        (
            "POST",
            path.clone(),
            post(json!({"v": "2", "src": "r", "seq": 1, "op": [{"insert": "x"}]})),
            (400, BADLY_FORMED),
        ),
        ("POST", path.clone(), post(json!({"v": v, "src": "r", "seq": 1})), (400, BADLY_FORMED)),
        (
            "POST",
            path.clone(),
            post(json!({"v": v, "src": "r", "seq": 1, "op": [{"retain": -1}]})),
            (400, OP_BADLY_FORMED),
        ),
        (
            "POST",
            path.clone(),
            post(json!({"v": v, "src": "r", "seq": 1, "op": [{"insert": "x", "x": 1}]})),
            (400, OP_BADLY_FORMED),
        ),
        (
            "POST",
            path.clone(),
            post(json!({"v": v + 1, "src": "r", "seq": 1, "op": [{"insert": "x"}]})),
            (400, VERSION_NEWER),
        ),
        ("POST", path.clone(), post(json!({"v": v, "src": "r", "seq": 1, "op": [{"retain": 6}]})), (422, NOT_APPLIED)),
        (
            "POST",
            path.clone(),
            post(json!({"v": v, "src": "r", "seq": 1, "op": [{"retain": 1}, {"delete": 9}]})),
            (422, NOT_APPLIED),
        ),
        ("GET", format!("{path}/ops?from={}", v + 1), String::new(), (400, VERSION_NEWER)),
    ] {
        // An empty code: not an OT error, only the status is the contract.
        let (status, code) = refusal(http(&server, method, &target, None, &body).await);
        let want_code = if want.1.is_empty() { code.clone() } else { want.1.to_string() };
        assert_eq!((status, code), (want.0, want_code), "{method} {target} {body}");
    }
    assert_eq!(ot.text("rest", "t").await, (v, "hello".into()));
    // Push version 1 out of the kept log (2 ops): a base of 1 is then too old.
    for i in 0..2 {
        assert_eq!(ot.commit("rest", "t", v + i, json!([{"insert": "-"}])).await, v + i);
    }
    let old = post(json!({"v": 1, "src": "r", "seq": 1, "op": [{"insert": "x"}]}));
    assert_eq!(refusal(http(&server, "POST", &path, None, &old).await), (409, OPS_NOT_FOUND.into()));
    assert_eq!(
        refusal(http(&server, "GET", &format!("{path}/ops?from=1"), None, "").await),
        (409, OPS_NOT_FOUND.into())
    );

    // The mirror keeps working: a valid submit, the snapshot and the ops.
    let (status, body) =
        http(&server, "POST", &path, None, &post(json!({"v": v + 2, "src": "r", "seq": 1, "op": [{"insert": "R"}]})))
            .await;
    assert_eq!((status, body["v"].as_u64()), (200, Some(v + 2)), "{body}");
    let (status, body) = http(&server, "GET", &path, None, "").await;
    assert_eq!((status, body["v"].as_u64(), body["text"].as_str()), (200, Some(v + 3), Some("R--hello")), "{body}");
    let (status, body) = http(&server, "GET", &format!("{path}/ops?from={}", v + 1), None, "").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["ops"].as_array().unwrap().iter().map(|o| o["v"].as_u64().unwrap()).collect::<Vec<_>>(),
        vec![v + 1, v + 2]
    );
    yjs.pump_until(|c| c.text() == "R--hello", "the REST op at the Yjs client").await;
    still_works(&server.url("rest"), "rest", &mut ot, &mut yjs).await;
}

// ---------------------------------------------------------------------------------------
// Behaviour.

#[tokio::test]
async fn a_stale_op_is_transformed_and_a_resubmitted_op_is_acknowledged_once() {
    let server = TestServer::start();
    let mut yjs = Client::synced(&server.url("stale")).await;
    let mut a = Ot::connect(&server).await;
    let mut b = Ot::connect(&server).await;
    let base = seeded(&mut a, "stale", "abc").await;
    assert_eq!(b.text("stale", "t").await, (base, "abc".into()));

    // Both insert at 1 from the same version: A commits first, so its text goes first.
    assert_eq!(a.commit("stale", "t", base, json!([{"retain": 1}, {"insert": "A"}])).await, base);
    let (missed, ack) = b.submit("stale", "t", base, json!([{"retain": 1}, {"insert": "B"}])).await;
    assert!(ack.get("error").is_none(), "{ack}");
    assert_eq!(
        (ack["v"].as_u64(), ack["src"].as_str(), ack["seq"].as_u64()),
        (Some(base + 1), Some(b.id.as_str()), Some(1))
    );
    assert_eq!(missed.len(), 1, "the op B had not seen comes before the ack: {missed:?}");
    assert_eq!((missed[0]["v"].as_u64(), missed[0]["src"].as_str()), (Some(base), Some(a.id.as_str())));
    assert_eq!(missed[0]["op"], json!([{"retain": 1}, {"insert": "A"}]));
    // A delete overlapping a committed delete is transformed too.
    assert_eq!(a.commit("stale", "t", base + 2, json!([{"retain": 3}, {"delete": 1}])).await, base + 2);
    assert_eq!(b.commit("stale", "t", base + 2, json!([{"retain": 2}, {"delete": 3}])).await, base + 3);
    assert_eq!(a.text("stale", "t").await, (base + 4, "aA".into()));
    yjs.pump_until(|c| c.text() == "aA", "the transformed ops").await;

    // B re-sends its first op (a reconnecting client does): acknowledged with its original
    // version, after the op it had not seen, and not applied again.
    let resend = json!({"a": "op", "c": "stale", "d": "t", "v": base, "src": b.id, "seq": 1, "op": [{"retain": 1}, {"insert": "B"}]});
    let (missed, ack) = b.submit_msg(resend.clone()).await;
    assert_eq!((ack["v"].as_u64(), ack.get("error")), (Some(base + 1), None), "{ack}");
    assert_eq!(missed.iter().map(|m| m["v"].as_u64().unwrap()).collect::<Vec<_>>(), vec![base]);
    // A new connection handing back B's id, without an explicit src, is B too.
    let mut b2 = Ot::connect_url(&ot_url(&server, None), Some(&b.id)).await;
    assert_eq!(b2.id, b.id);
    let mut again = resend.clone();
    again.as_object_mut().unwrap().remove("src");
    let (_, ack) = b2.submit_msg(again).await;
    assert_eq!((ack["v"].as_u64(), ack["src"].as_str()), (Some(base + 1), Some(b.id.as_str())), "{ack}");
    // Another connection naming B's src explicitly.
    let mut c = Ot::connect(&server).await;
    let (_, ack) = c.submit_msg(resend).await;
    assert_eq!(ack["v"].as_u64(), Some(base + 1), "{ack}");

    assert_eq!(a.text("stale", "t").await, (base + 4, "aA".into()), "applied once");
    let (status, body) = http(&server, "GET", "/api/docs/stale/texts/t/ops?from=1", None, "").await;
    assert_eq!(status, 200, "{body}");
    let log: Vec<(u64, String, u64)> = body["ops"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| (o["v"].as_u64().unwrap(), o["src"].as_str().unwrap().to_owned(), o["seq"].as_u64().unwrap()))
        .collect();
    assert_eq!(
        log,
        vec![
            (1, a.id.clone(), 1),
            (2, a.id.clone(), 2),
            (3, b.id.clone(), 1),
            (4, a.id.clone(), 3),
            (5, b.id.clone(), 2),
        ]
    );
    assert_eq!(body["ops"][2]["op"], json!([{"retain": 2}, {"insert": "B"}]), "B's op as applied, after A's");
    assert_eq!(body["v"], base + 4);
    // The same seq from another src is a different op.
    let (_, ack) = c.submit("stale", "t", base + 4, json!([{"insert": "C"}])).await;
    assert_eq!(ack["v"].as_u64(), Some(base + 4), "{ack}");
    yjs.pump_until(|c| c.text() == "CaA", "C's op").await;
}

#[tokio::test]
async fn yjs_edits_reach_ot_subscribers_as_ops_and_ot_ops_reach_yjs_clients() {
    let server = TestServer::start();
    let mut a = Ot::connect(&server).await;
    let mut b = Ot::connect(&server).await;
    assert_eq!(a.subscribe("bridge", "t").await, (1, json!([])));
    assert_eq!(b.subscribe("bridge", "t").await.0, 1);
    let mut yjs = Client::synced(&server.url("bridge")).await;

    yjs.insert(0, "hello").await;
    yjs.wait_echo().await;
    for ot in [&mut a, &mut b] {
        let op = ot.recv().await;
        assert_eq!((op["a"].as_str(), op["c"].as_str(), op["d"].as_str()), (Some("op"), Some("bridge"), Some("t")));
        assert_eq!((op["v"].as_u64(), op["src"].as_str()), (Some(1), Some("yjs")), "{op}");
        assert_eq!(op["op"], json!([{"insert": "hello"}]));
    }

    // An OT op: acked to A, sent to B, an ordinary update for the Yjs client.
    assert_eq!(
        a.commit("bridge", "t", 2, json!([{"retain": 5}, {"insert": " world", "attributes": {"bold": true}}])).await,
        2
    );
    let op = b.recv().await;
    assert_eq!(
        (op["v"].as_u64(), op["src"].as_str(), op["seq"].as_u64()),
        (Some(2), Some(a.id.as_str()), Some(1)),
        "{op}"
    );
    yjs.pump_until(|c| c.text() == "hello world", "the OT op at the Yjs client").await;
    let delta = yjs.doc.get_or_insert_text("t").diff(&yjs.doc.transact(), yrs::types::text::YChange::identity);
    assert_eq!(delta.len(), 2, "formatting arrived: {delta:?}");
    assert_eq!(delta[1].attributes.as_ref().and_then(|a| a.get("bold")), Some(&yrs::Any::Bool(true)));

    // Positions are UTF-16 units on both sides.
    yjs.insert(11, "😀").await;
    yjs.wait_echo().await;
    yjs.edit(|t, txn| t.remove_range(txn, 0, 1)).await;
    yjs.wait_echo().await;
    yjs.edit(|t, txn| t.remove_range(txn, 10, 2)).await;
    yjs.wait_echo().await;
    for ot in [&mut a, &mut b] {
        let ops: Vec<Value> = [ot.recv().await, ot.recv().await, ot.recv().await].into();
        assert_eq!(ops.iter().map(|o| o["v"].as_u64().unwrap()).collect::<Vec<_>>(), vec![3, 4, 5]);
        assert!(ops.iter().all(|o| o["src"] == "yjs"));
        assert_eq!(ops[0]["op"], json!([{"retain": 11}, {"insert": "😀", "attributes": {"bold": true}}]));
        assert_eq!(ops[1]["op"], json!([{"delete": 1}]));
        assert_eq!(ops[2]["op"], json!([{"retain": 10}, {"delete": 2}]));
    }
    assert_eq!(a.commit("bridge", "t", 6, json!([{"retain": 10}, {"insert": "!"}])).await, 6);
    yjs.pump_until(|c| c.text() == "ello world!", "the second OT op").await;
    assert_eq!(b.recv().await["v"], 6);
    assert_eq!(a.text("bridge", "t").await, (7, "ello world!".into()));
    assert_eq!(yjs.doc.get_or_insert_text("t").get_string(&yjs.doc.transact()), "ello world!");
}

/// An `ot_ops` row: version, src, seq, op JSON, update_seq, and the update's origin.
type StoredOp = (i64, String, i64, String, Option<i64>, Option<String>);

/// The OT log, version and epoch as the REST mirror and SQLite show them.
async fn ot_state(server: &TestServer, doc: &str) -> (u64, String, String, Value) {
    let (status, snapshot) = http(server, "GET", &text_path(doc), None, "").await;
    assert_eq!(status, 200, "{snapshot}");
    let (status, log) = http(server, "GET", &format!("{}/ops?from=1", text_path(doc)), None, "").await;
    assert_eq!(status, 200, "{log}");
    assert_eq!((snapshot["v"].clone(), snapshot["epoch"].clone()), (log["v"].clone(), log["epoch"].clone()));
    (
        snapshot["v"].as_u64().unwrap(),
        snapshot["epoch"].as_str().unwrap().to_owned(),
        snapshot["text"].as_str().unwrap().to_owned(),
        log["ops"].clone(),
    )
}

#[tokio::test]
async fn the_op_log_version_and_epoch_survive_a_restart_and_versions_never_go_back() {
    let mut server = TestServer::start();
    let mut ot = Ot::connect(&server).await;
    let mut yjs = Client::synced(&server.url("durable")).await;
    seeded(&mut ot, "durable", "one").await;
    yjs.pump_until(|c| c.text() == "one", "seed").await;
    yjs.insert(3, " two").await;
    yjs.wait_echo().await;
    assert_eq!(ot.commit("durable", "t", 3, json!([{"retain": 7}, {"insert": " three"}])).await, 3);
    yjs.pump_until(|c| c.text() == "one two three", "OT op").await;
    let before = ot_state(&server, "durable").await;
    assert_eq!((before.0, before.2.as_str()), (4, "one two three"));
    assert_eq!(before.3.as_array().unwrap().len(), 3);

    // The tables, read directly.
    let rows = |db: &std::path::Path| {
        with_db(db, |conn| {
            let (epoch, version) = conn
                .one(
                    "SELECT t.epoch, t.version FROM ot_texts t JOIN documents d ON d.id = t.doc_id
                     WHERE d.name = 'durable' AND t.text = 't'",
                    &[],
                    |r| Ok((r.text(0)?, r.int(1)?)),
                )
                .unwrap();
            let ops: Vec<StoredOp> = conn
                .rows(
                    "SELECT o.version, o.src, o.seq, o.op, o.update_seq, u.origin FROM ot_ops o
                     JOIN documents d ON d.id = o.doc_id
                     LEFT JOIN updates u ON u.doc_id = o.doc_id AND u.seq = o.update_seq
                     WHERE d.name = 'durable' AND o.text = 't' ORDER BY o.version",
                    &[],
                    |r| Ok((r.int(0)?, r.text(1)?, r.int(2)?, r.text(3)?, r.opt_int(4)?, r.opt_text(5)?)),
                )
                .unwrap();
            (epoch, version, ops)
        })
    };
    let (epoch, version, ops) = rows(&server.db_path());
    assert_eq!((epoch.as_str(), version as u64), (before.1.as_str(), before.0));
    let rest_ops: Vec<(i64, String, i64, Value)> = before
        .3
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            (o["v"].as_i64().unwrap(), o["src"].as_str().unwrap().into(), o["seq"].as_i64().unwrap(), o["op"].clone())
        })
        .collect();
    let db_ops: Vec<(i64, String, i64, Value)> =
        ops.iter().map(|(v, src, seq, op, ..)| (*v, src.clone(), *seq, serde_json::from_str(op).unwrap())).collect();
    assert_eq!(db_ops, rest_ops);
    let origins: Vec<Option<&str>> = ops.iter().map(|o| o.5.as_deref()).collect();
    assert_eq!(origins, vec![Some("ot"), Some("anonymous"), Some("ot")], "each op is stored with its update");
    assert_eq!(ops[1].1, "yjs");
    assert_eq!(Some(ops[1].2), ops[1].4, "a Yjs op's seq is its update's seq");

    drop((ot, yjs));
    server.restart();
    let after = ot_state(&server, "durable").await;
    assert_eq!(after, before, "same version, epoch, text and log after the restart");

    // A Yjs edit made while no OT client is connected is still the next version.
    let mut yjs = Client::synced(&server.url("durable")).await;
    assert_eq!(yjs.text(), "one two three");
    yjs.insert(0, "zero ").await;
    yjs.wait_echo().await;
    let mut ot = Ot::connect(&server).await;
    assert_eq!(ot.text("durable", "t").await, (5, "zero one two three".into()));
    // A stale op based on a version from before the restart is still transformed.
    assert_eq!(ot.commit("durable", "t", 2, json!([{"retain": 3}, {"insert": "!"}])).await, 5);
    yjs.pump_until(|c| c.text() == "zero one two three!", "stale op after restart").await;

    // A resubmission after the restart is still recognised: the stored log keeps `(src, seq)`.
    let resend = json!({"a": "op", "c": "durable", "d": "t", "v": 2, "src": ot.id, "seq": 1, "op": [{"retain": 3}, {"insert": "!"}]});
    let (_, ack) = ot.submit_msg(resend.clone()).await;
    assert_eq!((ack["v"].as_u64(), ack.get("error")), (Some(5), None), "{ack}");
    drop((ot, yjs));
    server.restart();
    let mut ot = Ot::connect(&server).await;
    let (missed, ack) = ot.submit_msg(resend).await;
    assert_eq!((ack["v"].as_u64(), ack.get("error")), (Some(5), None), "{ack}");
    assert_eq!(missed.len(), 3, "versions 2, 3 and 4 come first: {missed:?}");
    // A versioned subscribe gets every op since, then an empty reply.
    let reply = ot.request(json!({"a": "s", "c": "durable", "d": "t", "v": 3})).await;
    assert_eq!(reply, json!({"a": "s", "c": "durable", "d": "t"}));
    let replayed = [ot.recv().await, ot.recv().await, ot.recv().await];
    assert_eq!(replayed.iter().map(|o| o["v"].as_u64().unwrap()).collect::<Vec<_>>(), vec![3, 4, 5]);
    assert_eq!(replayed[2]["op"], json!([{"retain": 18}, {"insert": "!"}]), "logged as applied");
    drop(ot);
    server.restart();
    let last = ot_state(&server, "durable").await;
    assert_eq!((last.0, last.1.as_str()), (6, before.1.as_str()));
    let versions: Vec<u64> = last.3.as_array().unwrap().iter().map(|o| o["v"].as_u64().unwrap()).collect();
    assert_eq!(versions, vec![1, 2, 3, 4, 5], "contiguous, never reused");
    let (_, version, _) = rows(&server.db_path());
    assert_eq!(version, 6);
}

/// Yjs edits are not bounded by what an OT client may submit (a paste can be any size, one
/// transaction can touch many places, an embed can be an empty object), but the stored log
/// must still load: ops since version 1 stay available across a restart.
#[tokio::test]
async fn yjs_edits_an_ot_client_could_not_submit_stay_in_the_op_log_across_a_restart() {
    let mut server = TestServer::start_with(&["--ot-op-insert-units-max", "10", "--ot-op-components-max", "4"]);
    let mut ot = Ot::connect(&server).await;
    for text in ["t", "c", "e"] {
        assert_eq!(ot.subscribe("paste", text).await.0, 1);
    }
    let mut yjs = Client::synced(&server.url("paste")).await;
    yjs.insert(0, &"p".repeat(20)).await;
    let (c, e) = (yjs.doc.get_or_insert_text("c"), yjs.doc.get_or_insert_text("e"));
    let update = {
        let mut txn = yjs.doc.transact_mut();
        c.insert(&mut txn, 0, "abcdef");
        txn.encode_update_v1()
    };
    yjs.send(yserve::protocol::encode_update(update)).await;
    let update = {
        let mut txn = yjs.doc.transact_mut();
        for at in [5, 3, 1] {
            c.insert(&mut txn, at, "-");
        }
        e.insert_embed(&mut txn, 0, yrs::Any::from(std::collections::HashMap::<String, yrs::Any>::new()));
        txn.encode_update_v1()
    };
    yjs.send(yserve::protocol::encode_update(update)).await;
    yjs.wait_echo().await;
    let mut pushed = Vec::new();
    for _ in 0..4 {
        let op = ot.recv().await;
        pushed.push((op["d"].as_str().unwrap().to_owned(), op["v"].as_u64().unwrap(), op["op"].clone()));
    }
    pushed.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
    assert_eq!(
        pushed,
        vec![
            ("c".to_owned(), 1, json!([{"insert": "abcdef"}])),
            (
                "c".to_owned(),
                2,
                json!([{"retain": 1}, {"insert": "-"}, {"retain": 2}, {"insert": "-"}, {"retain": 2}, {"insert": "-"}])
            ),
            ("e".to_owned(), 1, json!([{"insert": {}}])),
            ("t".to_owned(), 1, json!([{"insert": "p".repeat(20)}])),
        ]
    );
    assert_eq!(ot.commit("paste", "t", 2, json!([{"insert": "x"}])).await, 2);
    let mut before = Vec::new();
    for doc_text in ["t", "c", "e"] {
        let (status, log) =
            http(&server, "GET", &format!("/api/docs/paste/texts/{doc_text}/ops?from=1"), None, "").await;
        assert_eq!(status, 200, "{log}");
        before.push(log);
    }
    drop((ot, yjs));
    server.restart();
    let mut lost = Vec::new();
    for (doc_text, log) in ["t", "c", "e"].into_iter().zip(before) {
        let (status, body) =
            http(&server, "GET", &format!("/api/docs/paste/texts/{doc_text}/ops?from=1"), None, "").await;
        if (status, &body) != (200, &log) {
            lost.push(format!("text {doc_text}: {status} {body}"));
        }
    }
    assert!(lost.is_empty(), "ops since version 1 are no longer served after the restart:\n{}", lost.join("\n"));
    let mut ot = Ot::connect(&server).await;
    let (_, ack) = ot.submit("paste", "t", 1, json!([{"insert": "s"}])).await;
    assert!(ack.get("error").is_none(), "a stale op based on version 1 is transformed: {ack}");
}

fn seed() -> u64 {
    match std::env::var("YSERVE_TEST_SEED") {
        Ok(s) => s.parse().expect("YSERVE_TEST_SEED is a u64"),
        Err(_) => fastrand::u64(..),
    }
}

/// UTF-16 offsets of every character boundary of `s`, 0 and the end included.
fn boundaries(s: &str) -> Vec<u64> {
    let mut out = vec![0];
    let mut at = 0;
    for c in s.chars() {
        at += c.len_utf16() as u64;
        out.push(at);
    }
    out
}

fn random_string(rng: &mut fastrand::Rng) -> String {
    let alphabet = ['a', 'b', 'é', '😀', ' ', '中'];
    (0..rng.usize(1..4)).map(|_| alphabet[rng.usize(..alphabet.len())]).collect()
}

fn random_attrs(rng: &mut fastrand::Rng) -> Value {
    match rng.u8(..4) {
        0 => json!({"bold": true}),
        1 => json!({"bold": null}),
        2 => json!({"italic": true, "color": "#f00"}),
        _ => json!({"color": null}),
    }
}

fn to_yrs_attrs(v: &Value) -> yrs::types::Attrs {
    v.as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (std::sync::Arc::from(k.as_str()), serde_json::from_value(v.clone()).unwrap()))
        .collect()
}

/// A random edit of the Yjs client's text, at character boundaries.
async fn random_yjs_edit(rng: &mut fastrand::Rng, yjs: &mut Client) {
    let text = yjs.text();
    let b = boundaries(&text);
    let at = b[rng.usize(..b.len())] as u32;
    let rest: Vec<u64> = b.iter().copied().filter(|x| *x > at as u64).collect();
    match (rng.u8(..4), rest.is_empty()) {
        (0, _) | (_, true) => {
            let s = random_string(rng);
            yjs.edit(|t, txn| t.insert(txn, at, &s)).await;
        }
        (1, _) => {
            let s = random_string(rng);
            let attrs = to_yrs_attrs(&random_attrs(rng));
            yjs.edit(|t, txn| t.insert_with_attributes(txn, at, &s, attrs)).await;
        }
        (2, _) => {
            let end = rest[rng.usize(..rest.len())] as u32;
            yjs.edit(|t, txn| t.remove_range(txn, at, end - at)).await;
        }
        _ => {
            let end = rest[rng.usize(..rest.len())] as u32;
            let attrs = to_yrs_attrs(&random_attrs(rng));
            yjs.edit(|t, txn| t.format(txn, at, end - at, attrs)).await;
        }
    }
}

/// A random op on `text` (what the submitter last fetched), at character boundaries.
fn random_op(rng: &mut fastrand::Rng, text: &str) -> Value {
    let b = boundaries(text);
    let at = b[rng.usize(..b.len())];
    let rest: Vec<u64> = b.iter().copied().filter(|x| *x > at).collect();
    let mut op = Vec::new();
    if at > 0 {
        op.push(json!({"retain": at}));
    }
    match (rng.u8(..4), rest.is_empty()) {
        (0, _) | (_, true) => op.push(json!({"insert": random_string(rng)})),
        (1, _) => {
            let attrs = random_attrs(rng);
            let attrs: serde_json::Map<String, Value> = attrs
                .as_object()
                .unwrap()
                .iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            op.push(json!({"insert": random_string(rng), "attributes": attrs}));
        }
        (2, _) => op.push(json!({"delete": rest[rng.usize(..rest.len())] - at})),
        _ => op.push(json!({"retain": rest[rng.usize(..rest.len())] - at, "attributes": random_attrs(rng)})),
    }
    Value::Array(op)
}

/// An OT subscriber that composes every op it is sent onto its snapshot ends with the text
/// the server has, while Yjs clients edit (with formatting and emoji) and another OT client
/// submits stale ops: the ops made from Yjs events and the transformed ops as logged are
/// exactly what happened to the text. Seeded; set YSERVE_TEST_SEED to replay.
#[tokio::test]
async fn an_ot_subscriber_composing_every_op_converges_with_yjs_clients() {
    use yserve::ot::delta::{Delta, DeltaLimits};
    let seed = seed();
    println!("seed {seed} (replay with YSERVE_TEST_SEED={seed})");
    let mut rng = fastrand::Rng::with_seed(seed);
    let limits = DeltaLimits { components_max: 10_000, insert_units_max: 1 << 20, len_max: 1 << 31 };
    let parse =
        |v: &Value| Delta::from_json(v, &limits).unwrap_or_else(|e| panic!("seed {seed}: server sent {v}: {e}"));
    let server = TestServer::start();
    let url = server.url("conv");
    let mut watcher = Ot::connect(&server).await;
    let (mut version, data) = watcher.subscribe("conv", "t").await;
    let mut doc = parse(&data);
    let mut writer = Ot::connect(&server).await;
    let mut yjs = [Client::synced(&url).await, Client::synced(&url).await];
    for round in 0..12 {
        let (base, ops) = writer.fetch("conv", "t").await;
        let base_text = plain(&ops);
        for y in yjs.iter_mut() {
            for _ in 0..rng.usize(1..4) {
                random_yjs_edit(&mut rng, y).await;
            }
        }
        for _ in 0..rng.usize(1..4) {
            let op = random_op(&mut rng, &base_text);
            let (_, ack) = writer.submit("conv", "t", base, op.clone()).await;
            assert!(
                ack.get("error").is_none(),
                "seed {seed}, round {round}: {op} at v{base} on {base_text:?} refused: {ack}"
            );
        }
        for y in yjs.iter_mut() {
            y.wait_echo().await;
        }
    }
    let (last, data) = watcher.fetch("conv", "t").await;
    while version < last {
        let op = watcher.recv().await;
        assert_eq!(op["v"].as_u64(), Some(version), "seed {seed}: ops arrive in order: {op}");
        let next =
            doc.compose(&parse(&op["op"])).unwrap_or_else(|e| panic!("seed {seed}: {op} on {:?}: {e}", doc.to_json()));
        doc = next;
        version += 1;
    }
    assert_eq!(doc.to_json(), parse(&data).to_json(), "seed {seed}: composed ops differ from the snapshot");
    let text = plain(&data);
    for y in yjs.iter_mut() {
        y.pump_until(|c| c.text() == text, "the Yjs clients converge").await;
    }
    // Formatting too: a Yjs client's text, read as a delta, is the OT clients' document.
    let fresh = Client::synced(&url).await;
    let fresh_text = fresh.doc.get_or_insert_text("t");
    let yjs_view = yserve::ot::ytext::read(&fresh.doc.transact(), &fresh_text);
    assert_eq!(yjs_view.to_json(), doc.to_json(), "seed {seed}: a Yjs client sees other formatting");
}
