"""The iocpx benchmark suite: every peer, every scenario, one dated Markdown report (+ PNG charts).

What it shows (design.md section 6): for each server, pinned to CPU 0 with the load generator
pinned to CPU 1,
  - echo ping-pong at 1, 100 and 1,000 connections x 64 B, 4 KiB and 64 KiB, and large messages,
    1 and 100 connections x 1 MiB (bench/loadgen.c, closed loop, every echo verified): round
    trips/s, p50/p99 latency and the robust figure, **server CPU microseconds per round trip**,
    with its ratio to uvloop and to the C limit;
  - connection churn (bench/churn.c: connect, send 64 B, echo, close, over and over):
    connections/s and server CPU microseconds per connection;
  - 10,000 idle connections (bench/idle_client.py, in another process): server RSS per
    connection, as the marginal RSS between N/2 and N connections so fixed pools do not count;
  - the stress run at the per-process maximum (`python -m iocpx stress --connections ~19000
    --messages 3 --interval 3 --size 64 --server-pid PID`) against `python -m iocpx serve`,
    uvloop and asyncio: every message verified, errors, server CPU seconds and peak RSS;
  - a targets check: iocpx against uvloop at 100/1,000 x 64 B, within 15% of the C limit,
    idle RSS per connection <= 1 KiB, the stress run clean and its CPU against uvloop.
The peers: iocpx once per available backend with workers=1, iocpx with its default backend and
default worker count, uvloop, asyncio, a thread per client (bench/servers.py: plain blocking
sockets, the model's counter-example) and the minimal C io_uring server bench/uring_echo.c (the
practical limit). Throughput on two shared cores is bound by the client (the "loadgen CPU"
column; >= 90% is flagged), which is why CPU per round trip is the figure to compare.

What it needs: Linux with io_uring (6.1+), 2+ CPUs, `cc`, `taskset`, Python 3.11+, the kernel
header <linux/io_uring.h> (Debian: linux-libc-dev; no liburing), `pip install uvloop matplotlib`
(without matplotlib the tables are written and the charts skipped), an open-files limit of
~20,000 for the stress run (`ulimit -n`), and an importable iocpx: normally the in-place build,
`python setup.py build_ext --inplace` (this script warns when src/iocpx/*.pyx is newer than its
built module, and rebuilds it only with --build).

How to run it, from the repo root:

    python bench/run_all.py --quick        # smoke check, ~3 minutes: fewer rows, 2 s each
    python bench/run_all.py                # the full run, ~20 minutes on 2 cores
    python bench/run_all.py --only echo,idle --servers uvloop,uring-c,iocpx

It writes bench/results/YYYY-MM-DD.md (the table), YYYY-MM-DD.json (every raw figure) and
YYYY-MM-DD-*.png (charts for a local look: git-ignored, so the table names them without linking
them), and rewrites bench/results/LATEST.md, a pointer to the newest report of each bench
script; --quick writes YYYY-MM-DD-quick.* instead and leaves LATEST.md alone. A second run on
the same day replaces that day's files. The machine is shared: before each row the driver waits
(up to --quiet-wait s) for the cores to be idle, the "other CPU %" column says what else ran,
and each 64 B echo row is the median of --repeat interleaved runs. Servers listen on a free port
below the ephemeral range (bind to port 0 fails when the range is full of TIME_WAIT sockets, which a
shared machine's tests leave behind); a stress run whose client runs out of local ports for
the same reason is run once more after they expire (and the report says so). Every run is
bounded in time and every child process is killed on exit, error or Ctrl-C (then the rows
measured so far are reported). Exit status 1 if an iocpx row failed, else 0.
"""

import argparse
import datetime
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import time

import harness as H     # bench/harness.py: spawning, /proc sampling, run_one

BENCH_DIR = H.BENCH_DIR

CHURN_SRC = os.path.join(BENCH_DIR, "churn.c")
CHURN_BIN = os.path.join(H.BUILD_DIR, "churn")
IDLE_CLIENT = os.path.join(BENCH_DIR, "idle_client.py")
RESULTS_DIR = os.path.join(BENCH_DIR, "results")
SRC_PKG = os.path.join(H.REPO_ROOT, "src", "iocpx")

UV = "uvloop"
LIMIT = "uring-c"


def log(msg):
    print(msg, file=sys.stderr, flush=True)


# ---- peers ----

def probe_iocpx():
    """(info dict, None) about the iocpx the servers will import, or (None, reason)."""
    ok, out = H.probe_import(
        "import json, iocpx; e = iocpx.Engine(); w, b = e.workers, e.backend; e.close(); "
        "print(json.dumps({'version': getattr(iocpx, '__version__', '?'), 'file': iocpx.__file__,"
        " 'backends': list(iocpx.available_backends()), 'default_backend': b,"
        " 'default_workers': w}))")
    if not ok:
        return None, out
    return json.loads(out.splitlines()[-1]), None


def make_peers(iocpx_info, iocpx_err, want):
    """[{id, kind, label, sargs, error?}] in report order; `want` filters by kind."""
    peers = []
    if iocpx_info:
        for b in iocpx_info["backends"]:
            peers.append({"id": f"iocpx-{b}-w1", "kind": "iocpx", "label": f"iocpx {b} w=1",
                          "sargs": ["--workers", "1", "--backend", b]})
        peers.append({"id": "iocpx-default", "kind": "iocpx",
                      "label": f"iocpx {iocpx_info['default_backend']} "
                               f"w={iocpx_info['default_workers']} (default)",
                      "sargs": ["--workers", "0"]})
    else:
        peers.append({"id": "iocpx", "kind": "iocpx", "label": "iocpx", "sargs": [],
                      "error": f"not available: {iocpx_err}"})
    peers += [
        {"id": UV, "kind": "uvloop", "label": "uvloop", "sargs": []},
        {"id": "asyncio", "kind": "asyncio", "label": "asyncio", "sargs": []},
        {"id": "threads", "kind": "threads", "label": "thread per client", "sargs": []},
        {"id": LIMIT, "kind": "uring-c", "label": "C io_uring (limit)", "sargs": []},
    ]
    if "uvloop" in want:
        ok, why = H.probe_import("import uvloop")
        if not ok:
            peers[[p["id"] for p in peers].index(UV)]["error"] = \
                f"not available: {why} (pip install uvloop)"
    return [p for p in peers if p["kind"] in want]


