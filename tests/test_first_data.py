"""Silent clients (connect, never send) cannot deny service to a first_data=True
listener, and a first-data connection waits for its first bytes at most
first_data_timeout, the same on every backend (docs/first-data.md).

io_uring and epoll accept on connect, so a silent client never holds an
accept slot: it waits, unseen, for its first bytes. iocp's AcceptEx slots wait
for data; the engine checks them every 100 ms (SO_CONNECT_TIME: is a client
connected?), and a slot that holds a client without data at two checks in a
row makes it post slots without a receive buffer, plus one per silent client;
it drops a silent AcceptEx client after first_data_timeout too.
Timeouts here are short: 0.5 s on Linux, 1 s or more on iocp (SO_CONNECT_TIME
has one-second granularity)."""
import math
import socket
import time

import pytest

import iocpx
from conftest import (UNDER_WINE, Recorder, assert_quiet, check_closed_engine, client, echo, held,
                      recv_exact, still_open, wait_dropped, wait_for)

# 500 silent connections on Linux (1,000 descriptors in this process); under
# Wine every socket goes through the one wineserver and each accept costs
# milliseconds, so 150 (still far more than the 16 default AcceptEx slots).
SILENT = 150 if UNDER_WINE else 500
# Seconds for the legit client's first echo: iocp's guard reacts in 0.1-0.2 s
# (it took 1-2 s when it counted whole seconds of SO_CONNECT_TIME)
LEGIT_BOUND = 2.0

# Tests that mostly wait for the clock run with one worker count each (some
# with the single-worker engine, some with a pool) to keep the suite short.
ONE_WORKER = pytest.mark.parametrize("workers", [1], ids=["w1"])
POOL = pytest.mark.parametrize("workers", [4], ids=["w4"])


def fdt_for(backend, linux=0.5):
    """A short first_data_timeout the backend can honour: iocp counts in
    whole seconds (SO_CONNECT_TIME)."""
    return max(linux, 1.0) if backend == "iocp" else linux


def slack(backend):
    """How late a drop may come after its deadline: iocp checks its slots
    once a second; Wine is slow."""
    return (1.0 + (4.0 if UNDER_WINE else 1.0)) if backend == "iocp" else 1.0


def on_accept_echo(rec):
    def on_accept(conn, data):
        rec.accept(conn, data)
        conn.send(data)
    return on_accept


@pytest.mark.parametrize("accepts", [None, 1], ids=["accepts-default", "accepts-1"])
def test_silent_clients_do_not_starve_a_legit_client(backend, accepts, log):
    """bench/silent_clients.py's scenario at CI size, with default options:
    SILENT clients connect and say nothing, then a legit client sends and gets its echo
    within LEGIT_BOUND seconds."""
    n = SILENT if accepts is None else SILENT // 5
    live0 = iocpx.live_io()
    eng = iocpx.Engine(backend=backend)
    rec = Recorder()
    silent = []
    try:
        kw = {} if accepts is None else {"accepts": accepts}
        lst = eng.listen(("127.0.0.1", 0), first_data=True, on_accept=on_accept_echo(rec),
                         on_recv=echo, on_close=rec.on_close, backlog=4096, **kw)
        t_first = time.monotonic()
        for _ in range(n):
            silent.append(socket.create_connection(lst.address, timeout=10))
        slots = 16 if accepts is None else accepts
        # held: accepted and waiting (accept on connect) or sitting in AcceptEx slots
        wait_for(lambda: held(eng) >= (min(n, slots) if backend == "iocp" else n),
                 timeout=30, what="the silent clients to be held")
        t0 = time.monotonic()
        legit = client(lst.address, timeout=30)
        legit.sendall(b"legit")
        assert recv_exact(legit, 5, timeout=30) == b"legit"
        waited = time.monotonic() - t0
        assert waited < LEGIT_BOUND, f"the legit client waited {waited:.2f} s behind {n} silent ones"
        assert [(k, d) for k, _, d in rec.events] == [("accept", b"legit")]
        if time.monotonic() - t_first < 9:          # the default first_data_timeout is 10 s
            assert eng.stats()["first_data_timeouts"] == 0
            assert all(still_open(s) for s in silent)
        legit.close()
        rec.wait_closed()
    finally:
        for s in silent:
            s.close()
        eng.close(timeout=30)
    check_closed_engine(eng, live0)
    assert_quiet(log)


