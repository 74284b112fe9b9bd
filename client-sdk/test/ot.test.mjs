// OtClient (stock sharedb client + rich-text) against the real server's ShareDB endpoint,
// editing the same root Y.Text as a YserveProvider.
import { test, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { Server, Clients, waitFor, within, signToken, WebSocket, throwingOnceWebSocket, captureUnhandledRejections } from './helpers.mjs'
import { OtClient, ApiClient } from '../dist/index.js'

let server
before(async () => { server = await new Server().start() })
after(async () => { await server?.dispose() })

/** The text as a list of {insert, attributes?} with empty attributes dropped, for comparing. */
const norm = ops => ops.map(o => o.attributes && Object.keys(o.attributes).length ? { insert: o.insert, attributes: o.attributes } : { insert: o.insert })

test('an OT client and a Yjs provider edit the same text and converge', async () => {
  const clients = new Clients()
  const ot = new OtClient(server.url, { WebSocket })
  try {
    const y = clients.add(server, 'ot-mixed')
    await y.provider.whenSynced()
    const text = await ot.openText('ot-mixed', 't')
    assert.equal(text.value, '')
    assert.ok(text.version >= 1, `every text exists at version >= 1 (got ${text.version})`)
    assert.equal(ot.state, 'connected')

    const remote = []
    text.on('op', (ops, meta) => { if (!meta.local) remote.push(ops) })
    y.text.insert(0, 'hello')
    await waitFor(() => text.value === 'hello', () => `the OT client to see the Yjs edit (value ${JSON.stringify(text.value)})`)
    assert.ok(remote.length >= 1)

    const local = []
    text.on('op', (ops, meta) => { if (meta.local) local.push(ops) })
    const v = text.version
    await text.insert(5, ' world', { bold: true })
    assert.equal(text.version, v + 1)
    assert.deepEqual(local, [[{ retain: 5 }, { insert: ' world', attributes: { bold: true } }]])
    await waitFor(() => y.text.toString() === 'hello world', 'Yjs to see the OT insert')
    assert.deepEqual(y.text.toDelta(), [{ insert: 'hello' }, { insert: ' world', attributes: { bold: true } }])

    // The other helpers: delete, replace (insert then delete), format / retain.
    await text.delete(0, 1)
    await text.replace(0, 4, 'HELL')
    await text.format(0, 4, { italic: true })
    await text.retain(0, 2, { italic: null })
    assert.equal(text.value, 'HELL world')
    // Formatting changes no character: wait for the same delta, not the same string.
    const same = () => JSON.stringify(norm(y.text.toDelta())) === JSON.stringify(norm(text.contents))
    await waitFor(same, () => `Yjs ${JSON.stringify(y.text.toDelta())} vs OT ${JSON.stringify(text.contents)}`)
    assert.deepEqual(norm(text.contents), [{ insert: 'HE' }, { insert: 'LL', attributes: { italic: true } }, { insert: ' world', attributes: { bold: true } }])

    // Concurrent edits from both sides, several rounds, without waiting in between.
    const pending = []
    for (let i = 0; i < 10; i++) {
      y.text.insert(i % 2 === 0 ? 0 : y.text.length, `y${i}`)
      pending.push(text.insert(Math.min(3, text.value.length), `o${i}`))
      if (i % 3 === 0) pending.push(text.delete(0, 1))
    }
    await within(Promise.all(pending), 10000, 'every OT op acknowledged')
    const api = new ApiClient(server.http)
    await waitFor(async () => {
      const r = await api.text('ot-mixed', 't')
      return r.text === text.value && r.text === y.text.toString() && r.v === text.version && same()
    }, async () => `convergence: OT ${JSON.stringify(text.value)} v${text.version}, Yjs ${JSON.stringify(y.text.toString())}, REST ${JSON.stringify(await api.text('ot-mixed', 't'))}`)
    assert.deepEqual(norm(y.text.toDelta()), norm(text.contents))
    for (let i = 0; i < 10; i++) assert.ok(text.value.includes(`y${i}`), `y${i} survived: ${text.value}`)
  } finally {
    ot.close()
    clients.destroyAll()
  }
})

test('a refused op rejects with the ShareDB error code and the text recovers', async () => {
  const ot = new OtClient(server.url, { WebSocket })
  try {
    const text = await ot.openText('ot-errors', 't')
    await text.insert(0, 'abc')
    // Longer than the text: the rich-text type applies it locally, the server refuses it.
    const err = await text.submit([{ retain: 10 }, { insert: 'x' }]).then(() => null, e => e)
    assert.ok(err, 'the op was refused')
    assert.equal(err.code, 'ERR_OT_OP_NOT_APPLIED')
    await waitFor(() => text.value === 'abc' && !text.doc.hasPending(), () => `the text to roll back (value ${JSON.stringify(text.value)})`)
    await text.insert(3, 'd')
    assert.equal((await new ApiClient(server.http).text('ot-errors', 't')).text, 'abcd')
  } finally {
    ot.close()
  }
})

test('OT cursors: one client shows a selection, the other sees it move with the text and vanish when the first closes the text', async () => {
  const [a, b] = [new OtClient(server.url, { WebSocket }), new OtClient(server.url, { WebSocket })]
  try {
    assert.equal(a.supportsPresence, true)
    const [ta, tb] = await Promise.all([a.openText('ot-presence', 't'), b.openText('ot-presence', 't')])
    const seen = []
    ta.on('cursor', (id, range) => seen.push([id, range]))
    await ta.watchCursors()
    await tb.insert(0, 'hello world')
    await waitFor(() => ta.value === 'hello world', () => `a sees ${JSON.stringify(ta.value)}`)
    await tb.setCursor({ index: 6, length: 5 })
    await waitFor(() => Object.values(ta.cursors).some(r => r.index === 6 && r.length === 5), () => `a sees cursors ${JSON.stringify(ta.cursors)}`)
    const [id] = Object.keys(ta.cursors)
    // a's own edit before the selection moves it (the client transforms relayed presence).
    await ta.insert(0, '>> ')
    await waitFor(() => ta.cursors[id]?.index === 9, () => `a sees cursors ${JSON.stringify(ta.cursors)}`)
    await tb.close()
    await waitFor(() => !(id in ta.cursors), () => `a still sees ${JSON.stringify(ta.cursors)}`)
    assert.deepEqual(seen.at(-1), [id, null], 'the last event withdraws the cursor')
  } finally {
    a.close()
    b.close()
  }
})

test('the OT client reconnects after a server restart and resends the op submitted while it was down', async () => {
  const srv = await new Server().start()
  const clients = new Clients()
  const ot = new OtClient(srv.url, { WebSocket, maxBackoffTime: 300 })
  const states = []
  ot.on('state', s => states.push(s))
  try {
    const text = await ot.openText('ot-restart', 't')
    await text.insert(0, 'before')
    await srv.stop()
    await waitFor(() => ot.state === 'disconnected', () => `the client to notice (state ${ot.state})`)
    const acked = text.insert(6, ' and after')
    assert.equal(text.value, 'before and after', 'applied locally at once')
    await srv.start()
    await within(acked, 15000, 'the op acknowledged after the restart')
    assert.equal(ot.state, 'connected')
    assert.ok(states.includes('disconnected') && states.includes('connected'), `states: ${states}`)
    const y = clients.add(srv, 'ot-restart')
    await y.provider.whenSynced()
    assert.equal(y.text.toString(), 'before and after')
    // Edits keep flowing both ways on the new connection.
    y.text.insert(0, '> ')
    await waitFor(() => text.value === '> before and after', 'the OT client to receive after the restart')
  } finally {
    ot.close()
    clients.destroyAll()
    await srv.dispose()
  }
})

test('the OT client calls its token function per connection and reconnects after 4401', async () => {
  const secret = 'sdk-ot-secret'
  const auth = await new Server(['--jwt-secret', secret]).start()
  const now = () => Math.floor(Date.now() / 1000)
  const calls = []
  const token = async () => {
    calls.push(Date.now())
    return signToken(secret, { sub: 'ann', exp: calls.length === 1 ? now() - 3 : now() + 3600, docs: { 'ot/*': 'write' } })
  }
  const ot = new OtClient(auth.url, { WebSocket, token, maxBackoffTime: 300 })
  try {
    const text = await ot.openText('ot/auth', 't')
    await text.insert(0, 'one')
    await waitFor(() => calls.length >= 2 && ot.state === 'connected' && !text.doc.hasPending(), () => `a reconnect with a new token (calls ${calls.length}, state ${ot.state})`, 15000)
    await within(text.insert(3, ' two'), 10000, 'an op on the refreshed connection')
    assert.equal(calls.length, 2)
    const api = new ApiClient(auth.http, { token: signToken(secret, { sub: 'ann', exp: now() + 60, docs: { 'ot/*': 'read' } }) })
    assert.equal((await api.text('ot/auth', 't')).text, 'one two')
  } finally {
    ot.close()
    await auth.dispose()
  }
})

test('a WebSocket constructor that throws counts as a failed attempt: reported and retried', async () => {
  const unhandled = captureUnhandledRejections()
  let ot
  try {
    const { FlakyWebSocket, calls } = throwingOnceWebSocket()
    ot = new OtClient(server.url, { WebSocket: FlakyWebSocket, maxBackoffTime: 200 })
    const errors = []
    ot.on('connection-error', e => errors.push(e))
    await waitFor(() => ot.state === 'connected',
      () => `connected after the failed attempt (state ${ot.state}, constructor calls ${calls()}, unhandled rejections ${JSON.stringify(unhandled.list)})`, 5000)
    assert.equal(calls(), 2)
    assert.equal(errors.length, 1)
    assert.match(errors[0].message, /SecurityError/)
    assert.deepEqual(unhandled.list, [])
    const text = await ot.openText('ot-flaky-ctor', 't')
    await within(text.insert(0, 'after a failed attempt'), 5000, 'an op')
  } finally {
    unhandled.restore()
    ot?.close()
  }
})

test('names with dot segments need no care over OT: they travel inside JSON messages', async () => {
  const ot = new OtClient(server.url, { WebSocket })
  const clients = new Clients()
  try {
    const dotted = await ot.openText('ot-dots/..', '..')
    await dotted.insert(0, 'in ot-dots/..')
    const whole = await ot.openText('..', '.')
    await whole.insert(0, 'in ..')
    // The same texts through Yjs (the provider encodes the dot segment) and REST.
    const a = clients.add(server, 'ot-dots/..')
    await a.provider.whenSynced()
    assert.equal(a.doc.getText('..').toString(), 'in ot-dots/..')
    const names = (await new ApiClient(server.http).docs()).map(d => d.name)
    assert.ok(names.includes('..') && names.includes('ot-dots/..') && !names.includes('ot-dots'), JSON.stringify(names))
  } finally {
    clients.destroyAll()
    ot.close()
  }
})

test('disconnect() holds edits locally without reconnecting; connect() sends them once', async () => {
  const ot = new OtClient(server.url, { WebSocket, maxBackoffTime: 100 })
  const api = new ApiClient(server.http)
  try {
    const text = await ot.openText('ot-pause', 't')
    await text.insert(0, 'online')
    ot.disconnect()
    await waitFor(() => ot.state === 'disconnected', () => `disconnected (state ${ot.state})`)
    const acked = text.insert(6, ' + while disconnected')
    assert.equal(text.value, 'online + while disconnected', 'applied locally at once')
    // Well past the backoff: a paused client does not reconnect by itself.
    await new Promise(resolve => setTimeout(resolve, 500))
    assert.equal(ot.state, 'disconnected')
    assert.equal((await api.text('ot-pause', 't')).text, 'online', 'the server has not seen it')
    ot.connect()
    await within(acked, 15000, 'the op acknowledged after connect()')
    assert.equal(ot.state, 'connected')
    const got = await api.text('ot-pause', 't')
    assert.equal(got.text, 'online + while disconnected')
    assert.equal(got.v, text.version, 'one version per op: nothing applied twice')
  } finally {
    ot.close()
  }
})

test('closing the OT client stops it for good', async () => {
  const srv = await new Server().start()
  try {
    const ot = new OtClient(srv.url, { WebSocket })
    const text = await ot.openText('ot-close', 't')
    await text.insert(0, 'x')
    const api = new ApiClient(srv.http)
    assert.equal((await api.stats()).connections, 1)
    ot.close()
    assert.equal(ot.state, 'closed')
    await waitFor(async () => (await api.stats()).connections === 0, 'the server to see the connection end')
  } finally {
    await srv.dispose()
  }
})
