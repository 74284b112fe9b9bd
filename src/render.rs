//! A document's roots rendered as JSON, best-effort, for people and scripts: `yserve export
//! --format json` and the REST `/json` endpoint. Pure: reads a `yrs::Doc`, does no IO, and
//! never writes to the document (so it never declares a root's type).
//!
//! The server never declares root types, so after applying updates every root is "undefined"
//! in yrs: the update format does not say whether a root is a `Y.Text`, `Y.Array`, `Y.Map` or
//! `Y.XmlFragment`. Only its content tells, and these are the rules (nested shared types do
//! carry their type and render by it):
//!
//! - **Map entries** (keys) → an object of the entries, as `Y.Map.toJSON()`. A root that also
//!   has list content (only an XML element looks like that) renders its entries only.
//! - **List content with text** (string chunks, with or without formatting) → a string: the
//!   plain text, as `Y.Text.toJSON()` gives it. Formatting and embeds are left out, and so is
//!   any non-text element in the same list (Yjs never mixes them in one type).
//! - **List content of XML elements and XML texts only** → the XML string, as
//!   `Y.XmlFragment.toString()` (yrs's `get_string`).
//! - **Any other list content** (values, binaries, embeds, nested shared types) → an array, one
//!   item per element, as `Y.Array.toJSON()`.
//! - **Nothing visible** (never written, or everything deleted) → `null`: the type cannot be
//!   known, and `null` claims none.
//!
//! Values: numbers that are whole and within ±2^53 print as integers (as JavaScript prints
//! them), `NaN` and infinities as `null` (as `JSON.stringify`), `undefined` as `null`, binaries
//! as arrays of byte values. Nested `Y.Text` → its plain string, `Y.Map` → object, `Y.Array` →
//! array, XML → its XML string, a subdocument → `{"guid": …}`. Shared types nested deeper than
//! `DEPTH_MAX` render as `null` rather than overflow the stack. Object keys come out sorted.

use serde_json::{Map as JsonMap, Value};
use yrs::branch::BranchPtr;
use yrs::types::text::YChange;
use yrs::{Any, Array, ArrayRef, Doc, GetString, Map, MapRef, Out, ReadTxn, Text, TextRef, Transact, XmlFragmentRef};

/// Deepest nesting of shared types and values rendered; deeper ones become `null`. Updates
/// are validated to 64 levels of `Any` nesting, but nested shared types are separate items,
/// so their depth is bounded only by the document's size.
pub const DEPTH_MAX: usize = 256;

/// Every root of `doc` as a JSON object keyed by root name.
pub fn doc_to_json(doc: &Doc) -> Value {
    let txn = doc.transact();
    let mut roots = JsonMap::new();
    for (name, root) in txn.root_refs() {
        roots.insert(name.to_string(), out_to_json(&txn, root, 0));
    }
    Value::Object(roots)
}

/// The plain text of every root that renders as text (the rules above), by root name.
pub fn text_roots(doc: &Doc) -> Vec<(String, String)> {
    let txn = doc.transact();
    let mut texts: Vec<(String, String)> = txn
        .root_refs()
        .filter_map(|(name, root)| match root {
            Out::YText(t) => Some((name.to_string(), t.get_string(&txn))),
            Out::UndefinedRef(branch)
                if MapRef::from(branch).len(&txn) == 0 && classify_list(&txn, branch) == ListKind::Text =>
            {
                Some((name.to_string(), TextRef::from(branch).get_string(&txn)))
            }
            _ => None,
        })
        .collect();
    texts.sort();
    texts
}

fn out_to_json<T: ReadTxn>(txn: &T, out: Out, depth: usize) -> Value {
    if depth > DEPTH_MAX {
        return Value::Null;
    }
    match out {
        Out::Any(any) => any_to_json(&any, depth),
        Out::YText(t) => Value::String(t.get_string(txn)),
        Out::YArray(a) => array_to_json(txn, &a, depth),
        Out::YMap(m) => map_to_json(txn, &m, depth),
        Out::YXmlElement(x) => Value::String(x.get_string(txn)),
        Out::YXmlFragment(x) => Value::String(x.get_string(txn)),
        Out::YXmlText(x) => Value::String(x.get_string(txn)),
        Out::YDoc(d) => serde_json::json!({ "guid": d.guid().to_string() }),
        Out::UndefinedRef(branch) => undefined_to_json(txn, branch, depth),
    }
}

/// What the list part of an undefined branch holds, judged from its visible content.
#[derive(Debug, PartialEq, Eq)]
enum ListKind {
    Empty,
    Text,
    Xml,
    Values,
}

