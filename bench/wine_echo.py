"""Side-by-side echo benchmark under Wine: iocpx's iocp backend against
asyncio's ProactorEventLoop (CPython's own IOCP wrapper), same workload.
The servers (--servers): `iocpx` (the callback API, Engine), `asyncio` (an
asyncio Protocol echo on ProactorEventLoop), `iocpx-loop` (the same Protocol
on iocpx.new_event_loop("iocp")) and `winloop` (the same Protocol on
winloop, uvloop's Windows port, where it is importable: its win_amd64 wheel
unpacked into a folder the interpreter's ._pth lists).

Server CPU is the server process's, plus the wineserver's over the same
window (Wine's kernel work happens there; the load generator's share of it is
the same for every server), both read from /proc through Wine's Z: drive.

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


IMPLS = ["iocpx", "asyncio", "iocpx-loop", "winloop"]


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


def wineserver_cpu():
    """CPU seconds of the wineserver processes (0.0 where none is visible)."""
    total = 0.0
    try:
        pids = [d for d in os.listdir("Z:/proc") if d.isdigit()]
    except OSError:
        return 0.0
    for pid in pids:
        try:
            with open(f"Z:/proc/{pid}/stat") as f:
                line = f.read()
        except OSError:
            continue
        if "(wineserver" not in line:        # wineserver, wineserver64
            continue
        fields = line.rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / 100.0
    return total


def serve_asyncio(workers, impl="asyncio"):
    import asyncio
    import threading
    if impl == "iocpx-loop":
        import iocpx
        loop = iocpx.new_event_loop("iocp")
    elif impl == "winloop":
        import winloop
        loop = winloop.new_event_loop()
    else:
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
    port, stop = serve_iocpx(workers) if impl == "iocpx" else serve_asyncio(workers, impl)
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
        w0 = wineserver_cpu()
        p.stdin.write("go\n")
        p.stdin.flush()
        trips = load(port, args.connections, args.size, args.duration)
        wall = time.monotonic() - t0
        p.stdin.write("stop\n")
        p.stdin.flush()
        line = p.stdout.readline()
        w1 = wineserver_cpu()
        cpu = float(line.split()[1]) if line.startswith("CPU") else float("nan")
    finally:
        try:
            p.stdin.close()
        except OSError:
            pass
        p.wait(30)
    return trips, wall, cpu, w1 - w0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = sys.argv[1:2] == ["server"]
    if sub:
        ap.add_argument("mode")
        ap.add_argument("impl", choices=IMPLS)
    ap.add_argument("--connections", type=int, default=50)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--servers", default="iocpx,asyncio", help=f"some of {','.join(IMPLS)}")
    ap.add_argument("--repeat", type=int, default=1, help="interleaved rounds; the median is kept")
    args = ap.parse_args()
    if sub:
        return server_main(args.impl, args.workers)
    print(f"echo {args.connections} connections x {args.size} B, {args.duration:g} s, "
          f"{sys.platform} Python {sys.version.split()[0]}")
    impls = args.servers.split(",")
    runs = {impl: [] for impl in impls}
    for rnd in range(args.repeat):
        for impl in (impls if rnd % 2 == 0 else impls[::-1]):
            trips, wall, cpu, wcpu = run_one(impl, args)
            n = max(trips, 1)
            runs[impl].append((trips / wall, cpu * 1e6 / n, (cpu + wcpu) * 1e6 / n))
    res = {}
    for impl in impls:
        res[impl] = tuple(sorted(r[i] for r in runs[impl])[len(runs[impl]) // 2] for i in range(3))
        print(f"{impl:10s} {res[impl][0]:8.0f} round trips/s   server CPU {res[impl][1]:7.1f} "
              f"us/round trip ({res[impl][2]:7.1f} with the wineserver's)")
    base = "asyncio" if "asyncio" in res else impls[-1]
    for impl in impls:
        if impl != base:
            print(f"ratio {impl}/{base}: round trips per CPU second {res[base][1] / res[impl][1]:.2f}x "
                  f"(server process), {res[base][2] / res[impl][2]:.2f}x (with the wineserver); "
                  "higher is better")


if __name__ == "__main__":
    main()
