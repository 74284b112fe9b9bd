// Refusals at the edge (SPEC §2, §8): invalid names get HTTP 400 at the upgrade; a text frame
// closes with 1003 and an undecodable message with 1007, without harming the document.
import { test, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { Server, Clients, waitFor, synced, rawSocket, watchConnection } from './harness.mjs'

let server
before(async () => { server = await new Server().start() })
after(async () => { await server?.dispose() })

test('an invalid document name gets HTTP 400 at the upgrade', async () => {
  const invalid = {
    '/%FF': 'not UTF-8',
    '/%FF%FE': 'not UTF-8',
    '/a%0Ab': 'newline',
    '/a%00': 'NUL',
    '/a%7F': 'DEL',
    ['/' + 'x'.repeat(513)]: '513 bytes'
  }
  for (const [path, why] of Object.entries(invalid)) {
    const err = await rawSocket(server, path).then(
      ({ ws }) => { ws.terminate(); return null },
      e => e)
    assert.ok(err, `${why} (${path.slice(0, 20)}): upgrade was accepted`)
    assert.equal(err.status, 400, `${why}: ${err.message}`)
    assert.match(err.body, /invalid document name/, why)
  }
  // The boundary: 512 bytes of UTF-8 is a valid name; the server opens its sync handshake.
  const { ws, messages, closed } = await rawSocket(server, '/' + encodeURIComponent('é'.repeat(256)))
  try {
    await waitFor(() => messages.length > 0, 'sync step 1 on a 512-byte name')
    assert.deepEqual([...messages[0].slice(0, 2)], [0, 0])
  } finally {
    ws.close()
    await closed
  }
  const health = await fetch(`${server.http}/healthz`)
  assert.equal(health.status, 200)
})

const refusals = [
  { what: 'a text frame', code: 1003, send: ws => ws.send('hello') },
  { what: 'a truncated binary message', code: 1007, send: ws => ws.send(new Uint8Array([0, 2, 50, 1])) }
]

for (const { what, code, send } of refusals) {
  test(`${what} on a document connection is closed with ${code} and the document keeps working for others`, async () => {
    const pool = new Clients()
    const room = `bad/${code}`
    let raw
    try {
      const d = pool.add(server, room)
      const e = pool.add(server, room)
      await Promise.all([synced(d), synced(e)])
      d.text.insert(0, 'before')
      await waitFor(() => e.text.toString() === 'before', 'E sees the first edit')
      const dConn = watchConnection(d.provider)

      raw = await rawSocket(server, '/' + room)
      // The server opens the handshake with its SyncStep1.
      await waitFor(() => raw.messages.length > 0, 'first message from the server')
      assert.deepEqual([...raw.messages[0].slice(0, 2)], [0, 0], 'first message is sync step 1')
      let closedWith = null
      raw.closed.then(c => { closedWith = c })
      send(raw.ws)
      await waitFor(() => closedWith !== null, `close after ${what}`, 5000)
      assert.equal(closedWith.code, code, `close code (reason: ${closedWith.reason})`)

      d.text.insert(d.text.length, ' after')
      await waitFor(() => e.text.toString() === 'before after', 'E sees the edit made after the refusal')
      const f = pool.add(server, room)
      await synced(f)
      assert.equal(f.text.toString(), 'before after', 'a third client gets the document')
      assert.equal(dConn.closes, 0, 'D was never disconnected')
    } finally {
      raw?.ws.terminate()
      pool.destroyAll()
    }
  })
}
