#!/usr/bin/env bash
# Paired runs against Hocuspocus 4 (BENCHMARKS.md, "Hocuspocus protocol, paired with
# Hocuspocus 4"). Each round runs three scenarios, and each scenario against every server one
# after another, so a machine whose speed drifts is compared within a round:
#   - yserve over the Hocuspocus protocol (`--protocol hocuspocus`, the socket at `/`): only
#     when this build speaks it (probed once; YSERVE_HOCUSPOCUS=on|off overrides);
#   - yserve over y-websocket (this build; a fresh database per run);
#   - Hocuspocus 4 (@hocuspocus/server, no extensions: it stores nothing) over its protocol,
#     a fresh Node process per run;
#   - y-websocket-server (@y/websocket-server, stores nothing) when SERVERS names it
#     (`ywsserver`), a fresh Node process per run.
# SERVERS (default: every server above but ywsserver) picks and orders them.
# Scenarios:
#   light      latency --conns 1000 --rooms 100 --rate 500
#   fanout     latency --conns 500 --rooms 1 --rate 100    (50,000 deliveries/s)
#   fanout200  latency --conns 1000 --rooms 1 --rate 200   (200,000 deliveries/s)
#   idle       idle --conns 1000 --rooms 100                (KiB of server RSS per connection)
#   idle10k    idle --conns 10000 --rooms 1000
# The server order rotates from round to round. Loopback only; every run is bounded by --secs
# (and the generator's own timeouts).
#
#   scripts/bench-hocuspocus.sh [ROUNDS] [SECS] [SCENARIOS]     e.g. 3 12 "light fanout idle"
#
# Installs the pinned @hocuspocus/server into target/peers/hocuspocus (npm) the first time.
# Prints one line per run with the load average beside it; the generators' full output goes
# to target/bench-hocuspocus/<time>/.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
secs=${2:-12}
scenarios=${3:-light fanout idle}
port=${PEER_PORT:-1298}

cargo build --release --bin yserve --bin yserve-loadgen
peers=target/peers/hocuspocus
if [ ! -f "$peers/node_modules/@hocuspocus/server/package.json" ]; then
  mkdir -p "$peers"
  (cd "$peers" && npm init -y >/dev/null &&
    npm install --no-audit --no-fund --loglevel=error @hocuspocus/server@4.7.0 yjs@13.6.33 y-protocols@1.0.7)
fi
ywspeers=target/peers/y-websocket-server
if [[ " ${SERVERS:-} " == *" ywsserver "* ]] && [ ! -f "$ywspeers/node_modules/@y/websocket-server/src/server.js" ]; then
  mkdir -p "$ywspeers"
  (cd "$ywspeers" && npm init -y >/dev/null &&
    npm install --no-audit --no-fund --loglevel=error @y/websocket-server@0.1.1 yjs@13.6.33)
fi
ulimit -n 32768 2>/dev/null || ulimit -n 4096 2>/dev/null || true

loadgen=target/release/yserve-loadgen
logs=target/bench-hocuspocus/$(date -u +%Y%m%dT%H%M%S)
mkdir -p "$logs"
echo "commit $(git rev-parse --short HEAD)$(git diff --quiet HEAD || echo ' (dirty)'), node $(node --version)," \
  "@hocuspocus/server $(node -p "require('./$peers/node_modules/@hocuspocus/server/package.json').version"), logs in $logs"

hocus=${YSERVE_HOCUSPOCUS:-auto}
if [ "$hocus" = auto ]; then
  if "$loadgen" latency --protocol hocuspocus --conns 2 --rooms 1 --rate 10 --secs 1 --settle-ms 100 \
    >"$logs/probe.log" 2>&1; then
    hocus=on
  else
    hocus=off
    echo "yserve over Hocuspocus: this build does not speak it (see $logs/probe.log); those rows are skipped"
  fi
fi
servers=()
if [ -n "${SERVERS:-}" ]; then
  for s in $SERVERS; do
    [ "$s" = yserve-hocuspocus ] && [ "$hocus" != on ] && continue
    servers+=("$s")
  done
else
  [ "$hocus" = on ] && servers+=(yserve-hocuspocus)
  servers+=(yserve-yjs hocuspocus4)
