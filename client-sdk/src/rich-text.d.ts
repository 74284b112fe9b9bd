// `rich-text` 4.1.0 ships no types: the ShareDB OT type over quill-delta. Only what the SDK
// uses is declared; it stays internal (no public signature mentions it).
declare module 'rich-text' {
  import Delta from 'quill-delta'
  const richText: {
    Delta: typeof Delta
    type: {
      name: string
      uri: string
      create: (initial?: unknown) => Delta
      apply: (snapshot: unknown, delta: unknown) => Delta
      [key: string]: unknown
    }
  }
  export default richText
}
