"""`python -m iocpx serve` and `python -m iocpx stress`: the model's demo server
and its stress client (many connections, a few messages each, seconds apart,
every echo verified byte for byte).

Portable: process CPU time and RSS come from /proc on Linux and from
GetProcessTimes / K32GetProcessMemoryInfo on Windows; the open-file limit that
splits a stress run across processes is read with `resource` where it exists
(Windows has no such per-process limit for sockets)."""
import errno
import functools
import heapq
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import iocpx


# --------------------------------------------------------------------------- serve

def _kind(exc):
    """An error kind for the report: the class, and the errno name if any."""
    name = type(exc).__name__
    code = getattr(exc, "errno", None)
    if code in errno.errorcode:
        name += f"({errno.errorcode[code]})"
    return name


_WINDOWS = sys.platform == "win32"


def _proc_cpu(pid="self"):
    """CPU seconds (user + system) used so far by a process (this one by default)."""
    if _WINDOWS:
        return _win_process_info(pid)[0]
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _proc_rss_kib(pid="self"):
    """Resident set size in KiB (the working set on Windows)."""
    if _WINDOWS:
        return _win_process_info(pid)[1]
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def _win_process_info(pid="self"):
    """(CPU seconds, working set KiB) of a Windows process; OSError if it cannot be read."""
    import ctypes
    from ctypes import wintypes

    class PROCESS_MEMORY_COUNTERS(ctypes.Structure):
        _fields_ = [("cb", wintypes.DWORD), ("PageFaultCount", wintypes.DWORD)] + [
            (n, ctypes.c_size_t) for n in (
                "PeakWorkingSetSize", "WorkingSetSize", "QuotaPeakPagedPoolUsage",
                "QuotaPagedPoolUsage", "QuotaPeakNonPagedPoolUsage", "QuotaNonPagedPoolUsage",
                "PagefileUsage", "PeakPagefileUsage")]

    k32 = ctypes.WinDLL("kernel32", use_last_error=True)
    k32.GetCurrentProcess.restype = wintypes.HANDLE
    k32.OpenProcess.restype = wintypes.HANDLE
    k32.OpenProcess.argtypes = [wintypes.DWORD, wintypes.BOOL, wintypes.DWORD]
    k32.CloseHandle.argtypes = [wintypes.HANDLE]
    k32.GetProcessTimes.argtypes = [wintypes.HANDLE] + [ctypes.POINTER(wintypes.FILETIME)] * 4
    k32.K32GetProcessMemoryInfo.argtypes = [
        wintypes.HANDLE, ctypes.POINTER(PROCESS_MEMORY_COUNTERS), wintypes.DWORD]
    own = pid == "self" or int(pid) == os.getpid()
    if own:
        h = k32.GetCurrentProcess()
    else:
        # PROCESS_QUERY_LIMITED_INFORMATION
        h = k32.OpenProcess(0x1000, False, int(pid))
        if not h:
            raise ctypes.WinError(ctypes.get_last_error())
    try:
        t = [wintypes.FILETIME() for _ in range(4)]
        if not k32.GetProcessTimes(h, *[ctypes.byref(x) for x in t]):
            raise ctypes.WinError(ctypes.get_last_error())
        kernel, user = ((x.dwHighDateTime << 32 | x.dwLowDateTime) for x in t[2:])
        pmc = PROCESS_MEMORY_COUNTERS()
        pmc.cb = ctypes.sizeof(pmc)
        if not k32.K32GetProcessMemoryInfo(h, ctypes.byref(pmc), pmc.cb):
            raise ctypes.WinError(ctypes.get_last_error())
        return (kernel + user) / 1e7, pmc.WorkingSetSize // 1024
    finally:
        if not own:
            k32.CloseHandle(h)


