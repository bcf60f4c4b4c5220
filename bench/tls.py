"""TLS benchmarks, side by side: iocpx's engine-driven TLS against uvloop's (and asyncio's), and
wrk over HTTPS beside nginx.

What it shows (issue 9): what TLS costs on iocpx and how that compares with the peers, with the
method of bench/echo.py (design.md section 6: server pinned to CPU 0, client to CPU 1, **server
CPU microseconds** per round trip / connection / request from /proc/PID/stat). Parts:
  - echo: 100 connections x 64 B and x 4 KiB, closed loop, every echo verified, by the C load
    generator built with OpenSSL (bench/loadgen.c -DLOADGEN_TLS); servers: bench/servers.py with
    --tls-cert on iocpx (workers=1 and the default pool), uvloop (`loop.create_server(...,
    ssl=ctx)`) and asyncio, plus iocpx workers=1 *without* TLS, the plain figure the TLS rows
    are compared with (target: at most 1.5x at 4 KiB, and at or below uvloop's TLS);
  - handshakes: new TLS connection (full handshake, no resumption), one 64 B echo,
    close_notify + close, over and over from --churn-concurrency slots (bench/churn.c
    -DLOADGEN_TLS): connections per second and server CPU per connection;
  - https: `wrk -t1 -c100` against examples/http_server.py over TLS on iocpx (default and
    workers=1) and uvloop, and nginx (one worker, `listen ... ssl`), the same certificate
    (bench/real_clients.py's https workload).
Rows of each part are interleaved --repeat times (each repeat runs every server once, in turn)
and the median run is reported; the machine's other load (load average, other CPU %) is recorded
per row.

What it needs: Linux, 2 CPUs, taskset, cc, OpenSSL headers (Debian: libssl-dev) for the TLS
load generators, the openssl command (the throwaway certificate, bench/.build/tls/), uvloop
(`pip install uvloop`), wrk and nginx for the https part (missing ones make rows that say why),
and the in-place iocpx build (`python setup.py build_ext --inplace`).

How to run it, from the repo root:

    python bench/tls.py                          # everything, --repeat 3: about 8 minutes
    python bench/tls.py --repeat 1 --duration 2 --only echo
    python bench/tls.py --only handshakes,https

It writes bench/results/tls-YYYY-MM-DD.md and .json (or --out FILE.md) and rewrites
bench/results/LATEST.md. Every child is killed on exit, error or Ctrl-C.
"""

import argparse
import os
import sys

import harness as H         # bench/harness.py: spawning, /proc sampling, run_one
import real_clients as R    # bench/real_clients.py: wrk, nginx, the examples

RESULTS_DIR = os.path.join(H.BENCH_DIR, "results")
CHURN_SRC = os.path.join(H.BENCH_DIR, "churn.c")
CHURN_TLS_BIN = os.path.join(H.BUILD_DIR, "churn-tls")
ECHO_ROWS = [(100, 64), (100, 4096)]


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def echo_peers(pem, with_asyncio):
    tls = ["--tls-cert", pem]
    peers = [
        {"id": "iocpx-w1-plain", "kind": "iocpx", "label": "iocpx w=1, plain TCP",
         "sargs": ["--workers", "1"], "tls": False},
        {"id": "iocpx-w1", "kind": "iocpx", "label": "iocpx w=1, TLS",
         "sargs": ["--workers", "1"] + tls, "tls": True},
        {"id": "iocpx-default", "kind": "iocpx", "label": "iocpx default workers, TLS",
         "sargs": ["--workers", "0"] + tls, "tls": True},
        {"id": "uvloop", "kind": "uvloop", "label": "uvloop, TLS", "sargs": tls, "tls": True},
    ]
    if with_asyncio:
        peers.append({"id": "asyncio", "kind": "asyncio", "label": "asyncio, TLS", "sargs": tls,
                      "tls": True})
    return peers


def run_echo(peer, conns, size, a):
    def tls_client(port):
        ct = 10.0 + conns / 100.0       # handshakes during the ramp
        return [H.LOADGEN_TLS_BIN, "127.0.0.1", str(port), str(conns), str(size),
                str(a.warmup), str(a.duration), str(ct)], ct
    return H.run_one(peer["kind"], peer["label"], peer["sargs"], conns, size, a,
                     os.path.join(H.BUILD_DIR, f"server-tls-{peer['id']}.log"),
                     client=tls_client if peer["tls"] else None)


