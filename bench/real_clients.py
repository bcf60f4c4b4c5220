"""Real outside clients, side by side: redis-benchmark against the RESP example and wrk against the
HTTP example, on iocpx, on uvloop (the same protocol code) and against the C servers.

What it shows (design.md section 6, issue 8): what a user of iocpx would see with clients nobody
here wrote. Rows:
  - RESP (examples/resp_server.py): `redis-benchmark -c 50 -P 1` and `-P 16`, `-t set` and
    `-t get` (SET first, so GET finds the key);
  - HTTP (examples/http_server.py, `GET /`, a 14-byte body): `wrk -t1 -c100` and `-c1000`;
  - HTTPS (`--only https`, not in the default set): the same over TLS, `wrk -t1 -c100` against
    https://, the example with --tls-cert and nginx with `listen ... ssl`, one throwaway ECDSA
    P-256 certificate for all (bench/harness.py tls_files(); bench/tls.py runs this part).
Servers: iocpx with default options (no workers=/backend= given), iocpx workers=1, the same
protocol handler on uvloop (examples/transports.py), and the C reference: redis-server (no
persistence) for RESP, nginx (worker_processes 1, `return 200` of the same body) for HTTP, both
configured by this script in a temporary directory. Per row: **server CPU microseconds per
request** (utime+stime of the server's processes from /proc/PID/stat over the client's run,
divided by the requests the client counted), requests/s and p99 latency as the client reports
them (redis-benchmark --csv, wrk --latency), voluntary context switches per request (summed over
/proc/PID/task/*/status), the ratio to uvloop, and what else ran on the machine during the window
("other CPU %", the load average). The server is pinned to CPU 0 and the client to CPU 1
(taskset). Each row is the median (by server CPU per request) of --repeat interleaved rounds:
each round starts every server once, in turn, and runs all of its rows.

The window is the client's whole run, after an unmeasured warm-up run of the same client: it
includes the client connecting (50 or up to 1,000 accepts, a few ms of server CPU against
seconds of requests). redis-benchmark runs a fixed count of requests (-n), sized from the
warm-up's rate to last about --duration seconds; wrk runs for --duration seconds.

What it needs: Linux, 2+ CPUs, taskset, Python 3.9+, an importable iocpx (the in-place build:
`python setup.py build_ext --inplace`, found through src/), and redis-server, redis-benchmark, wrk
and nginx: when one is missing the script installs Debian's packages (`apt-get install -y
redis-server redis-tools wrk nginx`, as root; --no-install to skip) and uvloop from PyPI; a row
whose server or client is still missing says why. The open-files limit is raised to its hard
limit for every child (wrk -c1000 and its server need over 1,000 descriptors; the row is skipped
with the reason if the limit is lower).

How to run it, from the repo root:

    python bench/real_clients.py                        # the full table: ~8 min, --repeat 3
    python bench/real_clients.py --repeat 1 --duration 2 --only resp
    python bench/real_clients.py --servers iocpx-default,uvloop --only http
    python bench/real_clients.py --only https --repeat 1

It writes bench/results/real-clients-YYYY-MM-DD.md (and .json with every run's figures) and
rewrites bench/results/LATEST.md (a pointer to the newest reports), except with --out, which
writes the report there instead. Every server listens on its own 127.0.0.N address and port (a
new N each start, so the TIME_WAIT sockets a run leaves never block the next), never on
redis's or nginx's usual ports, and is stopped by its PID (nginx: its process group) when its
rows are done; every child is killed on exit, error or Ctrl-C. Nothing of an installed
redis/nginx service is used or touched: no systemctl, no default config, nothing killed by name.
Exit status 1 if an iocpx row failed, else 0.
"""

import argparse
import csv
import io
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import harness as H     # bench/harness.py: spawning, /proc sampling, the machine

EXAMPLES = os.path.join(H.REPO_ROOT, "examples")
RESULTS_DIR = os.path.join(H.BENCH_DIR, "results")
HELLO = b"Hello, World!\n"          # examples/http_server.py's BODY; nginx returns the same