def _open_file_limit():
    """The soft limit on open descriptors, or None where there is none to read (Windows)."""
    try:
        import resource
    except ImportError:
        return None
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def serve(args):
    lock = threading.Lock()
    log_left = [args.log_accepts]

    def on_accept(conn, data):
        if not args.quiet:
            with lock:
                if log_left[0] > 0:
                    log_left[0] -= 1
                    print(f"accepted {conn.peer[0]}:{conn.peer[1]} first data {data[:64]!r}"
                          f"{'...' if len(data) > 64 else ''}", flush=True)
        if data:
            conn.send(data)

    def on_recv(conn, data):
        conn.send(data)

    reuse = args.processes > 1 or args.reuse_port
    if reuse and not hasattr(socket, "SO_REUSEPORT"):
        print("iocpx serve: --processes > 1 shares the port through SO_REUSEPORT, which this "
              f"platform ({sys.platform}) does not have; run one server process", file=sys.stderr)
        return 2
    srv = iocpx.Server((args.host, args.port), on_accept=on_accept, on_recv=on_recv,
                       first_data=args.first_data, workers=args.workers, backend=args.backend,
                       backlog=args.backlog, idle_timeout=args.idle_timeout, reuse_port=reuse)
    stop = threading.Event()
    # Ctrl-C / SIGTERM stop the server; on Windows also Ctrl-Break (CTRL_BREAK_EVENT),
    # the one console event another process can send to a process group.
    for name in ("SIGINT", "SIGTERM", "SIGBREAK"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), lambda *a: stop.set())
    deadline = time.monotonic() + args.duration if args.duration else None
    srv.start()
    eng = srv.engine
    children = []
    for _ in range(args.processes - 1):     # SO_REUSEPORT: the kernel spreads connections
        cmd = [sys.executable, "-m", "iocpx", "serve", "--host", args.host,
               "--port", str(srv.address[1]), "--reuse-port", "--quiet",
               "--backlog", str(args.backlog)]
        for flag, val in (("--workers", args.workers), ("--backend", args.backend),
                          ("--idle-timeout", args.idle_timeout)):
            if val is not None:
                cmd += [flag, str(val)]
        if args.first_data:
            cmd.append("--first-data")
        children.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL))
    pids = ",".join(str(p) for p in [os.getpid()] + [c.pid for c in children])
    print(f"iocpx serve: listening on {srv.address[0]}:{srv.address[1]} backend={eng.backend} "
          f"workers={eng.workers} first_data={args.first_data} pid={pids}", flush=True)
    last = eng.stats()
    last_t, last_cpu = time.monotonic(), _proc_cpu()
    try:
        while not stop.wait(1.0 if deadline is None else
                            max(0.0, min(1.0, deadline - time.monotonic()))):
            if deadline is not None and time.monotonic() >= deadline:
                break
            st = eng.stats()
            now, cpu = time.monotonic(), _proc_cpu()
            dt = now - last_t
            if not args.quiet or args.status:
                print(f"conns {st['connections']:6d}  accepted {st['accepted']:8d}  "
                      f"msgs/s {(st['messages_in'] - last['messages_in']) / dt:9.0f}  "
                      f"in {(st['bytes_in'] - last['bytes_in']) / dt / 1e6:7.2f} MB/s  "
                      f"out {(st['bytes_out'] - last['bytes_out']) / dt / 1e6:7.2f} MB/s  "
                      f"cpu {100 * (cpu - last_cpu) / dt:5.1f}%  rss {_proc_rss_kib() / 1024:6.1f} MiB",
                      flush=True)
            last, last_t, last_cpu = st, now, cpu
    finally:
        for c in children:
            c.send_signal(signal.SIGTERM)
        srv.stop(timeout=30)
        for c in children:
            try:
                c.wait(30)
            except subprocess.TimeoutExpired:
                c.kill()
        print("iocpx serve: stopped", flush=True)
    return 0


# --------------------------------------------------------------------------- stress

