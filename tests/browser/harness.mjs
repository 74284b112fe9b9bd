// Helpers for the browser test: the built yserve binary on 127.0.0.1:0 with a temporary
// database, Debian's chromium through playwright-core, and demo pages that record every
// page error and console error.
import { spawn } from 'node:child_process'
import { existsSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { chromium } from 'playwright-core'

const here = dirname(fileURLToPath(import.meta.url))
export const root = join(here, '..', '..')
export const artifacts = join(root, 'artifacts', 'browser')

/** How long any one condition may take to hold (CI: 2 cores, a browser and the server). */
export const TIMEOUT_MS = 30000

export function binaryPath () {
  const bin = process.env.YSERVE_BIN || join(root, 'target', 'release', 'yserve')
  if (!existsSync(bin)) throw new Error(`${bin} missing: run \`cargo build --release\` first or set YSERVE_BIN`)
  return bin
}

/** A yserve process on 127.0.0.1:0 with its own database; `args`: more `serve` flags. */
export class Server {
  constructor (args = []) {
    this.args = args
  }

  async start () {
    this.dir = mkdtempSync(join(tmpdir(), 'yserve-browser-'))
    this.stderr = ''
    this.proc = spawn(binaryPath(), ['serve', '--addr', '127.0.0.1:0', '--db', join(this.dir, 'yserve.db'), ...this.args], {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, YSERVE_LOG: process.env.YSERVE_LOG || 'info' }
    })
    this.proc.stderr.on('data', d => { this.stderr += d })
    this.exited = new Promise(resolve => this.proc.once('exit', (code, signal) => resolve({ code, signal })))
    const port = await new Promise((resolve, reject) => {
      let out = ''
      const timer = setTimeout(() => reject(new Error(`yserve did not print its address\n${this.stderr}`)), 15000)
      this.proc.stdout.on('data', d => {
        out += d
        const m = out.match(/listening on http:\/\/[\d.]+:(\d+)/)
        if (m) { clearTimeout(timer); resolve(Number(m[1])) }
      })
      this.exited.then(e => { clearTimeout(timer); reject(new Error(`yserve exited early ${JSON.stringify(e)}\n${this.stderr}`)) })
    })
    this.http = `http://127.0.0.1:${port}`
    return this
  }

  /** SIGTERM; resolves with the exit code once the server has drained. */
  async stop () {
    if (!this.proc) return
    if (this.proc.exitCode === null && this.proc.signalCode === null) this.proc.kill('SIGTERM')
    const { code } = await this.exited
    rmSync(this.dir, { recursive: true, force: true })
    return code
  }
}

/**
 * Debian's chromium, headless. Browser downloads do not work here, so playwright's own
 * builds are never used. The background-networking flags keep chromium from reaching out to
 * Google services, which on a closed network stalls it.
 */
export function launchBrowser () {
  return chromium.launch({
    executablePath: process.env.CHROMIUM_BIN || '/usr/bin/chromium',
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    timeout: 60000
  })
}

/**
 * A demo page in its own browser context (its own storage: a separate person), with every
 * page error and console error collected in `errors`.
 */
export async function openDemo (browser, server, { doc, name, token }) {
  const context = await browser.newContext({ viewport: { width: 1280, height: 760 } })
  const page = await context.newPage()
  const errors = []
  page.on('pageerror', e => errors.push(`pageerror: ${e.stack || e.message}`))
  page.on('console', m => { if (m.type() === 'error') errors.push(`console.error: ${m.text()}`) })
  page.on('requestfailed', r => errors.push(`request failed: ${r.url()} ${r.failure()?.errorText}`))
  page.setDefaultTimeout(TIMEOUT_MS)
  const query = new URLSearchParams({ doc, ...(token ? { token } : {}) })
  const response = await page.goto(`${server.http}/?${query}`)
  if (!response.ok()) throw new Error(`GET / answered ${response.status()}`)
  // Both panels connected: the Yjs provider synced and the OT text open.
  await page.waitForFunction(() => document.getElementById('status').dataset.status === 'connected')
  await page.waitForFunction(() => !document.getElementById('ot-text').disabled)
  // Known names, typed into the page's own name field (so that field is tested too).
  await page.fill('#user-name', name)
  return { context, page, errors, name }
}

/** The text of the CodeMirror editor (its state: the DOM also holds remote cursors' labels). */
export const editorText = page => page.evaluate(() => window.yserveDemo.view.state.doc.toString())
export const textareaText = page => page.inputValue('#ot-text')

/** Waits until the editor, the Y.Text and the OT textarea of `page` all show `expected`. */
export async function waitForText (page, expected, what = 'text') {
  try {
    await page.waitForFunction(expected => {
      const demo = window.yserveDemo
      return demo.view.state.doc.toString() === expected &&
        demo.ytext.toString() === expected &&
        document.getElementById('ot-text').value === expected
    }, expected)
  } catch (e) {
    const seen = await page.evaluate(() => ({
      editor: window.yserveDemo.view.state.doc.toString(),
      ytext: window.yserveDemo.ytext.toString(),
      textarea: document.getElementById('ot-text').value
    }))
    throw new Error(`${what}: expected ${JSON.stringify(expected)} everywhere, saw ${JSON.stringify(seen)}\n${e.message}`)
  }
}

/** Moves the CodeMirror cursor to the start or the end of the text. */
export async function focusEditor (page, where) {
  await page.click('#editor .cm-content')
  await page.keyboard.press(where === 'start' ? 'Control+Home' : 'Control+End')
}

export async function screenshot (page, file) {
  mkdirSync(artifacts, { recursive: true })
  await page.screenshot({ path: join(artifacts, file), fullPage: true })
}
