#!/usr/bin/env bash
# Instructions per request, per route: the server's own cost, counted by
# callgrind, so a before/after comparison of a change is not drowned in the
# host's noise (throughput on a shared 2-core host moves by +-15% between
# runs of the same binary; these counts repeat within about 1%).
#
#   ./bench/bench-instructions.sh [--no-build] [--bin PATH] [--tokens N] [--seconds S]
#
# Seeds a store with N tokens (default 1000), starts the release binary
# under valgrind --tool=callgrind, and for each route runs wrk (-t1 -c8)
# for a warmup, zeroes the counters, runs S seconds (default 5) and dumps
# them: every instruction the server executed in that window (all threads,
# user space only), divided by the requests wrk completed. Routes: /healthz,
# verify (500 tokens in turn), GET /me (500 JWTs in turn). The kernel's
# share (the TCP stack, about 2/3 of a request's CPU time here) is not
# counted. Note: under valgrind ring computes SHA-256 without the SHA
# extensions (about 2,100 instructions per 64-byte block instead of a few
# hundred), so routes that hash count more than they cost natively.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
HELPER=(python3 "$ROOT/bench/bench_helper.py")
LUA="$ROOT/bench/bench_wrk.lua"
TOKENS=1000
SECONDS_PER_ROUTE=5
BUILD=1
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/agent-tokens"
SECRET="agent-tokens-bench-hs256-secret-0123456789abcdef"

die() {
    echo "bench-instructions.sh: $*" >&2
    exit 1
}

while [ $# -gt 0 ]; do
    case "$1" in
    --tokens) TOKENS=${2:?}; shift 2 ;;
    --seconds) SECONDS_PER_ROUTE=${2:?}; shift 2 ;;
    --bin) BIN=${2:?}; BUILD=0; shift 2 ;;
    --no-build) BUILD=0; shift ;;
    -h | --help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
    *) die "unknown option $1 (see --help)" ;;
    esac
done
[[ $TOKENS =~ ^[0-9]+$ ]] && [ "$TOKENS" -ge 500 ] || die "--tokens must be a whole number, at least 500"
[[ $SECONDS_PER_ROUTE =~ ^[0-9]+$ ]] && [ "$SECONDS_PER_ROUTE" -ge 1 ] || die "--seconds must be a whole number, at least 1"

missing=()
command -v wrk >/dev/null || missing+=(wrk)
command -v valgrind >/dev/null || missing+=(valgrind)
[ ${#missing[@]} -eq 0 ] || "$ROOT/scripts/install-debian-packages.sh" "${missing[@]}" || die "cannot install ${missing[*]}"
if [ "$BUILD" -eq 1 ]; then
    (cd "$ROOT" && cargo build --release --quiet --bin agent-tokens) || die "the release build failed"
fi
[ -x "$BIN" ] || die "no binary at $BIN"

WORK=$(mktemp -d /var/tmp/agent-tokens-instructions.XXXXXX)
VG_PID=""
cleanup() {
    [ -z "$VG_PID" ] || kill "$VG_PID" 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

read -r PORT < <("${HELPER[@]}" ports 1)
"${HELPER[@]}" gen --tokens "$TOKENS" --dir "$WORK" --secret "$SECRET" --sample 500 --rotate-users 256 >/dev/null
cat >"$WORK/config.toml" <<EOF
[server]
bind = "127.0.0.1:$PORT"
access_log = false
[storage]
path = "$WORK/data"
[jwt]
algorithms = ["HS256"]
hmac_secret = "$SECRET"
[rate_limit]
management_per_minute = 0
EOF
"$BIN" import --config "$WORK/config.toml" <"$WORK/seed.jsonl" 2>"$WORK/import.log" ||
    die "import failed: $(tail -n 3 "$WORK/import.log")"

RUST_LOG=warn valgrind --tool=callgrind --callgrind-out-file="$WORK/cg.out" \
    "$BIN" serve --config "$WORK/config.toml" >"$WORK/server.log" 2>&1 &
VG_PID=$!
for _ in $(seq 600); do
    "${HELPER[@]}" check --port "$PORT" --path /healthz --contains ok >/dev/null 2>&1 && break
    kill -0 "$VG_PID" 2>/dev/null || die "the server exited: $(tail -n 5 "$WORK/server.log")"
    sleep 0.1
done

wrk_run() { # SECONDS PATH CREDENTIALS OUT
    BENCH_PATH=$2 BENCH_CREDENTIALS=$3 BENCH_OUT=$4 \
        wrk -t1 -c8 -d"$1s" -s "$LUA" "http://127.0.0.1:$PORT" >/dev/null || die "wrk failed on $2"
}

printf '%-34s %9s %12s %9s\n' route requests instr/req vs_healthz
base=""
for route in "GET /healthz|/healthz|" \
    "GET /api/agent-tokens/verify|/api/agent-tokens/verify|$WORK/verify_tokens.txt" \
    "GET /api/agent-tokens/me|/api/agent-tokens/me|$WORK/me_jwts.txt"; do
    IFS='|' read -r name path creds <<<"$route"
    wrk_run 2 "$path" "$creds" "$WORK/warmup.json"
    callgrind_control -z "$VG_PID" >/dev/null 2>&1
    wrk_run "$SECONDS_PER_ROUTE" "$path" "$creds" "$WORK/run.json"
    rm -f "$WORK"/cg.out.*
    callgrind_control -d "$VG_PID" >/dev/null 2>&1
    for _ in $(seq 100); do ls "$WORK"/cg.out.* >/dev/null 2>&1 && break; sleep 0.1; done
    dump=$(ls "$WORK"/cg.out.* 2>/dev/null | head -n 1)
    [ -n "$dump" ] || die "callgrind wrote no dump for $path"
    sleep 0.5 # the file appears before callgrind has finished writing it
    instructions=$(sed -n 's/^summary: *//p;s/^totals: *//p' "$dump" | head -n 1 | awk '{print $1}')
    requests=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["requests"])' "$WORK/run.json")
    [ "$requests" -gt 0 ] || die "wrk completed no request on $path"
    per=$((instructions / requests))
    [ -n "$base" ] || base=$per
    printf '%-34s %9d %12d %8.2fx\n' "$name" "$requests" "$per" "$(python3 -c "print($base / $per)")"
done
