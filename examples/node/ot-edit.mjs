// An OT client edits a text that a Yjs client shares.
//
// The OT client (`OtClient`, on the stock sharedb client with the rich-text type) inserts,
// deletes, replaces and formats through ws://…/api/ot; a Yjs client (`YserveProvider`, on
// y-websocket) on the same document sees every change, and its own edit reaches the OT
// client as an op. The REST API shows the same text at the end.
//
//   node ot-edit.mjs [ws://127.0.0.1:1234]        (or YSERVE_URL; YSERVE_TOKEN if needed)
//
// Exits 0 when both sides ended with the same text, 1 otherwise.
import WebSocket from 'ws'
import { Y, YserveProvider, OtClient, ApiClient } from '@yserve/client'
import { wsUrl, httpUrl, token, docName, step, log, check, waitFor, run } from './common.mjs'

const name = docName('ot-edit')
const TEXT = 't' // the root text: ydoc.getText('t') on the Yjs side, id 't' on the OT side

run(async () => {
  console.log(`server ${wsUrl}, document '${name}', text '${TEXT}'`)

  step('A Yjs client joins the document')
  const ydoc = new Y.Doc()
  const ytext = ydoc.getText(TEXT)
  const provider = new YserveProvider(wsUrl, name, ydoc, { token, WebSocketPolyfill: WebSocket })
  await provider.whenSynced()
  log(`yjs: synced, text ${JSON.stringify(ytext.toString())}`)
  ytext.observe(event => {
    if (!event.transaction.local) log(`yjs: received ${JSON.stringify(event.delta)} -> ${JSON.stringify(ytext.toString())}`)
  })

  step('An OT client opens the same text')
  const ot = new OtClient(wsUrl, { token, WebSocket })
  const text = await ot.openText(name, TEXT)
  log(`ot: version ${text.version}, text ${JSON.stringify(text.value)}`)
  text.on('op', (ops, { local }) => {
    log(`ot: ${local ? 'local' : 'remote'} op ${JSON.stringify(ops)} -> ${JSON.stringify(text.value)}`)
  })

  // Each OT edit is sent, transformed and committed by the server, then reaches the Yjs
  // client as an ordinary update. Waiting for the Yjs side after each one keeps the printed
  // log in order; the OT client itself could go on typing without waiting.
  const bothSee = async (expected, what) => {
    check(text.value === expected, () => `ot text ${JSON.stringify(text.value)}, expected ${JSON.stringify(expected)} after ${what}`)
    await waitFor(() => ytext.toString() === expected, () => `the Yjs client to see ${JSON.stringify(expected)} after ${what}; it has ${JSON.stringify(ytext.toString())}`)
  }

  step('INSERT: "Hello world" at 0')
  await text.insert(0, 'Hello world')
  await bothSee('Hello world', 'the insert')

  step('DELETE: 6 characters at 5 (" world")')
  await text.delete(5, 6)
  await bothSee('Hello', 'the delete')

  step('REPLACE: the 5 characters at 0 with "Howdy"')
  await text.replace(0, 5, 'Howdy')
  await bothSee('Howdy', 'the replace')

  step('A raw Quill Delta: RETAIN 5, INSERT " partner" in bold')
  await text.submit([{ retain: 5 }, { insert: ' partner', attributes: { bold: true } }])
  await bothSee('Howdy partner', 'the formatted insert')

  step('Formatting only: italic on the 5 characters at 0, i.e. RETAIN 5 with {italic: true}')
  await text.format(0, 5, { italic: true })
  check(text.value === 'Howdy partner', 'formatting not to change the text')
  await waitFor(() => ytext.toDelta().some(d => d.attributes?.italic), 'the Yjs client to see the italic formatting')
  log(`yjs: formatted text ${JSON.stringify(ytext.toDelta())}`)

  step('The Yjs client types "!" at the end; the OT client receives it as an op')
  // Y.Text gives an insert without attributes the formatting of the text before it, so the
  // op arrives as a bold "!", as it would in a Yjs editor.
  ytext.insert(ytext.length, '!')
  await waitFor(() => text.value === 'Howdy partner!', () => `the OT client to see the Yjs edit; it has ${JSON.stringify(text.value)}`)

  step('The REST API renders the same document')
  const api = new ApiClient(httpUrl, { token })
  const json = await api.json(name)
  log(`GET /api/docs/{name}/json -> ${JSON.stringify(json)}`)
  check(json[TEXT] === 'Howdy partner!', () => `REST /json shows ${JSON.stringify(json)}`)

  console.log(`\nfinal text: ${JSON.stringify(text.value)} (OT version ${text.version}); Yjs: ${JSON.stringify(ytext.toString())}`)
  check(text.value === ytext.toString(), 'the OT and Yjs texts to be equal')

  await text.close()
  ot.close()
  provider.destroy()
  ydoc.destroy()
  console.log('ok: the OT client and the Yjs client converged')
})
