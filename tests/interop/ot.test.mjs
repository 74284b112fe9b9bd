// The OT compatibility layer with the real clients: the stock `sharedb` client and the
// `rich-text` type edit the root Y.Text that stock y-websocket clients edit, and both
// converge (SPEC §5). Also the REST mirror.
import { test, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { createRequire } from 'node:module'
import { execFileSync } from 'node:child_process'
import { isDeepStrictEqual } from 'node:util'
import WebSocket from 'ws'
import { Server, Clients, waitFor, synced, binaryPath, underlyingSocket, rawSocket, restRequest } from './harness.mjs'

const require = createRequire(import.meta.url)
const ShareDB = require('sharedb/lib/client')
const richText = require('rich-text')
ShareDB.types.register(richText.type)
const Delta = richText.Delta

let server
before(async () => { server = await new Server().start() })
after(async () => { await server?.dispose() })

const closesOf = new WeakMap() // sharedb Connection → its `sc.closes`, for diagnostics

/**
 * A stock ShareDB client connection over `ws` to /api/ot. `sc.socket` is the current socket;
 * `tryRebind(sc)` / `reconnect(sc)` give the connection a new one, as a reconnecting app does
 * (the sharedb client never reconnects by itself).
 */
function shareConnection (srv = server, token) {
  const url = `${srv.url}/api/ot${token ? `?token=${token}` : ''}`
  const socket = new WebSocket(url)
  const connection = new ShareDB.Connection(socket)
  const sc = { url, socket, connection, errors: [], received: [], closes: [] }
  watchClose(sc, socket)
  // Connection errors (e.g. an invalid state transition) must fail the test, not crash it.
  connection.on('error', err => sc.errors.push(err))
  // Every message from the server, as parsed JSON (the client hides some errors, see the
  // read-only test), copied because the client deletes `error` from what it handles.
  connection.on('receive', request => sc.received.push(structuredClone(request.data)))
  sc.close = () => connection.close()
  closesOf.set(connection, sc.closes)
  return sc
}

/**
 * Binds a new socket once the old one is closed and sharedb knows it (a `connecting` state
 * is only reachable from `disconnected`). Returns false if that is not the case yet.
 */
function tryRebind (sc) {
  if (sc.connection.state !== 'disconnected' || sc.socket.readyState !== WebSocket.CLOSED) return false
  sc.socket = watchClose(sc, new WebSocket(sc.url))
  sc.connection.bindToSocket(sc.socket)
  return true
}

/** Records how each socket of `sc` closed (`sc.closes`), to tell a server's close from ours. */
function watchClose (sc, socket) {
  socket.on('close', (code, reason) => sc.closes.push(`${code} ${reason}`))
  return socket
}

/**
 * Rebinds until the connection is `connected` again (the server may still be starting). A
 * socket that was just closed, terminated or destroyed still looks connected to sharedb until
 * its `close` event, so that socket itself must be open and alive too.
 */
async function reconnect (sc, ms = 15000) {
  await waitFor(() => {
    if (sc.connection.state === 'connected' && sc.socket.readyState === WebSocket.OPEN && !sc.socket._socket?.destroyed) return true
    tryRebind(sc)
    return false
  }, () => `sharedb connection to reconnect (state ${sc.connection.state})`, ms)
}

function subscribe (doc) {
  return new Promise((resolve, reject) => doc.subscribe(err => err ? reject(err) : resolve()))
}

function submit (doc, op) {
  return new Promise((resolve, reject) => doc.submitOp(op, err => err ? reject(err) : resolve()))
}

/** Plain text of a rich-text snapshot (embeds as U+FFFC). */
function plain (delta) {
  return (delta?.ops || []).map(o => typeof o.insert === 'string' ? o.insert : '\uFFFC').join('')
}

/** Plain text without embeds, as Yjs `toString()` and the REST `text` field write it. */
function textOnly (ops) {
  return (ops || []).map(o => typeof o.insert === 'string' ? o.insert : '').join('')
}

/**
 * A document delta in one canonical form, so that a ShareDB snapshot, a Yjs `toDelta()` and
 * the REST `ops` compare with `isDeepStrictEqual`: adjacent inserts with equal attributes
 * merged, `null` and empty attributes dropped, attribute keys sorted.
 */
function norm (ops) {
  const d = new Delta()
  for (const op of ops || []) {
    if (op.insert === undefined || op.insert === '') continue
    const attrs = Object.fromEntries(Object.entries(op.attributes || {}).filter(([, v]) => v !== null).sort(([a], [b]) => a < b ? -1 : 1))
    d.push(Object.keys(attrs).length ? { insert: op.insert, attributes: attrs } : { insert: op.insert })
  }
  return d.ops
}

const textPath = (name, text = 't') => `/api/docs/${encodeURIComponent(name)}/texts/${encodeURIComponent(text)}`

/**
 * A JSON request to the REST mirror: `{ status, body }`. Sent with `node:http` so that a GET
 * carries `Content-Length: 0`: the server currently refuses a GET without that header (411),
 * which the test 'a plain GET of the REST mirror ...' below pins down; this helper works
 * around it so that the other tests exercise what they are about.
 */
function rest (method, path, body, { srv = server, token } = {}) {
  return restRequest(srv, method, path, body, { token })
}

async function getText (name, opts) {
  const r = await rest('GET', textPath(name), undefined, opts)
  assert.equal(r.status, 200, `GET ${name}: ${JSON.stringify(r.body)}`)
  return r.body
}

async function opsSince (name, from, opts) {
  const r = await rest('GET', `${textPath(name)}/ops?from=${from}`, undefined, opts)
  assert.equal(r.status, 200, `GET ops of ${name}: ${JSON.stringify(r.body)}`)
  return r.body
}

/**
 * Waits until every ShareDB doc has no op pending and sits at the server's version, and every
 * ShareDB snapshot, every Yjs text and the REST snapshot are the same delta.
 */
async function converged (name, shareDocs, ys, { ms = 15000, srv = server } = {}) {
  let state = 'nothing read yet'
  await waitFor(async () => {
    const r = await getText(name, { srv })
    const want = norm(r.ops)
    // Compact, and only what differs from the REST snapshot.
    const show = ops => isDeepStrictEqual(ops, want) ? 'same as REST' : JSON.stringify(ops)
    state = [
      `REST v${r.v}: ${JSON.stringify(want)}`,
      ...shareDocs.map((d, i) => `sharedb ${i} v${d.version} ${d.connection.state}${d.hasWritePending() ? ' pending' : ''}: ${show(norm(d.data?.ops))}`),
      ...shareDocs.map((d, i) => `sharedb ${i} socket closes: ${JSON.stringify(closesOf.get(d.connection) || [])}`),
      ...ys.map((y, i) => `yjs ${i}${y.provider.synced ? ' synced' : ' not synced'}: ${show(norm(y.text.toDelta()))}`)
    ].join('\n')
    return r.text === textOnly(r.ops) &&
      shareDocs.every(d => !d.hasWritePending() && d.version === r.v && isDeepStrictEqual(norm(d.data?.ops), want)) &&
      ys.every(y => y.provider.synced && y.text.toString() === r.text && isDeepStrictEqual(norm(y.text.toDelta()), want))
  }, () => `every replica of ${name} to converge: ${state}`, ms)
}

/** A seeded generator; the seed is printed and replayed from YSERVE_TEST_SEED. */
function seeded (what) {
  const seed = process.env.YSERVE_TEST_SEED ? Number(process.env.YSERVE_TEST_SEED) : Math.floor(Math.random() * 2 ** 31)
  console.log(`${what}: seed ${seed} (replay with YSERVE_TEST_SEED=${seed})`)
  let a = seed >>> 0
  const next = () => { // mulberry32
    a = (a + 0x6D2B79F5) >>> 0
    let t = a
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
  return { seed, next, int: n => Math.floor(next() * n), pick: xs => xs[Math.floor(next() * xs.length)], chance: p => next() < p }
}

// Surrogate pairs, a modified emoji (two pairs), CJK, a combining-free accent, newlines.
const PIECES = ['a', 'b', 'xyz', ' ', '😀', '👍🏽', '漢字', '中', 'é', '\n', 'Hello', '🎉🎉']
const FORMATS = [{ bold: true }, { bold: null }, { italic: true }, { italic: null }, { color: '#f00' }, { color: null }]

/** UTF-16 offsets between code points: edits never cut a surrogate pair. */
function cuts (s) {
  const out = [0]
  let i = 0
  for (const ch of s) { i += ch.length; out.push(i) }
  return out
}

/** A random insert, delete or (if `format`) format against the text `s`. */
function randomEdit (rng, s, { format = false } = {}) {
  const at = cuts(s)
  const r = rng.next()
  if (at.length === 1 || r < 0.55) {
    const attrs = format && rng.chance(0.2) ? rng.pick(FORMATS.filter(f => Object.values(f)[0] !== null)) : undefined
    return { kind: 'insert', pos: rng.pick(at), str: rng.pick(PIECES), attrs }
  }
  const i = rng.int(at.length - 1)
  const j = i + 1 + rng.int(Math.min(format ? 6 : 3, at.length - 1 - i))
  if (!format || r < 0.85) return { kind: 'delete', pos: at[i], len: at[j] - at[i] }
  return { kind: 'format', pos: at[i], len: at[j] - at[i], attrs: rng.pick(FORMATS) }
}

function editToDelta (e) {
  const d = new Delta().retain(e.pos)
  if (e.kind === 'insert') return d.insert(e.str, e.attrs)
  if (e.kind === 'delete') return d.delete(e.len)
  return d.retain(e.len, e.attrs)
}

function applyToYjs (text, e) {
  if (e.kind === 'insert') text.insert(e.pos, e.str, e.attrs ? { ...e.attrs } : {})
  else if (e.kind === 'delete') text.delete(e.pos, e.len)
  else text.format(e.pos, e.len, { ...e.attrs })
}

/** Lets traffic flow between the steps of a randomized test (not a wait for a condition). */
const pause = ms => new Promise(resolve => setTimeout(resolve, ms))

test('a sharedb client and a y-websocket client edit the same text and converge', async () => {
  const pool = new Clients()
  const sc = shareConnection()
  try {
    const y = pool.add(server, 'ot-basic')
    await synced(y)
    y.text.insert(0, 'hello')
    const doc = sc.connection.get('ot-basic', 't')
    await subscribe(doc)
    await waitFor(() => plain(doc.data) === 'hello', () => `sharedb sees ${JSON.stringify(doc.data)}`)
    assert.equal(doc.type.uri, 'http://sharejs.org/types/rich-text/v1')
    await submit(doc, new Delta().retain(5).insert(' world 😀'))
    await waitFor(() => y.text.toString() === 'hello world 😀', () => `yjs sees ${y.text.toString()}`)
    y.text.insert(0, '> ')
    await waitFor(() => plain(doc.data) === '> hello world 😀', () => `sharedb sees ${plain(doc.data)}`)
  } finally {
    sc.close()
    pool.destroyAll()
  }
})

test('one sharedb client and two y-websocket clients typing concurrently with emoji and CJK converge', async () => {
  const rng = seeded('concurrent typing')
  const name = `ot-concurrent-${rng.seed}`
  const pool = new Clients()
  const sc = shareConnection()
  const opErrors = []
  try {
    const ys = [pool.add(server, name), pool.add(server, name)]
    await Promise.all(ys.map(y => synced(y)))
    const doc = sc.connection.get(name, 't')
    await subscribe(doc)
    for (let step = 0; step < 400; step++) {
      const who = rng.int(3)
      if (who === 0) {
        const e = randomEdit(rng, plain(doc.data))
        doc.submitOp(editToDelta(e), err => err && opErrors.push(err))
      } else {
        const y = ys[who - 1]
        applyToYjs(y.text, randomEdit(rng, y.text.toString()))
      }
      // Mostly back to back (concurrent), sometimes a moment for the messages to cross.
      if (rng.chance(0.25)) await pause(rng.int(4))
    }
    await converged(name, [doc], ys)
    const r = await getText(name)
    assert.equal(plain(doc.data), r.text)
    for (const y of ys) assert.equal(y.text.toString(), r.text)
    assert.deepEqual(opErrors, [])
    assert.deepEqual(sc.errors, [])
  } finally {
    sc.close()
    pool.destroyAll()
  }
})

// Issue 13 (1b): two stock sharedb clients and a Yjs client type at once into a text that
// starts with an astral character. A inserts right after the emoji, B at the start, the Yjs
// client at the end. Each op is valid against the text its client has when it makes it: back
// to back (nothing arrives in between) A's op is the issue's literal [{retain: 2}, {insert: 'A'}];
// with turns of the event loop in between, B's inserts reach A first and A's emoji moves, so
// A retains up to where the emoji now ends (a fixed `retain: 2` would then cut the pair in A's
// own text: see the next test). The server must refuse none of them, and all converge.
test('three-way race around an astral character: two sharedb clients and a Yjs client typing at once are never refused and converge', async () => {
  const EMOJI = '😀'
  const schedules = {
    'back to back': async () => {},
    'a macrotask between rounds': () => new Promise(resolve => setImmediate(resolve)),
    'a timer between rounds': () => pause(1)
  }
  for (const [schedule, between] of Object.entries(schedules)) {
    const name = `ot-race-astral-${Object.keys(schedules).indexOf(schedule)}`
    const pool = new Clients()
    const [sa, sb] = [shareConnection(), shareConnection()]
    const failures = []
    const wireErrors = []
    try {
      const y = pool.add(server, name)
      await synced(y)
      y.text.insert(0, `${EMOJI}abc`)
      const [a, b] = [sa, sb].map(sc => sc.connection.get(name, 't'))
      for (const [who, sc, doc] of [['A', sa, a], ['B', sb, b]]) {
        doc.on('error', err => failures.push(`${schedule}: ${who} error event: ${err.code}: ${err.message}`))
        sc.connection.on('receive', r => { if (r.data?.error) wireErrors.push(`${schedule}: to ${who}: ${JSON.stringify(r.data)}`) })
        await subscribe(doc)
      }
      await waitFor(() => plain(a.data) === `${EMOJI}abc` && plain(b.data) === `${EMOJI}abc`, 'both sharedb clients see the text')
      const afterEmoji = []
      for (let i = 0; i < 40; i++) {
        const at = plain(a.data).indexOf(EMOJI) + EMOJI.length
        afterEmoji.push(at)
        a.submitOp([{ retain: at }, { insert: 'A' }], err => err && failures.push(`${schedule}: A submit ${i}: ${err.code}: ${err.message}`))
        b.submitOp([{ insert: 'B' }], err => err && failures.push(`${schedule}: B submit ${i}: ${err.code}: ${err.message}`))
        y.text.insert(y.text.length, 'Y')
        await between()
      }
      if (schedule === 'back to back') assert.deepEqual(new Set(afterEmoji), new Set([2]), 'the issue\'s op, verbatim')
      await converged(name, [a, b], [y])
      assert.deepEqual(failures, [])
      assert.deepEqual(wireErrors, [])
      assert.deepEqual([...sa.errors, ...sb.errors], [])
      const text = (await getText(name)).text
      assert.ok(text.isWellFormed(), `${schedule}: no lone surrogate in ${JSON.stringify(text)}`)
      const count = ch => [...text].filter(c => c === ch).length
      assert.deepEqual({ A: count('A'), B: count('B'), Y: count('Y'), [EMOJI]: count(EMOJI) }, { A: 40, B: 40, Y: 40, [EMOJI]: 1 }, `${schedule}: ${text}`)
      // Where each client typed: B's before the emoji, A's right after it, the Yjs ones at the end.
      assert.match(text, new RegExp(`^B{40}${EMOJI}A{40}abcY{40}$`, 'u'), schedule)
      assert.equal(plain(a.data), text)
      assert.equal(plain(b.data), text)
      assert.equal(y.text.toString(), text)
    } finally {
      sa.close()
      sb.close()
      pool.destroyAll()
    }
  }
})

// What the issue's run hit: with turns of the event loop between submits, B's 'B' reaches A
// before A types, and A's fixed [{retain: 2}, {insert: 'A'}] then cuts the emoji in A's own
// text ('B\uD83D' + 'A' + '\uDE00'). The server refuses that op, rightly, and the stock client
// rolls back to the server's text; a valid op from A afterwards is taken.
test('a sharedb op that cuts a surrogate pair in its own client\'s text is refused, and the client rolls back to the server\'s text', async () => {
  const name = 'ot-race-astral-cut'
  const pool = new Clients()
  const [sa, sb] = [shareConnection(), shareConnection()]
  try {
    const y = pool.add(server, name)
    await synced(y)
    y.text.insert(0, '😀abc')
    const [a, b] = [sa, sb].map(sc => sc.connection.get(name, 't'))
    for (const doc of [a, b]) await subscribe(doc)
    await waitFor(() => plain(a.data) === '😀abc', 'A sees the text')
    await submit(b, [{ insert: 'B' }])
    await waitFor(() => plain(a.data) === 'B😀abc', () => `A sees B's op: ${plain(a.data)}`)
    const refused = submit(a, [{ retain: 2 }, { insert: 'A' }])
    assert.equal(plain(a.data), 'B\uD83DA\uDE00abc', 'the op cuts the pair in A\'s own text')
    await assert.rejects(refused, err => err.code === 'ERR_OT_OP_NOT_APPLIED' && /splits a surrogate pair/.test(err.message))
    await waitFor(() => plain(a.data) === 'B😀abc' && !a.hasWritePending(), () => `A rolls back: ${JSON.stringify(plain(a.data))}`)
    await submit(a, [{ retain: 3 }, { insert: 'A' }])
    await converged(name, [a, b], [y])
    assert.equal((await getText(name)).text, 'B😀Aabc')
  } finally {
    sa.close()
    sb.close()
    pool.destroyAll()
  }
})

test('retain with attributes, replace, null attributes and embeds round-trip between sharedb, REST and Yjs formatting', async () => {
  const name = 'ot-format'
  const pool = new Clients()
  const sc = shareConnection()
  try {
    const y = pool.add(server, name)
    await synced(y)
    const doc = sc.connection.get(name, 't')
    await subscribe(doc)
    const remoteOps = []
    // sharedb emits the op as received (a JSON array), not as a Delta.
    doc.on('op', (op, source) => { if (!source) remoteOps.push(Array.isArray(op) ? op : op.ops) })
    y.text.insert(0, 'hello world')
    await waitFor(() => plain(doc.data) === 'hello world', () => `sharedb sees ${JSON.stringify(doc.data)}`)

    // RETAIN with attributes from sharedb becomes Yjs formatting.
    await submit(doc, [{ retain: 2 }, { retain: 3, attributes: { bold: true } }])
    let want = [{ insert: 'he' }, { insert: 'llo', attributes: { bold: true } }, { insert: ' world' }]
    await waitFor(() => isDeepStrictEqual(norm(y.text.toDelta()), want), () => `yjs delta ${JSON.stringify(y.text.toDelta())}`)

    // REPLACE through the REST mirror: insert-then-delete, on both sides.
    const before = await getText(name)
    const replaced = await rest('POST', textPath(name), { v: before.v, src: 'rest-format', seq: 1, op: [{ retain: 6 }, { replace: 5, insert: 'there' }] })
    assert.equal(replaced.status, 200, JSON.stringify(replaced.body))
    assert.equal(replaced.body.v, before.v)
    want = [{ insert: 'he' }, { insert: 'llo', attributes: { bold: true } }, { insert: ' there' }]
    await waitFor(() => isDeepStrictEqual(norm(y.text.toDelta()), want) && isDeepStrictEqual(norm(doc.data.ops), want),
      () => `replace: yjs ${JSON.stringify(y.text.toDelta())}, sharedb ${JSON.stringify(doc.data.ops)}`)
    const logged = (await opsSince(name, before.v)).ops
    assert.deepEqual(logged.map(o => [o.src, o.seq, o.op]), [['rest-format', 1, [{ retain: 6 }, { insert: 'there' }, { delete: 5 }]]])

    // REPLACE with attributes across a formatted range: the new text has exactly its own.
    const r2 = await getText(name)
    const replaced2 = await rest('POST', textPath(name), { v: r2.v, src: 'rest-format', seq: 2, op: [{ retain: 1 }, { replace: 3, insert: 'ELL', attributes: { italic: true } }] })
    assert.equal(replaced2.status, 200, JSON.stringify(replaced2.body))
    want = [{ insert: 'h' }, { insert: 'ELL', attributes: { italic: true } }, { insert: 'o', attributes: { bold: true } }, { insert: ' there' }]
    await waitFor(() => isDeepStrictEqual(norm(y.text.toDelta()), want) && isDeepStrictEqual(norm(doc.data.ops), want),
      () => `replace with attributes: yjs ${JSON.stringify(y.text.toDelta())}, sharedb ${JSON.stringify(doc.data.ops)}`)

    // `null` removes a format.
    await submit(doc, [{ retain: 4 }, { retain: 1, attributes: { bold: null } }])
    want = [{ insert: 'h' }, { insert: 'ELL', attributes: { italic: true } }, { insert: 'o there' }]
    await waitFor(() => isDeepStrictEqual(norm(y.text.toDelta()), want), () => `unbold: yjs ${JSON.stringify(y.text.toDelta())}`)
    assert.deepEqual(norm(doc.data.ops), want)

    // Yjs formatting reaches sharedb as a retain with attributes.
    remoteOps.length = 0
    y.text.format(6, 5, { underline: true })
    want = [{ insert: 'h' }, { insert: 'ELL', attributes: { italic: true } }, { insert: 'o ' }, { insert: 'there', attributes: { underline: true } }]
    await waitFor(() => isDeepStrictEqual(norm(doc.data.ops), want), () => `yjs format: sharedb ${JSON.stringify(doc.data.ops)}`)
    assert.deepEqual(remoteOps, [[{ retain: 6 }, { retain: 5, attributes: { underline: true } }]])
    remoteOps.length = 0
    y.text.format(6, 2, { underline: null })
    want = [{ insert: 'h' }, { insert: 'ELL', attributes: { italic: true } }, { insert: 'o th' }, { insert: 'ere', attributes: { underline: true } }]
    await waitFor(() => isDeepStrictEqual(norm(doc.data.ops), want), () => `yjs unformat: sharedb ${JSON.stringify(doc.data.ops)}`)
    assert.deepEqual(remoteOps, [[{ retain: 6 }, { retain: 2, attributes: { underline: null } }]])

    // Embeds both ways; Yjs `toString()` and the REST `text` leave them out, `ops` keep them.
    await submit(doc, [{ retain: 11 }, { insert: { image: 'x.png' }, attributes: { width: '10' } }])
    await waitFor(() => isDeepStrictEqual(y.text.toDelta().at(-1), { insert: { image: 'x.png' }, attributes: { width: '10' } }),
      () => `sharedb embed: yjs ${JSON.stringify(y.text.toDelta())}`)
    y.text.insertEmbed(0, { image: 'y.png' })
    await waitFor(() => isDeepStrictEqual(doc.data.ops[0], { insert: { image: 'y.png' } }), () => `yjs embed: sharedb ${JSON.stringify(doc.data.ops)}`)
    // Formatting an embed, then deleting one, from sharedb.
    await submit(doc, [{ retain: 1, attributes: { alt: 'why' } }])
    await waitFor(() => isDeepStrictEqual(y.text.toDelta()[0], { insert: { image: 'y.png' }, attributes: { alt: 'why' } }),
      () => `embed format: yjs ${JSON.stringify(y.text.toDelta())}`)
    await submit(doc, [{ retain: 12 }, { delete: 1 }])
    await converged(name, [doc], [y])
    const final = await getText(name)
    assert.equal(final.text, 'hELLo there')
    assert.deepEqual(norm(final.ops), [
      { insert: { image: 'y.png' }, attributes: { alt: 'why' } },
      { insert: 'h' }, { insert: 'ELL', attributes: { italic: true } }, { insert: 'o th' }, { insert: 'ere', attributes: { underline: true } }
    ])
    assert.deepEqual(sc.errors, [])
  } finally {
    sc.close()
    pool.destroyAll()
  }
})

test('a plain GET of the REST mirror, with no Content-Length header, is answered', async () => {
  // fetch(), browsers and curl send a GET without Content-Length; the server must not ask for one.
  const name = 'ot-plain-get'
  for (const path of [textPath(name), `${textPath(name)}/ops?from=1`]) {
    const res = await fetch(server.http + path)
    const body = await res.text()
    assert.equal(res.status, 200, `GET ${path}: ${res.status} ${body}`)
    assert.equal(JSON.parse(body).v, 1)
  }
})

test('a REST op resubmitted with the same src and seq and a stale version is applied once', async () => {
  const name = 'ot-idempotent-rest'
  const v0 = (await getText(name)).v
  const op = { v: v0, src: 'rest-idem', seq: 7, op: [{ insert: 'A' }] }
  const first = await rest('POST', textPath(name), op)
  assert.equal(first.status, 200, JSON.stringify(first.body))
  assert.equal(first.body.v, v0)
  assert.deepEqual(first.body.ops, [])
  // Another writer moves the text on, so the resubmission is stale by more than its own op.
  const other = await rest('POST', textPath(name), { v: v0 + 1, src: 'rest-other', seq: 1, op: [{ insert: 'B' }] })
  assert.equal(other.status, 200, JSON.stringify(other.body))
  const second = await rest('POST', textPath(name), op)
  assert.equal(second.status, 200, JSON.stringify(second.body))
  assert.equal(second.body.v, first.body.v)
  assert.equal(second.body.epoch, first.body.epoch)
  const log = await opsSince(name, v0)
  assert.deepEqual(log.ops.map(o => [o.v, o.src, o.seq]), [[v0, 'rest-idem', 7], [v0 + 1, 'rest-other', 1]])
  const now = await getText(name)
  assert.equal(now.v, v0 + 2)
  assert.equal(now.text, 'BA')

  // A new op based on v0 is transformed past both, and the answer lists what it missed.
  const stale = await rest('POST', textPath(name), { v: v0, src: 'rest-idem', seq: 8, op: [{ insert: 'C' }] })
  assert.equal(stale.status, 200, JSON.stringify(stale.body))
  assert.equal(stale.body.v, v0 + 2)
  assert.deepEqual(stale.body.ops.map(o => [o.v, o.src, o.seq, o.op]), [[v0, 'rest-idem', 7, [{ insert: 'A' }]], [v0 + 1, 'rest-other', 1, [{ insert: 'B' }]]])
  // Committed ops win ties (both A and B were inserts at 0), so C lands after them.
  assert.equal((await getText(name)).text, 'BAC')
})

test('a sharedb op in flight when the socket drops is applied exactly once after the client reconnects', async () => {
  const name = 'ot-idempotent-ws'
  const pool = new Clients()
  const sc = shareConnection()
  try {
    const y = pool.add(server, name)
    await synced(y)
    y.text.insert(0, 'base')
    const doc = sc.connection.get(name, 't')
    await subscribe(doc)
    await waitFor(() => plain(doc.data) === 'base', () => `sharedb sees ${plain(doc.data)}`)

    // 1. The socket is killed right after submitOp has sent the op (sharedb sends on the
    //    next tick): whatever reached the server, it is applied once.
    let acked1 = null
    doc.submitOp(new Delta().insert('[1]'), err => { acked1 = err || 'ok' })
    await new Promise(resolve => process.nextTick(resolve))
    assert.ok(doc.inflightOp, 'the op is in flight')
    sc.socket.terminate()
    await waitFor(() => sc.connection.state === 'disconnected', 'sharedb to notice the drop')
    y.text.insert(y.text.length, '!') // concurrent: the resubmission is stale
    await reconnect(sc)
    await waitFor(() => acked1 !== null, 'the first op to be acknowledged')
    assert.equal(acked1, 'ok')
    await converged(name, [doc], [y])
    assert.equal(y.text.toString(), '[1]base!')

    // 2. The server commits the op but the ack never arrives (the client stops reading),
    //    then the socket closes: the client re-sends (src, seq) and must get an ack, not a
    //    second copy.
    const { v: vBefore } = await getText(name)
    let acked2 = null
    doc.submitOp(new Delta().retain(3).insert('[2]'), err => { acked2 = err || 'ok' })
    await new Promise(resolve => process.nextTick(resolve))
    const inflight = doc.inflightOp
    assert.ok(inflight, 'the op is in flight')
    sc.socket.onmessage = null
    const src = inflight.src
    await waitFor(async () => (await opsSince(name, vBefore)).ops.some(o => o.src === src && o.seq === inflight.seq),
      'the server to commit the in-flight op')
    y.text.insert(0, '>') // another op after it, before the client is back
    await waitFor(async () => (await getText(name)).v === vBefore + 2, 'the Yjs edit to be sequenced')
    sc.socket.close()
    await waitFor(() => sc.connection.state === 'disconnected', 'sharedb to notice the close')
    assert.equal(acked2, null)
    await reconnect(sc)
    await waitFor(() => acked2 !== null, 'the second op to be acknowledged')
    assert.equal(acked2, 'ok')
    await converged(name, [doc], [y])
    assert.equal(y.text.toString(), '>[1][2]base!')
    const log = await opsSince(name, 1)
    const mine = log.ops.filter(o => o.src !== 'yjs').map(o => `${o.src}/${o.seq}`)
    assert.equal(new Set(mine).size, mine.length, `an op logged twice: ${mine}`)
    assert.equal(mine.length, 2)
    assert.deepEqual(sc.errors, [])
  } finally {
    sc.close()
    pool.destroyAll()
  }
})

test('a read-only token may fetch and subscribe but its sharedb and REST submits are rejected', async () => {
  const secret = 's3cret'
  const token = (sub, grant) => execFileSync(binaryPath(), ['token', '--jwt-secret', secret, '--sub', sub, '--doc', grant, '--ttl', '1h']).toString().trim()
  const reader = token('bob', 'ro*=read')
  const writer = token('alice', 'ro*=write')
  const srv = await new Server(['--jwt-secret', secret]).start()
  const name = 'ro-doc'
  const sc = shareConnection(srv, reader)
  try {
    const written = await rest('POST', textPath(name), { v: null, src: 'alice-rest', seq: 1, op: [{ insert: 'by alice' }] }, { srv, token: writer })
    assert.equal(written.status, 200, JSON.stringify(written.body))

    const doc = sc.connection.get(name, 't')
    await subscribe(doc)
    assert.equal(plain(doc.data), 'by alice')
    const v = doc.version

    // The stock client swallows ERR_OP_SUBMIT_REJECTED on purpose (it calls back without an
    // error and rolls the op back), so the refusal is read off the wire.
    const refusal = () => sc.received.find(m => m.a === 'op' && m.error)
    await submit(doc, new Delta().insert('bob was here '))
    await waitFor(refusal, 'the refusal of the read-only op')
    assert.equal(refusal().error.code, 'ERR_OP_SUBMIT_REJECTED')
    await waitFor(() => plain(doc.data) === 'by alice' && !doc.hasWritePending(), () => `rollback: sharedb has ${plain(doc.data)}`)

    const posted = await rest('POST', textPath(name), { v, src: 'bob-rest', seq: 1, op: [{ insert: 'x' }] }, { srv, token: reader })
    assert.equal(posted.status, 403)
    assert.equal(posted.body.error.code, 'ERR_OP_SUBMIT_REJECTED')

    const got = await getText(name, { srv, token: reader })
    assert.equal(got.text, 'by alice')
    assert.equal(got.v, v)
    assert.equal((await opsSince(name, 1, { srv, token: reader })).ops.length, got.v - 1)

    // The subscription is live: the writer's next op reaches the reader.
    const more = await rest('POST', textPath(name), { v: null, src: 'alice-rest', seq: 2, op: [{ retain: 8 }, { insert: '!' }] }, { srv, token: writer })
    assert.equal(more.status, 200, JSON.stringify(more.body))
    await waitFor(() => plain(doc.data) === 'by alice!' && doc.version === v + 1, () => `reader sees ${plain(doc.data)} at ${doc.version}`)

    // No token at all: refused outright.
    const anonymous = await rest('GET', textPath(name), undefined, { srv })
    assert.equal(anonymous.status, 401)
    assert.deepEqual(sc.errors, [])
  } finally {
    sc.close()
    await srv.dispose()
  }
})

test('versions never go backwards across a restart', async () => {
  const srv = await new Server().start()
  const name = 'ot-versions'
  const pool = new Clients()
  try {
    for (let i = 0; i < 3; i++) {
      const r = await rest('POST', textPath(name), { v: null, src: 'rest-v', seq: i, op: [{ insert: `${i}` }] }, { srv })
      assert.equal(r.status, 200, JSON.stringify(r.body))
    }
    const y = pool.add(srv, name)
    await synced(y)
    y.text.insert(0, 'y')
    await waitFor(async () => (await getText(name, { srv })).text === 'y210', 'the Yjs edit to reach the text')
    const before = await getText(name, { srv })
    assert.equal(before.v, 5)
    const logBefore = await opsSince(name, 1, { srv })
    pool.destroyAll()

    await srv.restart()
    const after = await getText(name, { srv })
    assert.equal(after.v, before.v)
    assert.equal(after.epoch, before.epoch)
    assert.equal(after.text, before.text)
    assert.deepEqual(await opsSince(name, 1, { srv }), logBefore)

    const edited = await rest('POST', textPath(name), { v: after.v, src: 'rest-v', seq: 3, op: [{ insert: 'x' }] }, { srv })
    assert.equal(edited.status, 200, JSON.stringify(edited.body))
    assert.equal(edited.body.v, after.v)
    assert.equal((await getText(name, { srv })).v, after.v + 1)

    // A Yjs edit made after the restart, with no OT client connected, is the next version.
    const y2 = pool.add(srv, name)
    await synced(y2)
    y2.text.insert(y2.text.length, '.')
    await waitFor(async () => (await getText(name, { srv })).v === after.v + 2, 'the Yjs edit after the restart to be sequenced')
    assert.equal((await getText(name, { srv })).text, 'xy210.')
  } finally {
    pool.destroyAll()
    await srv.dispose()
  }
})

test('sharedb clients typing through a server restart get no error replies and lose no ops', async () => {
  // ShareDB's client answers any op error but ERR_OP_SUBMIT_REJECTED with a hard rollback:
  // it re-fetches the document and throws away the op and every pending one, i.e. the
  // user's edits. So a server that cannot take an op because it is stopping must leave it
  // unanswered (the socket closes with 1001 and the client re-sends the op after it
  // reconnects) rather than refuse it; likewise a subscribe. Four connections type into ten
  // documents each, as fast as acks come back, while the server restarts.
  const srv = await new Server().start()
  const names = Array.from({ length: 10 }, (_, i) => `ot-restart-typing-${i}`)
  const scs = Array.from({ length: 4 }, () => shareConnection(srv))
  const pool = new Clients()
  const failed = []
  try {
    // A large document with an unsnapshotted tail makes the server take a moment to stop
    // (it snapshots that document first), as a real server with real documents does.
    const heavy = pool.add(srv, 'ot-restart-heavy')
    await synced(heavy)
    for (let i = 0; i < 40; i++) heavy.text.insert(heavy.text.length, `${i}`.padEnd(200000, '.'))
    await waitFor(async () => (await getText('ot-restart-heavy', { srv })).text.length === heavy.text.length, 'the large document to be stored', 20000)
    const docs = scs.flatMap(sc => names.map(name => sc.connection.get(name, 't')))
    await Promise.all(docs.map(subscribe))
    const typed = new Map(names.map(name => [name, []]))
    let n = 0
    const type = doc => {
      const s = `[${n++}]`
      typed.get(doc.collection).push(s)
      doc.submitOp(new Delta().retain(plain(doc.data).length).insert(s), err => err && failed.push(`${doc.collection}: ${err.code}: ${err.message}`))
    }
    const restarting = srv.restart() // SIGTERM now
    let done = false
    restarting.finally(() => { done = true })
    while (!done) {
      // A new op wherever the previous one was acknowledged (or the client is offline).
      for (const doc of docs) if (!doc.inflightOp || doc.connection.state !== 'connected') type(doc)
      await pause(0)
    }
    await restarting
    for (const sc of scs) await reconnect(sc)
    for (const doc of docs) type(doc)
    for (const name of names) await converged(name, docs.filter(d => d.collection === name), [], { srv })

    const refusals = scs.flatMap(sc => sc.received.filter(m => m.error)).map(m => JSON.stringify(m))
    const lost = []
    for (const name of names) {
      const text = (await getText(name, { srv })).text
      lost.push(...typed.get(name).filter(s => text.split(s).length - 1 !== 1).map(s => `${name} ${s}`))
    }
    const typedCount = [...typed.values()].reduce((a, t) => a + t.length, 0)
    assert.deepEqual({ refusals: refusals.length, failedCallbacks: failed.length, lostOrDoubled: lost.length }, { refusals: 0, failedCallbacks: 0, lostOrDoubled: 0 },
      `of ${typedCount} ops typed: error replies ${JSON.stringify(refusals.slice(0, 3))}..., callbacks ${JSON.stringify(failed.slice(0, 3))}..., lost ${JSON.stringify(lost.slice(0, 10))}...`)
  } finally {
    for (const sc of scs) sc.close()
    pool.destroyAll()
    await srv.dispose()
  }
})

test('three sharedb and three y-websocket clients with random edits, drops and a restart converge with no op logged twice', async () => {
  const rng = seeded('randomized OT/Yjs convergence')
  const srv = await new Server(['--ot-log-ops-max', '100000']).start()
  const name = `ot-random-${rng.seed}`
  const pool = new Clients()
  const scs = [0, 1, 2].map(() => shareConnection(srv))
  const opErrors = []
  try {
    const ys = [0, 1, 2].map(() => pool.add(srv, name, { maxBackoffTime: 300 }))
    await Promise.all(ys.map(y => synced(y)))
    const docs = scs.map(sc => sc.connection.get(name, 't'))
    for (const doc of docs) {
      doc.on('error', err => opErrors.push(Object.assign(err, { phase: 'doc error event' })))
      await subscribe(doc)
    }
    const steps = 1000
    const counts = { sharedbEdits: 0, yjsEdits: 0, sharedbDrops: 0, sharedbRebinds: 0, yjsDrops: 0, yjsReconnects: 0 }
    let restarting = null
    let restarted = false
    let step = 0
    const wireErrors = [] // every error reply, with when it came
    for (const sc of scs) {
      sc.connection.on('receive', r => {
        if (r.data?.error) wireErrors.push(`step ${step}${restarting ? ' (server restarting)' : ''}: ${JSON.stringify(r.data)}`)
      })
    }
    for (; step < steps; step++) {
      if (!restarted && step >= steps / 2) {
        // Editing goes on while the server restarts: everyone is offline for a while.
        restarted = true
        restarting = srv.restart()
      }
      const r = rng.next()
      if (r < 0.85) {
        const who = rng.int(6)
        if (who < 3) {
          const doc = docs[who]
          const phase = `step ${step}${restarting ? ' (server restarting)' : ''}`
          doc.submitOp(editToDelta(randomEdit(rng, plain(doc.data), { format: true })), err => err && opErrors.push(Object.assign(err, { phase })))
          counts.sharedbEdits++
        } else {
          const y = ys[who - 3]
          applyToYjs(y.text, randomEdit(rng, y.text.toString(), { format: true }))
          counts.yjsEdits++
        }
      } else if (r < 0.90) {
        // A sharedb client loses its socket: closed, terminated, or its TCP stream destroyed.
        const sc = rng.pick(scs)
        if (sc.socket.readyState === WebSocket.OPEN) {
          const how = rng.int(3)
          if (how === 0) sc.socket.close()
          else if (how === 1) sc.socket.terminate()
          else sc.socket._socket?.destroy()
          counts.sharedbDrops++
        }
      } else if (r < 0.94) {
        // ... and comes back (when the server is up; otherwise at the end).
        if (!restarting && tryRebind(rng.pick(scs))) counts.sharedbRebinds++
      } else if (r < 0.97) {
        const y = rng.pick(ys)
        if (y.provider.wsconnected) {
          if (rng.chance(0.5)) y.provider.disconnect() // stays offline until connect()
          else underlyingSocket(y).destroy() // reconnects by itself
          counts.yjsDrops++
        }
      } else {
        const y = rng.pick(ys)
        if (!y.provider.shouldConnect) {
          y.provider.connect()
          counts.yjsReconnects++
        }
      }
      if (rng.chance(0.3)) await pause(rng.int(5))
      if (restarting && rng.chance(0.05)) {
        await restarting
        restarting = null
        for (const sc of scs) await reconnect(sc)
      }
    }
    if (restarting) {
      await restarting
      for (const sc of scs) await reconnect(sc)
    }
    for (const y of ys) if (!y.provider.shouldConnect) y.provider.connect()
    for (const sc of scs) await reconnect(sc)
    await converged(name, docs, ys, { ms: 30000, srv })

    const log = await opsSince(name, 1, { srv })
    console.log(`randomized OT/Yjs convergence: ${JSON.stringify(counts)}, ${log.ops.length} ops logged, ${(await getText(name, { srv })).text.length} units of text`)
    assert.equal(log.v, (await getText(name, { srv })).v)
    assert.equal(log.ops.length, log.v - 1, 'the whole log is kept')
    assert.deepEqual(log.ops.map(o => o.v), log.ops.map((_, i) => i + 1), 'versions are contiguous')
    const seen = new Map()
    for (const o of log.ops) {
      if (o.src === 'yjs') continue
      const key = `${o.src}/${o.seq}`
      assert.ok(!seen.has(key), `(src, seq) ${key} logged twice: at v${seen.get(key)} and v${o.v}`)
      seen.set(key, o.v)
    }
    assert.deepEqual(opErrors.map(e => `${e.phase}: ${e.code}: ${e.message}`), [], `error replies: ${wireErrors.join('\n')}`)
    assert.deepEqual(wireErrors, [])
    for (const sc of scs) assert.deepEqual(sc.errors, [])
  } finally {
    for (const sc of scs) sc.close()
    pool.destroyAll()
    await srv.dispose()
  }
})

/** A promise of the stock client's callback. */
const callback = fn => new Promise((resolve, reject) => fn(err => err ? reject(err) : resolve()))

test('sharedb presence: cursors reach the other clients, late subscribers get them, and they are withdrawn on null, unsubscribe and a dropped socket', async () => {
  const name = 'ot-presence'
  const [a, b, c] = [shareConnection(), shareConnection(), shareConnection()]
  try {
    const docs = [a, b].map(sc => sc.connection.get(name, 't'))
    for (const doc of docs) await subscribe(doc)
    await submit(docs[0], new Delta().insert('hello world'))
    await waitFor(() => plain(docs[1].data) === 'hello world', 'b sees the text')

    const [pa, pb] = [a, b].map(sc => sc.connection.getDocPresence(name, 't'))
    await callback(cb => pa.subscribe(cb))
    await callback(cb => pb.subscribe(cb))
    const local = pa.create('cursor-a')
    // The acknowledgement is the server's echo: the callback only fires when it arrives.
    await callback(cb => local.submit({ index: 6, length: 5 }, cb))
    await waitFor(() => isDeepStrictEqual(pb.remotePresences['cursor-a'], { index: 6, length: 5 }),
      () => `b sees ${JSON.stringify(pb.remotePresences)}`)
    assert.deepEqual(Object.keys(pa.remotePresences), [], 'a sender does not receive its own presence as a remote one')

    // An op by b moves a's cursor on b's side: the relayed presence carries the version the
    // client needs to transform it.
    await submit(docs[1], new Delta().insert('>> '))
    await waitFor(() => pb.remotePresences['cursor-a']?.index === 9, () => `b sees ${JSON.stringify(pb.remotePresences)}`)

    // A client that subscribes later asks the others to resend (pr): it sees a's cursor.
    const docC = c.connection.get(name, 't')
    await subscribe(docC)
    const pc = c.connection.getDocPresence(name, 't')
    await callback(cb => pc.subscribe(cb))
    await waitFor(() => pc.remotePresences['cursor-a'] !== undefined, () => `c sees ${JSON.stringify(pc.remotePresences)}`)

    // b's own cursor, then null: withdrawn for the others.
    const localB = pb.create('cursor-b')
    await callback(cb => localB.submit({ index: 0, length: 0 }, cb))
    await waitFor(() => pa.remotePresences['cursor-b'] && pc.remotePresences['cursor-b'], 'a and c see b')
    await callback(cb => localB.submit(null, cb))
    await waitFor(() => !('cursor-b' in pa.remotePresences) && !('cursor-b' in pc.remotePresences), 'b withdrawn')

    // Unsubscribing withdraws what the connection sent on that channel, as ShareDB does.
    await callback(cb => localB.submit({ index: 1, length: 0 }, cb))
    await waitFor(() => pc.remotePresences['cursor-b'], 'c sees b again')
    await callback(cb => pb.unsubscribe(cb))
    await waitFor(() => !('cursor-b' in pc.remotePresences), () => `c still sees b: ${JSON.stringify(pc.remotePresences)}`)

    // a's socket drops without a close frame: its cursor is withdrawn for c.
    a.socket._socket.destroy()
    await waitFor(() => !('cursor-a' in pc.remotePresences), () => `c still sees a: ${JSON.stringify(pc.remotePresences)}`)
    for (const sc of [b, c]) assert.deepEqual(sc.errors, [])
  } finally {
    for (const sc of [a, b, c]) sc.close()
  }
})

test('sharedb presence: a dropped client\'s cursor is withdrawn even when ops came after its last move (the withdrawal is at the current version)', async () => {
  const name = 'ot-presence-ghost'
  const [a, b] = [shareConnection(), shareConnection()]
  try {
    const [da, db] = [a, b].map(sc => sc.connection.get(name, 't'))
    for (const d of [da, db]) await subscribe(d)
    await submit(da, new Delta().insert('hello world'))
    await waitFor(() => db.version === da.version, 'b has a\'s op')
    const [pa, pb] = [a, b].map(sc => sc.connection.getDocPresence(name, 't'))
    await callback(cb => pa.subscribe(cb))
    await callback(cb => pb.subscribe(cb))
    await callback(cb => pa.create('cursor-a').submit({ index: 6, length: 0 }, cb))
    await waitFor(() => pb.remotePresences['cursor-a'], 'b sees a\'s cursor')
    // b types: a's cursor was last sent at an older version than b's text now has.
    await submit(db, new Delta().insert('>> '))
    await waitFor(() => pb.remotePresences['cursor-a']?.index === 9, 'b moved a\'s cursor')
    a.socket._socket.destroy()
    await waitFor(() => !('cursor-a' in pb.remotePresences), () => `b still shows a's cursor ${JSON.stringify(pb.remotePresences)}`)
    assert.deepEqual(b.errors, [])
  } finally {
    for (const sc of [a, b]) sc.close()
  }
})

test('sharedb presence: a stale cursor is moved through the ops since its version before anyone sees it (server-side transform)', async () => {
  const name = 'ot-presence-stale'
  const b = shareConnection()
  const raw = await rawSocket(server, '/api/ot')
  try {
    const db = b.connection.get(name, 't')
    await subscribe(db)
    await submit(db, new Delta().insert('>world'))
    const at = db.version
    const pb = b.connection.getDocPresence(name, 't')
    await callback(cb => pb.subscribe(cb))
    const relayed = []
    b.connection.on('receive', request => { if (request.data.a === 'p') relayed.push(structuredClone(request.data)) })
    // Someone edits before 'world'...
    await submit(db, new Delta().insert('hello, '))
    // ... and a client that has not seen it yet shows a selection of 'world' at the old version.
    raw.ws.send(JSON.stringify({ a: 'hs', protocol: 1, protocolMinor: 2 }))
    raw.ws.send(JSON.stringify({ a: 'p', ch: `${name}.t`, c: name, d: 't', v: at, t: richText.type.uri, id: 'stale', pv: 0, p: { index: 1, length: 5 } }))
    await waitFor(() => pb.remotePresences.stale, () => `b sees ${JSON.stringify(pb.remotePresences)}`)
    assert.deepEqual(pb.remotePresences.stale, { index: 8, length: 5 }, 'the selection still covers "world"')
    const [message] = relayed
    assert.equal(message.v, db.version, `relayed at the text's current version: ${JSON.stringify(message)}`)
    assert.deepEqual(message.p, { index: 8, length: 5 }, 'moved by the server, not by the client')
  } finally {
    raw.ws.close()
    b.close()
  }
})

test('sharedb presence: after a client reconnects with the same Connection, the others see its cursor again', async () => {
  const name = 'ot-presence-reconnect'
  const [a, b] = [shareConnection(), shareConnection()]
  try {
    const [da, db] = [a, b].map(sc => sc.connection.get(name, 't'))
    for (const d of [da, db]) await subscribe(d)
    const [pa, pb] = [a, b].map(sc => sc.connection.getDocPresence(name, 't'))
    await callback(cb => pa.subscribe(cb))
    await callback(cb => pb.subscribe(cb))
    await callback(cb => pa.create('cursor-a').submit({ index: 0, length: 0 }, cb))
    await waitFor(() => pb.remotePresences['cursor-a'], 'b sees a\'s cursor')
    let withdrawn = false
    pb.on('receive', (id, value) => { if (id === 'cursor-a' && value === null) withdrawn = true })
    a.socket._socket.destroy()
    // The old connection's withdrawal comes first (the server notices the drop), ...
    await waitFor(() => withdrawn, 'the old connection\'s cursor withdrawn')
    await reconnect(a)
    await waitFor(() => pa.subscribed, 'a resubscribed its presence')
    // ... then the reconnected client is asked to resend, and b sees the cursor again.
    await waitFor(() => pb.remotePresences['cursor-a'], () => `b lost a's cursor after a reconnected: ${JSON.stringify(pb.remotePresences)}`)
  } finally {
    for (const sc of [a, b]) sc.close()
  }
})

test('sharedb presence: a second handshake renames the connection in its channels, so its own presence is not sent back to it', async () => {
  const raw = await rawSocket(server, '/api/ot')
  const got = []
  raw.ws.on('message', data => got.push(JSON.parse(data.toString())))
  try {
    raw.ws.send(JSON.stringify({ a: 'hs', id: 'first' }))
    raw.ws.send(JSON.stringify({ a: 'ps', ch: 'rename.t', seq: 1 }))
    raw.ws.send(JSON.stringify({ a: 'hs', id: 'second' }))
    raw.ws.send(JSON.stringify({ a: 'p', ch: 'rename.t', id: 'x', pv: 0, p: { index: 0 } }))
    raw.ws.send(JSON.stringify({ a: 'pp' }))
    // The session handles frames in order and relays without a document here, so whatever the
    // presence caused is written before the pong.
    await waitFor(() => got.some(m => m.a === 'pp'), 'pong')
    assert.deepEqual(got.filter(m => m.a === 'p').map(m => m.src), ['second'], 'only the ack, once: ' + JSON.stringify(got))
  } finally {
    raw.ws.close()
  }
})

test('sharedb presence: a document deleted while a client showed a cursor on it stays deleted when the client leaves', async () => {
  const srv = await new Server().start()
  const a = shareConnection(srv)
  const listed = async name => (await rest('GET', '/api/docs', undefined, { srv })).body.documents.some(d => d.name === name)
  try {
    const name = 'presence-gone'
    const doc = a.connection.get(name, 't')
    await subscribe(doc)
    await submit(doc, new Delta().insert('hello'))
    const pa = a.connection.getDocPresence(name, 't')
    await callback(cb => pa.create('cursor-a').submit({ index: 1, length: 0 }, cb))
    assert.ok(await listed(name), 'listed before the delete')
    assert.equal((await rest('DELETE', `/api/docs/${name}`, undefined, { srv })).status, 200)
    // The client leaves; its withdrawal must not load (and so re-create) the document.
    a.close()
    await waitFor(async () => (await rest('GET', '/api/stats', undefined, { srv })).body.connections === 0, 'the session to end')
    assert.ok(!(await listed(name)), 'the deleted document is back after the client left')
  } finally {
    a.close()
    await srv.dispose()
  }
})

test('sharedb presence: at SIGTERM, clients holding cursors get the 1001 close and no error reply', async () => {
  const srv = await new Server().start()
  const scs = []
  const errorReplies = []
  const emitted = []
  try {
    for (let i = 0; i < 20; i++) {
      const sc = shareConnection(srv)
      scs.push(sc)
      sc.connection.on('receive', r => { if (r.data?.error) errorReplies.push(`client ${i}: ${JSON.stringify(r.data)}`) })
      for (const name of ['sigterm1', 'sigterm2', 'sigterm3']) {
        await subscribe(sc.connection.get(name, 't'))
        const presence = sc.connection.getDocPresence(name, 't')
        await callback(cb => presence.subscribe(cb))
        const local = presence.create(`c${i}`)
        local.on('error', e => emitted.push(`client ${i}: ${e.code} ${e.message}`))
        await callback(cb => local.submit({ index: 0, length: 0 }, cb))
      }
    }
    assert.equal(await srv.stop(), 0, srv.stderr.slice(-2000))
    await waitFor(() => scs.every(sc => sc.closes.length > 0), 'every socket closed')
    assert.deepEqual({ errorReplies, emitted }, { errorReplies: [], emitted: [] })
    for (const sc of scs) assert.match(sc.closes[0], /^1001 /)
  } finally {
    for (const sc of scs) sc.close()
    await srv.dispose()
  }
})

test('sharedb presence refusals: no grant, no document, a mismatched channel, another type and too many ids or channels get error replies; the connection keeps working', async () => {
  const secret = 's3cret'
  const token = (sub, grant) => execFileSync(binaryPath(), ['token', '--jwt-secret', secret, '--sub', sub, '--doc', grant, '--ttl', '1h']).toString().trim()
  const srv = await new Server(['--jwt-secret', secret, '--ot-docs-per-connection-max', '2']).start()
  const reader = token('bob', 'pres*=read')
  const raw = await rawSocket(srv, `/api/ot?token=${reader}`)
  const replies = []
  raw.ws.on('message', data => replies.push(JSON.parse(data.toString())))
  const ask = async (message, match) => {
    const before = replies.length
    raw.ws.send(JSON.stringify(message))
    await waitFor(() => replies.slice(before).find(match), () => `a reply to ${JSON.stringify(message)}; got ${JSON.stringify(replies.slice(before))}`)
    return replies.slice(before).find(match)
  }
  try {
    await ask({ a: 'hs', protocol: 1, protocolMinor: 2 }, m => m.a === 'hs')
    const refused = async (message, code, words) => {
      const reply = await ask(message, m => m.error)
      assert.equal(reply.error.code, code, JSON.stringify(reply))
      assert.match(reply.error.message, words)
    }
    await refused({ a: 'ps', ch: 'secret.t', seq: 1 }, 'ERR_SNAPSHOT_READS_REJECTED', /no access/)
    // 'other.pres.t' could name the document 'other' or 'other.pres': neither is granted.
    await refused({ a: 'p', ch: 'other.pres.t', id: 'x', pv: 0, p: { index: 0 } }, 'ERR_SNAPSHOT_READS_REJECTED', /no access/)
    await refused({ a: 'ps', ch: 'lobby', seq: 2 }, 'ERR_MESSAGE_BADLY_FORMED', /names no document/)
    await refused({ a: 'p', ch: 'pres1.t', c: 'pres1', d: 'u', id: 'x', pv: 0, p: { index: 0 } }, 'ERR_MESSAGE_BADLY_FORMED', /not 'c\.d'/)
    await refused({ a: 'p', ch: 'pres1.t', c: 'pres1', d: 't', t: 'http://sharejs.org/types/JSONv0', id: 'x', pv: 0, p: {} }, 'ERR_TYPE_DOES_NOT_SUPPORT_PRESENCE', /JSONv0/)
    await refused({ a: 'p', ch: 'pres1.t', pv: 0, p: {} }, 'ERR_MESSAGE_BADLY_FORMED', /invalid presence id/)

    // A reader may share presence (SPEC §4: read grants share awareness); 16 ids per channel.
    for (let i = 0; i < 16; i++) {
      const ack = await ask({ a: 'p', ch: 'pres1.t', c: 'pres1', d: 't', id: `id${i}`, pv: 0, p: { index: i } }, m => m.a === 'p' && m.id === `id${i}`)
      assert.equal(ack.error, undefined, JSON.stringify(ack))
      assert.ok(ack.src, 'the echo names the sender')
    }
    await refused({ a: 'p', ch: 'pres1.t', id: 'id16', pv: 0, p: { index: 0 } }, 'ERR_MESSAGE_BADLY_FORMED', /too many presence ids/)
    // Withdrawing one makes room again.
    await ask({ a: 'p', ch: 'pres1.t', id: 'id0', pv: 1, p: null }, m => m.a === 'p' && m.id === 'id0')
    const ok = await ask({ a: 'p', ch: 'pres1.t', id: 'id16', pv: 0, p: { index: 0 } }, m => m.a === 'p' && m.id === 'id16')
    assert.equal(ok.error, undefined)

    // A presence value is bounded like an awareness state (64 KiB by default).
    await refused({ a: 'p', ch: 'pres1.t', id: 'big', pv: 0, p: { index: 0, name: 'x'.repeat(70000) } }, 'ERR_MESSAGE_BADLY_FORMED', /presence value too big/)

    // Two channels per connection here (--ot-docs-per-connection-max 2): pres1.t is one.
    // Subscribing to a channel it already sent presence on opens nothing new.
    assert.deepEqual(await ask({ a: 'ps', ch: 'pres1.t', seq: 2 }, m => m.a === 'ps'), { a: 'ps', ch: 'pres1.t', seq: 2 })
    assert.deepEqual(await ask({ a: 'ps', ch: 'pres2.t', seq: 3 }, m => m.a === 'ps'), { a: 'ps', ch: 'pres2.t', seq: 3 })
    await refused({ a: 'ps', ch: 'pres3.t', seq: 4 }, 'ERR_MESSAGE_BADLY_FORMED', /too many presence channels/)
    assert.deepEqual(await ask({ a: 'pu', ch: 'pres2.t', seq: 5 }, m => m.a === 'pu'), { a: 'pu', ch: 'pres2.t', seq: 5 })
    assert.deepEqual(await ask({ a: 'ps', ch: 'pres3.t', seq: 6 }, m => m.a === 'ps'), { a: 'ps', ch: 'pres3.t', seq: 6 })

    // After every refusal the connection still works.
    assert.deepEqual(await ask({ a: 'pp' }, m => m.a === 'pp'), { a: 'pp' })
    assert.equal(raw.ws.readyState, WebSocket.OPEN)

    // A grant on exactly 'a': 'a.t' is its presence, but 'a.b.t' could also be the presence
    // of the document 'a.b', which is not granted, so it is refused.
    const exact = await rawSocket(srv, `/api/ot?token=${token('carol', 'a=read')}`)
    const got = []
    exact.ws.on('message', data => got.push(JSON.parse(data.toString())))
    exact.ws.send(JSON.stringify({ a: 'ps', ch: 'a.b.t', seq: 1 }))
    exact.ws.send(JSON.stringify({ a: 'ps', ch: 'a.t', seq: 2 }))
    await waitFor(() => got.length === 2, () => `two replies; got ${JSON.stringify(got)}`)
    assert.equal(got[0].error?.code, 'ERR_SNAPSHOT_READS_REJECTED', JSON.stringify(got[0]))
    assert.deepEqual(got[1], { a: 'ps', ch: 'a.t', seq: 2 })
    exact.ws.close()
  } finally {
    raw.ws.close()
    await srv.dispose()
  }
})
