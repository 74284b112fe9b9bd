//! The fuzz targets' checks (`fuzz/checks.rs`), run as seeded property tests so CI exercises
//! every network decoder without cargo-fuzz: each target gets structured inputs (valid
//! frames, JSON messages, deltas, signed tokens, names, ids, made here) that are then
//! mutated, at the JSON level and at the byte level, plus mutations of its committed seeds.
//! Every committed seed in `fuzz/seeds/<target>/` (the crash inputs among them) also runs
//! as a regression test.
//!
//! Each check also bounds the largest single allocation (see `allocation_bound`), as libFuzzer
//! does for the cargo-fuzz targets: a few bytes that make yrs reserve gigabytes are an attack.
//!
//! The seed is fixed, so CI runs the same cases each time; `YSERVE_TEST_SEED=<n>` runs
//! other ones and `YSERVE_FUZZ_CASES=<n>` changes how many per target. A failing case
//! prints its input in hex.

use std::collections::HashMap;

use base64::Engine;
use fastrand::Rng;
use serde_json::{json, Map, Value};
use yrs::encoding::write::Write;
use yrs::sync::awareness::AwarenessUpdateEntry;
use yrs::sync::AwarenessUpdate;
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::{Encode, Encoder, EncoderV1};
use yrs::{Array, ClientID, Doc, Map as _, ReadTxn, StateVector, Text, Transact};

use crate::checks;

/// The seed CI runs with.
const SEED: u64 = 20_260_501;
/// Cases per target. The whole run takes a few seconds in release on two cores.
const CASES: usize = 200_000;
/// `update` applies to a yrs document, which is slower; it also has its own mutation tests
/// in `src/validate.rs`.
const UPDATE_CASES: usize = 30_000;

fn env_u64(key: &str) -> Option<u64> {
    std::env::var(key).ok().map(|s| s.parse().unwrap_or_else(|_| panic!("{key} is a number")))
}

/// Runs `check` on `cases` generated-then-mutated inputs and on mutations of the target's seeds.
fn run(target: &str, cases: usize, generate: fn(&mut Rng) -> Vec<u8>) {
    let check = checks::ALL.iter().find(|(name, _)| *name == target).expect("a check").1;
    let seed = env_u64("YSERVE_TEST_SEED").unwrap_or(SEED);
    let cases = env_u64("YSERVE_FUZZ_CASES").map_or(cases, |n| n as usize);
    println!("{target}: {cases} cases, seed {seed} (replay with YSERVE_TEST_SEED={seed})");
    let mut rng = Rng::with_seed(seed ^ target.bytes().fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(b as u64)));
    let corpus: Vec<Vec<u8>> = seeds(target).into_iter().map(|(_, bytes)| bytes).collect();
    let mut accepted = 0;
    for case in 0..cases {
        let mut input = match rng.u8(..8) {
            0 if !corpus.is_empty() => corpus[rng.usize(..corpus.len())].clone(),
            _ => generate(&mut rng),
        };
        // Most cases keep their structure, to get deep; the rest are mangled bytes.
        if rng.u8(..3) == 0 {
            for _ in 0..rng.usize(1..4) {
                mutate_bytes(&mut rng, &mut input, &corpus);
            }
        }
        match std::panic::catch_unwind(|| checked(check, &input)) {
            Ok(true) => accepted += 1,
            Ok(false) => {}
            Err(panic) => {
                eprintln!("{target}: case {case} of seed {seed} failed on input (hex) {}", hex(&input));
                std::panic::resume_unwind(panic);
            }
        }
    }
    println!("{target}: {accepted} of {cases} inputs accepted by the decoder and checked");
    // A generator that stopped getting past the decoder would test nothing but refusals.
    assert!(accepted * 20 >= cases, "only {accepted} of {cases} {target} inputs were accepted");
}

