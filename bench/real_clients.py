"""Real outside clients, side by side: redis-benchmark against the RESP example and wrk against
the HTTP example, on iocpx, on uvloop (the same protocol code) and against the C servers.

What it shows: what a user of iocpx would see with clients nobody here wrote. Rows:
  - RESP (examples/resp_server.py): `redis-benchmark -c 50 -P 1` and `-P 16`, `-t set` and
    `-t get` (SET first, so GET finds the key);
  - HTTP (examples/http_server.py, `GET /`, a 14-byte body): `wrk -t1 -c100` and `-c1000`;
  - HTTPS (`--only https`; bench/tls.py runs it too): `wrk -t1 -c100` over TLS.
Servers: iocpx with default options, iocpx workers=1, the same handler on uvloop
(examples/transports.py), and the C reference: redis-server (no persistence) for RESP, nginx
(one worker, `return 200` of the same body) for HTTP. Per row: **server CPU microseconds per
request** (all the server's processes and threads over the client's run, after an unmeasured
warm-up run of the same client), requests/s and p99 as the client reports them, voluntary
context switches per request, the ratio to uvloop. redis-benchmark runs a fixed count of
requests sized from the warm-up's rate to last about --duration s; wrk runs --duration s.

What it needs: Linux, 2 CPUs, taskset, Python 3.9+, the in-place iocpx build, and
redis-server, redis-benchmark, wrk and nginx: missing ones are installed from Debian's packages
(as root; --no-install to skip), uvloop from PyPI; a row whose server or client is still
missing says why. wrk -c1000 needs an open-files limit above 1,200.

How to run it, from the repo root:

    python bench/real_clients.py                        # the full table: ~8 min, --repeat 3
    python bench/real_clients.py --repeat 1 --duration 2 --only resp
    python bench/real_clients.py --real-servers iocpx-default,uvloop --only http

Every server listens on its own 127.0.0.N (never on redis's or nginx's usual ports) and is
stopped by its process group; nothing of an installed redis/nginx service is used or touched.
It writes bench/results/real-clients-YYYY-MM-DD.md with its .json and chart.
"""

import csv
import io
import re
import resource
import socket
import sys

import harness as H
import peers as P

NAME, TITLE = "real-clients", "iocpx with real clients"
UV = "uvloop"
ROWS = {"resp": [{"test": t, "pipeline": p} for t, p in
                 (("set", 1), ("set", 16), ("get", 1), ("get", 16))],
        "http": [{"conns": 100}, {"conns": 1000}], "https": [{"conns": 100}]}
SERVERS = ("iocpx-default", "iocpx-w1", "uvloop", "c-ref")


def add_args(ap):
    ap.add_argument("--only", type=H.str_list, default=["resp", "http"],
                    help="workloads: resp, http, https (default resp,http)")
    ap.add_argument("--real-servers", type=H.str_list, default=list(SERVERS),
                    help=f"from {', '.join(SERVERS)} (default all)")
    ap.add_argument("--no-install", dest="install", action="store_false",
                    help="do not install missing tools (apt-get, pip)")
    ap.set_defaults(repeat=3)


def row_name(row):
    if row["workload"] == "resp":
        return f"redis-benchmark -c 50 -P {row['pipeline']} -t {row['test']}"
    return f"wrk -t1 -c{row['conns']}" + (" https://" if row["workload"] == "https" else "")


# ---- the clients ----

def redis_benchmark(tools, row, n):
    return [tools["redis-benchmark"], "-h", "{host}", "-p", "{port}", "-c", "50", "-P",
            str(row["pipeline"]), "-t", row["test"], "-n", str(n), "--csv"]


def parse_redis(test):
    def parse(out):
        rows = list(csv.reader(io.StringIO(out)))
        for rec in (dict(zip(rows[0], r)) for r in rows[1:] if r) if len(rows) > 1 else ():
            if rec[rows[0][0]].upper() == test.upper():
                return {"rps": float(rec["rps"]), "requests": 1, "errors": 0,
                        "p99_ms": float(rec.get("p99_latency_ms", "nan"))}
        return None
    return parse


def wrk(tools, row, duration):
    scheme = "https" if row["workload"] == "https" else "http"
    return [tools["wrk"], "-t1", f"-c{row['conns']}", f"-d{max(1, round(duration))}s",
            "--latency", "--timeout", "5s", f"{scheme}://{{host}}:{{port}}/"]


UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def parse_wrk(out):
    m = re.search(r"(\d+) requests in ([\d.]+)(\w+)", out)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    p99 = re.search(r"^\s+99%\s+([\d.]+)(us|ms|s|m)\s*$", out, re.M)
    if not (m and rps):
        return None
    res = {"requests": int(m.group(1)), "rps": float(rps.group(1)),
           "p99_ms": float(p99.group(1)) * UNITS[p99.group(2)] if p99 else None}
    errs = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    res["errors"] = (sum(map(int, errs.groups())) if errs else 0) + \
        (int(non2xx.group(1)) if non2xx else 0)
    if errs or non2xx:
        res["error_text"] = " / ".join(x.group(0) for x in (errs, non2xx) if x)
    return res


def check(srv, workload):
    """One request by hand: the server answers as it should. None, or what is wrong."""
    try:
        with socket.create_connection((srv.host, srv.port), timeout=5) as s:
            if workload == "resp":
                s.sendall(b"*3\r\n$3\r\nSET\r\n$5\r\nprobe\r\n$2\r\nok\r\n"
                          b"*2\r\n$3\r\nGET\r\n$5\r\nprobe\r\n")
                want, got = b"+OK\r\n$2\r\nok\r\n", b""
                while len(got) < len(want):
                    chunk = s.recv(4096)
                    if not chunk:
                        break
                    got += chunk
                return None if got == want else f"RESP check: got {got!r}"
            if workload == "https":
                return None                 # wrk's own warm-up run checks it
            return http_get_check(s)
    except OSError as exc:
        return f"check request failed: {exc}"


def http_get_check(s, keep_alive=False):
    """One GET / on the connected socket s; None when the reply is 200 with the hello body,
    else what is wrong. keep_alive: read until the body is in, not to the server's EOF."""
    s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n" + (b"" if keep_alive else b"Connection: close\r\n")
              + b"\r\n")
    got = b""
    while not (keep_alive and got.endswith(P.HELLO)):
        chunk = s.recv(65536)
        if not chunk:
            break
        got += chunk
    return None if got.startswith(b"HTTP/1.1 200") and got.endswith(P.HELLO) \
        else f"HTTP check: got {got[:200]!r}"


def measure(tools, row, peer, a):
    """Start the server, check it, warm up, measure one client run, stop it."""
    client = "redis-benchmark" if row["workload"] == "resp" else "wrk"
    if not tools.get(client):
        return {"error": f"{client} is not installed (apt-get install "
                         f"{'redis-tools' if client == 'redis-benchmark' else 'wrk'})"}
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if row.get("conns", 0) + 200 > nofile:
        return {"error": f"open-files limit {nofile} is below {row['conns']} connections + 200"}
    srv = H.start(peer, "-" + row["workload"])
    H.drain_stdout(srv.proc)
    try:
        why = check(srv, row["workload"])
        if why:
            return {"error": why}
        if row["workload"] == "resp":
            parse = parse_redis(row["test"])
            warm = H.measure_run(srv, redis_benchmark(tools, row, 20000 if row["pipeline"] == 1
                                                      else 200000), 60, parse)
            if "error" in warm:
                return {"error": "warm-up run: " + warm["error"]}
            n = max(10000, int(warm["rps"] * a.duration))
            r = H.measure_run(srv, redis_benchmark(tools, row, n), a.duration * 6 + 30,
                              lambda out: (lambda f: f and dict(f, requests=n))(parse(out)))
        else:
            warm = H.measure_run(srv, wrk(tools, row, 1), 40, parse_wrk)
            if "error" in warm:
                return {"error": "warm-up run: " + warm["error"]}
            r = H.measure_run(srv, wrk(tools, row, a.duration), a.duration + 40, parse_wrk)
        r["label"] = srv.label
        return r
    finally:
        srv.stop()


def run(a, meta, workloads=None, servers=None):
    tools = P.ensure_tools(getattr(a, "install", False))
    meta["tool_versions"] = ", ".join(f"{t} {P.version(p) if p else 'missing'}"
                                      for t, p in tools.items())
    out = []
    for w in workloads or a.only:
        peers = [P.example(w, s) if s != "c-ref" else P.redis_server(tools) if w == "resp"
                 else P.nginx(tools, tls=w == "https") for s in servers or a.real_servers]
        P.unavailable_uvloop(peers)
        out += H.sweep([dict(r, workload=w) for r in ROWS[w]], peers,
                       lambda row, p: measure(tools, row, p, a), a, "cpu_us_per_req",
                       lambda r: f"{r['rps']:,.0f} req/s, {H.fmt(r['cpu_us_per_req'], '.2f')} "
                       f"server CPU us/req, {H.fmt(r['vcsw_per_req'], '.3f')} vcsw/req, other "
                       f"{r['other_cpu_pct']:.0f}%", title=row_name)
    return out


