//! The bridge between Quill deltas and a root `Y.Text`: reading a text as a delta, checking
//! that an op fits the text *before* any yrs call sees it, applying it, and turning a text
//! event back into a delta. Called only by the document actor, inside its transactions.
//!
//! Why the checks come first: yrs text calls trust their input. Some append silently when a
//! position is past the end, others panic after a partial edit (leaving the document
//! half-changed), and a boundary inside a surrogate pair cuts a character in two. So an op
//! reaches `apply` only after `check_applies` proved that it spans at most the text and that
//! none of its boundaries splits a pair.

use std::collections::HashMap;
use std::sync::Arc;

use yrs::types::text::{Diff, YChange};
use yrs::types::Attrs;
use yrs::{Any, In, Map, MapRef, Out, ReadTxn, Text, TextRef, TransactionMut};

use crate::ot::delta::{utf16_len, Attributes, Component, Delta, Insert};
use crate::ot::error::OtError;

/// Checks that root `name` can be edited as text: absent (it is created on first write), or
/// a text. The server never declares root types, so a root it has only received updates for
/// is "undefined" in yrs; its content tells: map entries mean a `Y.Map`, elements that text
/// diffing does not count mean a `Y.Array`, shared types mean XML or embedded types.
pub fn check_root<T: ReadTxn>(txn: &T, name: &str) -> Result<(), OtError> {
    let wrong = |found| Err(OtError::WrongRootType { root: name.to_string(), found });
    let Some((_, root)) = txn.root_refs().find(|(n, _)| *n == name) else {
        return Ok(());
    };
    let text = match root {
        Out::YText(t) => t,
        Out::UndefinedRef(branch) => {
            if MapRef::from(branch).len(txn) > 0 {
                return wrong("Y.Map");
            }
            TextRef::from(branch)
        }
        Out::YMap(_) => return wrong("Y.Map"),
        Out::YArray(_) => return wrong("Y.Array"),
        Out::YXmlFragment(_) | Out::YXmlElement(_) | Out::YXmlText(_) => return wrong("Y.XmlFragment"),
        _ => return wrong("shared type of another kind"),
    };
    let mut counted = 0u64;
    for chunk in text.diff(txn, YChange::identity) {
        match &chunk.insert {
            Out::Any(Any::String(s)) => counted += utf16_len(s),
            Out::Any(Any::Map(_)) => counted += 1,
            Out::Any(_) => return wrong("Y.Array"),
            Out::YXmlElement(_) | Out::YXmlText(_) | Out::YXmlFragment(_) => return wrong("Y.XmlFragment"),
            _ => return wrong("Y.Text with embedded shared types"),
        }
    }
    if counted != u64::from(text.len(txn)) {
        return wrong("Y.Array");
    }
    Ok(())
}

/// The text's current content as a document delta (inserts only).
pub fn read<T: ReadTxn>(txn: &T, text: &TextRef) -> Delta {
    let mut doc = Delta::new();
    for Diff { insert, attributes, .. } in text.diff(txn, YChange::identity) {
        let attrs = attributes.map(|a| attrs_to_json(&a)).filter(|a| !a.is_empty());
        push_insert(&mut doc, insert, attrs);
    }
    doc
}

