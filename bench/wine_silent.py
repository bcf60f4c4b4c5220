"""Silent clients against the iocp backend under Wine: bench/silent_clients.py's scenario for
AcceptEx.

What it shows: a first-data echo server (default options: first_data=True, first_data_timeout
10 s, the default accepts) runs in the embeddable Windows CPython under Wine; silent_clients.py's
holder (a Linux process) opens SILENT connections that never send, then RATE more per second,
and meanwhile PROBES legit clients connect one by one, send "legit" and time their echo.
Without the AcceptEx guard each silent client holds an accept slot until the server gives up on
it, and the legit clients queue behind them. It reports the legit wait (p50/p99/max, timeouts)
and the server's counters (first-data timeouts, accepts, connections held at the stop and 12 s
later). Wine is
slow per I/O: the figures are Wine's, not Windows'; docs/first-data.md says what to expect on
Windows. It prints its report (the runs so far are in bench/results/wine-silent-2026-11-29.md).

What it needs: a Windows build and its interpreter, as `bash .ci/windows.sh` leaves them (the
folder is IOCPX_WIN_BUILD, default build/windows): BUILD/py/cp3X/python.exe with iocpx importable, and
BUILD/wineprefix. How to run it:

    python bench/wine_silent.py --build /tmp/winbuild --python-version 3.9
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import harness as H             # bench/harness.py: spawning and reading children
import silent_clients as S      # the holder of silent connections and the legit probe

SERVER = r"""
import json, sys, iocpx
eng = iocpx.Engine(backend="iocp")
def on_accept(conn, data):
    conn.send(data)
lst = eng.listen(("127.0.0.1", 0), first_data=True, on_accept=on_accept,
                 on_recv=lambda c, d: c.send(d), backlog=4096)
print("PORT", lst.address[1], flush=True)
for line in sys.stdin:
    s = eng.stats()
    print("STATS " + json.dumps({k: v for k, v in s.items() if isinstance(v, (int, float, str))}),
          flush=True)
    if line.strip() == "EXIT":
        break
eng.close(timeout=60)
"""


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--build", default=os.environ.get("IOCPX_WIN_BUILD", "build/windows"))
    ap.add_argument("--python-version", default="3.11")
    ap.add_argument("--silent", type=int, default=5000, help="silent connections opened first")
    ap.add_argument("--rate", type=float, default=500.0, help="new silent ones per second after")
    ap.add_argument("--max-silent", type=int, default=0,
                    help="the holder opens no more than this many in all (default: as many as "
                         "the arrivals at RATE during the probes need)")
    ap.add_argument("--probes", type=int, default=150)
    ap.add_argument("--interval", type=float, default=0.1, help="seconds between probes")
    ap.add_argument("--probe-timeout", type=float, default=10.0)
    ap.add_argument("--timeline", action="store_true",
                    help="print every legit client's start and wait")
    args = ap.parse_args()

    if not args.max_silent:
        args.max_silent = int(args.silent + args.rate * (args.probes * args.interval + 10))
    v = args.python_version.replace(".", "")
    py = os.path.join(args.build, "py", f"cp{v}", "python.exe")
    if not os.path.exists(py):
        sys.exit(f"no Windows interpreter at {py}: run `bash .ci/windows.sh` first")
    env = dict(os.environ, WINEPREFIX=os.path.join(os.path.abspath(args.build), "wineprefix"),
               WINEDEBUG="-all")
    # python.exe under Wine wants pipes (or /dev/null) as its standard handles, not files
    srv = H.spawn(["wine", py, "-c", SERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                  stderr=subprocess.STDOUT, env=env)
    try:
        line = H.read_line(srv, time.monotonic() + 60)
        if not line or not line.startswith("PORT"):
            sys.exit(f"the server did not start: {line!r}")
        port = int(line.split()[1])

        def server_stats(cmd="STATS"):
            srv.stdin.write((cmd + "\n").encode())
            srv.stdin.flush()
            deadline = time.monotonic() + 60
            while True:
                out = H.read_line(srv, deadline)
                if out is None:
                    return {}
                if out.startswith("STATS "):
                    return json.loads(out[6:])

        hold = H.spawn([sys.executable, os.path.abspath(S.__file__), "--holder", "127.0.0.1",
                        str(port), str(args.max_silent)],
                       stdin=subprocess.PIPE, stdout=subprocess.PIPE, start_new_session=True)
        t_open = time.monotonic()
        line = S.holder_cmd(hold, f"OPEN {args.silent}", 60 + args.silent / 100)
        if not line or not line.startswith("OK "):
            sys.exit(f"silent connections: {line or 'no answer in time'}")
        opened, open_s = int(line.split()[1]), float(line.split()[2])
        S.holder_cmd(hold, f"RATE {args.rate:g}", 10)
        t_rate = time.monotonic()
        waits, starts, timeouts = [], [], 0
        next_at = time.monotonic()
        for i in range(args.probes):
            time.sleep(max(0.0, next_at - time.monotonic()))
            next_at = time.monotonic() + args.interval
            starts.append(time.monotonic() - t_open)
            w = S.probe("127.0.0.1", port, i, args.probe_timeout)
            if w is None:
                timeouts += 1
                w = args.probe_timeout
            waits.append(w)
        S.holder_cmd(hold, "RATE 0", 10)
        arrival_s = time.monotonic() - t_rate
        count = (S.holder_cmd(hold, "COUNT", 10) or "").split() + ["?"] * 3
        stats = server_stats()
        held_at_stop = stats.get("connections")
        # what is left once every silent client has had first_data_timeout (10 s) and a margin
        time.sleep(12.0)
        count_later = (S.holder_cmd(hold, "COUNT", 10) or "").split() + ["?"] * 3
        stats_later = server_stats("EXIT")
        hold.stdin.write(b"EXIT\n")
        hold.stdin.flush()

        ms = sorted(w * 1000 for w in waits)
        p99 = ms[min(len(ms) - 1, int(round(0.99 * (len(ms) - 1))))]
        print(f"iocp under Wine (CPython {args.python_version}), first_data=True, default options")
        print(f"silent: {opened} established in {open_s:.2f} s, then {args.rate:g}/s for "
              f"{arrival_s:.1f} s; the holder then had {count[1]} open, "
              f"{count[2]} closed by the server after p50 {count[4]} s, p99 {count[5]} s, "
              f"max {count[6]} s")
        print(f"legit clients: {len(ms)}, p50 {statistics.median(ms):.1f} ms, p99 {p99:.1f} ms, "
              f"max {ms[-1]:.1f} ms, timeouts {timeouts}")
        slowest = sorted(zip(waits, starts), reverse=True)[:5]
        print("slowest legit clients (wait ms @ started s after the first silent one):",
              ", ".join(f"{w * 1000:.0f} @ {t:.1f}" for w, t in slowest))
        if args.timeline:
            for t, w in zip(starts, waits):
                print(f"  legit at {t:6.2f} s: {w * 1000:8.1f} ms")
        keep = ("accepted", "first_data_timeouts", "connections", "internal_errors")
        print("server stats at the stop:", {k: stats.get(k) for k in keep})
        print("12 s later:", {k: stats_later.get(k) for k in keep},
              f"(held by the server: {held_at_stop} -> {stats_later.get('connections')}; "
              f"the holder: {count_later[1]} open; closed after p50 {count_later[4]} s, "
              f"p99 {count_later[5]} s, max {count_later[6]} s)")
    finally:
        if srv.poll() is None:
            try:
                srv.wait(timeout=60)
            except subprocess.TimeoutExpired:
                srv.kill()
        H.kill_children()


if __name__ == "__main__":
    main()