RESP_ROWS = [("set", 1), ("set", 16), ("get", 1), ("get", 16)]     # (test, pipeline)
HTTP_ROWS = [100, 1000]                                             # wrk connections
HTTPS_ROWS = [100]
SERVERS = {   # id -> label until the server says more (its backend and workers)
    "iocpx-default": "iocpx (default options)",
    "iocpx-w1": "iocpx workers=1",
    "uvloop": "uvloop (same handler)",
    "c-ref": "C reference",
}
UV = "uvloop"

_addr_next = [20]       # the next 127.0.0.N a server listens on


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def next_host():
    n = _addr_next[0]
    _addr_next[0] = 20 + (n - 20 + 1) % 230
    return f"127.0.0.{n}"


# ---- tools ----

TOOLS = {"redis-server": "redis-server", "redis-benchmark": "redis-tools", "wrk": "wrk",
         "nginx": "nginx"}


def ensure_tools(install):
    """{tool: path or None}; installs the missing Debian packages (and uvloop) first if asked."""
    def which(t):
        return shutil.which(t) or next((p for p in (f"/usr/sbin/{t}", f"/usr/bin/{t}")
                                        if os.access(p, os.X_OK)), None)
    missing = [t for t in TOOLS if not which(t)]
    if missing and install:
        pkgs = sorted({TOOLS[t] for t in missing})
        if os.geteuid() != 0 or not shutil.which("apt-get"):
            log(f"missing {', '.join(missing)}: install {' '.join(pkgs)} (not root or no apt-get)")
        else:
            log(f"installing {' '.join(pkgs)} (apt-get) ...")
            cmd = ["apt-get", "-o", "DPkg::Lock::Timeout=300", "install", "-y", "-q"] + pkgs
            env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
            r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
            if r.returncode != 0:       # an old package list: update once and try again
                subprocess.run(["apt-get", "-o", "DPkg::Lock::Timeout=300", "update", "-q"],
                               env=env, capture_output=True, timeout=600)
                r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
            if r.returncode != 0:
                log(f"apt-get failed: {r.stderr.strip()[-300:]}")
    ok, _ = H.probe_import("import uvloop")
    if not ok and install:
        log("installing uvloop (pip) ...")
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "uvloop"],
                       capture_output=True, timeout=600)
    return {t: which(t) for t in TOOLS}


def tool_version(cmd):
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
        return (r.stdout + r.stderr).strip().splitlines()[0]
    except (OSError, subprocess.TimeoutExpired, IndexError):
        return "?"


def short_version(text):
    """The first version-looking word of a --version line ("v=7.0.15" -> "7.0.15")."""
    m = re.search(r"(\d+\.\d+(?:\.\d+)?(?:[-+~][\w.+~-]*)?)", text)
    return m.group(1) if m else text


# ---- servers ----

