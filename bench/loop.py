"""iocpx as an asyncio event loop: the same asyncio applications on iocpx.EventLoop (io_uring
and epoll), uvloop, rloop and asyncio's own loop, side by side in one run (issue 18's rows).

What it shows, per row, **server CPU microseconds per request / round trip** (the harness's
figure: utime+stime of the server process over the measured window / the operations the
client counted) and its ratio to uvloop's; the goal is iocpx <= 0.9x uvloop on every row,
and <= 0.6x uvloop's idle memory per connection. Rows (apps: bench/loop_servers.py):
  - asyncio.Protocol echo, 64 B / 4 KiB / 64 KiB at 1, 100 and 1,000 connections
    (bench/loadgen.c: closed loop, every echo verified);
  - streams echo (start_server, read / write + drain) and BufferedProtocol echo, at 100 x 64 B
    and 1,000 x 4 KiB;
  - uvicorn + Starlette under `wrk -t1 -c100` and `-c1000`, aiohttp.web under `wrk -t1 -c100`
    (one 14-byte text/plain route); then a `perf record` of each loop's server under the same
    wrk -c100, split by shared object: the loop's own extension module(s), the kernel, the
    interpreter, the rest; the loop's share of server CPU per request is what issue 18's goal
    is stated on for these rows;
  - a RESP server written as an asyncio.Protocol (GET/SET/PING) under
    `redis-benchmark -c 50 -t get -P 1` and `-P 16`;
  - call_soon_threadsafe from another thread, flooding and one wake-up at a time (callbacks
    per second, CPU per callback), and call_later churn (half cancelled: timers per CPU
    second), in a process pinned to CPU 0;
  - idle memory: marginal server RSS per idle connection (bench/idle_client.py, N/2 -> N).
Every cell is --repeat interleaved rounds (a different loop first each round), the median.

What it needs: Linux, 2 CPUs, taskset, cc, Python 3.11+, the in-place iocpx build, and
`pip install uvloop rloop uvicorn starlette httptools aiohttp matplotlib`,
`apt-get install wrk redis-tools linux-perf` (perf for the profile; skipped when missing).
A loop or client that is missing gets rows saying why.

How to run it, from the repo root:

    python bench/loop.py                     # every row, 3 rounds: ~15 min on 2 cores
    python bench/loop.py --only echo,http --repeat 1 --duration 1
    python bench/loop.py --loops iocpx-io_uring,uvloop --only timers,threadsafe

It writes bench/results/loop-YYYY-MM-DD.md with its .json and chart.
"""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import echo
import harness as H
import idle
import peers as P
import real_clients as R

NAME, TITLE = "loop", "iocpx as an asyncio event loop"
UV = "uvloop"
APPS = os.path.join(H.BENCH_DIR, "loop_servers.py")
LOOPS = ("iocpx-io_uring", "iocpx-epoll", "uvloop", "rloop", "asyncio")
GROUPS = ("echo", "streams", "buffered", "http", "resp", "threadsafe", "threadsafe-wake",
          "timers", "idle")
IOCPX = ("iocpx-io_uring", "iocpx-epoll")
# the shared objects whose samples are the loop's own code, per loop
LOOP_DSO = {"iocpx-io_uring": r"^_(core|backend|io_uring|epoll)\.cpython",
            "iocpx-epoll": r"^_(core|backend|io_uring|epoll)\.cpython",
            "uvloop": r"^loop\.cpython", "rloop": r"^_rloop\.cpython"}


def add_args(ap):
    ap.add_argument("--loops", type=H.str_list, default=list(LOOPS),
                    help=f"from {', '.join(LOOPS)} (default all)")
    ap.add_argument("--only", type=H.str_list, default=list(GROUPS),
                    help=f"row groups from {', '.join(GROUPS)} (default all)")
    ap.add_argument("--idle-connections", type=int, default=4000)
    ap.add_argument("--ops", type=int, default=200000,
                    help="call_soon_threadsafe calls / call_later timers per run")
    ap.add_argument("--no-profile", dest="profile", action="store_false",
                    help="skip the perf profile of the HTTP servers")
    ap.set_defaults(repeat=3, duration=2.0, warmup=0.5, quiet_wait=0.0)


def loop_label(loop):
    if loop.startswith("iocpx-"):
        return "iocpx " + loop.split("-", 1)[1]
    if loop in ("uvloop", "rloop"):
        ok, v = H.probe_import(f"import {loop}; print({loop}.__version__)")
        return f"{loop} {v}" if ok else loop
    return "asyncio"


