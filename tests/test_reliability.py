"""Faults and bad input: slow readers, trickles, silent clients, descriptor
exhaustion, storms, shutdown under load. Nothing is lost, memory stays
bounded, the server serves on. Every test runs on every backend."""
import asyncio
import hashlib
import logging
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time

import pytest

import iocpx
from conftest import (LINUX, UNDER_WINE, Recorder, assert_quiet, check_closed_engine, client, echo, held,
                      recv_exact, recv_until_eof, still_open, wait_dropped, wait_for)

try:
    import resource
except ImportError:         # Windows
    resource = None


def rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not LINUX, reason="measures RSS through /proc (Linux only)")
def test_slow_reader_push_256mib_bounded(engine):
    """The server pushes 256 MiB to a client that stops reading: send() refuses
    past the limit, on_drain resumes the push, memory stays bounded, and every
    byte arrives in order once the client reads again."""
    total, chunk, limit = 256 << 20, 1 << 20, 4 << 20
    h_out = hashlib.sha256()
    state = {"sent": 0, "full": 0, "max_buffered": 0}
    block = os.urandom(chunk)

    def push(conn):
        try:
            while state["sent"] < total:
                conn.send(block)
                h_out.update(block)
                state["sent"] += chunk
                state["max_buffered"] = max(state["max_buffered"], conn.send_buffered)
        except iocpx.SendBufferFull:
            state["full"] += 1          # on_drain calls push again
            return
        conn.close()

    lst = engine.listen(("127.0.0.1", 0), on_accept=lambda c, d: push(c),
                        on_drain=push, max_send_buffer=limit)
    rss0 = rss_bytes()
    s = client(lst.address, timeout=60)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 10)
    recv_exact(s, chunk)
    # the reader stalls: the pusher runs into the cap
    wait_for(lambda: state["full"] >= 1, timeout=20, what="send() to refuse (SendBufferFull)")
    assert state["sent"] < total // 4
    grown = rss_bytes() - rss0
    assert grown < 64 << 20, f"RSS grew {grown >> 20} MiB while the reader stalled"
    h_in = hashlib.sha256()
    h_in.update(b"")                    # first chunk re-read below
    got = chunk
    h_first = block
    h_in.update(h_first)
    while True:
        b = s.recv(1 << 20)
        if not b:
            break
        h_in.update(b)
        got += len(b)
    s.close()
    assert got == total
    assert h_in.hexdigest() == h_out.hexdigest()
    assert state["max_buffered"] <= limit + max(limit, 8 << 20) + chunk


