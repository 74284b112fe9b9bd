//! The operator CLI (`yserve docs|log|export|import|compact`) on databases written by the real
//! server through real yrs clients: time travel against the log, the export formats, import
//! round trips and refusals, compaction with and without pruning, and the database lock.

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Output};

use serde_json::{json, Value};
use yrs::updates::decoder::Decode;
use yrs::{Doc, GetString, Map, ReadTxn, StateVector, Text, Transact, Update, WriteTxn};
use yserve::protocol;

use crate::support::{new_doc, read_db, sqlite_only, Client, TestServer};

/// Runs `yserve <args…> --db <db>`.
fn yserve(db: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_yserve")).args(args).arg("--db").arg(db).output().expect("run yserve")
}

/// Runs it and expects success; returns stdout.
fn ok(db: &Path, args: &[&str]) -> Vec<u8> {
    let out = yserve(db, args);
    assert!(
        out.status.success(),
        "yserve {args:?} failed ({:?}): {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Runs it and expects a failure; returns stderr.
fn fails(db: &Path, args: &[&str]) -> String {
    let out = yserve(db, args);
    assert!(
        !out.status.success(),
        "yserve {args:?} should have failed; stdout {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stderr).unwrap()
}

fn json_lines(bytes: &[u8]) -> Vec<Value> {
    String::from_utf8(bytes.to_vec()).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn doc_of(update: &[u8]) -> Doc {
    let doc = Doc::new();
    doc.transact_mut().apply_update(Update::decode_v1(update).unwrap()).unwrap();
    doc
}

/// The doc after exactly the first `n` updates of the log, replayed one by one.
fn replayed(log: &[(u64, Vec<u8>)], n: usize) -> Doc {
    let doc = Doc::new();
    for (_, u) in &log[..n] {
        doc.transact_mut().apply_update(Update::decode_v1(u).unwrap()).unwrap();
    }
    doc
}

fn text(doc: &Doc) -> String {
    doc.get_or_insert_text("t").get_string(&doc.transact())
}

/// Exports the binary update of `name` (at `at`) through a file and loads it into a doc.
fn export_doc(db: &Path, dir: &Path, name: &str, at: Option<u64>) -> Doc {
    let file = dir.join("export.bin");
    let mut args = vec!["export", name, "-o", file.to_str().unwrap()];
    let at_text = at.map(|a| a.to_string());
    if let Some(a) = &at_text {
        args.extend(["--at", a]);
    }
    ok(db, &args);
    doc_of(&std::fs::read(&file).unwrap())
}

/// Types `words` into root text `t` of `name`, one update each, and waits for the commits.
async fn type_words(server: &TestServer, name: &str, words: &[&str]) -> Client {
    let mut c = Client::synced(&server.url(name)).await;
    for word in words {
        let at = c.text().encode_utf16().count() as u32;
        c.insert(at, word).await;
    }
    c.wait_echo().await;
    c
}

/// Sends an edit of any root (not only `t`) from `client`'s doc.
async fn edit_doc(client: &mut Client, f: impl FnOnce(&mut yrs::TransactionMut)) {
    let update = {
        let mut txn = client.doc.transact_mut();
        f(&mut txn);
        txn.encode_update_v1()
    };
    client.send(protocol::encode_update(update)).await;
    client.wait_echo().await;
}

fn scratch() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

#[tokio::test]
async fn docs_and_log_list_documents_and_their_updates() {
    let mut server = TestServer::start();
    drop(type_words(&server, "notes/a", &["one ", "two ", "three"]).await);
    drop(type_words(&server, "日記", &["x"]).await);
    server.stop();
    let db = server.db_path();

    let docs = json_lines(&ok(&db, &["docs", "--json"]));
    let names: Vec<&str> = docs.iter().map(|d| d["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["notes/a", "日記"]);
    let (log, snapshots) = read_db(&db, "notes/a");
    assert_eq!(docs[0]["updates"], json!(3));
    assert_eq!(docs[0]["last_seq"], json!(3));
    assert_eq!(docs[0]["update_bytes"], json!(log.iter().map(|(_, d)| d.len()).sum::<usize>()));
    assert_eq!(docs[0]["snapshots"], json!(snapshots.len()));
    assert!(docs[0]["last_change"].as_str().unwrap().ends_with('Z'));

    let table = String::from_utf8(ok(&db, &["docs"])).unwrap();
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("NAME") && lines[0].contains("UPDATES") && lines[0].contains("LAST CHANGE"));
    assert!(lines[1].starts_with("notes/a") && lines[2].starts_with("日記"), "{table}");

    let entries = json_lines(&ok(&db, &["log", "notes/a", "--json"]));
    assert_eq!(entries.len(), 3);
    for (entry, (seq, data)) in entries.iter().zip(&log) {
        assert_eq!(entry["seq"], json!(seq));
        assert_eq!(entry["bytes"], json!(data.len()));
        assert_eq!(entry["origin"], json!("anonymous"));
        assert!(entry["created_at"].as_str().unwrap().starts_with("20"));
    }
    let page = json_lines(&ok(&db, &["log", "notes/a", "--json", "--from", "2", "--limit", "1"]));
    assert_eq!(page.iter().map(|e| e["seq"].as_u64().unwrap()).collect::<Vec<_>>(), [2]);
    let table = String::from_utf8(ok(&db, &["log", "notes/a"])).unwrap();
    assert_eq!(table.lines().count(), 4);
    assert!(table.lines().next().unwrap().contains("ORIGIN"));

    assert!(fails(&db, &["log", "nope"]).contains("no document named \"nope\""));
    let missing = scratch();
    assert!(fails(&missing.path().join("none.db"), &["docs"]).contains("no database at"));
    assert!(!missing.path().join("none.db").exists(), "a read command never creates a database");
}

#[tokio::test]
async fn export_at_every_seq_equals_replaying_the_log_up_to_it() {
    // Snapshots every 3 updates, so most states come from a snapshot plus a short tail.
    let mut server = TestServer::start_with(&["--snapshot-updates", "3"]);
    let mut c = type_words(&server, "tt", &["alpha ", "beta ", "gamma "]).await;
    c.edit(|t, txn| t.remove_range(txn, 0, 6)).await;
    c.insert(0, "😀 ").await;
    c.edit(|t, txn| t.remove_range(txn, 3, 2)).await;
    for w in ["δ", "ε", "ζ", "η"] {
        let at = c.text().encode_utf16().count() as u32;
        c.insert(at, w).await;
    }
    c.wait_echo().await;
    drop(c);
    server.kill9(); // no snapshot at unload: the latest state needs a tail too
    let db = server.db_path();
    let (log, snapshots) = read_db(&db, "tt");
    assert_eq!(log.len(), 10);
    assert!(snapshots.len() >= 3, "snapshots {:?}", snapshots.iter().map(|s| s.0).collect::<Vec<_>>());
    let dir = scratch();
    for at in 0..=log.len() {
        let expected = replayed(&log, at);
        let exported = export_doc(&db, dir.path(), "tt", Some(at as u64));
        assert_eq!(text(&exported), text(&expected), "text at {at}");
        assert_eq!(exported.transact().state_vector(), expected.transact().state_vector(), "state vector at {at}");
        let plain = ok(&db, &["export", "tt", "--at", &at.to_string(), "--format", "text"]);
        assert_eq!(String::from_utf8(plain).unwrap(), text(&expected), "--format text at {at}");
    }
    let latest = export_doc(&db, dir.path(), "tt", None);
    assert_eq!(text(&latest), text(&replayed(&log, log.len())));

    assert!(
        fails(&db, &["export", "tt", "--at", "11", "-o", "/dev/null"]).contains("has no update 11: its last seq is 10")
    );
    assert!(fails(&db, &["export", "nope", "-o", "/dev/null"]).contains("no document named"));
}

#[tokio::test]
async fn export_renders_json_and_picks_the_text_root() {
    let mut server = TestServer::start();
    let mut c = type_words(&server, "mixed", &["hello"]).await;
    edit_doc(&mut c, |txn| {
        let m = txn.get_or_insert_map("m");
        m.insert(txn, "title", "Notes");
        m.insert(txn, "n", 2);
    })
    .await;
    server.stop();
    let db = server.db_path();

    let rendered: Value = serde_json::from_slice(&ok(&db, &["export", "mixed", "--format", "json"])).unwrap();
    assert_eq!(rendered, json!({"t": "hello", "m": {"title": "Notes", "n": 2}}));
    assert_eq!(ok(&db, &["export", "mixed", "--format", "text"]), b"hello");
    assert_eq!(ok(&db, &["export", "mixed", "--format", "text", "--root", "t"]), b"hello");
    assert!(fails(&db, &["export", "mixed", "--format", "text", "--root", "m"])
        .contains("is not a text: it renders as an object"));
    assert!(
        fails(&db, &["export", "mixed", "--format", "text", "--root", "x"]).contains("has no root \"x\" (roots: m, t)")
    );
    let at1: Value = serde_json::from_slice(&ok(&db, &["export", "mixed", "--format", "json", "--at", "1"])).unwrap();
    assert_eq!(at1, json!({"t": "hello"}));

    // A second text root makes the default ambiguous.
    server.restart_after_crash();
    let mut c = Client::synced(&server.url("mixed")).await;
    edit_doc(&mut c, |txn| {
        let u = txn.get_or_insert_text("u");
        u.insert(txn, 0, "second");
    })
    .await;
    drop(c);
    server.stop();
    assert!(fails(&db, &["export", "mixed", "--format", "text"])
        .contains("several text roots (t, u): pick one with --root"));
    assert_eq!(ok(&db, &["export", "mixed", "--format", "text", "--root", "u"]), b"second");
}

#[tokio::test]
async fn import_round_trips_an_export_and_stores_only_what_is_new() {
    let mut server = TestServer::start();
    drop(type_words(&server, "src", &["copy ", "me"]).await);
    server.stop();
    let db = server.db_path();
    let dir = scratch();
    let file = dir.path().join("src.bin");
    ok(&db, &["export", "src", "-o", file.to_str().unwrap()]);

    ok(&db, &["import", "dst", file.to_str().unwrap()]);
    let src_json = ok(&db, &["export", "src", "--format", "json"]);
    assert_eq!(ok(&db, &["export", "dst", "--format", "json"]), src_json);
    let log = json_lines(&ok(&db, &["log", "dst", "--json"]));
    assert_eq!(log.len(), 1);
    assert_eq!(log[0]["origin"], json!("cli"));

    // Everything in it is known now: nothing new, nothing stored.
    let out = yserve(&db, &["import", "dst", file.to_str().unwrap()]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("nothing new"));
    assert_eq!(json_lines(&ok(&db, &["log", "dst", "--json"])).len(), 1);

    // The server loads the imported document and numbers the next update after it.
    server.restart_after_crash();
    let mut c = Client::synced(&server.url("dst")).await;
    assert_eq!(c.text(), "copy me");
    c.insert(0, ">").await;
    c.wait_echo().await;
    drop(c);
    server.stop();
    let (log, _) = read_db(&db, "dst");
    assert_eq!(log.iter().map(|(s, _)| *s).collect::<Vec<_>>(), [1, 2]);
    assert_eq!(ok(&db, &["export", "dst", "--format", "text"]), ">copy me".as_bytes());
}

#[tokio::test]
async fn import_refuses_garbage_updates_that_do_not_apply_and_hostile_ones() {
    let mut server = TestServer::start();
    drop(type_words(&server, "d", &["base"]).await);
    server.stop();
    let db = server.db_path();
    let dir = scratch();
    let write = |name: &str, bytes: &[u8]| -> String {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        path.to_str().unwrap().to_string()
    };

    let garbage = write("garbage.bin", b"this is not a Yjs update");
    assert!(fails(&db, &["import", "d", &garbage]).contains("the validator refused it"));
    let empty = write("empty.bin", b"");
    assert!(fails(&db, &["import", "d", &empty]).contains("the file is empty"));

    // ~14 KB: one item in root array "a" holding 7,000 nested arrays (see hostile.rs).
    let mut deep = vec![1, 1, 7, 0, 8, 1, 1, b'a', 1];
    for _ in 0..7000 {
        deep.extend([117, 1]);
    }
    deep.extend([126, 0]);
    let deep = write("deep.bin", &deep);
    assert!(fails(&db, &["import", "d", &deep]).contains("update nests values 65 deep, more than 64"));

    // An edit made on top of state this document never had.
    let other = new_doc();
    let t = other.get_or_insert_text("t");
    t.insert(&mut other.transact_mut(), 0, "elsewhere");
    let sv = other.transact().state_vector();
    t.insert(&mut other.transact_mut(), 9, "!");
    let incremental = write("incremental.bin", &other.transact().encode_state_as_update_v1(&sv));
    let err = fails(&db, &["import", "d", &incremental]);
    assert!(
        err.contains("does not apply completely") && err.contains(&format!("client {}", other.client_id())),
        "{err}"
    );

    // A GC range over the writer's next clocks, a million long (see hostile.rs).
    let writer = doc_of(&ok(&db, &["export", "d"]));
    let (client, _) = writer.transact().state_vector().iter().map(|(c, k)| (c.get(), *k)).next().unwrap();
    let mut squat = vec![1, 1];
    write_var(&mut squat, client);
    squat.extend([4, 0]);
    write_var(&mut squat, 1_000_000);
    squat.push(0);
    let squat = write("squat.bin", &squat);
    assert!(fails(&db, &["import", "d", &squat]).contains(&format!("clocks of client {client} beyond")));

    let (log, _) = read_db(&db, "d");
    assert_eq!(log.len(), 1, "nothing refused was stored");
    assert_eq!(ok(&db, &["export", "d", "--format", "text"]), b"base");
}

#[tokio::test]
async fn import_gives_ot_clients_the_change_as_an_op() {
    let mut server = TestServer::start();
    drop(type_words(&server, "ot", &["abc"]).await);
    // Reading the text over REST starts its OT sequencer (version 1).
    let before = http_get(server.port, "/api/docs/ot/texts/t");
    assert_eq!(before["v"], json!(1), "{before}");
    server.stop();
    let db = server.db_path();

    let other = new_doc();
    let t = other.get_or_insert_text("t");
    let base = ok(&db, &["export", "ot"]);
    other.transact_mut().apply_update(Update::decode_v1(&base).unwrap()).unwrap();
    t.insert(&mut other.transact_mut(), 3, "d");
    let dir = scratch();
    let file = dir.path().join("more.bin");
    std::fs::write(&file, other.transact().encode_state_as_update_v1(&StateVector::default())).unwrap();
    ok(&db, &["import", "ot", file.to_str().unwrap()]);

    server.restart_after_crash();
    let after = http_get(server.port, "/api/docs/ot/texts/t");
    assert_eq!(after["v"], json!(2), "{after}");
    assert_eq!(after["text"], json!("abcd"), "{after}");
    let ops = http_get(server.port, "/api/docs/ot/texts/t/ops?from=1")["ops"].clone();
    assert_eq!(ops.as_array().map(Vec::len), Some(1), "{ops}");
    assert_eq!(ops[0]["op"], json!([{"retain": 3}, {"insert": "d"}]), "{ops}");
    assert_eq!((ops[0]["v"].clone(), ops[0]["src"].clone()), (json!(1), json!("yjs")), "{ops}");
}

#[tokio::test]
async fn compact_snapshots_the_tail_and_prunes_history_only_when_asked() {
    let mut server = TestServer::start();
    drop(type_words(&server, "c", &["a", "b", "c", "d", "e"]).await);
    drop(type_words(&server, "other", &["x", "y"]).await);
    server.kill9(); // no snapshot at unload: both logs have a tail
    let db = server.db_path();
    let (log, snapshots) = read_db(&db, "c");
    assert_eq!((log.len(), snapshots.len()), (5, 0));
    let json_before = ok(&db, &["export", "c", "--format", "json"]);

    let out = String::from_utf8(ok(&db, &["compact", "c"])).unwrap();
    assert!(out.contains("c: wrote snapshot at seq 5"), "{out}");
    let (log, snapshots) = read_db(&db, "c");
    assert_eq!(log.len(), 5, "history is kept");
    assert_eq!(snapshots.iter().map(|s| s.0).collect::<Vec<_>>(), [5]);
    assert_eq!(text(&doc_of(&snapshots[0].1)), text(&replayed(&log, 5)));
    assert_eq!(ok(&db, &["export", "c", "--format", "json"]), json_before);
    assert_eq!(read_db(&db, "other").1.len(), 0, "only the named document");
    assert!(String::from_utf8(ok(&db, &["compact", "c"])).unwrap().contains("already compact"));

    // Every document; then the history before the snapshot goes.
    let out = String::from_utf8(ok(&db, &["compact", "--prune-history"])).unwrap();
    assert!(out.contains("other: wrote snapshot at seq 2"), "{out}");
    assert!(out.contains("c: pruned 4 updates"), "{out}");
    assert!(out.contains("other: pruned 1 updates"), "{out}");
    let (log, snapshots) = read_db(&db, "c");
    assert_eq!(log.iter().map(|(s, _)| *s).collect::<Vec<_>>(), [5], "the last update is kept");
    assert_eq!(snapshots.iter().map(|(s, _)| *s).collect::<Vec<_>>(), [5]);
    assert_eq!(ok(&db, &["export", "c", "--format", "json"]), json_before);
    assert_eq!(ok(&db, &["export", "c", "--format", "text", "--at", "5"]), b"abcde");
    assert!(fails(&db, &["export", "c", "--at", "3", "-o", "/dev/null"]).contains("before seq 5 was pruned"));

    // The server loads the pruned document and numbers new updates after it.
    server.restart_after_crash();
    let mut c = Client::synced(&server.url("c")).await;
    assert_eq!(c.text(), "abcde");
    c.insert(5, "f").await;
    c.wait_echo().await;
    drop(c);
    server.stop();
    assert_eq!(read_db(&db, "c").0.iter().map(|(s, _)| *s).collect::<Vec<_>>(), [5, 6]);
    assert_eq!(ok(&db, &["export", "c", "--format", "text"]), b"abcdef");
}

#[tokio::test]
async fn write_commands_are_refused_while_a_server_holds_the_database() {
    if sqlite_only("the SQLite database lock file") {
        return;
    }
    let mut server = TestServer::start();
    drop(type_words(&server, "busy", &["live"]).await);
    let db = server.db_path();
    let dir = scratch();
    let file = dir.path().join("u.bin");

    // Reads work while the server runs.
    assert_eq!(ok(&db, &["export", "busy", "--format", "text"]), b"live");
    ok(&db, &["export", "busy", "-o", file.to_str().unwrap()]);
    assert_eq!(json_lines(&ok(&db, &["docs", "--json"])).len(), 1);

    let held = format!("the database is in use by a running yserve (pid {})", server.pid());
    for args in
        [vec!["compact"], vec!["compact", "busy", "--prune-history"], vec!["import", "x", file.to_str().unwrap()]]
    {
        let out = yserve(&db, &args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(&held), "{args:?}: {err}");
    }
    assert_eq!(json_lines(&ok(&db, &["docs", "--json"])).len(), 1, "nothing was imported");

    // A second server on the same database refuses to start, for the same reason.
    let second = Command::new(env!("CARGO_BIN_EXE_yserve"))
        .args(["serve", "--addr", "127.0.0.1:0", "--db"])
        .arg(&db)
        .output()
        .unwrap();
    assert!(!second.status.success());
    assert!(String::from_utf8_lossy(&second.stderr).contains(&held));

    server.stop();
    ok(&db, &["compact"]);
    ok(&db, &["import", "x", file.to_str().unwrap()]);
    assert_eq!(ok(&db, &["export", "x", "--format", "text"]), b"live");
}

fn write_var(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push((n as u8 & 0x7f) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

/// A plain HTTP/1.1 GET on the test server; the JSON body.
fn http_get(port: u16, path: &str) -> Value {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).unwrap();
    let response = String::from_utf8(response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").expect("a header and a body");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let body =
        if head.to_ascii_lowercase().contains("transfer-encoding: chunked") { dechunk(body) } else { body.into() };
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    loop {
        let (size, rest) = body.split_once("\r\n").unwrap();
        let size = usize::from_str_radix(size.trim(), 16).unwrap();
        if size == 0 {
            return out;
        }
        out.push_str(&rest[..size]);
        body = &rest[size + 2..];
    }
}
