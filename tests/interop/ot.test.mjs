// The OT compatibility layer with the real clients: the stock `sharedb` client and the
// `rich-text` type edit the root Y.Text that stock y-websocket clients edit, and both
// converge (SPEC §5). Also the REST mirror.
import { test, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { createRequire } from 'node:module'
import WebSocket from 'ws'
import { Server, Clients, waitFor, synced } from './harness.mjs'

const require = createRequire(import.meta.url)
const ShareDB = require('sharedb/lib/client')
const richText = require('rich-text')
ShareDB.types.register(richText.type)
const Delta = richText.Delta

let server
before(async () => { server = await new Server().start() })
after(async () => { await server?.dispose() })

/** A stock ShareDB client connection over `ws` to /api/ot. */
function shareConnection (srv = server, token) {
  const socket = new WebSocket(`${srv.url}/api/ot${token ? `?token=${token}` : ''}`)
  const connection = new ShareDB.Connection(socket)
  return { socket, connection, close: () => connection.close() }
}

function subscribe (doc) {
  return new Promise((resolve, reject) => doc.subscribe(err => err ? reject(err) : resolve()))
}

function submit (doc, op) {
  return new Promise((resolve, reject) => doc.submitOp(op, err => err ? reject(err) : resolve()))
}

/** Plain text of a rich-text snapshot (embeds as U+FFFC). */
function plain (delta) {
  return (delta?.ops || []).map(o => typeof o.insert === 'string' ? o.insert : '\uFFFC').join('')
}

test('a sharedb client and a y-websocket client edit the same text and converge', async () => {
  const pool = new Clients()
  const sc = shareConnection()
  try {
    const y = pool.add(server, 'ot-basic')
    await synced(y)
    y.text.insert(0, 'hello')
    const doc = sc.connection.get('ot-basic', 't')
    await subscribe(doc)
    await waitFor(() => plain(doc.data) === 'hello', () => `sharedb sees ${JSON.stringify(doc.data)}`)
    assert.equal(doc.type.uri, 'http://sharejs.org/types/rich-text/v1')
    await submit(doc, new Delta().retain(5).insert(' world 😀'))
    await waitFor(() => y.text.toString() === 'hello world 😀', () => `yjs sees ${y.text.toString()}`)
    y.text.insert(0, '> ')
    await waitFor(() => plain(doc.data) === '> hello world 😀', () => `sharedb sees ${plain(doc.data)}`)
  } finally {
    sc.close()
    pool.destroyAll()
  }
})
