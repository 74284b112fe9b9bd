//! The REST mirror of the OT layer (SPEC §5): `GET/POST /api/docs/{name}/texts/{text}` and
//! `GET /api/docs/{name}/texts/{text}/ops?from=v`. Request in, `(status, JSON)` out; `http`
//! routes to it and knows nothing of what it does. Same auth as the WebSockets; errors are
//! `{"error": {"code", "message"}}` with ShareDB's codes.
//!
//! `{name}` and `{text}` are single path segments, percent-encoded (a `/` in a document name
//! is `%2F`), as `encodeURIComponent` writes them.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::{json, Value};
use tokio::sync::oneshot;

use crate::auth::Access;
use crate::docname::DocName;
use crate::document::{DocMsg, OtKind, OtReply, OtReplyTo, OtRequest};
use crate::http::{now_unix, AppState};
use crate::ot::delta::{Component, Delta, Insert};
use crate::ot::error::OtError;
use crate::ot::sequencer::LoggedOp;
use crate::ot::sharedb::valid_src;

pub struct Request<'a> {
    pub method: &'a str,
    /// The path after `/api/docs/`.
    pub path: &'a str,
    pub query: &'a HashMap<String, String>,
    pub token: Option<String>,
    pub body: &'a [u8],
}

enum Route {
    Text { doc: DocName, text: DocName },
    Ops { doc: DocName, text: DocName },
}

pub async fn handle(state: &AppState, req: Request<'_>) -> (u16, Value) {
    match handle_inner(state, req).await {
        Ok(v) => (200, v),
        Err((status, code, message)) => (status, json!({"error": {"code": code, "message": message}})),
    }
}

type Failure = (u16, &'static str, String);

fn failure(e: OtError) -> Failure {
    (e.status(), e.code(), e.to_string())
}

async fn handle_inner(state: &AppState, req: Request<'_>) -> Result<Value, Failure> {
    let route = parse_route(req.path)?;
    let identity = state
        .auth
        .authenticate(req.token.as_deref(), now_unix())
        .map_err(|e| (401, "ERR_UNAUTHORIZED", e.to_string()))?;
    let (doc, text) = match &route {
        Route::Text { doc, text } | Route::Ops { doc, text } => (doc.clone(), text.clone()),
    };
    let access = identity.access(doc.as_str());
    let Some(access) = access else {
        tracing::warn!(doc = %doc, user = %identity.user, "rest: no grant for the document (403)");
        return Err(failure(OtError::Forbidden));
    };
    let kind = match (&route, req.method) {
        (Route::Text { .. }, "GET") => OtKind::Fetch { from: None },
        (Route::Ops { .. }, "GET") => {
            let from = match req.query.get("from") {
                None => 0,
                Some(v) => v.parse().map_err(|_| failure(OtError::BadMessage("from must be a version".into())))?,
            };
            OtKind::Fetch { from: Some(from) }
        }
        (Route::Text { .. }, "POST") => {
            let submit = parse_submit(req.body, &state.config.ot_op_limits()).map_err(failure)?;
            OtKind::Submit {
                v: submit.v,
                src: submit.src,
                seq: submit.seq,
                op: submit.op,
                writable: access == Access::Write,
            }
        }
        _ => return Err((405, "ERR_METHOD_NOT_ALLOWED", format!("{} is not allowed here", req.method))),
    };
    let conn = state.next_conn();
    let attachment = state.registry.attach(&doc, conn).map_err(|_| failure(OtError::Unavailable))?;
    let (tx, rx) = oneshot::channel();
    let request =
        OtRequest { conn, user: identity.user.clone(), text: text.as_arc().clone(), kind, reply: OtReplyTo::Rest(tx) };
    attachment.handle.send(DocMsg::Ot(request)).await.map_err(|_| failure(OtError::Unavailable))?;
    let reply = rx.await.map_err(|_| failure(OtError::Unavailable))?;
    drop(attachment);
    match reply.map_err(failure)? {
        OtReply::Snapshot { v, epoch, data } => {
            Ok(json!({"v": v, "epoch": &*epoch, "ops": data.to_json(), "text": plain_text(&data)}))
        }
        OtReply::Ops { v, epoch, ops } => Ok(json!({"v": v, "epoch": &*epoch, "ops": logged_json(&ops)})),
        OtReply::Submitted { v, epoch, missed, .. } => {
            Ok(json!({"v": v, "epoch": &*epoch, "ops": logged_json(&missed)}))
        }
        OtReply::Unsubscribed => Ok(json!({})),
    }
}

fn parse_route(path: &str) -> Result<Route, Failure> {
    let not_found = || (404, "ERR_NOT_FOUND", format!("no such resource: /api/docs/{path}"));
    let segments: Vec<&str> = path.split('/').collect();
    let decode = |s: &str| -> Result<DocName, Failure> {
        let decoded = percent_encoding::percent_decode_str(s)
            .decode_utf8()
            .map_err(|_| failure(OtError::BadMessage("name is not UTF-8".into())))?;
        DocName::new(&decoded).map_err(|e| failure(OtError::BadMessage(e.to_string())))
    };
    match segments.as_slice() {
        [doc, "texts", text] => Ok(Route::Text { doc: decode(doc)?, text: decode(text)? }),
        [doc, "texts", text, "ops"] => Ok(Route::Ops { doc: decode(doc)?, text: decode(text)? }),
        _ => Err(not_found()),
    }
}

struct Submit {
    v: Option<u64>,
    src: Arc<str>,
    seq: u64,
    op: Delta,
}

fn parse_submit(body: &[u8], limits: &crate::ot::delta::DeltaLimits) -> Result<Submit, OtError> {
    let bad = |why: &str| OtError::BadMessage(why.to_string());
    let value: Value = serde_json::from_slice(body).map_err(|e| bad(&format!("body is not JSON: {e}")))?;
    let v = match value.get("v") {
        None | Some(Value::Null) => None,
        Some(v) => Some(v.as_u64().ok_or_else(|| bad("v must be a version"))?),
    };
    let src = value
        .get("src")
        .and_then(Value::as_str)
        .filter(|s| valid_src(s))
        .ok_or_else(|| bad("src must be a client id"))?;
    let seq = value.get("seq").and_then(Value::as_u64).ok_or_else(|| bad("seq must be a non-negative integer"))?;
    let op = Delta::from_json(value.get("op").ok_or_else(|| bad("op is missing"))?, limits)?;
    Ok(Submit { v, src: src.into(), seq, op })
}

fn logged_json(ops: &[Arc<LoggedOp>]) -> Value {
    Value::Array(ops.iter().map(|o| json!({"v": o.v, "src": &*o.src, "seq": o.seq, "op": o.op.to_json()})).collect())
}

/// The text without its embeds (those are in `ops`).
fn plain_text(doc: &Delta) -> String {
    doc.ops()
        .iter()
        .filter_map(|c| match c {
            Component::Insert { insert: Insert::Text(s), .. } => Some(s.as_str()),
            _ => None,
        })
        .collect()
}
