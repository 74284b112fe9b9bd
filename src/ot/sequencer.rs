//! The OT sequencer of one (document, text root): versions, the bounded op log, and the
//! ShareDB submit rules (SPEC §5). Pure state, no IO and no yrs: the document actor owns one
//! per text that OT clients have used, applies what `prepare` returns to the `Y.Text`, and
//! persists what `commit` logged together with the Yjs update it produced.
//!
//! Versions follow ShareDB: a text at version `v` has had `v` ops applied; the op logged at
//! `v` took it from `v` to `v + 1`. A text is first seen by OT at version 1 (an implicit
//! create at 0), so the stock client, which treats version 0 with no type as "does not exist",
//! finds an existing rich-text document (empty or not) and never has to create it.

use std::collections::VecDeque;
use std::sync::Arc;

use crate::ot::delta::Delta;

/// The version a text has when OT first sees it (its implicit create is op 0).
pub const FIRST_VERSION: u64 = 1;

/// One committed op, as applied (after transformation).
#[derive(Debug, Clone, PartialEq)]
pub struct LoggedOp {
    /// The version the op applied to; the text was at `v + 1` after it.
    pub v: u64,
    /// Who submitted it: the ShareDB client id, or `yjs` for changes made by Yjs clients.
    pub src: Arc<str>,
    pub seq: u64,
    pub op: Delta,
}

/// What a submitted op turns into.
#[derive(Debug, PartialEq)]
pub enum Prepared {
    /// `(src, seq)` is already in the log, committed at version `v`: acknowledge, never apply
    /// twice (a client re-sends its in-flight op after a reconnect).
    AlreadySubmitted { v: u64 },
    /// Apply this op (transformed to the current version) at `self.version()`.
    Apply(Delta),
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SequenceError {
    #[error("op version {v} is newer than the current version {current}")]
    VersionNewer { v: u64, current: u64 },
    #[error("ops since version {v} are no longer kept (oldest kept: {oldest}); fetch the text again")]
    OpsNotFound { v: u64, oldest: u64 },
}

#[derive(Debug)]
pub struct Sequencer {
    pub epoch: Arc<str>,
    version: u64,
    /// The newest ops, oldest first; `ops[i].v == version - ops.len() + i`.
    ops: VecDeque<Arc<LoggedOp>>,
    ops_max: usize,
}

/// The `src` of ops that come from Yjs clients. ShareDB client ids are random hex, so this
/// never matches a client's in-flight op.
pub const YJS_SRC: &str = "yjs";

impl Sequencer {
    /// A sequencer at `version` holding `ops` (the newest ones, oldest first, contiguous and
    /// ending at `version - 1`), keeping at most `ops_max`.
    pub fn new(epoch: Arc<str>, version: u64, ops: Vec<LoggedOp>, ops_max: usize) -> Sequencer {
        let mut s = Sequencer { epoch, version, ops: VecDeque::new(), ops_max: ops_max.max(1) };
        let expected_first = version.saturating_sub(ops.len() as u64);
        for (i, op) in ops.into_iter().enumerate() {
            debug_assert_eq!(op.v, expected_first + i as u64, "logged ops must be contiguous");
            s.ops.push_back(Arc::new(op));
        }
        s.trim();
        s
    }

    pub fn version(&self) -> u64 {
        self.version
    }

    /// The oldest version whose following ops are all kept.
    pub fn oldest(&self) -> u64 {
        self.version - self.ops.len() as u64
    }

    /// Every op committed at or after version `from`, in order.
    pub fn ops_since(&self, from: u64) -> Result<impl Iterator<Item = &Arc<LoggedOp>>, SequenceError> {
        if from > self.version {
            return Err(SequenceError::VersionNewer { v: from, current: self.version });
        }
        if from < self.oldest() {
            return Err(SequenceError::OpsNotFound { v: from, oldest: self.oldest() });
        }
        Ok(self.ops.iter().skip((from - self.oldest()) as usize))
    }

