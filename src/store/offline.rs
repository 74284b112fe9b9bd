//! SQL for reading and maintaining the database outside the store thread's write path: the
//! operator CLI (`yserve docs|log|export|import|compact`) and time travel (`state_at`, which
//! the REST API also calls from the store thread for `?at=`).
//!
//! Every function takes a connection (`&mut dyn Db`, SQLite or PostgreSQL) and returns rows or raw update bytes; none of
//! them prints, reports progress, or touches yrs. Reads that need several statements run
//! inside a savepoint, so they see one consistent view of the log whether or not the caller
//! already has a transaction open (the store thread always does). Writes (`append_update`,
//! `write_snapshot`, `prune_before`) expect the caller to hold a write transaction and the
//! database lock (`crate::dblock`): the numbering of `seq` is only safe when no server is
//! appending at the same time.

use super::db::{params, Db, Row};

use super::error::StoreError;

/// One document, as `yserve docs` lists it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DocSummary {
    pub name: String,
    pub created_at: String,
    /// Rows in `updates` (fewer than `last_seq` once history is pruned).
    pub updates: u64,
    pub update_bytes: u64,
    /// The highest seq, 0 without updates.
    pub last_seq: u64,
    /// When the newest update was written.
    pub last_change: Option<String>,
    pub snapshots: u64,
    pub snapshot_bytes: u64,
    /// Seq of the newest snapshot.
    pub latest_snapshot: Option<u64>,
}

/// Every document, by name.
pub fn documents(db: &mut dyn Db) -> Result<Vec<DocSummary>, StoreError> {
    // Correlated subqueries on the primary keys: each is an index range scan of one document
    // (`length()` of a blob reads the record header, not the blob).
    db.rows(
        "SELECT d.name, d.created_at,
            (SELECT count(*) FROM updates u WHERE u.doc_id = d.id),
            (SELECT coalesce(sum(length(u.data)), 0) FROM updates u WHERE u.doc_id = d.id),
            (SELECT coalesce(max(u.seq), 0) FROM updates u WHERE u.doc_id = d.id),
            (SELECT u.created_at FROM updates u WHERE u.doc_id = d.id ORDER BY u.seq DESC LIMIT 1),
            (SELECT count(*) FROM snapshots s WHERE s.doc_id = d.id),
            (SELECT coalesce(sum(length(s.data)), 0) FROM snapshots s WHERE s.doc_id = d.id),
            (SELECT max(s.seq) FROM snapshots s WHERE s.doc_id = d.id)
         FROM documents d ORDER BY d.name",
        &[],
        |r| {
            Ok(DocSummary {
                name: r.text(0)?,
                created_at: r.text(1)?,
                updates: r.uint(2)?,
                update_bytes: r.uint(3)?,
                last_seq: r.uint(4)?,
                last_change: r.opt_text(5)?,
                snapshots: r.uint(6)?,
                snapshot_bytes: r.uint(7)?,
                latest_snapshot: r.opt_int(8)?.map(|s| s as u64),
            })
        },
    )
}

/// One row of the update log, without its data.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LogEntry {
    pub seq: u64,
    pub created_at: String,
    pub origin: String,
    pub bytes: u64,
}

/// The log of `name` from seq `from` on, at most `limit` rows; `None` if there is no such
/// document.
pub fn log(db: &mut dyn Db, name: &str, from: u64, limit: Option<u64>) -> Result<Option<Vec<LogEntry>>, StoreError> {
    let Some(id) = doc_id(db, name)? else {
        return Ok(None);
    };
    let limit = limit.map_or(i64::MAX, |l| l.min(i64::MAX as u64) as i64);
    let rows = db.rows(
        "SELECT seq, created_at, origin, length(data) FROM updates
         WHERE doc_id = ?1 AND seq >= ?2 ORDER BY seq LIMIT ?3",
        &params![id, from.min(i64::MAX as u64) as i64, limit],
        |r| Ok(LogEntry { seq: r.uint(0)?, created_at: r.text(1)?, origin: r.text(2)?, bytes: r.uint(3)? }),
    )?;
    Ok(Some(rows))
}

/// What of a document's history is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct History {
    /// The highest seq, 0 without updates.
    pub last_seq: u64,
    /// The oldest seq whose state can be rebuilt: 0 unless history was pruned, then the seq
    /// of the oldest snapshot that the remaining log continues from.
    pub oldest_seq: u64,
}

