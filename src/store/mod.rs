//! The store: one thread that owns the SQLite connection. Only this module contains SQL.
//!
//! Callers (document actors) send commands over a bounded channel and get replies on
//! `oneshot`s. The thread drains whatever is queued (up to `store_batch_max` commands) and
//! runs it as **one transaction**, then answers every command of the batch: an append is
//! acknowledged only once its transaction is committed, and many appends share one commit
//! (group commit), so durability costs one fsync per batch, not per update. An append may
//! carry its relay frame: the thread writes it to the document's connections after the
//! commit and before the acknowledgement. If the commit
//! fails, every command of the batch gets the error and nothing of it is visible.

pub mod db;
mod error;
pub mod offline;
pub mod postgres;

use error::open_failure;
pub use error::StoreError;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use rusqlite::{Connection, TransactionBehavior};

use db::{params, Db, LogRow, INSERT_UPDATE};

use tokio::sync::{mpsc, oneshot};

/// The numbered migrations in `schema/`, applied in order via `PRAGMA user_version`.
const MIGRATIONS: &[&str] = &[
    include_str!("../../schema/0001_init.sql"),
    include_str!("../../schema/0002_client_owners.sql"),
    include_str!("../../schema/0003_ot.sql"),
    include_str!("../../schema/0004_locks.sql"),
];

/// Commands queued for the store thread; a bound keeps a flood of updates from growing
/// memory without limit (senders wait, which back-pressures the document actors).
const QUEUE_COMMANDS_MAX: usize = 16 * 1024;

/// A document as stored: the latest snapshot and the updates after it.
#[derive(Debug, Default)]
pub struct Loaded {
    pub snapshot: Option<(u64, Vec<u8>)>,
    /// `(seq, update)` in seq order, all after the snapshot.
    pub tail: Vec<(u64, Vec<u8>)>,
    /// The highest seq of the document, 0 if it has no update.
    pub last_seq: u64,
    /// Client id → the user who first wrote with it (identity binding).
    pub owners: Vec<(u64, String)>,
    /// The OT sequencers of the document's texts, with their kept ops.
    pub ot_texts: Vec<StoredText>,
    /// `(key, holder, expires_at_ms)` of the stored locks (some may have expired).
    pub locks: Vec<(String, String, u64)>,
}

/// An OT sequencer as stored.
#[derive(Debug, Default)]
pub struct StoredText {
    pub text: String,
    pub epoch: String,
    pub version: u64,
    /// `(version, src, seq, op JSON)`, oldest first.
    pub ops: Vec<(u64, String, u64, String)>,
}

/// Document state written in the same transaction as the update it belongs to (SPEC §5: the
/// op log, version and epoch are stored atomically with the Yjs update), or alone.
#[derive(Debug, Clone)]
pub enum Record {
    /// A lock taken or renewed.
    LockSet { key: Arc<str>, holder: Arc<str>, expires_at_ms: u64 },
    /// A lock released or expired.
    LockClear { key: Arc<str> },
    /// A sequencer first used (or reset): its row, before any op.
    Text { text: Arc<str>, epoch: Arc<str>, version: u64 },
    /// An op applied at `version`; ops before `keep_from` are dropped (retention).
    Op { text: Arc<str>, version: u64, op: String, src: Arc<str>, seq: u64, user: Arc<str>, keep_from: u64 },
}

pub type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

/// One update to log, with the client ids it binds to its origin user.
#[derive(Debug)]
pub struct Append {
    pub name: Arc<str>,
    /// `(seq, update)`; `None` for OT state alone (an op that changed nothing).
    pub update: Option<(u64, Vec<u8>)>,
    pub origin: Arc<str>,
    /// Client ids first written by `origin` in this update.
    pub claims: Vec<u64>,
    pub ot: Vec<Record>,
    reply: Ack,
    relay: Option<Relay>,
}

impl Append {
    /// An update and nothing else (no OT state, no client id claimed): most appends, and
    /// the ones a batch writes together.
    fn is_plain(&self) -> bool {
        self.update.is_some() && self.ot.is_empty() && self.claims.is_empty()
    }
}

/// How an append is acknowledged once its transaction committed (or failed).
#[derive(Debug)]
enum Ack {
    Oneshot(Reply<()>),
    /// A document's commit ticket, recorded in its `Commits`.
    Ticket(Arc<Commits>, u64),
}

/// A frame the store thread writes to connections right after the append commits, before
/// acknowledging it: a document relaying a committed update needs no wakeup of its own.
pub struct Relay {
    pub frame: bytes::Bytes,
    pub to: Vec<(crate::presence::ConnId, crate::outbox::OutboxPeer)>,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Relay({} bytes to {})", self.frame.len(), self.to.len())
    }
}

/// One document's commit acknowledgements, shared with the store thread: tickets are
/// acknowledged in order, and the document is woken only when it asked for a ticket (it has
/// something parked behind it, or waits to unload) or on a failure.
#[derive(Debug, Default)]
pub struct Commits {
    state: std::sync::Mutex<CommitsState>,
}

#[derive(Debug)]
struct CommitsState {
    committed: u64,
    failed: Option<StoreError>,
    wake_at: u64,
    waker: Option<std::task::Waker>,
}

impl Default for CommitsState {
    fn default() -> Self {
        CommitsState { committed: 0, failed: None, wake_at: u64::MAX, waker: None }
    }
}

