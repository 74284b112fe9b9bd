//! `yserve-loadgen`: the benchmark load generator for yserve, or for any y-websocket server.
//!
//! One subcommand per scenario (BENCHMARKS.md has the commands and the figures):
//! - `idle`: N synced, idle connections over R rooms; the server's RSS per connection.
//! - `latency`: N connections over R rooms and a global scheduler sending `rate` small text
//!   inserts per second; the time from the send until each *other* connection of the room has
//!   received the update, and the server's CPU over the run.
//! - `cold-load`: replays an editing trace through the server into a fresh database, then
//!   restarts the server and times a client getting the whole document.
//! - `ingest`: group-commit throughput of `yserve::store::Store`, in-process.
//!
//! `idle` and `latency` speak y-websocket (one socket per document, `<url>/<room>`) or, with
//! `--protocol hocuspocus`, the Hocuspocus provider protocol (one socket at `<url>/`, every
//! frame prefixed with the document name, Auth before sync), so that yserve and Hocuspocus
//! are measured with the same clients, updates and clocks.
//!
//! The generator is only a client: it reaches servers over loopback WebSockets (or the store
//! in-process), samples the server process through /proc, and every loop in it is bounded in
//! count and time. It runs on one thread so the server keeps most of the machine's cores; its
//! own CPU use is printed beside the server's so a reader can tell who was busy.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc as std_mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, ensure, Context, Result};
use bytes::Bytes;
use clap::{Args, Parser, Subcommand, ValueEnum};
use futures::stream::FuturesOrdered;
use futures::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch, Semaphore};
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{connect_async_with_config, MaybeTlsStream, WebSocketStream};
use yrs::encoding::write::Write;
use yrs::sync::awareness::AwarenessUpdateEntry;
use yrs::sync::{AwarenessUpdate, Message as YMessage, SyncMessage};
use yrs::updates::decoder::Decode;
use yrs::{ClientID, Doc, GetString, ReadTxn, StateVector, Text, Transact, Update};

use yserve::config::{Config, SyncMode};
use yserve::hocuspocus::{self, Address, Frame as HFrame, Message as HMessage};
use yserve::protocol;
use yserve::store::{Store, StoreError};

/// Longest wait for a TCP connect plus WebSocket upgrade.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for the server's SyncStep2 after connecting.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest wait for a spawned server's `listening on` line.
const SERVER_START_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest wait for a spawned server to exit after SIGTERM before it is killed.
const SERVER_STOP_TIMEOUT: Duration = Duration::from_secs(20);
/// Longest silence from the server while updates are still expected back.
const RECEIVE_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Connections being opened at once; more overflows the listen backlog for no gain.
const CONNECTS_IN_FLIGHT_MAX: usize = 64;
/// Server settings for the cold-load write phase: rate limits out of the way (via the env twins of the flags).
const BULK_IMPORT_ENV: &[(&str, &str)] = &[
    ("YSERVE_RATE_MESSAGES_PER_SEC", "1000000000"),
    ("YSERVE_RATE_MESSAGES_BURST", "1000000000"),
    ("YSERVE_RATE_BYTES_PER_SEC", "1000000000000"),
    ("YSERVE_RATE_BYTES_BURST", "1000000000000"),
];
/// Root text of every benchmark document.
const TEXT_NAME: &str = "text";

#[derive(Debug, Parser)]
#[command(name = "yserve-loadgen", about = "Benchmark load generator for yserve and other y-websocket servers")]
struct Cli {
    #[command(subcommand)]
    command: Scenario,
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// Server RSS per idle, synced connection.
    Idle(IdleArgs),
    /// Delivery latency of small text inserts to the other connections of a room.
    Latency(LatencyArgs),
    /// Time for a client to get a long-edited document from a freshly restarted server.
    ColdLoad(ColdLoadArgs),
    /// Committed updates per second through the group-committing store (in-process).
    Ingest(IngestArgs),
}

/// Which server to load. Without `--url`, a yserve is spawned on a fresh temporary database
/// (its pid is then known, so RSS and CPU are sampled without `--pid`).
#[derive(Debug, Args)]
struct TargetArgs {
    /// Base WebSocket URL of a running server: with `--protocol yjs` rooms are `<url>/<room>`;
    /// with `--protocol hocuspocus` every connection opens `<url>` itself (`/` if it has no path).
    #[arg(long)]
    url: Option<String>,
    /// Wire protocol of the simulated clients.
    #[arg(long, value_enum, default_value = "yjs")]
    protocol: Protocol,
    /// Pid of the server behind `--url`, for RSS and CPU samples from /proc.
    #[arg(long)]
    pid: Option<u32>,
    /// yserve binary to spawn when `--url` is not given.
    #[arg(long, default_value = "target/release/yserve")]
    server_bin: PathBuf,
    /// Extra argument for the spawned server, repeatable: `--server-arg=--sync=normal`.
    #[arg(long = "server-arg", allow_hyphen_values = true)]
    server_args: Vec<String>,
    /// Have the spawned server log every store transaction (trace level) and report their
    /// durations: how much of the latency is the commit, fsync included. The logging costs
    /// the server some CPU, so CPU figures are taken without it.
    #[arg(long)]
    commit_times: bool,
    /// Room names are `<prefix>-<i>`; the default prefix is unique per run, so a long-lived
    /// server never hands old content to a new run.
    #[arg(long)]
    room_prefix: Option<String>,
    /// Run the spawned server on a PostgreSQL server (`postgres://USER@HOST:PORT/DB`), in a
    /// fresh database created on it for the run, instead of a SQLite file.
    #[arg(long)]
    postgres: Option<String>,
}

/// The client protocols the generator speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Protocol {
    /// y-websocket (y-protocols frames, the document in the URL path).
    Yjs,
    /// The Hocuspocus provider protocol (document name before every frame, Auth first).
    Hocuspocus,
}

#[derive(Debug, Args)]
struct IdleArgs {
    #[command(flatten)]
    target: TargetArgs,
    /// Connections to open.
    #[arg(long, default_value_t = 1000)]
    conns: usize,
    /// Rooms (documents) they are spread over: connection i joins room i mod rooms.
    #[arg(long, default_value_t = 100)]
    rooms: usize,
    /// Wait after connecting (and after closing) before sampling RSS, in milliseconds.
    #[arg(long, default_value_t = 3000)]
    settle_ms: u64,
    /// Do not announce an awareness state (the stock y-websocket provider announces `{}`).
    #[arg(long)]
    no_awareness: bool,
}

#[derive(Debug, Args)]
struct LatencyArgs {
    #[command(flatten)]
    target: TargetArgs,
    /// Connections to open.
    #[arg(long, default_value_t = 1000)]
    conns: usize,
    /// Rooms (documents) they are spread over: connection i joins room i mod rooms.
    #[arg(long, default_value_t = 100)]
    rooms: usize,
    /// Updates per second, over all rooms.
    #[arg(long, default_value_t = 500)]
    rate: u64,
    /// Length of the sending phase in seconds.
    #[arg(long, default_value_t = 30)]
    secs: u64,
    /// Longest wait for outstanding deliveries after the last send, in milliseconds.
    #[arg(long, default_value_t = 10_000)]
    drain_ms: u64,
    /// Wait between connecting and the first send, in milliseconds.
    #[arg(long, default_value_t = 2000)]
    settle_ms: u64,
}

#[derive(Debug, Args)]
struct ColdLoadArgs {
    /// Editing trace: gzipped JSON `{startContent, endContent, txns: [{patches}]}`.
    #[arg(long, default_value = "../shared/data/automerge-paper.json.gz")]
    trace: PathBuf,
    /// yserve binary, started and restarted by this scenario.
    #[arg(long, default_value = "target/release/yserve")]
    server_bin: PathBuf,
    /// Extra argument for the server, repeatable: `--server-arg=--snapshot-updates=500`.
    #[arg(long = "server-arg", allow_hyphen_values = true)]
    server_args: Vec<String>,
    /// Database to use. If it exists it is reused as written by an earlier run (the write
    /// phase is skipped); without it a temporary one is written and removed at the end.
    #[arg(long)]
    db: Option<PathBuf>,
    /// Timed loads, each after a fresh server start.
    #[arg(long, default_value_t = 10)]
    runs: usize,
    /// Updates sent but not yet echoed back (committed) during the write phase.
    #[arg(long, default_value_t = 4096)]
    window: usize,
    #[arg(long, default_value = "automerge-paper")]
    doc: String,
}

