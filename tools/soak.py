"""Soak: churn connections against an iocpx echo server for a number of
minutes and report the server's RSS, open descriptors and live I/O contexts
at the start and the end. They must be flat.

Needs: iocpx installed (or PYTHONPATH=src after an in-place build).
Run:   python tools/soak.py --minutes 10 [--backend epoll] [--concurrency 200]
The load (connect, send, verify the echo, close; plus a set of long-lived
connections that keep echoing) runs in a subprocess, so the figures are the
server's own. Exit status 0 when flat (RSS growth under 4 MiB or 5%, same
descriptor count, live contexts back to the baseline), 1 otherwise.
--faults RATE (a build with the failure points, IOCPX_FAULTS=1; see
docs/robustness.md) makes every failure point fail that fraction of its calls
from the start sample on: clients then see failures, which are counted, and
the figures must stay flat all the same.
"""
import argparse
import os
import subprocess
import sys
import textwrap
import time

import iocpx

CLIENT = textwrap.dedent("""
    import asyncio, os, sys, time
    port, conc, seconds = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
    done = bad = 0
    async def churn(deadline):
        global done, bad
        while time.monotonic() < deadline:
            try:
                r, w = await asyncio.open_connection("127.0.0.1", port)
                msg = os.urandom(64 + done % 4000)
                w.write(msg)
                if await asyncio.wait_for(r.readexactly(len(msg)), 30) != msg:
                    bad += 1
                w.close()
                await w.wait_closed()
                done += 1
            except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError):
                bad += 1
    async def steady(deadline):
        global bad
        while time.monotonic() < deadline:      # reconnects after a failure (--faults)
            try:
                r, w = await asyncio.open_connection("127.0.0.1", port)
                while time.monotonic() < deadline:
                    w.write(b"x" * 512)
                    await asyncio.wait_for(r.readexactly(512), 30)
                    await asyncio.sleep(0.01)
                w.close()
            except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError):
                bad += 1
                await asyncio.sleep(0.1)
    async def main():
        deadline = time.monotonic() + seconds
        await asyncio.gather(*[churn(deadline) for _ in range(conc)],
                             *[steady(deadline) for _ in range(50)])
        print(done, bad, flush=True)
    asyncio.run(main())
""")


def rss_kib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def fds():
    return len(os.listdir("/proc/self/fd"))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=10)
    ap.add_argument("--backend", default=None)
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--concurrency", type=int, default=200)
    ap.add_argument("--warmup", type=float, default=15, help="seconds before the start sample")
    ap.add_argument("--faults", type=float, default=0, metavar="RATE",
                    help="fail this fraction of every failure point's calls (IOCPX_FAULTS=1 builds)")
    ap.add_argument("--seed", type=int, default=1, help="the random failures' seed")
    args = ap.parse_args()
    faults = None
    if args.faults:
        import iocpx._faults as faults      # ImportError (saying how to build) elsewhere
    seconds = args.minutes * 60
    live0, fds0 = iocpx.live_io(), fds()
    eng = iocpx.Engine(workers=args.workers, backend=args.backend)
    lst = eng.listen(("127.0.0.1", 0), on_recv=lambda c, d: c.send(d), backlog=4096)
    print(f"soak: backend {eng.backend}, {eng.workers} workers, {args.minutes:g} min, "
          f"{args.concurrency} churning clients + 50 steady", flush=True)
    client = subprocess.Popen([sys.executable, "-c", CLIENT, str(lst.address[1]),
                               str(args.concurrency), str(seconds)], stdout=subprocess.PIPE, text=True)
    t0 = time.monotonic()
    time.sleep(min(args.warmup, seconds / 4))
    start = (rss_kib(), fds(), eng.stats()["accepted"])
    print(f"start  t={time.monotonic() - t0:6.0f}s rss={start[0]} KiB fds={start[1]} "
          f"accepted={start[2]}", flush=True)
    if faults is not None:
        faults.reset()
        faults.arm_random(args.seed, args.faults)
    while client.poll() is None:
        time.sleep(min(30, max(1, seconds / 10)))
        st = eng.stats()
        print(f"       t={time.monotonic() - t0:6.0f}s rss={rss_kib()} KiB fds={fds()} "
              f"open={st['connections']} accepted={st['accepted']} live_io={st['live_io']}", flush=True)
    done, bad = (int(x) for x in client.stdout.read().split())
    if faults is not None:
        failed = {p: faults.counts(p)[1] for p in faults.points() if faults.counts(p)[1]}
        faults.reset()
        print(f"faults injected: {sum(failed.values())} {failed}")
    time.sleep(1)
    end = (rss_kib(), fds(), eng.stats()["accepted"])
    print(f"end    t={time.monotonic() - t0:6.0f}s rss={end[0]} KiB fds={end[1]} accepted={end[2]}")
    eng.close(timeout=60)
    live_end = iocpx.live_io()
    growth = end[0] - start[0]
    flat = (growth < 4096 or growth < start[0] * 0.05) and end[1] <= start[1] and live_end == live0
    print(f"cycles {done}, failed {bad}; RSS {start[0]} -> {end[0]} KiB ({growth:+d}), "
          f"descriptors {start[1]} -> {end[1]} (baseline {fds0}), live I/O after close {live_end}")
    ok = flat and (bad == 0 or faults is not None)     # injected faults fail some clients
    print("soak: FLAT" if ok else "soak: NOT FLAT" if not flat else "soak: ERRORS")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
