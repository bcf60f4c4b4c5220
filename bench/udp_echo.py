"""UDP echo benchmark: server CPU per datagram round trip of iocpx's Engine.datagram against
uvloop's (and asyncio's) create_datagram_endpoint, side by side.

What it shows: for each server (iocpx-udp with the given workers and backends, uvloop-udp,
asyncio-udp; bench/servers.py serves each with the least code its API allows: on_datagram calls
ep.sendto(data, addr), datagram_received calls transport.sendto(data, addr)) and each
(client sockets, datagram size), the round trips per second, p50/p99/max latency, and the
figure that matters, **server CPU microseconds per datagram round trip** (utime+stime from
/proc/PID/stat over the measured window / round trips), with its ratio to uvloop from the same
run. Method (design.md section 6): server pinned to CPU 0, the C load generator
(bench/udp_loadgen.c: N connected UDP sockets, one datagram in flight each, every echo
verified byte for byte, a datagram unanswered for 200 ms counted as lost and sent anew) to CPU 1.

What it needs: Linux, 2+ CPUs, `cc`, `taskset` (util-linux), Python 3.11+; `pip install uvloop`
for the uvloop rows; an importable iocpx (normally the in-place build in src/iocpx, found
through PYTHONPATH; this script never builds it). A missing server gets a row saying why.

How to run it, from the repo root:

    python bench/udp_echo.py                          # 1 and 100 sockets x 64 and 1,200 B, 5 s
                                                      # -> bench/results/udp-DATE.md (+ .json)
    python bench/udp_echo.py --sockets 100 --size 64 --repeat 3 --out /tmp/udp.md
    python bench/udp_echo.py --servers iocpx-udp,uvloop-udp --iocpx-workers 1,4 \
        --iocpx-backends io_uring,epoll --out /tmp/udp.md

Every row waits (up to --quiet-wait s) for an idle machine first; --repeat N reports the run with
the median CPU us per round trip. Server stderr is kept in bench/.build/server-KIND.log.
"""

import argparse
import os
import shutil
import sys

import harness as H     # bench/harness.py: spawning, /proc sampling, run_one

RESULTS_DIR = os.path.join(H.BENCH_DIR, "results")
UDP_LOADGEN_SRC = os.path.join(H.BENCH_DIR, "udp_loadgen.c")
UDP_LOADGEN_BIN = os.path.join(H.BUILD_DIR, "udp_loadgen")
KINDS = ("iocpx-udp", "uvloop-udp", "asyncio-udp")


