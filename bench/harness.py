"""The shared harness of the iocpx benchmarks: spawning and killing servers and clients,
/proc sampling (CPU time, RSS, context switches, the machine's load), building the C tools, and
run_one(), which drives one server with a START/END load generator (loadgen.c, churn.c).

What it shows: nothing by itself; bench/echo.py, run_all.py, real_clients.py and
silent_clients.py import it (`import harness`: a script run as `python bench/x.py` has bench/ on
sys.path). Method (design.md section 6): servers pinned to CPU 0, clients to CPU 1, server CPU
from /proc/PID/stat over the measured window only.

What it needs: Linux (/proc, taskset from util-linux), Python 3.9+, `cc` for the C tools.

How to run it: not by itself; see the scripts that import it.
"""

import datetime
import json
import os
import platform
import random
import re
import resource
import select
import signal
import shutil
import socket
import subprocess
import sys
import time

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(BENCH_DIR)
BUILD_DIR = os.path.join(BENCH_DIR, ".build")
LOADGEN_SRC = os.path.join(BENCH_DIR, "loadgen.c")
LOADGEN_BIN = os.path.join(BUILD_DIR, "loadgen")
LOADGEN_TLS_BIN = os.path.join(BUILD_DIR, "loadgen-tls")      # loadgen.c -DLOADGEN_TLS
SERVERS_PY = os.path.join(BENCH_DIR, "servers.py")
URING_SRC = os.path.join(BENCH_DIR, "uring_echo.c")
URING_BIN = os.path.join(BUILD_DIR, "uring_echo")
KINDS = ("asyncio", "uvloop", "iocpx", "threads", "uring-c", "iocpx-loop")

SERVER_CPU = "0"
CLIENT_CPU = "1"
READY_TIMEOUT = 20.0        # seconds for a server to print READY (imports, listen)
STOP_TIMEOUT = 10.0         # seconds for a server to exit after SIGTERM before SIGKILL
MARGIN = 15.0               # seconds beyond connect+warmup+duration before the loadgen is killed
CLK_TCK = os.sysconf("SC_CLK_TCK")

_children = []              # every Popen started here; kill_children() reaps them all


def kill_children():
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


def on_signal(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def _die_with_parent():
    """Child side, before exec: get SIGTERM if this driver dies, even by SIGKILL (Linux prctl)."""
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)    # 1 == PR_SET_PDEATHSIG
    except Exception:
        pass


def spawn(cmd, **kw):
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


def proc_tree(pid):
    """`pid` and its descendants (nginx's master and workers), from /proc/PID/task/*/children."""
    pids, i = [pid], 0
    while i < len(pids):
        p, i = pids[i], i + 1
        try:
            for tid in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{tid}/children") as f:
                    pids += [int(x) for x in f.read().split()]
        except OSError:
            pass
    return pids


def tree_cpu_seconds(pids):
    """utime + stime summed over processes (one that has gone counts 0)."""
    total = 0.0
    for p in pids:
        try:
            total += cpu_seconds(p)
        except (OSError, ValueError):
            pass
    return total


def voluntary_switches(pids):
    """voluntary_ctxt_switches summed over every thread of the processes."""
    total = 0
    for p in pids:
        try:
            tids = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                with open(f"/proc/{p}/task/{tid}/status") as f:
                    for line in f:
                        if line.startswith("voluntary_ctxt_switches:"):
                            total += int(line.split()[1])
                            break
            except OSError:
                pass
    return total


def all_proc_cpu():
    """{pid: (command name, CPU seconds)} of every process on the machine."""
    out = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                data = f.read()
            comm = data[data.index(b"(") + 1:data.rindex(b")")].decode(errors="replace")
            fields = data[data.rindex(b")") + 2:].split()
            out[int(name)] = (comm, (int(fields[11]) + int(fields[12])) / CLK_TCK)
        except (OSError, ValueError, IndexError):
            pass
    return out


