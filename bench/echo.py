"""Echo ping-pong: server CPU per round trip of iocpx beside uvloop, asyncio, a thread per client
and the C io_uring server (the practical limit), side by side.

What it shows: for each server and each (connections, message size) row — by default 1, 100
and 1,000 connections x 64 B, 4 KiB and 64 KiB, and 1 and 100 x 1 MiB — round trips/s, p50/p99
latency and the figure that matters, **server CPU microseconds per round trip**, with its ratio
to uvloop and to the C server. The load generator is bench/loadgen.c: a closed loop, one
message in flight per connection, every echo verified byte for byte. The servers are
bench/servers.py (each echoes with the least code its framework allows) and
bench/uring_echo.c. iocpx runs with workers=1 on each available backend and with its defaults.

What it needs: Linux, 2 CPUs, taskset, cc, Python 3.11+, `pip install uvloop matplotlib`, the
kernel header <linux/io_uring.h> (Debian: linux-libc-dev) for the C server, and the in-place
iocpx build (`python setup.py build_ext --inplace`). A server that cannot run gets rows saying
why.

How to run it, from the repo root:

    python bench/echo.py                                    # every row: ~12 min
    python bench/echo.py --connections 100,1000 --sizes 64 --repeat 3 --servers iocpx,uvloop
    python bench/echo.py --quick                            # smoke run, ~2 min

It writes bench/results/echo-YYYY-MM-DD.md with its .json and charts (bench/run_all.py puts
these rows in the suite's report instead).
"""

import sys

import harness as H
import peers as P

NAME, TITLE = "echo", "iocpx echo benchmark"
UV, LIMIT = "uvloop", "uring-c"


def add_args(ap):
    ap.add_argument("--servers", type=H.str_list, default=["iocpx", "uvloop", "asyncio",
                                                           "threads", "uring-c"],
                    help="kinds: iocpx, uvloop, asyncio, threads, uring-c (default all)")
    ap.add_argument("--connections", type=H.int_list, help="default 1,100,1000 (quick 100,1000)")
    ap.add_argument("--sizes", type=H.int_list, help="default 64,4096,65536 (quick 64,4096)")
    ap.add_argument("--large", type=H.int_list,
                    help="connections of the 1 MiB rows (default 1,100; quick 100; 0: none)")
    ap.add_argument("--iocpx-workers", type=H.int_list,
                    help="iocpx worker counts, one row each (0: the default), instead of "
                         "w=1 per backend + the defaults")
    ap.add_argument("--iocpx-backends", type=H.str_list, help="iocpx backends (default all)")
    ap.add_argument("--repeat-large", type=int, default=1,
                    help="runs of the rows above 64 B (--repeat is for the 64 B rows)")


def size_name(s):
    return (f"{s >> 20} MiB" if s >= 1 << 20 and s % (1 << 20) == 0 else
            f"{s // 1024} KiB" if s >= 1024 and s % 1024 == 0 else f"{s} B")


def row_name(row):
    return f"{row['connections']:,} x {size_name(row['size'])}"


def loadgen(row, a):
    """bench/loadgen.c's command line for one row, and its connect timeout."""
    c, s = row["connections"], row["size"]
    ct = 10.0 + c / 1000.0
    return [H.tool("loadgen"), "{host}", "{port}", str(c), str(s), str(a.warmup),
            str(a.duration), str(ct)], ct


def measure(row, peer, a, client=loadgen, tag=""):
    """One row of a START/END load generator against one peer (churn, udp and tls use it too)."""
    argv, ct = client(row, a)
    srv = H.start(peer, tag)
    try:
        r = H.measure_window(srv, argv, ct, a.warmup, a.duration)
    finally:
        note = srv.stop()
    if note:
        r.setdefault("note", note)
    return r


def show(r):
    return (f"{r['rt_per_s']:,.0f} rt/s, {H.fmt(r['cpu_us_per_rt'], '.2f')} CPU us/rt, "
            f"loadgen {r['loadgen_cpu_pct']:.0f}%, other {r['other_cpu_pct']:.0f}%")


def run(a, meta):
    q = a.quick
    conns = a.connections or ([100, 1000] if q else [1, 100, 1000])
    sizes = a.sizes or ([64, 4096] if q else [64, 4096, 65536])
    large = [c for c in (a.large if a.large is not None else [100] if q else [1, 100]) if c]
    rows = [{"connections": c, "size": s} for c in conns for s in sizes]
    rows += [r for r in ({"connections": c, "size": 1 << 20} for c in large) if r not in rows]
    if q:
        a.duration, a.warmup = min(a.duration, 2.0), min(a.warmup, 0.5)
    peers = P.echo_suite(a.servers, meta, a.iocpx_workers, a.iocpx_backends)
    meta.setdefault("peers", {})[NAME] = [p.as_dict() for p in peers]
    return H.sweep(rows, peers, lambda row, p: measure(row, p, a), a, "cpu_us_per_rt", show,
                   repeat=lambda row: a.repeat if row["size"] <= 64 else a.repeat_large,
                   title=lambda row: f"echo {row_name(row)}")


# ---- the report ----

def peers_of(results):
    """(id, label) of the servers in results, in order, as objects with .id and .label."""
    return [H.Peer(i, lbl, []) for i, lbl in dict.fromkeys((r["peer"], r["label"])
                                                           for r in results)]


def rows_of(results):
    return [dict(connections=c, size=s) for c, s in dict.fromkeys(
        (r["connections"], r["size"]) for r in results)]


