//! PostgreSQL as the store's engine (`--db postgres://…`): a `Db` over one `tokio-postgres`
//! connection, and the numbered migrations of `schema/postgres/`.
//!
//! The connection is driven by a small current-thread runtime of its own, blocked on by the
//! thread that owns it (the store thread, or the CLI): the store's write path stays the one
//! synchronous loop that SQLite runs, and no statement ever runs on the server's runtime.
//! Because `block_on` must not be called from inside a runtime, a `Postgres` is made, used
//! and dropped on such a thread only.
//!
//! Every commit is durable before it is acknowledged: `synchronous_commit` is set `on` for
//! the session whatever the server's default. The tables, columns and meaning are those of
//! SQLite's (SPEC §3); integers are `bigint`, blobs `bytea`, times ISO-8601 text.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, NoTls, Statement};

use super::db::{Db, LogRow, Row, Value};
use super::error::{postgres_reason, StoreError};

/// The numbered migrations, applied in order; `yserve_schema.version` counts them.
const MIGRATIONS: &[&str] = &[
    include_str!("../../schema/postgres/0001_init.sql"),
    include_str!("../../schema/postgres/0002_client_owners.sql"),
    include_str!("../../schema/postgres/0003_ot.sql"),
    include_str!("../../schema/postgres/0004_locks.sql"),
];

/// `Db::insert_updates` as one statement: the rows as arrays, the conflict rule of
/// `db::INSERT_UPDATE`, and the rows actually written returned.
const INSERT_UPDATES: &str = "INSERT INTO updates(doc_id, seq, data, origin, created_at)
     SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::bytea[], $4::text[], $5::text[])
     ON CONFLICT (doc_id, seq) DO NOTHING RETURNING doc_id, seq";

/// Held by every process that migrates, so that two servers starting at once do not both
/// apply a migration (`pg_advisory_xact_lock`; the number is "yserve" in ASCII).
const MIGRATION_LOCK: i64 = 0x7973_6572_7665;

/// Whether `db` names a PostgreSQL database rather than a SQLite file.
pub fn is_url(db: &str) -> bool {
    db.starts_with("postgres://") || db.starts_with("postgresql://")
}

pub struct Postgres {
    url: String,
    rt: tokio::runtime::Runtime,
    client: Client,
    /// Prepared statements by their SQL as the store writes it (`?1` placeholders), for the
    /// current connection (a reconnect prepares them again).
    statements: HashMap<String, Statement>,
    in_transaction: bool,
    /// The session's `statement_timeout`: how long a statement may wait (for a lock held by
    /// another session, say) before it fails.
    statement_timeout: Duration,
    /// Set while the server cannot be reached: when to try again.
    outage: Option<Outage>,
}

/// An outage of the PostgreSQL server, as the store sees it: transactions are refused at once
/// (`StoreError::Unavailable`) until `retry_at`, then one reconnect is tried; each failed try
/// doubles the wait (with jitter), up to `RETRY_MAX`.
struct Outage {
    since: Instant,
    retry_at: Instant,
    wait: Duration,
    reason: String,
}

/// The first wait after a failed reconnect, and the longest.
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);
/// How long one connection attempt may take (an unreachable host, not a refused port).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

impl From<tokio_postgres::Error> for StoreError {
    fn from(e: tokio_postgres::Error) -> Self {
        StoreError::Postgres(Arc::new(e))
    }
}

impl Postgres {
    /// Connects, sets the session up (durable commits, `statement_timeout`) and applies the
    /// migrations. The server must be reachable now: a store that cannot start says so.
    pub fn connect(url: &str, statement_timeout: Duration) -> Result<Postgres, StoreError> {
        let mut pg = Postgres::connect_only(url)?;
        pg.statement_timeout = statement_timeout;
        pg.set_up_session()?;
        pg.migrate()?;
        Ok(pg)
    }

