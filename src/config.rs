//! The one `Config` of the server, parsed by clap; every flag has an environment twin
//! (`--addr` / `YSERVE_ADDR`). Owns defaults and units; knows nothing of what uses them.
//! Built once in `main` and passed explicitly to `server::run`.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::auth::Secret;

#[derive(Debug, Parser)]
#[command(name = "yserve", version, about = "A durable, y-websocket-compatible Yjs sync server on SQLite")]
#[command(args_conflicts_with_subcommands = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// `yserve` with no subcommand is `yserve serve`.
    #[command(flatten)]
    pub serve: Config,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve Yjs documents over WebSocket (the default).
    Serve(Config),
    /// Print an HS256 token signed with the configured secret.
    Token(TokenArgs),
    /// List the documents of the database: updates, bytes, snapshots, last change.
    Docs(DocsArgs),
    /// Show the update log of a document: seq, time, origin, size.
    Log(LogArgs),
    /// Write a document's state, now or after any earlier update (`--at`), as a Yjs update,
    /// JSON or plain text.
    Export(ExportArgs),
    /// Append a Yjs v1 update file to a document. Refused while a server holds the database.
    Import(ImportArgs),
    /// Snapshot the latest state of one document or all; `--prune-history` also deletes the
    /// history before it. Refused while a server holds the database.
    Compact(CompactArgs),
}

/// The database file of the operator commands (the server's `--db`).
#[derive(Debug, Clone, Args)]
pub struct DbArgs {
    /// SQLite database file, or a PostgreSQL URL (`postgres://USER@HOST:PORT/DB`).
    #[arg(long, env = "YSERVE_DB", default_value = "./data/yserve.db")]
    pub db: PathBuf,
}

#[derive(Debug, Clone, Args)]
pub struct DocsArgs {
    #[command(flatten)]
    pub db: DbArgs,
    /// One JSON object per line instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Args)]
pub struct LogArgs {
    #[command(flatten)]
    pub db: DbArgs,
    /// The document name (as stored: not percent-encoded).
    pub doc: String,
    /// First seq to show.
    #[arg(long, default_value_t = 1)]
    pub from: u64,
    /// Most rows to show (default: all).
    #[arg(long)]
    pub limit: Option<u64>,
    /// One JSON object per line instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// What `yserve export` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExportFormat {
    /// The state as one binary Yjs v1 update (lossless; `Y.applyUpdate` reads it).
    Update,
    /// Every root rendered as JSON (best-effort; see `src/render.rs`).
    Json,
    /// The plain text of one text root.
    Text,
}

#[derive(Debug, Clone, Args)]
pub struct ExportArgs {
    #[command(flatten)]
    pub db: DbArgs,
    /// The document name (as stored: not percent-encoded).
    pub doc: String,
    /// The state after this update (time travel); default: the latest.
    #[arg(long)]
    pub at: Option<u64>,
    #[arg(long, value_enum, default_value = "update")]
    pub format: ExportFormat,
    /// The root for `--format text`; default: the document's only text root.
    #[arg(long)]
    pub root: Option<String>,
    /// Write to this file instead of stdout.
    #[arg(short = 'o', long = "output")]
    pub output: Option<PathBuf>,
}

#[derive(Debug, Clone, Args)]
pub struct ImportArgs {
    #[command(flatten)]
    pub db: DbArgs,
    /// The document name (as stored: not percent-encoded); created if it does not exist.
    pub doc: String,
    /// A binary Yjs v1 update (`Y.encodeStateAsUpdate`, or `yserve export`).
    pub file: PathBuf,
}

#[derive(Debug, Clone, Args)]
pub struct CompactArgs {
    #[command(flatten)]
    pub db: DbArgs,
    /// The document; default: every document.
    pub doc: Option<String>,
    /// Also delete the updates and snapshots older than the new snapshot. Time travel to
    /// before it is no longer possible afterwards.
    #[arg(long)]
    pub prune_history: bool,
}

#[derive(Debug, Clone, Args)]
pub struct TokenArgs {
    /// The user id (`sub` claim).
    #[arg(long)]
    pub sub: String,
    /// A grant, `PATTERN=read` or `PATTERN=write` (repeatable); `notes/*` is a prefix.
    #[arg(long = "doc")]
    pub docs: Vec<String>,
    /// Lifetime: `90s`, `30m`, `1h`, `7d`.
    #[arg(long, default_value = "1h")]
    pub ttl: String,
    #[arg(long, env = "YSERVE_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<Secret>,
}

/// How hard SQLite works to make a commit durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SyncMode {
    /// Survives power loss (SQLite `synchronous=FULL`).
    Full,
    /// Survives a process crash (SQLite `synchronous=NORMAL` in WAL mode).
    Normal,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Args)]
