#!/usr/bin/env bash
# The whole test suite, from a fresh clone:
#   1. Rust unit + integration tests (and the examples compile);
#   2. interop tests: the real npm clients (yjs, y-websocket, sharedb) against the built binary;
#   3. the TypeScript client SDK's tests, against the built binary; the demo bundle embedded
#      in the binary must be what its sources build;
#   4. the runnable examples, as smoke tests;
#   5. the demo editor in a real headless Chromium (Debian's package).
# Installs what it needs (npm packages; Node.js, sqlite3, PostgreSQL and Chromium from Debian if
# absent). One profile (release) is used for everything so the code compiles once.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v node >/dev/null 2>&1 || need_apt+=(nodejs)
command -v npm >/dev/null 2>&1 || need_apt+=(npm)
# The crash-loop interop test checks the killed server's database with sqlite3's integrity_check.
command -v sqlite3 >/dev/null 2>&1 || need_apt+=(sqlite3)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "==> installing ${need_apt[*]} (apt)"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}"
fi

# A throw-away PostgreSQL server (Debian's package, installed when missing) for the store's
# second engine; stopped however the script ends.
pgdir=$(mktemp -d /tmp/yserve-pg.XXXXXX)
trap 'scripts/pg.sh stop "$pgdir"; rm -rf "$pgdir"' EXIT
pg_env=$(scripts/pg.sh start "$pgdir")
eval "$pg_env"

echo "==> cargo test (release: unit tests, integration tests against the built binary; store tests on SQLite and PostgreSQL)"
cargo test --release --all-targets

echo "==> integration tests again, every server on PostgreSQL (YSERVE_TEST_STORE=postgres)"
YSERVE_TEST_STORE=postgres cargo test --release --test it

echo "==> npm interop tests (real yjs + y-websocket against target/release/yserve)"
(cd tests/interop && npm ci --no-audit --no-fund --loglevel=error)
(cd tests/interop && YSERVE_BIN="$PWD/../../target/release/yserve" npm test)

bin="$PWD/target/release/yserve"

echo "==> client-sdk: build, tests against target/release/yserve"
(cd client-sdk && npm ci --no-audit --no-fund --loglevel=error)
(cd client-sdk && YSERVE_BIN="$bin" npm test)

echo "==> demo bundle: src/demo/ is what client-sdk/demo builds (npm run build:demo)"
(cd client-sdk && npm run --silent build:demo)
if ! git diff --quiet -- src/demo; then
  git --no-pager diff --stat -- src/demo
  echo "src/demo/ is stale: run 'cd client-sdk && npm run build:demo' and commit the result" >&2
  exit 1
fi

echo "==> examples: smoke tests"
# `cargo test` builds examples under hashed names; the smoke test runs the plain one.
cargo build --release --examples
(cd examples/node && npm ci --no-audit --no-fund --loglevel=error)
(cd examples/node && YSERVE_BIN="$bin" npm test)

echo "==> demo editor in headless Chromium"
tests/browser/setup.sh
(cd tests/browser && YSERVE_BIN="$bin" npm test)