def test_silent_clients_are_dropped_after_first_data_timeout(engine, log):
    """More silent clients than AcceptEx slots (iocp: some wait in slots,
    some are accepted without first data): each is closed, never surfaced,
    no sooner than first_data_timeout after it connected and not much later,
    and each is counted once in first_data_timeouts."""
    fdt = fdt_for(engine.backend)
    n = 20
    rec = Recorder()
    lst = engine.listen(("127.0.0.1", 0), first_data=True, first_data_timeout=fdt,
                        on_accept=on_accept_echo(rec), on_recv=echo, on_close=rec.on_close)
    socks, t_conn = [], []
    for _ in range(n):
        socks.append(socket.create_connection(lst.address, timeout=10))
        t_conn.append(time.monotonic())
    took = []
    for s, t0 in zip(socks, t_conn):
        assert wait_dropped(s, timeout=fdt + slack(engine.backend) + 10), "a silent client was kept"
        took.append(time.monotonic() - t0)
    for s in socks:
        s.close()
    assert min(took) >= fdt - 0.02, f"dropped after {min(took):.3f} s, first_data_timeout={fdt}"
    assert max(took) < fdt + slack(engine.backend) + 1, took
    wait_for(lambda: engine.stats()["first_data_timeouts"] == n, timeout=5,
             what=f"first_data_timeouts to reach {n}")
    assert rec.events == []                          # never surfaced: no on_accept, no on_close
    legit = client(lst.address)                      # the listener serves on
    legit.sendall(b"after")
    assert recv_exact(legit, 5) == b"after"
    legit.close()
    rec.wait_closed()
    assert engine.stats()["first_data_timeouts"] == n
    assert_quiet(log)


@ONE_WORKER
def test_first_bytes_just_before_the_deadline_are_served(engine):
    fdt = fdt_for(engine.backend, linux=1.0) * (2 if engine.backend == "iocp" else 1)
    rec = Recorder()
    lst = engine.listen(("127.0.0.1", 0), first_data=True, first_data_timeout=fdt,
                        on_accept=on_accept_echo(rec), on_recv=echo, on_close=rec.on_close)
    early = client(lst.address)
    late = client(lst.address)
    t0 = time.monotonic()
    wait_for(lambda: held(engine) == 2, what="both clients to be held")
    # the point of this test is the clock: send at 50% and at 80% of the timeout
    time.sleep(max(0.0, t0 + 0.5 * fdt - time.monotonic()))
    early.sendall(b"early")
    assert recv_exact(early, 5) == b"early"
    time.sleep(max(0.0, t0 + 0.8 * fdt - time.monotonic()))
    late.sendall(b"in time")
    assert recv_exact(late, 7) == b"in time"
    assert sorted(d for k, _, d in rec.events if k == "accept") == [b"early", b"in time"]
    # surfaced connections are past first_data_timeout: still served after it
    time.sleep(max(0.0, t0 + fdt + 0.3 - time.monotonic()))
    late.sendall(b"more")
    assert recv_exact(late, 4) == b"more"
    assert engine.stats()["first_data_timeouts"] == 0
    early.close()
    late.close()
    rec.wait_closed(2)
    assert list(rec.closed.values()) == [None, None]


@POOL
def test_first_data_timeout_none_keeps_silent_clients(engine, log):
    """Two listeners on one engine: silent clients of the one with a short
    first_data_timeout are dropped; those of the one with None are still open
    three timeouts later, and surface when they finally send."""
    fdt = fdt_for(engine.backend)
    rec = Recorder()
    short = engine.listen(("127.0.0.1", 0), first_data=True, first_data_timeout=fdt,
                          on_accept=on_accept_echo(rec), on_recv=echo, on_close=rec.on_close)
    forever = engine.listen(("127.0.0.1", 0), first_data=True, first_data_timeout=None,
                            on_accept=on_accept_echo(rec), on_recv=echo, on_close=rec.on_close)
    kept = [socket.create_connection(forever.address, timeout=10) for _ in range(20)]
    dropped = [socket.create_connection(short.address, timeout=10) for _ in range(3)]
    t0 = time.monotonic()
    for s in dropped:
        assert wait_dropped(s, timeout=fdt + slack(engine.backend) + 10)
        s.close()
    wait_for(lambda: engine.stats()["first_data_timeouts"] == 3, timeout=5)
    # bounded: three timeouts' worth of time, then they must all still be there
    time.sleep(max(0.0, t0 + 3 * fdt - time.monotonic()))
    assert all(still_open(s) for s in kept), "first_data_timeout=None dropped a silent client"
    assert engine.stats()["first_data_timeouts"] == 3
    assert rec.events == []
    for i, s in enumerate(kept):
        s.sendall(b"k%02d" % i)
        assert recv_exact(s, 3) == b"k%02d" % i
    assert sorted(d for k, _, d in rec.events if k == "accept") == [b"k%02d" % i for i in range(20)]
    for s in kept:
        s.close()
    rec.wait_closed(20)
    assert_quiet(log)


