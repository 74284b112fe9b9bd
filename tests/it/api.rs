//! The operator HTTP API (issue 5, README "For operators: the HTTP API"): REST round trips,
//! refusals, time travel against the log, Server-Sent Events with `Last-Event-ID`, advisory
//! locks, and `/metrics` parsed as Prometheus text. The real binary, spoken to over a plain
//! hand-rolled HTTP/1.1 client (the crate has no HTTP client dependency, and one is not
//! worth adding for this).

use std::collections::VecDeque;
use std::ops::Range;

use base64::Engine;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;
use yrs::{Doc, Map, ReadTxn, StateVector, Text, Transact, TransactionMut, Update};

use crate::support::{new_doc, read_db, with_db, Client, TestServer, TIMEOUT};
use yserve::store::db::params;

// ---------------------------------------------------------------------------------------------
// A minimal HTTP/1.1 client: one request per connection (`Connection: close`), and a reader
// of `text/event-stream` bodies.

pub(crate) struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("status {}: body is not JSON ({e}): {:?}", self.status, self.text()))
    }

    /// Asserts a refusal: this status, a JSON body `{"error": {"code", "message"}}` with this
    /// code and a non-empty message. Returns the message.
    fn refused(&self, status: u16, code: &str) -> String {
        assert_eq!(self.status, status, "expected {status} {code}, got: {}", self.text());
        let body = self.json();
        assert_eq!(body["error"]["code"], code, "{body}");
        let message = body["error"]["message"].as_str().unwrap_or_else(|| panic!("no message: {body}"));
        assert!(!message.is_empty(), "{body}");
        message.to_owned()
    }

    /// Asserts a 200 with a JSON body and returns it.
    fn ok_json(&self) -> Value {
        assert_eq!(self.status, 200, "{}", self.text());
        assert_eq!(self.header("content-type"), Some("application/json"));
        self.json()
    }

    /// Asserts a 200 with a binary body and returns it.
    fn ok_binary(&self) -> Vec<u8> {
        assert_eq!(self.status, 200, "{}", self.text());
        assert_eq!(self.header("content-type"), Some("application/octet-stream"));
        self.body.clone()
    }
}

