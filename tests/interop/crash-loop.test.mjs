// Crash durability of the OT doors, measured in a loop (SPEC §2: an OT ack and a REST 2xx come
// only after the commit). One server and one database file per sync mode. Each cycle uses
// fresh documents, so no client can upload again what the server lost: a stock `sharedb`
// client types one op at a time (the next one when the previous is acknowledged) while a
// second one watches, and a REST client posts ops to `POST /api/docs/{name}/texts/t`; the
// server gets SIGKILL at a random moment. The database must pass `PRAGMA integrity_check`
// (the sqlite3 CLI), and after a restart the text must hold every acknowledged op, every op
// the watcher received and every post answered with a 2xx.
//
// YSERVE_CRASH_CYCLES sets the cycles per sync mode (default 50), YSERVE_CRASH_SEED replays
// the kill moments (what the clients and the server were doing then still depends on
// scheduling). tests/it/crash_loop.rs is the same loop for Yjs clients and binary REST posts.
import { test, after } from 'node:test'
import assert from 'node:assert/strict'
import { createRequire } from 'node:module'
import { execFileSync } from 'node:child_process'
import WebSocket from 'ws'
import { Server, waitFor, restRequest } from './harness.mjs'

const require = createRequire(import.meta.url)
const ShareDB = require('sharedb/lib/client')
const richText = require('rich-text')
ShareDB.types.register(richText.type)

const cycles = Number(process.env.YSERVE_CRASH_CYCLES || 50)
const seed = process.env.YSERVE_CRASH_SEED ? Number(process.env.YSERVE_CRASH_SEED) : Math.floor(Math.random() * 2 ** 31)
// The kill comes this long after the clients have subscribed, at most.
const KILL_WITHIN_MS = 100

const servers = []
after(async () => { for (const s of servers) await s.dispose() })

