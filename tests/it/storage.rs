//! Storage faults (SPEC §2 durability, §3): a full disk, a database locked by another
//! process past `--store-busy-timeout-ms`, a read-only or corrupt database and a schema
//! written by a newer binary. At start each is refused with a one-line reason and an exit
//! code other than 0. At run time a failed commit relays and acknowledges nothing: the
//! document's connections are closed with 1011 `commit failed`, the failure is logged with
//! the document and the SQLite error, and once the fault is gone writes work again without a
//! restart, with nothing acknowledged lost.
//!
//! The full disk is a size-limited tmpfs the test mounts itself, so these tests need root
//! (as `scripts/test.sh` has on CI, where it installs packages with apt).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::{covered_up_to, sqlite_only, Client, TestServer};

/// A tmpfs mounted on a fresh temporary folder, unmounted when dropped.
struct Mount {
    path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Mount {
    fn tmpfs(size: &str) -> Mount {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("mnt");
        std::fs::create_dir(&path).unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&path)
            .status()
            .expect("run mount");
        assert!(status.success(), "mounting a tmpfs needs root (run the suite as root, as CI does)");
        Mount { path, _dir: dir }
    }

    fn remount(&self, options: &str) {
        let status = Command::new("mount").args(["-o", &format!("remount,{options}")]).arg(&self.path).status();
        assert!(status.expect("run mount").success(), "remount {options}");
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

/// Runs `yserve serve` on `db` and expects it to refuse to start: returns its exit code and
/// the last line it printed on stderr (the reason). Panics if it starts listening.
fn refused_start(db: &Path, args: &[&str]) -> (Option<i32>, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_yserve"))
        .args(["serve", "--addr", "127.0.0.1:0", "--db"])
        .arg(db)
        .args(args)
        // The reason as an operator sees it, without the backtrace a test run may ask for.
        .env_remove("RUST_BACKTRACE")
        .env_remove("RUST_LIB_BACKTRACE")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn yserve");
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            child.kill().unwrap();
            panic!("yserve did not refuse to start on {}", db.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("output");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!stdout.contains("listening on"), "it started: {stdout}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stderr.lines().last().unwrap_or_default().to_string();
    (out.status.code(), last)
}

/// A database made by a server that ran once and stopped.
fn made_database() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("yserve.db");
    let mut server = TestServer::start_on(Some(db.clone()), &[]);
    assert_eq!(server.stop(), Some(0));
    (dir, db)
}

fn integrity(db: &Path) -> String {
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap()
}

/// Sends an insert at the end and waits for its echo (committed) or for the close that says
/// it was not. `None`: echoed.
async fn append(c: &mut Client, s: &str) -> Option<(u16, String)> {
    let end = c.text().encode_utf16().count() as u32;
    c.insert(end, s).await;
    let me = c.doc.client_id();
    let mine = c.state_vector().get(&me);
    c.pump_until(|c| covered_up_to(&c.server_has, me) >= mine || c.closed.is_some(), "echo or close").await;
    c.closed.clone()
}

#[test]
fn a_database_with_a_newer_schema_refuses_start_with_a_one_line_reason() {
    let (_dir, db) = made_database();
    rusqlite::Connection::open(&db).unwrap().pragma_update(None, "user_version", 99).unwrap();
    let (code, reason) = refused_start(&db, &[]);
    assert_ne!(code, Some(0));
    assert!(reason.contains("schema is version 99, newer than this binary knows"), "{reason}");
    // Nothing was changed: the version is still the newer one.
    let version: i64 =
        rusqlite::Connection::open(&db).unwrap().pragma_query_value(None, "user_version", |r| r.get(0)).unwrap();
    assert_eq!(version, 99);
}

#[test]
fn a_corrupt_database_file_refuses_start_with_a_one_line_reason() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("yserve.db");
    std::fs::write(&db, b"this is not an SQLite file, just bytes ".repeat(200)).unwrap();
    let (code, reason) = refused_start(&db, &[]);
    assert_ne!(code, Some(0));
    assert!(reason.starts_with("Error: ") && reason.contains("not a database"), "{reason}");
}

#[test]
fn a_read_only_database_refuses_start_with_a_one_line_reason() {
    let mount = Mount::tmpfs("8m");
    let db = mount.path.join("yserve.db");
    let mut server = TestServer::start_on(Some(db.clone()), &[]);
    assert_eq!(server.stop(), Some(0));
    drop(server);
    mount.remount("ro");
    let (code, reason) = refused_start(&db, &[]);
    assert_ne!(code, Some(0));
    // SQLite refuses to open a WAL database it cannot write (or opens it read-only, which the
    // server refuses too); either way the line names the file and the reason.
    assert!(reason.starts_with("Error: ") && reason.contains(&*db.to_string_lossy()), "{reason}");
    assert!(reason.contains("Read-only file system") || reason.contains("is read-only"), "{reason}");
    mount.remount("rw");
}

#[test]
fn a_database_locked_past_the_busy_timeout_refuses_start() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("yserve.db");
    // A database that still needs its migrations, write-locked by another connection.
    let other = rusqlite::Connection::open(&db).unwrap();
    other.pragma_update(None, "journal_mode", "WAL").unwrap();
    other.execute_batch("BEGIN IMMEDIATE").unwrap();
    let (code, reason) = refused_start(&db, &["--store-busy-timeout-ms", "200"]);
    assert_ne!(code, Some(0));
    assert!(reason.starts_with("Error: ") && reason.contains("locked"), "{reason}");
    other.execute_batch("ROLLBACK").unwrap();
}