def top_others(before, after, wall, exclude=(), n=3, min_pct=5.0):
    """The processes other than `exclude` (and this one) that used the most CPU between two
    all_proc_cpu() snapshots, as "name (pid) N%" of one core over `wall` seconds."""
    skip = set(exclude) | {os.getpid()}
    used = []
    for pid, (comm, cpu) in after.items():
        if pid in skip:
            continue
        d = cpu - before.get(pid, (comm, 0.0))[1] if pid in before else cpu
        pct = 100.0 * d / wall if wall > 0 else 0.0
        if pct >= min_pct:
            used.append((pct, f"{comm} ({pid}) {pct:.0f}%"))
    return ", ".join(t for _, t in sorted(used, reverse=True)[:n])


def loadavg():
    """The 1-minute load average, from /proc/loadavg."""
    try:
        with open("/proc/loadavg") as f:
            return float(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def build_c(src, binary, tls=False):
    """Compile one bench C file into bench/.build/ unless the binary is newer than it and than
    the bench headers (loadgen_common.h, loadgen_tls.h). tls: with -DLOADGEN_TLS, linked with
    OpenSSL (libssl-dev)."""
    deps = [src] + [os.path.join(BENCH_DIR, f) for f in os.listdir(BENCH_DIR) if f.endswith(".h")]
    if os.path.exists(binary) and os.path.getmtime(binary) >= max(map(os.path.getmtime, deps)):
        return
    os.makedirs(BUILD_DIR, exist_ok=True)
    cc = os.environ.get("CC", "cc")
    cmd = [cc, "-O2", "-Wall", "-o", binary + ".tmp", src]
    if tls:
        cmd[1:1] = ["-DLOADGEN_TLS"]
        cmd += ["-lssl", "-lcrypto"]
    print("building:", " ".join(cmd), file=sys.stderr)
    subprocess.run(cmd, check=True)
    os.replace(binary + ".tmp", binary)


def build_loadgen(tls=False):
    if tls:
        build_c(LOADGEN_SRC, LOADGEN_TLS_BIN, tls=True)
    else:
        build_c(LOADGEN_SRC, LOADGEN_BIN)


def tls_files():
    """(chain+key PEM, certificate PEM, key PEM) of a throwaway ECDSA P-256 certificate for
    localhost / 127.0.0.x made once in bench/.build/tls/ with `openssl req` (every TLS server of
    a run, nginx included, gets the same one). Never checked in."""
    d = os.path.join(BUILD_DIR, "tls")
    both, cert, key = (os.path.join(d, n) for n in ("server.pem", "cert.pem", "key.pem"))
    if not os.path.exists(both):
        if not shutil.which("openssl"):
            raise RuntimeError("the TLS rows need the openssl command (apt-get install openssl)")
        os.makedirs(d, exist_ok=True)
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                        "ec_paramgen_curve:prime256v1", "-nodes", "-days", "30", "-subj",
                        "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
                        "-keyout", key, "-out", cert], check=True, capture_output=True)
        with open(both + ".tmp", "w") as f:
            f.write(open(cert).read() + open(key).read())
        os.replace(both + ".tmp", both)
    return both, cert, key


def free_port(host="127.0.0.1"):
    """A TCP port on `host` below the ephemeral range, free right now. Why not port 0: on a
    shared machine the ephemeral range can be full of TIME_WAIT sockets (every loopback client
    leaves some), and then bind(port 0) fails with EADDRINUSE."""
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
                s.bind((host, port))
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


