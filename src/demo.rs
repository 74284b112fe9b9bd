//! The demo editor: the built page (`index.html`, one JS and one CSS bundle) embedded in the
//! binary, so `cargo run --release` serves it on a machine without Node. Request in, `Reply`
//! out, like `rest`: `http` routes `GET|HEAD /` and `/demo/<asset>` here (after the WebSocket
//! upgrades, so a WebSocket to `/…` still reaches a document) and adds warp.
//!
//! The files under `src/demo/` are build output, written by `npm run build:demo` in
//! `client-sdk/` from `client-sdk/demo/`, and committed. This module owns only their bytes and
//! how they are served; it must not touch documents, auth or the store. The page itself is
//! a client like any other: it connects back over the y-websocket and `/api/ot` endpoints.
//!
//! Caching: the asset names are fixed (the binary cannot know hashed names at compile time
//! without a build script), so a browser must never keep using a cached bundle after the
//! binary changes. Every response carries a strong `ETag` (a hash of the bytes sent) and
//! `Cache-Control: no-cache`: the browser revalidates each load and gets a `304` with no body
//! while the bytes are unchanged. Bundles are gzip-compressed once, on first use, for clients
//! that accept it.

use std::io::Write;
use std::sync::LazyLock;

use bytes::Bytes;

/// A request for a demo file; the headers `http` passes on.
pub struct Request<'a> {
    pub path: &'a str,
    pub if_none_match: Option<&'a str>,
    pub accept_encoding: Option<&'a str>,
}

/// A response, for `http` to turn into warp's.
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: Bytes,
}

struct Asset {
    /// The URL path it is served at.
    path: &'static str,
    content_type: &'static str,
    bytes: &'static [u8],
}

const ASSETS: [Asset; 3] = [
    Asset { path: "/", content_type: "text/html; charset=utf-8", bytes: include_bytes!("demo/index.html") },
    Asset {
        path: "/demo/app.js",
        content_type: "text/javascript; charset=utf-8",
        bytes: include_bytes!("demo/app.js"),
    },
    Asset { path: "/demo/app.css", content_type: "text/css; charset=utf-8", bytes: include_bytes!("demo/app.css") },
];

/// Smaller files are sent as they are: compressing them saves less than the header costs.
const GZIP_BYTES_MIN: usize = 1024;

/// The page talks only to the server that sent it. CodeMirror injects its theme as inline
/// `<style>` elements, hence `'unsafe-inline'` for styles (scripts stay `'self'` only).
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
     connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// One way of sending an asset: its bytes and their `ETag`.
struct Variant {
    bytes: Bytes,
    etag: String,
}

impl Variant {
    fn new(bytes: Bytes) -> Variant {
        let etag = format!("\"{:x}-{:016x}\"", bytes.len(), fnv1a_64(&bytes));
        Variant { bytes, etag }
    }
}

struct Prepared {
    identity: Variant,
    gzip: Option<Variant>,
}

static PREPARED: LazyLock<Vec<Prepared>> = LazyLock::new(|| {
    ASSETS
        .iter()
        .map(|asset| Prepared { identity: Variant::new(Bytes::from_static(asset.bytes)), gzip: gzip(asset.bytes) })
        .collect()
});

/// Serves `request.path` if it is a demo file; `None` otherwise (`http` answers 404).
pub fn handle(request: &Request<'_>) -> Option<Reply> {
    let index = ASSETS.iter().position(|a| a.path == request.path)?;
    let asset = &ASSETS[index];
    let prepared = &PREPARED[index];
    let (variant, encoding) = match &prepared.gzip {
        Some(gzip) if request.accept_encoding.is_some_and(accepts_gzip) => (gzip, Some("gzip")),
        _ => (&prepared.identity, None),
    };
    let mut headers = vec![
        ("etag", variant.etag.clone()),
        ("cache-control", "no-cache".to_owned()),
        ("vary", "accept-encoding".to_owned()),
    ];
    if request.if_none_match.is_some_and(|list| etag_matches(list, &variant.etag)) {
        return Some(Reply { status: 304, headers, body: Bytes::new() });
    }
    headers.push(("content-type", asset.content_type.to_owned()));
    headers.push(("x-content-type-options", "nosniff".to_owned()));
    if let Some(encoding) = encoding {
        headers.push(("content-encoding", encoding.to_owned()));
    }
    if asset.path == "/" {
        headers.push(("content-security-policy", CONTENT_SECURITY_POLICY.to_owned()));
        // The page's URL may carry `?token=`; it loads nothing from elsewhere, but say so.
        headers.push(("referrer-policy", "no-referrer".to_owned()));
    }
    Some(Reply { status: 200, headers, body: variant.bytes.clone() })
}

