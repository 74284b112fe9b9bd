// The demo editor in a real browser (Debian's chromium, headless, through playwright-core)
// against the built binary: two people (two browser contexts: separate storage, separate
// connections) type at once and converge, see each other's cursor, selection, name and
// typing, one goes offline and reconciles, an edit typed offline with `?offline=1` survives
// closing the tab (y-indexeddb), the OT <textarea> shows and edits the same text (CRLF line
// ends and embeds included), and the ProseMirror panel (the stock @hocuspocus/provider, on
// the document's Y.XmlFragment `prosemirror`) converges, commits before it counts a change
// as synced, survives a server crash, and is what a y-websocket client sees.
// No page may log an error. Screenshots go to artifacts/browser/.
//
// Run: `npm test` here, after `./setup.sh` and `cargo build --release` (or set YSERVE_BIN).
// The page is the one embedded in the binary; `YSERVE_DEMO_DIR=../../src/demo` tests a fresh
// `npm run build:demo` instead (harness.mjs).
import { execFileSync } from 'node:child_process'
import { after, before, test } from 'node:test'
import assert from 'node:assert/strict'
import * as Y from 'yjs'
import { WebsocketProvider } from 'y-websocket'
import WebSocket from 'ws'
import { Server, binaryPath, launchBrowser, openDemo, waitForText, focusEditor, editorText, textareaText, screenshot, TIMEOUT_MS, waitForPm, focusPm } from './harness.mjs'

let server
let browser

before(async () => {
  server = await new Server().start()
  browser = await launchBrowser()
})

after(async () => {
  await browser?.close()
  const code = await server?.stop()
  assert.equal(code, 0, `yserve exited with ${code}\n${server?.stderr}`)
})

/** Opens demo pages for `people` on `doc`, runs `body`, asserts no page logged an error. */
async function withPeople (doc, people, body) {
  const pages = []
  try {
    for (const name of people) pages.push(await openDemo(browser, server, { doc, name }))
    await body(...pages)
    for (const p of pages) assert.deepEqual(p.errors, [], `${p.name}'s page logged errors`)
  } finally {
    for (const p of pages) await p.context.close()
  }
}

/** Waits until `page`'s presence list shows the others named `names` (sorted), and itself. */
async function waitForPeers (page, self, names) {
  await page.waitForFunction(([self, names]) => {
    const items = [...document.querySelectorAll('#presence .peer')]
    const mine = items.filter(li => li.classList.contains('self')).map(li => li.querySelector('.name').textContent)
    const others = items.filter(li => !li.classList.contains('self')).map(li => li.querySelector('.name').textContent).sort()
    return JSON.stringify(mine) === JSON.stringify([`${self} (you)`]) && JSON.stringify(others) === JSON.stringify(names)
  }, [self, names])
}

/** Resolves once `page` shows `name` as typing (start it before the typing begins). */
const seesTyping = (page, name, typing = true) => page.waitForFunction(([name, typing]) =>
  [...document.querySelectorAll('#presence .peer:not(.self)')].some(li =>
    li.querySelector('.name').textContent === name && li.dataset.typing === String(typing) &&
    (li.querySelector('.typing').textContent !== '') === typing), [name, typing], { polling: 50 })

/** Waits until `page` shows `name`'s remote caret in CodeMirror, labelled and coloured, at `index`. */
async function waitForRemoteCaret (page, name, color, index) {
  await page.waitForFunction(([name, color, index]) => {
    const { view } = window.yserveDemo
    const probe = document.createElement('span')
    probe.style.color = color // '#rrggbb' as the browser writes it back: 'rgb(r, g, b)'
    return [...document.querySelectorAll('#editor .cm-ySelectionCaret')].some(caret =>
      caret.querySelector('.cm-ySelectionInfo')?.textContent === name &&
      caret.style.backgroundColor === probe.style.color &&
      view.posAtDOM(caret) === index)
  }, [name, color, index])
}

const colorOf = page => page.inputValue('#user-color')
const unsyncedOf = page => page.$eval('#unsynced', el => Number(el.dataset.unsynced))

