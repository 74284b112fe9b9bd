// ApiClient against the real server: every REST route, typed errors, names it refuses (dot
// segments), and the event streams (SSE over fetch), including resuming with Last-Event-ID.
import { test, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { Server, Clients, waitFor, within, signToken, Y } from './helpers.mjs'
import { ApiClient, ApiError, isApiError, InvalidNameError, Presence, parseSse } from '../dist/index.js'

let server
let api
before(async () => {
  server = await new Server().start()
  api = new ApiClient(server.http)
})
after(async () => { await server?.dispose() })

/** Reads `iterable` in the background into `events` until `controller` aborts. */
function collect (iterable) {
  const events = []
  const done = (async () => { for await (const e of iterable) events.push(e) })()
  return { events, done }
}

function updateOf (fn) {
  const doc = new Y.Doc()
  let update
  doc.on('update', u => { update = u })
  fn(doc)
  return { doc, update }
}

test('updates go in and out as binary Yjs, with time travel, JSON and history', async () => {
  const name = 'api/binary'
  const { doc, update: first } = updateOf(d => d.getText('t').insert(0, 'first'))
  assert.deepEqual(await api.postUpdate(name, first), { seq: 1, applied: true })
  assert.deepEqual(await api.postUpdate(name, first), { seq: null, applied: false }, 'nothing new the second time')
  let second
  doc.on('update', u => { second = u })
  doc.transact(() => {
    doc.getText('t').insert(5, ' second')
    doc.getMap('m').set('k', 42)
  })
  assert.equal((await api.postUpdate(name, second)).seq, 2)

  const copy = new Y.Doc()
  Y.applyUpdate(copy, await api.getUpdate(name))
  assert.equal(copy.getText('t').toString(), 'first second')
  const past = new Y.Doc()
  Y.applyUpdate(past, await api.getUpdate(name, { at: 1 }))
  assert.equal(past.getText('t').toString(), 'first')
  // A diff against a state vector holds just what the other side lacks.
  const diff = await api.getUpdate(name, { sv: Y.encodeStateVector(past) })
  Y.applyUpdate(past, diff)
  assert.equal(past.getText('t').toString(), 'first second')
  assert.ok(diff.length < (await api.getUpdate(name)).length)

  assert.deepEqual(await api.json(name), { t: 'first second', m: { k: 42 } })
  assert.deepEqual(await api.json(name, { at: 1 }), { t: 'first' })

  const history = await api.history(name)
  assert.deepEqual(history.entries.map(e => [e.seq, e.origin]), [[1, 'anonymous'], [2, 'anonymous']])
  assert.equal(history.next_after, null)
  const page = await api.history(name, { limit: 1 })
  assert.equal(page.entries.length, 1)
  assert.equal(page.next_after, 1)
  assert.deepEqual((await api.history(name, { after: page.next_after })).entries.map(e => e.seq), [2])

  const info = (await api.docs()).find(d => d.name === name)
  assert.equal(info.last_seq, 2)
  assert.equal(info.updates, 2)
  const stats = await api.stats()
  assert.equal(typeof stats.connections, 'number')
  assert.equal(await api.health(), true)

  assert.deepEqual(await api.deleteDoc(name), { deleted: name })
  assert.ok(!(await api.docs()).some(d => d.name === name))
})

test('the OT mirror: read a text, submit ops (with replace sugar), read the op log', async () => {
  const name = 'api/ot'
  const t0 = await api.text(name, 't')
  assert.equal(t0.text, '')
  const r1 = await api.submitOp(name, 't', { v: t0.v, src: 'sdk-test', seq: 1, op: [{ insert: 'hello world' }] })
  assert.equal(r1.v, t0.v)
  const r2 = await api.submitOp(name, 't', { v: r1.v + 1, src: 'sdk-test', seq: 2, op: [{ retain: 6 }, { replace: 5, insert: 'there' }] })
  // Resubmitting the same (src, seq) is acknowledged again but not applied twice.
  const again = await api.submitOp(name, 't', { v: r1.v + 1, src: 'sdk-test', seq: 2, op: [{ retain: 6 }, { replace: 5, insert: 'there' }] })
  assert.equal(again.v, r2.v)
  const t = await api.text(name, 't')
  assert.equal(t.text, 'hello there')
  assert.equal(t.v, r2.v + 1)
  const log = await api.opsSince(name, 't', t0.v)
  assert.deepEqual(log.ops.map(o => [o.v, o.src, o.seq]), [[t0.v, 'sdk-test', 1], [t0.v + 1, 'sdk-test', 2]])
  assert.equal(log.ops[0].op[0].insert, 'hello world')
})

test('errors are ApiErrors typed by the server\'s codes', async () => {
  const notFound = await api.getUpdate('api/none', { at: 99 }).catch(e => e)
  assert.ok(notFound instanceof ApiError)
  assert.equal(notFound.status, 404)
  assert.equal(notFound.code, 'NOT_FOUND')
  assert.match(notFound.message, /no stored state at seq 99/)
  assert.ok(isApiError(notFound, 'NOT_FOUND'))
  assert.ok(!isApiError(notFound, 'LOCKED'))

  const bad = await api.postUpdate('api/errors', new Uint8Array([1, 2, 3, 255])).catch(e => e)
  assert.equal(bad.status, 400)
  assert.equal(bad.code, 'BAD_REQUEST')

  const tooLong = await api.submitOp('api/errors', 't', { src: 'x', seq: 1, op: [{ retain: 5 }, { insert: 'x' }] }).catch(e => e)
  assert.equal(tooLong.status, 422)
  assert.equal(tooLong.code, 'ERR_OT_OP_NOT_APPLIED')

  const notLocked = await api.releaseLock('api/errors', 't').catch(e => e)
  assert.equal(notLocked.status, 404)
  assert.equal(notLocked.code, 'NOT_LOCKED')

  // 415: a fetch that sends the update as text (the `fetch` option is what it calls).
  const textFetch = (url, init) => fetch(url, { ...init, headers: { ...init.headers, 'content-type': 'text/plain' } })
  const unsupported = await new ApiClient(server.http, { fetch: textFetch }).postUpdate('api/errors', new Uint8Array([0, 0])).catch(e => e)
  assert.equal(unsupported.status, 415)
  assert.equal(unsupported.code, 'UNSUPPORTED_MEDIA_TYPE')
  assert.equal(unsupported.body.error.code, 'UNSUPPORTED_MEDIA_TYPE')

  // Not a yserve error body (a path outside /api/): still an ApiError, with the SDK's code.
  const foreign = await new ApiClient(server.http + '/elsewhere').stats().catch(e => e)
  assert.equal(foreign.status, 404)
  assert.equal(foreign.code, 'HTTP_ERROR')
})

test('an invalid name in any REST path is a 400 ERR_MESSAGE_BADLY_FORMED, as the README table says', async () => {
  // `parse_route` checks every name in the path (document, text, lock) before anything else.
  for (const call of [
    () => api.json('bad\u0001name'),
    () => api.history('bad\u0001name'),
    () => api.text('api/errors', 'bad\u0001name'),
    () => api.releaseLock('api/errors', 'bad\u0001name'),
    () => api.deleteDoc('bad\u0001name')
  ]) {
    const error = await call().catch(e => e)
    assert.ok(isApiError(error, 'ERR_MESSAGE_BADLY_FORMED'), `${call}: ${error?.status} ${error?.code}`)
    assert.equal(error.status, 400)
  }
})

test('a name of "." or ".." is refused with an InvalidNameError before any request (it would address another route)', async () => {
  const clients = new Clients()
  const requests = []
  const counting = new ApiClient(server.http, { fetch: (url, init) => { requests.push(`${init?.method} ${url}`); return fetch(url, init) } })
  try {
    const a = clients.add(server, 'precious')
    await a.provider.whenSynced()
    a.text.insert(0, 'keep me')
    await a.provider.whenConfirmed()
    clients.destroyAll()
    assert.ok((await api.docs()).some(d => d.name === 'precious'), 'the document exists before')
    // `DELETE /api/docs/precious/locks/..` would be sent as `DELETE /api/docs/precious/`.
    const refused = await counting.releaseLock('precious', '..').catch(e => e)
    assert.ok(refused instanceof InvalidNameError, `releaseLock('precious', '..') gave ${refused}`)
    assert.equal(refused.name, 'InvalidNameError')
    assert.equal(refused.value, '..')
    assert.match(refused.message, /lock key "\.\."/)
    assert.ok(!isApiError(refused))
    assert.ok((await api.docs()).some(d => d.name === 'precious'), 'the document is still there')
    assert.deepEqual(await api.json('precious'), { t: 'keep me' })

    // Every method that takes a name: a rejection (never a synchronous throw), nothing sent.
    for (const call of [
      c => c.text('precious', '.'), c => c.submitOp('precious', '..', { src: 'x', seq: 1, op: [] }),
      c => c.opsSince('precious', '.', 1), c => c.acquireLock('precious', '.'), c => c.releaseLock('precious', '.'),
      c => c.json('..'), c => c.getUpdate('.'), c => c.postUpdate('..', new Uint8Array([0, 0])), c => c.history('.'),
      c => c.presence('..'), c => c.locks('.'), c => c.deleteDoc('..'), c => c.deleteDoc('.')
    ]) {
      let promise
      assert.doesNotThrow(() => { promise = call(counting) }, `${call} throws synchronously`)
      await assert.rejects(promise, InvalidNameError, String(call))
    }
    const events = counting.events('..')[Symbol.asyncIterator]()
    await assert.rejects(events.next(), InvalidNameError)
    assert.deepEqual(requests, [])
    // A name that merely contains a dot segment is one encoded path segment: fine.
    assert.deepEqual(await counting.json('precious/..'), {})
    assert.equal((await counting.text('precious', './t')).text, '')
  } finally {
    clients.destroyAll()
  }
})

test('locks: acquire with a ttl, list, a conflict is a typed 409 with the holder, release; auth errors are typed', async () => {
  const secret = 'sdk-api-secret'
  const auth = await new Server(['--jwt-secret', secret]).start()
  try {
    const exp = Math.floor(Date.now() / 1000) + 3600
    let annCalls = 0
    const ann = new ApiClient(auth.http, { token: () => { annCalls++; return signToken(secret, { sub: 'ann', exp, docs: { 'locks/*': 'write' } }) } })
    const bob = new ApiClient(auth.http, { token: signToken(secret, { sub: 'bob', exp, docs: { 'locks/*': 'write' } }) })
    const reader = new ApiClient(auth.http, { token: signToken(secret, { sub: 'rita', exp, docs: { 'locks/*': 'read' } }) })
    const anonymous = new ApiClient(auth.http)

    const lock = await ann.acquireLock('locks/doc', 't', { ttl: '1m' })
    assert.equal(lock.key, 't')
    assert.equal(lock.holder, 'ann')
    const ms = lock.expires_at_ms - Date.now()
    assert.ok(ms > 50_000 && ms <= 60_000, `expires in ${ms} ms`)
    assert.ok(annCalls >= 1, 'the token function is called per request')
    assert.deepEqual((await bob.locks('locks/doc')).map(l => [l.key, l.holder]), [['t', 'ann']])

    const conflict = await bob.acquireLock('locks/doc', 't').catch(e => e)
    assert.equal(conflict.status, 409)
    assert.equal(conflict.code, 'LOCKED')
    assert.equal(conflict.holder, 'ann')
    assert.equal(conflict.body.holder, 'ann')
    const releaseByOther = await bob.releaseLock('locks/doc', 't').catch(e => e)
    assert.equal(releaseByOther.code, 'LOCKED')

    // The lock is enforced for another user's OT writes to that text: 423.
    const t = await bob.text('locks/doc', 't')
    const locked = await bob.submitOp('locks/doc', 't', { v: t.v, src: 'bob-1', seq: 1, op: [{ insert: 'x' }] }).catch(e => e)
    assert.equal(locked.status, 423)
    assert.equal(locked.code, 'ERR_OP_SUBMIT_REJECTED')

    const renewed = await ann.acquireLock('locks/doc', 't', { ttl: 120_000 })
    assert.ok(renewed.expires_at_ms > lock.expires_at_ms)
    const released = await ann.releaseLock('locks/doc', 't')
    assert.equal(released.holder, 'ann')
    assert.deepEqual(await ann.locks('locks/doc'), [])

    const unauthorized = await anonymous.docs().catch(e => e)
    assert.equal(unauthorized.status, 401)
    assert.equal(unauthorized.code, 'UNAUTHORIZED')
    const forbidden = await reader.acquireLock('locks/doc', 'x').catch(e => e)
    assert.equal(forbidden.status, 403)
    assert.equal(forbidden.code, 'FORBIDDEN')
    const noGrant = await reader.text('other', 't').catch(e => e)
    assert.equal(noGrant.code, 'ERR_SNAPSHOT_READS_REJECTED')
    // An event stream refused at the start throws from the iteration.
    await assert.rejects(async () => { for await (const e of anonymous.events('locks/doc')) assert.fail(`got ${e.type}`) },
      e => e instanceof ApiError && e.code === 'UNAUTHORIZED')
  } finally {
    await auth.dispose()
  }
})

test('document events: updates with text deltas, presence and locks, each with an id; resuming with lastEventId skips nothing', async () => {
  const name = 'api/events'
  const clients = new Clients()
  const first = new AbortController()
  try {
    let opened = 0
    const stream = collect(api.events(name, { signal: first.signal, onOpen: () => opened++ }))
    await waitFor(() => opened === 1, 'the stream to open')
    const a = clients.add(server, name)
    await a.provider.whenSynced()
    const presence = new Presence(a.provider, { user: { name: 'Ann', color: '#f00' } })
    a.text.insert(0, 'hi')
    await api.acquireLock(name, 't', { ttl: 60_000 })
    await api.releaseLock(name, 't')
    await waitFor(() => stream.events.some(e => e.type === 'lock' && e.data.action === 'released'),
      () => `the events (got ${JSON.stringify(stream.events.map(e => e.type))})`)
    const ev = stream.events
    const update = ev.find(e => e.type === 'update')
    assert.equal(update.data.origin, 'anonymous')
    assert.deepEqual(update.data.texts, { t: [{ insert: 'hi' }] })
    assert.match(update.id, new RegExp(`^${update.data.seq}\\.0$`))
    const annJoin = ev.find(e => e.type === 'presence' && e.data.client_id === a.doc.clientID && e.data.state?.user?.name === 'Ann')
    assert.ok(annJoin, `a presence event with Ann: ${JSON.stringify(ev.filter(e => e.type === 'presence'))}`)
    assert.deepEqual(ev.filter(e => e.type === 'lock').map(e => [e.data.key, e.data.holder, e.data.action]),
      [['t', 'anonymous', 'acquired'], ['t', 'anonymous', 'released']])
    assert.ok(ev.every(e => /^\d+\.\d+$/.test(e.id)), 'ids are SEQ.N')
    assert.equal(new Set(ev.map(e => e.id)).size, ev.length, 'ids are unique')

    // Stop listening, miss some changes, then resume after the last id seen.
    first.abort()
    await within(stream.done, 5000, 'the aborted iteration to end')
    const lastId = ev.at(-1).id
    a.text.insert(2, ' there')
    a.text.insert(0, '>')
    await a.provider.whenConfirmed()
    presence.destroy()
    const second = new AbortController()
    const resumed = collect(api.events(name, { lastEventId: lastId, signal: second.signal }))
    await waitFor(() => resumed.events.filter(e => e.type === 'update').length >= 2,
      () => `the missed updates (got ${JSON.stringify(resumed.events)})`)
    second.abort()
    await resumed.done
    const missed = resumed.events.filter(e => e.type === 'update')
    assert.deepEqual(missed.map(e => e.data.seq), [update.data.seq + 1, update.data.seq + 2])
    // From the server's ring (with text deltas) or, when it kept none, from its log (see
    // the lone-reader test below): either way no update is skipped.
    for (const e of missed) assert.ok(e.data.replayed === true || e.data.texts.t, JSON.stringify(e))
    assert.ok(!resumed.events.some(e => ev.some(old => old.id === e.id)), 'nothing seen before comes again')
  } finally {
    first.abort()
    clients.destroyAll()
  }
})

// The server keeps a document's recent events only while someone reads its stream (computing
// text deltas costs CPU on every update). A lone reader that drops and resumes later gets the
// updates of the gap replayed from the log, without deltas; lock and presence changes of the
// gap are not replayed, and the current state is at /locks and /presence (README, "Event
// streams"). This pins that documented behaviour, so a change to it is seen.
test('a lone reader that resumes after a gap gets the gap\'s updates from the log and the locks from /locks', async () => {
  const name = 'api/gap'
  const sseStreams = async () => Number((await (await fetch(server.http + '/metrics')).text()).match(/yserve_sse_streams (\d+)/)[1])
  const { doc, update } = updateOf(d => d.getText('t').insert(0, 'a'))
  let next
  doc.on('update', u => { next = u })
  const first = new AbortController()
  let opened = false
  const stream = collect(api.events(name, { signal: first.signal, onOpen: () => { opened = true } }))
  await waitFor(() => opened, 'the stream to open')
  await api.postUpdate(name, update)
  await waitFor(() => stream.events.length === 1, 'the first update event')
  const lastId = stream.events[0].id
  first.abort()
  await stream.done
  await waitFor(async () => (await sseStreams()) === 0, 'the server to see the reader go')
  doc.getText('t').insert(1, 'b')
  const posted = await api.postUpdate(name, next)
  await api.acquireLock(name, 't', { ttl: 60_000 })
  const second = new AbortController()
  const resumed = collect(api.events(name, { lastEventId: lastId, signal: second.signal }))
  try {
    await waitFor(() => resumed.events.some(e => e.type === 'update'), () => `the missed update (got ${JSON.stringify(resumed.events)})`)
    const missed = resumed.events.filter(e => e.type === 'update')
    assert.deepEqual(missed.map(e => [e.data.seq, e.data.replayed]), [[posted.seq, true]])
    const locks = await api.locks(name)
    assert.deepEqual(locks.map(l => l.key), ['t'], 'the lock taken in the gap is listed')
    // Live events follow the replay.
    await api.releaseLock(name, 't')
    await waitFor(() => resumed.events.some(e => e.type === 'lock' && e.data.action === 'released'), 'the live lock event')
  } finally {
    second.abort()
    await resumed.done
  }
})

test('a reader resuming from further back than the server keeps gets the updates replayed from the log', async () => {
  const name = 'api/replay'
  const { doc, update } = updateOf(d => d.getText('t').insert(0, 'a'))
  await api.postUpdate(name, update)
  let next
  doc.on('update', u => { next = u })
  doc.getText('t').insert(1, 'b')
  await api.postUpdate(name, next)
  const stop = new AbortController()
  const replay = collect(api.events(name, { lastEventId: '0.0', signal: stop.signal }))
  await waitFor(() => replay.events.length >= 2, () => `the replayed updates: ${JSON.stringify(replay.events)}`)
  stop.abort()
  await replay.done
  assert.deepEqual(replay.events.map(e => [e.type, e.id, e.data.seq, e.data.replayed]), [['update', '1.0', 1, true], ['update', '2.0', 2, true]])
})

test('the event stream resumes by itself after the server restarts', async () => {
  const srv = await new Server().start()
  const client = new ApiClient(srv.http)
  const stop = new AbortController()
  try {
    const name = 'api/resume'
    let opened = 0
    const stream = collect(client.events(name, { signal: stop.signal, maxBackoffTime: 300, onOpen: () => opened++ }))
    const { doc, update } = updateOf(d => d.getText('t').insert(0, 'one'))
    await waitFor(() => opened === 1, 'the stream to open')
    await client.postUpdate(name, update)
    await waitFor(() => stream.events.length === 1, 'the first update event')
    await srv.restart()
    let next
    doc.on('update', u => { next = u })
    doc.getText('t').insert(3, ' two')
    await client.postUpdate(name, next)
    // Either live after the reconnect or replayed from the log: the update arrives exactly once.
    await waitFor(() => stream.events.some(e => e.data.seq === 2), () => `the update after the restart: ${JSON.stringify(stream.events)}`, 15000)
    assert.deepEqual(stream.events.map(e => e.data.seq), [1, 2])
    assert.equal(opened, 2, 'one reconnection')
  } finally {
    stop.abort()
    await srv.dispose()
  }
})

test('server-wide events announce documents opening and users joining', async () => {
  const clients = new Clients()
  const stop = new AbortController()
  try {
    let opened = false
    const stream = collect(api.serverEvents({ signal: stop.signal, onOpen: () => { opened = true } }))
    await waitFor(() => opened, 'the stream to open')
    const a = clients.add(server, 'api/server-events')
    await a.provider.whenSynced()
    await waitFor(() => stream.events.some(e => e.type === 'user_joined' && e.data.doc === 'api/server-events'),
      () => `user_joined (got ${JSON.stringify(stream.events)})`)
    assert.ok(stream.events.some(e => e.type === 'document_opened' && e.data.doc === 'api/server-events'))
    assert.equal(stream.events.find(e => e.type === 'user_joined').data.user, 'anonymous')
  } finally {
    stop.abort()
    clients.destroyAll()
  }
})

test('the SSE parser handles CRLF, CR, split chunks, comments, multi-line data and persistent ids', async () => {
  const raw = '\uFEFF: heartbeat\r\nevent: update\r\nid: 1.0\r\ndata: {"a":\r\ndata: 1}\r\n\r\n' +
    'event: lock\rdata: {}\r\r' + ':comment only\n\n' + 'data: plain\n\n' + 'id: 2.0\nevent: x\n\n' + 'event: last\ndata: end\n\n'
  const bytes = new TextEncoder().encode(raw)
  const body = new ReadableStream({
    start (controller) {
      // One byte at a time: every line ending and multi-byte character is split somewhere.
      for (const b of bytes) controller.enqueue(new Uint8Array([b]))
      controller.close()
    }
  })
  const out = []
  for await (const m of parseSse(body)) out.push(m)
  assert.deepEqual(out, [
    { event: 'update', data: '{"a":\n1}', id: '1.0' },
    { event: 'lock', data: '{}', id: '1.0' },
    { event: 'message', data: 'plain', id: '1.0' },
    { event: 'last', data: 'end', id: '2.0' }
  ])
})

function streamOf (chunks) {
  const enc = new TextEncoder()
  return new ReadableStream({
    start (c) {
      for (const ch of chunks) c.enqueue(typeof ch === 'string' ? enc.encode(ch) : ch)
      c.close()
    }
  })
}

async function parsed (chunks) {
  const out = []
  for await (const m of parseSse(streamOf(chunks))) out.push(m)
  return out
}

test('the SSE parser: edge cases of the event stream format', async () => {
  const euro = new TextEncoder().encode('data: €\n\n') // € is 3 bytes
  assert.deepEqual(await parsed([euro.slice(0, 7), euro.slice(7)]), [{ event: 'message', data: '€' }])
  assert.deepEqual(await parsed(['data: a\r', '\ndata: b\r\n\r', '\n']), [{ event: 'message', data: 'a\nb' }])
  assert.deepEqual(await parsed(['data: a\rdata: b\r\r']), [{ event: 'message', data: 'a\nb' }])
  assert.deepEqual(await parsed([':hb\n\nid: 1.0\nevent: update\ndata: {}\n\ndata: x\n\n']),
    [{ event: 'update', data: '{}', id: '1.0' }, { event: 'message', data: 'x', id: '1.0' }])
  assert.deepEqual(await parsed(['data\n\n']), [{ event: 'message', data: '' }])
  assert.deepEqual(await parsed(['data: x\n']), []) // no blank line: not dispatched
  assert.deepEqual(await parsed(['id: a\0b\ndata: x\n\n']), [{ event: 'message', data: 'x' }])
  assert.deepEqual(await parsed(['retry: 10\ndata: x\n\n']), [{ event: 'message', data: 'x' }])
  assert.deepEqual(await parsed(['da', 'ta: x', 'y\n', '\n']), [{ event: 'message', data: 'xy' }])
})

test('the SSE parser strips exactly one leading BOM', async () => {
  assert.deepEqual(await parsed(['\uFEFFdata: x\n\n']), [{ event: 'message', data: 'x' }])
  const bom = new TextEncoder().encode('\uFEFFdata: x\n\n') // the BOM split over chunks
  assert.deepEqual(await parsed([bom.slice(0, 1), bom.slice(1, 2), bom.slice(2)]), [{ event: 'message', data: 'x' }])
  // A second BOM is part of the first field name ("\uFEFFdata"), which is no field: ignored.
  assert.deepEqual(await parsed(['\uFEFF\uFEFFdata: x\n\n']), [])
  assert.deepEqual(await parsed(['\uFEFF\uFEFFdata: x\n\ndata: y\n\n']), [{ event: 'message', data: 'y' }])
  // Not at the start: part of the value.
  assert.deepEqual(await parsed(['data: \uFEFFx\n\n']), [{ event: 'message', data: '\uFEFFx' }])
})
