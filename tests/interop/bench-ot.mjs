// Ad-hoc OT benchmark (not a test): the round trip of sequential ShareDB ops (submit → ack,
// which includes the durable commit) on texts of growing size, to show what checking an op
// against the whole text costs. Usage, against a running server:
//   node tests/interop/bench-ot.mjs ws://127.0.0.1:1234 <text units> <ops>
import { createRequire } from 'node:module'
const require = createRequire(import.meta.url)
const ShareDB = require('sharedb/lib/client')
const richText = require('rich-text')
ShareDB.types.register(richText.type)
const WebSocket = require('ws')

const [url, size, n] = [process.argv[2], Number(process.argv[3]), Number(process.argv[4])]
const connection = new ShareDB.Connection(new WebSocket(url + '/api/ot'))
const doc = connection.get(`bench-ot-${size}-${Date.now()}`, 't')
const submit = op => new Promise((resolve, reject) => doc.submitOp(op, e => e ? reject(e) : resolve()))
await new Promise((resolve, reject) => doc.subscribe(e => e ? reject(e) : resolve()))
const chunk = 'lorem ipsum dolor sit amet 😀 '.repeat(1000)
let len = 0
while (len < size) { await submit([{ retain: len }, { insert: chunk }]); len += chunk.length }
const latencies = []
for (let i = 0; i < n; i++) {
  const started = performance.now()
  await submit([{ insert: 'x' }]) // at the start: the op is tiny, the text is not
  latencies.push(performance.now() - started)
}
latencies.sort((a, b) => a - b)
const at = q => latencies[Math.min(n - 1, Math.floor(n * q))].toFixed(2)
console.log(`text ${len + n} units, ${n} sequential ops: p50 ${at(0.5)} ms, p99 ${at(0.99)} ms`)
connection.close()