#[tokio::test]
async fn a_database_locked_past_the_busy_timeout_fails_commits_with_1011_until_the_lock_is_released() {
    if sqlite_only("SQLite's write lock and busy timeout") {
        return;
    }
    let server = TestServer::start_with(&["--store-busy-timeout-ms", "200"]);
    let url = server.url("locked");
    let mut reader = Client::synced(&url).await;
    let mut writer = Client::synced(&url).await;
    assert_eq!(append(&mut writer, "committed ").await, None);
    // An operator's sqlite3 takes the write lock and keeps it.
    let other = rusqlite::Connection::open(server.db_path()).unwrap();
    other.execute_batch("BEGIN IMMEDIATE").unwrap();
    assert_eq!(append(&mut writer, "not committed").await, Some((1011, "commit failed".into())));
    assert_eq!(reader.closed_with().await, (1011, "commit failed".into()));
    assert_eq!(reader.text(), "committed ", "the reader got nothing that failed to commit");
    crate::support::wait_for_log(&server, "database is locked").await;
    other.execute_batch("ROLLBACK").unwrap();
    // No restart: the writer reconnects, and its edit that failed is uploaded again.
    let mut writer = Client::connect_with_doc(&url, writer.doc.clone()).await;
    writer.sync().await;
    assert_eq!(append(&mut writer, " more").await, None);
    assert_eq!(Client::synced(&url).await.text(), "committed not committed more");
}

#[tokio::test]
async fn a_full_disk_fails_the_commit_with_1011_relays_nothing_and_writes_resume_once_space_is_freed() {
    let mount = Mount::tmpfs("4m");
    let db = mount.path.join("yserve.db");
    let mut server = TestServer::start_on(Some(db.clone()), &[]);
    let url = server.url("full");
    let mut reader = Client::synced(&url).await;
    let mut writer = Client::synced(&url).await;
    assert_eq!(append(&mut writer, "before ").await, None);

    // Fill the filesystem, then write until a commit fails.
    let filler = mount.path.join("filler");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&filler).unwrap();
        let block = vec![0u8; 64 * 1024];
        while f.write_all(&block).is_ok() {}
        let _ = f.sync_all();
    }
    let chunk = "x".repeat(16 * 1024);
    let mut acknowledged = 0;
    let refusal = loop {
        assert!(acknowledged < 500, "8 MB written to a full 4 MiB filesystem without a failed commit");
        match append(&mut writer, &format!("<{acknowledged}{chunk}>")).await {
            None => acknowledged += 1,
            Some(closed) => break closed,
        }
    };
    assert_eq!(refusal, (1011, "commit failed".into()));
    assert_eq!(reader.closed_with().await, (1011, "commit failed".into()));
    crate::support::wait_for_log(&server, "database or disk is full").await;
    let log = server.log();
    assert!(log.lines().any(|l| l.contains("commit failed") && l.contains("doc=full")), "logged with its document");

    // Free the space. Without a restart, a newcomer gets exactly what the reader had: every
    // acknowledged edit, and nothing of the one that failed.
    std::fs::remove_file(&filler).unwrap();
    let newcomer = Client::synced(&url).await;
    assert_eq!(newcomer.text(), reader.text(), "nothing that failed to commit was relayed");
    assert_eq!(newcomer.text().matches('<').count(), acknowledged);
    // The writer reconnects; the edit that failed is uploaded again and now commits.
    let mut writer = Client::connect_with_doc(&url, writer.doc.clone()).await;
    writer.sync().await;
    assert_eq!(append(&mut writer, " after").await, None);
    let expected = writer.text();
    assert_eq!(expected.matches('<').count(), acknowledged + 1);
    drop((reader, writer, newcomer));
    server.restart();
    assert_eq!(Client::synced(&url).await.text(), expected);
    assert_eq!(server.stop(), Some(0));
    assert_eq!(integrity(&db), "ok");
}
