#!/usr/bin/env bash
# The whole test suite, from a fresh clone: Rust unit + integration tests, then the interop
# tests that drive the real npm clients (yjs, y-websocket) against the built binary.
# Installs what it needs (npm packages; Node.js from Debian if absent). One profile
# (release) is used for everything so the code compiles once.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v node >/dev/null 2>&1 || need_apt+=(nodejs)
command -v npm >/dev/null 2>&1 || need_apt+=(npm)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "==> installing ${need_apt[*]} (apt)"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}"
fi

echo "==> cargo test (release: unit tests, integration tests against the built binary)"
cargo test --release --all-targets

echo "==> npm interop tests (real yjs + y-websocket against target/release/yserve)"
(cd tests/interop && npm ci --no-audit --no-fund --loglevel=error)
(cd tests/interop && YSERVE_BIN="$PWD/../../target/release/yserve" npm test)
