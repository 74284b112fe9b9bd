#!/usr/bin/env bash
# Paired latency/CPU runs: this build of yserve, optionally another yserve binary, and
# y-websocket-server (@y/websocket-server, which stores nothing), one after another in each
# round, so that a machine whose speed drifts is compared within a round (BENCHMARKS.md,
# session 4). Loopback only; every run is bounded by --secs.
#
#   scripts/bench-paired.sh [ROUNDS] [SECS] [OTHER_YSERVE_BINARY]
#
# Installs @y/websocket-server into target/peers (npm) the first time.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
secs=${2:-20}
other=${3:-}
port=${PEER_PORT:-1299}

cargo build --release --bin yserve --bin yserve-loadgen
peers=target/peers
if [ ! -f "$peers/node_modules/@y/websocket-server/src/server.js" ]; then
  mkdir -p "$peers"
  (cd "$peers" && npm init -y >/dev/null && npm install --no-audit --no-fund --loglevel=error @y/websocket-server@0.1.1 yjs@13)
fi

loadgen=target/release/yserve-loadgen
args=(--conns 1000 --rooms 100 --rate 500 --secs "$secs")
summary() { grep -E "^latency: (p50|server CPU)" | sed "s|^latency: |$1: |"; }

for round in $(seq "$rounds"); do
  echo "== round $round"
  "$loadgen" latency "${args[@]}" 2>&1 | summary "yserve (this build)"
  if [ -n "$other" ]; then
    "$loadgen" latency --server-bin "$other" "${args[@]}" 2>&1 | summary "yserve ($other)"
  fi
  HOST=127.0.0.1 PORT=$port node "$peers/node_modules/@y/websocket-server/src/server.js" >/dev/null 2>&1 &
  peer=$!
  sleep 1
  "$loadgen" latency --url "ws://127.0.0.1:$port" --pid "$peer" "${args[@]}" 2>&1 | summary "y-websocket-server"
  kill "$peer"
  wait "$peer" 2>/dev/null || true
done
