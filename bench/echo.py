"""Echo benchmark: server CPU per round trip of iocpx against asyncio and uvloop, side by side.

What it shows: for each server (asyncio, uvloop, iocpx with 1 or more workers; also, on request,
a thread per client ("threads") and the minimal C io_uring server uring_echo.c ("uring-c"),
the practical limit) and each
(connections, message size), the round trips per second, the p50/p99/max latency, and the figure
that matters, **server CPU microseconds per round trip** (utime+stime from /proc/PID/stat over the
measured window, divided by the round trips in it), with its ratio to uvloop from the same run.
Method (design.md section 6): the server is pinned to CPU 0, the C load generator (loadgen.c,
closed loop, one message in flight per connection, every echo verified byte for byte) to CPU 1.
On two cores the throughput is bound by the load generator (see the "loadgen CPU" column: near
100% means client-bound), which is why CPU per round trip is the figure to compare.

What it needs: Linux, 2+ CPUs, `cc` (gcc or clang), `taskset` (util-linux), Python 3.11+;
`pip install uvloop` for the uvloop rows; for the uring-c rows Linux 6.1+ and the kernel
header <linux/io_uring.h> (Debian: linux-libc-dev); for the iocpx rows an iocpx that imports,
normally the in-place build in src/iocpx (put first on the servers' PYTHONPATH; this script
never builds it). A server that is missing gets a row saying why, and the others still run.

How to run it, from the repo root:

    python bench/echo.py                                   # 100 connections, 64 B, 5 s each
    python bench/echo.py --connections 1,100,1000 --size 64,4096 --iocpx-workers 1,4 \
        --out /tmp/echo.md
    python bench/echo.py --servers asyncio,uvloop --duration 3 --repeat 3 --json /tmp/raw.json
    python bench/echo.py --servers uvloop,threads,uring-c --connections 100,1000

The whole suite (every peer and scenario, a dated table and charts) is bench/run_all.py.

Other processes running on the two cores spoil a run: each row first waits (up to
--quiet-wait s) for the machine to be idle, the "other CPU %" column says what else ran during
the window, and --repeat N reports the run with the median CPU us/rt. Server stderr (a
traceback, iocpx's stats() at shutdown) is kept in bench/.build/server-KIND.log.

Every run is bounded (quiet wait + connect timeout + warmup + duration + a margin per row)
and every child process is killed on exit, error or Ctrl-C.
"""

import argparse
import datetime
import json
import os
import platform
import select
import shutil
import signal
import subprocess
import sys
import time

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(BENCH_DIR)
BUILD_DIR = os.path.join(BENCH_DIR, ".build")
LOADGEN_SRC = os.path.join(BENCH_DIR, "loadgen.c")
LOADGEN_BIN = os.path.join(BUILD_DIR, "loadgen")
SERVERS_PY = os.path.join(BENCH_DIR, "servers.py")
URING_SRC = os.path.join(BENCH_DIR, "uring_echo.c")
URING_BIN = os.path.join(BUILD_DIR, "uring_echo")
KINDS = ("asyncio", "uvloop", "iocpx", "threads", "uring-c")

SERVER_CPU = "0"
CLIENT_CPU = "1"
READY_TIMEOUT = 20.0        # seconds for a server to print READY (imports, listen)
STOP_TIMEOUT = 10.0         # seconds for a server to exit after SIGTERM before SIGKILL
MARGIN = 15.0               # seconds beyond connect+warmup+duration before the loadgen is killed
CLK_TCK = os.sysconf("SC_CLK_TCK")

_children = []              # every Popen started here; _kill_children() reaps them all


def _kill_children():
    for p in _children:
        if p.poll() is None:
            try:
                p.kill()
            except OSError:
                pass
    for p in _children:
        try:
            p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
    _children.clear()


def _on_signal(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def _die_with_parent():
    """Child side, before exec: get SIGTERM if this driver dies, even by SIGKILL (Linux prctl)."""
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)    # 1 == PR_SET_PDEATHSIG
    except Exception:
        pass


def _spawn(cmd, **kw):
    p = subprocess.Popen(cmd, preexec_fn=_die_with_parent, **kw)
    _children.append(p)
    return p


