// Presence helpers across real clients through the server: users, cursors kept as Yjs
// relative positions (so they follow concurrent edits), typing that clears itself, and the
// awareness format y-codemirror.next 0.3.6 reads and writes.
import { test, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { Server, Clients, waitFor, Y } from './helpers.mjs'
import { Presence, ApiClient } from '../dist/index.js'

let server
before(async () => { server = await new Server().start() })
after(async () => { await server?.dispose() })

async function three (clients, name) {
  const cs = [clients.add(server, name), clients.add(server, name), clients.add(server, name)]
  await Promise.all(cs.map(c => c.provider.whenSynced()))
  return cs
}

test('peers see each other\'s user and cursor, and a cursor follows a concurrent insert before it', async () => {
  const clients = new Clients()
  const presences = []
  try {
    const [a, b, c] = await three(clients, 'presence-cursor')
    const pa = new Presence(a.provider, { user: { name: 'Ann', color: '#ff0000' } })
    const pb = new Presence(b.provider, { user: { name: 'Bob', color: '#00ff00', colorLight: '#00ff0033' } })
    presences.push(pa, pb)
    a.text.insert(0, 'hello world')
    await waitFor(() => b.text.toString() === 'hello world' && c.text.toString() === 'hello world', 'the text everywhere')

    // A state of clock 0 (y-websocket's initial `{}`) is ignored by peers (y-protocols'
    // `applyAwarenessUpdate` wants a newer clock), so the third client says something.
    c.awareness.setLocalStateField('note', 'no user, no cursor')
    pa.setCursor(a.text, 6, 11) // selects "world"
    const seen = []
    const stop = pb.subscribe(b.text, peers => seen.push(peers))
    const annAt = (anchor, head) => () => {
      const ann = pb.peers(b.text).find(p => p.user?.name === 'Ann')
      return ann?.cursor?.anchor === anchor && ann.cursor.head === head
    }
    await waitFor(() => annAt(6, 11)() && pb.peers().length === 2, () => `Bob to see Ann's selection at 6..11 and the third client: ${JSON.stringify(pb.peers(b.text))}`)
    const peers = pb.peers(b.text)
    assert.equal(peers.length, 2, 'Ann and the third client; never Bob himself')
    assert.ok(peers.every(p => p.clientId !== b.doc.clientID))
    assert.deepEqual(peers.find(p => p.clientId === a.doc.clientID),
      { clientId: a.doc.clientID, user: { name: 'Ann', color: '#ff0000' }, typing: false, cursor: { anchor: 6, head: 11 } })
    assert.deepEqual(peers.find(p => p.clientId === c.doc.clientID), { clientId: c.doc.clientID, user: null, typing: false, cursor: null })

    // Someone else types before the selection: it still covers "world".
    c.text.insert(0, '>>> ')
    await waitFor(annAt(10, 15), () => `Ann's selection to move to 10..15: ${JSON.stringify(pb.peers(b.text))}`)
    assert.equal(b.text.toString().slice(10, 15), 'world')
    assert.ok(seen.some(ps => ps.find(p => p.clientId === a.doc.clientID)?.cursor?.anchor === 10), 'the subscription saw the move')

    // Ann sees Bob's user with colorLight; a cursor in another text is no cursor in this one.
    await waitFor(() => pa.peers().some(p => p.user?.colorLight === '#00ff0033'), 'Ann to see Bob\'s user')
    pb.setCursor(b.doc.getText('other'), 0)
    await waitFor(() => pa.peers(a.text).find(p => p.clientId === b.doc.clientID)?.cursor === null &&
      pa.peers().find(p => p.clientId === b.doc.clientID)?.cursor?.anchor === 0, 'Bob\'s cursor in the other text')

    pa.clearCursor()
    await waitFor(() => pb.peers(b.text).find(p => p.clientId === a.doc.clientID)?.cursor === null, 'Ann\'s cursor cleared')
    stop()
    const count = seen.length
    pa.setCursor(a.text, 1)
    await waitFor(annAt(1, 1), 'Ann\'s new cursor')
    assert.equal(seen.length, count, 'no calls after unsubscribing')

    // A peer that leaves is gone from the list.
    const left = []
    pb.subscribe(b.text, ps => left.push(ps.map(p => p.clientId)))
    c.provider.destroy()
    await waitFor(() => left.at(-1)?.length === 1 && left.at(-1)[0] === a.doc.clientID, () => `the third client to leave: ${JSON.stringify(left.at(-1))}`)
  } finally {
    for (const p of presences) p.destroy()
    clients.destroyAll()
  }
})

test('typing shows up for peers and clears by itself after the timeout', async () => {
  const clients = new Clients()
  const presences = []
  try {
    const [a, b] = await three(clients, 'presence-typing')
    const pa = new Presence(a.provider, { user: { name: 'Ann', color: '#f00' }, typingTimeoutMs: 400 })
    const pb = new Presence(b.awareness) // an Awareness works as well as a provider
    presences.push(pa, pb)
    const typing = () => pb.peers().find(p => p.clientId === a.doc.clientID)?.typing
    const started = Date.now()
    pa.setTyping()
    await waitFor(() => typing() === true, 'Bob to see Ann typing')
    pa.setTyping() // still typing: the timer restarts
    const renewed = Date.now()
    await waitFor(() => typing() === false, 'typing to clear by itself', 5000)
    assert.ok(Date.now() - renewed >= 350, `cleared ${Date.now() - renewed} ms after the last keystroke`)
    assert.ok(Date.now() - started >= 350)
    assert.equal(a.awareness.getLocalState().typing, false)
  } finally {
    for (const p of presences) p.destroy()
    clients.destroyAll()
  }
})

test('cursors use y-codemirror.next\'s awareness format, in both directions', async () => {
  const clients = new Clients()
  const presences = []
  try {
    const [a, b] = await three(clients, 'presence-codemirror')
    const pa = new Presence(a.provider, { user: { name: 'Ann', color: '#f00' } })
    presences.push(pa)
    a.text.insert(0, 'CodeMirror and the SDK')
    await waitFor(() => b.text.toString() === 'CodeMirror and the SDK', 'the text at b')

    // What the SDK writes is what y-codemirror.next writes (y-remote-selections.js:166–171:
    // `cursor: {anchor, head}` with `Y.createRelativePositionFromTypeIndex` results).
    pa.setCursor(a.text, 4, 10)
    const local = a.awareness.getLocalState().cursor
    assert.equal(JSON.stringify(local.anchor), JSON.stringify(Y.createRelativePositionFromTypeIndex(a.text, 4)))
    assert.equal(JSON.stringify(local.head), JSON.stringify(Y.createRelativePositionFromTypeIndex(a.text, 10)))

    // y-codemirror.next reading the SDK's cursor (y-remote-selections.js:184–192): the remote
    // JSON goes straight into `createAbsolutePositionFromRelativePosition`.
    await waitFor(() => b.awareness.getStates().get(a.doc.clientID)?.cursor != null, 'Ann\'s cursor at b')
    const remote = b.awareness.getStates().get(a.doc.clientID).cursor
    const anchor = Y.createAbsolutePositionFromRelativePosition(remote.anchor, b.doc)
    const head = Y.createAbsolutePositionFromRelativePosition(remote.head, b.doc)
    assert.equal(anchor.type, b.text)
    assert.equal(head.type, b.text)
    assert.deepEqual([anchor.index, head.index], [4, 10])

    // The SDK reading what y-codemirror.next writes: RelativePosition objects, cursor at the end.
    b.awareness.setLocalStateField('user', { name: 'CM', color: '#30bced' })
    b.awareness.setLocalStateField('cursor', {
      anchor: Y.createRelativePositionFromTypeIndex(b.text, 0),
      head: Y.createRelativePositionFromTypeIndex(b.text, b.text.length)
    })
    const cm = () => pa.peers(a.text).find(p => p.clientId === b.doc.clientID)
    await waitFor(() => cm()?.cursor?.head === 22, () => `the CodeMirror cursor at a: ${JSON.stringify(cm())}`)
    assert.deepEqual(cm(), { clientId: b.doc.clientID, user: { name: 'CM', color: '#30bced' }, typing: false, cursor: { anchor: 0, head: 22 } })

    // The REST presence shows the same fields.
    const rest = await new ApiClient(server.http).presence('presence-codemirror')
    const ann = rest.find(p => p.client_id === a.doc.clientID)
    assert.deepEqual(ann.user, { name: 'Ann', color: '#f00' })
    assert.deepEqual(ann.cursor, JSON.parse(JSON.stringify(local)))
  } finally {
    for (const p of presences) p.destroy()
    clients.destroyAll()
  }
})

test('malformed peer states do not break peers()', async () => {
  const doc = new Y.Doc()
  const { Awareness, applyAwarenessUpdate, encodeAwarenessUpdate } = await import('y-protocols/awareness')
  const mine = new Awareness(doc)
  const theirs = new Awareness(new Y.Doc())
  theirs.setLocalState({ user: 'not an object', cursor: { anchor: { item: { client: 'x' } }, head: 5 }, typing: 'yes' })
  applyAwarenessUpdate(mine, encodeAwarenessUpdate(theirs, [theirs.clientID]), 'test')
  const p = new Presence(mine)
  try {
    assert.deepEqual(p.peers(doc.getText('t')), [{ clientId: theirs.clientID, user: null, typing: false, cursor: null }])
  } finally {
    p.destroy()
    mine.destroy()
    theirs.destroy()
  }
})
