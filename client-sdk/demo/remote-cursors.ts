// Remote cursors and selections in CodeMirror, and publishing the local one, through the
// SDK's `Presence`. It draws what y-codemirror.next 0.3.6's `yRemoteSelections` draws, with
// the same DOM and class names (so upstream's `yRemoteSelectionsTheme` styles it), but reads
// peers from `Presence` and fixes one upstream behaviour: upstream's caret widget compares
// colours only, and CodeMirror keeps a widget's DOM while `eq` holds, so a peer who renamed
// themselves kept their old label until their colour changed. The awareness fields are the
// ones y-codemirror writes (see the SDK's presence.ts), so editors using stock y-codemirror
// see these cursors and the other way round.
import { Decoration, EditorView, ViewPlugin, WidgetType, type DecorationSet, type ViewUpdate } from '@codemirror/view'
import { Annotation, type Range, type Text } from '@codemirror/state'
import { yRemoteSelectionsTheme } from 'y-codemirror.next'
import { Y, type Presence } from '../src/index.js'

class CaretWidget extends WidgetType {
  constructor (readonly color: string, readonly name: string) { super() }

  toDOM (): HTMLElement {
    const caret = document.createElement('span')
    caret.className = 'cm-ySelectionCaret'
    caret.style.backgroundColor = caret.style.borderColor = this.color
    const dot = document.createElement('div')
    dot.className = 'cm-ySelectionCaretDot'
    const info = document.createElement('div')
    info.className = 'cm-ySelectionInfo'
    info.textContent = this.name
    // Word joiners around the parts, as upstream: they keep the caret from breaking a line.
    caret.append('\u2060', dot, '\u2060', info, '\u2060')
    return caret
  }

  override eq (other: WidgetType): boolean {
    return other instanceof CaretWidget && other.color === this.color && other.name === this.name
  }

  override get estimatedHeight () { return -1 }

  override ignoreEvent () { return true }
}

/** Marks a transaction that only asks for the remote cursors to be drawn again. */
const redraw = Annotation.define<null>()

export function remoteCursors (ytext: Y.Text, presence: Presence) {
  const awareness = presence.awareness
  const plugin = ViewPlugin.fromClass(class {
    decorations: DecorationSet = Decoration.none
    private readonly onChange: (change: { added: number[], updated: number[], removed: number[] }) => void

    constructor (readonly view: EditorView) {
      // Only others' changes: the local cursor is set during an update (below), and a
      // dispatch from inside an update is not allowed.
      this.onChange = ({ added, updated, removed }) => {
        if ([...added, ...updated, ...removed].some(id => id !== awareness.clientID)) {
          view.dispatch({ annotations: redraw.of(null) })
        }
      }
      awareness.on('change', this.onChange)
    }

    destroy () {
      awareness.off('change', this.onChange)
    }

    update (update: ViewUpdate) {
      this.publishLocal(update)
      this.decorations = this.remote(update.state.doc)
    }

    /** Shares the local selection (as relative positions) while this editor has the focus. */
    private publishLocal (update: ViewUpdate) {
      if (!update.view.hasFocus || !document.hasFocus()) return
      const { anchor, head } = update.state.selection.main
      const current = awareness.getLocalState()?.cursor
      const same = (json: unknown, index: number) => json != null &&
        Y.compareRelativePositions(Y.createRelativePositionFromJSON(json), Y.createRelativePositionFromTypeIndex(ytext, index))
      if (!same(current?.anchor, anchor) || !same(current?.head, head)) presence.setCursor(ytext, anchor, head)
    }

    private remote (doc: Text): DecorationSet {
      const decorations: Array<Range<Decoration>> = []
      for (const peer of presence.peers(ytext)) {
        if (peer.user === null || peer.cursor === null) continue
        const { color, name } = peer.user
        const colorLight = peer.user.colorLight ?? color + '33'
        // The text and the editor agree here (y-codemirror's sync runs first); clamp anyway.
        const anchor = Math.min(peer.cursor.anchor, doc.length)
        const head = Math.min(peer.cursor.head, doc.length)
        const from = Math.min(anchor, head)
        const to = Math.max(anchor, head)
        const mark = Decoration.mark({ attributes: { style: `background-color: ${colorLight}` }, class: 'cm-ySelection' })
        const first = doc.lineAt(from)
        const last = doc.lineAt(to)
        if (from < to) {
          if (first.number === last.number) {
            decorations.push(mark.range(from, to))
          } else {
            if (from < first.to) decorations.push(mark.range(from, first.to))
            if (last.from < to) decorations.push(mark.range(last.from, to))
            const line = Decoration.line({ attributes: { style: `background-color: ${colorLight}`, class: 'cm-yLineSelection' } })
            for (let n = first.number + 1; n < last.number; n++) decorations.push(line.range(doc.line(n).from))
          }
        }
        // The caret outside the selection, so that the local cursor is not drawn inside it.
        decorations.push(Decoration.widget({ side: head - anchor > 0 ? -1 : 1, widget: new CaretWidget(color, name) }).range(head))
      }
      return Decoration.set(decorations, true)
    }
  }, { decorations: v => v.decorations })
  return [yRemoteSelectionsTheme, plugin]
}