    /// ShareDB's submit: an op based on version `v` is transformed against every op committed
    /// since `v`, one logged op at a time, the committed op winning ties (`committed.transform
    /// (op, true)`, which is rich-text's `transform(op, committed, 'left')`: what the server
    /// and every client compute). Transform is not closed under compose, so the log is
    /// walked op by op rather than through one composed op.
    ///
    /// A `(src, seq)` already in the log since `v` is acknowledged, not applied again. A
    /// committed op always has a version at or after its base, so the scan finds every
    /// resubmission whose base is still kept; one whose base is older gets `OpsNotFound`,
    /// which is just as safe (the client fetches the text, its op already in it).
    pub fn prepare(&self, v: u64, src: &str, seq: u64, op: Delta) -> Result<Prepared, SequenceError> {
        let since = self.ops_since(v)?;
        let mut op = op;
        for logged in since {
            if &*logged.src == src && logged.seq == seq && src != YJS_SRC {
                return Ok(Prepared::AlreadySubmitted { v: logged.v });
            }
            op = logged.op.transform(&op, true);
        }
        Ok(Prepared::Apply(op))
    }

    /// Logs an op applied at the current version and moves to the next.
    pub fn commit(&mut self, src: Arc<str>, seq: u64, op: Delta) -> Arc<LoggedOp> {
        let logged = Arc::new(LoggedOp { v: self.version, src, seq, op });
        self.ops.push_back(logged.clone());
        self.version += 1;
        self.trim();
        logged
    }

    fn trim(&mut self) {
        while self.ops.len() > self.ops_max {
            self.ops.pop_front();
        }
    }

    /// The oldest version the store must keep ops from, after the last commit.
    pub fn keep_from(&self) -> u64 {
        self.oldest()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ins(at: u64, s: &str) -> Delta {
        let mut d = Delta::new();
        d.retain(at, None).insert_text(s, None);
        d
    }

    #[test]
    fn a_fresh_op_applies_unchanged_and_bumps_the_version() {
        let mut s = Sequencer::new("e".into(), FIRST_VERSION, Vec::new(), 10);
        let op = ins(0, "hi");
        assert_eq!(s.prepare(1, "a", 1, op.clone()), Ok(Prepared::Apply(op.clone())));
        let logged = s.commit("a".into(), 1, op);
        assert_eq!((logged.v, s.version()), (1, 2));
    }

    #[test]
    fn a_stale_op_is_transformed_against_each_committed_op_with_committed_winning_ties() {
        let mut s = Sequencer::new("e".into(), 1, Vec::new(), 10);
        s.commit("a".into(), 1, ins(0, "A"));
        s.commit("yjs".into(), 7, ins(1, "B"));
        // Based on version 1, "C" at 0 ties with "A" (committed wins: "AC"), then ties with
        // "B" at 1 (committed wins again: "ABC").
        match s.prepare(1, "b", 1, ins(0, "C")).unwrap() {
            Prepared::Apply(op) => assert_eq!(op, ins(2, "C")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_resubmitted_op_is_acknowledged_not_applied_twice() {
        let mut s = Sequencer::new("e".into(), 1, Vec::new(), 10);
        s.commit("a".into(), 1, ins(0, "A"));
        s.commit("b".into(), 1, ins(0, "B"));
        assert_eq!(s.prepare(1, "b", 1, ins(0, "B")), Ok(Prepared::AlreadySubmitted { v: 2 }));
        // The same seq from another client is a different op.
        assert!(matches!(s.prepare(1, "c", 1, ins(0, "B")), Ok(Prepared::Apply(_))));
    }

    #[test]
    fn versions_newer_than_current_or_older_than_the_log_are_refused() {
        let mut s = Sequencer::new("e".into(), 1, Vec::new(), 2);
        for i in 0..5 {
            s.commit("a".into(), i, ins(0, "x"));
        }
        assert_eq!(s.version(), 6);
        assert_eq!(s.oldest(), 4);
        assert_eq!(s.prepare(7, "b", 1, ins(0, "y")), Err(SequenceError::VersionNewer { v: 7, current: 6 }));
        assert_eq!(s.prepare(3, "b", 1, ins(0, "y")), Err(SequenceError::OpsNotFound { v: 3, oldest: 4 }));
        assert!(s.prepare(4, "b", 1, ins(0, "y")).is_ok());
        assert_eq!(s.ops_since(6).unwrap().count(), 0);
    }

    #[test]
    fn a_reloaded_sequencer_continues_from_its_stored_ops() {
        let ops = vec![
            LoggedOp { v: 5, src: "a".into(), seq: 1, op: ins(0, "x") },
            LoggedOp { v: 6, src: "a".into(), seq: 2, op: ins(0, "y") },
        ];
        let s = Sequencer::new("e".into(), 7, ops, 10);
        assert_eq!((s.oldest(), s.version()), (5, 7));
        assert_eq!(s.prepare(5, "a", 2, ins(0, "y")), Ok(Prepared::AlreadySubmitted { v: 6 }));
    }
}
