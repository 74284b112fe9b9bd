//! Structural validation of Yjs v1 updates **before yrs sees the bytes**. Sans IO; called by
//! `session` on every update it receives, and fuzzed.
//!
//! yrs 0.28 trusts its input in ways a server cannot afford:
//! - its `Any` decoder recurses once per nesting level, so ~7,000 nested arrays in a 14 KB
//!   update overflow a 2 MiB worker stack and abort the process (no `catch_unwind` helps);
//! - counts are read from the wire and reserved before the bytes behind them are seen, so a
//!   5-byte update declaring 268 million clients costs half a gigabyte;
//! - clocks are summed without overflow checks.
//!
//! This module walks the same format iteratively (an explicit stack for `Any`), refuses any
//! count larger than the bytes left to back it, bounds nesting, checks clock arithmetic,
//! content kinds and type refs, and returns a summary of which client clock ranges the update
//! writes (items and GC ranges), which the document actor needs for identity binding and
//! for refusing GC ranges that squat on another client's future clocks.
//!
//! The walk mirrors yrs's v1 decoder (`Update::decode`, `ItemContent::decode`, `Any::decode`,
//! `IdSet::decode`), so that whatever passes here is what yrs will parse. Legacy `ContentJSON`
//! is refused: yrs decodes and encodes it inconsistently (see `item`).

/// Largest client id: Yjs client ids are JavaScript integers (53 bits).
const CLIENT_ID_MAX: u64 = (1 << 53) - 1;

#[derive(Debug, Clone)]
pub struct Limits {
    /// Deepest nesting of arrays/maps inside one `Any` value.
    pub any_depth_max: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { any_depth_max: 64 }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Hostile {
    #[error("update is truncated")]
    Truncated,
    #[error("update declares {count} {what} but only {remaining} bytes follow")]
    CountTooLarge { what: &'static str, count: u64, remaining: usize },
    #[error("update nests values {depth} deep, more than {max}")]
    TooDeep { depth: usize, max: usize },
    #[error("update clock range overflows")]
    ClockOverflow,
    #[error("update uses client id {0}, beyond 53 bits")]
    ClientIdOutOfRange(u64),
    #[error("update has an empty block")]
    EmptyBlock,
    #[error("update has legacy JSON content, which yrs cannot re-encode")]
    LegacyJsonContent,
    #[error("update repeats client {0}")]
    RepeatedClient(u64),
    #[error("update has a subdocument, which yserve does not support")]
    Subdocument,
    #[error("update has unknown content kind {0}")]
    UnknownContent(u8),
    #[error("update has unknown type ref {0}")]
    UnknownTypeRef(u8),
    #[error("update has unknown value tag {0}")]
    UnknownValueTag(u8),
    #[error("update has a string that is not UTF-8")]
    NotUtf8,
    #[error("update has a malformed number")]
    BadVarint,
}

impl Hostile {
    /// The short, stable reason sent with close code 1008.
    pub fn reason(&self) -> &'static str {
        match self {
            Hostile::TooDeep { .. } => "update too deep",
            Hostile::CountTooLarge { .. } => "update declares impossible counts",
            Hostile::ClockOverflow => "update clock overflow",
            Hostile::ClientIdOutOfRange(_) => "update client id out of range",
            Hostile::LegacyJsonContent | Hostile::Subdocument => "unsupported content",
            _ => "malformed update",
        }
    }
}

/// A run of consecutive structs of one client in the update.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientRun {
    pub client: u64,
    /// First clock of the run.
    pub start: u32,
    /// One past the last clock of the run.
    pub end: u32,
    /// Whether the run holds at least one item (not only GC/skip).
    pub has_items: bool,
    /// The run's GC ranges, `(start, end)`.
    pub gc: Vec<(u32, u32)>,
    /// Whether the run has skip structs (gaps).
    pub has_skip: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    pub runs: Vec<ClientRun>,
    /// Number of `(client, range)` entries in the delete set.
    pub deleted_ranges: usize,
    /// Every id the update's items point at (origins and parents), `(client, clock)`.
    pub refs: Vec<(u64, u32)>,
    /// Every delete range, `(client, start, end)`.
    pub deletes: Vec<(u64, u32, u32)>,
}