# ---- measurements ----

def cpu_seconds(pid):
    """utime + stime of the whole process (all threads), in seconds."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        data = f.read()
    # comm (field 2) may hold spaces: split after its closing parenthesis.
    fields = data[data.rindex(b")") + 2:].split()
    utime, stime = int(fields[11]), int(fields[12])     # fields 14 and 15 of proc(5)
    return (utime + stime) / CLK_TCK


def machine_cpu():
    """{'busy': s, 'softirq': s}: all CPUs' busy seconds (user+nice+system+irq+softirq) and the
    softirq part alone, from /proc/stat. A process's utime+stime includes the softirq work (the
    loopback network stack) that ran on its time, which /proc/stat files under softirq."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return {"busy": (v[0] + v[1] + v[2] + v[5] + v[6]) / CLK_TCK, "softirq": v[6] / CLK_TCK}


def wait_for_quiet(max_wait, threshold=15.0):
    """Wait (up to max_wait s) until the machine's busy CPU stays below `threshold` % of one core
    over half a second, so a row does not share the cores with someone's build. Returns the
    last busy % seen."""
    deadline = time.monotonic() + max_wait
    while True:
        m0, t0 = machine_cpu(), time.monotonic()
        time.sleep(0.5)
        busy = 100.0 * (machine_cpu()["busy"] - m0["busy"]) / (time.monotonic() - t0)
        if busy < threshold or time.monotonic() >= deadline:
            return busy
        time.sleep(0.5)


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def build_c(src, binary):
    """Compile one bench C file into bench/.build/ unless the binary is newer than the source."""
    if os.path.exists(binary) and os.path.getmtime(binary) >= os.path.getmtime(src):
        return
    os.makedirs(BUILD_DIR, exist_ok=True)
    cc = os.environ.get("CC", "cc")
    cmd = [cc, "-O2", "-Wall", "-o", binary + ".tmp", src]
    print("building:", " ".join(cmd), file=sys.stderr)
    subprocess.run(cmd, check=True)
    os.replace(binary + ".tmp", binary)


def build_loadgen():
    build_c(LOADGEN_SRC, LOADGEN_BIN)


def free_port():
    """A TCP port on 127.0.0.1 below the ephemeral range, free right now. Why not port 0: on a
    shared machine the ephemeral range can be full of TIME_WAIT sockets (every loopback client
    leaves some), and then bind(port 0) fails with EADDRINUSE."""
    import random
    import socket
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            lo = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        lo = 32768
    lo = max(lo, 2048)
    for _ in range(200):
        port = random.randrange(1024 + (lo - 1024) // 4, lo)
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("127.0.0.1", port))
                return port
            except OSError:
                continue
    return 0


def server_command(kind, server_args, port=None):
    """The command line that serves `kind` on `port` (default: free_port()) and prints
    READY <port>."""
    port = str(free_port() if port is None else port)
    if kind == "uring-c":
        return [URING_BIN, port] + server_args
    return [sys.executable, SERVERS_PY, kind, port] + server_args