/** mulberry32: a seeded generator of floats in [0, 1). */
function seeded (s) {
  let a = s >>> 0
  return () => {
    a = (a + 0x6D2B79F5) >>> 0
    let t = a
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}

const token = i => `${i};`
const tokens = s => s.split(';').length - 1
const plain = data => (data?.ops || []).map(o => typeof o.insert === 'string' ? o.insert : '').join('')
const textPath = name => `/api/docs/${encodeURIComponent(name)}/texts/t`

/** One JSON request: `{ status, body }`, or rejects if the connection fails. */
function rest (srv, method, path, body) {
  return restRequest(srv, method, path, body, { agent: false })
}

function shareConnection (srv) {
  const socket = new WebSocket(`${srv.url}/api/ot`)
  const connection = new ShareDB.Connection(socket)
  const errors = []
  connection.on('error', err => errors.push(`connection: ${err.code} ${err.message}`))
  const sc = { connection, errors, closed: false }
  socket.on('close', () => { sc.closed = true })
  return sc
}

const subscribe = doc => new Promise((resolve, reject) => doc.subscribe(err => err ? reject(err) : resolve()))

/** PRAGMA integrity_check on a killed server's database, read-only (no checkpoint on close). */
function integrityCheck (db) {
  return execFileSync('sqlite3', ['-readonly', db, 'PRAGMA integrity_check;'], { encoding: 'utf8' }).trim()
}

async function runCycle (srv, cycle, killAfterMs, tally) {
  const what = `cycle ${cycle} (kill after ${killAfterMs.toFixed(1)} ms)`
  const name = `crash/ot-${cycle}`
  const restName = `crash/ot-rest-${cycle}`
  const writer = shareConnection(srv)
  const watcher = shareConnection(srv)
  const wdoc = writer.connection.get(name, 't')
  const odoc = watcher.connection.get(name, 't')
  await Promise.all([subscribe(wdoc), subscribe(odoc)])

  let killed = false
  // The writer: one op at a time, the next once the previous is acknowledged.
  let written = ''
  let acked = 0
  const type = () => {
    if (killed) return
    const piece = token(tokens(written))
    const op = [{ retain: written.length }, { insert: piece }].filter(o => o.retain !== 0)
    written += piece
    wdoc.submitOp(op, err => {
      if (err) writer.errors.push(`op ${piece}: ${err.code} ${err.message}`)
      else { acked++; type() }
    })
  }
  // The REST poster: one post at a time, until the server is gone.
  const posting = (async () => {
    let text = ''
    let ok = 0
    const refusals = []
    for (let i = 0; !killed; i++) {
      const piece = token(i)
      const op = [{ retain: text.length }, { insert: piece }].filter(o => o.retain !== 0)
      text += piece
      let r
      try { r = await rest(srv, 'POST', textPath(restName), { v: null, src: 'crash-loop', seq: i, op }) } catch { break }
      if (r.status >= 200 && r.status < 300) ok++
      else { refusals.push(`${r.status} ${JSON.stringify(r.body)}`); break }
    }
    return { text, ok, refusals }
  })()

  type()
  await new Promise(resolve => setTimeout(resolve, killAfterMs))
  killed = true
  srv.proc.kill('SIGKILL')
  await srv.exited
  // What the clients hold once their sockets are closed: every frame that reached them.
  await waitFor(() => writer.closed && watcher.closed, `${what}: the sockets to close`)
  const observed = plain(odoc.data)
  const posted = await posting
  writer.connection.close()
  watcher.connection.close()

  const integrity = integrityCheck(srv.db)
  if (integrity === 'ok') tally.intact++
  else tally.failures.push(`${what}: integrity_check says ${JSON.stringify(integrity)}`)
  await srv.start()

  tally.failures.push(...[...writer.errors, ...watcher.errors, ...posted.refusals].map(e => `${what}: ${e}`))
  if (!written.startsWith(observed)) tally.failures.push(`${what}: the watcher got …${observed.slice(-40)}, not a prefix of what was typed`)
  const check = async (door, doc, typed, needed) => {
    const r = await rest(srv, 'GET', textPath(doc))
    assert.equal(r.status, 200, `${what}: GET ${doc}: ${JSON.stringify(r.body)}`)
    const stored = r.body.text
    const lost = typed.startsWith(stored) ? Math.max(0, needed - tokens(stored)) : needed
    if (lost > 0) tally.failures.push(`${what}: ${door}: ${lost} of ${needed} lost; stored …${JSON.stringify(stored.slice(-40))}`)
    tally.lost += lost
  }
  const needed = Math.max(acked, tokens(observed))
  await check('sharedb', name, written, needed)
  tally.otChecked += needed
  await check('REST', restName, posted.text, posted.ok)
  tally.restChecked += posted.ok
  tally.cycles++
}

for (const sync of ['full', 'normal']) {
  test(`no acknowledged OT op, no op a watcher received and no 2xx REST op is lost to SIGKILL at random moments (--sync ${sync})`, async () => {
    console.log(`OT crash loop, --sync ${sync}: seed ${seed} (replay with YSERVE_CRASH_SEED=${seed}), ${cycles} cycles`)
    const random = seeded(seed)
    const srv = await new Server(['--sync', sync, '--snapshot-updates', '64']).start()
    servers.push(srv)
    const tally = { cycles: 0, otChecked: 0, restChecked: 0, lost: 0, intact: 0, failures: [] }
    for (let cycle = 0; cycle < cycles; cycle++) await runCycle(srv, cycle, random() * KILL_WITHIN_MS, tally)
    const summary = `OT crash loop, --sync ${sync}, seed ${seed}: ${tally.cycles} cycles, ${tally.otChecked} sharedb ops and ${tally.restChecked} REST ops checked, lost ${tally.lost}, integrity_check ok after ${tally.intact} kills`
    console.log(summary)
    assert.deepEqual(tally.failures, [], summary)
    // Not vacuous: kills do not all land before anything was acknowledged.
    assert.ok(tally.otChecked > 0 && tally.restChecked > 0, `${summary}: nothing was checked`)
  })
}