test('two people typing at once converge, and see each other\'s cursor, selection, name and typing', async () => {
  await withPeople('concurrent', ['Alice', 'Bob'], async (alice, bob) => {
    await waitForPeers(alice.page, 'Alice', ['Bob'])
    await waitForPeers(bob.page, 'Bob', ['Alice'])

    await focusEditor(alice.page, 'end')
    await alice.page.keyboard.type('shared line')
    await waitForText(alice.page, 'shared line', 'Alice after her first line')
    await waitForText(bob.page, 'shared line', 'Bob after Alice\'s first line')

    // Alice appends at the end while Bob prepends at the start, at the same time.
    await focusEditor(alice.page, 'end')
    await focusEditor(bob.page, 'start')
    const bobSeesAliceTyping = seesTyping(bob.page, 'Alice')
    const aliceSeesBobTyping = seesTyping(alice.page, 'Bob')
    await Promise.all([
      alice.page.keyboard.type(' + Alice typed this', { delay: 15 }),
      bob.page.keyboard.type('Bob typed that + ', { delay: 15 })
    ])
    const expected = 'Bob typed that + shared line + Alice typed this'
    await waitForText(alice.page, expected, 'Alice after typing at once')
    await waitForText(bob.page, expected, 'Bob after typing at once')
    await Promise.all([bobSeesAliceTyping, aliceSeesBobTyping])
    // The typing indicators clear by themselves.
    await Promise.all([seesTyping(bob.page, 'Alice', false), seesTyping(alice.page, 'Bob', false)])

    // Each sees the other's caret, labelled with the name, in the other's colour, in place.
    await waitForRemoteCaret(bob.page, 'Alice', await colorOf(alice.page), expected.length)
    await waitForRemoteCaret(alice.page, 'Bob', await colorOf(bob.page), 'Bob typed that + '.length)

    // A selection is shown as one too: Alice selects "this".
    for (let i = 0; i < 4; i++) await alice.page.keyboard.press('Shift+ArrowLeft')
    await bob.page.waitForFunction(() => [...document.querySelectorAll('#editor .cm-ySelection')].map(el => {
      const text = el.cloneNode(true)
      for (const caret of text.querySelectorAll('.cm-ySelectionCaret')) caret.remove()
      return text.textContent
    }).join('') === 'this')

    // The name is editable, and the others see the new one.
    await alice.page.fill('#user-name', 'Alice Liddell')
    await waitForPeers(bob.page, 'Bob', ['Alice Liddell'])
    await bob.page.waitForFunction(() =>
      [...document.querySelectorAll('#editor .cm-ySelectionInfo')].some(el => el.textContent === 'Alice Liddell'))

    for (const p of [alice, bob]) {
      assert.equal(await p.page.$eval('#status', el => el.dataset.status), 'connected')
      assert.equal(await unsyncedOf(p.page), 0, `${p.name}: every change confirmed`)
    }
    await screenshot(alice.page, 'concurrent-alice.png')
    await screenshot(bob.page, 'concurrent-bob.png')
  })
})