/// Most a decoder may allocate at once for an input of `len` bytes: what it holds is in
/// proportion to what it read (a declared count it cannot have read must not be reserved).
fn allocation_bound(len: usize) -> usize {
    (1 << 20) + 64 * len
}

/// Runs `check` and checks its largest single allocation against the bound.
fn checked(check: fn(&[u8]) -> bool, input: &[u8]) -> bool {
    crate::take_largest_allocation();
    let accepted = check(input);
    let largest = crate::take_largest_allocation();
    assert!(
        largest <= allocation_bound(input.len()),
        "{} bytes of input made a {largest}-byte allocation",
        input.len()
    );
    accepted
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The committed seeds of a target, by file name.
fn seeds(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds").join(target);
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| {
            let path = e.unwrap().path();
            (path.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read(&path).unwrap())
        })
        .collect();
    out.sort();
    out
}

#[test]
fn every_committed_fuzz_seed_passes_its_check() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds");
    let mut dirs: Vec<String> =
        std::fs::read_dir(&root).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    dirs.sort();
    let mut targets: Vec<&str> = checks::ALL.iter().map(|(name, _)| *name).collect();
    targets.sort();
    assert_eq!(dirs, targets, "one seed folder per fuzz target");
    for (target, check) in checks::ALL {
        let seeds = seeds(target);
        assert!(!seeds.is_empty(), "{target} has no seeds");
        for (name, bytes) in seeds {
            if std::panic::catch_unwind(|| checked(*check, &bytes)).is_err() {
                panic!("fuzz/seeds/{target}/{name} fails its check");
            }
        }
    }
}

#[test]
fn frames_decode_and_round_trip() {
    run("protocol", CASES, |rng| frame(rng));
}

#[test]
fn awareness_updates_decode_and_apply() {
    run("awareness", CASES, |rng| awareness_update(rng).encode_v1());
}

#[test]
fn sharedb_messages_parse_within_bounds() {
    run("sharedb", CASES, |rng| mutated_json(rng, sharedb_message).into_bytes());
}

#[test]
fn deltas_parse_canonical_and_bounded() {
    run("delta", CASES, |rng| mutated_json(rng, delta_json).into_bytes());
}

#[test]
fn tokens_are_accepted_only_when_signed_and_as_claimed() {
    run("jwt", CASES, |rng| {
        let header = mutated_json(rng, |_| json!({"alg": "HS256", "typ": "JWT"}));
        let claims = mutated_json(rng, claims);
        if rng.bool() {
            [&[1u8][..], header.as_bytes(), &[0], claims.as_bytes()].concat()
        } else {
            // A token as sent: signed, then perhaps mangled by the byte mutations.
            [&[0u8][..], signed_token(&header, &claims).as_bytes()].concat()
        }
    });
}

#[test]
fn document_names_parse_within_bounds() {
    run("docname", CASES, |rng| format!("/{}", name_segment(rng)).into_bytes());
}

#[test]
fn rest_inputs_parse_within_bounds() {
    run("rest", CASES, |rng| {
        let (mode, arg) = match rng.u8(..5) {
            0 => (0, rest_path(rng)),
            1 => (1, sv_base64(rng)),
            2 => (2, pick(rng, &["90s", "5m", "1h", "24h", "25h", "0s", "1ms", "0", "1d", "x", "", "10 s"]).into()),
            3 => (3, mutated_json(rng, |rng| json!({"ttl_ms": number(rng)})).to_string()),
            _ => (4, mutated_json(rng, submit_body)),
        };
        [&[mode][..], arg.as_bytes()].concat()
    });
}

