// Test helpers: the built yserve binary (tests/support/server.mjs), waiting on
// conditions with timeouts, and HS256 tokens minted here (claims as `src/auth.rs` reads them:
// `sub`, `exp`, `docs`).
import { createHmac } from 'node:crypto'
import WebSocket from 'ws'
import { Y, YserveProvider } from '../dist/index.js'
import { Server as BaseServer } from '../../tests/support/server.mjs'
import { waitFor } from '../../tests/support/wait.mjs'

// Every y-websocket provider adds a process 'exit' listener.
process.setMaxListeners(200)

export { binaryPath } from '../../tests/support/server.mjs'

// The prefix names the suite whose temporary directories a crashed run leaves behind.
export class Server extends BaseServer {
  constructor (extraArgs = []) { super(extraArgs, 'yserve-sdk-') }
}

export { waitFor }

/** Rejects if `promise` does not settle within `ms`. */
export function within (promise, ms, what) {
  let timer
  return Promise.race([
    promise.finally(() => clearTimeout(timer)),
    new Promise((resolve, reject) => { timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms) })
  ])
}

const b64url = data => Buffer.from(data).toString('base64url')

/** An HS256 JWT as `yserve token` makes it: `{sub, exp, docs}` (exp in Unix seconds). */
export function signToken (secret, { sub, exp, docs }) {
  const header = b64url(JSON.stringify({ alg: 'HS256', typ: 'JWT' }))
  const payload = b64url(JSON.stringify({ sub, exp, docs }))
  const sig = createHmac('sha256', secret).update(`${header}.${payload}`).digest('base64url')
  return `${header}.${payload}.${sig}`
}

/** Remembers providers and docs so that a test can destroy them all in `finally`. */
export class Clients {
  constructor () { this.all = [] }

  /** A YserveProvider with its own Y.Doc (BroadcastChannel off: each is a separate client). */
  add (server, name, opts = {}) {
    const doc = opts.doc ?? new Y.Doc()
    const provider = new YserveProvider(server.url, name, doc, { WebSocketPolyfill: WebSocket, disableBc: true, ...opts })
    const c = { doc, provider, text: doc.getText('t'), awareness: provider.awareness }
    this.all.push(c)
    return c
  }

  track (destroyable) {
    this.all.push({ provider: destroyable })
    return destroyable
  }

  destroyAll () {
    for (const c of this.all.splice(0)) {
      c.provider.destroy()
      c.doc?.destroy()
    }
  }
}

/**
 * A `ws` WebSocket class whose first construction throws, as a browser's SecurityError does
 * for ws:// from an https page; `calls()` counts constructions.
 */
export function throwingOnceWebSocket () {
  let calls = 0
  class FlakyWebSocket extends WebSocket {
    constructor (url, protocols) {
      if (++calls === 1) throw new Error('SecurityError: insecure WebSocket from a secure page')
      super(url, protocols)
    }
  }
  return { FlakyWebSocket, calls: () => calls }
}

/**
 * Collects unhandled rejections instead of letting the test runner fail the test at once, so
 * a test can assert there were none; `restore()` puts the runner's listeners back.
 */
export function captureUnhandledRejections () {
  const list = []
  const listeners = process.listeners('unhandledRejection')
  process.removeAllListeners('unhandledRejection')
  process.on('unhandledRejection', e => list.push(String(e)))
  return {
    list,
    restore () {
      process.removeAllListeners('unhandledRejection')
      for (const l of listeners) process.on('unhandledRejection', l)
    }
  }
}

export { Y, WebSocket }
