// The yserve demo editor, served by `yserve serve` at `/` (built into ../../src/demo/ by
// `npm run build:demo`). One document (`?doc=NAME`, default `demo`; `?token=JWT` when the
// server wants one), in three panels. Two edit its root text (`ydoc.getText('text')`):
// CodeMirror 6 over Yjs (sync and undo from y-codemirror.next, remote cursors and selections
// from the SDK's `Presence`, drawn by ./remote-cursors.ts) and a plain <textarea> over the OT
// client. The third, ProseMirror over the stock `@hocuspocus/provider` (./prosemirror.ts),
// edits the same document's root `Y.XmlFragment` `prosemirror`: a root name holds one type.
import './style.css'
import { EditorView, keymap, lineNumbers, highlightActiveLine, highlightActiveLineGutter, highlightSpecialChars, drawSelection, placeholder } from '@codemirror/view'
import { EditorState } from '@codemirror/state'
import { defaultKeymap, indentWithTab } from '@codemirror/commands'
import { yCollab, yUndoManagerKeymap, ySyncAnnotation } from 'y-codemirror.next'
import { Y, YserveProvider, Presence, OtClient, type Peer } from '../src/index.js'
import { bindTextarea } from './textarea'
import { remoteCursors } from './remote-cursors'
import { prosemirrorPanel, PROSEMIRROR_ROOT, isPanelState } from './prosemirror'

/** The root `Y.Text` both panels edit: `ydoc.getText(ROOT)`, and OT text id `ROOT`. */
const ROOT = 'text'

const params = new URLSearchParams(location.search)
const docName = params.get('doc') || 'demo'
const token = params.get('token') || undefined
const serverUrl = serverBase()

const $ = <T extends HTMLElement = HTMLElement>(id: string) => document.getElementById(id) as T

// --- Identity ---------------------------------------------------------------------------

interface User { name: string, color: string }
const COLORS = ['#e5484d', '#f76b15', '#ad7f00', '#30a46c', '#12a594', '#0090ff', '#6e56cf', '#d6409f']
const NAMES = ['Ada', 'Alan', 'Barbara', 'Edsger', 'Frances', 'Grace', 'Ken', 'Leslie', 'Margaret', 'Radia', 'Tony', 'Niklaus']
// Per tab (sessionStorage), so two tabs of one browser are two people; kept across reloads.
const USER_KEY = 'yserve-demo-user'