class Server:
    """One started server: its process, address, and the PIDs to measure."""

    def __init__(self, proc, host, port, label, tmpdir=None):
        self.proc, self.host, self.port, self.label, self.tmpdir = proc, host, port, label, tmpdir
        self.pids = [proc.pid]
        self.response_bytes = None

    def refresh_pids(self):
        self.pids = H.proc_tree(self.proc.pid)

    def stop(self):
        """SIGTERM to the process group we started (nginx: master and workers), then SIGKILL."""
        p = self.proc
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except OSError:
                p.terminate()
            try:
                p.wait(timeout=H.STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                pass
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
        H._children[:] = [c for c in H._children if c.poll() is None]
        if self.tmpdir:
            shutil.rmtree(self.tmpdir, ignore_errors=True)


def wait_listening(host, port, proc, deadline):
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            with socket.create_connection((host, port), timeout=1):
                return True
        except OSError:
            time.sleep(0.05)
    return False


def spawn_server(cmd, log_path, cwd=None):
    with open(log_path, "w") as lf:
        return H.spawn(["taskset", "-c", H.SERVER_CPU] + cmd, stdout=subprocess.PIPE, stderr=lf,
                       env=H.child_env(), cwd=cwd or H.REPO_ROOT, start_new_session=True)


def start_example(workload, sid, log_path):
    """examples/{resp,http}_server.py on iocpx (default or workers=1) or uvloop."""
    host = next_host()
    port = H.free_port(host)
    script = os.path.join(EXAMPLES, "resp_server.py" if workload == "resp" else "http_server.py")
    cmd = [sys.executable, script, "--host", host, "--port", str(port)]
    if workload == "https":
        cmd += ["--tls-cert", H.tls_files()[0]]
    cmd += {"iocpx-default": [], "iocpx-w1": ["--workers", "1"],
            "uvloop": ["--loop", "uvloop"]}[sid]
    proc = spawn_server(cmd, log_path)
    line = H.read_line(proc, time.monotonic() + H.READY_TIMEOUT)
    m = re.search(r"^serving \w+ on ([\d.]+):(\d+) \((.*)\)", line or "")
    if not m:
        proc.kill()
        proc.wait()
        return None, f"did not start: {line or ''} {H.tail(log_path, 2)}".strip()
    H.drain_stdout(proc)
    detail = re.sub(r", pid \d+", "", m.group(3))
    label = {"iocpx-default": f"iocpx default ({detail.replace('iocpx ', '')})",
             "iocpx-w1": f"iocpx workers=1 ({detail.split(',')[0].replace('iocpx ', '')})",
             "uvloop": "uvloop (same handler)"}[sid]
    return Server(proc, host, int(m.group(2)), label), None


def c_server_place(tools, name):
    """(host, port, a fresh temporary directory) for the C server `name`, or None if it is not
    installed."""
    if not tools.get(name):
        return None
    host = next_host()
    tmp = tempfile.mkdtemp(prefix=f"iocpx-bench-{name}-")
    os.chmod(tmp, 0o755)                    # nginx's workers run as another user unless root
    return host, H.free_port(host), tmp


def start_redis(tools, log_path):
    place = c_server_place(tools, "redis-server")
    if place is None:
        return None, "redis-server is not installed (apt-get install redis-server)"
    host, port, tmp = place
    conf = os.path.join(tmp, "redis.conf")
    with open(conf, "w") as f:
        f.write(f"port {port}\nbind {host}\nprotected-mode no\ndaemonize no\nsave \"\"\n"
                f"appendonly no\ndir {tmp}\nlogfile {os.path.join(tmp, 'redis.log')}\n"
                "databases 1\nio-threads 1\nmaxclients 10000\n")
    label = "redis-server " + short_version(tool_version([tools["redis-server"], "--version"]))
    return start_c_server([tools["redis-server"], conf], host, port, label, tmp, log_path,
                          os.path.join(tmp, "redis.log"))


def start_c_server(cmd, host, port, label, tmp, log_path, own_log):
    """Start a C reference server configured in `tmp` (removed when it stops); (Server, None)
    once it accepts connections, else (None, why)."""
    proc = spawn_server(cmd, log_path, cwd=tmp)
    srv = Server(proc, host, port, label, tmp)
    if not wait_listening(host, port, proc, time.monotonic() + H.READY_TIMEOUT):
        why = f"{label} did not start: {H.tail(log_path, 2)} {H.tail(own_log, 2)}"
        srv.stop()
        return None, why
    H.drain_stdout(proc)
    return srv, None


def start_nginx(tools, log_path, tls=False):
    place = c_server_place(tools, "nginx")
    if place is None:
        return None, "nginx is not installed (apt-get install nginx)"
    host, port, tmp = place
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    nofile = 8192 if hard == resource.RLIM_INFINITY else min(8192, hard)
    conf = os.path.join(tmp, "nginx.conf")
    body = HELLO.decode().replace("\n", "\\n")
    ssl_conf = ""
    if tls:
        _, cert, key = H.tls_files()
        ssl_conf = (f"ssl_certificate {cert}; ssl_certificate_key {key}; "
                    "ssl_protocols TLSv1.2 TLSv1.3; ssl_session_cache off; ssl_session_tickets off;")
    with open(conf, "w") as f:
        f.write(f"""worker_processes 1;
daemon off;
master_process on;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
{'user root;' if os.geteuid() == 0 else ''}
worker_rlimit_nofile {nofile};
events {{ worker_connections 4096; }}
http {{
    access_log off;
    server_tokens off;
    keepalive_requests 1000000;
    keepalive_timeout 65;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    server {{
        listen {host}:{port} backlog=4096{' ssl' if tls else ''};
        {ssl_conf}
        location = / {{ default_type text/plain; return 200 "{body}"; }}
    }}
}}
""")
    label = "nginx " + short_version(tool_version([tools["nginx"], "-v"])) + " (1 worker" + \
        (", TLS)" if tls else ")")
    return start_c_server([tools["nginx"], "-p", tmp, "-e", os.path.join(tmp, "error.log"),
                           "-c", conf], host, port, label, tmp, log_path,
                          os.path.join(tmp, "error.log"))


def check_server(srv, workload):
    """One request by hand: the server answers as it should (and how many bytes a response
    takes). Returns None, or what is wrong."""
    try:
        with socket.create_connection((srv.host, srv.port), timeout=5) as s:
            if workload == "resp":
                s.sendall(b"*3\r\n$3\r\nSET\r\n$5\r\nprobe\r\n$2\r\nok\r\n"
                          b"*2\r\n$3\r\nGET\r\n$5\r\nprobe\r\n")
                want = b"+OK\r\n$2\r\nok\r\n"
                got = b""
                while len(got) < len(want):
                    chunk = s.recv(4096)
                    if not chunk:
                        break
                    got += chunk
                return None if got == want else f"RESP check: got {got!r}"
            if workload == "https":
                import ssl
                ctx = ssl.create_default_context(cafile=H.tls_files()[1])
                s = ctx.wrap_socket(s, server_hostname="localhost")
            s.sendall(b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n")
            got = b""
            while b"\r\n\r\n" not in got or not got.endswith(HELLO):
                chunk = s.recv(4096)
                if not chunk:
                    break
                got += chunk
            srv.response_bytes = len(got)
            return None if got.startswith(b"HTTP/1.1 200") and got.endswith(b"\r\n\r\n" + HELLO) \
                else f"HTTP check: got {got[:200]!r}"
    except OSError as exc:
        return f"check request failed: {exc}"


# ---- clients ----

def run_client(cmd, timeout):
    """Run a client pinned to CPU 1; (exit status, stdout, stderr, its CPU seconds)."""
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    p = H.spawn(["taskset", "-c", H.CLIENT_CPU] + cmd, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, start_new_session=True)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate()
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    H._children[:] = [c for c in H._children if c.poll() is None]
    cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    return p.returncode, out.decode(errors="replace"), err.decode(errors="replace"), cpu


def redis_benchmark_cmd(tools, srv, test, pipeline, n):
    return [tools["redis-benchmark"], "-h", srv.host, "-p", str(srv.port), "-c", "50",
            "-P", str(pipeline), "-t", test, "-n", str(n), "--csv"]


def parse_redis_csv(out, test):
    """{'rps', 'p99_ms'} from redis-benchmark --csv, or None."""
    rows = list(csv.reader(io.StringIO(out)))
    if len(rows) < 2:
        return None
    head = rows[0]
    for row in rows[1:]:
        if row and row[0].upper() == test.upper():
            rec = dict(zip(head, row))
            return {"rps": float(rec["rps"]), "p99_ms": float(rec.get("p99_latency_ms", "nan"))}
    return None


def wrk_cmd(tools, srv, conns, duration, scheme="http"):
    duration = max(1, round(duration))             # wrk takes whole seconds
    return [tools["wrk"], "-t1", f"-c{conns}", f"-d{duration}s", "--latency", "--timeout", "5s",
            f"{scheme}://{srv.host}:{srv.port}/"]


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def parse_wrk(out):
    m = re.search(r"(\d+) requests in ([\d.]+)(\w+)", out)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    p99 = re.search(r"^\s+99%\s+([\d.]+)(us|ms|s|m)\s*$", out, re.M)
    if not (m and rps):
        return None
    res = {"requests": int(m.group(1)), "rps": float(rps.group(1)),
           "p99_ms": float(p99.group(1)) * _UNITS[p99.group(2)] if p99 else None}
    errs = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    res["errors"] = (sum(map(int, errs.groups())) if errs else 0) + \
        (int(non2xx.group(1)) if non2xx else 0)
    if errs or non2xx:
        res["error_text"] = " / ".join(x.group(0) for x in (errs, non2xx) if x)
    return res


def measure(srv, client_cmd, timeout):
    """Run the client once with the server sampled around it: the row's figures."""
    srv.refresh_pids()
    cpu0, vcs0 = H.tree_cpu_seconds(srv.pids), H.voluntary_switches(srv.pids)
    procs0 = H.all_proc_cpu()
    m0, t0, la0 = H.machine_cpu(), time.monotonic(), H.loadavg()
    rc, out, err, ccpu = run_client(client_cmd, timeout)
    t1, m1 = time.monotonic(), H.machine_cpu()
    others = H.top_others(procs0, H.all_proc_cpu(), t1 - t0, exclude=srv.pids)
    srv.refresh_pids()
    cpu1, vcs1 = H.tree_cpu_seconds(srv.pids), H.voluntary_switches(srv.pids)
    wall = t1 - t0
    scpu = cpu1 - cpu0
    return {"rc": rc, "out": out, "err": err, "wall_s": wall, "server_cpu_s": scpu,
            "client_cpu_s": ccpu, "vcsw": vcs1 - vcs0,
            "server_cpu_pct": 100 * scpu / wall, "client_cpu_pct": 100 * ccpu / wall,
            "other_cpu_pct": 100 * ((m1["busy"] - m0["busy"]) - scpu - ccpu) / wall,
            "loadavg": la0, "others": others, "server_alive": srv.proc.poll() is None}


def run_resp_row(tools, srv, test, pipeline, a):
    """Warm up, size -n for ~a.duration s, measure."""
    warm_n = 20000 if pipeline == 1 else 200000
    rc, out, err, _ = run_client(redis_benchmark_cmd(tools, srv, test, pipeline, warm_n),
                                 timeout=60)
    warm = parse_redis_csv(out, test) if rc == 0 else None
    if not warm:
        return {"error": f"warm-up run failed (exit {rc}): {(err or out).strip()[-300:]}"}
    n = max(10000, int(warm["rps"] * a.duration))
    m = measure(srv, redis_benchmark_cmd(tools, srv, test, pipeline, n),
                timeout=a.duration * 6 + 30)
    r = parse_redis_csv(m["out"], test) if m["rc"] == 0 else None
    if not r:
        return {"error": f"redis-benchmark failed (exit {m['rc']}): "
                         f"{(m['err'] or m['out']).strip()[-300:]}"}
    return finish(m, requests=n, rps=r["rps"], p99_ms=r["p99_ms"], errors=0)


def run_http_row(tools, srv, conns, a, scheme="http"):
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if nofile != resource.RLIM_INFINITY and nofile < conns + 200:
        return {"error": f"open-files limit {nofile} is below {conns} connections + 200"}
    rc, out, err, _ = run_client(wrk_cmd(tools, srv, conns, 1, scheme), timeout=40)  # warm-up
    if not parse_wrk(out):
        return {"error": f"warm-up run failed (exit {rc}): {(err or out).strip()[-300:]}"}
    m = measure(srv, wrk_cmd(tools, srv, conns, a.duration, scheme), timeout=a.duration + 40)
    r = parse_wrk(m["out"]) if m["rc"] == 0 else None
    if not r:
        return {"error": f"wrk failed (exit {m['rc']}): {(m['err'] or m['out']).strip()[-300:]}"}
    return finish(m, requests=r["requests"], rps=r["rps"], p99_ms=r["p99_ms"],
                  errors=r["errors"], error_text=r.get("error_text"))


def finish(m, requests, **fig):
    res = {k: v for k, v in m.items() if k not in ("out", "err", "rc")}
    res.update(fig)
    res["requests"] = requests
    res["cpu_us_per_req"] = m["server_cpu_s"] * 1e6 / requests if requests else None
    res["vcsw_per_req"] = m["vcsw"] / requests if requests else None
    if not m["server_alive"]:
        res["note"] = "the server exited during the run"
    return res


# ---- the plan ----

def row_key(workload, row):
    return f"{workload}:{row[0]}-P{row[1]}" if workload == "resp" else f"{workload}:c{row}"


def row_name(workload, row):
    if workload == "resp":
        return f"redis-benchmark -c 50 -P {row[1]} -t {row[0]}"
    return f"wrk -t1 -c{row}" + (" https://" if workload == "https" else "")


def start(workload, sid, tools, log_path):
    if sid == "c-ref":
        return start_redis(tools, log_path) if workload == "resp" else start_nginx(
            tools, log_path, tls=workload == "https")
    return start_example(workload, sid, log_path)


def run_round(workload, sids, tools, a, runs, labels, rnd):
    rows = {"resp": RESP_ROWS, "http": HTTP_ROWS, "https": HTTPS_ROWS}[workload]
    client = "redis-benchmark" if workload == "resp" else "wrk"
    order = sids[rnd % len(sids):] + sids[:rnd % len(sids)]     # a different first server per round
    for sid in order:
        def failed(why):
            for row in rows:
                runs.setdefault((row_key(workload, row), sid), []).append({"error": why})
        if not tools.get(client):
            failed(f"{client} is not installed (apt-get install "
                   f"{'redis-tools' if client == 'redis-benchmark' else 'wrk'})")
            continue
        log_path = os.path.join(H.BUILD_DIR, f"real-{workload}-{sid}.log")
        if a.quiet_wait > 0:
            H.wait_for_quiet(a.quiet_wait)
        srv, why = start(workload, sid, tools, log_path)
        if srv is None:
            log(f"  {sid}: {why}")
            failed(why)
            continue
        labels.setdefault(sid, {})[workload] = srv.label
        try:
            why = check_server(srv, workload)
            if why:
                failed(why)
                continue
            for row in rows:
                log(f"{row_name(workload, row)}: {srv.label} (round {rnd + 1}/{a.repeat}) ...")
                if a.quiet_wait > 0:
                    H.wait_for_quiet(a.quiet_wait)
                if workload == "resp":
                    r = run_resp_row(tools, srv, row[0], row[1], a)
                else:
                    r = run_http_row(tools, srv, row, a,
                                     "https" if workload == "https" else "http")
                r["response_bytes"] = srv.response_bytes
                if "error" in r:
                    log(f"  {r['error']}")
                else:
                    log(f"  {r['rps']:,.0f} req/s, {H.fmt(r['cpu_us_per_req'], '.2f')} server "
                        f"CPU us/req, {H.fmt(r['vcsw_per_req'], '.3f')} vcsw/req, other "
                        f"{r['other_cpu_pct']:.0f}%")
                runs.setdefault((row_key(workload, row), sid), []).append(r)
        finally:
            srv.stop()


def median_run(rs):
    """The run with the median server CPU per request; a failure wins (it is never hidden)."""
    bad = [r for r in rs if "error" in r or r.get("errors")]
    if bad:
        return dict(bad[0], runs=len(rs))
    rs = sorted(rs, key=lambda r: r["cpu_us_per_req"])
    best = dict(rs[(len(rs) - 1) // 2])
    best["runs_cpu_us_per_req"] = [round(r["cpu_us_per_req"], 3) for r in rs]
    best["runs"] = len(rs)
    return best


# ---- report ----

def render(meta, plan, results, labels):
    out = H.report_head("iocpx with real clients", meta)
    out.append(f"- clients and C servers: {meta['tool_versions']}")
    out.append(f"- method: server pinned to CPU {H.SERVER_CPU}, client to CPU {H.CLIENT_CPU}; "
               f"each row the median of {meta['repeat']} interleaved rounds (each round starts "
               f"every server once, in turn); window = the client's run ({meta['duration']:g} s) "
               "after an unmeasured warm-up run; server CPU from /proc/PID/stat (all its "
               "processes and threads), context switches from /proc/PID/task/*/status")
    out.append(f"- machine load: 1-minute load average {meta['loadavg_start']} at the start, "
               f"{meta.get('loadavg_end')} at the end; the other CPU % column is everything "
               "else that ran on the two cores during each window")
    out.append(f"- command: `{meta['command']}` ({meta.get('elapsed_min', 0):.1f} min)")
    out.append("")
    out += ["## Server CPU microseconds per request", "",
            "Lower is better; ratio to uvloop (the same protocol code) in brackets.", ""]
    sids = [s for s in plan["servers"]]
    heads = []
    for sid in sids:
        names = sorted(set(labels.get(sid, {}).values()))
        heads.append(" / ".join(names) if names else SERVERS[sid])
    out.append("| workload | " + " | ".join(heads) + " |")
    out.append("|---|" + "---:|" * len(sids))
    notes = []
    for workload, row in plan["rows"]:
        key = row_key(workload, row)
        u = results.get((key, UV))
        cells = []
        for sid in sids:
            r = results.get((key, sid))
            if r is None:
                cells.append("-")
            elif "error" in r:
                cells.append("failed")
            else:
                ratio = (r["cpu_us_per_req"] / u["cpu_us_per_req"]
                         if u and "error" not in u and sid != UV else None)
                cells.append(f"{r['cpu_us_per_req']:.2f}" + (f" ({ratio:.2f})" if ratio else ""))
        out.append(f"| {row_name(workload, row)} | " + " | ".join(cells) + " |")
    out += ["", "## Every figure", "",
            "| workload | server | requests/s | p99 ms | **server CPU us/req** | vs uvloop "
            "| vol. ctx switches/req | server CPU % | client CPU % | other CPU % | load avg "
            "| response B | errors |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for workload, row in plan["rows"]:
        key = row_key(workload, row)
        u = results.get((key, UV))
        for sid in sids:
            r = results.get((key, sid))
            if r is None:
                continue
            label = labels.get(sid, {}).get(workload, SERVERS[sid])
            name = row_name(workload, row)
            if "error" in r:
                out.append(H.error_row([name, label], r["error"], 13))
                notes.append(f"{label} @ {name}: {r['error']}")
                continue
            ratio = r["cpu_us_per_req"] / u["cpu_us_per_req"] if u and "error" not in u else None
            out.append(
                f"| {name} | {label} | {r['rps']:,.0f} | {H.fmt(r['p99_ms'], '.2f')} "
                f"| **{r['cpu_us_per_req']:.2f}** | {H.fmt(ratio, '.2f')} "
                f"| {H.fmt(r['vcsw_per_req'], '.3f')} | {r['server_cpu_pct']:.0f} "
                f"| {r['client_cpu_pct']:.0f} | {max(0.0, r['other_cpu_pct']):.0f} "
                f"| {H.fmt(r['loadavg'], '.2f')} | {H.fmt(r.get('response_bytes'), 'd')} "
                f"| {r.get('errors', 0)} |")
            if r.get("runs_cpu_us_per_req") and len(r["runs_cpu_us_per_req"]) > 1:
                notes.append(f"{label} @ {name}: server CPU us/req of the "
                             f"{len(r['runs_cpu_us_per_req'])} runs: "
                             + ", ".join(f"{x:.2f}" for x in r["runs_cpu_us_per_req"]))
            if r.get("other_cpu_pct", 0) >= 15:
                notes.append(f"{label} @ {name}: other work used {r['other_cpu_pct']:.0f}% of a "
                             "core during the window: compare with care"
                             + (f" (the busiest other processes: {r['others']})"
                                if r.get("others") else ""))
            if r.get("client_cpu_pct", 0) >= 90:
                notes.append(f"{label} @ {name}: the client used {r['client_cpu_pct']:.0f}% of "
                             "its core: requests/s is client-bound")
            for k in ("note", "error_text"):
                if r.get(k):
                    notes.append(f"{label} @ {name}: {r[k]}")
    out += [""] + H.notes_section(meta, notes)
    out += ["Server CPU us/req = utime+stime of the server's processes over the client's run / "
            "the requests the client counted (it includes the kernel's network work done on the "
            "server's time); vs uvloop = that figure over the uvloop row's; vol. ctx switches = "
            "voluntary context switches of all the server's threads per request (sleeping and "
            "waking); response B = bytes of one HTTP response, head and 14-byte body (nginx's "
            "head differs from the example's)."]
    return "\n".join(out) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=3, help="interleaved rounds (default 3)")
    ap.add_argument("--duration", type=float, default=5.0,
                    help="seconds of load per measured row (default 5)")
    ap.add_argument("--only", default="resp,http",
                    help="workloads: resp, http, https (default resp,http)")
    ap.add_argument("--servers", default=",".join(SERVERS),
                    help=f"comma-separated, from {', '.join(SERVERS)} (default all)")
    ap.add_argument("--quiet-wait", type=float, default=10.0,
                    help="before each server start and row, wait up to this many s for the "
                         "cores to be idle (0: never)")
    ap.add_argument("--no-install", dest="install", action="store_false",
                    help="do not install missing tools (apt-get, pip)")
    ap.add_argument("--out", help="write the Markdown report here (and its .json beside it) "
                                  "instead of bench/results/")
    a = ap.parse_args(argv)
    workloads = [w.strip() for w in a.only.split(",") if w.strip()]
    sids = [s.strip() for s in a.servers.split(",") if s.strip()]
    for w in workloads:
        if w not in ("resp", "http", "https"):
            ap.error(f"unknown workload {w!r}")
    for s in sids:
        if s not in SERVERS:
            ap.error(f"unknown server {s!r}")
    if a.repeat < 1 or a.duration <= 0:
        ap.error("--repeat must be >= 1 and --duration > 0")
    if (os.cpu_count() or 1) < 2 or not shutil.which("taskset"):
        ap.error("need 2 CPUs and taskset (util-linux)")
    H.driver_setup()                    # children inherit the open-files limit: wrk -c1000

    tools = ensure_tools(a.install)
    meta = H.machine_meta()
    ok, info = H.probe_import("import iocpx; e = iocpx.Engine(); print(iocpx.__version__ if "
                              "hasattr(iocpx, '__version__') else '?', e.backend, e.workers); "
                              "e.close()")
    meta["iocpx"] = info if ok else f"not importable: {info}"
    meta["uvloop"] = H.machine_info()["uvloop"]
    ok_uv, _ = H.probe_import("import uvloop")
    meta["tool_versions"] = ", ".join(
        f"{t} {short_version(tool_version([p, '--version'] if t != 'nginx' else [p, '-v']))}"
        if p else f"{t} missing" for t, p in tools.items())
    meta.update({"repeat": a.repeat, "duration": a.duration, "loadavg_start": H.loadavg(),
                 "command": " ".join(["python", "bench/real_clients.py"]
                                     + (argv if argv is not None else sys.argv[1:])),
                 "warnings": []})
    if not ok_uv:
        meta["warnings"].append("uvloop is not importable: its rows fail (pip install uvloop)")
    plan = {"servers": sids,
            "rows": [("resp", r) for r in RESP_ROWS if "resp" in workloads]
            + [("http", c) for c in HTTP_ROWS if "http" in workloads]
            + [("https", c) for c in HTTPS_ROWS if "https" in workloads]}
    runs, labels = {}, {}

    def body():
        for rnd in range(a.repeat):
            for w in workloads:
                run_round(w, sids, tools, a, runs, labels, rnd)
    H.run_guarded(meta, body)
    results = {k: median_run(v) for k, v in runs.items()}
    H.write_report(render(meta, plan, results, labels),
                   {"meta": meta, "labels": labels,
                    "runs": [{"row": k[0], "server": k[1], "runs": v} for k, v in runs.items()]},
                   RESULTS_DIR, "real-clients", a.out)
    bad = [k for k, r in results.items() if k[1].startswith("iocpx") and
           ("error" in r or r.get("errors"))]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
