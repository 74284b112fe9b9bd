//! Test support: `TestServer` runs the real `yserve` binary on port 0 with a temporary
//! database and can restart it; `Client` is a yrs document speaking the y-websocket
//! protocol over a real WebSocket.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use yrs::sync::awareness::{AwarenessUpdate, AwarenessUpdateEntry};
use yrs::updates::decoder::Decode;
use yrs::{ClientID, Doc, GetString, IdSet, ReadTxn, StateVector, Text, Transact, TransactionMut, Update};
use yserve::protocol::{self, Inbound};
use yserve::store::db::{params, Db};

pub const TIMEOUT: Duration = Duration::from_secs(10);

pub struct TestServer {
    dir: tempfile::TempDir,
    /// The database file when it is not `dir/yserve.db` (e.g. on a test's own mount).
    db: Option<PathBuf>,
    args: Vec<String>,
    child: Option<Child>,
    pub port: u16,
}

impl TestServer {
    pub fn start() -> TestServer {
        Self::start_with(&[])
    }

    pub fn start_with(args: &[&str]) -> TestServer {
        Self::start_on(None, args)
    }

    /// A server on the database file `db` (default: a new temporary one, a fresh PostgreSQL
    /// database when the suite runs on PostgreSQL: `on_postgres`).
    pub fn start_on(db: Option<PathBuf>, args: &[&str]) -> TestServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = db.or_else(|| on_postgres().then(|| PathBuf::from(fresh_postgres_database())));
        let args = args.iter().map(|s| s.to_string()).collect();
        let mut server = TestServer { dir, db, args, child: None, port: 0 };
        server.spawn();
        server
    }

    pub fn db_path(&self) -> PathBuf {
        self.db.clone().unwrap_or_else(|| self.dir.path().join("yserve.db"))
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn spawn(&mut self) {
        // Same port on restart, so the address stays valid for the test.
        let addr = format!("127.0.0.1:{}", self.port);
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.log_path()).expect("log file");
        let mut child = Command::new(env!("CARGO_BIN_EXE_yserve"))
            .arg("serve")
            .args(["--addr", &addr, "--db"])
            .arg(self.db_path())
            .args(&self.args)
            .env("YSERVE_LOG", "debug,yserve=trace")
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn yserve");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).expect("read listening line");
        let port = line
            .trim()
            .strip_prefix("listening on http://")
            .and_then(|a| a.rsplit(':').next())
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("unexpected first line {line:?}; log:\n{}", self.log()));
        self.port = port;
        self.child = Some(child);
    }

    pub fn url(&self, name: &str) -> String {
        format!("ws://127.0.0.1:{}/{}", self.port, name)
    }

    /// SIGTERM and wait; returns the exit status code.
    pub fn stop(&mut self) -> Option<i32> {
        let mut child = self.child.take()?;
        let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().expect("kill");
        assert!(status.success());
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return status.code();
            }
            assert!(std::time::Instant::now() < deadline, "server did not exit after SIGTERM");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().expect("kill -9");
            child.wait().expect("wait");
        }
    }

    pub fn restart(&mut self) {
        assert_eq!(self.stop(), Some(0), "clean exit before restart");
        self.spawn();
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(60).collect();
            // YSERVE_TEST_KEEP_LOGS=DIR keeps the whole log of a failed test there.
            if let Some(dir) = std::env::var_os("YSERVE_TEST_KEEP_LOGS") {
                let to = PathBuf::from(dir).join(format!("server-{}-{}.log", std::process::id(), self.port));
                if std::fs::copy(self.log_path(), &to).is_ok() {
                    eprintln!("--- whole server log kept in {} ---", to.display());
                }
            }
            eprintln!("--- server log (last 60 lines) ---");
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A y-websocket client: a yrs doc, the awareness states it has seen, and its socket.
pub struct Client {
    pub doc: Doc,
    pub ws: Ws,
    pub awareness: std::collections::HashMap<u64, (u32, String)>,
    pub closed: Option<(u16, String)>,
    /// Set once the server's SyncStep2 (the answer to our SyncStep1) has been applied.
    pub synced: bool,
    /// Ids the server has shown it holds: its state vector at connect (its SyncStep1) plus
    /// the insertions of every update it sent since. Our own ids in it prove our edits were
    /// committed and echoed.
    pub server_has: IdSet,
}

impl Client {
    /// Connects and starts the handshake (our SyncStep1); call `sync()` to wait for it.
    pub async fn connect(url: &str) -> Client {
        Self::connect_with_doc(url, new_doc()).await
    }

    pub async fn connect_with_doc(url: &str, doc: Doc) -> Client {
        // Some tests build documents larger than tungstenite's 16 MiB default message cap.
        let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
            .max_message_size(None)
            .max_frame_size(None);
        let (ws, _) = tokio_tungstenite::connect_async_with_config(url, Some(config), false).await.expect("connect");
        let mut client =
            Client { doc, ws, awareness: Default::default(), closed: None, synced: false, server_has: IdSet::new() };
        let sv = client.doc.transact().state_vector();
        client.send(protocol::encode_sync_step1(&sv)).await;
        client
    }

    /// Connects and completes the handshake.
    pub async fn synced(url: &str) -> Client {
        let mut c = Self::connect(url).await;
        c.sync().await;
        c
    }

    pub async fn sync(&mut self) {
        self.pump_until(|c| c.synced, "sync").await;
    }

    pub async fn send(&mut self, frame: impl Into<bytes::Bytes>) {
        self.ws.send(Message::Binary(frame.into())).await.expect("send");
    }

    pub fn text(&self) -> String {
        self.doc.get_or_insert_text("t").get_string(&self.doc.transact())
    }

    /// Edits the local doc and sends the resulting update.
    pub async fn edit(&mut self, f: impl FnOnce(&yrs::TextRef, &mut TransactionMut)) {
        let update = self.edit_offline(f);
        self.send(protocol::encode_update(update)).await;
    }

    /// Edits the local doc only; returns the update.
    pub fn edit_offline(&mut self, f: impl FnOnce(&yrs::TextRef, &mut TransactionMut)) -> Vec<u8> {
        let text = self.doc.get_or_insert_text("t");
        let mut txn = self.doc.transact_mut();
        f(&text, &mut txn);
        txn.encode_update_v1()
    }

    pub async fn insert(&mut self, index: u32, s: &str) {
        self.edit(|t, txn| t.insert(txn, index, s)).await;
    }

    pub async fn set_awareness(&mut self, clock: u32, json: &str) {
        let client_id = ClientID::new(self.doc.client_id().get());
        let update = AwarenessUpdate {
            clients: [(client_id, AwarenessUpdateEntry { clock, json: json.into() })].into_iter().collect(),
        };
        self.send(protocol::encode_awareness(update)).await;
    }

    /// Reads and applies frames until `cond` holds; panics after `TIMEOUT`.
    pub async fn pump_until(&mut self, mut cond: impl FnMut(&Client) -> bool, what: &str) {
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        while !cond(self) {
            let frame = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .unwrap_or_else(|_| panic!("timed out waiting for {what}"));
            match frame {
                Some(Ok(Message::Binary(b))) => self.handle(&b).await,
                Some(Ok(Message::Close(frame))) => {
                    self.closed = Some(
                        frame.map_or((1005, String::new()), |f: CloseFrame| (u16::from(f.code), f.reason.to_string())),
                    );
                    if !cond(self) {
                        panic!("connection closed {:?} while waiting for {what}", self.closed);
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => panic!("socket error while waiting for {what}: {e}"),
                None => panic!("socket ended while waiting for {what} (close {:?})", self.closed),
            }
        }
    }

    /// Reads and applies one frame. False once the connection is over (a close frame, a
    /// reset, or the end of the stream, as when the server was killed).
    pub async fn try_pump(&mut self) -> bool {
        match self.ws.next().await {
            Some(Ok(Message::Binary(b))) => {
                self.handle(&b).await;
                true
            }
            Some(Ok(Message::Close(_))) | Some(Err(_)) | None => false,
            Some(Ok(_)) => true,
        }
    }

    /// Sends a frame; false if the connection is gone.
    pub async fn try_send(&mut self, frame: impl Into<bytes::Bytes>) -> bool {
        self.ws.send(Message::Binary(frame.into())).await.is_ok()
    }

    /// The first clock of this client's own edits the server has not shown back yet.
    pub fn echoed_clock(&self) -> u32 {
        covered_up_to(&self.server_has, self.doc.client_id())
    }

    /// Reads and applies what arrives within `window`. Only the read is timed: a frame once
    /// read is handled completely. (A timeout around `pump_until` can cut the handling of the
    /// server's SyncStep1 in half, so that the SyncStep2 answer is never sent and every later
    /// edit waits at the server for the offline edits it builds on.)
    pub async fn pump_for(&mut self, window: Duration) {
        let deadline = tokio::time::Instant::now() + window;
        while let Ok(frame) = tokio::time::timeout_at(deadline, self.ws.next()).await {
            match frame {
                Some(Ok(Message::Binary(b))) => self.handle(&b).await,
                Some(Ok(Message::Close(frame))) => {
                    self.closed = Some(
                        frame.map_or((1005, String::new()), |f: CloseFrame| (u16::from(f.code), f.reason.to_string())),
                    );
                    return;
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => panic!("socket error while pumping: {e}"),
                None => panic!("socket ended while pumping (close {:?})", self.closed),
            }
        }
    }

    /// Waits for the server to close the connection; returns the close code and reason.
    pub async fn closed_with(&mut self) -> (u16, String) {
        self.pump_until(|c| c.closed.is_some(), "close frame").await;
        self.closed.clone().expect("closed")
    }

    async fn handle(&mut self, frame: &[u8]) {
        match protocol::decode_frame(frame).expect("server sent a malformed frame") {
            Inbound::SyncStep1(sv) => {
                for (client, clock) in sv.iter() {
                    self.server_has.insert(yrs::ID::new(*client, 0), *clock);
                }
                let diff = self.doc.transact().encode_state_as_update_v1(&sv);
                self.send(protocol::encode_sync_step2(diff)).await;
            }
            Inbound::SyncStep2(checked) => {
                self.note_server_state(&checked);
                self.doc.transact_mut().apply_update(checked.update).expect("apply");
                self.synced = true;
            }
            Inbound::Update(checked) => {
                self.note_server_state(&checked);
                self.doc.transact_mut().apply_update(checked.update).expect("apply");
            }
            Inbound::Awareness(update) => {
                for (id, entry) in update.clients {
                    self.awareness.insert(id.get(), (entry.clock, entry.json.to_string()));
                }
            }
            _ => {}
        }
    }

    fn note_server_state(&mut self, update: &Update) {
        self.server_has.merge_with(update.insertions(true));
    }

    /// Waits until the server has echoed every edit this client made.
    pub async fn wait_echo(&mut self) {
        let me = self.doc.client_id();
        let mine = self.state_vector().get(&me);
        self.pump_until(|c| covered_up_to(&c.server_has, me) >= mine, "echo of own edits").await;
    }

    /// Whether a client id has a non-null awareness state, as this client last heard.
    pub fn sees_presence(&self, client_id: u64) -> bool {
        self.awareness.get(&client_id).is_some_and(|(_, json)| json != "null")
    }

    pub fn state_vector(&self) -> StateVector {
        self.doc.transact().state_vector()
    }
}

/// A doc counting in UTF-16 code units, as JavaScript clients do.
pub fn new_doc() -> Doc {
    Doc::with_options(yrs::Options { offset_kind: yrs::OffsetKind::Utf16, ..Default::default() })
}

/// Applies updates to a fresh doc and returns its text root "t".
pub fn text_of_updates<'a>(updates: impl IntoIterator<Item = &'a [u8]>) -> String {
    let doc = Doc::new();
    let text = doc.get_or_insert_text("t");
    {
        let mut txn = doc.transact_mut();
        for u in updates {
            txn.apply_update(Update::decode_v1(u).expect("decode")).expect("apply");
        }
    }
    let s = text.get_string(&doc.transact());
    s
}

/// Whether this run of the suite puts its servers on PostgreSQL (`YSERVE_TEST_STORE=postgres`,
/// with `YSERVE_TEST_PG` naming the server; `scripts/test.sh` runs the suite once on each
/// store).
pub fn on_postgres() -> bool {
    std::env::var("YSERVE_TEST_STORE").is_ok_and(|s| s == "postgres")
}

/// A new empty database on the test PostgreSQL server, as a `--db` URL.
pub fn fresh_postgres_database() -> String {
    let server = std::env::var("YSERVE_TEST_PG").expect("YSERVE_TEST_PG names the test PostgreSQL server");
    yserve::store::postgres::fresh_database(&server).expect("create a test database")
}

/// For a test of SQLite itself (its file, its locks): on a PostgreSQL run it says so and
/// returns `true` (the test then returns; it ran on SQLite in the other run).
pub fn sqlite_only(why: &str) -> bool {
    if on_postgres() {
        eprintln!("skipped on PostgreSQL (a SQLite-only test: {why})");
    }
    on_postgres()
}

/// A connection to a server's database (either store), for reading what it stored. On its
/// own thread: PostgreSQL's client must not be blocked on from a test's runtime.
pub fn with_db<T: Send>(db: &Path, f: impl FnOnce(&mut dyn Db) -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut conn = yserve::store::connect(db, Duration::from_secs(5)).expect("open the database");
            f(&mut *conn)
        })
        .join()
        .expect("database reader")
    })
}

