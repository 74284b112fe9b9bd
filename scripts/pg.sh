#!/usr/bin/env bash
# A throw-away PostgreSQL server for the tests and benchmarks, on loopback only.
#
#   eval "$(scripts/pg.sh start DIR)"   # prints export YSERVE_TEST_PG=postgres://…; starts it
#   scripts/pg.sh stop DIR              # stops it at once (-m immediate: as a crash would)
#
# `start` on a DIR that already holds a cluster starts it again on the same port (a restart,
# for the fault tests); PG_OPTIONS adds server settings (e.g. "-c max_connections=4").
#
# Uses Debian's postgresql (installed when missing). initdb refuses to run as root, so as
# root the cluster belongs to the `postgres` user the package creates. fsync stays on: the
# store's durability is part of what the tests check.
set -euo pipefail
cmd=${1:?start|stop}
dir=${2:?a directory for the cluster}
bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)
if [ -z "$bin" ] && [ "$cmd" = start ]; then
  echo "==> installing postgresql (apt)" >&2
  apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >&2
  bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
fi
as_owner() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}
case "$cmd" in
  start)
    mkdir -p "$dir"
    [ "$(id -u)" = 0 ] && chown postgres "$dir"
    fresh=0
    if [ ! -d "$dir/data" ]; then
      fresh=1
      python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])' >"$dir/port"
      as_owner "$bin/initdb" -D "$dir/data" -A trust -U yserve --no-sync -E UTF8 >"$dir/initdb.log" 2>&1
    fi
    port=$(cat "$dir/port")
    as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 30 \
      -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c max_connections=200 ${PG_OPTIONS:-}" start >&2
    [ "$fresh" = 1 ] && as_owner "$bin/createdb" -h 127.0.0.1 -p "$port" -U yserve yserve
    echo "export YSERVE_TEST_PG=postgres://yserve@127.0.0.1:$port/yserve"
    ;;
  stop)
    [ -d "$dir/data" ] && as_owner "$bin/pg_ctl" -D "$dir/data" -m immediate -w stop >&2 || true
    ;;
  *) echo "usage: $0 start|stop DIR" >&2; exit 2 ;;
esac
