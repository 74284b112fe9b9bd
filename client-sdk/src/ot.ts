// `OtClient`: edits yserve's root Y.Texts with operational transformation, through the stock
// ShareDB client and the `rich-text` type (SPEC §5). The server speaks the ShareDB protocol
// at `/api/ot`: collection = document name, id = root text name. Every text exists at
// version ≥ 1 (empty until written), so texts are subscribed, never `create`d.
//
// The ShareDB client does not reconnect by itself; sharedb's README pairs it with a
// reconnecting WebSocket, and `ReconnectingSocket` below is a small one (it also calls the
// token function for every connection). After a reconnect the client resubscribes at its
// version and resends its in-flight op with the same `(src, seq)`, which the server
// acknowledges without applying it twice.
//
// Cursors of OT clients are ShareDB doc presence, which yserve relays between the OT
// connections of a text (`OtText.setCursor`, `OtText.watchCursors`). They are not bridged to
// Yjs awareness: Yjs editors see each other through `Presence` on a provider.

import ShareDB from 'sharedb/lib/client/index.js'
import type { Doc, Connection, Presence as ShareDBPresence, LocalPresence } from 'sharedb/lib/client/index.js'
import richText from 'rich-text'
import { ObservableV2 } from 'lib0/observable'
import {
  type TokenSource, type WebSocketConstructor, type WebSocketLike,
  resolveToken, webSocketImpl, withToken, wsBase, ReadyState
} from './token.js'
import type { DeltaAttributes, DeltaOp, OtErrorCode } from './wire.js'

// Registering a type twice is harmless (a map keyed by name and uri).
ShareDB.types.register(richText.type as never)

/** An error from the server (or the ShareDB client), with ShareDB's code. */
export interface OtError extends Error {
  code: OtErrorCode | string
}

export interface OtClientOptions {
  /** A JWT or a function returning one; the function is called for every connection. */
  token?: TokenSource
  /** The WebSocket constructor; in Node < 22, pass the `ws` package's. */
  WebSocket?: WebSocketConstructor
  /** The longest wait between reconnection attempts, ms (default 2500). */
  maxBackoffTime?: number
}

export type OtConnectionState = 'connecting' | 'connected' | 'disconnected' | 'stopped' | 'closed'

export interface OtClientEvents {
  /** The ShareDB connection's state. */
  state: (state: OtConnectionState) => void
  /**
   * A socket error, a failing token function or a throwing WebSocket constructor (the client
   * retries with backoff).
   */
  'connection-error': (error: unknown) => void
}

/**
 * One WebSocket as far as ShareDB can tell, over a succession of real ones: when one closes
 * without `close()` having been called, ShareDB sees the close (state `disconnected`), and
 * the next socket's open (state `connecting`, then a new handshake).
 */
class ReconnectingSocket {
  readyState: number = ReadyState.CONNECTING
  onopen: ((event: any) => void) | null = null
  onmessage: ((event: any) => void) | null = null
  onclose: ((event: any) => void) | null = null
  onerror: ((event: any) => void) | null = null
  private ws: WebSocketLike | null = null
  private closed = false
  /** `pause()`d: no socket and no reconnection until `resume()`. */
  private paused = false
  private attempts = 0
  private timer: ReturnType<typeof setTimeout> | null = null

  constructor (
    private readonly url: string,
    private readonly token: TokenSource | undefined,
    private readonly Impl: WebSocketConstructor,
    private readonly maxBackoffTime: number,
    private readonly reportError: (error: unknown) => void
  ) {
    this.open()
  }

  send (data: string): void {
    if (this.ws !== null && this.readyState === ReadyState.OPEN) this.ws.send(data)
  }

  /** Closes for good; ShareDB goes to `closed` (it recognises the reason string `closed`). */
  close (): void {
    if (this.closed) return
    this.closed = true
    if (this.timer !== null) clearTimeout(this.timer)
    const ws = this.ws
    this.ws = null
    this.readyState = ReadyState.CLOSED
    if (ws !== null) {
      ws.onopen = ws.onmessage = ws.onclose = null
      ws.onerror = () => {} // `ws` rethrows an error event nobody listens to
      ws.close()
    }
    this.onclose?.('closed')
  }

  /**
   * Closes the current socket without closing for good: ShareDB goes to `disconnected` and
   * keeps what is submitted meanwhile for `resume()`.
   */
  pause (): void {
    if (this.closed || this.paused) return
    this.paused = true
    if (this.timer !== null) {
      clearTimeout(this.timer)
      this.timer = null
    }
    const ws = this.ws
    this.ws = null
    const wasOpen = this.readyState === ReadyState.OPEN
    this.readyState = ReadyState.CONNECTING
    if (ws !== null) {
      ws.onopen = ws.onmessage = ws.onclose = null
      ws.onerror = () => {}
      ws.close()
    }
    if (wasOpen) this.onclose?.({ code: 1000, reason: 'disconnect() called' })
  }