def child_env():
    """The servers' environment: an in-place build of iocpx in the repo (src/ layout or root)
    comes before anything installed."""
    env = dict(os.environ)
    paths = [p for p in (os.path.join(REPO_ROOT, "src"), REPO_ROOT)
             if os.path.isdir(os.path.join(p, "iocpx"))] or [REPO_ROOT]
    env["PYTHONPATH"] = os.pathsep.join(
        paths + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    return env


def probe_import(statement):
    """(True, its stdout) if `statement` runs in a server's environment, else (False, reason)."""
    r = subprocess.run([sys.executable, "-c", statement], env=child_env(),
                       cwd=BENCH_DIR, capture_output=True, text=True, timeout=60)
    if r.returncode == 0:
        return True, r.stdout.strip()
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    return False, lines[-1] if lines else f"exit status {r.returncode}"


def read_line(proc, deadline):
    """One line from proc.stdout before `deadline` (time.monotonic), or None on EOF/timeout."""
    fd = proc.stdout.fileno()
    buf = getattr(proc, "_linebuf", b"")
    while b"\n" not in buf:
        left = deadline - time.monotonic()
        if left <= 0:
            proc._linebuf = buf
            return None
        r, _, _ = select.select([fd], [], [], left)
        if not r:
            continue
        chunk = os.read(fd, 65536)
        if not chunk:
            proc._linebuf = b""
            return buf.decode(errors="replace") if buf else None
        buf += chunk
    line, _, rest = buf.partition(b"\n")
    proc._linebuf = rest
    return line.decode(errors="replace")


def _tail(path, n=1):
    """The last n non-blank lines of a log, on one line (the exception, for a traceback)."""
    try:
        with open(path, errors="replace") as f:
            lines = [ln.strip() for ln in f if ln.strip()]
        return " / ".join(lines[-n:])
    except OSError:
        return ""


def run_one(kind, label, server_args, connections, size, args, log_path, client=None):
    """Start a server, drive it with the loadgen, return a result dict (with 'error' on failure).
    `client(port)`, if given, returns (command, connect timeout s) of another load generator that
    speaks loadgen.c's START/END/JSON protocol (bench/churn.c)."""
    res = {"label": label, "kind": kind, "connections": connections, "size": size}
    cmd = (["taskset", "-c", SERVER_CPU] if args.pin else []) + server_command(kind, server_args)
    with open(log_path, "w") as log:
        server = _spawn(cmd, stdout=subprocess.PIPE, stderr=log, env=child_env(),
                        cwd=BENCH_DIR, start_new_session=True)
    loadgen = None
    try:
        line = read_line(server, time.monotonic() + READY_TIMEOUT)
        if line is None or not line.startswith("READY "):
            server.kill()
            server.wait()
            if line and line.startswith("UNAVAILABLE "):
                res["error"] = "not available: " + line[len("UNAVAILABLE "):]
            else:
                res["error"] = f"server did not start ({line or 'no output'}): {_tail(log_path)}"
            return res
        port = int(line.split()[1])
        spid = server.pid   # taskset execs the server, so the pid is the server's own

        if client is None:
            connect_timeout = 10.0 + connections / 1000.0
            client_cmd = [LOADGEN_BIN, "127.0.0.1", str(port), str(connections), str(size),
                          str(args.warmup), str(args.duration), str(connect_timeout)]
        else:
            client_cmd, connect_timeout = client(port)
        lg_cmd = (["taskset", "-c", CLIENT_CPU] if args.pin else []) + client_cmd
        loadgen = _spawn(lg_cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         start_new_session=True)
        deadline = time.monotonic() + connect_timeout + args.warmup + args.duration + MARGIN
        marks = {}
        result = None
        while True:
            line = read_line(loadgen, deadline)
            if line is None:
                break
            line = line.strip()
            if line in ("START", "END"):
                # Sample at once: the loadgen flushed this line at the window's edge. Both are
                # our unreaped children, so their /proc entries exist even if they have died.
                marks[line] = (time.monotonic(), cpu_seconds(spid), cpu_seconds(loadgen.pid),
                               machine_cpu())
                if line == "END":
                    res["server_rss_kib"] = rss_kib(spid)
            elif line.startswith("{"):
                result = json.loads(line)
                break
        if result is None or "START" not in marks or "END" not in marks:
            loadgen.kill()
            loadgen.wait()
            err = loadgen.stderr.read().decode(errors="replace").strip()
            res["error"] = (f"load generator failed or timed out (exit {loadgen.returncode}): "
                            f"{err[-300:]} / server: {_tail(log_path)}")
            return res
        try:
            loadgen.wait(timeout=10)
        except subprocess.TimeoutExpired:
            loadgen.kill()
            loadgen.wait()
        if server.poll() is not None:
            res["note"] = f"server exited (status {server.returncode}) during the run"

        (w0, s0, c0, m0), (w1, s1, c1, m1) = marks["START"], marks["END"]
        wall = w1 - w0
        rt = result["round_trips"]
        res.update(result)
        res["server_cpu_s"] = s1 - s0
        res["server_cpu_pct"] = 100.0 * (s1 - s0) / wall if wall > 0 else 0.0
        res["loadgen_cpu_pct"] = 100.0 * (c1 - c0) / wall if wall > 0 else 0.0
        # Anything else that ran meanwhile (a compiler, the driver) shares the two cores.
        other = (m1["busy"] - m0["busy"]) - (s1 - s0) - (c1 - c0)
        res["other_cpu_pct"] = 100.0 * other / wall if wall > 0 else 0.0
        res["softirq_cpu_pct"] = 100.0 * (m1["softirq"] - m0["softirq"]) / wall if wall > 0 else 0.0
        res["rt_per_s"] = rt / result["seconds"] if result["seconds"] > 0 else 0.0
        res["cpu_us_per_rt"] = (s1 - s0) * 1e6 / rt if rt else None
        return res
    finally:
        if loadgen is not None and loadgen.poll() is None:
            loadgen.kill()
            loadgen.wait()
        if server.poll() is None:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
                res.setdefault("note", "server ignored SIGTERM for 10 s: killed")
        if server.returncode not in (0, -signal.SIGKILL, None) and "error" not in res \
                and server.returncode != 3:
            res.setdefault("note", f"server exit status {server.returncode}: {_tail(log_path, 2)}")
        _children[:] = [p for p in _children if p.poll() is None]


# ---- report ----

def machine_info():
    model = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        import uvloop
        uv = uvloop.__version__
    except ImportError:
        uv = "not installed"
    return {
        "date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "kernel": platform.release(),
        "nproc": os.cpu_count(),
        "cpu": model,
        "python": platform.python_version(),
        "uvloop": uv,
    }


def _f(x, fmt):
    return "-" if x is None else format(x, fmt)


def render(results, info, args):
    out = []
    out.append(f"# iocpx echo benchmark — {info['date']}")
    out.append("")
    out.append(f"- machine: Linux {info['kernel']}, nproc {info['nproc']}, CPU {info['cpu']}")
    out.append(f"- Python {info['python']}, uvloop {info['uvloop']}"
               + (f", iocpx {info['iocpx']} (version, file, default backend)"
                  if info.get("iocpx") else ""))
    out.append(f"- method: server pinned to CPU {SERVER_CPU}, loadgen.c to CPU {CLIENT_CPU}"
               f"{'' if args.pin else ' (pinning OFF)'}; closed loop, one message in flight per "
               f"connection, every echo verified; warmup {args.warmup} s, measured "
               f"{args.duration} s per row"
               f"{f', median of {args.repeat} runs' if args.repeat > 1 else ''}")
    out.append(f"- command: `{' '.join(['python', 'bench/echo.py'] + sys.argv[1:])}`")
    out.append("")
    out.append("| server | conns | size B | round trips/s | p50 us | p99 us | max us "
               "| **server CPU us/rt** | vs uvloop | server CPU % | loadgen CPU % | other CPU % "
               "| errors | verify fail |")
    out.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    notes = []
    for r in results:
        if "error" in r:
            label = f"{r['label']}: {r['error']}".replace("|", "\\|")
            out.append(f"| {label} | {r['connections']} | {r['size']} "
                       "| - | - | - | - | - | - | - | - | - | - | - |")
            continue
        base = next((u for u in results if u["kind"] == "uvloop" and "error" not in u
                     and u["connections"] == r["connections"] and u["size"] == r["size"]), None)
        ratio = None
        if base and base.get("cpu_us_per_rt") and r.get("cpu_us_per_rt"):
            ratio = r["cpu_us_per_rt"] / base["cpu_us_per_rt"]
        errs = r["errors"]
        out.append(
            f"| {r['label']} | {r['connections']} | {r['size']} | {r['rt_per_s']:,.0f} "
            f"| {_f(r['p50_us'], '.1f')} | {_f(r['p99_us'], '.1f')} | {_f(r['max_us'], '.0f')} "
            f"| **{_f(r['cpu_us_per_rt'], '.2f')}** | {_f(ratio, '.2f')}"
            f"{'' if ratio is None else 'x'} "
            f"| {r['server_cpu_pct']:.0f} | {r['loadgen_cpu_pct']:.0f} "
            f"| {max(0.0, r['other_cpu_pct']):.0f} "
            f"| {errs} | {r['verify_failures']} |")
        if r.get("ready", r["connections"]) != r["connections"]:
            notes.append(f"{r['label']} @ {r['connections']}: only {r['ready']} connections "
                         f"got through connect + first echo")
        if errs or r["verify_failures"]:
            notes.append(f"{r['label']} @ {r['connections']}x{r['size']}B: {r.get('first_error')}")
        if r.get("runs_cpu_us_per_rt"):
            notes.append(f"{r['label']} @ {r['connections']}x{r['size']}B: CPU us/rt of the "
                         f"{len(r['runs_cpu_us_per_rt'])} runs: "
                         + ", ".join(f"{x:.2f}" for x in r["runs_cpu_us_per_rt"]))
        if r.get("note"):
            notes.append(f"{r['label']} @ {r['connections']}x{r['size']}B: {r['note']}")
        if r.get("other_cpu_pct", 0) >= 10:
            notes.append(f"{r['label']} @ {r['connections']}x{r['size']}B: other work used "
                         f"{r['other_cpu_pct']:.0f}% of a core during the window (other "
                         "processes, or network softirq deferred to ksoftirqd): compare with care")
        if r["loadgen_cpu_pct"] >= 90:
            notes.append(f"{r['label']} @ {r['connections']}x{r['size']}B: loadgen CPU "
                         f"{r['loadgen_cpu_pct']:.0f}%: round trips/s is client-bound")
    if notes:
        out.append("")
        out.append("Notes:")
        out.extend(f"- {n}" for n in dict.fromkeys(notes))
    out.append("")
    out.append("CPU us/rt = server utime+stime over the measured window / round trips "
               "(lower is better); vs uvloop = that ratio against uvloop in the same run; "
               "CPU % of one core over the window; other = everything else on the machine "
               "(ksoftirqd, other processes) in that window, from tick-sampled /proc/stat, so "
               "rough when the cores are partly idle.")
    return "\n".join(out) + "\n"


def pick_median(runs):
    """The run with the median server CPU per round trip; a failed or erroneous run wins, so
    no failure is hidden by repeating."""
    for r in runs:
        if ("error" in r or r.get("errors") or r.get("verify_failures")
                or not r.get("cpu_us_per_rt")):
            return r
    runs = sorted(runs, key=lambda r: r["cpu_us_per_rt"])
    best = dict(runs[(len(runs) - 1) // 2])
    if len(runs) > 1:
        best["runs_cpu_us_per_rt"] = [round(r["cpu_us_per_rt"], 3) for r in runs]
    return best


def _int_list(s):
    return [int(x) for x in s.split(",") if x.strip()]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--connections", type=_int_list, default=[100],
                    help="connections, comma-separated list allowed (default 100)")
    ap.add_argument("--size", type=_int_list, default=[64],
                    help="message bytes, comma-separated list allowed (default 64)")
    ap.add_argument("--duration", type=float, default=5.0, help="measured seconds per row")
    ap.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds per row")
    ap.add_argument("--servers", default="asyncio,uvloop,iocpx",
                    help="comma-separated: asyncio, uvloop, iocpx, threads, uring-c "
                         "(default asyncio,uvloop,iocpx)")
    ap.add_argument("--iocpx-workers", type=_int_list, default=[1],
                    help="iocpx worker counts, one row each (default 1)")
    ap.add_argument("--iocpx-backend", default=None,
                    help="iocpx backend (default: iocpx's own choice)")
    ap.add_argument("--no-pin", dest="pin", action="store_false",
                    help="do not pin server and loadgen to CPUs 0 and 1")
    ap.add_argument("--repeat", type=int, default=1,
                    help="runs per row; the report shows the run with the median CPU us/rt")
    ap.add_argument("--quiet-wait", type=float, default=30.0,
                    help="before each row, wait up to this many seconds for the machine to be "
                         "idle (other work on the cores spoils the figures); 0 disables")
    ap.add_argument("--out", help="also write the Markdown report to this file")
    ap.add_argument("--json", help="also write every row's raw figures to this file (JSON)")
    args = ap.parse_args(argv)

    kinds = [k.strip() for k in args.servers.split(",") if k.strip()]
    for k in kinds:
        if k not in KINDS:
            ap.error(f"unknown server {k!r}")
    if args.duration <= 0 or args.warmup < 0 or args.repeat < 1:
        ap.error("--duration must be > 0, --warmup >= 0 and --repeat >= 1")
    if args.pin:
        if (os.cpu_count() or 1) < 2:
            ap.error("need 2 CPUs to pin server and loadgen apart (or use --no-pin)")
        if not shutil.which("taskset"):
            ap.error("taskset not found (apt-get install util-linux), or use --no-pin")
        try:    # keep this driver off the server's CPU; it sleeps between START and END anyway
            os.sched_setaffinity(0, {int(CLIENT_CPU)})
        except OSError:
            pass

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with SIGINT ignored
    build_loadgen()
    if "uring-c" in kinds:
        build_c(URING_SRC, URING_BIN)
    os.makedirs(BUILD_DIR, exist_ok=True)

    # Decide once what can run; missing frameworks become rows that say why.
    unavailable = {}
    info = machine_info()
    if "uvloop" in kinds:
        ok, why = probe_import("import uvloop")
        if not ok:
            unavailable["uvloop"] = f"not available: {why} (pip install uvloop)"
    if "iocpx" in kinds:
        ok, why = probe_import(
            "import iocpx; iocpx.Engine; print(getattr(iocpx, '__version__', '?'), iocpx.__file__,"
            " getattr(iocpx, 'default_backend', lambda: '?')())")
        if ok:
            info["iocpx"] = why
        else:
            unavailable["iocpx"] = f"not available: {why}"

    plan = []
    for kind in kinds:
        if kind == "iocpx" and kind not in unavailable:
            for w in args.iocpx_workers:
                sargs = ["--workers", str(w)]
                if args.iocpx_backend:
                    sargs += ["--backend", args.iocpx_backend]
                plan.append((kind, f"iocpx (workers={w})", sargs))
        else:
            plan.append((kind, kind, []))

    results = []
    try:
        for conns in args.connections:
            for size in args.size:
                for kind, label, sargs in plan:
                    if kind in unavailable:
                        results.append({"label": label, "kind": kind, "connections": conns,
                                        "size": size, "error": unavailable[kind]})
                        continue
                    runs = []
                    for i in range(args.repeat):
                        print(f"running {label}: {conns} connections x {size} B"
                              f"{f' (run {i + 1}/{args.repeat})' if args.repeat > 1 else ''} ...",
                              file=sys.stderr, flush=True)
                        log = os.path.join(BUILD_DIR, f"server-{kind}.log")
                        busy = wait_for_quiet(args.quiet_wait) if args.quiet_wait > 0 else 0.0
                        r = run_one(kind, label, sargs, conns, size, args, log)
                        if busy >= 15.0:
                            r.setdefault("note", f"machine was {busy:.0f}% busy before the run "
                                                 f"(waited {args.quiet_wait:g} s for quiet)")
                        if "error" in r:
                            print(f"  {r['error']}", file=sys.stderr)
                        else:
                            print(f"  {r['rt_per_s']:,.0f} rt/s, "
                                  f"{_f(r['cpu_us_per_rt'], '.2f')} server CPU us/rt, "
                                  f"errors {r['errors']}", file=sys.stderr)
                        runs.append(r)
                        if "error" in r:
                            break
                    results.append(pick_median(runs))
    except KeyboardInterrupt:
        print("interrupted: reporting what was measured", file=sys.stderr)
    finally:
        _kill_children()

    report = render(results, info, args)
    sys.stdout.write(report)
    if args.out:
        with open(args.out, "w") as f:
            f.write(report)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": info, "argv": sys.argv[1:], "rows": results}, f, indent=1)
    ok = all("error" not in r or r["kind"] in unavailable for r in results)
    ok = ok and all(not r.get("errors") and not r.get("verify_failures") for r in results)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
