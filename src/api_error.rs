//! Everything the HTTP and WebSocket-upgrade surface refuses, with its one status, one
//! machine code and one message: the REST API answers `{"error": {"code", "message"}}`
//! (`rest`), a refused upgrade answers the status and the message as plain text (`http`).
//! The one place those mappings live; `CODES` is the list `client-sdk/src/wire.ts` mirrors
//! (a test compares them). The OT layer's errors keep their ShareDB codes (`ot::error`).

use crate::auth::AuthError;
use crate::docname::DocNameError;
use crate::document::ApplyRefusal;
use crate::limits::ConnRefusal;
use crate::locks::LockError;
use crate::ot::error::OtError;

/// The `WWW-Authenticate` value sent with every 401.
pub const WWW_AUTHENTICATE: &str = "Bearer realm=\"yserve\", error=\"invalid_token\"";

/// Seconds a client should wait after a connection cap refused it (`Retry-After`).
const RETRY_AFTER_SECS: u64 = 5;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A bad query parameter or body (the message says which).
    #[error("{0}")]
    BadRequest(String),
    /// A posted update that failed validation.
    #[error("update refused: {0}")]
    UpdateInvalid(String),
    /// A posted update the document would not apply, or the server going down meanwhile.
    #[error(transparent)]
    Apply(#[from] ApplyRefusal),
    /// A WebSocket upgrade to a path that is not a valid document name.
    #[error("invalid document name: {0}")]
    InvalidDocumentPath(#[from] DocNameError),
    #[error("unsupported websocket version (need 13)")]
    WebSocketVersion,
    #[error("missing sec-websocket-key")]
    WebSocketKeyMissing,
    #[error("connection cannot be upgraded")]
    NotUpgradable,
    #[error(transparent)]
    Unauthorized(#[from] AuthError),
    #[error("origin not allowed")]
    OriginNotAllowed,
    #[error("read-only access to this document")]
    ReadOnly,
    #[error("no grant for this document")]
    NoGrant,
    #[error("no such resource: /api/{0}")]
    NoSuchResource(String),
    #[error("no document named {0}")]
    NoSuchDocument(String),
    #[error("no stored state at seq {0} (no such document, seq beyond its log, or history pruned)")]
    NoStateAt(u64),
    /// A held lock (409; the body also says who holds it) or releasing a free one (404).
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error("{0} is not allowed here")]
    MethodNotAllowed(String),
    #[error("the body is larger than {0} bytes (--message-bytes-max)")]
    PayloadTooLarge(u64),
    #[error("send a binary Yjs v1 update as application/octet-stream")]
    UnsupportedMediaType,
    /// A per-user (429) or global (503) connection cap.
    #[error(transparent)]
    ConnectionCap(#[from] ConnRefusal),
    #[error("the store is unavailable")]
    StoreUnavailable,
    #[error("server shutting down")]
    ShuttingDown,
    #[error("document unavailable")]
    DocumentUnavailable,
    /// The OT layer's refusals, with their ShareDB codes (also every invalid name in a REST path).
    #[error(transparent)]
    Ot(#[from] OtError),
}

/// Every code an `ApiError` can have, as `client-sdk/src/wire.ts` lists them
/// (`RestErrorCode` then `OtErrorCode`).
pub const CODES: &[&str] = &[
    "BAD_REQUEST",
    "UNAUTHORIZED",
    "FORBIDDEN",
    "NOT_FOUND",
    "NOT_LOCKED",
    "METHOD_NOT_ALLOWED",
    "LOCKED",
    "PAYLOAD_TOO_LARGE",
    "UNSUPPORTED_MEDIA_TYPE",
    "TOO_MANY_CONNECTIONS",
    "UNAVAILABLE",
    "ERR_MESSAGE_BADLY_FORMED",
    "ERR_OT_OP_BADLY_FORMED",
    "ERR_OP_VERSION_NEWER_THAN_CURRENT_SNAPSHOT",
    "ERR_SUBMIT_TRANSFORM_OPS_NOT_FOUND",
    "ERR_DOC_TYPE_NOT_RECOGNIZED",
    "ERR_DOC_ALREADY_CREATED",
    "ERR_OT_OP_NOT_APPLIED",
    "ERR_OP_SUBMIT_REJECTED",
    "ERR_SNAPSHOT_READS_REJECTED",
    "ERR_UNKNOWN_ERROR",
    "ERR_TYPE_DOES_NOT_SUPPORT_PRESENCE",
];

impl ApiError {
    pub fn status(&self) -> u16 {
        match self {
            ApiError::BadRequest(_)
            | ApiError::UpdateInvalid(_)
            | ApiError::InvalidDocumentPath(_)
            | ApiError::WebSocketVersion
            | ApiError::WebSocketKeyMissing
            | ApiError::NotUpgradable => 400,
            ApiError::Apply(ApplyRefusal::ShuttingDown) => 503,
            ApiError::Apply(_) => 400,
            ApiError::Unauthorized(_) => 401,
            ApiError::OriginNotAllowed | ApiError::ReadOnly | ApiError::NoGrant => 403,
            ApiError::NoSuchResource(_) | ApiError::NoSuchDocument(_) | ApiError::NoStateAt(_) => 404,
            ApiError::Lock(LockError::NotLocked { .. }) => 404,
            ApiError::Lock(LockError::Held { .. }) => 409,
            ApiError::MethodNotAllowed(_) => 405,
            ApiError::PayloadTooLarge(_) => 413,
            ApiError::UnsupportedMediaType => 415,
            ApiError::ConnectionCap(ConnRefusal::PerUser) => 429,
            ApiError::ConnectionCap(ConnRefusal::Global) => 503,
            ApiError::StoreUnavailable | ApiError::ShuttingDown | ApiError::DocumentUnavailable => 503,
            ApiError::Ot(e) => e.status(),
        }
    }

    /// The machine code (one of `CODES`). A refused upgrade does not send it.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::BadRequest(_)
            | ApiError::UpdateInvalid(_)
            | ApiError::WebSocketVersion
            | ApiError::WebSocketKeyMissing
            | ApiError::NotUpgradable => "BAD_REQUEST",
            ApiError::Apply(ApplyRefusal::ShuttingDown) => "UNAVAILABLE",
            ApiError::Apply(_) => "BAD_REQUEST",
            // As an invalid name in a REST path.
            ApiError::InvalidDocumentPath(_) => "ERR_MESSAGE_BADLY_FORMED",
            ApiError::Unauthorized(_) => "UNAUTHORIZED",
            ApiError::OriginNotAllowed | ApiError::ReadOnly | ApiError::NoGrant => "FORBIDDEN",
            ApiError::NoSuchResource(_) | ApiError::NoSuchDocument(_) | ApiError::NoStateAt(_) => "NOT_FOUND",
            ApiError::Lock(LockError::NotLocked { .. }) => "NOT_LOCKED",
            ApiError::Lock(LockError::Held { .. }) => "LOCKED",
            ApiError::MethodNotAllowed(_) => "METHOD_NOT_ALLOWED",
            ApiError::PayloadTooLarge(_) => "PAYLOAD_TOO_LARGE",
            ApiError::UnsupportedMediaType => "UNSUPPORTED_MEDIA_TYPE",
            ApiError::ConnectionCap(ConnRefusal::PerUser) => "TOO_MANY_CONNECTIONS",
            ApiError::ConnectionCap(ConnRefusal::Global) => "UNAVAILABLE",
            ApiError::StoreUnavailable | ApiError::ShuttingDown | ApiError::DocumentUnavailable => "UNAVAILABLE",
            ApiError::Ot(e) => e.code(),
        }
    }

    pub fn message(&self) -> String {
        self.to_string()
    }

    /// `Retry-After` seconds, for the connection caps.
    pub fn retry_after(&self) -> Option<u64> {
        matches!(self, ApiError::ConnectionCap(_)).then_some(RETRY_AFTER_SECS)
    }

    /// The REST body: `{"error": {"code", "message"}}`, plus who holds a held lock.
    pub fn body(&self) -> serde_json::Value {
        let mut body = serde_json::json!({"error": {"code": self.code(), "message": self.message()}});
        if let ApiError::Lock(LockError::Held { holder, expires_at_ms, .. }) = self {
            body["holder"] = serde_json::Value::from(&**holder);
            body["expires_at"] = serde_json::Value::from(crate::document::format_ms(*expires_at_ms));
        }
        body
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The quoted codes of a `export type NAME = | 'A' // … | 'B'` union in `wire.ts`.
    fn union_codes<'a>(wire: &'a str, name: &str) -> Vec<&'a str> {
        let start = wire.find(&format!("export type {name} =")).unwrap_or_else(|| panic!("no {name} in wire.ts"));
        wire[start..]
            .lines()
            .skip(1)
            .map_while(|l| l.trim().strip_prefix("| '"))
            .map(|l| l.split('\'').next().expect("a quoted code"))
            .collect()
    }

    #[test]
    fn codes_agree_with_the_sdk() {
        let wire = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/client-sdk/src/wire.ts"))
            .expect("client-sdk/src/wire.ts");
        let mut sdk = union_codes(&wire, "RestErrorCode");
        sdk.extend(union_codes(&wire, "OtErrorCode"));
        assert_eq!(sdk, CODES, "client-sdk/src/wire.ts lists other codes than api_error::CODES");
    }

    #[test]
    fn every_code_is_listed() {
        use crate::ot::delta::DeltaError;
        use crate::ot::sequencer::SequenceError;
        let held = LockError::Held { key: "k".into(), holder: "alice".into(), expires_at_ms: 0 };
        let errors = [
            ApiError::BadRequest("x".into()),
            ApiError::UpdateInvalid("x".into()),
            ApiError::Apply(ApplyRefusal::Refused),
            ApiError::Apply(ApplyRefusal::ShuttingDown),
            ApiError::InvalidDocumentPath(DocNameError::Empty),
            ApiError::WebSocketVersion,
            ApiError::WebSocketKeyMissing,
            ApiError::NotUpgradable,
            ApiError::Unauthorized(AuthError::Missing),
            ApiError::OriginNotAllowed,
            ApiError::ReadOnly,
            ApiError::NoGrant,
            ApiError::NoSuchResource("x".into()),
            ApiError::NoSuchDocument("x".into()),
            ApiError::NoStateAt(1),
            ApiError::Lock(held),
            ApiError::Lock(LockError::NotLocked { key: "k".into() }),
            ApiError::MethodNotAllowed("PUT".into()),
            ApiError::PayloadTooLarge(1),
            ApiError::UnsupportedMediaType,
            ApiError::ConnectionCap(ConnRefusal::PerUser),
            ApiError::ConnectionCap(ConnRefusal::Global),
            ApiError::StoreUnavailable,
            ApiError::ShuttingDown,
            ApiError::DocumentUnavailable,
            ApiError::Ot(OtError::BadMessage("x".into())),
            ApiError::Ot(OtError::BadOp(DeltaError::NotAnOp)),
            ApiError::Ot(OtError::Sequence(SequenceError::VersionNewer { v: 2, current: 1 })),
            ApiError::Ot(OtError::Sequence(SequenceError::OpsNotFound { v: 0, oldest: 1 })),
            ApiError::Ot(OtError::OpTooLong { base_len: 2, text_len: 1 }),
            ApiError::Ot(OtError::WrongRootType { root: "r".into(), found: "map" }),
            ApiError::Ot(OtError::CreateOrDelete),
            ApiError::Ot(OtError::ReadOnly),
            ApiError::Ot(OtError::Forbidden),
            ApiError::Ot(OtError::Unavailable),
            ApiError::Ot(OtError::PresenceType("x".into())),
        ];
        for e in &errors {
            assert!(CODES.contains(&e.code()), "{e:?}: {} is not in CODES", e.code());
        }
        for code in CODES {
            assert!(errors.iter().any(|e| e.code() == *code), "{code} has no ApiError");
        }
    }
}