#[test]
fn last_event_ids_parse_and_render_back() {
    run("event_id", CASES, |rng| {
        let part = |rng: &mut Rng| match rng.u8(..6) {
            0 => u64::MAX.to_string(),
            1 => "18446744073709551616".into(),
            2 => format!("0{}", rng.u32(..1000)),
            3 => format!("+{}", rng.u32(..1000)),
            4 => String::new(),
            _ => {
                let bits = rng.u32(1..64);
                rng.u64(..1 << bits).to_string()
            }
        };
        let sep = pick(rng, &[".", ".", ".", "..", ",", ""]);
        let pad = pick(rng, &["", "", " ", "\t", "\n"]);
        format!("{pad}{}{sep}{}{pad}", part(rng), part(rng)).into_bytes()
    });
}

#[test]
fn updates_decode_validate_apply_and_encode() {
    run("update", UPDATE_CASES, |rng| {
        // Edits made on top of the check's base document, by its own client or another, sent
        // as the whole state or as the diff against the base.
        let base = checks::update_base_doc();
        let base_sv = base.transact().state_vector();
        let edit = Doc::with_client_id(pick(rng, &[1u64, 2, 9, 1 << 40]));
        let state = base.transact().encode_state_as_update_v1(&StateVector::default());
        edit.transact_mut().apply_update(yrs::Update::decode_v1(&state).unwrap()).unwrap();
        random_edits(rng, &edit);
        let since = if rng.bool() { base_sv } else { StateVector::default() };
        let update = edit.transact().encode_state_as_update_v1(&since);
        update
    });
}

// ---------------------------------------------------------------------------------------
// Generators.

fn pick<T: Clone>(rng: &mut Rng, items: &[T]) -> T {
    items[rng.usize(..items.len())].clone()
}

fn random_text(rng: &mut Rng) -> String {
    let alphabet = ['a', 'b', ' ', '\n', 'é', '日', '😀', '\u{0}', '\u{7f}', '%', '/', '*', '.'];
    (0..rng.usize(0..8)).map(|_| pick(rng, &alphabet)).collect()
}

/// Edits on a few kinds of shared types, so updates carry strings, embeds, maps and deletes.
fn random_edits(rng: &mut Rng, doc: &Doc) {
    let text = doc.get_or_insert_text("t");
    let map = doc.get_or_insert_map("m");
    let array = doc.get_or_insert_array("a");
    let mut txn = doc.transact_mut();
    for _ in 0..rng.usize(1..5) {
        match rng.u8(..5) {
            // At either end or all of it: offsets inside a character are not what clients send.
            0 | 1 => {
                let at = if rng.bool() { 0 } else { text.len(&txn) };
                text.insert(&mut txn, at, &random_text(rng));
            }
            2 => {
                let len = text.len(&txn);
                text.remove_range(&mut txn, 0, len);
            }
            3 => {
                map.insert(&mut txn, random_text(rng), yrs::Any::from(rng.f64()));
            }
            _ => {
                array.push_back(&mut txn, yrs::Any::from(random_text(rng)));
            }
        }
    }
}

fn state_vector(rng: &mut Rng) -> StateVector {
    let mut sv = StateVector::default();
    for _ in 0..rng.usize(0..4) {
        let client = pick(rng, &[0u64, 1, 7, (1 << 53) - 1, 1 << 53, u64::MAX]);
        sv.set_max(ClientID::new(client), pick(rng, &[0u32, 1, 5, u32::MAX]));
    }
    sv
}

/// Any of the frames a client sends.
fn frame(rng: &mut Rng) -> Vec<u8> {
    match rng.u8(..7) {
        0 => yserve::protocol::encode_sync_step1(&state_vector(rng)).to_vec(),
        1 | 2 => {
            let doc = Doc::with_client_id(rng.u64(1..1000));
            random_edits(rng, &doc);
            let update = yrs::ReadTxn::encode_state_as_update_v1(&doc.transact(), &StateVector::default());
            if rng.bool() {
                yserve::protocol::encode_update(update).to_vec()
            } else {
                yserve::protocol::encode_sync_step2(update).to_vec()
            }
        }
        3 => yserve::protocol::encode_awareness(awareness_update(rng)).to_vec(),
        4 => vec![3],
        5 => vec![2, 0, 1, b'x'],
        _ => {
            let mut encoder = EncoderV1::new();
            encoder.write_var(pick(rng, &[4u64, 127, 128, 300, u64::MAX]));
            encoder.write_buf(random_text(rng).as_bytes());
            encoder.to_vec()
        }
    }
}