#[derive(Debug, Args)]
struct IngestArgs {
    /// Updates to append: one typed character each, as a Yjs client encodes it.
    #[arg(long, default_value_t = 200_000)]
    updates: u64,
    /// Documents the updates are spread over (round robin).
    #[arg(long, default_value_t = 1)]
    docs: u64,
    /// Appends queued but not yet acknowledged.
    #[arg(long, default_value_t = 8192)]
    inflight: usize,
    #[arg(long, value_enum, default_value = "full")]
    sync: SyncMode,
    /// Most appends per transaction (the server's `--store-batch-max`).
    #[arg(long, default_value_t = 4096)]
    batch_max: usize,
    /// A PostgreSQL server (`postgres://USER@HOST:PORT/DB`) to run on, in a fresh database
    /// created on it for the run, instead of a SQLite file in a temporary directory.
    #[arg(long)]
    postgres: Option<String>,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    // One thread: the load generator must not take the cores the server is measured on.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        match cli.command {
            Scenario::Idle(args) => idle(args).await,
            Scenario::Latency(args) => latency(args).await,
            Scenario::ColdLoad(args) => cold_load(args).await,
            Scenario::Ingest(args) => ingest(args).await,
        }
    })
}

// ---------------------------------------------------------------------------------------------
// Process samples from /proc
// ---------------------------------------------------------------------------------------------

/// Resident set size of a process (`VmRSS` of /proc/PID/status), in KiB.
fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS line")
}

/// User and system CPU time of a process so far, in clock ticks (fields 14 and 15 of
/// /proc/PID/stat; counted after the `)` that closes the command name, which may hold spaces).
fn cpu_ticks(pid: &str) -> Result<(u64, u64)> {
    let stat =
        std::fs::read_to_string(format!("/proc/{pid}/stat")).with_context(|| format!("reading /proc/{pid}/stat"))?;
    let after_name = &stat[stat.rfind(')').context("malformed stat")? + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let field = |i: usize| -> Result<u64> { fields.get(i).and_then(|f| f.parse().ok()).context("malformed stat") };
    // `after_name` starts at field 3 (state), so field 14 (utime) is index 11.
    Ok((field(11)?, field(12)?))
}

/// Clock ticks per second for /proc/PID/stat, from `getconf CLK_TCK` (100 on Linux when
/// getconf is missing, which is what the kernel uses on every mainstream architecture).
fn clock_ticks_per_sec() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100)
}

/// CPU use of a process over an interval.
struct CpuWindow {
    pid: String,
    ticks: (u64, u64),
    writes: Option<u64>,
    at: Instant,
}

/// CPU use over a window, in percent of one core.
struct CpuUse {
    user: f64,
    system: f64,
    wall_secs: f64,
    /// Write-type system calls (write, writev, send…) over the window, from `syscw` of
    /// /proc/PID/io, when readable: how well the process coalesced its sends.
    writes: Option<u64>,
}

impl CpuUse {
    /// CPU time over the window divided among `count` events, in microseconds each.
    fn micros_each(&self, count: u64) -> f64 {
        (self.user + self.system) / 100.0 * self.wall_secs * 1e6 / count.max(1) as f64
    }
}

impl std::fmt::Display for CpuUse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:.1} % of one core ({:.1} user + {:.1} system)", self.user + self.system, self.user, self.system)
    }
}

impl CpuWindow {
    fn start(pid: &str) -> Result<CpuWindow> {
        Ok(CpuWindow { pid: pid.to_string(), ticks: cpu_ticks(pid)?, writes: write_syscalls(pid), at: Instant::now() })
    }

    fn stop(&self) -> Result<CpuUse> {
        let (user, system) = cpu_ticks(&self.pid)?;
        let wall_secs = self.at.elapsed().as_secs_f64();
        let percent = |ticks: u64| 100.0 * ticks as f64 / clock_ticks_per_sec() as f64 / wall_secs;
        let writes = match (self.writes, write_syscalls(&self.pid)) {
            (Some(before), Some(after)) => Some(after.saturating_sub(before)),
            _ => None,
        };
        Ok(CpuUse { user: percent(user - self.ticks.0), system: percent(system - self.ticks.1), wall_secs, writes })
    }
}

/// `syscw` of /proc/PID/io: write-type system calls so far (None if unreadable).
fn write_syscalls(pid: &str) -> Option<u64> {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).ok()?;
    io.lines().find_map(|l| l.strip_prefix("syscw:")).and_then(|v| v.trim().parse().ok())
}

/// The soft `Max open files` limit of this process (from /proc/self/limits).
fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

fn check_open_files(conns: usize) {
    if let Some(limit) = open_files_limit() {
        if (limit as usize) < conns + 64 {
            eprintln!(
                "warning: open files limit is {limit}, {conns} connections need more: run `ulimit -n {}` first \
                 (in the server's shell too)",
                conns * 2 + 256
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// A spawned yserve
// ---------------------------------------------------------------------------------------------

/// What the server's debug `document loaded` log line says about one load.
#[derive(Debug, Clone)]
struct LoadLog {
    elapsed_us: u64,
    tail: u64,
    snapshot: String,
}

/// What the server's trace-level `store batch` log line says about one store transaction.
#[derive(Debug, Clone)]
struct CommitLog {
    commands: u64,
    elapsed_us: u64,
}

/// Where the log reader thread sends what it parses.
struct LogSinks {
    loads: std_mpsc::Sender<LoadLog>,
    commits: std_mpsc::Sender<CommitLog>,
}

/// A yserve child process on `127.0.0.1:0`. Its JSON logs are read on a thread: warnings and
/// errors are echoed to our stderr, `document loaded` lines are parsed into `loads` and, when
/// asked for, `store batch` lines into `commits`. Dropping it kills the process, so no server
/// outlives the benchmark.
struct ServerProcess {
    child: Child,
    addr: String,
    loads: std_mpsc::Receiver<LoadLog>,
    commits: std_mpsc::Receiver<CommitLog>,
}

impl ServerProcess {
    /// `env` is passed on top of ours; settings go there rather than into flags when an older yserve may not
    /// know them (clap refuses an unknown flag, an unknown variable is ignored).
    fn spawn(
        bin: &Path,
        db: &Path,
        extra_args: &[String],
        env: &[(&str, &str)],
        log_commits: bool,
    ) -> Result<ServerProcess> {
        let filter =
            if log_commits { "warn,yserve::document=debug,yserve::store=trace" } else { "warn,yserve::document=debug" };
        let mut child = Command::new(bin)
            .args(["serve", "--addr", "127.0.0.1:0", "--log-format", "json", "--db"])
            .arg(db)
            .args(extra_args)
            .env("YSERVE_LOG", filter)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {} (build it with `cargo build --release`)", bin.display()))?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let stderr = child.stderr.take().expect("stderr is piped");
        let (addr_tx, addr_rx) = std_mpsc::channel();
        // Both pipes are drained until the process exits, so the server never blocks on a
        // full pipe; the threads end with it.
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(addr) = line.split("listening on http://").nth(1) {
                    let _ = addr_tx.send(addr.trim().to_string());
                }
            }
        });
        let (loads_tx, loads) = std_mpsc::channel();
        let (commits_tx, commits) = std_mpsc::channel();
        let sinks = LogSinks { loads: loads_tx, commits: commits_tx };
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                handle_server_log(&line, &sinks);
            }
        });
        match addr_rx.recv_timeout(SERVER_START_TIMEOUT) {
            Ok(addr) => Ok(ServerProcess { child, addr, loads, commits }),
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                bail!("{} printed no `listening on` line", bin.display())
            }
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn url(&self) -> String {
        format!("ws://{}", self.addr)
    }

    /// SIGTERM (the server commits what is pending and exits 0), bounded by a timeout.
    fn stop(mut self) -> Result<()> {
        let pid = self.pid().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + SERVER_STOP_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait()? {
                ensure!(status.success(), "server exited with {status}");
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("server did not exit within {SERVER_STOP_TIMEOUT:?} of SIGTERM; killed");
            }
            thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn handle_server_log(line: &str, sinks: &LogSinks) {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
        eprintln!("server: {line}");
        return;
    };
    let fields = &v["fields"];
    if fields["message"] == "store batch" {
        let _ = sinks.commits.send(CommitLog {
            commands: fields["commands"].as_u64().unwrap_or(0),
            elapsed_us: fields["elapsed_us"].as_u64().unwrap_or(0),
        });
    } else if fields["message"] == "document loaded" {
        let _ = sinks.loads.send(LoadLog {
            elapsed_us: fields["elapsed_us"].as_u64().unwrap_or(0),
            tail: fields["tail"].as_u64().unwrap_or(0),
            snapshot: fields["snapshot"].as_str().map(str::to_string).unwrap_or_else(|| fields["snapshot"].to_string()),
        });
    } else if matches!(v["level"].as_str(), Some("WARN" | "ERROR")) {
        eprintln!("server: {line}");
    }
}