fn classify_list<T: ReadTxn>(txn: &T, branch: BranchPtr) -> ListKind {
    let len = ArrayRef::from(branch).len(txn);
    if len == 0 {
        return ListKind::Empty;
    }
    // Text diffing yields string chunks, embeds and shared types, but skips plain values
    // (`Y.Array` content) and binaries; counting what it yields (strings in UTF-16 units, as
    // yrs counts the list) and comparing with the list's length tells whether any are there.
    let chunks = TextRef::from(branch).diff(txn, YChange::identity);
    let mut counted = 0u64;
    let mut text = false;
    let mut xml_only = true;
    for chunk in &chunks {
        match &chunk.insert {
            Out::Any(Any::String(s)) => {
                text = true;
                counted += s.encode_utf16().count() as u64;
            }
            Out::YXmlElement(_) | Out::YXmlText(_) => counted += 1,
            _ => {
                xml_only = false;
                counted += 1;
            }
        }
    }
    if text {
        ListKind::Text
    } else if xml_only && counted == u64::from(len) {
        ListKind::Xml
    } else {
        ListKind::Values
    }
}

fn undefined_to_json<T: ReadTxn>(txn: &T, branch: BranchPtr, depth: usize) -> Value {
    let map = MapRef::from(branch);
    if map.len(txn) > 0 {
        return map_to_json(txn, &map, depth);
    }
    match classify_list(txn, branch) {
        ListKind::Empty => Value::Null,
        ListKind::Text => Value::String(TextRef::from(branch).get_string(txn)),
        ListKind::Xml => Value::String(XmlFragmentRef::from(branch).get_string(txn)),
        ListKind::Values => array_to_json(txn, &ArrayRef::from(branch), depth),
    }
}

fn map_to_json<T: ReadTxn>(txn: &T, map: &MapRef, depth: usize) -> Value {
    Value::Object(map.iter(txn).map(|(k, v)| (k.to_string(), out_to_json(txn, v, depth + 1))).collect())
}

fn array_to_json<T: ReadTxn>(txn: &T, array: &ArrayRef, depth: usize) -> Value {
    Value::Array(array.iter(txn).map(|v| out_to_json(txn, v, depth + 1)).collect())
}

fn any_to_json(any: &Any, depth: usize) -> Value {
    if depth > DEPTH_MAX {
        return Value::Null;
    }
    match any {
        Any::Null | Any::Undefined => Value::Null,
        Any::Bool(b) => Value::Bool(*b),
        Any::Number(n) => number_to_json(*n),
        Any::String(s) => Value::String(s.to_string()),
        Any::Buffer(b) => Value::Array(b.iter().map(|byte| Value::from(*byte)).collect()),
        Any::Array(items) => Value::Array(items.iter().map(|a| any_to_json(a, depth + 1)).collect()),
        Any::Map(entries) => {
            Value::Object(entries.iter().map(|(k, v)| (k.clone(), any_to_json(v, depth + 1))).collect())
        }
    }
}

