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
                                                         # -> bench/results/timers-DATE.md
    python bench/timers.py --timers 10000 --spread 0.2 --repeat 1
    python bench/timers.py --impls iocpx-w1,uvloop --out /tmp/timers.md

(An implementation that cannot be imported gets a row saying why.)
"""

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import time

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, BENCH_DIR)
import harness as H     # noqa: E402  (child_env, machine_meta, report_head, write_report)

RESULTS_DIR = os.path.join(BENCH_DIR, "results")

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

def run(impl, args):
    cmd = [sys.executable, os.path.abspath(__file__), "--child", impl, "--timers",
           str(args.timers), "--spread", str(args.spread)]
    if shutil.which("taskset"):
        cmd = ["taskset", "-c", H.SERVER_CPU] + cmd
    r = subprocess.run(cmd, env=H.child_env(), capture_output=True, text=True,
                       timeout=60 + 10 * args.spread)
    if r.returncode != 0:
        lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
        return {"error": lines[-1] if lines else f"exit status {r.returncode}"}
    return json.loads(r.stdout.strip().splitlines()[-1])


def render(rows, info, args):
    out = H.report_head("iocpx timers benchmark", info)
    out.append(f"- method: {args.timers:,} timers, delays uniform in [0, {args.spread:g}) s "
               f"(seeded), callback counts and notes its lateness; process CPU (all threads) "
               f"from the first call_later to the last callback; each run a fresh process "
               f"pinned to CPU {H.SERVER_CPU}; median of {args.repeat} run(s)")
    out.append(f"- command: `{' '.join(['python', 'bench/timers.py'] + sys.argv[1:])}`")
    out.append("")
    out.append("| implementation | **CPU us per call_later+fire** | vs uvloop | call_later alone us "
               "| late p50 ms | late p99 ms | late max ms | early | runs (us) |")
    out.append("|---|---:|---:|---:|---:|---:|---:|---:|---|")
    base = next((r for r in rows if r["impl"] == "uvloop" and "error" not in r), None)
    for r in rows:
        if "error" in r:
            out.append(f"| {IMPLS[r['impl']]}: {r['error']} | - | - | - | - | - | - | - | - |")
            continue
        per = r["cpu_s"] * 1e6 / args.timers
        ratio = per / (base["cpu_s"] * 1e6 / args.timers) if base else None
        out.append(f"| {IMPLS[r['impl']]} | **{per:.2f}** | {H.fmt(ratio, '.2f')}"
                   f"{'' if ratio is None else 'x'} "
                   f"| {r['schedule_cpu_s'] * 1e6 / args.timers:.2f} "
                   f"| {r['late_p50_ms']:.2f} | {r['late_p99_ms']:.2f} | {r['late_max_ms']:.2f} "
                   f"| {r['early']} | {', '.join(f'{x:.2f}' for x in r['runs_us'])} |")
    out += ["", "early = callbacks that ran before their deadline on time.monotonic() (uvloop "
                "keeps its loop time in whole milliseconds: its early ones are less than 1 ms "
                "early). Lateness is from the deadline to the callback's start; it includes the "
                "time the call_later calls themselves take: they hold uvloop's and "
                "asyncio's loop (timers due meanwhile wait), while iocpx's worker fires timers "
                "between them (the two share the GIL)."]
    return "\n".join(out) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--timers", type=int, default=100_000)
    ap.add_argument("--spread", type=float, default=1.0, help="delays in [0, SPREAD) s")
    ap.add_argument("--impls", default=",".join(IMPLS), help="comma-separated: " + ", ".join(IMPLS))
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--seed", type=int, default=20261130)
    ap.add_argument("--out", help="write the Markdown report (and its .json) here instead of "
                                  "bench/results/timers-DATE.md")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.timers, args.spread, args.seed)))
        return 0
    impls = [i.strip() for i in args.impls.split(",") if i.strip()]
    for i in impls:
        if i not in IMPLS:
            ap.error(f"unknown implementation {i!r}; known: {', '.join(IMPLS)}")
    rows = []
    for impl in impls:
        runs = []
        for k in range(args.repeat):
            print(f"running {impl} ({k + 1}/{args.repeat}) ...", file=sys.stderr, flush=True)
            H.wait_for_quiet(10)
            r = run(impl, args)
            if "error" in r:
                runs = [r]
                break
            runs.append(r)
        if "error" in runs[0]:
            rows.append({"impl": impl, "error": runs[0]["error"]})
            continue
        runs.sort(key=lambda r: r["cpu_s"])
        best = dict(runs[(len(runs) - 1) // 2])
        best["impl"] = impl
        best["runs_us"] = [r["cpu_s"] * 1e6 / args.timers for r in runs]
        rows.append(best)
    meta = H.machine_meta()
    report = render(rows, meta, args)
    H.write_report(report, {"meta": meta, "argv": sys.argv[1:], "rows": rows}, RESULTS_DIR,
                   "timers", args.out)
    return 0 if all("error" not in r for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