# ---- scenarios ----

def run_echo_row(peer, conns, size, a):
    return H.run_one(peer["kind"], peer["label"], peer["sargs"], conns, size, a,
                     os.path.join(H.BUILD_DIR, f"server-{peer['id']}.log"))


def run_churn_row(peer, conc, size, a):
    def client(port):
        return [CHURN_BIN, "127.0.0.1", str(port), str(conc), str(size), str(a.warmup),
                str(a.duration)], 5.0
    r = H.run_one(peer["kind"], peer["label"], peer["sargs"], conc, size, a,
                  os.path.join(H.BUILD_DIR, f"server-{peer['id']}.log"), client=client)
    if "error" not in r:
        r["conns_per_s"] = r["rt_per_s"]
        r["cpu_us_per_conn"] = r["cpu_us_per_rt"]
    return r


def run_idle_row(peer, n, quiet_wait):
    """Server RSS at 0, N/2 and N idle connections held by idle_client.py in another process."""
    res = {"label": peer["label"], "kind": peer["kind"], "connections": n}
    waited, used = H.wait_for_ports(n, 65.0)
    if waited >= 1:
        log(f"  waited {waited:.0f} s for local ports ({used:,} still in use, TIME_WAIT mostly)")
    busy = H.wait_for_quiet(quiet_wait) if quiet_wait > 0 else 0.0
    log_path = os.path.join(H.BUILD_DIR, f"server-{peer['id']}-idle.log")
    proc, port = H.start_server(H.server_command(peer["kind"], peer["sargs"]), log_path)
    if proc is None:
        res["error"] = port
        return res
    H.drain_stdout(proc)
    client = None
    try:
        time.sleep(0.5)
        spid = proc.pid
        res["rss0_kib"] = H.rss_kib(spid)
        cpu0 = H.cpu_seconds(spid)
        client = H.spawn(["taskset", "-c", H.CLIENT_CPU, sys.executable, IDLE_CLIENT,
                           "127.0.0.1", str(port)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                          start_new_session=True)
        half = n // 2
        for target, key in ((half, "rss_half_kib"), (n, "rss_full_kib")):
            client.stdin.write(f"OPEN {target}\n".encode())
            client.stdin.flush()
            line = H.read_line(client, time.monotonic() + 60 + target / 100)
            if line is None or not line.startswith("OK "):
                res["error"] = f"idle client at {target}: {line or 'timed out'}" + \
                    (f" / server: {H.tail(log_path)}" if proc.poll() is not None else "")
                return res
            if target == n:
                res["open_seconds"] = float(line.split()[2])
            time.sleep(1.0)                 # let lazy per-connection work settle
            if proc.poll() is not None:
                res["error"] = f"server exited (status {proc.returncode}): {H.tail(log_path)}"
                return res
            res[key] = H.rss_kib(spid)
        res["setup_cpu_us_per_conn"] = (H.cpu_seconds(spid) - cpu0) * 1e6 / n
        res["kib_per_conn"] = (res["rss_full_kib"] - res["rss_half_kib"]) / (n - half)
        if busy >= 15.0:
            res["note"] = f"machine was {busy:.0f}% busy before the run"
        return res
    finally:
        H.finish_client(client)
        H.stop_server(proc)


STRESS_PEERS = {      # label, command (PORT filled in), line that gives the port
    "iocpx": ("iocpx serve", [sys.executable, "-m", "iocpx", "serve", "--host", "127.0.0.1",
                              "--port", "PORT", "--backlog", "4096", "--quiet"],
              r"listening on [\d.]+:(\d+)"),
    "uvloop": ("uvloop", [sys.executable, H.SERVERS_PY, "uvloop", "PORT", "--backlog", "4096"],
               r"^READY (\d+)"),
    "asyncio": ("asyncio", [sys.executable, H.SERVERS_PY, "asyncio", "PORT", "--backlog", "4096"],
                r"^READY (\d+)"),
    "uring-c": ("C io_uring (limit)", [H.URING_BIN, "PORT", "4096"], r"^READY (\d+)"),
}


def stress_source_ip():
    """A loopback source address no TCP socket uses yet, for the stress client's --source-ip
    (when it has the option). The client binds every socket to (address, port 0) and closes
    first, so for 60 s a run leaves ~19,000 TIME_WAIT sockets whose ports a second bind to the
    same address cannot take: the next run on that address would fail with EADDRINUSE."""
    ok, out = H.probe_import("import iocpx._stress, inspect; "
                             "print('--source-ip' in inspect.getsource(iocpx._stress))")
    if not (ok and out.endswith("True")):
        return None
    used = set()
    for path in ("/proc/net/tcp",):
        try:
            with open(path) as f:
                next(f, None)
                for line in f:
                    used.add(line.split(None, 2)[1].split(":")[0])
        except OSError:
            pass
    for n in range(100, 250):
        if f"{n:02X}00007F" not in used:        # /proc/net/tcp: 127.0.0.n, little-endian hex
            return f"127.0.0.{n}"
    return None


def run_stress_row(key, n, messages, interval, quiet_wait):
    label, cmd, ready_re = STRESS_PEERS[key]
    cmd = [str(H.free_port()) if x == "PORT" else x for x in cmd]
    res = {"label": label, "kind": key, "connections": n, "messages": messages,
           "tcp_sockets_before": H.loopback_ports_in_use()}
    src = stress_source_ip()
    busy = H.wait_for_quiet(quiet_wait) if quiet_wait > 0 else 0.0
    log_path = os.path.join(H.BUILD_DIR, f"server-stress-{key}.log")
    proc, port = H.start_server(cmd, log_path, ready_re)
    if proc is None:
        res["error"] = port
        return res
    H.drain_stdout(proc)
    try:
        spid = proc.pid
        cpu0, t0 = H.cpu_seconds(spid), time.monotonic()
        scmd = ["taskset", "-c", H.CLIENT_CPU, sys.executable, "-m", "iocpx", "stress",
                "--host", "127.0.0.1", "--port", str(port), "--connections", str(n),
                "--messages", str(messages), "--interval", str(interval), "--size", "64",
                "--server-pid", str(spid)] + (["--source-ip", src] if src else [])
        res["command"] = " ".join(["python"] + scmd[4:])
        limit = n / 5000 + messages * interval + 60 + 60   # stress's own timeout is 60 s extra
        st = H.spawn(scmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=H.child_env(),
                      cwd=BENCH_DIR, start_new_session=True)
        try:
            out, _ = st.communicate(timeout=limit)
        except subprocess.TimeoutExpired:
            st.kill()
            out, _ = st.communicate()
            res["error"] = f"stress client did not finish in {limit:.0f} s"
        out = out.decode(errors="replace")
        with open(os.path.join(H.BUILD_DIR, f"stress-client-{key}.log"), "w") as f:
            f.write(" ".join(scmd) + "\n" + out)
        res["cpu_s_own"] = H.cpu_seconds(spid) - cpu0
        res["wall_s"] = time.monotonic() - t0
        res["exit"] = st.returncode
        res["ok"] = "stress: OK" in out
        m = re.search(r"connections\s+made (\d+), failed (\d+)", out)
        if m:
            res["made"], res["failed"] = int(m.group(1)), int(m.group(2))
        m = re.search(r"messages\s+sent (\d+), echoed (\d+), verified (\d+) \(of (\d+)\)", out)
        if m:
            res["sent"], res["echoed"], res["verified"], res["want"] = map(int, m.groups())
        m = re.search(r"errors\s+(.*)", out)
        if m:
            res["errors"] = m.group(1).strip()
        m = re.search(r"latency\s+p50 ([\d.na]+) ms, p99 ([\d.na]+) ms", out)
        if m:
            res["p50_ms"], res["p99_ms"] = float(m.group(1)), float(m.group(2))
        m = re.search(r"server\s+pid \d+: CPU ([\d.]+) s .*peak RSS ([\d.]+) MiB", out)
        if m:
            res["cpu_s"], res["peak_rss_mib"] = float(m.group(1)), float(m.group(2))
        if not res["ok"]:
            res["output_tail"] = " / ".join(
                ln.strip() for ln in out.strip().splitlines()[-12:]
                if ln.strip() and not ln.strip().startswith("t="))[-600:]
        if "verified" not in res and "error" not in res:
            res["error"] = "no report from the stress client: " + \
                " / ".join(out.strip().splitlines()[-3:])
        if proc.poll() is not None:
            res["note"] = f"server exited (status {proc.returncode}): {H.tail(log_path)}"
        if busy >= 15.0:
            res.setdefault("note", f"machine was {busy:.0f}% busy before the run")
        return res
    finally:
        H.stop_server(proc)


# ---- report ----

def _ratio(x, base):
    return None if not x or not base else x / base


def scen_name(c, s):
    size = (f"{s >> 20} MiB" if s >= 1 << 20 and s % (1 << 20) == 0 else
            f"{s // 1024} KiB" if s >= 1024 and s % 1024 == 0 else f"{s} B")
    return f"{c:,} x {size}"


def find(rows, pid, **kw):
    for r in rows:
        if r.get("peer") == pid and all(r.get(k) == v for k, v in kw.items()) and "error" not in r:
            return r
    return None


def targets(res, peers):
    """Markdown lines of the targets check (design.md section 6): small tables."""
    out = []
    iocpx = [p for p in peers if p["kind"] == "iocpx" and "error" not in p]
    echo = res.get("echo", [])
    rows = []
    for p in iocpx:
        for c in (100, 1000):
            r, u, lim = (find(echo, x, connections=c, size=64) for x in (p["id"], UV, LIMIT))
            if not r:
                continue
            cpu = r.get("cpu_us_per_rt")
            ucpu, lcpu = u and u.get("cpu_us_per_rt"), lim and lim.get("cpu_us_per_rt")
            ru, rl = _ratio(cpu, ucpu), _ratio(cpu, lcpu)
            rows.append(f"| {p['label']} | {scen_name(c, 64)} | {H.fmt(cpu, '.2f')} "
                        f"| {H.fmt(ucpu, '.2f')} | {H.fmt(ru, '.2f')} | {H.fmt(lcpu, '.2f')} "
                        f"| {H.fmt(rl, '.2f')} | {_yn(ru and ru < 1)} | {_yn(rl and rl <= 1.15)} |")
    if rows:
        out += ["Echo, server CPU us per round trip:", "",
                "| iocpx | scenario | iocpx | uvloop | vs uvloop | C limit | vs C "
                "| beats uvloop | within 15% of C |",
                "|---|---|---:|---:|---:|---:|---:|---|---|"] + rows + [""]
    rows = []
    for p in iocpx:
        r = find(res.get("idle", []), p["id"])
        if r:
            k = r["kib_per_conn"]
            rows.append(f"| {p['label']} | {k:.2f} | {_yn(k <= 1.0)} |")
    if rows:
        out += ["| iocpx | idle RSS per connection KiB | <= 1 KiB |", "|---|---:|---|"] + \
            rows + [""]
    st = {r["kind"]: r for r in res.get("stress", []) if "verified" in r}
    if "iocpx" in st:
        r, u = st["iocpx"], st.get("uvloop")
        clean = bool(r.get("ok")) and r.get("verified") == r.get("want")
        rc = _ratio(r.get("cpu_s"), u and u.get("cpu_s"))
        out += ["| stress | messages verified | errors | all verified, no errors "
                "| server CPU s | uvloop CPU s | vs uvloop |",
                "|---|---:|---|---|---:|---:|---:|",
                f"| iocpx serve, {r['connections']:,} x {r['messages']} "
                f"| {r.get('verified', 0):,} / {r.get('want', 0):,} | {r.get('errors', '?')} "
                f"| {_yn(clean)} | {H.fmt(r.get('cpu_s'), '.2f')} "
                f"| {H.fmt(u and u.get('cpu_s'), '.2f')} | {H.fmt(rc, '.2f')} |", ""]
    return out


def _yn(ok):
    return "**yes**" if ok else "**NO**"


def render(res, meta, peers, charts):
    out = H.report_head("iocpx benchmark suite", meta)
    out.append(f"- method: server pinned to CPU {H.SERVER_CPU}, client to CPU {H.CLIENT_CPU}; "
               f"echo: "
               f"bench/loadgen.c, closed loop, one message in flight per connection, every echo "
               f"verified, warmup {meta['warmup']} s + {meta['duration']} s measured per row, "
               f"64 B rows the median of {meta['repeat']} interleaved runs; server CPU from "
               f"/proc/PID/stat over the measured window")
    out.append(f"- command: `{meta['command']}` ({meta['elapsed_min']:.1f} min)")
    out.append("")
    tg = targets(res, peers)
    if tg:
        out += ["## Targets", ""] + tg
    notes = []

    echo = res.get("echo", [])
    if echo:
        scen = list(dict.fromkeys((r["connections"], r["size"]) for r in echo))
        out += ["## Echo ping-pong", "",
                "Server CPU us per round trip (lower is better; ratio to uvloop in brackets):", ""]
        out.append("| server | " + " | ".join(scen_name(c, s) for c, s in scen) + " |")
        out.append("|---|" + "---:|" * len(scen))
        for p in peers:
            cells = []
            for c, s in scen:
                r = find(echo, p["id"], connections=c, size=s)
                u = find(echo, UV, connections=c, size=s)
                if not r:
                    cells.append("-")
                    continue
                ru = _ratio(r.get("cpu_us_per_rt"), u and u.get("cpu_us_per_rt"))
                cells.append(f"{H.fmt(r.get('cpu_us_per_rt'), '.2f')}"
                             + (f" ({ru:.2f})" if ru and p["id"] != UV else ""))
            out.append(f"| {p['label']} | " + " | ".join(cells) + " |")
        out.append("")
        out.append("| scenario | server | round trips/s | p50 us | p99 us | **server CPU us/rt** "
                   "| vs uvloop | vs C | server CPU % | loadgen CPU % | other CPU % | errors |")
        out.append("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for c, s in scen:
            u = find(echo, UV, connections=c, size=s)
            lim = find(echo, LIMIT, connections=c, size=s)
            for r in (x for x in echo if x["connections"] == c and x["size"] == s):
                name = scen_name(c, s)
                if "error" in r:
                    out.append(H.error_row([name, r["label"]], r["error"], 12))
                    notes.append(f"{r['label']} @ {name}: {r['error']}")
                    continue
                out.append(f"| {name} | {r['label']} " + load_cells(r, u, lim, ".2f"))
                notes += row_notes(r, name)
        out.append("")

    churn = res.get("churn", [])
    if churn:
        out += ["## Connection churn", "",
                f"{meta['churn_concurrency']} concurrent slots, each: connect, send 64 B, read "
                "the echo, close (bench/churn.c). Server CPU us per connection = accept + one "
                "echo + close.", ""]
        out.append("| server | connections/s | p50 us | p99 us | **server CPU us/conn** "
                   "| vs uvloop | vs C | server CPU % | client CPU % | other CPU % | errors |")
        out.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        u, lim = find(churn, UV), find(churn, LIMIT)
        for r in churn:
            if "error" in r:
                out.append(f"| {r['label']} | {r['error']} | | | | | | | | | |")
                notes.append(f"{r['label']} @ churn: {r['error']}")
                continue
            out.append(f"| {r['label']} " + load_cells(r, u, lim, ".1f"))
            notes += row_notes(r, "churn")
        out.append("")

    idle = res.get("idle", [])
    if idle:
        n = idle[0]["connections"]
        out += ["## Idle connections", "",
                f"{n:,} connections held by bench/idle_client.py in another process, each after "
                "one verified 16 B echo. RSS per connection = (RSS at N - RSS at N/2) / (N/2).",
                ""]
        out.append("| server | **RSS per idle conn KiB** | vs uvloop | RSS at 0 MiB "
                   f"| RSS at {n // 2:,} MiB | RSS at {n:,} MiB | setup CPU us/conn |")
        out.append("|---|---:|---:|---:|---:|---:|---:|")
        u = find(idle, UV)
        for r in idle:
            if "error" in r:
                out.append(f"| {r['label']} | {r['error']} | | | | | |")
                notes.append(f"{r['label']} @ idle: {r['error']}")
                continue
            out.append(
                f"| {r['label']} | **{r['kib_per_conn']:.2f}** "
                f"| {H.fmt(_ratio(r['kib_per_conn'], u and u['kib_per_conn']), '.2f')} "
                f"| {r['rss0_kib'] / 1024:.1f} | {r['rss_half_kib'] / 1024:.1f} "
                f"| {r['rss_full_kib'] / 1024:.1f} | {r['setup_cpu_us_per_conn']:.0f} |")
            if r.get("note"):
                notes.append(f"{r['label']} @ idle: {r['note']}")
        out.append("")

    stress = res.get("stress", [])
    if stress:
        r0 = stress[0]
        out += ["## Stress run", "",
                f"`python -m iocpx stress --connections {r0['connections']} --messages "
                f"{r0['messages']} --interval {meta['stress_interval']:g} --size 64 --server-pid "
                "PID` (one client process, pinned to CPU 1) against each server (CPU 0); "
                "each run with its own `--source-ip 127.0.0.N`, so the previous run's TIME_WAIT "
                "sockets leave it ports to bind.", ""]
        out.append("| server | connections made | messages verified | errors | p50 ms | p99 ms "
                   "| **server CPU s** | vs uvloop | peak RSS MiB | wall s | result |")
        out.append("|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---|")
        u = next((r for r in stress if r["kind"] == "uvloop" and "error" not in r), None)
        for r in stress:
            if "error" in r and "verified" not in r:
                out.append(f"| {r['label']} | {r['error']} | | | | | | | | | FAILED |")
                notes.append(f"{r['label']} @ stress: {r['error']}")
                continue
            cpu = r.get("cpu_s", r.get("cpu_s_own"))
            out.append(
                f"| {r['label']} | {r.get('made', 0):,} / {r['connections']:,} "
                f"| {r.get('verified', 0):,} / {r.get('want', 0):,} | {r.get('errors', '?')} "
                f"| {H.fmt(r.get('p50_ms'), '.2f')} | {H.fmt(r.get('p99_ms'), '.2f')} "
                f"| **{H.fmt(cpu, '.2f')}** "
                f"| {H.fmt(_ratio(cpu, u and u.get('cpu_s', u.get('cpu_s_own'))), '.2f')} "
                f"| {H.fmt(r.get('peak_rss_mib'), '.1f')} | {r['wall_s']:.1f} "
                f"| {'OK' if r.get('ok') else 'FAILED'} |")
            for k in ("error", "note"):
                if r.get(k):
                    notes.append(f"{r['label']} @ stress: {r[k]}")
            if r.get("output_tail") and not r.get("ok"):
                notes.append(f"{r['label']} @ stress: the client's last lines: "
                             f"{r['output_tail']}")
            if "EADDRINUSE" in str(r.get("errors")):
                notes.append(f"{r['label']} @ stress: EADDRINUSE is the client running out of "
                             f"local ports ({r.get('tcp_sockets_before', 0):,} loopback ports "
                             "were in use, mostly TIME_WAIT, when it started), not a server "
                             "fault")
            if "KeyError" in str(r.get("errors")):
                notes.append(f"{r['label']} @ stress: the KeyError is the stress client's own "
                             "(src/iocpx/_stress.py: on_connect can run on a worker thread "
                             "before open_one has registered the connection in `states`), "
                             "not a server fault; that connection's messages are never sent")
        out.append("")

    out += H.notes_section(meta, notes)
    out.append("Server CPU = utime+stime of the server process (all threads) over the measured "
               "window, which includes the network stack work the kernel ran on its time; "
               "vs uvloop / vs C = that figure divided by uvloop's / the C io_uring server's in "
               "the same run; (c) marks a rate the client bounded (loadgen/client CPU >= 90%: "
               "the server had time to spare); other CPU % = everything else on the machine in "
               "the window (another user, ksoftirqd), tick-sampled.")
    if charts:
        out += ["", "Charts of these figures were written beside this report when it ran ("
                + ", ".join(f"`{name}`" for name in charts.values())
                + "); they are not committed (bench/results/*.png is git-ignored)."]
    return "\n".join(out) + "\n"


def load_cells(r, u, lim, cpu_spec):
    """The cells of a loadgen/churn row from the rate on: rate/s | p50 | p99 | **server CPU us**
    per round trip (churn: per connection) | vs uvloop | vs C | server, client, other CPU % |
    errors. u, lim: uvloop's and the C server's row of the same scenario (or None)."""
    cpu = r.get("cpu_us_per_rt")
    return (f"| {r['rt_per_s']:,.0f}{_cb(r)} | {H.fmt(r['p50_us'], '.0f')} "
            f"| {H.fmt(r['p99_us'], '.0f')} | **{H.fmt(cpu, cpu_spec)}** "
            f"| {H.fmt(_ratio(cpu, u and u.get('cpu_us_per_rt')), '.2f')} "
            f"| {H.fmt(_ratio(cpu, lim and lim.get('cpu_us_per_rt')), '.2f')} "
            f"| {r['server_cpu_pct']:.0f} | {r['loadgen_cpu_pct']:.0f} "
            f"| {max(0.0, r['other_cpu_pct']):.0f} | {r['errors'] + r['verify_failures']} |")


def _cb(r):
    """A mark on a rate the client bounded (its CPU >= 90%)."""
    return " (c)" if r.get("loadgen_cpu_pct", 0) >= 90 else ""


def row_notes(r, name):
    notes = []
    if r.get("other_cpu_pct", 0) >= 15:
        notes.append(f"{r['label']} @ {name}: other work used {r['other_cpu_pct']:.0f}% of a "
                     "core during the window: compare with care")
    if r.get("errors") or r.get("verify_failures"):
        notes.append(f"{r['label']} @ {name}: {r['errors']} errors, {r['verify_failures']} "
                     f"verify failures: {r.get('first_error')}"
                     + (" (connections starved: the GIL hands the threads turns unevenly)"
                        if r["kind"] == "threads" and "no echo" in str(r.get("first_error"))
                        else ""))
    if r.get("ready", r["connections"]) != r["connections"]:
        notes.append(f"{r['label']} @ {name}: only {r['ready']} connections got through")
    if r.get("runs_cpu_us_per_rt"):
        notes.append(f"{r['label']} @ {name}: CPU us of the {len(r['runs_cpu_us_per_rt'])} "
                     "runs: " + ", ".join(f"{x:.2f}" for x in r["runs_cpu_us_per_rt"]))
    if r.get("note"):
        notes.append(f"{r['label']} @ {name}: {r['note']}")
    return notes


# ---- charts ----

def make_charts(res, peers, stamp):
    """PNG charts in RESULTS_DIR; {key: file name}. Empty if matplotlib is missing."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        return {}
    charts = {}
    colors = {}
    palette = plt.get_cmap("tab10")
    for i, p in enumerate(peers):
        colors[p["id"]] = palette(i % 10)

    def grouped(ax, groups, series, ylabel, log=False):
        """groups: x labels; series: [(peer, [value or None per group])]."""
        n = max(1, len(series))
        width = 0.8 / n
        for i, (p, vals) in enumerate(series):
            xs = [g + (i - (n - 1) / 2) * width for g in range(len(groups))]
            ax.bar(xs, [v if v is not None else 0 for v in vals], width, label=p["label"],
                   color=colors[p["id"]])
        ax.set_xticks(range(len(groups)))
        ax.set_xticklabels(groups, fontsize=8)
        ax.set_ylabel(ylabel)
        if log:
            ax.set_yscale("log")
            ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
            ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.grid(axis="y", alpha=0.3, which="both" if log else "major")

    def legend_below(ax):
        ax.legend(fontsize=8, ncol=4, loc="upper center", bbox_to_anchor=(0.5, -0.18))

    def save(fig, key):
        name = f"{stamp}-{key}.png"
        fig.tight_layout()
        fig.savefig(os.path.join(RESULTS_DIR, name), dpi=110)
        plt.close(fig)
        charts[key] = name

    echo = res.get("echo", [])
    if echo:
        scen = list(dict.fromkeys((r["connections"], r["size"]) for r in echo))
        groups = [scen_name(c, s).replace(" x ", "\n") for c, s in scen]
        present = [p for p in peers if any(find(echo, p["id"], connections=c, size=s)
                                           for c, s in scen)]

        def series(field):
            return [(p, [(find(echo, p["id"], connections=c, size=s) or {}).get(field)
                         for c, s in scen]) for p in present]
        fig, ax = plt.subplots(figsize=(13, 5.5))
        grouped(ax, groups, series("cpu_us_per_rt"), "server CPU us per round trip")
        ax.set_title("Echo: server CPU per round trip (lower is better)")
        legend_below(ax)
        save(fig, "echo-cpu")
        fig, ax = plt.subplots(figsize=(13, 5.5))
        grouped(ax, groups, series("rt_per_s"), "round trips / s", log=True)
        ax.set_title("Echo: round trips per second (higher is better; client-bound on 2 cores)")
        legend_below(ax)
        save(fig, "echo-rps")
        fig, axes = plt.subplots(2, 1, figsize=(13, 8.5), sharex=True)
        grouped(axes[0], groups, series("p50_us"), "p50 latency us", log=True)
        axes[0].set_title("Echo: latency (lower is better)")
        grouped(axes[1], groups, series("p99_us"), "p99 latency us", log=True)
        legend_below(axes[1])
        save(fig, "echo-latency")

    churn = [r for r in res.get("churn", []) if "error" not in r]
    if churn:
        fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
        for ax, field, title in ((axes[0], "conns_per_s", "connections / s"),
                                 (axes[1], "cpu_us_per_conn", "server CPU us per connection")):
            ps = [p for p in peers if find(churn, p["id"])]
            ax.bar(range(len(ps)), [find(churn, p["id"])[field] for p in ps],
                   color=[colors[p["id"]] for p in ps])
            ax.set_xticks(range(len(ps)))
            ax.set_xticklabels([p["label"] for p in ps], rotation=30, ha="right", fontsize=8)
            ax.set_title(title)
            ax.grid(axis="y", alpha=0.3)
        fig.suptitle("Connection churn: connect, 64 B echo, close")
        save(fig, "churn")

    idle = [r for r in res.get("idle", []) if "error" not in r]
    if idle:
        fig, ax = plt.subplots(figsize=(8, 4.5))
        ps = [p for p in peers if find(idle, p["id"])]
        ax.bar(range(len(ps)), [max(0.0, find(idle, p["id"])["kib_per_conn"]) for p in ps],
               color=[colors[p["id"]] for p in ps])
        ax.axhline(1.0, color="k", ls="--", lw=1, label="target 1 KiB")
        ax.set_xticks(range(len(ps)))
        ax.set_xticklabels([p["label"] for p in ps], rotation=30, ha="right", fontsize=8)
        ax.set_ylabel("KiB RSS per idle connection")
        ax.set_title(f"Idle connections: marginal server RSS ({idle[0]['connections']:,} conns)")
        ax.legend()
        ax.grid(axis="y", alpha=0.3)
        save(fig, "idle")

    stress = [r for r in res.get("stress", []) if "verified" in r]
    if stress:
        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        names = [r["label"] for r in stress]
        axes[0].bar(names, [r.get("cpu_s", r.get("cpu_s_own")) or 0 for r in stress])
        axes[0].set_title("server CPU seconds (lower is better)")
        axes[1].bar(names, [r.get("peak_rss_mib") or 0 for r in stress])
        axes[1].set_title("server peak RSS MiB")
        for ax in axes:
            ax.grid(axis="y", alpha=0.3)
            ax.tick_params(axis="x", labelsize=8)
        fig.suptitle(f"Stress: {stress[0]['connections']:,} connections x "
                     f"{stress[0]['messages']} messages")
        save(fig, "stress")
    return charts


# ---- main ----

def stale_build():
    """The .pyx files in src/iocpx newer than their built module (the in-place build is stale)."""
    stale = []
    if not os.path.isdir(SRC_PKG):
        return stale
    for name in os.listdir(SRC_PKG):
        if not name.endswith(".pyx"):
            continue
        base = name[:-4]
        sos = [f for f in os.listdir(SRC_PKG) if f.startswith(base + ".") and f.endswith(".so")]
        if not sos:
            continue            # not built on this platform (e.g. _iocp)
        newest_dep = max(os.path.getmtime(os.path.join(SRC_PKG, f)) for f in os.listdir(SRC_PKG)
                         if f.endswith((".pxd", ".h")) or f == name)
        if os.path.getmtime(os.path.join(SRC_PKG, sos[0])) < newest_dep:
            stale.append(name)
    return stale


def build_iocpx():
    """The in-place build, made safe for a shared tree: compile into a scratch directory, then
    rename each module over the old one (a running test keeps its mapped copy; copying over the
    file in place, as build_ext --inplace does, could crash it)."""
    import tempfile
    log("building iocpx (setup.py build_ext into a scratch dir, then renamed into src/iocpx) ...")
    with tempfile.TemporaryDirectory(prefix="iocpx-bench-build-") as tmp:
        lib, scratch = os.path.join(tmp, "lib"), os.path.join(tmp, "tmp")
        subprocess.run([sys.executable, "setup.py", "build_ext", "--build-lib", lib,
                        "--build-temp", scratch], cwd=H.REPO_ROOT, check=True,
                       stdout=subprocess.DEVNULL)
        for name in os.listdir(os.path.join(lib, "iocpx")):
            if name.endswith(".so"):
                dst = os.path.join(SRC_PKG, name)
                shutil.copy2(os.path.join(lib, "iocpx", name), dst + ".bench-tmp")
                os.replace(dst + ".bench-tmp", dst)


def main(argv=None):
    global RESULTS_DIR
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke check: fewer rows, 2 s each")
    ap.add_argument("--only", default="echo,churn,idle,stress",
                    help="comma-separated parts to run: echo, churn, idle, stress")
    ap.add_argument("--servers", default="iocpx,uvloop,asyncio,threads,uring-c",
                    help="server kinds for echo/churn/idle (default all)")
    ap.add_argument("--stress-servers", default="iocpx,uvloop,asyncio",
                    help="servers for the stress run: iocpx (python -m iocpx serve), uvloop, "
                         "asyncio, uring-c (default the first three)")
    ap.add_argument("--connections", type=H.int_list, help="echo connections (default 1,100,1000)")
    ap.add_argument("--sizes", type=H.int_list, help="echo sizes (default 64,4096,65536)")
    ap.add_argument("--large-connections", type=H.int_list,
                    help="connections for the large-message echo rows (default 1,100; quick 100;"
                         " 0 for none)")
    ap.add_argument("--large-size", type=int, default=1 << 20,
                    help="message bytes of the large-message echo rows (default 1 MiB)")
    ap.add_argument("--duration", type=float, help="measured seconds per row (default 5; quick 2)")
    ap.add_argument("--warmup", type=float,
                    help="unmeasured seconds per row (default 1; quick 0.5)")
    ap.add_argument("--repeat", type=int,
                    help="interleaved runs of each 64 B echo row, median reported (default 3; "
                         "quick 1)")
    ap.add_argument("--quiet-wait", type=float, default=10.0,
                    help="wait up to this many s before each row for the cores to be idle")
    ap.add_argument("--churn-concurrency", type=int, default=50)
    ap.add_argument("--idle-connections", type=int, help="default 10000 (quick 2000)")
    ap.add_argument("--stress-connections", type=int,
                    help="default 19000 (quick 2000), at most the open-files limit - 800")
    ap.add_argument("--stress-interval", type=float, help="default 3 (quick 1)")
    ap.add_argument("--build", action="store_true",
                    help="first run `python setup.py build_ext --inplace` in the repo")
    ap.add_argument("--out-dir", default=RESULTS_DIR)
    a = ap.parse_args(argv)
    q = a.quick
    a.connections = a.connections or ([100, 1000] if q else [1, 100, 1000])
    a.sizes = a.sizes or ([64, 4096] if q else [64, 4096, 65536])
    a.large_connections = [c for c in (a.large_connections or ([100] if q else [1, 100])) if c > 0]
    a.duration = a.duration or (2.0 if q else 5.0)
    a.warmup = a.warmup if a.warmup is not None else (0.5 if q else 1.0)
    a.repeat = a.repeat or (1 if q else 3)
    a.idle_connections = a.idle_connections or (2000 if q else 10000)
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    a.stress_connections = min(a.stress_connections or (2000 if q else 19000), nofile - 800)
    a.stress_interval = a.stress_interval or (1.0 if q else 3.0)
    parts = [x.strip() for x in a.only.split(",") if x.strip()]
    want = {k.strip() for k in a.servers.split(",") if k.strip()}
    stress_keys = [k.strip() for k in a.stress_servers.split(",") if k.strip()]
    for k in want | set(stress_keys):
        if k not in H.KINDS:
            ap.error(f"unknown server {k!r}")
    RESULTS_DIR = os.path.abspath(a.out_dir)

    if (os.cpu_count() or 1) < 2 or not shutil.which("taskset"):
        ap.error("need 2 CPUs and taskset (util-linux)")
    H.driver_setup()

    warnings = []
    if a.build:
        build_iocpx()
    stale = stale_build()
    if stale:
        w = (f"the in-place build is older than {', '.join(stale)}: these rows measure the "
             "older build (run `python setup.py build_ext --inplace`, or pass --build)")
        log("WARNING: " + w)
        warnings.append(w)
    os.makedirs(H.BUILD_DIR, exist_ok=True)
    os.makedirs(RESULTS_DIR, exist_ok=True)
    H.build_loadgen()
    H.build_c(H.URING_SRC, H.URING_BIN)
    H.build_c(CHURN_SRC, CHURN_BIN)

    iocpx_info, iocpx_err = probe_iocpx()
    peers = make_peers(iocpx_info, iocpx_err, want)
    meta = H.machine_meta()
    meta.update({
        "iocpx": (f"{iocpx_info['version']} ({iocpx_info['file']}; backends "
                  f"{', '.join(iocpx_info['backends'])}; default {iocpx_info['default_backend']}"
                  f", {iocpx_info['default_workers']} workers)") if iocpx_info else iocpx_err,
        "command": " ".join(["python", "bench/run_all.py"] + (argv if argv is not None
                                                             else sys.argv[1:])),
        "duration": a.duration, "warmup": a.warmup, "repeat": a.repeat,
        "churn_concurrency": a.churn_concurrency, "stress_interval": a.stress_interval,
        "warnings": warnings,
    })
    if nofile < a.stress_connections + 500 and "stress" in parts:
        warnings.append(f"open-files limit {nofile}: stress run reduced to "
                        f"{a.stress_connections} connections")
    row_args = argparse.Namespace(pin=True, warmup=a.warmup, duration=a.duration)
    res = {"echo": [], "churn": [], "idle": [], "stress": []}
    t_begin = time.monotonic()

    def unavailable(p, extra):
        return dict({"label": p["label"], "kind": p["kind"], "peer": p["id"],
                     "error": p["error"]}, **extra)

    def progress(r, what):
        if "error" in r:
            log(f"  {r['label']}: {r['error']}")
        else:
            log(f"  {r['label']}: {what(r)}")

    def per_peer(part, extra, title, run, what):
        """One row of `part` per peer: run(peer) -> result, progress shown by what(result)."""
        for p in peers:
            if "error" in p:
                res[part].append(unavailable(p, extra))
                continue
            log(f"{title} {p['label']} ...")
            r = run(p)
            r["peer"] = p["id"]
            progress(r, what)
            res[part].append(r)

    try:
        if "echo" in parts:
            scenarios = [(c, s) for c in a.connections for s in a.sizes]
            scenarios += [(c, a.large_size) for c in a.large_connections
                          if (c, a.large_size) not in scenarios]
            for c, s in scenarios:
                reps = a.repeat if s == 64 else 1
                runs = {p["id"]: [] for p in peers}
                for i in range(reps):
                    for p in peers:
                        if "error" in p or (runs[p["id"]] and "error" in runs[p["id"]][-1]):
                            continue
                        log(f"echo {scen_name(c, s)} {p['label']}"
                            + (f" (run {i + 1}/{reps})" if reps > 1 else "") + " ...")
                        busy = H.wait_for_quiet(a.quiet_wait) if a.quiet_wait > 0 else 0.0
                        r = run_echo_row(p, c, s, row_args)
                        if busy >= 15.0:
                            r.setdefault("note", f"machine was {busy:.0f}% busy before "
                                                 "the run")
                        progress(r, lambda r: f"{r['rt_per_s']:,.0f} rt/s, "
                                 f"{H.fmt(r['cpu_us_per_rt'], '.2f')} CPU us/rt, "
                                 f"loadgen {r['loadgen_cpu_pct']:.0f}%, "
                                 f"other {r['other_cpu_pct']:.0f}%")
                        runs[p["id"]].append(r)
                for p in peers:
                    if "error" in p:
                        r = unavailable(p, {"connections": c, "size": s})
                    else:
                        r = H.pick_median(runs[p["id"]])
                    r["peer"] = p["id"]
                    res["echo"].append(r)
        if "churn" in parts:
            def churn(p):
                if a.quiet_wait > 0:
                    H.wait_for_quiet(a.quiet_wait)
                return run_churn_row(p, a.churn_concurrency, 64, row_args)
            per_peer("churn", {"connections": a.churn_concurrency}, "churn", churn,
                     lambda r: f"{r['conns_per_s']:,.0f} conn/s, "
                     f"{H.fmt(r['cpu_us_per_conn'], '.1f')} CPU us/conn, "
                     f"client {r['loadgen_cpu_pct']:.0f}%")
        if "idle" in parts:
            per_peer("idle", {"connections": a.idle_connections},
                     f"idle {a.idle_connections:,}",
                     lambda p: run_idle_row(p, a.idle_connections, a.quiet_wait),
                     lambda r: f"{r['kib_per_conn']:.2f} KiB/conn")
        if "stress" in parts:
            for k in stress_keys:
                if k == "uvloop" and any(p["id"] == UV and "error" in p for p in peers):
                    continue
                log(f"stress {a.stress_connections:,} x 3 {STRESS_PEERS[k][0]} ...")
                r = run_stress_row(k, a.stress_connections, 3, a.stress_interval, a.quiet_wait)
                if re.search(r"EADDRINUSE|EADDRNOTAVAIL", str(r.get("errors"))):
                    # The client ran out of local ports (TIME_WAIT): once more, after they expire.
                    log(f"  {r.get('errors')}: the client ran out of local ports; again in 65 s")
                    time.sleep(65)
                    first = r
                    r = run_stress_row(k, a.stress_connections, 3, a.stress_interval,
                                       a.quiet_wait)
                    r["note"] = (f"second attempt: the first one's client ran out of local ports "
                                 f"(errors {first.get('errors')}, "
                                 f"{first.get('tcp_sockets_before', 0):,} loopback ports in "
                                 "use before it, mostly TIME_WAIT)")
                progress(r, lambda r: f"verified {r.get('verified')}/{r.get('want')}, errors "
                         f"{r.get('errors')}, server CPU {r.get('cpu_s')} s")
                res["stress"].append(r)
    except KeyboardInterrupt:
        log("interrupted: reporting what was measured")
        warnings.append("the run was interrupted: some rows are missing")
    finally:
        H.kill_children()

    meta["elapsed_min"] = (time.monotonic() - t_begin) / 60
    stamp = datetime.date.today().isoformat() + ("-quick" if q else "")
    charts = make_charts(res, peers, stamp)
    if not charts and any(res.values()):
        warnings.append("charts skipped: matplotlib is not installed (pip install matplotlib)")
    report = render(res, meta, peers, charts)
    md = os.path.join(RESULTS_DIR, stamp + ".md")
    with open(md, "w") as f:
        f.write(report)
    with open(os.path.join(RESULTS_DIR, stamp + ".json"), "w") as f:
        json.dump({"meta": meta, "peers": peers, "results": res}, f, indent=1, default=repr)
    if not q:
        H.write_latest(RESULTS_DIR)
    sys.stdout.write(report)
    log(f"wrote {md}" + ("" if q else " and LATEST.md")
        + (f" and {len(charts)} charts" if charts else ""))
    # Exit status 1 if an iocpx row failed (the peers' failures are reported, not fatal).
    bad = [r for part in res.values() for r in part
           if r.get("kind") == "iocpx" and ("error" in r and "verified" not in r
                                            or r.get("errors") not in (None, 0, "none")
                                            or r.get("verify_failures"))]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
