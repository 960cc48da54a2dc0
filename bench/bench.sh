#!/usr/bin/env bash
# Benchmark agent-tokens end to end on this machine and print one summary table.
#
#   ./bench/bench.sh [--tokens N[,N...]] [--out FILE] [options]
#
# By default it runs twice: on a store of a million tokens, then on one of
# a thousand. In each run: builds the release binary, seeds a fresh store with N tokens
# through `agent-tokens import` (timed), starts the server (timed to the first
# 200 from /readyz), loads it with wrk over loopback, measures the raw
# 4 KiB append + fdatasync rate of the data directory's filesystem, runs the
# README's nginx auth_request recipe against nginx-only ceilings, reads the
# server's peak RSS and the data directory size, restarts it (timed), and
# prints the table.
#
# The gateway ceiling: the same front nginx whose auth subrequests go to a
# second nginx, in its own processes (as many workers as the server), that
# answers `return 204`: the cheapest separate auth service there can be, so
# the ratio is what checking an agent token costs. For context the table
# also gives the ratio to a `return 204` server inside the front nginx
# itself, which pays no hop to another process at all.
#
# Working sets: verify and GET /me are measured on each of three sets of
# tokens (and their users) at once: a small hot set (1,000), 100,000
# distinct tokens and users, and every token uniformly (verify only: a
# million signed JWTs is more than the client should hold). Each list is
# walked in a shuffled order, each token once per pass, so a set larger
# than the server's caches cannot hide in them. One unmeasured pass over
# each large set comes first (at most 20 s per route), so the runs measure
# agents the server has seen before, not every agent's first visit. On a
# small store the sets that would be as large as the store are dropped.
# Latency runs and the gateway use the 100,000 set (the largest with JWTs).
#
# Each ratio with a route as its baseline (GET /me and verify to /healthz,
# the nginx recipe to the same nginx whose auth subrequest goes to
# `return 204`) comes from one wrk run in which the two take turns in short
# slices on the same connections (A B B A ..., 50 ms each; see
# bench/bench_wrk.lua): this host's speed moves by 15% from one 100 ms to
# the next and stays correlated for about a second, so separate runs seconds
# apart measured the host as much as the routes (per-pair ratios of 5 s runs
# spread over +-10%; a median of 300 slice pairs repeats within about 2%).
# Rotations and the fdatasync probe take turns the same way in 200 ms slices,
# in two processes on one clock (the probe syncs only in A slices, wrk sends
# only in B ones). The table gives the median of the per-pair ratios and a
# 95% confidence interval for it. Latency percentiles come from one run per
# route. It reports; it never fails on a missed target (the exit status is
# non-zero only when something in the benchmark itself broke).
#
# Options:
#   --tokens N[,N...]  tokens (users) in the seed; a list runs the whole benchmark
#                      once per store size (default 1000000,1000)
#   --sets SPEC        working sets, NAME=SIZE,... (SIZE all: every token not
#                      kept for rotations; default hot=1000,distinct=100000,uniform=all)
#   --bin PATH         benchmark this binary instead of building one (a before/after
#                      comparison: an older build copied aside)
#   --out FILE         also write the summary table to FILE
#   --ab-seconds S     seconds of each interleaved ratio run, after the warmup (default 30)
#   --slice-ms MS      slice length of the interleaved runs (default 50)
#   --duration S       seconds of each latency run (and the continuous rotation run; default 5)
#   --warmup S         seconds of warmup before each measured run (default 1)
#   --rotate-slice-ms MS  slice length of the rotations / fdatasync run (default 200;
#                      its first fifth is not counted, for the other side's last requests)
#   --threads T        wrk threads (default 1)
#   --connections C    wrk connections (default 64)
#   --rotate-users R   users the rotation run cycles through (default 512, at least 256)
#   --cache-mb M       storage.cache_mb for the server (default: unset, the product default)
#   --workers W        server.workers for the server (default: unset, the product
#                      default of one per CPU)
#   --nginx-workers W  nginx worker_processes (default auto, as Debian ships it: with
#                      1, nginx itself is the bottleneck and hides our cost)
#   --dir DIR          parent of the work directory (default /var/tmp); the data
#                      directory and the fdatasync probe live there
#   --cold             also time a restart after dropping the page cache (root only)
#   --no-nginx         skip the gateway runs
#   --no-build         use the existing target/release/agent-tokens
#   --keep             keep the work directory (logs, seed, results)
#   --postgres-url URL storage.backend = "postgres" on this URL (an empty
#                      database; docs/postgresql.md) instead of the embedded store
#
# Client settings: 2 cores are shared by wrk, the server (2 actix workers)
# and, for the gateway runs, nginx. The default is one wrk thread with 64
# connections: measured here, that saturates both cores on /healthz (server
# ~1 core, wrk ~0.9), while -c32 leaves ~15% idle (loopback ping-pong, so the
# "ceiling" would be a latency figure), and a second wrk thread only takes
# CPU from the server. 64 concurrent writers also give group commit a fair
# batch. Every run uses the same Lua script (bench/bench_wrk.lua, requests
# built up front), so the client's cost per request is the same for every
# route. Ratios are medians of per-pair ratios (A B B A ...), which cancels
# slow drifts in what else the host is doing; the report warns when other
# processes were busy when the run started.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
HELPER=(python3 "$ROOT/bench/bench_helper.py")
LUA="$ROOT/bench/bench_wrk.lua"

