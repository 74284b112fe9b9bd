//! Floods and slow peers (SPEC §8): an awareness flood, 200 connections that never read, and
//! a thousand connections opened and dropped. Each abuser gets its precise refusal, the
//! server's memory stays bounded (RSS from /proc, generous margins: counts, not times), and
//! the well-behaved clients on the same document are served all along.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use yrs::sync::awareness::{AwarenessUpdate, AwarenessUpdateEntry};
use yrs::{Text, Transact};
use yserve::protocol::{self, Inbound};

use crate::support::{reset_connection, rss_kib_of, wait_until, Client, TestServer};

const MIB: u64 = 1024;

/// Samples a process's RSS every few milliseconds until dropped; `peak_kib()` is the
/// highest seen. Peaks are what a flood costs; a sample, not a bound on the true peak.
struct RssSampler {
    peak: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RssSampler {
    fn start(pid: u32) -> RssSampler {
        let peak = Arc::new(AtomicU64::new(rss_kib_of(pid)));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::spawn({
            let (peak, stop) = (peak.clone(), stop.clone());
            move || {
                while !stop.load(Ordering::Relaxed) {
                    peak.fetch_max(rss_kib_of(pid), Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        });
        RssSampler { peak, stop, thread: Some(thread) }
    }

    fn peak_kib(&self) -> u64 {
        self.peak.load(Ordering::Relaxed)
    }
}

impl Drop for RssSampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// An awareness flood.

const STATE_BYTES_MAX: usize = 4096;
const CLIENTS_PER_CONNECTION_MAX: u64 = 8;

/// A JSON awareness state of exactly `bytes` bytes.
fn state_of(bytes: usize) -> String {
    format!("{{\"p\":\"{}\"}}", "x".repeat(bytes - 8))
}

fn awareness(entries: impl IntoIterator<Item = (u64, u32, String)>) -> bytes::Bytes {
    let clients = entries
        .into_iter()
        .map(|(id, clock, json)| (yrs::ClientID::new(id), AwarenessUpdateEntry { clock, json: json.into() }))
        .collect();
    protocol::encode_awareness(AwarenessUpdate { clients })
}

/// What one flooding connection sends; client ids are `base..` so that every connection's
/// are distinct.
#[derive(Debug, Clone, Copy)]
enum Flood {
    /// One message announcing 50,000 client ids, tiny states: far past the per-connection
    /// count, and ~0.6 MB on the wire.
    ManyIds,
    /// Eight ids (the cap, accepted), then one more in a second message.
    OneIdTooMany,
    /// One state one byte over the limit.
    StateJustTooBig,
    /// One 512 KiB state.
    StateHuge,
    /// 1,000 renewals of one small state as fast as the socket takes them.
    MessageRate,
    /// 1,000 renewals of one 4,000-byte state (under every per-message cap): the bytes
    /// bucket runs out before the message bucket.
    ByteRate,
}

impl Flood {
    fn frames(self, base: u64) -> Vec<bytes::Bytes> {
        let small = || "{\"u\":1}".to_owned();
        match self {
            Flood::ManyIds => vec![awareness((0..50_000).map(|i| (base + i, 1, small())))],
            Flood::OneIdTooMany => vec![
                awareness((0..CLIENTS_PER_CONNECTION_MAX).map(|i| (base + i, 1, small()))),
                awareness([(base + CLIENTS_PER_CONNECTION_MAX, 1, small())]),
            ],
            Flood::StateJustTooBig => vec![awareness([(base, 1, state_of(STATE_BYTES_MAX + 1))])],
            Flood::StateHuge => vec![awareness([(base, 1, state_of(512 * 1024))])],
            Flood::MessageRate => (1..=1000).map(|clock| awareness([(base, clock, small())])).collect(),
            Flood::ByteRate => (1..=1000).map(|clock| awareness([(base, clock, state_of(4000))])).collect(),
        }
    }

    fn refusal(self) -> (u16, String) {
        match self {
            Flood::MessageRate | Flood::ByteRate => (1008, "rate limited".into()),
            _ => (1008, "awareness too large".into()),
        }
    }

    /// Whether a peer may have seen some of this connection's states (accepted before the
    /// refusal). The others must never reach anyone.
    fn partly_accepted(self) -> bool {
        matches!(self, Flood::OneIdTooMany | Flood::MessageRate | Flood::ByteRate)
    }
}

/// Connects, sends the flood (stopping at the first failed write: the server may have closed
/// already), and returns the close code and reason the server sent.
async fn flood(url: String, kind: Flood, base: u64) -> (u16, String) {
    let mut c = Client::synced(&url).await;
    for frame in kind.frames(base) {
        if c.ws.send(Message::Binary(frame)).await.is_err() {
            break;
        }
    }
    c.closed_with().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_awareness_flood_is_refused_precisely_and_the_server_stays_bounded_for_the_others() {
    let server = TestServer::start_with(&[
        "--awareness-state-bytes-max",
        &STATE_BYTES_MAX.to_string(),
        "--awareness-clients-per-connection-max",
        &CLIENTS_PER_CONNECTION_MAX.to_string(),
        "--rate-messages-per-sec",
        "50",
        "--rate-messages-burst",
        "300",
        "--rate-bytes-per-sec",
        "65536",
        "--rate-bytes-burst",
        "1048576",
    ]);
    let url = server.url("crowd");
    let mut calm = Client::synced(&url).await;
    let mut watcher = Client::synced(&url).await;
    calm.set_awareness(1, r#"{"user":"calm"}"#).await;
    let calm_id = calm.doc.client_id().get();
    watcher.pump_until(|c| c.sees_presence(calm_id), "calm's presence").await;

    // Sixteen connections at the caps (eight ids each, states of exactly the limit): accepted.
    let mut full = Vec::new();
    for k in 0..16u64 {
        let mut c = Client::synced(&url).await;
        c.send(awareness(
            (0..CLIENTS_PER_CONNECTION_MAX).map(|i| (1_000_000 + k * 100 + i, 1, state_of(STATE_BYTES_MAX))),
        ))
        .await;
        full.push(c);
    }
    let at_caps = 1.0 + 16.0 * CLIENTS_PER_CONNECTION_MAX as f64;
    wait_until("states at the caps counted", Duration::from_secs(10), || async {
        server.metric("yserve_awareness_states").await == at_caps
    })
    .await;
    let baseline = server.rss_kib();

    // Forty-four flooders at once.
    let kinds = [
        (Flood::ManyIds, 10),
        (Flood::OneIdTooMany, 10),
        (Flood::StateJustTooBig, 5),
        (Flood::StateHuge, 5),
        (Flood::MessageRate, 10),
        (Flood::ByteRate, 4),
    ];
    let sampler = RssSampler::start(server.pid());
    let mut tasks = Vec::new();
    for (n, (kind, count)) in kinds.iter().enumerate() {
        for j in 0..*count as u64 {
            let base = 10_000_000 * (n as u64 + 2) + j * 1_000_000;
            tasks.push((*kind, base, tokio::spawn(flood(url.clone(), *kind, base))));
        }
    }
    let mut refused = Vec::new();
    for (kind, base, task) in tasks {
        let outcome = task.await.expect("flooder task");
        assert_eq!(outcome, kind.refusal(), "{kind:?}");
        refused.push((kind, base));
    }
    // The refused connections' accepted states are removed as they leave; the ones at the
    // caps stay. Exact counts: nothing refused was ever counted.
    wait_until("the flooders' states removed", Duration::from_secs(10), || async {
        server.metric("yserve_awareness_states").await == at_caps
    })
    .await;
    let peak = sampler.peak_kib();
    drop(sampler);
    let after = server.rss_kib();
    eprintln!(
        "awareness flood: RSS baseline {baseline} KiB, peak {peak} KiB (+{} KiB), after {after} KiB",
        peak - baseline
    );
    let metrics = server.metrics().await;
    let refusals = |reason: &str| metrics.get(&format!("yserve_refusals_total{{reason=\"{reason}\"}}")).copied();
    assert_eq!(refusals("1008 awareness too large"), Some(30.0));
    assert_eq!(refusals("1008 rate limited"), Some(14.0));

    // The well-behaved clients carry on: an edit and an awareness change reach the watcher.
    calm.insert(0, "still here").await;
    calm.set_awareness(2, r#"{"user":"calm","cursor":3}"#).await;
    calm.wait_echo().await;
    watcher
        .pump_until(
            |c| c.text() == "still here" && c.awareness.get(&calm_id).is_some_and(|(clock, _)| *clock == 2),
            "calm's edit and awareness",
        )
        .await;
    assert!(calm.closed.is_none() && watcher.closed.is_none());
    // Nothing of a message refused outright reached anyone.
    for (kind, base) in refused.iter().filter(|(k, _)| !k.partly_accepted()) {
        assert!(!watcher.awareness.keys().any(|id| (*base..*base + 1_000_000).contains(id)), "{kind:?} relayed");
    }
    // A generous bound: the states held are 128 × 4 KiB; the flood's messages total ~10 MB
    // and are decoded one at a time per connection.
    assert!(peak - baseline < 64 * MIB, "a flood of refused awareness cost {} KiB", peak - baseline);

    drop(full);
    wait_until("only calm's state left", Duration::from_secs(10), || async {
        server.metric("yserve_awareness_states").await == 1.0
    })
    .await;
}

/// A message naming a million clients (7 MB on the wire, under the 16 MiB message cap) is
/// refused by its declared count, before it is decoded: decoding it first cost ~18 times
/// its size in the server's heap (+124 MB RSS for one, +248 MB for four at once), much of
/// it kept by the allocator afterwards, for a message that was refused anyway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn awareness_naming_a_million_clients_is_refused_before_it_is_decoded() {
    let server = TestServer::start();
    let url = server.url("million");
    let mut calm = Client::synced(&url).await;
    let baseline = server.rss_kib();
    let sampler = RssSampler::start(server.pid());
    let frame = awareness((0..1_000_000).map(|i| (i + 1, 1, "{}".to_owned())));
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let (url, frame) = (url.clone(), frame.clone());
        tasks.push(tokio::spawn(async move {
            let mut c = Client::synced(&url).await;
            let _ = c.ws.send(Message::Binary(frame)).await;
            c.closed_with().await
        }));
    }
    for task in tasks {
        assert_eq!(task.await.expect("flooder"), (1008, "awareness too large".into()));
    }
    let peak = sampler.peak_kib();
    drop(sampler);
    eprintln!(
        "four {:.1} MB awareness messages: RSS baseline {baseline} KiB, peak {peak} KiB (+{} KiB), after {} KiB",
        frame.len() as f64 / 1e6,
        peak - baseline,
        server.rss_kib()
    );
    // Each message is read whole into a buffer before it is looked at: four at once may
    // cost a few times 4 × 7 MB, never the ~18× of decoding them.
    assert!(peak - baseline < 96 * MIB, "refusing four 7 MB messages cost {} KiB", peak - baseline);
    assert_eq!(server.metric("yserve_awareness_states").await, 0.0);
    calm.insert(0, "fine").await;
    calm.wait_echo().await;
}

// ---------------------------------------------------------------------------------------------
// Connections that never read.

const QUEUE_BYTES_MAX: u64 = 64 * 1024;
const NON_READERS: usize = 200;
const READERS: usize = 3;
/// 5 MB for every connection: more than a stalled peer's socket buffers hold (the server's
/// send buffer autotunes to 4 MB on loopback whatever the peer's window; ~2.8 MB of frames
/// fit in it) plus the backlog.
const UPDATES: usize = 320;
const CHUNK_BYTES: usize = 16 * 1024;

/// Update `i` of the stream: 16 KiB appended at the end of the text, starting with its index.
fn chunk(i: usize) -> String {
    let head = format!("{i:06}|");
    format!("{head}{}", "y".repeat(CHUNK_BYTES - head.len()))
}

/// Reads until the whole stream has arrived, checking after every update frame that it was
/// the next one (an update out of order would be held by yrs, one missing or repeated would
/// leave the text at the wrong length). Returns each update's delivery latency, measured
/// from just before the writer sent it, and the reader, still connected.
async fn read_stream(mut reader: Client, sent: Arc<std::sync::Mutex<Vec<Instant>>>) -> (Vec<Duration>, Client) {
    let text = reader.doc.get_or_insert_text("t");
    let mut latencies = Vec::with_capacity(UPDATES);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while latencies.len() < UPDATES {
        let frame = tokio::time::timeout_at(deadline, reader.ws.next()).await.expect("reader timed out");
        let frame = match frame {
            Some(Ok(Message::Binary(b))) => b,
            Some(Ok(Message::Close(f))) => panic!("a reader was closed: {f:?}"),
            Some(Ok(_)) => continue,
            other => panic!("a reader's socket ended: {other:?}"),
        };
        if let Inbound::Update(update) = protocol::decode_frame(&frame).expect("a frame from the server") {
            let arrived = Instant::now();
            reader.doc.transact_mut().apply_update(update.update).expect("apply");
            let n = latencies.len();
            assert_eq!(text.len(&reader.doc.transact()) as usize, (n + 1) * CHUNK_BYTES, "update {n} was next");
            latencies.push(arrived - sent.lock().unwrap()[n]);
        }
    }
    assert_eq!(reader.text(), (0..UPDATES).map(chunk).collect::<String>());
    (latencies, reader)
}

/// Reads a stalled peer's socket at last, discarding the frames the kernel held, until the
/// server's close frame.
async fn close_after_backlog(mut c: Client) -> (u16, String) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match tokio::time::timeout_at(deadline, c.ws.next()).await.expect("no close frame") {
            Some(Ok(Message::Close(f))) => {
                return f.map_or((1005, String::new()), |f| (f.code.into(), f.reason.to_string()))
            }
            Some(Ok(_)) => {}
            other => panic!("a stalled peer's socket ended without a close frame: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_connections_that_never_read_get_1013_and_readers_get_every_update_in_order() {
    let server = TestServer::start_with(&["--outbound-queue-bytes-max", &QUEUE_BYTES_MAX.to_string()]);
    let url = server.url("stream");
    let mut writer = Client::synced(&url).await;
    let sent = Arc::new(std::sync::Mutex::new(Vec::with_capacity(UPDATES)));
    let mut readers = Vec::new();
    for _ in 0..READERS {
        let reader = Client::synced(&url).await;
        readers.push(tokio::spawn(read_stream(reader, sent.clone())));
    }
    // 4 KiB receive buffers (the kernel doubles them): what a stalled peer holds in the
    // kernel stays small, so its backlog fills with a few hundred KiB of stream.
    let mut stalled = Vec::new();
    for _ in 0..NON_READERS {
        let mut c = Client::connect_with_receive_buffer(&url, 4096).await;
        c.sync().await;
        stalled.push(c);
    }
    let baseline = server.rss_kib();
    let sampler = RssSampler::start(server.pid());
    // Each update echoed before the next.
    for i in 0..UPDATES {
        sent.lock().unwrap().push(Instant::now());
        let piece = chunk(i);
        writer.edit(|t, txn| t.insert(txn, (i * CHUNK_BYTES) as u32, &piece)).await;
        writer.wait_echo().await;
    }
    let mut latencies = Vec::new();
    let mut readers_after = Vec::new();
    for reader in readers {
        let (l, r) = reader.await.expect("reader");
        latencies.extend(l);
        readers_after.push(r);
    }
    let peak = sampler.peak_kib();
    drop(sampler);
    latencies.sort();
    let pct = |p: usize| latencies[(latencies.len() * p / 100).min(latencies.len() - 1)];
    eprintln!(
        "{NON_READERS} stalled peers: RSS baseline {baseline} KiB, peak {peak} KiB (+{} KiB); \
         reader latency p50 {:?} p99 {:?} max {:?}",
        peak - baseline,
        pct(50),
        pct(99),
        latencies.last().unwrap()
    );
    // Each stalled peer costs at most its backlog plus the frame that overflowed it (and a
    // socket's worth of bookkeeping); the 16 MiB is for everything else. Unbounded, what
    // their kernel buffers cannot take would be kept for each of them: 200 × 2.4 MB. (Those
    // kernel buffers are not in the server's RSS: see the report in the commit message.)
    let bound = NON_READERS as u64 * (QUEUE_BYTES_MAX + CHUNK_BYTES as u64) * 2 / 1024 + 16 * MIB;
    assert!(peak - baseline < bound, "{NON_READERS} stalled peers cost {} KiB (bound {bound} KiB)", peak - baseline);

    // Each stalled peer, reading at last, gets what the kernel held and then its close.
    let closes: Vec<_> = stalled.into_iter().map(|c| tokio::spawn(close_after_backlog(c))).collect();
    let mut slow = 0;
    for close in closes {
        let (code, reason) = close.await.expect("stalled peer");
        assert_eq!((code, reason.as_str()), (1013, "slow consumer"));
        slow += 1;
    }
    assert_eq!(slow, NON_READERS);
    assert_eq!(server.metric("yserve_refusals_total{reason=\"1013 slow consumer\"}").await, NON_READERS as f64);
    assert!(writer.closed.is_none());
    wait_until("only the writer and the readers left", Duration::from_secs(10), || async {
        server.metric("yserve_connections").await == 1.0 + READERS as f64
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Connection churn.

/// One connect/disconnect cycle; `i` picks how it ends and, every fifth, a document of its own.
async fn churn_once(url_of: impl Fn(&str) -> String, i: usize) {
    let name = if i % 5 == 0 { format!("churn-{i}") } else { "churn".to_owned() };
    let url = url_of(&name);
    match i % 4 {
        // Handshake, presence, edit, then a clean close handshake.
        0 => {
            let mut c = Client::synced(&url).await;
            c.set_awareness(1, r#"{"user":"churn"}"#).await;
            c.insert(0, "x").await;
            c.wait_echo().await;
            c.ws.close(None).await.expect("close");
            while let Some(Ok(_)) = c.ws.next().await {}
        }
        // Handshake and presence, then a TCP reset: no close frame, no FIN.
        1 => {
            let mut c = Client::synced(&url).await;
            c.set_awareness(1, r#"{"user":"churn"}"#).await;
            reset_connection(c);
        }
        // The upgrade only, dropped before a single message (FIN, no close frame).
        2 => {
            let (ws, _) = tokio_tungstenite::connect_async(&url).await.expect("connect");
            drop(ws);
        }
        // Our SyncStep1 sent, dropped before the answer arrives.
        _ => drop(Client::connect(&url).await),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_connections_opened_and_dropped_leave_no_document_and_no_memory_behind() {
    let server = TestServer::start();
    let url_of = |name: &str| server.url(name);
    let settled = |what: &'static str| {
        let server = &server;
        async move {
            wait_until(what, Duration::from_secs(20), || async {
                let m = server.metrics().await;
                let get = |k: &str| m.get(k).copied().unwrap_or(f64::NAN);
                get("yserve_connections") == 0.0
                    && get("yserve_documents_loaded") == 0.0
                    && get("yserve_awareness_states") == 0.0
                    && get("yserve_users_online") == 0.0
            })
            .await
        }
    };
    // A warm-up, so the baseline includes what the first connections allocate for good
    // (runtime, SQLite page cache, allocator arenas).
    for i in 0..100 {
        churn_once(url_of, i).await;
    }
    settled("the warm-up to settle").await;
    let baseline = server.rss_kib();
    let sampler = RssSampler::start(server.pid());
    // Eight at a time, 1,000 cycles.
    for batch in 0..125 {
        futures::future::join_all((0..8).map(|k| churn_once(url_of, 100 + batch * 8 + k))).await;
    }
    settled("every connection gone and every document unloaded").await;
    let peak = sampler.peak_kib();
    drop(sampler);
    let after = server.rss_kib();
    eprintln!("connection churn: RSS baseline {baseline} KiB, peak {peak} KiB, after {after} KiB");
    // Measured: +0.5 MiB. glibc keeps some freed memory in its arenas rather than returning
    // it, so RSS does not come back to the byte; but an idle connection costs ~11 KiB
    // (`--ws-read-buffer-bytes`), and leaking 16 KiB per cycle measured +16.5 MiB here.
    assert!(after < baseline + 8 * MIB, "RSS after churn {after} KiB, baseline {baseline} KiB");
    // And the shared document is intact: every clean cycle's edit was stored.
    let c = Client::synced(&server.url("churn")).await;
    assert_eq!(c.text().len(), (0..1100).filter(|i| i % 4 == 0 && i % 5 != 0).count());
}