def test_echo_to_client_that_never_reads_pauses_reading(engine):
    """An echo server whose client writes but does not read: the send queue
    stops at max_send_buffer, reading pauses, TCP pushes back on the writer;
    when the client reads, everything arrives."""
    limit = 1 << 20
    conns = []
    lst = engine.listen(("127.0.0.1", 0), on_accept=lambda c, d: conns.append(c),
                        on_recv=echo, max_send_buffer=limit)
    s = client(lst.address, timeout=60)
    total = 64 << 20
    data = os.urandom(1 << 20)
    sent = [0]

    def writer():
        try:
            while sent[0] < total:
                s.sendall(data)
                sent[0] += len(data)
        except OSError:
            pass

    t = threading.Thread(target=writer, daemon=True)
    t.start()
    wait_for(lambda: conns and not conns[0].reading, timeout=20, what="reading to pause")
    time.sleep(0.3)
    c = conns[0]
    assert c.send_buffered <= limit + (8 << 20)
    assert sent[0] < total, "the writer was never pushed back"
    got = 0
    h_in, h_ref = hashlib.sha256(), hashlib.sha256()
    s.settimeout(60)
    while got < total:
        b = s.recv(1 << 20)
        assert b
        h_in.update(b)
        got += len(b)
    t.join(30)
    for _ in range(total // len(data)):
        h_ref.update(data)
    assert h_in.hexdigest() == h_ref.hexdigest()
    s.close()


def test_pause_and_resume_reading_keep_every_byte(engine):
    got = bytearray()
    conns = []
    lst = engine.listen(("127.0.0.1", 0), on_accept=lambda c, d: conns.append(c),
                        on_recv=lambda c, d: got.extend(d))
    s = client(lst.address)
    wait_for(lambda: conns)
    c = conns[0]
    c.pause_reading()
    assert not c.reading
    s.sendall(b"a" * 100_000)
    time.sleep(0.3)
    held = len(got)
    assert held < 100_000           # the kernel holds the rest while paused
    c.resume_reading()
    c.resume_reading()              # idempotent
    wait_for(lambda: len(got) == 100_000)
    for i in range(20):             # quick pause/resume flips lose nothing
        c.pause_reading()
        s.sendall(bytes([i]) * 1000)
        c.resume_reading()
    wait_for(lambda: len(got) == 120_000)
    assert bytes(got[100_000:]) == b"".join(bytes([i]) * 1000 for i in range(20))
    s.close()


def test_one_byte_trickle(engine):
    lst = engine.listen(("127.0.0.1", 0), on_recv=echo)
    s = client(lst.address)
    msg = os.urandom(300)
    for b in msg:
        s.send(bytes([b]))
        time.sleep(0.001)
    assert recv_exact(s, len(msg)) == msg
    s.close()


IDLE = 1.0 if UNDER_WINE else 0.5     # Wine: slower I/O, a wider margin
SWEEP = 0.25                          # the engine checks idle connections this often


def idle_clients(address, n):
    """n clients that each exchange one byte, then stay idle; their last
    activity falls at different points of the engine's sweep period."""
    socks, last = [], []
    for i in range(n):
        s = client(address)
        s.sendall(b"%d" % i)
        assert recv_exact(s, 1) == b"%d" % i
        socks.append(s)
        last.append(time.monotonic())
        time.sleep(SWEEP / n)                    # spread over one sweep period
    return socks, last


def test_idle_timeout_never_closes_sooner(engine):
    """No data in or out for idle_timeout seconds: not less."""
    lst = engine.listen(("127.0.0.1", 0), idle_timeout=IDLE, on_recv=echo)
    idle, last = idle_clients(lst.address, 5)
    took = []
    for s, t0 in zip(idle, last):
        assert wait_dropped(s, timeout=10 + IDLE), "an idle connection was not closed"
        took.append(time.monotonic() - t0)
        s.close()
    assert min(took) >= IDLE - 0.02, \
        f"closed after {min(took):.3f} s of silence with idle_timeout={IDLE}: {took}"


def test_idle_timeout_closes_idle_surfaced_connections(engine, caplog):
    """idle_timeout closes a surfaced connection with no data in or out for
    that long (TimeoutError in on_close, counted in idle_timeouts), never
    sooner; a slowloris trickle faster than that keeps its connection; a
    first-data connection that has not surfaced is not the idle timeout's
    business (first_data_timeout governs it, here None: kept)."""
    caplog.set_level(logging.DEBUG, logger="iocpx")
    rec = Recorder()
    lst = engine.listen(("127.0.0.1", 0), first_data=True, first_data_timeout=None,
                        idle_timeout=IDLE, on_accept=lambda c, d: (rec.accept(c, d), c.send(d)),
                        on_recv=echo, on_close=rec.on_close)
    silent = client(lst.address)                 # connects, never sends
    wait_for(lambda: held(engine) == 1, what="the silent connection to be held")
    idle, last = idle_clients(lst.address, 5)
    trickle = client(lst.address)
    stop, trickled, errors = threading.Event(), [0], []

    def slowloris():                             # one byte per IDLE/4: never idle that long
        try:
            while not stop.is_set():
                trickle.sendall(b"t")
                assert recv_exact(trickle, 1, timeout=5) == b"t"
                trickled[0] += 1
                stop.wait(IDLE / 4)
        except Exception as e:                   # reported below
            errors.append(e)

    th = threading.Thread(target=slowloris)
    th.start()
    took = []
    try:
        for s, t0 in zip(idle, last):
            assert wait_dropped(s, timeout=10 + IDLE), "an idle connection was not closed"
            took.append(time.monotonic() - t0)
        rec.wait_closed(5)
    finally:
        stop.set()
        th.join(10)
    assert not errors, f"the trickling client was cut off: {errors[0]!r}"
    assert max(took) < IDLE + SWEEP + (3 if UNDER_WINE else 1), took
    assert trickled[0] >= 2
    excs = list(rec.closed.values())
    assert len(excs) == 5 and all(isinstance(e, TimeoutError) for e in excs), excs
    assert engine.stats()["idle_timeouts"] == 5
    assert still_open(silent), "idle_timeout closed a connection that never surfaced"
    assert engine.stats()["first_data_timeouts"] == 0
    silent.sendall(b"late")                      # it surfaces now, with its first bytes
    assert recv_exact(silent, 4) == b"late"
    assert ("accept", b"late") in [(k, d) for k, _, d in rec.events]
    for s in idle + [trickle, silent]:
        s.close()
    rec.wait_closed(7)
    assert_quiet(caplog)                         # idle timeouts log at DEBUG at most


EMFILE_SERVER = textwrap.dedent("""
    import resource, sys, time, iocpx
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
    eng = iocpx.Engine(workers=2, backend=sys.argv[1])
    lst = eng.listen(("127.0.0.1", 0), on_recv=lambda c, d: c.send(d), backlog=512)
    print(lst.address[1], flush=True)
    sys.stdin.readline()
    print("accept_errors", eng.stats()["accept_errors"], flush=True)
    eng.close(timeout=20)
    print("live_io", iocpx.live_io(), flush=True)
""")


@pytest.mark.skipif(resource is None, reason="lowers RLIMIT_NOFILE (POSIX only)")
def test_emfile_listener_survives(backend):
    """Out of descriptors while accepting: the listener backs off, and
    accepts again once descriptors are free."""
    p = subprocess.Popen([sys.executable, "-c", EMFILE_SERVER, backend], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
    try:
        port = int(p.stdout.readline())
        socks = []
        for _ in range(100):             # more than the server may hold open
            socks.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        served = 0
        for s in socks[:20]:
            s.settimeout(0.5)
            try:
                s.sendall(b"ping")
                if s.recv(4) == b"ping":
                    served += 1
            except OSError:
                pass
        assert served >= 1
        for s in socks:
            s.close()
        time.sleep(0.5)
        fresh = socket.create_connection(("127.0.0.1", port), timeout=5)
        fresh.settimeout(5)
        fresh.sendall(b"again")          # served once descriptors are back
        assert recv_exact(fresh, 5) == b"again"
        fresh.close()
        p.stdin.write("\n")
        p.stdin.flush()
        out = p.stdout.read()
        assert p.wait(30) == 0
        errors = int(out.split("accept_errors")[1].split()[0])
        assert errors >= 1, "the descriptor limit was never hit"
        assert "live_io 0" in out
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        p.stdin.close()
        p.stdout.close()


def test_connection_storm_10000_cycles_no_leak(engine):
    lst = engine.listen(("127.0.0.1", 0), on_recv=echo)
    # under Wine a client's implicit bind() counts TIME_WAIT ports: fewer cycles there
    n, par = (3_000 if UNDER_WINE else 10_000), 200

    async def main():
        sem = asyncio.Semaphore(par)
        bad = 0

        async def one(i):
            nonlocal bad
            async with sem:
                r, w = await asyncio.open_connection(*lst.address)
                msg = b"%d" % i
                w.write(msg)
                if await asyncio.wait_for(r.readexactly(len(msg)), 30) != msg:
                    bad += 1
                w.close()
                await w.wait_closed()

        await asyncio.gather(*(one(i) for i in range(n)))
        return bad

    assert asyncio.run(main()) == 0
    wait_for(lambda: engine.stats()["connections"] == 0, timeout=20, what="all closed")
    st = engine.stats()
    assert st["accepted"] == n and st["closed"] == n


BUSY_CLIENTS = textwrap.dedent("""
    import asyncio, collections, sys
    port, n = int(sys.argv[1]), int(sys.argv[2])
    errors = collections.Counter()
    async def main():
        sem = asyncio.Semaphore(500)
        async def one(i):
            try:
                async with sem:
                    # eight source addresses: loopback ports still in TIME_WAIT from
                    # earlier tests cannot starve one of them
                    r, w = await asyncio.open_connection(
                        "127.0.0.1", port, local_addr=(f"127.0.0.{2 + i % 8}", 0))
                w.write(b"x" * 512)
                while True:
                    d = await r.read(65536)
                    if not d:
                        return
                    w.write(d)
            except OSError as e:
                errors[type(e).__name__ + ":" + str(e.errno)] += 1
        await asyncio.gather(*(one(i) for i in range(n)))
        print("client errors:", dict(errors), flush=True)
    asyncio.run(main())
""")


@pytest.mark.skipif(UNDER_WINE, reason="under Wine one wineserver holds every process's sockets, "
                    "so 20,000 of them pass this machine's 20,000-descriptor limit")
def test_engine_close_with_10000_busy_connections(backend):
    """Clients in a subprocess (10,000 per side would pass this process's
    descriptor limit); the engine closes with all of them busy."""
    eng = iocpx.Engine(workers=4, backend=backend)
    lst = eng.listen(("127.0.0.1", 0), on_recv=echo, backlog=4096)
    # the clients are not what is under test: no sanitizer preload for them
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "PYTHONMALLOC")}
    p = subprocess.Popen([sys.executable, "-c", BUSY_CLIENTS, str(lst.address[1]), "10000"],
                         stdout=subprocess.PIPE, text=True, env=env)
    try:
        try:
            wait_for(lambda: eng.stats()["connections"] >= 9_900, timeout=120, what="10,000 connections")
        except AssertionError:
            p.kill()
            raise AssertionError(f"only {eng.stats()['connections']} connections came up; "
                                 f"{p.communicate()[0].strip()}") from None
        time.sleep(0.5)
        st = eng.stats()
        assert st["bytes_in"] > 0
        t0 = time.monotonic()
        eng.close(timeout=60)
        took = time.monotonic() - t0
        check_closed_engine(eng, live_before=0)
        assert eng.stats()["closed"] == eng.stats()["accepted"] >= 9_900
        assert took < 30
        assert p.wait(60) == 0          # every client saw its connection end
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        p.stdout.close()
        eng.close(timeout=30)


