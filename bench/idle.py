"""Idle connections: server memory per idle connection of iocpx beside uvloop, asyncio, a
thread per client and the C io_uring server.

What it shows: the server's RSS at 0, N/2 and N connections (default N = 10,000), each opened
by bench/idle_client.py in another process and left idle after one verified 16 B echo; the
figure is the **marginal RSS per connection between N/2 and N**, so fixed pools and buffers do
not count; also the setup CPU per connection.

What it needs: as bench/echo.py, and an open-files limit above N in each process.

How to run it, from the repo root:

    python bench/idle.py                             # ~2 min
    python bench/idle.py --idle-connections 2000 --servers iocpx,uvloop

It writes bench/results/idle-YYYY-MM-DD.md (bench/run_all.py puts it in the suite's report).
"""

import os
import subprocess
import sys
import time

import echo
import harness as H
import peers as P

NAME, TITLE = "idle", "iocpx idle connections"
IDLE_CLIENT = os.path.join(H.BENCH_DIR, "idle_client.py")


def add_args(ap):
    if not any(x.dest == "servers" for x in ap._actions):
        echo.add_args(ap)
    ap.add_argument("--idle-connections", type=int, help="default 10000 (quick 2000)")


def hold(row, peer):
    """Server RSS at 0, N/2 and N idle connections held by idle_client.py."""
    n, res = row["connections"], {}
    waited, used = H.wait_for_ports(n, 65.0)
    if waited >= 1:
        H.log(f"  waited {waited:.0f} s for local ports ({used:,} still in use, mostly TIME_WAIT)")
    srv = H.start(peer, "-idle")
    H.drain_stdout(srv.proc)
    client = None
    try:
        time.sleep(0.5)
        res["rss0_kib"] = H.rss_kib(srv.pid)
        cpu0 = H.cpu_seconds(srv.pid)
        client = H.spawn(H.pinned(H.CLIENT_CPU, [sys.executable, IDLE_CLIENT, srv.host,
                                                 str(srv.port)]),
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, start_new_session=True)
        for target, key in ((n // 2, "rss_half_kib"), (n, "rss_full_kib")):
            client.stdin.write(f"OPEN {target}\n".encode())
            client.stdin.flush()
            line = H.read_line(client, time.monotonic() + 60 + target / 100)
            if line is None or not line.startswith("OK "):
                return {"error": f"idle client at {target}: {line or 'timed out'}"
                        + (f" / server: {H.tail(srv.log_path)}" if srv.proc.poll() else "")}
            if target == n:
                res["open_seconds"] = float(line.split()[2])
            time.sleep(1.0)                 # let lazy per-connection work settle
            if srv.proc.poll() is not None:
                return {"error": f"server exited (status {srv.proc.returncode}): "
                                 f"{H.tail(srv.log_path)}"}
            res[key] = H.rss_kib(srv.pid)
        res["setup_cpu_us_per_conn"] = (H.cpu_seconds(srv.pid) - cpu0) * 1e6 / n
        res["kib_per_conn"] = (res["rss_full_kib"] - res["rss_half_kib"]) / (n - n // 2)
        return res
    finally:
        H.finish_client(client)
        srv.stop()


def run(a, meta):
    n = a.idle_connections or (2000 if a.quick else 10000)
    peers = P.echo_suite(a.servers, meta, a.iocpx_workers, a.iocpx_backends)
    return H.sweep([{"connections": n}], peers, hold, a, "kib_per_conn",
                   lambda r: f"{r['kib_per_conn']:.2f} KiB/conn", repeat=1,
                   title=lambda r: f"idle {n:,}")


def section(rep, results, meta):
    n = results[0]["connections"]
    rep.section("Idle connections", f"{n:,} connections held by bench/idle_client.py in another "
                "process, each after one verified 16 B echo. RSS per connection = (RSS at N - "
                "RSS at N/2) / (N/2).")
    u = H.find(results, echo.UV)
    body = []
    for r in results:
        if "error" in r:
            body.append([r["label"], r["error"]])
            rep.note(f"{r['label']} @ idle: {r['error']}")
            continue
        k = r["kib_per_conn"]
        body.append([r["label"], f"**{k:.2f}**", H.fmt(H.ratio(k, u and u["kib_per_conn"]), ".2f"),
                     "yes" if k <= 1.0 else "no", f"{r['rss0_kib'] / 1024:.1f}",
                     f"{r['rss_half_kib'] / 1024:.1f}", f"{r['rss_full_kib'] / 1024:.1f}",
                     f"{r['setup_cpu_us_per_conn']:.0f}"])
        if r.get("note"):
            rep.note(f"{r['label']} @ idle: {r['note']}")
    rep.table(["server", "**RSS per idle conn KiB**", "vs uvloop", "<= 1 KiB", "RSS at 0 MiB",
               f"RSS at {n // 2:,} MiB", f"RSS at {n:,} MiB", "setup CPU us/conn"], body)
    charts(rep, results)


def charts(rep, results):
    ok = [r for r in results if "error" not in r]
    if ok:
        rep.bars("idle", f"Idle connections: marginal server RSS per connection "
                 f"({ok[0]['connections']:,} connections; lower is better)",
                 [r["label"] for r in ok], [("KiB per idle connection",
                                             [max(0.0, r["kib_per_conn"]) for r in ok])],
                 "KiB RSS per idle connection", size=(10, 4.5))


if __name__ == "__main__":
    sys.exit(H.main(sys.modules[__name__]))
