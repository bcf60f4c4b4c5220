"""Echo benchmark: server CPU per round trip of iocpx against asyncio and uvloop, side by side.

What it shows: for each server (asyncio, uvloop, iocpx with 1 or more workers; also, on request,
a thread per client ("threads") and the minimal C io_uring server uring_echo.c ("uring-c"),
the practical limit) and each
(connections, message size), the round trips per second, the p50/p99/max latency, and the figure
that matters, **server CPU microseconds per round trip** (utime+stime from /proc/PID/stat over the
measured window, divided by the round trips in it), with its ratio to uvloop from the same run.
Method (design.md section 6): the server is pinned to CPU 0, the C load generator (loadgen.c,
closed loop, one message in flight per connection, every echo verified byte for byte) to CPU 1.
On two cores the throughput is bound by the load generator (see the "loadgen CPU" column: near
100% means client-bound), which is why CPU per round trip is the figure to compare.

What it needs: Linux, 2+ CPUs, `cc` (gcc or clang), `taskset` (util-linux), Python 3.11+;
`pip install uvloop` for the uvloop rows; for the uring-c rows Linux 6.1+ and the kernel
header <linux/io_uring.h> (Debian: linux-libc-dev); for the iocpx rows an iocpx that imports,
normally the in-place build in src/iocpx (put first on the servers' PYTHONPATH; this script
never builds it). A server that is missing gets a row saying why, and the others still run.

How to run it, from the repo root:

    python bench/echo.py                                   # 100 connections, 64 B, 5 s each
    python bench/echo.py --connections 1,100,1000 --size 64,4096 --iocpx-workers 1,4 \
        --out /tmp/echo.md
    python bench/echo.py --servers asyncio,uvloop --duration 3 --repeat 3 --json /tmp/raw.json
    python bench/echo.py --servers uvloop,threads,uring-c --connections 100,1000

The whole suite (every peer and scenario, a dated table and charts) is bench/run_all.py.

Other processes running on the two cores spoil a run: each row first waits (up to
--quiet-wait s) for the machine to be idle, the "other CPU %" column says what else ran during
the window, and --repeat N reports the run with the median CPU us/rt. Server stderr (a
traceback, iocpx's stats() at shutdown) is kept in bench/.build/server-KIND.log.

Every run is bounded (quiet wait + connect timeout + warmup + duration + a margin per row)
and every child process is killed on exit, error or Ctrl-C.
"""

import argparse
import json
import os
import shutil
import sys

import harness as H     # bench/harness.py: spawning, /proc sampling, run_one

# ---- report ----

