"""Side-by-side echo benchmark under Wine: iocpx's iocp backend against
asyncio's ProactorEventLoop (CPython's own IOCP wrapper), same workload.

What it shows: server CPU per round trip (the figure every iocpx benchmark
compares: the server's utime + stime over the measured window, divided by
the round trips; see docs/performance.md) and round trips per second, for
each server, and the ratio iocpx / asyncio. Wine is slow per I/O, so only the ratio means
anything; absolute numbers are not Windows numbers.

It runs inside the Windows interpreter, so it cannot use bench/harness.py
(Linux /proc, taskset): it is its own load generator and report.

What it needs: the Windows interpreter with iocpx installed (build/windows/python after
`bash .ci/windows.sh`, which lists the wheel in python311._pth).
How to run it (from the repository root, on Linux):
    WINEPREFIX=$PWD/build/windows/wineprefix WINEDEBUG=-all \\
        wine build/windows/python/python.exe bench/wine_echo.py \\
        --connections 50 --size 64 --duration 5 2>&1 | cat
Each server runs in its own process (this script, `server` mode); the load
generator is this process: `connections` sockets, one message in flight each,
driven by select().
"""
import argparse
import os
import select
import socket
import subprocess
import sys
import time


def cpu_seconds():
    """This process's CPU time (user + system). Under Wine, GetProcessTimes
    may report nothing, so the Linux view of the process (Z:/proc/self/stat)
    is tried first."""
    try:
        with open("Z:/proc/self/stat" if sys.platform == "win32" else "/proc/self/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        tck = 100.0     # USER_HZ on Linux
        return (int(fields[11]) + int(fields[12])) / tck
    except (OSError, IndexError, ValueError):
        return time.process_time()


# ---- servers -------------------------------------------------------------------

def serve_iocpx(workers):
    import iocpx
    eng = iocpx.Engine(workers=workers, backend="iocp")
    lst = eng.listen(("127.0.0.1", 0), on_recv=lambda c, d: c.send(d), accepts=64)
    return lst.address[1], eng.close


def serve_asyncio(workers):
    import asyncio
    import threading
    loop = asyncio.ProactorEventLoop()

    class Echo(asyncio.Protocol):
        def connection_made(self, transport):
            self.t = transport
            sock = transport.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def data_received(self, data):
            self.t.write(data)

    srv = loop.run_until_complete(loop.create_server(Echo, "127.0.0.1", 0))
    port = srv.sockets[0].getsockname()[1]
    th = threading.Thread(target=loop.run_forever, daemon=True)
    th.start()

    def stop():
        async def shut():
            srv.close()
            await srv.wait_closed()
            loop.stop()
        asyncio.run_coroutine_threadsafe(shut(), loop)
        th.join(10)
    return port, stop


def server_main(impl, workers):
    port, stop = (serve_iocpx if impl == "iocpx" else serve_asyncio)(workers)
    print(f"READY {port}", flush=True)
    sys.stdin.readline()            # "go": the measured run starts (after a warm-up)
    c0 = cpu_seconds()
    sys.stdin.readline()            # "stop": it is over
    c1 = cpu_seconds()
    print(f"CPU {c1 - c0:.6f}", flush=True)
    stop()


# ---- load generator --------------------------------------------------------------

def load(port, conns, size, duration):
    """Ping-pong on every connection for `duration` s; returns round trips."""
    msg = os.urandom(size)
    socks = []
    for _ in range(conns):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.setblocking(False)
        socks.append(s)
    pending = {s: 0 for s in socks}
    for s in socks:
        s.send(msg)
    trips = 0
    end = time.monotonic() + duration
    while time.monotonic() < end:
        r, _, _ = select.select(socks, [], [], 1.0)
        for s in r:
            data = s.recv(65536)
            if not data:
                raise RuntimeError("server closed a connection")
            pending[s] += len(data)
            while pending[s] >= size:
                pending[s] -= size
                trips += 1
                s.send(msg)
    for s in socks:
        s.close()
    return trips


def run_one(impl, args):
    p = subprocess.Popen([sys.executable, os.path.abspath(__file__), "server", impl,
                          "--workers", str(args.workers)],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        line = p.stdout.readline()
        if not line.startswith("READY"):
            raise RuntimeError(f"{impl} server did not start: {line!r}")
        port = int(line.split()[1])
        load(port, args.connections, args.size, 1.0)        # warm-up
        t0 = time.monotonic()
        p.stdin.write("go\n")
        p.stdin.flush()
        trips = load(port, args.connections, args.size, args.duration)
        wall = time.monotonic() - t0
        p.stdin.write("stop\n")
        p.stdin.flush()
        line = p.stdout.readline()
        cpu = float(line.split()[1]) if line.startswith("CPU") else float("nan")
    finally:
        try:
            p.stdin.close()
        except OSError:
            pass
        p.wait(30)
    return trips, wall, cpu


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = sys.argv[1:2] == ["server"]
    if sub:
        ap.add_argument("mode")
        ap.add_argument("impl", choices=["iocpx", "asyncio"])
    ap.add_argument("--connections", type=int, default=50)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    if sub:
        return server_main(args.impl, args.workers)
    print(f"echo {args.connections} connections x {args.size} B, {args.duration:g} s, "
          f"{sys.platform} Python {sys.version.split()[0]}")
    res = {}
    for impl in ("iocpx", "asyncio"):
        trips, wall, cpu = run_one(impl, args)
        res[impl] = (trips / wall, cpu * 1e6 / max(trips, 1))
        print(f"{impl:8s} {trips / wall:10.0f} round trips/s   "
              f"server CPU {res[impl][1]:8.1f} us/round trip")
    print(f"ratio iocpx/asyncio: throughput {res['iocpx'][0] / res['asyncio'][0]:.2f}x, "
          f"server CPU per round trip {res['iocpx'][1] / res['asyncio'][1]:.2f}x (lower is better)")


if __name__ == "__main__":
    main()