TOKENS=1000000,1000
SETS="hot=1000,distinct=100000,uniform=all"
BIN_GIVEN=""
OUT=""
AB_SECONDS=30
SLICE_MS=50
DURATION=5
WARMUP=1
ROT_SLICE_MS=200
THREADS=1
CONNECTIONS=64
ROTATE_USERS=512
CACHE_MB=0
WORKERS=0
NGINX_WORKERS=auto
PARENT=/var/tmp
COLD=0
NGINX=1
BUILD=1
KEEP=0
PG_URL=""
SECRET="agent-tokens-bench-hs256-secret-0123456789abcdef"

die() {
    echo "bench.sh: $*" >&2
    exit 1
}

ARGS=("$@")
while [ $# -gt 0 ]; do
    case "$1" in
    --tokens) TOKENS=${2:?}; shift 2 ;;
    --out) OUT=${2:?}; shift 2 ;;
    --ab-seconds) AB_SECONDS=${2:?}; shift 2 ;;
    --slice-ms) SLICE_MS=${2:?}; shift 2 ;;
    --duration) DURATION=${2:?}; shift 2 ;;
    --warmup) WARMUP=${2:?}; shift 2 ;;
    --rotate-slice-ms) ROT_SLICE_MS=${2:?}; shift 2 ;;
    --threads) THREADS=${2:?}; shift 2 ;;
    --connections) CONNECTIONS=${2:?}; shift 2 ;;
    --sets) SETS=${2:?}; shift 2 ;;
    --bin) BIN_GIVEN=${2:?}; shift 2 ;;
    --sample) die "--sample is gone: working sets are --sets NAME=SIZE,... (see --help)" ;;
    --rotate-users) ROTATE_USERS=${2:?}; shift 2 ;;
    --cache-mb) CACHE_MB=${2:?}; shift 2 ;;
    --workers) WORKERS=${2:?}; shift 2 ;;
    --nginx-workers) NGINX_WORKERS=${2:?}; shift 2 ;;
    --dir) PARENT=${2:?}; shift 2 ;;
    --cold) COLD=1; shift ;;
    --no-nginx) NGINX=0; shift ;;
    --no-build) BUILD=0; shift ;;
    --keep) KEEP=1; shift ;;
    --postgres-url) PG_URL=${2:?}; shift 2 ;;
    -h | --help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
    *) die "unknown option $1 (see --help)" ;;
    esac
