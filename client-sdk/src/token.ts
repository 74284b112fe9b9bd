// Tokens and WebSocket constructors, shared by the provider, the OT client and the REST
// client.

/**
 * A JWT, or a function returning one. The function is called again for every connection
 * (and every REST request), so it may fetch a fresh token when the old one expires.
 */
export type TokenSource = string | (() => string | Promise<string>)

/** Resolves a token source; `undefined` means "no token" (anonymous mode). */
export async function resolveToken (token: TokenSource | undefined): Promise<string | undefined> {
  if (token === undefined) return undefined
  return typeof token === 'function' ? await token() : token
}

/**
 * The part of the WebSocket API the SDK uses: the browser's `WebSocket`, or the `ws`
 * package in Node (which has no global WebSocket before Node 22).
 */
export interface WebSocketLike {
  readonly readyState: number
  binaryType: string
  onopen: ((event: any) => void) | null
  onmessage: ((event: any) => void) | null
  onclose: ((event: any) => void) | null
  onerror: ((event: any) => void) | null
  send (data: any): void
  close (code?: number, reason?: string): void
}

export type WebSocketConstructor = new (url: string, protocols?: string | string[]) => WebSocketLike

/** The given constructor, else the global one; throws if there is neither (Node < 22). */
export function webSocketImpl (given: WebSocketConstructor | undefined): WebSocketConstructor {
  const impl = given ?? (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket
  if (impl === undefined) {
    throw new Error('no WebSocket implementation: pass one (e.g. the `ws` package in Node)')
  }
  return impl
}

/** `url` with `?token=` set (or left out when there is no token). */
export function withToken (url: string, token: string | undefined): string {
  if (token === undefined) return url
  const u = new URL(url)
  u.searchParams.set('token', token)
  return u.toString()
}

/**
 * A name the SDK cannot put in a URL: a whole document name (provider) or a REST path
 * segment (`ApiClient`: document, text or lock name) that is exactly `.` or `..`. Every
 * WHATWG URL parser (browsers, Node's `fetch` and `ws`) resolves such a segment, `%2e` and
 * `%2E` included, so no spelling of it reaches the server as a name: `api.releaseLock(doc,
 * '..')` would become `DELETE /api/docs/{doc}/`, the route that deletes the document.
 * Thrown (or, by `ApiClient` methods, rejected with) before anything is sent. (The OT
 * client sends names inside JSON messages, so it opens such names.)
 */
export class InvalidNameError extends Error {
  /** The refused name or segment. */
  readonly value: string

  constructor (value: string, what: string) {
    super(`${what} ${JSON.stringify(value)} cannot be put in a URL: a "." or ".." path segment is resolved away by every URL parser`)
    this.name = 'InvalidNameError'
    this.value = value
  }
}

/** Whether `segment` is one a URL parser resolves away (before percent-encoding: `.`, `..`). */
export function isDotSegment (segment: string): boolean {
  return segment === '.' || segment === '..'
}

/**
 * A document name as a URL path: each `/`-separated piece percent-encoded, the `/`s kept.
 * The server percent-decodes the whole path after the first `/` (SPEC §2), so this
 * round-trips any name, including `?`, `#`, `%`, spaces and non-ASCII, which the stock
 * y-websocket client appends to the URL unencoded.
 *
 * A piece that is `.` or `..` would be a dot segment, which URL parsers resolve (`a/../b`
 * is sent as `b`): the `/` on either side of one is sent as `%2F` instead, which makes it
 * part of a longer segment and decodes to the same name. A whole name of `.` or `..` has no
 * such spelling: it throws an `InvalidNameError`.
 */
export function encodeDocPath (name: string): string {
  if (isDotSegment(name)) throw new InvalidNameError(name, 'document name')
  const pieces = name.split('/')
  let path = encodeURIComponent(pieces[0])
  for (let i = 1; i < pieces.length; i++) {
    const slash = isDotSegment(pieces[i - 1]) || isDotSegment(pieces[i]) ? '%2F' : '/'
    path += slash + encodeURIComponent(pieces[i])
  }
  // The server reserves paths starting with `/api/` for its own endpoints and matches that
  // prefix before decoding; `%61` is an `a`, so a document named `api/…` stays reachable.
  return path.startsWith('api/') ? '%61' + path.slice(1) : path
}

/** `ws://host:port/` → `ws://host:port` (as y-websocket trims it). */
export function trimSlashes (url: string): string {
  return url.replace(/\/+$/, '')
}

/** A WebSocket base URL: `http(s)://` becomes `ws(s)://`, so one server URL serves every client. */
export function wsBase (url: string): string {
  return trimSlashes(url.replace(/^http(s?):\/\//i, 'ws$1://'))
}

export const ReadyState = { CONNECTING: 0, OPEN: 1, CLOSING: 2, CLOSED: 3 } as const
