// The JSON that yserve puts on the wire, mirrored field for field (snake_case kept, as the
// server writes it), so that a change on the server shows up here as one diff. The sources
// of truth are `src/rest.rs` (REST bodies), `src/api_error.rs` (error codes and statuses),
// `src/ot/error.rs` (ShareDB codes), `src/document/events.rs` and `src/document/query.rs` (event
// stream payloads) and `src/registry.rs` / `src/session/yjs.rs` (server-wide events).
//
// Nothing here does IO; `api.ts` and `ot.ts` use these types.

// ---------------------------------------------------------------------------------------
// Quill Delta (the OT layer's op format, SPEC §5)

/** Formatting attributes; `null` removes one (as Yjs formatting attributes). */
export type DeltaAttributes = Record<string, unknown>

/** One Quill Delta component. Embeds are objects; text is in UTF-16 code units. */
export type DeltaOp =
  | { insert: string | Record<string, unknown>, attributes?: DeltaAttributes }
  | { retain: number, attributes?: DeltaAttributes }
  | { delete: number }

/**
 * What the REST mirror accepts on top of Quill Delta: `{replace: n, insert}` is sugar for
 * insert-then-delete (the `rich-text` ShareDB type itself does not know it).
 */
export type RestDeltaOp = DeltaOp | { replace: number, insert: string | Record<string, unknown>, attributes?: DeltaAttributes }

// ---------------------------------------------------------------------------------------
// REST bodies (SPEC §6, README "For operators: the HTTP API")

/** `GET /api/stats` */
export interface Stats {
  connections: number
  documents_loaded: number
  users_online: number
}

/** One entry of `GET /api/docs` (`{documents: [...]}`). Times are ISO-8601 UTC text. */
export interface DocumentInfo {
  name: string
  created_at: string
  /** Updates in the log. */
  updates: number
  /** Bytes of the log plus the snapshots. */
  size: number
  update_bytes: number
  snapshot_bytes: number
  /** 0 for a document with no update yet. */
  last_seq: number
  /** `null` for a document with no update yet. */
  last_change: string | null
  /** Live connections (WebSocket sessions, REST requests and event streams attached). */
  connections: number
}

export interface DocumentList {
  documents: DocumentInfo[]
}

/** `POST /api/docs/{name}/update`: the update's seq, or `null` when it added nothing new. */
export interface PostUpdateResult {
  seq: number | null
  applied: boolean
}

export interface HistoryEntry {
  seq: number
  time: string
  /** Who wrote it: a token's `sub`, `anonymous`, `ot`, `cli`, … */
  origin: string
  size: number
}

/** `GET /api/docs/{name}/history`; pass `next_after` as `after` for the next page. */
export interface HistoryPage {
  entries: HistoryEntry[]
  next_after: number | null
}

/** One awareness state of `GET /api/docs/{name}/presence` (`{clients: [...]}`). */
export interface PresenceClient {
  client_id: number
  /** The state's `user` field (`{name, color, colorLight?}` by convention), or `null`. */
  user: unknown
  /** The state's `cursor` field (`{anchor, head}` as Yjs relative positions), or `null`. */
  cursor: unknown
  selection: unknown
  typing: unknown
  since: string
  renewed_at: string
  /** The whole awareness state. */
  state: Record<string, unknown> | null
}

export interface PresenceList {
  clients: PresenceClient[]
}

/** `GET /api/docs/{name}/texts/{text}`: the text as a Quill Delta and as plain text. */
export interface TextSnapshot {
  v: number
  /** Changes when the text's op log restarts (e.g. after the document was deleted). */
  epoch: string
  ops: DeltaOp[]
  /** The text without its embeds. */
  text: string
}

/** An op of a text's log: it took the text from version `v` to `v + 1`. */
export interface LoggedOp {
  v: number
  /** The submitter's id; `yjs` for edits made by Yjs clients. */
  src: string
  seq: number
  op: DeltaOp[]
}

/** `GET /api/docs/{name}/texts/{text}/ops?from=v` */
export interface OpsPage {
  v: number
  epoch: string
  ops: LoggedOp[]
}

/** `POST /api/docs/{name}/texts/{text}` body. */
export interface SubmitOp {
  /** The version the op is based on; omitted: the current one (no transform). */
  v?: number
  /** A client id of your choosing; `(src, seq)` makes resubmission idempotent. */
  src: string
  seq: number
  op: RestDeltaOp[]
}

/**
 * `POST /api/docs/{name}/texts/{text}` answer: the op was committed at version `v` (the
 * text is at `v + 1` after it) and `ops` are the ops committed since the base version that
 * the submitter had not seen (it was transformed against them).
 */
export interface SubmitResult {
  v: number
  epoch: string
  ops: LoggedOp[]
}

/** A held advisory lock. */
export interface Lock {
  key: string
  /** The user (token `sub`) holding it. */
  holder: string
  expires_at: string
  expires_at_ms: number
}

export interface LockList {
  locks: Lock[]
}

/** `DELETE /api/docs/{name}` */
export interface Deleted {
  deleted: string
}

// ---------------------------------------------------------------------------------------
// Errors: `{"error": {"code", "message"}}`, keyed by code.

/**
 * Codes of the plain REST routes and their statuses, from `ApiError` (`src/api_error.rs`,
 * whose `CODES` lists `RestErrorCode` then `OtErrorCode` in this order: a Rust test checks
 * it). (An invalid name in the path is the ShareDB code `ERR_MESSAGE_BADLY_FORMED`, on every
 * route.)
 */