test('an offline person\'s edits reconcile when they come back', async () => {
  await withPeople('offline', ['Alice', 'Bob'], async (alice, bob) => {
    await focusEditor(alice.page, 'end')
    await alice.page.keyboard.type('shared')
    await waitForText(bob.page, 'shared', 'Bob before going offline')
    await waitForPeers(alice.page, 'Alice', ['Bob'])

    await bob.context.setOffline(true)
    await bob.page.waitForFunction(() => document.getElementById('status').dataset.status === 'offline')
    // Bob's page no longer shows anyone else. (Alice still sees him until his presence
    // expires: offline Chromium holds the frames of open sockets, the close frame included,
    // and sends them once back online, as a network outage that TCP survives would.)
    await waitForPeers(bob.page, 'Bob', [])

    // Both edit: Bob offline at the end, Alice online at the start.
    await focusEditor(bob.page, 'end')
    await bob.page.keyboard.type(' + offline edit by Bob')
    await focusEditor(alice.page, 'start')
    await alice.page.keyboard.type('online edit by Alice + ')
    await bob.page.waitForFunction(() => Number(document.getElementById('unsynced').dataset.unsynced) > 0)
    assert.equal(await editorText(bob.page), 'shared + offline edit by Bob', 'Bob is offline: Alice\'s edit has not reached him')
    await waitForText(alice.page, 'online edit by Alice + shared', 'Alice while Bob is offline')
    await screenshot(bob.page, 'offline-bob-while-offline.png')

    await bob.context.setOffline(false)
    await bob.page.waitForFunction(() => document.getElementById('status').dataset.status === 'connected')
    const expected = 'online edit by Alice + shared + offline edit by Bob'
    await waitForText(bob.page, expected, 'Bob after coming back')
    await waitForText(alice.page, expected, 'Alice after Bob came back')
    await bob.page.waitForFunction(() => document.getElementById('unsynced').dataset.unsynced === '0')
    await waitForPeers(alice.page, 'Alice', ['Bob'])
    await waitForRemoteCaret(alice.page, 'Bob', await colorOf(bob.page), expected.length)
    await waitForRemoteCaret(bob.page, 'Alice', await colorOf(alice.page), 'online edit by Alice + '.length)

    // The server holds the reconciled text, not just the browsers.
    const json = await (await fetch(`${server.http}/api/docs/offline/json`)).json()
    assert.equal(json.text, expected, JSON.stringify(json))
    await screenshot(alice.page, 'offline-alice.png')
    await screenshot(bob.page, 'offline-bob.png')
  })
})

/** Updates y-indexeddb holds for the page's document (`?offline=1`). */
const storedUpdates = page => page.evaluate(() => new Promise((resolve, reject) => {
  const open = indexedDB.open(window.yserveDemo.provider.persistence.name)
  open.onerror = () => reject(open.error)
  open.onsuccess = () => {
    const count = open.result.transaction('updates').objectStore('updates').count()
    count.onsuccess = () => { open.result.close(); resolve(count.result) }
    count.onerror = () => reject(count.error)
  }
}))

test('with ?offline=1, an edit typed offline survives closing the tab and reaches the server when the page is opened again', async () => {
  const doc = 'offline-tab'
  const first = await openDemo(browser, server, { doc, name: 'Alice', offline: true })
  const { context } = first
  try {
    await focusEditor(first.page, 'end')
    await first.page.keyboard.type('online part')
    await first.page.waitForFunction(() => document.getElementById('unsynced').dataset.unsynced === '0')
    await waitForRest(doc, 'online part')

    await context.setOffline(true)
    await first.page.waitForFunction(() => document.getElementById('status').dataset.status === 'offline')
    const before = await storedUpdates(first.page)
    const typed = ' + typed offline'
    await focusEditor(first.page, 'end')
    await first.page.keyboard.type(typed)
    // One Yjs update per keystroke, each stored by y-indexeddb: wait until all are on disk.
    const deadline = Date.now() + TIMEOUT_MS
    while (await storedUpdates(first.page) < before + typed.length) {
      assert.ok(Date.now() < deadline, 'y-indexeddb to store the offline keystrokes')
      await new Promise(resolve => setTimeout(resolve, 50))
    }
    assert.deepEqual(first.errors, [], 'the page logged errors')
    await first.page.close()
    assert.equal((await restText(doc)).text, 'online part', 'the server never got the offline edit')

    // Back online, the same person opens the page again: the edit comes out of IndexedDB and
    // goes to the server.
    await context.setOffline(false)
    const again = await openDemo(browser, server, { doc, name: 'Alice', offline: true, context })
    await waitForText(again.page, 'online part' + typed, 'the reopened page')
    await again.page.waitForFunction(() => document.getElementById('unsynced').dataset.unsynced === '0')
    await waitForRest(doc, 'online part' + typed)
    assert.deepEqual(again.errors, [], 'the reopened page logged errors')
  } finally {
    await context.close()
  }
})

