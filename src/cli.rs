//! The operator commands that work on the database file directly, without a server:
//! `docs`, `log`, `export` (read commands) and `import`, `compact` (write commands). Called by
//! `main`; the SQL is in `store::offline`, the JSON rendering in `render`, and updates are
//! checked by the server's own `protocol::check_update`.
//!
//! Read commands run while a server is serving the same database: in WAL mode they read a
//! consistent view and never block its commits. Write commands first take the database lock
//! (`dblock`), which a running server holds for its whole life, and refuse to run without it:
//! the server keeps documents in memory and numbers their updates itself, so rows written
//! behind its back would be lost or collide.
//!
//! Results go to stdout (tables, or JSON lines with `--json`); progress and notes go to stderr.
//! Rebuilding a long history shows an `indicatif` progress bar when stderr is a terminal, and a
//! plain line every few seconds otherwise (logs, CI).

use std::io::{IsTerminal, Write};
use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::{HumanBytes, ProgressBar, ProgressStyle};
use serde_json::Value;
use yrs::updates::decoder::Decode;
use yrs::{ClientID, Doc, Observable, OffsetKind, Options, ReadTxn, StateVector, Transact, TransactionMut, Update};

use crate::config::{CompactArgs, DocsArgs, ExportArgs, ExportFormat, ImportArgs, LogArgs};
use crate::dblock::{DbLock, LockError};
use crate::docname::{DocName, DocNameError};
use crate::ot::delta::Delta;
use crate::ot::ytext;
use crate::render;
use crate::store::db::Db;
use crate::store::offline::{self, OtOp, StateAt};
use crate::store::{self, Location, StoreError};
use crate::validate::{Limits, Summary};

/// The `origin` of updates written by `yserve import`.
pub const CLI_ORIGIN: &str = "cli";

/// How long a statement waits for a lock held by another connection (the server's commit,
/// an operator's `sqlite3`).
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Updates applied per yrs transaction when rebuilding a document. One transaction per update
/// pays the commit's bookkeeping each time; one for a whole long history pays a commit whose
/// block squashing is quadratic in the blocks it touches (yrs 0.28 `TransactionMut::commit`
/// drains a `Vec` once per merged block): 260k keystrokes took 7.3 s in one transaction and
/// 1.3 s in batches of 1000, the server's snapshot interval.
const APPLY_BATCH_UPDATES: usize = 1000;

