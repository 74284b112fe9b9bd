// Convergence of the stock y-websocket client through yserve: concurrent edits, offline
// edits reconciled on reconnect, and many rooms at once without cross-talk.
import { test, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { Server, Clients, waitFor, synced } from './harness.mjs'

let server
before(async () => { server = await new Server().start() })
after(async () => { await server?.dispose() })

/** Small seeded PRNG (mulberry32) so that a failing run can be replayed. */
function rng (seed) {
  return () => {
    seed = (seed + 0x6D2B79F5) | 0
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed)
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}

const tick = ms => new Promise(resolve => ms > 0 ? setTimeout(resolve, ms) : setImmediate(resolve))

/** Counts updates a client receives from the server (not its own local edits). */
function countRemoteUpdates (c) {
  const counter = { n: 0 }
  c.doc.on('update', (_update, origin) => { if (origin === c.provider) counter.n++ })
  return counter
}

/** Random inserts and deletes in `c.text`, yielding to the event loop between edits. */
async function typeRandomly (c, random, steps, letter) {
  for (let i = 0; i < steps; i++) {
    const len = c.text.length
    if (len > 0 && random() < 0.35) {
      const at = Math.floor(random() * len)
      c.text.delete(at, Math.min(1 + Math.floor(random() * 3), len - at))
    } else {
      c.text.insert(Math.floor(random() * (len + 1)), letter.repeat(1 + Math.floor(random() * 3)))
    }
    await tick(i % 5 === 0 ? Math.floor(random() * 4) : 0)
  }
}

test('three clients editing concurrently in a loop converge to identical text', async () => {
  const pool = new Clients()
  try {
    const names = ['a', 'b', 'c']
    const cs = names.map(() => pool.add(server, 'concurrent-loop'))
    await Promise.all(cs.map(c => synced(c)))
    const remote = cs.map(countRemoteUpdates)
    const seed = Date.now() % 100000
    const received = await Promise.all(cs.map(async (c, i) => {
      await typeRandomly(c, rng(seed + i), 300, names[i])
      return remote[i].n // updates from the others that arrived while this one was typing
    }))
    for (const [i, n] of received.entries()) {
      assert.ok(n > 0, `client ${names[i]} received no remote update while typing (edits were not concurrent; seed ${seed})`)
    }
    // A last marker from each client, inserted concurrently at the start.
    cs.forEach((c, i) => c.text.insert(0, `<${names[i]}>`))
    await waitFor(() => cs.every(c => c.text.toString() === cs[0].text.toString()) &&
      names.every(n => cs[0].text.toString().includes(`<${n}>`)), `three texts identical (seed ${seed})`, 15000)
    const final = cs[0].text.toString()
    assert.ok(final.length > 100, `converged text is suspiciously short: ${JSON.stringify(final)}`)
    // The server's own state is the same: a fresh client gets exactly this text.
    const fresh = pool.add(server, 'concurrent-loop')
    await synced(fresh)
    assert.equal(fresh.text.toString(), final)
  } finally {
    pool.destroyAll()
  }
})

test('a client that edits while disconnected reconciles in both directions on reconnect', async () => {
  const pool = new Clients()
  try {
    const [a, b, c] = [1, 2, 3].map(() => pool.add(server, 'offline-edits'))
    await Promise.all([a, b, c].map(x => synced(x)))
    a.text.insert(0, 'base.')
    await waitFor(() => [b, c].every(x => x.text.toString() === 'base.'), 'base text everywhere')

    a.provider.disconnect()
    await waitFor(() => !a.provider.wsconnected && a.provider.ws === null, 'A disconnected')
    a.text.insert(a.text.length, ' offline-A')
    a.text.delete(0, 1) // 'ase.' — a deletion made offline must travel too
    b.text.insert(0, 'online-B ')
    await waitFor(() => c.text.toString().includes('online-B'), 'C sees B while A is offline')
    assert.ok(!a.text.toString().includes('online-B'), 'A cannot have seen B while disconnected')
    assert.ok(!c.text.toString().includes('offline-A'), 'C cannot have seen A while A is disconnected')

    a.provider.connect()
    const expected = 'online-B ase. offline-A'
    await waitFor(() => [a, b, c].every(x => x.text.toString() === expected),
      `all three texts equal to ${JSON.stringify(expected)}`)
    const fresh = pool.add(server, 'offline-edits')
    await synced(fresh)
    assert.equal(fresh.text.toString(), expected)
  } finally {
    pool.destroyAll()
  }
})

test('50 rooms with 3 clients each all sync and converge to their own content without cross-talk', async () => {
  const pool = new Clients()
  try {
    const rooms = Array.from({ length: 50 }, (_, r) => `many/room-${r}`)
    const groups = rooms.map(room => [0, 1, 2].map(() => pool.add(server, room)))
    await waitFor(() => groups.flat().every(c => c.provider.synced), '150 providers synced', 20000)
    groups.forEach((group, r) => group.forEach((c, i) => c.text.insert(0, `[r${r}c${i}]`)))
    const expectedMarkers = r => [0, 1, 2].map(i => `[r${r}c${i}]`)
    await waitFor(() => groups.every((group, r) => {
      const t = group[0].text.toString()
      return group.every(c => c.text.toString() === t) && expectedMarkers(r).every(m => t.includes(m))
    }), 'every room converged with its three markers', 20000)
    for (const [r, group] of groups.entries()) {
      const t = group[0].text.toString()
      const markers = t.match(/\[r\d+c\d\]/g).sort()
      assert.deepEqual(markers, expectedMarkers(r).sort(), `room ${r} holds exactly its own markers`)
      assert.equal(t.length, expectedMarkers(r).join('').length, `room ${r} has nothing else: ${t}`)
    }
    // Each client got exactly the two other updates of its room, never another room's.
    const fresh = rooms.map(room => pool.add(server, room))
    await waitFor(() => fresh.every(c => c.provider.synced), 'fresh providers synced', 20000)
    fresh.forEach((c, r) => assert.equal(c.text.toString(), groups[r][0].text.toString(), `server state of room ${r}`))
  } finally {
    pool.destroyAll()
  }
})
