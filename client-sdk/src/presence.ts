// Presence helpers over y-protocols awareness: who is here, where their cursor is, whether
// they are typing.
//
// The awareness fields are the ones y-codemirror.next 0.3.6 writes and reads
// (`src/y-remote-selections.js`), so SDK clients and CodeMirror editors see each other:
// - `user: {name, color, colorLight?}`;
// - `cursor: {anchor, head}`, each a Yjs `RelativePosition` as JSON (`{type, tname, item,
//   assoc}`, absent parts `null`; y-codemirror passes them straight to
//   `createAbsolutePositionFromRelativePosition`, which needs the `null`s), or `null`.
// Relative positions name the character they sit before, so a peer's cursor stays on the
// same character whatever was inserted or deleted before it.
// `typing: boolean` is this SDK's own field.

import * as Y from 'yjs'
import type { Awareness } from 'y-protocols/awareness'

export interface PresenceUser {
  name: string
  color: string
  /** The selection colour; y-codemirror uses `color + '33'` without it. */
  colorLight?: string
}

export interface Peer {
  clientId: number
  user: PresenceUser | null
  typing: boolean
  /** Absolute indexes in the text (UTF-16 units); `null` without a cursor in that text. */
  cursor: { anchor: number, head: number } | null
}

export interface PresenceOptions {
  user?: PresenceUser
  /** `typing` goes back to false this long after the last `setTyping()` (default 3000 ms). */
  typingTimeoutMs?: number
}

type RelativePositionJSON = { type: unknown, tname: unknown, item: unknown, assoc: unknown }

/** The JSON of a relative position with every field present, as `JSON.stringify` writes it. */
function toJSON (rpos: Y.RelativePosition): RelativePositionJSON {
  return { type: rpos.type, tname: rpos.tname, item: rpos.item, assoc: rpos.assoc }
}

export class Presence {
  readonly awareness: Awareness
  private readonly typingTimeoutMs: number
  private typingTimer: ReturnType<typeof setTimeout> | null = null
  private readonly unsubscribers = new Set<() => void>()

  /** `source`: a provider (anything with an `awareness`) or an `Awareness`. */
  constructor (source: { awareness: Awareness } | Awareness, opts: PresenceOptions = {}) {
    this.awareness = 'awareness' in source ? source.awareness : source
    this.typingTimeoutMs = opts.typingTimeoutMs ?? 3000
    if (opts.user !== undefined) this.setUser(opts.user)
  }

  setUser (user: PresenceUser): void {
    this.awareness.setLocalStateField('user', { ...user })
  }

  /** The local cursor (a selection when `head !== anchor`) in `ytext`, at UTF-16 indexes. */
  setCursor (ytext: Y.Text, anchor: number, head: number = anchor): void {
    this.awareness.setLocalStateField('cursor', {
      anchor: toJSON(Y.createRelativePositionFromTypeIndex(ytext, anchor)),
      head: toJSON(Y.createRelativePositionFromTypeIndex(ytext, head))
    })
  }

  clearCursor (): void {
    this.awareness.setLocalStateField('cursor', null)
  }

  /** Marks the local user as typing; it clears itself `typingTimeoutMs` after the last call. */
  setTyping (): void {
    if (this.typingTimer !== null) clearTimeout(this.typingTimer)
    // Awareness broadcasts only real changes, so repeated calls while typing cost nothing.
    if (this.awareness.getLocalState()?.typing !== true) this.awareness.setLocalStateField('typing', true)
    this.typingTimer = setTimeout(() => {
      this.typingTimer = null
      this.awareness.setLocalStateField('typing', false)
    }, this.typingTimeoutMs)
  }

  /**
   * The other clients (not this one), with their cursors resolved against the current
   * document: in `ytext` if given (a cursor in another text is `null` then), else in
   * whichever type it points into.
   */
  peers (ytext?: Y.Text): Peer[] {
    const doc = this.awareness.doc
    const peers: Peer[] = []
    for (const [clientId, state] of this.awareness.getStates()) {
      if (clientId === this.awareness.clientID) continue
      peers.push({
        clientId,
        user: userOf(state.user),
        typing: state.typing === true,
        cursor: cursorOf(state.cursor, doc, ytext)
      })
    }
    return peers.sort((a, b) => a.clientId - b.clientId)
  }

  /**
   * Calls `listener` now and whenever the peers change: someone joins, leaves or changes
   * their state, or `ytext` changes (which moves the absolute cursor indexes). Returns the
   * function that stops it.
   */
  subscribe (ytext: Y.Text, listener: (peers: Peer[]) => void): () => void {
    const notify = (): void => listener(this.peers(ytext))
    const onChange = (): void => notify()
    this.awareness.on('change', onChange)
    ytext.observe(onChange)
    const stop = (): void => {
      if (!this.unsubscribers.delete(stop)) return
      this.awareness.off('change', onChange)
      ytext.unobserve(onChange)
    }
    this.unsubscribers.add(stop)
    notify()
    return stop
  }

  /** Stops every subscription and the typing timer (clearing `typing` if it was set). */
  destroy (): void {
    for (const stop of [...this.unsubscribers]) stop()
    if (this.typingTimer !== null) {
      clearTimeout(this.typingTimer)
      this.typingTimer = null
      this.awareness.setLocalStateField('typing', false)
    }
  }
}

function userOf (user: unknown): PresenceUser | null {
  if (user === null || typeof user !== 'object') return null
  const u = user as Record<string, unknown>
  if (typeof u.name !== 'string') return null
  const out: PresenceUser = { name: u.name, color: typeof u.color === 'string' ? u.color : '#30bced' }
  if (typeof u.colorLight === 'string') out.colorLight = u.colorLight
  return out
}

function cursorOf (cursor: unknown, doc: Y.Doc, ytext: Y.Text | undefined): Peer['cursor'] {
  if (cursor === null || typeof cursor !== 'object') return null
  const { anchor, head } = cursor as { anchor?: unknown, head?: unknown }
  if (anchor == null || head == null) return null
  try {
    // `createRelativePositionFromJSON` also accepts JSON with absent fields.
    const a = Y.createAbsolutePositionFromRelativePosition(Y.createRelativePositionFromJSON(anchor), doc)
    const h = Y.createAbsolutePositionFromRelativePosition(Y.createRelativePositionFromJSON(head), doc)
    // `null`: it points at an item this document does not have yet.
    if (a === null || h === null) return null
    if (ytext !== undefined && (a.type !== ytext || h.type !== ytext)) return null
    return { anchor: a.index, head: h.index }
  } catch {
    // A peer's state is untrusted input; a malformed position is no cursor.
    return null
  }
}
