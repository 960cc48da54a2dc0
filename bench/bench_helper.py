#!/usr/bin/env python3
"""Helper for bench/bench.sh (standard library only).

Subcommands:
  gen         seed file (the `agent-tokens import` JSON Lines format) plus
              the working sets' raw tokens and user JWTs for the load runs
  ports       print N free loopback ports
  supervise   start the server, time process start -> first 200 from /readyz,
              then wait for it (forwarding SIGTERM/SIGINT) and exit with its status
  wait-port   wait until a TCP port accepts connections
  check       one HTTP request; fail unless the status (and body) is as expected
  fsync       raw 4 KiB append + fdatasync rate on a filesystem (one thread)
  metrics     the server's group-commit counters from /metrics
  proc        VmHWM / VmRSS of a process
  du          apparent and allocated size of a directory
  nginx-conf  an nginx config around gateway/nginx.conf (the README recipe)
  report      the summary table from a bench work directory
"""

import argparse
import math
import base64
import hashlib
import hmac
import http.client
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time

# ---------------------------------------------------------------- gen


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def hs256_jwt(secret, sub, now, lifetime=6 * 3600):
    header = b64url(b'{"alg":"HS256","typ":"JWT"}')
    payload = b64url(
        json.dumps(
            {"sub": sub, "iat": now, "exp": now + lifetime}, separators=(",", ":")
        ).encode()
    )
    signing_input = f"{header}.{payload}".encode("ascii")
    sig = hmac.new(secret.encode(), signing_input, hashlib.sha256).digest()
    return f"{header}.{payload}.{b64url(sig)}"


# GET /me load needs one signed JWT per user: sets larger than this are
# loaded on verify only (the working-set targets name verify alone there).
ME_SET_MAX = 100_000


def parse_sets(spec):
    """"hot=1000,distinct=100000,uniform=all" -> [("hot", 1000), ...];
    "all" (or 0) means every token not kept for rotations."""
    sets = []
    for item in spec.split(","):
        name, sep, size = item.strip().partition("=")
        if not sep or not re.fullmatch(r"[a-z][a-z0-9_]*", name):
            raise ValueError(f"working set {item!r}: expected NAME=SIZE (or NAME=all)")
        if size == "all":
            size = 0
        elif not size.isdigit():
            raise ValueError(f"working set {item!r}: the size must be a whole number or all")
        if name in (n for n, _ in sets):
            raise ValueError(f"working set {name!r} is given twice")
        sets.append((name, int(size)))
    if not sets:
        raise ValueError("no working set")
    return sets


