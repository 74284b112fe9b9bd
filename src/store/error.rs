//! Everything the store can fail with, SQLite's and PostgreSQL's errors among them.

use std::path::Path;
use std::sync::Arc;

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("sqlite: {0}")]
    Sqlite(Arc<rusqlite::Error>),
    #[error("postgres: {}", postgres_reason(.0))]
    Postgres(Arc<tokio_postgres::Error>),
    #[error("store is closed")]
    Closed,
    #[error("update {seq} of {doc:?} is already in the log, written by another server: the document must reload")]
    SeqConflict { doc: String, seq: u64 },
    #[error("no document {0:?}")]
    NoDocument(String),
    #[error("a query that always returns a row returned none")]
    NoRow,
    #[error("could not create the database folder {path}: {message}")]
    CreateDir { path: String, message: String },
    #[error(
        "the database schema is version {found}, newer than this binary knows ({known}): \
         it was written by a newer yserve; run that version or restore a backup"
    )]
    SchemaTooNew { found: usize, known: usize },
    #[error("the database {path} is read-only: the server must be able to write it")]
    ReadOnly { path: String },
    #[error("the database is unreachable ({reason}) for {down_ms} ms; next attempt in {retry_in_ms} ms")]
    Unavailable { down_ms: u64, retry_in_ms: u64, reason: String },
    #[error("could not open the database {path}: {message}")]
    Open { path: String, message: String },
}

/// Names the file in a failure to open it, and the operating system's reason where SQLite's
/// is vague ("unable to open database file" for a read-only file system, say).
pub(crate) fn open_failure(path: &Path, e: StoreError) -> StoreError {
    let StoreError::Sqlite(sqlite) = &e else { return e };
    let mut message = sqlite.to_string();
    if path.exists() {
        if let Err(io) = std::fs::OpenOptions::new().write(true).open(path) {
            message = format!("{message} ({io})");
        }
    }
    StoreError::Open { path: path.display().to_string(), message }
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Sqlite(Arc::new(e))
    }
}

/// PostgreSQL's own message and SQLSTATE where the server sent one (the client's `Display`
/// says only "db error").
pub(crate) fn postgres_reason(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} (SQLSTATE {})", db.message(), db.code().code()),
        None => e.to_string(),
    }
}
