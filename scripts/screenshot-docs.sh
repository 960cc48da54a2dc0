#!/usr/bin/env bash
# Screenshots of the HTML API pages, to look at them as a person would.
# Builds the release binary, starts `serve --dev` on a free loopback port,
# takes headless Chromium screenshots of /docs and the management page into
# $1 (default ./target/screenshots), and stops the server.
set -euo pipefail
cd "$(dirname "$0")/.."

out="${1:-target/screenshots}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

browser="$(command -v chromium || command -v chromium-browser || true)"
if [ -z "$browser" ]; then
  export DEBIAN_FRONTEND=noninteractive
  as_root apt-get install -y chromium \
    || { as_root apt-get update && as_root apt-get install -y chromium; }
  browser="$(command -v chromium)"
fi

cargo build --release --quiet

# A free port: bind port 0 and read back what the kernel chose.
port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
base="http://127.0.0.1:$port"

work="$(mktemp -d)"
server_pid=""
cleanup() {
  if [ -n "$server_pid" ]; then
    kill "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

AGENT_TOKENS__SERVER__BIND="127.0.0.1:$port" ./target/release/agent-tokens serve --dev \
  >"$work/server.log" 2>&1 &
server_pid=$!

for _ in $(seq 1 100); do
  if curl -fsS "$base/healthz" >/dev/null 2>&1; then break; fi
  if ! kill -0 "$server_pid" 2>/dev/null; then
    echo "the server exited:" >&2
    cat "$work/server.log" >&2
    exit 1
  fi
  sleep 0.1
done
curl -fsS "$base/healthz" >/dev/null

shoot() {
  local path="$1" file="$2"
  # A fresh profile per shot: no state, no first-run prompts, no network.
  local profile
  profile="$(mktemp -d -p "$work")"
  "$browser" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
    --disable-background-networking --disable-component-update --disable-sync \
    --user-data-dir="$profile" --window-size=1280,1600 \
    --screenshot="$out/$file" "$base$path" >"$work/chromium.log" 2>&1 || {
    cat "$work/chromium.log" >&2
    exit 1
  }
  [ -s "$out/$file" ] || { echo "no screenshot of $path" >&2; exit 1; }
  echo "$out/$file  <- $path"
}

shoot /docs docs-index.png
shoot /docs/token-management-user-jwt docs-token-management-user-jwt.png
shoot /docs/agent-token-verification docs-agent-token-verification.png
