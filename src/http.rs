//! HTTP routes and the WebSocket upgrade. The only module that knows warp.
//!
//! Document connections are upgraded here rather than with `warp::ws()`: warp builds its
//! tokio-tungstenite stream with the default 128 KiB read buffer per connection and offers no
//! way to change it, so this module answers the handshake itself (RFC 6455 §4.2.2), takes
//! hyper's `OnUpgrade` from the request and builds the stream with our `WebSocketConfig`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::WebSocketStream;
use tracing::Instrument;
use warp::http::{header, HeaderMap, Response, StatusCode};
use warp::hyper::body::Bytes;
use warp::{Filter, Rejection, Reply};

use crate::api_error::{self, ApiError};
use crate::app::{now_unix, AppState};
use crate::config::Config;
use crate::docname::DocName;
use crate::limits::key_for;
use crate::outbox::{self, Opcode};
use crate::rest;
use crate::session;
use crate::session::hocuspocus::HocuspocusParams;
use crate::session::ot::OtSessionParams;
use crate::session::yjs::SessionParams;

/// The WebSocket settings of every upgraded connection.
fn ws_config(config: &Config) -> WebSocketConfig {
    let max = config.message_bytes_max;
    WebSocketConfig::default()
        .read_buffer_size(config.ws_read_buffer_bytes)
        // 0: write each message straight through instead of gathering 128 KiB first.
        .write_buffer_size(0)
        .max_message_size(Some(max))
        .max_frame_size(Some(max))
}