def section(rep, results, meta):
    rep.lines.insert(-1, f"- clients and C servers: {meta.get('tool_versions')}")
    rows = list(dict.fromkeys(row_name(r) for r in results))
    peers = [H.Peer(s, " / ".join(sorted({r["label"] for r in results if r["peer"] == s})), [])
             for s in dict.fromkeys(r["peer"] for r in results)]

    def cpu(name, p):
        r = next((x for x in results if row_name(x) == name and x["peer"] == getattr(p, "id", p)),
                 None)
        return None if r is None else "failed" if "error" in r else r["cpu_us_per_req"]
    rep.section("Server CPU microseconds per request", "Lower is better; ratio to uvloop (the "
                "same protocol code) in brackets. Each row the median of the interleaved runs.")
    rep.matrix(rows, peers, cpu, base=UV)
    body = []
    for r in results:
        name = row_name(r)
        if "error" in r:
            body.append([name, r["label"], r["error"]])
            rep.note(f"{r['label']} @ {name}: {r['error']}")
            continue
        u = next((x for x in results if row_name(x) == name and x["peer"] == UV
                  and "error" not in x), None)
        body.append([name, r["label"], f"{r['rps']:,.0f}", H.fmt(r["p99_ms"], ".2f"),
                     f"**{r['cpu_us_per_req']:.2f}**",
                     H.fmt(H.ratio(r["cpu_us_per_req"], u and u["cpu_us_per_req"]), ".2f"),
                     H.fmt(r["vcsw_per_req"], ".3f"), f"{r['server_cpu_pct']:.0f}",
                     f"{r['client_cpu_pct']:.0f}", f"{max(0.0, r['other_cpu_pct']):.0f}",
                     H.fmt(r.get("loadavg"), ".2f"), r.get("errors", 0)])
        runs = r.get("runs_cpu_us_per_req")
        if runs:
            rep.note(f"{r['label']} @ {name}: server CPU us/req of the {len(runs)} runs: "
                     + ", ".join(f"{x:.2f}" for x in runs))
        if r.get("other_cpu_pct", 0) >= 15:
            rep.note(f"{r['label']} @ {name}: other work used {r['other_cpu_pct']:.0f}% of a "
                     "core during the window: compare with care"
                     + (f" (the busiest: {r['others']})" if r.get("others") else ""))
        if r.get("client_cpu_pct", 0) >= 90:
            rep.note(f"{r['label']} @ {name}: the client used {r['client_cpu_pct']:.0f}% of its "
                     "core: requests/s is client-bound")
        for k in ("note", "error_text"):
            if r.get(k):
                rep.note(f"{r['label']} @ {name}: {r[k]}")
    rep.section("Every figure")
    rep.table(["workload", "server", "requests/s", "p99 ms", "**server CPU us/req**",
               "vs uvloop", "vol. ctx switches/req", "server CPU %", "client CPU %",
               "other CPU %", "load avg", "errors"], body, right=range(2, 12))
    rep.note("Server CPU us/req = utime+stime of the server's processes over the client's run / "
             "the requests the client counted (it includes the kernel's network work done on "
             "the server's time); vol. ctx switches = voluntary context switches of all the "
             "server's threads per request.")
    charts(rep, results)


def charts(rep, results):
    rows = list(dict.fromkeys(row_name(r) for r in results))
    kinds = list(dict.fromkeys(r["peer"] for r in results))
    label = {"iocpx-default": "iocpx default", "iocpx-w1": "iocpx workers=1",
             "uvloop": "uvloop (same handler)", "c-ref": "C reference (redis-server, nginx)"}

    def val(name, k):
        r = next((x for x in results if row_name(x) == name and x["peer"] == k), {})
        return r.get("cpu_us_per_req")
    short = {row_name(r): (f"redis-benchmark\n{r['test'].upper()} -P {r['pipeline']}"
                           if r["workload"] == "resp" else f"wrk{' https' * (r['workload'] == 'https')}"
                           f"\n-c{r['conns']}") for r in results}
    rep.bars("cpu", "Real clients: server CPU per request (lower is better)",
             [short[n] for n in rows],
             [(label.get(k, k), [val(n, k) for n in rows]) for k in kinds],
             "server CPU us per request", size=(11, 5))


if __name__ == "__main__":
    sys.exit(H.main(sys.modules[__name__]))
