// The OT panel's plain <textarea> bound to an OT text: local edits become one minimal Quill
// delta (common prefix and suffix kept), remote ops are applied with the caret and the
// selection moved through them. Positions are UTF-16 code units, as the textarea's and the
// server's (SPEC §5) are.

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

/** Applies `ops` to `text` (plain text: embeds become U+FFFC, attributes are ignored). */
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

/** What the binding needs of an OT text (the SDK's `OtText`). */
export interface OtTextLike {
  readonly value: string
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
  textarea.value = text.value
  textarea.addEventListener('input', () => {
    // `text.value` is what the textarea showed before this edit: remote ops update both in
    // the same task, so nothing can come between them.
    const ops = diff(text.value, textarea.value)
    if (ops.length === 0) return
    text.submit(ops).catch(e => onError?.(e))
    onLocalEdit?.()
  })
  text.on('op', (ops, { local }) => {
    if (local) return
    const { selectionStart, selectionEnd, selectionDirection, scrollTop } = textarea
    const moved = apply(textarea.value, ops) === text.value
    textarea.value = text.value
    // Only when the op explains the change (plain text: no embeds) are the positions valid.
    if (moved) {
      textarea.setSelectionRange(transformPosition(ops, selectionStart), transformPosition(ops, selectionEnd), selectionDirection)
    }
    textarea.scrollTop = scrollTop
  })
  // The whole text was fetched again (after a refused op, or a reconnect too late to catch
  // up op by op): show it, keeping the caret where it was as far as the text allows.
  text.on('load', () => {
    if (textarea.value === text.value) return
    const { selectionStart, selectionEnd, selectionDirection, scrollTop } = textarea
    textarea.value = text.value
    textarea.setSelectionRange(selectionStart, selectionEnd, selectionDirection)
    textarea.scrollTop = scrollTop
  })
}