impl Commits {
    fn ack(&self, ticket: u64, result: &Result<(), StoreError>) {
        let waker = {
            let mut state = self.state.lock().expect("commits lock poisoned");
            match result {
                Ok(()) => state.committed = state.committed.max(ticket),
                Err(e) => {
                    state.failed.get_or_insert_with(|| e.clone());
                }
            }
            if state.failed.is_some() || state.committed >= state.wake_at {
                state.wake_at = u64::MAX;
                state.waker.take()
            } else {
                None
            }
        };
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// The highest acknowledged ticket, or the failure.
    pub fn committed(&self) -> Result<u64, StoreError> {
        let state = self.state.lock().expect("commits lock poisoned");
        match &state.failed {
            Some(e) => Err(e.clone()),
            None => Ok(state.committed),
        }
    }

    /// Resolves once `ticket` is acknowledged (with the highest acknowledged ticket) or a
    /// commit failed. Cancel-safe.
    pub async fn reached(&self, ticket: u64) -> Result<u64, StoreError> {
        std::future::poll_fn(|cx| {
            let mut state = self.state.lock().expect("commits lock poisoned");
            if let Some(e) = &state.failed {
                return std::task::Poll::Ready(Err(e.clone()));
            }
            if state.committed >= ticket {
                return std::task::Poll::Ready(Ok(state.committed));
            }
            state.wake_at = ticket;
            if !state.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                state.waker = Some(cx.waker().clone());
            }
            std::task::Poll::Pending
        })
        .await
    }

    /// Records a failure that did not come from a commit (the store is gone).
    pub fn fail(&self, e: StoreError) {
        self.ack(u64::MAX, &Err(e));
    }
}

/// A read run inside the store's transaction; it returns what to do once the batch's
/// outcome is known (answer its caller, or report the batch's failure).
type ReadJob = Box<dyn FnOnce(&mut dyn Db) -> Box<dyn FnOnce(&Result<(), StoreError>) + Send> + Send>;

enum Command {
    Load {
        name: Arc<str>,
        reply: Reply<Loaded>,
    },
    Read(ReadJob),
    /// Deletes a document and everything of it; answers whether it existed.
    Delete {
        name: Arc<str>,
        reply: Reply<bool>,
    },
    Append(Append),
    Snapshot {
        name: Arc<str>,
        seq: u64,
        data: Vec<u8>,
    },
    Close {
        reply: oneshot::Sender<()>,
    },
}

/// Cloneable handle to the store thread.
#[derive(Clone, Debug)]
pub struct Store {
    tx: mpsc::Sender<Command>,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Command::Load { name, .. } => write!(f, "Load({name})"),
            Command::Append(a) => write!(f, "Append({}, {:?})", a.name, a.update.as_ref().map(|(s, _)| s)),
            Command::Snapshot { name, seq, .. } => write!(f, "Snapshot({name}, {seq})"),
            Command::Close { .. } => write!(f, "Close"),
            Command::Read(_) => write!(f, "Read"),
            Command::Delete { name, .. } => write!(f, "Delete({name})"),
        }
    }
}

/// How hard SQLite works to make a commit durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Survives power loss (SQLite `synchronous=FULL`).
    Full,
    /// Survives a process crash (SQLite `synchronous=NORMAL` in WAL mode).
    Normal,
}

/// How the store opens its database (`app::store_settings` makes them from `Config`).
#[derive(Debug, Clone)]
pub struct StoreSettings {
    pub db: std::path::PathBuf,
    pub durability: Durability,
    /// How long a commit waits for another process's lock before it fails.
    pub busy_timeout: Duration,
    /// Commands committed in one transaction at most (group commit).
    pub batch_max: usize,
}

impl Store {
    /// Opens (creating if needed) the database, applies migrations and starts the thread.
    /// `config.db` is a SQLite file, or a PostgreSQL URL (`postgres://…`).
    pub fn open(config: &StoreSettings) -> Result<Store, StoreError> {
        let (tx, rx) = mpsc::channel(QUEUE_COMMANDS_MAX);
        let batch_max = config.batch_max.max(1);
        let spawn = |open: Box<dyn FnOnce() -> Result<Box<dyn Db + Send>, StoreError> + Send>| {
            // The engine is opened on the thread that will use it (PostgreSQL's connection
            // must be made, used and dropped off the server's runtime); its failure comes back.
            let (opened_tx, opened) = std::sync::mpsc::sync_channel(1);
            thread::Builder::new()
                .name("yserve-store".into())
                .spawn(move || match open() {
                    Ok(db) => {
                        let _ = opened_tx.send(Ok(()));
                        Worker { db, ids: HashMap::new(), conflicted: HashSet::new() }.run(rx, batch_max)
                    }
                    Err(e) => {
                        let _ = opened_tx.send(Err(e));
                    }
                })
                .expect("spawn store thread");
            opened.recv().unwrap_or(Err(StoreError::Closed))
        };
        match location(&config.db) {
            Location::Postgres(url) => {
                let statement_timeout = config.busy_timeout;
                spawn(Box::new(move || Ok(Box::new(postgres::Postgres::connect(&url, statement_timeout)?))))?
            }
            Location::Sqlite(path) => {
                let conn =
                    open_connection(path, config.durability, config.busy_timeout).map_err(|e| open_failure(path, e))?;
                // SQLite quietly opens a file it may not write read-only; every commit would
                // then fail. A server that cannot store an edit must not start.
                if conn.is_readonly(rusqlite::MAIN_DB)? {
                    return Err(StoreError::ReadOnly { path: path.display().to_string() });
                }
                spawn(Box::new(move || Ok(Box::new(conn))))?
            }
        }
        Ok(Store { tx })
    }