def render(results, info, args):
    out = []
    out.append(f"# iocpx echo benchmark — {info['date']}")
    out.append("")
    out.append(f"- machine: Linux {info['kernel']}, nproc {info['nproc']}, CPU {info['cpu']}")
    out.append(f"- Python {info['python']}, uvloop {info['uvloop']}"
               + (f", iocpx {info['iocpx']} (version, file, default backend)"
                  if info.get("iocpx") else ""))
    out.append(f"- method: server pinned to CPU {H.SERVER_CPU}, loadgen.c to CPU {H.CLIENT_CPU}"
               f"{'' if args.pin else ' (pinning OFF)'}; closed loop, one message in flight per "
               f"connection, every echo verified; warmup {args.warmup} s, measured "
               f"{args.duration} s per row"
               f"{f', median of {args.repeat} runs' if args.repeat > 1 else ''}")
    out.append(f"- command: `{' '.join(['python', 'bench/echo.py'] + sys.argv[1:])}`")
    out.append("")
    out.append("| server | conns | size B | round trips/s | p50 us | p99 us | max us "
               "| **server CPU us/rt** | vs uvloop | server CPU % | loadgen CPU % | other CPU % "
               "| errors | verify fail |")
    out.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    notes = []
    for r in results:
        if "error" in r:
            label = f"{r['label']}: {r['error']}".replace("|", "\\|")
            out.append(f"| {label} | {r['connections']} | {r['size']} "
                       "| - | - | - | - | - | - | - | - | - | - | - |")
            continue
        base = next((u for u in results if u["kind"] == "uvloop" and "error" not in u
                     and u["connections"] == r["connections"] and u["size"] == r["size"]), None)
        ratio = None
        if base and base.get("cpu_us_per_rt") and r.get("cpu_us_per_rt"):
            ratio = r["cpu_us_per_rt"] / base["cpu_us_per_rt"]
        errs = r["errors"]
        out.append(
            f"| {r['label']} | {r['connections']} | {r['size']} | {r['rt_per_s']:,.0f} "
            f"| {H.fmt(r['p50_us'], '.1f')} | {H.fmt(r['p99_us'], '.1f')} "
            f"| {H.fmt(r['max_us'], '.0f')} "
            f"| **{H.fmt(r['cpu_us_per_rt'], '.2f')}** | {H.fmt(ratio, '.2f')}"
            f"{'' if ratio is None else 'x'} "
            f"| {r['server_cpu_pct']:.0f} | {r['loadgen_cpu_pct']:.0f} "
            f"| {max(0.0, r['other_cpu_pct']):.0f} "
            f"| {errs} | {r['verify_failures']} |")
        if r.get("ready", r["connections"]) != r["connections"]:
            notes.append(f"{r['label']} @ {r['connections']}: only {r['ready']} connections "
                         f"got through connect + first echo")
        if errs or r["verify_failures"]:
            notes.append(f"{r['label']} @ {r['connections']}x{r['size']}B: {r.get('first_error')}")
        if r.get("runs_cpu_us_per_rt"):
            notes.append(f"{r['label']} @ {r['connections']}x{r['size']}B: CPU us/rt of the "
                         f"{len(r['runs_cpu_us_per_rt'])} runs: "
                         + ", ".join(f"{x:.2f}" for x in r["runs_cpu_us_per_rt"]))
        if r.get("note"):
            notes.append(f"{r['label']} @ {r['connections']}x{r['size']}B: {r['note']}")
        if r.get("other_cpu_pct", 0) >= 10:
            notes.append(f"{r['label']} @ {r['connections']}x{r['size']}B: other work used "
                         f"{r['other_cpu_pct']:.0f}% of a core during the window (other "
                         "processes, or network softirq deferred to ksoftirqd): compare with care")
        if r["loadgen_cpu_pct"] >= 90:
            notes.append(f"{r['label']} @ {r['connections']}x{r['size']}B: loadgen CPU "
                         f"{r['loadgen_cpu_pct']:.0f}%: round trips/s is client-bound")
    if notes:
        out.append("")
        out.append("Notes:")
        out.extend(f"- {n}" for n in dict.fromkeys(notes))
    out.append("")
    out.append("CPU us/rt = server utime+stime over the measured window / round trips "
               "(lower is better); vs uvloop = that ratio against uvloop in the same run; "
               "CPU % of one core over the window; other = everything else on the machine "
               "(ksoftirqd, other processes) in that window, from tick-sampled /proc/stat, so "
               "rough when the cores are partly idle.")
    return "\n".join(out) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--connections", type=H.int_list, default=[100],
                    help="connections, comma-separated list allowed (default 100)")
    ap.add_argument("--size", type=H.int_list, default=[64],
                    help="message bytes, comma-separated list allowed (default 64)")
    ap.add_argument("--duration", type=float, default=5.0, help="measured seconds per row")
    ap.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds per row")
    ap.add_argument("--servers", default="asyncio,uvloop,iocpx",
                    help="comma-separated: asyncio, uvloop, iocpx, threads, uring-c "
                         "(default asyncio,uvloop,iocpx)")
    ap.add_argument("--iocpx-workers", type=H.int_list, default=[1],
                    help="iocpx worker counts, one row each (default 1)")
    ap.add_argument("--iocpx-backend", default=None,
                    help="iocpx backend (default: iocpx's own choice)")
    ap.add_argument("--no-pin", dest="pin", action="store_false",
                    help="do not pin server and loadgen to CPUs 0 and 1")
    ap.add_argument("--repeat", type=int, default=1,
                    help="runs per row; the report shows the run with the median CPU us/rt")
    ap.add_argument("--quiet-wait", type=float, default=30.0,
                    help="before each row, wait up to this many seconds for the machine to be "
                         "idle (other work on the cores spoils the figures); 0 disables")
    ap.add_argument("--out", help="also write the Markdown report to this file")
    ap.add_argument("--json", help="also write every row's raw figures to this file (JSON)")
    args = ap.parse_args(argv)

    kinds = [k.strip() for k in args.servers.split(",") if k.strip()]
    for k in kinds:
        if k not in H.KINDS:
            ap.error(f"unknown server {k!r}")
    if args.duration <= 0 or args.warmup < 0 or args.repeat < 1:
        ap.error("--duration must be > 0, --warmup >= 0 and --repeat >= 1")
    if args.pin:
        if (os.cpu_count() or 1) < 2:
            ap.error("need 2 CPUs to pin server and loadgen apart (or use --no-pin)")
        if not shutil.which("taskset"):
            ap.error("taskset not found (apt-get install util-linux), or use --no-pin")
    H.driver_setup(pin=args.pin)    # off the server's CPU; it sleeps between START and END
    H.build_loadgen()
    if "uring-c" in kinds:
        H.build_c(H.URING_SRC, H.URING_BIN)
    os.makedirs(H.BUILD_DIR, exist_ok=True)

    # Decide once what can run; missing frameworks become rows that say why.
    info = H.machine_info()
    unavailable = H.unavailable_peers(
        kinds, info, "uvloop", "iocpx",
        "import iocpx; iocpx.Engine; print(getattr(iocpx, '__version__', '?'), iocpx.__file__,"
        " getattr(iocpx, 'default_backend', lambda: '?')())")

    plan = []
    for kind in kinds:
        if kind == "iocpx" and kind not in unavailable:
            for w in args.iocpx_workers:
                sargs = ["--workers", str(w)]
                if args.iocpx_backend:
                    sargs += ["--backend", args.iocpx_backend]
                plan.append((kind, f"iocpx (workers={w})", sargs))
        else:
            plan.append((kind, kind, []))

    results = []
    try:
        for conns in args.connections:
            for size in args.size:
                for kind, label, sargs in plan:
                    if kind in unavailable:
                        results.append({"label": label, "kind": kind, "connections": conns,
                                        "size": size, "error": unavailable[kind]})
                        continue
                    log = os.path.join(H.BUILD_DIR, f"server-{kind}.log")
                    results.append(H.run_repeated(
                        args.repeat, f"{label}: {conns} connections x {size} B", args.quiet_wait,
                        lambda: H.run_one(kind, label, sargs, conns, size, args, log),
                        lambda r: f"{r['rt_per_s']:,.0f} rt/s, "
                                  f"{H.fmt(r['cpu_us_per_rt'], '.2f')} server CPU us/rt, "
                                  f"errors {r['errors']}"))
    except KeyboardInterrupt:
        print("interrupted: reporting what was measured", file=sys.stderr)
    finally:
        H.kill_children()

    report = render(results, info, args)
    sys.stdout.write(report)
    if args.out:
        with open(args.out, "w") as f:
            f.write(report)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": info, "argv": sys.argv[1:], "rows": results}, f, indent=1)
    ok = all("error" not in r or r["kind"] in unavailable for r in results)
    ok = ok and all(not r.get("errors") and not r.get("verify_failures") for r in results)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
