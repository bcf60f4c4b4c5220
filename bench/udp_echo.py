"""UDP echo: server CPU per datagram round trip of iocpx's Engine.datagram against uvloop's (and
asyncio's) create_datagram_endpoint, side by side.

What it shows: for each server (bench/servers.py: on_datagram calls ep.sendto(data, addr);
datagram_received calls transport.sendto(data, addr)) and each (client sockets, datagram
size) — by default 1 and 100 sockets x 64 and 1,200 B — round trips/s, p50/p99 latency and
**server CPU microseconds per datagram round trip**, with its ratio to uvloop. The load
generator is bench/udp_loadgen.c: N connected UDP sockets, one datagram in flight each, every
echo verified; a datagram unanswered for 200 ms is counted as lost and sent anew.

What it needs: as bench/echo.py (Linux, 2 CPUs, taskset, cc, uvloop, the in-place build).

How to run it, from the repo root:

    python bench/udp_echo.py --repeat 3          # ~3 min
    python bench/udp_echo.py --sockets 100 --size 64 --iocpx-workers 1,0

It writes bench/results/udp-YYYY-MM-DD.md with its .json and chart.
"""

import sys

import echo
import harness as H
import peers as P

NAME, TITLE = "udp", "iocpx UDP echo benchmark"


def add_args(ap):
    ap.add_argument("--sockets", type=H.int_list, default=[1, 100],
                    help="client sockets (default 1,100)")
    ap.add_argument("--size", type=H.int_list, default=[64, 1200],
                    help="datagram bytes (default 64,1200)")
    ap.add_argument("--servers", type=H.str_list, default=["iocpx", "uvloop", "asyncio"])
    ap.add_argument("--iocpx-workers", type=H.int_list, default=[1],
                    help="iocpx worker counts, one row each (0: the default; default 1)")
    ap.add_argument("--iocpx-backends", type=H.str_list, help="default every available one")


def udp_loadgen(row, a):
    return [H.tool("udp_loadgen"), "{host}", "{port}", str(row["connections"]),
            str(row["size"]), str(a.warmup), str(a.duration)], 5.0


def run(a, meta):
    peers = P.echo_suite(a.servers, meta, a.iocpx_workers, a.iocpx_backends, udp=True)
    rows = [{"connections": n, "size": s} for n in a.sockets for s in a.size]
    return H.sweep(rows, peers, lambda row, p: echo.measure(row, p, a, udp_loadgen, "-udp"), a,
                   "cpu_us_per_rt", lambda r: echo.show(r) + f", lost {r.get('lost')}",
                   title=lambda row: f"UDP {row['connections']} sockets x {row['size']} B")


def row_name(row):
    return f"{row['connections']} x {row['size']:,} B"


def section(rep, results, meta):
    rows, peers = echo.rows_of(results), echo.peers_of(results)
    rep.section("UDP echo", "Server CPU us per datagram round trip (lower is better; ratio to "
                "uvloop in brackets); sockets x datagram size.")
    rep.matrix(rows, peers, lambda row, p: (H.find(results, getattr(p, "id", p), **row) or {})
               .get("cpu_us_per_rt"), base="uvloop", row_name=row_name)
    body = []
    for r in results:
        if "error" in r:
            body.append([r["label"], row_name(r), r["error"]])
            continue
        u = H.find(results, "uvloop", connections=r["connections"], size=r["size"])
        body.append([r["label"], row_name(r), f"{r['rt_per_s']:,.0f}", H.fmt(r["p50_us"], ".1f"),
                     H.fmt(r["p99_us"], ".1f"), f"**{H.fmt(r['cpu_us_per_rt'], '.2f')}**",
                     H.fmt(H.ratio(r["cpu_us_per_rt"], u and u["cpu_us_per_rt"]), ".2f"),
                     f"{r['server_cpu_pct']:.0f}", f"{r['loadgen_cpu_pct']:.0f}",
                     f"{max(0.0, r['other_cpu_pct']):.0f}", r.get("lost", 0),
                     r["errors"] + r["verify_failures"]])
        echo.row_notes(rep, r, row_name(r))
    rep.table(["server", "sockets x size", "round trips/s", "p50 us", "p99 us",
               "**server CPU us/rt**", "vs uvloop", "server CPU %", "loadgen CPU %",
               "other CPU %", "lost", "errors"], body, right=range(2, 12))
    rep.note("lost = datagrams not echoed within 200 ms (sent again).")
    charts(rep, results)


def charts(rep, results):
    rows = echo.rows_of(results)
    rep.bars("udp-cpu", "UDP echo: server CPU per datagram round trip (lower is better)",
             [row_name(r) for r in rows],
             [(p.label, [(H.find(results, p.id, **r) or {}).get("cpu_us_per_rt") for r in rows])
              for p in echo.peers_of(results)], "server CPU us per round trip", size=(10, 5))


if __name__ == "__main__":
    sys.exit(H.main(sys.modules[__name__]))