done
if [ -n "$OUT" ]; then
    case "$OUT" in /*) ;; *) OUT="$PWD/$OUT" ;; esac
fi
[[ $TOKENS =~ ^[0-9]+(,[0-9]+)*$ ]] || die "--tokens must be a whole number or a list of them"
if [[ $TOKENS == *,* ]]; then
    # One whole run per store size (later options win, so --tokens last).
    # The first builds; the report is each run's, one after the other.
    reports=$(mktemp -d /tmp/agent-tokens-bench-reports.XXXXXX)
    build=()
    n=0
    for tokens in ${TOKENS//,/ }; do
        n=$((n + 1))
        "$0" "${ARGS[@]}" "${build[@]}" --tokens "$tokens" --out "$reports/$n.txt" >/dev/null ||
            { rm -rf "$reports"; die "the run with $tokens tokens failed"; }
        build=(--no-build)
    done
    for i in $(seq "$n"); do
        [ "$i" -eq 1 ] || echo
        cat "$reports/$i.txt"
    done | tee ${OUT:+"$OUT"}
    rm -rf "$reports"
    exit 0
fi
for v in TOKENS AB_SECONDS SLICE_MS ROT_SLICE_MS DURATION WARMUP THREADS CONNECTIONS ROTATE_USERS CACHE_MB WORKERS; do
    [[ ${!v} =~ ^[0-9]+$ ]] || die "--${v,,} must be a whole number"
done
[ "$TOKENS" -ge 1 ] || die "--tokens must be at least 1"
[ "$AB_SECONDS" -ge 1 ] || die "--ab-seconds must be at least 1"
[ "$SLICE_MS" -ge 10 ] || die "--slice-ms must be at least 10"
[ "$ROT_SLICE_MS" -ge 10 ] || die "--rotate-slice-ms must be at least 10"
[ "$ROTATE_USERS" -ge 256 ] || die "--rotate-users must be at least 256"
[ "$CONNECTIONS" -ge "$THREADS" ] || die "--connections must be at least --threads"

# ---------------------------------------------------------------- tools

missing=()
command -v wrk >/dev/null || missing+=(wrk)
[ "$NGINX" -eq 0 ] || [ -x /usr/sbin/nginx ] || missing+=(nginx-light)
command -v python3 >/dev/null || missing+=(python3)
[ ${#missing[@]} -eq 0 ] || "$ROOT/scripts/install-debian-packages.sh" "${missing[@]}" || die "cannot install ${missing[*]}"

BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/agent-tokens"
case "$BIN" in /*) ;; *) BIN="$ROOT/$BIN" ;; esac
if [ -n "$BIN_GIVEN" ]; then
    BIN=$(realpath "$BIN_GIVEN")
    BUILD=0
fi
if [ "$BUILD" -eq 1 ]; then
    echo "bench.sh: cargo build --release" >&2
    (cd "$ROOT" && cargo build --release --quiet --bin agent-tokens) || die "the release build failed"
fi
[ -x "$BIN" ] || die "no binary at $BIN (drop --no-build)"

# ---------------------------------------------------------------- work dir and cleanup

mkdir -p "$PARENT"
WORK=$(mktemp -d "$PARENT/agent-tokens-bench.XXXXXX")
mkdir -p "$WORK/results" "$WORK/nginx"
DATA="$WORK/data"
SUPERVISOR_PID=""
SERVER_PID=""
NGINX_PIDS=()
BG_PID=""
PROBE_PID=""

stop_pid() { # pid: TERM, then KILL after 10 s
    local pid=$1
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 100); do
        kill -0 "$pid" 2>/dev/null || return 0
        grep -q '^State:.*Z' "/proc/$pid/status" 2>/dev/null && return 0
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
}

cleanup() {
    local status=$?
    trap - EXIT INT TERM
    [ -z "$BG_PID" ] || stop_pid "$BG_PID"
    [ -z "$PROBE_PID" ] || stop_pid "$PROBE_PID"
    for pid in "${NGINX_PIDS[@]}"; do stop_pid "$pid"; done
    [ -z "$SERVER_PID" ] || stop_pid "$SERVER_PID"
    [ -z "$SUPERVISOR_PID" ] || stop_pid "$SUPERVISOR_PID"
    wait 2>/dev/null || true
    # Kept for a look at the logs after an error, never after Ctrl-C.
    if [ "$KEEP" -eq 1 ] || { [ "$status" -ne 0 ] && [ "$status" -ne 130 ] && [ "$status" -ne 143 ]; }; then
        echo "bench.sh: work directory kept: $WORK" >&2
    else
        rm -rf "$WORK"
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Runs a command in the background and waits for it, so a signal reaches
# the trap at once instead of after the command.
run_bg() {
    # (An asynchronous command's stdin is /dev/null unless given explicitly.)
    { "$@" <&3 3<&- & } 3<&0
    BG_PID=$!
    local status=0
    wait "$BG_PID" || status=$?
    BG_PID=""
    return "$status"
}

meta() { echo "$1=$2" >>"$WORK/meta.env"; }
now_ns() { date +%s%N; }
elapsed_s() { python3 -c "print(round(($2 - $1) / 1e9, 3))"; }

read -r PORT NGX_FRONT NGX_BACK CEIL_AUTH EXT_AUTH < <("${HELPER[@]}" ports 5)

busy=$("${HELPER[@]}" busy --seconds 2)
meta tokens "$TOKENS"
meta threads "$THREADS"
meta connections "$CONNECTIONS"
meta duration "$DURATION"
meta ab_seconds "$AB_SECONDS"
meta slice_ms "$SLICE_MS"
meta warmup "$WARMUP"
meta rotate_slice_ms "$ROT_SLICE_MS"
meta cache_mb "$([ "$CACHE_MB" -gt 0 ] && echo "$CACHE_MB" || echo "default")"
meta bin "$BIN"
meta workers "$WORKERS"
meta nginx_workers "$NGINX_WORKERS"
meta cpus "$(nproc)"
meta loadavg "$(cut -d' ' -f1-3 /proc/loadavg)"
meta data_fs "$(df -PT "$WORK" | awk 'NR == 2 { print $2 " on " $1 }')"
meta busy "$busy"
[ -z "$busy" ] || echo "bench.sh: WARNING: busy processes will skew the numbers: $busy" >&2

# ---------------------------------------------------------------- seed and import

echo "bench.sh: generating $TOKENS tokens" >&2
t0=$(now_ns)
"${HELPER[@]}" gen --tokens "$TOKENS" --dir "$WORK" --secret "$SECRET" \
    --sets "$SETS" --rotate-users "$ROTATE_USERS" >/dev/null || die "cannot generate the seed (--sets $SETS?)"
meta gen_s "$(elapsed_s "$t0" "$(now_ns)")"
meta rotate_users "$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["rotate_users"])' "$WORK/gen.json")"
meta sample "$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["sample"])' "$WORK/gen.json")"
# "NAME ME SIZE" per working set (ME: 1 when it has JWTs for GET /me).
mapfile -t WORKING_SETS < <(python3 -c 'import json,sys
for s in json.load(open(sys.argv[1]))["sets"]: print(s["name"], int(s["me"]), s["size"])' "$WORK/gen.json")

cat >"$WORK/config.toml" <<EOF
[server]
bind = "127.0.0.1:$PORT"
access_log = false
workers = $WORKERS

[storage]
path = "$DATA"
$([ "$CACHE_MB" -gt 0 ] && echo "cache_mb = $CACHE_MB")
$([ -n "$PG_URL" ] && printf 'backend = "postgres"\nurl = "%s"\n' "$PG_URL")

[jwt]
algorithms = ["HS256"]
hmac_secret = "$SECRET"

[rate_limit]
management_per_minute = 0
EOF

echo "bench.sh: importing into a fresh store" >&2
t0=$(now_ns)
run_bg "$BIN" import --config "$WORK/config.toml" <"$WORK/seed.jsonl" 2>"$WORK/import.log" ||
    die "import failed: $(tail -n 3 "$WORK/import.log")"
meta import_s "$(elapsed_s "$t0" "$(now_ns)")"
rm -f "$WORK/seed.jsonl"
"${HELPER[@]}" du "$DATA" --out "$WORK/results/du_import.json"

# ---------------------------------------------------------------- server

start_server() { # READY_FILE META_KEY: starts the server, waits for /readyz, records the time
    local ready=$1 key=$2
    rm -f "$ready" "$WORK/server.pid"
    RUST_LOG=warn "${HELPER[@]}" supervise --port "$PORT" --pidfile "$WORK/server.pid" \
        --ready-file "$ready" --log "$WORK/server.log" -- \
        "$BIN" serve --config "$WORK/config.toml" >>"$WORK/supervise.log" 2>&1 &
    SUPERVISOR_PID=$!
    while [ ! -s "$ready" ]; do
        [ -s "$WORK/server.pid" ] && SERVER_PID=$(cat "$WORK/server.pid")
        kill -0 "$SUPERVISOR_PID" 2>/dev/null || die "the server exited: $(tail -n 5 "$WORK/server.log" "$WORK/supervise.log")"
        sleep 0.05
    done
    SERVER_PID=$(cat "$WORK/server.pid")
    grep -q ready_ms "$ready" || die "the server did not become ready: $(tail -n 5 "$WORK/server.log")"
    meta "$key" "$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["ready_ms"])' "$ready")"
}

stop_server() { # [META_KEY]: SIGTERM, wait for the exit, record the time it took
    local t0 t1 status=0
    t0=$(now_ns)
    kill -TERM "$SERVER_PID"
    wait "$SUPERVISOR_PID" || status=$?
    t1=$(now_ns)
    SERVER_PID=""
    SUPERVISOR_PID=""
    [ "$status" -eq 0 ] || die "the server did not stop cleanly (status $status): $(tail -n 5 "$WORK/server.log")"
    [ -z "${1:-}" ] || meta "$1" $(((t1 - t0) / 1000000))
}

echo "bench.sh: starting the server" >&2
start_server "$WORK/ready1.json" ready_ms

check() { "${HELPER[@]}" check "$@" || die "sanity check failed"; }
check --port "$PORT" --path /healthz --contains ok
check --port "$PORT" --path /api/agent-tokens/me --bearer-file "$WORK/me_jwts.txt" --contains '"has_token":true'
check --port "$PORT" --path /api/agent-tokens/verify --bearer-file "$WORK/verify_tokens.txt" --contains '"active":true'
check --port "$PORT" --path /api/agent-tokens/verify --bearer sk_agt_bad --expect 401

# ---------------------------------------------------------------- load

# run_wrk NAME PORT METHOD PATH CREDENTIALS [HOST]: warmup, then a measured
# run whose JSON summary lands in results/NAME.json.
run_wrk() {
    local name=$1 port=$2 method=$3 path=$4 creds=$5 host=${6:-}
    local url="http://127.0.0.1:$port"
    if [ "$WARMUP" -gt 0 ]; then
        BENCH_METHOD=$method BENCH_PATH=$path BENCH_CREDENTIALS=$creds BENCH_HOST=$host \
            BENCH_OUT="$WORK/results/warmup.json" \
            run_bg wrk -t"$THREADS" -c"$CONNECTIONS" -d"${WARMUP}s" -s "$LUA" "$url" >/dev/null ||
            die "wrk failed (warmup of $name)"
    fi
    BENCH_METHOD=$method BENCH_PATH=$path BENCH_CREDENTIALS=$creds BENCH_HOST=$host \
        BENCH_OUT="$WORK/results/$name.json" \
        run_bg wrk -t"$THREADS" -c"$CONNECTIONS" -d"${DURATION}s" --latency -s "$LUA" "$url" \
        >"$WORK/results/$name.wrk.txt" || die "wrk failed ($name)"
    [ -s "$WORK/results/$name.json" ] || die "wrk wrote no summary for $name"
    "${HELPER[@]}" show "$WORK/results/$name.json" "$name" >&2
}

# run_ab NAME PORT  A: PATH CREDENTIALS HOST  B: PATH CREDENTIALS HOST
# One wrk run of WARMUP + AB_SECONDS in which GET A and GET B take turns in
# SLICE_MS slices (the first WARMUP seconds are not counted).
run_ab() {
    local name=$1 port=$2
    BENCH_PATH=$3 BENCH_CREDENTIALS=$4 BENCH_HOST=$5 \
        BENCH_B_PATH=$6 BENCH_B_CREDENTIALS=$7 BENCH_B_HOST=$8 \
        BENCH_SLICE_MS=$SLICE_MS BENCH_OUT="$WORK/results/$name.json" \
        run_bg wrk -t"$THREADS" -c"$CONNECTIONS" -d"$((WARMUP + AB_SECONDS))s" -s "$LUA" \
        "http://127.0.0.1:$port" >"$WORK/results/$name.wrk.txt" || die "wrk failed ($name)"
    [ -s "$WORK/results/$name.json" ] || die "wrk wrote no summary for $name"
    "${HELPER[@]}" show "$WORK/results/$name.json" "$name" --warmup "$WARMUP" >&2
}

ME=/api/agent-tokens/me
VERIFY=/api/agent-tokens/verify

# warm_pass SECONDS PATH CREDENTIALS: an unmeasured run over a working set,
# so its interleaved runs measure a server that has seen the set before.
warm_pass() {
    BENCH_PATH=$2 BENCH_CREDENTIALS=$3 BENCH_OUT="$WORK/results/warmup.json" \
        run_bg wrk -t"$THREADS" -c"$CONNECTIONS" -d"${1}s" -s "$LUA" "http://127.0.0.1:$PORT" >/dev/null ||
        die "wrk failed (a warm pass)"
}

for set in "${WORKING_SETS[@]}"; do
    read -r name me size <<<"$set"
    # About one pass over the set (at ~10,000 requests/s), at most 20 s: a
    # cold first pass is every request's first visit, which a set of active
    # agents is not. Small sets are warm after the runs' own warmup.
    warm=$(((size + 9999) / 10000))
    [ "$warm" -le 20 ] || warm=20
    if [ "$size" -gt 1000 ]; then
        echo "bench.sh: one unmeasured pass over the $name set (${warm} s per route)" >&2
        [ "$me" -eq 0 ] || warm_pass "$warm" "$ME" "$WORK/me_jwts.$name.txt"
        warm_pass "$warm" "$VERIFY" "$WORK/verify_tokens.$name.txt"
    fi
    if [ "$me" -eq 1 ]; then
        echo "bench.sh: GET /healthz and GET $ME over the $name set, interleaved" >&2
        run_ab "ab_healthz_me.$name" "$PORT" /healthz "" "" "$ME" "$WORK/me_jwts.$name.txt" ""
    fi
    echo "bench.sh: GET /healthz and GET $VERIFY over the $name set, interleaved" >&2
    run_ab "ab_healthz_verify.$name" "$PORT" /healthz "" "" "$VERIFY" "$WORK/verify_tokens.$name.txt" ""
done
echo "bench.sh: latency, one run per route" >&2
run_wrk lat_healthz "$PORT" GET /healthz ""
run_wrk lat_me "$PORT" GET "$ME" "$WORK/me_jwts.txt"
run_wrk lat_verify "$PORT" GET "$VERIFY" "$WORK/verify_tokens.txt"

# Rotations against the raw fdatasync rate, in turns on one clock like the
# ratios above: the probe (one thread, 4 KiB append + fdatasync) takes the A
# slices and sleeps through the B ones, wrk sends rotations only in the B
# slices. Separate runs (earlier releases) saw the disk's sync rate move
# from 2.3k to 4.4k per second between runs seconds apart.
echo "bench.sh: raw append+fdatasync and POST $ME (rotations), interleaved" >&2
# A fifth of each slice (40 ms by default) is not counted: the other side's
# requests still in flight finish then (a rotation's p50 is about 3 ms; its
# p99, 55-210 ms, comes from rare store stalls that a median of pairs
# outweighs).
ROT_GUARD_MS=$((ROT_SLICE_MS / 5))
"${HELPER[@]}" metrics --port "$PORT" --out "$WORK/results/metrics_rot_before.json"
"${HELPER[@]}" fsync --dir "$WORK" --seconds $((WARMUP + AB_SECONDS + 2)) --slice-ms "$ROT_SLICE_MS" \
    --guard-ms "$ROT_GUARD_MS" --out "$WORK/results/fsync.json" &
PROBE_PID=$!
BENCH_SIDE=b BENCH_METHOD=POST BENCH_PATH=$ME BENCH_CREDENTIALS="$WORK/rotate_jwts.txt" \
    BENCH_SLICE_MS=$ROT_SLICE_MS BENCH_GUARD_MS=$ROT_GUARD_MS BENCH_OUT="$WORK/results/rotate.json" \
    run_bg wrk -t"$THREADS" -c"$CONNECTIONS" -d"$((WARMUP + AB_SECONDS))s" --latency -s "$LUA" \
    "http://127.0.0.1:$PORT" >"$WORK/results/rotate.wrk.txt" || die "wrk failed (rotations)"
wait "$PROBE_PID" || die "the fdatasync probe failed"
PROBE_PID=""
[ -s "$WORK/results/rotate.json" ] || die "wrk wrote no summary for the rotations"
"${HELPER[@]}" show "$WORK/results/fsync.json" fsync >&2
"${HELPER[@]}" show "$WORK/results/rotate.json" rotate >&2
"${HELPER[@]}" metrics --port "$PORT" --out "$WORK/results/metrics_rot_after.json"
# The interleaved run rotates half the time (the store's flushes and merges
# catch up in the probe's slices); the rate and latency under sustained
# rotations come from one continuous run, like the other routes'.
run_wrk lat_rotate "$PORT" POST "$ME" "$WORK/rotate_jwts.txt"
# The rotations leave the store merging tables in the background for a
# while (longer in a large store): the gateway phase is measured once it is
# done, and the table says how long that took.
"${HELPER[@]}" settle --port "$PORT" --out "$WORK/results/settle.json"

# ---------------------------------------------------------------- gateway

start_nginx() { # dir: starts nginx in the background, appends its pid
    local dir=$1
    /usr/sbin/nginx -p "$dir" -c "$dir/nginx.conf" >/dev/null 2>"$dir/stderr.log" &
    NGINX_PIDS+=($!)
}

if [ "$NGINX" -eq 1 ]; then
    echo "bench.sh: nginx auth_request: agent-tokens against return 204 in its own nginx and in the same nginx, interleaved" >&2
    # The 204 stand-in runs as many workers as the server does: the number
    # given, or the threads it started for `0` (actix names each worker
    # thread `actix-rt|system:...`; tests/smoke.rs counts them the same way).
    if [ "$WORKERS" -gt 0 ]; then
        EXT_WORKERS=$WORKERS
    else
        EXT_WORKERS=$(cat /proc/"$SERVER_PID"/task/*/comm 2>/dev/null | grep -c '^actix-rt|system' || true)
    fi
    [ "${EXT_WORKERS:-0}" -ge 1 ] || die "cannot count the server's worker threads"
    meta external_workers "$EXT_WORKERS"
    # One front nginx, three virtual hosts on one port: the recipe asking
    # agent-tokens, a second nginx that answers 204, or itself (204).
    read -r RECIPE_HOST EXTERNAL_HOST CEILING_HOST < <("${HELPER[@]}" nginx-conf --recipe "$ROOT/gateway/nginx.conf" \
        --dir "$WORK/nginx" --front-port "$NGX_FRONT" --backend-port "$NGX_BACK" --auth-port "$PORT" \
        --ceiling-auth-port "$CEIL_AUTH" --external-auth-port "$EXT_AUTH" \
        --workers "$NGINX_WORKERS" --external-workers "$EXT_WORKERS")
    [ -n "$CEILING_HOST" ] || die "bench_helper.py nginx-conf failed"
    for dir in "$WORK/nginx/auth204" "$WORK/nginx"; do
        start_nginx "$dir"
    done
    for port in "$EXT_AUTH" "$NGX_FRONT"; do
        "${HELPER[@]}" wait-port "$port" || die "nginx did not start: $(cat "$WORK"/nginx/{,auth204/}{stderr,error}.log 2>/dev/null)"
    done
    for host in "$RECIPE_HOST" "$EXTERNAL_HOST" "$CEILING_HOST"; do
        check --port "$NGX_FRONT" --host "$host" --path /api/bench.txt --bearer-file "$WORK/verify_tokens.txt" --contains "backend static file"
    done
    check --port "$NGX_FRONT" --host "$RECIPE_HOST" --path /api/bench.txt --bearer sk_agt_bad --expect 401
    # The uniform set and the rotations ran since the gateway's set was last
    # seen: one pass over it again, as before its direct runs.
    gateway_set=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["sample"])' "$WORK/gen.json")
    if [ "$gateway_set" -gt 1000 ]; then
        warm=$(((gateway_set + 9999) / 10000))
        [ "$warm" -le 20 ] || warm=20
        warm_pass "$warm" "$VERIFY" "$WORK/verify_tokens.txt"
    fi
    run_ab ab_nginx_external "$NGX_FRONT" /api/bench.txt "$WORK/verify_tokens.txt" "$EXTERNAL_HOST" \
        /api/bench.txt "$WORK/verify_tokens.txt" "$RECIPE_HOST"
    run_ab ab_nginx "$NGX_FRONT" /api/bench.txt "$WORK/verify_tokens.txt" "$CEILING_HOST" \
        /api/bench.txt "$WORK/verify_tokens.txt" "$RECIPE_HOST"
    run_wrk lat_nginx_external "$NGX_FRONT" GET /api/bench.txt "$WORK/verify_tokens.txt" "$EXTERNAL_HOST"
    run_wrk lat_nginx_ceiling "$NGX_FRONT" GET /api/bench.txt "$WORK/verify_tokens.txt" "$CEILING_HOST"
    run_wrk lat_nginx_verify "$NGX_FRONT" GET /api/bench.txt "$WORK/verify_tokens.txt" "$RECIPE_HOST"
    if grep -q "unexpected status" "$WORK/nginx/error.log" 2>/dev/null; then
        die "nginx saw unexpected auth statuses: $(grep -m 3 "unexpected status" "$WORK/nginx/error.log")"
    fi
    for pid in "${NGINX_PIDS[@]}"; do stop_pid "$pid"; done
    NGINX_PIDS=()
