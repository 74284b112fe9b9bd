// The stock @hocuspocus/provider (v2, v3, v4, installed under npm aliases) against the built
// yserve binary: the Hocuspocus door (SPEC §9, issue 15).
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { execFileSync } from 'node:child_process'
import { createHmac } from 'node:crypto'
import * as Y from 'yjs'
import WebSocket from 'ws'
import * as v2 from 'hocuspocus-provider-v2'
import * as v3 from 'hocuspocus-provider-v3'
import * as v4 from 'hocuspocus-provider-v4'
import { createRequire } from 'node:module'
import { Server, binaryPath, client, destroyClient, waitFor, rawSocket } from './harness.mjs'

const require = createRequire(import.meta.url)
const ShareDB = require('sharedb/lib/client')
const richText = require('rich-text')
ShareDB.types.register(richText.type)
const plain = d => (d.data?.ops ?? []).map(o => typeof o.insert === 'string' ? o.insert : '').join('')

const VERSIONS = { v2, v3, v4 }
const secret = 'hocuspocus-test-secret'

const token = (sub, grant, ttl = '1h') =>
  execFileSync(binaryPath(), ['token', '--jwt-secret', secret, '--sub', sub, '--doc', grant, '--ttl', ttl]).toString().trim()

/** An HS256 token that expired `secondsAgo` ago (the CLI only signs future expiries). */
function expiredToken (sub, grant, secondsAgo = 3600) {
  const b64 = o => Buffer.from(JSON.stringify(o)).toString('base64url')
  const [pattern, access] = grant.split('=')
  const body = `${b64({ alg: 'HS256', typ: 'JWT' })}.${b64({ sub, exp: Math.floor(Date.now() / 1000) - secondsAgo, docs: { [pattern]: access } })}`
  return `${body}.${createHmac('sha256', secret).update(body).digest('base64url')}`
}

/** A provider with its own socket (or `websocketProvider`) and doc. */
function hp (lib, url, name, opts = {}) {
  // v2's provider builds its socket without the polyfill option: it gets one of its own.
  let socket = null
  if (lib === v2 && !opts.websocketProvider) {
    socket = new v2.HocuspocusProviderWebsocket({ url, WebSocketPolyfill: WebSocket })
    opts = { ...opts, websocketProvider: socket }
  }
  const doc = new Y.Doc()
  const events = { failed: [], authenticated: [], closes: [], stateless: [] }
  const provider = new lib.HocuspocusProvider({
    ...(opts.websocketProvider ? {} : { url, WebSocketPolyfill: WebSocket }),
    name,
    document: doc,
    onAuthenticationFailed: e => events.failed.push(e.reason),
    onAuthenticated: e => events.authenticated.push(e?.scope),
    onClose: e => events.closes.push(e.event?.code),
    onStateless: e => events.stateless.push(e.payload),
    ...opts
  })
  return { doc, provider, text: doc.getText('t'), events, socket }
}

function destroyHp (...cs) {
  for (const c of cs) {
    c.provider.destroy()
    c.socket?.destroy()
    c.doc.destroy()
  }
}

const allSynced = c => c.provider.isSynced && c.provider.unsyncedChanges === 0

