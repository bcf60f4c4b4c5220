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

Under Wine (the Windows interpreter with the iocpx wheel, and winloop's wheel
unpacked beside it) the loops are iocpx on iocp, asyncio's ProactorEventLoop
and winloop; the child is the interpreter itself (`python -c pass`), the pipe
row reads a child's stdout through create_subprocess_exec, and add_reader is
compared with winloop only (the proactor has none); no pinning, and the
report is printed, not written:

    wine python.exe bench/loop_os.py --spawn 20 --pipe-mib 64 --repeat 3
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
WINDOWS = sys.platform == "win32"
LOOPS = (["iocpx-iocp", "asyncio", "winloop"] if WINDOWS
         else ["iocpx-io_uring", "iocpx-epoll", "uvloop", "asyncio"])
BASE = "asyncio" if WINDOWS else "uvloop"       # what the ratios compare with


def new_loop(name):
    if name.startswith("iocpx-"):
        import iocpx
        return iocpx.new_event_loop(name.split("-", 1)[1])
    if name == "uvloop":
        import uvloop
        return uvloop.new_event_loop()
    if name == "winloop":
        import winloop
        return winloop.new_event_loop()
    return asyncio.new_event_loop()         # on Windows: ProactorEventLoop


def cpu():
    return time.process_time()          # CLOCK_PROCESS_CPUTIME_ID: this process, all threads


async def row_spawn(n):
    sem = asyncio.Semaphore(20)

    child = [sys.executable, "-c", "pass"] if WINDOWS else ["/bin/true"]

    async def one():
        async with sem:
            p = await asyncio.create_subprocess_exec(*child)
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

    if WINDOWS:     # the pipe asyncio makes for a child (overlapped on the proactor's side)
        code = ("import sys\nb = bytes(1 << 20)\n"
                f"for _ in range({mib}): sys.stdout.buffer.write(b)\n")
        c0, t0 = cpu(), time.perf_counter()
        proc = await asyncio.create_subprocess_exec(sys.executable, "-c", code,
                                                    stdout=asyncio.subprocess.PIPE)
        while True:
            chunk = await proc.stdout.read(1 << 20)
            if not chunk:
                break
            got[0] += len(chunk)
        await proc.wait()
        c1, t1 = cpu(), time.perf_counter()
        assert got[0] == mib << 20, got[0]
        return {"cpu_us_per_mib": (c1 - c0) / mib * 1e6, "mib_s": mib / (t1 - t0)}
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
    pin = [] if WINDOWS else ["taskset", "-c", "0"]
    cmd = pin + [sys.executable, __file__, "--one", loopname, row,
           "--spawn", str(args.spawn), "--pipe-mib", str(args.pipe_mib), "--seconds", str(args.seconds)]
    if loopname == "asyncio" and row == "add_reader" and WINDOWS:
        return None                         # ProactorEventLoop has no add_reader
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
    ours = [lp for lp in loops if lp.startswith("iocpx-")]
    where = (f"Windows under Wine, CPython {platform.python_version()}; no pinning" if WINDOWS else
             f"Linux {platform.release()}, CPython {platform.python_version()}; each loop in a "
             "fresh process pinned to CPU 0")
    lines = [f"# The loop's OS surface: subprocesses, pipes, add_reader ({date})", "",
             f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
             f"{where}; median of {args.repeat} interleaved rounds. The machine was shared "
             "with other jobs (builds, tests): ratios, measured side by side, are what the "
             "figures support.", "",
             "| row | " + " | ".join(loops) + " | " + " | ".join(f"{lp} / base" for lp in ours)
             + " |",
             "|---|" + "---:|" * (len(loops) + len(ours))]
    for row, (metric, lower, label, unit) in ROWS.items():
        med = {lp: statistics.median(r[metric] for r in res[row][lp])
               for lp in loops if all(r is not None for r in res[row][lp])}
        base = BASE if BASE in med else "winloop" if "winloop" in med else None

        def ratio(lp, med=med, lower=lower, base=base):
            if base is None or lp not in med:
                return "-"
            # cost relative to the base: below 1 is cheaper than the base
            r = med[lp] / med[base] if lower else med[base] / med[lp]
            return f"{r:.2f}x ({base})"
        cells = " | ".join(f"{med[lp]:,.0f} {unit}" if lp in med else "-" for lp in loops)
        lines.append(f"| {label} | {cells} | " + " | ".join(ratio(lp) for lp in ours) + " |")
    lines += ["", "Ratios are cost relative to the loop named (CPU per operation; for "
              "add_reader, its rate over ours): below 1.00x is cheaper. The goal is at most "
              "0.90x uvloop on Linux, and on Windows ahead of ProactorEventLoop (for add_reader, "
              "which the proactor lacks, winloop).", "",
              "Other figures (medians):"]
    for row in ROWS:
        for lp in loops:
            runs = [r for r in res[row][lp] if r is not None]
            if runs:
                lines.append(f"- {row} {lp}: " + ", ".join(
                    f"{k} {statistics.median(r[k] for r in runs):,.1f}" for k in runs[0]))
    text = "\n".join(lines) + "\n"
    print(text)
    if WINDOWS and not args.out:
        return
    out = args.out or os.path.join(HERE, "results", f"loop-os-{date}.md")
    with open(out, "w") as f:
        f.write(text)
    with open(out[:-3] + ".json", "w") as f:
        json.dump(res, f, indent=1)
    print("written:", out)

if __name__ == "__main__":
    main()