def app_peers(app, loops, labels):
    return [H.Peer(lp, labels[lp], [sys.executable, APPS, app, lp, "{host}", "{port}"],
                   kind="iocpx" if lp in IOCPX else lp, host="next") for lp in loops]


def size_name(s):
    return echo.size_name(s)


def row_name(r):
    g = r["group"]
    if g in ("echo", "streams", "buffered"):
        return f"{g} {r['connections']:,} x {size_name(r['size'])}"
    if g == "http":
        return f"{r['app']} wrk -c{r['conns']}"
    if g == "resp":
        return f"RESP redis-benchmark -t {r['test']} -P {r['pipeline']}"
    if g == "idle":
        return f"idle {r['connections']:,} connections"
    return {"threadsafe": "call_soon_threadsafe flood", "timers": "call_later churn",
            "threadsafe-wake": "call_soon_threadsafe wake-up"}[g]


KEY = {"echo": "cpu_us_per_rt", "streams": "cpu_us_per_rt", "buffered": "cpu_us_per_rt",
       "http": "cpu_us_per_req", "resp": "cpu_us_per_req", "threadsafe": "cpu_us_per_op",
       "threadsafe-wake": "cpu_us_per_op",
       "timers": "cpu_us_per_op", "idle": "kib_per_conn"}


def show(r):
    k = next((x for x in ("cpu_us_per_rt", "cpu_us_per_req", "cpu_us_per_op", "kib_per_conn")
              if x in r), "cpu_us_per_rt")
    extra = ""
    if "rt_per_s" in r:
        extra = f", {r['rt_per_s']:,.0f} rt/s, other {r['other_cpu_pct']:.0f}%"
    elif "rps" in r:
        extra = f", {r['rps']:,.0f} req/s, other {r['other_cpu_pct']:.0f}%"
    elif "ops_per_s" in r:
        extra = f", {r['ops_per_s']:,.0f}/s"
    return f"{k} {H.fmt(r.get(k), '.3f')}{extra}"


def in_process(row, peer, a):
    """threadsafe / timers: one run of loop_servers.py pinned to the server CPU."""
    n = a.ops // 10 if row["group"] == "threadsafe-wake" else a.ops
    argv = H.pinned(H.SERVER_CPU, [sys.executable, APPS, row["group"], peer.id, "-", "0",
                                   "--count", str(n)])
    try:
        p = subprocess.run(argv, env=H.child_env(), cwd=H.BENCH_DIR, capture_output=True,
                           text=True, timeout=120)
    except subprocess.TimeoutExpired:
        return {"error": "timed out after 120 s"}
    out = p.stdout.strip().splitlines()
    if out and out[-1].startswith("UNAVAILABLE "):
        return {"error": "not available: " + out[-1][12:]}
    if p.returncode != 0 or not out or not out[-1].startswith("{"):
        err = (p.stderr.strip().splitlines() or [f"exit {p.returncode}"])[-1]
        return {"error": f"failed: {err[-300:]}"}
    r = json.loads(out[-1])
    r["cpu_us_per_op"] = r["cpu_s"] * 1e6 / r["ops"]
    r["ops_per_s"] = r["ops"] / r["seconds"]
    r["ops_per_cpu_s"] = r["ops"] / r["cpu_s"] if r["cpu_s"] else None
    return r


def http_check(srv):
    """One keep-alive GET by hand (real_clients.check sends Connection: close and reads to
    EOF, which rloop 0.5's transports never give): None, or what is wrong."""
    try:
        with socket.create_connection((srv.host, srv.port), timeout=5) as s:
            return R.http_get_check(s, keep_alive=True)
    except OSError as exc:
        return f"check request failed: {exc}"


def http_measure(tools, row, peer, a):
    """real_clients.measure's wrk part with the keep-alive check: warm up 1 s, measure one run."""
    if not tools.get("wrk"):
        return {"error": "wrk is not installed (apt-get install wrk)"}
    srv = H.start(peer, "-http")
    H.drain_stdout(srv.proc)
    try:
        why = http_check(srv)
        if why:
            return {"error": why}
        row = dict(row, workload="http")
        warm = H.measure_run(srv, R.wrk(tools, row, 1), 40, R.parse_wrk)
        if "error" in warm:
            return {"error": "warm-up run: " + warm["error"]}
        return H.measure_run(srv, R.wrk(tools, row, a.duration), a.duration + 40, R.parse_wrk)
    finally:
        srv.stop()


