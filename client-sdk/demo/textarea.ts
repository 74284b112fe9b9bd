// The OT panel's plain <textarea> bound to an OT text: local edits become one minimal Quill
// delta (common prefix and suffix kept), remote ops are applied with the caret and the
// selection moved through them. Positions are UTF-16 code units, as the textarea's and the
// server's (SPEC §5) are.
//
// Two spaces of positions meet here. The OT text's: its *display* string (`displayOf`:
// the text with each embed as one U+FFFC, so every OT position is a string index). And the
// textarea's: a textarea normalizes line ends in `.value` (CRLF and a lone CR both read
// back as LF), so a CRLF is 2 units in the text and 1 in the textarea. Diffs are taken in
// the textarea's space (`normalize(display)` against `.value`) and mapped back with
// `toTextIndex`, so an edit touches only what the user changed and CRs elsewhere survive.

export type Op = { retain?: number, insert?: string | object, delete?: number, attributes?: object }

/**
 * The delta that turns `before` into `after`: retain the common prefix, delete what differs,
 * insert its replacement. `[]` when they are equal. The cut never falls inside a surrogate
 * pair: the server refuses ops that would split one (ERR_OT_OP_NOT_APPLIED), and replacing
 * 😀 by 😃 shares the high surrogate.
 */
export function diff (before: string, after: string): Op[] {
  if (before === after) return []
  const max = Math.min(before.length, after.length)
  let prefix = 0
  while (prefix < max && before.charCodeAt(prefix) === after.charCodeAt(prefix)) prefix++
  if (prefix > 0 && isHighSurrogate(before.charCodeAt(prefix - 1))) prefix--
  let suffix = 0
  while (
    suffix < max - prefix &&
    before.charCodeAt(before.length - 1 - suffix) === after.charCodeAt(after.length - 1 - suffix)
  ) suffix++
  if (suffix > 0 && isLowSurrogate(before.charCodeAt(before.length - suffix))) suffix--
  const deleted = before.length - prefix - suffix
  const inserted = after.slice(prefix, after.length - suffix)
  const ops: Op[] = []
  if (prefix > 0) ops.push({ retain: prefix })
  if (inserted.length > 0) ops.push({ insert: inserted })
  if (deleted > 0) ops.push({ delete: deleted })
  return ops
}

/**
 * Where `position` ends up after `ops`, as quill-delta's `transformPosition` without
 * priority: an insert at the position pushes it right, a deletion around it pulls it to the
 * deletion's start.
 */
export function transformPosition (ops: Op[], position: number): number {
  // quill-delta's loop, over whole components: `offset` walks the new text.
  let offset = 0
  for (const op of ops) {
    if (offset > position) break
    if (op.delete !== undefined) {
      position -= Math.min(op.delete, position - offset)
      continue
    }
    const length = op.retain ?? (typeof op.insert === 'string' ? op.insert.length : 1)
    if (op.insert !== undefined) position += length
    offset += length
  }
  return position
}

/** Applies `ops` to `text` (a display string: embeds become U+FFFC, attributes are ignored). */
export function apply (text: string, ops: Op[]): string {
  let out = ''
  let index = 0
  for (const op of ops) {
    if (op.retain !== undefined) {
      out += text.slice(index, index + op.retain)
      index += op.retain
    } else if (op.delete !== undefined) {
      index += op.delete
    } else if (op.insert !== undefined) {
      out += typeof op.insert === 'string' ? op.insert : '\uFFFC'
    }
  }
  return out + text.slice(index)
}

const isHighSurrogate = (c: number) => c >= 0xd800 && c <= 0xdbff
const isLowSurrogate = (c: number) => c >= 0xdc00 && c <= 0xdfff

/** The text as the textarea shows it, in OT positions: embeds as U+FFFC, attributes ignored. */
export function displayOf (contents: readonly Op[]): string {
  let s = ''
  for (const op of contents) {
    if (op.insert !== undefined) s += typeof op.insert === 'string' ? op.insert : '\uFFFC'
  }
  return s
}

/** What a textarea's `.value` reads back after being set to `text`: CRLF and lone CR as LF. */
export function normalize (text: string): string {
  return text.replace(/\r\n?/g, '\n')
}