/// Without a terminal, a progress line at most this often.
const PROGRESS_LINE_INTERVAL: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("no database at {0} (pass --db or set YSERVE_DB)")]
    NoDatabase(String),
    #[error("no document named {0:?}")]
    NoDocument(String),
    #[error("document {name:?} has no update {at}: its last seq is {last}")]
    BeyondLastSeq { name: String, at: u64, last: u64 },
    #[error("the history of {name:?} before seq {oldest} was pruned: the oldest state is at seq {oldest}, not {at}")]
    Pruned { name: String, at: u64, oldest: u64 },
    #[error(transparent)]
    Locked(#[from] LockError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{path}: {source}")]
    File { path: String, source: std::io::Error },
    #[error("writing the output: {0}")]
    Output(std::io::Error),
    #[error("{what} of {name:?} does not load: {message}")]
    Corrupt { name: String, what: String, message: String },
    #[error("refused to import {file}: {reason}")]
    ImportRefused { file: String, reason: String },
    #[error("invalid document name: {0}")]
    DocName(#[from] DocNameError),
    #[error("{name:?} has no text root (roots: {roots})")]
    NoTextRoot { name: String, roots: String },
    #[error("{name:?} has several text roots ({roots}): pick one with --root")]
    AmbiguousText { name: String, roots: String },
    #[error("root {root:?} of {name:?} is not a text: it renders as {kind}")]
    NotText { name: String, root: String, kind: &'static str },
    #[error("{name:?} has no root {root:?} (roots: {roots})")]
    NoRoot { name: String, root: String, roots: String },
    #[error("refusing to write a binary update to a terminal: pass -o FILE or redirect stdout")]
    BinaryToTerminal,
}

impl CliError {
    /// The reader of stdout went away (`yserve log … | head`): not a failure.
    pub fn is_broken_pipe(&self) -> bool {
        matches!(self, CliError::Output(e) if e.kind() == std::io::ErrorKind::BrokenPipe)
    }
}

impl From<rusqlite::Error> for CliError {
    fn from(e: rusqlite::Error) -> Self {
        CliError::Store(e.into())
    }
}

// ---------------------------------------------------------------------------------------------
// Read commands
// ---------------------------------------------------------------------------------------------

/// `yserve docs`: every document with its log, snapshots and last change.
pub fn docs(args: &DocsArgs) -> Result<(), CliError> {
    let (mut conn, _) = open_db(&args.db.db, Access::Read)?;
    let docs = offline::documents(&mut *conn)?;
    let mut out = stdout();
    if args.json {
        for d in &docs {
            writeln!(out, "{}", serde_json::to_string(d).expect("plain struct")).map_err(CliError::Output)?;
        }
    } else {
        let rows: Vec<Vec<String>> = docs
            .iter()
            .map(|d| {
                vec![
                    d.name.clone(),
                    d.last_seq.to_string(),
                    d.updates.to_string(),
                    HumanBytes(d.update_bytes).to_string(),
                    d.snapshots.to_string(),
                    HumanBytes(d.snapshot_bytes).to_string(),
                    d.last_change.clone().unwrap_or_else(|| "-".into()),
                ]
            })
            .collect();
        let header = ["NAME", "SEQ", "UPDATES", "BYTES", "SNAPSHOTS", "SNAPSHOT BYTES", "LAST CHANGE"];
        write_table(&mut out, &header, &rows, &[false, true, true, true, true, true, false])?;
    }
    out.flush().map_err(CliError::Output)
}

/// `yserve log <doc>`: the update log, without the data.
pub fn log(args: &LogArgs) -> Result<(), CliError> {
    let (mut conn, _) = open_db(&args.db.db, Access::Read)?;
    let entries = offline::log(&mut *conn, &args.doc, args.from, args.limit)?
        .ok_or_else(|| CliError::NoDocument(args.doc.clone()))?;
    let mut out = stdout();
    if args.json {
        for e in &entries {
            writeln!(out, "{}", serde_json::to_string(e).expect("plain struct")).map_err(CliError::Output)?;
        }
    } else {
        let rows: Vec<Vec<String>> = entries
            .iter()
            .map(|e| vec![e.seq.to_string(), e.created_at.clone(), e.origin.clone(), e.bytes.to_string()])
            .collect();
        write_table(&mut out, &["SEQ", "TIME", "ORIGIN", "BYTES"], &rows, &[true, false, false, true])?;
    }
    out.flush().map_err(CliError::Output)
}

/// `yserve export <doc>`: the state after update `--at` (default: the latest), from the
/// nearest snapshot at or before it plus the log up to it.
pub fn export(args: &ExportArgs) -> Result<(), CliError> {
    if args.format == ExportFormat::Update && args.output.is_none() && std::io::stdout().is_terminal() {
        return Err(CliError::BinaryToTerminal);
    }
    let started = Instant::now();
    let (mut conn, _) = open_db(&args.db.db, Access::Read)?;
    let state = resolve_state(&mut *conn, &args.doc, args.at)?;
    drop(conn);
    let doc = build_doc(&args.doc, &state, "export")?;
    let bytes = match args.format {
        ExportFormat::Update => doc.transact().encode_state_as_update_v1(&StateVector::default()),
        ExportFormat::Json => {
            let mut json = serde_json::to_vec_pretty(&render::doc_to_json(&doc)).expect("a JSON value");
            json.push(b'\n');
            json
        }
        ExportFormat::Text => text_of(&doc, &args.doc, args.root.as_deref())?.into_bytes(),
    };
    match &args.output {
        Some(path) => {
            std::fs::write(path, &bytes)
                .map_err(|source| CliError::File { path: path.display().to_string(), source })?;
            eprintln!(
                "exported {:?} at seq {} ({}) to {} in {:.2} s",
                args.doc,
                state.seq,
                describe_state(&state),
                path.display(),
                started.elapsed().as_secs_f64()
            );
        }
        None => {
            let mut out = stdout();
            out.write_all(&bytes).and_then(|()| out.flush()).map_err(CliError::Output)?;
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Write commands
// ---------------------------------------------------------------------------------------------

/// `yserve import <doc> <file>`: appends what the update adds to the document as one new
/// update (origin `cli`), after the server's own checks.
///
/// The checks are the server's (`document::apply_ready`): the validator walks the bytes before
/// yrs sees them; the update must apply completely to the current state (no missing
/// dependencies, which yrs would hold as "pending", unsoundly in 0.28); GC ranges may not
/// squat on another client's future clocks; and applying it, then encoding the whole
/// document, must not panic. Only the delta is stored, so importing the same file twice
/// stores nothing the second time. Identity binding is not applied: the operator imports on
/// no user's behalf, and the client ids in the file stay free for their users to claim.
/// OT clients of a changed text see the change as an op at the next version (`src` `yjs`), as
/// if a Yjs client had made it.
pub fn import(args: &ImportArgs) -> Result<(), CliError> {
    let file = args.file.display().to_string();
    let refuse = |reason: String| CliError::ImportRefused { file: file.clone(), reason };
    let name = DocName::new(&args.doc)?;
    let bytes = std::fs::read(&args.file).map_err(|source| CliError::File { path: file.clone(), source })?;
    if bytes.is_empty() {
        return Err(refuse("the file is empty".into()));
    }
    let checked = crate::protocol::check_update(&bytes, &Limits::default())
        .map_err(|e| refuse(format!("the validator refused it ({e})")))?;

    let (mut conn, _lock) = open_db(&args.db.db, Access::Create)?;
    let conn = &mut *conn;
    conn.begin_write()?;
    let state = match offline::state_at(conn, name.as_str(), None)? {
        Some(state) => state,
        None if offline::history(conn, name.as_str())?.is_none() => StateAt::default(),
        None => {
            return Err(CliError::Corrupt {
                name: args.doc.clone(),
                what: "the latest state".into(),
                message: "updates after the latest snapshot are missing".into(),
            })
        }
    };
    let doc = build_doc(name.as_str(), &state, "import: loading")?;
    let ot_texts = offline::ot_texts(conn, name.as_str())?;
    let ot_events = observe_texts(&doc, &ot_texts);

    let sv = doc.transact().state_vector();
    if let Some((client, clock)) = checked.summary.first_missing_dependency(|c| sv.get(&ClientID::new(c))) {
        return Err(refuse(format!(
            "it does not apply completely: it builds on clock {clock} of client {client}, which {:?} does not have \
             (an update made against another document, or an incremental update whose predecessors are missing)",
            args.doc
        )));
    }
    if let Some(client) = squatted_client(&checked.summary, &sv) {
        return Err(refuse(format!(
            "it marks clocks of client {client} beyond what {:?} has as garbage-collected without writing for that \
             client, which would make that client's next edits vanish",
            args.doc
        )));
    }
    let delta = quietly(|| {
        let mut txn = doc.transact_mut();
        txn.apply_update(checked.update)?;
        let incomplete = txn.has_missing_updates();
        Ok::<_, yrs::error::UpdateError>((txn.has_changes().then(|| txn.encode_update_v1()), incomplete))
    });
    let delta = match delta {
        Some(Ok((_, true))) => return Err(refuse("it does not apply completely to the document".into())),
        Some(Ok((delta, false))) => delta,
        Some(Err(e)) => return Err(refuse(format!("it does not apply: {e}"))),
        None => return Err(refuse("it breaks the document (yrs panicked applying it)".into())),
    };
    // An update can apply and still break the next full encode (SyncStep2, snapshots).
    if quietly(|| doc.transact().encode_state_as_update_v1(&StateVector::default())).is_none() {
        return Err(refuse("it breaks the document (yrs panicked encoding the result)".into()));
    }
    let Some(delta) = delta else {
        eprintln!("nothing new: {:?} already has everything in {file}; nothing stored", args.doc);
        return Ok(());
    };
    let seq = state.last_seq + 1;
    let ops = ot_ops(&ot_texts, &ot_events);
    let now = now();
    offline::append_update(conn, name.as_str(), seq, &delta, CLI_ORIGIN, &ops, &now)?;
    conn.commit()?;
    eprintln!(
        "imported {file} into {:?} as update {seq}: {} new of {} bytes{}",
        args.doc,
        delta.len(),
        bytes.len(),
        if ops.is_empty() { String::new() } else { format!("; {} OT op(s) logged", ops.len()) }
    );
    Ok(())
}

/// `yserve compact [<doc>]`: a snapshot at the latest seq where the tail since the last one
/// is not empty; with `--prune-history`, then deletes the updates and snapshots before it.
pub fn compact(args: &CompactArgs) -> Result<(), CliError> {
    let (mut conn, _lock) = open_db(&args.db.db, Access::Write)?;
    let conn = &mut *conn;
    let names = match &args.doc {
        Some(name) => vec![name.clone()],
        None => offline::documents(conn)?.into_iter().map(|d| d.name).collect(),
    };
    let mut out = stdout();
    let mut pruned_any = false;
    for name in &names {
        // One transaction per document: a failure leaves the others compacted.
        conn.begin_write()?;
        let state = resolve_state(conn, name, None)?;
        let line = if state.seq == 0 {
            format!("{name}: no updates, nothing to snapshot")
        } else if state.updates.is_empty() {
            format!("{name}: already compact, snapshot at seq {}", state.seq)
        } else {
            let started = Instant::now();
            let doc = build_doc(name, &state, "compact")?;
            let data = doc.transact().encode_state_as_update_v1(&StateVector::default());
            offline::write_snapshot(conn, name, state.seq, &data, &now())?;
            format!(
                "{name}: wrote snapshot at seq {} ({}) from {} in {:.2} s",
                state.seq,
                HumanBytes(data.len() as u64),
                describe_state(&state),
                started.elapsed().as_secs_f64()
            )
        };
        writeln!(out, "{line}").map_err(CliError::Output)?;
        if args.prune_history && state.seq > 0 {
            let p = offline::prune_before(conn, name, state.seq)?;
            pruned_any |= p.updates + p.snapshots > 0;
            let line = if p.updates + p.snapshots == 0 {
                format!("{name}: no history before seq {} to prune", state.seq)
            } else {
                format!(
                    "{name}: pruned {} updates ({}) and {} snapshots ({}) before seq {}; time travel now starts there",
                    p.updates,
                    HumanBytes(p.update_bytes),
                    p.snapshots,
                    HumanBytes(p.snapshot_bytes),
                    state.seq
                )
            };
            writeln!(out, "{line}").map_err(CliError::Output)?;
        }
        conn.commit()?;
        out.flush().map_err(CliError::Output)?;
    }
    if pruned_any && matches!(store::location(&args.db.db), Location::Sqlite(_)) {
        eprintln!("note: SQLite reuses the freed pages; the file itself shrinks only after `VACUUM`");
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

fn stdout() -> std::io::BufWriter<std::io::StdoutLock<'static>> {
    std::io::BufWriter::new(std::io::stdout().lock())
}

fn check_exists(db: &Path) -> Result<(), CliError> {
    if db.is_file() {
        Ok(())
    } else {
        Err(CliError::NoDatabase(db.display().to_string()))
    }
}

/// What a command does with its database.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Access {
    /// Reads; a SQLite file must exist (a read command never creates one).
    Read,
    /// Writes an existing database.
    Write,
    /// Writes, creating the database (and its folder) on first use, as the server does.
    Create,
}

/// Opens `--db`, a SQLite file or a PostgreSQL URL, with the SQLite database lock (`dblock`)
/// for a write. PostgreSQL takes no lock: a server sharing it sees an imported seq as taken
/// and reloads the document (the store's conflict rule). A read runs in one transaction,
/// so that it sees one state of the log.
fn open_db(db: &Path, access: Access) -> Result<(Box<dyn Db>, Option<DbLock>), CliError> {
    let lock = match store::location(db) {
        Location::Postgres(_) => None,
        Location::Sqlite(path) => {
            match access {
                Access::Create => {
                    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                        std::fs::create_dir_all(dir)
                            .map_err(|source| CliError::File { path: dir.display().to_string(), source })?;
                    }
                }
                Access::Read | Access::Write => check_exists(path)?,
            }
            match access {
                Access::Read => None,
                Access::Write | Access::Create => Some(DbLock::acquire(path)?),
            }
        }
    };
    let mut conn = store::connect(db, BUSY_TIMEOUT)?;
    if access == Access::Read {
        conn.begin_read()?;
    }
    Ok((conn, lock))
}

/// The stored pieces of the state after `at`, or why there are none.
fn resolve_state(conn: &mut dyn Db, name: &str, at: Option<u64>) -> Result<StateAt, CliError> {
    if let Some(state) = offline::state_at(conn, name, at)? {
        return Ok(state);
    }
    let history = offline::history(conn, name)?.ok_or_else(|| CliError::NoDocument(name.to_string()))?;
    let at = at.unwrap_or(history.last_seq);
    if at > history.last_seq {
        Err(CliError::BeyondLastSeq { name: name.to_string(), at, last: history.last_seq })
    } else {
        Err(CliError::Pruned { name: name.to_string(), at, oldest: history.oldest_seq })
    }
}

fn describe_state(state: &StateAt) -> String {
    match &state.snapshot {
        Some((seq, _)) => format!("snapshot {seq} + {} updates", state.updates.len()),
        None => format!("{} updates", state.updates.len()),
    }
}

/// A doc counting in UTF-16 code units, as the server's and JavaScript clients' do.
fn new_doc() -> Doc {
    Doc::with_options(Options { offset_kind: OffsetKind::Utf16, ..Options::default() })
}

/// Applies the snapshot, then the updates in transactions of `APPLY_BATCH_UPDATES`.
fn build_doc(name: &str, state: &StateAt, what: &str) -> Result<Doc, CliError> {
    let doc = new_doc();
    let mut progress = Progress::new(format!("{what} {name}"), state.updates.len() as u64);
    if let Some((seq, data)) = &state.snapshot {
        apply_stored(&mut doc.transact_mut(), name, &format!("snapshot {seq}"), data)?;
    }
    for batch in state.updates.chunks(APPLY_BATCH_UPDATES) {
        let mut txn = doc.transact_mut();
        for (seq, data) in batch {
            apply_stored(&mut txn, name, &format!("update {seq}"), data)?;
            progress.inc();
        }
    }
    progress.finish();
    Ok(doc)
}

fn apply_stored(txn: &mut TransactionMut, name: &str, what: &str, data: &[u8]) -> Result<(), CliError> {
    let corrupt = |message: String| CliError::Corrupt { name: name.to_string(), what: what.to_string(), message };
    let update = Update::decode_v1(data).map_err(|e| corrupt(e.to_string()))?;
    txn.apply_update(update).map_err(|e| corrupt(e.to_string()))
}

/// The plain text of `root`, or of the document's only text root (empty if it has no root
/// with content at all).
fn text_of(doc: &Doc, name: &str, root: Option<&str>) -> Result<String, CliError> {
    let texts = render::text_roots(doc);
    let json = render::doc_to_json(doc);
    let roots = || {
        let names: Vec<&str> = json.as_object().map(|o| o.keys().map(String::as_str).collect()).unwrap_or_default();
        if names.is_empty() {
            "none".to_string()
        } else {
            names.join(", ")
        }
    };
    let Some(root) = root else {
        return match texts.as_slice() {
            [(_, text)] => Ok(text.clone()),
            // An empty document (or one whose roots are all empty) has empty text.
            [] if json.as_object().is_none_or(|o| o.values().all(Value::is_null)) => Ok(String::new()),
            [] => Err(CliError::NoTextRoot { name: name.to_string(), roots: roots() }),
            several => Err(CliError::AmbiguousText {
                name: name.to_string(),
                roots: several.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>().join(", "),
            }),
        };
    };
    if let Some((_, text)) = texts.iter().find(|(n, _)| n == root) {
        return Ok(text.clone());
    }
    let kind = match json.get(root) {
        None => return Err(CliError::NoRoot { name: name.to_string(), root: root.to_string(), roots: roots() }),
        // Nothing visible: an emptied text is empty text.
        Some(Value::Null) => return Ok(String::new()),
        Some(Value::Object(_)) => "an object (a map)",
        Some(Value::Array(_)) => "an array",
        Some(Value::String(_)) => "XML",
        Some(_) => "a value",
    };
    Err(CliError::NotText { name: name.to_string(), root: root.to_string(), kind })
}

/// Text changes of the sequenced (OT) texts, collected while the import applies.
type TextEvents = Arc<Mutex<Vec<(String, Delta)>>>;

fn observe_texts(doc: &Doc, texts: &[(String, u64)]) -> TextEvents {
    let events: TextEvents = Arc::default();
    for (name, _) in texts {
        let text = doc.get_or_insert_text(name.as_str());
        let (events, key) = (events.clone(), name.clone());
        // Keyed observers live as long as the doc, which lives until the import ends.
        text.observe("yserve-cli", move |txn: &TransactionMut, event: &yrs::types::text::TextEvent| {
            let delta = ytext::from_event(event.delta(txn));
            if !delta.is_noop() {
                events.lock().expect("events lock poisoned").push((key.clone(), delta));
            }
        });
    }
    events
}

/// One op per changed text at its next version, as the server logs a Yjs client's change.
fn ot_ops(texts: &[(String, u64)], events: &TextEvents) -> Vec<OtOp> {
    let mut versions: std::collections::HashMap<&str, u64> = texts.iter().map(|(t, v)| (t.as_str(), *v)).collect();
    let events = std::mem::take(&mut *events.lock().expect("events lock poisoned"));
    events
        .into_iter()
        .filter_map(|(text, delta)| {
            let version = versions.get_mut(text.as_str())?;
            let op = OtOp { text: text.clone(), version: *version, op: delta.to_json().to_string() };
            *version += 1;
            Some(op)
        })
        .collect()
}

/// A GC range beyond what the document has for a client it knows, in an update that writes
/// nothing for that client (the server's `squatted_client`; the CLI has no connection that
/// could speak for a client, so only the update's own items count).
fn squatted_client(summary: &Summary, sv: &StateVector) -> Option<u64> {
    summary.runs.iter().find_map(|run| {
        let known = sv.get(&ClientID::new(run.client));
        let extends = run.gc.iter().any(|&(_, end)| end > known);
        (known > 0 && extends && !run.has_items).then_some(run.client)
    })
}

/// Runs `f`, turning a panic into `None` without printing the panic message (the caller
/// reports it as a refusal).
fn quietly<T>(f: impl FnOnce() -> T) -> Option<T> {
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let result = std::panic::catch_unwind(AssertUnwindSafe(f)).ok();
    std::panic::set_hook(hook);
    result
}

fn now() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}

fn write_table(out: &mut impl Write, header: &[&str], rows: &[Vec<String>], right: &[bool]) -> Result<(), CliError> {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut s = String::new();
        for (i, cell) in cells.enumerate() {
            if i > 0 {
                s.push_str("  ");
            }
            let pad = widths[i].saturating_sub(cell.chars().count());
            let last = i + 1 == widths.len();
            if right[i] {
                s.extend(std::iter::repeat_n(' ', pad));
                s.push_str(cell);
            } else {
                s.push_str(cell);
                if !last {
                    s.extend(std::iter::repeat_n(' ', pad));
                }
            }
        }
        s
    };
    writeln!(out, "{}", line(&mut header.iter().copied())).map_err(CliError::Output)?;
    for row in rows {
        writeln!(out, "{}", line(&mut row.iter().map(String::as_str))).map_err(CliError::Output)?;
    }
    Ok(())
}

/// Progress of a long rebuild: a bar on a terminal, a line every few seconds otherwise.
struct Progress {
    bar: Option<ProgressBar>,
    what: String,
    total: u64,
    done: u64,
    started: Instant,
    last_line: Instant,
    printed: bool,
}

impl Progress {
    fn new(what: String, total: u64) -> Progress {
        let bar = (total > 0 && std::io::stderr().is_terminal()).then(|| {
            let bar = ProgressBar::new(total);
            bar.set_style(
                ProgressStyle::with_template("{msg} [{bar:40}] {human_pos}/{human_len} updates ({elapsed}, eta {eta})")
                    .expect("a valid template")
                    .progress_chars("=> "),
            );
            bar.set_message(what.clone());
            bar
        });
        let now = Instant::now();
        Progress { bar, what, total, done: 0, started: now, last_line: now, printed: false }
    }

    fn inc(&mut self) {
        self.done += 1;
        match &self.bar {
            Some(bar) => bar.inc(1),
            // Checking the clock every 1024 updates keeps this off the profile.
            None if self.done.is_multiple_of(1024) && self.last_line.elapsed() >= PROGRESS_LINE_INTERVAL => {
                eprintln!(
                    "{}: {}/{} updates applied ({}%)",
                    self.what,
                    self.done,
                    self.total,
                    self.done * 100 / self.total.max(1)
                );
                self.last_line = Instant::now();
                self.printed = true;
            }
            None => {}
        }
    }

    fn finish(self) {
        match self.bar {
            Some(bar) => bar.finish_and_clear(),
            None if self.printed => eprintln!(
                "{}: {} updates applied in {:.1} s",
                self.what,
                self.done,
                self.started.elapsed().as_secs_f64()
            ),
            None => {}
        }
    }
}