def measure(row, peer, a, tools):
    g = row["group"]
    if g in ("echo", "streams", "buffered"):
        return echo.measure(row, peer, a, tag=f"-{g}")
    if g == "http":
        return http_measure(tools, row, peer, a)
    if g == "resp":
        return R.measure(tools, dict(row, workload=g), peer, a)
    if g == "idle":
        return idle.hold(row, peer)
    return in_process(row, peer, a)


def rows_for(group, a):
    q = a.quick
    if group == "echo":
        return [{"connections": c, "size": s} for s in (64, 4096, 65536)
                for c in ((100, 1000) if q else (1, 100, 1000))]
    if group in ("streams", "buffered"):
        return [{"connections": 100, "size": 64}, {"connections": 1000, "size": 4096}]
    if group == "http":
        return [{"app": "starlette", "conns": 100}, {"app": "starlette", "conns": 1000},
                {"app": "aiohttp", "conns": 100}]
    if group == "resp":
        return [{"test": "get", "pipeline": 1}, {"test": "get", "pipeline": 16}]
    if group == "idle":
        return [{"connections": a.idle_connections}]
    return [{}]


# ---- the profile of the HTTP servers: perf record, split by shared object ----

def perf_dsos(path):
    """[(percent, shared object)] of a perf.data, from `perf report --sort dso`."""
    r = subprocess.run(["perf", "report", "-i", path, "--stdio", "--sort", "dso",
                        "--percent-limit", "0.1"], capture_output=True, text=True, timeout=120)
    out = []
    for line in r.stdout.splitlines():
        m = re.match(r"^\s+([\d.]+)%\s+(\S.*?)\s*$", line)
        if m:
            out.append((float(m.group(1)), m.group(2)))
    return out


def classify(loop, dsos):
    """{'loop', 'kernel', 'python', 'other'}: percent of the server's samples."""
    pat = re.compile(LOOP_DSO.get(loop, r"^$"))
    share = {"loop": 0.0, "kernel": 0.0, "python": 0.0, "other": 0.0}
    for pct, dso in dsos:
        if pat.search(dso):
            share["loop"] += pct
        elif "kernel" in dso or dso.startswith("[k"):
            share["kernel"] += pct
        elif "python3" in dso or "libpython" in dso:
            share["python"] += pct
        else:
            share["other"] += pct
    return share


def profile(app, peer, a, tools):
    """Start `app` on peer's loop, warm it with wrk, then perf-record it under one wrk -c100
    run; the split by shared object and the top symbols."""
    row = {"workload": "http", "conns": 100}
    srv = H.start(peer, "-profile")
    H.drain_stdout(srv.proc)
    data = os.path.join(H.BUILD_DIR, f"perf-{app}-{peer.id}.data")
    try:
        H.run_client([x.format(host=srv.host, port=srv.port)
                      for x in R.wrk(tools, row, 1)], 40)
        rec = H.spawn(["perf", "record", "-F", "1999", "-p", str(srv.pid), "-o", data],
                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.3)
        rc, out, err, _ = H.run_client([x.format(host=srv.host, port=srv.port)
                                        for x in R.wrk(tools, row, a.duration)], a.duration + 40)
        rec.send_signal(signal.SIGINT)
        rec.wait(timeout=30)
        if rc != 0:
            return {"error": f"wrk failed: {(err or out)[-200:]}"}
        dsos = perf_dsos(data)
        if not dsos:
            return {"error": "perf recorded nothing"}
        res = classify(peer.id, dsos)
        res["dsos"] = dsos[:8]
        return res
    finally:
        srv.stop()


