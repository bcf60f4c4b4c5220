"""Resets, raising callbacks, blocking callbacks, shutdown with traffic in flight."""
import errno
import logging
import os
import socket
import threading
import time

import pytest

import iocpx
from conftest import (Recorder, check_closed_engine, client, echo, recv_exact,
                      recv_until_eof, rst, wait_dropped, wait_for)


def test_peer_reset_mid_stream(engine):
    """The server streams; the client resets. on_close gets the error and the
    server keeps serving others."""
    rec = Recorder()
    blob = os.urandom(1 << 20)

    def on_accept(conn, data):
        if data == b"stream":
            for _ in range(64):
                conn.send(blob)
        else:
            conn.send(data)

    lst = engine.listen(("127.0.0.1", 0), first_data=True, on_accept=on_accept,
                        on_recv=echo, on_close=rec.on_close, max_send_buffer=128 << 20)
    s = client(lst.address)
    s.sendall(b"stream")
    recv_exact(s, 100_000)
    rst(s)
    rec.wait(lambda r: r.closed, timeout=20)
    exc = list(rec.closed.values())[0]
    # a reset is a ConnectionResetError whatever the kernel said (ECONNRESET, EPIPE...)
    assert type(exc) is ConnectionResetError and exc.errno == errno.ECONNRESET, repr(exc)
    s2 = client(lst.address)
    s2.sendall(b"still here")
    assert recv_exact(s2, 10) == b"still here"
    s2.close()


def test_callback_that_raises_closes_only_its_connection(engine, caplog):
    rec = Recorder()

    def on_recv(conn, data):
        if data.startswith(b"boom"):
            raise ValueError("bad request")
        conn.send(data)

    lst = engine.listen(("127.0.0.1", 0), on_recv=on_recv, on_close=rec.on_close)
    good = client(lst.address)
    bad = client(lst.address)
    with caplog.at_level(logging.ERROR, logger="iocpx"):
        bad.sendall(b"boom")
        assert recv_until_eof(bad) == b""          # the server closed it
        rec.wait(lambda r: r.closed)
    exc = list(rec.closed.values())[0]
    assert isinstance(exc, ValueError) and str(exc) == "bad request"
    assert any("bad request" in (r.exc_text or "") or r.exc_info for r in caplog.records
               if r.name == "iocpx")
    good.sendall(b"fine")
    assert recv_exact(good, 4) == b"fine"
    good.close()
    bad.close()


def test_close_with_traffic_in_flight(backend):
    live0 = iocpx.live_io()
    eng = iocpx.Engine(workers=4, backend=backend)
    lst = eng.listen(("127.0.0.1", 0), on_recv=echo)
    stop = threading.Event()
    socks = [client(lst.address) for _ in range(50)]

    def pump(s):
        data = os.urandom(65536)
        try:
            while not stop.is_set():
                s.sendall(data)
                s.recv(65536)
        except OSError:
            pass

    ths = [threading.Thread(target=pump, args=(s,), daemon=True) for s in socks]
    for t in ths:
        t.start()
    wait_for(lambda: eng.stats()["bytes_in"] > 50 * 65536, what="traffic on every connection")
    eng.close(timeout=30)
    check_closed_engine(eng, live0)
    assert eng.stats()["closed"] == eng.stats()["accepted"] == 50
    for s in socks:                     # every client sees its connection end
        assert wait_dropped(s), "a client connection outlived Engine.close()"
    stop.set()
    for s in socks:
        s.close()
    for t in ths:
        t.join(10)
    with pytest.raises(iocpx.ConnectionClosedError):
        eng.listen(("127.0.0.1", 0))


@pytest.mark.parametrize("workers", [4, None], ids=["w4", "wdefault"])
def test_blocking_callback_stalls_only_its_connection(backend, workers):
    """One callback sleeps 1.5 s; 50 other connections keep echoing meanwhile,
    with the default pool too (a helper takes over: stats()["rescues"])."""
    eng = iocpx.Engine(workers=workers, backend=backend)
    sleeping = threading.Event()

    def on_recv(conn, data):
        if data == b"sleep":
            sleeping.set()
            time.sleep(1.5)
        conn.send(data)

    try:
        lst = eng.listen(("127.0.0.1", 0), on_recv=on_recv)
        others = [client(lst.address) for _ in range(50)]
        sleeper = client(lst.address)
        sleeper.sendall(b"sleep")
        assert sleeping.wait(5)
        t0 = time.monotonic()
        rounds = 0
        worst = 0.0
        while time.monotonic() - t0 < 1.0:
            for i, s in enumerate(others):
                t1 = time.monotonic()
                msg = b"m%05d" % i
                s.sendall(msg)
                assert recv_exact(s, len(msg), timeout=5) == msg
                worst = max(worst, time.monotonic() - t1)
            rounds += 1
        assert rounds >= 3, f"only {rounds} rounds of 50 echoes while one callback slept"
        assert worst < 0.3, f"an echo took {worst:.3f} s while another connection slept"
        assert recv_exact(sleeper, 5, timeout=5) == b"sleep"
        assert eng.stats()["rescues"] >= 1
        for s in others + [sleeper]:
            s.close()
    finally:
        eng.close(timeout=30)