def run_handshakes(peer, conc, a):
    def client(port):
        return [CHURN_TLS_BIN, "127.0.0.1", str(port), str(conc), "64", str(a.warmup),
                str(a.duration)], 5.0
    return H.run_one(peer["kind"], peer["label"], peer["sargs"], conc, 64, a,
                     os.path.join(H.BUILD_DIR, f"server-tls-{peer['id']}.log"), client=client)


def interleaved(peers, repeat, quiet_wait, run, title, show):
    """{peer id: median run} over `repeat` rounds, each round every peer once, in turn (a
    different first peer each round)."""
    runs = {p["id"]: [] for p in peers}
    for rnd in range(repeat):
        order = peers[rnd % len(peers):] + peers[:rnd % len(peers)]
        for p in order:
            if runs[p["id"]] and "error" in runs[p["id"]][-1]:
                continue
            log(f"{title} {p['label']} (round {rnd + 1}/{repeat}) ...")
            busy = H.wait_for_quiet(quiet_wait) if quiet_wait > 0 else 0.0
            r = run(p)
            r["loadavg"] = H.loadavg()
            if busy >= 15.0:
                r.setdefault("note", f"machine was {busy:.0f}% busy before the run")
            log(f"  {r['error']}" if "error" in r else f"  {show(r)}")
            runs[p["id"]].append(r)
    return {k: H.pick_median(v) for k, v in runs.items()}


def ratio(a, b):
    return a / b if a and b else None


def cell(x, spec=".2f"):
    return H.fmt(x, spec)


