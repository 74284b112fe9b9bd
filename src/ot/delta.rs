//! The Quill Delta algebra of the ShareDB `rich-text` type: the `Delta` value and its canonical
//! form (`push`), validation of client JSON (`from_json`) and serialisation (`to_json`),
//! `compose`, `transform` and `transform_position`. Pure: no IO, no clock, no global state.
//!
//! The semantics are those of npm `quill-delta` 4.2.x as used by `rich-text` 4.1.0 (what the
//! ShareDB clients run); `tests/data/delta-oracle.json`, generated from that package by
//! `tests/interop/gen-delta-oracle.mjs`, pins them. Lengths and positions are in UTF-16 code
//! units (JavaScript string indexes); an embed has length 1.
//!
//! The one place where the port cannot follow JavaScript: quill happily cuts a string inside a
//! surrogate pair, leaving lone surrogates that a Rust `String` cannot hold. `compose` is the
//! only operation that cuts inserted text, and it refuses such a cut with
//! [`DeltaError::SurrogateSplit`]; `transform` never cuts text.

use serde_json::{Map, Value};

/// Formatting attributes of an insert or retain, e.g. `{"bold": true}`; `null` removes one.
pub type Attributes = Map<String, Value>;

/// 2^53: past it JavaScript numbers skip integers, so no JavaScript client means such a length
/// exactly (and sums of smaller ones stay far from u64 overflow).
const JS_LENGTH_MAX: u64 = 1 << 53;

#[derive(Clone, Debug, PartialEq)]
pub enum Insert {
    Text(String),
    /// An embed such as `{"image": "x.png"}`: length 1.
    Embed(Map<String, Value>),
}

#[derive(Clone, Debug, PartialEq)]
pub enum Component {
    Insert {
        insert: Insert,
        attributes: Option<Attributes>,
    },
    /// `len` in UTF-16 units, > 0.
    Retain {
        len: u64,
        attributes: Option<Attributes>,
    },
    /// `len` in UTF-16 units, > 0.
    Delete {
        len: u64,
    },
}

/// A rich-text operation or document (a document is a delta of inserts only). The components
/// are private so that they are always in quill's canonical form: everything goes through
/// [`Delta::push`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Delta {
    ops: Vec<Component>,
}

