// `YserveProvider`: y-websocket's `WebsocketProvider` with what yserve adds (SPEC §7): a
// token function called for every (re)connect, reconnection after the server closes an
// expired token's connection with 4401, an `unsynced` count that reaches 0 exactly when the
// server has committed every local change, and optional y-indexeddb persistence.
//
// It extends the stock class rather than rewriting it, so the y-protocols message handling,
// awareness, BroadcastChannel and backoff are upstream's. It hooks in at three documented
// seams: the `WebSocketPolyfill` constructor (to fetch the token before each socket opens),
// `shouldReconnect` (to retry after 4401) and the per-instance `messageHandlers` table (to
// see what the server confirms).

import * as Y from 'yjs'
import { WebsocketProvider, messageSync } from 'y-websocket'
import * as awarenessProtocol from 'y-protocols/awareness'
import * as syncProtocol from 'y-protocols/sync'
import * as encoding from 'lib0/encoding'
import * as decoding from 'lib0/decoding'
import type { ObservableV2 } from 'lib0/observable'
import { IndexeddbPersistence } from 'y-indexeddb'
import {
  type TokenSource, type WebSocketConstructor, type WebSocketLike,
  resolveToken, webSocketImpl, withToken, encodeDocPath, wsBase, ReadyState, InvalidNameError, isDotSegment
} from './token.js'
import { CloseCode } from './wire.js'

export type ProviderStatus = 'connecting' | 'connected' | 'disconnected'

export interface YserveProviderOptions {
  /** A JWT or a function returning one; the function is called before every connection. */
  token?: TokenSource
  /** The WebSocket constructor; in Node < 22, pass the `ws` package's. */
  WebSocketPolyfill?: WebSocketConstructor
  /** Connect at once (default `true`); otherwise call `connect()`. */
  connect?: boolean
  /** Keep the document in IndexedDB too (y-indexeddb). Ignored where IndexedDB is absent. */
  offline?: boolean
  /** More URL query parameters. */
  params?: Record<string, string>
  awareness?: awarenessProtocol.Awareness
  /** Ask the server for its state every so many ms (SyncStep1); off by default. */
  resyncInterval?: number
  /** The longest wait between reconnection attempts, ms (default 2500, as y-websocket). */
  maxBackoffTime?: number
  /** Do not share the document with other tabs over BroadcastChannel. */
  disableBc?: boolean
}

export interface YserveProviderEvents {
  status: (event: { status: ProviderStatus }) => void
  /** `true` once the server's state is applied (SyncStep2 received); `false` on disconnect. */
  sync: (synced: boolean) => void
  /** The number of local changes the server has not confirmed yet; 0: all committed. */
  unsynced: (count: number) => void
  'connection-close': (event: CloseEvent | null, provider: WebsocketProvider) => void
  /**
   * A socket error, the token function failing, or the WebSocket constructor throwing (the
   * provider retries with backoff).
   */
  'connection-error': (event: Event | Error, provider: WebsocketProvider) => void
  /** The server refused for good (4400–4499 other than 4401 with a token function, 4408). */
  closed: (event: { code: number, reason: string }, provider: WebsocketProvider) => void
}

type StockEvents = WebsocketProvider extends ObservableV2<infer E> ? E : never
type Listener = (...args: any[]) => void

/**
 * Whether to reconnect after the server closed the connection. The stock client gives up on
 * every 4400–4499 code (RFC 6455 private range mirroring HTTP 4xx); yserve uses two of them
 * for conditions a reconnect does fix: 4401 (the token expired: a token function can mint a
 * new one) and 4408 (idle, e.g. a suspended laptop).
 */
function shouldReconnect (code: number, tokenIsFunction: boolean): boolean {
  if (code === CloseCode.TokenExpired) return tokenIsFunction
  if (code === CloseCode.Idle) return true
  return !(code >= 4400 && code < 4500)
}

/**
 * A WebSocket class that y-websocket constructs synchronously, as it always does, but that
 * opens the real socket only once the token is known, with `?token=` set. So the token
 * function runs on every (re)connect, just before the socket opens, and may be async.
 */
