"""Silent clients against a first-data server: how long a well-behaved client waits for its echo
while thousands of connections that never send hold the server's accepts.

What it shows: for each server, with N silent connections open (default 5,000) and new silent
ones arriving at --rate per second (default 500), a well-behaved client connects, sends "legit"
and times its echo, --probes times (default 200, one every --interval s): the p50/p99/max of
that wait, and how many silent connections the server still holds when the arrivals stop and
--hold-after seconds (default 12) after the last one arrived (with a first-data timeout of 10 s
they should be gone by then). Servers:
  - iocpx, default options, first_data=True (the echo arrives with the accept), and
    first_data_timeout=--first-data-timeout (default 10 s) if this iocpx's listen() takes it
    (detected with try/except TypeError; the report says which);
  - the same on the epoll backend (the fallback where io_uring is unavailable);
  - iocpx, default options, first_data=False (every connection surfaced at once);
  - uvloop (no first-data accept: it accepts and serves at once).
The servers are bench/servers.py (echo), pinned to CPU 0. "Held" = the server's socket
descriptors (/proc/PID/fd) beyond those it had before any client connected, and for iocpx also
stats()["connections"] (servers.py prints its stats on SIGUSR1).

The silent connections come from a second process (this script in --holder mode, pinned to
CPU 1) so that neither process passes the 20,000-descriptor limit: it connects without sending,
from source addresses 127.0.0.2-127.0.0.101 (IP_BIND_ADDRESS_NO_PORT), counts those the server
closes, and closes its own with SO_LINGER 0 (a reset: no TIME_WAIT left behind). It stops
opening at --max-silent (default 15,000). The legit client is this driver (also CPU 1): a
blocking connect from 127.0.0.200-249, send, read 5 bytes; a probe with no echo within
--probe-timeout s (default 5) counts as a timeout at that value.

What it needs: Linux, 2+ CPUs, taskset, Python 3.9+, an importable iocpx (the in-place build:
`python setup.py build_ext --inplace`), `pip install uvloop` for the uvloop row, an open-files
limit above N + rate x run time (+ margin) in each process (20,000 here is enough for the
defaults).

How to run it, from the repo root:

    python bench/silent_clients.py                      # ~2 min: the servers above
    python bench/silent_clients.py --silent 1000 --probes 50 --silent-servers iocpx-first-data

It writes bench/results/silent-clients-YYYY-MM-DD.md with its .json. Every step is bounded in
time and every child is killed on exit, error or Ctrl-C. Exit status 1 if an iocpx row failed.
"""

import argparse
import errno
import json
import os
import resource
import selectors
import signal
import socket
import struct
import subprocess
import sys
import time

import harness as H
import peers as P

NAME, TITLE = "silent-clients", "iocpx with silent clients"
SERVERS = {   # id -> (label, servers.py arguments after KIND PORT)
    "iocpx-first-data": ("iocpx first_data=True (default options)", "iocpx",
                         ["--workers", "0", "--first-data", "--backlog", "4096"]),
    "iocpx-first-data-epoll": ("iocpx first_data=True, epoll backend", "iocpx",
                               ["--workers", "0", "--first-data", "--backlog", "4096",
                                "--backend", "epoll"]),
    "iocpx-no-first-data": ("iocpx first_data=False (default options)", "iocpx",
                            ["--workers", "0", "--backlog", "4096"]),
    "uvloop": ("uvloop", "uvloop", ["--backlog", "4096"]),
}
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)
LINGER_RST = struct.pack("ii", 1, 0)        # SO_LINGER on, 0 s: close() resets


log = H.log


# ---- the holder: a process of silent connections ----

