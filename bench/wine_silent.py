"""Silent clients against the iocp backend under Wine: issue 14's scenario for AcceptEx.

What it shows: a first-data echo server (default options: first_data=True, first_data_timeout
10 s, the default accepts) runs in the embeddable Windows CPython under Wine; this process (Linux)
opens SILENT connections that never send, keeps opening RATE more per second, and meanwhile
PROBES legit clients connect one by one, send "legit" and time their echo. Without the AcceptEx
guard each silent client holds an accept slot until the server gives up on it, and the legit
clients queue behind them. It reports the legit wait (p50/p99/max, timeouts) and the server's
counters (first-data timeouts, accepts). Wine is slow per I/O: the figures are Wine's, not
Windows'; see README "First data and silent clients" for what to expect on Windows.

Needs: a Windows build and its interpreter, as `bash .ci/windows.sh` leaves them (the folder is
IOCPX_WIN_BUILD, default build/windows): BUILD/py/cp3X/python.exe with iocpx importable, and
BUILD/wineprefix.

    python bench/wine_silent.py --build /tmp/winbuild --python-version 3.9
"""
import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time

SERVER = r"""
import json, sys, iocpx
eng = iocpx.Engine(backend="iocp")
def on_accept(conn, data):
    conn.send(data)
lst = eng.listen(("127.0.0.1", 0), first_data=True, on_accept=on_accept,
                 on_recv=lambda c, d: c.send(d), backlog=4096)
print("PORT", lst.address[1], flush=True)
sys.stdin.readline()
s = eng.stats()
print("STATS " + json.dumps({k: v for k, v in s.items() if isinstance(v, (int, float, str))}),
      flush=True)
eng.close(timeout=60)
"""


def open_silent(port, n, out, stop=None, rate=None):
    """n connections that never send (or RATE per second until stop is set)."""
    t0 = time.monotonic()
    i = 0
    while (stop is None and i < n) or (stop is not None and not stop.is_set()):
        s = socket.socket()
        s.setblocking(False)
        try:
            s.connect(("127.0.0.1", port))
        except BlockingIOError:
            pass
        out.append(s)
        i += 1
        if rate:
            delay = t0 + i / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)


def probe(port, timeout):
    t0 = time.monotonic()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(b"legit")
            got = b""
            while len(got) < 5:
                chunk = s.recv(5 - len(got))
                if not chunk:
                    return None
                got += chunk
            return time.monotonic() - t0 if got == b"legit" else None
    except OSError:
        return None


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--build", default=os.environ.get("IOCPX_WIN_BUILD", "build/windows"))
    ap.add_argument("--python-version", default="3.11")
    ap.add_argument("--silent", type=int, default=5000, help="silent connections opened first")
    ap.add_argument("--rate", type=float, default=500.0, help="new silent ones per second after")
    ap.add_argument("--probes", type=int, default=100)
    ap.add_argument("--interval", type=float, default=0.1, help="seconds between probes")
    ap.add_argument("--probe-timeout", type=float, default=10.0)
    args = ap.parse_args()

    v = args.python_version.replace(".", "")
    py = os.path.join(args.build, "py", f"cp{v}", "python.exe")
    if not os.path.exists(py):
        sys.exit(f"no Windows interpreter at {py}: run `bash .ci/windows.sh` first")
    env = dict(os.environ, WINEPREFIX=os.path.join(os.path.abspath(args.build), "wineprefix"),
               WINEDEBUG="-all")
    srv = subprocess.Popen(["wine", py, "-c", SERVER], stdin=subprocess.PIPE,
                           stdout=subprocess.PIPE, text=True, env=env)
    try:
        line = srv.stdout.readline()
        if not line.startswith("PORT"):
            sys.exit(f"the server did not start: {line!r}")
        port = int(line.split()[1])
        silent = []
        t_open = time.monotonic()
        open_silent(port, args.silent, silent)
        opened = time.monotonic() - t_open
        time.sleep(1.0)
        stop = threading.Event()
        arrivals = threading.Thread(target=open_silent,
                                    args=(port, 0, silent, stop, args.rate), daemon=True)
        arrivals.start()
        waits, timeouts, starts = [], 0, []
        t_probe = time.monotonic()
        for _ in range(args.probes):
            starts.append(time.monotonic() - t_open)
            w = probe(port, args.probe_timeout)
            if w is None:
                timeouts += 1
                waits.append(args.probe_timeout)
            else:
                waits.append(w)
            time.sleep(args.interval)
        slowest = sorted(zip(waits, starts), reverse=True)[:5]
        stop.set()
        arrivals.join()
        probe_s = time.monotonic() - t_probe
        srv.stdin.write("\n")
        srv.stdin.flush()
        stats = {}
        for line in srv.stdout:
            if line.startswith("STATS "):
                stats = json.loads(line[6:])
                break
        waits.sort()
        ms = [w * 1000 for w in waits]
        p99 = ms[min(len(ms) - 1, int(round(0.99 * (len(ms) - 1))))]
        print(f"iocp under Wine (CPython {args.python_version}), first_data=True, default options")
        print(f"silent: {args.silent} opened in {opened:.2f} s, then {args.rate:g}/s for "
              f"{probe_s:.1f} s ({len(silent)} in all)")
        print(f"legit clients: {len(ms)}, p50 {statistics.median(ms):.1f} ms, p99 {p99:.1f} ms, "
              f"max {ms[-1]:.1f} ms, timeouts {timeouts}")
        print("slowest legit clients (wait ms @ started s after the first silent one):",
              ", ".join(f"{w * 1000:.0f} @ {t:.1f}" for w, t in slowest))
        keep = ("accepted", "first_data_timeouts", "connections", "internal_errors")
        print("server stats:", {k: stats.get(k) for k in keep})
        for s in silent:
            s.close()
    finally:
        if srv.poll() is None:
            try:
                srv.wait(timeout=60)
            except subprocess.TimeoutExpired:
                srv.kill()


if __name__ == "__main__":
    main()