def render(meta, echo, hs, https, peers):
    out = H.report_head("iocpx TLS benchmarks", meta)
    out.append(f"- method: server pinned to CPU {H.SERVER_CPU}, client to CPU {H.CLIENT_CPU}; "
               f"each row the median of {meta['repeat']} interleaved runs; measured "
               f"{meta['duration']:g} s after {meta['warmup']:g} s of warm-up; TLS 1.3, one "
               "throwaway ECDSA P-256 certificate for every server (OpenSSL "
               f"{meta['openssl']})")
    out.append(f"- machine load: 1-minute load average {meta['loadavg_start']} at the start, "
               f"{meta.get('loadavg_end')} at the end; other CPU % per row below")
    out.append(f"- command: `{meta['command']}` ({meta.get('elapsed_min', 0):.1f} min)")
    out.append("")
    notes = []
    if echo:
        out += ["## TLS echo, server CPU us per round trip", "",
                "100 connections, one message in flight each (bench/loadgen.c -DLOADGEN_TLS). "
                "In brackets: the ratio to uvloop's TLS; for iocpx's TLS rows also the ratio "
                "to iocpx w=1 plain TCP.", "",
                "| server | " + " | ".join(f"{c} x {s} B" for c, s in ECHO_ROWS) + " |",
                "|---|" + "---:|" * len(ECHO_ROWS)]
        for p in peers:
            cells = []
            for c, s in ECHO_ROWS:
                r = echo.get((c, s, p["id"]))
                if r is None:
                    cells.append("-")
                    continue
                if "error" in r:
                    cells.append("failed")
                    notes.append(f"{p['label']} @ {c}x{s}: {r['error']}")
                    continue
                u = echo.get((c, s, "uvloop"))
                pl = echo.get((c, s, "iocpx-w1-plain"))
                x = r["cpu_us_per_rt"]
                bits = []
                if p["id"] != "uvloop" and p["tls"] and u and "error" not in u:
                    bits.append(f"{ratio(x, u['cpu_us_per_rt']):.2f}x uvloop")
                if p["kind"] == "iocpx" and p["tls"] and pl and "error" not in pl:
                    bits.append(f"{ratio(x, pl['cpu_us_per_rt']):.2f}x plain")
                cells.append(f"{x:.2f}" + (f" ({', '.join(bits)})" if bits else ""))
            out.append(f"| {p['label']} | " + " | ".join(cells) + " |")
        out += ["", "| server | conns x size | round trips/s | p50 us | p99 us | **server CPU "
                "us/rt** | server CPU % | client CPU % | other CPU % | load avg | errors |",
                "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for c, s in ECHO_ROWS:
            for p in peers:
                r = echo.get((c, s, p["id"]))
                if r is None or "error" in r:
                    continue
                out.append(f"| {p['label']} | {c} x {s} | {r['rt_per_s']:,.0f} "
                           f"| {cell(r['p50_us'], '.0f')} | {cell(r['p99_us'], '.0f')} "
                           f"| **{cell(r['cpu_us_per_rt'])}** | {r['server_cpu_pct']:.0f} "
                           f"| {r['loadgen_cpu_pct']:.0f} | {max(0.0, r['other_cpu_pct']):.0f} "
                           f"| {cell(r.get('loadavg'))} | {r['errors'] + r['verify_failures']} |")
                if r.get("runs_cpu_us_per_rt"):
                    notes.append(f"{p['label']} @ {c}x{s}: CPU us/rt of the runs: "
                                 + ", ".join(f"{v:.2f}" for v in r["runs_cpu_us_per_rt"]))
                if r.get("note"):
                    notes.append(f"{p['label']} @ {c}x{s}: {r['note']}")
        out.append("")
    if hs:
        out += ["## Handshakes: new TLS connection, one 64 B echo, close", "",
                f"{meta['churn_concurrency']} concurrent slots (bench/churn.c -DLOADGEN_TLS, "
                "full handshakes, no session resumption, the client sends close_notify).", "",
                "| server | handshakes/s | **server CPU us/connection** | vs uvloop "
                "| client CPU % | other CPU % | load avg | errors |",
                "|---|---:|---:|---:|---:|---:|---:|---:|"]
        u = hs.get("uvloop")
        for pid, r in hs.items():
            if "error" in r:
                out.append(f"| {r['label']} | failed | | | | | | |")
                notes.append(f"{r['label']} @ handshakes: {r['error']}")
                continue
            rr = ratio(r["cpu_us_per_rt"], u["cpu_us_per_rt"]) if u and "error" not in u \
                and pid != "uvloop" else None
            out.append(f"| {r['label']} | {r['rt_per_s']:,.0f} | **{cell(r['cpu_us_per_rt'], '.1f')}** "
                       f"| {cell(rr)} | {r['loadgen_cpu_pct']:.0f} "
                       f"| {max(0.0, r['other_cpu_pct']):.0f} | {cell(r.get('loadavg'))} "
                       f"| {r['errors'] + r['verify_failures']} |")
            if r.get("runs_cpu_us_per_rt"):
                notes.append(f"{r['label']} @ handshakes: CPU us/connection of the runs: "
                             + ", ".join(f"{v:.1f}" for v in r["runs_cpu_us_per_rt"]))
        out.append("")
    if https:
        out += ["## wrk -t1 -c100 over HTTPS (examples/http_server.py --tls-cert, nginx ssl)", "",
                "| server | requests/s | p99 ms | **server CPU us/request** | vs uvloop "
                "| vs nginx | client CPU % | other CPU % | errors |",
                "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        u, ng = https.get("uvloop"), https.get("c-ref")
        for sid, r in https.items():
            label = r.get("label", sid)
            if "error" in r:
                out.append(f"| {label} | failed | | | | | | | |")
                notes.append(f"{label} @ https: {r['error']}")
                continue
            ru = ratio(r["cpu_us_per_req"], u["cpu_us_per_req"]) if u and "error" not in u \
                and sid != "uvloop" else None
            rn = ratio(r["cpu_us_per_req"], ng["cpu_us_per_req"]) if ng and "error" not in ng \
                and sid != "c-ref" else None
            out.append(f"| {label} | {r['rps']:,.0f} | {cell(r['p99_ms'])} "
                       f"| **{cell(r['cpu_us_per_req'])}** | {cell(ru)} | {cell(rn)} "
                       f"| {r['client_cpu_pct']:.0f} | {max(0.0, r['other_cpu_pct']):.0f} "
                       f"| {r.get('errors', 0)} |")
            if r.get("runs_cpu_us_per_req") and len(r["runs_cpu_us_per_req"]) > 1:
                notes.append(f"{label} @ https: CPU us/request of the runs: "
                             + ", ".join(f"{v:.2f}" for v in r["runs_cpu_us_per_req"]))
            if r.get("client_cpu_pct", 0) >= 90:
                notes.append(f"{label} @ https: wrk used {r['client_cpu_pct']:.0f}% of its core: "
                             "requests/s is client-bound")
        out.append("")
    out += H.notes_section(meta, notes)
    out.append("Server CPU = utime+stime of the server's processes over the measured window "
               "(it includes the kernel's network and TLS-record work done on the server's "
               "time), divided by round trips / connections / requests; lower is better.")
    return "\n".join(out) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", default="echo,handshakes,https",
                    help="parts: echo, handshakes, https (default all)")
    ap.add_argument("--repeat", type=int, default=3, help="interleaved runs per row (default 3)")
    ap.add_argument("--duration", type=float, default=5.0, help="measured seconds per row")
    ap.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds per row")
    ap.add_argument("--churn-concurrency", type=int, default=50)
    ap.add_argument("--asyncio", action="store_true", help="also asyncio's TLS in the echo part")
    ap.add_argument("--quiet-wait", type=float, default=10.0,
                    help="before each row wait up to this many s for the cores to be idle")
    ap.add_argument("--out", help="write the report here (and .json beside it)")
    a = ap.parse_args(argv)
    parts = [p.strip() for p in a.only.split(",") if p.strip()]
    for p in parts:
        if p not in ("echo", "handshakes", "https"):
            ap.error(f"unknown part {p!r}")
    a.pin = True
    H.driver_setup()
    pem = H.tls_files()[0]
    if "echo" in parts:
        H.build_loadgen()
        H.build_loadgen(tls=True)
    if "handshakes" in parts:
        H.build_c(CHURN_SRC, CHURN_TLS_BIN, tls=True)
    import ssl
    meta = H.machine_meta()
    ok, info = H.probe_import("import iocpx; e = iocpx.Engine(); print(iocpx.__version__, "
                              "e.backend, e.workers, 'workers by default'); e.close()")
    meta["iocpx"] = info if ok else f"not importable: {info}"
    meta.update({"repeat": a.repeat, "duration": a.duration, "warmup": a.warmup,
                 "churn_concurrency": a.churn_concurrency, "openssl": ssl.OPENSSL_VERSION,
                 "loadavg_start": H.loadavg(), "warnings": [],
                 "command": " ".join(["python", "bench/tls.py"]
                                     + (argv if argv is not None else sys.argv[1:]))})
    peers = echo_peers(pem, a.asyncio)
    echo, hs, https = {}, {}, {}

    def body():
        if "echo" in parts:
            for c, s in ECHO_ROWS:
                med = interleaved(peers, a.repeat, a.quiet_wait,
                                  lambda p: run_echo(p, c, s, a), f"echo {c} x {s} B",
                                  lambda r: f"{r['rt_per_s']:,.0f} rt/s, "
                                  f"{H.fmt(r['cpu_us_per_rt'], '.2f')} CPU us/rt, client "
                                  f"{r['loadgen_cpu_pct']:.0f}%, other {r['other_cpu_pct']:.0f}%")
                for pid, r in med.items():
                    echo[(c, s, pid)] = r
        if "handshakes" in parts:
            hp = [p for p in peers if p["tls"] and p["kind"] != "asyncio"]
            hs.update(interleaved(hp, a.repeat, a.quiet_wait,
                                  lambda p: run_handshakes(p, a.churn_concurrency, a),
                                  "handshakes",
                                  lambda r: f"{r['rt_per_s']:,.0f} conn/s, "
                                  f"{H.fmt(r['cpu_us_per_rt'], '.1f')} CPU us/conn, client "
                                  f"{r['loadgen_cpu_pct']:.0f}%"))
        if "https" in parts:
            tools = R.ensure_tools(False)
            runs, labels = {}, {}
            sids = ["iocpx-default", "iocpx-w1", "uvloop", "c-ref"]
            for rnd in range(a.repeat):
                R.run_round("https", sids, tools, a, runs, labels, rnd)
            for (key, sid), v in runs.items():
                r = R.median_run(v)
                r["label"] = labels.get(sid, {}).get("https", R.SERVERS[sid])
                https[sid] = r
    H.run_guarded(meta, body)
    report = render(meta, echo, hs, https, peers)
    H.write_report(report, {"meta": meta,
                            "echo": [dict(r, row=list(k)) for k, r in echo.items()],
                            "handshakes": hs, "https": https},
                   RESULTS_DIR, "tls", a.out)
    bad = [r for r in list(echo.values()) + list(hs.values()) + list(https.values())
           if "error" in r or r.get("errors") or r.get("verify_failures")]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
