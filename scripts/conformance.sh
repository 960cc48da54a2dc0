#!/usr/bin/env bash
# API conformance: schemathesis (from PyPI) against the running server's own
# /openapi.json, with positive, negative and stateful phases and valid
# credentials for both security schemes. Fails on any failure (a 5xx, or a
# response outside the schema). Usage: scripts/conformance.sh [BINARY]
set -euo pipefail
cd "$(dirname "$0")/.."

SCHEMATHESIS_VERSION="4.32.5"
if ! command -v st >/dev/null 2>&1 || ! st --version 2>/dev/null | grep -q "$SCHEMATHESIS_VERSION"; then
  python3 -m pip install --quiet --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"
fi

bin="${1:-target/debug/agent-tokens}"
[ -x "$bin" ] || cargo build --quiet
work="$(mktemp -d)"
server_pid=""
cleanup() {
  if [ -n "$server_pid" ]; then kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
secret="conformance-secret-$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')"
cat > "$work/config.toml" <<TOML
[server]
bind = "127.0.0.1:$port"
access_log = false
[storage]
path = "$work/db"
cache_mb = 16
[jwt]
algorithms = ["HS256"]
hmac_secret = "$secret"
[rate_limit]
management_per_minute = 0
[introspection]
clients_file = "$work/introspection-clients"
[admin]
token_file = "$work/admin-token"
TOML
# The routes that exist only when configured are tested too: introspection
# and RFC 7009 with a client's credentials, deprovisioning without the
# admin secret (every call 401), so fuzzing never revokes the test's token.
client_secret="conformance-client-$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')"
printf 'conformance:%s\n' "$client_secret" > "$work/introspection-clients"
printf 'admin-%s\n' "$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')" > "$work/admin-token"
chmod 600 "$work/introspection-clients" "$work/admin-token"
export ST_CLIENT_SECRET="$client_secret"

# An HS256 JWT signed with the test secret, from the standard library alone.
jwt() {
  SECRET="$secret" SUB="$1" python3 - <<'PY'
import base64, hashlib, hmac, json, os, time
b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
body = b64(json.dumps({"sub": os.environ["SUB"], "exp": int(time.time()) + 3600}).encode())
sig = hmac.new(os.environ["SECRET"].encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
print(f"{head}.{body}.{b64(sig)}")
PY
}

RUST_LOG=warn "$bin" serve --config "$work/config.toml" 2> "$work/server.log" &
server_pid=$!
for _ in $(seq 100); do
  curl -fsS "http://127.0.0.1:$port/healthz" >/dev/null 2>&1 && break
  sleep 0.1
done

# Management operations act on one user; the agent token belongs to another,
# so fuzzed rotations and revocations never invalidate it.
export ST_USER_JWT="$(jwt conformance-user)"
verifier_jwt="$(jwt conformance-verifier)"
export ST_AGENT_TOKEN="$(curl -fsS -X POST "http://127.0.0.1:$port/api/agent-tokens/me" \
  -H "Authorization: Bearer $verifier_jwt" | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')"

cat > "$work/schemathesis.toml" <<'TOML'
[auth.openapi.user_jwt]
bearer = "${ST_USER_JWT}"

[auth.openapi.agent_token]
bearer = "${ST_AGENT_TOKEN}"

[auth.openapi.introspection_client]
username = "conformance"
password = "${ST_CLIENT_SECRET}"
TOML

status=0
st --config-file "$work/schemathesis.toml" run "http://127.0.0.1:$port/openapi.json" \
  --checks all \
  --phases examples,coverage,fuzzing,stateful \
  --mode all \
  --max-examples "${CONFORMANCE_MAX_EXAMPLES:-100}" \
  --no-color || status=$?

if grep -q "panicked" "$work/server.log"; then
  echo "conformance: the server panicked:" >&2
  cat "$work/server.log" >&2
  status=1
fi
exit "$status"