test('the OT textarea edits the same text and keeps its caret through remote edits', async () => {
  await withPeople('textarea', ['Alice', 'Bob'], async (alice, bob) => {
    await waitForPeers(bob.page, 'Bob', ['Alice'])
    const typing = seesTyping(bob.page, 'Alice')
    await alice.page.click('#ot-text')
    await alice.page.keyboard.type('typed in a textarea')
    await waitForText(alice.page, 'typed in a textarea', 'Alice after typing in her textarea')
    await waitForText(bob.page, 'typed in a textarea', 'Bob after Alice typed in her textarea')
    await typing // typing in the textarea shows too

    // Bob's caret after "typed "; Alice inserts before it in CodeMirror.
    await bob.page.click('#ot-text')
    await bob.page.keyboard.press('Control+Home')
    for (let i = 0; i < 'typed '.length; i++) await bob.page.keyboard.press('ArrowRight')
    await focusEditor(alice.page, 'start')
    await alice.page.keyboard.type('>> ')
    await waitForText(bob.page, '>> typed in a textarea', 'Bob after Alice\'s insert before his caret')
    const caret = await bob.page.$eval('#ot-text', el => [el.selectionStart, el.selectionEnd])
    assert.deepEqual(caret, [9, 9], 'Bob\'s caret moved with the text')

    // So Bob's typing lands where he was: the caret was kept, not reset.
    await bob.page.keyboard.type('X')
    await waitForText(alice.page, '>> typed Xin a textarea', 'Alice after Bob typed at his caret')
    await bob.page.keyboard.press('Backspace')
    await waitForText(alice.page, '>> typed in a textarea', 'Alice after Bob\'s backspace')

    // Replacing one emoji by another shares a high surrogate: the delta must not split it.
    await bob.page.keyboard.press('End')
    await bob.page.keyboard.type(' 😀')
    await waitForText(alice.page, '>> typed in a textarea 😀', 'Alice after Bob\'s emoji')
    await bob.page.keyboard.press('Shift+ArrowLeft')
    await bob.page.keyboard.type('😃')
    await waitForText(alice.page, '>> typed in a textarea 😃', 'Alice after Bob replaced the emoji')
    await waitForText(bob.page, '>> typed in a textarea 😃', 'Bob after replacing the emoji')
    assert.equal(await bob.page.$eval('#ot-status', el => el.dataset.state), 'connected')
    assert.equal(await textareaText(alice.page), await editorText(bob.page))
    await screenshot(bob.page, 'textarea-bob.png')
  })
})

/** The root text `text` of `doc` through the REST OT mirror: `{v, ops, text}`. */
async function restText (doc) {
  return (await fetch(`${server.http}/api/docs/${encodeURIComponent(doc)}/texts/text`)).json()
}

/** Submits `op` to the root text `text` of `doc` through the REST OT mirror, as `src`. */
async function submitRest (doc, op, src = 'seed', seq = 1) {
  const r = await fetch(`${server.http}/api/docs/${encodeURIComponent(doc)}/texts/text`, {
    method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ src, seq, op })
  })
  assert.equal(r.status, 200, await r.text())
}

/** The ops committed to `doc`'s text from version `from` on, without the REST seeds. */
async function opsFrom (doc, from) {
  const { ops } = await (await fetch(`${server.http}/api/docs/${encodeURIComponent(doc)}/texts/text/ops?from=${from}`)).json()
  return ops.filter(o => o.src !== 'seed').map(o => o.op)
}

/**
 * Opens the demo on `doc` for one person, runs `body` on the page, asserts the page logged
 * no error but the CodeMirror panel's: y-codemirror.next (0.3.6) keeps a CRLF or an embed
 * of the Y.Text in CodeMirror's positions neither (CodeMirror reads both line ends as one
 * line break, embeds are not text), so a Yjs update past one fails in its observer, which
 * y-protocols catches and logs. That panel's limitation is not what these tests are about.
 */
async function withTextarea (doc, body, { allowEditorSyncError = false } = {}) {
  const p = await openDemo(browser, server, { doc, name: 'Alice' })
  try {
    await body(p)
    const errors = p.errors.filter(e => !(allowEditorSyncError && e.startsWith('console.error: Caught error while handling a Yjs update')))
    assert.deepEqual(errors, [], 'the page logged errors')
  } finally {
    await p.context.close()
  }
}