for (const [version, lib] of Object.entries(VERSIONS)) {
  test(`${version}: syncs with a y-websocket and a ShareDB client on one document, at / and /api/hocuspocus`, async () => {
    const srv = await new Server().start()
    const a = hp(lib, srv.url, 'shared', { token: version === 'v2' ? undefined : 'dev' })
    const b = hp(lib, `${srv.url}/api/hocuspocus`, 'shared', { token: 'dev' })
    const y = client(srv, 'shared')
    const socket = new WebSocket(`${srv.url}/api/ot`)
    const share = new ShareDB.Connection(socket)
    const sdoc = share.get('shared', 't')
    try {
      await new Promise((resolve, reject) => sdoc.subscribe(err => err ? reject(err) : resolve()))
      await waitFor(() => allSynced(a) && allSynced(b) && y.provider.synced, 'all synced')
      a.text.insert(0, 'hocus ')
      y.text.insert(0, 'yjs ')
      b.text.insert(0, 'pocus ')
      await waitFor(() => a.text.toString().length === 16 && plain(sdoc).length === 16, 'ShareDB sees the Yjs edits')
      await new Promise((resolve, reject) => sdoc.submitOp([{ insert: 'ot ' }], err => err ? reject(err) : resolve()))
      await waitFor(() => a.text.toString().length === 19 && b.text.toString() === a.text.toString() &&
        y.text.toString() === a.text.toString() && plain(sdoc) === a.text.toString(), 'converged')
      await waitFor(() => allSynced(a) && allSynced(b), 'acknowledged')
    } finally {
      share.close()
      destroyHp(a, b)
      destroyClient(y)
      await srv.dispose()
    }
  })

  test(`${version}: several documents on one socket, awareness, stateless, and Close of one document`, async () => {
    const srv = await new Server().start()
    const socket = new lib.HocuspocusProviderWebsocket({ url: srv.url, WebSocketPolyfill: WebSocket })
    const one = hp(lib, null, 'multi/one', { websocketProvider: socket, token: 'dev' })
    const two = hp(lib, null, 'multi/two', { websocketProvider: socket, token: 'dev' })
    const other = hp(lib, srv.url, 'multi/two', { token: 'dev' })
    if (version !== 'v2') { one.provider.attach?.(); two.provider.attach?.() }
    try {
      await waitFor(() => allSynced(one) && allSynced(two) && allSynced(other), 'synced')
      one.text.insert(0, 'first')
      two.text.insert(0, 'second')
      await waitFor(() => other.text.toString() === 'second', 'doc two reached the other socket')
      assert.equal(one.text.toString(), 'first')
      // Awareness: the other socket sees the provider's state, and its own comes back.
      two.provider.setAwarenessField('user', { name: 'two' })
      await waitFor(() => [...other.provider.awareness.getStates().values()].some(s => s.user?.name === 'two'), 'awareness relayed')
      // Stateless goes to the document's other connections.
      two.provider.sendStateless('ping!')
      await waitFor(() => other.events.stateless.includes('ping!'), 'stateless relayed')
      assert.deepEqual(two.events.stateless, [])
      // Detaching one document leaves the other working on the same socket.
      if (version === 'v2') {
        one.provider.destroy()
      } else {
        one.provider.detach()
      }
      other.text.insert(0, '>')
      await waitFor(() => two.text.toString() === '>second', 'doc two still syncs')
    } finally {
      destroyHp(two, other)
      one.doc.destroy()
      socket.destroy()
      await srv.dispose()
    }
  })
}

for (const version of ['v3', 'v4']) {
  const lib = VERSIONS[version]
  test(`${version}: read-only scope, bad and expired tokens, token refresh`, async () => {
    const srv = await new Server(['--jwt-secret', secret]).start()
    const writer = hp(lib, srv.url, 'auth/doc', { token: token('alice', 'auth/*=write') })
    const reader = hp(lib, srv.url, 'auth/doc', { token: token('bob', 'auth/*=read') })
    const bad = hp(lib, srv.url, 'auth/doc', { token: 'not-a-jwt' })
    const expired = hp(lib, srv.url, 'auth/doc', { token: expiredToken('carol', 'auth/*=write') })
    const forbidden = hp(lib, srv.url, 'auth/doc', { token: token('dave', 'elsewhere/*=write') })
    try {
      await waitFor(() => allSynced(writer) && reader.provider.isSynced, 'writer and reader synced')
      assert.equal(reader.provider.authorizedScope, 'readonly')
      assert.equal(writer.provider.authorizedScope, 'read-write')
      await waitFor(() => bad.events.failed.length && expired.events.failed.length && forbidden.events.failed.length, 'refused')
      assert.equal(expired.events.failed[0], 'token expired')
      assert.equal(forbidden.events.failed[0], 'forbidden')
      writer.text.insert(0, 'written')
      await waitFor(() => reader.text.toString() === 'written', 'reader receives')
      reader.text.insert(0, 'dropped ')
      await new Promise(resolve => setTimeout(resolve, 300))
      assert.ok(reader.provider.unsyncedChanges > 0, 'a dropped update is never acknowledged')
      assert.equal(writer.text.toString(), 'written')
      // Token refresh on the same socket: the server asks nothing, the provider re-sends.
      const before = writer.events.authenticated.length
      writer.provider.configuration.token = token('alice', 'auth/*=write')
      await writer.provider.sendToken()
      await waitFor(() => writer.events.authenticated.length > before, 'refreshed')
      writer.text.insert(7, '!')
      await waitFor(() => allSynced(writer), 'still writing after refresh')
    } finally {
      destroyHp(writer, reader, bad, expired, forbidden)
      await srv.dispose()
    }
  })
}

