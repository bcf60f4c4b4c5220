"""Timer benchmark: CPU cost per call_later + fire for 100,000 timers, iocpx's Engine.call_later
against uvloop's (and asyncio's) loop.call_later, side by side.

What it shows: for each implementation, the process CPU time (all threads: utime + stime) from
just before the first call_later to just after the last callback ran, divided by the number of
timers: **CPU microseconds per call_later + fire**, with its ratio to uvloop; the scheduling
part alone (the call_later loop) per timer; and how late the callbacks ran after their
deadlines (p50 / p99 / max, ms). Every timer's delay is drawn at random (seeded, the same for
every implementation) from [0, SPREAD) seconds, so the heap works and the loop wakes up many
times; the callback only counts and notes its lateness. Each run is a fresh subprocess pinned
to CPU 0; --repeat N reports the run with the median cost.

What it needs: Linux (taskset from util-linux for the pinning), Python 3.9+; `pip install
uvloop` for the uvloop row; an importable iocpx (normally the in-place build in src/iocpx).

How to run it, from the repo root:

    python bench/timers.py                               # 100,000 timers over 1 s, 3 runs each
    python bench/timers.py --timers 10000 --spread 0.2 --repeat 1
    python bench/timers.py --impls iocpx-w1,uvloop --out /tmp/timers.md

It writes bench/results/timers-YYYY-MM-DD.md with its .json and chart. An implementation that
cannot be imported gets a row saying why.
"""

import json
import os
import random
import subprocess
import sys
import time

import harness as H

NAME, TITLE = "timers", "iocpx timers benchmark"

IMPLS = {
    "iocpx-w1": "iocpx, workers=1 (io_uring)",
    "iocpx-epoll-w1": "iocpx, workers=1 (epoll)",
    "iocpx-default": "iocpx, default workers (io_uring)",
    "uvloop": "uvloop",
    "asyncio": "asyncio",
}


# ---- one run, in a child process -------------------------------------------------------

