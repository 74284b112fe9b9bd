//! One check per decoder that reads what a peer sends: the bytes go through the same entry
//! point the server uses, and the check panics when an invariant fails (a round trip, a
//! bound), not only when the decoder itself panics. Shared, as source, by the cargo-fuzz
//! targets (`fuzz_targets/*.rs`, one line each) and by the seeded property run in the test
//! suite (`tests/it/decoders.rs`), so both exercise exactly the same code. Each returns
//! whether the decoder accepted the input, i.e. whether the invariants after it ran: the
//! property run counts those, so that its generators are known to get past the decoders.
//!
//! Inputs that several parts make up (a JWT header and its claims, a REST mode and its
//! argument) are split on a NUL byte, which none of the JSON or text parts may contain.
#![allow(dead_code)] // each fuzz target uses one check

use std::sync::OnceLock;
use std::time::Instant;

use base64::Engine;
use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
use serde_json::Value;
use yrs::encoding::write::Write;
use yrs::sync::protocol::MSG_AWARENESS;
use yrs::sync::{AwarenessUpdate, Message, SyncMessage};
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::{Encode, Encoder, EncoderV1};
use yrs::{Any, Doc, Map, ReadTxn, StateVector, Text, Transact, Update};

use yserve::auth::{Auth, AuthSettings, Secret};
use yserve::docname::{DocName, DOC_NAME_BYTES_MAX};
use yserve::document::{format_event_id, parse_event_id};
use yserve::ot::delta::{utf16_len, Component, Delta, DeltaLimits, Insert};
use yserve::ot::sharedb::{self, Request};
use yserve::presence::{ConnId, Presence};
use yserve::protocol::{self, Inbound};
use yserve::rest::{self, Route};
use yserve::validate::{inspect_update_v1, Limits};

/// The HS256 secret the `jwt` check's server is configured with.
pub const JWT_SECRET: &str = "fuzz-secret";
/// The `now` the `jwt` check authenticates at (Unix seconds).
pub const JWT_NOW: u64 = 1_700_000_000;
const JWT_LEEWAY_SECS: u64 = 5;

/// Splits on the first NUL byte; the second part is empty when there is none.
pub fn split_nul(data: &[u8]) -> (&[u8], &[u8]) {
    match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[]),
    }
}

fn text(data: &[u8]) -> Option<&str> {
    std::str::from_utf8(data).ok()
}

/// The OT op bounds of a server started with default flags.
pub fn op_limits() -> DeltaLimits {
    static LIMITS: OnceLock<DeltaLimits> = OnceLock::new();
    *LIMITS.get_or_init(|| yserve::app::ot_op_limits(&yserve::config::Config::default()))
}

/// Small bounds, so that generated inputs reach every limit error too.
const TIGHT: DeltaLimits = DeltaLimits { components_max: 8, insert_units_max: 16, len_max: 64 };

// ---------------------------------------------------------------------------------------
// y-websocket frames (`protocol::decode_frame`, what a session does with a binary frame).

/// A decoded frame re-encodes to a frame that decodes to the same message, and yrs's own
/// decoder reads the same message from the original bytes.
pub fn protocol(data: &[u8]) -> bool {
    let Ok(inbound) = protocol::decode_frame(data) else { return false };
    match inbound {
        Inbound::SyncStep1(sv) => {
            let again = protocol::decode_frame(&protocol::encode_sync_step1(&sv));
            assert!(matches!(&again, Ok(Inbound::SyncStep1(s)) if *s == sv), "SyncStep1 round trip: {again:?}");
        }
        Inbound::SyncStep2(checked) | Inbound::Update(checked) => {
            let (step2, buf) = match Message::decode_v1(data) {
                Ok(Message::Sync(SyncMessage::SyncStep2(buf))) => (true, buf),
                Ok(Message::Sync(SyncMessage::Update(buf))) => (false, buf),
                other => panic!("decode_frame read an update, yrs reads {other:?}"),
            };
            assert_eq!(buf.len(), checked.bytes);
            let frame = if step2 { protocol::encode_sync_step2(buf) } else { protocol::encode_update(buf) };
            match protocol::decode_frame(&frame) {
                Ok(Inbound::SyncStep2(again)) if step2 => assert_eq!(again.summary, checked.summary),
                Ok(Inbound::Update(again)) if !step2 => assert_eq!(again.summary, checked.summary),
                other => panic!("update round trip: {other:?}"),
            }
        }
        Inbound::Awareness(update) => {
            match Message::decode_v1(data) {
                Ok(Message::Awareness(theirs)) => assert_eq!(theirs, update),
                other => panic!("decode_frame read awareness, yrs reads {other:?}"),
            }
            awareness_round_trip(&update);
        }
        Inbound::Unknown(tag) => assert!(tag > 3, "known message type {tag} decoded as unknown"),
        Inbound::Auth | Inbound::QueryAwareness => {}
    }
    true
}