/// A folder under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(what: &str) -> Result<TempDir> {
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH)?.as_nanos();
        let dir = std::env::temp_dir().join(format!("yserve-loadgen-{what}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        Ok(TempDir(dir))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The server under load: either given (`--url`, `--pid`) or spawned on a fresh database.
struct Target {
    url: String,
    pid: Option<u32>,
    protocol: Protocol,
    room_prefix: String,
    // Field order is drop order: the server stops before its database folder goes.
    server: Option<ServerProcess>,
    _dir: Option<TempDir>,
}

impl Target {
    fn start(args: &TargetArgs) -> Result<Target> {
        let run_id = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
        let room_prefix = args.room_prefix.clone().unwrap_or_else(|| format!("bench-{run_id:x}"));
        if let Some(url) = &args.url {
            ensure!(is_loopback_url(url), "only loopback servers are benchmarked: {url}");
            return Ok(Target {
                url: url.trim_end_matches('/').to_string(),
                pid: args.pid,
                protocol: args.protocol,
                room_prefix,
                server: None,
                _dir: None,
            });
        }
        let dir = TempDir::new("db")?;
        let db = match &args.postgres {
            Some(server) => PathBuf::from(yserve::store::postgres::fresh_database(server)?),
            None => dir.0.join("yserve.db"),
        };
        let server = ServerProcess::spawn(&args.server_bin, &db, &args.server_args, &[], args.commit_times)?;
        eprintln!("spawned {} (pid {}) at {}", args.server_bin.display(), server.pid(), server.url());
        Ok(Target {
            url: server.url(),
            pid: Some(server.pid()),
            protocol: args.protocol,
            room_prefix,
            server: Some(server),
            _dir: Some(dir),
        })
    }

    /// The socket URL for a client of `room` and how that client frames its messages.
    fn client(&self, room: usize) -> (String, Wire) {
        let doc = format!("{}-{room}", self.room_prefix);
        match self.protocol {
            Protocol::Yjs => (format!("{}/{doc}", self.url), Wire::Yjs),
            Protocol::Hocuspocus => {
                // `ws://host:port` has no path yet (the trailing `/` was trimmed): the root.
                let has_path = self.url.splitn(4, '/').nth(3).is_some_and(|p| !p.is_empty());
                let url = if has_path { self.url.clone() } else { format!("{}/", self.url) };
                (url, Wire::hocuspocus(&doc).expect("room names are document names"))
            }
        }
    }
}

fn is_loopback_url(url: &str) -> bool {
    let rest = url.strip_prefix("ws://").unwrap_or("");
    ["127.", "localhost", "[::1]"].iter().any(|p| rest.starts_with(p))
}

// ---------------------------------------------------------------------------------------------
// y-websocket client
// ---------------------------------------------------------------------------------------------

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Client socket settings: a small read buffer keeps a thousand connections cheap in this
/// process; large messages (a whole document in SyncStep2) still arrive, in several reads.
fn ws_config(read_buffer_bytes: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(read_buffer_bytes)
        .max_message_size(Some(256 << 20))
        .max_frame_size(Some(256 << 20))
}

/// TCP connect and WebSocket upgrade, with Nagle off as browsers have it for WebSockets.
async fn connect(url: &str, read_buffer_bytes: usize) -> Result<Ws> {
    let (ws, _response) =
        timeout(CONNECT_TIMEOUT, connect_async_with_config(url, Some(ws_config(read_buffer_bytes)), true))
            .await
            .with_context(|| format!("connecting to {url} timed out"))?
            .with_context(|| format!("connecting to {url}"))?;
    Ok(ws)
}

fn binary(frame: Bytes) -> Message {
    Message::Binary(frame)
}

/// The awareness update a stock `WebsocketProvider` sends on open: its local state, which
/// y-protocols initialises to `{}` at clock 0.
fn awareness_hello(client_id: ClientID) -> Bytes {
    let entry = AwarenessUpdateEntry { clock: 0, json: Arc::from("{}") };
    protocol::encode_awareness(AwarenessUpdate { clients: HashMap::from([(client_id, entry)]) })
}

/// A server message as this client uses it.
#[derive(Debug)]
enum FromServer {
    SyncStep1(StateVector),
    SyncStep2(Update),
    Update(Update),
    /// Hocuspocus's connection-level Ping (v4), to be answered with a Pong.
    Ping,
    /// Awareness, auth, query-awareness, sync status and custom messages: not needed by these
    /// scenarios.
    Other,
}

/// Decodes a y-websocket server message with `yrs::sync` itself rather than with yserve's
/// inbound decoder: the generator must work against any server, and the server's decoder
/// applies server-side limits that are no business of a client's.
fn decode_from_server(frame: &[u8]) -> Result<FromServer> {
    match YMessage::decode_v1(frame).context("undecodable message from the server")? {
        YMessage::Sync(sync) => from_sync(sync),
        _ => Ok(FromServer::Other),
    }
}

fn from_sync(msg: SyncMessage) -> Result<FromServer> {
    let update = |bytes: Vec<u8>| Update::decode_v1(&bytes).context("undecodable update");
    Ok(match msg {
        SyncMessage::SyncStep1(sv) => FromServer::SyncStep1(sv),
        SyncMessage::SyncStep2(bytes) => FromServer::SyncStep2(update(bytes)?),
        SyncMessage::Update(bytes) => FromServer::Update(update(bytes)?),
    })
}

/// How a client frames messages on its socket: the one difference between the protocols
/// that the scenarios see. Handshake, updates, timestamps and decoding of the updates are the
/// same code for both.
#[derive(Debug, Clone)]
enum Wire {
    /// y-websocket: a y-protocols message is the whole frame; the document is in the URL.
    Yjs,
    /// Hocuspocus: `varString(address) · varUint(type) · body`; the socket could carry more
    /// documents, each of these clients attaches one. The codec is the server's own
    /// (`yserve::hocuspocus`), which decodes frames of either direction.
    Hocuspocus { address: Address },
}

/// Sent after the token where a v4 provider sends its version.
const HOCUSPOCUS_PROVIDER_VERSION: &str = concat!("yserve-loadgen/", env!("CARGO_PKG_VERSION"));

impl Wire {
    fn hocuspocus(doc: &str) -> Result<Wire> {
        Ok(Wire::Hocuspocus { address: Address::parse(doc).context("room name is not a document name")? })
    }

    /// Frames a y-protocols Sync or Awareness message. Hocuspocus uses the same type numbers
    /// (0, 1) and bodies behind the address, so the frame is the address and the message.
    fn frame(&self, msg: Bytes) -> Bytes {
        match self {
            Wire::Yjs => msg,
            Wire::Hocuspocus { address } => hocuspocus::frame(address, &msg),
        }
    }

    /// What a client sends first, before SyncStep1: a v4 provider's Auth Token with an empty
    /// token (anonymous) and its version.
    fn hello(&self) -> Option<Bytes> {
        let Wire::Hocuspocus { address } = self else {
            return None;
        };
        let mut body = Vec::with_capacity(4 + HOCUSPOCUS_PROVIDER_VERSION.len());
        body.write_var(hocuspocus::kind::AUTH);
        body.write_var(hocuspocus::auth::TOKEN);
        body.write_string("");
        body.write_string(HOCUSPOCUS_PROVIDER_VERSION);
        Some(hocuspocus::frame(address, &body))
    }

    fn decode(&self, frame: &[u8]) -> Result<FromServer> {
        let Wire::Hocuspocus { address: ours } = self else {
            return decode_from_server(frame);
        };
        let (address, message) = match hocuspocus::decode(frame).context("undecodable Hocuspocus frame")? {
            HFrame::Ping => return Ok(FromServer::Ping),
            HFrame::Pong => return Ok(FromServer::Other),
            HFrame::Doc { address, message } => (address, message),
        };
        ensure!(address.raw == ours.raw, "a frame for {:?} on the socket of {:?}", address.raw, ours.raw);
        match message {
            // Sync (SyncReply retagged as Sync by the codec) and Awareness.
            HMessage::Yjs(msg) => decode_from_server(&msg),
            HMessage::OtherAuth(hocuspocus::auth::PERMISSION_DENIED) => bail!("permission denied for {:?}", ours.raw),
            // Authenticated, SyncStatus (the server's ack of an applied update), …
            _ => Ok(FromServer::Other),
        }
    }

    /// The document name every frame of this socket starts with (Hocuspocus), if any.
    fn address(&self) -> Option<&str> {
        match self {
            Wire::Yjs => None,
            Wire::Hocuspocus { address } => Some(&address.raw),
        }
    }

    fn pong(&self) -> Bytes {
        Bytes::from_static(&[hocuspocus::kind::PONG as u8])
    }
}

/// The next binary frame, decoded. Close frames and socket errors end the wait with an error
/// that names the close code, so a refusal by the server (1013, 1008, …) is visible.
async fn next_inbound(ws: &mut (impl StreamExt<Item = WsResult> + Unpin), wire: &Wire) -> Result<FromServer> {
    loop {
        match ws.next().await {
            None => bail!("connection closed"),
            Some(Err(e)) => return Err(e).context("connection failed"),
            Some(Ok(Message::Binary(frame))) => return wire.decode(&frame),
            Some(Ok(Message::Close(frame))) => bail!("server closed the connection: {frame:?}"),
            Some(Ok(_)) => {}
        }
    }
}

type WsResult = Result<Message, tokio_tungstenite::tungstenite::Error>;

/// The client half of the handshake, as the stock provider does it: (Hocuspocus: Auth first,)
/// send SyncStep1 (and the awareness hello), answer the server's SyncStep1 with SyncStep2,
/// and return once the server's SyncStep2 is applied to `doc`.
async fn sync(ws: &mut Ws, wire: &Wire, doc: &Doc, awareness: bool) -> Result<()> {
    if let Some(hello) = wire.hello() {
        ws.send(binary(hello)).await?;
    }
    let step1 = protocol::encode_sync_step1(&doc.transact().state_vector());
    ws.send(binary(wire.frame(step1))).await?;
    if awareness {
        ws.send(binary(wire.frame(awareness_hello(doc.client_id())))).await?;
    }
    let deadline = tokio::time::Instant::now() + HANDSHAKE_TIMEOUT;
    loop {
        let inbound = tokio::time::timeout_at(deadline, next_inbound(ws, wire))
            .await
            .context("no SyncStep2 from the server in time")??;
        match inbound {
            FromServer::SyncStep1(sv) => {
                let diff = doc.transact().encode_state_as_update_v1(&sv);
                ws.send(binary(wire.frame(protocol::encode_sync_step2(diff)))).await?;
            }
            FromServer::SyncStep2(update) => {
                doc.transact_mut().apply_update(update)?;
                return Ok(());
            }
            FromServer::Update(update) => doc.transact_mut().apply_update(update)?,
            FromServer::Ping => ws.send(binary(wire.pong())).await?,
            FromServer::Other => {}
        }
    }
}

/// A synced connection of a scenario.
struct Client {
    ws: Ws,
    wire: Wire,
    doc: Doc,
}

/// Opens `count` connections, connection `i` to room `i % rooms`, each synced, at most
/// `CONNECTS_IN_FLIGHT_MAX` at a time. Returns them in index order.
async fn connect_all(target: &Target, count: usize, rooms: usize, awareness: bool) -> Result<Vec<Client>> {
    let mut opened: Vec<(usize, Client)> = futures::stream::iter(0..count)
        .map(|i| async move {
            // Client ids as Yjs makes them would be random u32s; distinct small ones make
            // the logs readable and are just as valid.
            let doc = Doc::with_client_id(1_000 + i as u64);
            let (url, wire) = target.client(i % rooms);
            let mut ws = connect(&url, 8 * 1024).await?;
            sync(&mut ws, &wire, &doc, awareness).await.with_context(|| format!("handshake of connection {i}"))?;
            Ok::<_, anyhow::Error>((i, Client { ws, wire, doc }))
        })
        .buffer_unordered(CONNECTS_IN_FLIGHT_MAX)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_>>()?;
    opened.sort_by_key(|(i, _)| *i);
    Ok(opened.into_iter().map(|(_, client)| client).collect())
}

// ---------------------------------------------------------------------------------------------
// idle
// ---------------------------------------------------------------------------------------------

async fn idle(args: IdleArgs) -> Result<()> {
    ensure!(args.conns > 0 && args.rooms > 0, "--conns and --rooms must be positive");
    check_open_files(args.conns);
    let target = Target::start(&args.target)?;
    let pid = target.pid.context("idle samples the server's RSS: give --pid with --url")?;
    let settle = Duration::from_millis(args.settle_ms);
    tokio::time::sleep(settle).await;
    let before = rss_kib(pid)?;

    let started = Instant::now();
    let opened = connect_all(&target, args.conns, args.rooms, !args.no_awareness).await?;
    let connect_secs = started.elapsed().as_secs_f64();
    // Each connection keeps reading (as a browser does) so pings are answered and nothing
    // piles up in the server's outbound queues; it closes when told to stop.
    let (stop_tx, stop_rx) = watch::channel(false);
    let holders: Vec<_> = opened.into_iter().map(|client| tokio::spawn(hold(client, stop_rx.clone()))).collect();
    tokio::time::sleep(settle).await;
    let connected = rss_kib(pid)?;

    let _ = stop_tx.send(true);
    for holder in holders {
        let _ = timeout(Duration::from_secs(5), holder).await;
    }
    tokio::time::sleep(settle).await;
    let closed = rss_kib(pid)?;

    let per_conn = (connected as f64 - before as f64) / args.conns as f64;
    println!(
        "idle: {} connections over {} rooms (awareness {}), connected and synced in {:.2} s",
        args.conns,
        args.rooms,
        if args.no_awareness { "off" } else { "on" },
        connect_secs
    );
    println!(
        "idle: server RSS {before} KiB before, {connected} KiB with the connections open, \
         {closed} KiB {:.1} s after closing them",
        settle.as_secs_f64()
    );
    println!("idle: {per_conn:.2} KiB per connection (target <= 12)");
    Ok(())
}

async fn hold(client: Client, mut stop: watch::Receiver<bool>) {
    let Client { mut ws, wire, .. } = client;
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            msg = ws.next() => match msg {
                // Only a Hocuspocus Ping needs an answer from an idle client.
                Some(Ok(Message::Binary(frame))) if frame[..] == hocuspocus::PING => {
                    if ws.send(binary(wire.pong())).await.is_err() {
                        return;
                    }
                }
                Some(Ok(_)) => {}
                _ => return,
            },
        }
    }
    let _ = ws.close(None).await;
}