pub struct Config {
    /// Address to listen on; port 0 picks a free port (printed on stdout).
    #[arg(long, env = "YSERVE_ADDR", default_value = "127.0.0.1:1234")]
    pub addr: SocketAddr,

    /// SQLite database file, created with its folder; or a PostgreSQL URL
    /// (`postgres://USER[:PASSWORD]@HOST:PORT/DB`), whose tables are created on first start.
    #[arg(long, env = "YSERVE_DB", default_value = "./data/yserve.db")]
    pub db: PathBuf,

    /// Commit durability.
    #[arg(long, env = "YSERVE_SYNC", value_enum, default_value = "full")]
    pub sync: SyncMode,

    /// Threads that run connections and documents (the store has its own thread). 0 = one per
    /// core. 1 runs everything on the main thread (tokio's current-thread runtime): no wakeups
    /// cross threads, but a long task (loading a big document) holds up every connection
    /// meanwhile; it measured no clear CPU gain at 500 updates/s (BENCHMARKS.md).
    #[arg(long, env = "YSERVE_WORKER_THREADS", default_value_t = 0)]
    pub worker_threads: usize,

    #[arg(long, env = "YSERVE_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,

    /// HS256 secret for JWTs. Without a key, everyone may read and write everything.
    #[arg(long, env = "YSERVE_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<Secret>,

    /// PEM public key file for JWTs: RS256, ES256 or EdDSA by key type.
    #[arg(long, env = "YSERVE_JWT_PUBLIC_KEY")]
    pub jwt_public_key: Option<PathBuf>,

    /// Required `aud` claim.
    #[arg(long, env = "YSERVE_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,

    /// Required `iss` claim.
    #[arg(long, env = "YSERVE_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,

    /// Allowed `Origin` for WebSocket upgrades (repeatable, or comma-separated in the env);
    /// when set, browsers from other origins get 403. Requests without `Origin` are allowed.
    #[arg(long, env = "YSERVE_ALLOWED_ORIGIN", value_delimiter = ',')]
    pub allowed_origin: Vec<String>,

    /// Allow binding a non-loopback address with no JWT key (everyone may write everything).
    #[arg(long, env = "YSERVE_ALLOW_ANONYMOUS")]
    pub allow_anonymous: bool,

    /// Largest WebSocket message accepted; larger ones close the connection with 1009.
    #[arg(long, env = "YSERVE_MESSAGE_BYTES_MAX", default_value_t = 16 * 1024 * 1024)]
    pub message_bytes_max: usize,

    /// Deepest nesting of values inside one update; deeper updates are refused (1008)
    /// before yrs's recursive decoder could overflow the stack.
    #[arg(long, env = "YSERVE_UPDATE_DEPTH_MAX", default_value_t = 64)]
    pub update_depth_max: usize,

    /// Per-user message rate (token bucket shared by the user's connections); beyond it
    /// the connection is closed with 1008 "rate limited".
    #[arg(long, env = "YSERVE_RATE_MESSAGES_PER_SEC", default_value_t = 300.0)]
    pub rate_messages_per_sec: f64,

    #[arg(long, env = "YSERVE_RATE_MESSAGES_BURST", default_value_t = 3000.0)]
    pub rate_messages_burst: f64,

    /// Per-user inbound bytes per second.
    #[arg(long, env = "YSERVE_RATE_BYTES_PER_SEC", default_value_t = 8.0 * 1024.0 * 1024.0)]
    pub rate_bytes_per_sec: f64,

    /// Per-user inbound byte burst; at least one maximal message fits.
    #[arg(long, env = "YSERVE_RATE_BYTES_BURST", default_value_t = 64.0 * 1024.0 * 1024.0)]
    pub rate_bytes_burst: f64,

    /// Connections one user may hold; more get 429 at the upgrade.
    #[arg(long, env = "YSERVE_CONNECTIONS_PER_USER_MAX", default_value_t = 100)]
    pub connections_per_user_max: usize,

    /// Connections the server holds; more get 503 at the upgrade.
    #[arg(long, env = "YSERVE_CONNECTIONS_MAX", default_value_t = 50_000)]
    pub connections_max: usize,

    /// How often the server pings an idle connection.
    #[arg(long, env = "YSERVE_PING_INTERVAL_MS", default_value_t = 30_000)]
    pub ping_interval_ms: u64,

    /// A connection with no message and no pong for this long is closed with 4408.
    #[arg(long, env = "YSERVE_IDLE_TIMEOUT_MS", default_value_t = 60_000)]
    pub idle_timeout_ms: u64,

    /// Largest awareness state (JSON) one client may publish; larger: 1008.
    #[arg(long, env = "YSERVE_AWARENESS_STATE_BYTES_MAX", default_value_t = 64 * 1024)]
    pub awareness_state_bytes_max: usize,

    /// Awareness client ids one connection may announce; more: 1008.
    #[arg(long, env = "YSERVE_AWARENESS_CLIENTS_PER_CONNECTION_MAX", default_value_t = 8)]
    pub awareness_clients_per_connection_max: usize,