fi

scenario_args() {
  case $1 in
    light) echo "latency --conns 1000 --rooms 100 --rate 500 --secs $secs" ;;
    fanout) echo "latency --conns 500 --rooms 1 --rate 100 --secs $secs" ;;
    fanout200) echo "latency --conns 1000 --rooms 1 --rate 200 --secs $secs" ;;
    idle) echo "idle --conns 1000 --rooms 100" ;;
    idle10k) echo "idle --conns 10000 --rooms 1000" ;;
    *) echo "unknown scenario $1" >&2; exit 2 ;;
  esac
}

# The figures of one run, from the generator's output.
summary() {
  local out=$1
  if grep -q '^idle: .* KiB per connection' "$out"; then
    sed -n 's/^idle: \([0-9.]*\) KiB per connection.*/idle \1 KiB\/conn/p' "$out"
  elif grep -q '^latency: p50' "$out"; then
    local delivered p50 p99 cpu gen per
    delivered=$(sed -n 's/.*, \([0-9.]*\) % delivered.*/\1 %/p' "$out")
    p50=$(sed -n 's/^latency: p50 \([0-9.]*\) ms.*/\1/p' "$out")
    p99=$(sed -n 's/.* p99 \([0-9.]*\) ms, p99.9.*/\1/p' "$out")
    cpu=$(sed -n 's/^latency: server CPU \([0-9.]*\) % of one core.*/\1 %/p' "$out")
    gen=$(sed -n 's/.*; load generator \([0-9.]*\) % of one core.*/\1 %/p' "$out")
    per=$(sed -n 's/^latency: server CPU per delivered update \([0-9.]*\) us.*/\1 us/p' "$out")
    writes=$(sed -n 's/^latency: server write system calls .*, \([0-9.]*\) deliveries each.*/\1/p' "$out")
    echo "delivered $delivered, p50 $p50 ms, p99 $p99 ms, server CPU $cpu, $per/delivery, ${writes:-?} deliveries/write, generator $gen"
  else
    echo "FAILED: $(grep -v '^ ' "$out" | grep -iE 'error|failed|closed|lost' | head -2 | tr '\n' ' ')"
  fi
}

run() {
  local round=$1 scenario=$2 server=$3
  local out="$logs/r$round-$scenario-$server.log" load
  load=$(cut -d' ' -f1-3 /proc/loadavg)
  # shellcheck disable=SC2046
  case $server in
    yserve-yjs) "$loadgen" $(scenario_args "$scenario") >"$out" 2>&1 || true ;;
    yserve-hocuspocus) "$loadgen" $(scenario_args "$scenario") --protocol hocuspocus >"$out" 2>&1 || true ;;
    hocuspocus4)
      HOST=127.0.0.1 PORT=$port PEERS=$peers node scripts/hocuspocus-server.cjs >"$logs/hocuspocus4.log" 2>&1 &
      local peer=$!
      for _ in $(seq 50); do
        grep -q '^listening on' "$logs/hocuspocus4.log" && break
        sleep 0.1
      done
      "$loadgen" $(scenario_args "$scenario") --protocol hocuspocus --url "ws://127.0.0.1:$port" --pid "$peer" \
        >"$out" 2>&1 || true
      kill "$peer"
      wait "$peer" 2>/dev/null || true
      ;;
    ywsserver)
      HOST=127.0.0.1 PORT=$port node "$ywspeers/node_modules/@y/websocket-server/src/server.js" >"$logs/ywsserver.log" 2>&1 &
      local peer=$!
      sleep 1
      "$loadgen" $(scenario_args "$scenario") --url "ws://127.0.0.1:$port" --pid "$peer" >"$out" 2>&1 || true
      kill "$peer"
      wait "$peer" 2>/dev/null || true
      ;;
  esac
  printf '%-7s %-18s %s  [load %s]\n' "$scenario" "$server" "$(summary "$out")" "$load"
}

for round in $(seq "$rounds"); do
  echo "== round $round"
  for scenario in $scenarios; do
    n=${#servers[@]}
    for k in $(seq 0 $((n - 1))); do
      run "$round" "$scenario" "${servers[$(((k + round - 1) % n))]}"
    done
  done
done