/** Puts the textarea's caret at `index` (a textarea index: a CRLF is one unit there). */
const caretAt = (page, index) => page.$eval('#ot-text', (t, index) => { t.focus(); t.setSelectionRange(index, index) }, index)
const caretOf = page => page.$eval('#ot-text', t => [t.selectionStart, t.selectionEnd])

test('the OT textarea keeps CRLF and CR line ends: a keystroke submits one insert, at the right place', async () => {
  // A textarea reads CRLF and a lone CR back as LF; the text keeps them.
  await submitRest('crlf', [{ insert: 'one\r\ntwo\rthree' }])
  const { v } = await restText('crlf')
  await withTextarea('crlf', async alice => {
    assert.equal(await textareaText(alice.page), 'one\ntwo\nthree')
    await caretAt(alice.page, 'one\ntwo\nthree'.length)
    await alice.page.keyboard.type('!')
    await caretAt(alice.page, 'one\ntwo'.length)
    await alice.page.keyboard.type('X')
    await waitForRest('crlf', 'one\r\ntwoX\rthree!')
    // One insert per keystroke, at text positions (the CRLF counts 2 there).
    assert.deepEqual(await opsFrom('crlf', v), [[{ retain: 14 }, { insert: '!' }], [{ retain: 8 }, { insert: 'X' }]])

    // A remote edit before the caret moves it by its length in the textarea's units.
    await submitRest('crlf', [{ retain: 5 }, { insert: '>\r\n' }], 'seed', 2)
    await alice.page.waitForFunction(() => document.getElementById('ot-text').value === 'one\n>\ntwoX\nthree!')
    assert.deepEqual(await caretOf(alice.page), [10, 10])
    await alice.page.keyboard.type('Y')
    await waitForRest('crlf', 'one\r\n>\r\ntwoXY\rthree!')
    // CodeMirror splits lines on \n only, so it holds the same text, CRs included.
    await alice.page.waitForFunction(() => window.yserveDemo.view.state.doc.toString() === 'one\r\n>\r\ntwoXY\rthree!')
  })
})

test('the OT textarea shows an embed as one U+FFFC and edits after it land where typed', async () => {
  await submitRest('embed', [{ insert: { image: 'x.png' } }, { insert: 'hello' }])
  const { v } = await restText('embed')
  await withTextarea('embed', async alice => {
    assert.equal(await textareaText(alice.page), '\uFFFChello')
    await caretAt(alice.page, '\uFFFChello'.length)
    await alice.page.keyboard.type('!')
    await waitForRest('embed', 'hello!')
    assert.deepEqual(await opsFrom('embed', v), [[{ retain: 6 }, { insert: '!' }]])
    assert.deepEqual((await restText('embed')).ops, [{ insert: { image: 'x.png' } }, { insert: 'hello!' }])

    // A remote insert right after the embed: shown in place, the caret moved along.
    await submitRest('embed', [{ retain: 1 }, { insert: '>' }], 'seed', 2)
    await alice.page.waitForFunction(() => document.getElementById('ot-text').value === '\uFFFC>hello!')
    assert.deepEqual(await caretOf(alice.page), [8, 8])
    await alice.page.keyboard.type('?')
    await waitForRest('embed', '>hello!?')
  }, { allowEditorSyncError: true })
})

/** Waits until the server's plain text of `doc` (embeds left out) is `expected`. */
async function waitForRest (doc, expected) {
  const deadline = Date.now() + TIMEOUT_MS
  let seen
  while (Date.now() < deadline) {
    seen = (await restText(doc)).text
    if (seen === expected) return
    await new Promise(resolve => setTimeout(resolve, 50))
  }
  assert.equal(seen, expected, `the server's text of ${doc}`)
}

