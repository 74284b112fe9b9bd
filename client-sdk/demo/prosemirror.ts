// The demo's third panel: a rich-text ProseMirror editor over the stock `@hocuspocus/provider`
// (v4), connected to the same server through its Hocuspocus door (`/api/hocuspocus`), on the
// same document as the other two panels. It has its own `Y.Doc`, provider and awareness, as a
// Tiptap app would: nothing here goes through the SDK, so the panel shows that an unmodified
// Hocuspocus client edits the documents y-websocket and OT clients edit.
//
// It edits the root `Y.XmlFragment` `prosemirror` through y-prosemirror's binding (a Tiptap
// app would name it with its Collaboration extension's `field` option, `default` by default).
// Not `text`: a root name has one type per document, and `text` is the other panels' `Y.Text`.
//
// Presence: the awareness state is `{user: {name, color}, cursor, editor: 'prosemirror'}`;
// `cursor` is y-prosemirror's (relative positions in the fragment), drawn by its
// `yCursorPlugin`. `editor` marks the state as this panel's, so the page's presence list
// counts a person once, and ProseMirror draws only ProseMirror cursors (y-prosemirror reads
// every state's `cursor` field, CodeMirror's ones in the `Y.Text` included).
import { HocuspocusProvider } from '@hocuspocus/provider'
import { EditorState, Selection, type Command } from 'prosemirror-state'
import { EditorView } from 'prosemirror-view'
import { schema } from 'prosemirror-schema-basic'
import { keymap } from 'prosemirror-keymap'
import { baseKeymap, toggleMark } from 'prosemirror-commands'
import { ySyncPlugin, ySyncPluginKey, yCursorPlugin, yUndoPlugin, undo, redo } from 'y-prosemirror'
import { Y } from '../src/index.js'

/** The root `Y.XmlFragment` the panel edits: `ydoc.getXmlFragment(PROSEMIRROR_ROOT)`. */
export const PROSEMIRROR_ROOT = 'prosemirror'

/** The awareness field and value that mark a state as a ProseMirror panel's. */
const EDITOR_FIELD = 'editor'
const EDITOR_NAME = 'prosemirror'

/** Whether an awareness state is a ProseMirror panel's (this page's or another's). */
export const isPanelState = (state: Record<string, unknown> | undefined) => state?.[EDITOR_FIELD] === EDITOR_NAME

export interface ProsemirrorPanelOptions {
  /** `ws(s)://host[/prefix]`: the provider connects to `${serverBase}/api/hocuspocus`. */
  serverBase: string
  docName: string
  token: string | undefined
  user: { name: string, color: string }
  parent: HTMLElement
  /** Called on every local edit (the page's typing indicator). */
  onLocalEdit: () => void
  /** Called when the connection state or the unsynced count changes. */
  onChange: () => void
}

export type ProsemirrorState = 'connecting' | 'syncing' | 'connected' | 'disconnected' | 'offline' | 'refused'

export function prosemirrorPanel (opts: ProsemirrorPanelOptions) {
  const ydoc = new Y.Doc()
  const fragment = ydoc.getXmlFragment(PROSEMIRROR_ROOT)
  let refused: string | null = null
  const provider = new HocuspocusProvider({
    url: `${opts.serverBase}/api/hocuspocus`,
    name: opts.docName,
    document: ydoc,
    // The same JWT as the page's `?token=`; `null` sends an empty one, which a server
    // without a key accepts (development mode).
    token: opts.token ?? null,
    onAuthenticationFailed: ({ reason }) => { refused = reason; opts.onChange() },
    onAuthenticated: () => { refused = null; opts.onChange() }
  })
  const awareness = provider.awareness!
  awareness.setLocalStateField(EDITOR_FIELD, EDITOR_NAME)
  setUser(opts.user)
  for (const event of ['status', 'synced', 'unsyncedChanges'] as const) provider.on(event, opts.onChange)

  const view = new EditorView(opts.parent, {
    state: EditorState.create({
      schema,
      plugins: [
        ySyncPlugin(fragment),
        yCursorPlugin(awareness, {
          awarenessStateFilter: (self: number, other: number, state: Record<string, unknown>) => self !== other && isPanelState(state)
        }),
        // Undo through Yjs: only one's own edits, as in the CodeMirror panel.
        yUndoPlugin(),
        keymap({
          'Mod-z': undo,
          'Mod-y': redo,
          'Mod-Shift-z': redo,
          'Mod-b': toggleMark(schema.marks.strong),
          'Mod-i': toggleMark(schema.marks.em),
          'Mod-`': toggleMark(schema.marks.code),
          'Mod-Home': toDocumentEdge('start'),
          'Mod-End': toDocumentEdge('end')
        }),
        keymap(baseKeymap)
      ]
    }),
    // `this`, not `view`: y-prosemirror dispatches while the view is being constructed.
    dispatchTransaction (this: EditorView, tr) {
      this.updateState(this.state.apply(tr))
      // y-prosemirror marks the transactions it makes from Yjs changes (remote ones, undo).
      if (tr.docChanged && tr.getMeta(ySyncPluginKey)?.isChangeOrigin !== true) opts.onLocalEdit()
    }
  })

  function setUser (user: { name: string, color: string }) {
    awareness.setLocalStateField('user', { name: user.name, color: user.color })
  }

  /** The panel's state for the page: its own connection, as the provider reports it. */
  function state (): ProsemirrorState {
    if (refused !== null) return 'refused'
    if (!navigator.onLine) return 'offline'
    const status = provider.configuration.websocketProvider.status
    return status === 'connected' && !provider.isSynced ? 'syncing' : status
  }

  return {
    ydoc,
    fragment,
    provider,
    view,
    state,
    setUser,
    /** Why the server refused the token (`onAuthenticationFailed`), or `null`. */
    refusal: () => refused,
    // See main.ts's 'offline' listener: an offline browser holds open sockets' frames.
    pause: () => provider.disconnect(),
    resume: () => { void provider.connect() }
  }
}

export type ProsemirrorPanel = ReturnType<typeof prosemirrorPanel>

/**
 * Ctrl+Home / Ctrl+End: the caret to the document's start or end, as in the CodeMirror panel.
 * ProseMirror leaves these keys to the browser, and Chromium's contenteditable (as tested,
 * headless on Linux) keeps the caret where it is.
 */
function toDocumentEdge (edge: 'start' | 'end'): Command {
  return (state, dispatch) => {
    const selection = edge === 'start' ? Selection.atStart(state.doc) : Selection.atEnd(state.doc)
    dispatch?.(state.tr.setSelection(selection).scrollIntoView())
    return true
  }
}
