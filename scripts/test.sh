#!/usr/bin/env bash
# The project's test command: installs what the tests need, then runs them all.
# Tests never skip because a tool is missing; this script provides the tools.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

# nginx with auth_request, for the gateway test (tests/api/gateway.rs).
if [ ! -x /usr/sbin/nginx ]; then
  export DEBIAN_FRONTEND=noninteractive
  as_root apt-get install -y --no-install-recommends nginx-light \
    || { as_root apt-get update && as_root apt-get install -y --no-install-recommends nginx-light; }
fi

# Caddy 2.6 from Debian, for the Caddy recipe's test (tests/api/caddy.rs).
if [ ! -x /usr/bin/caddy ]; then
  export DEBIAN_FRONTEND=noninteractive
  as_root apt-get install -y --no-install-recommends caddy \
    || { as_root apt-get update && as_root apt-get install -y --no-install-recommends caddy; }
fi

# Apache httpd with mod_oauth2, and curl, for the consumer tests (tests/api/consumers.rs).
if [ ! -x /usr/sbin/apache2 ] || [ ! -f /usr/lib/apache2/modules/mod_oauth2.so ] || ! command -v curl >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  as_root apt-get install -y --no-install-recommends apache2 libapache2-mod-oauth2 curl \
    || { as_root apt-get update && as_root apt-get install -y --no-install-recommends apache2 libapache2-mod-oauth2 curl; }
fi

# PostgreSQL from Debian, for the shared store's tests (tests/common/pg.rs
# starts a cluster in a temporary directory as an unprivileged user; util-linux's
# runuser drops root).
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || ! command -v runuser >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  as_root apt-get install -y --no-install-recommends postgresql util-linux \
    || { as_root apt-get update && as_root apt-get install -y --no-install-recommends postgresql util-linux; }
fi

# FastMCP from PyPI, pinned, in its own venv, for the MCP consumer test
# (tests/api/consumers.rs, tests/consumers/*.py).
FASTMCP_VERSION=4.0.10
CONSUMERS_VENV=target/consumers-venv
if [ "$("$CONSUMERS_VENV/bin/python" -c 'import fastmcp; print(fastmcp.__version__)' 2>/dev/null)" != "$FASTMCP_VERSION" ]; then
  rm -rf "$CONSUMERS_VENV"
  python3 -m venv "$CONSUMERS_VENV"
  "$CONSUMERS_VENV/bin/python" -m pip install --quiet "fastmcp==$FASTMCP_VERSION"
fi

# systemd-analyze, for the unit's security score (tests/packaging.rs).
if ! command -v systemd-analyze >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  as_root apt-get install -y --no-install-recommends systemd \
    || { as_root apt-get update && as_root apt-get install -y --no-install-recommends systemd; }
fi

# Node.js and npm's oauth2-mock-server: a real OpenID provider on loopback
# for the identity-provider tests (tests/idp.rs), pinned by tests/idp/package-lock.json.
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  as_root apt-get install -y --no-install-recommends nodejs npm \
    || { as_root apt-get update && as_root apt-get install -y --no-install-recommends nodejs npm; }
fi
if [ ! -f tests/idp/node_modules/.package-lock.json ] \
  || [ tests/idp/package-lock.json -nt tests/idp/node_modules/.package-lock.json ]; then
  (cd tests/idp && npm ci --no-audit --no-fund)
fi

# cargo-deb, for the Debian package (tests/deb.rs, scripts/offline-bundle.sh).
CARGO_DEB_VERSION=3.8.0
if [ "$(cargo deb --version 2>/dev/null)" != "cargo-deb $CARGO_DEB_VERSION" ]; then
  cargo install cargo-deb --version "$CARGO_DEB_VERSION" --locked
fi

# pre-commit, to run the scan hook as users will (tests/scan.rs).
PRE_COMMIT_VERSION=4.7.0
PRE_COMMIT_VENV=target/tools/pre-commit
if [ "$("$PRE_COMMIT_VENV/bin/pre-commit" --version 2>/dev/null)" != "pre-commit $PRE_COMMIT_VERSION" ]; then
  python3 -m venv "$PRE_COMMIT_VENV"
  "$PRE_COMMIT_VENV/bin/pip" install --quiet "pre-commit==$PRE_COMMIT_VERSION"
fi

# third_party/fjall is the published fjall plus third_party/fjall.patch, nothing else.
./scripts/fjall-patch.sh

# The benchmark's own analysis (interleaved-run ratios) and its nginx config.
python3 bench/bench_helper.py selftest

cargo test --all-targets "$@"

# The API suite again, on PostgreSQL instead of the embedded store.
AGENT_TOKENS_TEST_BACKEND=postgres cargo test --test api "$@"

# API conformance of the running server against its own /openapi.json
# (installs schemathesis from PyPI itself).
./scripts/conformance.sh target/debug/agent-tokens