export type RestErrorCode =
  | 'BAD_REQUEST' // 400: bad parameters or body (not a name: see ERR_MESSAGE_BADLY_FORMED)
  | 'UNAUTHORIZED' // 401
  | 'FORBIDDEN' // 403
  | 'NOT_FOUND' // 404
  | 'NOT_LOCKED' // 404: releasing a lock nobody holds
  | 'METHOD_NOT_ALLOWED' // 405
  | 'LOCKED' // 409: the lock is held by someone else (body has `holder`, `expires_at`)
  | 'PAYLOAD_TOO_LARGE' // 413
  | 'UNSUPPORTED_MEDIA_TYPE' // 415
  | 'TOO_MANY_CONNECTIONS' // 429: WebSocket upgrades only (plain-text body, Retry-After), never in a JSON body
  | 'UNAVAILABLE' // 503

/**
 * ShareDB's codes (`src/ot/error.rs`), used by the OT WebSocket and the REST text routes;
 * `ERR_MESSAGE_BADLY_FORMED` also by every REST route whose path holds an invalid document,
 * text or lock name (too long, a control character, not UTF-8: `parse_route` in `src/rest.rs`).
 */
export type OtErrorCode =
  | 'ERR_MESSAGE_BADLY_FORMED' // 400: a badly formed message or body; on any REST route, an invalid name in the path
  | 'ERR_OT_OP_BADLY_FORMED' // 400
  | 'ERR_OP_VERSION_NEWER_THAN_CURRENT_SNAPSHOT' // 400
  | 'ERR_SUBMIT_TRANSFORM_OPS_NOT_FOUND' // 409: base version older than the kept log
  | 'ERR_DOC_TYPE_NOT_RECOGNIZED' // 409: the root is not a Y.Text
  | 'ERR_DOC_ALREADY_CREATED' // 409: create/del ops
  | 'ERR_OT_OP_NOT_APPLIED' // 422: longer than the text, or splits a surrogate pair
  | 'ERR_OP_SUBMIT_REJECTED' // 403 read-only grant, 423 text locked by another user
  | 'ERR_SNAPSHOT_READS_REJECTED' // 403: no grant
  | 'ERR_UNKNOWN_ERROR' // 503
  | 'ERR_TYPE_DOES_NOT_SUPPORT_PRESENCE' // 400: OT WebSocket presence only

/** Every code the server writes in an error body. */
export type ServerErrorCode = RestErrorCode | OtErrorCode

/**
 * Not a server code: the SDK's code for an error response that is not a yserve error body
 * (a proxy's page, warp's empty 404 for a path outside `/api/`).
 */
export type ClientErrorCode = 'HTTP_ERROR'

export type ErrorCode = ServerErrorCode | ClientErrorCode

/** The 409 of `POST …/locks/{key}` carries who holds the lock. */
export interface LockedErrorBody {
  error: { code: 'LOCKED', message: string }
  holder: string
  expires_at: string
}

/** The body of an error with code `C`. */
export type ErrorBodyFor<C extends ErrorCode> = C extends 'LOCKED' ? LockedErrorBody : { error: { code: C, message: string } }

/** An error body: a union with one member per code, discriminated by `error.code`. */
export type ErrorBody = { [C in ErrorCode]: ErrorBodyFor<C> }[ErrorCode]

// ---------------------------------------------------------------------------------------
// Event streams (`GET /api/docs/{name}/events`, `GET /api/events`)

/** A live update: its text deltas are there for every root text it changed. */
export interface LiveUpdateEventData {
  seq: number
  origin: string
  size: number
  texts: Record<string, DeltaOp[]>
  replayed?: undefined
}

/**
 * An update replayed from the log to a reader that resumed from further back than the
 * server's ring of recent events: no text deltas, but the time it was written.
 */
export interface ReplayedUpdateEventData {
  seq: number
  origin: string
  size: number
  time: string
  replayed: true
}

export type UpdateEventData = LiveUpdateEventData | ReplayedUpdateEventData

export interface PresenceEventData {
  client_id: number
  action: 'join' | 'change' | 'leave'
  /** The awareness state; `null` when it left. */
  state: Record<string, unknown> | null
}

export interface LockEventData {
  key: string
  holder: string
  action: 'acquired' | 'renewed' | 'released' | 'expired'
  expires_at: string
}

/** An event of a document's stream; `id` (`SEQ.N`) resumes the stream after it. */
export type DocEvent =
  | { id: string, type: 'update', data: UpdateEventData }
  | { id: string, type: 'presence', data: PresenceEventData }
  | { id: string, type: 'lock', data: LockEventData }

/**
 * Server-wide events, only about documents the token may read. Ids are a per-process
 * counter and are not replayed (`/api/stats` and `/api/docs` give the current state).
 */
export type ServerEvent =
  | { id: string, type: 'document_opened', data: { doc: string } }
  | { id: string, type: 'document_closed', data: { doc: string } }
  | { id: string, type: 'user_joined', data: { user: string, doc: string, conn: number } }
  | { id: string, type: 'user_left', data: { user: string, doc: string, conn: number } }
  | { id: string, type: 'lock', data: { doc: string, key: string, holder: string, action: LockEventData['action'] } }

// ---------------------------------------------------------------------------------------
// WebSocket close codes (README "Close codes")

export const CloseCode = {
  /** Server shutting down, or the document was deleted. */
  GoingAway: 1001,
  TextFrame: 1003,
  MalformedMessage: 1007,
  /** Refused by policy; the reason says why (`rate limited`, `client-id`, …). */
  Policy: 1008,
  TooBig: 1009,
  ServerFailure: 1011,
  SlowConsumer: 1013,
  TokenExpired: 4401,
  NoGrant: 4403,
  Idle: 4408
} as const