/// Checks that `op` applies to `doc` (the text's current content, from `read`): it spans no
/// more than the text, and no boundary (where a retain ends, a delete starts or ends, an
/// insert goes) falls inside a surrogate pair.
pub fn check_applies(doc: &Delta, op: &Delta) -> Result<(), OtError> {
    let text_len = doc.target_len();
    let base_len = op.base_len();
    if base_len > text_len {
        return Err(OtError::OpTooLong { base_len, text_len });
    }
    let mut boundaries = Vec::with_capacity(op.ops().len() * 2);
    let mut at = 0u64;
    for c in op.ops() {
        match c {
            Component::Retain { len, .. } => at += len,
            Component::Delete { len } => {
                boundaries.push(at);
                at += len;
            }
            Component::Insert { .. } => {}
        }
        boundaries.push(at);
    }
    // One pass over the text. Boundaries are non-decreasing; repeats (a retain's end is the
    // next delete's start) are checked once, so each lookup moves the unit iterator forward.
    boundaries.dedup();
    let mut next = boundaries.into_iter().filter(|b| *b > 0 && *b < text_len).peekable();
    let mut start = 0u64;
    for c in doc.ops() {
        let Component::Insert { insert, .. } = c else { continue };
        let (len, text) = match insert {
            Insert::Text(s) => (utf16_len(s), Some(s)),
            Insert::Embed(_) => (1, None),
        };
        let end = start + len;
        if let Some(s) = text {
            let mut units = s.encode_utf16().enumerate();
            while let Some(&b) = next.peek() {
                if b >= end {
                    break;
                }
                next.next();
                if b <= start {
                    continue;
                }
                // Inside this chunk: does the unit just before the boundary open a pair?
                let before = (b - start - 1) as usize;
                let unit = units.find(|(i, _)| *i == before).map(|(_, u)| u);
                if unit.is_some_and(|u| (0xD800..0xDC00).contains(&u)) {
                    return Err(OtError::SurrogateSplit { at: b });
                }
            }
        } else {
            while next.peek().is_some_and(|b| *b < end) {
                next.next();
            }
        }
        start = end;
    }
    Ok(())
}

/// Applies an op that passed `check_applies` against this text's current content.
pub fn apply(txn: &mut TransactionMut, text: &TextRef, op: &Delta) {
    let mut yops: Vec<yrs::types::Delta<In>> = Vec::with_capacity(op.ops().len());
    for c in op.ops() {
        yops.push(match c {
            Component::Insert { insert, attributes } => {
                let value = match insert {
                    Insert::Text(s) => Any::String(s.as_str().into()),
                    Insert::Embed(map) => json_to_any(&serde_json::Value::Object(map.clone())),
                };
                // In an insert, `null` means "not set" (quill drops it when composing); yrs
                // would store it as a formatting mark, so leave it out.
                let attrs = attributes.as_ref().map(|a| json_to_attrs(a, false)).filter(|a| !a.is_empty());
                yrs::types::Delta::Inserted(In::Any(value), attrs.map(Box::new))
            }
            Component::Retain { len, attributes } => {
                let attrs = attributes.as_ref().map(|a| json_to_attrs(a, true)).filter(|a| !a.is_empty());
                yrs::types::Delta::Retain(to_u32(*len), attrs.map(Box::new))
            }
            Component::Delete { len } => yrs::types::Delta::Deleted(to_u32(*len)),
        });
    }
    text.apply_delta(txn, yops);
}

/// A text event's delta (UTF-16 units, as the document counts) as a Quill delta.
pub fn from_event(delta: &[yrs::types::Delta<Out>]) -> Delta {
    let mut op = Delta::new();
    for d in delta {
        match d {
            yrs::types::Delta::Inserted(value, attrs) => {
                let attrs = attrs.as_ref().map(|a| attrs_to_json(a)).filter(|a| !a.is_empty());
                push_insert(&mut op, value.clone(), attrs);
            }
            yrs::types::Delta::Deleted(n) => {
                op.delete(u64::from(*n));
            }
            yrs::types::Delta::Retain(n, attrs) => {
                let attrs = attrs.as_ref().map(|a| attrs_to_json(a)).filter(|a| !a.is_empty());
                op.retain(u64::from(*n), attrs);
            }
        }
    }
    op.chop()
}

/// Text and map embeds map one to one; anything else a Yjs client put in the text (a number,
/// a nested shared type) becomes an embed naming it, still one unit long as in Yjs.
fn push_insert(delta: &mut Delta, value: Out, attrs: Option<Attributes>) {
    match value {
        Out::Any(Any::String(s)) => {
            delta.insert_text(&s, attrs);
        }
        Out::Any(any) => {
            let embed = match serde_json::to_value(&any) {
                Ok(serde_json::Value::Object(map)) => map,
                Ok(other) => serde_json::Map::from_iter([("value".to_string(), other)]),
                Err(_) => serde_json::Map::from_iter([("value".to_string(), serde_json::Value::Null)]),
            };
            delta.insert_embed(embed, attrs);
        }
        other => {
            let kind = match other {
                Out::YText(_) => "Y.Text",
                Out::YArray(_) => "Y.Array",
                Out::YMap(_) => "Y.Map",
                _ => "Y.XmlElement",
            };
            let embed = serde_json::Map::from_iter([("ytype".to_string(), serde_json::Value::from(kind))]);
            delta.insert_embed(embed, attrs);
        }
    }
}