    /// Entries one awareness message may hold; more: 1008, refused by the count before the
    /// message is decoded (decoded, tiny entries take ~18 times their size). The stock client
    /// echoes a whole room's states in one message, so this bounds a room, not a connection.
    #[arg(long, env = "YSERVE_AWARENESS_CLIENTS_PER_MESSAGE_MAX", default_value_t = 10_000)]
    pub awareness_clients_per_message_max: usize,

    /// Bytes waiting to be written to one connection before it is closed with 1013.
    #[arg(long, env = "YSERVE_OUTBOUND_QUEUE_BYTES_MAX", default_value_t = 32 * 1024 * 1024)]
    pub outbound_queue_bytes_max: usize,

    /// WebSocket read buffer per connection (tungstenite allocates it eagerly, so it is most of
    /// an idle connection's memory). Typing-sized messages fit in one read; a large one takes
    /// more reads of this size. 2048 measured 10.7 KiB per idle connection, 4096 13.3 KiB.
    #[arg(long, env = "YSERVE_WS_READ_BUFFER_BYTES", default_value_t = 2048)]
    pub ws_read_buffer_bytes: usize,

    /// Write a snapshot when this many updates have been logged since the last one.
    #[arg(long, env = "YSERVE_SNAPSHOT_UPDATES", default_value_t = 1000)]
    pub snapshot_updates: u64,

    /// ... or when this many bytes of updates have been logged since the last one.
    #[arg(long, env = "YSERVE_SNAPSHOT_BYTES", default_value_t = 4 * 1024 * 1024)]
    pub snapshot_bytes: u64,

    /// Awareness states not renewed for this long are removed (y-protocols uses 30 s).
    #[arg(long, env = "YSERVE_AWARENESS_TIMEOUT_MS", default_value_t = 30_000)]
    pub awareness_timeout_ms: u64,

    /// How long a store transaction waits for a lock held by another SQLite connection
    /// (an operator's `sqlite3`) before the commit fails; on PostgreSQL, the session's
    /// `statement_timeout` (a statement waiting longer fails, and its commit with it).
    #[arg(long, env = "YSERVE_STORE_BUSY_TIMEOUT_MS", default_value_t = 5_000)]
    pub store_busy_timeout_ms: u64,

    /// Most store commands (appends, loads) grouped into one transaction.
    #[arg(long, env = "YSERVE_STORE_BATCH_MAX", default_value_t = 4096)]
    pub store_batch_max: usize,

    /// Longest time shutdown waits for documents to drain before exiting anyway.
    #[arg(long, env = "YSERVE_SHUTDOWN_TIMEOUT_MS", default_value_t = 10_000)]
    pub shutdown_timeout_ms: u64,

    /// OT ops kept per text (memory and `ot_ops`): a client whose base version is older
    /// gets ERR_SUBMIT_TRANSFORM_OPS_NOT_FOUND and re-fetches the text.
    #[arg(long, env = "YSERVE_OT_LOG_OPS_MAX", default_value_t = 1000)]
    pub ot_log_ops_max: usize,

    /// Components one OT op may have.
    #[arg(long, env = "YSERVE_OT_OP_COMPONENTS_MAX", default_value_t = 1000)]
    pub ot_op_components_max: usize,

    /// UTF-16 code units one OT op may insert.
    #[arg(long, env = "YSERVE_OT_OP_INSERT_UNITS_MAX", default_value_t = 1_000_000)]
    pub ot_op_insert_units_max: u64,

    /// Documents one OT connection may have open at once.
    #[arg(long, env = "YSERVE_OT_DOCS_PER_CONNECTION_MAX", default_value_t = 64)]
    pub ot_docs_per_connection_max: usize,

    /// Documents one Hocuspocus connection may have open or waiting for Auth at once;
    /// more: 4205.
    #[arg(long, env = "YSERVE_HOCUSPOCUS_DOCS_PER_CONNECTION_MAX", default_value_t = 100)]
    pub hocuspocus_docs_per_connection_max: usize,

    /// Bytes one Hocuspocus connection may send for documents not yet authenticated
    /// (queued until their Auth); more: 4205.
    #[arg(long, env = "YSERVE_HOCUSPOCUS_PREAUTH_BYTES_MAX", default_value_t = 5 * 1024 * 1024)]
    pub hocuspocus_preauth_bytes_max: usize,

    /// Frames one Hocuspocus connection may send for documents not yet authenticated; more: 4205.
    #[arg(long, env = "YSERVE_HOCUSPOCUS_PREAUTH_FRAMES_MAX", default_value_t = 1000)]
    pub hocuspocus_preauth_frames_max: usize,
}

impl Default for Config {
    fn default() -> Self {
        // The clap defaults are the single source of truth.
        Cli::parse_from(["yserve"]).serve
    }
}