def tail(path, n=1):
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
        server = spawn(cmd, stdout=subprocess.PIPE, stderr=log, env=child_env(),
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
                res["error"] = f"server did not start ({line or 'no output'}): {tail(log_path)}"
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
        loadgen = spawn(lg_cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
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
                            f"{err[-300:]} / server: {tail(log_path)}")
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
        if stop_server(server):
            res.setdefault("note", "server ignored SIGTERM for 10 s: killed")
        if server.returncode not in (0, -signal.SIGKILL, None) and "error" not in res \
                and server.returncode != 3:
            res.setdefault("note", f"server exit status {server.returncode}: {tail(log_path, 2)}")
        _children[:] = [p for p in _children if p.poll() is None]



# ---- report helpers ----

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


def unavailable_peers(kinds, info, uvloop_kind, iocpx_kind, iocpx_probe):
    """{kind: why} for the peers among kinds that cannot run here (uvloop or iocpx not
    importable); what the iocpx probe prints goes to info["iocpx"]."""
    unavailable = {}
    if uvloop_kind in kinds:
        ok, why = probe_import("import uvloop")
        if not ok:
            unavailable[uvloop_kind] = f"not available: {why} (pip install uvloop)"
    if iocpx_kind in kinds:
        ok, why = probe_import(iocpx_probe)
        if ok:
            info["iocpx"] = why
        else:
            unavailable[iocpx_kind] = f"not available: {why}"
    return unavailable


def run_repeated(repeat, what, quiet_wait, run, summary):
    """Run one row `repeat` times (each after waiting up to `quiet_wait` s for a quiet machine)
    and return pick_median() of the runs; `run()` makes one result, `summary(r)` the progress
    line of a good one. A run that fails ends the repeats: repeating never hides a failure."""
    runs = []
    for i in range(repeat):
        print(f"running {what}{f' (run {i + 1}/{repeat})' if repeat > 1 else ''} ...",
              file=sys.stderr, flush=True)
        busy = wait_for_quiet(quiet_wait) if quiet_wait > 0 else 0.0
        r = run()
        if busy >= 15.0:
            r.setdefault("note", f"machine was {busy:.0f}% busy before the run "
                                 f"(waited {quiet_wait:g} s for quiet)")
        print(f"  {r['error']}" if "error" in r else f"  {summary(r)}", file=sys.stderr)
        runs.append(r)
        if "error" in r:
            break
    return pick_median(runs)


def int_list(s):
    return [int(x) for x in s.split(",") if x.strip()]


# ---- servers started outside run_one ----

def start_server(cmd, log_path, ready_re=r"^READY (\d+)"):
    """Spawn a server pinned to CPU 0; (proc, port) once a stdout line matches ready_re,
    else (None, reason) with the process killed."""
    with open(log_path, "w") as lf:
        proc = spawn(["taskset", "-c", SERVER_CPU] + cmd, stdout=subprocess.PIPE, stderr=lf,
                        env=child_env(), cwd=BENCH_DIR, start_new_session=True)
    deadline = time.monotonic() + READY_TIMEOUT
    while True:
        line = read_line(proc, deadline)
        if line is None:
            stop_server(proc)
            return None, f"server did not start: {tail(log_path)}"
        m = re.search(ready_re, line)
        if m:
            return proc, int(m.group(1))
        if line.startswith("UNAVAILABLE "):
            stop_server(proc)
            return None, "not available: " + line[len("UNAVAILABLE "):]


def stop_server(proc):
    """SIGTERM, then SIGKILL after STOP_TIMEOUT s; True if it had to be killed."""
    killed = False
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            killed = True
    _children[:] = [p for p in _children if p.poll() is None]
    return killed


def drain_stdout(proc):
    """Keep reading a server's stdout in a thread, so a chatty server never blocks on the pipe."""
    import threading

    def pump():
        try:
            while proc.stdout.read(65536):
                pass
        except (OSError, ValueError):
            pass
    threading.Thread(target=pump, daemon=True).start()


def _port_range():
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            lo, hi = map(int, f.read().split())
        return lo, hi
    except (OSError, ValueError):
        return 32768, 60999


def loopback_ports_in_use():
    """Ephemeral ports held by a TCP socket (TIME_WAIT included) whose local end is
    127.0.0.1: the ports a new loopback client may not be able to take."""
    lo, hi = _port_range()
    ports = set()
    for path, prefix in (("/proc/net/tcp", "0100007F:"),
                         ("/proc/net/tcp6", "0000000000000000FFFF00000100007F:")):
        try:
            with open(path) as f:
                next(f, None)
                for line in f:
                    local = line.split(None, 2)[1]
                    if local.startswith(prefix):
                        ports.add(int(local[len(prefix):], 16))
        except OSError:
            pass
    return sum(1 for p in ports if lo <= p <= hi)


def wait_for_ports(n, max_wait):
    """Wait (up to max_wait s) until the ephemeral port range has room for n more loopback
    clients. A connection the client closes first holds its port in TIME_WAIT for 60 s, and a
    client that finds no port fails (EADDRNOTAVAIL, or EADDRINUSE from io_uring connect): a
    10,000-connection idle row right after a 19,000-connection stress run runs out.
    Returns (seconds waited, ports in use)."""
    lo, hi = _port_range()
    room = hi - lo + 1 - n - 1000
    t0 = time.monotonic()
    while True:
        used = loopback_ports_in_use()
        if used <= room or time.monotonic() - t0 >= max_wait:
            return time.monotonic() - t0, used
        time.sleep(1.0)


# ---- the machine ----

def machine_meta():
    m = machine_info()
    with open("/proc/meminfo") as f:
        m["mem_gib"] = int(f.readline().split()[1]) / 2**20
    m["nofile"] = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    try:
        head = subprocess.run(["git", "-C", REPO_ROOT, "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", REPO_ROOT, "status", "--porcelain", "--", "src"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        m["git"] = f"commit {head}" + (f", src/ has {len(dirty.splitlines())} uncommitted "
                                       "change(s)" if dirty else ", src/ clean")
    except (OSError, subprocess.TimeoutExpired):
        m["git"] = "unknown"
    return m


def driver_setup(pin=True):
    """What every driver does first: the open-files soft limit raised to the hard one (children
    inherit it), itself pinned to the client's CPU (off the server's), SIGTERM and SIGINT turned
    into KeyboardInterrupt (so the rows measured so far are reported), bench/.build/ made."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if pin:
        try:
            os.sched_setaffinity(0, {int(CLIENT_CPU)})
        except OSError:
            pass
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with it ignored
    os.makedirs(BUILD_DIR, exist_ok=True)


def run_guarded(meta, body):
    """Run body(): Ctrl-C or SIGTERM stops it (the rows measured so far are kept, and a warning
    in meta["warnings"] says some are missing); every child is killed afterwards; meta gets
    elapsed_min and loadavg_end."""
    t0 = time.monotonic()
    try:
        body()
    except KeyboardInterrupt:
        print("interrupted: reporting what was measured", file=sys.stderr, flush=True)
        meta.setdefault("warnings", []).append("the run was interrupted: some rows are missing")
    finally:
        kill_children()
    meta["elapsed_min"] = (time.monotonic() - t0) / 60
    meta["loadavg_end"] = loadavg()


def finish_client(proc, command=b"EXIT\n", timeout=20):
    """Tell a stdin-driven client (idle_client.py, silent_clients.py --holder) to exit; kill it
    if it does not within `timeout` s."""
    if proc is None or proc.poll() is not None:
        return
    try:
        proc.stdin.write(command)
        proc.stdin.flush()
        proc.wait(timeout=timeout)
    except (OSError, subprocess.TimeoutExpired):
        proc.kill()
        proc.wait()


def write_report(report, payload, results_dir, name, out=None):
    """Write a Markdown report and its raw figures (.json beside it): to `out` if given, else
    as results_dir/NAME-YYYY-MM-DD.md, and then rewrite LATEST.md. Prints the report; returns
    the Markdown file's path."""
    if out:
        md = out
    else:
        os.makedirs(results_dir, exist_ok=True)
        md = os.path.join(results_dir, f"{name}-{datetime.date.today().isoformat()}.md")
    with open(md, "w") as f:
        f.write(report)
    with open(os.path.splitext(md)[0] + ".json", "w") as f:
        json.dump(payload, f, indent=1, default=repr)
    if not out:
        write_latest(results_dir)
    sys.stdout.write(report)
    print(f"wrote {md}", file=sys.stderr, flush=True)
    return md


def report_head(title, meta):
    """The first lines of a report: title with the date, machine, software, tree (the lines
    write_latest() reads back)."""
    return [f"# {title} — {meta['date']}", "",
            f"- machine: Linux {meta['kernel']}, {meta['nproc']} CPUs ({meta['cpu']}), "
            f"{meta['mem_gib']:.0f} GiB, open-files limit {meta['nofile']}",
            f"- Python {meta['python']}, uvloop {meta['uvloop']}, iocpx {meta.get('iocpx')}",
            f"- tree: {meta['git']}"]


def notes_section(meta, notes):
    """The report's "Notes" lines: the run's warnings first, then each note once."""
    notes = list(meta.get("warnings") or []) + list(notes)
    if not notes:
        return []
    return ["## Notes", ""] + [f"- {n}" for n in dict.fromkeys(notes)] + [""]


def error_row(cells, error, columns):
    """A Markdown table row of `columns` cells: `cells`, then the error text, then blanks."""
    text = str(error).replace("\n", " ").replace("|", "\\|")
    return "| " + " | ".join(list(cells) + [text] + [""] * (columns - len(cells) - 1)) + " |"


def fmt(x, spec):
    """format(x, spec), or "-" for a missing figure."""
    return "-" if x is None else format(x, spec)



# ---- bench/results/LATEST.md ----

REPORT_KINDS = (    # (file name pattern, what wrote it)
    (r"^\d{4}-\d{2}-\d{2}\.md$", "echo, churn, idle and stress suite (bench/run_all.py)"),
    (r"^real-clients-\d{4}-\d{2}-\d{2}\.md$",
     "real clients: redis-benchmark and wrk (bench/real_clients.py)"),
    (r"^silent-clients-\d{4}-\d{2}-\d{2}\.md$",
     "silent clients against a first-data server (bench/silent_clients.py)"),
    (r"^tls-\d{4}-\d{2}-\d{2}\.md$",
     "TLS: echo, handshakes and wrk over HTTPS beside uvloop and nginx (bench/tls.py)"),
    (r"^udp-\d{4}-\d{2}-\d{2}\.md$",
     "UDP echo beside uvloop's create_datagram_endpoint (bench/udp_echo.py)"),
    (r"^timers-\d{4}-\d{2}-\d{2}\.md$",
     "timers: CPU per call_later + fire beside uvloop (bench/timers.py)"),
)


def write_latest(results_dir):
    """Rewrite results_dir/LATEST.md: a pointer to the newest full report of each kind (its
    date and tree), never a copy of one."""
    names = sorted(os.listdir(results_dir))
    lines = ["# Latest benchmark reports", "",
             "The newest full report of each bench script (rewritten by the scripts after a full "
             "run; `--quick` runs do not count):", ""]
    for pattern, what in REPORT_KINDS:
        found = [n for n in names if re.match(pattern, n)]
        if not found:
            continue
        name = found[-1]
        date = tree = ""
        with open(os.path.join(results_dir, name)) as f:
            for line in f:
                if line.startswith("# ") and "—" in line:
                    date = line.split("—", 1)[1].strip()
                elif line.startswith("- tree: "):
                    tree = line[len("- tree: "):].strip()
                    break
        lines.append(f"- {what}: [{name}]({name})"
                     + (f", {date}" if date else "") + (f", {tree}" if tree else ""))
    with open(os.path.join(results_dir, "LATEST.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
