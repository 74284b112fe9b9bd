//! Runs yserve inside your own program: `yserve::server::run(config, shutdown)` on a tokio
//! runtime, with a temporary database. Two Yjs clients (plain `yrs` documents speaking the
//! y-websocket protocol over tokio-tungstenite) edit a text; the example reads it back over
//! the REST API, shuts the server down, starts it again on the same database and shows that
//! the text survived.
//!
//! ```sh
//! cargo run --release --example in_process
//! YSERVE_LOG=debug cargo run --release --example in_process   # with the server's logs
//! ```
//!
//! The example binds port 0 itself and hands the listener to `server::run_on`, so it knows
//! the address before the server starts; it then waits until the server answers `/healthz`.

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context};
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message as Frame;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use yrs::sync::{Message, SyncMessage};
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;
use yrs::{Doc, GetString, OffsetKind, Options, ReadTxn, StateVector, Text, Transact, Update};
use yserve::config::Config;

/// The document and its root text, as a JavaScript client would call them:
/// `new WebsocketProvider(url, 'examples/in-process', doc)` and `doc.getText('t')`.
const DOC_NAME: &str = "examples/in-process";
const TEXT: &str = "t";

/// Every wait in this example gives up after this long.
const TIMEOUT: Duration = Duration::from_secs(10);

fn main() -> anyhow::Result<()> {
    let filter = std::env::var("YSERVE_LOG").unwrap_or_else(|_| "warn".into());
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(demo())
}

async fn demo() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("yserve.db");

    // 1. Start the server in this process.
    let server = Server::start(&db).await?;
    println!("server running in-process at http://{} (database {})", server.addr, db.display());

    // 2. Alice connects, syncs and types. The server commits her update to SQLite before it
    //    echoes it back to her, so once she has the echo the text is durable.
    let url = format!("ws://{}/{}", server.addr, DOC_NAME);
    let mut alice = YjsClient::connect(&url).await?;
    println!("alice: connected and synced");
    alice.insert(0, "Hello from yrs!").await?;
    alice.wait_until_committed().await?;
    println!("alice: wrote {:?}; the server committed and echoed it", alice.text());

    // 3. Bob joins later and gets the whole text in the handshake (SyncStep2).
    let mut bob = YjsClient::connect(&url).await?;
    println!("bob: connected and synced, sees {:?}", bob.text());
    if bob.text() != "Hello from yrs!" {
        bail!("bob did not receive alice's text: {:?}", bob.text());
    }

    // 4. Bob edits; alice receives his update live.
    bob.insert(5, ",").await?;
    bob.insert(bob.len() - 1, " and tokio").await?;
    bob.wait_until_committed().await?;
    let expected = "Hello, from yrs and tokio!";
    alice.wait_until(|c| c.text() == expected, "alice to receive bob's edits").await?;
    println!("alice: received bob's edits live: {:?}", alice.text());

    // 5. The REST API renders the same document as JSON.
    let json = http_get(server.addr, &format!("/api/docs/{}/json", encode_segment(DOC_NAME))).await?;
    println!("GET /api/docs/{{name}}/json -> {json}");
    let rendered: serde_json::Value = serde_json::from_str(&json)?;
    if rendered[TEXT] != expected {
        bail!("REST /json shows {rendered}, expected {{\"t\": {expected:?}}}");
    }

    // 6. Shut down cleanly: the server commits what is pending and closes sockets with 1001.
    let closed = tokio::spawn(async move { (alice.closed().await, bob.closed().await) });
    server.stop().await?;
    let (alice_close, bob_close) = closed.await?;
    println!("server stopped; alice's socket closed with {alice_close:?}, bob's with {bob_close:?}");

    // 7. A new server on the same database file still has the text.
    let server = Server::start(&db).await?;
    let carol = YjsClient::connect(&format!("ws://{}/{}", server.addr, DOC_NAME)).await?;
    println!("restarted at http://{}; carol sees {:?}", server.addr, carol.text());
    if carol.text() != expected {
        bail!("the text did not survive the restart: {:?}", carol.text());
    }
    let history = http_get(server.addr, &format!("/api/docs/{}/history", encode_segment(DOC_NAME))).await?;
    println!("GET /api/docs/{{name}}/history -> {history}");
    drop(carol);
    server.stop().await?;
    println!("ok: in-process server, two Yjs clients, REST read-back and restart all worked");
    Ok(())
}