/// Whether an `Accept-Encoding` value allows gzip: listed by name without `q=0` (RFC 9110
/// §12.5.3). A bare `*` is not taken as consent; every browser names gzip.
fn accepts_gzip(accept_encoding: &str) -> bool {
    accept_encoding.split(',').any(|item| {
        let mut parts = item.split(';');
        let coding = parts.next().unwrap_or("").trim();
        coding.eq_ignore_ascii_case("gzip")
            && parts.all(|p| {
                let p = p.trim();
                !(p.len() >= 2
                    && p[..2].eq_ignore_ascii_case("q=")
                    && p[2..].trim().parse::<f32>().is_ok_and(|q| q <= 0.0))
            })
    })
}

/// `If-None-Match` uses the weak comparison (RFC 9110 §13.1.2): `W/` is ignored on both sides.
fn etag_matches(if_none_match: &str, etag: &str) -> bool {
    let weak = |t: &str| t.trim().trim_start_matches("W/").to_owned();
    let etag = weak(etag);
    if_none_match.split(',').any(|t| t.trim() == "*" || weak(t) == etag)
}

fn gzip(bytes: &'static [u8]) -> Option<Variant> {
    if bytes.len() < GZIP_BYTES_MIN {
        return None;
    }
    let mut encoder = flate2::write::GzEncoder::new(Vec::with_capacity(bytes.len() / 3), flate2::Compression::best());
    // Writing to a Vec cannot fail; if it somehow did, the file is still served uncompressed.
    encoder.write_all(bytes).ok()?;
    let compressed = encoder.finish().ok()?;
    (compressed.len() < bytes.len()).then(|| Variant::new(Bytes::from(compressed)))
}

/// FNV-1a, 64 bits: stable across Rust versions and platforms (unlike `DefaultHasher`), and
/// an `ETag` needs no collision resistance against an adversary.
fn fnv1a_64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| (hash ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3))
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    fn get(path: &str, accept_encoding: Option<&str>, if_none_match: Option<&str>) -> Option<Reply> {
        handle(&Request { path, if_none_match, accept_encoding })
    }

    fn header<'a>(reply: &'a Reply, name: &str) -> Option<&'a str> {
        reply.headers.iter().find(|(n, _)| *n == name).map(|(_, v)| v.as_str())
    }

    #[test]
    fn index_references_the_bundles() {
        let page = std::str::from_utf8(ASSETS[0].bytes).expect("utf-8");
        assert!(page.contains("demo/app.js") && page.contains("demo/app.css"), "{page}");
    }

    #[test]
    fn unknown_paths_are_not_demo_files() {
        for path in ["/demo", "/demo/", "/demo/nope.js", "/index.html", "/app.js", "/src/demo/app.js"] {
            assert!(get(path, None, None).is_none(), "{path}");
        }
    }

    #[test]
    fn gzip_is_sent_only_to_clients_that_accept_it_and_decodes_to_the_file() {
        let plain = get("/demo/app.js", None, None).expect("served");
        assert_eq!(plain.body, ASSETS[1].bytes);
        assert_eq!(header(&plain, "content-encoding"), None);

        let zipped = get("/demo/app.js", Some("gzip, deflate, br"), None).expect("served");
        assert_eq!(header(&zipped, "content-encoding"), Some("gzip"));
        assert_ne!(header(&zipped, "etag"), header(&plain, "etag"), "each representation has its own ETag");
        let mut decoded = Vec::new();
        flate2::read::GzDecoder::new(&zipped.body[..]).read_to_end(&mut decoded).expect("gunzip");
        assert_eq!(decoded, ASSETS[1].bytes);

        let refused = get("/demo/app.js", Some("br, gzip;q=0"), None).expect("served");
        assert_eq!(header(&refused, "content-encoding"), None);
    }

    #[test]
    fn a_matching_etag_gets_304_without_a_body() {
        let first = get("/", Some("gzip"), None).expect("served");
        let etag = header(&first, "etag").expect("etag").to_owned();
        let again = get("/", Some("gzip"), Some(&format!("\"other\", W/{etag}"))).expect("served");
        assert_eq!(again.status, 304);
        assert!(again.body.is_empty());
        assert_eq!(header(&again, "etag"), Some(etag.as_str()));
        assert_eq!(get("/", Some("gzip"), Some("\"other\"")).expect("served").status, 200);
    }

    #[test]
    fn accept_encoding_parsing() {
        assert!(accepts_gzip("gzip"));
        assert!(accepts_gzip("deflate, GZIP;q=0.5"));
        assert!(!accepts_gzip("gzip;q=0"));
        assert!(!accepts_gzip("gzip; q=0.000"));
        assert!(!accepts_gzip("br, *"));
        assert!(!accepts_gzip("x-gzip"));
    }
}