@ONE_WORKER
def test_silent_clients_ignore_idle_timeout(engine, log):
    """idle_timeout governs surfaced connections only: a silent one is closed
    by first_data_timeout, not by a shorter idle_timeout."""
    fdt = 2.0 if engine.backend == "iocp" else 1.5
    rec = Recorder()
    lst = engine.listen(("127.0.0.1", 0), first_data=True, first_data_timeout=fdt,
                        idle_timeout=0.3, on_accept=on_accept_echo(rec), on_recv=echo,
                        on_close=rec.on_close)
    silent = client(lst.address)
    t0 = time.monotonic()
    talker = client(lst.address)
    talker.sendall(b"t")
    assert recv_exact(talker, 1) == b"t"
    assert wait_dropped(talker, timeout=10)          # idle: closed by idle_timeout
    assert still_open(silent)
    assert time.monotonic() - t0 < fdt
    assert wait_dropped(silent, timeout=fdt + slack(engine.backend) + 10)
    assert time.monotonic() - t0 >= fdt - 0.02
    silent.close()
    talker.close()
    st = engine.stats()
    assert st["idle_timeouts"] == 1
    wait_for(lambda: engine.stats()["first_data_timeouts"] == 1, timeout=5)
    rec.wait_closed()
    assert [type(e) for e in rec.closed.values()] == [TimeoutError]
    assert_quiet(log)                                # idle and first-data timeouts: DEBUG at most


@ONE_WORKER
def test_first_data_timeout_still_applies_after_the_listener_closes(engine):
    """Closing a listener leaves the connections it accepted open, but not a
    silent one forever: it is still dropped after first_data_timeout (iocp:
    a client still in an AcceptEx slot goes with the slot at once)."""
    fdt = fdt_for(engine.backend)
    rec = Recorder()
    lst = engine.listen(("127.0.0.1", 0), first_data=True, first_data_timeout=fdt,
                        on_accept=on_accept_echo(rec), on_recv=echo, on_close=rec.on_close)
    s = client(lst.address)
    t0 = time.monotonic()
    wait_for(lambda: held(engine) == 1, what="the silent client to be held")
    lst.close()
    try:
        assert wait_dropped(s, timeout=fdt + slack(engine.backend)), \
            f"still connected {time.monotonic() - t0:.1f} s later (first_data_timeout={fdt})"
    finally:
        s.close()
    assert rec.events == []
    if engine.backend != "iocp":
        assert time.monotonic() - t0 >= fdt - 0.02
        wait_for(lambda: engine.stats()["first_data_timeouts"] == 1, timeout=5)


def test_engine_close_drops_silent_clients_unseen(backend):
    """Engine.close() with silent clients held (accepted and waiting, or in
    AcceptEx slots): each is dropped, none is ever surfaced or reported, and
    every context and descriptor is given back."""
    live0 = iocpx.live_io()
    eng = iocpx.Engine(workers=2, backend=backend)
    rec = Recorder()
    socks = []
    try:
        lst = eng.listen(("127.0.0.1", 0), first_data=True, first_data_timeout=None,
                         on_accept=on_accept_echo(rec), on_recv=echo, on_close=rec.on_close)
        socks = [socket.create_connection(lst.address, timeout=10) for _ in range(24)]
        wait_for(lambda: held(eng) >= (16 if backend == "iocp" else 24), what="the silent clients")
    finally:
        eng.close(timeout=30)
    check_closed_engine(eng, live0)
    for s in socks:
        assert wait_dropped(s), "a silent client outlived Engine.close()"
        s.close()
    assert rec.events == []
    assert eng.stats()["first_data_timeouts"] == 0


@ONE_WORKER
def test_a_huge_first_data_timeout_keeps_the_client_quietly(engine, monkeypatch):
    unraisable = []
    monkeypatch.setattr("sys.unraisablehook", unraisable.append)
    rec = Recorder()
    lst = engine.listen(("127.0.0.1", 0), first_data=True, first_data_timeout=1e12,
                        on_accept=on_accept_echo(rec), on_recv=echo, on_close=rec.on_close)
    s = client(lst.address)
    wait_for(lambda: held(engine) == 1, what="the silent client to be held")
    sentinel = []
    engine.call_later(0.2, sentinel.append, 1)           # the deadline timer would have run
    wait_for(lambda: sentinel, what="a later timer")
    s.sendall(b"still here")
    assert recv_exact(s, 10) == b"still here"
    s.close()
    rec.wait_closed()
    assert not unraisable, [str(u.exc_value) for u in unraisable]


@pytest.mark.parametrize("value, exc", [
    (0, ValueError), (-1, ValueError), (0.0, ValueError), (math.nan, ValueError),
    (math.inf, ValueError), ("x", TypeError), ("10", TypeError), (True, TypeError),
    (b"1", TypeError), ([1], TypeError),
])
def test_bad_first_data_timeout(engine, value, exc):
    with pytest.raises(exc):
        engine.listen(("127.0.0.1", 0), first_data=True, first_data_timeout=value)
    assert engine.stats()["listeners"] == 0


def test_first_data_timeout_values_that_work(engine):
    for v in (None, 1, 0.25, 10.0, 3600):
        engine.listen(("127.0.0.1", 0), first_data=True, first_data_timeout=v).close()
    assert engine.stats()["listeners"] == 0
