// Test helpers: the built yserve binary on 127.0.0.1:0 with a temporary database, waiting on
// conditions with timeouts, and HS256 tokens minted here (claims as `src/auth.rs` reads them:
// `sub`, `exp`, `docs`).
import { spawn } from 'node:child_process'
import { createHmac } from 'node:crypto'
import { mkdtempSync, rmSync, existsSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join, dirname } from 'node:path'
import { fileURLToPath } from 'node:url'
import WebSocket from 'ws'
import { Y, YserveProvider } from '../dist/index.js'

// Every y-websocket provider adds a process 'exit' listener.
process.setMaxListeners(200)

const here = dirname(fileURLToPath(import.meta.url))

export function binaryPath () {
  if (process.env.YSERVE_BIN) return process.env.YSERVE_BIN
  const p = join(here, '..', '..', 'target', 'release', 'yserve')
  if (existsSync(p)) return p
  throw new Error(`yserve binary not found at ${p}: build it (cargo build --release) or set YSERVE_BIN`)
}

/** A yserve process with its own database; `restart()` keeps the database and the port. */
export class Server {
  constructor (extraArgs = []) {
    this.dir = mkdtempSync(join(tmpdir(), 'yserve-sdk-'))
    this.db = join(this.dir, 'yserve.db')
    this.extraArgs = extraArgs
    this.stderr = ''
  }

  async start () {
    const addr = this.port ? `127.0.0.1:${this.port}` : '127.0.0.1:0'
    this.proc = spawn(binaryPath(), ['serve', '--addr', addr, '--db', this.db, ...this.extraArgs], {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, YSERVE_LOG: process.env.YSERVE_LOG || 'info' }
    })
    this.proc.stderr.on('data', d => { this.stderr += d.toString() })
    this.exited = new Promise(resolve => this.proc.once('exit', (code, signal) => resolve({ code, signal })))
    const m = await new Promise((resolve, reject) => {
      let out = ''
      const timer = setTimeout(() => reject(new Error('server did not print its address\n' + this.stderr)), 15000)
      this.proc.stdout.on('data', d => {
        out += d.toString()
        const m = out.match(/listening on http:\/\/([\d.]+):(\d+)/)
        if (m) { clearTimeout(timer); resolve(m) }
      })
      this.exited.then(e => { clearTimeout(timer); reject(new Error(`server exited early ${JSON.stringify(e)}\n${this.stderr}`)) })
    })
    this.port = Number(m[2])
    this.url = `ws://127.0.0.1:${this.port}`
    this.http = `http://127.0.0.1:${this.port}`
    return this
  }

  /** SIGTERM and wait for the exit. */
  async stop () {
    if (!this.proc || this.proc.exitCode !== null || this.proc.signalCode !== null) return
    this.proc.kill('SIGTERM')
    await this.exited
  }

  async restart () {
    await this.stop()
    return this.start()
  }

  async dispose () {
    if (this.proc && this.proc.exitCode === null && this.proc.signalCode === null) {
      this.proc.kill('SIGKILL')
      await this.exited
    }
    rmSync(this.dir, { recursive: true, force: true })
  }
}

/**
 * Polls `cond` until it is truthy or `ms` pass; on timeout throws with `what` (a function is
 * called then, so the message can show the state that did not converge).
 */
export async function waitFor (cond, what = 'condition', ms = 10000) {
  const deadline = Date.now() + ms
  while (Date.now() < deadline) {
    if (await cond()) return
    await new Promise(resolve => setTimeout(resolve, 20))
  }
  throw new Error(`timed out waiting for ${typeof what === 'function' ? what() : what}`)
}

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

export { Y, WebSocket }