/// The stored extent of `name`'s history; `None` if there is no such document.
pub fn history(db: &mut dyn Db, name: &str) -> Result<Option<History>, StoreError> {
    read_view(db, |db| {
        let Some(id) = doc_id(db, name)? else {
            return Ok(None);
        };
        let (first, last) = db.one("SELECT min(seq), max(seq) FROM updates WHERE doc_id = ?1", &params![id], |r| {
            Ok((r.opt_int(0)?, r.opt_int(1)?))
        })?;
        let last_seq = last.unwrap_or(0) as u64;
        let oldest_seq = match first {
            None | Some(1) => 0,
            // The log starts after a gap: the oldest state is the first snapshot it continues.
            Some(first) => db
                .one("SELECT min(seq) FROM snapshots WHERE doc_id = ?1 AND seq >= ?2", &params![id, first - 1], |r| {
                    r.opt_int(0)
                })?
                .map_or(last_seq, |s| s as u64),
        };
        Ok(Some(History { last_seq, oldest_seq }))
    })
}

/// The stored pieces of a document's state after update `seq`: apply `snapshot` (if any),
/// then `updates` in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StateAt {
    /// The seq the state is at (the requested one, or the latest).
    pub seq: u64,
    /// The document's highest seq.
    pub last_seq: u64,
    /// The newest snapshot at or before `seq`: `(seq, full-state v1 update)`.
    pub snapshot: Option<(u64, Vec<u8>)>,
    /// `(seq, v1 update)` for every update after the snapshot up to `seq`, in seq order.
    pub updates: Vec<(u64, Vec<u8>)>,
}

/// The state of `name` after update `at` (default: the latest), as the nearest snapshot at or
/// before it plus the log up to it (time travel, SPEC §3). `at = 0` is the empty document.
///
/// `None` when no such state is stored: there is no such document, `at` is beyond its last
/// seq, or the history before `at` was pruned (`history` tells which). It never returns a
/// partial state.
pub fn state_at(db: &mut dyn Db, name: &str, at: Option<u64>) -> Result<Option<StateAt>, StoreError> {
    read_view(db, |db| {
        let Some(id) = doc_id(db, name)? else {
            return Ok(None);
        };
        let last = db.one("SELECT max(seq) FROM updates WHERE doc_id = ?1", &params![id], |r| r.opt_int(0))?;
        let last_seq = last.unwrap_or(0) as u64;
        let seq = at.unwrap_or(last_seq);
        if seq > last_seq {
            return Ok(None);
        }
        if seq == 0 {
            return Ok(Some(StateAt { seq, last_seq, snapshot: None, updates: Vec::new() }));
        }
        let snapshot = db.row(
            "SELECT seq, data FROM snapshots WHERE doc_id = ?1 AND seq <= ?2 ORDER BY seq DESC LIMIT 1",
            &params![id, seq as i64],
            seq_and_data,
        )?;
        let after = snapshot.as_ref().map_or(0, |(s, _)| *s);
        let updates = db.rows(
            "SELECT seq, data FROM updates WHERE doc_id = ?1 AND seq > ?2 AND seq <= ?3 ORDER BY seq",
            &params![id, after as i64, seq as i64],
            seq_and_data,
        )?;
        // Seqs are unique integers in (after, seq]: all of them are there iff the count matches.
        if updates.len() as u64 != seq - after {
            return Ok(None);
        }
        Ok(Some(StateAt { seq, last_seq, snapshot, updates }))
    })
}

/// `(seq, data)` of an `updates` or `snapshots` row.
pub(super) fn seq_and_data(r: &dyn Row) -> Result<(u64, Vec<u8>), StoreError> {
    Ok((r.uint(0)?, r.blob(1)?))
}

/// The OT sequencers of a document: `(text, version)`.
pub fn ot_texts(db: &mut dyn Db, name: &str) -> Result<Vec<(String, u64)>, StoreError> {
    let Some(id) = doc_id(db, name)? else {
        return Ok(Vec::new());
    };
    db.rows("SELECT text, version FROM ot_texts WHERE doc_id = ?1 ORDER BY text", &params![id], |r| {
        Ok((r.text(0)?, r.uint(1)?))
    })
}

/// An op the OT layer must log with an appended update, so that ShareDB clients of a text see
/// the change at the next version, as they would if a Yjs client had made it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtOp {
    pub text: String,
    /// The text's version before the op (the op's version).
    pub version: u64,
    /// The Quill Delta JSON.
    pub op: String,
}