    fn connect_only(url: &str) -> Result<Postgres, StoreError> {
        let failed = |message: String| StoreError::Open { path: redact(url), message };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| failed(format!("could not start its runtime: {e}")))?;
        let client = open_client(&rt, url).map_err(|e| failed(postgres_reason(&e)))?;
        Ok(Postgres {
            url: url.to_string(),
            rt,
            client,
            statements: HashMap::new(),
            in_transaction: false,
            statement_timeout: Duration::ZERO,
            outage: None,
        })
    }

    fn set_up_session(&mut self) -> Result<(), StoreError> {
        let setup = self.session_setup();
        self.simple(&setup)
    }

    /// Every commit durable before it is acknowledged, whatever the server's default; no
    /// statement waiting longer than the store's busy timeout.
    fn session_setup(&self) -> String {
        let timeout_ms = self.statement_timeout.as_millis();
        format!("SET synchronous_commit = on; SET statement_timeout = {timeout_ms}")
    }

    /// Before a transaction: a connection the server closed (a restart, an administrator's
    /// `pg_terminate_backend`) is replaced, with backoff while the server stays away.
    fn ensure_connected(&mut self) -> Result<(), StoreError> {
        // The connection task runs only while this thread blocks on it: let it notice a
        // close that arrived while the store was idle.
        self.rt.block_on(async {
            tokio::task::yield_now().await;
            tokio::task::yield_now().await;
        });
        if !self.client.is_closed() {
            return Ok(());
        }
        let now = Instant::now();
        if let Some(outage) = &self.outage {
            if now < outage.retry_at {
                return Err(outage.refusal(now));
            }
        }
        match self.reconnect() {
            Ok(()) => {
                if let Some(outage) = self.outage.take() {
                    tracing::info!(db = %redact(&self.url), down_ms = outage.since.elapsed().as_millis() as u64, "postgres: reconnected");
                } else {
                    tracing::info!(db = %redact(&self.url), "postgres: connection replaced");
                }
                Ok(())
            }
            Err(e) => {
                let reason = postgres_reason(&e);
                let (since, wait) = match &self.outage {
                    Some(o) => (o.since, (o.wait * 2).min(RETRY_MAX)),
                    None => (now, RETRY_FIRST),
                };
                let wait = jitter(wait);
                tracing::warn!(db = %redact(&self.url), error = %reason, retry_in_ms = wait.as_millis() as u64, "postgres: unreachable; writes are refused until it is back");
                let outage = Outage { since, retry_at: now + wait, wait, reason };
                let refusal = outage.refusal(now);
                self.outage = Some(outage);
                Err(refusal)
            }
        }
    }

    fn reconnect(&mut self) -> Result<(), tokio_postgres::Error> {
        self.client = open_client(&self.rt, &self.url)?;
        self.statements.clear();
        self.in_transaction = false;
        let setup = self.session_setup();
        self.rt.block_on(self.client.batch_execute(&setup))
    }

    /// `BEGIN …`, on a fresh connection if the old one turns out to be closed: nothing of the
    /// transaction has been sent yet, so trying once more is safe.
    fn begin(&mut self, sql: &str) -> Result<(), StoreError> {
        self.ensure_connected()?;
        let began = match self.rt.block_on(self.client.batch_execute(sql)) {
            Err(e) if e.is_closed() || self.client.is_closed() => {
                self.ensure_connected()?;
                self.rt.block_on(self.client.batch_execute(sql))
            }
            other => other,
        };
        began?;
        self.in_transaction = true;
        Ok(())
    }

    fn simple(&mut self, sql: &str) -> Result<(), StoreError> {
        self.rt.block_on(self.client.batch_execute(sql))?;
        Ok(())
    }

    fn migrate(&mut self) -> Result<(), StoreError> {
        self.simple("BEGIN")?;
        self.in_transaction = true;
        let result = self.migrate_in_transaction();
        match result {
            Ok(()) => self.commit(),
            Err(e) => {
                let _ = self.rollback();
                Err(e)
            }
        }
    }

    fn migrate_in_transaction(&mut self) -> Result<(), StoreError> {
        let lock = format!("SELECT pg_advisory_xact_lock({MIGRATION_LOCK})");
        self.simple(&lock)?;
        self.simple("CREATE TABLE IF NOT EXISTS yserve_schema (version bigint NOT NULL)")?;
        let db: &mut dyn Db = self;
        let version = match db.row("SELECT version FROM yserve_schema", &[], |r| r.uint(0))? {
            Some(v) => v as usize,
            None => {
                db.execute("INSERT INTO yserve_schema(version) VALUES (0)", &[])?;
                0
            }
        };
        if version > MIGRATIONS.len() {
            return Err(StoreError::SchemaTooNew { found: version, known: MIGRATIONS.len() });
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version) {
            self.simple(sql)?;
            let db: &mut dyn Db = self;
            db.execute("UPDATE yserve_schema SET version = ?1", &[Value::Int(i as i64 + 1)])?;
            tracing::info!(migration = i + 1, "applied postgres schema migration");
        }
        Ok(())
    }

    fn statement(&mut self, sql: &str) -> Result<Statement, StoreError> {
        if let Some(s) = self.statements.get(sql) {
            return Ok(s.clone());
        }
        let prepared = self.rt.block_on(self.client.prepare(&placeholders(sql)))?;
        self.statements.insert(sql.to_string(), prepared.clone());
        Ok(prepared)
    }
}

