// Builds the demo editor into ../../src/demo/ (index.html, app.js, app.css), which is
// committed: the yserve binary embeds those three files (src/demo.rs), so running the
// server needs no Node. Run `npm run build:demo` in client-sdk/ after changing demo/ or a
// dependency, and commit the result. The output is deterministic: the same sources give the
// same bytes.
import * as esbuild from 'esbuild'
import { spawnSync } from 'node:child_process'
import { copyFileSync, mkdirSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs'
import { createRequire } from 'node:module'
import { gzipSync } from 'node:zlib'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

const here = dirname(fileURLToPath(import.meta.url))
const out = join(here, '..', '..', 'src', 'demo')
const expected = ['app.css', 'app.js', 'index.html']

// esbuild only strips types; check them first (demo/tsconfig.json: the demo and the SDK).
const tsc = createRequire(import.meta.url).resolve('typescript/lib/tsc.js')
const check = spawnSync(process.execPath, [tsc, '-p', join(here, 'tsconfig.json')], { stdio: 'inherit' })
if (check.status !== 0) process.exit(check.status ?? 1)

rmSync(out, { recursive: true, force: true })
mkdirSync(out, { recursive: true })

await esbuild.build({
  entryPoints: { app: join(here, 'main.ts') },
  outdir: out,
  bundle: true,
  minify: true,
  format: 'esm',
  platform: 'browser',
  target: ['es2020', 'chrome100', 'firefox100', 'safari15'],
  charset: 'utf8',
  // Licences of the bundled packages stay in the bundle, at its end.
  legalComments: 'eof',
  // sharedb's client asks for two Node built-ins: `events` (the npm package of the same
  // name), and `util` for `util.inherits` only (a local shim).
  alias: { util: join(here, 'shims', 'util.js') },
  define: { 'process.env.NODE_ENV': '"production"' },
  logLevel: 'warning'
})
copyFileSync(join(here, 'index.html'), join(out, 'index.html'))

const files = readdirSync(out).sort()
if (JSON.stringify(files) !== JSON.stringify(expected)) {
  // src/demo.rs embeds exactly these; anything else would silently not be served.
  throw new Error(`src/demo/ should hold ${expected.join(', ')}, not ${files.join(', ')}`)
}
for (const f of files) {
  const bytes = readFileSync(join(out, f))
  console.log(`src/demo/${f}: ${(statSync(join(out, f)).size / 1024).toFixed(1)} KiB (${(gzipSync(bytes, { level: 9 }).length / 1024).toFixed(1)} KiB gzipped)`)
}
