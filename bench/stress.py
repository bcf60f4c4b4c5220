"""The model's stress run at the per-process maximum: `python -m iocpx stress` (N connections x
3 messages, 3 s apart, every echo verified) against `python -m iocpx serve`, uvloop and asyncio.

What it shows: connections made, messages verified, errors, p50/p99 latency, **server CPU
seconds** for the whole run and the server's peak RSS; iocpx's CPU against uvloop's. N
defaults to 19,000, the most one client process may hold here (the open-files limit is 20,000
per process); each run binds its client to its own 127.0.0.N (--source-ip), so the previous
run's TIME_WAIT sockets leave it ports.

What it needs: as bench/echo.py, and an open-files limit of ~20,000 (`ulimit -n`).

How to run it, from the repo root:

    python bench/stress.py                           # ~3 min
    python bench/stress.py --stress-connections 2000 --stress-interval 1 --stress-servers iocpx

It writes bench/results/stress-YYYY-MM-DD.md (bench/run_all.py puts it in the suite's report).
"""

import re
import resource
import subprocess
import sys
import time

import harness as H
import peers as P

NAME, TITLE = "stress", "iocpx stress run"
PEERS = {   # id -> (label, server command after the interpreter, line that gives the port)
    "iocpx": ("iocpx serve", ["-m", "iocpx", "serve", "--host", "127.0.0.1", "--port", "{port}",
                              "--backlog", "4096", "--quiet"], r"listening on [\d.]+:(\d+)"),
    "uvloop": ("uvloop", [H.SERVERS_PY, "uvloop", "{port}", "--backlog", "4096"], r"^READY (\d+)"),
    "asyncio": ("asyncio", [H.SERVERS_PY, "asyncio", "{port}", "--backlog", "4096"],
                r"^READY (\d+)"),
}


def add_args(ap):
    ap.add_argument("--stress-servers", type=H.str_list, default=list(PEERS),
                    help="iocpx (python -m iocpx serve), uvloop, asyncio (default all)")
    ap.add_argument("--stress-connections", type=int,
                    help="default 19000 (quick 2000), at most the open-files limit - 800")
    ap.add_argument("--stress-interval", type=float, help="default 3 (quick 1)")


def source_ip():
    """A loopback source address no TCP socket uses yet, for the stress client's --source-ip:
    the client binds every socket to (address, port 0) and closes first, so for 60 s a run
    leaves ~19,000 TIME_WAIT sockets whose ports a second run on that address could not take."""
    with open("/proc/net/tcp") as f:
        next(f, None)
        used = {line.split(None, 2)[1].split(":")[0] for line in f}
    return next((f"127.0.0.{n}" for n in range(100, 250) if f"{n:02X}00007F" not in used), None)


PATTERNS = (    # stress client report line -> fields
    (r"connections\s+made (\d+), failed (\d+)", ("made", "failed"), int),
    (r"messages\s+sent (\d+), echoed (\d+), verified (\d+) \(of (\d+)\)",
     ("sent", "echoed", "verified", "want"), int),
    (r"latency\s+p50 ([\d.na]+) ms, p99 ([\d.na]+) ms", ("p50_ms", "p99_ms"), float),
    (r"server\s+pid \d+: CPU ([\d.]+) s .*peak RSS ([\d.]+) MiB", ("cpu_s", "peak_rss_mib"), float),
)


def stress(row, peer, a):
    n, messages = row["connections"], row["messages"]
    res = {"tcp_sockets_before": H.loopback_ports_in_use()}
    src = source_ip()
    srv = H.start(peer, "-stress")
    H.drain_stdout(srv.proc)
    try:
        cpu0, t0 = H.cpu_seconds(srv.pid), time.monotonic()
        cmd = [sys.executable, "-m", "iocpx", "stress", "--host", "127.0.0.1", "--port",
               str(srv.port), "--connections", str(n), "--messages", str(messages),
               "--interval", str(a.stress_interval), "--size", "64", "--server-pid",
               str(srv.pid)] + (["--source-ip", src] if src else [])
        res["command"] = " ".join(["python"] + cmd[1:])
        limit = n / 5000 + messages * a.stress_interval + 120  # its own timeout is 60 s extra
        st = H.spawn(H.pinned(H.CLIENT_CPU, cmd), stdout=subprocess.PIPE,
                     stderr=subprocess.STDOUT, env=H.child_env(), start_new_session=True)
        try:
            out, _ = st.communicate(timeout=limit)
        except subprocess.TimeoutExpired:
            st.kill()
            out, _ = st.communicate()
            res["error"] = f"stress client did not finish in {limit:.0f} s"
        out = out.decode(errors="replace")
        res.update(cpu_s_own=H.cpu_seconds(srv.pid) - cpu0, wall_s=time.monotonic() - t0,
                   exit=st.returncode, ok="stress: OK" in out)
        for pattern, keys, conv in PATTERNS:
            m = re.search(pattern, out)
            if m:
                res.update(zip(keys, map(conv, m.groups())))
        m = re.search(r"errors\s+(.*)", out)
        if m:
            res["errors"] = m.group(1).strip()
        if not res["ok"]:
            res["output_tail"] = " / ".join(ln.strip() for ln in out.strip().splitlines()[-12:])
        return res
    finally:
        srv.stop()