impl Outage {
    fn refusal(&self, now: Instant) -> StoreError {
        StoreError::Unavailable {
            down_ms: now.duration_since(self.since).as_millis() as u64,
            retry_in_ms: self.retry_at.saturating_duration_since(now).as_millis() as u64,
            reason: self.reason.clone(),
        }
    }
}

/// A connection whose driving task runs on `rt` (only while its owner blocks on it).
fn open_client(rt: &tokio::runtime::Runtime, url: &str) -> Result<Client, tokio_postgres::Error> {
    let mut config: tokio_postgres::Config = url.parse()?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(CONNECT_TIMEOUT);
    }
    // So an operator finds the server's sessions in `pg_stat_activity`.
    if config.get_application_name().is_none() {
        config.application_name("yserve");
    }
    let (client, connection) = rt.block_on(config.connect(NoTls))?;
    rt.spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!(error = %postgres_reason(&e), "postgres connection ended");
        }
    });
    Ok(client)
}

/// A wait of between 3/4 and 5/4 of `wait`, so that servers that lost the database at the
/// same moment do not all come back at the same one.
fn jitter(wait: Duration) -> Duration {
    use std::hash::{BuildHasher, RandomState};
    let spread = RandomState::new().hash_one(Instant::now()) % 1000;
    wait.mul_f64(0.75 + spread as f64 / 2000.0)
}

/// Creates a new, empty database on the server `url` names and returns its URL: a fresh
/// store for each test or benchmark run, on one throw-away server.
pub fn fresh_database(url: &str) -> Result<String, StoreError> {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let unique = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let name = format!("t_{}_{unique}_{n}", std::process::id());
    // On a thread of its own: the caller may be on a runtime (a test), where no runtime can
    // be blocked on.
    let server = url.to_string();
    let create = format!("CREATE DATABASE {name}");
    std::thread::spawn(move || {
        let mut pg = Postgres::connect_only(&server)?;
        pg.simple(&create)
    })
    .join()
    .map_err(|_| StoreError::Closed)??;
    let base = url.rsplit_once('/').map_or(url, |(base, _)| base);
    Ok(format!("{base}/{name}"))
}

/// `?1` → `$1`: the store's SQL uses SQLite's numbered placeholders, which PostgreSQL spells
/// with a dollar. The statements have no `?` anywhere else.
fn placeholders(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '?' && chars.peek().is_some_and(|n| n.is_ascii_digit()) {
            out.push('$');
        } else {
            out.push(c);
        }
    }
    out
}

