// YserveProvider against the real server: sync, reconnection after a restart, document names
// that need encoding (dot segments too), the unsynced count, tokens (refresh after 4401), and
// failed connection attempts (a failing token function, a throwing WebSocket constructor).
import { test, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { Server, Clients, waitFor, within, signToken, Y, WebSocket, throwingOnceWebSocket, captureUnhandledRejections } from './helpers.mjs'
import { YserveProvider, ApiClient, InvalidNameError, encodeDocPath } from '../dist/index.js'

let server
before(async () => { server = await new Server().start() })
after(async () => { await server?.dispose() })

test('two providers sync both ways and reconnect by themselves after a server restart', async () => {
  const clients = new Clients()
  try {
    const a = clients.add(server, 'restart-doc', { maxBackoffTime: 300 })
    const b = clients.add(server, 'restart-doc', { maxBackoffTime: 300 })
    await within(Promise.all([a.provider.whenSynced(), b.provider.whenSynced()]), 10000, 'both synced')
    a.text.insert(0, 'hello')
    await waitFor(() => b.text.toString() === 'hello', () => `b to see a's edit (b: ${JSON.stringify(b.text.toString())})`)
    b.text.insert(5, ' world')
    await waitFor(() => a.text.toString() === 'hello world', 'a to see b\'s edit')

    const statuses = []
    a.provider.on('status', e => statuses.push(e.status))
    await server.restart()
    // Same port: the providers find the new process on their own, and what was committed
    // before the restart is still there.
    await waitFor(() => a.provider.synced && b.provider.synced && a.provider.status === 'connected',
      () => `providers to resync after the restart (a: ${a.provider.status}, b: ${b.provider.status})`, 20000)
    assert.ok(statuses.includes('disconnected') && statuses.at(-1) === 'connected', `status events: ${statuses}`)
    a.text.insert(0, '>> ')
    await waitFor(() => b.text.toString() === '>> hello world', () => `b to see the edit after the restart: ${b.text.toString()}`)
    const fresh = clients.add(server, 'restart-doc')
    await fresh.provider.whenSynced()
    assert.equal(fresh.text.toString(), '>> hello world')
  } finally {
    clients.destroyAll()
  }
})

test('a document name with slashes, reserved URL characters and non-ASCII reaches the server intact', async () => {
  const name = 'team/notes/日記 ü?a=1#x%20/ok'
  const clients = new Clients()
  try {
    const a = clients.add(server, name)
    const b = clients.add(server, name)
    await Promise.all([a.provider.whenSynced(), b.provider.whenSynced()])
    assert.equal(a.provider.docName, name)
    a.text.insert(0, 'über')
    await waitFor(() => b.text.toString() === 'über', 'b to see the edit')
    await a.provider.whenConfirmed()
    const api = new ApiClient(server.http)
    const names = (await api.docs()).map(d => d.name)
    assert.ok(names.includes(name), `server documents: ${JSON.stringify(names)}`)
    assert.deepEqual(await api.json(name), { t: 'über' })
    // A name that differs only in the encoded part is another document.
    const other = clients.add(server, 'team/notes/日記 ü')
    await other.provider.whenSynced()
    assert.equal(other.text.toString(), '')
    // `/api/…` paths are the server's own; a document named `api/…` is still reachable.
    const apiNamed = clients.add(server, 'api/events')
    await within(apiNamed.provider.whenSynced(), 5000, 'a document named api/events to sync')
    apiNamed.text.insert(0, 'not an endpoint')
    await apiNamed.provider.whenConfirmed()
    assert.deepEqual(await api.json('api/events'), { t: 'not an endpoint' })
  } finally {
    clients.destroyAll()
  }
})

test('a document name with a "." or ".." segment reaches the server intact; a name of "." or ".." is refused', async () => {
  // URL parsers resolve dot segments (`dots/../elsewhere` would be sent as `elsewhere`), so
  // the `/` next to one is sent as %2F; the server decodes the whole path back.
  assert.equal(encodeDocPath('dots/../elsewhere'), 'dots%2F..%2Felsewhere')
  assert.equal(encodeDocPath('a/b/./c/d'), 'a/b%2F.%2Fc/d')
  assert.equal(encodeDocPath('api/../x'), 'api%2F..%2Fx')
  assert.equal(encodeDocPath('api/x/..'), '%61pi/x%2F..')
  const clients = new Clients()
  const api = new ApiClient(server.http)
  try {
    const names = ['dots/../elsewhere', 'dots/./here', 'dots/..', '../dots', 'api/..']
    for (const name of names) {
      const a = clients.add(server, name)
      await within(a.provider.whenSynced(), 5000, `synced ${name}`)
      a.text.insert(0, 'written to ' + name)
      await within(a.provider.whenConfirmed(), 5000, `confirmed ${name}`)
    }
    const stored = (await api.docs()).map(d => d.name)
    for (const name of names) {
      assert.ok(stored.includes(name), `${name} among the server's documents: ${JSON.stringify(stored)}`)
      assert.deepEqual(await api.json(name), { t: 'written to ' + name })
    }
    assert.ok(!stored.includes('elsewhere') && !stored.includes('dots/here') && !stored.includes('dots'), JSON.stringify(stored))
    // No URL carries a whole name of "." or "..": refused before anything is sent.
    for (const name of ['.', '..']) {
      assert.throws(() => new YserveProvider(server.url, name, new Y.Doc(), { WebSocketPolyfill: WebSocket, connect: false }),
        e => e instanceof InvalidNameError && e.name === 'InvalidNameError' && e.value === name)
      assert.throws(() => encodeDocPath(name), InvalidNameError)
    }
  } finally {
    clients.destroyAll()
  }
})

test('a transaction that creates and removes a nested type is confirmed (unsynced reaches 0)', async () => {
  const clients = new Clients()
  try {
    const a = clients.add(server, 'gc-nested')
    await a.provider.whenSynced()
    const map = a.doc.getMap('m')
    a.doc.transact(() => {
      const t = new Y.Text()
      map.set('k', t)
      t.insert(0, 'abc')
      map.delete('k')
    })
    map.set('other', 1)
    await within(a.provider.whenConfirmed(), 5000, `unsynced to reach 0 (it is ${a.provider.unsyncedChanges})`)
  } finally {
    clients.destroyAll()
  }
})

test('the unsynced count rises with local edits and returns to 0 once the server has committed them', async () => {
  const clients = new Clients()
  const api = new ApiClient(server.http)
  try {
    const a = clients.add(server, 'unsynced-doc')
    await a.provider.whenSynced()
    assert.equal(a.provider.unsyncedChanges, 0)
    const counts = []
    a.provider.on('unsynced', n => counts.push(n))
    a.text.insert(0, 'abc')
    a.text.insert(3, 'def')
    // Synchronous: the count is known before anything reached the server.
    assert.equal(a.provider.unsyncedChanges, 2)
    await within(a.provider.whenConfirmed(), 10000, 'unsynced back to 0')
    assert.deepEqual(counts.slice(0, 2), [1, 2])
    assert.equal(counts.at(-1), 0)
    // 0 means durable: a REST read (served from the server's document) already has it.
    assert.equal((await api.text('unsynced-doc', 't')).text, 'abcdef')

    // Offline: inserts, a delete of the client's own text, a delete of text the server has,
    // and an insert-and-delete in one transaction. None is confirmed while disconnected.
    a.provider.disconnect()
    await waitFor(() => a.provider.status === 'disconnected', 'a disconnected')
    a.text.insert(6, 'XYZ')
    a.text.delete(7, 1) // the offline 'Y'
    a.text.delete(0, 1) // the committed 'a'
    a.doc.transact(() => { a.text.insert(0, '123'); a.text.delete(1, 1) })
    assert.equal(a.text.toString(), '13bcdefXZ')
    assert.equal(a.provider.unsyncedChanges, 4)
    a.provider.connect()
    await within(a.provider.whenConfirmed(), 10000, `offline edits confirmed (count ${a.provider.unsyncedChanges})`)
    assert.equal((await api.text('unsynced-doc', 't')).text, '13bcdefXZ')
  } finally {
    clients.destroyAll()
  }
})

test('a delete of text another client deleted concurrently is confirmed by that client\'s relayed delete', async () => {
  const clients = new Clients()
  try {
    const a = clients.add(server, 'concurrent-delete')
    const b = clients.add(server, 'concurrent-delete')
    await Promise.all([a.provider.whenSynced(), b.provider.whenSynced()])
    a.text.insert(0, 'abcdef')
    await waitFor(() => b.text.toString() === 'abcdef', 'b has the text')
    await a.provider.whenConfirmed()
    a.provider.disconnect()
    b.text.delete(1, 3)
    await b.provider.whenConfirmed()
    a.text.delete(2, 3) // overlaps b's delete; only 'e' is new to the server
    assert.equal(a.provider.unsyncedChanges, 1)
    a.provider.connect()
    await within(a.provider.whenConfirmed(), 10000, 'the overlapping delete confirmed')
    await waitFor(() => b.text.toString() === 'af' && a.text.toString() === 'af', 'both at "af"')
  } finally {
    clients.destroyAll()
  }
})

test('content the document had before the provider existed counts as unsynced until the server has it', async () => {
  const clients = new Clients()
  try {
    const doc = new Y.Doc()
    doc.getText('t').insert(0, 'written before connecting')
    const a = clients.add(server, 'preexisting', { doc, connect: false })
    assert.equal(a.provider.unsyncedChanges, 1)
    a.provider.connect()
    await within(a.provider.whenConfirmed(), 10000, 'pre-existing content confirmed')
    const b = clients.add(server, 'preexisting')
    await b.provider.whenSynced()
    assert.equal(b.text.toString(), 'written before connecting')
  } finally {
    clients.destroyAll()
  }
})

test('the token function is called for every connection and a 4401 close is followed by a fresh token', async () => {
  const secret = 'sdk-test-secret'
  const auth = await new Server(['--jwt-secret', secret]).start()
  const clients = new Clients()
  try {
    const docs = { 'auth/*': 'write' }
    const now = () => Math.floor(Date.now() / 1000)
    const calls = []
    // The first token expires in about 2 s (the server allows 5 s of leeway past `exp`);
    // later ones last an hour. Async, as a real token endpoint would be.
    const token = async () => {
      await new Promise(resolve => setTimeout(resolve, 5))
      calls.push(Date.now())
      return signToken(secret, { sub: 'ann', exp: calls.length === 1 ? now() - 3 : now() + 3600, docs })
    }
    const a = clients.add(auth, 'auth/doc', { token, maxBackoffTime: 300 })
    const b = clients.add(auth, 'auth/doc', { token: signToken(secret, { sub: 'bob', exp: now() + 3600, docs }) })
    const closes = []
    a.provider.on('connection-close', e => closes.push(e?.code))
    await Promise.all([a.provider.whenSynced(), b.provider.whenSynced()])
    assert.equal(calls.length, 1)
    a.text.insert(0, 'before expiry')
    await waitFor(() => b.text.toString() === 'before expiry', 'b to see the first edit')

    await waitFor(() => closes.includes(4401), () => `the server to close the expired connection (closes: ${closes})`, 15000)
    await waitFor(() => a.provider.synced && a.provider.status === 'connected', 'a to reconnect with a fresh token', 10000)
    assert.equal(calls.length, 2, 'one call per connection')
    a.text.insert(0, 'after refresh: ')
    await waitFor(() => b.text.toString() === 'after refresh: before expiry', () => `b to see the edit made after the refresh: ${b.text.toString()}`)
    b.text.insert(b.text.length, '!')
    await waitFor(() => a.text.toString() === 'after refresh: before expiry!', 'a to receive again')
    await within(a.provider.whenConfirmed(), 10000, 'a\'s edits confirmed')
  } finally {
    clients.destroyAll()
    await auth.dispose()
  }
})

test('with a fixed token, a 4401 close stops reconnecting (a new token cannot be had)', async () => {
  const secret = 'sdk-test-secret'
  const auth = await new Server(['--jwt-secret', secret]).start()
  const clients = new Clients()
  try {
    const token = signToken(secret, { sub: 'ann', exp: Math.floor(Date.now() / 1000) - 3, docs: { '*': 'write' } })
    const a = clients.add(auth, 'fixed', { token })
    const closed = new Promise(resolve => a.provider.on('closed', resolve))
    await a.provider.whenSynced()
    const event = await within(closed, 15000, 'the closed event')
    assert.equal(event.code, 4401)
    assert.equal(a.provider.shouldConnect, false)
  } finally {
    clients.destroyAll()
    await auth.dispose()
  }
})

test('a read-only grant\'s edits stay unsynced: the server drops them and never confirms them', async () => {
  const secret = 'sdk-test-secret'
  const auth = await new Server(['--jwt-secret', secret]).start()
  const clients = new Clients()
  try {
    const exp = Math.floor(Date.now() / 1000) + 3600
    const reader = clients.add(auth, 'ro', { token: signToken(secret, { sub: 'rita', exp, docs: { ro: 'read' } }) })
    const writer = clients.add(auth, 'ro', { token: signToken(secret, { sub: 'will', exp, docs: { ro: 'write' } }) })
    await Promise.all([reader.provider.whenSynced(), writer.provider.whenSynced()])
    writer.text.insert(0, 'abc')
    await waitFor(() => reader.text.toString() === 'abc', 'the reader to have the writer\'s text')
    reader.text.insert(0, 'not allowed')
    reader.text.delete(reader.text.length - 1, 1) // a delete only: no new clocks
    assert.equal(reader.provider.unsyncedChanges, 2)
    await waitFor(() => auth.stderr.includes('dropping updates from a read-only connection'), 'the server to drop the update')
    // A later relay reaches the reader: had the server accepted the edit, it would be confirmed by now.
    writer.text.insert(0, 'W!')
    await waitFor(() => reader.text.toString().includes('W!'), 'the writer\'s edit to reach the reader')
    await writer.provider.whenConfirmed()
    assert.equal(reader.provider.unsyncedChanges, 2)
    assert.equal(writer.text.toString(), 'W!abc')
  } finally {
    clients.destroyAll()
    await auth.dispose()
  }
})

test('a token function that fails is retried, and reported as a connection error', async () => {
  const clients = new Clients()
  try {
    let calls = 0
    const errors = []
    const token = async () => {
      calls++
      if (calls < 3) throw new Error('token endpoint down')
      return 'ignored-in-anonymous-mode'
    }
    const a = clients.add(server, 'token-failure', { token, maxBackoffTime: 200, connect: false })
    a.provider.on('connection-error', e => errors.push(e))
    a.provider.connect()
    await within(a.provider.whenSynced(), 10000, 'synced after the token function recovered')
    assert.equal(calls, 3)
    assert.equal(errors.length, 2)
    assert.match(errors[0].message, /token endpoint down/)
  } finally {
    clients.destroyAll()
  }
})

test('a WebSocket constructor that throws counts as a failed attempt: reported as a connection error and retried', async () => {
  // E.g. a browser's SecurityError for ws:// from an https page, or `ws` refusing a URL. The
  // constructor runs once the token is known, inside a promise: a throw there must not be
  // lost as an unhandled rejection that leaves the provider connecting forever.
  const unhandled = captureUnhandledRejections()
  const clients = new Clients()
  try {
    const { FlakyWebSocket, calls } = throwingOnceWebSocket()
    const a = clients.add(server, 'flaky-ctor', { WebSocketPolyfill: FlakyWebSocket, maxBackoffTime: 200, connect: false })
    const errors = []
    a.provider.on('connection-error', e => errors.push(e))
    a.provider.connect()
    await within(a.provider.whenSynced(), 5000,
      `synced after the failed attempt (status ${a.provider.status}, constructor calls ${calls()}, unhandled rejections ${JSON.stringify(unhandled.list)})`)
    assert.equal(calls(), 2)
    assert.equal(errors.length, 1)
    assert.match(errors[0].message, /SecurityError/)
    assert.deepEqual(unhandled.list, [])
  } finally {
    unhandled.restore()
    clients.destroyAll()
  }
})

test('without a WebSocket implementation the provider refuses clearly; without IndexedDB offline is ignored', () => {
  const had = globalThis.WebSocket
  try {
    delete globalThis.WebSocket
    assert.throws(() => new YserveProvider(server.url, 'x', new Y.Doc(), { connect: false }), /no WebSocket implementation/)
  } finally {
    if (had !== undefined) globalThis.WebSocket = had
  }
  const doc = new Y.Doc()
  // An http:// server URL (one base URL for every client) becomes ws://; a trailing / goes.
  const p = new YserveProvider(server.http + '/', 'x', doc, { connect: false, WebSocketPolyfill: WebSocket, offline: true })
  assert.equal(p.persistence, null, 'offline is ignored where there is no IndexedDB')
  assert.equal(p.status, 'disconnected')
  assert.equal(p.url, `${server.url}/x`)
  p.destroy()
  doc.destroy()
})
