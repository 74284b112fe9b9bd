// The `offline` option: y-indexeddb persistence, here on fake-indexeddb (Node has no
// IndexedDB; this file runs in its own process, so the global stays here).
import 'fake-indexeddb/auto'
import { test, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { Server, Clients, waitFor, within, Y } from './helpers.mjs'
import { ApiClient } from '../dist/index.js'

let server
before(async () => { server = await new Server().start() })
after(async () => { await server?.dispose() })

test('with offline on, a document opens from IndexedDB while the server is down and uploads its edits when it is back', async () => {
  const clients = new Clients()
  try {
    const a = clients.add(server, 'offline/doc', { offline: true, maxBackoffTime: 300 })
    assert.ok(a.provider.persistence, 'IndexedDB persistence is on')
    await a.provider.whenSynced()
    a.text.insert(0, 'written online')
    await a.provider.whenConfirmed()
    await waitFor(async () => {
      // A second reader of the same IndexedDB database sees what the first one stored.
      const { IndexeddbPersistence } = await import('y-indexeddb')
      const probe = new Y.Doc()
      const p = new IndexeddbPersistence(`yserve:${server.url}/offline/doc`, probe)
      await p.whenSynced
      const text = probe.getText('t').toString()
      await p.destroy()
      return text === 'written online'
    }, 'the edit to reach IndexedDB')
    a.provider.destroy()

    await server.stop()
    const doc = new Y.Doc()
    const b = clients.add(server, 'offline/doc', { doc, offline: true, maxBackoffTime: 300 })
    await within(b.provider.persistence.whenSynced, 5000, 'the document to load from IndexedDB')
    assert.equal(b.text.toString(), 'written online')
    assert.equal(b.provider.synced, false)
    b.text.insert(b.text.length, ', then offline')
    assert.ok(b.provider.unsyncedChanges >= 1)

    await server.start()
    await within(b.provider.whenConfirmed(), 15000, `the offline edit confirmed (unsynced ${b.provider.unsyncedChanges})`)
    assert.equal((await new ApiClient(server.http).text('offline/doc', 't')).text, 'written online, then offline')
  } finally {
    clients.destroyAll()
  }
})