def run(a, meta):
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    n = min(a.stress_connections or (2000 if a.quick else 19000), nofile - 800)
    a.stress_interval = a.stress_interval or (1.0 if a.quick else 3.0)
    peers = P.unavailable_uvloop([H.Peer(k, PEERS[k][0], [sys.executable] + PEERS[k][1],
                                         ready=PEERS[k][2]) for k in a.stress_servers])
    out = []
    for p in peers:
        r = H.sweep([{"connections": n, "messages": 3}], [p], lambda row, p: stress(row, p, a),
                    a, "cpu_s", lambda r: f"verified {r.get('verified')}/{r.get('want')}, "
                    f"errors {r.get('errors')}, server CPU {r.get('cpu_s')} s", repeat=1,
                    title=lambda r: f"stress {n:,} x 3")[0]
        if re.search(r"EADDRINUSE|EADDRNOTAVAIL", str(r.get("errors"))):
            H.log(f"  {r.get('errors')}: the client ran out of local ports; again in 65 s")
            time.sleep(65)
            first = r
            r = H.sweep([{"connections": n, "messages": 3}], [p],
                        lambda row, p: stress(row, p, a), a, "cpu_s", str, repeat=1)[0]
            r["note"] = (f"second attempt: the first one's client ran out of local ports (errors "
                         f"{first.get('errors')}, {first.get('tcp_sockets_before', 0):,} loopback "
                         "ports in use before it, mostly TIME_WAIT)")
        out.append(r)
    meta["stress_interval"] = a.stress_interval
    return out


def failed(results):
    return any(r["kind"] == "iocpx" and not r.get("ok") for r in results)


def section(rep, results, meta):
    r0 = results[0]
    rep.section("Stress run", f"`python -m iocpx stress --connections {r0['connections']} "
                f"--messages {r0['messages']} --interval {meta.get('stress_interval', 3):g} --size "
                "64 --server-pid PID` (one client process, pinned to CPU 1) against each server "
                "(CPU 0); each run with its own `--source-ip 127.0.0.N`.")
    u = H.find(results, "uvloop")
    body = []
    for r in results:
        if "error" in r and "verified" not in r:
            body.append([r["label"], r["error"]] + [""] * 8 + ["FAILED"])
            rep.note(f"{r['label']} @ stress: {r['error']}")
            continue
        cpu = r.get("cpu_s", r.get("cpu_s_own"))
        body.append([r["label"], f"{r.get('made', 0):,} / {r['connections']:,}",
                     f"{r.get('verified', 0):,} / {r.get('want', 0):,}", r.get("errors", "?"),
                     H.fmt(r.get("p50_ms"), ".2f"), H.fmt(r.get("p99_ms"), ".2f"),
                     f"**{H.fmt(cpu, '.2f')}**",
                     H.fmt(H.ratio(cpu, u and u.get("cpu_s", u.get("cpu_s_own"))), ".2f"),
                     H.fmt(r.get("peak_rss_mib"), ".1f"), f"{r.get('wall_s', 0):.1f}",
                     "OK" if r.get("ok") else "FAILED"])
        for k in ("error", "note"):
            if r.get(k):
                rep.note(f"{r['label']} @ stress: {r[k]}")
        if r.get("output_tail") and not r.get("ok"):
            rep.note(f"{r['label']} @ stress: the client's last lines: {r['output_tail']}")
    rep.table(["server", "connections made", "messages verified", "errors", "p50 ms", "p99 ms",
               "**server CPU s**", "vs uvloop", "peak RSS MiB", "wall s", "result"], body,
              right={1, 2, 4, 5, 6, 7, 8, 9})
    charts(rep, results)


def charts(rep, results):
    ok = [r for r in results if "verified" in r]
    if ok:
        rep.bars("stress", f"Stress: {ok[0]['connections']:,} connections x {ok[0]['messages']} "
                 "messages: server CPU seconds (lower is better)", [r["label"] for r in ok],
                 [("server CPU s", [r.get("cpu_s", r.get("cpu_s_own")) for r in ok])],
                 "server CPU seconds", size=(8, 4))


if __name__ == "__main__":
    sys.exit(H.main(sys.modules[__name__]))