fn attrs_to_json(attrs: &Attrs) -> Attributes {
    attrs.iter().map(|(k, v)| (k.to_string(), serde_json::to_value(v).unwrap_or(serde_json::Value::Null))).collect()
}

fn json_to_attrs(attrs: &Attributes, keep_null: bool) -> Attrs {
    let mut out: Attrs = HashMap::with_capacity(attrs.len());
    for (k, v) in attrs {
        if v.is_null() && !keep_null {
            continue;
        }
        out.insert(Arc::from(k.as_str()), json_to_any(v));
    }
    out
}

fn json_to_any(v: &serde_json::Value) -> Any {
    serde_json::from_value(v.clone()).unwrap_or(Any::Null)
}

/// Lengths were bounded by `DeltaLimits` when the op was parsed, far below `u32::MAX`.
fn to_u32(n: u64) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use serde_json::{json, Value};
    use yrs::updates::decoder::Decode;
    use yrs::{
        Array, ArrayPrelim, Doc, MapPrelim, Observable, OffsetKind, Options, StateVector, Transact, Update,
        XmlElementPrelim, XmlFragment, XmlTextPrelim,
    };

    use super::*;
    use crate::ot::delta::DeltaLimits;

    fn utf16_doc() -> Doc {
        Doc::with_options(Options { offset_kind: OffsetKind::Utf16, ..Options::default() })
    }

    /// The document as the server holds it: `build` runs on a client's doc, and the server
    /// only ever receives the encoded state, so every root is "undefined" on its side.
    fn received(build: impl FnOnce(&Doc)) -> Doc {
        let client = utf16_doc();
        build(&client);
        let update = client.transact().encode_state_as_update_v1(&StateVector::default());
        let server = utf16_doc();
        server.transact_mut().apply_update(Update::decode_v1(&update).unwrap()).unwrap();
        server
    }

    fn root_of(build: impl FnOnce(&Doc)) -> Result<(), OtError> {
        check_root(&received(build).transact(), "m")
    }

    /// The `found` of a `WrongRootType`, or a panic naming what was returned instead.
    fn found(result: Result<(), OtError>) -> &'static str {
        match result {
            Err(OtError::WrongRootType { root, found }) => {
                assert_eq!(root, "m");
                found
            }
            other => panic!("expected WrongRootType, got {other:?}"),
        }
    }

    fn delta(v: Value) -> Delta {
        let limits = DeltaLimits { components_max: 1000, insert_units_max: 1 << 20, len_max: 1 << 31 };
        Delta::from_json(&v, &limits).unwrap_or_else(|e| panic!("{v}: {e}"))
    }

    fn attrs(v: Value) -> Attrs {
        v.as_object().unwrap().iter().map(|(k, v)| (Arc::from(k.as_str()), json_to_any(v))).collect()
    }

    #[test]
    fn an_absent_root_can_be_edited_as_text() {
        assert_eq!(root_of(|_| {}), Ok(()));
        // Other roots do not matter.
        assert_eq!(
            root_of(|d| {
                d.get_or_insert_map("other").insert(&mut d.transact_mut(), "k", 1);
            }),
            Ok(())
        );
    }

    #[test]
    fn a_received_text_root_with_formatting_and_map_embeds_is_a_text() {
        let result = root_of(|d| {
            let t = d.get_or_insert_text("m");
            let mut txn = d.transact_mut();
            t.insert(&mut txn, 0, "a😀b");
            t.insert_with_attributes(&mut txn, 4, "bold", attrs(json!({"bold": true})));
            let image = Any::from(HashMap::from([("image".to_string(), Any::from("x.png"))]));
            t.insert_embed(&mut txn, 1, image);
            t.format(&mut txn, 0, 3, attrs(json!({"italic": true})));
        });
        assert_eq!(result, Ok(()));
    }

    #[test]
    fn a_text_root_the_server_declared_itself_is_a_text() {
        let doc = received(|d| d.get_or_insert_text("m").insert(&mut d.transact_mut(), 0, "hi"));
        doc.get_or_insert_text("m");
        assert_eq!(check_root(&doc.transact(), "m"), Ok(()));
    }

    #[test]
    fn a_map_root_is_refused() {
        assert_eq!(
            found(root_of(|d| {
                d.get_or_insert_map("m").insert(&mut d.transact_mut(), "k", "v");
            })),
            "Y.Map"
        );
        // Declared as a map on this side too.
        let doc = received(|d| {
            d.get_or_insert_map("m").insert(&mut d.transact_mut(), "k", "v");
        });
        doc.get_or_insert_map("m");
        assert_eq!(found(check_root(&doc.transact(), "m")), "Y.Map");
    }

    #[test]
    fn array_roots_are_refused_whatever_they_hold() {
        for (what, values) in [
            ("numbers", vec![Any::from(1), Any::from(2)]),
            ("strings", vec![Any::from("abc")]),
            ("a map value", vec![Any::from(HashMap::from([("k".to_string(), Any::from(1))]))]),
            ("binary", vec![Any::from(vec![1u8, 2, 3])]),
            ("null", vec![Any::Null]),
        ] {
            let result = root_of(|d| {
                let a = d.get_or_insert_array("m");
                let mut txn = d.transact_mut();
                for v in values {
                    a.push_back(&mut txn, v);
                }
            });
            assert_eq!(found(result), "Y.Array", "array of {what}");
        }
        // Only shared types inside: indistinguishable from a text embedding them, refused all the same.
        let result = root_of(|d| {
            d.get_or_insert_array("m").push_back(&mut d.transact_mut(), MapPrelim::default());
        });
        assert!(matches!(result, Err(OtError::WrongRootType { .. })), "{result:?}");
        let result = root_of(|d| {
            let a = d.get_or_insert_array("m");
            let mut txn = d.transact_mut();
            a.push_back(&mut txn, 1);
            a.push_back(&mut txn, ArrayPrelim::default());
        });
        assert!(matches!(result, Err(OtError::WrongRootType { .. })), "{result:?}");
    }

    #[test]
    fn xml_roots_are_refused() {
        let element = root_of(|d| {
            d.get_or_insert_xml_fragment("m").push_back(&mut d.transact_mut(), XmlElementPrelim::empty("p"));
        });
        assert_eq!(found(element), "Y.XmlFragment");
        let text = root_of(|d| {
            d.get_or_insert_xml_fragment("m").push_back(&mut d.transact_mut(), XmlTextPrelim::new("hello"));
        });
        assert_eq!(found(text), "Y.XmlFragment");
    }

    #[test]
    fn a_text_embedding_a_shared_type_is_refused() {
        let result = root_of(|d| {
            let t = d.get_or_insert_text("m");
            let mut txn = d.transact_mut();
            t.insert(&mut txn, 0, "ab");
            t.insert_embed(&mut txn, 1, MapPrelim::default());
        });
        assert_eq!(found(result), "Y.Text with embedded shared types");
    }

    #[test]
    fn a_root_whose_content_is_all_deleted_can_be_edited_as_text() {
        let result = root_of(|d| {
            let m = d.get_or_insert_map("m");
            m.insert(&mut d.transact_mut(), "k", 1);
            m.remove(&mut d.transact_mut(), "k");
        });
        assert_eq!(result, Ok(()));
    }

    #[test]
    fn ops_longer_than_the_text_are_refused() {
        let doc = delta(json!([{"insert": "hel"}, {"insert": "lo", "attributes": {"bold": true}}]));
        for (op, base_len) in [
            (json!([{"retain": 6}]), 6),
            (json!([{"retain": 5}, {"delete": 1}]), 6),
            (json!([{"delete": 6}]), 6),
            (json!([{"retain": 2}, {"delete": 4}, {"insert": "x"}]), 6),
            (json!([{"retain": 6, "attributes": {"bold": null}}]), 6),
            (json!([{"retain": 100}, {"insert": "x"}]), 100),
        ] {
            assert_eq!(
                check_applies(&doc, &delta(op.clone())),
                Err(OtError::OpTooLong { base_len, text_len: 5 }),
                "{op}"
            );
        }
        for op in [
            json!([{"retain": 5}, {"insert": "x"}]),
            json!([{"delete": 5}]),
            json!([{"insert": "x"}]),
            json!([{"retain": 5, "attributes": {"bold": null}}]),
            json!([]),
        ] {
            assert_eq!(check_applies(&doc, &delta(op.clone())), Ok(()), "{op}");
        }
        // Anything but inserts is too long for an empty text.
        assert_eq!(check_applies(&Delta::new(), &delta(json!([{"insert": "x"}]))), Ok(()));
        assert!(check_applies(&Delta::new(), &delta(json!([{"retain": 1}]))).is_err());
        // An embed counts one unit.
        let with_embed = delta(json!([{"insert": "a"}, {"insert": {"image": "x"}}]));
        assert_eq!(check_applies(&with_embed, &delta(json!([{"retain": 2}, {"insert": "x"}]))), Ok(()));
        assert!(check_applies(&with_embed, &delta(json!([{"retain": 3}]))).is_err());
    }

    #[test]
    fn boundaries_inside_a_surrogate_pair_are_refused() {
        let doc = delta(json!([{"insert": "a😀b"}]));
        for op in [
            json!([{"retain": 2}, {"insert": "x"}]),
            json!([{"retain": 2}, {"delete": 1}]),
            json!([{"retain": 2}, {"delete": 2}]),
            json!([{"retain": 1}, {"delete": 1}]),
            json!([{"delete": 2}]),
            json!([{"retain": 2}, {"retain": 1, "attributes": {"bold": true}}]),
            json!([{"retain": 1}, {"retain": 1, "attributes": {"bold": true}}]),
        ] {
            assert_eq!(check_applies(&doc, &delta(op.clone())), Err(OtError::SurrogateSplit { at: 2 }), "{op}");
        }
        for op in [
            json!([{"retain": 1}, {"insert": "x"}]),
            json!([{"retain": 3}, {"insert": "x"}]),
            json!([{"retain": 1}, {"delete": 2}]),
            json!([{"retain": 1}, {"retain": 2, "attributes": {"bold": true}}]),
            json!([{"delete": 4}]),
        ] {
            assert_eq!(check_applies(&doc, &delta(op.clone())), Ok(()), "{op}");
        }
        // A pair at the very start and at the very end.
        let doc = delta(json!([{"insert": "😀"}]));
        assert_eq!(
            check_applies(&doc, &delta(json!([{"retain": 1}, {"insert": "x"}]))),
            Err(OtError::SurrogateSplit { at: 1 })
        );
        assert_eq!(check_applies(&doc, &delta(json!([{"retain": 2}, {"insert": "x"}]))), Ok(()));
    }

    /// "ab" | bold "😀😀" | italic "c" | an embed | "😀": pairs at 2-4, 4-6 and 8-10, so
    /// 3, 5 and 9 are inside one.
    fn chunked_doc() -> (Delta, [u64; 3]) {
        let doc = delta(json!([
            {"insert": "ab"},
            {"insert": "😀😀", "attributes": {"bold": true}},
            {"insert": "c", "attributes": {"italic": true}},
            {"insert": {"image": "x.png"}},
            {"insert": "😀"},
        ]));
        assert_eq!(doc.target_len(), 10);
        (doc, [3, 5, 9])
    }

    #[test]
    fn every_single_boundary_across_chunks_with_attributes_is_checked() {
        let (doc, inside) = chunked_doc();
        let mut wrong = Vec::new();
        for p in 0..=10u64 {
            let want = if inside.contains(&p) { Err(OtError::SurrogateSplit { at: p }) } else { Ok(()) };
            for op in [
                json!([{"retain": p}, {"insert": "x"}]),
                json!([{"retain": p}, {"retain": 10 - p, "attributes": {"u": true}}]),
            ] {
                let got = check_applies(&doc, &delta(op.clone()));
                if got != want {
                    wrong.push(format!("{op}: got {got:?}, want {want:?}"));
                }
            }
        }
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    }

    /// Every delete `[p, q)` of the chunked doc: refused iff p or q is inside a pair. Ops
    /// with several boundaries in one chunk, some of them repeated (a retain's end is also
    /// the delete's start), must check every one.
    #[test]
    fn every_boundary_of_a_multi_boundary_op_is_checked() {
        let (doc, inside) = chunked_doc();
        let mut wrong = Vec::new();
        for p in 0..10u64 {
            for q in p + 1..=10 {
                let want = [p, q]
                    .into_iter()
                    .find(|b| inside.contains(b))
                    .map_or(Ok(()), |at| Err(OtError::SurrogateSplit { at }));
                for op in [
                    json!([{"retain": p}, {"delete": q - p}]),
                    json!([{"retain": p}, {"insert": "x"}, {"retain": q - p}, {"insert": "y"}]),
                    json!([{"retain": p, "attributes": {"u": true}}, {"retain": q - p}, {"insert": "y"}]),
                ] {
                    let got = check_applies(&doc, &delta(op.clone()));
                    if got != want {
                        wrong.push(format!("{op}: got {got:?}, want {want:?}"));
                    }
                }
            }
        }
        assert!(wrong.is_empty(), "{} ops misjudged:\n{}", wrong.len(), wrong.join("\n"));
    }

    #[test]
    fn two_boundaries_inside_one_chunk_are_both_checked() {
        // One chunk, two pairs: 5 is inside the second.
        let doc = delta(json!([{"insert": "a😀b😀c"}]));
        let op = delta(json!([{"retain": 1}, {"insert": "x"}, {"retain": 4}, {"insert": "y"}]));
        assert_eq!(check_applies(&doc, &op), Err(OtError::SurrogateSplit { at: 5 }));
        let op = delta(json!([{"retain": 1}, {"delete": 2}, {"retain": 2}, {"insert": "y"}]));
        assert_eq!(check_applies(&doc, &op), Err(OtError::SurrogateSplit { at: 5 }));
    }

    /// A text with one observer that turns each event into a Quill delta, as the document
    /// actor does.
    fn observed_text() -> (Doc, TextRef, Arc<Mutex<Vec<Delta>>>) {
        let doc = utf16_doc();
        let text = doc.get_or_insert_text("t");
        let events = Arc::new(Mutex::new(Vec::new()));
        let sink = events.clone();
        text.observe("test", move |txn: &TransactionMut, e: &yrs::types::text::TextEvent| {
            sink.lock().unwrap().push(from_event(e.delta(txn)));
        });
        (doc, text, events)
    }

    /// A document delta with the `null`s Quill's compose keeps in inserts dropped: they mean
    /// "not set", which is how `read` shows them.
    fn without_nulls(doc: &Delta) -> Delta {
        let mut out = Delta::new();
        for c in doc.ops() {
            if let Component::Insert { insert, attributes } = c {
                let attributes = attributes
                    .as_ref()
                    .map(|a| a.iter().filter(|(_, v)| !v.is_null()).map(|(k, v)| (k.clone(), v.clone())).collect());
                out.push(Component::Insert { insert: insert.clone(), attributes });
            }
        }
        out
    }

    fn read_text(doc: &Doc, text: &TextRef) -> Delta {
        read(&doc.transact(), text)
    }

    #[test]
    fn applied_ops_and_their_events_compose_onto_the_text_as_read() {
        let (doc, text, events) = observed_text();
        let ops = [
            json!([{"insert": "hello", "attributes": {"bold": true}}, {"insert": " world"}]),
            json!([{"retain": 1}, {"retain": 3, "attributes": {"italic": true}}]),
            // `null` removes an attribute on a retain ...
            json!([{"retain": 2}, {"retain": 2, "attributes": {"bold": null}}]),
            // ... and means "not set" on an insert.
            json!([{"retain": 5}, {"insert": "!", "attributes": {"bold": null, "color": "red"}}]),
            // An insert without attributes inside bold text is plain, as in Quill.
            json!([{"retain": 1}, {"insert": "x"}]),
            json!([{"delete": 1}, {"retain": 2}, {"insert": {"image": "a.png"}, "attributes": {"width": 3}}]),
            json!([{"retain": 3}, {"retain": 1, "attributes": {"width": null, "alt": "pic"}}]),
            json!([{"retain": 4}, {"insert": "😀"}, {"delete": 2}]),
            json!([{"retain": 4}, {"delete": 2}, {"retain": 3, "attributes": {"bold": true, "italic": null}}]),
            json!([{"replace": 2, "insert": "XY"}]),
        ];
        for op in ops {
            let op = delta(op);
            let before = read_text(&doc, &text);
            check_applies(&before, &op).unwrap();
            {
                let mut txn = doc.transact_mut();
                apply(&mut txn, &text, &op);
            }
            let after = read_text(&doc, &text);
            assert_eq!(
                without_nulls(&before.compose(&op).unwrap()),
                after,
                "applying {:?} to {:?}",
                op.to_json(),
                before.to_json()
            );
            let event = events.lock().unwrap().drain(..).fold(Delta::new(), |acc, e| acc.compose(&e).unwrap());
            assert_eq!(before.compose(&event).unwrap(), after, "event {:?} of {:?}", event.to_json(), op.to_json());
        }
        let plain: String = read_text(&doc, &text)
            .ops()
            .iter()
            .filter_map(|c| match c {
                Component::Insert { insert: Insert::Text(s), .. } => Some(s.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(plain, "XYl! world");
    }

    #[test]
    fn yjs_edits_become_deltas_in_utf16_units_with_attributes_and_removals() {
        let (doc, text, events) = observed_text();
        let edit = |f: &dyn Fn(&mut TransactionMut)| {
            let before = read_text(&doc, &text);
            f(&mut doc.transact_mut());
            let after = read_text(&doc, &text);
            let got = std::mem::take(&mut *events.lock().unwrap());
            assert_eq!(got.len(), 1, "one event per transaction");
            assert_eq!(before.compose(&got[0]).unwrap(), after, "event {:?}", got[0].to_json());
            got.into_iter().next().unwrap().to_json()
        };
        assert_eq!(edit(&|txn| text.insert(txn, 0, "a😀b")), json!([{"insert": "a😀b"}]));
        assert_eq!(
            edit(&|txn| text.format(txn, 1, 3, attrs(json!({"bold": true})))),
            json!([{"retain": 1}, {"retain": 3, "attributes": {"bold": true}}])
        );
        // Typing inside bold text inherits bold in Yjs; the delta says so.
        assert_eq!(
            edit(&|txn| text.insert(txn, 3, "z")),
            json!([{"retain": 3}, {"insert": "z", "attributes": {"bold": true}}])
        );
        assert_eq!(
            edit(&|txn| text.format(txn, 3, 2, attrs(json!({"bold": null})))),
            json!([{"retain": 3}, {"retain": 2, "attributes": {"bold": null}}])
        );
        assert_eq!(edit(&|txn| text.remove_range(txn, 1, 2)), json!([{"retain": 1}, {"delete": 2}]));
        let image = Any::from(HashMap::from([("image".to_string(), Any::from("y.png"))]));
        assert_eq!(
            edit(&|txn| {
                text.insert_embed_with_attributes(txn, 0, image.clone(), attrs(json!({"width": 2})));
            }),
            json!([{"insert": {"image": "y.png"}, "attributes": {"width": 2}}])
        );
        assert_eq!(
            edit(&|txn| text.insert_with_attributes(txn, 2, "😀", attrs(json!({"italic": true, "bold": null})))),
            json!([{"retain": 2}, {"insert": "😀", "attributes": {"italic": true}}])
        );
        assert_eq!(edit(&|txn| text.remove_range(txn, 2, 2)), json!([{"retain": 2}, {"delete": 2}]));
    }

    #[test]
    fn deltas_from_one_doc_applied_to_another_give_the_same_text() {
        let (a, ta, events) = observed_text();
        let b = utf16_doc();
        let tb = b.get_or_insert_text("t");
        for f in [
            &(|t: &TextRef, txn: &mut TransactionMut| t.insert(txn, 0, "one 😀 two"))
                as &dyn Fn(&TextRef, &mut TransactionMut),
            &|t, txn| t.format(txn, 4, 2, attrs(json!({"bold": true, "color": "#f00"}))),
            &|t, txn| t.insert_with_attributes(txn, 0, ">", attrs(json!({"code": true}))),
            &|t, txn| t.format(txn, 5, 2, attrs(json!({"color": null}))),
            &|t, txn| t.remove_range(txn, 1, 4),
        ] {
            f(&ta, &mut a.transact_mut());
            for op in events.lock().unwrap().drain(..) {
                let current = read_text(&b, &tb);
                check_applies(&current, &op).unwrap();
                apply(&mut b.transact_mut(), &tb, &op);
            }
            assert_eq!(read_text(&b, &tb), read_text(&a, &ta));
        }
    }
}