    pub async fn load(&self, name: Arc<str>) -> Result<Loaded, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Load { name, reply }).await?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Queues an update; the returned receiver resolves once it is committed (or failed).
    pub async fn append(
        &self,
        name: Arc<str>,
        seq: u64,
        data: Vec<u8>,
        origin: Arc<str>,
    ) -> Result<oneshot::Receiver<Result<(), StoreError>>, StoreError> {
        let (reply, rx) = oneshot::channel();
        let (update, reply) = (Some((seq, data)), Ack::Oneshot(reply));
        let append = Append { name, update, origin, claims: Vec::new(), ot: Vec::new(), reply, relay: None };
        self.send(Command::Append(append)).await?;
        Ok(rx)
    }

    /// A document's append: an update and/or OT state, with `claims` (client ids first
    /// written by `origin`), all in one transaction; `update` is `None` when only OT state
    /// changes. It is acknowledged as `ticket` in `commits`, and `relay` (if any) is written
    /// to the document's connections as soon as it is committed.
    #[allow(clippy::too_many_arguments)]
    pub async fn append_ticketed(
        &self,
        name: Arc<str>,
        update: Option<(u64, Vec<u8>)>,
        origin: Arc<str>,
        claims: Vec<u64>,
        ot: Vec<Record>,
        commits: Arc<Commits>,
        ticket: u64,
        relay: Option<Relay>,
    ) -> Result<(), StoreError> {
        let reply = Ack::Ticket(commits, ticket);
        self.send(Command::Append(Append { name, update, origin, claims, ot, reply, relay })).await
    }

    /// Runs `query` on the store thread, inside the next batch, and answers once that batch
    /// committed: a read never reveals a write that then fails. The queries are this
    /// module's functions (`offline::documents`, `offline::log`, …): SQL stays here.
    pub async fn read<T: Send + 'static>(
        &self,
        query: impl FnOnce(&mut dyn Db) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (tx, rx) = oneshot::channel();
        let job: ReadJob = Box::new(move |conn| {
            let result = query(conn);
            Box::new(move |batch: &Result<(), StoreError>| {
                let _ = tx.send(match batch {
                    Ok(()) => result,
                    Err(e) => Err(e.clone()),
                });
            })
        });
        self.send(Command::Read(job)).await?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Deletes a document: its row, updates, snapshots, owners and OT state. `false` if it
    /// had none. The caller makes sure no actor of it is live.
    pub async fn delete(&self, name: Arc<str>) -> Result<bool, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Delete { name, reply }).await?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Queues a snapshot; it commits with the batch it lands in, after every earlier append.
    pub async fn snapshot(&self, name: Arc<str>, seq: u64, data: Vec<u8>) -> Result<(), StoreError> {
        self.send(Command::Snapshot { name, seq, data }).await
    }

    /// Commits everything queued before this call, then stops the thread.
    pub async fn close(&self) {
        let (reply, rx) = oneshot::channel();
        if self.send(Command::Close { reply }).await.is_ok() {
            let _ = rx.await;
        }
    }

    async fn send(&self, cmd: Command) -> Result<(), StoreError> {
        self.tx.send(cmd).await.map_err(|_| StoreError::Closed)
    }
}

/// Where a `--db` points.
pub enum Location<'a> {
    Sqlite(&'a Path),
    Postgres(String),
}

/// A connection to `--db` outside the store thread (the CLI, tests): SQLite (created if
/// missing, migrated) or PostgreSQL (migrated). Not for use on a runtime's thread.
pub fn connect(db: &Path, busy_timeout: Duration) -> Result<Box<dyn Db>, StoreError> {
    Ok(match location(db) {
        Location::Postgres(url) => Box::new(postgres::Postgres::connect(&url, busy_timeout)?),
        Location::Sqlite(path) => Box::new(open_connection(path, Durability::Full, busy_timeout)?),
    })
}

/// `--db` as it may be logged: a path, or a URL without its password.
pub fn describe(db: &Path) -> String {
    match location(db) {
        Location::Sqlite(path) => path.display().to_string(),
        Location::Postgres(url) => postgres::redact(&url),
    }
}

pub fn location(db: &Path) -> Location<'_> {
    match db.to_str() {
        Some(url) if postgres::is_url(url) => Location::Postgres(url.to_string()),
        _ => Location::Sqlite(db),
    }
}

pub fn open_connection(path: &Path, sync: Durability, busy_timeout: Duration) -> Result<Connection, StoreError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError::CreateDir { path: dir.display().to_string(), message: e.to_string() })?;
    }
    let mut conn = Connection::open(path)?;
    conn.busy_timeout(busy_timeout)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(
        None,
        "synchronous",
        match sync {
            Durability::Full => "FULL",
            Durability::Normal => "NORMAL",
        },
    )?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    migrate(&mut conn)?;
    Ok(conn)
}

fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let version: usize = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    // A newer binary's tables may mean something this one would break (SPEC §3: the schema
    // is versioned so that operators can rely on it); refuse rather than guess.
    if version > MIGRATIONS.len() {
        return Err(StoreError::SchemaTooNew { found: version, known: MIGRATIONS.len() });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version) {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", i + 1)?;
        tx.commit()?;
        tracing::info!(migration = i + 1, "applied schema migration");
    }
    Ok(())
}

struct Worker {
    db: Box<dyn Db + Send>,
    /// Document name → row id, filled lazily (a document gets a row with its first update).
    ids: HashMap<Arc<str>, i64>,
    /// Documents one of whose appends found its seq already written (by another server
    /// sharing the database): every later append and snapshot of theirs is refused too, since
    /// it may build on the refused one, until the document is loaded again.
    conflicted: HashSet<Arc<str>>,
}

/// What to answer once the batch's transaction has committed (or failed).
enum Pending {
    Load(Reply<Loaded>, Result<Loaded, StoreError>),
    Read(Box<dyn FnOnce(&Result<(), StoreError>) + Send>),
    Delete(Reply<bool>, Result<bool, StoreError>),
    /// With the append's own refusal, if any (its seq was taken).
    Append(Ack, Option<Relay>, Arc<str>, Option<StoreError>),
    Close(oneshot::Sender<()>),
}

