"""TLS, side by side: iocpx's engine-driven TLS against uvloop's (and asyncio's), and wrk over
HTTPS beside nginx.

What it shows: what TLS costs on iocpx and how that compares, as server CPU microseconds per
round trip / connection / request. Parts:
  - echo: 100 connections x 64 B and x 4 KiB (bench/loadgen.c built with OpenSSL, every echo
    verified) against bench/servers.py --tls-cert on iocpx (workers=1 and the defaults), uvloop
    (`create_server(ssl=ctx)`), asyncio with --asyncio, and iocpx workers=1 *without* TLS: the
    plain figure the TLS rows are compared with;
  - handshakes: a new TLS connection (full handshake, no resumption), one 64 B echo,
    close_notify and close, over and over from --churn-concurrency slots (bench/churn.c built
    with OpenSSL): server CPU per connection;
  - https: bench/real_clients.py's https rows (`wrk -t1 -c100` against examples/http_server.py
    over TLS on iocpx and uvloop, and nginx with `listen ... ssl`).
Every server gets the same throwaway ECDSA P-256 certificate (bench/.build/tls/).

What it needs: as bench/echo.py, plus OpenSSL headers (Debian: libssl-dev), the openssl
command, and wrk and nginx for the https part (missing ones make rows that say why).

How to run it, from the repo root:

    python bench/tls.py --asyncio                # everything, --repeat 3: ~8 minutes
    python bench/tls.py --repeat 1 --duration 2 --only echo

It writes bench/results/tls-YYYY-MM-DD.md with its .json and chart.
"""

import ssl
import sys

import churn
import echo
import harness as H
import peers as P
import real_clients

NAME, TITLE = "tls", "iocpx TLS benchmarks"


def add_args(ap):
    ap.add_argument("--only", type=H.str_list, default=["echo", "handshakes", "https"],
                    help="parts: echo, handshakes, https (default all)")
    ap.add_argument("--churn-concurrency", type=int, default=50)
    ap.add_argument("--asyncio", action="store_true", help="also asyncio's TLS in the echo part")
    ap.set_defaults(repeat=3, install=False)


def tls_peers(with_asyncio):
    tls = ["--tls-cert", H.tls_files()[0]]
    peers = [P.echo("iocpx", "iocpx w=1, plain TCP", ["--workers", "1"], id="iocpx-w1-plain",
                    tls=False),
             P.echo("iocpx", "iocpx w=1, TLS", ["--workers", "1"] + tls, id="iocpx-w1", tls=True),
             P.echo("iocpx", "iocpx default workers, TLS", ["--workers", "0"] + tls,
                    id="iocpx-default", tls=True),
             P.echo("uvloop", "uvloop, TLS", tls, tls=True)]
    if with_asyncio:
        peers.append(P.echo("asyncio", "asyncio, TLS", tls, tls=True))
    return P.unavailable_uvloop(peers)


def tls_loadgen(row, a):
    c, s = row["connections"], row["size"]
    ct = 10.0 + c / 100.0                   # handshakes during the ramp
    return [H.tool("loadgen-tls"), "{host}", "{port}", str(c), str(s), str(a.warmup),
            str(a.duration), str(ct)], ct


def handshake_client(row, a):
    return [H.tool("churn-tls"), "{host}", "{port}", str(row["connections"]), "64",
            str(a.warmup), str(a.duration)], 5.0


def run(a, meta):
    meta["openssl"] = ssl.OPENSSL_VERSION
    peers, out = tls_peers(a.asyncio), []
    if "echo" in a.only:
        out += [dict(r, part="echo") for r in H.sweep(
            [{"connections": 100, "size": 64}, {"connections": 100, "size": 4096}], peers,
            lambda row, p: echo.measure(row, p, a, tls_loadgen if p.tls else echo.loadgen,
                                        "-tls"), a, "cpu_us_per_rt", echo.show,
            title=lambda row: f"TLS echo {echo.row_name(row)}")]
    if "handshakes" in a.only:
        hp = [p for p in peers if p.tls and p.kind != "asyncio"]
        out += [dict(r, part="handshakes") for r in H.sweep(
            [{"connections": a.churn_concurrency, "size": 64}], hp,
            lambda row, p: echo.measure(row, p, a, handshake_client, "-tls"), a, "cpu_us_per_rt",
            lambda r: f"{r['rt_per_s']:,.0f} conn/s, {H.fmt(r['cpu_us_per_rt'], '.1f')} CPU "
            "us/conn", title=lambda row: "handshakes")]
    if "https" in a.only:
        out += [dict(r, part="https") for r in real_clients.run(a, meta, ["https"], real_clients.SERVERS)]
    return out


def section(rep, results, meta):
    rep.lines.insert(-1, f"- TLS 1.3, OpenSSL {meta.get('openssl')}, one throwaway ECDSA P-256 "
                         "certificate for every server")
    ech = [r for r in results if r["part"] == "echo"]
    if ech:
        rows, peers = echo.rows_of(ech), echo.peers_of(ech)
        rep.section("TLS echo, server CPU us per round trip", "100 connections, one message in "
                    "flight each. In brackets: the ratio to uvloop's TLS.")
        rep.matrix(rows, peers, lambda row, p: (H.find(ech, getattr(p, "id", p), **row) or {})
                   .get("cpu_us_per_rt"), base="uvloop", row_name=echo.row_name)
        body = []
        for r in ech:
            if "error" in r:
                rep.note(f"{r['label']} @ {echo.row_name(r)}: {r['error']}")
                continue
            pl = H.find(ech, "iocpx-w1-plain", connections=r["connections"], size=r["size"])
            body.append([r["label"], echo.row_name(r), f"{r['rt_per_s']:,.0f}",
                         f"**{r['cpu_us_per_rt']:.2f}**",
                         H.fmt(H.ratio(r["cpu_us_per_rt"], pl and pl["cpu_us_per_rt"]), ".2f"),
                         f"{r['loadgen_cpu_pct']:.0f}", f"{max(0.0, r['other_cpu_pct']):.0f}",
                         H.fmt(r.get("loadavg"), ".2f"), r["errors"] + r["verify_failures"]])
            echo.row_notes(rep, r, echo.row_name(r))
        rep.table(["server", "row", "round trips/s", "**server CPU us/rt**", "vs iocpx plain",
                   "client CPU %", "other CPU %", "load avg", "errors"], body, right=range(2, 9))
        charts(rep, ech)
    hs = [r for r in results if r["part"] == "handshakes"]
    if hs:
        rep.section("Handshakes: new TLS connection, one 64 B echo, close",
                    f"{hs[0]['connections']} concurrent slots (bench/churn.c with OpenSSL, full "
                    "handshakes, no session resumption, the client sends close_notify).")
        churn.section_table(rep, hs, "handshakes")
    https = [r for r in results if r["part"] == "https"]
    if https:
        real_clients.section(rep, https, meta)


def charts(rep, results):
    ech = [r for r in results if r.get("part") == "echo"]
    rows = echo.rows_of(ech)
    rep.bars("tls-echo", "TLS echo: server CPU per round trip (lower is better)",
             [echo.row_name(r) for r in rows],
             [(p.label, [(H.find(ech, p.id, **r) or {}).get("cpu_us_per_rt") for r in rows])
              for p in echo.peers_of(ech)], "server CPU us per round trip", size=(9, 5))


if __name__ == "__main__":
    sys.exit(H.main(sys.modules[__name__]))
