// Generates tests/data/delta-oracle.json: expected results of quill-delta's transform, compose
// and transformPosition on random operations, for the Rust port in src/ot/delta.rs.
//
// The oracle is the quill-delta that rich-text 4.1.0 (the ShareDB type) depends on, i.e.
// require('rich-text').Delta — quill-delta 4.2.x, not the 5.x installed beside it.
//
// Regenerate (deterministic for a given seed; the seed is printed on stderr):
//   cd tests/interop && npm ci && cd ../.. && node tests/interop/gen-delta-oracle.mjs 20261123
// The script writes tests/data/delta-oracle.json itself (pass a second argument to write elsewhere).
//
// Every generated operation puts its boundaries on code-point boundaries of the document it
// applies to, so no expected result contains a lone surrogate (which the Rust side cannot hold).

import { createRequire } from 'node:module'
import { writeFileSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { isDeepStrictEqual } from 'node:util'

const require = createRequire(import.meta.url)
const richText = require('rich-text')
const Delta = richText.Delta
const type = richText.type
const quillVersion = require('rich-text/node_modules/quill-delta/package.json').version

const DEFAULT_SEED = 20261123
const seed = process.argv[2] === undefined ? DEFAULT_SEED : Number(process.argv[2])
if (!Number.isSafeInteger(seed)) throw new Error(`seed must be an integer, got ${process.argv[2]}`)
const here = dirname(fileURLToPath(import.meta.url))
const outPath = process.argv[3] ?? join(here, '..', 'data', 'delta-oracle.json')
process.stderr.write(`gen-delta-oracle: seed ${seed}, quill-delta ${quillVersion}\n`)

const TRANSFORM_CASES = 2200
const COMPOSE_CASES = 2200
const POSITION_CASES = 600
const DOC_UNITS_MAX = 30
const COMPONENTS_MAX = 6

// mulberry32: small, seedable, and identical on every Node version.
let state = seed >>> 0
function rng() {
  state = (state + 0x6d2b79f5) >>> 0
  let t = state
  t = Math.imul(t ^ (t >>> 15), t | 1)
  t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
  return ((t ^ (t >>> 14)) >>> 0) / 4294967296
}
const int = (lo, hi) => lo + Math.floor(rng() * (hi - lo + 1)) // inclusive
const pick = (xs) => xs[Math.floor(rng() * xs.length)]
const chance = (p) => rng() < p

// Text pieces: ASCII, accented letters (precomposed and combining), surrogate pairs (😀, a
// thumbs-up with a skin-tone modifier = two pairs), CJK and newlines.
const TEXT = ['a', 'b', 'hello', ' ', 'xyz', 'é', 'ñü', 'e\u0301', '😀', '👍🏽', '🎉', '漢', '中文', '\n', 'Ω']
const EMBEDS = [{ image: 'x.png' }, { video: 'v.mp4' }, { formula: 'e=mc^2' }]
const ATTRS = {
  bold: [true],
  italic: [true],
  color: ['#f00', '#00f'],
  link: ['https://example.com'],
  header: [1, 2],
}
const ATTR_KEYS = Object.keys(ATTRS)

// Attributes for one component, or undefined. `nullRate` is the chance that a key is a removal.
function randomAttrs(p, nullRate) {
  if (!chance(p)) return undefined
  const attrs = {}
  const n = int(1, 2)
  for (let i = 0; i < n; i++) {
    const key = pick(ATTR_KEYS)
    attrs[key] = chance(nullRate) ? null : pick(ATTRS[key])
  }
  return attrs
}

function randomInsert(delta) {
  if (chance(0.12)) {
    delta.insert({ ...pick(EMBEDS) }, randomAttrs(0.3, 0.05))
  } else {
    let s = ''
    const n = int(1, 3)
    for (let i = 0; i < n; i++) s += pick(TEXT)
    delta.insert(s, randomAttrs(0.4, 0.05))
  }
}

// A document: inserts only, at most DOC_UNITS_MAX UTF-16 units and COMPONENTS_MAX components.
function randomDoc() {
  for (;;) {
    const doc = new Delta()
    const target = int(0, DOC_UNITS_MAX)
    while (doc.length() < target) randomInsert(doc)
    if (doc.length() <= DOC_UNITS_MAX && doc.ops.length <= COMPONENTS_MAX) return doc
  }
}

// The document as a list of its code points and embeds, each with its UTF-16 length, so that
// operations can be cut only between them.
function items(doc) {
  const out = []
  for (const op of doc.ops) {
    if (typeof op.insert === 'string') {
      for (const cp of Array.from(op.insert)) out.push(cp.length)
    } else {
      out.push(1)
    }
  }
  return out
}

const units = (its, from, n) => its.slice(from, from + n).reduce((s, u) => s + u, 0)

// A random change on `doc` with at most COMPONENTS_MAX components (each step adds at most one).
function randomOp(doc) {
  const its = items(doc)
  const delta = new Delta()
  let i = 0
  for (let step = 0; step < COMPONENTS_MAX; step++) {
    const left = its.length - i
    const r = rng()
    if (r < 0.3) {
      randomInsert(delta)
    } else if (left > 0 && r < 0.55) {
      const n = int(1, Math.min(4, left))
      delta.delete(units(its, i, n))
      i += n
    } else if (left > 0 && r < 0.92) {
      const n = int(1, Math.min(6, left))
      delta.retain(units(its, i, n), randomAttrs(0.5, 0.3))
      i += n
    } else {
      break
    }
  }
  return delta
}

function check(cond, what) {
  if (!cond) {
    process.stderr.write(`gen-delta-oracle: FAILED: ${what}\n`)
    process.exit(1)
  }
}

// Documents produced by composing must stay documents (inserts only); otherwise the generated
// operations were not valid on them and the case would not test what it says.
function isDoc(delta) {
  return delta.ops.every((op) => op.insert !== undefined)
}

function transformCases() {
  const cases = []
  let tp1Failures = 0
  for (let k = 0; k < TRANSFORM_CASES; k++) {
    const doc = randomDoc()
    const a = randomOp(doc)
    const b = randomOp(doc)
    const priority = chance(0.5)
    const expected = new Delta(a.ops).transform(new Delta(b.ops), priority)
    // ShareDB's server calls type.transform(submittedOp, committedOp, 'left'), which must be
    // committedOp.transform(submittedOp, true); that is what the Rust side implements.
    check(isDeepStrictEqual(type.transform(b.ops, a.ops, 'left').ops, a.transform(b, true).ops), `left, case ${k}`)
    check(isDeepStrictEqual(type.transform(b.ops, a.ops, 'right').ops, a.transform(b, false).ops), `right, case ${k}`)
    // TP1 is not asserted (it is quill's property, not the port's), only counted for the record.
    const left = doc.compose(a).compose(a.transform(b, true))
    const right = doc.compose(b).compose(b.transform(a, false))
    if (!isDeepStrictEqual(left.ops, right.ops)) tp1Failures++
    cases.push({ a: a.ops, b: b.ops, priority, expected: expected.ops })
  }
  process.stderr.write(`gen-delta-oracle: ${cases.length} transform cases (TP1 failures in quill: ${tp1Failures})\n`)
  return cases
}

function composeCases() {
  const cases = []
  for (let k = 0; k < COMPOSE_CASES; k++) {
    const doc = randomDoc()
    // Half the cases compose onto a document (what `apply` does), half compose two changes.
    const a = k % 2 === 0 ? doc : randomOp(doc)
    const after = k % 2 === 0 ? doc : doc.compose(a)
    check(isDoc(after), `compose case ${k}: a is not valid on its document`)
    const b = randomOp(after)
    check(isDoc(after.compose(b)), `compose case ${k}: b is not valid after a`)
    const expected = new Delta(a.ops).compose(new Delta(b.ops))
    cases.push({ a: a.ops, b: b.ops, expected: expected.ops })
  }
  process.stderr.write(`gen-delta-oracle: ${cases.length} compose cases\n`)
  return cases
}

function positionCases() {
  const cases = []
  for (let k = 0; k < POSITION_CASES; k++) {
    const doc = randomDoc()
    const delta = randomOp(doc)
    const index = int(0, doc.length() + 2)
    const priority = chance(0.5)
    const expected = new Delta(delta.ops).transformPosition(index, priority)
    check(expected === delta.transform(index, priority), `transform(number) case ${k}`)
    cases.push({ delta: delta.ops, index, priority, expected })
  }
  process.stderr.write(`gen-delta-oracle: ${cases.length} transformPosition cases\n`)
  return cases
}

// One case per line keeps the file diffable and greppable.
function section(name, cases) {
  return `"${name}": [\n${cases.map((c) => JSON.stringify(c)).join(',\n')}\n]`
}

const header = {
  generator: 'tests/interop/gen-delta-oracle.mjs',
  seed,
  oracle: `rich-text 4.1.0 / quill-delta ${quillVersion}`,
}
const body = [
  JSON.stringify(header).slice(1, -1),
  section('transform', transformCases()),
  section('compose', composeCases()),
  section('transform_position', positionCases()),
].join(',\n')
writeFileSync(outPath, `{${body}}\n`)
process.stderr.write(`gen-delta-oracle: wrote ${outPath}\n`)