fn awareness_update(rng: &mut Rng) -> AwarenessUpdate {
    let mut clients = HashMap::new();
    for _ in 0..rng.usize(0..4) {
        let state = match rng.u8(..4) {
            0 => "null".to_owned(),
            1 => json!({"user": {"name": random_text(rng), "color": "#30bced"}, "cursor": null}).to_string(),
            2 => random_text(rng),
            _ => random_value(rng, 2).to_string(),
        };
        let client = pick(rng, &[1u64, 2, 3, (1 << 53) + 1, u64::MAX]);
        clients.insert(
            ClientID::new(client),
            AwarenessUpdateEntry { clock: pick(rng, &[0u32, 1, 2, u32::MAX]), json: state.into() },
        );
    }
    AwarenessUpdate { clients }
}

/// Numbers at the edges the decoders care about.
fn number(rng: &mut Rng) -> Value {
    match rng.u8(..10) {
        0 => json!(-1),
        1 => json!(1.5),
        2 => json!(1u64 << 53),
        3 => json!((1u64 << 53) + 1),
        4 => json!(u64::MAX),
        5 => json!(1e300),
        6 => json!(0),
        7 => json!(2.0),
        _ => json!(rng.u64(..100)),
    }
}

fn string(rng: &mut Rng) -> String {
    match rng.u8(..8) {
        0 => String::new(),
        1 => "yjs".into(),
        2 => "x".repeat(pick(rng, &[64, 65, 256, 257, 600, 2049])),
        3 => "null".into(),
        _ => random_text(rng),
    }
}

fn random_value(rng: &mut Rng, depth: u32) -> Value {
    match rng.u8(..if depth == 0 { 5 } else { 7 }) {
        0 => Value::Null,
        1 => json!(rng.bool()),
        2 | 3 => number(rng),
        4 => json!(string(rng)),
        5 => Value::Array((0..rng.usize(0..3)).map(|_| random_value(rng, depth - 1)).collect()),
        _ => Value::Object((0..rng.usize(0..3)).map(|_| (string(rng), random_value(rng, depth - 1))).collect()),
    }
}

/// A generated JSON value, then mutated in place a few times, as text.
fn mutated_json(rng: &mut Rng, generate: fn(&mut Rng) -> Value) -> String {
    let mut value = generate(rng);
    for _ in 0..rng.usize(0..3) {
        mutate_json(rng, &mut value);
    }
    value.to_string()
}

/// Replaces, removes or adds one node somewhere in the tree.
fn mutate_json(rng: &mut Rng, value: &mut Value) {
    match value {
        Value::Object(map) if !map.is_empty() && rng.u8(..3) != 0 => {
            let key = map.keys().nth(rng.usize(..map.len())).unwrap().clone();
            match rng.u8(..4) {
                0 => {
                    map.remove(&key);
                }
                1 => {
                    map.insert(pick(rng, &["x", "a", "v", "op", "attributes", "replace"]).into(), random_value(rng, 2));
                }
                _ => mutate_json(rng, map.get_mut(&key).unwrap()),
            }
        }
        Value::Array(items) if !items.is_empty() && rng.u8(..3) != 0 => {
            let i = rng.usize(..items.len());
            match rng.u8(..4) {
                0 => {
                    items.remove(i);
                }
                1 => {
                    let copy = items[i].clone();
                    items.insert(i, copy);
                }
                _ => mutate_json(rng, &mut items[i]),
            }
        }
        _ => *value = random_value(rng, 2),
    }
}