/// The URL without its password, for messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            match userinfo.find(':') {
                Some(colon) => format!("{}{}:***{}", &url[..scheme + 3], &userinfo[..colon], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

fn sql_params<'a>(params: &'a [Value<'a>]) -> Vec<&'a (dyn ToSql + Sync)> {
    params
        .iter()
        .map(|p| match p {
            Value::Int(v) => v as &(dyn ToSql + Sync),
            Value::OptInt(v) => v as &(dyn ToSql + Sync),
            Value::Text(v) => v as &(dyn ToSql + Sync),
            Value::Blob(v) => v as &(dyn ToSql + Sync),
        })
        .collect()
}

impl Row for tokio_postgres::Row {
    fn int(&self, i: usize) -> Result<i64, StoreError> {
        self.opt_int(i)?.ok_or(StoreError::NoRow)
    }
    fn opt_int(&self, i: usize) -> Result<Option<i64>, StoreError> {
        let ty = self.columns()[i].type_();
        Ok(if *ty == Type::INT4 {
            self.try_get::<_, Option<i32>>(i)?.map(i64::from)
        } else if *ty == Type::INT2 {
            self.try_get::<_, Option<i16>>(i)?.map(i64::from)
        } else {
            self.try_get::<_, Option<i64>>(i)?
        })
    }
    fn text(&self, i: usize) -> Result<String, StoreError> {
        Ok(self.try_get(i)?)
    }
    fn opt_text(&self, i: usize) -> Result<Option<String>, StoreError> {
        Ok(self.try_get(i)?)
    }
    fn blob(&self, i: usize) -> Result<Vec<u8>, StoreError> {
        Ok(self.try_get(i)?)
    }
}

impl Db for Postgres {
    fn execute(&mut self, sql: &str, params: &[Value<'_>]) -> Result<u64, StoreError> {
        let statement = self.statement(sql)?;
        Ok(self.rt.block_on(self.client.execute(&statement, &sql_params(params)))?)
    }

    fn each_row(
        &mut self,
        sql: &str,
        params: &[Value<'_>],
        each: &mut dyn FnMut(&dyn Row) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let statement = self.statement(sql)?;
        let rows = self.rt.block_on(self.client.query(&statement, &sql_params(params)))?;
        for row in &rows {
            each(row)?;
        }
        Ok(())
    }

    fn begin_write(&mut self) -> Result<(), StoreError> {
        self.begin("BEGIN")
    }

    fn begin_read(&mut self) -> Result<(), StoreError> {
        self.begin("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
    }

    fn commit(&mut self) -> Result<(), StoreError> {
        self.in_transaction = false;
        self.simple("COMMIT")
    }

    /// All rows in one statement (one round trip, instead of one per row).
    fn insert_updates(&mut self, rows: &[LogRow<'_>]) -> Result<Vec<bool>, StoreError> {
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let statement = self.statement(INSERT_UPDATES)?;
        let doc_ids: Vec<i64> = rows.iter().map(|r| r.doc_id).collect();
        let seqs: Vec<i64> = rows.iter().map(|r| r.seq).collect();
        let data: Vec<&[u8]> = rows.iter().map(|r| r.data).collect();
        let origins: Vec<&str> = rows.iter().map(|r| r.origin).collect();
        let times: Vec<&str> = rows.iter().map(|r| r.created_at).collect();
        let params: [&(dyn ToSql + Sync); 5] = [&doc_ids, &seqs, &data, &origins, &times];
        let written = self.rt.block_on(self.client.query(&statement, &params))?;
        let written: HashSet<(i64, i64)> =
            written.iter().map(|r| Ok((r.try_get(0)?, r.try_get(1)?))).collect::<Result<_, tokio_postgres::Error>>()?;
        Ok(rows.iter().map(|r| written.contains(&(r.doc_id, r.seq))).collect())
    }

    fn rollback(&mut self) -> Result<(), StoreError> {
        // On a closed connection there is nothing to roll back: the server already did.
        if std::mem::take(&mut self.in_transaction) && !self.client.is_closed() {
            self.simple("ROLLBACK")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_become_dollars() {
        assert_eq!(placeholders("SELECT ?1, ?12 FROM t WHERE a = ?2"), "SELECT $1, $12 FROM t WHERE a = $2");
        assert_eq!(placeholders("SELECT '?' "), "SELECT '?' ");
    }

    #[test]
    fn a_password_is_not_shown() {
        assert_eq!(redact("postgres://u:secret@h:5432/db"), "postgres://u:***@h:5432/db");
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact("postgres://h/db"), "postgres://h/db");
    }
}
