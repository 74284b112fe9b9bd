//! PostgreSQL faults: the server restarting under load, its connection slots exhausted, a
//! statement timing out. Each time the writes in flight are refused (their connections
//! closed with 1011, nothing of them acknowledged), the store reconnects by itself with
//! backoff, and every edit reaches the database once the clients reconnect.
//!
//! The restart and the exhausted slots get a PostgreSQL cluster of their own
//! (`scripts/pg.sh`), so the other tests' server is never disturbed; they run on either pass
//! of the suite.

use std::path::PathBuf;
use std::time::Duration;

use tokio_postgres::NoTls;
use yrs::Text;

use crate::support::*;

/// A throw-away PostgreSQL cluster (`scripts/pg.sh start DIR`), stopped and removed on drop.
struct PgCluster {
    dir: tempfile::TempDir,
    url: String,
    options: String,
}

impl PgCluster {
    fn start(options: &str) -> PgCluster {
        let dir = tempfile::Builder::new().prefix("yserve-pgfault-").tempdir().expect("tempdir");
        let mut cluster = PgCluster { dir, url: String::new(), options: options.to_string() };
        let printed = cluster.pg("start");
        cluster.url = printed
            .trim()
            .strip_prefix("export YSERVE_TEST_PG=")
            .unwrap_or_else(|| panic!("pg.sh start printed {printed:?}"))
            .to_string();
        cluster
    }