fn attributes(rng: &mut Rng) -> Option<Value> {
    match rng.u8(..4) {
        0 => Some(json!({"bold": true})),
        1 => Some(json!({"bold": null, "link": "x"})),
        2 => Some(json!({})),
        _ => None,
    }
}

/// A valid component most of the time; the mutations make the invalid ones.
fn delta_component(rng: &mut Rng) -> Value {
    let mut c = match rng.u8(..6) {
        0 | 1 => json!({"insert": format!("{}{}", pick(rng, &["a", "é", "😀"]), random_text(rng))}),
        2 => json!({"insert": {"image": "x.png"}}),
        3 => json!({"retain": rng.u64(1..24)}),
        4 => json!({"replace": rng.u64(1..4), "insert": "r"}),
        _ => return json!({"delete": rng.u64(1..24)}),
    };
    if let Some(a) = attributes(rng) {
        c["attributes"] = a;
    }
    c
}

fn delta_json(rng: &mut Rng) -> Value {
    let ops: Vec<Value> = (0..rng.usize(0..10)).map(|_| delta_component(rng)).collect();
    if rng.u8(..4) == 0 {
        json!({ "ops": ops })
    } else {
        Value::Array(ops)
    }
}

fn sharedb_message(rng: &mut Rng) -> Value {
    let (c, d) = (json!(pick(rng, &["notes", "", "n/a"])), json!(pick(rng, &["t", "", "body"])));
    let v = || json!(7);
    match rng.u8(..11) {
        0 => json!({"a": "hs", "id": null}),
        1 => json!({"a": pick(rng, &["f", "s"]), "c": c, "d": d, "v": v()}),
        2 => json!({"a": "u", "c": c, "d": d}),
        3 => json!({"a": pick(rng, &["bf", "bs", "bu"]), "c": c, "b": ["t", "u"]}),
        4 => json!({"a": pick(rng, &["bf", "bs"]), "c": c, "b": {"t": 1, "u": null}}),
        5 | 6 => json!({"a": "op", "c": c, "d": d, "v": v(), "seq": 1, "src": "ab12", "op": delta_json(rng)}),
        7 => json!({"a": "op", "c": c, "d": d, "v": null, "seq": 1, "create": {"type": "rich-text", "data": []}}),
        8 => json!({"a": "pp"}),
        9 => json!({"a": pick(rng, &["ps", "pu", "pr"]), "ch": "notes.t", "seq": 2}),
        _ => json!({
            "a": "p", "ch": "notes.t", "id": "0123abcd", "pv": 3,
            "p": {"index": 2, "length": 0}, "c": "notes", "d": "t", "v": 7, "t": "http://sharejs.org/types/rich-text/v1",
        }),
    }
}

fn claims(rng: &mut Rng) -> Value {
    let mut claims = Map::new();
    claims.insert("sub".into(), json!(pick(rng, &["alice", "", "bob"])));
    claims.insert("exp".into(), json!(pick(rng, &[checks::JWT_NOW + 3600, checks::JWT_NOW, checks::JWT_NOW - 3, 0])));
    claims.insert("docs".into(), json!({"notes/*": "write", "a": "read", "*": pick(rng, &["read", "write", "admin"])}));
    if rng.bool() {
        claims.insert("aud".into(), pick(rng, &[json!("yserve"), json!(["x", "yserve"]), json!("other")]));
    }
    if rng.bool() {
        claims.insert("iss".into(), json!(pick(rng, &["idp", "other"])));
    }
    Value::Object(claims)
}

fn signed_token(header: &str, claims: &str) -> String {
    use jsonwebtoken::{crypto, Algorithm, EncodingKey};
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let message = format!("{}.{}", b64.encode(header), b64.encode(claims));
    let key = EncodingKey::from_secret(checks::JWT_SECRET.as_bytes());
    format!("{message}.{}", crypto::sign(message.as_bytes(), &key, Algorithm::HS256).unwrap())
}