/// Bounds that [`Delta::from_json`] enforces on untrusted input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeltaLimits {
    /// Components in the JSON array, counted before normalisation.
    pub components_max: usize,
    /// Total UTF-16 units inserted by one operation (an embed counts 1).
    pub insert_units_max: u64,
    /// Bound on any retain or delete length and on the operation's base length.
    pub len_max: u64,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum DeltaError {
    #[error("not an operation: expected a JSON array of components or {{\"ops\": [...]}}")]
    NotAnOp,
    #[error("component {index}: {reason}")]
    BadComponent { index: usize, reason: &'static str },
    #[error("{count} components, at most {max} allowed")]
    TooManyComponents { count: usize, max: usize },
    #[error("inserts {units} UTF-16 units, at most {max} allowed")]
    InsertTooLarge { units: u64, max: u64 },
    /// A retain/delete length, or when each is fine their sum (the base length), over `len_max`.
    #[error("length {len} is over the limit {max}")]
    LengthTooLarge { len: u64, max: u64 },
    /// `at` is the UTF-16 offset, in the result of the first delta of a compose, of the cut.
    #[error("the operation cuts a surrogate pair at UTF-16 offset {at}")]
    SurrogateSplit { at: u64 },
    /// From [`Delta::compose_checked`]: the second delta reaches past the end of the first's result.
    #[error("the operation applies to {base_len} UTF-16 units but the document has only {target_len}")]
    ComposeLengthMismatch { base_len: u64, target_len: u64 },
}

/// Why `from_json` refused a component (the `reason` of [`DeltaError::BadComponent`]).
pub mod reason {
    pub const NOT_AN_OBJECT: &str = "component is not an object";
    pub const UNKNOWN_KEY: &str = "unknown key";
    pub const NO_KIND: &str = "none of insert, retain, delete";
    pub const SEVERAL_KINDS: &str = "more than one of insert, retain, delete, replace";
    pub const REPLACE_WITHOUT_INSERT: &str = "replace without an insert";
    pub const REPLACE_NOT_TEXT: &str = "replace with an insert that is not a string";
    pub const ATTRIBUTES_NOT_OBJECT: &str = "attributes is not an object";
    pub const ATTRIBUTES_ON_DELETE: &str = "attributes on a delete";
    pub const EMPTY_TEXT: &str = "insert of an empty string";
    pub const BAD_INSERT: &str = "insert is neither a string nor an object";
    pub const EMBED_RETAIN: &str = "retain of an object (embed retain) is unsupported";
    pub const LENGTH_NOT_NUMBER: &str = "length is not a number";
    pub const LENGTH_NEGATIVE: &str = "length is negative";
    pub const LENGTH_FRACTIONAL: &str = "length is not an integer";
    pub const LENGTH_OVER_2_53: &str = "length is over 2^53";
}

/// Length of `s` in UTF-16 code units, the unit of every Delta length.
pub fn utf16_len(s: &str) -> u64 {
    s.chars().map(|c| c.len_utf16() as u64).sum()
}

/// Splits at a UTF-16 offset; None when `at` is past the end or inside a surrogate pair.
pub fn split_utf16(s: &str, at: u64) -> Option<(&str, &str)> {
    let mut units = 0u64;
    for (i, c) in s.char_indices() {
        if units >= at {
            // Overshooting means the previous character was a pair straddling `at`.
            return (units == at).then(|| s.split_at(i));
        }
        units += c.len_utf16() as u64;
    }
    (units == at).then_some((s, ""))
}

fn component_len(c: &Component) -> u64 {
    match c {
        Component::Insert { insert: Insert::Text(s), .. } => utf16_len(s),
        Component::Insert { insert: Insert::Embed(_), .. } => 1,
        Component::Retain { len, .. } | Component::Delete { len } => *len,
    }
}

impl Delta {
    pub fn new() -> Self {
        Delta { ops: Vec::new() }
    }

    pub fn ops(&self) -> &[Component] {
        &self.ops
    }

    pub fn into_ops(self) -> Vec<Component> {
        self.ops
    }

    /// quill-delta's `push`: appends `c` keeping the canonical form. Adjacent deletes merge;
    /// adjacent text inserts or retains with equal attributes merge; an insert goes before an
    /// adjacent trailing delete (inserting before or after a delete at the same index is the
    /// same change, and quill picks "before"); zero lengths and empty strings are ignored, and
    /// an empty attribute map is no attributes.
    pub fn push(&mut self, c: Component) -> &mut Self {
        let Some(c) = normalized(c) else { return self };
        let mut index = self.ops.len();
        if let (Some(Component::Delete { len: last }), Component::Delete { len }) = (self.ops.last_mut(), &c) {
            *last = last.saturating_add(*len);
            return self;
        }
        if matches!(c, Component::Insert { .. }) && matches!(self.ops.last(), Some(Component::Delete { .. })) {
            index -= 1;
        }
        let c = match index.checked_sub(1).and_then(|i| self.ops.get_mut(i)) {
            Some(prev) => match merge_into(prev, c) {
                Some(c) => c,
                None => return self,
            },
            None => c,
        };
        self.ops.insert(index, c);
        self
    }

    pub fn insert_text(&mut self, s: &str, attributes: Option<Attributes>) -> &mut Self {
        self.push(Component::Insert { insert: Insert::Text(s.to_owned()), attributes })
    }

    pub fn insert_embed(&mut self, e: Map<String, Value>, attributes: Option<Attributes>) -> &mut Self {
        self.push(Component::Insert { insert: Insert::Embed(e), attributes })
    }

    pub fn retain(&mut self, len: u64, attributes: Option<Attributes>) -> &mut Self {
        self.push(Component::Retain { len, attributes })
    }

    pub fn delete(&mut self, len: u64) -> &mut Self {
        self.push(Component::Delete { len })
    }

    /// Drops a trailing retain without attributes: it changes nothing.
    pub fn chop(mut self) -> Self {
        if let Some(Component::Retain { attributes: None, .. }) = self.ops.last() {
            self.ops.pop();
        }
        self
    }

    /// No component, or only retains without attributes: applying it changes nothing.
    pub fn is_noop(&self) -> bool {
        self.ops.iter().all(|c| matches!(c, Component::Retain { attributes: None, .. }))
    }

    /// Retains + deletes: the least length of a document this delta applies to.
    pub fn base_len(&self) -> u64 {
        self.ops
            .iter()
            .filter(|c| !matches!(c, Component::Insert { .. }))
            .fold(0u64, |n, c| n.saturating_add(component_len(c)))
    }

    /// Retains + inserts: the length of the result (of the touched prefix, for an operation).
    pub fn target_len(&self) -> u64 {
        self.ops
            .iter()
            .filter(|c| !matches!(c, Component::Delete { .. }))
            .fold(0u64, |n, c| n.saturating_add(component_len(c)))
    }

    /// Parses and validates an operation from a client: a JSON array of quill components or a
    /// serialised quill Delta `{"ops": [...]}`. Strict (unknown keys, bad lengths and the
    /// newer embed-retain are refused) and bounded by `limits`; the result is canonical.
    pub fn from_json(v: &Value, limits: &DeltaLimits) -> Result<Delta, DeltaError> {
        let items = json_components(v)?;
        if items.len() > limits.components_max {
            return Err(DeltaError::TooManyComponents { count: items.len(), max: limits.components_max });
        }
        let mut delta = Delta::new();
        let (mut inserted, mut base) = (0u64, 0u64);
        for (index, item) in items.iter().enumerate() {
            for c in parse_component(index, item)? {
                match &c {
                    Component::Insert { insert, .. } => {
                        inserted = inserted.saturating_add(insert_len(insert));
                        if inserted > limits.insert_units_max {
                            return Err(DeltaError::InsertTooLarge { units: inserted, max: limits.insert_units_max });
                        }
                    }
                    Component::Retain { len, .. } | Component::Delete { len } => {
                        base = base.saturating_add(*len);
                        // Report the component when it alone is too long, else the sum.
                        if base > limits.len_max {
                            let len = if *len > limits.len_max { *len } else { base };
                            return Err(DeltaError::LengthTooLarge { len, max: limits.len_max });
                        }
                    }
                }
                delta.push(c);
            }
        }
        Ok(delta)
    }

    /// The JSON array of quill components, as quill-delta serialises `.ops`.
    pub fn to_json(&self) -> Value {
        Value::Array(self.ops.iter().map(component_to_json).collect())
    }

    /// quill's `this.compose(other)`: `other` applied after `self`. Like quill, an `other`
    /// longer than self's result is taken to retain past its end (see [`Delta::compose_checked`]).
    /// Fails only if `other` cuts one of self's text inserts inside a surrogate pair.
    pub fn compose(&self, other: &Delta) -> Result<Delta, DeltaError> {
        let mut mine = Cursor::new(&self.ops);
        let mut theirs = Cursor::new(&other.ops);
        let mut out = Delta::new();
        // Position in self's result, i.e. in the document `other` applies to.
        let mut at = 0u64;
        while mine.has_next() || theirs.has_next() {
            if theirs.peek_kind() == Kind::Insert {
                out.push_span(theirs.next_whole());
            } else if mine.peek_kind() == Kind::Delete {
                out.push_span(mine.next_whole());
            } else {
                let len = mine.peek_len().min(theirs.peek_len());
                let a = mine.next(len);
                let b = theirs.next(len);
                at = at.saturating_add(len);
                if matches!(a, Span::Split) {
                    return Err(DeltaError::SurrogateSplit { at });
                }
                if let Some(c) = compose_spans(a, b, len) {
                    out.push(c);
                }
            }
        }
        Ok(out.chop())
    }

    /// `compose`, refusing an `other` whose base length is over self's target length: applied
    /// to a document, quill would silently append retains to it.
    pub fn compose_checked(&self, other: &Delta) -> Result<Delta, DeltaError> {
        let (base_len, target_len) = (other.base_len(), self.target_len());
        if base_len > target_len {
            return Err(DeltaError::ComposeLengthMismatch { base_len, target_len });
        }
        self.compose(other)
    }

    /// quill's `this.transform(other, priority)`: `other` rewritten to apply after `self`.
    /// `priority` true means self happened first (its inserts at the same index go first and
    /// its attributes win). The ShareDB server's `type.transform(submitted, committed, 'left')`
    /// is `committed.transform(submitted, true)`.
    pub fn transform(&self, other: &Delta, priority: bool) -> Delta {
        let mut mine = Cursor::new(&self.ops);
        let mut theirs = Cursor::new(&other.ops);
        let mut out = Delta::new();
        while mine.has_next() || theirs.has_next() {
            if mine.peek_kind() == Kind::Insert && (priority || theirs.peek_kind() != Kind::Insert) {
                out.retain(mine.skip(), None);
            } else if theirs.peek_kind() == Kind::Insert {
                out.push_span(theirs.next_whole());
            } else {
                // Neither side is at an insert here, so no text is cut.
                let len = mine.peek_len().min(theirs.peek_len());
                let a = mine.next(len);
                let b = theirs.next(len);
                match (a, b) {
                    // Our delete makes their delete redundant or removes what they retain.
                    (Span::Delete { .. }, _) => {}
                    (_, Span::Delete { .. }) => {
                        out.delete(len);
                    }
                    (a, b) => {
                        out.retain(len, transform_attributes(a.attributes(), b.attributes(), priority));
                    }
                }
            }
        }
        out.chop()
    }

    fn push_span(&mut self, span: Span<'_>) {
        if let Some(c) = span.into_component() {
            self.push(c);
        }
    }

    /// quill's `transformPosition`: where `index` moves to once self is applied. With
    /// `priority`, an insert exactly at `index` does not push it.
    pub fn transform_position(&self, index: u64, priority: bool) -> u64 {
        let (mut index, mut offset) = (index, 0u64);
        for c in &self.ops {
            if offset > index {
                break;
            }
            let len = component_len(c);
            match c {
                Component::Delete { .. } => {
                    index -= len.min(index - offset);
                    continue;
                }
                Component::Insert { .. } if offset < index || !priority => index = index.saturating_add(len),
                _ => {}
            }
            offset = offset.saturating_add(len);
        }
        index
    }
}

/// Drops what quill's builders drop: zero lengths, empty strings, empty attribute maps.
fn normalized(c: Component) -> Option<Component> {
    let attrs = |a: Option<Attributes>| a.filter(|m| !m.is_empty());
    match c {
        Component::Insert { insert: Insert::Text(s), .. } if s.is_empty() => None,
        Component::Insert { insert, attributes } => Some(Component::Insert { insert, attributes: attrs(attributes) }),
        Component::Retain { len: 0, .. } | Component::Delete { len: 0 } => None,
        Component::Retain { len, attributes } => Some(Component::Retain { len, attributes: attrs(attributes) }),
        c @ Component::Delete { .. } => Some(c),
    }
}

/// Merges `c` into `prev` if quill would (text with text, retain with retain, equal
/// attributes); gives `c` back otherwise. Like quill, the merged op keeps `c`'s attributes.
fn merge_into(prev: &mut Component, c: Component) -> Option<Component> {
    match (prev, c) {
        (
            Component::Insert { insert: Insert::Text(s), attributes: pa },
            Component::Insert { insert: Insert::Text(t), attributes: ca },
        ) if attributes_equal(pa.as_ref(), ca.as_ref()) => {
            s.push_str(&t);
            *pa = ca;
            None
        }
        (Component::Retain { len: pl, attributes: pa }, Component::Retain { len, attributes: ca })
            if attributes_equal(pa.as_ref(), ca.as_ref()) =>
        {
            *pl = pl.saturating_add(len);
            *pa = ca;
            None
        }
        (_, c) => Some(c),
    }
}

/// lodash `isEqual` on attribute maps, which is what quill merges on.
fn attributes_equal(a: Option<&Attributes>, b: Option<&Attributes>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => maps_equal(a, b),
        _ => false,
    }
}