def run(a, meta):
    tools = P.ensure_tools(False)
    meta["tool_versions"] = ", ".join(f"{t} {P.version(p) if p else 'missing'}"
                                      for t, p in tools.items() if t != "nginx")
    ok, vers = H.probe_import("import uvicorn, starlette, aiohttp, httptools; print("
                              "'uvicorn', uvicorn.__version__, 'starlette', starlette.__version__,"
                              " 'httptools', httptools.__version__, 'aiohttp', "
                              "aiohttp.__version__)")
    meta["app_versions"] = vers if ok else f"not all importable: {vers}"
    if a.quick:
        a.duration, a.warmup = min(a.duration, 1.0), min(a.warmup, 0.3)
    labels = {lp: loop_label(lp) for lp in a.loops}
    meta["loop_labels"] = labels
    out = []
    for g in a.only:
        app = {"echo": "echo", "streams": "streams", "buffered": "buffered", "resp": "resp",
               "idle": "echo"}.get(g, g)
        rows = [dict(r, group=g) for r in rows_for(g, a)]
        if g == "http":
            for app_name in dict.fromkeys(r["app"] for r in rows):
                peers = app_peers(app_name, a.loops, labels)
                out += H.sweep([r for r in rows if r["app"] == app_name], peers,
                               lambda row, p: measure(row, p, a, tools), a, KEY[g], show,
                               title=row_name)
            continue
        peers = app_peers(app, a.loops, labels)
        out += H.sweep(rows, peers, lambda row, p: measure(row, p, a, tools), a, KEY[g], show,
                       repeat=1 if g == "idle" else None, title=row_name)
    if a.profile and "http" in a.only:
        if not P.which("perf"):
            meta["warnings"].append("perf is missing: no profile of the HTTP servers")
        else:
            for app_name in ("starlette", "aiohttp"):
                for p in app_peers(app_name, [x for x in a.loops if x in LOOP_DSO], labels):
                    H.log(f"profile {app_name}: {p.label} ...")
                    try:
                        r = profile(app_name, p, a, tools)
                    except H.Unavailable as exc:
                        r = {"error": str(exc)}
                    H.log(f"  {r.get('error') or r}")
                    out.append(dict(r, group="profile", app=app_name, peer=p.id,
                                    label=p.label, kind=p.kind))
    return out


# ---- the report ----

def value_of(results, name, peer_id):
    r = next((x for x in results if x.get("group") != "profile" and row_name(x) == name
              and x["peer"] == peer_id), None)
    if r is None:
        return None
    return "failed" if "error" in r else r.get(KEY[r["group"]])


