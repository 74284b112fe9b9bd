// The built yserve binary on 127.0.0.1:0 with a temporary database, for every node test
// package (interop, client-sdk, browser, examples). Node built-ins only: the packages import
// it by relative path, and a bare import here would resolve from tests/support, where no
// node_modules is.
import { spawn } from 'node:child_process'
import { existsSync, mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

/** The repository root, found from this file so that it holds whatever the cwd is. */
export const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..')

export function binaryPath () {
  const bin = process.env.YSERVE_BIN || join(root, 'target', 'release', 'yserve')
  if (!existsSync(bin)) throw new Error(`${bin} is not built: run \`cargo build --release\` first, or set YSERVE_BIN`)
  return bin
}

/**
 * A yserve process with its own database; `extraArgs`: more `serve` flags. `restart()` keeps
 * the database and the port; `dispose()` kills it if need be and removes the database.
 */
export class Server {
  constructor (extraArgs = [], prefix = 'yserve-') {
    this.extraArgs = extraArgs
    this.dir = mkdtempSync(join(tmpdir(), prefix))
    this.db = join(this.dir, 'yserve.db')
    // Not reset by start(): a restarted server's log follows the first one's.
    this.stderr = ''
  }

  async start () {
    // Reuse the port after a restart so that clients reconnect by themselves.
    const addr = this.port ? `127.0.0.1:${this.port}` : '127.0.0.1:0'
    this.proc = spawn(binaryPath(), ['serve', '--addr', addr, '--db', this.db, ...this.extraArgs], {
      stdio: ['ignore', 'pipe', 'pipe'],
      // Some tests wait for an info line in the log, and failures print it.
      env: { ...process.env, YSERVE_LOG: process.env.YSERVE_LOG || 'info' }
    })
    this.proc.stderr.on('data', d => { this.stderr += d })
    this.exited = new Promise(resolve => this.proc.once('exit', (code, signal) => resolve({ code, signal })))
    this.port = await new Promise((resolve, reject) => {
      let out = ''
      const timer = setTimeout(() => reject(new Error(`yserve did not print its address\n${this.stderr}`)), 15000)
      this.proc.stdout.on('data', d => {
        out += d
        const m = out.match(/listening on http:\/\/[\d.]+:(\d+)/)
        if (m) { clearTimeout(timer); resolve(Number(m[1])) }
      })
      this.exited.then(e => { clearTimeout(timer); reject(new Error(`yserve exited while starting: ${JSON.stringify(e)}\n${this.stderr}`)) })
    })
    this.url = `ws://127.0.0.1:${this.port}`
    this.http = `http://127.0.0.1:${this.port}`
    return this
  }

  /** SIGTERM and wait for the exit; resolves with the exit code (0: a clean shutdown). */
  async stop () {
    if (!this.proc) return undefined
    if (this.proc.exitCode === null && this.proc.signalCode === null) this.proc.kill('SIGTERM')
    return (await this.exited).code
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