function tokenSocketClass (
  Impl: WebSocketConstructor,
  token: TokenSource | undefined,
  onError: (error: unknown) => void
): WebSocketConstructor {
  return class TokenSocket implements WebSocketLike {
    static readonly CONNECTING = ReadyState.CONNECTING
    static readonly OPEN = ReadyState.OPEN
    static readonly CLOSING = ReadyState.CLOSING
    static readonly CLOSED = ReadyState.CLOSED
    // y-websocket compares `ws.readyState === ws.OPEN` on the instance.
    readonly CONNECTING = ReadyState.CONNECTING
    readonly OPEN = ReadyState.OPEN
    readonly CLOSING = ReadyState.CLOSING
    readonly CLOSED = ReadyState.CLOSED

    readyState: number = ReadyState.CONNECTING
    binaryType = 'arraybuffer'
    onopen: ((event: any) => void) | null = null
    onmessage: ((event: any) => void) | null = null
    onclose: ((event: any) => void) | null = null
    onerror: ((event: any) => void) | null = null
    private inner: WebSocketLike | null = null
    private closedByUs = false

    constructor (url: string, protocols?: string | string[]) {
      resolveToken(token).then(t => {
        if (this.closedByUs) return
        let ws: WebSocketLike
        try {
          ws = new Impl(withToken(url, t), protocols)
        } catch (error) {
          // E.g. a browser's SecurityError (ws:// from an https page) or a URL the
          // implementation refuses: the stock provider would throw from `connect()`; here it
          // is a failed attempt like any other.
          this.fail(error, 'WebSocket constructor failed')
          return
        }
        ws.binaryType = this.binaryType
        ws.onopen = e => { this.readyState = ReadyState.OPEN; this.onopen?.(e) }
        ws.onmessage = e => this.onmessage?.(e)
        ws.onerror = e => this.onerror?.(e)
        ws.onclose = e => { this.readyState = ReadyState.CLOSED; this.onclose?.(e) }
        this.inner = ws
      }, error => {
        if (this.closedByUs) return
        this.fail(error, 'token function failed')
      })
    }

    /**
     * Reports `error` as `connection-error` and closes like a failed connection (1006), so
     * the provider backs off and tries again (calling the token function again).
     */
    private fail (error: unknown, reason: string): void {
      onError(error)
      this.readyState = ReadyState.CLOSED
      this.onclose?.({ code: 1006, reason, wasClean: false })
    }

    send (data: any): void {
      if (this.inner !== null && this.readyState === ReadyState.OPEN) this.inner.send(data)
    }

    close (code?: number, reason?: string): void {
      this.closedByUs = true
      this.readyState = this.inner === null ? ReadyState.CLOSED : ReadyState.CLOSING
      this.inner?.close(code, reason)
    }
  }
}

/** A local change not yet confirmed by the server: the clocks it wrote and what it deleted. */
interface PendingChange {
  /** client → end clock of the structs it contains. */
  to: Map<number, number>
  /** client → deleted ranges. */
  ds: Map<number, Array<{ clock: number, len: number }>>
}

/** What an update writes: the end clock per client (Skips are gaps, not content) and its deletions. */
function changeOf (update: Uint8Array): PendingChange {
  const { structs, ds } = Y.decodeUpdate(update)
  const to = new Map<number, number>()
  for (const s of structs) {
    if (s instanceof Y.Skip) continue
    const end = s.id.clock + s.length
    if ((to.get(s.id.client) ?? 0) < end) to.set(s.id.client, end)
  }
  return { to, ds: ds.clients }
}

/** Whether the sorted, merged ranges `have` cover `[clock, clock + len)`. */
function rangeCovered (have: Array<{ clock: number, len: number }> | undefined, clock: number, len: number): boolean {
  if (have === undefined) return false
  let lo = 0
  let hi = have.length - 1
  let found = -1
  while (lo <= hi) { // the last range starting at or before `clock`
    const mid = (lo + hi) >> 1
    if (have[mid].clock <= clock) { found = mid; lo = mid + 1 } else hi = mid - 1
  }
  return found >= 0 && have[found].clock + have[found].len >= clock + len
}

