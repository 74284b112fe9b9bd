// `ApiClient`: the REST and Server-Sent Events API of SPEC §6 over `fetch`, with typed
// results (`wire.ts`) and typed errors (`ApiError`, keyed by the server's error codes).
//
// Event streams are parsed here by hand from the fetch body stream rather than with
// `EventSource`: EventSource cannot send `Authorization`, does not exist in Node, and
// reconnects on its own terms. `events()` resumes after a dropped stream with
// `Last-Event-ID`, as the server intends (a reader too slow to keep up is dropped and
// expected to resume).

import type {
  DocEvent, DocumentInfo, DocumentList, Deleted, ErrorBody, ErrorBodyFor, ErrorCode, LockedErrorBody, HistoryPage, Lock, LockList,
  OpsPage, PostUpdateResult, PresenceClient, PresenceList, ServerEvent, Stats, SubmitOp, SubmitResult, TextSnapshot
} from './wire.js'
import { type TokenSource, resolveToken, trimSlashes, InvalidNameError, isDotSegment } from './token.js'

export interface ApiClientOptions {
  /** A JWT or a function returning one; the function is called for every request. */
  token?: TokenSource
  /** A `fetch` to use instead of the global one. */
  fetch?: typeof fetch
}

export interface EventStreamOptions {
  /** Resume after this event id (`SEQ.N`): the events since are sent first. */
  lastEventId?: string
  /** Ends the stream (the iteration finishes without an error). */
  signal?: AbortSignal
  /**
   * Resume with the last event id when the stream ends or the network fails (default
   * true). HTTP errors (an `ApiError`) are thrown, except 503, which is retried.
   */
  reconnect?: boolean
  /** The longest wait between reconnection attempts, ms (default 5000). */
  maxBackoffTime?: number
  /**
   * Called each time the stream is (re)established: from then on the server sends every
   * new event (the server subscribes the reader before it answers).
   */
  onOpen?: () => void
}

/**
 * An error answer of the server. `ApiError<C>` has code `C` and its body; `AnyApiError` is
 * the union over every code, so checking `code` narrows `body` (e.g. `LOCKED` has `holder`).
 */
export class ApiError<C extends ErrorCode = ErrorCode> extends Error {
  readonly status: number
  readonly code: C
  /** The body as sent (`{error: {code, message}}`, plus `holder` for `LOCKED`). */
  readonly body: ErrorBodyFor<C>
  /** Seconds, from a `Retry-After` header. */
  readonly retryAfter?: number

  constructor (status: number, body: ErrorBodyFor<C>, retryAfter?: number) {
    super(body.error.message)
    this.name = 'ApiError'
    this.status = status
    this.code = body.error.code as C
    this.body = body
    if (retryAfter !== undefined) this.retryAfter = retryAfter
  }

  /** For `LOCKED`: who holds the lock. */
  get holder (): string | undefined {
    const body = this.body as ErrorBody
    return body.error.code === 'LOCKED' ? (body as LockedErrorBody).holder : undefined
  }
}

/** Every `ApiError`, discriminated by `code`. */
export type AnyApiError = { [C in ErrorCode]: ApiError<C> }[ErrorCode]

/** Narrows an unknown error to an `ApiError` with one of `codes` (any code if none given). */
export function isApiError<C extends ErrorCode = ErrorCode> (error: unknown, ...codes: C[]): error is Extract<AnyApiError, { code: C }> {
  return error instanceof ApiError && (codes.length === 0 || (codes as ErrorCode[]).includes(error.code))
}

type Query = Record<string, string | number | undefined>

/**
 * A name (document, text, lock) as one path segment: percent-encoded, `/` included. `.` and
 * `..` are refused with an `InvalidNameError`: URL parsers resolve them whatever their
 * spelling, so `…/locks/..` would be sent as `…/` (for `releaseLock`, the route that deletes
 * the document). Every method that calls this is `async`, so the error is a rejection and
 * nothing is sent.
 */
function seg (name: string, what = 'document name'): string {
  if (isDotSegment(name)) throw new InvalidNameError(name, what)
  return encodeURIComponent(name)
}

export class ApiClient {
  readonly baseUrl: string
  private readonly token?: TokenSource
  private readonly fetchImpl: typeof fetch

