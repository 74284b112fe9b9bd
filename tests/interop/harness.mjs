// Shared helpers for the interop tests: the built yserve binary (../support/server.mjs),
// stock y-websocket providers connected to it, and waiting on conditions.
import * as Y from 'yjs'
import { WebsocketProvider } from 'y-websocket'
import WebSocket from 'ws'
import http from 'node:http'
import { Server as BaseServer } from '../support/server.mjs'
import { waitFor } from '../support/wait.mjs'

// Every WebsocketProvider adds a process 'exit' listener; the 50-room test has 200 of them.
process.setMaxListeners(1000)

export { binaryPath } from '../support/server.mjs'

// The prefix names the suite whose temporary directories a crashed run leaves behind.
export class Server extends BaseServer {
  constructor (extraArgs = []) { super(extraArgs, 'yserve-interop-') }
}

/** A stock WebsocketProvider with its own Y.Doc. */
export function client (server, room, opts = {}) {
  const doc = new Y.Doc()
  const provider = new WebsocketProvider(server.url, room, doc, { WebSocketPolyfill: WebSocket, disableBc: true, ...opts })
  return { doc, provider, text: doc.getText('t'), awareness: provider.awareness }
}

/** Destroys the provider and the doc (the doc owns the awareness, whose timer keeps node alive). */
export function destroyClient (c) {
  c.provider.destroy()
  c.doc.destroy()
}

export function destroyAll (...clients) {
  for (const c of clients) destroyClient(c)
}

/** Remembers every client it creates so that a test can destroy them all in `finally`. */
export class Clients {
  constructor () { this.all = [] }
  add (server, room, opts) {
    const c = client(server, room, opts)
    this.all.push(c)
    return c
  }

  destroyAll () {
    for (const c of this.all.splice(0)) destroyClient(c)
  }
}

/** The `net.Socket` under a connected provider (`WebsocketProvider.ws` is a `ws` WebSocket). */
export function underlyingSocket (c) {
  const socket = c.provider.ws?._socket
  if (!socket) throw new Error('provider has no open socket')
  return socket
}

/**
 * Drops a provider's TCP connection without a close frame and keeps it from reconnecting:
 * `destroy()` ends the TCP stream (FIN), `{ reset: true }` aborts it (RST).
 */
export function dropConnection (c, { reset = false } = {}) {
  const socket = underlyingSocket(c)
  c.provider.shouldConnect = false
  if (reset) socket.resetAndDestroy()
  else socket.destroy()
}

/** Records a provider's `status` and `connection-close` events from now on. */
export function watchConnection (provider) {
  const log = { statuses: [], closes: 0, ws: provider.ws }
  provider.on('status', e => log.statuses.push(e.status))
  provider.on('connection-close', () => { log.closes++ })
  return log
}

/**
 * A raw `ws` WebSocket on `path` (already URL-encoded, e.g. `/a%0Ab`). Resolves when open
 * with `{ ws, messages, closed }`: `messages` collects binary frames as Uint8Array, `closed`
 * resolves with `{ code, reason }`. Rejects with `{ status, body }` if the upgrade is refused.
 */
export function rawSocket (server, path) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(server.url + path)
    const messages = []
    const closed = new Promise(resolve => ws.on('close', (code, reason) => resolve({ code, reason: reason.toString() })))
    ws.on('message', data => messages.push(new Uint8Array(data)))
    ws.on('open', () => resolve({ ws, messages, closed }))
    ws.on('error', reject)
    ws.on('unexpected-response', (req, res) => {
      let body = ''
      res.on('data', d => { body += d })
      res.on('end', () => {
        req.destroy()
        reject(Object.assign(new Error(`upgrade refused: ${res.statusCode}`), { status: res.statusCode, body }))
      })
    })
  })
}

/**
 * One JSON request to the server's HTTP API: resolves `{ status, body }` (the body parsed
 * when it is JSON), rejects if the connection fails or nothing answers in 10 s. `agent:
 * false` opens a fresh connection (for a server that may be killed mid-request).
 */
export function restRequest (srv, method, path, body, { token, agent } = {}) {
  const payload = body === undefined ? Buffer.alloc(0) : Buffer.from(JSON.stringify(body))
  const headers = { 'content-length': payload.length }
  if (body !== undefined) headers['content-type'] = 'application/json'
  if (token) headers.authorization = `Bearer ${token}`
  return new Promise((resolve, reject) => {
    const req = http.request(srv.http + path, { method, headers, ...(agent === undefined ? {} : { agent }) }, res => {
      let raw = ''
      res.setEncoding('utf8')
      res.on('data', d => { raw += d })
      res.on('end', () => {
        let json
        try { json = JSON.parse(raw) } catch { json = raw }
        resolve({ status: res.statusCode, body: json })
      })
      res.on('error', reject)
    })
    req.setTimeout(10000, () => req.destroy(new Error(`${method} ${path}: no answer in 10 s`)))
    req.on('error', reject)
    req.end(payload)
  })
}

/** Resolves `{ ms, value }` with the time `fn` took. */
export async function timed (fn) {
  const start = Date.now()
  const value = await fn()
  return { ms: Date.now() - start, value }
}

export { waitFor }

export const synced = (c, ms) => waitFor(() => c.provider.synced, `provider ${c.provider.roomname} synced`, ms)

export { Y, WebsocketProvider, WebSocket }