  resume (): void {
    if (this.closed || !this.paused) return
    this.paused = false
    this.attempts = 0
    this.open()
  }

  private open (): void {
    resolveToken(this.token).then(token => {
      if (this.closed || this.paused) return
      let ws: WebSocketLike
      try {
        ws = new this.Impl(withToken(this.url, token))
      } catch (error) {
        // E.g. a browser's SecurityError (ws:// from an https page): a failed attempt.
        this.reportError(error)
        this.retry()
        return
      }
      this.ws = ws
      ws.onopen = e => {
        this.attempts = 0
        this.readyState = ReadyState.OPEN
        this.onopen?.(e)
      }
      ws.onmessage = e => this.onmessage?.(e)
      ws.onerror = e => {
        this.reportError(e)
        this.onerror?.(e)
      }
      ws.onclose = e => {
        if (this.ws !== ws) return
        this.ws = null
        const wasOpen = this.readyState === ReadyState.OPEN
        this.readyState = ReadyState.CONNECTING
        // ShareDB only needs to hear about the close of a socket it saw open; a failed
        // attempt leaves it `disconnected` (or `connecting`, for the very first one).
        if (wasOpen) this.onclose?.(e)
        this.retry()
      }
    }, error => {
      this.reportError(error)
      this.retry()
    })
  }

  private retry (): void {
    if (this.closed || this.paused) return
    const wait = Math.min(100 * 2 ** this.attempts, this.maxBackoffTime)
    this.attempts++
    this.timer = setTimeout(() => { this.timer = null; this.open() }, wait)
  }
}

export class OtClient extends ObservableV2<OtClientEvents> {
  /** yserve relays ShareDB presence (OT clients' cursors): see `OtText.setCursor`. */
  readonly supportsPresence = true as const
  /** The stock ShareDB connection, for what this class does not wrap. */
  readonly connection: Connection
  private readonly socket: ReconnectingSocket
  private readonly texts = new Map<Doc, OtText>()

  /** `serverUrl`: `ws://host:port` (or `http://…`); the `/api/ot` path is added. */
  constructor (serverUrl: string, opts: OtClientOptions = {}) {
    super()
    const Impl = webSocketImpl(opts.WebSocket)
    this.socket = new ReconnectingSocket(
      `${wsBase(serverUrl)}/api/ot`, opts.token, Impl, opts.maxBackoffTime ?? 2500,
      error => this.emit('connection-error', [error])
    )
    this.connection = new ShareDB.Connection(this.socket as never)
    this.connection.on('state', state => this.emit('state', [state as OtConnectionState]))
    // Errors the client cannot pin on a request (e.g. an unexpected message) are emitted on
    // the connection; a listener keeps them from being thrown as unhandled 'error' events.
    this.connection.on('error', error => this.emit('connection-error', [error]))
  }

  get state (): OtConnectionState {
    return this.connection.state as OtConnectionState
  }

  /** Fetches and subscribes to the root text `textName` of document `docName`. */
  async openText (docName: string, textName: string): Promise<OtText> {
    const doc = this.connection.get(docName, textName)
    const open = this.texts.get(doc)
    if (open !== undefined) return open
    await new Promise<void>((resolve, reject) => doc.subscribe(err => err ? reject(err) : resolve()))
    if (doc.type === null) throw new Error(`${docName}/${textName}: the server sent no text`)
    if (doc.type.uri !== richText.type.uri) throw new Error(`${docName}/${textName}: not a rich-text document (${doc.type.uri})`)
    const existing = this.texts.get(doc) // a concurrent openText of the same text
    if (existing !== undefined) return existing
    const text = new OtText(doc, () => this.texts.delete(doc))
    this.texts.set(doc, text)
    return text
  }

  /**
   * Disconnects until `connect()`: no reconnection meanwhile. Edits made while disconnected
   * apply locally and are sent (once) when connected again, as after a dropped connection.
   */
  disconnect (): void {
    this.socket.pause()
  }

  /** Connects again after `disconnect()` (a new connection, with a fresh token). */
  connect (): void {
    this.socket.resume()
  }

  /** Closes the connection for good. */
  close (): void {
    this.socket.close()
    super.destroy()
  }
}

export interface OtTextEvents {
  /** After an op was applied: local ones at once, remote ones once committed. */
  op: (ops: DeltaOp[], meta: { local: boolean }) => void
  /** The whole text was replaced (re-fetched after a rejected op, or after reconnecting late). */
  load: () => void
  /**
   * Another OT client's cursor on this text appeared or moved (a range), or went away
   * (`null`), after `watchCursors()`. Ranges follow the text's ops, as ShareDB transforms them.
   */
  cursor: (id: string, range: OtRange | null) => void
}

/** A cursor (`length` 0) or selection, in UTF-16 code units; extra fields travel along. */
export interface OtRange {
  index: number
  length: number
  [field: string]: unknown
}

