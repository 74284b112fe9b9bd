//! Crash durability, measured in a loop (SPEC §2: an update is committed before it is relayed
//! or acknowledged, so a process crash loses nothing anyone was told about).
//!
//! One server and one database file for the whole run. Each cycle uses fresh documents, so no
//! client can upload again what the server lost: a writer streams small Yjs updates that an
//! observer receives, while a REST poster posts updates one at a time; the server gets SIGKILL
//! at a random moment. The database must then pass `PRAGMA integrity_check`, and after a
//! restart fresh clients must find every update the observer received or the writer saw
//! echoed, and every post answered with a 2xx.
//!
//! `YSERVE_CRASH_CYCLES` sets the cycles per sync mode (default 50, for CI; RELIABILITY.md
//! records a 1,000-cycle run). `YSERVE_CRASH_SEED` replays the kill moments of a run; what
//! the clients and the server were doing at that moment still depends on scheduling.

use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use yrs::{ReadTxn, Text, Transact};
use yserve::protocol;

use crate::support::{new_doc, on_postgres, Client, TestServer, TIMEOUT};

/// Writer updates sent but not yet echoed, at most.
const WINDOW: usize = 16;
/// The kill comes this long after both clients have synced, at most.
const KILL_WITHIN_US: u64 = 40_000;

#[tokio::test]
async fn nothing_relayed_or_acknowledged_is_lost_to_sigkill_with_sync_full() {
    crash_loop("full").await;
}

#[tokio::test]
async fn nothing_relayed_or_acknowledged_is_lost_to_sigkill_with_sync_normal() {
    crash_loop("normal").await;
}

#[derive(Default)]
struct Tally {
    cycles: u32,
    /// Writer updates that the observer received or the writer saw echoed.
    yjs_checked: usize,
    /// REST posts answered with a 2xx.
    rest_checked: usize,
    lost: usize,
    /// Kills after which `PRAGMA integrity_check` said `ok`.
    intact: u32,
    failures: Vec<String>,
}

async fn crash_loop(sync: &str) {
    let cycles: u32 = env_or("YSERVE_CRASH_CYCLES", 50);
    let seed: u64 = env_or("YSERVE_CRASH_SEED", fastrand::u64(..));
    println!("crash loop, --sync {sync}: seed {seed} (replay with YSERVE_CRASH_SEED={seed}), {cycles} cycles");
    let mut rng = fastrand::Rng::with_seed(seed);
    // Rate limits out of the way (the writer sends as fast as echoes come back), and a low
    // snapshot threshold so that kills also land while snapshots are written.
    let mut server = TestServer::start_with(&[
        "--sync",
        sync,
        "--snapshot-updates",
        "64",
        "--rate-messages-per-sec",
        "1e9",
        "--rate-messages-burst",
        "1e9",
    ]);
    let mut tally = Tally::default();
    for cycle in 0..cycles {
        let kill_after = Duration::from_micros(rng.u64(0..=KILL_WITHIN_US));
        run_cycle(&mut server, cycle, kill_after, &mut tally).await;
    }
    let summary = format!(
        "crash loop, --sync {sync}, seed {seed}: {} cycles, {} Yjs updates and {} REST posts checked, lost {}, \
         integrity_check ok after {} kills",
        tally.cycles, tally.yjs_checked, tally.rest_checked, tally.lost, tally.intact
    );
    println!("{summary}");
    assert!(tally.failures.is_empty(), "{summary}\n{}", tally.failures.join("\n"));
    // Not vacuous: kills do not all land before anything was relayed or acknowledged.
    assert!(tally.yjs_checked > 0 && tally.rest_checked > 0, "{summary}: nothing was checked");
}

async fn run_cycle(server: &mut TestServer, cycle: u32, kill_after: Duration, tally: &mut Tally) {
    let yjs_doc = format!("crash/yjs-{cycle}");
    let rest_doc = format!("crash/rest-{cycle}");
    let writer = Client::synced(&server.url(&yjs_doc)).await;
    let observer = Client::synced(&server.url(&yjs_doc)).await;
    let port = server.port;
    let killer = async {
        tokio::time::sleep(kill_after).await;
        server.kill9();
    };
    let ((writer, ends), observer, posted, ()) = tokio::join!(
        within(cycle, "the writer", write(writer)),
        within(cycle, "the observer", observe(observer)),
        within(cycle, "the REST poster", post(port, &rest_doc)),
        killer
    );
    let what = format!("cycle {cycle} (kill after {kill_after:?})");

    // SQLite's file is the server's to keep whole; PostgreSQL keeps its own (the killed
    // process is yserve, not the database), so there the check is the log itself, below.
    if !on_postgres() {
        let integrity = integrity_check(&server.db_path());
        if integrity == "ok" {
            tally.intact += 1;
        } else {
            tally.failures.push(format!("{what}: integrity_check says {integrity:?}"));
        }
    }
    server.restart_after_crash();

    // Yjs: the observer's text and the writer's echoed edits are prefixes of what the writer
    // wrote; the stored text must be one too, and at least as long as both.
    let written = writer.text();
    let echoed = ends.iter().filter(|&&end| end <= writer.echoed_clock()).count();
    let observed = observer.text();
    if !written.starts_with(&observed) {
        tally
            .failures
            .push(format!("{what}: the observer got …{:?}, not a prefix of what was written", tail(&observed)));
    }
    let needed = echoed.max(tokens(&observed));
    let stored = Client::synced(&server.url(&yjs_doc)).await.text();
    check(tally, &what, "Yjs", needed, &written, &stored);
    tally.yjs_checked += needed;

    // REST: every post answered with a 2xx.
    let Posted { written, acked, refusals } = posted;
    tally.failures.extend(refusals.into_iter().map(|r| format!("{what}: a post got {r}")));
    let stored = Client::synced(&server.url(&rest_doc)).await.text();
    check(tally, &what, "REST", acked, &written, &stored);
    tally.rest_checked += acked;
    tally.cycles += 1;
}