impl Worker {
    fn run(mut self, mut rx: mpsc::Receiver<Command>, batch_max: usize) {
        let mut batch = Vec::with_capacity(batch_max);
        let mut closing = false;
        while !closing {
            let Some(first) = rx.blocking_recv() else {
                break;
            };
            batch.push(first);
            while batch.len() < batch_max {
                match rx.try_recv() {
                    Ok(cmd) => batch.push(cmd),
                    Err(_) => break,
                }
            }
            closing = batch.iter().any(|c| matches!(c, Command::Close { .. }));
            self.run_batch(&mut batch);
        }
        tracing::info!("store closed");
    }

    fn run_batch(&mut self, batch: &mut Vec<Command>) {
        let started = Instant::now();
        let count = batch.len();
        let mut pending = Vec::with_capacity(count);
        let result = self.execute(batch.drain(..), &mut pending);
        if let Err(e) = &result {
            tracing::error!(error = %e, commands = count, "store batch failed; nothing of it was committed");
            // Ids learnt inside a rolled-back transaction may be stale.
            self.ids.clear();
        }
        for p in pending {
            match p {
                Pending::Load(reply, r) => {
                    let _ = reply.send(match &result {
                        Ok(()) => r,
                        Err(e) => Err(e.clone()),
                    });
                }
                Pending::Append(ack, relay, name, refused) => {
                    let result = match refused {
                        Some(e) => Err(e),
                        None => result.clone(),
                    };
                    // Committed: the relay goes out before the ack, so whatever its document
                    // parked behind this ticket follows it on the wire.
                    // Not after an earlier commit of the document failed either: the document
                    // may have issued more before it heard of the failure.
                    let failed_before = matches!(&ack, Ack::Ticket(commits, _) if commits.committed().is_err());
                    if let (Ok(()), Some(relay), false) = (&result, relay, failed_before) {
                        relay_committed(&name, relay);
                    }
                    match ack {
                        Ack::Oneshot(reply) => {
                            let _ = reply.send(result.clone());
                        }
                        Ack::Ticket(commits, ticket) => commits.ack(ticket, &result),
                    }
                }
                Pending::Read(answer) => answer(&result),
                Pending::Delete(reply, r) => {
                    let _ = reply.send(match &result {
                        Ok(()) => r,
                        Err(e) => Err(e.clone()),
                    });
                }
                Pending::Close(reply) => {
                    let _ = reply.send(());
                }
            }
        }
        crate::metrics::METRICS.commit(started.elapsed(), count);
        tracing::trace!(commands = count, elapsed_us = started.elapsed().as_micros() as u64, "store batch");
    }

    fn execute(&mut self, batch: impl Iterator<Item = Command>, pending: &mut Vec<Pending>) -> Result<(), StoreError> {
        // Cached statements for the transaction itself: at one update per commit (light
        // load), re-parsing BEGIN/COMMIT showed in profiles. One timestamp per batch.
        let now = humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string();
        let db = &mut *self.db;
        if let Err(e) = db.begin_write() {
            // Still collect the replies so every caller hears about the failure.
            for cmd in batch {
                pending.push(match cmd {
                    Command::Load { reply, .. } => Pending::Load(reply, Err(StoreError::Closed)),
                    Command::Append(a) => Pending::Append(a.reply, None, a.name, None),
                    Command::Snapshot { .. } => continue,
                    Command::Close { reply } => Pending::Close(reply),
                    Command::Read(job) => Pending::Read(job(db)),
                    Command::Delete { reply, .. } => Pending::Delete(reply, Err(StoreError::Closed)),
                });
            }
            return Err(e);
        }
        let mut first_error = None;
        // Plain appends (an update, nothing else) wait here to be written together
        // (`Db::insert_updates`: one round trip on PostgreSQL); anything else that touches the
        // database writes them first, so statements keep the batch's order.
        let mut deferred: Vec<Deferred> = Vec::new();
        let conflicted = &mut self.conflicted;
        let ids = &mut self.ids;
        for cmd in batch {
            if !matches!(&cmd, Command::Append(a) if a.is_plain()) {
                write_deferred(db, conflicted, &mut deferred, pending, &mut first_error, &now);
            }
            match cmd {
                Command::Load { name, reply } => {
                    conflicted.remove(&name);
                    let r = load(db, &name);
                    pending.push(Pending::Load(reply, r));
                }
                Command::Append(mut a) => {
                    let mut refused = None;
                    if first_error.is_none() {
                        let seq = a.update.as_ref().map_or(0, |(seq, _)| *seq);
                        let conflict = || StoreError::SeqConflict { doc: a.name.to_string(), seq };
                        if conflicted.contains(&a.name) {
                            refused = Some(conflict());
                        } else if a.is_plain() {
                            match doc_id(db, ids, &a.name, &now) {
                                Ok(doc_id) => {
                                    let (seq, data) = a.update.take().expect("a plain append has an update");
                                    deferred.push(Deferred {
                                        pending: pending.len(),
                                        name: a.name.clone(),
                                        doc_id,
                                        seq,
                                        data,
                                        origin: a.origin.clone(),
                                    });
                                }
                                Err(e) => first_error = Some(e),
                            }
                        } else {
                            match append(db, ids, &a, &now) {
                                Ok(Appended::Yes) => {}
                                Ok(Appended::SeqTaken) => {
                                    tracing::error!(doc = %a.name, seq, "refused: seq already in the log (another server wrote it); the document reloads");
                                    conflicted.insert(a.name.clone());
                                    refused = Some(conflict());
                                }
                                Err(e) => first_error = Some(e),
                            }
                        }
                    }
                    let Append { reply, relay, name, .. } = a;
                    pending.push(Pending::Append(reply, relay, name, refused));
                }
                Command::Snapshot { name, seq, data } => {
                    if first_error.is_none() && !conflicted.contains(&name) {
                        if let Err(e) = snapshot(db, ids, &name, seq, &data, &now) {
                            first_error = Some(e);
                        }
                    }
                }
                Command::Close { reply } => pending.push(Pending::Close(reply)),
                Command::Read(job) => pending.push(Pending::Read(job(db))),
                Command::Delete { name, reply } => {
                    let r = delete_document(db, &name);
                    ids.remove(&name);
                    if let Err(e) = &r {
                        first_error.get_or_insert_with(|| e.clone());
                    }
                    pending.push(Pending::Delete(reply, r));
                }
            }
        }
        write_deferred(db, conflicted, &mut deferred, pending, &mut first_error, &now);
        let result = match first_error {
            Some(e) => Err(e),
            None => db.commit(),
        };
        if result.is_err() {
            if let Err(e) = db.rollback() {
                tracing::error!(error = %e, "rollback failed");
            }
        }
        result
    }
}