/** One subscribed text. Indexes are UTF-16 code units (JavaScript string indexes). */
export class OtText extends ObservableV2<OtTextEvents> {
  /** The stock ShareDB doc. */
  readonly doc: Doc
  private readonly forget: () => void
  private presence: ShareDBPresence<OtRange> | null = null
  private local: LocalPresence<OtRange> | null = null

  constructor (doc: Doc, forget: () => void) {
    super()
    this.doc = doc
    this.forget = forget
    doc.on('op', (op, source) => this.emit('op', [opsOf(op), { local: Boolean(source) }]))
    doc.on('load', () => this.emit('load', []))
  }

  get docName (): string { return this.doc.collection }
  get textName (): string { return this.doc.id }

  /** The text as a Quill Delta. */
  get contents (): DeltaOp[] {
    return (this.doc.data?.ops ?? []) as DeltaOp[]
  }

  /** The plain text, embeds left out (as Yjs `toString()` and the REST `text` field). */
  get value (): string {
    let s = ''
    for (const op of this.contents) {
      if ('insert' in op && typeof op.insert === 'string') s += op.insert
    }
    return s
  }

  get version (): number {
    return this.doc.version ?? 0
  }

  /**
   * Submits a Quill Delta; resolves once the server acknowledged it (it is committed),
   * rejects with the ShareDB error (an `OtError`) if it was refused.
   */
  submit (ops: DeltaOp[]): Promise<void> {
    if (ops.length === 0) return Promise.resolve()
    return new Promise((resolve, reject) => {
      this.doc.submitOp(ops, undefined, err => err ? reject(err) : resolve())
    })
  }

  insert (index: number, text: string, attributes?: DeltaAttributes): Promise<void> {
    if (text.length === 0) return Promise.resolve()
    return this.submit([...at(index), attributes === undefined ? { insert: text } : { insert: text, attributes }])
  }

  delete (index: number, length: number): Promise<void> {
    if (length <= 0) return Promise.resolve()
    return this.submit([...at(index), { delete: length }])
  }

  /** Replaces `length` units at `index` with `text` (insert, then delete: SPEC §5). */
  replace (index: number, length: number, text: string, attributes?: DeltaAttributes): Promise<void> {
    const ops: DeltaOp[] = [...at(index)]
    if (text.length > 0) ops.push(attributes === undefined ? { insert: text } : { insert: text, attributes })
    if (length > 0) ops.push({ delete: length })
    return ops.length === at(index).length ? Promise.resolve() : this.submit(ops)
  }

  /** Sets (or with `null` values removes) formatting on `length` units at `index`. */
  format (index: number, length: number, attributes: DeltaAttributes): Promise<void> {
    if (length <= 0) return Promise.resolve()
    return this.submit([...at(index), { retain: length, attributes }])
  }

  /** RETAIN with attributes: the same as `format`. */
  retain (index: number, length: number, attributes: DeltaAttributes): Promise<void> {
    return this.format(index, length, attributes)
  }

  /** The other OT clients' cursors on this text, by presence id (after `watchCursors()`). */
  get cursors (): Record<string, OtRange> {
    return { ...(this.presence?.remotePresences ?? {}) }
  }

  /** Receives the other OT clients' cursors from now on (`cursor` events, `cursors`). */
  watchCursors (): Promise<void> {
    const presence = this.docPresence()
    return new Promise((resolve, reject) => presence.subscribe(err => err ? reject(err) : resolve()))
  }

  /**
   * Shows this client's cursor or selection to the other OT clients of the text (`null`
   * hides it). Resolves once the server relayed it; rejects with the ShareDB error.
   */
  setCursor (range: OtRange | null): Promise<void> {
    const presence = this.docPresence()
    this.local ??= presence.create()
    const local = this.local
    return new Promise((resolve, reject) => local.submit(range as OtRange, err => err ? reject(err) : resolve()))
  }

  private docPresence (): ShareDBPresence<OtRange> {
    if (this.presence === null) {
      this.presence = this.doc.connection.getDocPresence(this.doc.collection, this.doc.id)
      this.presence.on('receive', (id, range) => this.emit('cursor', [id, range ?? null]))
    }
    return this.presence
  }

  /**
   * Hides this client's cursor, unsubscribes, and forgets the text (`openText` subscribes
   * afresh).
   */
  async close (): Promise<void> {
    this.forget()
    super.destroy()
    const presence = this.presence
    this.presence = this.local = null
    if (presence !== null) await new Promise<void>(resolve => presence.destroy(() => resolve()))
    await new Promise<void>(resolve => this.doc.destroy(() => resolve()))
  }
}

function at (index: number): DeltaOp[] {
  return index > 0 ? [{ retain: index }] : []
}

function opsOf (op: unknown): DeltaOp[] {
  if (Array.isArray(op)) return op as DeltaOp[]
  const ops = (op as { ops?: unknown } | null)?.ops
  return Array.isArray(ops) ? ops as DeltaOp[] : []
}