async fn within<T>(cycle: u32, what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(TIMEOUT, f).await.unwrap_or_else(|_| panic!("cycle {cycle}: {what} did not notice the kill"))
}

/// Counts what `stored` lacks of the first `needed` tokens of `written`.
fn check(tally: &mut Tally, what: &str, door: &str, needed: usize, written: &str, stored: &str) {
    if !written.starts_with(stored) {
        tally.failures.push(format!("{what}: {door}: stored …{:?}, not a prefix of what was written", tail(stored)));
        tally.lost += needed;
        return;
    }
    let lost = needed.saturating_sub(tokens(stored));
    if lost > 0 {
        tally.failures.push(format!("{what}: {door}: {lost} of {needed} lost; stored …{:?}", tail(stored)));
        tally.lost += lost;
    }
}

/// The end of a long text, for messages.
fn tail(text: &str) -> &str {
    &text[text.len().saturating_sub(40)..]
}

/// Each update appends one token `"{i};"`.
fn tokens(text: &str) -> usize {
    text.matches(';').count()
}

fn token(i: usize) -> String {
    format!("{i};")
}

/// Streams updates with up to `WINDOW` unechoed, until the connection dies; then reads what
/// is still in the socket. Returns the writer and its clock after each update.
async fn write(mut writer: Client) -> (Client, Vec<u32>) {
    let me = writer.doc.client_id();
    let mut ends = Vec::new();
    loop {
        let echoed = writer.echoed_clock();
        if ends.iter().rev().take_while(|&&end| end > echoed).count() < WINDOW {
            let piece = token(ends.len());
            let update = writer.edit_offline(|t, txn| {
                let at = t.len(txn);
                t.insert(txn, at, &piece)
            });
            ends.push(writer.doc.transact().state_vector().get(&me));
            if !writer.try_send(protocol::encode_update(update)).await {
                break;
            }
            // Sends rarely wait; let the observer, the poster and the killer run.
            tokio::task::yield_now().await;
        } else if !writer.try_pump().await {
            break;
        }
    }
    while writer.try_pump().await {}
    (writer, ends)
}

/// Receives until the connection dies.
async fn observe(mut observer: Client) -> Client {
    while observer.try_pump().await {}
    observer
}

struct Posted {
    /// Every update posted, answered or not.
    written: String,
    /// Posts answered with a 2xx.
    acked: usize,
    /// Answers that were neither a 2xx nor a dead connection.
    refusals: Vec<String>,
}

/// Posts one update at a time to `POST /api/docs/{doc}/update` until the server is gone.
async fn post(port: u16, doc: &str) -> Posted {
    let path =
        format!("/api/docs/{}/update", percent_encoding::utf8_percent_encode(doc, percent_encoding::NON_ALPHANUMERIC));
    let local = new_doc();
    let text = local.get_or_insert_text("t");
    let mut posted = Posted { written: String::new(), acked: 0, refusals: Vec::new() };
    for i in 0.. {
        let piece = token(i);
        let update = {
            let mut txn = local.transact_mut();
            let at = text.len(&txn);
            text.insert(&mut txn, at, &piece);
            txn.encode_update_v1()
        };
        posted.written.push_str(&piece);
        match post_status(port, &path, &update).await {
            Some(status) if (200..300).contains(&status) => posted.acked += 1,
            Some(status) => {
                posted.refusals.push(format!("{status} for post {i}"));
                break;
            }
            None => break,
        }
    }
    posted
}

/// The status of one POST on a fresh connection; `None` if the connection failed before a
/// whole status line came back (the server died).
async fn post_status(port: u16, path: &str, body: &[u8]) -> Option<u16> {
    let mut tcp = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    tcp.write_all(head.as_bytes()).await.ok()?;
    tcp.write_all(body).await.ok()?;
    let mut response = Vec::new();
    // A reset after the status line still counts as an answer.
    let _ = tcp.read_to_end(&mut response).await;
    let response = String::from_utf8_lossy(&response);
    let line = response.split_once("\r\n")?.0;
    line.strip_prefix("HTTP/1.1 ")?.split(' ').next()?.parse().ok()
}

/// `PRAGMA integrity_check` on a crashed server's database, as found: read-only and without
/// the checkpoint on close, so the restarted server recovers the WAL itself.
fn integrity_check(db: &Path) -> String {
    let conn = rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).expect("open db");
    conn.set_db_config(rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, true).expect("no checkpoint");
    let mut stmt = conn.prepare("PRAGMA integrity_check").expect("prepare");
    let rows: Vec<String> = stmt.query_map([], |r| r.get(0)).expect("integrity_check").map(Result::unwrap).collect();
    rows.join("\n")
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) => v.parse().unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
        Err(_) => default,
    }
}
