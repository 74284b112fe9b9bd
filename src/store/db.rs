//! The seam between the store's SQL and the engine that runs it: `Db`, a connection that
//! runs a statement with positional parameters and hands back rows, and its SQLite
//! implementation (`rusqlite`).
//!
//! The statements themselves are written once, in the SQL that SQLite and PostgreSQL share
//! (`?1`-style placeholders, `ON CONFLICT`, `length()` of a blob), by `store` and
//! `store::offline`; an engine only translates what it must (PostgreSQL's `$1`). Nothing here
//! knows a table.

use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::Connection;

use super::error::StoreError;

/// A statement parameter.
#[derive(Debug, Clone, Copy)]
pub enum Value<'a> {
    Int(i64),
    /// An integer column that may be NULL.
    OptInt(Option<i64>),
    Text(&'a str),
    Blob(&'a [u8]),
}

impl From<i64> for Value<'_> {
    fn from(v: i64) -> Self {
        Value::Int(v)
    }
}

impl From<Option<i64>> for Value<'_> {
    fn from(v: Option<i64>) -> Self {
        Value::OptInt(v)
    }
}

impl<'a> From<&'a str> for Value<'a> {
    fn from(v: &'a str) -> Self {
        Value::Text(v)
    }
}

impl<'a> From<&'a String> for Value<'a> {
    fn from(v: &'a String) -> Self {
        Value::Text(v)
    }
}

impl<'a> From<&'a [u8]> for Value<'a> {
    fn from(v: &'a [u8]) -> Self {
        Value::Blob(v)
    }
}

impl<'a> From<&'a Vec<u8>> for Value<'a> {
    fn from(v: &'a Vec<u8>) -> Self {
        Value::Blob(v)
    }
}

/// `[Value; N]` from a list of anything a `Value` is made from.
#[macro_export]
macro_rules! sql_params {
    ($($p:expr),* $(,)?) => { [$($crate::store::db::Value::from($p)),*] };
}
pub use crate::sql_params as params;

/// One result row; columns by position. Integers of any width read as `i64`.
pub trait Row {
    fn int(&self, i: usize) -> Result<i64, StoreError>;
    fn opt_int(&self, i: usize) -> Result<Option<i64>, StoreError>;
    fn text(&self, i: usize) -> Result<String, StoreError>;
    fn opt_text(&self, i: usize) -> Result<Option<String>, StoreError>;
    fn blob(&self, i: usize) -> Result<Vec<u8>, StoreError>;

    fn uint(&self, i: usize) -> Result<u64, StoreError> {
        Ok(self.int(i)? as u64)
    }
}