/** How many units of `text` one unit of `normalize(text)` at `at` stands for (a CRLF: 2). */
const unitAt = (text: string, at: number) => text.charCodeAt(at) === 13 && text.charCodeAt(at + 1) === 10 ? 2 : 1

/** Index `index` of `normalize(text)` (the textarea) as an index of `text` (OT positions). */
export function toTextIndex (text: string, index: number): number {
  let at = 0
  for (let shown = 0; shown < index && at < text.length; shown++) at += unitAt(text, at)
  return at
}

/** Index `index` of `text` as an index of `normalize(text)`; inside a CRLF: after it. */
export function toShownIndex (text: string, index: number): number {
  let shown = 0
  for (let at = 0; at < index && at < text.length; shown++) at += unitAt(text, at)
  return shown
}

/**
 * The delta that turns `text` (OT positions) into what the textarea shows after an edit,
 * `shownAfter` (normalized): the diff is taken in the textarea's space, then its retain and
 * delete are mapped to `text`'s positions. Inserts are what was typed (LF line ends).
 */
export function diffShown (text: string, shownAfter: string): Op[] {
  const ops = diff(normalize(text), shownAfter)
  const out: Op[] = []
  let shown = 0
  for (const op of ops) {
    if (op.retain !== undefined) {
      out.push({ retain: toTextIndex(text, op.retain) })
      shown = op.retain
    } else if (op.delete !== undefined) {
      out.push({ delete: toTextIndex(text, shown + op.delete) - toTextIndex(text, shown) })
    } else {
      out.push(op)
    }
  }
  return out
}

/** What the binding needs of an OT text (the SDK's `OtText`). */
export interface OtTextLike {
  /** The text as a Quill Delta (the SDK's `value` leaves embeds out, so positions would not match). */
  readonly contents: readonly Op[]
  submit (ops: Op[]): Promise<unknown>
  on (event: 'op', fn: (ops: Op[], meta: { local: boolean }) => void): unknown
  on (event: 'load', fn: () => void): unknown
}

/**
 * Binds `textarea` to `text`. `onLocalEdit` runs on each local edit (the page marks the user
 * as typing); `onError` gets refused submissions.
 */
export function bindTextarea (
  textarea: HTMLTextAreaElement,
  text: OtTextLike,
  { onLocalEdit, onError }: { onLocalEdit?: () => void, onError?: (e: unknown) => void } = {}
): void {
  // The display string the textarea was last brought in line with (OT positions).
  let shown = displayOf(text.contents)
  textarea.value = shown
  textarea.addEventListener('input', () => {
    // The text is what the textarea showed before this edit: ops update both in the same
    // task, so nothing can come between them.
    const ops = diffShown(displayOf(text.contents), textarea.value)
    if (ops.length === 0) return
    text.submit(ops).catch(e => onError?.(e))
    onLocalEdit?.()
  })
  text.on('op', (ops, { local }) => {
    const before = shown
    shown = displayOf(text.contents)
    // A local op from the input listener: the textarea shows it already.
    if (local && textarea.value === normalize(shown)) return
    const { selectionStart, selectionEnd, selectionDirection, scrollTop } = textarea
    // Only when the op explains the change are the positions valid.
    const moved = apply(before, ops) === shown
    textarea.value = shown
    if (moved) {
      const move = (at: number) => toShownIndex(shown, transformPosition(ops, toTextIndex(before, at)))
      textarea.setSelectionRange(move(selectionStart), move(selectionEnd), selectionDirection)
    }
    textarea.scrollTop = scrollTop
  })
  // The whole text was fetched again (after a refused op, or a reconnect too late to catch
  // up op by op): show it, keeping the caret where it was as far as the text allows.
  text.on('load', () => {
    shown = displayOf(text.contents)
    if (textarea.value === normalize(shown)) return
    const { selectionStart, selectionEnd, selectionDirection, scrollTop } = textarea
    textarea.value = shown
    textarea.setSelectionRange(selectionStart, selectionEnd, selectionDirection)
    textarea.scrollTop = scrollTop
  })
}