pub fn routes(state: Arc<AppState>) -> impl Filter<Extract = (impl Reply,), Error = Rejection> + Clone {
    let state_for_rest = state.clone();
    let healthz = warp::path!("healthz").and(warp::get()).map(|| "ok\n");
    let metrics_state = state.clone();
    // Open, like /healthz: scrape it from inside the network (say so in the README).
    let metrics = warp::path!("metrics").and(warp::get()).map(move || {
        let s = &metrics_state;
        let body = crate::metrics::METRICS.render(&crate::metrics::Gauges {
            connections: s.sessions.live(),
            documents_loaded: s.registry.live_documents(),
            users_online: s.limiter.users_online(),
        });
        warp::reply::with_header(body, header::CONTENT_TYPE, "text/plain; version=0.0.4")
    });
    let doc_ws = warp::get()
        .and(warp::path::full())
        .and(warp::query::<HashMap<String, String>>())
        .and(warp::header::headers_cloned())
        .and(warp::ext::optional::<OnUpgrade>())
        .and(with_state(state))
        .and_then(
            |path: warp::path::FullPath,
             query: HashMap<String, String>,
             headers: HeaderMap,
             on_upgrade: Option<OnUpgrade>,
             state| async move {
                if !is_websocket_upgrade(&headers) {
                    return Err(warp::reject::not_found());
                }
                let target = match path.as_str() {
                    "/api/ot" => Target::Ot,
                    // SPEC §9: the server's base URL and /api/hocuspocus speak Hocuspocus.
                    "/" | "/api/hocuspocus" => Target::Hocuspocus,
                    p if p.starts_with("/api/") => return Err(warp::reject::not_found()),
                    p => match DocName::from_url_path(p) {
                        Ok(doc) => Target::Document(doc),
                        Err(e) => {
                            tracing::warn!(path = p, error = %e, "refused upgrade: invalid document name (400)");
                            return Ok(refused_upgrade(&ApiError::InvalidDocumentPath(e)));
                        }
                    },
                };
                let request = Upgrade { target, token: token(&query, &headers), headers: &headers };
                Ok(upgrade(request, on_upgrade, state))
            },
        );
    // Bodies are read as a stream up to `message_bytes_max` (`None`: larger, 413), whatever
    // their framing: `content_length_limit` refuses GETs (no Content-Length) and chunked
    // bodies, and composing it with `.or` turned its refusal into an empty body.
    let body_max = state_for_rest.config.message_bytes_max as u64;
    let body = warp::body::stream().and_then(move |s| read_bounded(s, body_max));
    let api = warp::path("api")
        .and(warp::path::tail())
        .and(warp::method())
        .and(warp::query::<HashMap<String, String>>())
        .and(warp::header::headers_cloned())
        .and(body)
        .and(with_state(state_for_rest))
        .and_then(
            move |tail: warp::path::Tail,
                  method: warp::http::Method,
                  query: HashMap<String, String>,
                  headers: HeaderMap,
                  body: Option<Bytes>,
                  state: Arc<AppState>| async move {
                let Some(body) = body else {
                    let e = ApiError::PayloadTooLarge(body_max);
                    crate::metrics::METRICS.refused(&format!("http {} {}", e.status(), e.code()));
                    let response = Response::builder()
                        .status(e.status())
                        .header(header::CONTENT_TYPE, "application/json")
                        .body(Bytes::from(e.body().to_string()))
                        .expect("json response");
                    return Ok::<_, Rejection>(warp::reply::Reply::into_response(response));
                };
                let request = rest::Request {
                    method: method.as_str(),
                    path: tail.as_str(),
                    query: &query,
                    token: token(&query, &headers),
                    content_type: headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()),
                    last_event_id: headers.get("last-event-id").and_then(|v| v.to_str().ok()),
                    body: &body,
                };
                let response = match rest::handle(&state, request).await {
                    rest::Reply::Events(stream) => {
                        let events = futures::StreamExt::map(stream, |e| {
                            Ok::<_, std::convert::Infallible>(
                                warp::sse::Event::default().id(e.id).event(e.kind).data(e.data),
                            )
                        });
                        let keep_alive = warp::sse::keep_alive().interval(Duration::from_secs(30)).text("heartbeat");
                        return Ok(warp::reply::Reply::into_response(warp::sse::reply(keep_alive.stream(events))));
                    }
                    rest::Reply::Json(status, json) => {
                        let mut builder = Response::builder()
                            .status(StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
                            .header(header::CONTENT_TYPE, "application/json");
                        if status == 401 {
                            builder = builder.header(header::WWW_AUTHENTICATE, api_error::WWW_AUTHENTICATE);
                        }
                        builder.body(Bytes::from(json.to_string()))
                    }
                    rest::Reply::Binary(data) => Response::builder()
                        .status(StatusCode::OK)
                        .header(header::CONTENT_TYPE, "application/octet-stream")
                        .body(Bytes::from(data)),
                };
                Ok::<_, Rejection>(warp::reply::Reply::into_response(response.expect("api response")))
            },
        );
    // The demo editor: `GET /` and `/demo/<asset>`. After `doc_ws`, so that a WebSocket
    // upgrade to `/…` still reaches a document and only plain requests get the page.
    let demo = warp::get()
        .or(warp::head())
        .unify()
        .and(warp::path::full())
        .and(warp::header::headers_cloned())
        .and_then(demo_reply);
    // WebSocket upgrades first (`/api/ot` included, and documents named `metrics`, `healthz`
    // or `demo/…`); other requests fall through to the plain routes.
    doc_ws.or(healthz).or(metrics).or(demo).or(api)
}

/// A demo editor file (`crate::demo`), or a 404 rejection for any other path.
async fn demo_reply(path: warp::path::FullPath, headers: HeaderMap) -> Result<Response<Bytes>, Rejection> {
    let header = |name| headers.get(name).and_then(|v: &header::HeaderValue| v.to_str().ok());
    let request = crate::demo::Request {
        path: path.as_str(),
        if_none_match: header(header::IF_NONE_MATCH),
        accept_encoding: header(header::ACCEPT_ENCODING),
    };
    let Some(reply) = crate::demo::handle(&request) else {
        return Err(warp::reject::not_found());
    };
    let mut response = Response::builder().status(reply.status);
    for (name, value) in reply.headers {
        response = response.header(name, value);
    }
    Ok(response.body(reply.body).expect("demo response"))
}

fn with_state(
    state: Arc<AppState>,
) -> impl Filter<Extract = (Arc<AppState>,), Error = std::convert::Infallible> + Clone {
    warp::any().map(move || state.clone())
}

fn is_websocket_upgrade(headers: &HeaderMap) -> bool {
    let has_token = |name: header::HeaderName, token: &str| {
        headers
            .get_all(name)
            .iter()
            .any(|v| v.to_str().is_ok_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token))))
    };
    has_token(header::CONNECTION, "upgrade") && has_token(header::UPGRADE, "websocket")
}