/// The first column of every row of a query without parameters, as text.
pub fn sql_texts(db: &Path, sql: &str) -> Vec<String> {
    with_db(db, |conn| conn.rows(sql, &[], |r| r.text(0)).unwrap())
}

/// Reads the log and snapshots of a document straight from the database.
pub fn read_db(db: &Path, name: &str) -> (Vec<(u64, Vec<u8>)>, Vec<(u64, Vec<u8>)>) {
    with_db(db, |conn| {
        let id = conn.one("SELECT id FROM documents WHERE name = ?1", &params![name], |r| r.int(0)).expect("doc row");
        let mut rows = |sql: &str| conn.rows(sql, &params![id], |r| Ok((r.uint(0)?, r.blob(1)?))).unwrap();
        (
            rows("SELECT seq, data FROM updates WHERE doc_id = ?1 ORDER BY seq"),
            rows("SELECT seq, data FROM snapshots WHERE doc_id = ?1 ORDER BY seq"),
        )
    })
}

/// Waits until the server's log contains `needle`.
pub async fn wait_for_log(server: &TestServer, needle: &str) {
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while !server.log().contains(needle) {
        assert!(tokio::time::Instant::now() < deadline, "log never contained {needle:?}:\n{}", server.log());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Drops a client's TCP connection with a reset: no WebSocket close frame, no FIN.
#[allow(deprecated)] // set_linger: exactly the knob needed here
pub fn reset_connection(client: Client) {
    if let MaybeTlsStream::Plain(tcp) = client.ws.get_ref() {
        tcp.set_linger(Some(Duration::ZERO)).expect("set_linger");
    }
    drop(client);
}

impl TestServer {
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Waits for a server stopped from outside to exit.
    pub fn wait_exit(&mut self) -> Option<i32> {
        self.child.take().and_then(|mut c| c.wait().expect("wait").code())
    }

    /// Starts again after a kill or an external stop.
    pub fn restart_after_crash(&mut self) {
        assert!(self.child.is_none(), "server still running");
        self.spawn();
    }
}

/// The first clock of `client` missing from `set` (every clock below it is present).
pub fn covered_up_to(set: &IdSet, client: ClientID) -> u32 {
    let Some(range) = set.get(&client) else {
        return 0;
    };
    let mut ranges: Vec<std::ops::Range<u32>> = range.iter().map(|(r, _)| r.clone()).collect();
    ranges.sort_by_key(|r| r.start);
    let mut next = 0;
    for r in ranges {
        if r.start > next {
            break;
        }
        next = next.max(r.end);
    }
    next
}

/// Sends ~24 MB of distinct 60 kB inserts from `writer`, one at a time, each echoed: more than
/// the kernel's socket buffers on loopback, so a peer that reads nothing gets most of it
/// queued in the server's backlog for its connection.
pub async fn send_24_mb(writer: &mut Client) {
    for i in 0..400u32 {
        let chunk = format!("{:05}{}", i, "y".repeat(59_995));
        writer.edit(|t, txn| yrs::Text::insert(t, txn, 0, &chunk)).await;
        writer.wait_echo().await;
    }
}

impl TestServer {
    /// The server process's resident set size (`VmRSS` of /proc/PID/status), in KiB.
    pub fn rss_kib(&self) -> u64 {
        rss_kib_of(self.pid())
    }

    /// `GET /metrics`: every sample by its series, `name` or `name{labels}` as rendered.
    pub async fn metrics(&self) -> std::collections::HashMap<String, f64> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let get = async {
            let mut stream = TcpStream::connect(("127.0.0.1", self.port)).await.expect("connect");
            stream
                .write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
                .await
                .expect("write");
            let mut raw = String::new();
            stream.read_to_string(&mut raw).await.expect("read /metrics");
            raw
        };
        let raw = tokio::time::timeout(TIMEOUT, get).await.expect("GET /metrics timed out");
        let (_, body) = raw.split_once("\r\n\r\n").expect("response head");
        body.lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .filter_map(|l| l.rsplit_once(' ').and_then(|(k, v)| Some((k.to_owned(), v.parse().ok()?))))
            .collect()
    }

    /// One sample of `GET /metrics` (0 when absent, as for a refusal counter never bumped).
    pub async fn metric(&self, series: &str) -> f64 {
        self.metrics().await.get(series).copied().unwrap_or(0.0)
    }
}

/// The resident set size of a process, in KiB.
pub fn rss_kib_of(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc/PID/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS line")
}

/// Polls `check` until it holds; panics after `timeout` with what it was waiting for.
pub async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

impl Client {
    /// Connects with a small socket receive buffer (`SO_RCVBUF`, set before `connect` so it
    /// bounds the TCP window): a client that stops reading then holds little in the kernel,
    /// and what the server cannot send waits in its backlog for this connection.
    pub async fn connect_with_receive_buffer(url: &str, bytes: u32) -> Client {
        let port: u16 = url
            .strip_prefix("ws://127.0.0.1:")
            .and_then(|rest| rest.split('/').next())
            .and_then(|p| p.parse().ok())
            .expect("a ws://127.0.0.1:PORT/ url");
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.set_recv_buffer_size(bytes).expect("SO_RCVBUF");
        let tcp = socket.connect(([127, 0, 0, 1], port).into()).await.expect("connect");
        let (ws, _) =
            tokio_tungstenite::client_async(url, MaybeTlsStream::Plain(tcp)).await.expect("WebSocket handshake");
        let doc = new_doc();
        let mut client =
            Client { doc, ws, awareness: Default::default(), closed: None, synced: false, server_has: IdSet::new() };
        let sv = client.doc.transact().state_vector();
        client.send(protocol::encode_sync_step1(&sv)).await;
        client
    }
}
