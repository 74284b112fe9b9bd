// Awareness through yserve (SPEC §2): removal when a connection dies without a close frame,
// the echo of awareness renewals that keeps a lone stock client connected, and identity
// binding of client ids announced only in awareness (SPEC §4).
import { test, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { setTimeout as sleep } from 'node:timers/promises'
import { execFileSync } from 'node:child_process'
import * as awarenessProtocol from 'y-protocols/awareness'
import * as encoding from 'lib0/encoding'
import { Server, Clients, waitFor, synced, dropConnection, watchConnection, timed, rawSocket, binaryPath } from './harness.mjs'

let server
before(async () => { server = await new Server().start() })
after(async () => { await server?.dispose() })

for (const [how, reset] of [['ended without a close frame (FIN)', false], ['reset (RST)', true]]) {
  test(`when a client's TCP connection is ${how}, the others see its awareness state removed within 5 s`, async () => {
    const pool = new Clients()
    const room = `presence/drop-${reset ? 'rst' : 'fin'}`
    try {
      const a = pool.add(server, room)
      const b = pool.add(server, room)
      await Promise.all([synced(a), synced(b)])
      const [aId, bId] = [a.doc.clientID, b.doc.clientID]
      // (A state must be set explicitly: y-protocols ignores a peer's initial clock-0 state.)
      a.awareness.setLocalStateField('user', { name: 'Alice', color: '#ee6352' })
      b.awareness.setLocalStateField('user', { name: 'Bob', color: '#30bced' })
      await waitFor(() => a.awareness.getStates().get(bId)?.user?.name === 'Bob', "A sees Bob's awareness state")
      // A must stay connected: a provider that reconnects drops every remote state by itself,
      // which would hide whether the server broadcast the removal.
      const aConn = watchConnection(a.provider)

      dropConnection(b, { reset })
      const { ms } = await timed(() => waitFor(() => !a.awareness.getStates().has(bId), "Bob's state removed at A", 5000))
      assert.ok(ms < 5000, `removal took ${ms} ms`)
      assert.equal(aConn.closes, 0, 'A was never disconnected')
      assert.equal(a.provider.ws, aConn.ws, 'A kept its websocket')
      await waitFor(() => b.provider.ws === null, 'B noticed its connection is gone')
      assert.equal(b.provider.shouldConnect, false)

      // The server forgot Bob too: a newcomer gets A's state and not Bob's.
      const d = pool.add(server, room)
      await synced(d)
      await waitFor(() => d.awareness.getStates().get(aId)?.user?.name === 'Alice', "newcomer receives Alice's awareness state")
      assert.ok(!d.awareness.getStates().has(bId), 'newcomer does not receive the dropped client')
    } finally {
      pool.destroyAll()
    }
  })
}

test('a lone client stays connected for 36 s without any reconnect (the server echoes awareness renewals)', async () => {
  const pool = new Clients()
  try {
    const c = pool.add(server, 'presence/lone')
    await synced(c)
    const conn = watchConnection(c.provider)
    let received = 0
    c.provider.ws.on('message', () => { received++ })

    // The stock client closes a connection that has received nothing for 30 s (checked every
    // 3 s) and renews its own awareness every 15 s; only the server's echo keeps it alive.
    await sleep(36000)

    assert.deepEqual(conn.statuses, [], 'no status change')
    assert.equal(conn.closes, 0, 'no connection-close')
    assert.equal(c.provider.ws, conn.ws, 'still the first websocket')
    assert.ok(c.provider.wsconnected && c.provider.synced, 'still connected and synced')
    assert.ok(received >= 2, `the renewals at ~15 s and ~30 s were echoed (received ${received} messages)`)

    // And the connection is still useful.
    const other = pool.add(server, 'presence/lone')
    await synced(other)
    other.text.insert(0, 'still here')
    await waitFor(() => c.text.toString() === 'still here', 'the lone client receives an edit')
  } finally {
    pool.destroyAll()
  }
})

/** How a raw socket was closed, or `{ code: 'still open' }` after 10 s. */
const closedWithin = raw => Promise.race([raw.closed, sleep(10000).then(() => ({ code: 'still open' }))])

test("a client id that has only shown presence is bound to its user: another user's forged awareness for it is refused with 1008 client-id and every peer keeps the real state", async () => {
  const secret = 'presence-forgery-secret'
  const token = sub => execFileSync(binaryPath(), ['token', '--jwt-secret', secret, '--sub', sub, '--doc', 'forge/*=write', '--ttl', '1h']).toString().trim()
  const srv = await new Server(['--jwt-secret', secret]).start()
  const pool = new Clients()
  const room = 'forge/doc'
  try {
    const a = pool.add(srv, room, { params: { token: token('alice') } })
    const b = pool.add(srv, room, { params: { token: token('bob') } })
    await Promise.all([synced(a), synced(b)])
    const aId = a.doc.clientID
    // Alice only shows presence; she never edits.
    a.awareness.setLocalStateField('user', { name: 'real' })
    await waitFor(() => b.awareness.getStates().get(aId)?.user?.name === 'real', "Bob sees Alice's real state")

    // Mallory sends one awareness message for Alice's client id with a far higher clock.
    const mallory = await rawSocket(srv, `/${room}?token=${token('mallory')}`)
    const fake = { meta: new Map([[aId, { clock: 100000, lastUpdated: Date.now() }]]), states: new Map([[aId, { user: { name: 'forged' } }]]) }
    const enc = encoding.createEncoder()
    encoding.writeVarUint(enc, 1) // messageAwareness
    encoding.writeVarUint8Array(enc, awarenessProtocol.encodeAwarenessUpdate(fake, [aId]))
    mallory.ws.send(encoding.toUint8Array(enc))
    assert.deepEqual(await closedWithin(mallory), { code: 1008, reason: 'client-id' })

    // Nobody sees the forged state, now or after a fresh join; Alice's renewals still arrive.
    const c = pool.add(srv, room, { params: { token: token('carol') } })
    await synced(c)
    await waitFor(() => c.awareness.getStates().get(aId)?.user?.name === 'real', "a newcomer receives Alice's real state")
    a.awareness.setLocalStateField('user', { name: 'real, renewed' })
    await waitFor(() => b.awareness.getStates().get(aId)?.user?.name === 'real, renewed', "Bob receives Alice's next state")
    await waitFor(() => c.awareness.getStates().get(aId)?.user?.name === 'real, renewed', "the newcomer receives Alice's next state")
    for (const peer of [a, b, c]) assert.notEqual(peer.awareness.getStates().get(aId)?.user?.name, 'forged')
    assert.match(srv.stderr, /refused: awareness for another user's client id/)

    // The binding is persistent: after a restart, Mallory is still refused for that client id.
    pool.destroyAll()
    await srv.restart()
    const again = await rawSocket(srv, `/${room}?token=${token('mallory')}`)
    again.ws.send(encoding.toUint8Array(enc))
    assert.deepEqual(await closedWithin(again), { code: 1008, reason: 'client-id' })
  } finally {
    pool.destroyAll()
    await srv.dispose()
  }
})

test('twelve stock clients with presence in one room, and a latecomer, all stay connected: the peers\' states every client re-broadcasts are not counted as its own', async () => {
  // y-websocket's provider re-sends every awareness change it receives, its peers' included,
  // so each connection carries the ids of the whole room; only the ids it announces itself
  // count against --awareness-clients-per-connection-max (8).
  const pool = new Clients()
  const room = 'presence/twelve'
  try {
    const clients = Array.from({ length: 12 }, () => pool.add(server, room))
    await Promise.all(clients.map(c => synced(c)))
    const watches = clients.map(c => watchConnection(c.provider))
    const ids = clients.map(c => c.doc.clientID)
    for (const round of ['first', 'second']) {
      clients.forEach((c, i) => c.awareness.setLocalStateField('user', { name: `user ${i}`, round }))
      await waitFor(() => clients.every(c => ids.every(id => c.awareness.getStates().get(id)?.user?.round === round)),
        `every client sees all 12 states of the ${round} round`)
    }
    // A latecomer receives the twelve states in one message and echoes them in one message.
    const late = pool.add(server, room)
    await synced(late)
    const lateWatch = watchConnection(late.provider)
    await waitFor(() => ids.every(id => late.awareness.getStates().get(id)?.user?.round === 'second'), 'the latecomer sees all 12 states')
    late.awareness.setLocalStateField('user', { name: 'late' })
    await waitFor(() => clients.every(c => c.awareness.getStates().get(late.doc.clientID)?.user?.name === 'late'), 'everyone sees the latecomer')
    assert.deepEqual(watches.map(w => w.closes), new Array(12).fill(0), 'no client was disconnected')
    assert.ok(clients.every((c, i) => c.provider.ws === watches[i].ws), 'every client kept its websocket')
    assert.equal(lateWatch.closes, 0, 'the latecomer was not disconnected')
    assert.equal(late.provider.ws, lateWatch.ws)
  } finally {
    pool.destroyAll()
  }
})