// ---------------------------------------------------------------------------------------------
// latency
// ---------------------------------------------------------------------------------------------

/// Matching deliveries to sends. Every benchmark update is one text insert made by one client
/// doc, so it carries exactly one new struct whose id `(client, clock)` is unique in the whole
/// run. The sender records that id and the send instant here; a receiver decodes the relayed
/// update (it must anyway, to apply it to its doc), reads the id back with
/// `state_vector_lower` and records `now - sent`. Ids are compared, never bytes, so the match
/// holds however the server re-encodes the update.
#[derive(Default)]
struct Tracker {
    state: Mutex<TrackerState>,
}

#[derive(Default)]
struct TrackerState {
    /// Updates some receiver has not seen yet, by id.
    pending: HashMap<(ClientID, u32), Inflight>,
    /// One entry per delivery, in microseconds.
    latencies_us: Vec<u32>,
    /// Relayed updates whose id was not pending: duplicates or foreign updates.
    unmatched: u64,
    /// Updates sent so far. The scheduler only hands out turns; a turn becomes an update
    /// when its client runs, so the drain waits for this count, not just for `pending`.
    sent: u64,
    /// Per room, the last character of the update relayed most recently (first delivery):
    /// where the room's next edit is typed. Only relayed ids, so the server has them.
    ends: HashMap<usize, (ClientID, u32)>,
}

/// An update on its way; who has it already is kept so that a lost delivery can be named.
struct Inflight {
    sent_at: Instant,
    sender: usize,
    room: usize,
    remaining: u32,
    delivered_to: Vec<usize>,
}