export class YserveProvider extends WebsocketProvider {
  /** The document's name (unencoded; `roomname` in y-websocket). */
  readonly docName: string
  /** The IndexedDB persistence when `offline` was asked for and IndexedDB exists. */
  readonly persistence: IndexeddbPersistence | null = null
  private readonly _pending: PendingChange[] = []
  // What the server has confirmed since the oldest pending change was made (see `_confirm`).
  private _confirmedSv = new Map<number, number>()
  private _confirmedDs = Y.createDeleteSet()
  private _resyncTimer: ReturnType<typeof setInterval> | null = null
  private _waiters: Array<{ until: () => boolean, resolve: () => void, reject: (e: Error) => void }> = []
  private readonly _onLocalUpdate: (update: Uint8Array, origin: unknown) => void
  private readonly _onSync: () => void

  /**
   * Throws an `InvalidNameError` for a `docName` of `.` or `..`: no URL can carry it (every
   * other name can; see `encodeDocPath`).
   */
  constructor (serverUrl: string, docName: string, ydoc: Y.Doc, opts: YserveProviderOptions = {}) {
    if (isDotSegment(docName)) throw new InvalidNameError(docName, 'document name')
    const Impl = webSocketImpl(opts.WebSocketPolyfill)
    const tokenIsFunction = typeof opts.token === 'function'
    // The socket class needs the provider to report errors (the token function's, the
    // WebSocket constructor's), and `this` does not exist before `super()`.
    const self: { provider: YserveProvider | null } = { provider: null }
    const Socket = tokenSocketClass(Impl, opts.token, error => {
      const p = self.provider
      if (p !== null) p._emit('connection-error', [error instanceof Error ? error : new Error(String(error)), p])
    })
    super(wsBase(serverUrl), docName, ydoc, {
      connect: false, // below, once this class is set up
      awareness: opts.awareness,
      params: opts.params ?? {},
      WebSocketPolyfill: Socket as unknown as typeof WebSocket,
      maxBackoffTime: opts.maxBackoffTime,
      disableBc: opts.disableBc,
      // Not passed on: the stock timer reads the global `WebSocket.OPEN`, absent in Node < 22.
      resyncInterval: -1,
      shouldReconnect: event => shouldReconnect(event.code, tokenIsFunction)
    })
    self.provider = this
    this.docName = docName

    // Every message from the server passes here; BroadcastChannel messages from other tabs
    // too, but with `emitSynced` false, and those confirm nothing.
    const stockSync = this.messageHandlers[messageSync]
    this.messageHandlers[messageSync] = (encoder, decoder, provider, emitSynced, messageType) => {
      const peek = decoding.clone(decoder)
      stockSync(encoder, decoder, provider, emitSynced, messageType)
      if (emitSynced) this._confirm(peek)
    }
    // Changes applied from the server have the provider as origin (y-protocols'
    // `readSyncMessage`); every other change is local (typing, y-indexeddb loading, …).
    this._onLocalUpdate = (update, origin) => {
      if (origin === this) return
      this._pending.push(changeOf(update))
      this._emit('unsynced', [this._pending.length])
    }
    ydoc.on('update', this._onLocalUpdate)
    // A document that already has content may hold changes the server lacks.
    if (ydoc.store.clients.size > 0) this._pending.push(changeOf(Y.encodeStateAsUpdate(ydoc)))

    this._onSync = () => this._wake()
    this.on('sync', this._onSync)

    if (opts.offline === true && typeof indexedDB !== 'undefined') {
      // Named after the server too, so that two servers' documents of the same name stay apart.
      this.persistence = new IndexeddbPersistence(`yserve:${this.serverUrl}/${docName}`, ydoc)
    }
    const resync = opts.resyncInterval ?? -1
    if (resync > 0) {
      this._resyncTimer = setInterval(() => {
        if (this.ws !== null && this.ws.readyState === ReadyState.OPEN) {
          const encoder = encoding.createEncoder()
          encoding.writeVarUint(encoder, messageSync)
          syncProtocol.writeSyncStep1(encoder, this.doc)
          this.ws.send(encoding.toUint8Array(encoder))
        }
      }, resync)
    }
    if (opts.connect ?? true) this.connect()
  }

  /** The URL without the token: the name percent-encoded piece by piece (see `encodeDocPath`). */
  override get url (): string {
    const query = new URLSearchParams(this.params).toString()
    return `${this.serverUrl}/${encodeDocPath(this.roomname)}${query.length > 0 ? '?' + query : ''}`
  }