def child(impl, n, spread, seed):
    rnd = random.Random(seed)
    delays = [rnd.random() * spread for _ in range(n)]
    late = [0.0] * n
    mono = time.monotonic

    if impl.startswith("iocpx"):
        import threading
        import iocpx
        workers = None if impl == "iocpx-default" else 1
        backend = "epoll" if "epoll" in impl else "io_uring"
        eng = iocpx.Engine(workers=workers, backend=backend)
        done = threading.Event()
        count = [0]

        def fire(i, due):
            late[i] = mono() - due
            count[0] += 1
            if count[0] == n:
                done.set()

        call_later = eng.call_later
        time.sleep(0.2)                 # the workers are up and idle
        c0, w0 = time.process_time(), mono()
        for i, d in enumerate(delays):
            call_later(d, fire, i, mono() + d)
        c1 = time.process_time()
        done.wait()
        c2, w2 = time.process_time(), mono()
        eng.close()
    else:
        import asyncio
        if impl == "uvloop":
            import uvloop
            loop = uvloop.new_event_loop()
        else:
            loop = asyncio.new_event_loop()
        fut = loop.create_future()
        count = [0]

        def fire(i, due):
            late[i] = mono() - due
            count[0] += 1
            if count[0] == n:
                fut.set_result(None)

        marks = {}

        async def main():
            await asyncio.sleep(0.2)
            call_later = loop.call_later
            marks["c0"], marks["w0"] = time.process_time(), mono()
            for i, d in enumerate(delays):
                call_later(d, fire, i, mono() + d)
            marks["c1"] = time.process_time()
            await fut
            marks["c2"], marks["w2"] = time.process_time(), mono()

        loop.run_until_complete(main())
        loop.close()
        c0, c1, c2, w0, w2 = marks["c0"], marks["c1"], marks["c2"], marks["w0"], marks["w2"]
    late.sort()
    return {"cpu_s": c2 - c0, "schedule_cpu_s": c1 - c0, "wall_s": w2 - w0,
            "late_p50_ms": late[n // 2] * 1e3, "late_p99_ms": late[int(n * 0.99)] * 1e3,
            "late_max_ms": late[-1] * 1e3, "early": sum(1 for x in late if x < -1e-6)}


# ---- the driver ------------------------------------------------------------------------

def add_args(ap):
    ap.add_argument("--timers", type=int, default=100_000)
    ap.add_argument("--spread", type=float, default=1.0, help="delays in [0, SPREAD) s")
    ap.add_argument("--impls", type=H.str_list, default=list(IMPLS),
                    help="comma-separated: " + ", ".join(IMPLS))
    ap.add_argument("--seed", type=int, default=20261130)
    ap.set_defaults(repeat=3)


def measure(row, impl, a):
    """One run in a fresh process pinned to the server CPU."""
    cmd = H.pinned(H.SERVER_CPU, [sys.executable, os.path.abspath(__file__), "--child", impl.id,
                                  str(a.timers), str(a.spread), str(a.seed)])
    r = subprocess.run(cmd, env=H.child_env(), capture_output=True, text=True,
                       timeout=60 + 10 * a.spread)
    if r.returncode != 0:
        lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
        return {"error": lines[-1] if lines else f"exit status {r.returncode}"}
    res = json.loads(r.stdout.strip().splitlines()[-1])
    res["us_per_timer"] = res["cpu_s"] * 1e6 / a.timers
    res["schedule_us_per_timer"] = res["schedule_cpu_s"] * 1e6 / a.timers
    return res


def run(a, meta):
    impls = [H.Peer(i, IMPLS[i], [], kind=i.split("-")[0]) for i in a.impls]
    return H.sweep([{"timers": a.timers, "spread": a.spread}], impls,
                   lambda row, p: measure(row, p, a), a, "us_per_timer",
                   lambda r: f"{r['us_per_timer']:.2f} CPU us per timer",
                   title=lambda row: "timers")


def section(rep, results, meta):
    r0 = results[0]
    rep.section("Timers", f"{r0['timers']:,} timers, delays uniform in [0, {r0['spread']:g}) s "
                "(seeded), the callback counts and notes its lateness; process CPU (all "
                "threads) from the first call_later to the last callback, in a fresh process "
                "pinned to CPU 0.")
    base = H.find(results, "uvloop")
    body = []
    for r in results:
        if "error" in r:
            body.append([r["label"], r["error"]])
            continue
        body.append([r["label"], f"**{r['us_per_timer']:.2f}**",
                     H.fmt(H.ratio(r["us_per_timer"], base and base["us_per_timer"]), ".2f"),
                     f"{r['schedule_us_per_timer']:.2f}", f"{r['late_p50_ms']:.2f}",
                     f"{r['late_p99_ms']:.2f}", f"{r['late_max_ms']:.2f}", r["early"],
                     ", ".join(f"{x:.2f}" for x in r.get("runs_us_per_timer", []))])
    rep.table(["implementation", "**CPU us per call_later+fire**", "vs uvloop",
               "call_later alone us", "late p50 ms", "late p99 ms", "late max ms", "early",
               "runs (us)"], body, right=range(1, 8))
    rep.note("early = callbacks that ran before their deadline on time.monotonic() (uvloop keeps "
             "its loop time in whole milliseconds: its early ones are less than 1 ms early). "
             "Lateness is from the deadline to the callback's start; it includes the time the "
             "call_later calls themselves take: they hold uvloop's and asyncio's loop (timers "
             "due meanwhile wait), while iocpx's worker fires timers between them (the two "
             "share the GIL).")
    charts(rep, results)


def charts(rep, results):
    ok = [r for r in results if "error" not in r]
    if ok:
        rep.bars("timers", "Timers: CPU per call_later + fire (lower is better)",
                 [r["label"] for r in ok], [("CPU us per timer", [r["us_per_timer"] for r in ok])],
                 "CPU us per call_later + fire", size=(9, 4.5))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        impl, n, spread, seed = sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])
        print(json.dumps(child(impl, n, spread, seed)))
        sys.exit(0)
    sys.exit(H.main(sys.modules[__name__]))