impl Tracker {
    fn sent(&self, id: (ClientID, u32), sender: usize, room: usize, receivers: u32) {
        let mut state = self.state.lock().expect("tracker lock");
        state.sent += 1;
        if receivers == 0 {
            // Nobody to relay it to: the sender's own edit is the room's end.
            state.ends.insert(room, last_char(id));
        } else {
            let inflight = Inflight {
                sent_at: Instant::now(),
                sender,
                room,
                remaining: receivers,
                delivered_to: Vec::with_capacity(receivers as usize),
            };
            state.pending.insert(id, inflight);
        }
    }

    fn delivered(&self, id: (ClientID, u32), receiver: usize, at: Instant) {
        let mut state = self.state.lock().expect("tracker lock");
        let Some(inflight) = state.pending.get_mut(&id) else {
            state.unmatched += 1;
            return;
        };
        let us = at.saturating_duration_since(inflight.sent_at).as_micros();
        let first = inflight.delivered_to.is_empty();
        let room = inflight.room;
        inflight.remaining -= 1;
        inflight.delivered_to.push(receiver);
        if inflight.remaining == 0 {
            state.pending.remove(&id);
        }
        if first {
            state.ends.insert(room, last_char(id));
        }
        state.latencies_us.push(us.min(u32::MAX as u128) as u32);
    }

    /// Where the room's next edit goes: after this character, or at the start.
    fn end(&self, room: usize) -> Option<(ClientID, u32)> {
        self.state.lock().expect("tracker lock").ends.get(&room).copied()
    }

    /// Whether every one of `total` updates has been sent and delivered everywhere.
    fn done(&self, total: u64) -> bool {
        let state = self.state.lock().expect("tracker lock");
        state.sent == total && state.pending.is_empty()
    }
}

/// One connection of the latency run: types into its room's text when the scheduler says so,
/// and times what the server relays. Ends when the scheduler drops its sender.
///
/// It keeps no yrs doc: a doc per connection applying every relayed update made the
/// generator, not the server, the limit at high fan-out (a yrs transaction walks the doc's
/// whole state vector, 1000 clients in the one-room runs). Each edit is `abc` typed after the
/// last character of the update the room saw relayed last (`Tracker::end`), encoded by
/// `edits::insert`; relayed updates are read only for their id (`edits::relayed_id`), with
/// a full yrs decode for any other shape (Hocuspocus merges updates).
async fn latency_client(
    index: usize,
    room: usize,
    client: Client,
    mut turns: mpsc::Receiver<()>,
    tracker: Arc<Tracker>,
    receivers: u32,
) -> Result<()> {
    let Client { mut ws, wire, doc } = client;
    let me = doc.client_id();
    let mut clock = doc.transact().state_vector().get(&me);
    drop(doc);
    loop {
        tokio::select! {
            turn = turns.recv() => {
                if turn.is_none() {
                    break;
                }
                let update = edits::insert(me, clock, tracker.end(room));
                let id = (me, clock);
                clock += edits::TYPED_LEN;
                tracker.sent(id, index, room, receivers);
                ws.send(binary(wire.frame(protocol::encode_update(update)))).await?;
            }
            msg = ws.next() => {
                // The instant is taken before decoding: decoding is the receiver's work, not
                // the server's, but it is short, so either choice moves p50 by microseconds.
                let at = Instant::now();
                let frame = match msg {
                    Some(Ok(Message::Binary(frame))) => frame,
                    Some(Ok(Message::Close(frame))) => bail!("server closed a connection: {frame:?}"),
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => return Err(e).context("connection failed"),
                    None => bail!("server closed a connection"),
                };
                if let Some(id) = edits::relayed_id(&frame, wire.address()) {
                    if id.0 != me {
                        tracker.delivered(id, index, at);
                    }
                    continue;
                }
                let update = match wire.decode(&frame)? {
                    FromServer::Update(update) => update,
                    FromServer::Ping => {
                        ws.send(binary(wire.pong())).await?;
                        continue;
                    }
                    _ => continue,
                };
                // A server may merge several clients' updates into one (Hocuspocus does, per
                // event-loop turn): each client's lowest new clock is its update's id. Our own
                // update relayed back to us (Hocuspocus echoes) is not a delivery.
                for (&client, &clock) in update.state_vector_lower().iter() {
                    if client != me {
                        tracker.delivered((client, clock), index, at);
                    }
                }
            }
        }
    }
    let _ = ws.close(None).await;
    Ok(())
}

/// The last character of the benchmark edit whose first character is `id`.
fn last_char(id: (ClientID, u32)) -> (ClientID, u32) {
    (id.0, id.1 + edits::TYPED_LEN - 1)
}

/// The latency run's edits as Yjs update bytes, made and read without a yrs doc. The unit
/// tests check the bytes against what yrs itself encodes for the same edit.
mod edits {
    use yrs::encoding::read::{Cursor, Read};
    use yrs::encoding::write::Write;
    use yrs::ClientID;

    /// What each edit types, and its length in Yjs clock units (UTF-16 code units; ASCII, so
    /// its byte length).
    pub const TYPED: &str = "abc";
    pub const TYPED_LEN: u32 = TYPED.len() as u32;

    /// Item info: the item has a left origin; content kind 4 is a string.
    const HAS_ORIGIN: u8 = 0x80;
    const CONTENT_STRING: u8 = 4;

    /// The v1 update of `client` typing `TYPED` at `clock` into the root text
    /// `super::TEXT_NAME`: right after the character `after`, or at the start of the text.
    pub fn insert(client: ClientID, clock: u32, after: Option<(ClientID, u32)>) -> Vec<u8> {
        let mut u = Vec::with_capacity(24 + TYPED.len());
        u.write_var(1u32); // clients
        u.write_var(1u32); // structs of that client
        u.write_var(client.get());
        u.write_var(clock);
        match after {
            Some((origin, origin_clock)) => {
                u.write_u8(HAS_ORIGIN | CONTENT_STRING);
                u.write_var(origin.get());
                u.write_var(origin_clock);
            }
            None => {
                // No origin: the parent is named, a root type.
                u.write_u8(CONTENT_STRING);
                u.write_var(1u32);
                u.write_string(super::TEXT_NAME);
            }
        }
        u.write_string(TYPED);
        u.write_var(0u32); // delete set: no clients
        u
    }

    /// The id (client, clock of its first struct) of a relayed update that holds one client's
    /// structs, read from a y-protocols Sync/Update message, behind a Hocuspocus `address` if
    /// given; `None` for any other frame or shape.
    pub fn relayed_id(frame: &[u8], address: Option<&str>) -> Option<(ClientID, u32)> {
        let mut c = Cursor::new(frame);
        if let Some(ours) = address {
            if c.read_string().ok()? != ours {
                return None;
            }
        }
        // messageSync (0; Hocuspocus's Sync type is 0 too), then syncUpdate (2).
        if c.read_var::<u32>().ok()? != 0 || c.read_var::<u32>().ok()? != 2 {
            return None;
        }
        let update = c.read_buf().ok()?;
        let mut u = Cursor::new(update);
        if u.read_var::<u32>().ok()? != 1 {
            return None;
        }
        let _structs = u.read_var::<u32>().ok()?;
        let client = u.read_var::<u64>().ok()?;
        let clock = u.read_var::<u32>().ok()?;
        Some((ClientID::new(client), clock))
    }
}