impl Summary {
    /// Whether the update neither writes nor deletes anything.
    pub fn is_empty(&self) -> bool {
        self.runs.is_empty() && self.deleted_ranges == 0
    }

    /// Whether the update can be applied completely against a document whose state vector
    /// gives `known(client)`: no gaps, no skips, every referenced or deleted clock either
    /// known or written earlier in this update. An update that cannot would be held
    /// "pending" by yrs, and yrs 0.28.1's pending/skip bookkeeping is unsound (the fuzz
    /// target found a use-after-free in `BlockStore::split_block` on such an update).
    pub fn first_missing_dependency(&self, known: impl Fn(u64) -> u32) -> Option<(u64, u32)> {
        let covered = |client: u64, clock: u32| {
            clock < known(client) || self.runs.iter().any(|r| r.client == client && r.start <= clock && clock < r.end)
        };
        for run in &self.runs {
            if run.has_skip || run.start > known(run.client) {
                return Some((run.client, run.start));
            }
        }
        if let Some(&(client, clock)) = self.refs.iter().find(|&&(c, k)| !covered(c, k)) {
            return Some((client, clock));
        }
        self.deletes
            .iter()
            .find(|&&(c, start, end)| end > start && !(covered(c, start) && covered(c, end - 1)))
            .map(|&(c, start, _)| (c, start))
    }
}

/// Walks a v1 update; `Ok` means yrs can decode it without the hazards listed above.
pub fn inspect_update_v1(data: &[u8], limits: &Limits) -> Result<Summary, Hostile> {
    let mut r = Reader { data, pos: 0 };
    let mut summary = Summary::default();
    let clients = r.count("clients")?;
    for _ in 0..clients {
        let structs = r.count("structs")?;
        let client = r.client()?;
        // Yjs writes one group per client. yrs appends a repeated group's blocks to the first
        // one's without checking that the clocks line up, leaving a list it then mishandles.
        if summary.runs.iter().any(|run| run.client == client) {
            return Err(Hostile::RepeatedClient(client));
        }
        let start = r.u32()?;
        let mut clock = start;
        let mut run = ClientRun { client, start, end: start, has_items: false, gc: Vec::new(), has_skip: false };
        for _ in 0..structs {
            let info = r.u8()?;
            let len = match info & 0b1_1111 {
                0 => {
                    let len = r.nonzero_len()?;
                    run.gc.push((clock, clock.checked_add(len).ok_or(Hostile::ClockOverflow)?));
                    len
                }
                10 => {
                    run.has_skip = true;
                    r.nonzero_len()?
                }
                kind => {
                    run.has_items = true;
                    r.item(info, kind, limits, &mut summary.refs)?
                }
            };
            clock = clock.checked_add(len).ok_or(Hostile::ClockOverflow)?;
        }
        run.end = clock;
        summary.runs.push(run);
    }
    // Delete set.
    let ds_clients = r.count("delete set clients")?;
    for _ in 0..ds_clients {
        let client = r.client()?;
        let ranges = r.count("delete ranges")?;
        for _ in 0..ranges {
            let clock = r.u32()?;
            let len = r.u32()?;
            let end = clock.checked_add(len).ok_or(Hostile::ClockOverflow)?;
            summary.deletes.push((client, clock, end));
        }
        summary.deleted_ranges += ranges as usize;
    }
    Ok(summary)
}

struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn remaining(&self) -> usize {
        self.data.len() - self.pos
    }

    fn u8(&mut self) -> Result<u8, Hostile> {
        let b = *self.data.get(self.pos).ok_or(Hostile::Truncated)?;
        self.pos += 1;
        Ok(b)
    }

    fn skip(&mut self, n: usize) -> Result<(), Hostile> {
        if self.remaining() < n {
            return Err(Hostile::Truncated);
        }
        self.pos += n;
        Ok(())
    }

    /// lib0 unsigned varint, at most 64 bits.
    fn var(&mut self) -> Result<u64, Hostile> {
        let mut value = 0u64;
        for shift in (0..70).step_by(7) {
            let b = self.u8()?;
            if shift == 63 && b > 1 {
                return Err(Hostile::BadVarint);
            }
            value |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(Hostile::BadVarint)
    }

    /// lib0 signed varint (sign in bit 6 of the first byte); only skipped.
    fn skip_signed_var(&mut self) -> Result<(), Hostile> {
        for _ in 0..10 {
            if self.u8()? & 0x80 == 0 {
                return Ok(());
            }
        }
        Err(Hostile::BadVarint)
    }

    fn u32(&mut self) -> Result<u32, Hostile> {
        u32::try_from(self.var()?).map_err(|_| Hostile::BadVarint)
    }

    fn nonzero_len(&mut self) -> Result<u32, Hostile> {
        match self.u32()? {
            0 => Err(Hostile::EmptyBlock),
            n => Ok(n),
        }
    }

    /// A count of things that each take at least one byte: never more than the bytes left.
    fn count(&mut self, what: &'static str) -> Result<u32, Hostile> {
        let count = self.var()?;
        let remaining = self.remaining();
        if count > remaining as u64 {
            return Err(Hostile::CountTooLarge { what, count, remaining });
        }
        Ok(count as u32)
    }

    fn client(&mut self) -> Result<u64, Hostile> {
        let id = self.var()?;
        if id > CLIENT_ID_MAX {
            return Err(Hostile::ClientIdOutOfRange(id));
        }
        Ok(id)
    }

    fn bytes(&mut self) -> Result<&[u8], Hostile> {
        let len = self.var()?;
        if len > self.remaining() as u64 {
            return Err(Hostile::Truncated);
        }
        let start = self.pos;
        self.pos += len as usize;
        Ok(&self.data[start..self.pos])
    }

    fn string(&mut self) -> Result<&str, Hostile> {
        std::str::from_utf8(self.bytes()?).map_err(|_| Hostile::NotUtf8)
    }

    fn id(&mut self) -> Result<(u64, u32), Hostile> {
        Ok((self.client()?, self.u32()?))
    }

    /// An item struct after its info byte; returns its clock length.
    fn item(&mut self, info: u8, kind: u8, limits: &Limits, refs: &mut Vec<(u64, u32)>) -> Result<u32, Hostile> {
        const HAS_ORIGIN: u8 = 0b1000_0000;
        const HAS_RIGHT_ORIGIN: u8 = 0b0100_0000;
        const HAS_PARENT_SUB: u8 = 0b0010_0000;
        if info & HAS_ORIGIN != 0 {
            refs.push(self.id()?);
        }
        if info & HAS_RIGHT_ORIGIN != 0 {
            refs.push(self.id()?);
        }
        if info & (HAS_ORIGIN | HAS_RIGHT_ORIGIN) == 0 {
            // Parent: a root type by name, or the id of the item that holds the parent type.
            if self.var()? == 1 {
                self.string()?;
            } else {
                refs.push(self.id()?);
            }
            if info & HAS_PARENT_SUB != 0 {
                self.string()?;
            }
        }
        // yrs reads the content kind from the low 4 bits (`ItemContent::decode`).
        match kind & 0b1111 {
            1 => self.nonzero_len(), // deleted
            // Legacy JSON content: yrs decodes it as `len + 1` strings but encodes `len`, so a
            // split JSON block makes every later full-state encode panic. Yjs has written
            // `ContentAny` instead since v13; refuse it.
            2 => Err(Hostile::LegacyJsonContent),
            3 => self.bytes().map(|_| 1), // binary
            4 => {
                // String: its clock length is its length in UTF-16 code units.
                let s = self.string()?;
                let len = s.encode_utf16().count();
                u32::try_from(len).map_err(|_| Hostile::ClockOverflow).and_then(|l| {
                    if l == 0 {
                        Err(Hostile::EmptyBlock)
                    } else {
                        Ok(l)
                    }
                })
            }
            5 => self.json().map(|_| 1), // embed
            6 => {
                self.string()?; // format key
                self.json().map(|_| 1)
            }
            7 => {
                match self.u8()? {
                    3 => {
                        self.string()?; // XML element name
                    }
                    0 | 1 | 2 | 4 | 5 | 6 | 9 | 15 => {}
                    other => return Err(Hostile::UnknownTypeRef(other)),
                }
                Ok(1)
            }
            8 => {
                let n = self.count("values")?;
                if n == 0 {
                    return Err(Hostile::EmptyBlock);
                }
                for _ in 0..n {
                    self.any(limits)?;
                }
                Ok(n)
            }
            // Subdocuments: in yrs 0.28.1 a document holding one is never freed (found by the
            // fuzz target with LeakSanitizer), so every load of it would leak the document.
            // y-websocket does not sync subdocuments over the parent's connection anyway.
            9 => Err(Hostile::Subdocument),
            other => Err(Hostile::UnknownContent(other)),
        }
    }

    /// A JSON string (embeds, format values). serde_json bounds its own recursion (128).
    fn json(&mut self) -> Result<(), Hostile> {
        self.string().map(|_| ())
    }

    /// One lib0 `Any` value, walked with an explicit stack instead of recursion.
    fn any(&mut self, limits: &Limits) -> Result<(), Hostile> {
        // Each open container: (values still to read, is a map).
        let mut open: Vec<(u32, bool)> = Vec::new();
        loop {
            if open.last().is_some_and(|(_, is_map)| *is_map) {
                self.string()?; // the entry's key
            }
            match self.u8()? {
                127 | 126 | 121 | 120 => {}
                125 => self.skip_signed_var()?,
                124 => self.skip(4)?,
                123 | 122 => self.skip(8)?,
                119 => {
                    self.string()?;
                }
                116 => {
                    self.bytes()?;
                }
                tag @ (117 | 118) => {
                    let n = self.count(if tag == 118 { "map entries" } else { "array values" })?;
                    if n > 0 {
                        if open.len() + 1 > limits.any_depth_max {
                            return Err(Hostile::TooDeep { depth: open.len() + 1, max: limits.any_depth_max });
                        }
                        open.push((n, tag == 118));
                        continue;
                    }
                }
                other => return Err(Hostile::UnknownValueTag(other)),
            }
            // A value is complete: close every container it completes.
            loop {
                match open.last_mut() {
                    None => return Ok(()),
                    Some((left, _)) => {
                        *left -= 1;
                        if *left > 0 {
                            break;
                        }
                        open.pop();
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use yrs::updates::decoder::Decode;
    use yrs::{Any, Array, Doc, Map, Text, Transact, Update, WriteTxn};

    fn limits() -> Limits {
        Limits::default()
    }

    fn realistic_update() -> Vec<u8> {
        let doc = Doc::with_client_id(7);
        let text = doc.get_or_insert_text("t");
        let map = doc.get_or_insert_map("m");
        let array = doc.get_or_insert_array("a");
        let mut txn = doc.transact_mut();
        text.insert(&mut txn, 0, "héllo 😀 wörld");
        text.remove_range(&mut txn, 1, 3);
        text.format(&mut txn, 0, 2, [("bold".into(), Any::Bool(true))].into_iter().collect());
        text.insert_embed(&mut txn, 1, Any::from(vec![Any::from(1.5), Any::Null]));
        map.insert(
            &mut txn,
            "k",
            Any::from(std::collections::HashMap::from([("x".to_string(), Any::from(vec![Any::from("s")]))])),
        );
        map.insert(&mut txn, "n", yrs::MapPrelim::default());
        array.insert(&mut txn, 0, Any::Buffer(vec![1u8, 2, 3].into()));
        array.insert(&mut txn, 1, yrs::XmlElementPrelim::empty("p"));
        let _ = txn.get_or_insert_xml_fragment("x");
        txn.encode_update_v1()
    }

    #[test]
    fn real_updates_pass_and_are_summarised() {
        let update = realistic_update();
        let summary = inspect_update_v1(&update, &limits()).unwrap();
        assert_eq!(summary.runs.len(), 1);
        assert_eq!(summary.runs[0].client, 7);
        assert_eq!(summary.runs[0].start, 0);
        assert!(summary.runs[0].has_items);
        // The run's end is the client's next clock, as yrs counts it.
        let doc = Doc::new();
        doc.transact_mut().apply_update(Update::decode_v1(&update).unwrap()).unwrap();
        let sv = yrs::ReadTxn::state_vector(&doc.transact());
        assert_eq!(sv.get(&yrs::ClientID::new(7)), summary.runs[0].end);
        assert!(summary.deleted_ranges >= 1);
    }

    #[test]
    fn every_truncation_of_a_real_update_is_refused() {
        let update = realistic_update();
        for cut in 0..update.len() {
            assert!(inspect_update_v1(&update[..cut], &limits()).is_err(), "prefix {cut}");
        }
    }

    #[test]
    fn deep_nesting_is_refused_without_recursion() {
        // Item in root array "a" holding one Any: 7,000 nested single-element arrays.
        let mut u = vec![1, 1, 7, 0, 8, 1, 1, b'a', 1];
        for _ in 0..7000 {
            u.extend([117, 1]);
        }
        u.push(126);
        u.push(0);
        assert_eq!(inspect_update_v1(&u, &limits()), Err(Hostile::TooDeep { depth: 65, max: 64 }));
        // 64 levels are fine, and yrs decodes them.
        let mut ok = vec![1, 1, 7, 0, 8, 1, 1, b'a', 1];
        ok.extend(std::iter::repeat_n([117u8, 1], 64).flatten());
        ok.extend([126, 0]);
        inspect_update_v1(&ok, &limits()).unwrap();
        Update::decode_v1(&ok).unwrap();
    }

    #[test]
    fn impossible_counts_are_refused_before_any_allocation() {
        // 5 bytes declaring 268 million clients.
        let u = [0x80, 0x80, 0x80, 0x80, 0x01];
        assert!(matches!(inspect_update_v1(&u, &limits()), Err(Hostile::CountTooLarge { what: "clients", .. })));
        let u = [1, 0xff, 0xff, 0x03, 7, 0];
        assert!(matches!(inspect_update_v1(&u, &limits()), Err(Hostile::CountTooLarge { what: "structs", .. })));
    }

    #[test]
    fn clock_overflow_is_refused() {
        // Client 7 at clock u32::MAX - 1 with a 5-long GC.
        let mut u = vec![1, 1, 7];
        u.extend([0xfe, 0xff, 0xff, 0xff, 0x0f]);
        u.extend([0, 5, 0]);
        assert_eq!(inspect_update_v1(&u, &limits()), Err(Hostile::ClockOverflow));
    }

    #[test]
    fn updates_with_gaps_or_unknown_references_cannot_apply_completely() {
        let update = realistic_update();
        let s = inspect_update_v1(&update, &limits()).unwrap();
        // Against an empty document: client 7 starts at 0 and refers only to itself.
        assert_eq!(s.first_missing_dependency(|_| 0), None);
        // A run starting past the known clock leaves a gap.
        let gap = inspect_update_v1(&[1, 1, 9, 3, 0, 100, 0], &limits()).unwrap();
        assert_eq!(gap.first_missing_dependency(|_| 0), Some((9, 3)));
        assert_eq!(gap.first_missing_dependency(|_| 3), None);
        // An origin pointing at an unknown clock of another client.
        let peer = Doc::with_client_id(8);
        let text = peer.get_or_insert_text("t");
        text.insert(&mut peer.transact_mut(), 0, "ab");
        let sv = yrs::ReadTxn::state_vector(&peer.transact());
        text.insert(&mut peer.transact_mut(), 1, "x");
        let peer2 = Doc::with_client_id(5);
        peer2
            .transact_mut()
            .apply_update(
                Update::decode_v1(&yrs::ReadTxn::encode_state_as_update_v1(&peer.transact(), &Default::default()))
                    .unwrap(),
            )
            .unwrap();
        let t2 = peer2.get_or_insert_text("t");
        t2.insert(&mut peer2.transact_mut(), 2, "y"); // right after "x", i.e. origin (8, 2)
        let only_5 =
            yrs::ReadTxn::encode_state_as_update_v1(&peer2.transact(), &yrs::ReadTxn::state_vector(&peer.transact()));
        let s = inspect_update_v1(&only_5, &limits()).unwrap();
        assert_eq!(
            s.first_missing_dependency(|c| if c == 8 { sv.get(&yrs::ClientID::new(8)) } else { 0 }),
            Some((8, 2))
        );
        assert_eq!(s.first_missing_dependency(|c| if c == 8 { 3 } else { 0 }), None);
    }

    #[test]
    fn a_client_repeated_in_one_update_is_refused() {
        // Found by the fuzz target (fuzz/seeds/update/use_after_free_squash): yrs 0.28.1 appends the
        // second group to the first whatever its clock, and later frees a block in use.
        let seed = include_bytes!("../fuzz/seeds/update/use_after_free_squash");
        assert_eq!(inspect_update_v1(seed, &limits()), Err(Hostile::RepeatedClient(1)));
        let twice = [2, 1, 9, 0, 0, 1, 1, 9, 5, 0, 1, 0];
        assert_eq!(inspect_update_v1(&twice, &limits()), Err(Hostile::RepeatedClient(9)));
    }

    #[test]
    fn subdocuments_are_refused() {
        let doc = Doc::with_client_id(3);
        let map = doc.get_or_insert_map("m");
        let update = {
            let mut txn = doc.transact_mut();
            map.insert(&mut txn, "sub", Doc::new());
            txn.encode_update_v1()
        };
        assert_eq!(inspect_update_v1(&update, &limits()), Err(Hostile::Subdocument));
    }

    #[test]
    fn gc_ranges_are_reported() {
        let u = [1, 1, 9, 3, 0, 100, 0];
        let s = inspect_update_v1(&u, &limits()).unwrap();
        assert_eq!(
            s.runs,
            vec![ClientRun { client: 9, start: 3, end: 103, has_items: false, gc: vec![(3, 103)], has_skip: false }]
        );
    }

    #[test]
    fn unknown_kinds_and_oversized_client_ids_are_refused() {
        assert_eq!(inspect_update_v1(&[1, 1, 7, 0, 11, 1, 1, b'a', 0], &limits()), Err(Hostile::UnknownContent(11)));
        let mut u = vec![1, 1];
        u.extend([0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]); // 2^63-ish
        u.extend([0, 0, 1, 0]);
        assert!(matches!(inspect_update_v1(&u, &limits()), Err(Hostile::ClientIdOutOfRange(_))));
    }

    #[test]
    fn mutated_updates_that_pass_never_make_yrs_decode_panic() {
        // Bounded mutation test: flip, insert and delete bytes of a real update; whatever the
        // validator accepts, yrs decodes without panicking (it may still return an error, e.g.
        // for invalid JSON inside an embed, which is then refused as malformed).
        let seed =
            std::env::var("YSERVE_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| fastrand::u64(..));
        println!("seed {seed}");
        let mut rng = fastrand::Rng::with_seed(seed);
        let base = realistic_update();
        let mut accepted = 0;
        for _ in 0..20_000 {
            let mut u = base.clone();
            for _ in 0..rng.usize(1..4) {
                let i = rng.usize(..u.len());
                match rng.u8(..3) {
                    0 => u[i] = rng.u8(..),
                    1 => u.insert(i, rng.u8(..)),
                    _ => {
                        u.remove(i);
                    }
                }
                if u.is_empty() {
                    break;
                }
            }
            if inspect_update_v1(&u, &limits()).is_ok() {
                accepted += 1;
                let decoded = std::panic::catch_unwind(|| Update::decode_v1(&u).is_ok());
                assert!(decoded.is_ok(), "seed {seed}: yrs panicked decoding an accepted update: {u:?}");
            }
        }
        assert!(accepted > 100, "mutations should often stay valid (got {accepted})");
    }

    fn base_doc() -> Doc {
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

    /// The legacy-JSON update found by mutation: it applies with `Ok` in yrs 0.28.1 and then
    /// every full-state encode of the document panics.
    const BREAKS_ENCODING: [u8; 30] =
        [1, 3, 2, 0, 162, 1, 5, 1, 6, 3, 88, 89, 90, 8, 1, 1, 97, 65, 119, 1, 118, 135, 2, 3, 1, 1, 1, 1, 0, 5];

    #[test]
    fn the_update_that_breaks_encoding_is_refused() {
        assert_eq!(inspect_update_v1(&BREAKS_ENCODING, &limits()), Err(Hostile::LegacyJsonContent));
        // Proof that it is dangerous: yrs accepts it and then cannot encode the document.
        let doc = base_doc();
        doc.transact_mut().apply_update(Update::decode_v1(&BREAKS_ENCODING).unwrap()).unwrap();
        let encode = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            yrs::ReadTxn::encode_state_as_update_v1(&doc.transact(), &yrs::StateVector::default())
        }));
        assert!(encode.is_err(), "yrs was fixed: this vector no longer breaks encoding");
    }

    #[test]
    fn mutated_updates_that_pass_apply_and_encode_without_panicking() {
        // decode -> validate -> apply -> encode, bounded: mutations of a second client's
        // edits applied to an existing document. Seeded; YSERVE_TEST_SEED replays.
        let seed =
            std::env::var("YSERVE_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| fastrand::u64(..));
        println!("seed {seed}");
        let mut rng = fastrand::Rng::with_seed(seed);
        let peer = Doc::with_client_id(2);
        let base = yrs::ReadTxn::encode_state_as_update_v1(&base_doc().transact(), &yrs::StateVector::default());
        peer.transact_mut().apply_update(Update::decode_v1(&base).unwrap()).unwrap();
        let before = yrs::ReadTxn::state_vector(&peer.transact());
        {
            let t = peer.get_or_insert_text("t");
            let a = peer.get_or_insert_array("a");
            let mut txn = peer.transact_mut();
            t.insert(&mut txn, 3, "XYZ");
            t.remove_range(&mut txn, 0, 2);
            a.insert(&mut txn, 0, Any::from("v"));
            a.insert(&mut txn, 1, yrs::MapPrelim::default());
        }
        let update = yrs::ReadTxn::encode_state_as_update_v1(&peer.transact(), &before);
        let previous_hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {}));
        let mut applied = 0;
        let mut failure = None;
        for _ in 0..if cfg!(debug_assertions) { 5_000 } else { 60_000 } {
            let mut u = update.clone();
            for _ in 0..rng.usize(1..4) {
                let j = rng.usize(..u.len());
                u[j] = match rng.u8(..3) {
                    0 => rng.u8(..),
                    1 => u[j] ^ (1 << rng.u8(..8)),
                    _ => rng.u8(..16),
                };
            }
            let Ok(summary) = inspect_update_v1(&u, &limits()) else { continue };
            let doc = base_doc();
            // As the document actor: what cannot apply completely is held, not given to yrs.
            let sv = yrs::ReadTxn::state_vector(&doc.transact());
            if summary.first_missing_dependency(|c| sv.get(&yrs::ClientID::new(c))).is_some() {
                continue;
            }
            let Ok(decoded) = Update::decode_v1(&u) else { continue };
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                if doc.transact_mut().apply_update(decoded).is_ok() {
                    yrs::ReadTxn::encode_state_as_update_v1(&doc.transact(), &yrs::StateVector::default());
                    true
                } else {
                    false
                }
            }));
            match outcome {
                Ok(true) => applied += 1,
                Ok(false) => {}
                Err(_) => {
                    failure = Some(u);
                    break;
                }
            }
        }
        std::panic::set_hook(previous_hook);
        assert_eq!(failure, None, "seed {seed}: an accepted update made yrs panic");
        assert!(applied > 50, "mutations should often apply (got {applied})");
    }
}