def holder(host, port, max_silent):
    """Commands on stdin, one reply line each on stdout:
        OPEN N   open silent connections until N are established -> "OK <established> <s>"
        RATE R   from now on open R new ones per second (0: stop)  -> "OK <established>"
        COUNT                     -> "COUNT <established> <closed by the server> <failed>
                                      <lifetime p50> <p99> <max>" (seconds from established
                                      to closed by the server, of those closed; -1: none)
        EXIT     reset every connection and exit
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    sel = selectors.DefaultSelector()
    sel.register(sys.stdin.fileno(), selectors.EVENT_READ, "stdin")
    connecting, established = set(), set()
    born, lifetimes = {}, []
    state = {"closed": 0, "failed": 0, "opened": 0, "rate": 0.0, "due": 0.0}
    target = [0]
    inbuf = b""

    def open_one():
        if state["opened"] >= max_silent:
            return
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RST)
        try:
            s.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
            s.bind((f"127.0.0.{2 + state['opened'] % 100}", 0))
        except OSError:
            pass                                # the kernel's choice of source address
        state["opened"] += 1
        err = s.connect_ex((host, port))
        if err not in (0, errno.EINPROGRESS):
            state["failed"] += 1
            s.close()
            return
        connecting.add(s)
        sel.register(s, selectors.EVENT_WRITE, "conn")

    def on_event(s, mask):
        if s in connecting:
            connecting.discard(s)
            if s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                state["failed"] += 1
                sel.unregister(s)
                s.close()
                return
            established.add(s)
            born[s] = time.monotonic()
            sel.modify(s, selectors.EVENT_READ, "conn")   # readable = the server closed it
            return
        try:
            data = s.recv(1)
        except OSError:
            data = b""
        if not data:
            state["closed"] += 1
            lifetimes.append(time.monotonic() - born.pop(s))
            established.discard(s)
            sel.unregister(s)
            s.close()

    def reply(line):
        sys.stdout.write(line + "\n")
        sys.stdout.flush()

    opening_since = None
    running = True
    while running:
        now = time.monotonic()
        while len(connecting) + len(established) < target[0] and len(connecting) < 256 and \
                state["opened"] < max_silent:
            open_one()
        if state["rate"] > 0:
            while state["due"] <= now and state["opened"] < max_silent:
                open_one()
                state["due"] += 1.0 / state["rate"]
        if opening_since is not None and (len(established) >= target[0] or
                                          state["opened"] >= max_silent and not connecting):
            reply(f"OK {len(established)} {now - opening_since:.3f}")
            opening_since = None
        timeout = 0.005 if state["rate"] > 0 or opening_since is not None else 1.0
        for key, mask in sel.select(timeout):
            if key.data == "stdin":
                chunk = os.read(sys.stdin.fileno(), 4096)
                if not chunk:
                    running = False
                    break
                inbuf += chunk
                while b"\n" in inbuf:
                    line, inbuf = inbuf.split(b"\n", 1)
                    cmd = line.decode().split()
                    if not cmd:
                        continue
                    if cmd[0] == "OPEN":
                        target[0] = int(cmd[1])
                        opening_since = time.monotonic()
                    elif cmd[0] == "RATE":
                        state["rate"] = float(cmd[1])
                        state["due"] = time.monotonic()
                        target[0] = 0           # no top-up: only the arrivals from now on
                        reply(f"OK {len(established)}")
                    elif cmd[0] == "COUNT":
                        life = sorted(lifetimes) or [-1.0]
                        reply(f"COUNT {len(established)} {state['closed']} {state['failed']} "
                              f"{life[len(life) // 2]:.2f} {life[int(0.99 * (len(life) - 1))]:.2f} "
                              f"{life[-1]:.2f}")
                    elif cmd[0] == "EXIT":
                        running = False
            else:
                on_event(key.fileobj, mask)
    for s in list(connecting) + list(established):
        s.close()                               # SO_LINGER 0: a reset, no TIME_WAIT
    return 0


# ---- the driver ----

def probe(host, port, n, timeout):
    """One legit client: seconds from connect() to its echo, or None if none came in time."""
    t0 = time.monotonic()
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RST)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            s.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
            s.bind((f"127.0.0.{200 + n % 50}", 0))
        except OSError:
            pass
        s.settimeout(timeout)
        s.connect((host, port))
        s.sendall(b"legit")
        got = b""
        while len(got) < 5:
            left = timeout - (time.monotonic() - t0)
            if left <= 0:
                return None
            s.settimeout(left)
            chunk = s.recv(5 - len(got))
            if not chunk:
                return None
            got += chunk
        return time.monotonic() - t0 if got == b"legit" else None
    except OSError:
        return None
    finally:
        s.close()


def server_sockets(pid):
    """Socket descriptors the process holds (its listener included)."""
    n = 0
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:"):
                    n += 1
            except OSError:
                pass
    except OSError:
        pass
    return n


def iocpx_stats(proc):
    """engine.stats() of a servers.py iocpx server (SIGUSR1 -> one STATS line), or None."""
    try:
        proc.send_signal(signal.SIGUSR1)
    except OSError:
        return None
    deadline = time.monotonic() + 5
    while True:
        line = H.read_line(proc, deadline)
        if line is None:
            return None
        if line.startswith("STATS "):
            return json.loads(line[6:])


def lifetime_text(life):
    """The holder's p50 / p99 / max seconds from established to closed by the server."""
    if not life or life[0] < 0:
        return "-"
    return " / ".join(f"{x:.2f}" for x in life)


