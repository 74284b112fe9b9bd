//! The REST API (SPEC §5 mirror and §6): request in, `Reply` out; `http` routes `/api/…`
//! here and knows nothing of what it does. Same auth as the WebSockets. Errors are
//! `ApiError`s, answered as `{"error": {"code", "message"}}`: ShareDB's codes for the OT
//! routes, and short upper-case codes for the others.
//!
//! `{name}` and `{text}` are single path segments, percent-encoded (a `/` in a document name
//! is `%2F`), as `encodeURIComponent` writes them.
//!
//! Routes (after `/api/`):
//! - `GET docs`, `GET stats`
//! - `GET|POST docs/{name}/update` (binary v1, `?sv=` base64 state vector, `?at=` seq),
//!   `GET docs/{name}/json[?at=]`, `GET docs/{name}/history[?after=&limit=]`,
//!   `GET docs/{name}/presence`, `DELETE docs/{name}`
//! - `GET|POST docs/{name}/texts/{text}`, `GET docs/{name}/texts/{text}/ops?from=v` (OT)

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use base64::Engine;
use serde_json::{json, Value};
use tokio::sync::oneshot;
use yrs::updates::decoder::Decode;
use yrs::{Doc, ReadTxn, StateVector, Transact, Update};

use crate::api_error::ApiError;
use crate::app::{now_unix, AppState};
use crate::auth::{Access, Identity};
use crate::docname::DocName;
use crate::document::{
    format_event_id, parse_event_id, ApplyRefusal, DocMsg, DocQuery, LockOp, OtKind, OtReply, OtReplyTo, OtRequest,
    StreamEvent,
};
use crate::locks::LockError;
use crate::ot::delta::{Component, Delta, Insert};
use crate::ot::error::OtError;
use crate::ot::sequencer::LoggedOp;
use crate::ot::sharedb::valid_src;
use crate::store::offline;

pub struct Request<'a> {
    pub method: &'a str,
    /// The path after `/api/`.
    pub path: &'a str,
    pub query: &'a HashMap<String, String>,
    pub token: Option<String>,
    pub content_type: Option<&'a str>,
    /// `Last-Event-ID`, for event streams.
    pub last_event_id: Option<&'a str>,
    pub body: &'a [u8],
}

pub enum Reply {
    Json(u16, Value),
    /// A binary Yjs update.
    Binary(Vec<u8>),
    /// Server-Sent Events (`http` adds the 30 s heartbeat).
    Events(EventStream),
}

pub type EventStream = std::pin::Pin<Box<dyn futures::Stream<Item = StreamEvent> + Send + Sync>>;

/// History pages are at most this long.
const HISTORY_PAGE_MAX: usize = 1000;

/// A parsed `/api/…` path. Public (hidden) only so the fuzz targets and the decoder
/// property tests can reach `parse_route`; nothing outside `rest` uses it.
#[doc(hidden)]
#[derive(Debug, PartialEq)]
pub enum Route {
    Docs,
    Stats,
    Doc(DocName),
    Update(DocName),
    Json(DocName),
    History(DocName),
    Presence(DocName),
    Events(DocName),
    ServerEvents,
    Locks(DocName),
    Lock { doc: DocName, key: DocName },
    Text { doc: DocName, text: DocName },
    Ops { doc: DocName, text: DocName },
}

/// A refused request.
#[doc(hidden)]
pub type Failure = ApiError;

fn bad_request(message: impl Into<String>) -> Failure {
    ApiError::BadRequest(message.into())
}

pub async fn handle(state: &AppState, req: Request<'_>) -> Reply {
    match handle_inner(state, req).await {
        Ok(Reply::Events(stream)) => {
            let guard = SseGuard::new();
            Reply::Events(Box::pin(futures::StreamExt::map(stream, move |e| {
                let _ = &guard;
                e
            })))
        }
        Ok(reply) => reply,
        Err(e) => {
            crate::metrics::METRICS.refused(&format!("http {} {}", e.status(), e.code()));
            Reply::Json(e.status(), e.body())
        }
    }
}

/// Counts an open event stream for the whole life of its response body.
struct SseGuard;

impl SseGuard {
    fn new() -> SseGuard {
        crate::metrics::METRICS.sse_streams.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        SseGuard
    }
}