function loadUser (): User {
  try {
    const saved = JSON.parse(sessionStorage.getItem(USER_KEY) || 'null')
    if (saved && typeof saved.name === 'string' && /^#[0-9a-f]{6}$/i.test(saved.color)) return saved
  } catch {}
  const pick = <T>(list: T[]) => list[Math.floor(Math.random() * list.length)]
  return { name: `${pick(NAMES)} ${Math.floor(Math.random() * 90) + 10}`, color: pick(COLORS) }
}

function saveUser (user: User) {
  try { sessionStorage.setItem(USER_KEY, JSON.stringify(user)) } catch {}
}

// --- Yjs: document, provider, presence -----------------------------------------------------

const ydoc = new Y.Doc()
const ytext = ydoc.getText(ROOT)
// `?offline=1`: keep the document in IndexedDB too, so a reload while offline keeps its edits.
const provider = new YserveProvider(serverUrl, docName, ydoc, { token, offline: params.has('offline') })
let user = loadUser()
const presence = new Presence(provider, { user: withLight(user) })

function withLight (u: User) {
  // y-codemirror.next paints remote selections with `colorLight`.
  return { name: u.name, color: u.color, colorLight: u.color + '33' }
}

$('doc-name').textContent = docName
$('root-name').textContent = ROOT
const nameInput = $<HTMLInputElement>('user-name')
const colorInput = $<HTMLInputElement>('user-color')
nameInput.value = user.name
colorInput.value = user.color
const onUserEdit = () => {
  user = { name: nameInput.value.trim().slice(0, 40) || 'Anonymous', color: colorInput.value }
  saveUser(user)
  presence.setUser(withLight(user))
  pm.setUser(user)
}
nameInput.addEventListener('input', onUserEdit)
colorInput.addEventListener('input', onUserEdit)
saveUser(user)

// --- Connection status -------------------------------------------------------------------

const statusEl = $('status')
const unsyncedEl = $('unsynced')

function renderStatus () {
  const status = provider.status
  const state = !navigator.onLine ? 'offline' : status === 'connected' && !provider.synced ? 'syncing' : status
  statusEl.dataset.status = state
  statusEl.textContent = {
    connected: 'connected',
    syncing: 'syncing…',
    connecting: 'connecting…',
    disconnected: 'disconnected',
    offline: 'offline'
  }[state]
  // Changes the server has not confirmed (committed) yet: typed while offline, or in flight.
  const unsynced = provider.unsyncedChanges
  unsyncedEl.dataset.unsynced = String(unsynced)
  unsyncedEl.textContent = unsynced === 0 ? 'all changes saved' : `${unsynced} unsaved change${unsynced === 1 ? '' : 's'}`
}

provider.on('status', renderStatus)
provider.on('sync', renderStatus)
provider.on('unsynced', renderStatus)
renderStatus()

// Going offline does not close open WebSockets: Chromium's emulated offline (devtools, tests)
// holds their frames, and after a real outage a socket looks open until TCP gives up. So the
// page follows the browser's own signal: the Yjs panel disconnects at once, counts what it
// has not sent, and reconnects when the network is back. (The OT client has no pause; its
// socket's frames wait with it, and it reconnects by itself if the socket drops.)
// The ProseMirror panel's provider likewise.
window.addEventListener('offline', () => { provider.disconnect(); pm.pause(); renderStatus(); renderOtStatus(); renderPmStatus() })
window.addEventListener('online', () => { provider.connect(); pm.resume(); renderStatus(); renderOtStatus(); renderPmStatus() })

// --- CodeMirror over Yjs -------------------------------------------------------------------

const undoManager = new Y.UndoManager(ytext)
const view = new EditorView({
  parent: $('editor'),
  state: EditorState.create({
    doc: ytext.toString(),
    extensions: [
      // Line breaks are `\n` only, so a `\r` (a CRLF from another client) is one character
      // here as it is in the Y.Text: CodeMirror's default reads CRLF as one line break, and
      // y-codemirror's positions would then disagree with the Y.Text's after the first CRLF.
      EditorState.lineSeparator.of('\n'),
      lineNumbers(),
      highlightActiveLineGutter(),
      highlightSpecialChars(),
      drawSelection(),
      highlightActiveLine(),
      EditorView.lineWrapping,
      placeholder('Type here; open this page in a second window to see the other cursor.'),
      // Undo through Yjs (only one's own edits), not CodeMirror's history (which would undo
      // remote edits too).
      keymap.of([...yUndoManagerKeymap, ...defaultKeymap, indentWithTab]),
      // Sync and undo from y-codemirror.next; cursors from `remoteCursors` (no awareness
      // here, or upstream's cursors would be drawn as well).
      yCollab(ytext, null, { undoManager }),
      remoteCursors(ytext, presence),
      EditorView.updateListener.of(update => {
        const local = update.transactions.some(tr => tr.docChanged && tr.annotation(ySyncAnnotation) === undefined)
        if (local) presence.setTyping()
      })
    ]
  })
})

// --- Presence list -------------------------------------------------------------------------

const presenceEl = $('presence')

function peerItem (clientId: number, user: { name: string, color: string }, typing: boolean, self: boolean) {
  const li = document.createElement('li')
  li.className = self ? 'peer self' : 'peer'
  li.dataset.clientId = String(clientId)
  li.dataset.typing = String(typing)
  const swatch = document.createElement('span')
  swatch.className = 'swatch'
  swatch.style.background = user.color
  const name = document.createElement('span')
  name.className = 'name'
  name.textContent = self ? `${user.name} (you)` : user.name
  const indicator = document.createElement('span')
  indicator.className = 'typing'
  indicator.textContent = typing ? 'typing…' : ''
  li.append(swatch, name, indicator)
  return li
}

// `subscribe` reports the others; this page's own entry comes from its local state. The
// ProseMirror panels' awareness states (this page's one too) reach the y-websocket provider
// as well, under their own client ids: a person is listed once, by their page's Yjs client.
const isPanelPeer = (clientId: number) => isPanelState(provider.awareness.getStates().get(clientId))
presence.subscribe(ytext, (peers: Peer[]) => {
  const local = provider.awareness.getLocalState()
  const others = peers
    .filter(p => p.user !== null && !isPanelPeer(p.clientId))
    .sort((a, b) => a.user!.name.localeCompare(b.user!.name) || a.clientId - b.clientId)
  presenceEl.replaceChildren(
    peerItem(ydoc.clientID, user, local?.typing === true, true),
    ...others.map(p => peerItem(p.clientId, p.user!, p.typing, false))
  )
  $('presence-count').textContent = String(others.length + 1)
})

// --- The OT panel: a plain <textarea> through the OT client ----------------------------------

const ot = new OtClient(serverUrl, { token })
const textarea = $<HTMLTextAreaElement>('ot-text')
const otStatus = $('ot-status')
let otText: Awaited<ReturnType<OtClient['openText']>> | null = null
let otError: string | null = null

function renderOtStatus () {
  // Offline, its socket may still look connected (see the 'offline' listener above).
  const connection = navigator.onLine ? ot.state : 'offline'
  otStatus.dataset.state = otError !== null ? 'error' : otText === null ? 'opening' : connection
  otStatus.textContent = otError ?? (otText === null ? 'opening…' : `${connection}, version ${otText.version}`)
}

ot.on('state', renderOtStatus)
ot.openText(docName, ROOT).then(text => {
  otText = text
  bindTextarea(textarea, text, {
    onLocalEdit: () => presence.setTyping(),
    onError: e => { otError = `refused: ${errorText(e)}`; renderOtStatus() }
  })
  text.on('op', renderOtStatus)
  text.on('load', renderOtStatus)
  textarea.disabled = false
  renderOtStatus()
}, e => {
  otError = `could not open the text: ${errorText(e)}`
  renderOtStatus()
})

// --- The ProseMirror panel: rich text over the stock Hocuspocus provider --------------------

$('pm-root-name').textContent = PROSEMIRROR_ROOT
const pmStatus = $('pm-status')
const pmUnsynced = $('pm-unsynced')

function renderPmStatus () {
  const state = pm.state()
  pmStatus.dataset.status = state
  pmStatus.textContent = state === 'refused'
    ? `refused: ${pm.refusal()}`
    : { connected: 'connected', syncing: 'syncing…', connecting: 'connecting…', disconnected: 'disconnected', offline: 'offline' }[state]
  // The provider's own count: updates sent and not yet answered by SyncStatus, which yserve
  // sends only once the update is committed.
  const unsynced = pm.provider.unsyncedChanges
  pmUnsynced.dataset.unsynced = String(unsynced)
  pmUnsynced.textContent = unsynced === 0 ? 'all changes saved' : `${unsynced} unsynced change${unsynced === 1 ? '' : 's'}`
}

const pm = prosemirrorPanel({
  serverBase: serverUrl,
  docName,
  token,
  user,
  parent: $('pm-editor'),
  onLocalEdit: () => presence.setTyping(),
  onChange: () => renderPmStatus()
})
renderPmStatus()

function errorText (e: unknown) {
  return e instanceof Error ? e.message : typeof e === 'object' && e && 'message' in e ? String((e as any).message) : String(e)
}

/** `ws(s)://host[/prefix]`: the server that served this page, under the same path prefix. */
function serverBase () {
  const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:'
  return `${scheme}//${location.host}${location.pathname.replace(/\/[^/]*$/, '')}`
}

// For debugging in the console and for the browser test; not an API.
Object.assign(window, { yserveDemo: { ydoc, ytext, provider, presence, view, ot, root: ROOT, pm } })
