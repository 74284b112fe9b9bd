// Durability: yserve commits an update to SQLite before relaying it (SPEC §2), so an update
// that another client has received survives a SIGKILL that follows immediately.
import { test, after } from 'node:test'
import assert from 'node:assert/strict'
import { Server, Clients, waitFor, synced } from './harness.mjs'

const servers = []
after(async () => { for (const s of servers) await s.dispose() })

const rounds = [
  { what: 'one insert', write: a => a.text.insert(a.text.length, 'hello, durable world\n') },
  {
    what: '200 keystrokes, one update each',
    write: a => { for (let i = 0; i < 200; i++) a.text.insert(a.text.length, String.fromCharCode(97 + i % 26)) }
  },
  { what: 'a 64 KiB insert', write: a => a.text.insert(0, 'z'.repeat(64 * 1024)) }
]

test('an update observed by client B survives a SIGKILL right after and is seen by a new client after restart', async () => {
  const server = await new Server().start()
  servers.push(server)
  const pool = new Clients()
  try {
    let expected = ''
    for (const round of rounds) {
      const a = pool.add(server, 'durable/doc')
      const b = pool.add(server, 'durable/doc')
      await Promise.all([synced(a), synced(b)])
      assert.equal(b.text.toString(), expected, `before "${round.what}": B starts from the state committed so far`)

      // Work out the text A will have, then kill the server the moment B holds that text:
      // synchronously, inside B's update handler, with no event-loop turn in between.
      let killedAt = null
      b.doc.on('update', () => {
        if (killedAt === null && b.text.toString() === expected) {
          server.proc.kill('SIGKILL')
          killedAt = Date.now()
        }
      })
      round.write(a)
      expected = a.text.toString()
      await waitFor(() => killedAt !== null, `B to observe "${round.what}"`)
      await server.exited
      assert.equal(server.proc.signalCode, 'SIGKILL')
      // The old clients must not upload their copy to the restarted server.
      pool.destroyAll()

      await server.start()
      const fresh = pool.add(server, 'durable/doc')
      await synced(fresh)
      assert.equal(fresh.text.length, expected.length, `after "${round.what}" and SIGKILL: length`)
      assert.equal(fresh.text.toString(), expected, `after "${round.what}" and SIGKILL: content`)
      pool.destroyAll()
    }
  } finally {
    pool.destroyAll()
  }
})