def test_callbacks_misbehaving(engine, caplog):
    """on_close that raises, close() from on_accept, send() on a closed
    connection inside a callback: logged or raised, never a crash."""
    rec = Recorder()

    def on_accept(conn, data):
        conn.send(b"hello")
        conn.close()
        conn.close()
        try:
            conn.send(b"late")
        except iocpx.ConnectionClosedError:
            rec.add("refused")
        try:
            conn.pause_reading()
        except iocpx.ConnectionClosedError:
            rec.add("refused-pause")

    def on_close(conn, exc):
        rec.on_close(conn, exc)
        raise RuntimeError("on_close blew up")

    lst = engine.listen(("127.0.0.1", 0), on_accept=on_accept, on_close=on_close)
    for _ in range(5):
        s = client(lst.address)
        assert recv_until_eof(s) == b"hello"
        s.close()
    rec.wait(lambda r: len(r.closed) == 5)
    assert [e[0] for e in rec.events].count("refused") == 5
    assert any("on_close raised" in r.getMessage() for r in caplog.records)
    s = client(lst.address)          # still serving
    assert recv_until_eof(s) == b"hello"
    s.close()


def test_misuse_of_new_options(engine):
    with pytest.raises(TypeError):
        engine.listen(("127.0.0.1", 0), max_send_buffer="big")
    with pytest.raises(ValueError):
        engine.listen(("127.0.0.1", 0), max_send_buffer=0)
    with pytest.raises(ValueError):
        engine.listen(("127.0.0.1", 0), idle_timeout=0)
    with pytest.raises(TypeError):
        engine.listen(("127.0.0.1", 0), idle_timeout="1s")
    with pytest.raises(TypeError):
        engine.listen(("127.0.0.1", 0), on_drain=1)
    with pytest.raises(TypeError):
        engine.connect(("127.0.0.1", 1), max_send_buffer=None)