async fn latency(args: LatencyArgs) -> Result<()> {
    ensure!(
        args.conns > 0 && args.rooms > 0 && args.rate > 0 && args.secs > 0,
        "--conns, --rooms, --rate and --secs must be positive"
    );
    ensure!(args.rooms <= args.conns, "more rooms than connections");
    check_open_files(args.conns);
    let target = Target::start(&args.target)?;
    let opened = connect_all(&target, args.conns, args.rooms, false).await?;

    // Room r holds connections r, r + rooms, r + 2·rooms, …
    let members: Vec<Vec<usize>> = (0..args.rooms).map(|r| (r..args.conns).step_by(args.rooms).collect()).collect();
    let tracker = Arc::new(Tracker::default());
    let mut turns = Vec::with_capacity(args.conns);
    let mut clients = Vec::with_capacity(args.conns);
    for (i, client) in opened.into_iter().enumerate() {
        let (tx, rx) = mpsc::channel(64);
        let receivers = (members[i % args.rooms].len() - 1) as u32;
        turns.push(tx);
        clients.push(tokio::spawn(latency_client(i, i % args.rooms, client, rx, tracker.clone(), receivers)));
    }
    tokio::time::sleep(Duration::from_millis(args.settle_ms)).await;

    let total = args.rate * args.secs;
    let expected: u64 = (0..total).map(|k| (members[(k % args.rooms as u64) as usize].len() - 1) as u64).sum();
    // Commits logged while connecting are not part of the run.
    if let Some(server) = &target.server {
        while server.commits.try_recv().is_ok() {}
    }
    let server_cpu = target.pid.map(|p| CpuWindow::start(&p.to_string())).transpose()?;
    let own_cpu = CpuWindow::start("self")?;

    // The scheduler: update k goes to room k mod R, to the room's members in turn, and is due
    // at k / rate seconds. A 1 ms tick sends whatever is due, so rates above 1000/s work and
    // a late tick catches up instead of lowering the rate.
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    let mut sent = 0u64;
    while sent < total {
        tick.tick().await;
        let due = ((started.elapsed().as_secs_f64() * args.rate as f64) as u64).min(total);
        while sent < due {
            let room = &members[(sent % args.rooms as u64) as usize];
            let member = room[((sent / args.rooms as u64) % room.len() as u64) as usize];
            turns[member].send(()).await.context("a client stopped during the run")?;
            sent += 1;
        }
    }
    let send_secs = started.elapsed().as_secs_f64();
    // Deliveries still on their way: wait for them, bounded.
    let drain_deadline = Instant::now() + Duration::from_millis(args.drain_ms);
    while !tracker.done(total) && Instant::now() < drain_deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let server_cpu = server_cpu.map(|w| w.stop()).transpose()?;
    let own_cpu = own_cpu.stop()?;

    let commits: Vec<CommitLog> = target.server.as_ref().map(|s| s.commits.try_iter().collect()).unwrap_or_default();

    drop(turns);
    for client in clients {
        match timeout(Duration::from_secs(5), client).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => eprintln!("client failed: {e:#}"),
            Ok(Err(e)) => eprintln!("client panicked: {e}"),
            Err(_) => eprintln!("client did not stop in time"),
        }
    }

    let state = std::mem::take(&mut *tracker.state.lock().expect("tracker lock"));
    let mut lat = state.latencies_us;
    lat.sort_unstable();
    println!(
        "latency: {} connections over {} rooms, {} updates at {}/s over {:.1} s",
        args.conns, args.rooms, total, args.rate, send_secs
    );
    println!(
        "latency: deliveries {} of {} expected, {:.2} % delivered ({} updates sent, {} still pending, {} unmatched)",
        lat.len(),
        expected,
        100.0 * lat.len() as f64 / expected.max(1) as f64,
        state.sent,
        state.pending.len(),
        state.unmatched
    );
    if !lat.is_empty() {
        let ms = |us: u32| us as f64 / 1000.0;
        println!(
            "latency: p50 {:.3} ms, p90 {:.3} ms, p99 {:.3} ms, p99.9 {:.3} ms, max {:.3} ms (target p99 <= 2 ms)",
            ms(percentile(&lat, 0.50)),
            ms(percentile(&lat, 0.90)),
            ms(percentile(&lat, 0.99)),
            ms(percentile(&lat, 0.999)),
            ms(*lat.last().expect("not empty")),
        );
    }
    match server_cpu {
        Some(cpu) => {
            println!("latency: server CPU {cpu} (target <= 15 %); load generator {own_cpu}");
            println!(
                "latency: server CPU per delivered update {:.2} us (load generator {:.2} us)",
                cpu.micros_each(lat.len() as u64),
                own_cpu.micros_each(lat.len() as u64)
            );
            if let Some(writes) = cpu.writes {
                println!(
                    "latency: server write system calls {writes} ({:.0}/s, {:.2} deliveries each)",
                    writes as f64 / cpu.wall_secs,
                    lat.len() as f64 / writes.max(1) as f64
                );
            }
        }
        None => println!("latency: server CPU not sampled (give --pid); load generator {own_cpu}"),
    }
    if !commits.is_empty() {
        let appends: u64 = commits.iter().map(|c| c.commands).sum();
        let mut us: Vec<u32> = commits.iter().map(|c| c.elapsed_us.min(u32::MAX as u64) as u32).collect();
        us.sort_unstable();
        let ms = |us: u32| us as f64 / 1000.0;
        println!(
            "latency: server store: {} transactions ({:.0}/s, {:.2} commands each), commit time p50 {:.3} ms, p90 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
            commits.len(),
            commits.len() as f64 / send_secs,
            appends as f64 / commits.len() as f64,
            ms(percentile(&us, 0.50)),
            ms(percentile(&us, 0.90)),
            ms(percentile(&us, 0.99)),
            ms(*us.last().expect("not empty")),
        );
    }
    for ((client, clock), inflight) in state.pending.iter().take(10) {
        let room = &members[inflight.sender % args.rooms];
        let missed: Vec<usize> =
            room.iter().copied().filter(|c| *c != inflight.sender && !inflight.delivered_to.contains(c)).collect();
        println!(
            "latency: lost: update {client}:{clock} from connection {} (room {}) sent {:.3} s into the run never reached connections {missed:?}",
            inflight.sender,
            inflight.sender % args.rooms,
            inflight.sent_at.saturating_duration_since(started).as_secs_f64(),
        );
    }
    ensure!(lat.len() as u64 == expected, "{} deliveries missing", expected.saturating_sub(lat.len() as u64));
    Ok(())
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[u32], p: f64) -> u32 {
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

// ---------------------------------------------------------------------------------------------
// cold-load
// ---------------------------------------------------------------------------------------------

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Trace {
    start_content: String,
    end_content: String,
    txns: Vec<TraceTxn>,
}

#[derive(serde::Deserialize)]
struct TraceTxn {
    /// `[position, characters deleted, text inserted]`, positions in Unicode characters.
    patches: Vec<(u32, u32, String)>,
}

fn read_trace(path: &Path) -> Result<Trace> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let reader = BufReader::new(flate2::read::GzDecoder::new(file));
    serde_json::from_reader(reader).with_context(|| format!("parsing {}", path.display()))
}

/// Replays the trace into a fresh doc, one transaction (so one update) per patch, and returns
/// the updates as y-websocket frames. Positions are Unicode characters; the trace is ASCII,
/// where characters, bytes and UTF-16 units agree, which is checked.
fn trace_updates(trace: &Trace) -> Result<Vec<Bytes>> {
    ensure!(
        trace.start_content.is_ascii() && trace.end_content.is_ascii(),
        "the trace is not ASCII: positions would need converting"
    );
    let doc = Doc::with_client_id(1);
    let text = doc.get_or_insert_text(TEXT_NAME);
    let mut frames = Vec::new();
    let mut edit = |f: &mut dyn FnMut(&mut yrs::TransactionMut)| {
        let mut txn = doc.transact_mut();
        f(&mut txn);
        // A patch that changes nothing would never be echoed; there is none in the trace.
        if txn.has_changes() {
            frames.push(protocol::encode_update(txn.encode_update_v1()));
        }
    };
    if !trace.start_content.is_empty() {
        edit(&mut |txn| text.insert(txn, 0, &trace.start_content));
    }
    for txn in &trace.txns {
        for (pos, del, ins) in &txn.patches {
            edit(&mut |txn| {
                if *del > 0 {
                    text.remove_range(txn, *pos, *del);
                }
                if !ins.is_empty() {
                    text.insert(txn, *pos, ins);
                }
            });
        }
    }
    let replayed = text.get_string(&doc.transact());
    ensure!(replayed == trace.end_content, "replaying the trace locally does not give endContent");
    Ok(frames)
}

/// One client sends every update, pipelined: at most `window` are sent and not yet echoed.
/// The server echoes an update only after committing it, so the last echo means the whole
/// history is durable.
async fn write_history(url: &str, frames: &[Bytes], window: usize) -> Result<Duration> {
    let mut ws = connect(url, 128 * 1024).await?;
    let doc = Doc::new();
    sync(&mut ws, &Wire::Yjs, &doc, false).await?;
    let started = Instant::now();
    let (mut sink, mut stream) = ws.split();
    let credit = Semaphore::new(window.max(1));
    let writer = async {
        for frame in frames {
            // Frames are gathered in the write buffer and flushed only when the window is
            // full, so the server reads many per syscall as it would from a busy client.
            match credit.try_acquire() {
                Ok(permit) => permit.forget(),
                Err(_) => {
                    sink.flush().await?;
                    credit.acquire().await?.forget();
                }
            }
            sink.feed(binary(frame.clone())).await?;
        }
        sink.flush().await?;
        Ok::<_, anyhow::Error>(())
    };
    let reader = async {
        let mut echoed = 0;
        while echoed < frames.len() {
            let inbound = timeout(RECEIVE_IDLE_TIMEOUT, next_inbound(&mut stream, &Wire::Yjs))
                .await
                .with_context(|| format!("no echo for {RECEIVE_IDLE_TIMEOUT:?} after {echoed}"))??;
            if let FromServer::Update(_) = inbound {
                echoed += 1;
                credit.add_permits(1);
            }
        }
        Ok::<_, anyhow::Error>(())
    };
    tokio::try_join!(writer, reader)?;
    let elapsed = started.elapsed();
    let mut ws = sink.reunite(stream).expect("halves of one socket");
    let _ = ws.close(None).await;
    Ok(elapsed)
}

