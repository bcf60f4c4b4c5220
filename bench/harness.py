"""The one harness every iocpx benchmark uses: a scenario is a server-process factory (a Peer),
a load generator, and a report section; this file starts and stops the servers, runs the load
generators, samples /proc, repeats rows interleaved and takes the median, and runs a scenario
from its command line to its report (bench/report.py writes it).

What it shows: nothing by itself; bench/README.md lists the scenarios and how to add one.
The method, for every scenario: the server is pinned to CPU 0 and the load generator to CPU 1
(taskset), and the figure that matters is **server CPU microseconds per round trip (request,
connection...)**: utime + stime of the server's processes, all threads, from /proc/PID/stat
over the measured window, divided by the operations the load generator counted. Throughput on
two shared cores is bound by the load generator, so it is reported but not compared.

What it needs: Linux (/proc, taskset from util-linux), Python 3.9+, `cc` for the C tools.

How to run it: not by itself. A scenario file ends with `sys.exit(harness.main(this module))`;
see bench/echo.py for the shortest complete one.
"""

import argparse
import datetime
import json
import os
import platform
import random
import re
import resource
import select
import shutil
import signal
import socket
import subprocess
import sys
import time

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(BENCH_DIR)
BUILD_DIR = os.path.join(BENCH_DIR, ".build")
RESULTS_DIR = os.path.join(BENCH_DIR, "results")
SERVERS_PY = os.path.join(BENCH_DIR, "servers.py")
SRC_PKG = os.path.join(REPO_ROOT, "src", "iocpx")

SERVER_CPU = "0"
CLIENT_CPU = "1"
READY_TIMEOUT = 20.0        # seconds for a server to say it listens (imports, listen)
STOP_TIMEOUT = 10.0         # seconds for a server to exit after SIGTERM before SIGKILL
MARGIN = 15.0               # seconds beyond connect+warmup+duration before a loadgen is killed
CLK_TCK = os.sysconf("SC_CLK_TCK")

C_TOOLS = {     # name -> (source in bench/, built with -DLOADGEN_TLS and OpenSSL)
    "loadgen": ("loadgen.c", False), "loadgen-tls": ("loadgen.c", True),
    "churn": ("churn.c", False), "churn-tls": ("churn.c", True),
    "udp_loadgen": ("udp_loadgen.c", False), "uring_echo": ("uring_echo.c", False),
}

_children = []              # every Popen started here; kill_children() reaps them all


def log(msg):
    print(msg, file=sys.stderr, flush=True)


# ---- processes ----

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


def pinned(cpu, cmd):
    return ["taskset", "-c", cpu] + list(cmd)


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


def reap():
    _children[:] = [p for p in _children if p.poll() is None]


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


def tail(path, n=1):
    """The last n non-blank lines of a log, on one line (the exception, for a traceback)."""
    try:
        with open(path, errors="replace") as f:
            lines = [ln.strip() for ln in f if ln.strip()]
        return " / ".join(lines[-n:])
    except OSError:
        return ""


# ---- /proc ----