  get status (): ProviderStatus {
    return this.wsconnected ? 'connected' : this.wsconnecting ? 'connecting' : 'disconnected'
  }

  /** Local changes the server has not confirmed yet; 0 means all of them are committed. */
  get unsyncedChanges (): number {
    return this._pending.length
  }

  /** Resolves once synced with the server (at once if it is). */
  whenSynced (): Promise<void> {
    return this._when(() => this.synced)
  }

  /** Resolves once every local change is committed on the server (`unsyncedChanges === 0`). */
  whenConfirmed (): Promise<void> {
    return this._when(() => this._pending.length === 0)
  }

  override on<N extends keyof YserveProviderEvents & string>(name: N, f: YserveProviderEvents[N]): YserveProviderEvents[N] {
    return super.on(name as keyof StockEvents & string, f as Listener as never) as never
  }

  override once<N extends keyof YserveProviderEvents & string>(name: N, f: YserveProviderEvents[N]): void {
    super.once(name as keyof StockEvents & string, f as Listener as never)
  }

  override off<N extends keyof YserveProviderEvents & string>(name: N, f: YserveProviderEvents[N]): void {
    super.off(name as keyof StockEvents & string, f as Listener as never)
  }

  override destroy (): void {
    if (this._resyncTimer !== null) clearInterval(this._resyncTimer)
    this.doc.off('update', this._onLocalUpdate)
    void this.persistence?.destroy()
    for (const w of this._waiters.splice(0)) w.reject(new Error('provider destroyed'))
    super.destroy()
  }

  private _emit (name: string, args: unknown[]): void {
    (this as unknown as { emit: (n: string, a: unknown[]) => void }).emit(name, args)
  }

  private _when (until: () => boolean): Promise<void> {
    if (until()) return Promise.resolve()
    return new Promise((resolve, reject) => this._waiters.push({ until, resolve, reject }))
  }

  private _wake (): void {
    this._waiters = this._waiters.filter(w => {
      if (!w.until()) return true
      w.resolve()
      return false
    })
  }

  /**
   * Records what a server message proves the server has. yserve commits every update before
   * it sends anything that reveals it (SPEC §2): its SyncStep1 carries its state vector, its
   * SyncStep2 its full delete set, and every accepted update — the sender's own included —
   * is relayed back. So a local change is durable once its clocks are within the server's
   * state vector and its deletions within the delete sets the server sent.
   *
   * Only messages received after a change was made can confirm it (the server learns our
   * clocks from us; an item deleted by someone else before we deleted it would already be
   * deleted here), so nothing is decoded while nothing is pending, and the confirmed state
   * is dropped whenever the count reaches 0.
   */
  private _confirm (decoder: decoding.Decoder): void {
    if (this._pending.length === 0) return
    const type = decoding.readVarUint(decoder)
    const payload = decoding.readVarUint8Array(decoder)
    const sv = this._confirmedSv
    if (type === syncProtocol.messageYjsSyncStep1) {
      for (const [client, clock] of Y.decodeStateVector(payload)) {
        if ((sv.get(client) ?? 0) < clock) sv.set(client, clock)
      }
    } else {
      const change = changeOf(payload)
      for (const [client, clock] of change.to) {
        if ((sv.get(client) ?? 0) < clock) sv.set(client, clock)
      }
      if (change.ds.size > 0) {
        const ds = Y.createDeleteSet()
        ds.clients = change.ds as typeof ds.clients
        this._confirmedDs = Y.mergeDeleteSets([this._confirmedDs, ds])
      }
    }
    const before = this._pending.length
    const remaining = this._pending.filter(p => !this._covered(p))
    if (remaining.length === before) return
    this._pending.splice(0, this._pending.length, ...remaining)
    if (remaining.length === 0) {
      this._confirmedSv = new Map()
      this._confirmedDs = Y.createDeleteSet()
    }
    this._emit('unsynced', [remaining.length])
    this._wake()
  }

  private _covered (change: PendingChange): boolean {
    for (const [client, clock] of change.to) {
      if ((this._confirmedSv.get(client) ?? 0) < clock) return false
    }
    for (const [client, ranges] of change.ds) {
      const have = this._confirmedDs.clients.get(client)
      for (const r of ranges) {
        if (!rangeCovered(have, r.clock, r.len)) return false
      }
    }
    return true
  }
}
