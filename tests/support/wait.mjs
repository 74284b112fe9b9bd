// Waiting on a condition with a deadline, for every node test package. Node built-ins only,
// like server.mjs beside it.

/**
 * Polls `cond` until it is truthy or `ms` pass; on timeout throws with `what` (a function is
 * called then, so the message can show the state that did not converge).
 */
export async function waitFor (cond, what = 'condition', ms = 10000) {
  const deadline = Date.now() + ms
  while (Date.now() < deadline) {
    if (await cond()) return
    await new Promise(resolve => setTimeout(resolve, 20))
  }
  throw new Error(`timed out waiting for ${typeof what === 'function' ? what() : what}`)
}