  /** `baseUrl`: `http://host:port`. */
  constructor (baseUrl: string, opts: ApiClientOptions = {}) {
    this.baseUrl = trimSlashes(baseUrl)
    if (opts.token !== undefined) this.token = opts.token
    const f = opts.fetch ?? globalThis.fetch
    if (typeof f !== 'function') throw new Error('no fetch implementation: pass one')
    // Unbound, a browser's `fetch` throws "Illegal invocation".
    this.fetchImpl = f.bind(globalThis)
  }

  /** `GET /healthz`: true when the server answers `ok`. */
  async health (): Promise<boolean> {
    const r = await this.fetchImpl(`${this.baseUrl}/healthz`)
    return r.ok
  }

  stats (): Promise<Stats> {
    return this.call('GET', '/api/stats')
  }

  /** The documents the token may read. */
  async docs (): Promise<DocumentInfo[]> {
    return (await this.call<DocumentList>('GET', '/api/docs')).documents
  }

  /**
   * The document as one binary Yjs v1 update: the whole state, or what a client with state
   * vector `sv` lacks; at `at`, the state right after update `at` (time travel).
   */
  async getUpdate (name: string, opts: { sv?: Uint8Array, at?: number } = {}): Promise<Uint8Array> {
    const query: Query = { at: opts.at, sv: opts.sv === undefined ? undefined : base64(opts.sv) }
    const r = await this.request('GET', `/api/docs/${seg(name)}/update`, { query })
    return new Uint8Array(await r.arrayBuffer())
  }

  /** Applies a binary Yjs v1 update; `seq` is `null` when it brought nothing new. */
  async postUpdate (name: string, update: Uint8Array): Promise<PostUpdateResult> {
    return this.call('POST', `/api/docs/${seg(name)}/update`, {
      body: update, contentType: 'application/octet-stream'
    })
  }

  /** Every root rendered as JSON (the server infers the types: `src/render.rs`). */
  async json (name: string, opts: { at?: number } = {}): Promise<Record<string, unknown>> {
    return this.call('GET', `/api/docs/${seg(name)}/json`, { query: { at: opts.at } })
  }

  /** A page of the update log; pass `next_after` as `after` for the next one. */
  async history (name: string, opts: { after?: number, limit?: number } = {}): Promise<HistoryPage> {
    return this.call('GET', `/api/docs/${seg(name)}/history`, { query: { after: opts.after, limit: opts.limit } })
  }

  /** The awareness states of the document's live clients. */
  async presence (name: string): Promise<PresenceClient[]> {
    return (await this.call<PresenceList>('GET', `/api/docs/${seg(name)}/presence`)).clients
  }

  /** A root text: version, Quill Delta and plain text (the OT layer's REST mirror). */
  async text (name: string, text: string): Promise<TextSnapshot> {
    return this.call('GET', `/api/docs/${seg(name)}/texts/${seg(text, 'text name')}`)
  }

  /** Submits an OT op based on version `v`; it is transformed against the ops since. */
  async submitOp (name: string, text: string, op: SubmitOp): Promise<SubmitResult> {
    return this.call('POST', `/api/docs/${seg(name)}/texts/${seg(text, 'text name')}`, {
      body: JSON.stringify(op), contentType: 'application/json'
    })
  }

  /** The text's op log from version `from` on. */
  async opsSince (name: string, text: string, from: number): Promise<OpsPage> {
    return this.call('GET', `/api/docs/${seg(name)}/texts/${seg(text, 'text name')}/ops`, { query: { from } })
  }

  /** Held locks. */
  async locks (name: string): Promise<Lock[]> {
    return (await this.call<LockList>('GET', `/api/docs/${seg(name)}/locks`)).locks
  }

  /**
   * Takes or renews the advisory lock `key` (a root text's name locks that text for other
   * users' OT writes). `ttl`: ms, or a duration such as `'90s'`; default 5 minutes. Throws
   * an `ApiError` with code `LOCKED` (and `holder`) when another user holds it.
   */
  async acquireLock (name: string, key: string, opts: { ttl?: number | string } = {}): Promise<Lock> {
    const ttl = typeof opts.ttl === 'number' ? `${Math.max(1, Math.round(opts.ttl))}ms` : opts.ttl
    return this.call('POST', `/api/docs/${seg(name)}/locks/${seg(key, 'lock key')}`, { query: { ttl } })
  }