test('?doc= picks the document, and a late joiner gets its text', async () => {
  await withPeople('doc-one', ['Alice'], async alice => {
    await withPeople('doc-two', ['Bob'], async bob => {
      await focusEditor(alice.page, 'end')
      await alice.page.keyboard.type('in doc-one')
      await focusEditor(bob.page, 'end')
      await bob.page.keyboard.type('in doc-two')
      await waitForText(alice.page, 'in doc-one')
      await waitForText(bob.page, 'in doc-two')
      await waitForPeers(alice.page, 'Alice', [])
      await waitForPeers(bob.page, 'Bob', [])
      assert.equal(await alice.page.textContent('#doc-name'), 'doc-one')
      // Both sides confirmed: a late joiner loads the text from the server.
      await alice.page.waitForFunction(() => document.getElementById('unsynced').dataset.unsynced === '0')
    })
    await withPeople('doc-one', ['Carol'], async carol => {
      await waitForText(carol.page, 'in doc-one', 'Carol joining doc-one late')
      await waitForPeers(carol.page, 'Carol', ['Alice'])
    })
  })
}, { timeout: TIMEOUT_MS * 4 })

test('with JWT auth on, ?token= reaches all three clients', async () => {
  const secret = 'browser-test-secret-browser-test-secret'
  const authed = await new Server(['--jwt-secret', secret]).start()
  try {
    const token = execFileSync(binaryPath(), ['token', '--sub', 'alice', '--doc', 'team/*=write', '--ttl', '1h', '--jwt-secret', secret]).toString().trim()
    // openDemo waits until the provider has synced and the OT text is open: both got in.
    const alice = await openDemo(browser, authed, { doc: 'team/notes', name: 'Alice', token })
    try {
      await focusEditor(alice.page, 'end')
      await alice.page.keyboard.type('written with a token')
      await waitForText(alice.page, 'written with a token', 'the editor, through the OT text too')
      await alice.page.click('#ot-text')
      await alice.page.keyboard.press('End')
      await alice.page.keyboard.type('!')
      await waitForText(alice.page, 'written with a token!', 'the textarea, through Yjs too')
      await alice.page.waitForFunction(() => document.getElementById('unsynced').dataset.unsynced === '0')
      // The Hocuspocus provider sends it as its token: the ProseMirror panel writes too.
      await focusPm(alice.page, 'end')
      await alice.page.keyboard.type('rich, with a token')
      await alice.page.waitForFunction(() => document.getElementById('pm-unsynced').dataset.unsynced === '0')
      const response = await fetch(`${authed.http}/api/docs/team%2Fnotes/json`, { headers: { Authorization: `Bearer ${token}` } })
      assert.deepEqual(await response.json(), { text: 'written with a token!', prosemirror: '<paragraph>rich, with a token</paragraph>' })
      assert.deepEqual(alice.errors, [])
    } finally {
      await alice.context.close()
    }
  } finally {
    assert.equal(await authed.stop(), 0, authed.stderr)
  }
})

// --- The ProseMirror panel: the stock Hocuspocus provider on the Y.XmlFragment `prosemirror` ---

const pmUnsyncedOf = page => page.$eval('#pm-unsynced', el => Number(el.dataset.unsynced))
const pmStatusOf = page => page.$eval('#pm-status', el => el.dataset.status)

/** The document as REST's `/json` renders it (`prosemirror`: the fragment's XML). */
async function restJson (srv, doc) {
  const r = await fetch(`${srv.http}/api/docs/${encodeURIComponent(doc)}/json`)
  if (r.status !== 200) assert.fail(`GET /json of ${doc} answered ${r.status}: ${await r.text()}`)
  return r.json()
}

/** Waits until REST's `/json` of `doc` has `xml` as its `prosemirror` root. */
async function waitForRestXml (srv, doc, xml) {
  const deadline = Date.now() + TIMEOUT_MS
  let seen
  while (Date.now() < deadline) {
    seen = await restJson(srv, doc)
    if (seen.prosemirror === xml) return
    await new Promise(resolve => setTimeout(resolve, 50))
  }
  assert.equal(seen.prosemirror, xml, `the server's prosemirror root of ${doc}: ${JSON.stringify(seen)}`)
}

