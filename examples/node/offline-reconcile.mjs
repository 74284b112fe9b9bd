// Offline edits reconciled on reconnect.
//
// Two Yjs clients (`YserveProvider`, on y-websocket) share a text. Bob goes offline; Alice
// and Bob both edit, concurrently. When Bob reconnects, his provider uploads his offline
// edits in the sync handshake, the server merges and relays them, and both documents
// converge on the same text without losing either side's edits.
//
//   node offline-reconcile.mjs [ws://127.0.0.1:1234]   (or YSERVE_URL; YSERVE_TOKEN if needed)
//
// Exits 0 when both clients (and the server) ended with the same text holding every edit.
import WebSocket from 'ws'
import { Y, YserveProvider, ApiClient } from '@yserve/client'
import { wsUrl, httpUrl, token, docName, step, log, check, waitFor, run } from './common.mjs'

const name = docName('offline')
const TEXT = 't'

function client (who) {
  const doc = new Y.Doc()
  // disableBc: y-websocket also syncs providers of the same document within one process (or
  // one browser) over BroadcastChannel. Alice and Bob share this process, so that would let
  // them sync without the server; here everything has to go through it.
  const provider = new YserveProvider(wsUrl, name, doc, { token, WebSocketPolyfill: WebSocket, disableBc: true })
  const text = doc.getText(TEXT)
  provider.on('status', ({ status }) => log(`${who}: ${status}`))
  // The provider counts local changes the server has not confirmed (committed) yet.
  provider.on('unsynced', count => log(`${who}: ${count} local change(s) not yet committed by the server`))
  return { who, doc, provider, text }
}

const show = c => `${c.who}: ${JSON.stringify(c.text.toString())}`

run(async () => {
  console.log(`server ${wsUrl}, document '${name}'`)
  const api = new ApiClient(httpUrl, { token })
  const serverText = async () => (await api.json(name))[TEXT] ?? ''

  step('Alice and Bob connect and sync')
  const alice = client('alice')
  const bob = client('bob')
  await Promise.all([alice.provider.whenSynced(), bob.provider.whenSynced()])
  alice.text.insert(0, 'The quick fox jumps over the dog.')
  await waitFor(() => bob.text.toString() === alice.text.toString(), 'bob to receive alice\'s first line')
  log(show(alice))
  log(show(bob))

  step('Bob goes offline')
  bob.provider.disconnect()
  await waitFor(() => bob.provider.status === 'disconnected', 'bob to be disconnected')

  step('Both edit concurrently')
  // Alice, online: "quick" -> "quick brown". The server commits it and has it at once.
  alice.text.insert('The quick'.length, ' brown')
  // Bob, offline: "dog" -> "lazy dog", and an exclamation mark instead of the full stop.
  // These stay in his document (and would stay in IndexedDB in a browser) until he reconnects.
  const bobText = bob.text.toString()
  bob.text.insert(bobText.indexOf('dog'), 'lazy ')
  bob.text.delete(bob.text.length - 1, 1)
  bob.text.insert(bob.text.length, '!')
  log(show(alice))
  log(show(bob))
  await waitFor(async () => (await serverText()).includes('brown'), 'the server to have alice\'s edit')
  const before = await serverText()
  log(`server: ${JSON.stringify(before)} (it has alice's edit, not bob's)`)
  check(!before.includes('lazy'), 'bob\'s offline edit not to reach the server while he is offline')
  check(alice.text.toString() !== bob.text.toString(), 'the two documents to differ while bob is offline')

  step('Bob reconnects: his offline edits go up in the handshake, alice\'s come down')
  log(`bob: ${bob.provider.unsyncedChanges} change(s) waiting for the server`)
  bob.provider.connect()
  await bob.provider.whenSynced()
  await bob.provider.whenConfirmed()
  log('bob: the server has committed all of his offline changes')
  const expected = 'The quick brown fox jumps over the lazy dog!'
  await waitFor(
    () => alice.text.toString() === expected && bob.text.toString() === expected,
    () => `both to converge on ${JSON.stringify(expected)}; ${show(alice)}, ${show(bob)}`
  )
  log(show(alice))
  log(show(bob))
  const after = await serverText()
  log(`server: ${JSON.stringify(after)}`)
  check(after === expected, () => `the server to hold ${JSON.stringify(expected)}, it has ${JSON.stringify(after)}`)

  step('The update log: who wrote what (GET /api/docs/{name}/history)')
  const history = await api.history(name)
  for (const e of history.entries) log(`seq ${e.seq}  ${e.time}  ${e.origin}  ${e.size} bytes`)

  for (const c of [alice, bob]) {
    c.provider.destroy()
    c.doc.destroy()
  }
  console.log(`\nfinal text: ${JSON.stringify(expected)}`)
  console.log('ok: the offline edits were reconciled and both clients converged')
})