  /** Releases a lock this user holds (`LOCKED` if another user does, `NOT_LOCKED` if nobody). */
  async releaseLock (name: string, key: string): Promise<Lock> {
    return this.call('DELETE', `/api/docs/${seg(name)}/locks/${seg(key, 'lock key')}`)
  }

  /** Deletes the document and its history; its live connections are closed (1001). */
  async deleteDoc (name: string): Promise<Deleted> {
    return this.call('DELETE', `/api/docs/${seg(name)}`)
  }

  /**
   * The document's events: updates (after their commit), presence and lock changes. Each
   * carries its `id`; pass the last one as `lastEventId` to resume later without a gap.
   */
  events (name: string, opts: EventStreamOptions = {}): AsyncIterable<DocEvent> {
    return this.stream<DocEvent>(() => `/api/docs/${seg(name)}/events`, opts, ['update', 'presence', 'lock'])
  }

  /**
   * Server-wide events about the documents the token may read. They are not replayed, so
   * after a reconnect the ones in between are missing (`docs()` and `stats()` have the state).
   */
  serverEvents (opts: Omit<EventStreamOptions, 'lastEventId'> = {}): AsyncIterable<ServerEvent> {
    return this.stream<ServerEvent>(() => '/api/events', opts,
      ['document_opened', 'document_closed', 'user_joined', 'user_left', 'lock'])
  }

  private async call<T> (method: string, path: string, opts: RequestOptions = {}): Promise<T> {
    const r = await this.request(method, path, opts)
    return await r.json() as T
  }

  private async headers (extra: Record<string, string> = {}): Promise<Record<string, string>> {
    const token = await resolveToken(this.token)
    return token === undefined ? extra : { ...extra, authorization: `Bearer ${token}` }
  }

  /** Sends a request; a non-2xx answer becomes an `ApiError`. */
  private async request (method: string, path: string, opts: RequestOptions = {}): Promise<Response> {
    const headers = await this.headers(opts.contentType === undefined ? {} : { 'content-type': opts.contentType })
    if (opts.lastEventId !== undefined) headers['last-event-id'] = opts.lastEventId
    const init: RequestInit = { method, headers }
    if (opts.body !== undefined) init.body = opts.body as BodyInit
    if (opts.signal !== undefined) init.signal = opts.signal
    const r = await this.fetchImpl(this.baseUrl + path + queryString(opts.query), init)
    if (!r.ok) throw await errorOf(r)
    return r
  }

  /** `pathOf` is called on the first `next()`, so that an invalid name rejects it. */
  private async * stream<E extends { id: string, type: string, data: unknown }> (
    pathOf: () => string, opts: EventStreamOptions, types: string[]
  ): AsyncGenerator<E> {
    const path = pathOf()
    const reconnect = opts.reconnect ?? true
    const maxBackoff = opts.maxBackoffTime ?? 5000
    let lastEventId = opts.lastEventId
    let attempts = 0
    // Aborted when the caller's signal is, or when the caller stops iterating (`finally`),
    // so that the response body is never left open.
    const stop = new AbortController()
    const onAbort = (): void => stop.abort()
    opts.signal?.addEventListener('abort', onAbort)
    if (opts.signal?.aborted === true) stop.abort()
    try {
      while (!stop.signal.aborted) {
        let response: Response
        try {
          response = await this.request('GET', path, { lastEventId, signal: stop.signal })
        } catch (e) {
          if (stop.signal.aborted) return
          // A refusal is final, except 503 (shutting down, store busy): that one passes.
          if (!reconnect || (e instanceof ApiError && e.status !== 503)) throw e
          await backoff(attempts++, maxBackoff, stop.signal)
          continue
        }
        opts.onOpen?.()
        try {
          for await (const raw of parseSse(response.body!)) {
            attempts = 0
            if (raw.id !== undefined) lastEventId = raw.id
            if (!types.includes(raw.event)) continue // forward compatible: unknown kinds skipped
            let data: unknown
            try { data = JSON.parse(raw.data) } catch { continue }
            yield { id: raw.id ?? '', type: raw.event, data } as E
          }
        } catch (e) {
          if (stop.signal.aborted) return
          if (!reconnect) throw e
        }
        if (!reconnect || stop.signal.aborted) return
        await backoff(attempts++, maxBackoff, stop.signal)
      }
    } finally {
      opts.signal?.removeEventListener('abort', onAbort)
      stop.abort()
    }
  }
}

