#!/usr/bin/env bash
# Makes sure the dashboard's browser test (tests/dashboard.rs, headless_chromium_*) has what it
# drives: Debian's chromium (installed with apt-get when missing; needs root) and Node.js 20 or
# newer (preinstalled on these machines; its built-in WebSocket speaks the DevTools protocol).
set -euo pipefail
say() { echo "chromium.sh: $*" >&2; }
if ! command -v chromium >/dev/null 2>&1; then
  [ "$(id -u)" = 0 ] || { say "no chromium, and installing it needs root (apt-get install chromium)"; exit 1; }
  say "installing Debian's chromium with apt-get"
  DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium >/dev/null
fi
node_major="$(node --version 2>/dev/null | sed -E 's/^v([0-9]+).*/\1/' || true)"
if [ -z "$node_major" ] || [ "$node_major" -lt 20 ]; then
  say "the browser test needs Node.js 20 or newer on PATH (found: ${node_major:-none})"
  exit 1
fi
say "$(chromium --version 2>/dev/null | head -1), node v$node_major"