/// `yserve::server::run_on` on this runtime, with a shutdown future we can trigger.
struct Server {
    addr: SocketAddr,
    stop: oneshot::Sender<()>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Server {
    async fn start(db: &Path) -> anyhow::Result<Server> {
        // The clap defaults (and any YSERVE_* environment variables), then our own address
        // and database, as `yserve serve --addr … --db …` would. No JWT key, even if one is
        // in the environment: this example's clients carry no token (anonymous mode, which
        // the server allows on a loopback address).
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let config = Config { addr, db: db.to_owned(), jwt_secret: None, jwt_public_key: None, ..Config::default() };
        let (stop, stopped) = oneshot::channel::<()>();
        let shutdown = async move {
            let _ = stopped.await;
        };
        let task = tokio::spawn(yserve::server::run_on(listener, config, shutdown));
        let server = Server { addr, stop, task };
        server.wait_ready().await?;
        Ok(server)
    }

    /// Polls `/healthz` until the server answers; fails early if `run` returned (a bad config,
    /// the database locked by another server).
    async fn wait_ready(&self) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        loop {
            if self.task.is_finished() {
                bail!("the server stopped while starting");
            }
            if let Ok(body) = http_get(self.addr, "/healthz").await {
                if body.trim() == "ok" {
                    return Ok(());
                }
            }
            if tokio::time::Instant::now() > deadline {
                bail!("the server did not answer /healthz on {} within {TIMEOUT:?}", self.addr);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Triggers the shutdown future and waits for `run` to return.
    async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(());
        // `run` gives documents up to `--shutdown-timeout-ms` (10 s) to drain.
        tokio::time::timeout(Duration::from_secs(20), self.task).await.context("shutdown took too long")??
    }
}

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A minimal y-websocket client: a yrs document and its socket. It answers the server's
/// SyncStep1, applies SyncStep2 and updates, and ignores awareness.
struct YjsClient {
    doc: Doc,
    ws: Socket,
    synced: bool,
    /// What the server has shown it holds: its SyncStep1 state vector plus the highest clock
    /// of every update it sent since. The server relays updates in commit order, so our own
    /// clock in it tells us all our edits were committed and echoed.
    server_has: StateVector,
    close: Option<String>,
}

impl YjsClient {
    /// Connects, sends our SyncStep1 and waits for the server's SyncStep2.
    async fn connect(url: &str) -> anyhow::Result<YjsClient> {
        let (ws, _) = tokio_tungstenite::connect_async(url).await.with_context(|| format!("connecting to {url}"))?;
        // JavaScript clients count text positions in UTF-16 code units; so does this one.
        let doc = Doc::with_options(Options { offset_kind: OffsetKind::Utf16, ..Options::default() });
        let mut client = YjsClient { doc, ws, synced: false, server_has: StateVector::default(), close: None };
        let sv = client.doc.transact().state_vector();
        client.send(Message::Sync(SyncMessage::SyncStep1(sv))).await?;
        client.wait_until(|c| c.synced, "the server's SyncStep2").await?;
        Ok(client)
    }

    fn text(&self) -> String {
        self.doc.get_or_insert_text(TEXT).get_string(&self.doc.transact())
    }

    fn len(&self) -> u32 {
        self.doc.get_or_insert_text(TEXT).len(&self.doc.transact())
    }

    /// Inserts locally and sends the update, as a y-websocket provider does on every change.
    async fn insert(&mut self, index: u32, s: &str) -> anyhow::Result<()> {
        let text = self.doc.get_or_insert_text(TEXT);
        let update = {
            let mut txn = self.doc.transact_mut();
            text.insert(&mut txn, index, s);
            txn.encode_update_v1()
        };
        self.send(Message::Sync(SyncMessage::Update(update))).await
    }

    /// Waits until the server has echoed every edit this client made (committed, SPEC §2).
    async fn wait_until_committed(&mut self) -> anyhow::Result<()> {
        let me = self.doc.client_id();
        let mine = self.doc.transact().state_vector().get(&me);
        self.wait_until(|c| c.server_has.get(&me) >= mine, "the echo of our own edits").await
    }

    /// Waits for the server to close the socket; returns the close code and reason.
    async fn closed(mut self) -> String {
        match self.wait_until(|c| c.close.is_some(), "the close frame").await {
            Ok(()) => self.close.unwrap_or_default(),
            Err(e) => format!("no close frame ({e})"),
        }
    }

    async fn send(&mut self, message: Message) -> anyhow::Result<()> {
        self.ws.send(Frame::Binary(message.encode_v1().into())).await?;
        Ok(())
    }

    /// Reads and handles frames until `done` holds.
    async fn wait_until(&mut self, done: impl Fn(&YjsClient) -> bool, what: &str) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        while !done(self) {
            let frame = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .with_context(|| format!("timed out waiting for {what}"))?;
            match frame {
                Some(Ok(Frame::Binary(bytes))) => self.handle(Message::decode_v1(&bytes)?).await?,
                Some(Ok(Frame::Close(frame))) => {
                    self.close =
                        Some(frame.map_or("no code".into(), |f| format!("{} {}", u16::from(f.code), f.reason)));
                }
                Some(Ok(_)) => {}
                Some(Err(e)) if self.close.is_some() => bail!("socket error after close while waiting for {what}: {e}"),
                Some(Err(e)) => return Err(e.into()),
                None if done(self) => break,
                None => bail!("the socket ended while waiting for {what} (close: {:?})", self.close),
            }
        }
        Ok(())
    }

    async fn handle(&mut self, message: Message) -> anyhow::Result<()> {
        match message {
            // The server's own SyncStep1: answer with what it lacks (our offline edits).
            Message::Sync(SyncMessage::SyncStep1(sv)) => {
                self.server_has.merge(sv.clone());
                let diff = self.doc.transact().encode_state_as_update_v1(&sv);
                self.send(Message::Sync(SyncMessage::SyncStep2(diff))).await?;
            }
            Message::Sync(SyncMessage::SyncStep2(bytes)) | Message::Sync(SyncMessage::Update(bytes)) => {
                let update = Update::decode_v1(&bytes)?;
                // Not `update.state_vector()`: that counts only runs starting at clock 0.
                for (client, ranges) in update.insertions(true).iter() {
                    for range in ranges.iter() {
                        self.server_has.set_max(*client, range.end);
                    }
                }
                self.doc.transact_mut().apply_update(update)?;
                self.synced = true;
            }
            // Awareness (presence) and the rest do not matter here.
            _ => {}
        }
        Ok(())
    }
}

/// A plain HTTP/1.1 GET, enough for this example's two JSON reads without an HTTP client
/// dependency. Returns the body of a 200 answer.
async fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<String> {
    let mut stream = TcpStream::connect(addr).await?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    with_timeout(stream.read_to_end(&mut response)).await??;
    let response = String::from_utf8(response)?;
    let (head, body) = response.split_once("\r\n\r\n").context("no end of headers")?;
    if !head.starts_with("HTTP/1.1 200") {
        bail!("GET {path}: {}", head.lines().next().unwrap_or(head));
    }
    if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        return Ok(dechunk(body));
    }
    Ok(body.to_owned())
}

/// Joins the chunks of a `Transfer-Encoding: chunked` body.
fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else { break };
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].trim_start_matches("\r\n");
    }
    out
}

async fn with_timeout<T>(f: impl Future<Output = T>) -> anyhow::Result<T> {
    tokio::time::timeout(TIMEOUT, f).await.context("timed out")
}

/// A document name as one path segment (`/` becomes `%2F`), as `encodeURIComponent` does.
fn encode_segment(name: &str) -> String {
    percent_encoding::utf8_percent_encode(name, percent_encoding::NON_ALPHANUMERIC).to_string()
}