/// Appends one update at `seq` (which must be the document's last seq + 1), creating the
/// document if needed, with its OT ops (`src` `yjs`, as the server logs Yjs-made changes).
/// The caller holds a write transaction and the database lock.
pub fn append_update(
    db: &mut dyn Db,
    name: &str,
    seq: u64,
    data: &[u8],
    origin: &str,
    ot: &[OtOp],
    now: &str,
) -> Result<(), StoreError> {
    db.execute(
        "INSERT INTO documents(name, created_at) VALUES (?1, ?2) ON CONFLICT(name) DO NOTHING",
        &params![name, now],
    )?;
    let id = doc_id(db, name)?.expect("document row just ensured");
    db.execute(
        "INSERT INTO updates(doc_id, seq, data, origin, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
        &params![id, seq as i64, data, origin, now],
    )?;
    for op in ot {
        db.execute(
            "INSERT INTO ot_ops(doc_id, text, version, op, src, seq, user_id, update_seq, created_at)
             VALUES (?1, ?2, ?3, ?4, 'yjs', ?5, ?6, ?5, ?7)",
            &params![id, &op.text, op.version as i64, &op.op, seq as i64, origin, now],
        )?;
        db.execute(
            "UPDATE ot_texts SET version = ?3, updated_at = ?4 WHERE doc_id = ?1 AND text = ?2",
            &params![id, &op.text, (op.version + 1) as i64, now],
        )?;
    }
    Ok(())
}

/// Writes the snapshot at `seq` (the full state after update `seq`) of an existing document.
pub fn write_snapshot(db: &mut dyn Db, name: &str, seq: u64, data: &[u8], now: &str) -> Result<(), StoreError> {
    let id = doc_id(db, name)?.ok_or_else(|| StoreError::NoDocument(name.to_string()))?;
    put_snapshot(db, id, seq, data, now)
}

/// Writes (or replaces) the snapshot of document row `id` at `seq`.
pub(super) fn put_snapshot(db: &mut dyn Db, id: i64, seq: u64, data: &[u8], now: &str) -> Result<(), StoreError> {
    db.execute(
        "INSERT INTO snapshots(doc_id, seq, data, created_at) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT(doc_id, seq) DO UPDATE SET data = excluded.data, created_at = excluded.created_at",
        &params![id, seq as i64, data, now],
    )?;
    Ok(())
}

/// What `prune_before` removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Pruned {
    pub updates: u64,
    pub update_bytes: u64,
    pub snapshots: u64,
    pub snapshot_bytes: u64,
}

/// Deletes the updates and snapshots older than `seq`, which must have a snapshot: the state
/// at `seq` and after stays whole, and time travel before it is no longer possible.
///
/// The update at `seq` itself is kept: the server numbers new updates after the highest seq in
/// `updates`, so removing it could make the next update reuse a seq the snapshot covers.
/// `ot_ops` rows keep their `update_seq` (it names the update they were stored with, which
/// is history, not a reference that must resolve); nothing else in `ot_*` depends on the log.
pub fn prune_before(db: &mut dyn Db, name: &str, seq: u64) -> Result<Pruned, StoreError> {
    let Some(id) = doc_id(db, name)? else {
        return Ok(Pruned::default());
    };
    let p = params![id, seq as i64];
    let mut count = |sql: &str| db.one(sql, &p, |r| Ok((r.uint(0)?, r.uint(1)?)));
    let (updates, update_bytes) =
        count("SELECT count(*), coalesce(sum(length(data)), 0) FROM updates WHERE doc_id = ?1 AND seq < ?2")?;
    let (snapshots, snapshot_bytes) =
        count("SELECT count(*), coalesce(sum(length(data)), 0) FROM snapshots WHERE doc_id = ?1 AND seq < ?2")?;
    db.execute("DELETE FROM updates WHERE doc_id = ?1 AND seq < ?2", &p)?;
    db.execute("DELETE FROM snapshots WHERE doc_id = ?1 AND seq < ?2", &p)?;
    Ok(Pruned { updates, update_bytes, snapshots, snapshot_bytes })
}

/// The row id of document `name`.
pub(super) fn doc_id(db: &mut dyn Db, name: &str) -> Result<Option<i64>, StoreError> {
    db.row("SELECT id FROM documents WHERE name = ?1", &params![name], |r| r.int(0))
}

/// Runs `reads` inside a savepoint: one consistent view, inside or outside a transaction
/// (PostgreSQL: inside one; the CLI opens it).
fn read_view<T>(db: &mut dyn Db, reads: impl FnOnce(&mut dyn Db) -> Result<T, StoreError>) -> Result<T, StoreError> {
    db.execute("SAVEPOINT yserve_read", &[])?;
    let result = reads(db);
    // Nothing was written inside it, so releasing only ends the read.
    if let Err(e) = db.execute("RELEASE yserve_read", &[]) {
        tracing::error!(error = %e, "releasing a read savepoint failed");
    }
    result
}