# A child process that cannot use io_uring, the way a container's seccomp profile makes it
# (Docker's default returns EPERM for io_uring_setup, as kernel.io_uring_disabled=2 does):
# a seccomp filter in that child alone, so nothing else on the machine is touched.
NO_IO_URING = textwrap.dedent("""
    import ctypes, logging, platform, struct, sys
    ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}[platform.machine()]
    IO_URING_SETUP = 425                    # the same number on both
    def op(code, k, jt=0, jf=0):
        return struct.pack("=HBBI", code, jt, jf, k)
    prog = b"".join([
        op(0x20, 4),                        # A = seccomp_data.arch
        op(0x15, ARCH, 1, 0),               # native? go on : allow
        op(0x06, 0x7FFF0000),               # SECCOMP_RET_ALLOW
        op(0x20, 0),                        # A = seccomp_data.nr
        op(0x15, IO_URING_SETUP, 0, 1),     # io_uring_setup? fail : allow
        op(0x06, 0x00050000 | 1),           # SECCOMP_RET_ERRNO | EPERM
        op(0x06, 0x7FFF0000),
    ])
    buf = ctypes.create_string_buffer(prog, len(prog))
    fprog = struct.pack("=HxxxxxxQ", len(prog) // 8, ctypes.addressof(buf))
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_char_p, ctypes.c_ulong,
                           ctypes.c_ulong]
    assert libc.prctl(38, 1, None, 0, 0) == 0, ctypes.get_errno()          # NO_NEW_PRIVS
    assert libc.prctl(22, 2, fprog, 0, 0) == 0, ctypes.get_errno()         # SECCOMP, FILTER
    import iocpx
    logging.basicConfig()
    e = iocpx.Engine(workers=1)
    print("BACKEND", e.backend, flush=True)
    e.close()
""")


@pytest.mark.skipif(not LINUX or os.uname().machine not in ("x86_64", "aarch64"),
                    reason="a seccomp filter for io_uring_setup is written for Linux x86_64 "
                           "and aarch64")
def test_fallback_to_epoll_when_io_uring_is_refused():
    """Where io_uring_setup fails (a container's seccomp profile, kernel.io_uring_disabled),
    the default backend is epoll, said once in the log."""
    r = subprocess.run([sys.executable, "-c", NO_IO_URING], capture_output=True, text=True,
                       timeout=60)
    assert "BACKEND epoll" in r.stdout, r.stdout + r.stderr
    assert r.stderr.count("using the epoll backend") == 1, r.stderr
