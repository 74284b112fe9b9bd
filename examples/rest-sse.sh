#!/usr/bin/env bash
# A walk-through of yserve's HTTP API with curl: stats, a text written through the OT REST
# mirror, the update log, JSON rendering, time travel (?at=), binary updates in and out,
# advisory locks, and a Server-Sent Events stream that is resumed with Last-Event-ID.
#
#   cargo run --release                  # in another terminal: a server on 127.0.0.1:1234
#   examples/rest-sse.sh                 # this walk-through
#
# Environment:
#   YSERVE_HTTP         the server (default http://127.0.0.1:1234)
#   YSERVE_TOKEN        a JWT with a write grant on examples/* (when the server has a key)
#   YSERVE_OTHER_TOKEN  a second user's token: shows a lock held by someone else (409, 423).
#                       Without it the walk-through says so and skips those two steps, because
#                       in anonymous mode every request is the same user.
#   YSERVE_DOC          a new document name to use (default: examples/rest-<time>-<pid>); the
#                       checks expect it to start empty
#
# Needs bash and curl. Exits non-zero as soon as a step does not answer as expected.
set -euo pipefail

HTTP=${YSERVE_HTTP:-http://127.0.0.1:1234}
HTTP=${HTTP%/}
TOKEN=${YSERVE_TOKEN:-}
OTHER_TOKEN=${YSERVE_OTHER_TOKEN:-}
DOC=${YSERVE_DOC:-examples/rest-$(date +%s)-$$}
COPY="$DOC-copy"
TEXT=t

# A document name is one percent-encoded path segment: `/` is %2F (encodeURIComponent).
encode() {
  # Byte by byte (LC_ALL=C), so that a multi-byte UTF-8 character becomes its %XX bytes.
  local LC_ALL=C s=$1 out='' c i
  for ((i = 0; i < ${#s}; i++)); do
    c=${s:i:1}
    case $c in
      [a-zA-Z0-9.~_-]) out+=$c ;;
      *) out+=$(printf '%%%02X' "'$c") ;;
    esac
  done
  printf '%s' "$out"
}
D=$(encode "$DOC")
C=$(encode "$COPY")

WORK=$(mktemp -d)
PIDS=()
cleanup() {
  local pid
  for pid in ${PIDS[@]+"${PIDS[@]}"}; do kill "$pid" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

fail() {
  echo "FAILED: $*" >&2
  exit 1
}

step() { printf '\n## %s\n' "$*"; }
say() { printf '# %s\n' "$*"; }

# Shell-quotes an argument for display, only when it needs it.
shown() {
  case $1 in
    *[!a-zA-Z0-9%@:/._=?\&-]*) printf "'%s'" "$1" ;; # no argument here holds a quote
    *) printf '%s' "$1" ;;
  esac
}

# api STATUS METHOD PATH [curl args...]: prints the request and the answer, keeps the body in
# $BODY, and fails unless the HTTP status is STATUS. Tokens are sent but never printed.
# Set AS_TOKEN to send a different token for one call.
BODY=''
api() {
  local want=$1 method=$2 path=$3
  shift 3
  local token=${AS_TOKEN-$TOKEN} auth=() arg line
  line="\$ curl"
  [ "$method" = GET ] || line+=" -X $method"
  if [ -n "$token" ]; then
    auth=(-H "Authorization: Bearer $token")
    if [ -n "${AS_TOKEN:-}" ]; then
      line+=' -H "Authorization: Bearer $YSERVE_OTHER_TOKEN"'
    else
      line+=' -H "Authorization: Bearer $YSERVE_TOKEN"'
    fi
  fi
  line+=" $(shown "$HTTP$path")"
  for arg in "$@"; do line+=" $(shown "$arg")"; done
  printf '%s\n' "$line"
  local out status
  out=$(curl -sS -X "$method" ${auth[@]+"${auth[@]}"} -w '\n%{http_code}' "$@" "$HTTP$path") ||
    fail "curl could not reach $HTTP$path (is the server running? set YSERVE_HTTP)"
  status=${out##*$'\n'}
  BODY=${out%$'\n'*}
  [ -n "$BODY" ] && printf '%s\n' "$BODY"
  echo "-> HTTP $status"
  if [ "$status" = 401 ] && [ -z "$token" ]; then
    fail "$method $path answered 401: the server wants a token; set YSERVE_TOKEN (yserve token --sub you --doc 'examples/*=write')"
  fi
  [ "$status" = "$want" ] || fail "$method $path answered $status, expected $want"
}

# The integer after "KEY": in $BODY (the last one, for "v" in a text snapshot).
number() {
  grep -o "\"$1\":[0-9]*" <<<"$BODY" | tail -n 1 | cut -d: -f2
}

# The current version of the text: OT ops are based on a version.
version() {
  api 200 GET "/api/docs/$D/texts/$TEXT" >/dev/null
  number v
}

# Waits up to 10 s for a line matching PATTERN (grep -E) in FILE.
wait_for_line() {
  local file=$1 pattern=$2 i
  for ((i = 0; i < 100; i++)); do
    grep -Eq "$pattern" "$file" 2>/dev/null && return 0
    sleep 0.1
  done
  fail "no line matching /$pattern/ in $file after 10 s; it holds: $(cat "$file")"
}

# An event stream read by curl -N in the background; its pid goes to $PIDS so that it is
# killed on exit. Extra arguments go to curl (a Last-Event-ID header).
listen() {
  local file=$1
  shift
  local auth=()
  [ -n "$TOKEN" ] && auth=(-H "Authorization: Bearer $TOKEN")
  curl -sN -D "$file.headers" ${auth[@]+"${auth[@]}"} "$@" "$HTTP/api/docs/$D/events" >"$file" &
  LISTENER=$!
  PIDS+=("$LISTENER")
  # The server subscribes the stream before it sends the response headers, so once curl
  # has them no later event can be missed.
  wait_for_line "$file.headers" '^HTTP/[0-9.]+ 200'
}

echo "yserve HTTP API walk-through against $HTTP, document '$DOC'"

step "1. Is the server up? /healthz is open; /api/stats needs the same token as the API"
api 200 GET /healthz
api 200 GET /api/stats

step "2. Write a text through the OT REST mirror (Quill Delta ops on the root text '$TEXT')"
say "Every text exists, empty at version 1. Ops are based on a version, as in ShareDB."
v=$(version)
api 200 POST "/api/docs/$D/texts/$TEXT" -d "{\"v\": $v, \"src\": \"curl-demo\", \"seq\": 1, \"op\": [{\"insert\": \"Hello\"}]}"
v=$(version)
say "INSERT with formatting: retain 5, insert ' world' in bold (based on version $v)"
api 200 POST "/api/docs/$D/texts/$TEXT" -d "{\"v\": $v, \"src\": \"curl-demo\", \"seq\": 2, \"op\": [{\"retain\": 5}, {\"insert\": \" world\", \"attributes\": {\"bold\": true}}]}"
say "REPLACE sent stale (based on version $v again): the server transforms it and returns the op it missed"
api 200 POST "/api/docs/$D/texts/$TEXT" -d "{\"v\": $v, \"src\": \"curl-demo\", \"seq\": 3, \"op\": [{\"replace\": 5, \"insert\": \"Howdy\"}]}"
say "The same op again (same src and seq) is acknowledged but not applied twice"
api 200 POST "/api/docs/$D/texts/$TEXT" -d "{\"v\": $v, \"src\": \"curl-demo\", \"seq\": 3, \"op\": [{\"replace\": 5, \"insert\": \"Howdy\"}]}"
say "DELETE: remove the first character"
v=$(version)
api 200 POST "/api/docs/$D/texts/$TEXT" -d "{\"v\": $v, \"src\": \"curl-demo\", \"seq\": 4, \"op\": [{\"delete\": 1}]}"
say "The text now, and the op log since version 1"
api 200 GET "/api/docs/$D/texts/$TEXT"
grep -q '"text":"owdy world"' <<<"$BODY" || fail "expected the text 'owdy world'"
api 200 GET "/api/docs/$D/texts/$TEXT/ops?from=1"

step "3. The Yjs side: every OT op was stored as a Yjs update (origin 'ot'; the OT op log keeps the user)"
api 200 GET "/api/docs/$D/history"
last_seq=$(grep -o '"seq":[0-9]*' <<<"$BODY" | tail -n 1 | cut -d: -f2)
[ "${last_seq:-0}" -ge 4 ] || fail "expected at least 4 updates in the history"
api 200 GET "/api/docs/$D/json"
grep -q '"owdy world"' <<<"$BODY" || fail "expected {\"$TEXT\": \"owdy world\"}"

step "4. Time travel: the document right after update 1, then right after update 2"
api 200 GET "/api/docs/$D/json?at=1"
grep -q '"Hello"' <<<"$BODY" || fail "expected 'Hello' at seq 1"
api 200 GET "/api/docs/$D/json?at=2"
grep -q '"Hello world"' <<<"$BODY" || fail "expected 'Hello world' at seq 2"
say "A seq beyond the log is 404"
api 404 GET "/api/docs/$D/json?at=999999"

step "5. Binary Yjs updates: download the state, post it to another document"
api 200 GET "/api/docs/$D/update" -o "$WORK/state.bin"
echo "# saved $(wc -c <"$WORK/state.bin" | tr -d ' ') bytes: a Yjs v1 update (Y.applyUpdate reads it)"
api 200 POST "/api/docs/$C/update" -H 'Content-Type: application/octet-stream' --data-binary "@$WORK/state.bin"
grep -q '"applied":true' <<<"$BODY" || fail "expected the update to be applied"
say "Posting it again adds nothing: only what is new is stored"
api 200 POST "/api/docs/$C/update" -H 'Content-Type: application/octet-stream' --data-binary "@$WORK/state.bin"
grep -q '"applied":false' <<<"$BODY" || fail "expected nothing new"
api 200 GET "/api/docs/$C/json"
grep -q '"owdy world"' <<<"$BODY" || fail "the copy should hold the same text"
say "Without Content-Type: application/octet-stream the server answers 415"
api 415 POST "/api/docs/$C/update" --data-binary "@$WORK/state.bin"
say "Documents you may read: size, update count, last change, live connections"
api 200 GET /api/docs

step "6. Server-Sent Events: 'curl -N' in the background, then an edit and a lock"
listen "$WORK/events-1.txt"
say "curl -N $HTTP/api/docs/$D/events   (running in the background, pid $LISTENER)"
v=$(version)
api 200 POST "/api/docs/$D/texts/$TEXT" -d "{\"v\": $v, \"src\": \"curl-demo\", \"seq\": 5, \"op\": [{\"insert\": \"H\"}]}"
api 200 POST "/api/docs/$D/locks/$TEXT?ttl=1m"
wait_for_line "$WORK/events-1.txt" '"action":"acquired"'
say "What the stream received:"
cat "$WORK/events-1.txt"
grep -q '^event: *update' "$WORK/events-1.txt" || fail "no update event on the stream"
first_id=$(sed -n 's/^id: *//p' "$WORK/events-1.txt" | head -n 1)
say "Its first event id is $first_id (SEQ.N). Now the reader goes away..."
kill "$LISTENER" 2>/dev/null || true
wait "$LISTENER" 2>/dev/null || true

step "7. Locks: the holder may renew and release; someone else gets 409"
api 200 GET "/api/docs/$D/locks"
say "Renewing our own lock is 200"
api 200 POST "/api/docs/$D/locks/$TEXT?ttl=1m"
if [ -n "$OTHER_TOKEN" ]; then
  say "Another user asks for the same lock: 409 with the holder"
  AS_TOKEN=$OTHER_TOKEN api 409 POST "/api/docs/$D/locks/$TEXT"
  say "...and their OT write to the locked text is refused: 423"
  v=$(version)
  AS_TOKEN=$OTHER_TOKEN api 423 POST "/api/docs/$D/texts/$TEXT" -d "{\"v\": $v, \"src\": \"curl-other\", \"seq\": 1, \"op\": [{\"insert\": \"?\"}]}"
  say "...nor may they release it: 409"
  AS_TOKEN=$OTHER_TOKEN api 409 DELETE "/api/docs/$D/locks/$TEXT"
else
  say "Skipped: a lock held by another user (409) needs YSERVE_OTHER_TOKEN, a second user's token."
  say "In anonymous mode every request is the same user, so a second POST is a renewal."
fi
api 200 DELETE "/api/docs/$D/locks/$TEXT"
say "Releasing a lock that is not held is 404"
api 404 DELETE "/api/docs/$D/locks/$TEXT"

step "8. An edit nobody is listening to, then resume the stream with Last-Event-ID: $first_id"
v=$(version)
api 200 POST "/api/docs/$D/texts/$TEXT" -d "{\"v\": $v, \"src\": \"curl-demo\", \"seq\": 6, \"op\": [{\"retain\": 1}, {\"insert\": \"i\"}]}"
api 200 GET "/api/docs/$D/history?after=$last_seq"
missed_seq=$(grep -o '"seq":[0-9]*' <<<"$BODY" | tail -n 1 | cut -d: -f2)
listen "$WORK/events-2.txt" -H "Last-Event-ID: $first_id"
say "curl -N -H 'Last-Event-ID: $first_id' $HTTP/api/docs/$D/events   (background, pid $LISTENER)"
wait_for_line "$WORK/events-2.txt" "\"seq\":$missed_seq[,}]"
say "The resumed stream starts after $first_id and includes the missed update $missed_seq"
say "(marked \"replayed\" when it comes from the log rather than the live buffer):"
cat "$WORK/events-2.txt"
if grep -q "^id: *$first_id\$" "$WORK/events-2.txt"; then fail "the resumed stream repeated event $first_id"; fi
kill "$LISTENER" 2>/dev/null || true
wait "$LISTENER" 2>/dev/null || true

step "9. Presence (empty unless a Yjs client is connected), metrics, and deleting the copy"
api 200 GET "/api/docs/$D/presence"
echo "\$ curl $HTTP/metrics | grep -E '^yserve_(connections|ot_ops_total|sse_streams) '"
curl -sS "$HTTP/metrics" | grep -E '^yserve_(connections|ot_ops_total|sse_streams) ' || fail "no metrics"
api 200 DELETE "/api/docs/$C"
api 404 GET "/api/docs/$C/history"

api 200 GET "/api/docs/$D/texts/$TEXT" >/dev/null
echo
final=$(grep -o '"text":"[^"]*"' <<<"$BODY" | cut -d'"' -f4)
echo "ok: the walk-through finished; document '$DOC' holds the text '$final'"