/// What one timed load saw; every instant is measured from the connect call.
struct LoadRun {
    /// The WebSocket is open.
    connected: Duration,
    /// The whole SyncStep2 message has been read from the socket (the server's part ends).
    received: Duration,
    /// The SyncStep2 update is decoded.
    decoded: Duration,
    /// The update is applied to the client's empty doc.
    applied: Duration,
    /// The client's text has been read and equals `endContent`: the figure for the target.
    total: Duration,
    step2_bytes: usize,
    server: Option<LoadLog>,
    rss_kib: u64,
}

async fn timed_load(server: &ServerProcess, doc_name: &str, end_content: &str) -> Result<LoadRun> {
    let url = format!("{}/{doc_name}", server.url());
    let started = Instant::now();
    let mut ws = connect(&url, 128 * 1024).await?;
    let connected = started.elapsed();
    let doc = Doc::new();
    let text = doc.get_or_insert_text(TEXT_NAME);
    ws.send(binary(protocol::encode_sync_step1(&StateVector::default()))).await?;
    let deadline = tokio::time::Instant::now() + HANDSHAKE_TIMEOUT;
    let (received, decoded, step2_bytes) = loop {
        let msg = tokio::time::timeout_at(deadline, ws.next())
            .await
            .context("no SyncStep2 in time")?
            .context("connection closed")??;
        let Message::Binary(frame) = msg else {
            continue;
        };
        let received = started.elapsed();
        // The server's SyncStep1 (a few bytes) comes first; the client does not answer it:
        // a stock client would, but the answer is not on the path being timed.
        if let FromServer::SyncStep2(update) = decode_from_server(&frame)? {
            let decoded = started.elapsed();
            doc.transact_mut().apply_update(update)?;
            break (received, decoded, frame.len());
        }
    };
    let applied = started.elapsed();
    // Reading the text back is part of "having the document".
    let matches = text.get_string(&doc.transact()) == end_content;
    let total = started.elapsed();
    ensure!(matches, "the loaded text differs from endContent");
    let _ = ws.close(None).await;
    Ok(LoadRun {
        connected,
        received,
        decoded,
        applied,
        total,
        step2_bytes,
        server: server.loads.recv_timeout(Duration::from_secs(2)).ok(),
        rss_kib: rss_kib(server.pid())?,
    })
}