fn awareness_round_trip(update: &AwarenessUpdate) {
    match protocol::decode_frame(&protocol::encode_awareness(update.clone())) {
        Ok(Inbound::Awareness(again)) => assert_eq!(&again, update),
        other => panic!("awareness round trip: {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------
// Awareness updates (the payload of an awareness frame, then the document's table).

/// `data` is the payload of an awareness message (what y-protocols `encodeAwarenessUpdate`
/// writes), framed as a client frames it. Once decoded, it goes into an empty awareness
/// table as the document actor does: every entry is new so all are accepted, exactly the
/// non-`null` ones are present, applying it again accepts nothing, and the removal sent when
/// its connection ends removes them all, here and at a peer that applied the same update.
pub fn awareness(data: &[u8]) -> bool {
    let mut encoder = EncoderV1::new();
    encoder.write_var(MSG_AWARENESS);
    encoder.write_buf(data);
    let Ok(Inbound::Awareness(update)) = protocol::decode_frame(&encoder.to_vec()) else { return false };
    awareness_round_trip(&update);
    let now = Instant::now();
    let mut table = Presence::default();
    let relayed = table.apply(ConnId(1), update.clone(), now);
    assert_eq!(relayed.as_ref().map_or(0, |r| r.clients.len()), update.clients.len());
    let present = update.clients.values().filter(|e| &*e.json != "null").count();
    for (client, entry) in &update.clients {
        assert_eq!(table.is_present(client.get()), &*entry.json != "null", "client {client}");
    }
    assert_eq!(table.len(), present);
    assert_eq!(table.current().map_or(0, |c| c.clients.len()), present);
    assert!(table.apply(ConnId(2), update.clone(), now).is_none(), "the same clocks were accepted twice");
    let mut peer = Presence::default();
    peer.apply(ConnId(7), update.clone(), now);
    let removal = table.remove_connection(ConnId(1), now);
    assert_eq!(table.len(), 0);
    assert_eq!(removal.as_ref().map_or(0, |r| r.clients.len()), present);
    if let Some(removal) = removal {
        awareness_round_trip(&removal);
        peer.apply(ConnId(8), removal, now);
    }
    assert_eq!(peer.len(), 0, "the removal left clients present at a peer");
    true
}

// ---------------------------------------------------------------------------------------
// ShareDB messages and Quill deltas (the `/api/ot` WebSocket and the OT REST routes).

/// `data` is one text frame. An accepted message's fields are within their bounds, its
/// edits parse as deltas (checked as `delta` does), and a presence re-renders, as relayed,
/// into the same presence. A refused one gets a JSON error reply with a code and a message.
pub fn sharedb(data: &[u8]) -> bool {
    let Some(frame) = text(data) else { return false };
    let parsed = match sharedb::parse(frame) {
        Ok(parsed) => parsed,
        Err(reply) => {
            let reply: Value = serde_json::from_str(&reply).expect("the error reply is JSON");
            assert!(reply["error"]["code"].is_string() && reply["error"]["message"].is_string(), "{reply}");
            return false;
        }
    };
    assert!(parsed.echo.is_object());
    for request in &parsed.requests {
        match request {
            Request::Fetch { c, .. } | Request::Subscribe { c, .. } | Request::Unsubscribe { c, .. } => {
                assert!(!c.is_empty())
            }
            Request::Op { c, d, src, body, .. } => {
                assert!(!c.is_empty() && !d.is_empty());
                assert!(src.as_deref().is_none_or(sharedb::valid_src), "{src:?}");
                if let sharedb::OpBody::Edit(op) = body {
                    delta_value(op);
                }
            }
            Request::PresenceSubscribe { ch, .. }
            | Request::PresenceUnsubscribe { ch, .. }
            | Request::PresenceRequest { ch } => assert_channel(ch),
            Request::Presence(p) => {
                assert_channel(&p.ch);
                assert!(!p.id.is_empty() && p.id.len() <= sharedb::PRESENCE_ID_BYTES_MAX);
                let relayed = sharedb::presence(p, "src");
                match sharedb::parse(&relayed).map(|r| r.requests) {
                    Ok(again) => assert_eq!(again, [Request::Presence(p.clone())], "{relayed}"),
                    Err(e) => panic!("the relayed presence {relayed} does not parse: {e}"),
                }
            }
            Request::Handshake { .. } | Request::Ping => {}
        }
    }
    true
}

fn assert_channel(ch: &str) {
    assert!(!ch.is_empty() && ch.len() <= yserve::ot::sharedb::CHANNEL_BYTES_MAX, "{ch:?}");
}

/// `data` is the JSON of an operation. Parsed under the server's limits and under tight
/// ones, an accepted delta is canonical (to_json then from_json gives it back, and the same
/// JSON again) and within the limits; what the tight limits accept the server's accept too.
pub fn delta(data: &[u8]) -> bool {
    let Ok(value) = serde_json::from_slice::<Value>(data) else { return false };
    delta_value(&value).is_some()
}

fn delta_value(value: &Value) -> Option<Delta> {
    let tight = Delta::from_json(value, &TIGHT).ok().inspect(|d| delta_round_trip(d, &TIGHT));
    let delta = Delta::from_json(value, &op_limits());
    if let Some(tight) = &tight {
        assert_eq!(delta.as_ref(), Ok(tight), "accepted under tight limits, not under the server's");
    }
    let delta = delta.ok()?;
    delta_round_trip(&delta, &op_limits());
    Some(delta)
}

/// `components_max` counts JSON components before normalisation, and a `replace` becomes two
/// (an insert and a delete), so the canonical JSON may have up to twice as many: the round
/// trip is checked with that bound lifted.
fn delta_round_trip(delta: &Delta, limits: &DeltaLimits) {
    let json = delta.to_json();
    let lifted = DeltaLimits { components_max: usize::MAX, ..*limits };
    let again = Delta::from_json(&json, &lifted).unwrap_or_else(|e| panic!("to_json gave {json}, refused: {e}"));
    assert_eq!(&again, delta, "{json}");
    assert_eq!(again.to_json(), json);
    assert!(delta.base_len() <= limits.len_max);
    let inserted: u64 = delta
        .ops()
        .iter()
        .map(|c| match c {
            Component::Insert { insert: Insert::Text(s), .. } => utf16_len(s),
            Component::Insert { insert: Insert::Embed(_), .. } => 1,
            _ => 0,
        })
        .sum();
    assert!(inserted <= limits.insert_units_max);
    assert!(json.as_array().is_some_and(|a| a.len() <= limits.components_max.saturating_mul(2)));
}

// ---------------------------------------------------------------------------------------
// JWT (the `?token=` of every WebSocket and the bearer token of the REST API).

/// The first byte chooses. Even: the rest is a token as sent (the fuzzer cannot forge an
/// HMAC, so an accepted token must carry the true HS256 signature of its first two parts).
/// Odd: the rest is a header and claims JSON, split on NUL, which the check signs with the
/// server's secret, so mutated claims reach the claims path. Two servers verify: one plain,
/// one requiring audience `yserve` and issuer `idp`. An identity they accept has the claims'
/// `sub`, expires `exp` + leeway (after now), has access to every key of `docs`, and carries
/// the required `aud` and `iss`.
pub fn jwt(data: &[u8]) -> bool {
    use jsonwebtoken::{crypto, Algorithm, EncodingKey};
    let Some((&mode, rest)) = data.split_first() else { return false };
    let key = EncodingKey::from_secret(JWT_SECRET.as_bytes());
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let token = if mode % 2 == 0 {
        let Some(token) = text(rest) else { return false };
        token.to_owned()
    } else {
        let (header, claims) = split_nul(rest);
        let message = format!("{}.{}", b64.encode(header), b64.encode(claims));
        let signature = crypto::sign(message.as_bytes(), &key, Algorithm::HS256).expect("HS256 signs");
        format!("{message}.{signature}")
    };
    let secret: Secret = JWT_SECRET.parse().unwrap();
    let mut accepted = false;
    for required in [false, true] {
        let (audience, issuer) = if required { (Some("yserve"), Some("idp")) } else { (None, None) };
        let settings = AuthSettings { secret: Some(&secret), public_key_pem: None, audience, issuer };
        let auth = Auth::new(settings).expect("an HS256 verifier");
        let Ok(identity) = auth.authenticate(Some(&token), JWT_NOW) else { continue };
        accepted = true;
        let (message, signature) = token.rsplit_once('.').expect("three parts");
        let truth = crypto::sign(message.as_bytes(), &key, Algorithm::HS256).unwrap();
        assert_eq!(signature, truth, "accepted a token without its true signature: {token}");
        let payload = message.split_once('.').expect("three parts").1;
        // serde skips the fields the server ignores without checking their UTF-8, so such
        // claims are read here with the bad bytes replaced (the fields checked are valid).
        let claims = String::from_utf8_lossy(&b64.decode(payload).expect("base64 claims")).into_owned();
        let claims: Value = serde_json::from_str(&claims).expect("JSON claims");
        assert!(!identity.user.is_empty());
        assert_eq!(claims["sub"].as_str(), Some(&*identity.user));
        let exp = claims["exp"].as_u64().expect("a u64 exp");
        assert_eq!(identity.expires_at, Some(exp.saturating_add(JWT_LEEWAY_SECS)));
        assert!(exp.saturating_add(JWT_LEEWAY_SECS) > JWT_NOW, "accepted an expired token");
        for pattern in claims["docs"].as_object().into_iter().flat_map(|d| d.keys()) {
            assert!(identity.access(pattern).is_some(), "no access to granted {pattern:?}");
        }
        if required {
            let aud_ok = match &claims["aud"] {
                Value::String(a) => a == "yserve",
                Value::Array(a) => a.iter().any(|a| a == "yserve"),
                _ => false,
            };
            assert!(aud_ok && claims["iss"] == "idp", "accepted without the required aud/iss: {claims}");
        }
    }
    accepted
}

// ---------------------------------------------------------------------------------------
// Document names, REST requests, SSE ids.

fn assert_name(name: &DocName) {
    let s = name.as_str();
    assert!(!s.is_empty() && s.len() <= DOC_NAME_BYTES_MAX, "{} bytes", s.len());
    assert!(!s.chars().any(char::is_control), "{s:?}");
}

/// `data` is the raw path of a document connection. A parsed name is 1–512 bytes with no
/// control character, and percent-encoding it gives a path that parses to the same name.
pub fn docname(data: &[u8]) -> bool {
    let Some(path) = text(data) else { return false };
    let Ok(name) = DocName::from_url_path(path) else { return false };
    assert_name(&name);
    let encoded = format!("/{}", utf8_percent_encode(name.as_str(), NON_ALPHANUMERIC));
    assert_eq!(DocName::from_url_path(&encoded).as_ref(), Ok(&name));
    assert_eq!(DocName::new(name.as_str()).as_ref(), Ok(&name));
    true
}

/// The first byte chooses what the rest is: (0) a path after `/api/`, (1) the `?sv=` of
/// `GET …/update`, (2) a lock's `?ttl=` and (3) its JSON body, (4) an OT submit body.
/// Routes' names are valid and re-encode to the same route; a state vector re-encodes to
/// the same one; a TTL is within 1 ms–24 h; a submit has a valid `src` and a canonical op.
/// Refusals are 400 or 404.
pub fn rest(data: &[u8]) -> bool {
    let Some((&mode, rest)) = data.split_first() else { return false };
    let Some(arg) = text(rest) else { return false };
    let refused = |e: rest::Failure| {
        let status = e.status();
        assert!(status == 400 || status == 404, "status {status}");
        false
    };
    match mode % 5 {
        0 => match rest::parse_route(arg) {
            Ok(route) => {
                let path = route_path(&route);
                assert_eq!(rest::parse_route(&path).ok().as_ref(), Some(&route), "{path}");
                true
            }
            Err(e) => refused(e),
        },
        1 => match rest::parse_sv(arg) {
            Ok(sv) => {
                let b64 = base64::engine::general_purpose::STANDARD.encode(sv.encode_v1());
                assert_eq!(rest::parse_sv(&b64).ok(), Some(sv));
                true
            }
            Err(e) => refused(e),
        },
        2 | 3 => {
            let query: std::collections::HashMap<String, String> =
                if mode % 5 == 2 { [("ttl".to_owned(), arg.to_owned())].into() } else { Default::default() };
            let body = if mode % 5 == 3 { arg.as_bytes() } else { &[] };
            match rest::lock_ttl_ms(&query, body) {
                Ok(ttl) => {
                    assert!((1..=rest::LOCK_TTL_MAX_MS).contains(&ttl), "ttl {ttl}");
                    true
                }
                Err(e) => refused(e),
            }
        }
        _ => match rest::parse_submit(arg.as_bytes(), &op_limits()) {
            Ok(submit) => {
                assert!(sharedb::valid_src(&submit.src), "{:?}", submit.src);
                delta_round_trip(&submit.op, &op_limits());
                true
            }
            Err(_) => false,
        },
    }
}

/// A route as a client writes it: each name one segment, `encodeURIComponent`-style.
fn route_path(route: &Route) -> String {
    let seg = |n: &DocName| {
        assert_name(n);
        utf8_percent_encode(n.as_str(), NON_ALPHANUMERIC).to_string()
    };
    match route {
        Route::Docs => "docs".into(),
        Route::Stats => "stats".into(),
        Route::ServerEvents => "events".into(),
        Route::Doc(d) => format!("docs/{}", seg(d)),
        Route::Update(d) => format!("docs/{}/update", seg(d)),
        Route::Json(d) => format!("docs/{}/json", seg(d)),
        Route::History(d) => format!("docs/{}/history", seg(d)),
        Route::Presence(d) => format!("docs/{}/presence", seg(d)),
        Route::Events(d) => format!("docs/{}/events", seg(d)),
        Route::Locks(d) => format!("docs/{}/locks", seg(d)),
        Route::Lock { doc, key } => format!("docs/{}/locks/{}", seg(doc), seg(key)),
        Route::Text { doc, text } => format!("docs/{}/texts/{}", seg(doc), seg(text)),
        Route::Ops { doc, text } => format!("docs/{}/texts/{}/ops", seg(doc), seg(text)),
    }
}

/// `data` is a `Last-Event-ID`. A parsed id renders (as the server writes ids) to one that
/// parses the same, and an id written without a sign or leading zeros renders identically.
pub fn event_id(data: &[u8]) -> bool {
    let Some(id) = text(data) else { return false };
    let Some((seq, n)) = parse_event_id(id) else { return false };
    let rendered = format_event_id(seq, n);
    assert_eq!(parse_event_id(&rendered), Some((seq, n)));
    let canonical = |p: &str| p == "0" || !(p.starts_with('0') || p.starts_with('+'));
    let (a, b) = id.trim().split_once('.').expect("a parsed id has a dot");
    if canonical(a) && canonical(b) {
        assert_eq!(rendered, id.trim());
    }
    true
}

// ---------------------------------------------------------------------------------------
// Updates: decode → validate → apply → encode, as the document actor does.

/// The document the `update` check applies to (an update from the fuzzer names its items
/// relative to it).
pub fn update_base_doc() -> Doc {
    let doc = Doc::with_client_id(1);
    let t = doc.get_or_insert_text("t");
    let m = doc.get_or_insert_map("m");
    let mut txn = doc.transact_mut();
    t.insert(&mut txn, 0, "hello world");
    t.remove_range(&mut txn, 2, 3);
    m.insert(&mut txn, "k", Any::from(1.0));
    drop(txn);
    doc
}

/// `data` is a v1 update. The server applies inside `catch_unwind` and rebuilds the document
/// from the store when yrs panics, so a panicking apply is contained (tests/it/hostile.rs).
/// What must never happen is what containment cannot catch: an abort (stack overflow, huge
/// allocation) anywhere, or an update that applies cleanly and leaves the document unable to
/// encode its full state: that one would be committed, and every later join would fail.
/// `quiet` silences the panic hook around the contained apply (the fuzzer's hook would
/// otherwise report it as a crash); the test suite leaves the hook alone, since it is global.
pub fn update(data: &[u8], quiet: bool) -> bool {
    let Ok(summary) = inspect_update_v1(data, &Limits::default()) else { return false };
    let doc = update_base_doc();
    // As the document actor: updates that cannot apply completely are held outside yrs.
    let sv = doc.transact().state_vector();
    if summary.first_missing_dependency(|c| sv.get(&yrs::ClientID::new(c))).is_some() {
        return false;
    }
    let Ok(update) = Update::decode_v1(data) else { return false };
    let hook = quiet.then(|| {
        let hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {}));
        hook
    });
    let applied = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut txn = doc.transact_mut();
        txn.apply_update(update).is_ok().then(|| txn.encode_update_v1())
    }));
    if let Some(hook) = hook {
        std::panic::set_hook(hook);
    }
    if let Ok(Some(_delta)) = &applied {
        // Applied cleanly and committed: the document must still encode (not contained).
        let _ = doc.transact().encode_state_as_update_v1(&StateVector::default());
    }
    matches!(applied, Ok(Some(_)))
}

/// Every check by the name of its fuzz target and seed folder.
pub const ALL: &[(&str, fn(&[u8]) -> bool)] = &[
    ("protocol", protocol),
    ("awareness", awareness),
    ("sharedb", sharedb),
    ("delta", delta),
    ("jwt", jwt),
    ("docname", docname),
    ("rest", rest),
    ("event_id", event_id),
    ("update", |data| update(data, false)),
];