def test_close_inside_callback_and_on_close_order(engine):
    rec = Recorder()

    def on_recv(conn, data):
        rec.add("recv", conn.id, data)
        conn.send(b"bye")
        conn.close()
        conn.close()        # idempotent
        with pytest.raises(iocpx.ConnectionClosedError):
            conn.send(b"late")

    lst = engine.listen(("127.0.0.1", 0), on_recv=on_recv, on_close=rec.on_close)
    s = client(lst.address)
    s.sendall(b"hi")
    assert recv_until_eof(s) == b"bye"
    rec.wait(lambda r: r.closed)
    assert [e[0] for e in rec.events] == ["recv", "close"]
    s.close()


def test_half_close_server_finishes_sending(engine):
    """The client shuts down its write side; queued replies still arrive."""
    payload = os.urandom(3 << 20)
    lst = engine.listen(("127.0.0.1", 0), on_recv=lambda c, d: c.send(payload) if d == b"go" else None)
    s = client(lst.address)
    s.sendall(b"go")
    s.shutdown(socket.SHUT_WR)
    assert recv_until_eof(s) == payload
    s.close()


def test_engine_close_from_callback_is_refused(engine):
    errors = []

    def on_recv(conn, data):
        try:
            engine.close()
        except RuntimeError as e:
            errors.append(e)
        conn.send(b"ok")

    lst = engine.listen(("127.0.0.1", 0), on_recv=on_recv)
    s = client(lst.address)
    s.sendall(b"x")
    assert recv_exact(s, 2) == b"ok"
    assert errors and "callback" in str(errors[0])
    s.close()


def test_listener_close_frees_port(engine):
    lst = engine.listen(("127.0.0.1", 0), on_recv=echo)
    addr = lst.address
    lst.close()
    assert lst.closed
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(addr, timeout=5)
    lst2 = engine.listen(addr, on_recv=echo)       # the same port again
    s = client(lst2.address)
    s.sendall(b"again")
    assert recv_exact(s, 5) == b"again"
    s.close()


def test_aborts_racing_incoming_data_stay_on_their_connection(engine):
    """Aborts land while the peers keep sending, round after round, so that
    sockets closed by an abort are replaced at once by new ones (Windows
    hands out the same socket numbers again). On iocp an abort of a
    connection with only its receive pending closes the socket at once, and
    a receive that has just completed is read from its socket: whichever
    comes first must win, or a read would take another connection's bytes.
    Every echo must be a prefix of what its own client sent, and each
    connection closes once."""
    import random
    import selectors
    rec = Recorder()

    def on_accept(conn, data):
        rec.accept(conn, data)
        conn.send(data)
        engine.call_later(random.uniform(0, 0.02), conn.abort)

    lst = engine.listen(("127.0.0.1", 0), first_data=True, on_accept=on_accept,
                        on_recv=echo, on_close=rec.on_close)
    rounds, n = 8, 24
    for r in range(rounds):
        sel = selectors.DefaultSelector()
        clients = []
        for _ in range(n):
            s = client(lst.address)
            s.setblocking(False)
            st = {"sock": s, "sent": bytearray(), "got": bytearray(), "k": 0, "done": False}
            clients.append(st)
            sel.register(s, selectors.EVENT_READ | selectors.EVENT_WRITE, st)
        deadline = time.monotonic() + 30
        while any(not c["done"] for c in clients):
            assert time.monotonic() < deadline, "clients still open 30 s after their aborts"
            for key, mask in sel.select(0.5):
                c = key.data
                try:
                    if mask & selectors.EVENT_WRITE and len(c["sent"]) < (1 << 20):
                        chunk = f"<{r}.{id(c) % 9973}.{c['k']}>".encode()
                        c["sent"] += chunk[:c["sock"].send(chunk)]
                        c["k"] += 1
                    if mask & selectors.EVENT_READ:
                        data = c["sock"].recv(65536)
                        if not data:
                            raise ConnectionResetError
                        c["got"] += data
                except BlockingIOError:
                    pass
                except OSError:
                    c["done"] = True
                    sel.unregister(c["sock"])
                    c["sock"].close()
        sel.close()
        for c in clients:
            assert bytes(c["sent"]).startswith(bytes(c["got"])), \
                "an echo carried bytes its client did not send"
    rec.wait_closed(rounds * n, timeout=30)
    assert len(rec.closed) == rounds * n
    assert engine.stats()["internal_errors"] == 0