impl Drop for SseGuard {
    fn drop(&mut self) {
        crate::metrics::METRICS.sse_streams.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

async fn handle_inner(state: &AppState, req: Request<'_>) -> Result<Reply, Failure> {
    let route = parse_route(req.path)?;
    let identity = state.auth.authenticate(req.token.as_deref(), now_unix()).map_err(ApiError::Unauthorized)?;
    let method = req.method;
    let not_allowed = || ApiError::MethodNotAllowed(method.to_owned());
    match route {
        Route::Docs if method == "GET" => list_documents(state, &identity).await,
        Route::Stats if method == "GET" => Ok(Reply::Json(200, stats(state))),
        Route::ServerEvents if method == "GET" => Ok(Reply::Events(server_events(state, identity.clone()))),
        Route::Docs | Route::Stats | Route::ServerEvents => Err(not_allowed()),
        Route::Events(doc) if method == "GET" => {
            require(&identity, &doc, Access::Read)?;
            doc_events(state, &doc, req.last_event_id).await
        }
        Route::Events(_) => Err(not_allowed()),
        Route::Locks(doc) if method == "GET" => {
            require(&identity, &doc, Access::Read)?;
            locks(state, &doc, &identity, LockOp::List).await
        }
        Route::Locks(_) => Err(not_allowed()),
        Route::Lock { doc, key } => {
            require(&identity, &doc, Access::Write)?;
            let key = key.as_arc().clone();
            let op = match method {
                "POST" => LockOp::Acquire { key, ttl_ms: lock_ttl_ms(req.query, req.body)? },
                "DELETE" => LockOp::Release { key },
                _ => return Err(not_allowed()),
            };
            locks(state, &doc, &identity, op).await
        }
        Route::Doc(doc) => {
            require(&identity, &doc, Access::Write)?;
            match method {
                "DELETE" => delete_document(state, &doc).await,
                _ => Err(not_allowed()),
            }
        }
        Route::Update(doc) => match method {
            "GET" => {
                require(&identity, &doc, Access::Read)?;
                get_update(state, &doc, req.query).await
            }
            "POST" => {
                require(&identity, &doc, Access::Write)?;
                post_update(state, &doc, &identity, req.content_type, req.body).await
            }
            _ => Err(not_allowed()),
        },
        Route::Json(doc) if method == "GET" => {
            require(&identity, &doc, Access::Read)?;
            let (_, bytes) = state_bytes(state, &doc, req.query, None).await?;
            let ydoc = doc_from(&bytes)?;
            Ok(Reply::Json(200, crate::render::doc_to_json(&ydoc)))
        }
        Route::History(doc) if method == "GET" => {
            require(&identity, &doc, Access::Read)?;
            history(state, &doc, req.query).await
        }
        Route::Presence(doc) if method == "GET" => {
            require(&identity, &doc, Access::Read)?;
            presence(state, &doc).await
        }
        Route::Json(_) | Route::History(_) | Route::Presence(_) => Err(not_allowed()),
        Route::Text { doc, text } | Route::Ops { doc, text } if identity.access(doc.as_str()).is_none() => {
            tracing::warn!(doc = %doc, text = %text, user = %identity.user, "rest: no grant for the document (403)");
            Err(OtError::Forbidden.into())
        }
        Route::Text { doc, text } => {
            let kind = match method {
                "GET" => OtKind::Fetch { from: None },
                "POST" => {
                    let submit =
                        parse_submit(req.body, &crate::app::ot_op_limits(&state.config)).map_err(ApiError::Ot)?;
                    let writable = identity.access(doc.as_str()) == Some(Access::Write);
                    OtKind::Submit { v: submit.v, src: submit.src, seq: submit.seq, op: submit.op, writable }
                }
                _ => return Err(not_allowed()),
            };
            ot_request(state, &identity, &doc, &text, kind).await
        }
        Route::Ops { doc, text } if method == "GET" => {
            let from = match req.query.get("from") {
                None => 0,
                Some(v) => v.parse().map_err(|_| OtError::BadMessage("from must be a version".into()))?,
            };
            ot_request(state, &identity, &doc, &text, OtKind::Fetch { from: Some(from) }).await
        }
        Route::Ops { .. } => Err(not_allowed()),
    }
}

fn require(identity: &Identity, doc: &DocName, need: Access) -> Result<(), Failure> {
    match identity.access(doc.as_str()) {
        Some(Access::Write) => Ok(()),
        Some(Access::Read) if need == Access::Read => Ok(()),
        Some(Access::Read) => {
            tracing::warn!(doc = %doc, user = %identity.user, "rest: write refused to a read grant (403)");
            Err(ApiError::ReadOnly)
        }
        None => {
            tracing::warn!(doc = %doc, user = %identity.user, "rest: no grant for the document (403)");
            Err(ApiError::NoGrant)
        }
    }
}

fn store_failure(e: impl std::fmt::Display) -> Failure {
    tracing::error!(error = %e, "rest: store request failed");
    ApiError::StoreUnavailable
}

async fn list_documents(state: &AppState, identity: &Identity) -> Result<Reply, Failure> {
    let docs = state.store.read(offline::documents).await.map_err(store_failure)?;
    let live = state.registry.attachments();
    let list: Vec<Value> = docs
        .into_iter()
        .filter(|d| identity.access(&d.name).is_some())
        .map(|d| {
            let connections = live.get(d.name.as_str()).copied().unwrap_or(0);
            json!({
                "name": d.name,
                "created_at": d.created_at,
                "updates": d.updates,
                "size": d.update_bytes + d.snapshot_bytes,
                "update_bytes": d.update_bytes,
                "snapshot_bytes": d.snapshot_bytes,
                "last_seq": d.last_seq,
                "last_change": d.last_change,
                "connections": connections,
            })
        })
        .collect();
    Ok(Reply::Json(200, json!({ "documents": list })))
}

fn stats(state: &AppState) -> Value {
    json!({
        "connections": state.sessions.live(),
        "documents_loaded": state.registry.live_documents(),
        "users_online": state.limiter.users_online(),
    })
}

/// The attachment a request holds while it talks to a document's actor.
async fn ask<T>(
    state: &AppState,
    doc: &DocName,
    make: impl FnOnce(crate::conn::ConnId, oneshot::Sender<T>) -> DocMsg,
) -> Result<T, Failure> {
    let conn = state.next_conn();
    let attachment = state.registry.attach(doc, conn).map_err(|_| ApiError::ShuttingDown)?;
    let (tx, rx) = oneshot::channel();
    attachment.handle.send(make(conn, tx)).await.map_err(|_| ApiError::DocumentUnavailable)?;
    let answer = rx.await.map_err(|_| ApiError::DocumentUnavailable)?;
    drop(attachment);
    Ok(answer)
}

/// The document's state as a v1 update: live (from its actor) or at `?at=` (from the
/// store: the nearest snapshot plus the log), as a diff against `sv` when given. Returns
/// the seq it is at (`None` for the live state).
async fn state_bytes(
    state: &AppState,
    doc: &DocName,
    query: &HashMap<String, String>,
    sv: Option<StateVector>,
) -> Result<(Option<u64>, Vec<u8>), Failure> {
    let Some(at) = query.get("at") else {
        let data = ask(state, doc, |_, reply| DocMsg::Query(DocQuery::State { sv, reply })).await?;
        return Ok((None, data));
    };
    let at: u64 = at.parse().map_err(|_| bad_request("at must be a seq"))?;
    let name = doc.as_str().to_owned();
    let stored = state.store.read(move |c| offline::state_at(c, &name, Some(at))).await.map_err(store_failure)?;
    let Some(stored) = stored else {
        return Err(ApiError::NoStateAt(at));
    };
    let ydoc = Doc::new();
    {
        let mut txn = ydoc.transact_mut();
        let pieces = stored.snapshot.iter().map(|(_, d)| d).chain(stored.updates.iter().map(|(_, d)| d));
        for data in pieces {
            let update = Update::decode_v1(data).map_err(store_failure)?;
            txn.apply_update(update).map_err(store_failure)?;
        }
    }
    let data = ydoc.transact().encode_state_as_update_v1(&sv.unwrap_or_default());
    Ok((Some(stored.seq), data))
}

fn doc_from(bytes: &[u8]) -> Result<Doc, Failure> {
    let doc = Doc::new();
    let update = Update::decode_v1(bytes).map_err(store_failure)?;
    doc.transact_mut().apply_update(update).map_err(store_failure)?;
    Ok(doc)
}

async fn get_update(state: &AppState, doc: &DocName, query: &HashMap<String, String>) -> Result<Reply, Failure> {
    let sv = query.get("sv").map(|b64| parse_sv(b64)).transpose()?;
    let (_, data) = state_bytes(state, doc, query, sv).await?;
    Ok(Reply::Binary(data))
}

/// `?sv=`: a v1 state vector in base64 (standard or URL-safe alphabet, padded).
#[doc(hidden)]
pub fn parse_sv(b64: &str) -> Result<StateVector, Failure> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .or_else(|_| base64::engine::general_purpose::URL_SAFE.decode(b64))
        .map_err(|_| bad_request("sv is not base64"))?;
    // As for a SyncStep1: refuse a declared count the bytes cannot hold before yrs reserves it.
    crate::protocol::declared_count_fits(&bytes, crate::protocol::STATE_VECTOR_ENTRY_BYTES_MIN)
        .map_err(|_| bad_request("sv is not a state vector"))?;
    StateVector::decode_v1(&bytes).map_err(|_| bad_request("sv is not a state vector"))
}

async fn post_update(
    state: &AppState,
    doc: &DocName,
    identity: &Identity,
    content_type: Option<&str>,
    body: &[u8],
) -> Result<Reply, Failure> {
    let binary = content_type.is_some_and(|t| {
        let t = t.split(';').next().unwrap_or("").trim();
        t.eq_ignore_ascii_case("application/octet-stream")
    });
    if !binary {
        return Err(ApiError::UnsupportedMediaType);
    }
    let limits = crate::validate::Limits { any_depth_max: state.config.update_depth_max };
    let checked = crate::protocol::check_update(body, &limits).map_err(|e| {
        tracing::warn!(doc = %doc, user = %identity.user, error = %e, "rest: update refused (400)");
        ApiError::UpdateInvalid(e.to_string())
    })?;
    let user = identity.user.clone();
    let result =
        ask(state, doc, |conn, reply| DocMsg::Query(DocQuery::Apply { conn, update: checked, user, reply })).await?;
    match result {
        Ok(seq) => Ok(Reply::Json(200, json!({ "seq": seq, "applied": seq.is_some() }))),
        Err(e @ ApplyRefusal::ShuttingDown) => Err(e.into()),
        Err(e) => {
            tracing::warn!(doc = %doc, user = %identity.user, error = %e, "rest: update refused (400)");
            Err(e.into())
        }
    }
}

async fn history(state: &AppState, doc: &DocName, query: &HashMap<String, String>) -> Result<Reply, Failure> {
    let after: u64 = query.get("after").map_or(Ok(0), |v| v.parse()).map_err(|_| bad_request("after must be a seq"))?;
    let limit: usize =
        query.get("limit").map_or(Ok(100), |v| v.parse()).map_err(|_| bad_request("limit must be a number"))?;
    let limit = limit.clamp(1, HISTORY_PAGE_MAX);
    let name = doc.as_str().to_owned();
    let rows = state
        .store
        .read(move |c| offline::log(c, &name, after + 1, Some(limit as u64)))
        .await
        .map_err(store_failure)?
        .ok_or_else(|| ApiError::NoSuchDocument(doc.to_string()))?;
    let next = (rows.len() == limit).then(|| rows.last().map(|r| r.seq)).flatten();
    let entries: Vec<Value> =
        rows.iter().map(|r| json!({"seq": r.seq, "time": r.created_at, "origin": r.origin, "size": r.bytes})).collect();
    Ok(Reply::Json(200, json!({ "entries": entries, "next_after": next })))
}

async fn presence(state: &AppState, doc: &DocName) -> Result<Reply, Failure> {
    let list = ask(state, doc, |_, reply| DocMsg::Query(DocQuery::Presence(reply))).await?;
    let now = Instant::now();
    let wall = |t: Instant| {
        let at = SystemTime::now() - now.saturating_duration_since(t);
        humantime::format_rfc3339_millis(at).to_string()
    };
    let clients: Vec<Value> = list
        .into_iter()
        .map(|p| {
            let state: Value = serde_json::from_str(&p.state).unwrap_or(Value::Null);
            json!({
                "client_id": p.client,
                "user": state.get("user").cloned().unwrap_or(Value::Null),
                "cursor": state.get("cursor").cloned().unwrap_or(Value::Null),
                "selection": state.get("selection").cloned().unwrap_or(Value::Null),
                "typing": state.get("typing").cloned().unwrap_or(Value::Null),
                "since": wall(p.since),
                "renewed_at": wall(p.renewed_at),
                "state": state,
            })
        })
        .collect();
    Ok(Reply::Json(200, json!({ "clients": clients })))
}

async fn doc_events(state: &AppState, doc: &DocName, last_event_id: Option<&str>) -> Result<Reply, Failure> {
    let last = last_event_id.and_then(parse_event_id);
    let conn = state.next_conn();
    // The stream holds its attachment: the document stays live while someone watches.
    let attachment = state.registry.attach(doc, conn).map_err(|_| ApiError::ShuttingDown)?;
    let (tx, rx) = oneshot::channel();
    let query = DocMsg::Query(DocQuery::Events { last_event_id: last, reply: tx });
    attachment.handle.send(query).await.map_err(|_| ApiError::DocumentUnavailable)?;
    let sub = rx.await.map_err(|_| ApiError::DocumentUnavailable)?;
    let mut replay = Vec::new();
    if let Some((after, upto)) = sub.replay_from_store {
        let name = doc.as_str().to_owned();
        let rows = state
            .store
            .read(move |c| offline::log(c, &name, after + 1, Some(upto.saturating_sub(after))))
            .await
            .map_err(store_failure)?
            .unwrap_or_default();
        for r in rows {
            let data =
                json!({"seq": r.seq, "origin": r.origin, "size": r.bytes, "time": r.created_at, "replayed": true});
            replay.push(StreamEvent { id: format_event_id(r.seq, 0), kind: "update", data: data.to_string() });
        }
    }
    let live = futures::stream::unfold((sub.live, attachment), |(mut rx, attachment)| async move {
        rx.recv().await.map(|e| ((*e).clone(), (rx, attachment)))
    });
    Ok(Reply::Events(Box::pin(futures::StreamExt::chain(futures::stream::iter(replay), live))))
}

fn server_events(state: &AppState, identity: Identity) -> EventStream {
    let rx = state.registry.events.subscribe();
    Box::pin(futures::stream::unfold((rx, identity), |(mut rx, identity)| async move {
        loop {
            match rx.recv().await {
                Ok(e) => {
                    // Only events about documents the reader may read (as `/api/docs`).
                    let v: Value = serde_json::from_str(&e.data).unwrap_or(Value::Null);
                    if v.get("doc").and_then(Value::as_str).is_some_and(|d| identity.access(d).is_none()) {
                        continue;
                    }
                    return Some(((*e).clone(), (rx, identity)));
                }
                Err(_) => return None,
            }
        }
    }))
}

/// Default lock lifetime, as the seeds' five-minute field locks; at most a day.
const LOCK_TTL_DEFAULT_MS: u64 = 5 * 60 * 1000;
pub const LOCK_TTL_MAX_MS: u64 = 24 * 3600 * 1000;

/// `?ttl=90s` (humantime) or a JSON body `{"ttl_ms": 90000}`; default five minutes.
#[doc(hidden)]
pub fn lock_ttl_ms(query: &HashMap<String, String>, body: &[u8]) -> Result<u64, Failure> {
    let ttl = if let Some(t) = query.get("ttl") {
        humantime::parse_duration(t).map_err(|_| bad_request("ttl must be a duration like 90s or 5m"))?.as_millis()
            as u64
    } else if !body.iter().all(u8::is_ascii_whitespace) {
        let v: Value = serde_json::from_slice(body).map_err(|_| bad_request("body must be JSON {\"ttl_ms\": n}"))?;
        match v.get("ttl_ms") {
            None => LOCK_TTL_DEFAULT_MS,
            Some(n) => n.as_u64().ok_or_else(|| bad_request("ttl_ms must be a positive integer"))?,
        }
    } else {
        LOCK_TTL_DEFAULT_MS
    };
    if ttl == 0 || ttl > LOCK_TTL_MAX_MS {
        return Err(bad_request(format!("ttl must be between 1 ms and {} ms", LOCK_TTL_MAX_MS)));
    }
    Ok(ttl)
}

async fn locks(state: &AppState, doc: &DocName, identity: &Identity, op: LockOp) -> Result<Reply, Failure> {
    let listing = matches!(op, LockOp::List);
    let user = identity.user.clone();
    let result = ask(state, doc, |_, reply| DocMsg::Query(DocQuery::Lock { op, user, reply })).await?;
    let lock_json = |l: &crate::locks::Lock| json!({"key": &*l.key, "holder": &*l.holder, "expires_at": crate::document::format_ms(l.expires_at_ms), "expires_at_ms": l.expires_at_ms});
    match result {
        Ok(locks) if listing => Ok(Reply::Json(200, json!({"locks": locks.iter().map(lock_json).collect::<Vec<_>>()}))),
        Ok(locks) => Ok(Reply::Json(200, locks.first().map(lock_json).unwrap_or(Value::Null))),
        // Answered here rather than by `handle`: a held lock is not counted as a refusal.
        Err(e @ LockError::Held { .. }) => {
            let e = ApiError::Lock(e);
            Ok(Reply::Json(e.status(), e.body()))
        }
        Err(e @ LockError::NotLocked { .. }) => Err(e.into()),
    }
}

async fn delete_document(state: &AppState, doc: &DocName) -> Result<Reply, Failure> {
    let existed = ask(state, doc, |_, reply| DocMsg::Query(DocQuery::Delete(reply))).await?.map_err(store_failure)?;
    if !existed {
        return Err(ApiError::NoSuchDocument(doc.to_string()));
    }
    Ok(Reply::Json(200, json!({ "deleted": doc.as_str() })))
}

async fn ot_request(
    state: &AppState,
    identity: &Identity,
    doc: &DocName,
    text: &DocName,
    kind: OtKind,
) -> Result<Reply, Failure> {
    let user = identity.user.clone();
    let text = text.as_arc().clone();
    let reply =
        ask(state, doc, |conn, tx| DocMsg::Ot(OtRequest { conn, user, text, kind, reply: OtReplyTo::Rest(tx) }))
            .await?;
    let json = match reply? {
        OtReply::Snapshot { v, epoch, data } => {
            json!({"v": v, "epoch": &*epoch, "ops": data.to_json(), "text": plain_text(&data)})
        }
        OtReply::Ops { v, epoch, ops } => json!({"v": v, "epoch": &*epoch, "ops": logged_json(&ops)}),
        OtReply::Submitted { v, epoch, missed, .. } => json!({"v": v, "epoch": &*epoch, "ops": logged_json(&missed)}),
        OtReply::Unsubscribed => json!({}),
    };
    Ok(Reply::Json(200, json))
}

#[doc(hidden)]
pub fn parse_route(path: &str) -> Result<Route, Failure> {
    let not_found = || ApiError::NoSuchResource(path.to_owned());
    let segments: Vec<&str> = path.trim_end_matches('/').split('/').collect();
    let name = |s: &str| -> Result<DocName, Failure> {
        let decoded = percent_encoding::percent_decode_str(s)
            .decode_utf8()
            .map_err(|_| OtError::BadMessage("name is not UTF-8".into()))?;
        DocName::new(&decoded).map_err(|e| OtError::BadMessage(e.to_string()).into())
    };
    match segments.as_slice() {
        ["docs"] => Ok(Route::Docs),
        ["stats"] => Ok(Route::Stats),
        ["events"] => Ok(Route::ServerEvents),
        ["docs", doc, "events"] => Ok(Route::Events(name(doc)?)),
        ["docs", doc, "locks"] => Ok(Route::Locks(name(doc)?)),
        ["docs", doc, "locks", key] => Ok(Route::Lock { doc: name(doc)?, key: name(key)? }),
        ["docs", doc] => Ok(Route::Doc(name(doc)?)),
        ["docs", doc, "update"] => Ok(Route::Update(name(doc)?)),
        ["docs", doc, "json"] => Ok(Route::Json(name(doc)?)),
        ["docs", doc, "history"] => Ok(Route::History(name(doc)?)),
        ["docs", doc, "presence"] => Ok(Route::Presence(name(doc)?)),
        ["docs", doc, "texts", text] => Ok(Route::Text { doc: name(doc)?, text: name(text)? }),
        ["docs", doc, "texts", text, "ops"] => Ok(Route::Ops { doc: name(doc)?, text: name(text)? }),
        _ => Err(not_found()),
    }
}

/// A parsed OT submit body (`POST docs/{name}/texts/{text}`).
#[doc(hidden)]
#[derive(Debug)]
pub struct Submit {
    pub v: Option<u64>,
    pub src: Arc<str>,
    pub seq: u64,
    pub op: Delta,
}

#[doc(hidden)]
pub fn parse_submit(body: &[u8], limits: &crate::ot::delta::DeltaLimits) -> Result<Submit, OtError> {
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