def plan_sets(sets, others):
    """The working sets as loaded: each size clipped to the `others` tokens
    there are (0: all of them), and a set no larger than one before it
    dropped (a 1,000-token store has one working set, not three).
    Returns [(name, size, stride)]; member k of a set is token k * stride."""
    planned = []
    for name, size in sets:
        size = others if size == 0 else max(1, min(size, others))
        if any(size == s for _, s, _ in planned):
            continue
        planned.append((name, size, max(1, others // size)))
    return planned


def cmd_gen(a):
    """Writes seed.jsonl, the working sets' verify_tokens.NAME.txt (and
    me_jwts.NAME.txt up to ME_SET_MAX users), rotate_jwts.txt and gen.json;
    verify_tokens.txt and me_jwts.txt are the main set's (--main-set, the
    largest one with JWTs by default) for the checks, the latency runs and
    the gateway.

    Token format (src/domain/token.rs): sk_agt_ + hex(28 random bytes + first 4
    bytes of SHA-256 of them); the store keeps SHA-256 of the whole string.
    The last `rotate` users are kept for rotations; each working set is
    spread evenly over the others, so rotations never touch a loaded token,
    and its order is shuffled (a fixed seed): user ids in key order would
    share the store's blocks, which real users do not.
    """
    started = time.monotonic()
    n = a.tokens
    if n < 1:
        sys.exit("bench_helper gen: --tokens must be at least 1")
    try:
        sets = parse_sets(a.sets if a.sample is None else f"sample={a.sample}")
    except ValueError as e:
        sys.exit(f"bench_helper gen: {e}")
    rotate_seeded = min(a.rotate_users, n // 2)
    others = n - rotate_seeded
    planned = plan_sets(sets, others)
    members = [set(range(0, size * stride, stride)) for _, size, stride in planned]
    wanted = set().union(*members)
    width = max(7, len(str(n - 1)))
    now = int(time.time())
    created = now - 86400
    sha256 = hashlib.sha256
    issued = {}  # index -> (token, user) for the loaded tokens
    rotate_users = []
    out_path = os.path.join(a.dir, "seed.jsonl")
    with open(out_path, "w", encoding="ascii", buffering=1 << 20) as out:
        out.write(
            json.dumps(
                {
                    "format": "agent-tokens-export",
                    "version": 1,
                    "users": n,
                    "exported_at": now,
                    "generator": "bench/bench_helper.py",
                },
                separators=(",", ":"),
            )
            + "\n"
        )
        tail = f',"created_at":{created},"last_used_at":null,"grace":null}}\n'
        chunk = []
        for start in range(0, n, 65536):
            rnd = os.urandom(28 * min(65536, n - start))
            for i in range(start, min(n, start + 65536)):
                random = rnd[28 * (i - start) : 28 * (i - start) + 28]
                token = "sk_agt_" + (random + sha256(random).digest()[:4]).hex()
                user = f"user-{i:0{width}d}"
                chunk.append(
                    f'{{"user_id":"{user}","token_hash":"{sha256(token.encode()).hexdigest()}",'
                    f'"token_prefix":"{token[:15]}..."{tail}'
                )
                if i in wanted:
                    issued[i] = (token, user)
                elif i >= others:
                    rotate_users.append(user)
            out.writelines(chunk)
            chunk = []
    # Fewer seeded users than asked for (a tiny seed): rotate unseeded users
    # too (their first POST creates a token), so rotations still spread out.
    extra = 0
    while len(rotate_users) < a.rotate_users:
        rotate_users.append(f"rotate-extra-{extra:04d}")
        extra += 1

    def write_lines(name, lines):
        with open(os.path.join(a.dir, name), "w", encoding="ascii") as f:
            f.write("\n".join(lines) + "\n")

    shuffle = __import__("random").Random(20251)
    info_sets = []
    for (name, size, _stride), indexes in zip(planned, members):
        order = sorted(indexes)
        shuffle.shuffle(order)
        write_lines(f"verify_tokens.{name}.txt", [issued[i][0] for i in order])
        me = size <= ME_SET_MAX
        if me:
            write_lines(f"me_jwts.{name}.txt", [hs256_jwt(a.secret, issued[i][1], now) for i in order])
        info_sets.append({"name": name, "size": size, "me": me})
    main = a.main_set or max((s for s in info_sets if s["me"]), key=lambda s: s["size"])["name"]
    if main not in (s["name"] for s in info_sets):
        sys.exit(f"bench_helper gen: --main-set {main} is not a working set (or duplicates a smaller one)")
    for kind in ("verify_tokens", "me_jwts"):
        src = os.path.join(a.dir, f"{kind}.{main}.txt")
        if os.path.exists(src):
            shutil.copyfile(src, os.path.join(a.dir, f"{kind}.txt"))
    write_lines("rotate_jwts.txt", [hs256_jwt(a.secret, u, now) for u in rotate_users])
    info = {
        "tokens": n,
        "sets": info_sets,
        "main_set": main,
        "sample": next(s["size"] for s in info_sets if s["name"] == main),
        "rotate_users": len(rotate_users),
        "rotate_unseeded": extra,
        "seconds": round(time.monotonic() - started, 3),
        "seed_bytes": os.path.getsize(out_path),
    }
    with open(os.path.join(a.dir, "gen.json"), "w") as f:
        json.dump(info, f)
    print(json.dumps(info))


# ---------------------------------------------------------------- processes and HTTP


def cmd_ports(a):
    socks = []
    for _ in range(a.count):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    print(" ".join(str(s.getsockname()[1]) for s in socks))
    for s in socks:
        s.close()


def http_status(host, port, path, method="GET", headers=None, timeout=2.0):
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request(method, path, headers=headers or {})
        resp = conn.getresponse()
        body = resp.read()
        return resp.status, body
    finally:
        conn.close()


def cmd_supervise(a):
    """Starts the server, writes {"pid", "ready_ms"} to --ready-file once
    /readyz answers 200, then waits for the server and exits with its status.
    The clock starts just before the exec, so ready_ms is process start to
    first 200."""
    log = open(a.log, "ab")
    forwarded = []

    def forward(signum, _frame):
        forwarded.append(signum)
        if child is not None and child.poll() is None:
            child.send_signal(signal.SIGTERM if signum == signal.SIGTERM else signum)

    child = None
    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    started = time.monotonic()
    child = subprocess.Popen(a.cmd, stdout=log, stderr=subprocess.STDOUT)
    with open(a.pidfile, "w") as f:
        f.write(f"{child.pid}\n")
    deadline = started + a.timeout
    ready_ms = None
    while time.monotonic() < deadline and child.poll() is None and not forwarded:
        try:
            status, _ = http_status("127.0.0.1", a.port, "/readyz", timeout=2.0)
            if status == 200:
                ready_ms = (time.monotonic() - started) * 1000.0
                break
        except OSError:
            pass
        time.sleep(0.002)
    tmp = a.ready_file + ".tmp"
    with open(tmp, "w") as f:
        if ready_ms is None:
            json.dump({"pid": child.pid, "error": "not ready"}, f)
        else:
            json.dump({"pid": child.pid, "ready_ms": round(ready_ms, 1)}, f)
    os.rename(tmp, a.ready_file)
    if ready_ms is None and child.poll() is None:
        child.terminate()
    while True:
        try:
            code = child.wait()
            break
        except InterruptedError:
            continue
    sys.exit(code if code >= 0 else 128 - code)


def cmd_busy(a):
    """Processes other than ours using more than --threshold % of a CPU over
    the next --seconds (the host is shared; say so in the report)."""

    def sample():
        ticks = {}
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                with open(f"/proc/{pid}/stat") as f:
                    data = f.read()
            except OSError:
                continue
            comm = data[data.index("(") + 1 : data.rindex(")")]
            fields = data[data.rindex(")") + 2 :].split()
            ticks[pid] = (comm, int(fields[11]) + int(fields[12]))
        return ticks

    hz = os.sysconf("SC_CLK_TCK")
    before = sample()
    time.sleep(a.seconds)
    after = sample()
    me = str(os.getpid())
    busy = []
    for pid, (comm, t) in after.items():
        if pid == me or pid not in before:
            continue
        pct = (t - before[pid][1]) / hz / a.seconds * 100
        if pct >= a.threshold:
            busy.append((pct, f"{comm} (pid {pid}, {pct:.0f}% CPU)"))
    print(", ".join(text for _, text in sorted(busy, reverse=True)))


def cmd_wait_port(a):
    deadline = time.monotonic() + a.timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", a.port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.02)
    sys.exit(f"nothing listens on 127.0.0.1:{a.port} after {a.timeout} s")


def cmd_check(a):
    headers = {}
    if a.bearer_file:
        with open(a.bearer_file) as f:
            headers["Authorization"] = "Bearer " + f.readline().strip()
    if a.bearer:
        headers["Authorization"] = "Bearer " + a.bearer
    if a.host:
        headers["Host"] = a.host
    try:
        status, body = http_status("127.0.0.1", a.port, a.path, a.method, headers)
    except OSError as e:
        sys.exit(f"check {a.method} {a.path}: {e}")
    text = body.decode("utf-8", "replace")
    if status != a.expect or (a.contains and a.contains not in text):
        sys.exit(
            f"check {a.method} {a.path} on port {a.port}: got {status}, expected {a.expect}"
            + (f" with {a.contains!r}" if a.contains else "")
            + f"; body: {text[:200]!r}"
        )


def is_b_slice(index):
    """A B B A A B B A ...: the slice order of bench_wrk.lua."""
    return (index + index // 2) % 2 == 1


def cmd_fsync(a):
    """4 KiB appends, each followed by fdatasync, one thread, for --seconds,
    in the A slices of bench_wrk.lua's clock (the monotonic clock, which
    time.monotonic reads on Linux), sleeping through the B slices, which a
    BENCH_SIDE=b wrk run takes: the two measure in turns. "slices" counts the
    appends started in each A slice after its first --guard-ms."""
    path = os.path.join(a.dir, f"fsync-probe.{os.getpid()}")
    buf = os.urandom(4096)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o600)
    lat = []
    counts = {}
    a_slices = set()  # A slices the probe ran in, with or without a sync counted
    slice_s = a.slice_ms / 1000
    try:
        start = time.monotonic()
        end = start + a.seconds
        now = start
        while now < end:
            index = math.floor(now / slice_s)
            if is_b_slice(index):
                nxt = index + 1
                while is_b_slice(nxt):
                    nxt += 1
                time.sleep(max(0.0, nxt * slice_s - now))
                now = time.monotonic()
                continue
            counted = now - index * slice_s >= a.guard_ms / 1000
            if counted:
                a_slices.add(index)
            t = now
            os.write(fd, buf)
            os.fdatasync(fd)
            now = time.monotonic()
            if counted:
                lat.append(now - t)
                counts[index] = counts.get(index, 0) + 1
        elapsed = now - start
    finally:
        os.close(fd)
        os.unlink(path)
    lat.sort()
    # Syncs per second of counted A-slice time, as ab_summary counts.
    counted_s = len(a_slices) * (a.slice_ms - a.guard_ms) / 1000
    result = {
        "ops": len(lat),
        "seconds": round(elapsed, 3),
        "rate": len(lat) / counted_s if lat and counted_s > 0 else 0.0,
        "p50_us": lat[len(lat) // 2] * 1e6 if lat else 0.0,
        "p99_us": lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1e6 if lat else 0.0,
        "slice_ms": a.slice_ms,
        "guard_ms": a.guard_ms,
        "slices": [[i, "a", counts[i]] for i in sorted(counts)],
    }
    with open(a.out, "w") as f:
        json.dump(result, f)


def cmd_metrics(a):
    wanted = {
        "agent_tokens_storage_flush_waiters_sum": "waiters_sum",
        "agent_tokens_storage_flush_waiters_count": "flushes",
        "agent_tokens_storage_flush_duration_seconds_sum": "flush_seconds_sum",
    }
    values = metric_values(a.port)
    result = {key: values[name] for name, key in wanted.items() if name in values}
    with open(a.out, "w") as f:
        json.dump(result, f)


def metric_values(port):
    status, body = http_status("127.0.0.1", port, "/metrics")
    if status != 200:
        sys.exit(f"/metrics answered {status}")
    values = {}
    for line in body.decode().splitlines():
        parts = line.split()
        if len(parts) == 2 and not line.startswith("#"):
            values[parts[0]] = float(parts[1])
    return values


def cmd_settle(a):
    """Waits until the store's background work (memtable flushes, table
    merges after the rotation phase) is done, seen idle twice in a row;
    records how long that took."""
    started = time.monotonic()
    idle = 0
    while idle < 2:
        values = metric_values(a.port)
        idle = idle + 1 if values.get("agent_tokens_storage_background_jobs", 0) == 0 else 0
        if time.monotonic() - started > a.timeout:
            sys.exit(f"the store was still busy in the background after {a.timeout} s")
        time.sleep(0.25)
    with open(a.out, "w") as f:
        json.dump({"waited_s": round(time.monotonic() - started, 1)}, f)


def cmd_proc(a):
    result = {}
    with open(f"/proc/{a.pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmHWM", "VmRSS"):
                result[key] = int(value.split()[0])  # kB
    with open(a.out, "w") as f:
        json.dump(result, f)


def cmd_du(a):
    apparent = allocated = 0
    for root, _dirs, files in os.walk(a.path):
        for name in files:
            st = os.lstat(os.path.join(root, name))
            apparent += st.st_size
            allocated += st.st_blocks * 512
    with open(a.out, "w") as f:
        json.dump({"apparent": apparent, "allocated": allocated}, f)


# ---------------------------------------------------------------- nginx


def cmd_nginx_conf(a):
    """The gateway under test: one nginx in front of a static file with three
    virtual hosts on the same port, each the README recipe
    (gateway/nginx.conf) with its addresses substituted, as
    tests/api/gateway.rs does:
      recipe.bench    its auth subrequests go to agent-tokens (--auth-port);
      external.bench  they go to a second nginx, in its own processes, that
                      answers every one with `return 204` (--external-auth-port,
                      as many workers as agent-tokens has): the cheapest auth
                      service there can be, the ceiling the gateway target
                      is measured against;
      ceiling.bench   they go to a `return 204` server inside the front nginx
                      itself (--ceiling-auth-port): no process hop at all, so
                      external.bench vs ceiling.bench is what the hop to any
                      separate auth service costs.
    Same keepalive pools and HEAD subrequests everywhere. One front nginx
    serves all three, so an interleaved load (bench_wrk.lua, by Host header)
    compares the auth targets alone: same workers, same connections. The
    stand-in's config goes to DIR/auth204/nginx.conf."""
    with open(a.recipe) as f:
        recipe = f.read()
    for needle in ("127.0.0.1:8080", "127.0.0.1:3000", "listen 80;", "agent_tokens", "app_backend"):
        if needle not in recipe:
            sys.exit(f"{a.recipe} no longer has {needle!r}; update bench_helper.py")

    def vhost(name, auth_port, listen_options, suffix):
        text = (
            recipe.replace("127.0.0.1:8080", f"127.0.0.1:{auth_port}")
            .replace("127.0.0.1:3000", f"127.0.0.1:{a.backend_port}")
            .replace(
                "listen 80;",
                f"listen 127.0.0.1:{a.front_port}{listen_options};\n    server_name {name};",
            )
        )
        # Each copy has its own upstream pools (nginx wants unique names).
        return re.sub(r"\b(agent_tokens|app_backend)\b", lambda m: m.group(1) + suffix, text)

    def allow_all(port):
        # The stand-in for agent-tokens: every auth subrequest is allowed at once.
        return f"""    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            add_header X-Agent-User-Id bench-user always;
            return 204;
        }}
    }}"""

    def main_conf(d, workers, servers):
        user = "user root;" if os.geteuid() == 0 else ""
        return f"""{user}
daemon off;
worker_processes {workers};
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
{servers}
}}
"""

    d = a.dir
    os.makedirs(os.path.join(d, "static", "api"), exist_ok=True)
    with open(os.path.join(d, "static", "api", "bench.txt"), "w") as f:
        f.write("backend static file\n")
    # Listen options may be given once per address, so only the first has them.
    for file, host, port, options, suffix in (
        ("recipe.conf", RECIPE_HOST, a.auth_port, " backlog=4096", ""),
        ("ceiling.conf", CEILING_HOST, a.ceiling_auth_port, "", "_ceiling"),
        ("external.conf", EXTERNAL_HOST, a.external_auth_port, "", "_external"),
    ):
        with open(os.path.join(d, file), "w") as f:
            f.write(vhost(host, port, options, suffix))
    servers = f"""    # The application behind the gateway: a static file.
    server {{
        listen 127.0.0.1:{a.backend_port} backlog=4096;
        root {d}/static;
    }}
{allow_all(a.ceiling_auth_port)}
    include {d}/recipe.conf;
    include {d}/ceiling.conf;
    include {d}/external.conf;"""
    with open(os.path.join(d, "nginx.conf"), "w") as f:
        f.write(main_conf(d, a.workers, servers))
    stand_in = os.path.join(d, "auth204")
    os.makedirs(stand_in, exist_ok=True)
    with open(os.path.join(stand_in, "nginx.conf"), "w") as f:
        f.write(main_conf(stand_in, a.external_workers, allow_all(a.external_auth_port)))
    # The Host headers that pick the virtual hosts, for the caller.
    print(RECIPE_HOST, EXTERNAL_HOST, CEILING_HOST)


RECIPE_HOST = "recipe.bench"
EXTERNAL_HOST = "external.bench"
CEILING_HOST = "ceiling.bench"


# ---------------------------------------------------------------- report


def cmd_show(a):
    """One progress line for a wrk or fsync result file."""
    r = load(a.file)
    if "rate" in r:
        print(
            f"  {a.name:<18} {r['rate']:>10,.0f} op/s   p50 {r['p50_us'] / 1000:.2f} ms"
            f"  p99 {r['p99_us'] / 1000:.2f} ms"
        )
        return
    errors = {k: v for k, v in r["errors"].items() if v}
    if "slices" in r and len({side for _, side, _ in r["slices"]}) == 1:
        # One side of a run shared with another process (BENCH_SIDE=b).
        counted_s = len(r["slices"]) * (r["slice_ms"] - r["guard_ms"]) / 1000
        rate = sum(n for _, _, n in r["slices"]) / counted_s
        print(
            f"  {a.name:<18} {rate:>10,.0f} req/s in its slices"
            f"  p50 {r['latency_us']['p50'] / 1000:.2f} ms  p99 {r['latency_us']['p99'] / 1000:.2f} ms"
            + (f"  ERRORS {errors}" if errors else "")
        )
        return
    if "slices" in r:
        ab = ab_summary(r, a.warmup)
        if ab is None:
            print(f"  {a.name:<18} no complete slice pairs" + (f"  ERRORS {errors}" if errors else ""))
            return
        print(
            f"  {a.name:<18} A {ab['rate_a']:>8,.0f} req/s  B {ab['rate_b']:>8,.0f} req/s"
            f"  B/A {ab['median']:.3f} (95% CI {ab['ci'][0]:.3f}-{ab['ci'][1]:.3f}, {ab['pairs']} pairs)"
            + (f"  ERRORS {errors}" if errors else "")
        )
        return
    print(
        f"  {a.name:<18} {r['requests'] / (r['duration_us'] / 1e6):>10,.0f} req/s"
        f"  p50 {r['latency_us']['p50'] / 1000:.2f} ms  p99 {r['latency_us']['p99'] / 1000:.2f} ms"
        + (f"  ERRORS {errors}" if errors else "")
    )



def ab_summary(run, warmup_s):
    """The pairs of an interleaved run (bench_wrk.lua with BENCH_B_PATH):
    pair k is slices 2k and 2k+1, one A and one B; the slices of the first
    warmup_s seconds and the last (partial) one are dropped. Returns the
    median of the per-pair B/A ratios with a distribution-free 95%
    confidence interval (order statistics), and each side's rate over its
    counted time; None without a complete pair."""
    slices = run.get("slices") or []
    if not slices:
        return None
    slice_ms, guard_ms = run["slice_ms"], run["guard_ms"]
    counts = {index: n for index, _side, n in slices}
    first, last = slices[0][0], slices[-1][0]
    skip = first + 1 + math.ceil(warmup_s * 1000 / slice_ms)

    ratios, total_a, total_b = [], 0, 0
    for k in range(math.ceil(skip / 2), last // 2):
        a = b = 0
        for index in (2 * k, 2 * k + 1):
            # A slice without a single request sent counts 0 (a stall).
            if is_b_slice(index):
                b = counts.get(index, 0)
            else:
                a = counts.get(index, 0)
        total_a += a
        total_b += b
        ratios.append(b / a if a > 0 else math.inf)
    if not ratios:
        return None
    ratios.sort()
    n = len(ratios)
    half_width = 0.98 * math.sqrt(n)  # 1.96 standard deviations of Binomial(n, 1/2)
    lo = max(0, math.floor(n / 2 - half_width) - 1)
    hi = min(n - 1, math.ceil(n / 2 + half_width))
    counted_s = n * (slice_ms - guard_ms) / 1000
    return {
        "pairs": n,
        "median": statistics.median(ratios),
        "ci": (ratios[lo], ratios[hi]),
        "rate_a": total_a / counted_s,
        "rate_b": total_b / counted_s,
    }


def merged_run(a_run, b_run):
    """One interleaved run from two processes that took turns on one clock
    (the fdatasync probe in the A slices, wrk with BENCH_SIDE=b in the B
    ones), cut to the slices both were running; None if either is missing."""
    if a_run is None or b_run is None:
        return None
    for key in ("slice_ms", "guard_ms"):
        if a_run.get(key) != b_run.get(key):
            raise ValueError(f"the two sides of an interleaved run differ in {key}")
    sa, sb = a_run.get("slices") or [], b_run.get("slices") or []
    slices = []
    if sa and sb:
        lo, hi = max(sa[0][0], sb[0][0]), min(sa[-1][0], sb[-1][0])
        slices = sorted(x for x in sa + sb if lo <= x[0] <= hi)
    return {"slice_ms": a_run["slice_ms"], "guard_ms": a_run["guard_ms"], "slices": slices}


def load(path):
    with open(path) as f:
        return json.load(f)


def read_env(path):
    env = {}
    with open(path) as f:
        for line in f:
            key, sep, value = line.rstrip("\n").partition("=")
            if sep:
                env[key] = value
    return env


def result(work, name):
    """results/NAME.json of a bench work directory (None if missing), with
    "rps" added to a wrk summary."""
    path = os.path.join(work, "results", f"{name}.json")
    if not os.path.exists(path):
        return None
    r = load(path)
    if "requests" in r:
        r["rps"] = r["requests"] / (r["duration_us"] / 1e6)
    return r


def errors_of(runs):
    total = {"connect": 0, "read": 0, "write": 0, "status": 0, "timeout": 0}
    for r in runs:
        for k in total:
            total[k] += r["errors"][k]
    return {k: v for k, v in total.items() if v}


def fmt_ms(us):
    return "-" if us is None else f"{us / 1000:.2f} ms"


def fmt_rate(x):
    return "-" if x is None else f"{x:,.0f}"


# Server CPU per request relative to /healthz, by working set name
# (GET /me, verify); a store under a million tokens has the hot targets
# for whatever set it keeps.
SET_TARGETS = {
    "hot": (0.85, 0.90),
    "distinct": (0.70, 0.75),
    "uniform": (None, 0.40),
}
RSS_BUDGET_MIB = 384


def set_targets(name, big):
    if not big:
        return SET_TARGETS["hot"]
    return SET_TARGETS.get(name, (None, None))


def gateway_floor(big):
    """The nginx recipe against its 204 ceiling: over 100,000 tokens of a
    million, 0.85; on a small store, 0.90."""
    return 0.85 if big else 0.90


def cmd_report(a):
    work = a.work
    env = read_env(os.path.join(work, "meta.env"))
    rows = []
    notes = []

    warmup = float(env["warmup"])

    def ab(kind):
        r = result(work, kind)
        if r is None:
            return None, None
        return r, ab_summary(r, warmup)

    intervals = []

    def row(name, rate, latency, errors_from, ratio=None, target=None, floor=None):
        """One table row; latency: a wrk summary's latency_us (or None)."""
        errors = errors_of([r for r in errors_from if r is not None])
        if errors:
            notes.append(f"{name}: errors {errors} (non-2xx or socket errors)")
            name += " (!)"
        met = "-"
        if ratio is not None and floor is not None:
            met = "yes" if ratio >= floor else "NO"
        lat = latency or {}
        rows.append(
            (
                name,
                fmt_rate(rate),
                "-" if ratio is None else f"{ratio:.2f}x",
                target or "-",
                met,
                fmt_ms(lat.get("p50")),
                fmt_ms(lat.get("p99")),
            )
        )

    def interleaved(name, summary, run):
        if run is None:
            notes.append(f"{name}: no interleaved run in this work directory")
            return None, None
        if summary is not None:
            lo, hi = summary["ci"]
            intervals.append(f"  {name:<46} {lo:.3f}-{hi:.3f} (median {summary['median']:.3f}, {summary['pairs']} pairs)")
            return summary["median"], summary["rate_b"]
        notes.append(f"{name}: the interleaved run has no complete slice pair")
        return None, None

    gen = load(os.path.join(work, "gen.json")) if os.path.exists(os.path.join(work, "gen.json")) else {}
    sets = gen.get("sets") or []
    big = int(env["tokens"]) >= 1_000_000
    by_set = []  # (set, (me run, me summary), (verify run, verify summary))
    for ws in sets:
        by_set.append((ws, ab(f"ab_healthz_me.{ws['name']}"), ab(f"ab_healthz_verify.{ws['name']}")))
    ngx_run, ngx = ab("ab_nginx")
    ngx_ext_run, ngx_ext = ab("ab_nginx_external")
    lat_runs = {
        k: result(work, f"lat_{k}")
        for k in ("healthz", "me", "verify", "rotate", "nginx_external", "nginx_ceiling", "nginx_verify")
    }
    lat = {k: r["latency_us"] if r else None for k, r in lat_runs.items()}
    rot_run, fsync_run = result(work, "rotate"), result(work, "fsync")
    rot_fsync_run = merged_run(fsync_run, rot_run)
    rot_fsync = ab_summary(rot_fsync_run, warmup) if rot_fsync_run else None

    healthz_rates = [x["rate_a"] for _, me, v in by_set for _, x in (me, v) if x]
    row(
        "GET /healthz (ceiling)",
        statistics.mean(healthz_rates) if healthz_rates else None,
        lat["healthz"],
        [lat_runs["healthz"]],
    )
    for ws, (me_run, me), (v_run, v) in by_set:
        label = f"{ws['size']:,} tokens ({ws['name']})"
        main = ws["name"] == gen.get("main_set")
        me_floor, v_floor = set_targets(ws["name"], big)
        if ws.get("me"):
            ratio, rate = interleaved(f"GET /me / healthz, {label}", me, me_run)
            row(f"GET /api/agent-tokens/me, {label}", rate, lat["me"] if main else None,
                [me_run] + ([lat_runs["me"]] if main else []), ratio,
                f">= {me_floor:.2f}x healthz" if me_floor else None, me_floor)
        ratio, rate = interleaved(f"verify / healthz, {label}", v, v_run)
        row(f"GET /api/agent-tokens/verify, {label}", rate, lat["verify"] if main else None,
            [v_run] + ([lat_runs["verify"]] if main else []), ratio,
            f">= {v_floor:.2f}x healthz" if v_floor else None, v_floor)
    if fsync_run is not None:
        rows.append(
            (
                "4 KiB append+fdatasync (1 thread)",
                fmt_rate(rot_fsync["rate_a"] if rot_fsync else None),
                "-",
                "-",
                "-",
                fmt_ms(fsync_run["p50_us"]),
                fmt_ms(fsync_run["p99_us"]),
            )
        )
    if rot_run is not None:
        ratio, rate = interleaved("POST /api/agent-tokens/me / fdatasync", rot_fsync, rot_fsync_run)
        row(
            f"POST /api/agent-tokens/me ({env.get('rotate_users', '?')} users)",
            rate,
            lat["rotate"],
            [rot_run, lat_runs["rotate"]],
            ratio,
            ">= 1.5x fdatasync",
            1.5,
        )

    def ceiling(where, summary, run, latency_key):
        """The 204 ceiling's row; the interleaved ratio of the recipe to it."""
        row(f"nginx auth_request -> 204, {where}", summary["rate_a"] if summary else None,
            lat[latency_key], [lat_runs[latency_key]])
        return interleaved(f"nginx -> agent-tokens / 204, {where}", summary, run)

    if ngx_ext_run is not None or ngx_run is not None:
        ratio, rate = ceiling("own nginx", ngx_ext, ngx_ext_run, "nginx_external")
        row(
            "nginx auth_request -> agent-tokens",
            rate,
            lat["nginx_verify"],
            [ngx_ext_run, lat_runs["nginx_verify"]],
            ratio,
            f">= {gateway_floor(big):.2f}x 204, own nginx",
            gateway_floor(big),
        )
        ratio, _ = ceiling("same nginx", ngx, ngx_run, "nginx_ceiling")
        row("  agent-tokens vs 204 in the same nginx", None, None, [ngx_run], ratio, "(no hop: context)")

    header = ("name", "req/s", "ratio", "target", "met", "p50", "p99")
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    aligns = ["<", ">", ">", "<", "<", ">", ">"]

    def line(cells):
        return "  ".join(f"{str(c):{al}{w}}" for c, w, al in zip(cells, widths, aligns))

    out = []
    out.append(
        f"agent-tokens benchmark: {int(env['tokens']):,} tokens, wrk -t{env['threads']} -c{env['connections']}; "
        f"verify and GET /me walk each working set in a shuffled order (latency and gateway runs: the "
        f"{gen.get('main_set', '?')} set, {int(env.get('sample', 0) or 0):,} tokens)"
    )
    out.append(
        f"ratios to /healthz and to the nginx -> 204 ceilings: one wrk run per pair of routes, the two taking turns in "
        f"{env.get('slice_ms', '?')} ms slices (A B B A ...) on the same connections for {env.get('ab_seconds', '?')} s "
        f"after {env['warmup']} s, median of the per-pair ratios; rotations and the fdatasync probe the same way "
        f"in {env.get('rotate_slice_ms', '?')} ms slices, wrk sending only in its own; p50/p99: one {env['duration']} s "
        f"run per route (rotations: continuous)"
    )
    out.append(
        f"host: {env.get('cpus', '?')} CPUs, load average at start {env.get('loadavg', '?')}; "
        f"data dir {env.get('data_fs', '?')}; storage.cache_mb={env.get('cache_mb', '?')}; "
        f"server.workers={env.get('workers', '0')}{' (one per CPU)' if env.get('workers', '0') == '0' else ''}; "
        f"nginx worker_processes={env.get('nginx_workers', '?')}"
        + (
            f" (the 204 stand-in in its own nginx: {env['external_workers']}, as many as the server's workers)"
            if env.get("external_workers")
            else ""
        )
    )
    if env.get("busy"):
        out.append(f"WARNING: other busy processes during the run: {env['busy']}")
    out.append("")
    out.append(line(header))
    out.append(line(["-" * w for w in widths]))
    out.extend(line(r) for r in rows)
    out.append("")
    if intervals:
        out.append("95% confidence intervals of the interleaved ratios (distribution-free, for the median):")
        out.extend(intervals)
        out.append("")

    def mib(kb):
        return int(kb) / 1024.0

    extras = []
    hwm = env.get("vmhwm_kb")
    if hwm:
        extras.append(
            (
                "peak RSS (VmHWM) under load",
                f"{mib(hwm):.1f} MiB",
                f"<= {RSS_BUDGET_MIB} MiB",
                "yes" if mib(hwm) <= RSS_BUDGET_MIB else "NO",
            )
        )
    if env.get("restart_vmhwm_kb"):
        extras.append(
            (
                "peak RSS after restart (idle)",
                f"{mib(env['restart_vmhwm_kb']):.1f} MiB",
                "-",
                "-",
            )
        )
    for key, label in (("du_import", "data dir after import"), ("du_end", "data dir at end")):
        path = os.path.join(work, "results", f"{key}.json")
        if os.path.exists(path):
            d = load(path)
            mb = d["allocated"] / 1e6
            extras.append(
                (
                    label,
                    f"{mb:.1f} MB on disk ({d['apparent'] / 1e6:.1f} MB apparent)",
                    "<= 300 MB at 1M tokens",
                    ("yes" if mb <= 300 else "NO") if big else "-",
                )
            )
    if lat_runs["rotate"]:
        extras.append(
            (
                "rotations, continuous (one run)",
                f"{lat_runs['rotate']['rps']:,.0f} req/s for {env['duration']} s (the table's rate: in its slices only)",
                "-",
                "-",
            )
        )
    if env.get("import_s"):
        rate = int(env["tokens"]) / max(float(env["import_s"]), 1e-9)
        extras.append(
            (
                "seeding (agent-tokens import)",
                f"{float(env['import_s']):.2f} s ({rate:,.0f} users/s; generating the file took {float(env.get('gen_s', 0)):.2f} s)",
                "-",
                "-",
            )
        )
    for key, label in (
        ("ready_ms", "start-to-ready after import"),
        ("restart_ready_ms", "restart-to-ready (after SIGTERM)"),
        ("cold_ready_ms", "restart-to-ready, page cache dropped"),
    ):
        if env.get(key):
            ms = float(env[key])
            extras.append(
                (
                    label,
                    f"{ms:.0f} ms",
                    "<= 2 s",
                    "yes" if ms <= 2000 else "NO",
                )
            )
    if env.get("stop_ms"):
        extras.append(("graceful stop (SIGTERM to exit)", f"{float(env['stop_ms']):.0f} ms", "-", "-"))
    before = os.path.join(work, "results", "metrics_rot_before.json")
    after = os.path.join(work, "results", "metrics_rot_after.json")
    if os.path.exists(before) and os.path.exists(after):
        b, c = load(before), load(after)
        flushes = c.get("flushes", 0) - b.get("flushes", 0)
        if flushes > 0:
            waiters = (c.get("waiters_sum", 0) - b.get("waiters_sum", 0)) / flushes
            flush_ms = (c.get("flush_seconds_sum", 0) - b.get("flush_seconds_sum", 0)) / flushes * 1000
            extras.append(
                (
                    "group commit during rotations",
                    f"{waiters:.1f} requests/flush, {flush_ms:.2f} ms/flush ({flushes:,.0f} flushes)",
                    "-",
                    "-",
                )
            )
    settled = os.path.join(work, "results", "settle.json")
    if os.path.exists(settled):
        extras.append(
            (
                "background merges after rotations",
                f"the gateway runs waited {load(settled).get('waited_s', 0)} s for them",
                "-",
                "-",
            )
        )
    ew = [max(len(r[i]) for r in extras) for i in range(4)] if extras else []
    for r in extras:
        out.append("  ".join(f"{c:<{w}}" for c, w in zip(r, ew)).rstrip())
    if notes:
        out.append("")
        out.extend("note: " + n for n in notes)
    text = "\n".join(out) + "\n"
    sys.stdout.write(text)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text)


# ---------------------------------------------------------------- selftest


def cmd_selftest(a):
    """Checks the analysis and the generated nginx config (run by scripts/test.sh)."""
    import contextlib
    import io
    import tempfile

    # The order bench_wrk.lua's is_b() gives, stated independently.
    assert [is_b_slice(i) for i in range(8)] == [False, True, True, False, False, True, True, False]

    def run_of(counts, first=1000, slice_ms=50, guard_ms=5):
        return {
            "slice_ms": slice_ms,
            "guard_ms": guard_ms,
            "slices": [[first + k, "b" if is_b_slice(first + k) else "a", n(first + k)] for k, n in enumerate(counts)],
        }

    # B always 90% of A: the median and both interval ends are 0.9; the
    # partial first and last slices and 1 s of warmup (20 slices) are dropped.
    steady = run_of([lambda i: 900 if is_b_slice(i) else 1000] * 242)
    r = ab_summary(steady, 1)
    assert r is not None and abs(r["median"] - 0.9) < 1e-9, r
    assert r["ci"] == (0.9, 0.9), r
    # Slices 1000-1241: 1000 and 1001-1020 (warmup) dropped, pair 510 (1020,
    # 1021) straddles the warmup's end, 1241 is the last, partial one: 511-619.
    assert r["pairs"] == 109, r
    assert abs(r["rate_a"] - 1000 / 0.045) < 1e-6, r
    # Drift cancels: the host slows by half over the run, B/A stays 0.9.
    drift = run_of([lambda i, k=k: (900 if is_b_slice(i) else 1000) * (1 - k / 484) for k in range(242)])
    assert abs(ab_summary(drift, 1)["median"] - 0.9) < 0.01
    # A stalled A slice (nothing sent) counts as an unbounded ratio, not an error.
    stalled = run_of([lambda i: 0 if not is_b_slice(i) and i == 1100 else 500] * 242)
    r = ab_summary(stalled, 1)
    assert r["ci"][1] <= 1.0 + 1e-9 and r["median"] == 1.0, r
    assert ab_summary({"slice_ms": 50, "guard_ms": 5, "slices": []}, 1) is None
    # Two processes' halves of one run (the fdatasync probe's A slices, wrk's
    # B slices with BENCH_SIDE=b) give the same run, cut to the slices both
    # were running.
    a_half = dict(steady, slices=[x for x in steady["slices"] if x[1] == "a"])
    b_half = dict(steady, slices=[x for x in steady["slices"] if x[1] == "b" and x[0] < 1200])
    both = merged_run(a_half, b_half)
    assert both["slices"][-1][0] < 1200 and both["slices"][0][0] == 1001, both["slices"][:2]
    r = ab_summary(both, 1)
    assert abs(r["median"] - 0.9) < 1e-9 and r["pairs"] == 88, r  # pairs 511-598
    assert merged_run(a_half, None) is None
    try:
        merged_run(a_half, dict(b_half, slice_ms=100))
        raise AssertionError("slices of different lengths were merged")
    except ValueError:
        pass
    # The probe syncs only in A slices and counts what it did.
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "probe.json")
        cmd_fsync(argparse.Namespace(dir=d, seconds=0.5, slice_ms=20, guard_ms=2, out=out))
        probe = load(out)
        assert probe["slices"] and all(side == "a" and not is_b_slice(i) for i, side, _ in probe["slices"]), probe
        assert probe["ops"] == sum(n for _, _, n in probe["slices"]) and probe["rate"] > 0, probe
        assert os.listdir(d) == ["probe.json"], os.listdir(d)

    # Working sets: parsed, clipped to the tokens there are, a set no
    # larger than an earlier one dropped.
    assert parse_sets("hot=1000,distinct=100000,uniform=all") == [("hot", 1000), ("distinct", 100000), ("uniform", 0)]
    for bad in ("hot", "hot=x", "Hot=1", "a=1,a=2", ""):
        try:
            parse_sets(bad)
            raise AssertionError(f"{bad!r} was accepted")
        except ValueError:
            pass
    assert plan_sets([("hot", 1000), ("distinct", 100000), ("uniform", 0)], 999_488) == [
        ("hot", 1000, 999), ("distinct", 100000, 9), ("uniform", 999_488, 1)]
    assert plan_sets([("hot", 1000), ("distinct", 100000), ("uniform", 0)], 500) == [("hot", 500, 1)]
    with tempfile.TemporaryDirectory() as d, contextlib.redirect_stdout(io.StringIO()):
        cmd_gen(argparse.Namespace(tokens=3000, dir=d, secret="s" * 32, sets="hot=10,distinct=1000,uniform=all",
                                   sample=None, main_set=None, rotate_users=256))
        info = load(os.path.join(d, "gen.json"))
        assert [(x["name"], x["size"], x["me"]) for x in info["sets"]] == [
            ("hot", 10, True), ("distinct", 1000, True), ("uniform", 2744, True)], info
        assert info["main_set"] == "uniform" and info["rotate_users"] == 256, info
        seeded = {}
        with open(os.path.join(d, "seed.jsonl")) as f:
            next(f)
            for line in f:
                user = json.loads(line)
                seeded[user["token_hash"]] = user["user_id"]
        rotating = {json.loads(base64.urlsafe_b64decode(j.split(".")[1] + "==="))["sub"]
                    for j in open(os.path.join(d, "rotate_jwts.txt")).read().split()}
        for name, size in (("hot", 10), ("distinct", 1000), ("uniform", 2744)):
            tokens = open(os.path.join(d, f"verify_tokens.{name}.txt")).read().split()
            users = [seeded[hashlib.sha256(t.encode()).hexdigest()] for t in tokens]
            assert len(set(users)) == size == len(tokens), name
            assert not rotating & set(users), f"{name} shares users with the rotations"
            jwt_users = [json.loads(base64.urlsafe_b64decode(j.split(".")[1] + "==="))["sub"]
                         for j in open(os.path.join(d, f"me_jwts.{name}.txt")).read().split()]
            assert jwt_users == users, f"{name}: the JWTs are not for the same users in the same order"
            if size > 10:
                assert users != sorted(users), f"{name} is in key order, not shuffled"
        assert open(os.path.join(d, "verify_tokens.txt")).read() == open(os.path.join(d, "verify_tokens.uniform.txt")).read()

    # The report: one row per working set and route, with its target.
    with tempfile.TemporaryDirectory() as d, contextlib.redirect_stdout(io.StringIO()) as printed:
        os.makedirs(os.path.join(d, "results"))
        with open(os.path.join(d, "meta.env"), "w") as f:
            f.write("tokens=1000000\nthreads=1\nconnections=64\nwarmup=1\nduration=5\nsample=100000\n")
        with open(os.path.join(d, "gen.json"), "w") as f:
            json.dump({"main_set": "distinct", "sets": [
                {"name": "distinct", "size": 100000, "me": True}, {"name": "uniform", "size": 999488, "me": False}]}, f)
        for name, ratio in (("ab_healthz_me.distinct", 0.72), ("ab_healthz_verify.distinct", 0.7),
                            ("ab_healthz_verify.uniform", 0.5)):
            run = run_of([lambda i, r=ratio: round(1000 * r) if is_b_slice(i) else 1000] * 242)
            run.update(requests=1, duration_us=1, errors={"connect": 0, "read": 0, "write": 0, "status": 0, "timeout": 0})
            with open(os.path.join(d, "results", f"{name}.json"), "w") as f:
                json.dump(run, f)
        cmd_report(argparse.Namespace(work=d, out=None))
        table = printed.getvalue()
        for needle in (
            "GET /api/agent-tokens/me, 100,000 tokens (distinct)",
            "GET /api/agent-tokens/verify, 999,488 tokens (uniform)",
        ):
            assert needle in table, table
        rows = {line.split("  ")[0]: line for line in table.splitlines()}
        assert ">= 0.70x healthz  yes" in rows["GET /api/agent-tokens/me, 100,000 tokens (distinct)"], table
        assert ">= 0.75x healthz  NO" in rows["GET /api/agent-tokens/verify, 100,000 tokens (distinct)"], table
        assert ">= 0.40x healthz  yes" in rows["GET /api/agent-tokens/verify, 999,488 tokens (uniform)"], table

    # The nginx configs: three virtual hosts with separate upstream pools, the
    # 204 stand-in in its own nginx, and nginx itself accepts both.
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with tempfile.TemporaryDirectory() as d, contextlib.redirect_stdout(io.StringIO()) as printed:
        cmd_nginx_conf(
            argparse.Namespace(
                recipe=os.path.join(root, "gateway", "nginx.conf"),
                dir=d,
                front_port=18080,
                backend_port=18081,
                auth_port=18082,
                ceiling_auth_port=18083,
                external_auth_port=18084,
                workers="1",
                external_workers=3,
            )
        )
        assert printed.getvalue() == "recipe.bench external.bench ceiling.bench\n", printed.getvalue()
        recipe = open(os.path.join(d, "recipe.conf")).read()
        ceiling = open(os.path.join(d, "ceiling.conf")).read()
        external = open(os.path.join(d, "external.conf")).read()
        front = open(os.path.join(d, "nginx.conf")).read()
        stand_in = open(os.path.join(d, "auth204", "nginx.conf")).read()
        assert "server_name recipe.bench;" in recipe and "127.0.0.1:18082" in recipe, recipe
        assert "server_name ceiling.bench;" in ceiling and "127.0.0.1:18083" in ceiling, ceiling
        assert "server_name external.bench;" in external and "127.0.0.1:18084" in external, external
        assert "upstream agent_tokens_ceiling" in ceiling and "http://agent_tokens_ceiling/" in ceiling
        assert "upstream agent_tokens_external" in external and "http://agent_tokens_external/" in external
        assert "backlog=" in recipe and "backlog=" not in ceiling and "backlog=" not in external
        # The in-process 204 is served by the front nginx, the external one is not.
        assert "listen 127.0.0.1:18083" in front and "listen 127.0.0.1:18084" not in front, front
        assert "listen 127.0.0.1:18084" in stand_in and "return 204;" in stand_in, stand_in
        assert "worker_processes 3;" in stand_in and "worker_processes 1;" in front
        assert os.path.join(d, "auth204", "nginx.pid") in stand_in
        nginx = "/usr/sbin/nginx"
        if not os.path.exists(nginx):
            sys.exit("selftest: /usr/sbin/nginx is missing (scripts/test.sh installs nginx-light)")
        for prefix in (d, os.path.join(d, "auth204")):
            check = subprocess.run(
                [nginx, "-t", "-q", "-p", prefix, "-c", os.path.join(prefix, "nginx.conf")],
                capture_output=True,
                text=True,
            )
            assert check.returncode == 0, check.stderr
    print("bench_helper selftest: ok")


# ---------------------------------------------------------------- main


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("gen")
    s.add_argument("--tokens", type=int, required=True)
    s.add_argument("--dir", required=True)
    s.add_argument("--secret", required=True)
    s.add_argument("--sets", default="hot=1000,distinct=100000,uniform=all",
                   help="working sets, NAME=SIZE,... (SIZE all: every token not kept for rotations)")
    s.add_argument("--sample", type=int, help="one working set of this size (instead of --sets)")
    s.add_argument("--main-set", help="the set copied to verify_tokens.txt and me_jwts.txt")
    s.add_argument("--rotate-users", type=int, default=512)
    s.set_defaults(func=cmd_gen)

    s = sub.add_parser("ports")
    s.add_argument("count", type=int)
    s.set_defaults(func=cmd_ports)

    s = sub.add_parser("supervise")
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--pidfile", required=True)
    s.add_argument("--ready-file", required=True)
    s.add_argument("--log", required=True)
    s.add_argument("--timeout", type=float, default=120)
    s.add_argument("cmd", nargs=argparse.REMAINDER)
    s.set_defaults(func=cmd_supervise)

    s = sub.add_parser("busy")
    s.add_argument("--seconds", type=float, default=1.0)
    s.add_argument("--threshold", type=float, default=15.0)
    s.set_defaults(func=cmd_busy)

    s = sub.add_parser("wait-port")
    s.add_argument("port", type=int)
    s.add_argument("--timeout", type=float, default=10)
    s.set_defaults(func=cmd_wait_port)

    s = sub.add_parser("check")
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--method", default="GET")
    s.add_argument("--path", required=True)
    s.add_argument("--bearer-file")
    s.add_argument("--bearer")
    s.add_argument("--host")
    s.add_argument("--expect", type=int, default=200)
    s.add_argument("--contains")
    s.set_defaults(func=cmd_check)

    s = sub.add_parser("fsync")
    s.add_argument("--dir", required=True)
    s.add_argument("--seconds", type=float, required=True)
    s.add_argument("--slice-ms", type=int, required=True, help="slice length; the probe takes the A slices")
    s.add_argument("--guard-ms", type=int, default=0, help="an A slice's first milliseconds not counted")
    s.add_argument("--out", required=True)
    s.set_defaults(func=cmd_fsync)

    s = sub.add_parser("metrics")
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--out", required=True)
    s.set_defaults(func=cmd_metrics)

    s = sub.add_parser("settle")
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--timeout", type=float, default=300)
    s.add_argument("--out", required=True)
    s.set_defaults(func=cmd_settle)

    s = sub.add_parser("proc")
    s.add_argument("pid", type=int)
    s.add_argument("--out", required=True)
    s.set_defaults(func=cmd_proc)

    s = sub.add_parser("du")
    s.add_argument("path")
    s.add_argument("--out", required=True)
    s.set_defaults(func=cmd_du)

    s = sub.add_parser("nginx-conf")
    s.add_argument("--recipe", required=True)
    s.add_argument("--dir", required=True)
    s.add_argument("--front-port", type=int, required=True)
    s.add_argument("--backend-port", type=int, required=True)
    s.add_argument("--auth-port", type=int, required=True)
    s.add_argument("--ceiling-auth-port", type=int, required=True)
    s.add_argument("--external-auth-port", type=int, required=True)
    s.add_argument("--workers", default="1", help="the front nginx's worker_processes")
    s.add_argument("--external-workers", type=int, required=True, help="the 204 stand-in's worker_processes")
    s.set_defaults(func=cmd_nginx_conf)

    s = sub.add_parser("show")
    s.add_argument("file")
    s.add_argument("name")
    s.add_argument("--warmup", type=float, default=0, help="seconds of an interleaved run not counted")
    s.set_defaults(func=cmd_show)

    s = sub.add_parser("selftest")
    s.set_defaults(func=cmd_selftest)

    s = sub.add_parser("report")
    s.add_argument("--work", required=True)
    s.add_argument("--out")
    s.set_defaults(func=cmd_report)

    a = p.parse_args()
    if a.command == "supervise" and a.cmd and a.cmd[0] == "--":
        a.cmd = a.cmd[1:]
    a.func(a)


if __name__ == "__main__":
    main()