/// A database connection as the store's SQL uses it.
pub trait Db {
    /// Runs one statement; how many rows it changed.
    fn execute(&mut self, sql: &str, params: &[Value<'_>]) -> Result<u64, StoreError>;
    /// Runs one query, calling `each` for every row in order.
    fn each_row(
        &mut self,
        sql: &str,
        params: &[Value<'_>],
        each: &mut dyn FnMut(&dyn Row) -> Result<(), StoreError>,
    ) -> Result<(), StoreError>;
    /// Starts a write transaction (SQLite takes the write lock at once).
    fn begin_write(&mut self) -> Result<(), StoreError>;
    /// Starts a read-only transaction: one consistent view of the database.
    fn begin_read(&mut self) -> Result<(), StoreError>;
    fn commit(&mut self) -> Result<(), StoreError>;
    /// Rolls back the open transaction, if any.
    fn rollback(&mut self) -> Result<(), StoreError>;
    /// Writes rows of the update log, in order; for each whether it was written (`false`:
    /// its `(doc_id, seq)` was already taken, and nothing of that row changed). One
    /// statement per row here; an engine where each statement is a network round trip
    /// writes them all in one.
    fn insert_updates(&mut self, rows: &[LogRow<'_>]) -> Result<Vec<bool>, StoreError> {
        rows.iter()
            .map(|r| {
                let written = self.execute(INSERT_UPDATE, &params![r.doc_id, r.seq, r.data, r.origin, r.created_at])?;
                Ok(written == 1)
            })
            .collect()
    }
}

/// One row of `updates`.
#[derive(Debug, Clone, Copy)]
pub struct LogRow<'a> {
    pub doc_id: i64,
    pub seq: i64,
    pub data: &'a [u8],
    pub origin: &'a str,
    pub created_at: &'a str,
}

/// The conflict rule: the first writer of a seq keeps it (the primary key decides, even
/// between two servers committing at once); a later one changes nothing.
pub const INSERT_UPDATE: &str = "INSERT INTO updates(doc_id, seq, data, origin, created_at) VALUES (?1, ?2, ?3, ?4, ?5)
     ON CONFLICT (doc_id, seq) DO NOTHING";

impl dyn Db + '_ {
    /// Every row of a query, each made by `f`.
    pub fn rows<T>(
        &mut self,
        sql: &str,
        params: &[Value<'_>],
        mut f: impl FnMut(&dyn Row) -> Result<T, StoreError>,
    ) -> Result<Vec<T>, StoreError> {
        let mut out = Vec::new();
        self.each_row(sql, params, &mut |r| {
            out.push(f(r)?);
            Ok(())
        })?;
        Ok(out)
    }

    /// The first row of a query, if any.
    pub fn row<T>(
        &mut self,
        sql: &str,
        params: &[Value<'_>],
        f: impl FnOnce(&dyn Row) -> Result<T, StoreError>,
    ) -> Result<Option<T>, StoreError> {
        let mut f = Some(f);
        let mut out = None;
        self.each_row(sql, params, &mut |r| {
            if let Some(f) = f.take() {
                out = Some(f(r)?);
            }
            Ok(())
        })?;
        Ok(out)
    }

    /// The first row of a query that always returns one (an aggregate).
    pub fn one<T>(
        &mut self,
        sql: &str,
        params: &[Value<'_>],
        f: impl FnOnce(&dyn Row) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.row(sql, params, f)?.ok_or(StoreError::NoRow)
    }
}

impl rusqlite::ToSql for Value<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(match *self {
            Value::Int(v) => ToSqlOutput::Borrowed(ValueRef::Integer(v)),
            Value::OptInt(Some(v)) => ToSqlOutput::Borrowed(ValueRef::Integer(v)),
            Value::OptInt(None) => ToSqlOutput::Borrowed(ValueRef::Null),
            Value::Text(v) => ToSqlOutput::Borrowed(ValueRef::Text(v.as_bytes())),
            Value::Blob(v) => ToSqlOutput::Borrowed(ValueRef::Blob(v)),
        })
    }
}

impl Row for rusqlite::Row<'_> {
    fn int(&self, i: usize) -> Result<i64, StoreError> {
        Ok(self.get(i)?)
    }
    fn opt_int(&self, i: usize) -> Result<Option<i64>, StoreError> {
        Ok(self.get(i)?)
    }
    fn text(&self, i: usize) -> Result<String, StoreError> {
        Ok(self.get(i)?)
    }
    fn opt_text(&self, i: usize) -> Result<Option<String>, StoreError> {
        Ok(self.get(i)?)
    }
    fn blob(&self, i: usize) -> Result<Vec<u8>, StoreError> {
        Ok(self.get(i)?)
    }
}

/// SQLite: statements are prepared once and cached by their text.
impl Db for Connection {
    fn execute(&mut self, sql: &str, params: &[Value<'_>]) -> Result<u64, StoreError> {
        Ok(self.prepare_cached(sql)?.execute(rusqlite::params_from_iter(params.iter()))? as u64)
    }

    fn each_row(
        &mut self,
        sql: &str,
        params: &[Value<'_>],
        each: &mut dyn FnMut(&dyn Row) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let mut stmt = self.prepare_cached(sql)?;
        let mut rows = stmt.query(rusqlite::params_from_iter(params.iter()))?;
        while let Some(row) = rows.next()? {
            each(row)?;
        }
        Ok(())
    }

    fn begin_write(&mut self) -> Result<(), StoreError> {
        Db::execute(self, "BEGIN IMMEDIATE", &[])?;
        Ok(())
    }

    fn begin_read(&mut self) -> Result<(), StoreError> {
        Db::execute(self, "BEGIN DEFERRED", &[])?;
        Ok(())
    }

    fn commit(&mut self) -> Result<(), StoreError> {
        Db::execute(self, "COMMIT", &[])?;
        Ok(())
    }

    fn rollback(&mut self) -> Result<(), StoreError> {
        if !self.is_autocommit() {
            self.execute_batch("ROLLBACK")?;
        }
        Ok(())
    }
}
