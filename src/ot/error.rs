//! Errors of the OT layer, each with its ShareDB error code (what the stock client switches
//! on) and the HTTP status of the REST mirror. The one place those mappings live.

use crate::ot::delta::DeltaError;
use crate::ot::sequencer::SequenceError;

#[derive(Debug, PartialEq, thiserror::Error)]
pub enum OtError {
    #[error("badly formed message: {0}")]
    BadMessage(String),
    #[error("badly formed op: {0}")]
    BadOp(#[from] DeltaError),
    #[error(transparent)]
    Sequence(#[from] SequenceError),
    #[error("op is longer than the text (it spans {base_len} units, the text has {text_len})")]
    OpTooLong { base_len: u64, text_len: u64 },
    #[error("op boundary at {at} splits a surrogate pair")]
    SurrogateSplit { at: u64 },
    #[error("root '{root}' is a {found}, not a Y.Text")]
    WrongRootType { root: String, found: &'static str },
    #[error("texts cannot be created or deleted through OT (every root text exists, empty until written)")]
    CreateOrDelete,
    #[error("the text is locked by {holder}")]
    Locked { holder: String },
    #[error("read-only access: ops are not accepted")]
    ReadOnly,
    #[error("no access to this document")]
    Forbidden,
    #[error("document unavailable")]
    Unavailable,
    #[error("type does not support presence: {0}")]
    PresenceType(String),
}

impl OtError {
    /// ShareDB's error code for this error.
    pub fn code(&self) -> &'static str {
        match self {
            OtError::BadMessage(_) => "ERR_MESSAGE_BADLY_FORMED",
            OtError::BadOp(_) => "ERR_OT_OP_BADLY_FORMED",
            OtError::Sequence(SequenceError::VersionNewer { .. }) => "ERR_OP_VERSION_NEWER_THAN_CURRENT_SNAPSHOT",
            OtError::Sequence(SequenceError::OpsNotFound { .. }) => "ERR_SUBMIT_TRANSFORM_OPS_NOT_FOUND",
            OtError::OpTooLong { .. } | OtError::SurrogateSplit { .. } => "ERR_OT_OP_NOT_APPLIED",
            OtError::WrongRootType { .. } => "ERR_DOC_TYPE_NOT_RECOGNIZED",
            OtError::CreateOrDelete => "ERR_DOC_ALREADY_CREATED",
            OtError::ReadOnly | OtError::Locked { .. } => "ERR_OP_SUBMIT_REJECTED",
            OtError::Forbidden => "ERR_SNAPSHOT_READS_REJECTED",
            OtError::Unavailable => "ERR_UNKNOWN_ERROR",
            OtError::PresenceType(_) => "ERR_TYPE_DOES_NOT_SUPPORT_PRESENCE",
        }
    }

    /// The REST mirror's status for this error.
    pub fn status(&self) -> u16 {
        match self {
            OtError::BadMessage(_) | OtError::BadOp(_) | OtError::PresenceType(_) => 400,
            OtError::Sequence(SequenceError::VersionNewer { .. }) => 400,
            OtError::Sequence(SequenceError::OpsNotFound { .. }) => 409,
            OtError::OpTooLong { .. } | OtError::SurrogateSplit { .. } => 422,
            OtError::WrongRootType { .. } => 409,
            OtError::CreateOrDelete => 409,
            OtError::ReadOnly | OtError::Forbidden => 403,
            OtError::Locked { .. } => 423,
            OtError::Unavailable => 503,
        }
    }
}
