// What the examples share: where the server is, a token if it wants one, printing steps,
// waiting on a condition with a deadline, and exiting non-zero when an expectation fails
// (so that each example doubles as a smoke test).

/** The server: the first argument, else YSERVE_URL, else a local `cargo run --release`. */
export const wsUrl = (process.argv[2] || process.env.YSERVE_URL || 'ws://127.0.0.1:1234').replace(/\/+$/, '')
if (!/^wss?:\/\//.test(wsUrl)) {
  console.error(`expected a ws:// or wss:// URL, got ${wsUrl}`)
  process.exit(2)
}
/** The same server over HTTP, for the REST API. */
export const httpUrl = wsUrl.replace(/^ws/, 'http')
/** A JWT for a server started with a key (`yserve token --sub me --doc 'examples/*=write'`). */
export const token = process.env.YSERVE_TOKEN || undefined

/** A fresh document name per run, so that runs do not see each other's text. */
export function docName (prefix) {
  return process.env.YSERVE_DOC || `examples/${prefix}-${Date.now()}-${process.pid}`
}

export function step (text) {
  console.log(`\n== ${text}`)
}

export function log (text) {
  console.log(`   ${text}`)
}

export function check (ok, what) {
  if (!ok) throw new Error(`expectation failed: ${typeof what === 'function' ? what() : what}`)
}

/** Polls `cond` every 20 ms until it holds; throws after `ms` with `what` (a string or a function). */
export async function waitFor (cond, what, ms = 10000) {
  const deadline = Date.now() + ms
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${typeof what === 'function' ? what() : what}`)
    await new Promise(resolve => setTimeout(resolve, 20))
  }
}

/**
 * Runs `main`, then exits: 0 when it resolved, 1 when it threw or took longer than
 * `limitMs` (a stuck socket must not hang a test run).
 */
export function run (main, limitMs = 30000) {
  const timer = setTimeout(() => {
    console.error(`FAILED: still running after ${limitMs} ms`)
    process.exit(1)
  }, limitMs)
  // Without a server the providers would retry quietly until the time limit; say so at once.
  const reachable = fetch(`${httpUrl}/healthz`).then(
    () => true,
    err => {
      console.error(`FAILED: no server at ${httpUrl} (${err.cause?.code || err.cause?.message || err.message}); start one with \`cargo run --release\` or pass its URL`)
      process.exit(1)
    }
  )
  reachable.then(main).then(() => {
    clearTimeout(timer)
    process.exit(0)
  }, err => {
    console.error(`FAILED: ${err?.stack || err}`)
    process.exit(1)
  })
}