/// The token from `?token=` (what the stock client can send) or `Authorization: Bearer`.
pub(crate) fn token(query: &HashMap<String, String>, headers: &HeaderMap) -> Option<String> {
    if let Some(t) = query.get("token") {
        return Some(t.clone());
    }
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim().to_owned())
}

/// What a WebSocket upgrade connects to.
enum Target {
    Document(DocName),
    /// The ShareDB endpoint; documents are named per message, so grants are checked there.
    Ot,
    /// The Hocuspocus endpoint: documents and their tokens come in the frames
    /// (`session::hocuspocus` authenticates each document).
    Hocuspocus,
}

struct Upgrade<'a> {
    target: Target,
    token: Option<String>,
    headers: &'a HeaderMap,
}

pub(crate) fn plain(status: StatusCode, reason: &str) -> Response<warp::hyper::body::Bytes> {
    // Every plain response is a refused upgrade.
    crate::metrics::METRICS.refused(&format!("upgrade {}", status.as_u16()));
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(Bytes::from(format!("{reason}\n")))
        .expect("static response")
}

/// A refused upgrade: the status and the message as plain text (the code is not sent),
/// with `WWW-Authenticate` on a 401 and `Retry-After` on a connection cap.
fn refused_upgrade(e: &ApiError) -> Response<Bytes> {
    let mut response = plain(StatusCode::from_u16(e.status()).expect("a status"), &e.message());
    if e.status() == 401 {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static(api_error::WWW_AUTHENTICATE));
    }
    if let Some(secs) = e.retry_after() {
        response.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from(secs));
    }
    response
}

