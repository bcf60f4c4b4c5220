"""The asyncio loop's operating-system surface, side by side: iocpx.EventLoop
(io_uring, epoll) against uvloop and asyncio's own loop.

Rows (each loop runs every row in a fresh process, the loops interleaved,
--repeat rounds, the median kept):

  spawn       asyncio.create_subprocess_exec("/bin/true") + wait(), 20 at a time:
              the parent's CPU microseconds per process (children excluded), and
              wall microseconds per process
  pipe        a child writes --pipe-mib MiB of zeros to its stdout pipe, read through
              connect_read_pipe (the subprocess transport's pipe protocol): the
              parent's CPU microseconds per MiB, and MiB/s
  add_reader  a level-triggered add_reader() callback on one end of a socketpair
              that reads one byte and writes one to the other end: callbacks per
              CPU second of the process

The process is pinned to CPU 0 (taskset), the figure compared is CPU time
(the measuring process's CPU clock, all its threads). Needs Linux, uvloop
(`pip install uvloop`) and the in-place build. About 2 minutes.

    python bench/loop_os.py [--repeat 3] [--out bench/results/loop-os-DATE.md]
"""
import argparse
import asyncio
import datetime
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
LOOPS = ["iocpx-io_uring", "iocpx-epoll", "uvloop", "asyncio"]


def new_loop(name):
    if name.startswith("iocpx-"):
        import iocpx
        return iocpx.new_event_loop(name.split("-", 1)[1])
    if name == "uvloop":
        import uvloop
        return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def cpu():
    return time.process_time()          # CLOCK_PROCESS_CPUTIME_ID: this process, all threads


async def row_spawn(n):
    sem = asyncio.Semaphore(20)

    async def one():
        async with sem:
            p = await asyncio.create_subprocess_exec("/bin/true")
            await p.wait()
    await asyncio.gather(*(one() for _ in range(20)))     # warm-up
    c0, t0 = cpu(), time.perf_counter()
    await asyncio.gather(*(one() for _ in range(n)))
    c1, t1 = cpu(), time.perf_counter()
    return {"cpu_us": (c1 - c0) / n * 1e6, "wall_us": (t1 - t0) / n * 1e6}


async def row_pipe(mib):
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    got = [0]

    class Reader(asyncio.Protocol):
        def data_received(self, data):
            got[0] += len(data)

        def connection_lost(self, exc):
            if not done.done():
                done.set_result(None)

    proc = subprocess.Popen(["head", "-c", str(mib << 20), "/dev/zero"], stdout=subprocess.PIPE)
    c0, t0 = cpu(), time.perf_counter()
    transport, _ = await loop.connect_read_pipe(Reader, proc.stdout)
    await done
    c1, t1 = cpu(), time.perf_counter()
    transport.close()
    proc.wait()
    assert got[0] == mib << 20, got[0]
    return {"cpu_us_per_mib": (c1 - c0) / mib * 1e6, "mib_s": mib / (t1 - t0)}


async def row_add_reader(seconds):
    loop = asyncio.get_running_loop()
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    n = [0]
    stop = loop.create_future()

    def readable():
        a.recv(1)
        n[0] += 1
        if stop.done():
            return
        b.send(b"x")

    loop.add_reader(a.fileno(), readable)
    b.send(b"x")
    await asyncio.sleep(0.2)                    # warm-up
    c0, n0 = cpu(), n[0]
    await asyncio.sleep(seconds)
    c1, n1 = cpu(), n[0]
    stop.set_result(None)
    loop.remove_reader(a.fileno())
    a.close()
    b.close()
    return {"callbacks_per_cpu_s": (n1 - n0) / (c1 - c0)}


def one(loopname, row, args):
    loop = new_loop(loopname)
    asyncio.set_event_loop(loop)
    try:
        if row == "spawn":
            r = loop.run_until_complete(row_spawn(args.spawn))
        elif row == "pipe":
            r = loop.run_until_complete(row_pipe(args.pipe_mib))
        else:
            r = loop.run_until_complete(row_add_reader(args.seconds))
    finally:
        loop.close()
    print(json.dumps(r))