def render(results, info, args):
    out = H.report_head("iocpx UDP echo benchmark", info)
    out.append(f"- machine load: 1-minute load average {info['loadavg_start']} at the start, "
               f"{info.get('loadavg_end')} at the end; other CPU % per row below")
    out.append(f"- method: server pinned to CPU {H.SERVER_CPU}, udp_loadgen.c to CPU "
               f"{H.CLIENT_CPU}; N connected UDP sockets, one datagram in flight each, every echo "
               f"verified; warmup {args.warmup} s, measured {args.duration} s per row"
               f"{f', median of {args.repeat} runs' if args.repeat > 1 else ''}")
    out.append(f"- command: `{' '.join(['python', 'bench/udp_echo.py'] + sys.argv[1:])}`")
    out.append("")
    out.append("| server | sockets | size B | round trips/s | p50 us | p99 us "
               "| **server CPU us/rt** | vs uvloop | server CPU % | loadgen CPU % | other CPU % "
               "| lost | errors |")
    out.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    notes = []
    for r in results:
        if "error" in r:
            out.append(f"| {r['label']}: {r['error']} | {r['connections']} | {r['size']} "
                       "| - | - | - | - | - | - | - | - | - | - |".replace("|", "|"))
            continue
        base = next((u for u in results if u["kind"] == "uvloop-udp" and "error" not in u
                     and u["connections"] == r["connections"] and u["size"] == r["size"]), None)
        ratio = None
        if base and base.get("cpu_us_per_rt") and r.get("cpu_us_per_rt"):
            ratio = r["cpu_us_per_rt"] / base["cpu_us_per_rt"]
        out.append(
            f"| {r['label']} | {r['connections']} | {r['size']} | {r['rt_per_s']:,.0f} "
            f"| {H.fmt(r['p50_us'], '.1f')} | {H.fmt(r['p99_us'], '.1f')} "
            f"| **{H.fmt(r['cpu_us_per_rt'], '.2f')}** | {H.fmt(ratio, '.2f')}"
            f"{'' if ratio is None else 'x'} "
            f"| {r['server_cpu_pct']:.0f} | {r['loadgen_cpu_pct']:.0f} "
            f"| {max(0.0, r['other_cpu_pct']):.0f} | {r.get('lost', 0)} "
            f"| {r['errors'] + r['verify_failures']} |")
        if r["errors"] or r["verify_failures"]:
            notes.append(f"{r['label']} @ {r['connections']}x{r['size']}B: {r.get('first_error')}")
        if r.get("runs_cpu_us_per_rt"):
            notes.append(f"{r['label']} @ {r['connections']}x{r['size']}B: CPU us/rt of the "
                         f"{len(r['runs_cpu_us_per_rt'])} runs: "
                         + ", ".join(f"{x:.2f}" for x in r["runs_cpu_us_per_rt"]))
        if r.get("note"):
            notes.append(f"{r['label']} @ {r['connections']}x{r['size']}B: {r['note']}")
        if r["loadgen_cpu_pct"] >= 90:
            notes.append(f"{r['label']} @ {r['connections']}x{r['size']}B: loadgen CPU "
                         f"{r['loadgen_cpu_pct']:.0f}%: round trips/s is client-bound")
    if notes:
        out += ["", "Notes:"] + [f"- {n}" for n in dict.fromkeys(notes)]
    out += ["", "CPU us/rt = server utime+stime over the measured window / datagram round trips "
                "(lower is better; it includes the kernel's UDP work done on the server's time); "
                "vs uvloop = that ratio against uvloop-udp in the same run; lost = datagrams not "
                "echoed within 200 ms (sent again)."]
    return "\n".join(out) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sockets", type=H.int_list, default=[1, 100],
                    help="client sockets, comma-separated (default 1,100)")
    ap.add_argument("--size", type=H.int_list, default=[64, 1200],
                    help="datagram bytes, comma-separated (default 64,1200)")
    ap.add_argument("--duration", type=float, default=5.0, help="measured seconds per row")
    ap.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds per row")
    ap.add_argument("--servers", default="iocpx-udp,uvloop-udp,asyncio-udp",
                    help="comma-separated: " + ", ".join(KINDS))
    ap.add_argument("--iocpx-workers", type=H.int_list, default=[1],
                    help="iocpx worker counts, one row each (0: iocpx's default; default 1)")
    ap.add_argument("--iocpx-backends", default="io_uring,epoll",
                    help="iocpx backends, one row each (default io_uring,epoll)")
    ap.add_argument("--repeat", type=int, default=1,
                    help="runs per row; the report shows the one with the median CPU us/rt")
    ap.add_argument("--quiet-wait", type=float, default=30.0,
                    help="before each row wait up to this long for an idle machine (0: no)")
    ap.add_argument("--out", help="write the Markdown report (and its .json) here instead of "
                                  "bench/results/udp-DATE.md")
    args = ap.parse_args(argv)
    args.pin = True
    kinds = [k.strip() for k in args.servers.split(",") if k.strip()]
    for k in kinds:
        if k not in KINDS:
            ap.error(f"unknown server {k!r}; known: {', '.join(KINDS)}")
    if (os.cpu_count() or 1) < 2 or not shutil.which("taskset"):
        ap.error("needs 2 CPUs and taskset (util-linux)")
    H.driver_setup(pin=True)
    H.build_c(UDP_LOADGEN_SRC, UDP_LOADGEN_BIN)
    info = H.machine_meta()
    info["loadavg_start"] = H.loadavg()
    unavailable = H.unavailable_peers(
        kinds, info, "uvloop-udp", "iocpx-udp",
        "import iocpx; iocpx.Engine.datagram; print(iocpx.__version__, iocpx.__file__,"
        " iocpx.available_backends())")

    plan = []
    for kind in kinds:
        if kind == "iocpx-udp":
            for be in [b.strip() for b in args.iocpx_backends.split(",") if b.strip()]:
                for w in args.iocpx_workers:
                    label = f"iocpx {be} (workers={w or 'default'})"
                    plan.append((kind, label, ["--workers", str(w), "--backend", be]))
        else:
            plan.append((kind, kind, []))

    def client(size):
        return lambda port, n: ([UDP_LOADGEN_BIN, "127.0.0.1", str(port), str(n), str(size),
                                 str(args.warmup), str(args.duration)], 5.0)

    results = []

    def body():
        for n in args.sockets:
            for size in args.size:
                for kind, label, sargs in plan:
                    if kind in unavailable:
                        results.append({"label": label, "kind": kind, "connections": n,
                                        "size": size, "error": unavailable[kind]})
                        continue
                    log = os.path.join(H.BUILD_DIR, f"server-{kind}.log")
                    mk = client(size)
                    results.append(H.run_repeated(
                        args.repeat, f"{label}: {n} sockets x {size} B", args.quiet_wait,
                        lambda: H.run_one(kind, label, sargs, n, size, args, log,
                                          client=lambda port: mk(port, n)),
                        lambda r: f"{r['rt_per_s']:,.0f} rt/s, "
                                  f"{H.fmt(r['cpu_us_per_rt'], '.2f')} server CPU us/rt, "
                                  f"lost {r.get('lost')}"))

    H.run_guarded(info, body)
    report = render(results, info, args)
    H.write_report(report, {"meta": info, "argv": sys.argv[1:], "rows": results},
                   RESULTS_DIR, "udp", args.out)
    ok = all("error" not in r or r["kind"] in unavailable for r in results)
    return 0 if ok and all(not r.get("errors") and not r.get("verify_failures")
                           for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