def section(rep, results, meta):
    rep.lines.insert(-1, f"- loops: {', '.join(meta.get('loop_labels', {}).values())}; "
                         f"apps: {meta.get('app_versions')}; clients: {meta.get('tool_versions')}")
    main_rows = [r for r in results if r.get("group") != "profile"]
    peers = [H.Peer(i, lbl, []) for i, lbl in dict.fromkeys((r["peer"], r["label"])
                                                            for r in main_rows)]
    names = list(dict.fromkeys(row_name(r) for r in main_rows))
    rep.section("Server CPU per operation, ratio to uvloop",
                "Lower is better. Echo/streams/buffered: server CPU us per round trip; HTTP and "
                "RESP: server CPU us per request; call_soon_threadsafe / call_later: process CPU "
                "us per callback / per timer; idle: KiB RSS per idle connection. Ratio to "
                "uvloop in brackets; each cell the median of the interleaved rounds.")
    body = []
    for n in names:
        cells = [n]
        u = value_of(results, n, UV)
        for p in peers:
            v = value_of(results, n, p.id)
            cells.append("-" if v is None else v if isinstance(v, str) else
                         f"{v:.2f}" + (f" ({v / u:.2f})" if isinstance(u, float) and u
                                       and p.id != UV else ""))
        body.append(cells)
    rep.table(["row"] + [p.label for p in peers], body)
    goal_rows = []
    for n in names:
        u = value_of(results, n, UV)
        goal = 0.6 if n.startswith("idle") else 0.9
        for lp in IOCPX:
            v = value_of(results, n, lp)
            if isinstance(v, float) and isinstance(u, float) and u:
                goal_rows.append([n, lp.replace("-", " "), f"{v / u:.2f}", f"<= {goal}",
                                  "yes" if v / u <= goal else "**NO**"])
    if goal_rows:
        rep.section("Issue 18's goals", "iocpx / uvloop per row (the ratio of the figures "
                    "above); the goal is <= 0.9 (idle memory: <= 0.6).")
        rep.table(["row", "iocpx", "vs uvloop", "goal", "met"], goal_rows, right=[2])
    extra = [r for r in main_rows if r.get("group") in ("threadsafe", "threadsafe-wake", "timers")
             and "error" not in r]
    if extra:
        rep.section("call_soon_threadsafe and timers",
                    "One process pinned to CPU 0 (the producer thread shares that CPU with the "
                    "loop). Flood: another thread calls call_soon_threadsafe as fast as it can; "
                    "wake-up: one call at a time, each waiting for its callback (every call "
                    "wakes the idle loop); churn: call_later with random delays in [0, 0.25) "
                    "s, every other one cancelled.")
        rep.table(["row", "loop", "per wall second", "per CPU second", "CPU us each"],
                  [[row_name(r), r["label"], f"{r['ops_per_s']:,.0f}",
                    H.fmt(r.get("ops_per_cpu_s"), ",.0f"), f"{r['cpu_us_per_op']:.3f}"]
                   for r in extra])
    prof = [r for r in results if r.get("group") == "profile"]
    if prof:
        rep.section("The loop's share of the HTTP servers' CPU (perf)",
                    "`perf record -F 1999` of the server under one `wrk -t1 -c100` run, samples "
                    "split by shared object: the loop's extension module(s) (iocpx: _core, "
                    "_backend, _io_uring/_epoll; uvloop: loop.*.so; rloop: _rloop.*.so), the "
                    "kernel (the loop's syscalls and the TCP stack), the interpreter (the "
                    "app, the framework and any Python-level loop code: iocpx's _loop.py and "
                    "asyncio's base classes count here, so the loop's share is a lower bound), "
                    "other (httptools, libc, ...). Loop us/req = (loop + kernel share) x the "
                    "row's server CPU us/req from the table above (wrk -c100).")
        body = []
        for r in prof:
            if "error" in r:
                body.append([r["app"], r["label"], r["error"]])
                continue
            cpu = value_of(results, f"{r['app']} wrk -c100", r["peer"])
            lk = (r["loop"] + r["kernel"]) / 100.0
            r["loop_us_per_req"] = cpu * lk if isinstance(cpu, float) else None
            u = next((x for x in prof if x["app"] == r["app"] and x["peer"] == UV
                      and "error" not in x), None)
            ucpu = value_of(results, f"{r['app']} wrk -c100", UV)
            uv_loop = (u["loop"] + u["kernel"]) / 100.0 * ucpu \
                if u and isinstance(ucpu, float) else None
            body.append([r["app"], r["label"], f"{r['loop']:.1f}", f"{r['kernel']:.1f}",
                         f"{r['python']:.1f}", f"{r['other']:.1f}",
                         H.fmt(r["loop_us_per_req"], ".2f"),
                         H.fmt(H.ratio(r["loop_us_per_req"], uv_loop), ".2f")])
        rep.table(["app", "loop", "loop .so %", "kernel %", "interpreter %", "other %",
                   "loop+kernel us/req", "vs uvloop"], body)
        for r in prof:
            if r.get("dsos"):
                rep.note(f"perf {r['app']} on {r['label']}: " + ", ".join(
                    f"{d} {p:.1f}%" for p, d in r["dsos"][:6]))
    for r in main_rows:
        if "error" in r:
            rep.note(f"{r['label']} @ {row_name(r)}: {r['error']}")
        else:
            k = KEY[r["group"]]
            runs = r.get(f"runs_{k}")
            if runs and r["peer"] in IOCPX + (UV,):
                rep.note(f"{r['label']} @ {row_name(r)}: the {len(runs)} runs: "
                         + ", ".join(f"{x:.2f}" for x in runs))
            if r.get("other_cpu_pct", 0) >= 15:
                rep.note(f"{r['label']} @ {row_name(r)}: other work used "
                         f"{r['other_cpu_pct']:.0f}% of a core during the window")
    rep.note("The machine was shared: other jobs ran during the run (other CPU % per run is in "
             "the .json); ratios from alternating rounds in one run, not absolute figures, are "
             "what to read.")
    charts(rep, results)


def charts(rep, results):
    main_rows = [r for r in results if r.get("group") in ("echo", "streams", "buffered",
                                                          "http", "resp")]
    names = list(dict.fromkeys(row_name(r) for r in main_rows))
    peers = list(dict.fromkeys((r["peer"], r["label"]) for r in main_rows))
    if names:
        rep.bars("cpu", "asyncio loops: server CPU per request / round trip (lower is better)",
                 [n.replace(" x ", "\n").replace(" wrk", "\nwrk").replace(
                     "RESP redis-benchmark -t get ", "RESP\n") for n in names],
                 [(lbl, [(lambda v: v if isinstance(v, float) else None)(
                     value_of(results, n, pid)) for n in names]) for pid, lbl in peers],
                 "server CPU us", log=True, size=(16, 6))


if __name__ == "__main__":
    sys.exit(H.main(sys.modules[__name__]))
