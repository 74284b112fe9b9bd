// Awareness through yserve (SPEC §2): removal when a connection dies without a close frame,
// and the echo of awareness renewals that keeps a lone stock client connected.
import { test, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { setTimeout as sleep } from 'node:timers/promises'
import { Server, Clients, waitFor, synced, dropConnection, watchConnection, timed } from './harness.mjs'

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