    fn pg(&self, cmd: &str) -> String {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/pg.sh");
        let out = std::process::Command::new("bash")
            .arg(script)
            .arg(cmd)
            .arg(self.dir.path().join("c"))
            .env("PG_OPTIONS", &self.options)
            .output()
            .expect("run scripts/pg.sh");
        assert!(out.status.success(), "pg.sh {cmd} failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Stops the server at once, as a crash would (`pg_ctl -m immediate`).
    fn stop(&self) {
        self.pg("stop");
    }

    /// Starts it again on the same port and data.
    fn start_again(&self) {
        self.pg("start");
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let _ = std::panic::catch_unwind(|| self.stop());
    }
}

/// A session of the test's own on `url`, its connection driven on the test's runtime.
async fn session(url: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
}

/// Appends `n` characters at the end of the writer's text, one update each.
async fn type_chars(writer: &mut Client, c: &str, n: usize) {
    for _ in 0..n {
        let len = writer.text().len() as u32;
        writer.insert(len, c).await;
    }
}

/// Types into `writer` until the server closes it; returns the close code and reason. The
/// edits it typed stay in its document (unacknowledged ones included).
async fn type_until_closed(writer: &mut Client) -> (u16, String) {
    for _ in 0..1000 {
        let len = writer.text().len() as u32;
        let update = writer.edit_offline(|t, txn| t.insert(txn, len, "x"));
        if !writer.try_send(yserve::protocol::encode_update(update)).await {
            break;
        }
        writer.pump_for(Duration::from_millis(10)).await;
        if writer.closed.is_some() {
            break;
        }
    }
    writer.closed.clone().expect("the server closed the writer while the database was away")
}

/// Connects `doc` again until a connection syncs (the store may still be refusing, or be
/// waiting out its backoff); returns the synced client.
async fn reconnect(url: &str, doc: yrs::Doc) -> Client {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let mut client = Client::connect_with_doc(url, doc.clone()).await;
        client.pump_for(Duration::from_millis(500)).await;
        if client.synced && client.closed.is_none() {
            return client;
        }
        assert!(tokio::time::Instant::now() < deadline, "never synced again (last close {:?})", client.closed);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// After the fault: the writer, reconnected, sees all its edits committed, and a new client
/// (and the database itself) holds exactly the writer's text, which contains `acknowledged`.
async fn nothing_lost(server: &TestServer, writer: Client, acknowledged: &str) {
    let url = server.url("doc");
    let mut writer = reconnect(&url, writer.doc).await;
    writer.wait_echo().await;
    let expected = writer.text();
    assert!(expected.starts_with(acknowledged), "acknowledged {acknowledged:?} is not in {expected:?}");
    let fresh = Client::synced(&url).await;
    assert_eq!(fresh.text(), expected, "a new client's text");
    let (updates, snapshots) = read_db(&server.db_path(), "doc");
    assert!(snapshots.is_empty());
    assert_eq!(text_of_updates(updates.iter().map(|(_, u)| &u[..])), expected, "the stored log's text");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restarting_under_load_refuses_writes_then_recovers_losing_nothing() {
    let pg = PgCluster::start("");
    let server = TestServer::start_on(Some(PathBuf::from(&pg.url)), &[]);
    let url = server.url("doc");
    let mut writer = Client::synced(&url).await;
    let mut reader = Client::synced(&url).await;
    type_chars(&mut writer, "a", 50).await;
    reader.pump_until(|c| c.text().len() == 50, "the first 50 edits").await;
    let acknowledged = reader.text();

    pg.stop();
    let (code, reason) = type_until_closed(&mut writer).await;
    assert_eq!((code, reason.as_str()), (1011, "commit failed"));
    wait_for_log(&server, "postgres: unreachable; writes are refused until it is back").await;
    // While it is down, joining is refused the same way, at once, and REST answers 503.
    let mut probe = Client::connect(&server.url("other")).await;
    assert_eq!(probe.closed_with().await.0, 1011);
    let rest = crate::demo::get(server.port, "/api/docs/doc/json").await;
    assert_eq!(rest.status, 503, "REST while the database is down: {}", String::from_utf8_lossy(&rest.body));
    // Typed while disconnected: must arrive too.
    let len = writer.text().len() as u32;
    writer.edit_offline(|t, txn| t.insert(txn, len, " typed offline"));

    tokio::time::sleep(Duration::from_millis(500)).await;
    pg.start_again();
    nothing_lost(&server, writer, &acknowledged).await;
    assert!(server.log().contains("postgres: reconnected"), "{}", server.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_with_no_free_connection_slot_refuses_writes_until_one_frees() {
    // Four slots in all, none reserved: the server's session plus three of the test's fill it.
    let pg = PgCluster::start("-c max_connections=4 -c superuser_reserved_connections=0");
    let server = TestServer::start_on(Some(PathBuf::from(&pg.url)), &[]);
    let url = server.url("doc");
    let mut writer = Client::synced(&url).await;
    type_chars(&mut writer, "a", 5).await;
    writer.wait_echo().await;
    let acknowledged = writer.text();

    let admin = session(&pg.url).await.expect("admin session");
    let ended = admin
        .query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'yserve'", &[])
        .await
        .expect("terminate the server's session");
    assert_eq!(ended.len(), 1, "the server holds one session, named yserve");
    let mut fillers = vec![admin];
    // The terminated backend may take a moment to free its slot.
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while fillers.len() < 4 {
        match session(&pg.url).await {
            Ok(c) => fillers.push(c),
            Err(e) => {
                assert!(tokio::time::Instant::now() < deadline, "could not fill the slots: {e}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    let (code, _) = type_until_closed(&mut writer).await;
    assert_eq!(code, 1011);
    wait_for_log(&server, "too many clients").await;

    drop(fillers);
    nothing_lost(&server, writer, &acknowledged).await;
    assert!(server.log().contains("postgres: reconnected"), "{}", server.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_statement_timeout_fails_the_commit_and_loses_nothing() {
    // The shared test server, a fresh database; the store's statements may wait 300 ms.
    let db = fresh_postgres_database();
    let server = TestServer::start_on(Some(PathBuf::from(&db)), &["--store-busy-timeout-ms", "300"]);
    let url = server.url("doc");
    let mut writer = Client::synced(&url).await;
    type_chars(&mut writer, "a", 5).await;
    writer.wait_echo().await;
    let acknowledged = writer.text();

    // An operator's transaction holds the log: the server's INSERT waits, then times out.
    let operator = session(&db).await.expect("operator session");
    operator.batch_execute("BEGIN; LOCK TABLE updates IN ACCESS EXCLUSIVE MODE").await.expect("lock");
    let (code, reason) = type_until_closed(&mut writer).await;
    assert_eq!((code, reason.as_str()), (1011, "commit failed"));
    wait_for_log(&server, "canceling statement due to statement timeout").await;
    operator.batch_execute("ROLLBACK").await.expect("unlock");

    nothing_lost(&server, writer, &acknowledged).await;
}
