"""Connection churn: server CPU per connection (accept, one 64 B echo, close) of iocpx beside
uvloop, asyncio, a thread per client and the C io_uring server.

What it shows: --churn-concurrency slots (default 50) each connect, send 64 B, read the echo,
verify it and close, over and over (bench/churn.c, from 250 loopback source addresses so
TIME_WAIT never runs out of ports): connections/s and **server CPU microseconds per
connection**, with the ratio to uvloop and to the C server.

What it needs: as bench/echo.py (Linux, 2 CPUs, taskset, cc, uvloop, the in-place build).

How to run it, from the repo root:

    python bench/churn.py                      # ~1 min
    python bench/churn.py --servers iocpx,uvloop --repeat 3

It writes bench/results/churn-YYYY-MM-DD.md (bench/run_all.py puts it in the suite's report).
"""

import sys

import echo
import harness as H
import peers as P

NAME, TITLE = "churn", "iocpx connection churn"


def add_args(ap):
    if not any(x.dest == "servers" for x in ap._actions):
        echo.add_args(ap)
    ap.add_argument("--churn-concurrency", type=int, default=50)


def churn_client(row, a):
    return [H.tool("churn"), "{host}", "{port}", str(row["connections"]), "64", str(a.warmup),
            str(a.duration)], 5.0


def run(a, meta):
    peers = P.echo_suite(a.servers, meta, a.iocpx_workers, a.iocpx_backends)
    rows = [{"connections": a.churn_concurrency, "size": 64}]
    res = H.sweep(rows, peers, lambda row, p: echo.measure(row, p, a, churn_client, "-churn"),
                  a, "cpu_us_per_rt", lambda r: f"{r['rt_per_s']:,.0f} conn/s, "
                  f"{H.fmt(r['cpu_us_per_rt'], '.1f')} CPU us/conn", title=lambda r: "churn")
    for r in res:
        if "error" not in r:
            r["conns_per_s"], r["cpu_us_per_conn"] = r["rt_per_s"], r["cpu_us_per_rt"]
    return res


def section(rep, results, meta):
    rep.section("Connection churn", f"{results[0]['connections']} concurrent slots, each: "
                "connect, send 64 B, read the echo, close (bench/churn.c). Server CPU us per "
                "connection = accept + one echo + close.")
    section_table(rep, results, "churn")
    charts(rep, results)


def section_table(rep, results, name):
    u, lim = H.find(results, echo.UV), H.find(results, echo.LIMIT)
    body = []
    for r in results:
        if "error" in r:
            body.append([r["label"], r["error"]])
            rep.note(f"{r['label']} @ {name}: {r['error']}")
        else:
            body.append([r["label"]] + echo.load_cells(r, u, lim, ".1f"))
            echo.row_notes(rep, r, name)
    rep.table(["server", "connections/s", "p50 us", "p99 us", "**server CPU us/conn**",
               "vs uvloop", "vs C", "server CPU %", "client CPU %", "other CPU %", "errors"], body)


def charts(rep, results):
    ok = [r for r in results if "error" not in r]
    if ok:
        rep.bars("churn", "Connection churn: server CPU per connection (connect, 64 B echo, "
                 "close; lower is better)", [r["label"] for r in ok],
                 [("server CPU us per connection", [r["cpu_us_per_conn"] for r in ok])],
                 "server CPU us per connection", size=(10, 4.5))


if __name__ == "__main__":
    sys.exit(H.main(sys.modules[__name__]))