test('v4: SyncStatus only after commit: kill -9 right after unsyncedChanges reaches 0 loses nothing', async () => {
  const srv = await new Server().start()
  try {
    for (let round = 0; round < 5; round++) {
      const c = hp(v4, srv.url, 'durable', { token: 'dev' })
      await waitFor(() => allSynced(c), 'synced')
      c.text.insert(c.text.length, `round${round};`)
      assert.ok(c.provider.unsyncedChanges > 0, 'the edit is unsynced until the server acknowledges it')
      await waitFor(() => c.provider.unsyncedChanges === 0, 'acknowledged', 5000)
      await srv.kill9()
      destroyHp(c)
      await srv.restart()
      const check = hp(v4, srv.url, 'durable', { token: 'dev' })
      await waitFor(() => check.provider.isSynced, 'reloaded')
      assert.ok(check.text.toString().includes(`round${round};`), `round ${round} survived kill -9: ${check.text.toString()}`)
      destroyHp(check)
    }
  } finally {
    await srv.dispose()
  }
})

test('v3: reconnects after a server restart and uploads offline edits', async () => {
  const srv = await new Server().start()
  const c = hp(v3, srv.url, 'restart', { token: 'dev' })
  try {
    await waitFor(() => allSynced(c), 'synced')
    c.text.insert(0, 'before ')
    await waitFor(() => allSynced(c), 'acknowledged')
    await srv.kill9()
    c.text.insert(c.text.length, 'offline')
    await srv.restart()
    await waitFor(() => allSynced(c), 'resynced after restart', 20000)
    const y = client(srv, 'restart')
    await waitFor(() => y.text.toString() === 'before offline', 'offline edit uploaded')
    destroyClient(y)
  } finally {
    destroyHp(c)
    await srv.dispose()
  }
})

test('raw frames: BroadcastStateless closes 4205; too much before Auth closes 4205', async () => {
  const srv = await new Server(['--jwt-secret', secret, '--hocuspocus-preauth-frames-max', '3']).start()
  try {
    const enc = (name, bytes) => Buffer.concat([Buffer.from([name.length]), Buffer.from(name), Buffer.from(bytes)])
    const a = await rawSocket(srv, '/')
    a.ws.send(enc('d', [6, 1, 0x78]))
    assert.equal((await a.closed).code, 4205)
    const b = await rawSocket(srv, '/api/hocuspocus')
    for (let i = 0; i < 4; i++) b.ws.send(enc('d', [0, 0, 1, 0]))
    assert.equal((await b.closed).code, 4205)
  } finally {
    await srv.dispose()
  }
})

test('v2, v3, v4: an idle connection stays open past the provider\'s 30 s message timeout', { timeout: 60000 }, async () => {
  const srv = await new Server().start()
  // v2 and v3 hear their awareness renewals echoed; v4 without awareness hears the Ping.
  const cs = [hp(v2, srv.url, 'idle', {}), hp(v3, srv.url, 'idle', { token: 'dev' }), hp(v4, srv.url, 'idle', { token: 'dev', awareness: null })]
  try {
    await waitFor(() => cs.every(allSynced), 'synced')
    await new Promise(resolve => setTimeout(resolve, 35000))
    for (const [i, c] of cs.entries()) {
      assert.deepEqual(c.events.closes, [], `v${i + 2}: no close in 35 s`)
      assert.equal(c.provider.configuration.websocketProvider.status, 'connected', `v${i + 2}`)
    }
  } finally {
    destroyHp(...cs)
    await srv.dispose()
  }
})