def load_cells(r, u, lim, spec=".2f"):
    """rate/s | p50 | p99 | **server CPU us** | vs uvloop | vs C | server, client, other CPU % |
    errors, for a START/END row; u, lim: uvloop's and the C server's row (or None)."""
    cpu = r.get("cpu_us_per_rt")
    bound = " (c)" if r.get("loadgen_cpu_pct", 0) >= 90 else ""
    return [f"{r['rt_per_s']:,.0f}{bound}", H.fmt(r.get("p50_us"), ".0f"),
            H.fmt(r.get("p99_us"), ".0f"), f"**{H.fmt(cpu, spec)}**",
            H.fmt(H.ratio(cpu, u and u.get("cpu_us_per_rt")), ".2f"),
            H.fmt(H.ratio(cpu, lim and lim.get("cpu_us_per_rt")), ".2f"),
            f"{r['server_cpu_pct']:.0f}", f"{r['loadgen_cpu_pct']:.0f}",
            f"{max(0.0, r['other_cpu_pct']):.0f}", r.get("errors", 0) + r.get("verify_failures", 0)]


def row_notes(rep, r, name):
    if r.get("other_cpu_pct", 0) >= 15:
        rep.note(f"{r['label']} @ {name}: other work used {r['other_cpu_pct']:.0f}% of a core "
                 "during the window: compare with care")
    if r.get("errors") or r.get("verify_failures"):
        rep.note(f"{r['label']} @ {name}: {r['errors']} errors, {r['verify_failures']} verify "
                 f"failures: {r.get('first_error')}")
    if r.get("ready", r.get("connections")) != r.get("connections"):
        rep.note(f"{r['label']} @ {name}: only {r['ready']} connections got through")
    runs = r.get("runs_cpu_us_per_rt")
    if runs:
        rep.note(f"{r['label']} @ {name}: CPU us of the {len(runs)} runs: "
                 + ", ".join(f"{x:.2f}" for x in runs))
    for k in ("note", "error"):
        if r.get(k):
            rep.note(f"{r['label']} @ {name}: {r[k]}")


HEADERS = ["round trips/s", "p50 us", "p99 us", "**server CPU us/rt**", "vs uvloop", "vs C",
           "server CPU %", "loadgen CPU %", "other CPU %", "errors"]


def section(rep, results, meta):
    rows, peers = rows_of(results), peers_of(results)

    def cpu(row, pid):
        r = H.find(results, getattr(pid, "id", pid), **row)
        return r and r.get("cpu_us_per_rt")
    rep.section("Echo ping-pong", "Server CPU us per round trip (lower is better; ratio to "
                "uvloop in brackets). bench/loadgen.c, closed loop, one message in flight per "
                "connection, every echo verified.")
    rep.matrix(rows, peers, cpu, base=UV, row_name=row_name)
    targets(rep, results, peers)
    body = []
    for row in rows:
        u, lim = H.find(results, UV, **row), H.find(results, LIMIT, **row)
        for r in (x for x in results if all(x.get(k) == v for k, v in row.items())):
            if "error" in r:
                body.append([row_name(row), r["label"], r["error"]])
                rep.note(f"{r['label']} @ {row_name(row)}: {r['error']}")
                continue
            body.append([row_name(row), r["label"]] + load_cells(r, u, lim))
            row_notes(rep, r, row_name(row))
    rep.table(["scenario", "server"] + HEADERS, body, right=range(2, 12))
    charts(rep, results)


def targets(rep, results, peers):
    """The aim (iocpx below uvloop, within 15% of the C server at 100 and 1,000 x 64 B)."""
    body = []
    for p in peers:
        for c in (100, 1000):
            r = H.find(results, p.id, connections=c, size=64)
            if p.id.startswith("iocpx") and r:
                u, lim = (H.find(results, x, connections=c, size=64) for x in (UV, LIMIT))
                x = r["cpu_us_per_rt"]
                ru = H.ratio(x, u and u["cpu_us_per_rt"])
                rl = H.ratio(x, lim and lim["cpu_us_per_rt"])
                body.append([p.label, f"{c:,} x 64 B", f"{x:.2f}", H.fmt(ru, ".2f"),
                             H.fmt(rl, ".2f"), "yes" if ru and ru < 1 else "**NO**",
                             "yes" if rl and rl <= 1.15 else "**NO**"])
    if body:
        rep.table(["iocpx", "row", "CPU us/rt", "vs uvloop", "vs C", "beats uvloop",
                   "within 15% of C"], body, right=range(2, 5))


def charts(rep, results):
    rows = rows_of(results)
    groups = [row_name(r).replace(" x ", "\n") for r in rows]

    def series(field):
        return [(p.label, [(H.find(results, p.id, **r) or {}).get(field) for r in rows])
                for p in peers_of(results)]
    small = [r for r in rows if r["size"] == 64]
    if small:
        rep.bars("echo-64", "Echo, 64 B messages: server CPU per round trip (lower is better)",
                 [f"{r['connections']:,} connections" for r in small],
                 [(p.label, [(H.find(results, p.id, **r) or {}).get("cpu_us_per_rt")
                             for r in small]) for p in peers_of(results)],
                 "server CPU us per round trip", size=(10, 5))
    rep.bars("echo-cpu", "Echo: server CPU per round trip (lower is better)", groups,
             series("cpu_us_per_rt"), "server CPU us per round trip", log=True)
    rep.bars("echo-rps", "Echo: round trips per second (higher is better; client-bound on "
             "2 cores)", groups, series("rt_per_s"), "round trips / s", log=True)
    rep.bars("echo-p99", "Echo: p99 latency (lower is better)", groups, series("p99_us"),
             "p99 latency us", log=True)


if __name__ == "__main__":
    sys.exit(H.main(sys.modules[__name__]))