/// Writes a committed update's frame to the connections of its document (never blocking: see
/// `outbox`). A connection too slow to take it is closed with 1013 by its outbox.
fn relay_committed(doc: &str, relay: Relay) {
    for (conn, peer) in relay.to {
        if peer.send(relay.frame.clone()) == Err(crate::outbox::SendError::Overflow) {
            tracing::warn!(conn = conn.get(), doc, "refused: slow consumer, outbound queue full (1013)");
        }
    }
}

fn doc_id(db: &mut dyn Db, ids: &mut HashMap<Arc<str>, i64>, name: &Arc<str>, now: &str) -> Result<i64, StoreError> {
    if let Some(id) = ids.get(name) {
        return Ok(*id);
    }
    db.execute(
        "INSERT INTO documents(name, created_at) VALUES (?1, ?2) ON CONFLICT(name) DO NOTHING",
        &params![&**name, now],
    )?;
    let id = db.one("SELECT id FROM documents WHERE name = ?1", &params![&**name], |r| r.int(0))?;
    ids.insert(name.clone(), id);
    Ok(id)
}

/// A plain append waiting in its batch to be written with the others (`Worker::execute`).
struct Deferred {
    /// Its entry in the batch's replies.
    pending: usize,
    name: Arc<str>,
    doc_id: i64,
    seq: u64,
    data: Vec<u8>,
    origin: Arc<str>,
}

/// Writes the deferred appends in one `insert_updates`. A row whose seq was taken refuses its
/// append and marks its document conflicted (as `append` does); rows of that document after
/// it, written by the same statement, are taken back out and refused too: a conflicted
/// document writes nothing more until it reloads. After an earlier failure in the batch
/// they are dropped unwritten (the batch rolls back).
fn write_deferred(
    db: &mut dyn Db,
    conflicted: &mut HashSet<Arc<str>>,
    deferred: &mut Vec<Deferred>,
    pending: &mut [Pending],
    first_error: &mut Option<StoreError>,
    now: &str,
) {
    if !deferred.is_empty() && first_error.is_none() {
        if let Err(e) = write_rows(db, conflicted, deferred, pending, now) {
            *first_error = Some(e);
        }
    }
    deferred.clear();
}

fn write_rows(
    db: &mut dyn Db,
    conflicted: &mut HashSet<Arc<str>>,
    deferred: &[Deferred],
    pending: &mut [Pending],
    now: &str,
) -> Result<(), StoreError> {
    let rows: Vec<LogRow<'_>> = deferred
        .iter()
        .map(|d| LogRow { doc_id: d.doc_id, seq: d.seq as i64, data: &d.data, origin: &d.origin, created_at: now })
        .collect();
    let written = db.insert_updates(&rows)?;
    for (d, written) in deferred.iter().zip(written) {
        let after_conflict = conflicted.contains(&d.name);
        if written && !after_conflict {
            continue;
        }
        if written {
            db.execute("DELETE FROM updates WHERE doc_id = ?1 AND seq = ?2", &params![d.doc_id, d.seq as i64])?;
        } else {
            tracing::error!(doc = %d.name, seq = d.seq, "refused: seq already in the log (another server wrote it); the document reloads");
        }
        conflicted.insert(d.name.clone());
        if let Pending::Append(_, _, _, refused) = &mut pending[d.pending] {
            *refused = Some(StoreError::SeqConflict { doc: d.name.to_string(), seq: d.seq });
        }
    }
    Ok(())
}

/// Whether an append was written.
enum Appended {
    Yes,
    /// Its seq is already in the log: nothing of it was written.
    SeqTaken,
}

fn append(db: &mut dyn Db, ids: &mut HashMap<Arc<str>, i64>, a: &Append, now: &str) -> Result<Appended, StoreError> {
    let id = doc_id(db, ids, &a.name, now)?;
    if let Some((seq, data)) = &a.update {
        let written = db.execute(INSERT_UPDATE, &params![id, *seq as i64, data, &*a.origin, now])?;
        if written == 0 {
            return Ok(Appended::SeqTaken);
        }
    }
    let update_seq = a.update.as_ref().map(|(seq, _)| *seq as i64);
    for record in &a.ot {
        match record {
            Record::LockSet { key, holder, expires_at_ms } => {
                let expires_at = humantime::format_rfc3339_millis(
                    std::time::UNIX_EPOCH + std::time::Duration::from_millis(*expires_at_ms),
                )
                .to_string();
                db.execute(
                    "INSERT INTO locks(doc_id, key, holder, expires_at_ms, expires_at, created_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                     ON CONFLICT(doc_id, key) DO UPDATE SET holder = ?3, expires_at_ms = ?4, expires_at = ?5",
                    &params![id, &**key, &**holder, *expires_at_ms as i64, &expires_at, now],
                )?;
            }
            Record::LockClear { key } => {
                db.execute("DELETE FROM locks WHERE doc_id = ?1 AND key = ?2", &params![id, &**key])?;
            }
            Record::Text { text, epoch, version } => {
                db.execute(
                    "INSERT INTO ot_texts(doc_id, text, epoch, version, created_at, updated_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?5)
                     ON CONFLICT(doc_id, text) DO UPDATE SET epoch = ?3, version = ?4, updated_at = ?5",
                    &params![id, &**text, &**epoch, *version as i64, now],
                )?;
            }
            Record::Op { text, version, op, src, seq, user, keep_from } => {
                db.execute(
                    "INSERT INTO ot_ops(doc_id, text, version, op, src, seq, user_id, update_seq, created_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                    &params![id, &**text, *version as i64, op, &**src, *seq as i64, &**user, update_seq, now],
                )?;
                db.execute(
                    "UPDATE ot_texts SET version = ?3, updated_at = ?4 WHERE doc_id = ?1 AND text = ?2",
                    &params![id, &**text, (*version + 1) as i64, now],
                )?;
                db.execute(
                    "DELETE FROM ot_ops WHERE doc_id = ?1 AND text = ?2 AND version < ?3",
                    &params![id, &**text, *keep_from as i64],
                )?;
            }
        }
    }
    for client in &a.claims {
        db.execute(
            "INSERT INTO client_owners(doc_id, client_id, user_id, created_at) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT DO NOTHING",
            &params![id, *client as i64, &*a.origin, now],
        )?;
    }
    Ok(Appended::Yes)
}