fn upgrade(request: Upgrade<'_>, on_upgrade: Option<OnUpgrade>, state: Arc<AppState>) -> Response<Bytes> {
    let Upgrade { target, token, headers } = request;
    // For logs: the document, or the OT endpoint.
    let doc: Arc<str> = match &target {
        Target::Document(d) => d.as_arc().clone(),
        Target::Ot => "/api/ot".into(),
        Target::Hocuspocus => "/api/hocuspocus".into(),
    };
    let origin = headers.get(header::ORIGIN).and_then(|o| o.to_str().ok());
    if let Some(origin) = origin.filter(|_| !state.config.allowed_origin.is_empty()) {
        if !state.config.allowed_origin.iter().any(|allowed| allowed == origin) {
            tracing::warn!(doc = %doc, origin, "refused upgrade: origin not allowed (403)");
            return refused_upgrade(&ApiError::OriginNotAllowed);
        }
    }
    // A Hocuspocus provider sends its token per document, in an Auth frame: the upgrade
    // itself is not authenticated (`session::hocuspocus` authenticates each document).
    let hocuspocus = matches!(target, Target::Hocuspocus);
    let identity = match state.auth.authenticate(token.as_deref(), now_unix()) {
        Ok(identity) => identity,
        Err(_) if hocuspocus => crate::auth::Identity::anonymous(),
        Err(e) => {
            tracing::warn!(doc = %doc, error = %e, "refused upgrade: not authenticated (401)");
            return refused_upgrade(&ApiError::Unauthorized(e));
        }
    };
    let access = match &target {
        Target::Document(d) => match identity.access(d.as_str()) {
            Some(access) => Some(access),
            None => {
                tracing::warn!(doc = %doc, user = %identity.user, "refused upgrade: no grant for the document (403)");
                return refused_upgrade(&ApiError::NoGrant);
            }
        },
        Target::Ot | Target::Hocuspocus => None,
    };
    let conn = state.next_conn();
    // A Hocuspocus socket has no user yet: it is admitted (and rate limited) on its own, and
    // each user it authenticates takes a slot of that user's cap too.
    let key = key_for(&identity.user, state.auth.is_anonymous() || hocuspocus, conn.get());
    let permit = match state.limiter.admit(key, Instant::now()) {
        Ok(permit) => permit,
        Err(refusal) => {
            let e = ApiError::ConnectionCap(refusal);
            let status = StatusCode::from_u16(e.status()).expect("a status");
            tracing::warn!(doc = %doc, user = %identity.user, %status, "refused upgrade: {refusal}");
            return refused_upgrade(&e);
        }
    };
    if headers.get(header::SEC_WEBSOCKET_VERSION).map(|v| v.as_bytes()) != Some(b"13") {
        return refused_upgrade(&ApiError::WebSocketVersion);
    }
    let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY) else {
        return refused_upgrade(&ApiError::WebSocketKeyMissing);
    };
    let Some(on_upgrade) = on_upgrade else {
        return refused_upgrade(&ApiError::NotUpgradable);
    };
    let accept = derive_accept_key(key.as_bytes());
    let ws_config = ws_config(&state.config);
    let queue_bytes_max = state.config.outbound_queue_bytes_max;
    let guard = state.sessions.enter();
    // Each protocol's session future is boxed: the task holds the largest of its states for
    // its whole life, so unboxed a y-websocket connection would pay for the OT session's
    // (6 KiB per connection, measured with -Zprint-type-sizes; BENCHMARKS, idle memory).
    tokio::spawn(async move {
        let _guard = guard;
        let upgraded = match on_upgrade.await {
            Ok(upgraded) => upgraded,
            Err(e) => {
                tracing::debug!(conn = conn.get(), error = %e, "websocket upgrade failed");
                return;
            }
        };
        let opcode = match target {
            Target::Document(_) | Target::Hocuspocus => Opcode::Binary,
            Target::Ot => Opcode::Text,
        };
        let (socket, outbox, sender) = outbox::link(TokioIo::new(upgraded), queue_bytes_max, opcode);
        let ws = WebSocketStream::from_raw_socket(socket, Role::Server, Some(ws_config)).await;
        let expires_in = match hocuspocus {
            true => None,
            false => identity.expires_at.map(|at| Duration::from_secs(at.saturating_sub(now_unix()))),
        };
        let link = session::Link { conn, expires_in, permit, limiter: state.limiter.clone(), outbox, sender };
        match (target, access) {
            (Target::Document(doc), Some(access)) => {
                // Every line logged by the session carries its connection, user and document
                // (the JSON log format prints the span's fields on each line).
                let span = tracing::info_span!("session", conn = conn.get(), user = %identity.user, doc = %doc);
                let params = SessionParams {
                    link,
                    doc,
                    user: identity.user,
                    access,
                    settings: crate::app::session_settings(&state.config),
                };
                Box::pin(session::yjs::run(ws, state.registry.clone(), params).instrument(span)).await;
            }
            (Target::Hocuspocus, _) => {
                let span = tracing::info_span!("hocuspocus_session", conn = conn.get());
                let auth_state = state.clone();
                let conn_state = state.clone();
                let params = HocuspocusParams {
                    link,
                    sessions: state.sessions.clone(),
                    authenticate: Arc::new(move |token, now| auth_state.auth.authenticate(token, now)),
                    anonymous: state.auth.is_anonymous(),
                    next_conn: Arc::new(move || conn_state.next_conn()),
                    now_unix,
                    settings: crate::app::hocuspocus_settings(&state.config),
                };
                Box::pin(session::hocuspocus::run(ws, state.registry.clone(), params).instrument(span)).await;
            }
            (_, _) => {
                let span = tracing::info_span!("ot_session", conn = conn.get(), user = %identity.user);
                let params = OtSessionParams {
                    link,
                    sessions: state.sessions.clone(),
                    identity,
                    settings: crate::app::ot_session_settings(&state.config),
                    presence: state.ot_presence.clone(),
                };
                Box::pin(session::ot::run(ws, state.registry.clone(), params).instrument(span)).await;
            }
        }
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, "websocket")
        .header(header::SEC_WEBSOCKET_ACCEPT, accept)
        .body(Bytes::new())
        .expect("static response")
}

/// Reads a request body, `None` once it passes `max` bytes.
async fn read_bounded(
    s: impl futures::Stream<Item = Result<impl bytes::Buf, warp::Error>>,
    max: u64,
) -> Result<Option<Bytes>, Rejection> {
    use bytes::BufMut;
    use futures::StreamExt;
    futures::pin_mut!(s);
    let mut out = bytes::BytesMut::new();
    while let Some(chunk) = s.next().await {
        let mut chunk = chunk.map_err(|_| warp::reject::reject())?;
        if (out.len() + chunk.remaining()) as u64 > max {
            return Ok(None);
        }
        while chunk.has_remaining() {
            let c = chunk.chunk();
            let n = c.len();
            out.put_slice(c);
            chunk.advance(n);
        }
    }
    Ok(Some(out.freeze()))
}