fn number_to_json(n: yrs::any::Number) -> Value {
    /// 2^53: beyond it, integers are not exact in JavaScript either.
    const SAFE: f64 = 9_007_199_254_740_992.0;
    match n {
        yrs::any::Number::Int(i) => Value::from(i),
        yrs::any::Number::Float(f) if f.fract() == 0.0 && f.abs() <= SAFE => Value::from(f as i64),
        yrs::any::Number::Float(f) => serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use yrs::types::xml::XmlElementPrelim;
    use yrs::updates::decoder::Decode;
    use yrs::{any, ArrayPrelim, MapPrelim, StateVector, TextPrelim, Update, XmlFragment, XmlTextPrelim};

    /// What the server has: a fresh doc that only applied the update (every root undefined).
    fn as_server_sees(doc: &Doc) -> Doc {
        let update = doc.transact().encode_state_as_update_v1(&StateVector::default());
        let server = Doc::new();
        server.transact_mut().apply_update(Update::decode_v1(&update).unwrap()).unwrap();
        server
    }

    #[test]
    fn a_text_root_renders_as_its_plain_string_without_formatting_or_embeds() {
        let doc = Doc::new();
        let text = doc.get_or_insert_text("t");
        {
            let mut txn = doc.transact_mut();
            text.insert(&mut txn, 0, "héllo 👋 world");
            text.format(&mut txn, 0, 5, [("bold".into(), Any::Bool(true))].into_iter().collect());
            text.insert_embed(&mut txn, 5, any!({"image": "x.png"}));
        }
        let server = as_server_sees(&doc);
        assert_eq!(doc_to_json(&server), json!({"t": "héllo 👋 world"}));
        assert_eq!(text_roots(&server), vec![("t".to_string(), "héllo 👋 world".to_string())]);
    }

    #[test]
    fn a_map_root_renders_as_an_object_with_nested_types() {
        let doc = Doc::new();
        let map = doc.get_or_insert_map("m");
        {
            let mut txn = doc.transact_mut();
            map.insert(&mut txn, "n", 3.0);
            map.insert(&mut txn, "f", 2.5);
            map.insert(&mut txn, "s", "x");
            map.insert(&mut txn, "null", Any::Null);
            map.insert(&mut txn, "list", any!([1, "a", {"k": true}]));
            map.insert(&mut txn, "text", TextPrelim::new("inner"));
            map.insert(&mut txn, "arr", ArrayPrelim::from([1, 2]));
            map.insert(&mut txn, "map", MapPrelim::from([("a".to_string(), Any::from(1))]));
            map.insert(&mut txn, "bytes", Any::Buffer(vec![1u8, 2].into()));
        }
        let server = as_server_sees(&doc);
        assert_eq!(
            doc_to_json(&server),
            json!({"m": {
                "n": 3, "f": 2.5, "s": "x", "null": null, "list": [1, "a", {"k": true}],
                "text": "inner", "arr": [1, 2], "map": {"a": 1}, "bytes": [1, 2]
            }})
        );
        assert!(text_roots(&server).is_empty());
    }

    #[test]
    fn an_array_root_renders_as_an_array_even_of_strings() {
        let doc = Doc::new();
        let array = doc.get_or_insert_array("a");
        {
            let mut txn = doc.transact_mut();
            array.insert_range(&mut txn, 0, ["x", "y"]);
            array.push_back(&mut txn, 1);
            array.push_back(&mut txn, MapPrelim::from([("k".to_string(), Any::from("v"))]));
        }
        let server = as_server_sees(&doc);
        assert_eq!(doc_to_json(&server), json!({"a": ["x", "y", 1, {"k": "v"}]}));
        assert!(text_roots(&server).is_empty());
    }

    #[test]
    fn an_xml_fragment_root_renders_as_its_xml_string() {
        let doc = Doc::new();
        let xml = doc.get_or_insert_xml_fragment("x");
        {
            let mut txn = doc.transact_mut();
            let p = xml.insert(&mut txn, 0, XmlElementPrelim::empty("p"));
            p.insert(&mut txn, 0, XmlTextPrelim::new("hi"));
            xml.insert(&mut txn, 1, XmlTextPrelim::new("tail"));
        }
        let expected = xml.get_string(&doc.transact());
        assert_eq!(expected, "<p>hi</p>tail");
        assert_eq!(doc_to_json(&as_server_sees(&doc)), json!({ "x": expected }));
    }

    #[test]
    fn several_roots_render_side_by_side_and_empty_ones_as_null() {
        let doc = Doc::new();
        let text = doc.get_or_insert_text("t");
        let gone = doc.get_or_insert_text("gone");
        let map = doc.get_or_insert_map("m");
        {
            let mut txn = doc.transact_mut();
            text.insert(&mut txn, 0, "abc");
            gone.insert(&mut txn, 0, "zzz");
            gone.remove_range(&mut txn, 0, 3);
            map.insert(&mut txn, "k", "v");
        }
        assert_eq!(doc_to_json(&as_server_sees(&doc)), json!({"t": "abc", "gone": null, "m": {"k": "v"}}));
    }

    #[test]
    fn declared_roots_render_by_their_type() {
        let doc = Doc::new();
        let text = doc.get_or_insert_text("t");
        text.insert(&mut doc.transact_mut(), 0, "plain");
        assert_eq!(doc_to_json(&doc), json!({"t": "plain"}));
    }

    #[test]
    fn odd_numbers_render_as_javascript_would() {
        assert_eq!(number_to_json(yrs::any::Number::Float(f64::NAN)), Value::Null);
        assert_eq!(number_to_json(yrs::any::Number::Float(f64::INFINITY)), Value::Null);
        assert_eq!(number_to_json(yrs::any::Number::Float(-0.0)), json!(0));
        assert_eq!(number_to_json(yrs::any::Number::Float(1e300)), json!(1e300));
        assert_eq!(number_to_json(yrs::any::Number::Int(-7)), json!(-7));
    }

    #[test]
    fn nesting_beyond_the_depth_limit_renders_as_null_instead_of_recursing() {
        let doc = Doc::new();
        let root = doc.get_or_insert_map("m");
        {
            let mut txn = doc.transact_mut();
            let mut map = root.insert(&mut txn, "k", MapPrelim::default());
            for _ in 0..DEPTH_MAX + 10 {
                map = map.insert(&mut txn, "k", MapPrelim::default());
            }
        }
        let mut value = &doc_to_json(&as_server_sees(&doc))["m"];
        let mut depth = 0;
        while let Some(next) = value.get("k") {
            value = next;
            depth += 1;
        }
        assert_eq!(value, &Value::Null);
        assert!(depth > DEPTH_MAX && depth <= DEPTH_MAX + 2, "depth {depth}");
    }
}