fn snapshot(
    db: &mut dyn Db,
    ids: &mut HashMap<Arc<str>, i64>,
    name: &Arc<str>,
    seq: u64,
    data: &[u8],
    now: &str,
) -> Result<(), StoreError> {
    let id = doc_id(db, ids, name, now)?;
    offline::put_snapshot(db, id, seq, data, now)
}

fn delete_document(db: &mut dyn Db, name: &str) -> Result<bool, StoreError> {
    let Some(id) = offline::doc_id(db, name)? else {
        return Ok(false);
    };
    // Children first: the foreign keys cascade, but explicit deletes do not depend on
    // `foreign_keys` being on in whatever opened the file before.
    for sql in [
        "DELETE FROM updates WHERE doc_id = ?1",
        "DELETE FROM snapshots WHERE doc_id = ?1",
        "DELETE FROM client_owners WHERE doc_id = ?1",
        "DELETE FROM ot_ops WHERE doc_id = ?1",
        "DELETE FROM ot_texts WHERE doc_id = ?1",
        "DELETE FROM locks WHERE doc_id = ?1",
        "DELETE FROM documents WHERE id = ?1",
    ] {
        db.execute(sql, &params![id])?;
    }
    Ok(true)
}

fn load(db: &mut dyn Db, name: &str) -> Result<Loaded, StoreError> {
    let Some(id) = offline::doc_id(db, name)? else {
        return Ok(Loaded::default());
    };
    // The snapshot, the updates after it and so the highest seq come from one statement, so
    // one view of the log even at PostgreSQL's READ COMMITTED: read separately, an update
    // committed by another server (or `yserve import`) between the reads would be counted in
    // the highest seq but missing from the tail, and a `compact --prune-history` between
    // them would leave a gap between an old snapshot and the pruned tail.
    let rows = db.rows(
        "WITH s AS (SELECT seq, data FROM snapshots WHERE doc_id = ?1 ORDER BY seq DESC LIMIT 1) \
         SELECT CAST(1 AS BIGINT), seq, data FROM s \
         UNION ALL \
         SELECT CAST(0 AS BIGINT), seq, data FROM updates WHERE doc_id = ?1 AND seq > coalesce((SELECT seq FROM s), 0) \
         ORDER BY 1 DESC, 2",
        &params![id],
        |r| Ok((r.uint(0)? == 1, r.uint(1)?, r.blob(2)?)),
    )?;
    let mut snapshot = None;
    let mut tail = Vec::with_capacity(rows.len());
    for (is_snapshot, seq, data) in rows {
        match is_snapshot {
            true => snapshot = Some((seq, data)),
            false => tail.push((seq, data)),
        }
    }
    // The update a snapshot covers last is never pruned (`offline::prune_before`), so the
    // highest seq is the tail's last, or the snapshot's when nothing came after it.
    let last_seq = tail.last().or(snapshot.as_ref()).map_or(0, |(seq, _)| *seq);
    let owners = db.rows("SELECT client_id, user_id FROM client_owners WHERE doc_id = ?1", &params![id], |r| {
        Ok((r.uint(0)?, r.text(1)?))
    })?;
    let mut ot_texts = db.rows("SELECT text, epoch, version FROM ot_texts WHERE doc_id = ?1", &params![id], |r| {
        Ok(StoredText { text: r.text(0)?, epoch: r.text(1)?, version: r.uint(2)?, ops: Vec::new() })
    })?;
    for t in &mut ot_texts {
        t.ops = db.rows(
            "SELECT version, src, seq, op FROM ot_ops WHERE doc_id = ?1 AND text = ?2 ORDER BY version",
            &params![id, &t.text],
            |r| Ok((r.uint(0)?, r.text(1)?, r.uint(2)?, r.text(3)?)),
        )?;
    }
    let locks = db.rows("SELECT key, holder, expires_at_ms FROM locks WHERE doc_id = ?1", &params![id], |r| {
        Ok((r.text(0)?, r.text(1)?, r.uint(2)?))
    })?;
    Ok(Loaded { snapshot, tail, last_seq, owners, ot_texts, locks })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dir: &Path) -> StoreSettings {
        crate::app::store_settings(&crate::config::Config { db: dir.join("sub/t.db"), ..Default::default() })
    }

    /// A fresh PostgreSQL database on the test server (`scripts/test.sh` starts one and sets
    /// `YSERVE_TEST_PG`; `scripts/pg.sh start DIR` does it by hand).
    pub(crate) fn postgres_config() -> StoreSettings {
        let server = std::env::var("YSERVE_TEST_PG").expect(
            "YSERVE_TEST_PG is not set: run the suite with scripts/test.sh, or `eval \"$(scripts/pg.sh start DIR)\"`",
        );
        let url = postgres::fresh_database(&server).expect("create a test database");
        crate::app::store_settings(&crate::config::Config { db: url.into(), ..Default::default() })
    }

    /// Both engines, SQLite in `dir`: every store test runs on each.
    fn engines(dir: &Path) -> [StoreSettings; 2] {
        [config(dir), postgres_config()]
    }

    fn tempdir() -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("yserve-store-{}-{}", std::process::id(), rand_suffix()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn rand_suffix() -> u64 {
        use std::hash::{BuildHasher, RandomState};
        RandomState::new().hash_one(std::time::SystemTime::now())
    }

    #[tokio::test]
    async fn appends_and_snapshots_load_back() {
        let dir = tempdir();
        for engine in engines(&dir) {
            appends_and_snapshots_load_back_on(&engine).await;
        }
        let _ = std::fs::remove_dir_all(dir);
    }

    async fn appends_and_snapshots_load_back_on(engine: &StoreSettings) {
        let store = Store::open(engine).unwrap();
        let name: Arc<str> = "a/b".into();
        let origin: Arc<str> = "test".into();
        assert_eq!(store.load(name.clone()).await.unwrap().last_seq, 0);
        let mut acks = Vec::new();
        for seq in 1..=5u64 {
            acks.push(store.append(name.clone(), seq, vec![seq as u8], origin.clone()).await.unwrap());
        }
        store.snapshot(name.clone(), 3, b"snap".to_vec()).await.unwrap();
        for ack in acks {
            ack.await.unwrap().unwrap();
        }
        let loaded = store.load(name.clone()).await.unwrap();
        assert_eq!(loaded.snapshot, Some((3, b"snap".to_vec())));
        assert_eq!(loaded.tail, vec![(4, vec![4]), (5, vec![5])]);
        assert_eq!(loaded.last_seq, 5);
        store.close().await;
    }

    #[tokio::test]
    async fn a_taken_seq_is_refused_and_changes_nothing() {
        let dir = tempdir();
        for engine in engines(&dir) {
            a_taken_seq_is_refused_and_changes_nothing_on(&engine).await;
        }
        let _ = std::fs::remove_dir_all(dir);
    }

    async fn a_taken_seq_is_refused_and_changes_nothing_on(engine: &StoreSettings) {
        let store = Store::open(engine).unwrap();
        let name: Arc<str> = "d".into();
        let origin: Arc<str> = "test".into();
        store.append(name.clone(), 1, vec![1], origin.clone()).await.unwrap().await.unwrap().unwrap();
        // Seq 1 again: the first writer keeps it; this append and every later one of the
        // document are refused until it is loaded again, while other documents commit.
        let dup = store.append(name.clone(), 1, vec![9], origin.clone()).await.unwrap();
        let next = store.append(name.clone(), 2, vec![2], origin.clone()).await.unwrap();
        let other = store.append("other".into(), 1, vec![7], origin.clone()).await.unwrap();
        assert!(matches!(dup.await.unwrap(), Err(StoreError::SeqConflict { seq: 1, .. })));
        assert!(matches!(next.await.unwrap(), Err(StoreError::SeqConflict { seq: 2, .. })));
        other.await.unwrap().unwrap();
        let loaded = store.load(name.clone()).await.unwrap();
        assert_eq!(loaded.tail, vec![(1, vec![1])]);
        // Loaded again: its appends are taken again.
        store.append(name.clone(), 2, vec![2], origin.clone()).await.unwrap().await.unwrap().unwrap();
        assert_eq!(store.load(name).await.unwrap().tail, vec![(1, vec![1]), (2, vec![2])]);
        assert_eq!(store.load("other".into()).await.unwrap().tail, vec![(1, vec![7])]);
        store.close().await;
    }

    /// Two stores (two servers) on one PostgreSQL database append to one document at once,
    /// each numbering from what it believes is the last seq: every seq ends up written once,
    /// by exactly the store whose append was acknowledged, and nothing acknowledged is lost.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_servers_appending_at_once_never_share_or_lose_a_seq() {
        let engine = postgres_config();
        let (a, b) = (Store::open(&engine).unwrap(), Store::open(&engine).unwrap());
        let name: Arc<str> = "shared".into();
        let run = |store: Store, tag: u8| {
            let name = name.clone();
            tokio::spawn(async move {
                let mut won = Vec::new();
                let mut next = store.load(name.clone()).await.unwrap().last_seq + 1;
                while next <= 300 {
                    let data = vec![tag, (next % 251) as u8];
                    match store.append(name.clone(), next, data, "t".into()).await.unwrap().await.unwrap() {
                        Ok(()) => {
                            won.push(next);
                            next += 1;
                        }
                        // Another server took it: reload (as a document does) and go on.
                        Err(StoreError::SeqConflict { .. }) => {
                            next = store.load(name.clone()).await.unwrap().last_seq + 1;
                        }
                        Err(e) => panic!("{e}"),
                    }
                }
                won
            })
        };
        let (won_a, won_b) = (run(a.clone(), 1), run(b.clone(), 2));
        let (won_a, won_b) = (won_a.await.unwrap(), won_b.await.unwrap());
        let loaded = a.load(name.clone()).await.unwrap();
        let seqs: Vec<u64> = loaded.tail.iter().map(|(s, _)| *s).collect();
        assert_eq!(seqs, (1..=300).collect::<Vec<_>>(), "every seq once, none missing");
        for (seq, data) in &loaded.tail {
            let owner = if won_a.contains(seq) { 1 } else { 2 };
            assert_eq!(data[0], owner, "seq {seq} holds the data of the store it acknowledged");
        }
        assert_eq!(won_a.len() + won_b.len(), 300);
        a.close().await;
        b.close().await;
    }

    /// A relay frame's bytes as they reach the client: one unmasked binary frame.
    async fn read_relayed(peer: &mut tokio::io::DuplexStream) -> Vec<u8> {
        use tokio::io::AsyncReadExt;
        let mut head = [0u8; 2];
        peer.read_exact(&mut head).await.unwrap();
        assert_eq!(head[0], 0x82);
        let mut data = vec![0; head[1] as usize];
        peer.read_exact(&mut data).await.unwrap();
        data
    }

    fn relay_to_pipe(
        frame: &[u8],
    ) -> (Relay, tokio::io::DuplexStream, crate::outbox::Outbox, crate::outbox::OutboxSender) {
        let (ours, theirs) = tokio::io::duplex(1024);
        let (_socket, outbox, sender) = crate::outbox::link(ours, 1024, crate::outbox::Opcode::Binary);
        let relay =
            Relay { frame: bytes::Bytes::copy_from_slice(frame), to: vec![(crate::conn::ConnId(7), sender.peer())] };
        (relay, theirs, outbox, sender)
    }

    #[tokio::test]
    async fn a_ticket_is_reached_once_acknowledged_and_its_relay_is_written_first() {
        let dir = tempdir();
        let store = Store::open(&config(&dir)).unwrap();
        let (name, origin): (Arc<str>, Arc<str>) = ("r".into(), "test".into());
        let commits = Arc::new(Commits::default());
        let (relay, mut peer, _outbox, _sender) = relay_to_pipe(b"relayed");
        let update = Some((1, vec![1]));
        store
            .append_ticketed(name.clone(), update, origin.clone(), vec![], vec![], commits.clone(), 1, Some(relay))
            .await
            .unwrap();
        assert_eq!(commits.reached(1).await.unwrap(), 1);
        // Acknowledged only after the relay went out: the frame is already in the pipe.
        let mut byte = [0u8; 1];
        assert_eq!(tokio::io::AsyncReadExt::read(&mut peer, &mut byte).await.unwrap(), 1);
        store.append_ticketed(name.clone(), None, origin, vec![], vec![], commits.clone(), 2, None).await.unwrap();
        assert_eq!(commits.reached(2).await.unwrap(), 2);
        assert_eq!(commits.committed().unwrap(), 2);
        store.close().await;
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn a_failed_commit_writes_no_relay_and_fails_every_waiter() {
        let dir = tempdir();
        let store = Store::open(&config(&dir)).unwrap();
        let (name, origin): (Arc<str>, Arc<str>) = ("f".into(), "test".into());
        store.append(name.clone(), 1, vec![1], origin.clone()).await.unwrap().await.unwrap().unwrap();
        let commits = Arc::new(Commits::default());
        let (relay, mut peer, _outbox, sender) = relay_to_pipe(b"never");
        // Seq 1 again violates the primary key: the commit fails.
        let dup = Some((1, vec![9]));
        store
            .append_ticketed(name.clone(), dup, origin.clone(), vec![], vec![], commits.clone(), 1, Some(relay))
            .await
            .unwrap();
        assert!(commits.reached(u64::MAX).await.is_err(), "a failure wakes a waiter for any ticket");
        assert!(commits.committed().is_err());
        // The pipe holds nothing but what is sent after the failure.
        sender.peer().send(bytes::Bytes::from_static(b"after")).unwrap();
        assert_eq!(read_relayed(&mut peer).await, b"after");
        store.close().await;
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn a_waiter_is_not_woken_by_an_earlier_ticket() {
        let commits = Arc::new(Commits::default());
        commits.ack(1, &Ok(()));
        let waiter = tokio::spawn({
            let commits = commits.clone();
            async move { commits.reached(3).await }
        });
        tokio::task::yield_now().await;
        commits.ack(2, &Ok(()));
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(!waiter.is_finished(), "ticket 2 does not reach 3");
        commits.ack(3, &Ok(()));
        assert_eq!(waiter.await.unwrap().unwrap(), 3);
    }

    /// Once a commit of a document failed, no later relay of it may reach its connections:
    /// the document may issue more tickets before it acts on the failure.
    #[tokio::test]
    async fn no_relay_is_written_after_an_earlier_commit_of_the_document_failed() {
        let dir = tempdir();
        let store = Store::open(&config(&dir)).unwrap();
        let (name, origin): (Arc<str>, Arc<str>) = ("g".into(), "test".into());
        store.append(name.clone(), 1, vec![1], origin.clone()).await.unwrap().await.unwrap().unwrap();
        let commits = Arc::new(Commits::default());
        // Ticket 1 fails (seq 1 is taken)...
        let dup = Some((1, vec![9]));
        store
            .append_ticketed(name.clone(), dup, origin.clone(), vec![], vec![], commits.clone(), 1, None)
            .await
            .unwrap();
        assert!(commits.reached(1).await.is_err());
        // ...ticket 2 (seq 2, which the actor had already applied) comes in a later batch.
        let (relay, mut peer, _outbox, sender) = relay_to_pipe(b"after-failure");
        let next = Some((2, vec![2]));
        store
            .append_ticketed(name.clone(), next, origin.clone(), vec![], vec![], commits.clone(), 2, Some(relay))
            .await
            .unwrap();
        // Once a later command is answered, ticket 2's batch has been handled.
        store.append("h".into(), 1, vec![3], origin).await.unwrap().await.unwrap().unwrap();
        sender.peer().send(bytes::Bytes::from_static(b"marker")).unwrap();
        assert_eq!(read_relayed(&mut peer).await, b"marker", "a relay went out after the document's failed commit");
        store.close().await;
        let _ = std::fs::remove_dir_all(dir);
    }
}