/// Parses a whole response (read to EOF).
pub(crate) fn parse_response(raw: &[u8]) -> Response {
    let end =
        find(raw, b"\r\n\r\n").unwrap_or_else(|| panic!("no response head in {:?}", String::from_utf8_lossy(raw)));
    let head = std::str::from_utf8(&raw[..end]).expect("head is text");
    let mut lines = head.split("\r\n");
    let status_line = lines.next().expect("status line");
    let status = status_line.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("status code");
    let headers: Vec<(String, String)> = lines
        .map(|l| {
            let (k, v) = l.split_once(':').expect("header line");
            (k.trim().to_ascii_lowercase(), v.trim().to_owned())
        })
        .collect();
    let mut body = raw[end + 4..].to_vec();
    let chunked = headers.iter().any(|(k, v)| k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    if chunked {
        body = dechunk(&body);
    }
    Response { status, headers, body }
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let line_end = find(data, b"\r\n").expect("chunk size line");
        let size_text = std::str::from_utf8(&data[..line_end]).expect("chunk size");
        let size = usize::from_str_radix(size_text.split(';').next().unwrap().trim(), 16).expect("hex chunk size");
        data = &data[line_end + 2..];
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// A document name as one path segment (`team/notes` → `team%2Fnotes`).
fn seg(name: &str) -> String {
    percent_encoding::utf8_percent_encode(name, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// The API of one server, as one user (a token) or anonymously.
#[derive(Clone)]
struct Api {
    port: u16,
    token: Option<String>,
}

impl Api {
    fn new(server: &TestServer) -> Api {
        Api { port: server.port, token: None }
    }

    fn as_user(server: &TestServer, token: &str) -> Api {
        Api { port: server.port, token: Some(token.to_owned()) }
    }

    async fn request(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Response {
        let mut head = self.head(method, path, headers);
        if method == "POST" || !body.is_empty() {
            head.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        head.push_str("\r\n");
        self.exchange(&format!("{method} {path}"), head, body).await
    }

    /// A POST whose body is sent with `Transfer-Encoding: chunked`, as streaming clients do.
    async fn post_chunked(&self, path: &str, content_type: &str, body: &[u8]) -> Response {
        let mut head = self.head("POST", path, &[("Content-Type", content_type)]);
        head.push_str("Transfer-Encoding: chunked\r\n\r\n");
        let mut chunked = format!("{:x}\r\n", body.len()).into_bytes();
        chunked.extend_from_slice(body);
        chunked.extend_from_slice(b"\r\n0\r\n\r\n");
        self.exchange(&format!("POST {path} (chunked)"), head, &chunked).await
    }

    fn head(&self, method: &str, path: &str, headers: &[(&str, &str)]) -> String {
        let mut head = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n");
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        if let Some(t) = &self.token {
            head.push_str(&format!("Authorization: Bearer {t}\r\n"));
        }
        head
    }

    async fn exchange(&self, what: &str, head: String, body: &[u8]) -> Response {
        let exchange = async {
            let mut stream = TcpStream::connect(("127.0.0.1", self.port)).await.expect("connect");
            stream.write_all(head.as_bytes()).await.expect("write head");
            // A server that answers before reading the whole body may close early.
            let _ = stream.write_all(body).await;
            let mut raw = Vec::new();
            let mut buf = [0u8; 16 * 1024];
            loop {
                match stream.read(&mut buf).await {
                    Ok(0) => break,
                    Ok(n) => raw.extend_from_slice(&buf[..n]),
                    Err(e) if !raw.is_empty() => {
                        eprintln!("{what}: read error after {} bytes: {e}", raw.len());
                        break;
                    }
                    Err(e) => panic!("{what}: {e}"),
                }
            }
            parse_response(&raw)
        };
        tokio::time::timeout(TIMEOUT, exchange).await.unwrap_or_else(|_| panic!("{what} timed out"))
    }

    async fn get(&self, path: &str) -> Response {
        self.request("GET", path, &[], &[]).await
    }

    async fn delete(&self, path: &str) -> Response {
        self.request("DELETE", path, &[], &[]).await
    }

    async fn post(&self, path: &str, content_type: Option<&str>, body: &[u8]) -> Response {
        let headers: Vec<(&str, &str)> = content_type.map(|t| ("Content-Type", t)).into_iter().collect();
        self.request("POST", path, &headers, body).await
    }

    async fn post_json(&self, path: &str, body: &Value) -> Response {
        self.post(path, Some("application/json"), body.to_string().as_bytes()).await
    }

    async fn post_update(&self, doc: &str, update: &[u8]) -> Response {
        self.post(&format!("/api/docs/{}/update", seg(doc)), Some("application/octet-stream"), update).await
    }

    /// The document's state (or diff, or past state) as a fresh doc.
    async fn state(&self, doc: &str, query: &str) -> Doc {
        let bytes = self.get(&format!("/api/docs/{}/update{query}", seg(doc))).await.ok_binary();
        doc_from_updates([bytes.as_slice()])
    }

    async fn doc_json(&self, doc: &str, query: &str) -> Value {
        self.get(&format!("/api/docs/{}/json{query}", seg(doc))).await.ok_json()
    }

    async fn listed(&self, doc: &str) -> Option<Value> {
        let list = self.get("/api/docs").await.ok_json();
        list["documents"].as_array().expect("documents").iter().find(|d| d["name"] == doc).cloned()
    }

    async fn events(&self, path: &str, last_event_id: Option<&str>) -> Sse {
        Sse::open(self, path, last_event_id).await
    }

    async fn doc_events(&self, doc: &str, last_event_id: Option<&str>) -> Sse {
        self.events(&format!("/api/docs/{}/events", seg(doc)), last_event_id).await
    }
}

#[derive(Debug, Clone, PartialEq)]
struct SseEvent {
    id: String,
    kind: String,
    data: String,
}

impl SseEvent {
    fn json(&self) -> Value {
        serde_json::from_str(&self.data).unwrap_or_else(|e| panic!("event data is not JSON ({e}): {self:?}"))
    }
}

/// A `text/event-stream` response being read.
struct Sse {
    reader: BufReader<TcpStream>,
    chunked: bool,
    buf: Vec<u8>,
    events: VecDeque<SseEvent>,
    ended: bool,
}

impl Sse {
    async fn open(api: &Api, path: &str, last_event_id: Option<&str>) -> Sse {
        let open = async {
            let mut stream = TcpStream::connect(("127.0.0.1", api.port)).await.expect("connect");
            let mut head = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n");
            if let Some(id) = last_event_id {
                head.push_str(&format!("Last-Event-ID: {id}\r\n"));
            }
            if let Some(t) = &api.token {
                head.push_str(&format!("Authorization: Bearer {t}\r\n"));
            }
            head.push_str("\r\n");
            stream.write_all(head.as_bytes()).await.expect("write");
            let mut reader = BufReader::new(stream);
            let mut status_line = String::new();
            reader.read_line(&mut status_line).await.expect("status line");
            let mut chunked = false;
            let mut content_type = String::new();
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).await.expect("header");
                let line = line.trim_end();
                if line.is_empty() {
                    break;
                }
                let (k, v) = line.split_once(':').expect("header line");
                match k.trim().to_ascii_lowercase().as_str() {
                    "transfer-encoding" => chunked = v.trim().eq_ignore_ascii_case("chunked"),
                    "content-type" => content_type = v.trim().to_owned(),
                    _ => {}
                }
            }
            assert!(status_line.starts_with("HTTP/1.1 200"), "{path}: {status_line}");
            assert!(content_type.starts_with("text/event-stream"), "{path}: content-type {content_type}");
            Sse { reader, chunked, buf: Vec::new(), events: VecDeque::new(), ended: false }
        };
        tokio::time::timeout(TIMEOUT, open).await.unwrap_or_else(|_| panic!("opening {path} timed out"))
    }

    /// Reads more of the body; `false` at its end.
    async fn fill(&mut self) -> bool {
        if self.chunked {
            let mut line = String::new();
            if self.reader.read_line(&mut line).await.unwrap_or(0) == 0 {
                return false;
            }
            let size = usize::from_str_radix(line.trim().split(';').next().unwrap(), 16).expect("chunk size");
            if size == 0 {
                return false;
            }
            let mut chunk = vec![0; size + 2];
            if self.reader.read_exact(&mut chunk).await.is_err() {
                return false;
            }
            self.buf.extend_from_slice(&chunk[..size]);
        } else {
            let mut chunk = [0u8; 4096];
            match self.reader.read(&mut chunk).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
        true
    }

    fn parse(&mut self) {
        while let Some(end) = find(&self.buf, b"\n\n") {
            let block: Vec<u8> = self.buf.drain(..end + 2).collect();
            let block = String::from_utf8(block).expect("events are UTF-8");
            let mut event = SseEvent { id: String::new(), kind: "message".into(), data: String::new() };
            let mut fields = 0;
            for line in block.lines() {
                if line.is_empty() || line.starts_with(':') {
                    continue; // comments: the heartbeat
                }
                let (field, value) = line.split_once(':').unwrap_or((line, ""));
                let value = value.strip_prefix(' ').unwrap_or(value);
                fields += 1;
                match field {
                    "id" => event.id = value.to_owned(),
                    "event" => event.kind = value.to_owned(),
                    "data" if event.data.is_empty() => event.data = value.to_owned(),
                    "data" => {
                        event.data.push('\n');
                        event.data.push_str(value);
                    }
                    _ => {}
                }
            }
            if fields > 0 {
                self.events.push_back(event);
            }
        }
    }

    /// The next event, or `None` when the stream ends; panics after `TIMEOUT`.
    async fn next(&mut self) -> Option<SseEvent> {
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        loop {
            if let Some(e) = self.events.pop_front() {
                return Some(e);
            }
            if self.ended {
                return None;
            }
            match tokio::time::timeout_at(deadline, self.fill()).await {
                Ok(true) => self.parse(),
                Ok(false) => self.ended = true,
                Err(_) => panic!("timed out waiting for an event"),
            }
        }
    }

    async fn event(&mut self, what: &str) -> SseEvent {
        self.next().await.unwrap_or_else(|| panic!("stream ended while waiting for {what}"))
    }

    /// Reads events until one matches; returns it and those before it.
    async fn until(&mut self, what: &str, mut pred: impl FnMut(&SseEvent) -> bool) -> (SseEvent, Vec<SseEvent>) {
        let mut before = Vec::new();
        loop {
            let e = self.event(what).await;
            if pred(&e) {
                return (e, before);
            }
            before.push(e);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Documents, updates and tokens.

fn doc_from_updates<'a>(updates: impl IntoIterator<Item = &'a [u8]>) -> Doc {
    let doc = Doc::new();
    {
        let mut txn = doc.transact_mut();
        for u in updates {
            txn.apply_update(Update::decode_v1(u).expect("decode")).expect("apply");
        }
    }
    doc
}

/// What makes two docs the same state: visible content, clocks, and deletions.
#[derive(Debug, PartialEq)]
struct Fingerprint {
    json: Value,
    clocks: Vec<(u64, u32)>,
    deleted: Vec<(u64, Vec<Range<u32>>)>,
}

fn fingerprint(doc: &Doc) -> Fingerprint {
    let txn = doc.transact();
    let snapshot = txn.snapshot();
    let mut clocks: Vec<(u64, u32)> = snapshot.state_map.iter().map(|(c, k)| (c.get(), *k)).collect();
    clocks.sort();
    let mut deleted: Vec<(u64, Vec<Range<u32>>)> = snapshot
        .delete_set
        .iter()
        .map(|(client, ranges)| {
            let mut rs: Vec<Range<u32>> = ranges.iter().cloned().collect();
            rs.sort_by_key(|r| r.start);
            let mut merged: Vec<Range<u32>> = Vec::new();
            for r in rs {
                match merged.last_mut() {
                    Some(last) if r.start <= last.end => last.end = last.end.max(r.end),
                    _ => merged.push(r),
                }
            }
            (client.get(), merged)
        })
        .filter(|(_, rs)| !rs.is_empty())
        .collect();
    deleted.sort_by_key(|(c, _)| *c);
    drop(txn);
    Fingerprint { json: yserve::render::doc_to_json(doc), clocks, deleted }
}

/// An update made by a separate writer (its own client id) on top of `base`.
fn writer_update(base: Option<&Doc>, edit: impl FnOnce(&yrs::TextRef, &mut TransactionMut)) -> Vec<u8> {
    let writer = new_doc();
    if let Some(base) = base {
        let state = base.transact().encode_state_as_update_v1(&StateVector::default());
        writer.transact_mut().apply_update(Update::decode_v1(&state).unwrap()).unwrap();
    }
    // Before the transaction: getting a root takes one of its own.
    let text = writer.get_or_insert_text("t");
    let mut txn = writer.transact_mut();
    edit(&text, &mut txn);
    txn.encode_update_v1()
}

/// Sets a key of root map "m" from a connected client.
async fn set_map(c: &mut Client, key: &str, value: impl Into<yrs::Any>) {
    let map = c.doc.get_or_insert_map("m");
    let update = {
        let mut txn = c.doc.transact_mut();
        map.insert(&mut txn, key, value.into());
        txn.encode_update_v1()
    };
    c.send(yserve::protocol::encode_update(update)).await;
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

const SECRET: &str = "api-test-secret";

fn auth_server(extra: &[&str]) -> TestServer {
    let mut args = vec!["--jwt-secret", SECRET];
    args.extend_from_slice(extra);
    TestServer::start_with(&args)
}

/// A token from `yserve token`, the way an operator mints one.
fn mint(sub: &str, grants: &[&str]) -> String {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_yserve"));
    cmd.args(["token", "--sub", sub, "--ttl", "1h", "--jwt-secret", SECRET]);
    for g in grants {
        cmd.args(["--doc", g]);
    }
    let out = cmd.output().expect("yserve token");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

fn ws_url(server: &TestServer, doc: &str, token: &str) -> String {
    format!("{}?token={token}", server.url(doc))
}

/// Polls `check` until it holds; panics after `TIMEOUT`.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// After a refusal the document still takes edits over the WebSocket and over REST, and
/// both reach a newcomer.
async fn still_works(server: &TestServer, api: &Api, doc: &str, ws_token: Option<&str>) {
    let url = ws_token.map_or_else(|| server.url(doc), |t| ws_url(server, doc, t));
    let mut c = Client::synced(&url).await;
    c.insert(0, "ws ").await;
    c.wait_echo().await;
    let update = writer_update(Some(&c.doc), |t, txn| t.insert(txn, 0, "rest "));
    let answer = api.post_update(doc, &update).await.ok_json();
    assert_eq!(answer["applied"], true, "{answer}");
    c.pump_until(|c| c.text().starts_with("rest ws "), "the posted update, live").await;
    let newcomer = Client::synced(&url).await;
    assert_eq!(newcomer.text(), c.text());
}

fn doc_id(server: &TestServer, name: &str) -> Option<i64> {
    with_db(&server.db_path(), |db| {
        db.row("SELECT id FROM documents WHERE name = ?1", &params![name], |r| r.int(0)).unwrap()
    })
}

fn count_rows(server: &TestServer, table: &str, doc_id: i64) -> i64 {
    let sql = format!("SELECT count(*) FROM {table} WHERE doc_id = ?1");
    with_db(&server.db_path(), |db| db.one(&sql, &params![doc_id], |r| r.int(0)).unwrap())
}

// ---------------------------------------------------------------------------------------------
// REST round trips.

#[tokio::test]
async fn a_posted_update_is_committed_relayed_live_and_read_back_as_the_same_state() {
    let server = TestServer::start();
    let api = Api::new(&server);
    let mut client = Client::synced(&server.url("team/notes")).await;
    let update = writer_update(None, |t, txn| t.insert(txn, 0, "hello"));

    let answer = api.post_update("team/notes", &update).await.ok_json();
    assert_eq!(answer, json!({"seq": 1, "applied": true}));
    client.pump_until(|c| c.text() == "hello", "the posted update, live").await;

    let state = api.state("team/notes", "").await;
    assert_eq!(fingerprint(&state), fingerprint(&client.doc));
    let (rows, _) = read_db(&server.db_path(), "team/notes");
    assert_eq!(rows.len(), 1, "committed before the answer");

    // Posting what the document already has adds nothing.
    let again = api.post_update("team/notes", &update).await.ok_json();
    assert_eq!(again, json!({"seq": null, "applied": false}));
    assert_eq!(read_db(&server.db_path(), "team/notes").0.len(), 1);
}

#[tokio::test]
async fn an_update_against_a_state_vector_holds_only_what_that_state_lacks() {
    let server = TestServer::start();
    let api = Api::new(&server);
    let mut client = Client::synced(&server.url("sv")).await;
    client.insert(0, "abc").await;
    client.wait_echo().await;
    let before = client.doc.transact().encode_state_as_update_v1(&StateVector::default());
    let sv = client.state_vector();
    client.insert(3, "def").await;
    // The server must have "def" before the diffs are asked for: the posted ">" does not
    // depend on it, so without this wait it can overtake it and the client sees ">abcdef"
    // while the server still lacks "def" (seen once in a full run).
    client.wait_echo().await;
    let update = writer_update(Some(&client.doc), |t, txn| t.insert(txn, 0, ">"));
    api.post_update("sv", &update).await.ok_json();
    client.pump_until(|c| c.text() == ">abcdef", "both edits").await;

    for encoded in [seg(&b64(&sv.encode_v1())), base64::engine::general_purpose::URL_SAFE.encode(sv.encode_v1())] {
        let diff = api.get(&format!("/api/docs/sv/update?sv={encoded}")).await.ok_binary();
        let inserted = Update::decode_v1(&diff).unwrap().insertions(true);
        for (client_id, ranges) in inserted.iter() {
            for r in ranges.iter() {
                assert!(r.start >= sv.get(client_id), "the diff repeats {client_id:?} {r:?} known at {sv:?}");
            }
        }
        let rebuilt = doc_from_updates([before.as_slice(), diff.as_slice()]);
        assert_eq!(fingerprint(&rebuilt), fingerprint(&client.doc));
    }
    // Against the current state vector: nothing to send.
    let current = seg(&b64(&client.state_vector().encode_v1()));
    let empty = api.get(&format!("/api/docs/sv/update?sv={current}")).await.ok_binary();
    assert!(Update::decode_v1(&empty).unwrap().insertions(true).is_empty());
}

#[tokio::test]
async fn json_renders_a_text_root_as_a_string_and_a_map_root_as_an_object() {
    let server = TestServer::start();
    let api = Api::new(&server);
    let mut client = Client::synced(&server.url("render")).await;
    client.insert(0, "hello world").await;
    set_map(&mut client, "title", "Notes").await;
    set_map(&mut client, "count", 3).await;
    client.wait_echo().await;
    assert_eq!(api.doc_json("render", "").await, json!({"t": "hello world", "m": {"title": "Notes", "count": 3}}));
}

#[tokio::test]
async fn the_document_list_shows_size_updates_last_seq_and_live_connections() {
    let server = TestServer::start();
    let api = Api::new(&server);
    let mut client = Client::synced(&server.url("listed")).await;
    for (i, s) in ["a", "b", "c"].into_iter().enumerate() {
        client.insert(i as u32, s).await;
        client.wait_echo().await;
    }
    let entry = api.listed("listed").await.expect("listed");
    let (rows, snapshots) = read_db(&server.db_path(), "listed");
    let bytes: usize = rows.iter().chain(&snapshots).map(|(_, d)| d.len()).sum();
    assert_eq!(entry["updates"], 3, "{entry}");
    assert_eq!(entry["last_seq"], 3, "{entry}");
    assert_eq!(entry["size"], bytes, "{entry}");
    assert_eq!(entry["connections"], 1, "{entry}");
    assert!(entry["last_change"].as_str().is_some_and(|t| t.ends_with('Z')), "{entry}");

    drop(client);
    eventually("the connection to leave the list", || {
        let api = api.clone();
        async move { api.listed("listed").await.is_some_and(|e| e["connections"] == 0) }
    })
    .await;
}

#[tokio::test]
async fn stats_count_open_connections_loaded_documents_and_users_online() {
    let server = TestServer::start();
    let api = Api::new(&server);
    assert_eq!(
        api.get("/api/stats").await.ok_json(),
        json!({"connections": 0, "documents_loaded": 0, "users_online": 0})
    );
    let client = Client::synced(&server.url("stats")).await;
    assert_eq!(
        api.get("/api/stats").await.ok_json(),
        json!({"connections": 1, "documents_loaded": 1, "users_online": 1})
    );
    drop(client);
    eventually("stats back to zero", || {
        let api = api.clone();
        async move {
            api.get("/api/stats").await.ok_json() == json!({"connections": 0, "documents_loaded": 0, "users_online": 0})
        }
    })
    .await;
}

#[tokio::test]
async fn history_pages_through_the_log_with_after_limit_and_next_after() {
    let server = TestServer::start();
    let api = Api::new(&server);
    let mut client = Client::synced(&server.url("hist")).await;
    for i in 0..5 {
        client.insert(i, "x").await;
        client.wait_echo().await;
    }
    let (rows, _) = read_db(&server.db_path(), "hist");
    let page = |q: &'static str| {
        let api = api.clone();
        async move { api.get(&format!("/api/docs/hist/history{q}")).await.ok_json() }
    };
    let seqs =
        |p: &Value| p["entries"].as_array().unwrap().iter().map(|e| e["seq"].as_u64().unwrap()).collect::<Vec<_>>();

    let all = page("").await;
    assert_eq!(seqs(&all), vec![1, 2, 3, 4, 5]);
    assert_eq!(all["next_after"], Value::Null);
    for (entry, (seq, data)) in all["entries"].as_array().unwrap().iter().zip(&rows) {
        assert_eq!(entry["seq"], *seq);
        assert_eq!(entry["size"], data.len());
        assert_eq!(entry["origin"], "anonymous");
        assert!(entry["time"].as_str().is_some_and(|t| t.len() >= 20 && t.ends_with('Z')), "{entry}");
    }

    let first = page("?limit=2").await;
    assert_eq!((seqs(&first), first["next_after"].clone()), (vec![1, 2], json!(2)));
    let second = page("?after=2&limit=2").await;
    assert_eq!((seqs(&second), second["next_after"].clone()), (vec![3, 4], json!(4)));
    let last = page("?after=4&limit=2").await;
    assert_eq!((seqs(&last), last["next_after"].clone()), (vec![5], Value::Null));
    let past = page("?after=5").await;
    assert_eq!((seqs(&past), past["next_after"].clone()), (vec![], Value::Null));
}

#[tokio::test]
async fn presence_shows_a_clients_awareness_state_with_user_and_cursor() {
    let server = TestServer::start();
    let api = Api::new(&server);
    let mut client = Client::synced(&server.url("pres")).await;
    let id = client.doc.client_id().get();
    client.set_awareness(1, r##"{"user":{"name":"ann","color":"#f00"},"cursor":{"anchor":2,"head":5}}"##).await;
    client.pump_until(|c| c.sees_presence(id), "own awareness echoed").await;

    let presence = api.get("/api/docs/pres/presence").await.ok_json();
    let clients = presence["clients"].as_array().expect("clients");
    assert_eq!(clients.len(), 1, "{presence}");
    let c = &clients[0];
    assert_eq!(c["client_id"], id);
    assert_eq!(c["user"], json!({"name": "ann", "color": "#f00"}));
    assert_eq!(c["cursor"], json!({"anchor": 2, "head": 5}));
    assert_eq!(c["selection"], Value::Null);
    assert_eq!(c["state"]["user"]["name"], "ann");
    for field in ["since", "renewed_at"] {
        assert!(c[field].as_str().is_some_and(|t| t.ends_with('Z')), "{field}: {c}");
    }
}

#[tokio::test]
async fn deleting_a_document_removes_it_from_the_list_and_every_row_from_the_database() {
    let server = TestServer::start();
    let api = Api::new(&server);
    let mut gone = Client::synced(&server.url("gone")).await;
    gone.insert(0, "bye").await;
    gone.set_awareness(1, r#"{"user":"x"}"#).await;
    gone.wait_echo().await;
    let mut kept = Client::synced(&server.url("kept")).await;
    kept.insert(0, "stay").await;
    kept.wait_echo().await;
    api.post("/api/docs/gone/locks/title", None, b"").await.ok_json();
    let id = doc_id(&server, "gone").expect("stored");
    assert_eq!(count_rows(&server, "locks", id), 1);
    let mut events = api.doc_events("gone", None).await;

    let answer = api.delete("/api/docs/gone").await.ok_json();
    assert_eq!(answer, json!({"deleted": "gone"}));
    assert_eq!(gone.closed_with().await, (1001, "document deleted".into()));
    // Its event streams end (after the leave of the closed connection's presence, if any).
    while let Some(e) = events.next().await {
        assert_eq!(e.kind, "presence", "{e:?}");
    }
    assert!(api.listed("gone").await.is_none());
    assert!(api.listed("kept").await.is_some());
    assert_eq!(doc_id(&server, "gone"), None);
    for table in ["updates", "snapshots", "client_owners", "locks", "ot_texts", "ot_ops"] {
        assert_eq!(count_rows(&server, table, id), 0, "{table}");
    }
    api.delete("/api/docs/gone").await.refused(404, "NOT_FOUND");
    // The other document is untouched.
    assert_eq!(Client::synced(&server.url("kept")).await.text(), "stay");
    assert_eq!(read_db(&server.db_path(), "kept").0.len(), 1);
}

// ---------------------------------------------------------------------------------------------
// Refusals: exact status and code, and the document still works.

#[tokio::test]
async fn a_post_without_the_binary_content_type_is_refused_with_415() {
    let server = TestServer::start();
    let api = Api::new(&server);
    let update = writer_update(None, |t, txn| t.insert(txn, 0, "x"));
    for content_type in [None, Some("application/json"), Some("text/plain"), Some("application/octet-streamx")] {
        api.post("/api/docs/ct/update", content_type, &update).await.refused(415, "UNSUPPORTED_MEDIA_TYPE");
    }
    assert!(doc_id(&server, "ct").is_none_or(|id| count_rows(&server, "updates", id) == 0));
    // Parameters after the media type are fine.
    let ok = api.post("/api/docs/ct/update", Some("Application/Octet-Stream; charset=binary"), &update).await;
    assert_eq!(ok.ok_json()["applied"], true);
    still_works(&server, &api, "ct", None).await;
}

#[tokio::test]
async fn a_garbage_body_is_refused_with_400() {
    let server = TestServer::start();
    let api = Api::new(&server);
    for body in [&b"hello, world"[..], &[0xff, 0xff, 0xff], &[], &[1, 1, 7, 0, 0xff]] {
        let message = api.post_update("garbage", body).await.refused(400, "BAD_REQUEST");
        assert!(message.starts_with("update refused"), "{body:?}: {message}");
    }
    // A real update that depends on state the document lacks cannot apply completely.
    let base = Doc::new();
    base.get_or_insert_text("t").insert(&mut base.transact_mut(), 0, "base");
    let orphan = writer_update(Some(&base), |t, txn| t.insert(txn, 2, "!"));
    let message = api.post_update("garbage", &orphan).await.refused(400, "BAD_REQUEST");
    assert!(message.contains("missing dependencies"), "{message}");
    assert!(doc_id(&server, "garbage").is_none_or(|id| count_rows(&server, "updates", id) == 0));
    still_works(&server, &api, "garbage", None).await;
}

#[tokio::test]
async fn a_hostile_update_is_refused_with_400_before_it_reaches_the_document() {
    let server = TestServer::start();
    let api = Api::new(&server);
    let mut deep = vec![1, 1, 7, 0, 8, 1, 1, b'a', 1];
    for _ in 0..7000 {
        deep.extend([117, 1]);
    }
    deep.extend([126, 0]);
    for (update, why) in [
        // 5 bytes declaring 268 million clients (src/validate.rs).
        (vec![0x80, 0x80, 0x80, 0x80, 0x01], "clients"),
        // One struct count of 65535 in 6 bytes.
        (vec![1, 0xff, 0xff, 0x03, 7, 0], "structs"),
        // 7,000 nested arrays.
        (deep, "deep"),
    ] {
        let message = api.post_update("hostile", &update).await.refused(400, "BAD_REQUEST");
        assert!(message.starts_with("update refused"), "{why}: {message}");
    }
    assert!(doc_id(&server, "hostile").is_none_or(|id| count_rows(&server, "updates", id) == 0));
    still_works(&server, &api, "hostile", None).await;
}

#[tokio::test]
async fn a_body_over_the_message_limit_is_refused_with_413() {
    let server = TestServer::start_with(&["--message-bytes-max", "4096"]);
    let api = Api::new(&server);
    let big = writer_update(None, |t, txn| t.insert(txn, 0, &"x".repeat(5000)));
    assert!(big.len() > 4096);
    api.post_update("big", &big).await.refused(413, "PAYLOAD_TOO_LARGE");
    assert!(doc_id(&server, "big").is_none_or(|id| count_rows(&server, "updates", id) == 0));
    still_works(&server, &api, "big", None).await;
}

#[tokio::test]
async fn a_chunked_post_body_is_read_or_refused_but_never_dropped() {
    let server = TestServer::start();
    let api = Api::new(&server);
    // A client that streams its body sends no Content-Length. Refusing that (411) is fine;
    // reading the body as empty is not.
    let mut wrong = Vec::new();
    let update = writer_update(None, |t, txn| t.insert(txn, 0, "streamed"));
    let posted = api.post_chunked("/api/docs/chunked/update", "application/octet-stream", &update).await;
    if posted.status != 411 && (posted.status != 200 || posted.json() != json!({"seq": 1, "applied": true})) {
        wrong.push(format!("a chunked update was answered {} {}", posted.status, posted.text()));
    }
    let lock = api.post_chunked("/api/docs/chunked/locks/k", "application/json", br#"{"ttl_ms": 1000}"#).await;
    if lock.status != 411 {
        let lock = lock.ok_json();
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
        let expires = lock["expires_at_ms"].as_u64().expect("expires_at_ms");
        if expires > now + 1000 {
            wrong.push(format!("a chunked {{\"ttl_ms\": 1000}} took a lock for {} ms", expires - now));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}

#[tokio::test]
async fn documents_named_like_the_operator_routes_are_reachable_over_websocket() {
    let server = TestServer::start();
    for name in ["metrics", "healthz"] {
        let upgrade = tokio_tungstenite::connect_async(server.url(name)).await.map(drop);
        assert!(upgrade.is_ok(), "document {name:?}: {}", upgrade.unwrap_err());
        let mut c = Client::synced(&server.url(name)).await;
        c.insert(0, name).await;
        c.wait_echo().await;
    }
    // The routes themselves still answer plain GETs.
    assert_eq!(Api::new(&server).get("/healthz").await.text(), "ok\n");
}

#[tokio::test]
async fn unknown_routes_get_404_and_wrong_methods_get_405() {
    let server = TestServer::start();
    let api = Api::new(&server);
    for path in ["/api/nope", "/api/docs/x/bogus", "/api/docs/x/texts", "/api/docs/x/locks/k/more"] {
        api.get(path).await.refused(404, "NOT_FOUND");
    }
    for (method, path) in [
        ("PUT", "/api/docs/x/update"),
        ("POST", "/api/docs"),
        ("DELETE", "/api/stats"),
        ("GET", "/api/docs/x"),
        ("POST", "/api/docs/x/json"),
        ("DELETE", "/api/docs/x/history"),
        ("POST", "/api/docs/x/presence"),
        ("POST", "/api/docs/x/events"),
        ("PUT", "/api/docs/x/locks/k"),
        ("DELETE", "/api/docs/x/locks"),
    ] {
        let r = api.request(method, path, &[], &[]).await;
        r.refused(405, "METHOD_NOT_ALLOWED");
    }
    still_works(&server, &api, "x", None).await;
}

#[tokio::test]
async fn with_a_jwt_secret_requests_need_a_token_and_a_grant() {
    let server = auth_server(&[]);
    let writer = mint("alice", &["team/*=write"]);
    let reader = mint("bob", &["team/*=read"]);
    let stranger = mint("eve", &["elsewhere=write"]);
    let update = writer_update(None, |t, txn| t.insert(txn, 0, "x"));

    let anonymous = Api::new(&server);
    for path in ["/api/docs", "/api/stats", "/api/docs/team%2Fa/update", "/api/docs/team%2Fa/json"] {
        anonymous.get(path).await.refused(401, "UNAUTHORIZED");
    }
    anonymous.post_update("team/a", &update).await.refused(401, "UNAUTHORIZED");
    Api::as_user(&server, "not.a.token").get("/api/docs").await.refused(401, "UNAUTHORIZED");
    // `?token=` works like the header.
    assert_eq!(anonymous.get(&format!("/api/stats?token={writer}")).await.status, 200);

    let eve = Api::as_user(&server, &stranger);
    eve.get("/api/docs/team%2Fa/update").await.refused(403, "FORBIDDEN");
    eve.post_update("team/a", &update).await.refused(403, "FORBIDDEN");
    eve.delete("/api/docs/team%2Fa").await.refused(403, "FORBIDDEN");

    let bob = Api::as_user(&server, &reader);
    bob.post_update("team/a", &update).await.refused(403, "FORBIDDEN");
    bob.delete("/api/docs/team%2Fa").await.refused(403, "FORBIDDEN");
    bob.post("/api/docs/team%2Fa/locks/k", None, b"").await.refused(403, "FORBIDDEN");

    let alice = Api::as_user(&server, &writer);
    assert_eq!(alice.post_update("team/a", &update).await.ok_json()["applied"], true);
    assert_eq!(bob.doc_json("team/a", "").await, json!({"t": "x"}), "a read grant reads");
    assert!(bob.listed("team/a").await.is_some());
    assert!(eve.listed("team/a").await.is_none(), "the list holds only documents one may read");
    still_works(&server, &alice, "team/a", Some(&writer)).await;
}

#[tokio::test]
async fn a_bad_state_vector_or_seq_is_refused_and_a_seq_beyond_the_log_is_404() {
    let server = TestServer::start();
    let api = Api::new(&server);
    let mut client = Client::synced(&server.url("q")).await;
    client.insert(0, "two").await;
    client.wait_echo().await;
    client.insert(0, "one ").await;
    client.wait_echo().await;

    let not_base64 = api.get("/api/docs/q/update?sv=%21%21%21").await.refused(400, "BAD_REQUEST");
    assert!(not_base64.contains("base64"), "{not_base64}");
    let not_sv = api.get(&format!("/api/docs/q/update?sv={}", seg(&b64(&[0xff])))).await.refused(400, "BAD_REQUEST");
    assert!(not_sv.contains("state vector"), "{not_sv}");
    api.get("/api/docs/q/update?at=abc").await.refused(400, "BAD_REQUEST");
    api.get("/api/docs/q/json?at=-1").await.refused(400, "BAD_REQUEST");
    api.get("/api/docs/q/history?after=x").await.refused(400, "BAD_REQUEST");
    api.get("/api/docs/q/update?at=3").await.refused(404, "NOT_FOUND");
    api.get("/api/docs/q/json?at=99").await.refused(404, "NOT_FOUND");
    api.get("/api/docs/never-written/update?at=1").await.refused(404, "NOT_FOUND");
    api.get("/api/docs/never-written/history").await.refused(404, "NOT_FOUND");
    // The last seq itself is fine.
    assert_eq!(api.doc_json("q", "?at=2").await, json!({"t": "one two"}));
    still_works(&server, &api, "q", None).await;
}

// ---------------------------------------------------------------------------------------------
// Time travel: `?at=k` is exactly the first k rows of the log.

/// Waits until the log of `name` has `n` rows.
async fn wait_rows(server: &TestServer, name: &str, n: usize) {
    eventually(&format!("{n} rows of {name}"), || async move {
        doc_id(server, name).is_some() && read_db(&server.db_path(), name).0.len() >= n
    })
    .await;
    assert_eq!(read_db(&server.db_path(), name).0.len(), n, "one row per edit");
}

/// Makes `n` updates, one per client edit, each waited for until stored: inserts, deletes
/// and map writes.
async fn make_history(server: &TestServer, name: &str, n: usize) -> Client {
    let mut c = Client::synced(&server.url(name)).await;
    for i in 0..n {
        match i % 4 {
            0 | 1 => {
                let at = (c.text().len() / 2) as u32;
                c.insert(at, &format!("<{i}>")).await
            }
            2 => c.edit(|t, txn| t.remove_range(txn, 0, 2)).await,
            _ => set_map(&mut c, &format!("k{}", i % 3), i as i64).await,
        }
        // A deletion does not advance the client's clock, so its echo cannot be told from
        // the state vector: wait for the row instead.
        wait_rows(server, name, i + 1).await;
    }
    c
}

async fn assert_time_travel_matches_the_log(server: &TestServer, name: &str, n: usize) {
    let api = Api::new(server);
    let (rows, _) = read_db(&server.db_path(), name);
    assert_eq!(rows.iter().map(|(s, _)| *s).collect::<Vec<_>>(), (1..=n as u64).collect::<Vec<_>>());
    for k in 0..=n {
        let replayed = doc_from_updates(rows[..k].iter().map(|(_, d)| d.as_slice()));
        let at = api.state(name, &format!("?at={k}")).await;
        assert_eq!(fingerprint(&at), fingerprint(&replayed), "state at {k}");
        assert_eq!(api.doc_json(name, &format!("?at={k}")).await, fingerprint(&replayed).json, "json at {k}");
    }
    // Without `at`: the live state, the same as the whole log.
    let all = doc_from_updates(rows.iter().map(|(_, d)| d.as_slice()));
    assert_eq!(fingerprint(&api.state(name, "").await), fingerprint(&all));
}

#[tokio::test]
async fn time_travel_returns_the_state_after_exactly_the_first_k_updates() {
    let server = TestServer::start();
    let client = make_history(&server, "tt", 9).await;
    assert!(read_db(&server.db_path(), "tt").1.is_empty(), "no snapshot yet");
    assert_time_travel_matches_the_log(&server, "tt", 9).await;
    assert_eq!(fingerprint(&Api::new(&server).state("tt", "?at=9").await), fingerprint(&client.doc));
}

#[tokio::test]
async fn time_travel_across_snapshots_matches_replaying_the_log() {
    let server = TestServer::start_with(&["--snapshot-updates", "5"]);
    let client = make_history(&server, "snap", 13).await;
    let (_, snapshots) = read_db(&server.db_path(), "snap");
    assert_eq!(snapshots.iter().map(|(s, _)| *s).collect::<Vec<_>>(), vec![5, 10]);
    assert_time_travel_matches_the_log(&server, "snap", 13).await;
    assert_eq!(fingerprint(&Api::new(&server).state("snap", "").await), fingerprint(&client.doc));
}

// ---------------------------------------------------------------------------------------------
// Server-Sent Events.

#[tokio::test]
async fn an_event_stream_sends_each_committed_update_with_its_text_delta() {
    let server = TestServer::start();
    let api = Api::new(&server);
    let mut events = api.doc_events("team/ev", None).await;
    let mut client = Client::synced(&server.url("team/ev")).await;
    client.insert(0, "hello").await;
    let first = events.event("first update").await;
    client.insert(5, " world").await;
    let second = events.event("second update").await;
    let update = writer_update(Some(&client.doc), |t, txn| t.remove_range(txn, 0, 1));
    api.post_update("team/ev", &update).await.ok_json();
    let third = events.event("posted update").await;

    let (rows, _) = read_db(&server.db_path(), "team/ev");
    assert_eq!(rows.len(), 3, "every event is of a committed update");
    assert_eq!((first.id.as_str(), first.kind.as_str()), ("1.0", "update"));
    assert_eq!(
        first.json(),
        json!({"seq": 1, "origin": "anonymous", "size": rows[0].1.len(), "texts": {"t": [{"insert": "hello"}]}})
    );
    assert_eq!((second.id.as_str(), second.kind.as_str()), ("2.0", "update"));
    assert_eq!(
        second.json(),
        json!({"seq": 2, "origin": "anonymous", "size": rows[1].1.len(), "texts": {"t": [{"retain": 5}, {"insert": " world"}]}})
    );
    assert_eq!((third.id.as_str(), third.kind.as_str()), ("3.0", "update"));
    assert_eq!(
        third.json(),
        json!({"seq": 3, "origin": "anonymous", "size": rows[2].1.len(), "texts": {"t": [{"delete": 1}]}})
    );
}

#[tokio::test]
async fn an_event_stream_announces_presence_joins_changes_and_leaves() {
    let server = TestServer::start();
    let api = Api::new(&server);
    let mut events = api.doc_events("presence-ev", None).await;
    let mut watcher = Client::synced(&server.url("presence-ev")).await;
    let mut client = Client::synced(&server.url("presence-ev")).await;
    let id = client.doc.client_id().get();
    client.set_awareness(1, r#"{"user":{"name":"ann"},"cursor":1}"#).await;
    let join = events.event("join").await;
    client.set_awareness(2, r#"{"user":{"name":"ann"},"cursor":4}"#).await;
    let change = events.event("change").await;
    client.insert(0, "x").await;
    let update = events.event("update").await;
    drop(client);
    let leave = events.event("leave").await;
    watcher.pump_until(|c| c.awareness.contains_key(&id) && !c.sees_presence(id), "the leave, at a peer").await;

    // Ids: the seq of the latest update, and the events since it.
    let got: Vec<(&str, &str, Value)> =
        [&join, &change, &update, &leave].into_iter().map(|e| (e.id.as_str(), e.kind.as_str(), e.json())).collect();
    assert_eq!(
        got[0],
        (
            "0.1",
            "presence",
            json!({"client_id": id, "action": "join", "state": {"user": {"name": "ann"}, "cursor": 1}})
        )
    );
    assert_eq!(
        got[1],
        (
            "0.2",
            "presence",
            json!({"client_id": id, "action": "change", "state": {"user": {"name": "ann"}, "cursor": 4}})
        )
    );
    assert_eq!((got[2].0, got[2].1, got[2].2["seq"].clone()), ("1.0", "update", json!(1)));
    assert_eq!(got[3], ("1.1", "presence", json!({"client_id": id, "action": "leave", "state": null})));
}

#[tokio::test]
async fn an_event_stream_announces_lock_changes() {
    let server = TestServer::start();
    let api = Api::new(&server);
    let mut events = api.doc_events("lock-ev", None).await;
    let acquired = api.post("/api/docs/lock-ev/locks/title?ttl=1m", None, b"").await.ok_json();
    let e1 = events.event("acquired").await;
    let renewed = api.post("/api/docs/lock-ev/locks/title?ttl=2m", None, b"").await.ok_json();
    let e2 = events.event("renewed").await;
    api.delete("/api/docs/lock-ev/locks/title").await.ok_json();
    let e3 = events.event("released").await;

    assert_eq!((e1.id.as_str(), e1.kind.as_str()), ("0.1", "lock"));
    assert_eq!(
        e1.json(),
        json!({"key": "title", "holder": "anonymous", "action": "acquired", "expires_at": acquired["expires_at"]})
    );
    assert_eq!((e2.id.as_str(), e2.kind.as_str()), ("0.2", "lock"));
    assert_eq!(
        e2.json(),
        json!({"key": "title", "holder": "anonymous", "action": "renewed", "expires_at": renewed["expires_at"]})
    );
    assert_eq!((e3.id.as_str(), e3.kind.as_str()), ("0.3", "lock"));
    assert_eq!(e3.json()["action"], "released");
}

/// Generates a mix of events on `name`: updates, presence, a lock.
async fn mixed_events(api: &Api, client: &mut Client, name: &str, round: u32) {
    client.set_awareness(round + 1, &format!(r#"{{"round":{round}}}"#)).await;
    client.insert(0, "b").await;
    client.wait_echo().await;
    api.post(&format!("/api/docs/{}/locks/k{round}", seg(name)), None, b"").await.ok_json();
    client.insert(0, "c").await;
    client.wait_echo().await;
}

#[tokio::test]
async fn a_reader_that_reconnects_with_last_event_id_gets_exactly_the_events_it_missed() {
    let server = TestServer::start();
    let api = Api::new(&server);
    // Another reader stays, so the document's events go on while the first is away.
    let mut keeper = api.doc_events("resume", None).await;
    let mut reader = api.doc_events("resume", None).await;
    let mut client = Client::synced(&server.url("resume")).await;
    client.insert(0, "a").await;
    let last_seen = reader.event("first update").await;
    assert_eq!(last_seen.id, "1.0");
    drop(reader);

    mixed_events(&api, &mut client, "resume", 0).await;
    let (_, mut missed) = keeper.until("the first update", |e| e.id == "1.0").await;
    assert!(missed.is_empty());
    let (last, before) = keeper.until("update 3", |e| e.id == "3.0").await;
    missed.extend(before);
    missed.push(last);
    let kinds: Vec<&str> = missed.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(kinds, vec!["presence", "update", "lock", "update"], "{missed:?}");

    let mut resumed = api.doc_events("resume", Some(&last_seen.id)).await;
    for expected in &missed {
        assert_eq!(&resumed.event("a missed event").await, expected);
    }
    client.insert(0, "d").await;
    let next = resumed.event("the next live update").await;
    assert_eq!(next.id, "4.0", "no duplicate and no gap after the replay: {next:?}");
}

#[tokio::test]
async fn a_lone_reader_that_reconnects_gets_every_update_made_while_it_was_away() {
    let server = TestServer::start();
    let api = Api::new(&server);
    let mut reader = api.doc_events("alone", None).await;
    // The client keeps the document loaded while nobody reads its events.
    let mut client = Client::synced(&server.url("alone")).await;
    client.insert(0, "a").await;
    let last_seen = reader.event("first update").await;
    assert_eq!(last_seen.id, "1.0");
    drop(reader);
    eventually("the server to notice the reader left", || {
        let api = api.clone();
        async move { scrape(&api).await.value("yserve_sse_streams") == 0.0 }
    })
    .await;
    for s in ["b", "c", "d"] {
        client.insert(0, s).await;
        client.wait_echo().await;
    }

    let mut resumed = api.doc_events("alone", Some("1.0")).await;
    client.insert(0, "e").await;
    client.wait_echo().await;
    let mut seqs = Vec::new();
    while seqs.last() != Some(&5) {
        let e = resumed.event("updates 2 to 5").await;
        assert_eq!(e.kind, "update", "{e:?}");
        seqs.push(e.json()["seq"].as_u64().unwrap());
        assert!(seqs.len() <= 4, "{seqs:?}");
    }
    assert_eq!(seqs, vec![2, 3, 4, 5], "updates 2 to 4 were made while the reader was away");
}

#[tokio::test]
async fn a_reader_resuming_from_before_the_ring_gets_the_missed_updates_replayed_from_the_log() {
    const EDITS: u64 = 1100; // more than the 1024 events the ring keeps
    let server = TestServer::start();
    let api = Api::new(&server);
    let mut keeper = api.doc_events("ring", None).await;
    let mut reader = api.doc_events("ring", None).await;
    let mut client = Client::synced(&server.url("ring")).await;
    client.insert(0, "a").await;
    assert_eq!(reader.event("first update").await.id, "1.0");
    drop(reader);

    for _ in 0..EDITS {
        client.insert(0, "x").await;
    }
    client.wait_echo().await;
    let last = format!("{}.0", EDITS + 1);
    keeper.until("the last update", |e| e.id == last).await;
    let (rows, _) = read_db(&server.db_path(), "ring");
    assert_eq!(rows.len() as u64, EDITS + 1);

    let mut resumed = api.doc_events("ring", Some("1.0")).await;
    for seq in 2..=EDITS + 1 {
        let e = resumed.event("a replayed update").await;
        assert_eq!((e.id.clone(), e.kind.as_str()), (format!("{seq}.0"), "update"), "{e:?}");
        let data = e.json();
        assert_eq!(data["seq"], seq);
        assert_eq!(data["replayed"], true, "{data}");
        assert_eq!(data["origin"], "anonymous");
        assert_eq!(data["size"], rows[seq as usize - 1].1.len());
        assert!(data.get("texts").is_none(), "replayed updates carry no deltas: {data}");
    }
    client.insert(0, "y").await;
    let live = resumed.event("the next live update").await;
    assert_eq!(live.id, format!("{}.0", EDITS + 2), "{live:?}");
    assert_eq!(live.json()["texts"], json!({"t": [{"insert": "y"}]}));
    assert!(live.json().get("replayed").is_none());
}

#[tokio::test]
async fn server_wide_events_report_documents_opened_and_users_joining_and_leaving() {
    let server = TestServer::start();
    let api = Api::new(&server);
    let mut events = api.events("/api/events", None).await;
    let client = Client::synced(&server.url("srv/doc")).await;
    let opened = events.event("document_opened").await;
    let joined = events.event("user_joined").await;
    drop(client);
    let left = events.event("user_left").await;
    let closed = events.event("document_closed").await;

    assert_eq!((opened.kind.as_str(), opened.json()), ("document_opened", json!({"doc": "srv/doc"})));
    assert_eq!(joined.kind, "user_joined");
    let conn = joined.json()["conn"].clone();
    assert_eq!(joined.json(), json!({"user": "anonymous", "doc": "srv/doc", "conn": conn}));
    assert_eq!(
        (left.kind.as_str(), left.json()),
        ("user_left", json!({"user": "anonymous", "doc": "srv/doc", "conn": conn}))
    );
    assert_eq!((closed.kind.as_str(), closed.json()), ("document_closed", json!({"doc": "srv/doc"})));
    let ids: Vec<u64> = [&opened, &joined, &left, &closed].iter().map(|e| e.id.parse().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
}

#[tokio::test]
async fn server_wide_events_show_only_documents_the_token_may_read() {
    let server = auth_server(&[]);
    let alice = mint("alice", &["alice/*=write"]);
    let bob = mint("bob", &["bob/*=write"]);
    let mut events = Api::as_user(&server, &alice).events("/api/events", None).await;
    let _bobs = Client::synced(&ws_url(&server, "bob/secret-plans", &bob)).await;
    let _alices = Client::synced(&ws_url(&server, "alice/notes", &alice)).await;
    let (_, before) =
        events.until("alice's own join", |e| e.kind == "user_joined" && e.json()["doc"] == "alice/notes").await;
    let leaked: Vec<&SseEvent> = before.iter().filter(|e| e.data.contains("bob")).collect();
    assert!(leaked.is_empty(), "alice (grant alice/*) sees bob's documents: {leaked:?}");
}

// ---------------------------------------------------------------------------------------------
// Locks.

#[tokio::test]
async fn a_lock_is_exclusive_renewed_by_its_holder_and_released_only_by_it() {
    let server = auth_server(&[]);
    let alice = Api::as_user(&server, &mint("alice", &["lk=write"]));
    let bob = Api::as_user(&server, &mint("bob", &["lk=write"]));
    let carol = Api::as_user(&server, &mint("carol", &["lk=read"]));
    let path = "/api/docs/lk/locks/title";

    let taken = alice.post(&format!("{path}?ttl=1m"), None, b"").await.ok_json();
    assert_eq!((taken["key"].clone(), taken["holder"].clone()), (json!("title"), json!("alice")), "{taken}");
    let expires = taken["expires_at_ms"].as_u64().expect("expires_at_ms");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    assert!(expires > now + 50_000 && expires <= now + 60_000, "{taken}");
    assert!(taken["expires_at"].as_str().is_some_and(|t| t.ends_with('Z')), "{taken}");

    let held = bob.post(path, None, b"").await;
    held.refused(409, "LOCKED");
    assert_eq!(held.json()["holder"], "alice");
    assert_eq!(held.json()["expires_at"], taken["expires_at"]);

    let renewed = alice.post(&format!("{path}?ttl=2m"), None, b"").await.ok_json();
    assert_eq!(renewed["holder"], "alice");
    assert!(renewed["expires_at_ms"].as_u64().unwrap() > expires, "{renewed} renews {taken}");
    // The TTL may also come as a JSON body.
    let by_body = alice.post_json(path, &json!({"ttl_ms": 180_000})).await.ok_json();
    assert!(by_body["expires_at_ms"].as_u64().unwrap() > renewed["expires_at_ms"].as_u64().unwrap());

    let refused = bob.delete(path).await;
    refused.refused(409, "LOCKED");
    assert_eq!(refused.json()["holder"], "alice");
    carol.post(path, None, b"").await.refused(403, "FORBIDDEN");
    let listed = carol.get("/api/docs/lk/locks").await.ok_json();
    assert_eq!(listed["locks"].as_array().unwrap().len(), 1);
    assert_eq!(listed["locks"][0]["holder"], "alice");

    assert_eq!(alice.delete(path).await.ok_json()["holder"], "alice");
    alice.delete(path).await.refused(404, "NOT_LOCKED");
    assert_eq!(bob.post(path, None, b"").await.ok_json()["holder"], "bob");
    assert_eq!(alice.get("/api/docs/lk/locks").await.ok_json()["locks"][0]["holder"], "bob");
    for bad in ["?ttl=0s", "?ttl=soon", "?ttl=2days"] {
        bob.post(&format!("{path}{bad}"), None, b"").await.refused(400, "BAD_REQUEST");
    }
}

#[tokio::test]
async fn a_lock_with_a_short_ttl_expires_by_itself() {
    let server = TestServer::start();
    let api = Api::new(&server);
    let mut events = api.doc_events("exp", None).await;
    let mut server_events = api.events("/api/events", None).await;
    let taken = api.post("/api/docs/exp/locks/title?ttl=1s", None, b"").await.ok_json();
    assert_eq!(events.event("acquired").await.json()["action"], "acquired");
    let id = doc_id(&server, "exp").expect("stored");
    assert_eq!(count_rows(&server, "locks", id), 1);

    let (expired, _) = events.until("the lock to expire", |e| e.kind == "lock").await;
    assert_eq!(
        expired.json(),
        json!({"key": "title", "holder": "anonymous", "action": "expired", "expires_at": taken["expires_at"]})
    );
    let (announced, _) = server_events.until("the server-wide lock event", |e| e.json()["action"] == "expired").await;
    assert_eq!(announced.kind, "lock");
    assert_eq!(announced.json(), json!({"doc": "exp", "key": "title", "holder": "anonymous", "action": "expired"}));
    assert_eq!(api.get("/api/docs/exp/locks").await.ok_json(), json!({"locks": []}));
    assert_eq!(count_rows(&server, "locks", id), 0, "the expired lock's row is deleted");
    // Free again.
    assert_eq!(api.post("/api/docs/exp/locks/title", None, b"").await.status, 200);
}

#[tokio::test]
async fn locks_survive_a_restart_and_are_stored_in_the_locks_table() {
    let mut server = TestServer::start();
    let api = Api::new(&server);
    let taken = api.post("/api/docs/team%2Fdoc/locks/body?ttl=10m", None, b"").await.ok_json();
    let id = doc_id(&server, "team/doc").expect("stored");
    let row = with_db(&server.db_path(), |db| {
        db.one("SELECT key, holder, expires_at_ms, expires_at FROM locks WHERE doc_id = ?1", &params![id], |r| {
            Ok((r.text(0)?, r.text(1)?, r.int(2)?, r.text(3)?))
        })
        .unwrap()
    });
    assert_eq!(row.0, "body");
    assert_eq!(row.1, "anonymous");
    assert_eq!(json!(row.2), taken["expires_at_ms"]);
    assert!(!row.3.is_empty());

    server.restart();
    let api = Api::new(&server);
    let listed = api.get("/api/docs/team%2Fdoc/locks").await.ok_json();
    assert_eq!(listed["locks"], json!([taken]));
    // Still held: a renewal says so.
    let mut events = api.doc_events("team/doc", None).await;
    api.post("/api/docs/team%2Fdoc/locks/body?ttl=10m", None, b"").await.ok_json();
    assert_eq!(events.event("renewal").await.json()["action"], "renewed");
}

#[tokio::test]
async fn a_text_locked_by_one_user_refuses_another_users_rest_ot_ops_with_423() {
    let server = auth_server(&[]);
    let alice_token = mint("alice", &["ot=write"]);
    let alice = Api::as_user(&server, &alice_token);
    let bob = Api::as_user(&server, &mint("bob", &["ot=write"]));
    assert_eq!(bob.post("/api/docs/ot/locks/t?ttl=1m", None, b"").await.ok_json()["holder"], "bob");

    let v = alice.get("/api/docs/ot/texts/t").await.ok_json()["v"].as_u64().expect("version");
    let op = |src: &str, text: &str| json!({"v": v, "src": src, "seq": 1, "op": [{"insert": text}]});
    let refused = alice.post_json("/api/docs/ot/texts/t", &op("alice-1", "a")).await;
    let message = refused.refused(423, "ERR_OP_SUBMIT_REJECTED");
    assert!(message.contains("bob"), "{message}");
    bob.post_json("/api/docs/ot/texts/t", &op("bob-1", "b")).await.ok_json();
    let after = alice.get("/api/docs/ot/texts/t").await.ok_json();
    assert_eq!((after["v"].clone(), after["text"].clone()), (json!(v + 1), json!("b")), "{after}");
    // Another text is not locked.
    alice
        .post_json("/api/docs/ot/texts/other", &json!({"v": 1, "src": "alice-1", "seq": 1, "op": [{"insert": "o"}]}))
        .await
        .ok_json();

    // Released: alice's op goes through.
    bob.delete("/api/docs/ot/locks/t").await.ok_json();
    alice.post_json("/api/docs/ot/texts/t", &op("alice-1", "a")).await.ok_json();
    let after = alice.get("/api/docs/ot/texts/t").await.ok_json();
    assert_eq!(after["v"], v + 2, "{after}");
    let text = after["text"].as_str().unwrap().to_owned();
    assert!(text == "ab" || text == "ba", "{text}");
    let client = Client::synced(&ws_url(&server, "ot", &alice_token)).await;
    assert_eq!(client.text(), text);
}

// ---------------------------------------------------------------------------------------------
// Metrics.

/// Checks the exposition line by line (what prometheus-parse tolerates silently): every
/// line is a HELP, a TYPE, or a sample of a family typed before it, with a name, well-formed
/// labels and a float value; no series twice.
fn check_exposition(text: &str) {
    let valid_name = |n: &str| {
        !n.is_empty()
            && n.chars()
                .enumerate()
                .all(|(i, c)| c.is_ascii_alphabetic() || c == '_' || c == ':' || (i > 0 && c.is_ascii_digit()))
    };
    let mut types: std::collections::HashMap<String, String> = Default::default();
    let mut series = std::collections::HashSet::new();
    assert!(text.ends_with('\n'), "ends with a newline");
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').expect("HELP name text");
            assert!(valid_name(name) && !help.is_empty(), "{line}");
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
            assert!(valid_name(name), "{line}");
            assert!(["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind), "{line}");
            assert!(types.insert(name.to_owned(), kind.to_owned()).is_none(), "TYPE twice: {line}");
            continue;
        }
        assert!(!line.starts_with('#') && !line.is_empty(), "unexpected line {line:?}");
        let (series_text, value) = line.rsplit_once(' ').expect("sample value");
        value.parse::<f64>().unwrap_or_else(|_| panic!("value of {line:?}"));
        let (name, labels) = match series_text.split_once('{') {
            Some((name, labels)) => (name, labels.strip_suffix('}').unwrap_or_else(|| panic!("labels of {line:?}"))),
            None => (series_text, ""),
        };
        assert!(valid_name(name), "{line}");
        let mut rest = labels;
        while !rest.is_empty() {
            let (label, after) = rest.split_once("=\"").unwrap_or_else(|| panic!("label in {line:?}"));
            assert!(valid_name(label), "{line}");
            let mut chars = after.char_indices();
            let end = loop {
                match chars.next() {
                    Some((_, '\\')) => {
                        assert!(matches!(chars.next(), Some((_, '\\' | '"' | 'n'))), "escape in {line:?}")
                    }
                    Some((i, '"')) => break i,
                    Some(_) => {}
                    None => panic!("unterminated label value in {line:?}"),
                }
            };
            rest = &after[end + 1..];
            rest = rest.strip_prefix(',').unwrap_or(rest);
        }
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|f| types.get(*f).is_some_and(|k| k == "histogram")))
            .unwrap_or(name);
        assert!(types.contains_key(family), "sample before its TYPE: {line}");
        assert!(series.insert(series_text.to_owned()), "series twice: {line}");
    }
}

struct Scraped {
    samples: Vec<prometheus_parse::Sample>,
}

impl Scraped {
    fn value(&self, name: &str) -> f64 {
        self.find(name, |_| true).unwrap_or_else(|| panic!("no sample {name}"))
    }

    fn find(&self, name: &str, labels: impl Fn(&prometheus_parse::Labels) -> bool) -> Option<f64> {
        use prometheus_parse::Value as V;
        self.samples.iter().filter(|s| s.metric == name && labels(&s.labels)).find_map(|s| match s.value {
            V::Counter(v) | V::Gauge(v) | V::Untyped(v) => Some(v),
            _ => None,
        })
    }

    fn refusals(&self, reason: &str) -> f64 {
        self.find("yserve_refusals_total", |l| l.get("reason") == Some(reason)).unwrap_or(0.0)
    }

    /// A histogram's buckets, checked: cumulative, ending at +Inf, `_count` = the +Inf bucket.
    fn histogram(&self, name: &str) -> Vec<(f64, f64)> {
        let sample = self.samples.iter().find(|s| s.metric == name).unwrap_or_else(|| panic!("no histogram {name}"));
        let prometheus_parse::Value::Histogram(buckets) = &sample.value else { panic!("{name} is not a histogram") };
        let buckets: Vec<(f64, f64)> = buckets.iter().map(|b| (b.less_than, b.count)).collect();
        assert!(buckets.windows(2).all(|w| w[0].0 < w[1].0), "bounds increase: {buckets:?}");
        assert!(buckets.windows(2).all(|w| w[0].1 <= w[1].1), "buckets are cumulative: {buckets:?}");
        let (last_bound, inf_count) = *buckets.last().expect("buckets");
        assert_eq!(last_bound, f64::INFINITY, "{buckets:?}");
        assert_eq!(self.value(&format!("{name}_count")), inf_count, "{name}_count equals the +Inf bucket");
        assert!(self.value(&format!("{name}_sum")) >= 0.0);
        buckets
    }
}

async fn scrape(api: &Api) -> Scraped {
    let r = api.get("/metrics").await;
    assert_eq!(r.status, 200);
    assert!(r.header("content-type").is_some_and(|t| t.starts_with("text/plain; version=0.0.4")), "{:?}", r.headers);
    let text = r.text();
    check_exposition(&text);
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).expect("prometheus text");
    Scraped { samples: scrape.samples }
}

#[tokio::test]
async fn metrics_parse_as_prometheus_text_and_count_the_traffic() {
    let server = TestServer::start();
    let api = Api::new(&server);
    let idle = scrape(&api).await;
    assert_eq!(idle.value("yserve_updates_received_total"), 0.0);
    assert_eq!(idle.value("yserve_connections"), 0.0);
    assert_eq!(idle.histogram("yserve_commit_seconds").last().unwrap().1, 0.0);

    let mut a = Client::synced(&server.url("counted")).await;
    let b = Client::synced(&server.url("counted")).await;
    for i in 0..3 {
        a.insert(i, "x").await;
        a.wait_echo().await;
    }
    let update = writer_update(Some(&a.doc), |t, txn| t.insert(txn, 0, "y"));
    api.post_update("counted", &update).await.ok_json();
    let events = api.doc_events("counted", None).await;
    api.post("/api/docs/counted/update", Some("text/plain"), b"nope").await.refused(415, "UNSUPPORTED_MEDIA_TYPE");

    let m = scrape(&api).await;
    assert_eq!(m.value("yserve_updates_received_total"), 4.0, "three edits and one POST");
    assert!(m.value("yserve_updates_relayed_total") >= 6.0, "each edit to both connections");
    assert!(m.value("yserve_received_bytes_total") > 0.0);
    assert!(m.value("yserve_sent_bytes_total") > 0.0);
    let commits = m.histogram("yserve_commit_seconds");
    assert!(commits.last().unwrap().1 >= 4.0, "every update waited for was its own commit: {commits:?}");
    m.histogram("yserve_commit_batch_size");
    assert_eq!(m.value("yserve_connections"), 2.0);
    assert_eq!(m.value("yserve_documents_loaded"), 1.0);
    assert_eq!(m.value("yserve_sse_streams"), 1.0);
    let stats = api.get("/api/stats").await.ok_json();
    assert_eq!(stats["connections"], 2);
    let reason = "http 415 UNSUPPORTED_MEDIA_TYPE";
    assert_eq!(m.refusals(reason), 1.0);

    api.post("/api/docs/counted/update", None, b"nope").await.refused(415, "UNSUPPORTED_MEDIA_TYPE");
    assert_eq!(scrape(&api).await.refusals(reason), 2.0);

    drop(b);
    eventually("one connection left", || {
        let api = api.clone();
        async move { scrape(&api).await.value("yserve_connections") == 1.0 }
    })
    .await;
    drop((a, events));
}