def _stat_cpu(data):
    # comm (field 2) may hold spaces: split after its closing parenthesis.
    fields = data[data.rindex(b")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK     # fields 14 and 15 of proc(5)


def cpu_seconds(pid):
    """utime + stime of the whole process (all threads), in seconds."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        return _stat_cpu(f.read())


def tree_cpu_seconds(pids):
    """utime + stime summed over processes (one that has gone counts 0)."""
    total = 0.0
    for p in pids:
        try:
            total += cpu_seconds(p)
        except (OSError, ValueError):
            pass
    return total


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


def machine_cpu():
    """{'busy': s, 'softirq': s}: all CPUs' busy seconds (user+nice+system+irq+softirq) and the
    softirq part alone, from /proc/stat. A process's utime+stime includes the softirq work (the
    loopback network stack) that ran on its time, which /proc/stat files under softirq."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return {"busy": (v[0] + v[1] + v[2] + v[5] + v[6]) / CLK_TCK, "softirq": v[6] / CLK_TCK}


def all_proc_cpu():
    """{pid: (command name, CPU seconds)} of every process on the machine."""
    out = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat", "rb") as f:
                    data = f.read()
                comm = data[data.index(b"(") + 1:data.rindex(b")")].decode(errors="replace")
                out[int(name)] = (comm, _stat_cpu(data))
            except (OSError, ValueError, IndexError):
                pass
    return out


def top_others(before, after, wall, exclude=(), n=3, min_pct=5.0):
    """The processes other than `exclude` (and this one) that used the most CPU between two
    all_proc_cpu() snapshots, as "name (pid) N%" of one core over `wall` seconds."""
    skip = set(exclude) | {os.getpid()}
    used = []
    for pid, (comm, cpu) in after.items():
        if pid not in skip:
            pct = 100.0 * (cpu - before.get(pid, (comm, 0.0))[1]) / wall if wall > 0 else 0.0
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


def wait_for_quiet(max_wait, threshold=15.0):
    """Wait (up to max_wait s) until the machine's busy CPU stays below `threshold` % of one core
    over half a second, so a row does not share the cores with someone's build. Returns the
    last busy % seen."""
    if max_wait <= 0:
        return 0.0
    deadline = time.monotonic() + max_wait
    while True:
        m0, t0 = machine_cpu(), time.monotonic()
        time.sleep(0.5)
        busy = 100.0 * (machine_cpu()["busy"] - m0["busy"]) / (time.monotonic() - t0)
        if busy < threshold or time.monotonic() >= deadline:
            return busy
        time.sleep(0.5)


# ---- ports and addresses ----

def _port_range():
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            lo, hi = map(int, f.read().split())
        return lo, hi
    except (OSError, ValueError):
        return 32768, 60999


def free_port(host="127.0.0.1"):
    """A TCP port on `host` below the ephemeral range, free right now. Why not port 0: on a
    shared machine the ephemeral range can be full of TIME_WAIT sockets (every loopback client
    leaves some), and then bind(port 0) fails with EADDRINUSE."""
    lo = max(_port_range()[0], 2048)
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


_host_next = [20]           # the next 127.0.0.N a Peer with host="next" listens on


def next_host():
    """A new loopback address per server start (127.0.0.20-249), so the TIME_WAIT sockets one
    run leaves never block the next."""
    n = _host_next[0]
    _host_next[0] = 20 + (n - 20 + 1) % 230
    return f"127.0.0.{n}"


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
    clients (a client that closes first holds its port in TIME_WAIT for 60 s). Returns
    (seconds waited, ports in use)."""
    lo, hi = _port_range()
    room = hi - lo + 1 - n - 1000
    t0 = time.monotonic()
    while True:
        used = loopback_ports_in_use()
        if used <= room or time.monotonic() - t0 >= max_wait:
            return time.monotonic() - t0, used
        time.sleep(1.0)


# ---- the C tools ----

def tool(name):
    """The path of one bench C tool (C_TOOLS), compiled into bench/.build/ unless the binary is
    newer than its source and the bench headers."""
    src, tls = C_TOOLS[name]
    src = os.path.join(BENCH_DIR, src)
    binary = os.path.join(BUILD_DIR, name)
    deps = [src] + [os.path.join(BENCH_DIR, f) for f in os.listdir(BENCH_DIR) if f.endswith(".h")]
    if os.path.exists(binary) and os.path.getmtime(binary) >= max(map(os.path.getmtime, deps)):
        return binary
    os.makedirs(BUILD_DIR, exist_ok=True)
    cmd = [os.environ.get("CC", "cc"), "-O2", "-Wall"] + (["-DLOADGEN_TLS"] if tls else []) + \
        ["-o", binary + ".tmp", src] + (["-lssl", "-lcrypto"] if tls else [])
    log("building: " + " ".join(cmd))
    subprocess.run(cmd, check=True)
    os.replace(binary + ".tmp", binary)
    return binary


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


# ---- the environment of the servers ----

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


def stale_build():
    """The .pyx files in src/iocpx newer than their built module, counting what each one
    includes and cimports (Cython's own dependency tree, as setup.py's cythonize sees it)
    and the C headers: the in-place build is stale."""
    stale = []
    if not os.path.isdir(SRC_PKG):
        return stale
    names = os.listdir(SRC_PKG)
    headers = [os.path.join(SRC_PKG, f) for f in names if f.endswith(".h")]
    try:
        from Cython.Build.Dependencies import create_dependency_tree
        tree = create_dependency_tree()
    except Exception:       # noqa: BLE001 - no Cython here: every .pxd/.pxi counts
        tree = None
        deps_all = [os.path.join(root, f) for root, _, files in os.walk(SRC_PKG) for f in files
                    if f.endswith((".pxd", ".pxi"))]
    for name in names:
        if not name.endswith(".pyx"):
            continue
        sos = [f for f in names if f.startswith(name[:-4] + ".") and f.endswith(".so")]
        if not sos:
            continue
        pyx = os.path.join(SRC_PKG, name)
        deps = [pyx] + headers + (list(tree.all_dependencies(pyx)) if tree else deps_all)
        newest = max(os.path.getmtime(d) for d in deps if os.path.exists(d))
        if os.path.getmtime(os.path.join(SRC_PKG, sos[0])) < newest:
            stale.append(name)
    return stale
    names = os.listdir(SRC_PKG)
    deps = [os.path.join(root, f) for root, _, files in os.walk(SRC_PKG) for f in files
            if f.endswith((".pxd", ".pxi", ".h"))]
    newest_dep = max(map(os.path.getmtime, deps), default=0)
    for name in names:
        if name.endswith(".pyx"):
            sos = [f for f in names if f.startswith(name[:-4] + ".") and f.endswith(".so")]
            if sos and os.path.getmtime(os.path.join(SRC_PKG, sos[0])) < max(
                    newest_dep, os.path.getmtime(os.path.join(SRC_PKG, name))):
                stale.append(name)
    return stale


def build_iocpx():
    """The in-place build, made safe for a shared tree: compile into a scratch directory, then
    rename each module over the old one (a running test keeps its mapped copy; copying over the
    file in place, as build_ext --inplace does, could crash it)."""
    import tempfile
    log("building iocpx (setup.py build_ext into a scratch dir, then renamed into src/iocpx) ...")
    with tempfile.TemporaryDirectory(prefix="iocpx-bench-build-") as tmp:
        lib = os.path.join(tmp, "lib")
        subprocess.run([sys.executable, "setup.py", "build_ext", "--build-lib", lib,
                        "--build-temp", os.path.join(tmp, "tmp")], cwd=REPO_ROOT, check=True,
                       stdout=subprocess.DEVNULL)
        for name in os.listdir(os.path.join(lib, "iocpx")):
            if name.endswith(".so"):
                dst = os.path.join(SRC_PKG, name)
                shutil.copy2(os.path.join(lib, "iocpx", name), dst + ".bench-tmp")
                os.replace(dst + ".bench-tmp", dst)


IOCPX_PROBE = ("import json, iocpx; e = iocpx.Engine(); w, b = e.workers, e.backend; e.close(); "
               "print(json.dumps({'version': getattr(iocpx, '__version__', '?'), 'file': "
               "iocpx.__file__, 'backends': list(iocpx.available_backends()), "
               "'default_backend': b, 'default_workers': w}))")


def probe_iocpx():
    """(info dict, None) about the iocpx the servers will import, or (None, reason)."""
    ok, out = probe_import(IOCPX_PROBE)
    return (json.loads(out.splitlines()[-1]), None) if ok else (None, out)


# ---- servers: a Peer is a server-process factory ----

class Unavailable(Exception):
    """A server or client that cannot run here; its rows say why."""


class Peer:
    """One server a scenario compares. argv holds "{host}" and "{port}" placeholders. The
    server is ready when a stdout line matches `ready` (its group 1 the port; None: when
    host:port accepts a connection). `relabel(match)` may refine the label from that line.
    `kind` groups peers (iocpx, uvloop, ...); `error` marks one that cannot run here."""

    def __init__(self, id, label, argv, kind=None, ready=r"^READY (\d+)", host="127.0.0.1",
                 cwd=BENCH_DIR, setup=None, relabel=None, error=None, **extra):
        self.id, self.label, self.argv, self.kind = id, label, list(argv), kind or id
        self.ready, self.host, self.cwd, self.setup, self.relabel = ready, host, cwd, setup, relabel
        self.error = error
        self.extra = extra      # scenario-specific fields (e.g. tls=True)

    def __getattr__(self, name):
        try:
            return self.__dict__["extra"][name]
        except KeyError:
            raise AttributeError(name) from None

    def as_dict(self):
        return {"id": self.id, "kind": self.kind, "label": self.label, **(
            {"error": self.error} if self.error else {})}


class Server:
    """A started Peer: its process (the leader of its own process group), address, PIDs."""

    def __init__(self, peer, proc, host, port, label, log_path, tmpdir=None):
        self.peer, self.proc, self.host, self.port, self.label = peer, proc, host, port, label
        self.log_path, self.tmpdir = log_path, tmpdir
        self.pid = proc.pid         # taskset execs the server: the pid is the server's own
        self.pids = [proc.pid]

    def refresh_pids(self):
        self.pids = proc_tree(self.pid)
        return self.pids

    def stop(self):
        """SIGTERM to the process group we started (nginx: master and workers), SIGKILL after
        STOP_TIMEOUT s. Returns a note when it had to be killed or exited badly, else None."""
        p, note = self.proc, None
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except OSError:
                p.terminate()
            try:
                p.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                note = "server ignored SIGTERM for 10 s: killed"
        for pid in self.pids:               # workers still alive after their master: by PID
            if pid != p.pid:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
        try:
            os.killpg(p.pid, signal.SIGKILL)   # the group is ours (start_new_session)
        except OSError:
            pass
        if p.poll() is None:
            p.kill()
        p.wait()
        reap()
        if self.tmpdir:
            shutil.rmtree(self.tmpdir, ignore_errors=True)
        if note is None and p.returncode not in (0, -signal.SIGKILL, -signal.SIGTERM, 3):
            note = f"server exit status {p.returncode}: {tail(self.log_path, 2)}"
        return note

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def start(peer, tag="", pin=True):
    """Start `peer` pinned to the server CPU; its Server once it listens. Raises Unavailable
    (the server printed "UNAVAILABLE why", or did not start: the log's last line)."""
    if peer.error:
        raise Unavailable(peer.error)
    host = next_host() if peer.host == "next" else peer.host
    port = free_port(host)
    tmpdir = None
    fill = {"host": host, "port": str(port)}
    if peer.setup:                  # a C server's configuration in a fresh directory
        import tempfile
        tmpdir = tempfile.mkdtemp(prefix=f"iocpx-bench-{peer.id}-")
        os.chmod(tmpdir, 0o755)     # nginx's workers run as another user unless root
        fill.update(peer.setup(host, port, tmpdir) or {}, tmp=tmpdir)
    argv = [x.format(**fill) for x in peer.argv]
    log_path = os.path.join(BUILD_DIR, f"server-{peer.id}{tag}.log")
    os.makedirs(BUILD_DIR, exist_ok=True)
    with open(log_path, "w") as lf:
        proc = spawn(pinned(SERVER_CPU, argv) if pin else argv, stdout=subprocess.PIPE,
                     stderr=lf, env=child_env(), cwd=tmpdir or peer.cwd, start_new_session=True)
    srv = Server(peer, proc, host, port, peer.label, log_path, tmpdir)
    deadline = time.monotonic() + READY_TIMEOUT
    why = None
    if peer.ready is None:
        while why is None:
            if proc.poll() is not None or time.monotonic() > deadline:
                why = f"{peer.label} did not start: {tail(log_path, 2)}"
                break
            try:
                with socket.create_connection((host, port), timeout=1):
                    break
            except OSError:
                time.sleep(0.05)
    else:
        while True:
            line = read_line(proc, deadline)
            if line is None:
                why = f"server did not start: {tail(log_path)}"
                break
            if line.startswith("UNAVAILABLE "):
                why = "not available: " + line[len("UNAVAILABLE "):]
                break
            m = re.search(peer.ready, line)
            if m:
                srv.port = int(m.group(1))
                if peer.relabel:
                    srv.label = peer.relabel(m)
                break
    if why:
        srv.stop()
        raise Unavailable(why)
    return srv


# ---- load generators ----

def measure_window(srv, argv, connect_timeout, warmup, duration, pin=True):
    """Drive `srv` with a load generator speaking the START/END/JSON protocol of the C tools
    (bench/loadgen_common.h: it prints START and END at the measured window's edges, then one
    JSON line). The server's CPU is sampled at START and END. Returns the JSON's figures plus
    server_cpu_s, cpu_us_per_rt (server CPU us per round trip), rt_per_s, server/loadgen/other
    CPU %, server_rss_kib; or {"error": ...}."""
    res = {}
    argv = [x.format(host=srv.host, port=srv.port) for x in argv]
    lg = spawn(pinned(CLIENT_CPU, argv) if pin else argv, stdout=subprocess.PIPE,
               stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + connect_timeout + warmup + duration + MARGIN
        marks, result = {}, None
        while True:
            line = read_line(lg, deadline)
            if line is None:
                break
            line = line.strip()
            if line in ("START", "END"):
                # Sample at once: the loadgen flushed this line at the window's edge. Both are
                # our unreaped children, so their /proc entries exist even if they have died.
                marks[line] = (time.monotonic(), cpu_seconds(srv.pid), cpu_seconds(lg.pid),
                               machine_cpu())
                if line == "END":
                    res["server_rss_kib"] = rss_kib(srv.pid)
            elif line.startswith("{"):
                result = json.loads(line)
                break
        if result is None or "START" not in marks or "END" not in marks:
            lg.kill()
            lg.wait()
            err = lg.stderr.read().decode(errors="replace").strip()
            return {"error": f"load generator failed or timed out (exit {lg.returncode}): "
                             f"{err[-300:]} / server: {tail(srv.log_path)}"}
        try:
            lg.wait(timeout=10)
        except subprocess.TimeoutExpired:
            lg.kill()
            lg.wait()
        if srv.proc.poll() is not None:
            res["note"] = f"server exited (status {srv.proc.returncode}) during the run"
        (w0, s0, c0, m0), (w1, s1, c1, m1) = marks["START"], marks["END"]
        wall, rt = w1 - w0, result["round_trips"]
        res.update(result)

        def pct(x):
            return 100.0 * x / wall if wall > 0 else 0.0
        res["server_cpu_s"] = s1 - s0
        res["server_cpu_pct"] = pct(s1 - s0)
        res["loadgen_cpu_pct"] = pct(c1 - c0)
        # Anything else that ran meanwhile (a compiler, the driver) shares the two cores.
        res["other_cpu_pct"] = pct((m1["busy"] - m0["busy"]) - (s1 - s0) - (c1 - c0))
        res["softirq_cpu_pct"] = pct(m1["softirq"] - m0["softirq"])
        res["rt_per_s"] = rt / result["seconds"] if result["seconds"] > 0 else 0.0
        res["cpu_us_per_rt"] = (s1 - s0) * 1e6 / rt if rt else None
        return res
    finally:
        if lg.poll() is None:
            lg.kill()
            lg.wait()
        reap()


def run_client(argv, timeout):
    """Run a client pinned to the client CPU to its end; (exit status, stdout, stderr, its CPU s)."""
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    p = spawn(pinned(CLIENT_CPU, argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
              start_new_session=True)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate()
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    reap()
    cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    return p.returncode, out.decode(errors="replace"), err.decode(errors="replace"), cpu


def measure_run(srv, argv, timeout, parse):
    """Drive `srv` with an outside client (redis-benchmark, wrk) whose whole run is the window:
    the server's processes are sampled before and after it. parse(stdout) -> {"requests": N,
    ...} or None. Returns the parsed figures plus cpu_us_per_req (server CPU us per request),
    vcsw_per_req, server/client/other CPU %, loadavg, the busiest other processes; or
    {"error": ...}."""
    argv = [x.format(host=srv.host, port=srv.port) for x in argv]
    srv.refresh_pids()
    cpu0, vcs0, procs0 = tree_cpu_seconds(srv.pids), voluntary_switches(srv.pids), all_proc_cpu()
    m0, t0, la0 = machine_cpu(), time.monotonic(), loadavg()
    rc, out, err, ccpu = run_client(argv, timeout)
    t1, m1 = time.monotonic(), machine_cpu()
    others = top_others(procs0, all_proc_cpu(), t1 - t0, exclude=srv.pids)
    srv.refresh_pids()
    scpu, vcs = tree_cpu_seconds(srv.pids) - cpu0, voluntary_switches(srv.pids) - vcs0
    fig = parse(out) if rc == 0 else None
    if not fig:
        return {"error": f"{os.path.basename(argv[0])} failed (exit {rc}): "
                         f"{(err or out).strip()[-300:]}"}
    wall, n = t1 - t0, fig["requests"]
    res = dict(fig, wall_s=wall, server_cpu_s=scpu, client_cpu_s=ccpu, vcsw=vcs,
               server_cpu_pct=100 * scpu / wall, client_cpu_pct=100 * ccpu / wall,
               other_cpu_pct=100 * ((m1["busy"] - m0["busy"]) - scpu - ccpu) / wall,
               loadavg=la0, others=others,
               cpu_us_per_req=scpu * 1e6 / n if n else None,
               vcsw_per_req=vcs / n if n else None)
    if srv.proc.poll() is not None:
        res["note"] = "the server exited during the run"
    return res


# ---- rows, repeats, medians ----

def median(runs, key):
    """The run with the median `key`; a failed or erroneous run wins, so no failure is hidden by
    repeating. The runs' figures are kept in runs_<key>."""
    for r in runs:
        if "error" in r or r.get("errors") or r.get("verify_failures") or not r.get(key):
            return dict(r)
    runs = sorted(runs, key=lambda r: r[key])
    best = dict(runs[(len(runs) - 1) // 2])
    if len(runs) > 1:
        best[f"runs_{key}"] = [round(r[key], 3) for r in runs]
    return best


def sweep(rows, peers, run, a, key, show, repeat=None, title=str):
    """Run every (row, peer): `repeat` interleaved rounds per row (an int, or a function of the
    row; default a.repeat), each round every peer once, a different one first each round, each
    run after waiting up to a.quiet_wait s for quiet cores. run(row, peer) -> result dict.
    Returns [result] in (row, peer) order, each the median() by `key` with "peer", "label",
    "kind" and the row's fields set; a peer that cannot run gets its error in each row."""
    out = []
    for row in rows:
        reps = repeat(row) if callable(repeat) else (repeat or a.repeat)
        runs = {p.id: [] for p in peers}
        for rnd in range(reps):
            k = rnd % max(1, len(peers))
            for p in peers[k:] + peers[:k]:
                if p.error or (runs[p.id] and "error" in runs[p.id][-1]):
                    continue
                log(f"{title(row)}: {p.label}" + (f" (run {rnd + 1}/{reps})" if reps > 1 else "")
                    + " ...")
                busy = wait_for_quiet(a.quiet_wait)
                try:
                    r = run(row, p)
                except Unavailable as exc:
                    r = {"error": str(exc)}
                r.setdefault("loadavg", loadavg())
                if busy >= 15.0:
                    r.setdefault("note", f"machine was {busy:.0f}% busy before the run "
                                         f"(waited {a.quiet_wait:g} s for quiet)")
                log(f"  {r['error']}" if "error" in r else f"  {show(r)}")
                runs[p.id].append(r)
        for p in peers:
            r = median(runs[p.id], key) if runs[p.id] else {"error": p.error or "not run"}
            r.update(row if isinstance(row, dict) else {"row": row})
            r.setdefault("label", p.label)
            r.update(peer=p.id, kind=p.kind)
            out.append(r)
    return out


def find(results, peer, **row):
    """The result of `peer` whose fields match `row` (and that did not fail), or None."""
    for r in results:
        if r.get("peer") == peer and "error" not in r and all(r.get(k) == v
                                                              for k, v in row.items()):
            return r
    return None


def ratio(x, base):
    return None if not x or not base else x / base


def fmt(x, spec):
    """format(x, spec), or "-" for a missing figure."""
    return "-" if x is None else format(x, spec)


def int_list(s):
    return [int(x) for x in s.split(",") if x.strip()]


def str_list(s):
    return [x.strip() for x in s.split(",") if x.strip()]


# ---- the machine ----

def machine_meta():
    """Date, kernel, CPU, memory, open-files limit, Python, uvloop, the git tree."""
    model = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            model = next((ln.split(":", 1)[1].strip() for ln in f
                          if ln.startswith("model name")), model)
    except OSError:
        pass
    ok, uv = probe_import("import uvloop; print(uvloop.__version__)")
    m = {"date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
         "kernel": platform.release(), "nproc": os.cpu_count(), "cpu": model,
         "python": platform.python_version(), "uvloop": uv if ok else "not installed",
         "nofile": resource.getrlimit(resource.RLIMIT_NOFILE)[0], "loadavg_start": loadavg()}
    with open("/proc/meminfo") as f:
        m["mem_gib"] = int(f.readline().split()[1]) / 2**20
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

    def on_signal(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with it ignored
    os.makedirs(BUILD_DIR, exist_ok=True)


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


# ---- a scenario from its command line to its report ----
#
# A scenario module defines:
#   NAME         the report's file name prefix (bench/results/NAME-YYYY-MM-DD.md)
#   TITLE        the report's title
#   add_args(ap) its options (and ap.set_defaults() for the common ones: repeat, duration...)
#   run(a, meta) -> results (any JSON-able value; usually sweep()'s list)
#   section(rep, results, meta)   its tables, notes and charts (bench/report.py Report)
#   failed(results) -> bool       optional: exit status 1 when an iocpx row failed

def common_args(ap):
    ap.add_argument("--repeat", type=int, default=1,
                    help="interleaved runs per row, the median reported")
    ap.add_argument("--duration", type=float, default=5.0, help="measured seconds per row")
    ap.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds per row")
    ap.add_argument("--quiet-wait", type=float, default=10.0,
                    help="before each run wait up to this many s for idle cores (0: never)")
    ap.add_argument("--quick", action="store_true",
                    help="a smoke run: fewer rows, shorter; written as NAME-DATE-quick.md")
    ap.add_argument("--build", action="store_true",
                    help="first build iocpx in place (setup.py build_ext, renamed into src/)")
    ap.add_argument("--out", help="write the Markdown report here (its .json and charts beside "
                                  "it) instead of bench/results/, and leave LATEST.md alone")


def iocpx_failed(results):
    rows = results if isinstance(results, list) else []
    return any(str(r.get("kind", "")).startswith("iocpx") and (
        "error" in r and "verified" not in r or r.get("errors") not in (None, 0, "none")
        or r.get("verify_failures")) for r in rows)


def main(*scenarios, argv=None, name=None, title=None, doc=None, defaults=None):
    """Run one scenario (or several into one report: bench/run_all.py) from the command line
    to its report; returns the exit status (1 if an iocpx row failed)."""
    import report
    first = scenarios[0]
    ap = argparse.ArgumentParser(description=(doc or first.__doc__).split("\n\n")[0])
    common_args(ap)
    for s in scenarios:
        s.add_args(ap)
    ap.set_defaults(**(defaults or {}))
    a = ap.parse_args(argv)
    if (os.cpu_count() or 1) < 2 or not shutil.which("taskset"):
        ap.error("need 2 CPUs and taskset (util-linux)")
    driver_setup()
    if a.build:
        build_iocpx()
    meta = machine_meta()
    info, why = probe_iocpx()
    meta["iocpx"] = (f"{info['version']} ({info['file']}; backends "
                     f"{', '.join(info['backends'])}; default {info['default_backend']}, "
                     f"{info['default_workers']} workers)") if info else f"not importable: {why}"
    meta["iocpx_info"] = info
    meta["warnings"] = []
    meta["command"] = " ".join(["python", os.path.relpath(sys.argv[0], REPO_ROOT)]
                               + (argv if argv is not None else sys.argv[1:]))
    meta["args"] = {k: v for k, v in vars(a).items() if isinstance(v, (int, float, str, list))}
    stale = stale_build()
    if stale:
        w = (f"the in-place build is older than {', '.join(stale)}: these rows measure the "
             "older build (run `python setup.py build_ext --inplace`, or pass --build)")
        log("WARNING: " + w)
        meta["warnings"].append(w)
    results = {}
    t0 = time.monotonic()
    try:
        for s in scenarios:
            results[s.NAME] = s.run(a, meta)
    except KeyboardInterrupt:
        log("interrupted: reporting what was measured")
        meta["warnings"].append("the run was interrupted: some rows are missing")
    finally:
        kill_children()
    meta["elapsed_min"] = (time.monotonic() - t0) / 60
    meta["loadavg_end"] = loadavg()
    rep = report.Report(name or first.NAME, title or first.TITLE, meta, quick=a.quick)
    for s in scenarios:
        if s.NAME in results:
            s.section(rep, results[s.NAME], meta)
    rep.write({"meta": meta, "results": results}, out=a.out)
    return 1 if any(getattr(s, "failed", iocpx_failed)(results.get(s.NAME, []))
                    for s in scenarios) else 0