/// A name as a client might put it in a URL: plain, percent-encoded or half-broken.
fn name_segment(rng: &mut Rng) -> String {
    let name = match rng.u8(..6) {
        0 => "é".repeat(pick(rng, &[255, 256, 257])),
        1 => "x".repeat(pick(rng, &[511, 512, 513])),
        _ => random_text(rng),
    };
    match rng.u8(..4) {
        0 => name,
        1 => percent_encoding::utf8_percent_encode(&name, percent_encoding::NON_ALPHANUMERIC).to_string(),
        2 => format!("{name}{}", pick(rng, &["%", "%4", "%FF", "%C3", "%00", "%7f", "%2F", "%20"])),
        _ => name.replace('/', "%2F").replace(' ', "%20"),
    }
}

fn rest_path(rng: &mut Rng) -> String {
    let n = name_segment(rng).replace('/', "%2F");
    let k = name_segment(rng).replace('/', "%2F");
    let path = match rng.u8(..12) {
        0 => "docs".into(),
        1 => "stats".into(),
        2 => "events".into(),
        3 => format!("docs/{n}"),
        4 => format!("docs/{n}/update"),
        5 => format!("docs/{n}/{}", pick(rng, &["json", "history", "presence", "events", "locks", "nope"])),
        6 => format!("docs/{n}/locks/{k}"),
        7 => format!("docs/{n}/texts/{k}"),
        8 => format!("docs/{n}/texts/{k}/ops"),
        9 => format!("docs/{n}/texts/{k}/ops/extra"),
        10 => format!("docs//{n}"),
        _ => format!("docs/{n}/update/"),
    };
    if rng.u8(..8) == 0 {
        format!("{path}/")
    } else {
        path
    }
}

fn sv_base64(rng: &mut Rng) -> String {
    let bytes = state_vector(rng).encode_v1();
    match rng.u8(..4) {
        0 => base64::engine::general_purpose::URL_SAFE.encode(bytes),
        1 => base64::engine::general_purpose::STANDARD_NO_PAD.encode(bytes),
        2 => format!("{}=", base64::engine::general_purpose::STANDARD.encode(bytes)),
        _ => base64::engine::general_purpose::STANDARD.encode(bytes),
    }
}

fn submit_body(rng: &mut Rng) -> Value {
    json!({"v": pick(rng, &[json!(0), json!(3), Value::Null]), "src": pick(rng, &["ab12", "yjs", ""]), "seq": 1, "op": delta_json(rng)})
}

// ---------------------------------------------------------------------------------------
// Byte mutations, as a fuzzer's simplest ones.

fn mutate_bytes(rng: &mut Rng, bytes: &mut Vec<u8>, corpus: &[Vec<u8>]) {
    let interesting = [0u8, 1, 2, 0x7f, 0x80, 0xff, b'"', b'.', b'%', b'{', b'['];
    if bytes.is_empty() {
        bytes.push(pick(rng, &interesting));
        return;
    }
    let i = rng.usize(..bytes.len());
    match rng.u8(..8) {
        0 => bytes[i] ^= 1 << rng.u8(..8),
        1 => bytes[i] = pick(rng, &interesting),
        2 => bytes.insert(i, pick(rng, &interesting)),
        3 => {
            bytes.remove(i);
        }
        4 => bytes.truncate(i),
        5 => {
            let end = rng.usize(i..=bytes.len());
            let chunk = bytes[i..end].to_vec();
            bytes.splice(i..i, chunk);
        }
        6 => {
            // A large varint: a length or count far past the input.
            bytes.splice(i..i, [0xff, 0xff, 0xff, 0xff, 0x0f]);
        }
        _ => {
            if let Some(other) = (!corpus.is_empty()).then(|| &corpus[rng.usize(..corpus.len())]) {
                let from = rng.usize(..=other.len());
                bytes.splice(i.., other[from..].iter().copied());
            }
        }
    }
}
