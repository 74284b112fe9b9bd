// Smoke test of every example against the built server: each runs to the end, exits 0 and
// prints what it promises. The server is `target/release/yserve` (or YSERVE_BIN) on port 0
// with a temporary database, once without a key (anonymous mode) and once with a JWT
// secret; the Rust example is the binary `cargo build --release --examples` writes.
//
//   cargo build --release --bins --examples
//   (cd client-sdk && npm ci && npm run build)
//   cd examples/node && npm ci && npm test
import { test, describe, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { spawn, execFileSync } from 'node:child_process'
import { existsSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { Server as BaseServer, binaryPath } from '../../../tests/support/server.mjs'

const here = dirname(fileURLToPath(import.meta.url))
const examples = join(here, '..')
const root = join(examples, '..', '..')

/** An example may take this long before it counts as hung. */
const EXAMPLE_TIMEOUT_MS = 60000

function built (envVar, path, how) {
  const p = process.env[envVar] || join(root, path)
  if (!existsSync(p)) throw new Error(`${p} is not built: run \`${how}\` first, or set ${envVar}`)
  return p
}

const inProcessBinary = () =>
  built('YSERVE_EXAMPLE_IN_PROCESS', 'target/release/examples/in_process', 'cargo build --release --examples')

// The prefix names the suite whose temporary directories a crashed run leaves behind.
class Server extends BaseServer {
  constructor (args = []) { super(args, 'yserve-examples-') }
}

/** Runs a command to the end; resolves `{code, stdout, stderr}`. */
function runExample (command, args, env = {}) {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { cwd: examples, env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] })
    let stdout = ''
    let stderr = ''
    child.stdout.on('data', d => { stdout += d })
    child.stderr.on('data', d => { stderr += d })
    const timer = setTimeout(() => {
      child.kill('SIGKILL')
      reject(new Error(`${command} ${args.join(' ')} hung for ${EXAMPLE_TIMEOUT_MS} ms\n${stdout}\n${stderr}`))
    }, EXAMPLE_TIMEOUT_MS)
    child.once('error', reject)
    child.once('exit', code => {
      clearTimeout(timer)
      resolve({ code, stdout, stderr })
    })
  })
}

/** Asserts exit 0 and every expected line, showing the whole output otherwise. */
function assertRan (result, expected) {
  const output = `--- stdout\n${result.stdout}\n--- stderr\n${result.stderr}`
  assert.equal(result.code, 0, `exit code ${result.code}\n${output}`)
  for (const e of expected) {
    const found = e instanceof RegExp ? e.test(result.stdout) : result.stdout.includes(e)
    assert.ok(found, `missing ${e} in the output\n${output}`)
  }
}

const OT_EDIT = [
  'ot: local op [{"insert":"Hello world"}]',
  'yjs: received',
  'ot: remote op',
  'final text: "Howdy partner!"',
  'ok: the OT client and the Yjs client converged'
]
const OFFLINE = [
  '(it has alice\'s edit, not bob\'s)',
  'final text: "The quick brown fox jumps over the lazy dog!"',
  'ok: the offline edits were reconciled and both clients converged'
]

describe('against a server in anonymous mode', () => {
  let server
  before(async () => { server = await new Server().start() })
  after(async () => {
    try {
      assert.equal(await server.stop(), 0, `the server did not shut down cleanly\n${server.stderr}`)
    } finally {
      await server.dispose()
    }
  })

  test('ot-edit.mjs edits through the OT client and the Yjs client sees the same text', async () => {
    assertRan(await runExample(process.execPath, ['ot-edit.mjs', server.url]), OT_EDIT)
  })

  test('offline-reconcile.mjs converges after concurrent offline edits', async () => {
    // The URL from YSERVE_URL this time, the other way the scripts take it.
    assertRan(await runExample(process.execPath, ['offline-reconcile.mjs'], { YSERVE_URL: server.url }), OFFLINE)
  })

  test('rest-sse.sh walks through the HTTP API and the event stream', async () => {
    const result = await runExample('bash', [join(examples, '..', 'rest-sse.sh')], { YSERVE_HTTP: server.http })
    assertRan(result, [
      /\{"applied":true,"seq":1\}/,
      /^event: ?update$/m,
      /^event: ?lock$/m,
      /"action":"acquired"/,
      'Skipped: a lock held by another user (409)',
      /The resumed stream starts after \d+\.\d+/,
      "ok: the walk-through finished; document 'examples/rest-",
      "holds the text 'Hiowdy world'"
    ])
  })
})

describe('against a server with a JWT secret', () => {
  const secret = 'examples-smoke-test-secret'
  let server
  const tokenFor = sub =>
    execFileSync(binaryPath(), ['token', '--sub', sub, '--doc', 'examples/*=write', '--ttl', '10m', '--jwt-secret', secret])
      .toString().trim()
  before(async () => { server = await new Server(['--jwt-secret', secret]).start() })
  after(async () => {
    try {
      assert.equal(await server.stop(), 0, `the server did not shut down cleanly\n${server.stderr}`)
    } finally {
      await server.dispose()
    }
  })

  test('rest-sse.sh shows another user\'s lock conflict (409, 423) and never prints a token', async () => {
    const alice = tokenFor('alice')
    const bob = tokenFor('bob')
    const result = await runExample('bash', [join(examples, '..', 'rest-sse.sh')], {
      YSERVE_HTTP: server.http, YSERVE_TOKEN: alice, YSERVE_OTHER_TOKEN: bob
    })
    assertRan(result, [/"holder":"alice"/, /-> HTTP 409/, /-> HTTP 423/, 'ok: the walk-through finished'])
    assert.ok(!result.stdout.includes(alice) && !result.stdout.includes(bob), 'a token was printed')
  })

  test('rest-sse.sh without a token fails with a hint instead of going on', async () => {
    const result = await runExample('bash', [join(examples, '..', 'rest-sse.sh')], { YSERVE_HTTP: server.http, YSERVE_TOKEN: '' })
    assert.notEqual(result.code, 0)
    assert.match(result.stderr, /answered 401: the server wants a token; set YSERVE_TOKEN/)
  })

  test('the Node examples pass YSERVE_TOKEN to the server', async () => {
    const env = { YSERVE_TOKEN: tokenFor('carol') }
    assertRan(await runExample(process.execPath, ['ot-edit.mjs', server.url], env), OT_EDIT)
    assertRan(await runExample(process.execPath, ['offline-reconcile.mjs', server.url], env), OFFLINE)
  })
})

test('the in_process Rust example starts, serves, restarts and stops the server by itself', async () => {
  const result = await runExample(inProcessBinary(), [])
  assertRan(result, [
    /listening on http:\/\/127\.0\.0\.1:\d+/,
    'bob: connected and synced, sees "Hello from yrs!"',
    'GET /api/docs/{name}/json -> {"t":"Hello, from yrs and tokio!"}',
    'closed with "1001 server shutting down"',
    'carol sees "Hello, from yrs and tokio!"',
    'ok: in-process server, two Yjs clients, REST read-back and restart all worked'
  ])
})