/** A y-websocket client in Node on `doc`, synced. */
async function yWebsocketClient (srv, doc) {
  const ydoc = new Y.Doc()
  const provider = new WebsocketProvider(srv.url, doc, ydoc, { WebSocketPolyfill: WebSocket, disableBc: true })
  await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`y-websocket did not sync ${doc}`)), TIMEOUT_MS)
    provider.on('sync', synced => { if (synced) { clearTimeout(timer); resolve() } })
  })
  return { ydoc, provider, close: () => { provider.destroy(); ydoc.destroy() } }
}

test('two people typing in the ProseMirror panel converge, and see each other\'s caret and name', async () => {
  await withPeople('rich', ['Alice', 'Bob'], async (alice, bob) => {
    // The panels' own awareness states do not list anyone twice.
    await waitForPeers(alice.page, 'Alice', ['Bob'])
    await waitForPeers(bob.page, 'Bob', ['Alice'])

    await focusPm(alice.page, 'end')
    await alice.page.keyboard.type('shared paragraph')
    await waitForPm(bob.page, { text: 'shared paragraph', xml: '<paragraph>shared paragraph</paragraph>' }, 'Bob after Alice\'s first words')

    // Alice appends at the end while Bob prepends at the start, at the same time; typing
    // there shows in the presence list too.
    await focusPm(alice.page, 'end')
    await focusPm(bob.page, 'start')
    const bobSeesAliceTyping = seesTyping(bob.page, 'Alice')
    await Promise.all([
      alice.page.keyboard.type(' + Alice', { delay: 15 }),
      bob.page.keyboard.type('Bob + ', { delay: 15 })
    ])
    const line = 'Bob + shared paragraph + Alice'
    await waitForPm(alice.page, { text: line }, 'Alice after typing at once')
    await waitForPm(bob.page, { text: line }, 'Bob after typing at once')
    await bobSeesAliceTyping

    // Rich text: a new paragraph with a bold word, the same structure on both sides.
    await alice.page.keyboard.press('Enter')
    await alice.page.keyboard.type('then ')
    await alice.page.keyboard.press('Control+b')
    await alice.page.keyboard.type('bold')
    const xml = `<paragraph>${line}</paragraph><paragraph>then <strong>bold</strong></paragraph>`
    await waitForPm(alice.page, { text: `${line}\nthen bold`, xml }, 'Alice after her bold word')
    await waitForPm(bob.page, { text: `${line}\nthen bold`, xml }, 'Bob after Alice\'s bold word')
    assert.equal(await bob.page.$eval('#pm-editor .ProseMirror strong', el => el.textContent), 'bold')

    // Each sees the other's caret, labelled with the name, in the other's colour.
    for (const [viewer, other] of [[bob, alice], [alice, bob]]) {
      await viewer.page.waitForFunction(([name, color]) => {
        const probe = document.createElement('span')
        probe.style.color = color
        return [...document.querySelectorAll('#pm-editor .ProseMirror-yjs-cursor')].some(caret =>
          caret.textContent.replace(/\u2060/g, '') === name && caret.style.borderColor === probe.style.color)
      }, [other.name, await colorOf(other.page)])
    }

    // The other panels edit another root, untouched; both counters reach 0.
    for (const p of [alice, bob]) {
      assert.equal(await editorText(p.page), '', `${p.name}'s text panels`)
      assert.equal(await pmStatusOf(p.page), 'connected')
      await p.page.waitForFunction(() => document.getElementById('pm-unsynced').dataset.unsynced === '0')
    }
    await waitForRestXml(server, 'rich', xml)
    await screenshot(alice.page, 'prosemirror-alice.png')
    await screenshot(bob.page, 'prosemirror-bob.png')
  })
})