fn maps_equal(a: &Map<String, Value>, b: &Map<String, Value>) -> bool {
    a.len() == b.len() && a.iter().all(|(k, v)| b.get(k).is_some_and(|w| json_equal(v, w)))
}

/// JSON equality as JavaScript sees it: numbers are doubles, so `1` equals `1.0`.
fn json_equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        (Value::Array(x), Value::Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(v, w)| json_equal(v, w)),
        (Value::Object(x), Value::Object(y)) => maps_equal(x, y),
        _ => a == b,
    }
}

/// quill `AttributeMap.compose(a, b, keepNull)`: b over a. b's `null`s are removals: kept
/// when the result is a retain (they still have to remove something downstream), dropped
/// when it is an insert. A key that b does not mention keeps a's value, even a `null`.
fn compose_attributes(a: Option<&Attributes>, b: Option<&Attributes>, keep_null: bool) -> Option<Attributes> {
    let mut out: Attributes =
        b.into_iter().flatten().filter(|(_, v)| keep_null || !v.is_null()).map(clone_kv).collect();
    for (k, v) in a.into_iter().flatten() {
        if !b.is_some_and(|b| b.contains_key(k)) {
            out.insert(k.clone(), v.clone());
        }
    }
    (!out.is_empty()).then_some(out)
}

/// quill `AttributeMap.transform(a, b, priority)`: b's attributes rewritten to apply after
/// a's. Without priority b wins outright; with it, b keeps only the keys a does not set
/// (a `null` in a counts as set).
fn transform_attributes(a: Option<&Attributes>, b: Option<&Attributes>, priority: bool) -> Option<Attributes> {
    let Some(a) = a else { return b.cloned() };
    let b = b?;
    if !priority {
        return Some(b.clone());
    }
    let out: Attributes = b.iter().filter(|(k, _)| !a.contains_key(*k)).map(clone_kv).collect();
    (!out.is_empty()).then_some(out)
}

fn clone_kv((k, v): (&String, &Value)) -> (String, Value) {
    (k.clone(), v.clone())
}

/// One step of compose: `a` (a piece of self) under `b` (the same length of other, which is
/// not an insert: the caller handled those).
fn compose_spans(a: Span<'_>, b: Span<'_>, len: u64) -> Option<Component> {
    match b {
        Span::Retain { attributes: b_attrs, .. } => match a {
            Span::Retain { attributes, .. } => {
                Some(Component::Retain { len, attributes: compose_attributes(attributes, b_attrs, true) })
            }
            Span::Text { text, attributes } => Some(Component::Insert {
                insert: Insert::Text(text.to_owned()),
                attributes: compose_attributes(attributes, b_attrs, false),
            }),
            Span::Embed { embed, attributes } => Some(Component::Insert {
                insert: Insert::Embed(embed.clone()),
                attributes: compose_attributes(attributes, b_attrs, false),
            }),
            // Unreachable: the caller handled self's deletes and splits.
            Span::Delete { .. } | Span::Split => None,
        },
        // Deleting something self retains is a delete; deleting what self inserted cancels out.
        Span::Delete { .. } if matches!(a, Span::Retain { .. }) => Some(Component::Delete { len }),
        _ => None,
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Insert,
    Retain,
    Delete,
}

/// A piece of a component, borrowed from the delta being walked.
enum Span<'a> {
    Retain {
        len: u64,
        attributes: Option<&'a Attributes>,
    },
    Delete {
        len: u64,
    },
    Text {
        text: &'a str,
        attributes: Option<&'a Attributes>,
    },
    Embed {
        embed: &'a Map<String, Value>,
        attributes: Option<&'a Attributes>,
    },
    /// The requested length ends inside a surrogate pair of a text insert.
    Split,
}

