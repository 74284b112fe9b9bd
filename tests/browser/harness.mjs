// Helpers for the browser test: the built yserve binary (../support/server.mjs), Debian's
// chromium through playwright-core, and demo pages that record every page error and
// console error.
import { mkdirSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import { chromium } from 'playwright-core'
import { Server as BaseServer, root } from '../support/server.mjs'

export { root, binaryPath } from '../support/server.mjs'
export const artifacts = join(root, 'artifacts', 'browser')

/** How long any one condition may take to hold (CI: 2 cores, a browser and the server). */
export const TIMEOUT_MS = 30000

/** `stop()` also removes the database: the browser test never calls `dispose()`. */
export class Server extends BaseServer {
  constructor (args = []) { super(args, 'yserve-browser-') }

  async stop () {
    const code = await super.stop()
    await this.dispose()
    return code
  }

  /** Keeps the database and the port (not `stop()`'s); `kill`: SIGKILL, no clean shutdown. */
  async restart ({ kill = false } = {}) {
    if (kill) await this.kill9()
    else await super.stop()
    return this.start()
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
 * `YSERVE_DEMO_DIR=../../src/demo` (a directory holding `app.js` and `app.css`) serves the
 * page's bundles from those files instead of the binary's embedded copies, so a change to
 * `client-sdk/demo/` can be tested after `npm run build:demo` and before the binary is
 * rebuilt. `index.html` still comes from the binary: a document chromium gets from a routed
 * response counts as a public one, whose WebSockets to 127.0.0.1 its local network access
 * checks block. Unset (the default, and what the suite runs), the binary serves everything.
 */
const demoDir = process.env.YSERVE_DEMO_DIR
const demoFiles = { '/demo/app.js': ['app.js', 'text/javascript; charset=utf-8'], '/demo/app.css': ['app.css', 'text/css; charset=utf-8'] }

async function serveDemoFromDir (context, server) {
  if (!demoDir) return
  await context.route(url => url.origin === server.http && Object.hasOwn(demoFiles, url.pathname), route => {
    const [file, contentType] = demoFiles[new URL(route.request().url()).pathname]
    return route.fulfill({ status: 200, contentType, body: readFileSync(join(demoDir, file)) })
  })
}

/**
 * A demo page in its own browser context (its own storage: a separate person), with every
 * page error and console error collected in `errors`. `context`: open it in that context
 * instead (the same person again, with the same IndexedDB); `offline`: `?offline=1`.
 */
export async function openDemo (browser, server, { doc, name, token, offline = false, context: reuse }) {
  const context = reuse ?? await browser.newContext({ viewport: { width: 1280, height: 760 } })
  if (!reuse) await serveDemoFromDir(context, server)
  const page = await context.newPage()
  const errors = []
  page.on('pageerror', e => errors.push(`pageerror: ${e.stack || e.message}`))
  page.on('console', m => { if (m.type() === 'error') errors.push(`console.error: ${m.text()}`) })
  page.on('requestfailed', r => errors.push(`request failed: ${r.url()} ${r.failure()?.errorText}`))
  page.setDefaultTimeout(TIMEOUT_MS)
  const query = new URLSearchParams({ doc, ...(token ? { token } : {}), ...(offline ? { offline: '1' } : {}) })
  const response = await page.goto(`${server.http}/?${query}`)
  if (!response.ok()) throw new Error(`GET / answered ${response.status()}`)
  // Every panel connected: the Yjs provider synced, the OT text open, the Hocuspocus
  // provider of the ProseMirror panel authenticated and synced.
  await page.waitForFunction(() => document.getElementById('status').dataset.status === 'connected')
  await page.waitForFunction(() => !document.getElementById('ot-text').disabled)
  await page.waitForFunction(() => document.getElementById('pm-status').dataset.status === 'connected')
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

/**
 * The ProseMirror panel's content: `xml`, its `Y.XmlFragment` as `toString()` writes it
 * (the form REST's `/json` shows), and `text`, the editor's own text (paragraphs joined by
 * `\n`).
 */
export const pmContent = page => page.evaluate(() => {
  const { pm } = window.yserveDemo
  const doc = pm.view.state.doc
  return { xml: pm.fragment.toString(), text: doc.textBetween(0, doc.content.size, '\n') }
})

/**
 * Waits until the ProseMirror panel of `page` shows `text` (paragraphs joined by `\n`) and,
 * if given, its `Y.XmlFragment` is `xml`.
 */
export async function waitForPm (page, { text, xml }, what = 'the ProseMirror panel') {
  try {
    await page.waitForFunction(([text, xml]) => {
      const { pm } = window.yserveDemo
      const doc = pm.view.state.doc
      return doc.textBetween(0, doc.content.size, '\n') === text && (xml === null || pm.fragment.toString() === xml)
    }, [text, xml ?? null])
  } catch (e) {
    throw new Error(`${what}: expected ${JSON.stringify({ text, xml })}, saw ${JSON.stringify(await pmContent(page))}\n${e.message}`)
  }
}

/**
 * Moves the ProseMirror cursor to the start or the end of its document (of paragraphs), and
 * waits until ProseMirror has read it: it reads the DOM selection a moment after a key, and
 * a remote change arriving meanwhile puts the old one back.
 */
export async function focusPm (page, where) {
  await page.click('#pm-editor .ProseMirror')
  await page.keyboard.press(where === 'start' ? 'Control+Home' : 'Control+End')
  await page.waitForFunction(where => {
    const { state } = window.yserveDemo.pm.view
    const at = where === 'start' ? 1 : state.doc.content.size - 1
    return state.selection.empty && state.selection.head === at
  }, where)
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
