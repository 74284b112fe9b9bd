//! The demo editor (`src/demo.rs`): `GET /` serves the embedded page, the bundles it names
//! are served with their content types and revalidated by `ETag`, and WebSocket upgrades to
//! the same paths still reach documents. Spoken to over a minimal HTTP/1.1 client, as in
//! `api.rs`. (The page itself is tested in a real browser by `tests/browser/`.)

use std::io::Read;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::api::{parse_response, Response};
use crate::support::{Client, TestServer, TIMEOUT};

/// One request on its own connection (`Connection: close`); the body is read to the end.
async fn request(port: u16, method: &str, path: &str, headers: &[(&str, &str)]) -> Response {
    let exchange = async {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).await.expect("connect");
        let mut head = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n");
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes()).await.expect("write");
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.expect("read");
        raw
    };
    let raw = tokio::time::timeout(TIMEOUT, exchange).await.unwrap_or_else(|_| panic!("{method} {path} timed out"));
    // Bodies are sent whole, with a length: parse_response would undo chunking, so look first.
    let head_end = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("end of head");
    let head = String::from_utf8_lossy(&raw[..head_end]).to_ascii_lowercase();
    assert!(!head.contains("transfer-encoding: chunked"), "bodies are sent whole, with a length");
    parse_response(&raw)
}

pub(crate) async fn get(port: u16, path: &str) -> Response {
    request(port, "GET", path, &[]).await
}

/// The values of `attribute="…"` in `html` (enough for the page's own `src`/`href`s).
fn attribute_values(html: &str, attribute: &str) -> Vec<String> {
    let needle = format!("{attribute}=\"");
    html.match_indices(&needle)
        .filter_map(|(i, _)| html[i + needle.len()..].split('"').next().map(str::to_owned))
        .collect()
}

/// The page's scripts and stylesheets, as absolute paths (the page lives at `/`).
fn assets_of(html: &str) -> Vec<String> {
    let mut assets: Vec<String> = attribute_values(html, "src")
        .into_iter()
        .chain(attribute_values(html, "href"))
        .filter(|v| !v.starts_with("data:"))
        .map(|v| if v.starts_with('/') { v } else { format!("/{v}") })
        .collect();
    assets.sort();
    assets.dedup();
    assets
}

#[tokio::test]
async fn the_root_serves_the_page_which_names_its_bundles() {
    let server = TestServer::start();
    for path in ["/", "/?doc=team%2Fnotes"] {
        let page = get(server.port, path).await;
        assert_eq!(page.status, 200, "{path}: {}", page.text());
        assert_eq!(page.header("content-type"), Some("text/html; charset=utf-8"));
        assert_eq!(page.header("cache-control"), Some("no-cache"));
        assert!(page.header("etag").is_some_and(|e| e.starts_with('"')), "a strong ETag");
        assert!(page.header("content-security-policy").is_some_and(|csp| csp.contains("connect-src 'self'")));
        let html = page.text();
        assert!(html.starts_with("<!doctype html>"), "{html}");
        assert_eq!(assets_of(&html), ["/demo/app.css", "/demo/app.js"], "{html}");
    }
}

#[tokio::test]
async fn the_bundles_are_served_with_their_content_types() {
    let server = TestServer::start();
    let html = get(server.port, "/").await.text();
    for asset in assets_of(&html) {
        let expected =
            if asset.ends_with(".js") { "text/javascript; charset=utf-8" } else { "text/css; charset=utf-8" };
        let plain = get(server.port, &asset).await;
        assert_eq!(plain.status, 200, "{asset}");
        assert_eq!(plain.header("content-type"), Some(expected), "{asset}");
        assert_eq!(plain.header("x-content-type-options"), Some("nosniff"), "{asset}");
        assert_eq!(plain.header("content-encoding"), None, "{asset}: not compressed unless asked");
        assert_eq!(plain.header("content-length"), Some(plain.body.len().to_string().as_str()), "{asset}");
        assert!(plain.body.len() > 1000, "{asset}: {} bytes", plain.body.len());

        // A browser gets it gzipped, and it decodes to the same bytes.
        let zipped = request(server.port, "GET", &asset, &[("Accept-Encoding", "gzip, deflate, br")]).await;
        assert_eq!(zipped.status, 200);
        assert_eq!(zipped.header("content-type"), Some(expected));
        assert_eq!(zipped.header("content-encoding"), Some("gzip"), "{asset}");
        assert_eq!(zipped.header("vary"), Some("accept-encoding"));
        let mut decoded = Vec::new();
        flate2::read::GzDecoder::new(&zipped.body[..]).read_to_end(&mut decoded).expect("gunzip");
        assert_eq!(decoded, plain.body, "{asset}");
    }
    let script = get(server.port, "/demo/app.js").await.text();
    assert!(script.contains("/api/ot"), "the bundle holds the OT client");
}

#[tokio::test]
async fn a_matching_etag_is_answered_304_without_a_body() {
    let server = TestServer::start();
    for path in ["/", "/demo/app.js", "/demo/app.css"] {
        let first = get(server.port, path).await;
        let etag = first.header("etag").expect("etag").to_owned();
        let again = request(server.port, "GET", path, &[("If-None-Match", &etag)]).await;
        assert_eq!(again.status, 304, "{path}");
        assert!(again.body.is_empty(), "{path}");
        assert_eq!(again.header("etag"), Some(etag.as_str()));
        let changed = request(server.port, "GET", path, &[("If-None-Match", "\"something-else\"")]).await;
        assert_eq!(changed.status, 200, "{path}");
        assert_eq!(changed.body, first.body);
    }
}

#[tokio::test]
async fn head_answers_without_a_body_and_other_paths_are_not_found() {
    let server = TestServer::start();
    let head = request(server.port, "HEAD", "/", &[]).await;
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-type"), Some("text/html; charset=utf-8"));
    assert!(head.body.is_empty());
    for path in ["/demo/", "/demo/nope.js", "/index.html", "/demo/app.js/x", "/somedoc"] {
        assert_eq!(get(server.port, path).await.status, 404, "{path}");
    }
    assert_eq!(request(server.port, "POST", "/", &[("Content-Length", "0")]).await.status, 405);
    // The other plain routes are unchanged.
    assert_eq!(get(server.port, "/healthz").await.text(), "ok\n");
}

#[tokio::test]
async fn websockets_to_the_demo_paths_still_reach_documents() {
    let server = TestServer::start();
    assert_eq!(get(server.port, "/").await.status, 200);
    // Documents named like the page's files are documents when asked for with an upgrade.
    for name in ["demo", "demo/app.js"] {
        let mut a = Client::synced(&server.url(name)).await;
        let mut b = Client::synced(&server.url(name)).await;
        a.insert(0, "hello from the editor").await;
        b.pump_until(|c| c.text() == "hello from the editor", "the edit relayed").await;
    }
    // And the page is still there.
    assert_eq!(get(server.port, "/demo/app.js").await.status, 200);
}