def run_child(loopname, row, args):
    path = os.path.join(ROOT, "src") + os.pathsep + os.environ.get("PYTHONPATH", "")
    env = dict(os.environ, PYTHONPATH=path)
    cmd = ["taskset", "-c", "0", sys.executable, __file__, "--one", loopname, row,
           "--spawn", str(args.spawn), "--pipe-mib", str(args.pipe_mib), "--seconds", str(args.seconds)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        raise RuntimeError(f"{loopname} {row}: {out.stderr.strip()[-500:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


ROWS = {   # row -> (metric compared, lower is better, label, unit)
    "spawn": ("cpu_us", True, "spawn + wait, parent CPU per process", "µs"),
    "pipe": ("cpu_us_per_mib", True, "pipe read, CPU per MiB", "µs"),
    "add_reader": ("callbacks_per_cpu_s", False, "add_reader callbacks per CPU second", "/s"),
}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--one", nargs=2, metavar=("LOOP", "ROW"), help=argparse.SUPPRESS)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--spawn", type=int, default=500)
    ap.add_argument("--pipe-mib", type=int, default=512)
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--loops", default=",".join(LOOPS))
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if args.one:
        one(args.one[0], args.one[1], args)
        return
    loops = args.loops.split(",")
    res = {row: {lp: [] for lp in loops} for row in ROWS}
    for rnd in range(args.repeat):
        for row in ROWS:
            order = loops if rnd % 2 == 0 else loops[::-1]
            for lp in order:
                res[row][lp].append(run_child(lp, row, args))
                print(f"round {rnd + 1} {row:10s} {lp:15s} {res[row][lp][-1]}", flush=True)
    date = datetime.date.today().isoformat()
    lines = [f"# The loop's OS surface: subprocesses, pipes, add_reader ({date})", "",
             f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
             f"Linux {platform.release()}, CPython {platform.python_version()}; "
             f"median of {args.repeat} interleaved rounds, each loop in a fresh process pinned "
             "to CPU 0. The machine was shared with other jobs (builds, tests): ratios, "
             "measured side by side, are what the figures support.", "",
             "| row | " + " | ".join(loops) + " | iocpx-io_uring / uvloop | iocpx-epoll / uvloop |",
             "|---|" + "---:|" * (len(loops) + 2)]
    for row, (metric, lower, label, unit) in ROWS.items():
        med = {lp: statistics.median(r[metric] for r in res[row][lp]) for lp in loops}

        def ratio(lp, med=med, lower=lower):
            if "uvloop" not in med or lp not in med:
                return "-"
            # expressed as cost relative to uvloop: < 1 is better than uvloop
            r = med[lp] / med["uvloop"] if lower else med["uvloop"] / med[lp]
            return f"{r:.2f}x"
        cells = " | ".join(f"{med[lp]:,.0f} {unit}" for lp in loops)
        lines.append(f"| {label} | {cells} | {ratio('iocpx-io_uring')} | {ratio('iocpx-epoll')} |")
    lines += ["", "Ratios are cost relative to uvloop (CPU per operation; for add_reader, "
              "uvloop's rate over ours): below 1.00x is cheaper than uvloop. The goal is at "
              "most 0.90x.", ""]
    extra = {row: {lp: [r for r in res[row][lp]] for lp in loops} for row in ROWS}
    lines += ["Other figures (medians): "] + [
        f"- {row} {lp}: " + ", ".join(
            f"{k} {statistics.median(r[k] for r in extra[row][lp]):,.1f}" for k in extra[row][lp][0])
        for row in ROWS for lp in loops]
    text = "\n".join(lines) + "\n"
    out = args.out or os.path.join(HERE, "results", f"loop-os-{date}.md")
    with open(out, "w") as f:
        f.write(text)
    with open(out[:-3] + ".json", "w") as f:
        json.dump(res, f, indent=1)
    print(text)
    print("written:", out)


if __name__ == "__main__":
    main()
