#!/usr/bin/env bash
# Installs what the browser test needs: Debian's chromium (playwright's own browser download
# does not work on these machines, so `npx playwright install` is never used) and the npm
# packages (playwright-core; yjs, y-websocket and ws for the Node client some tests use).
# Idempotent; run before `npm test`.
set -euo pipefail
cd "$(dirname "$0")"

if [ -z "${CHROMIUM_BIN:-}" ] && [ ! -x /usr/bin/chromium ]; then
  echo "==> installing chromium (apt)"
  sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium >/dev/null
fi
"${CHROMIUM_BIN:-/usr/bin/chromium}" --version
npm ci --no-audit --no-fund --loglevel=error