fi

# ---------------------------------------------------------------- memory, size, restart

"${HELPER[@]}" proc "$SERVER_PID" --out "$WORK/results/proc.json"
meta vmhwm_kb "$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["VmHWM"])' "$WORK/results/proc.json")"
stop_server stop_ms
"${HELPER[@]}" du "$DATA" --out "$WORK/results/du_end.json"

echo "bench.sh: restarting the server" >&2
start_server "$WORK/ready2.json" restart_ready_ms
check --port "$PORT" --path /api/agent-tokens/verify --bearer-file "$WORK/verify_tokens.txt" --contains '"active":true'
"${HELPER[@]}" proc "$SERVER_PID" --out "$WORK/results/proc_restart.json"
meta restart_vmhwm_kb "$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["VmHWM"])' "$WORK/results/proc_restart.json")"
stop_server

if [ "$COLD" -eq 1 ]; then
    if [ "$(id -u)" -eq 0 ] && [ -w /proc/sys/vm/drop_caches ]; then
        sync
        echo 3 >/proc/sys/vm/drop_caches
        start_server "$WORK/ready3.json" cold_ready_ms
        stop_server
    else
        echo "bench.sh: --cold needs root and a writable /proc/sys/vm/drop_caches; skipped" >&2
    fi
fi

# ---------------------------------------------------------------- report

echo >&2
"${HELPER[@]}" report --work "$WORK" ${OUT:+--out "$OUT"}