impl Span<'_> {
    fn attributes(&self) -> Option<&Attributes> {
        match self {
            Span::Retain { attributes, .. } | Span::Text { attributes, .. } | Span::Embed { attributes, .. } => {
                *attributes
            }
            Span::Delete { .. } | Span::Split => None,
        }
    }

    /// The piece as an owned component; None for `Split`, which `next_whole` never yields.
    fn into_component(self) -> Option<Component> {
        Some(match self {
            Span::Retain { len, attributes } => Component::Retain { len, attributes: attributes.cloned() },
            Span::Delete { len } => Component::Delete { len },
            Span::Text { text, attributes } => {
                Component::Insert { insert: Insert::Text(text.to_owned()), attributes: attributes.cloned() }
            }
            Span::Embed { embed, attributes } => {
                Component::Insert { insert: Insert::Embed(embed.clone()), attributes: attributes.cloned() }
            }
            Span::Split => return None,
        })
    }
}

/// quill's `Op.iterator`: walks a delta in pieces of chosen lengths. Past the end it yields
/// retains of any length, which is how quill treats the rest of a document as retained.
struct Cursor<'a> {
    ops: &'a [Component],
    index: usize,
    /// Units of `ops[index]` already taken.
    offset: u64,
    /// Bytes of `ops[index]` already taken, when it is text.
    byte: usize,
    /// Units of `ops[index]`, computed once per component.
    len: u64,
}

impl<'a> Cursor<'a> {
    fn new(ops: &'a [Component]) -> Self {
        Cursor { ops, index: 0, offset: 0, byte: 0, len: ops.first().map_or(0, component_len) }
    }

    fn has_next(&self) -> bool {
        self.index < self.ops.len()
    }

    /// Units left in the current component; "infinity" past the end.
    fn peek_len(&self) -> u64 {
        if self.has_next() {
            self.len - self.offset
        } else {
            u64::MAX
        }
    }

    fn peek_kind(&self) -> Kind {
        match self.ops.get(self.index) {
            Some(Component::Insert { .. }) => Kind::Insert,
            Some(Component::Delete { .. }) => Kind::Delete,
            Some(Component::Retain { .. }) | None => Kind::Retain,
        }
    }

    fn advance(&mut self) {
        self.index += 1;
        self.offset = 0;
        self.byte = 0;
        self.len = self.ops.get(self.index).map_or(0, component_len);
    }

    /// Skips the rest of the current component, returning its length.
    fn skip(&mut self) -> u64 {
        let len = self.peek_len();
        if self.has_next() {
            self.advance();
        }
        len
    }

    fn next_whole(&mut self) -> Span<'a> {
        self.next(u64::MAX)
    }

    /// Takes up to `len` units of the current component. Yields `Split` (and does not move)
    /// if that would end inside a surrogate pair.
    fn next(&mut self, len: u64) -> Span<'a> {
        let Some(op) = self.ops.get(self.index) else { return Span::Retain { len, attributes: None } };
        let left = self.len - self.offset;
        let take = len.min(left);
        let span = match op {
            Component::Retain { attributes, .. } => Span::Retain { len: take, attributes: attributes.as_ref() },
            Component::Delete { .. } => Span::Delete { len: take },
            Component::Insert { insert: Insert::Embed(embed), attributes } => {
                Span::Embed { embed, attributes: attributes.as_ref() }
            }
            Component::Insert { insert: Insert::Text(s), attributes } => {
                let rest = s.get(self.byte..).unwrap_or_default();
                let head = if take == left { Some(rest) } else { split_utf16(rest, take).map(|(head, _)| head) };
                let Some(text) = head else { return Span::Split };
                self.byte += text.len();
                Span::Text { text, attributes: attributes.as_ref() }
            }
        };
        self.offset += take;
        if self.offset >= self.len {
            self.advance();
        }
        span
    }
}

fn insert_len(insert: &Insert) -> u64 {
    match insert {
        Insert::Text(s) => utf16_len(s),
        Insert::Embed(_) => 1,
    }
}

fn component_to_json(c: &Component) -> Value {
    let mut m = Map::new();
    let attributes = match c {
        Component::Insert { insert, attributes } => {
            let v = match insert {
                Insert::Text(s) => Value::String(s.clone()),
                Insert::Embed(e) => Value::Object(e.clone()),
            };
            m.insert("insert".into(), v);
            attributes
        }
        Component::Retain { len, attributes } => {
            m.insert("retain".into(), Value::from(*len));
            attributes
        }
        Component::Delete { len } => {
            m.insert("delete".into(), Value::from(*len));
            &None
        }
    };
    if let Some(a) = attributes {
        m.insert("attributes".into(), Value::Object(a.clone()));
    }
    Value::Object(m)
}

/// The component array of a JSON operation: `[...]` or `{"ops": [...]}` and nothing else.
fn json_components(v: &Value) -> Result<&[Value], DeltaError> {
    match v {
        Value::Array(items) => Ok(items),
        Value::Object(o) if o.len() == 1 => match o.get("ops") {
            Some(Value::Array(items)) => Ok(items),
            _ => Err(DeltaError::NotAnOp),
        },
        _ => Err(DeltaError::NotAnOp),
    }
}

/// One JSON component as one component, or two for the `replace` sugar (insert, then delete).
fn parse_component(index: usize, v: &Value) -> Result<Vec<Component>, DeltaError> {
    let bad = |reason| DeltaError::BadComponent { index, reason };
    let o = v.as_object().ok_or(bad(reason::NOT_AN_OBJECT))?;
    if o.keys().any(|k| !matches!(k.as_str(), "insert" | "retain" | "delete" | "replace" | "attributes")) {
        return Err(bad(reason::UNKNOWN_KEY));
    }
    let kinds = ["insert", "retain", "delete"].iter().filter(|k| o.contains_key(**k)).count();
    let replace = o.get("replace");
    if kinds > 1 || (replace.is_some() && (o.contains_key("retain") || o.contains_key("delete"))) {
        return Err(bad(reason::SEVERAL_KINDS));
    }
    let attributes = match o.get("attributes") {
        None => None,
        Some(Value::Object(m)) => (!m.is_empty()).then(|| m.clone()),
        Some(_) => return Err(bad(reason::ATTRIBUTES_NOT_OBJECT)),
    };
    if let Some(n) = replace {
        let len = parse_len(n).map_err(bad)?;
        return match o.get("insert") {
            None => Err(bad(reason::REPLACE_WITHOUT_INSERT)),
            Some(Value::String(s)) if !s.is_empty() => {
                Ok(vec![Component::Insert { insert: Insert::Text(s.clone()), attributes }, Component::Delete { len }])
            }
            Some(Value::String(_)) => Err(bad(reason::EMPTY_TEXT)),
            Some(_) => Err(bad(reason::REPLACE_NOT_TEXT)),
        };
    }
    if let Some(v) = o.get("insert") {
        let insert = parse_insert(v).map_err(bad)?;
        return Ok(vec![Component::Insert { insert, attributes }]);
    }
    if let Some(v) = o.get("retain") {
        if v.is_object() {
            return Err(bad(reason::EMBED_RETAIN));
        }
        return Ok(vec![Component::Retain { len: parse_len(v).map_err(bad)?, attributes }]);
    }
    if let Some(v) = o.get("delete") {
        if o.contains_key("attributes") {
            return Err(bad(reason::ATTRIBUTES_ON_DELETE));
        }
        return Ok(vec![Component::Delete { len: parse_len(v).map_err(bad)? }]);
    }
    Err(bad(reason::NO_KIND))
}