def holder_cmd(hold, line, timeout):
    hold.stdin.write((line + "\n").encode())
    hold.stdin.flush()
    return H.read_line(hold, time.monotonic() + timeout)


def held(srv, kind, baseline):
    """What the server holds now: its socket descriptors beyond the `baseline` it had before
    any client (the listener, an event loop's self-pipe), and iocpx's own count."""
    out = {"sockets": max(0, server_sockets(srv.pid) - baseline)}
    if kind == "iocpx":
        st = iocpx_stats(srv.proc)
        if st:
            out["connections"] = st.get("connections")
            for k in ("first_data_timeouts", "accepted"):
                if k in st:
                    out[k] = st[k]
    return out


def run_server(row, peer, a):
    res = {}
    srv = H.start(peer, "-silent")
    port = srv.port
    with open(srv.log_path) as f:
        for line in f:
            if line.startswith("OPTIONS "):
                res["options"] = line[len("OPTIONS "):].strip()
    kind = peer.kind
    hold = None
    baseline = server_sockets(srv.pid)
    try:
        hold = H.spawn(["taskset", "-c", H.CLIENT_CPU, sys.executable, os.path.abspath(__file__),
                        "--holder", "127.0.0.1", str(port), str(a.max_silent)],
                       stdin=subprocess.PIPE, stdout=subprocess.PIPE, start_new_session=True)
        log(f"  opening {a.silent:,} silent connections ...")
        line = holder_cmd(hold, f"OPEN {a.silent}", 60 + a.silent / 200)
        if not line or not line.startswith("OK "):
            res["error"] = f"silent connections: {line or 'no answer in time'}"
            return res
        res["silent_open"], res["open_seconds"] = int(line.split()[1]), float(line.split()[2])
        t_open = time.monotonic()           # the first N silent connections are all open
        res["held_before"] = held(srv, kind, baseline)
        holder_cmd(hold, f"RATE {a.rate:g}", 10)
        t_rate = time.monotonic()
        log(f"  {res['silent_open']:,} open in {res['open_seconds']:.2f} s; {a.rate:g}/s more "
            f"arriving; {a.probes} legit probes ...")
        waits, timeouts, timeline = [], 0, []
        next_at = time.monotonic()
        cpu0, procs0, t_probe = H.cpu_seconds(srv.pid), H.all_proc_cpu(), time.monotonic()
        deadline = time.monotonic() + a.probes * (a.interval + a.probe_timeout) + 30
        for i in range(a.probes):
            if time.monotonic() > deadline:
                break
            time.sleep(max(0.0, next_at - time.monotonic()))
            next_at = time.monotonic() + a.interval
            t_probe0 = time.monotonic() - t_open
            w = probe("127.0.0.1", port, i, a.probe_timeout)
            if w is None:
                timeouts += 1
                w = a.probe_timeout
            waits.append(w)
            timeline.append((round(t_probe0, 3), round(w * 1e3, 3)))
        res["server_cpu_s"] = H.cpu_seconds(srv.pid) - cpu0
        res["others"] = H.top_others(procs0, H.all_proc_cpu(), time.monotonic() - t_probe,
                                     exclude=[srv.pid, hold.pid])
        holder_cmd(hold, "RATE 0", 10)
        t_stop = time.monotonic()
        res["arrival_seconds"] = t_stop - t_rate
        line = holder_cmd(hold, "COUNT", 10) or ""
        res["client_at_stop"] = line
        res["held_at_stop"] = held(srv, kind, baseline)
        waits.sort()
        res["probes"], res["timeouts"] = len(waits), timeouts
        res["probe_timeline"] = timeline    # (s after the first N were open, wait ms)
        if waits:
            res["p50_ms"] = waits[(len(waits) - 1) // 2] * 1e3
            res["p99_ms"] = waits[min(len(waits) - 1, int(0.99 * len(waits)))] * 1e3
            res["max_ms"] = waits[-1] * 1e3
        log(f"  legit wait p50 {H.fmt(res.get('p50_ms'), '.2f')} ms, p99 "
            f"{H.fmt(res.get('p99_ms'), '.2f')} ms, max {H.fmt(res.get('max_ms'), '.1f')} ms, "
            f"{timeouts} timeouts; held {res['held_at_stop']}; waiting {a.hold_after:g} s ...")
        time.sleep(max(0.0, t_stop + a.hold_after - time.monotonic()))
        res["held_after"] = held(srv, kind, baseline)
        line = holder_cmd(hold, "COUNT", 10) or ""
        parts = line.split()
        if len(parts) == 7:
            res["client_after"] = {"established": int(parts[1]),
                                   "closed_by_server": int(parts[2]), "failed": int(parts[3]),
                                   "lifetime_s": [float(x) for x in parts[4:7]]}
        log(f"  after {a.hold_after:g} s: held {res['held_after']}, client {line}")
        if srv.proc.poll() is not None:
            res["error"] = f"server exited (status {srv.proc.returncode}): {H.tail(srv.log_path)}"
        return res
    finally:
        H.finish_client(hold)
        srv.stop()


def add_args(ap):
    ap.add_argument("--silent", type=int, default=5000, help="silent connections opened first")
    ap.add_argument("--rate", type=float, default=500.0,
                    help="new silent connections per second during the probes (default 500)")
    ap.add_argument("--max-silent", type=int, default=15000,
                    help="the holder opens no more than this many in all (default 15,000)")
    ap.add_argument("--probes", type=int, default=200, help="legit clients (default 200)")
    ap.add_argument("--interval", type=float, default=0.05,
                    help="seconds between legit clients (default 0.05)")
    ap.add_argument("--probe-timeout", type=float, default=5.0)
    ap.add_argument("--hold-after", type=float, default=12.0,
                    help="count what the server holds this long after the last silent arrival")
    ap.add_argument("--first-data-timeout", type=float, default=10.0,
                    help="passed to the first-data iocpx servers' listen() if it takes it "
                         "(default 10; a negative value: never passed)")
    ap.add_argument("--silent-servers", type=H.str_list, default=list(SERVERS),
                    help=f"comma-separated, from {', '.join(SERVERS)}")


def run(a, meta):
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and a.max_silent + 500 > hard:
        raise SystemExit(f"--max-silent {a.max_silent} needs more than the open-files limit {hard}")
    fdt = [] if a.first_data_timeout < 0 else ["--first-data-timeout", str(a.first_data_timeout)]
    peers = P.unavailable_uvloop([
        P.echo(SERVERS[s][1], SERVERS[s][0], SERVERS[s][2] + (fdt if "first-data" in s
                                                              and "no-first" not in s else []),
               id=s) for s in a.silent_servers])
    meta["silent"] = {k: getattr(a, k) for k in ("silent", "rate", "probes", "interval",
                                                 "probe_timeout", "hold_after")}
    return H.sweep([{}], peers, lambda row, p: run_server(row, p, a), a, "p99_ms",
                   lambda r: "done", repeat=1, title=lambda row: "silent clients")


def section(rep, results, meta):
    a = argparse.Namespace(**meta["silent"])
    rep.section("Silent clients", f"Server (bench/servers.py echo) pinned to CPU {H.SERVER_CPU}; "
                f"{a.silent:,} silent connections opened first (a --holder process on CPU "
                f"{H.CLIENT_CPU}), then {a.rate:g} new silent ones per second while {a.probes} "
                f"legit clients connect, one every {a.interval:g} s, send \"legit\" and time "
                f"the echo (timeout {a.probe_timeout:g} s); held = the server's socket "
                "descriptors beyond those it had before any client (iocpx: "
                f"stats()[\"connections\"] too), when the arrivals stop and {a.hold_after:g} s "
                "after the last one.")
    body = []

    def held_text(h):
        if not h:
            return "-"
        t = f"{h['sockets']:,} sockets"
        if h.get("connections") is not None:
            t += f" ({h['connections']:,} in stats)"
        if h.get("first_data_timeouts") is not None:
            t += f", {h['first_data_timeouts']:,} first-data timeouts"
        return t

    notes = []
    for r in results:
        if "error" in r and "probes" not in r:
            body.append([r["label"], r["error"]])
            notes.append(f"{r['label']}: {r['error']}")
            continue
        ca = r.get("client_after", {})
        body.append([r["label"], r.get("options", "-"), f"{r.get('silent_open', 0):,}",
                     H.fmt(r.get("p50_ms"), ".2f"), H.fmt(r.get("p99_ms"), ".2f"),
                     H.fmt(r.get("max_ms"), ".1f"), r.get("timeouts", 0),
                     H.fmt(r.get("server_cpu_s"), ".2f"), held_text(r.get("held_at_stop")),
                     f"**{held_text(r.get('held_after'))}**",
                     H.fmt(ca.get("closed_by_server"), ","), lifetime_text(ca.get("lifetime_s"))])
        if r.get("error"):
            notes.append(f"{r['label']}: {r['error']}")
        slow = sorted(r.get("probe_timeline", []), key=lambda x: -x[1])[:3]
        if slow:
            notes.append(f"{r['label']}: the slowest legit clients started "
                         + ", ".join(f"{t:.1f} s ({ms:.1f} ms)" for t, ms in slow)
                         + f" after the first {r.get('silent_open', 0):,} silent connections "
                         "were open")
        notes.append(f"{r['label']}: {r.get('silent_open', 0):,} silent connections open in "
                     f"{r.get('open_seconds', 0):.2f} s; arrivals ran "
                     f"{r.get('arrival_seconds', 0):.1f} s; the holder said at the stop: "
                     f"{r.get('client_at_stop', '?')}"
                     + (f"; other processes busy during the probes: {r['others']}"
                        if r.get("others") else ""))
    rep.table(["server", "options", "silent open", "legit p50 ms", "p99 ms", "max ms",
               "timeouts", "server CPU s (probe phase)", "held when arrivals stop",
               f"**held {a.hold_after:g} s after the last**", "closed by the server",
               "after s (p50 / p99 / max)"], body, right={2, 3, 4, 5, 6, 7, 10})
    for n in notes:
        rep.note(n)
    rep.note("Legit wait = from the legit client's connect() to its 5-byte echo (a timeout "
             "counts at the timeout); closed by the server = silent connections the holder saw "
             "closed or reset by the server by the end, and how long after it was established "
             "(for first_data=True: first_data_timeout plus the engine's lateness).")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--holder"]:
        sys.exit(holder(sys.argv[2], int(sys.argv[3]), int(sys.argv[4])))
    sys.exit(H.main(sys.modules[__name__]))