class _Part:
    """One process's share of the stress run."""

    def __init__(self, args, first_id, count, source_ip):
        self.args = args
        # one source address per process: each (source, destination) pair has
        # only ~28,000 ephemeral ports
        self.local = (source_ip, 0) if source_ip else None
        self.first_id = first_id
        self.count = count
        self.lock = threading.Lock()
        self.heap = []                  # (due, seq, conn) sends waiting for their time
        self.seq = 0
        self.wake = threading.Condition(self.lock)
        self.made = self.failed = self.sent = self.echoed = self.verified = 0
        self.closed = 0
        self.errors = {}
        self.lat = []
        self.done = threading.Event()

    def message(self, cid, k):
        head = b"%d:%d:" % (cid, k)
        body = (head * (self.args.size // max(1, len(head)) + 1))[:self.args.size]
        return body

    def schedule(self, due, conn):
        with self.lock:
            self.seq += 1
            heapq.heappush(self.heap, (due, self.seq, conn))
            self.wake.notify()

    def send_next(self, conn, st):
        st["expect"] = self.message(st["cid"], st["k"])
        st["buf"] = bytearray()
        st["t"] = time.monotonic()
        st["k"] += 1
        try:
            conn.send(st["expect"])
        except OSError as e:
            self.error(_kind(e))
            return
        with self.lock:
            self.sent += 1

    def error(self, kind):
        with self.lock:
            self.errors[kind] = self.errors.get(kind, 0) + 1

    def on_connect(self, st, conn):
        st["connected"] = True
        with self.lock:
            self.made += 1
        self.send_next(conn, st)

    def on_recv(self, st, conn, data):
        st["buf"] += data
        if len(st["buf"]) < len(st["expect"]):
            return
        lat = time.monotonic() - st["t"]
        ok = bytes(st["buf"]) == st["expect"]
        with self.lock:
            self.echoed += 1
            if ok:
                self.verified += 1
                self.lat.append(lat)
        if not ok:
            self.error("mismatch")
            conn.close()
        elif st["k"] < self.args.messages:
            self.schedule(st["t"] + self.args.interval, (conn, st))
        else:
            conn.close()

    def on_close(self, st, conn, exc):
        with self.lock:
            self.closed += 1
            if exc is not None:
                if not st.get("connected"):
                    self.failed += 1
                kind = _kind(exc)
                self.errors[kind] = self.errors.get(kind, 0) + 1
            elif st["k"] < self.args.messages or len(st.get("buf", b"")) < len(st.get("expect", b"")):
                self.errors["closed early"] = self.errors.get("closed early", 0) + 1
            if self.closed == self.count:
                self.done.set()
            self.wake.notify()

    def scheduler(self, eng):
        while not self.done.is_set():
            with self.lock:
                while not self.heap or self.heap[0][0] > time.monotonic():
                    if self.done.is_set():
                        return
                    tmo = (self.heap[0][0] - time.monotonic()) if self.heap else 0.2
                    self.wake.wait(max(0.0005, min(tmo, 0.2)))
                due, _, item = heapq.heappop(self.heap)
            if isinstance(item, int):       # a connection still to open
                self.open_one(eng, item)
            elif not item[0].closed:
                self.send_next(*item)

    def open_one(self, eng, cid):
        st = {"cid": cid, "k": 0}
        try:
            eng.connect((self.args.host, self.args.port), local_address=self.local,
                        on_connect=functools.partial(self.on_connect, st),
                        on_recv=functools.partial(self.on_recv, st),
                        on_close=functools.partial(self.on_close, st))
        except OSError as e:
            with self.lock:
                self.failed += 1
                self.closed += 1
                kind = _kind(e)
                self.errors[kind] = self.errors.get(kind, 0) + 1
                if self.closed == self.count:
                    self.done.set()

    def run(self, out):
        eng = iocpx.Engine(workers=self.args.client_workers, backend=self.args.backend)
        ramp = max(self.args.interval, self.args.connections / self.args.connect_rate)
        t0 = time.monotonic()
        for i in range(self.count):         # staggered: the load is steady
            self.schedule(t0 + ramp * i / max(1, self.count), self.first_id + i)
        sched = threading.Thread(target=self.scheduler, args=(eng,), daemon=True)
        sched.start()
        limit = t0 + ramp + self.args.interval * self.args.messages + self.args.timeout
        while not self.done.wait(1.0):
            with self.lock:
                out.write(json.dumps({"progress": [self.made, self.verified, self.closed]}) + "\n")
                out.flush()
            if time.monotonic() > limit:
                self.error("timed out")
                break
        self.done.set()
        with self.lock:
            self.wake.notify()
        eng.close(timeout=30)
        out.write(json.dumps({"result": {
            "connections": self.count, "made": self.made, "failed": self.failed,
            "sent": self.sent, "echoed": self.echoed, "verified": self.verified,
            "errors": self.errors, "lat": [round(x * 1e6) for x in self.lat]}}) + "\n")
        out.flush()


def _stress_part(args):
    first, count, index = (int(x) for x in args.part.split(":"))
    src = args.source_ip
    if src == "auto":
        src = f"127.0.0.{10 + index}" if args.host.startswith("127.") else None
    _Part(args, first, count, src or None).run(sys.stdout)
    return 0


def stress(args):
    if args.connections < 1 or args.messages < 1:
        print("iocpx stress: --connections and --messages must be at least 1", file=sys.stderr)
        return 2
    soft = _open_file_limit()
    if soft is None:                # Windows: no per-process descriptor limit to respect
        per_proc = max(1, args.per_process or args.connections)
        why = "no open-file limit here"
    else:
        per_proc = max(100, min(args.per_process or soft - 200, soft - 200))
        why = f"open-file limit {soft}"
    nproc = (args.connections + per_proc - 1) // per_proc
    share = [args.connections // nproc + (1 if i < args.connections % nproc else 0) for i in range(nproc)]
    print(f"iocpx stress: {args.connections} connections x {args.messages} messages of "
          f"{args.size} B, {args.interval:g} s apart, to {args.host}:{args.port}; "
          f"{nproc} process(es) (at most {per_proc} connections each: {why})",
          flush=True)
    spids = [int(p) for p in str(args.server_pid).split(",")] if args.server_pid else []
    server_cpu0 = sum(_proc_cpu(p) for p in spids) if spids else None
    t0 = time.monotonic()
    procs, first = [], 0
    base = [sys.executable, "-m", "iocpx", "stress", "--host", args.host, "--port", str(args.port),
            "--connections", str(args.connections), "--messages", str(args.messages),
            "--interval", str(args.interval), "--size", str(args.size),
            "--connect-rate", str(args.connect_rate), "--timeout", str(args.timeout),
            "--client-workers", str(args.client_workers)]
    if args.backend:
        base += ["--backend", args.backend]
    source_ip = args.source_ip
    if source_ip == "auto" and _WINDOWS and nproc == 1:
        source_ip = ""      # one client process on Windows: no need to spread source addresses
    base += ["--source-ip", source_ip]
    for i, n in enumerate(share):
        procs.append(subprocess.Popen(base + ["--part", f"{first}:{n}:{i}"], stdout=subprocess.PIPE,
                                      text=True))
        first += n
    progress = [[0, 0, 0] for _ in procs]
    results = [None] * len(procs)

    def reader(i, p):
        for line in p.stdout:
            msg = json.loads(line)
            if "progress" in msg:
                progress[i] = msg["progress"]
            elif "result" in msg:
                results[i] = msg["result"]

    readers = [threading.Thread(target=reader, args=(i, p), daemon=True) for i, p in enumerate(procs)]
    for r in readers:
        r.start()
    peak_rss = 0
    want = args.connections * args.messages
    last_print = 0.0
    while any(p.poll() is None for p in procs):
        time.sleep(0.2)
        if spids:
            try:
                peak_rss = max(peak_rss, sum(_proc_rss_kib(p) for p in spids))
            except OSError:
                pass
        if time.monotonic() - last_print >= 1.0:
            last_print = time.monotonic()
            made = sum(p[0] for p in progress)
            ver = sum(p[1] for p in progress)
            print(f"  t={time.monotonic() - t0:6.1f}s connected {made:6d}/{args.connections}  "
                  f"verified {ver:7d}/{want}", flush=True)
    for r in readers:
        r.join(5)
    elapsed = time.monotonic() - t0
    tot = {"made": 0, "failed": 0, "sent": 0, "echoed": 0, "verified": 0}
    errors, lat = {}, []
    missing = 0
    for r in results:
        if r is None:
            missing += 1
            continue
        for k in tot:
            tot[k] += r[k]
        for k, v in r["errors"].items():
            errors[k] = errors.get(k, 0) + v
        lat += r["lat"]
    if missing:
        errors["client process died"] = missing
    lat.sort()

    def pct(p):
        return lat[min(len(lat) - 1, int(p * len(lat)))] / 1000 if lat else float("nan")

    print(f"\nreport ({elapsed:.1f} s):")
    print(f"  connections  made {tot['made']}, failed {tot['failed']} (of {args.connections})")
    print(f"  messages     sent {tot['sent']}, echoed {tot['echoed']}, "
          f"verified {tot['verified']} (of {want})")
    print(f"  errors       {errors if errors else 'none'}")
    print(f"  latency      p50 {pct(0.5):.3f} ms, p99 {pct(0.99):.3f} ms, "
          f"max {lat[-1] / 1000 if lat else float('nan'):.3f} ms")
    if spids:
        try:
            cpu = sum(_proc_cpu(p) for p in spids) - server_cpu0
            print(f"  server       pid {args.server_pid}: CPU {cpu:.2f} s "
                  f"({100 * cpu / elapsed:.1f}% of one core), "
                  f"peak RSS {peak_rss / 1024:.1f} MiB (summed over its processes)")
        except OSError as e:
            print(f"  server       pid {args.server_pid}: gone ({e})")
    ok = tot["verified"] == want and not errors
    print("stress: OK" if ok else "stress: FAILED")
    return 0 if ok else 1


def add_parsers(sub):
    s = sub.add_parser("serve", help="echo server with a status line")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=9000)
    s.add_argument("--workers", type=int, default=None)
    s.add_argument("--backend", default=None)
    s.add_argument("--first-data", action="store_true", help="deliver connections with their first data")
    s.add_argument("--backlog", type=int, default=4096)
    s.add_argument("--idle-timeout", type=float, default=None)
    s.add_argument("--log-accepts", type=int, default=20, help="log at most this many accepts")
    s.add_argument("--processes", type=int, default=1,
                   help="server processes sharing the port (SO_REUSEPORT); one process may "
                        "hold at most its open-file limit of connections")
    s.add_argument("--reuse-port", action="store_true", help=argparse_suppress())
    s.add_argument("--quiet", action="store_true", help="no accept log and no status line")
    s.add_argument("--status", action="store_true", help="with --quiet: keep the status line")
    s.add_argument("--duration", type=float, default=None,
                   help="stop by itself after this many seconds (default: run until Ctrl-C, "
                        "SIGTERM, or Ctrl-Break on Windows)")
    s.set_defaults(func=serve)

    t = sub.add_parser("stress", help="the model's stress client")
    t.add_argument("--host", default="127.0.0.1")
    t.add_argument("--port", type=int, default=9000)
    t.add_argument("--connections", type=int, default=30000)
    t.add_argument("--messages", type=int, default=3)
    t.add_argument("--interval", type=float, default=3.0)
    t.add_argument("--size", type=int, default=64)
    t.add_argument("--connect-rate", type=float, default=5000, help="new connections per second at most")
    t.add_argument("--per-process", type=int, default=0, help="connections per client process")
    t.add_argument("--client-workers", type=int, default=2)
    t.add_argument("--backend", default=None)
    t.add_argument("--timeout", type=float, default=60, help="extra seconds before giving up")
    t.add_argument("--source-ip", default="auto",
                   help="bind client sockets to this address; 'auto': 127.0.0.(10+i) for client "
                        "process i when the server is on 127.x (on Windows only when the run is "
                        "split across processes), '' for none")
    t.add_argument("--server-pid", default=None,
                   help="server process id(s), comma-separated: their CPU and peak RSS are reported")
    t.add_argument("--part", default=None, help=argparse_suppress())
    t.set_defaults(func=lambda a: _stress_part(a) if a.part else stress(a))


def argparse_suppress():
    import argparse
    return argparse.SUPPRESS