test('the ProseMirror panel counts what the server has not committed, and 0 means committed', async () => {
  await withPeople('rich-unsynced', ['Alice'], async alice => {
    assert.equal(await pmUnsyncedOf(alice.page), 0)
    await alice.context.setOffline(true)
    await alice.page.waitForFunction(() => document.getElementById('pm-status').dataset.status === 'offline')
    await focusPm(alice.page, 'end')
    await alice.page.keyboard.type('typed offline')
    // One Yjs update per keystroke, each counted; none reached the server.
    assert.equal(await pmUnsyncedOf(alice.page), 'typed offline'.length)
    assert.match(await alice.page.textContent('#pm-unsynced'), /^13 unsynced changes$/)
    assert.equal((await restJson(server, 'rich-unsynced')).prosemirror, undefined)

    await alice.context.setOffline(false)
    await alice.page.waitForFunction(() => document.getElementById('pm-status').dataset.status === 'connected')
    await alice.page.waitForFunction(() => document.getElementById('pm-unsynced').dataset.unsynced === '0')
    // At once, no polling: the counter reached 0 only after the server committed the edits.
    assert.equal((await restJson(server, 'rich-unsynced')).prosemirror, '<paragraph>typed offline</paragraph>')
    assert.equal(await alice.page.textContent('#pm-unsynced'), 'all changes saved')
  })
})

test('text typed in the ProseMirror panel is committed, survives a crash of the server, and is the XmlFragment y-websocket clients see', async () => {
  const doc = 'rich/durable'
  const srv = await new Server().start()
  try {
    const alice = await openDemo(browser, srv, { doc, name: 'Alice' })
    try {
      await focusPm(alice.page, 'end')
      await alice.page.keyboard.type('committed rich text')
      await alice.page.waitForFunction(() => document.getElementById('pm-unsynced').dataset.unsynced === '0')
      assert.deepEqual(alice.errors, [])
    } finally {
      await alice.context.close()
    }
    const xml = '<paragraph>committed rich text</paragraph>'
    assert.equal((await restJson(srv, doc)).prosemirror, xml)

    // SIGKILL: no shutdown flush. What the panel counted as synced was on disk already.
    await srv.restart({ kill: true })
    assert.deepEqual(await restJson(srv, doc), { prosemirror: xml }, 'REST after the crash')

    // A y-websocket client sees the same Y.XmlFragment, and what it writes there shows in
    // the ProseMirror panel of a page opened after the restart.
    const node = await yWebsocketClient(srv, doc)
    try {
      const fragment = node.ydoc.getXmlFragment('prosemirror')
      assert.equal(fragment.toString(), xml)
      assert.equal(fragment.get(0).nodeName, 'paragraph')
      const bob = await openDemo(browser, srv, { doc, name: 'Bob' })
      try {
        await waitForPm(bob.page, { text: 'committed rich text', xml }, 'Bob after the restart')
        const paragraph = new Y.XmlElement('paragraph')
        paragraph.insert(0, [new Y.XmlText('written by y-websocket')])
        fragment.insert(1, [paragraph])
        const both = `${xml}<paragraph>written by y-websocket</paragraph>`
        await waitForPm(bob.page, { text: 'committed rich text\nwritten by y-websocket', xml: both }, 'Bob after the y-websocket client wrote')
        // And the other way: Bob's next words reach the Node client.
        await focusPm(bob.page, 'end')
        await bob.page.keyboard.type('!')
        await waitFor(() => fragment.toString() === `${xml}<paragraph>written by y-websocket!</paragraph>`, () => fragment.toString())
        await bob.page.waitForFunction(() => document.getElementById('pm-unsynced').dataset.unsynced === '0')
        assert.equal((await restJson(srv, doc)).prosemirror, `${xml}<paragraph>written by y-websocket!</paragraph>`)
        assert.deepEqual(bob.errors, [])
      } finally {
        await bob.context.close()
      }
    } finally {
      node.close()
    }
  } finally {
    assert.equal(await srv.stop(), 0, srv.stderr)
  }
})

/** Waits until `check()` holds; `seen()` says what was there instead. */
async function waitFor (check, seen) {
  const deadline = Date.now() + TIMEOUT_MS
  while (!check()) {
    assert.ok(Date.now() < deadline, `timed out; saw ${JSON.stringify(seen())}`)
    await new Promise(resolve => setTimeout(resolve, 50))
  }
}
