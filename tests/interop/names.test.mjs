// Document names (SPEC §2): the percent-decoded path after the first '/', which may contain
// '/' and any non-control UTF-8. Distinct names are distinct documents, before and after a restart.
import { test, after } from 'node:test'
import assert from 'node:assert/strict'
import { Server, Clients, waitFor, synced } from './harness.mjs'

const servers = []
after(async () => { for (const s of servers) await s.dispose() })

test('names with slashes and non-ASCII characters are distinct documents that survive a restart', async () => {
  const server = await new Server().start()
  servers.push(server)
  const pool = new Clients()
  try {
    const content = {
      'team/notes/日本語 ✓': 'ノート: 日本語 ✓ — team notes',
      'a/b/c': 'content of a/b/c'
    }
    // Names that a sloppy server could confuse with the two above. ('a/b/c%20' is the name
    // "a/b/c " spelled so that the client's URL parser does not trim the trailing space.)
    const neighbours = ['team/notes/日本語', 'team/notes', 'team', 'a/b', 'a/b/c/', 'a', 'b/c', '/a/b/c', 'a/b/c%20']
    for (const n of neighbours) content[n] = `neighbour ${JSON.stringify(n)}`
    const main = ['team/notes/日本語 ✓', 'a/b/c']

    // Two clients on each main name converge.
    const pairs = main.map(name => [pool.add(server, name), pool.add(server, name)])
    await Promise.all(pairs.flat().map(c => synced(c)))
    pairs.forEach(([w], i) => w.text.insert(0, content[main[i]]))
    await waitFor(() => pairs.every(([, r], i) => r.text.toString() === content[main[i]]), 'second client on each name converged')

    // A synced client on a neighbouring name holds the full server state of its own document:
    // it must be empty. Then each neighbour gets its own content, confirmed by a second client.
    for (const name of neighbours) {
      const [w, r] = [pool.add(server, name), pool.add(server, name)]
      await Promise.all([synced(w), synced(r)])
      assert.equal(w.text.toString(), '', `document ${JSON.stringify(name)} is empty`)
      w.text.insert(0, content[name])
      await waitFor(() => r.text.toString() === content[name], `second client on ${JSON.stringify(name)}`)
    }
    // The main documents did not receive anything written to the neighbours.
    pairs.forEach((pair, i) => pair.forEach(c => assert.equal(c.text.toString(), content[main[i]])))

    // The name is the percent-decoded path: spelling it encoded reaches the same document.
    for (const [spelling, name] of [['a%2Fb%2Fc', 'a/b/c'], [encodeURIComponent('team/notes/日本語 ✓'), 'team/notes/日本語 ✓']]) {
      const c = pool.add(server, spelling)
      await synced(c)
      assert.equal(c.text.toString(), content[name], `${spelling} is ${name}`)
    }

    pool.destroyAll()
    assert.equal(await server.stop(), 0, 'SIGTERM exits 0')
    await server.start()
    const fresh = Object.keys(content).map(name => [name, pool.add(server, name)])
    await Promise.all(fresh.map(([, c]) => synced(c)))
    for (const [name, c] of fresh) assert.equal(c.text.toString(), content[name], `after restart: ${JSON.stringify(name)}`)
  } finally {
    pool.destroyAll()
  }
})