fn parse_insert(v: &Value) -> Result<Insert, &'static str> {
    match v {
        Value::String(s) if s.is_empty() => Err(reason::EMPTY_TEXT),
        Value::String(s) => Ok(Insert::Text(s.clone())),
        Value::Object(e) => Ok(Insert::Embed(e.clone())),
        _ => Err(reason::BAD_INSERT),
    }
}

/// A retain/delete/replace length: a positive integer up to 2^53. An integral float such as
/// `3.0` is accepted, as JavaScript cannot tell it from `3`.
fn parse_len(v: &Value) -> Result<u64, &'static str> {
    let Value::Number(n) = v else { return Err(reason::LENGTH_NOT_NUMBER) };
    let len = match (n.as_u64(), n.as_f64()) {
        (Some(u), _) => u,
        (None, Some(f)) if f < 0.0 => return Err(reason::LENGTH_NEGATIVE),
        (None, Some(f)) if f.fract() != 0.0 || !f.is_finite() => return Err(reason::LENGTH_FRACTIONAL),
        (None, Some(f)) if f > JS_LENGTH_MAX as f64 => return Err(reason::LENGTH_OVER_2_53),
        // In range and integral, so the conversion is exact.
        (None, Some(f)) => f as u64,
        (None, None) => return Err(reason::LENGTH_NOT_NUMBER),
    };
    // Zero is accepted and then dropped by `push`, as quill-delta's builder does: clients
    // write `{"retain": 0}` when an edit starts at the beginning.
    match len {
        n if n > JS_LENGTH_MAX => Err(reason::LENGTH_OVER_2_53),
        n => Ok(n),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const ORACLE: &str = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/delta-oracle.json"));

    fn limits() -> DeltaLimits {
        DeltaLimits { components_max: 1000, insert_units_max: 1 << 20, len_max: 1 << 40 }
    }

    fn parse(v: Value) -> Delta {
        Delta::from_json(&v, &limits()).unwrap_or_else(|e| panic!("{v} refused: {e}"))
    }

    fn attrs(v: Value) -> Option<Attributes> {
        v.as_object().cloned()
    }

    fn oracle(section: &str) -> Vec<Value> {
        let all: Value = serde_json::from_str(ORACLE).expect("oracle file is JSON");
        let cases = all[section].as_array().cloned().unwrap_or_default();
        assert!(!cases.is_empty(), "oracle has no {section} cases");
        cases
    }

    /// Runs `run` on every case of `section`, comparing with the case's `expected`, and fails
    /// listing the first few mismatches with their inputs.
    fn check_oracle(section: &str, min_cases: usize, run: impl Fn(&Value) -> Value) {
        let cases = oracle(section);
        assert!(cases.len() >= min_cases, "{section}: only {} cases", cases.len());
        let failures: Vec<String> = cases
            .iter()
            .enumerate()
            .filter_map(|(i, case)| {
                let got = run(case);
                (got != case["expected"]).then(|| format!("#{i}: {case}\n    got {got}"))
            })
            .collect();
        assert!(
            failures.is_empty(),
            "{section}: {} of {} cases differ from quill-delta, first ones:\n{}",
            failures.len(),
            cases.len(),
            failures.iter().take(5).cloned().collect::<Vec<_>>().join("\n")
        );
    }

    #[test]
    fn zero_length_retains_and_deletes_are_dropped_as_quill_does() {
        let limits = DeltaLimits { components_max: 10, insert_units_max: 100, len_max: 100 };
        let d = Delta::from_json(&json!([{"retain": 0}, {"insert": "a"}, {"delete": 0}]), &limits).unwrap();
        assert_eq!(d.to_json(), json!([{"insert": "a"}]));
        let d = Delta::from_json(&json!([{"replace": 0, "insert": "a"}]), &limits).unwrap();
        assert_eq!(d.to_json(), json!([{"insert": "a"}]));
    }

    #[test]
    fn transform_matches_quill_delta_on_oracle_cases() {
        check_oracle("transform", 2000, |case| {
            let (a, b) = (parse(case["a"].clone()), parse(case["b"].clone()));
            let priority = case["priority"].as_bool().expect("priority is a bool");
            a.transform(&b, priority).to_json()
        });
    }

    #[test]
    fn compose_matches_quill_delta_on_oracle_cases() {
        check_oracle("compose", 2000, |case| {
            let (a, b) = (parse(case["a"].clone()), parse(case["b"].clone()));
            match a.compose(&b) {
                Ok(d) => d.to_json(),
                Err(e) => json!(e.to_string()),
            }
        });
    }

    #[test]
    fn transform_position_matches_quill_delta_on_oracle_cases() {
        check_oracle("transform_position", 500, |case| {
            let d = parse(case["delta"].clone());
            let index = case["index"].as_u64().expect("index is a u64");
            json!(d.transform_position(index, case["priority"].as_bool().expect("priority is a bool")))
        });
    }

    #[test]
    fn oracle_inputs_are_already_canonical() {
        // quill built the oracle's operations with its own push, so our push must not change them.
        for case in oracle("compose").iter().chain(&oracle("transform")) {
            for side in ["a", "b"] {
                assert_eq!(parse(case[side].clone()).to_json(), case[side], "{case}");
            }
        }
    }

    #[test]
    fn push_merges_adjacent_text_inserts_with_equal_attributes() {
        let mut d = Delta::new();
        d.insert_text("ab", None).insert_text("c", None);
        d.insert_text("d", attrs(json!({"bold": true}))).insert_text("e", attrs(json!({"bold": true})));
        d.insert_text("f", attrs(json!({"bold": true, "color": "#f00"})));
        assert_eq!(
            d.to_json(),
            json!([{"insert": "abc"}, {"insert": "de", "attributes": {"bold": true}},
                   {"insert": "f", "attributes": {"bold": true, "color": "#f00"}}])
        );
    }

    #[test]
    fn push_never_merges_embeds() {
        let mut d = Delta::new();
        let img = json!({"image": "x.png"}).as_object().cloned().unwrap_or_default();
        d.insert_embed(img.clone(), None).insert_embed(img, None).insert_text("a", None);
        assert_eq!(d.ops().len(), 3);
        assert_eq!(d.target_len(), 3);
    }

    #[test]
    fn push_merges_retains_with_equal_attributes_and_all_deletes() {
        let mut d = Delta::new();
        d.retain(1, None)
            .retain(2, None)
            .retain(1, attrs(json!({"bold": null})))
            .retain(1, attrs(json!({"bold": null})));
        d.delete(1).delete(2);
        assert_eq!(d.to_json(), json!([{"retain": 3}, {"retain": 2, "attributes": {"bold": null}}, {"delete": 3}]));
    }

    #[test]
    fn push_treats_integral_numbers_as_javascript_does() {
        // lodash isEqual sees 1 and 1.0 as the same number, so quill merges these.
        let mut d = Delta::new();
        d.retain(1, attrs(json!({"header": 1}))).retain(1, attrs(json!({"header": 1.0})));
        assert_eq!(d.ops().len(), 1);
    }

    #[test]
    fn push_puts_an_insert_before_an_adjacent_delete() {
        let mut d = Delta::new();
        d.retain(1, None).insert_text("a", None).delete(2).insert_text("b", None);
        assert_eq!(d.to_json(), json!([{"retain": 1}, {"insert": "ab"}, {"delete": 2}]));
        let mut d = Delta::new();
        d.delete(2).insert_text("x", attrs(json!({"bold": true})));
        assert_eq!(d.to_json(), json!([{"insert": "x", "attributes": {"bold": true}}, {"delete": 2}]));
        let mut d = Delta::new();
        d.insert_text("a", None).delete(1).insert_text("b", attrs(json!({"bold": true})));
        assert_eq!(d.to_json(), json!([{"insert": "a"}, {"insert": "b", "attributes": {"bold": true}}, {"delete": 1}]));
    }

    #[test]
    fn push_ignores_zero_lengths_empty_strings_and_empty_attributes() {
        let mut d = Delta::new();
        d.retain(0, attrs(json!({"bold": true}))).delete(0).insert_text("", None);
        assert!(d.ops().is_empty());
        d.retain(2, Some(Map::new())).insert_text("a", Some(Map::new()));
        assert_eq!(d.to_json(), json!([{"retain": 2}, {"insert": "a"}]));
    }

    #[test]
    fn chop_drops_only_a_trailing_retain_without_attributes() {
        let mut d = Delta::new();
        d.insert_text("a", None).retain(3, None);
        assert_eq!(d.chop().to_json(), json!([{"insert": "a"}]));
        let mut d = Delta::new();
        d.retain(3, attrs(json!({"bold": true})));
        assert_eq!(d.clone().chop(), d);
        assert_eq!(Delta::new().chop(), Delta::new());
    }

    #[test]
    fn is_noop_means_only_plain_retains() {
        assert!(Delta::new().is_noop());
        assert!(Delta::new().retain(5, None).is_noop());
        assert!(!Delta::new().retain(5, attrs(json!({"bold": null}))).is_noop());
        assert!(!Delta::new().delete(1).is_noop());
        assert!(!Delta::new().insert_text("a", None).is_noop());
    }

    #[test]
    fn lengths_count_utf16_units() {
        assert_eq!(utf16_len("😀"), 2);
        assert_eq!(utf16_len("👍🏽"), 4);
        assert_eq!(utf16_len("é漢\n"), 3);
        assert_eq!(utf16_len("e\u{301}"), 2);
        let d = parse(json!([{"retain": 3}, {"insert": "😀a"}, {"insert": {"image": "x.png"}}, {"delete": 4}]));
        assert_eq!(d.base_len(), 7);
        assert_eq!(d.target_len(), 7);
        let doc = parse(json!([{"insert": "a😀b"}]));
        let del = parse(json!([{"retain": 1}, {"delete": 2}]));
        assert_eq!(doc.compose(&del), Ok(parse(json!([{"insert": "ab"}]))));
    }

    #[test]
    fn split_utf16_refuses_to_cut_a_surrogate_pair() {
        assert_eq!(split_utf16("a😀b", 0), Some(("", "a😀b")));
        assert_eq!(split_utf16("a😀b", 1), Some(("a", "😀b")));
        assert_eq!(split_utf16("a😀b", 2), None);
        assert_eq!(split_utf16("a😀b", 3), Some(("a😀", "b")));
        assert_eq!(split_utf16("a😀b", 4), Some(("a😀b", "")));
        assert_eq!(split_utf16("a😀b", 5), None);
        assert_eq!(split_utf16("😀", 1), None);
        assert_eq!(split_utf16("", 0), Some(("", "")));
        assert_eq!(split_utf16("é漢", 1), Some(("é", "漢")));
    }

    #[test]
    fn compose_refuses_to_cut_a_surrogate_pair_instead_of_panicking() {
        let doc = parse(json!([{"insert": "a😀b"}]));
        let cut = |op: Value| doc.compose(&parse(op));
        assert_eq!(cut(json!([{"retain": 2}, {"delete": 1}])), Err(DeltaError::SurrogateSplit { at: 2 }));
        assert_eq!(cut(json!([{"delete": 2}])), Err(DeltaError::SurrogateSplit { at: 2 }));
        assert_eq!(cut(json!([{"retain": 2}, {"insert": "x"}])), Err(DeltaError::SurrogateSplit { at: 2 }));
        assert_eq!(
            cut(json!([{"retain": 2, "attributes": {"bold": true}}])),
            Err(DeltaError::SurrogateSplit { at: 2 })
        );
        // A cut inside a pair of a retained (not inserted) range is invisible here and fine.
        let op = parse(json!([{"retain": 2}, {"insert": "x"}]));
        assert!(parse(json!([{"retain": 5}])).compose(&op).is_ok());
    }

    #[test]
    fn compose_checked_refuses_an_operation_longer_than_the_document() {
        let doc = parse(json!([{"insert": "ab"}]));
        assert_eq!(
            doc.compose_checked(&parse(json!([{"retain": 2}, {"delete": 1}]))),
            Err(DeltaError::ComposeLengthMismatch { base_len: 3, target_len: 2 })
        );
        // quill itself lets the retain run past the end of the document.
        assert_eq!(
            doc.compose(&parse(json!([{"retain": 3, "attributes": {"bold": true}}]))),
            Ok(parse(
                json!([{"insert": "ab", "attributes": {"bold": true}}, {"retain": 1, "attributes": {"bold": true}}])
            ))
        );
        assert!(doc.compose_checked(&parse(json!([{"retain": 1}, {"delete": 1}]))).is_ok());
    }

    #[test]
    fn compose_keeps_null_removals_on_retains_and_drops_them_on_inserts() {
        let a = parse(json!([{"insert": "ab", "attributes": {"bold": true}}, {"retain": 2}]));
        let b = parse(json!([{"retain": 4, "attributes": {"bold": null, "color": "#f00"}}]));
        assert_eq!(
            a.compose(&b).map(|d| d.to_json()),
            Ok(json!([{"insert": "ab", "attributes": {"color": "#f00"}},
                      {"retain": 2, "attributes": {"bold": null, "color": "#f00"}}]))
        );
    }

    #[test]
    fn transform_gives_attributes_to_the_side_with_priority() {
        let a = parse(json!([{"retain": 2, "attributes": {"bold": true, "color": "#f00"}}]));
        let b = parse(json!([{"retain": 2, "attributes": {"bold": null, "italic": true}}]));
        assert_eq!(a.transform(&b, true).to_json(), json!([{"retain": 2, "attributes": {"italic": true}}]));
        assert_eq!(
            a.transform(&b, false).to_json(),
            json!([{"retain": 2, "attributes": {"bold": null, "italic": true}}])
        );
        let ins_a = parse(json!([{"insert": "A"}]));
        let ins_b = parse(json!([{"insert": "B"}]));
        assert_eq!(ins_a.transform(&ins_b, true).to_json(), json!([{"retain": 1}, {"insert": "B"}]));
        assert_eq!(ins_a.transform(&ins_b, false).to_json(), json!([{"insert": "B"}]));
    }

    #[test]
    fn transform_position_moves_over_inserts_and_into_deletes() {
        let d = parse(json!([{"retain": 2}, {"insert": "😀"}, {"delete": 3}]));
        assert_eq!(d.transform_position(1, false), 1);
        assert_eq!(d.transform_position(2, false), 4);
        assert_eq!(d.transform_position(2, true), 2);
        assert_eq!(d.transform_position(4, false), 4);
        assert_eq!(d.transform_position(7, true), 6);
    }

    #[test]
    fn from_json_accepts_an_array_or_a_serialised_delta() {
        let ops = json!([{"insert": "a", "attributes": {"bold": true}}, {"retain": 1}, {"delete": 1}]);
        let d = parse(ops.clone());
        assert_eq!(d.to_json(), ops);
        assert_eq!(parse(json!({ "ops": ops })), d);
        assert_eq!(parse(json!([])), Delta::new());
        assert_eq!(parse(json!([{"retain": 2, "attributes": {}}])).to_json(), json!([{"retain": 2}]));
        assert_eq!(parse(json!([{"retain": 2.0}])).to_json(), json!([{"retain": 2}]));
        // Normalised through push: merged and reordered.
        assert_eq!(
            parse(json!([{"delete": 1}, {"insert": "a"}, {"insert": "b"}, {"delete": 2}])).to_json(),
            json!([{"insert": "ab"}, {"delete": 3}])
        );
    }

    #[test]
    fn from_json_expands_replace_into_insert_then_delete() {
        let d = parse(json!([{"retain": 1}, {"replace": 2, "insert": "xy", "attributes": {"bold": true}}]));
        assert_eq!(d.to_json(), json!([{"retain": 1}, {"insert": "xy", "attributes": {"bold": true}}, {"delete": 2}]));
    }

    #[test]
    fn from_json_refuses_what_is_not_an_operation() {
        for v in [json!(null), json!(1), json!("x"), json!({}), json!({"ops": 1}), json!({"ops": [], "x": 1})] {
            assert_eq!(Delta::from_json(&v, &limits()), Err(DeltaError::NotAnOp), "{v}");
        }
    }

    #[test]
    fn from_json_refuses_each_malformed_component_with_its_reason() {
        use reason::*;
        let cases = [
            (json!(1), NOT_AN_OBJECT),
            (json!(null), NOT_AN_OBJECT),
            (json!(["insert", "a"]), NOT_AN_OBJECT),
            (json!({}), NO_KIND),
            (json!({"attributes": {"bold": true}}), NO_KIND),
            (json!({"insert": "a", "bold": true}), UNKNOWN_KEY),
            (json!({"retain": 1, "attributes": {}, "x": null}), UNKNOWN_KEY),
            (json!({"insert": "a", "retain": 1}), SEVERAL_KINDS),
            (json!({"retain": 1, "delete": 1}), SEVERAL_KINDS),
            (json!({"insert": "a", "delete": 1}), SEVERAL_KINDS),
            (json!({"replace": 1, "insert": "a", "delete": 1}), SEVERAL_KINDS),
            (json!({"replace": 1, "retain": 1}), SEVERAL_KINDS),
            (json!({"replace": 1}), REPLACE_WITHOUT_INSERT),
            (json!({"replace": 1, "insert": {"image": "x.png"}}), REPLACE_NOT_TEXT),
            (json!({"replace": 1, "insert": ""}), EMPTY_TEXT),
            (json!({"replace": "1", "insert": "a"}), LENGTH_NOT_NUMBER),
            (json!({"insert": "a", "attributes": null}), ATTRIBUTES_NOT_OBJECT),
            (json!({"retain": 1, "attributes": [1]}), ATTRIBUTES_NOT_OBJECT),
            (json!({"retain": 1, "attributes": "bold"}), ATTRIBUTES_NOT_OBJECT),
            (json!({"delete": 1, "attributes": {"bold": true}}), ATTRIBUTES_ON_DELETE),
            (json!({"delete": 1, "attributes": {}}), ATTRIBUTES_ON_DELETE),
            (json!({"insert": ""}), EMPTY_TEXT),
            (json!({"insert": null}), BAD_INSERT),
            (json!({"insert": 5}), BAD_INSERT),
            (json!({"insert": ["a"]}), BAD_INSERT),
            (json!({"insert": true}), BAD_INSERT),
            (json!({"retain": {"image": "x.png"}}), EMBED_RETAIN),
            (json!({"retain": {}}), EMBED_RETAIN),
            (json!({"retain": "3"}), LENGTH_NOT_NUMBER),
            (json!({"retain": null}), LENGTH_NOT_NUMBER),
            (json!({"retain": true}), LENGTH_NOT_NUMBER),
            (json!({"delete": [1]}), LENGTH_NOT_NUMBER),
            (json!({"retain": -1}), LENGTH_NEGATIVE),
            (json!({"delete": -2.5}), LENGTH_NEGATIVE),
            (json!({"delete": i64::MIN}), LENGTH_NEGATIVE),
            (json!({"retain": 1.5}), LENGTH_FRACTIONAL),
            (json!({"delete": 0.5}), LENGTH_FRACTIONAL),
            (json!({"retain": 9007199254740993u64}), LENGTH_OVER_2_53),
            (json!({"retain": u64::MAX}), LENGTH_OVER_2_53),
            (json!({"delete": 1e300}), LENGTH_OVER_2_53),
        ];
        for (component, reason) in cases {
            // After a valid component, so that the index is checked too.
            let v = json!([{"insert": "ok"}, component]);
            assert_eq!(Delta::from_json(&v, &limits()), Err(DeltaError::BadComponent { index: 1, reason }), "{v}");
        }
        assert!(Delta::from_json(
            &json!([{"retain": 9007199254740992u64}]),
            &DeltaLimits { len_max: u64::MAX, ..limits() }
        )
        .is_ok());
    }

    #[test]
    fn from_json_enforces_its_limits() {
        let tight = DeltaLimits { components_max: 3, insert_units_max: 4, len_max: 10 };
        let check = |v: Value| Delta::from_json(&v, &tight);
        assert_eq!(
            check(json!([{"retain": 1}, {"retain": 1}, {"retain": 1}, {"retain": 1}])),
            Err(DeltaError::TooManyComponents { count: 4, max: 3 })
        );
        // Counted before normalisation, and before any component is looked at.
        assert_eq!(check(json!([1, 2, 3, 4])), Err(DeltaError::TooManyComponents { count: 4, max: 3 }));
        assert_eq!(check(json!([{"insert": "ab😀"}])), Ok(parse(json!([{"insert": "ab😀"}]))));
        assert_eq!(check(json!([{"insert": "ab😀c"}])), Err(DeltaError::InsertTooLarge { units: 5, max: 4 }));
        assert_eq!(
            check(json!([{"insert": "abcd"}, {"insert": {"image": "x.png"}}])),
            Err(DeltaError::InsertTooLarge { units: 5, max: 4 })
        );
        assert_eq!(
            check(json!([{"replace": 1, "insert": "abcde"}])),
            Err(DeltaError::InsertTooLarge { units: 5, max: 4 })
        );
        assert_eq!(check(json!([{"retain": 11}])), Err(DeltaError::LengthTooLarge { len: 11, max: 10 }));
        assert_eq!(check(json!([{"retain": 6}, {"delete": 5}])), Err(DeltaError::LengthTooLarge { len: 11, max: 10 }));
        assert_eq!(
            check(json!([{"retain": 6}, {"replace": 5, "insert": "a"}])),
            Err(DeltaError::LengthTooLarge { len: 11, max: 10 })
        );
        assert!(check(json!([{"retain": 5}, {"delete": 5}])).is_ok());
    }

    fn seed() -> u64 {
        let seed =
            std::env::var("YSERVE_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| fastrand::u64(..));
        println!("seed {seed} (replay with YSERVE_TEST_SEED={seed})");
        seed
    }

    fn random_json(rng: &mut fastrand::Rng, depth: u32) -> Value {
        let scalars = [json!(null), json!(true), json!(0), json!(-1), json!(1.5), json!(3), json!(""), json!("😀")];
        let keys = ["insert", "retain", "delete", "replace", "attributes", "ops", "bold"];
        match rng.u8(..if depth == 0 { 1 } else { 3 }) {
            0 => scalars[rng.usize(..scalars.len())].clone(),
            1 => Value::Array((0..rng.usize(..4)).map(|_| random_json(rng, depth - 1)).collect()),
            _ => Value::Object(
                (0..rng.usize(..4))
                    .map(|_| (keys[rng.usize(..keys.len())].to_owned(), random_json(rng, depth - 1)))
                    .collect(),
            ),
        }
    }

    #[test]
    fn from_json_never_panics_on_random_json() {
        let mut rng = fastrand::Rng::with_seed(seed());
        let mut accepted = 0;
        for _ in 0..20_000 {
            let v = random_json(&mut rng, 4);
            if let Ok(d) = Delta::from_json(&v, &limits()) {
                accepted += 1;
                assert_eq!(Delta::from_json(&d.to_json(), &limits()).as_ref(), Ok(&d));
            }
        }
        assert!(accepted > 0, "the generator never made a valid operation");
    }

    const TEXT: [&str; 10] = ["a", "hello", " ", "é", "😀", "👍🏽", "漢字", "\n", "e\u{301}", "Ω"];

    fn random_attrs(rng: &mut fastrand::Rng, nulls: bool) -> Option<Attributes> {
        let pool = [("bold", json!(true)), ("italic", json!(true)), ("color", json!("#f00")), ("link", json!("x"))];
        (0..rng.usize(..3))
            .map(|_| {
                let (k, v) = pool[rng.usize(..pool.len())].clone();
                (k.to_owned(), if nulls && rng.bool() { Value::Null } else { v })
            })
            .collect::<Attributes>()
            .into()
    }

    fn random_insert(rng: &mut fastrand::Rng, d: &mut Delta) {
        if rng.u8(..8) == 0 {
            let embed = json!({"image": "x.png"}).as_object().cloned().unwrap_or_default();
            d.insert_embed(embed, random_attrs(rng, false));
        } else {
            let s: String = (0..rng.usize(1..3)).map(|_| TEXT[rng.usize(..TEXT.len())]).collect();
            d.insert_text(&s, random_attrs(rng, false));
        }
    }

    fn random_doc(rng: &mut fastrand::Rng) -> Delta {
        let mut d = Delta::new();
        for _ in 0..rng.usize(..6) {
            random_insert(rng, &mut d);
        }
        d
    }

    /// The UTF-16 lengths of the document's code points and embeds: where an op may cut.
    fn cut_points(doc: &Delta) -> Vec<u64> {
        let mut units = Vec::new();
        for c in doc.ops() {
            match c {
                Component::Insert { insert: Insert::Text(s), .. } => {
                    units.extend(s.chars().map(|c| c.len_utf16() as u64))
                }
                _ => units.push(1),
            }
        }
        units
    }

    fn random_op(rng: &mut fastrand::Rng, doc: &Delta) -> Delta {
        let units = cut_points(doc);
        let (mut d, mut i) = (Delta::new(), 0);
        for _ in 0..rng.usize(..7) {
            let n = rng.usize(1..5).min(units.len() - i);
            let len: u64 = units[i..i + n].iter().sum();
            match rng.u8(..3) {
                0 => random_insert(rng, &mut d),
                1 if n > 0 => {
                    d.delete(len);
                    i += n;
                }
                _ if n > 0 => {
                    let a = if rng.bool() { random_attrs(rng, true) } else { None };
                    d.retain(len, a);
                    i += n;
                }
                _ => break,
            }
        }
        d
    }

    #[test]
    fn concurrent_operations_converge_after_transform_and_round_trip_through_json() {
        let mut rng = fastrand::Rng::with_seed(seed());
        for round in 0..3000 {
            let doc = random_doc(&mut rng);
            let (a, b) = (random_op(&mut rng, &doc), random_op(&mut rng, &doc));
            let left = doc.compose(&a).and_then(|d| d.compose(&a.transform(&b, true)));
            let right = doc.compose(&b).and_then(|d| d.compose(&b.transform(&a, false)));
            assert!(left.is_ok(), "round {round}: {left:?}");
            assert_eq!(left, right, "round {round}: TP1 fails for doc {doc:?}, a {a:?}, b {b:?}");
            for x in [&doc, &a, &b] {
                assert_eq!(Delta::from_json(&x.to_json(), &limits()).as_ref(), Ok(x), "round {round}");
            }
        }
    }
}