async fn cold_load(args: ColdLoadArgs) -> Result<()> {
    ensure!(args.runs > 0, "--runs must be positive");
    let started = Instant::now();
    let trace = read_trace(&args.trace)?;
    println!(
        "cold-load: trace {} parsed in {:.2} s, endContent {} chars",
        args.trace.display(),
        started.elapsed().as_secs_f64(),
        trace.end_content.len()
    );

    let temp = TempDir::new("cold")?;
    let db = args.db.clone().unwrap_or_else(|| temp.0.join("yserve.db"));
    if db.exists() {
        println!("cold-load: reusing {} (write phase skipped)", db.display());
    } else {
        let started = Instant::now();
        let frames = trace_updates(&trace)?;
        // yrs finds a text position by walking the blocks from the start, so replaying a
        // long trace takes tens of seconds; none of it is measured.
        println!(
            "cold-load: {} updates made by replaying the trace into a yrs doc in {:.2} s",
            frames.len(),
            started.elapsed().as_secs_f64()
        );
        // The write phase is a bulk import from one connection, far above the per-user rate limit meant for
        // people typing (SPEC §8), so that limit is lifted for it alone.
        let server = ServerProcess::spawn(&args.server_bin, &db, &args.server_args, BULK_IMPORT_ENV, false)?;
        eprintln!(
            "spawned {} (pid {}) at {} for the write phase",
            args.server_bin.display(),
            server.pid(),
            server.url()
        );
        let url = format!("{}/{}", server.url(), args.doc);
        let elapsed = write_history(&url, &frames, args.window).await?;
        let rss = rss_kib(server.pid())?;
        server.stop()?;
        println!(
            "cold-load: wrote {} updates through the server (one connection, {} in flight) in {:.2} s: \
             {:.0} updates/s committed; server RSS at the end {} KiB",
            frames.len(),
            args.window,
            elapsed.as_secs_f64(),
            frames.len() as f64 / elapsed.as_secs_f64(),
            rss
        );
    }
    let db_bytes = std::fs::metadata(&db)?.len();
    println!("cold-load: database {} bytes (main file; WAL checkpointed at close)", db_bytes);

    let mut totals = Vec::with_capacity(args.runs);
    for run in 1..=args.runs {
        let server = ServerProcess::spawn(&args.server_bin, &db, &args.server_args, &[], false)?;
        let load = timed_load(&server, &args.doc, &trace.end_content).await?;
        server.stop()?;
        let server_load = load.server.as_ref().map_or("load not logged".into(), |l| {
            format!("load {:.2} ms of snapshot {} + tail {}", l.elapsed_us as f64 / 1000.0, l.snapshot, l.tail)
        });
        println!(
            "cold-load: run {run}: full document in {:.2} ms = connect {:.2} + server until SyncStep2 ({} bytes) read {:.2} [{}] \
             + client decode {:.2} + apply {:.2} + read text {:.2}; server RSS {} KiB",
            ms(load.total),
            ms(load.connected),
            load.step2_bytes,
            ms(load.received - load.connected),
            server_load,
            ms(load.decoded - load.received),
            ms(load.applied - load.decoded),
            ms(load.total - load.applied),
            load.rss_kib
        );
        totals.push(load.total);
    }
    totals.sort();
    println!(
        "cold-load: {} runs: min {:.2} ms, median {:.2} ms, max {:.2} ms (target <= 25 ms); text equals endContent",
        totals.len(),
        ms(totals[0]),
        ms(totals[totals.len() / 2]),
        ms(*totals.last().expect("runs > 0"))
    );
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

// ---------------------------------------------------------------------------------------------
// ingest
// ---------------------------------------------------------------------------------------------

async fn ingest(args: IngestArgs) -> Result<()> {
    ensure!(args.updates > 0 && args.docs > 0, "--updates and --docs must be positive");
    // Realistic payloads: one typed character per update, as a Yjs client encodes it.
    let payloads: Vec<Vec<u8>> = {
        let doc = Doc::with_client_id(7);
        let text = doc.get_or_insert_text(TEXT_NAME);
        (0..args.updates)
            .map(|i| {
                let mut txn = doc.transact_mut();
                text.insert(&mut txn, i as u32, "x");
                txn.encode_update_v1()
            })
            .collect()
    };
    let payload_bytes: usize = payloads.iter().map(Vec::len).sum();

    let dir = TempDir::new("ingest")?;
    let db = match &args.postgres {
        Some(server) => PathBuf::from(yserve::store::postgres::fresh_database(server)?),
        None => dir.0.join("ingest.db"),
    };
    println!("ingest: store {}", if args.postgres.is_some() { "PostgreSQL (a fresh database)" } else { "SQLite" });
    let config = Config { db, sync: args.sync, store_batch_max: args.batch_max, ..Config::default() };
    let store = Store::open(&yserve::app::store_settings(&config))?;
    let names: Vec<Arc<str>> = (0..args.docs).map(|d| Arc::from(format!("ingest-{d}"))).collect();
    let origin: Arc<str> = Arc::from("bench");

    // Appends are queued without waiting for their acks; at most `inflight` are unacked.
    // The store answers in commit order, so a FIFO of ack receivers is enough. With one in
    // flight every append is its own transaction, and its round trip is the commit latency
    // (an fsync with `--sync full`), which is worth printing; with more, acks are only looked
    // at when the window is full, so per-append times would measure this loop, not the store.
    let window = args.inflight.max(1);
    let mut commit_us: Vec<u32> = Vec::new();
    let started = Instant::now();
    let mut acks: FuturesOrdered<oneshot::Receiver<Result<(), StoreError>>> = FuturesOrdered::new();
    for (i, data) in payloads.into_iter().enumerate() {
        let i = i as u64;
        if acks.len() >= window {
            let ack = acks.next().await.expect("not empty");
            ack.context("store dropped an ack")??;
        }
        let name = names[(i % args.docs) as usize].clone();
        let seq = i / args.docs + 1;
        let queued = Instant::now();
        acks.push_back(store.append(name, seq, data, origin.clone()).await?);
        if window == 1 {
            let ack = acks.next().await.expect("just pushed");
            ack.context("store dropped an ack")??;
            commit_us.push(queued.elapsed().as_micros().min(u32::MAX as u128) as u32);
        }
    }
    while let Some(ack) = acks.next().await {
        ack.context("store dropped an ack")??;
    }
    let elapsed = started.elapsed();

    // Check that everything is there, then close.
    for (d, name) in names.iter().enumerate() {
        let expected = args.updates / args.docs + u64::from((d as u64) < args.updates % args.docs);
        let loaded = store.load(name.clone()).await?;
        ensure!(loaded.last_seq == expected, "{name}: last seq {} after {expected} appends", loaded.last_seq);
    }
    store.close().await;
    println!(
        "ingest: {} updates ({} bytes of payload) over {} document(s), {} in flight, sync {:?}, batch max {}",
        args.updates, payload_bytes, args.docs, args.inflight, args.sync, args.batch_max
    );
    println!(
        "ingest: all committed in {:.3} s: {:.0} updates/s (target >= 50000)",
        elapsed.as_secs_f64(),
        args.updates as f64 / elapsed.as_secs_f64()
    );
    if !commit_us.is_empty() {
        commit_us.sort_unstable();
        let ms = |us: u32| us as f64 / 1000.0;
        println!(
            "ingest: commit latency (one append per transaction) p50 {:.3} ms, p90 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
            ms(percentile(&commit_us, 0.50)),
            ms(percentile(&commit_us, 0.90)),
            ms(percentile(&commit_us, 0.99)),
            ms(*commit_us.last().expect("not empty")),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use yrs::updates::encoder::Encode;

    fn wire(doc: &str) -> (Wire, Address) {
        let address = Address::parse(doc).unwrap();
        (Wire::Hocuspocus { address: address.clone() }, address)
    }

    fn one_insert() -> Vec<u8> {
        let doc = Doc::with_client_id(42);
        let text = doc.get_or_insert_text(TEXT_NAME);
        let mut txn = doc.transact_mut();
        text.insert(&mut txn, 0, "abc");
        txn.encode_update_v1()
    }

    #[test]
    fn hello_is_a_v4_auth_token_with_an_empty_token() {
        let (w, _) = wire("room-1");
        let hello = w.hello().unwrap();
        let mut expected = vec![6];
        expected.extend_from_slice(b"room-1");
        expected.extend_from_slice(&[2, 0, 0, HOCUSPOCUS_PROVIDER_VERSION.len() as u8]);
        expected.extend_from_slice(HOCUSPOCUS_PROVIDER_VERSION.as_bytes());
        assert_eq!(&hello[..], &expected[..]);
        let HFrame::Doc { address, message } = hocuspocus::decode(&hello).unwrap() else { panic!("not a doc frame") };
        assert_eq!(address.raw, "room-1");
        assert_eq!(message, HMessage::Token { token: "", version: Some(HOCUSPOCUS_PROVIDER_VERSION) });
        assert!(Wire::Yjs.hello().is_none());
    }

    #[test]
    fn an_update_is_the_y_protocols_message_behind_the_address() {
        let update = one_insert();
        let y = protocol::encode_update(update.clone());
        let (w, _) = wire("ré");
        let framed = w.frame(y.clone());
        // varString: the length in UTF-8 bytes (3), then the bytes.
        assert_eq!(&framed[..4], &[3, b'r', 0xc3, 0xa9]);
        assert_eq!(&framed[4..], &y[..]);
        // What the server relays back is the same frame; the client reads the update out.
        let FromServer::Update(u) = w.decode(&framed).unwrap() else { panic!("not an update") };
        let ids: Vec<(ClientID, u32)> = u.state_vector_lower().iter().map(|(c, k)| (*c, *k)).collect();
        assert_eq!(ids, vec![(Doc::with_client_id(42).client_id(), 0)]);
        // The yjs wire sends the message as it is.
        assert_eq!(Wire::Yjs.frame(y.clone()), y);
    }

    /// An edit as `edits::insert` encodes it is byte for byte what yrs encodes for the same
    /// edit: at the start of an empty text, after the client's own text, after another
    /// client's; and `edits::relayed_id` reads its id back through either wire.
    #[test]
    fn the_hand_made_edits_are_what_yrs_encodes() {
        let (a, b) = (Doc::with_client_id(7), Doc::with_client_id(300));
        let typed = |doc: &Doc| {
            let text = doc.get_or_insert_text(TEXT_NAME);
            let mut txn = doc.transact_mut();
            let end = text.len(&txn);
            text.insert(&mut txn, end, edits::TYPED);
            txn.encode_update_v1()
        };
        let first = typed(&a);
        assert_eq!(first, edits::insert(a.client_id(), 0, None));
        let second = typed(&a);
        assert_eq!(second, edits::insert(a.client_id(), 3, Some((a.client_id(), 2))));
        for u in [&first, &second] {
            b.transact_mut().apply_update(Update::decode_v1(u).unwrap()).unwrap();
        }
        let third = typed(&b);
        assert_eq!(third, edits::insert(b.client_id(), 0, Some((a.client_id(), 5))));
        a.transact_mut().apply_update(Update::decode_v1(&third).unwrap()).unwrap();
        assert_eq!(a.get_or_insert_text(TEXT_NAME).get_string(&a.transact()), "abcabcabc");

        let y = protocol::encode_update(third.clone());
        assert_eq!(edits::relayed_id(&y, None), Some((b.client_id(), 0)));
        let (w, _) = wire("ré");
        assert_eq!(edits::relayed_id(&w.frame(y.clone()), w.address()), Some((b.client_id(), 0)));
        // Another document's frame, a merged update of two clients, and a handshake are not
        // read by the fast path.
        assert_eq!(edits::relayed_id(&w.frame(y.clone()), Some("re")), None);
        let merged = Update::merge_updates([Update::decode_v1(&first).unwrap(), Update::decode_v1(&third).unwrap()]);
        assert_eq!(edits::relayed_id(&protocol::encode_update(merged.encode_v1()), None), None);
        assert_eq!(edits::relayed_id(&protocol::encode_sync_step2(first.clone()), None), None);
    }

    #[test]
    fn the_servers_handshake_frames_decode() {
        let (w, address) = wire("d");
        // Hocuspocus answers SyncStep1 with its own SyncStep1 as SyncReply (4), then SyncStep2.
        let mut reply = vec![hocuspocus::kind::SYNC_REPLY as u8];
        reply.extend_from_slice(&SyncMessage::SyncStep1(StateVector::default()).encode_v1());
        let reply = hocuspocus::frame(&address, &reply);
        assert!(matches!(w.decode(&reply).unwrap(), FromServer::SyncStep1(_)));
        let step2 = protocol::encode_sync_step2(one_insert());
        assert!(matches!(w.decode(&w.frame(step2)).unwrap(), FromServer::SyncStep2(_)));
        let authenticated = hocuspocus::encode_authenticated(&address, false);
        assert!(matches!(w.decode(&authenticated).unwrap(), FromServer::Other));
        let saved = hocuspocus::frame(&address, &hocuspocus::SYNC_STATUS_SAVED);
        assert!(matches!(w.decode(&saved).unwrap(), FromServer::Other));
        assert!(matches!(w.decode(&hocuspocus::PING).unwrap(), FromServer::Ping));
        assert_eq!(&w.pong()[..], &[hocuspocus::kind::PONG as u8]);
    }

    #[test]
    fn a_refusal_or_a_frame_for_another_document_is_an_error() {
        let (w, address) = wire("d");
        let denied = hocuspocus::encode_permission_denied(&address, "nope");
        let err = w.decode(&denied).unwrap_err();
        assert!(format!("{err:#}").contains("permission denied"), "{err:#}");
        let (other, _) = wire("e");
        let step1 = protocol::encode_sync_step1(&StateVector::default());
        assert!(w.decode(&other.frame(step1)).is_err());
        assert!(w.decode(&[5, b'a', b'b']).is_err());
    }
}