interface RequestOptions {
  query?: Query
  body?: Uint8Array | string
  contentType?: string
  lastEventId?: string | undefined
  signal?: AbortSignal
}

function queryString (query: Query | undefined): string {
  if (query === undefined) return ''
  const params = new URLSearchParams()
  for (const [k, v] of Object.entries(query)) {
    if (v !== undefined) params.set(k, String(v))
  }
  const s = params.toString()
  return s.length > 0 ? '?' + s : ''
}

async function errorOf (r: Response): Promise<AnyApiError> {
  const text = await r.text().catch(() => '')
  const retry = r.headers.get('retry-after')
  const retryAfter = retry !== null && /^\d+$/.test(retry.trim()) ? Number(retry) : undefined
  let body: ErrorBody | undefined
  try {
    const parsed = JSON.parse(text) as Partial<ErrorBody>
    if (typeof parsed?.error?.code === 'string' && typeof parsed.error.message === 'string') body = parsed as ErrorBody
  } catch {}
  body ??= { error: { code: 'HTTP_ERROR', message: `HTTP ${r.status}${text.length > 0 ? ': ' + text.slice(0, 200) : ''}` } }
  return new ApiError(r.status, body, retryAfter) as AnyApiError
}

function base64 (bytes: Uint8Array): string {
  let s = ''
  for (let i = 0; i < bytes.length; i += 0x8000) s += String.fromCharCode(...bytes.subarray(i, i + 0x8000))
  return btoa(s)
}

function backoff (attempt: number, max: number, signal: AbortSignal): Promise<void> {
  const ms = Math.min(200 * 2 ** attempt, max)
  return new Promise(resolve => {
    const timer = setTimeout(done, ms)
    function done (): void {
      clearTimeout(timer)
      signal.removeEventListener('abort', done)
      resolve()
    }
    signal.addEventListener('abort', done)
  })
}

/** One dispatched event of a `text/event-stream`. */
export interface SseMessage {
  event: string
  data: string
  id?: string
}

/**
 * Parses a `text/event-stream` body (the WHATWG HTML "event stream interpretation"): lines
 * end in LF, CRLF or CR; `:` lines are comments (the server's heartbeat); an event is
 * dispatched at a blank line if it has data; `id` persists to later events.
 */
export async function * parseSse (body: ReadableStream<Uint8Array>): AsyncGenerator<SseMessage> {
  const reader = body.getReader()
  // The stream is UTF-8 decoded, which strips one leading BOM: `TextDecoder` does that (its
  // `ignoreBOM` is false), across chunks too. A second BOM is part of the first field name.
  const decoder = new TextDecoder()
  let buffer = ''
  let event = ''
  let data: string[] = []
  let id: string | undefined
  try {
    while (true) {
      const { value, done } = await reader.read()
      buffer += done ? decoder.decode() : decoder.decode(value, { stream: true })
      // Split off complete lines; a trailing CR may be the first half of a CRLF.
      let start = 0
      for (let i = 0; i < buffer.length; i++) {
        const c = buffer[i]
        if (c !== '\n' && c !== '\r') continue
        if (c === '\r' && i === buffer.length - 1 && !done) break
        const line = buffer.slice(start, i)
        if (c === '\r' && buffer[i + 1] === '\n') i++
        start = i + 1
        if (line === '') {
          if (data.length > 0) {
            const message: SseMessage = { event: event === '' ? 'message' : event, data: data.join('\n') }
            if (id !== undefined) message.id = id
            yield message
          }
          event = ''
          data = []
          continue
        }
        if (line.startsWith(':')) continue
        const colon = line.indexOf(':')
        const field = colon < 0 ? line : line.slice(0, colon)
        let v = colon < 0 ? '' : line.slice(colon + 1)
        if (v.startsWith(' ')) v = v.slice(1)
        if (field === 'event') event = v
        else if (field === 'data') data.push(v)
        else if (field === 'id' && !v.includes('\0')) id = v
      }
      buffer = buffer.slice(start)
      if (done) return
    }
  } finally {
    await reader.cancel().catch(() => {})
  }
}

