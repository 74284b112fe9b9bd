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
    // One pass over the text: boundaries are non-decreasing.
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
