// Shared helpers for the interop tests: start the built yserve binary on port 0 with a
// temporary database, connect stock y-websocket providers, and wait on conditions.
import { spawn } from 'node:child_process'
import { mkdtempSync, rmSync, existsSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join, dirname } from 'node:path'
import { fileURLToPath } from 'node:url'
import * as Y from 'yjs'
import { WebsocketProvider } from 'y-websocket'
import WebSocket from 'ws'

const here = dirname(fileURLToPath(import.meta.url))
const root = join(here, '..', '..')

export function binaryPath () {
  if (process.env.YSERVE_BIN) return process.env.YSERVE_BIN
  for (const profile of ['release', 'debug']) {
    const p = join(root, 'target', profile, 'yserve')
    if (existsSync(p)) return p
  }
  throw new Error('yserve binary not built: run `cargo build --release` first or set YSERVE_BIN')
}

/** A yserve process on 127.0.0.1:0 with its own database; `restart()` keeps the database. */
export class Server {
  constructor (extraArgs = []) {
    this.dir = mkdtempSync(join(tmpdir(), 'yserve-interop-'))
    this.db = join(this.dir, 'yserve.db')
    this.extraArgs = extraArgs
    this.stderr = ''
  }

  async start () {
    // Reuse the port after a restart so that providers reconnect by themselves.
    const addr = this.port ? `127.0.0.1:${this.port}` : '127.0.0.1:0'
    this.proc = spawn(binaryPath(), ['serve', '--addr', addr, '--db', this.db, ...this.extraArgs], {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, YSERVE_LOG: process.env.YSERVE_LOG || 'info' }
    })
    this.proc.stderr.on('data', d => { this.stderr += d.toString() })
    const exited = new Promise(resolve => this.proc.once('exit', (code, signal) => resolve({ code, signal })))
    this.exited = exited
    const line = await new Promise((resolve, reject) => {
      let out = ''
      const timer = setTimeout(() => reject(new Error('server did not print its address\n' + this.stderr)), 15000)
      this.proc.stdout.on('data', d => {
        out += d.toString()
        const m = out.match(/listening on http:\/\/([\d.]+):(\d+)/)
        if (m) { clearTimeout(timer); resolve(m) }
      })
      exited.then(e => { clearTimeout(timer); reject(new Error(`server exited early ${JSON.stringify(e)}\n${this.stderr}`)) })
    })
    this.port = Number(line[2])
    this.url = `ws://127.0.0.1:${this.port}`
    this.http = `http://127.0.0.1:${this.port}`
    return this
  }

  /** SIGTERM, wait for a clean exit; returns the exit code. */
  async stop () {
    if (!this.proc || this.proc.exitCode !== null) return this.proc?.exitCode
    this.proc.kill('SIGTERM')
    const { code } = await this.exited
    return code
  }

  async kill9 () {
    this.proc.kill('SIGKILL')
    await this.exited
  }

  async restart () {
    await this.stop()
    return this.start()
  }

  async dispose () {
    if (this.proc && this.proc.exitCode === null && this.proc.signalCode === null) await this.kill9()
    rmSync(this.dir, { recursive: true, force: true })
  }
}

/** A stock WebsocketProvider with its own Y.Doc. */
export function client (server, room, opts = {}) {
  const doc = new Y.Doc()
  const provider = new WebsocketProvider(server.url, room, doc, { WebSocketPolyfill: WebSocket, disableBc: true, ...opts })
  return { doc, provider, text: doc.getText('t'), awareness: provider.awareness }
}

export function destroyAll (...clients) {
  for (const c of clients) c.provider.destroy()
}

/** Polls `cond` until it is truthy or `ms` pass; throws with `what` on timeout. */
export async function waitFor (cond, what = 'condition', ms = 10000) {
  const deadline = Date.now() + ms
  while (Date.now() < deadline) {
    if (await cond()) return
    await new Promise(resolve => setTimeout(resolve, 20))
  }
  throw new Error(`timed out waiting for ${what}`)
}

export const synced = c => waitFor(() => c.provider.synced, 'provider synced')

export { Y, WebsocketProvider, WebSocket }
