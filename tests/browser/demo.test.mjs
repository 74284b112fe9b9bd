// The demo editor in a real browser (Debian's chromium, headless, through playwright-core)
// against the built binary: two people (two browser contexts: separate storage, separate
// connections) type at once and converge, see each other's cursor, selection, name and
// typing, one goes offline and reconciles, an edit typed offline with `?offline=1` survives
// closing the tab (y-indexeddb), the OT <textarea> shows and edits the same text (CRLF line
// ends and embeds included).
// No page may log an error. Screenshots go to artifacts/browser/.
//
// Run: `npm test` here, after `./setup.sh` and `cargo build --release` (or set YSERVE_BIN).
// The page is the one embedded in the binary; `YSERVE_DEMO_DIR=../../src/demo` tests a fresh
// `npm run build:demo` instead (harness.mjs).
import { execFileSync } from 'node:child_process'
import { after, before, test } from 'node:test'
import assert from 'node:assert/strict'
import { Server, binaryPath, launchBrowser, openDemo, waitForText, focusEditor, editorText, textareaText, screenshot, TIMEOUT_MS } from './harness.mjs'

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

test('with JWT auth on, ?token= reaches both clients', async () => {
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
      const response = await fetch(`${authed.http}/api/docs/team%2Fnotes/json`, { headers: { Authorization: `Bearer ${token}` } })
      assert.equal((await response.json()).text, 'written with a token!')
      assert.deepEqual(alice.errors, [])
    } finally {
      await alice.context.close()
    }
  } finally {
    assert.equal(await authed.stop(), 0, authed.stderr)
  }
})
