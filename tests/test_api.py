"""Outbound connections, Server, stats, and what misuse of the API gets."""
import os
import socket
import sys
import threading
import time

import pytest

import iocpx
from conftest import Recorder, client, echo, recv_exact, wait_for


def test_connect_roundtrip_on_same_engine(engine):
    """An iocpx client and an iocpx server on one engine."""
    rec = Recorder()
    lst = engine.listen(("127.0.0.1", 0), on_recv=echo)
    got = bytearray()
    payload = os.urandom(200_000)

    def on_recv(conn, data):
        got.extend(data)
        if len(got) >= len(payload):
            conn.close()

    def on_connect(conn):
        rec.add("connect", conn.id, conn.peer)

    conn = engine.connect(lst.address, on_connect=on_connect, on_recv=on_recv,
                          on_close=rec.on_close)
    conn.send(payload)              # queued before the connect completes
    rec.wait(lambda r: r.closed, timeout=20)
    assert bytes(got) == payload
    assert rec.events[0][0] == "connect" and rec.events[0][2] == lst.address
    assert list(rec.closed.values()) == [None]
    st = engine.stats()
    assert st["connected"] == 1 and st["accepted"] == 1


def test_connect_refused_reports_on_close(engine):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))        # bound, not listening: refused; kept bound so the port
    addr = s.getsockname()          # cannot become an ephemeral port (a self-connect) meanwhile
    rec = Recorder()
    engine.connect(addr, on_connect=lambda c: rec.add("connect"), on_close=rec.on_close)
    rec.wait(lambda r: r.closed)
    s.close()
    exc = list(rec.closed.values())[0]
    assert isinstance(exc, ConnectionRefusedError)
    assert exc.errno is not None
    assert not [e for e in rec.events if e[0] == "connect"]


def test_server_context_manager_and_stats(backend):
    with iocpx.Server(("127.0.0.1", 0), on_recv=echo, backend=backend, workers=2) as srv:
        s = client(srv.address)
        s.sendall(b"ping")
        assert recv_exact(s, 4) == b"ping"
        st = srv.stats()
        for key in ("connections", "accepted", "bytes_in", "bytes_out", "pending_ops",
                    "live_io", "backend", "workers"):
            assert key in st
        assert st["backend"] == backend and st["workers"] == 2
        assert st["accepted"] == 1 and st["bytes_in"] == 4
        wait_for(lambda: srv.stats()["bytes_out"] == 4)
        s.close()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(srv.address, timeout=5)
    final = srv.stats()                 # after stop(): the final counters
    assert final["accepted"] == 1 and final["closed"] == 1
    assert final["bytes_in"] == 4 and final["bytes_out"] == 4
    assert final["live_io"] == 0        # every context reaped, in this process
    assert final["closed_engine"]
    final["accepted"] = -1              # a copy: the server's own record stays
    assert srv.stats()["accepted"] == 1


def test_engine_stats_counters(engine):
    st = engine.stats()
    for key in ("connections", "accepted", "connected", "closed", "bytes_in", "bytes_out",
                "bytes_dropped", "messages_in", "pending_ops", "live_io", "listeners",
                "accept_errors", "first_data_timeouts", "idle_timeouts", "timers",
                "timers_fired", "rescues", "internal_errors"):
        assert isinstance(st[key], int) and not isinstance(st[key], bool), key
        assert st[key] >= 0, key
    assert st["backend"] == engine.backend and st["workers"] == engine.workers
    assert not st["closing"] and not st["closed_engine"]
    assert st["internal_errors"] == 0


def test_server_stats_before_start_raises(backend):
    srv = iocpx.Server(("127.0.0.1", 0), on_recv=echo, backend=backend, workers=1)
    with pytest.raises(RuntimeError):
        srv.stats()
    srv.stop()                          # nothing to stop: no error


def test_server_serve_forever_stops(backend):
    srv = iocpx.Server(("127.0.0.1", 0), on_recv=echo, backend=backend, workers=1)
    t = threading.Thread(target=srv.serve_forever)
    t.start()
    wait_for(lambda: srv.engine is not None and srv._listener is not None)
    s = client(srv.address)
    s.sendall(b"x")
    assert recv_exact(s, 1) == b"x"
    s.close()
    srv.stop()
    t.join(10)
    assert not t.is_alive()


def test_default_workers_and_backend_names():
    assert iocpx.default_backend() in iocpx.available_backends()
    with iocpx.Engine() as eng:
        assert eng.workers == 2 * os.cpu_count()
        assert eng.backend == iocpx.default_backend()


@pytest.mark.parametrize("kwargs, exc", [
    (dict(workers=0), ValueError),
    (dict(workers=-3), ValueError),
    (dict(workers="4"), TypeError),
    (dict(workers=2.0), TypeError),
    (dict(backend="nonesuch"), ValueError),
    (dict(backend=5), TypeError),
])
def test_engine_bad_arguments(kwargs, exc):
    with pytest.raises(exc):
        iocpx.Engine(**kwargs)


@pytest.mark.parametrize("address, kwargs, exc", [
    ("127.0.0.1:80", {}, TypeError),
    (("127.0.0.1",), {}, TypeError),
    (("127.0.0.1", "80"), {}, TypeError),
    (("127.0.0.1", 70000), {}, ValueError),
    ((b"127.0.0.1", 0), {}, TypeError),
    (("127.0.0.1", 0), dict(on_recv=5), TypeError),
    (("127.0.0.1", 0), dict(on_accept="f"), TypeError),
    (("127.0.0.1", 0), dict(accepts=0), ValueError),
    (("127.0.0.1", 0), dict(accepts=1.5), TypeError),
    (("127.0.0.1", 0), dict(buffer_size=0), ValueError),
    (("127.0.0.1", 0), dict(buffer_size=-4096), ValueError),
    (("127.0.0.1", 0), dict(buffer_size="4k"), TypeError),
    (("127.0.0.1", 0), dict(backlog=-1), ValueError),
    (("no-such-host.invalid", 0), {}, OSError),
])
def test_listen_bad_arguments(engine, address, kwargs, exc):
    with pytest.raises(exc):
        engine.listen(address, **kwargs)


def test_listen_port_in_use_by_another_listener(engine):
    lst = engine.listen(("127.0.0.1", 0))
    with pytest.raises(OSError) as ei:
        engine.listen(lst.address)
    assert ei.value.errno is not None


def test_odd_buffer_size_delivers_everything_in_order(engine):
    """buffer_size (rounded up to 4 KiB) sizes the kernel's receive buffers;
    pieces that arrive back to back reach on_recv as one call."""
    got = []
    lst = engine.listen(("127.0.0.1", 0), buffer_size=5000, on_recv=lambda c, d: got.append(d))
    s = client(lst.address)
    payload = os.urandom(300_000)
    s.sendall(payload)
    wait_for(lambda: sum(map(len, got)) == len(payload))
    assert b"".join(got) == payload
    s.close()


def test_send_misuse_and_use_after_close(engine):
    conns = []
    rec = Recorder()
    lst = engine.listen(("127.0.0.1", 0), on_accept=lambda c, d: conns.append(c),
                        on_close=rec.on_close)
    s = client(lst.address)
    wait_for(lambda: conns)
    c = conns[0]
    with pytest.raises(TypeError):
        c.send("text")
    with pytest.raises(TypeError):
        c.send(12)
    with pytest.raises(TypeError):
        c.send(None)
    c.send(b"")                         # nothing to do, not an error
    c.close()
    rec.wait(lambda r: r.closed)
    assert c.closed
    with pytest.raises(iocpx.ConnectionClosedError) as ei:
        c.send(b"x")
    assert isinstance(ei.value, OSError) and ei.value.errno is not None
    with pytest.raises(iocpx.ConnectionClosedError):
        c.sendfile(__file__)
    with pytest.raises(OSError):
        _ = c.local
    c.close()
    c.abort()
    s.close()


def test_use_after_engine_close(backend):
    eng = iocpx.Engine(workers=1, backend=backend)
    eng.close()
    eng.close()                         # idempotent
    assert eng.closed
    with pytest.raises(iocpx.ConnectionClosedError):
        eng.listen(("127.0.0.1", 0))
    with pytest.raises(iocpx.ConnectionClosedError):
        eng.connect(("127.0.0.1", 1))
    with pytest.raises(iocpx.ConnectionClosedError):
        with eng:
            pass
    assert eng.stats()["closed_engine"]


def test_close_timeout_validation(engine):
    with pytest.raises(ValueError):
        engine.close(timeout=-1)


def test_abort_drops_queue_and_reports(engine):
    rec = Recorder()
    conns = []
    lst = engine.listen(("127.0.0.1", 0), on_accept=lambda c, d: conns.append(c),
                        on_close=rec.on_close)
    s = client(lst.address)
    wait_for(lambda: conns)
    conns[0].send(os.urandom(1 << 20))
    conns[0].abort()
    rec.wait(lambda r: r.closed)
    assert list(rec.closed.values()) == [None]
    st = engine.stats()
    assert st["bytes_out"] + st["bytes_dropped"] == 1 << 20
    s.close()


def test_server_stop_from_a_callback(backend):
    srv = iocpx.Server(("127.0.0.1", 0), backend=backend, workers=2,
                       on_recv=lambda c, d: srv.stop() if d == b"quit" else c.send(d))
    t = threading.Thread(target=srv.serve_forever)
    t.start()
    wait_for(lambda: srv._listener is not None)
    s = client(srv.address)
    s.sendall(b"quit")
    t.join(10)
    assert not t.is_alive()
    s.close()


@pytest.mark.skipif(not hasattr(socket, "SO_REUSEPORT"), reason="no SO_REUSEPORT on this platform")
def test_reuse_port_and_local_address(engine):
    peers = []
    a = engine.listen(("127.0.0.1", 0), reuse_port=True,
                      on_accept=lambda c, d: peers.append(c.peer), on_recv=echo)
    b = engine.listen(a.address, reuse_port=True,                 # the same port again
                      on_accept=lambda c, d: peers.append(c.peer), on_recv=echo)
    assert b.address == a.address
    rec = Recorder()
    got = []
    conn = engine.connect(a.address, local_address=("127.0.0.7", 0),
                          on_recv=lambda c, d: (got.append(d), c.close()), on_close=rec.on_close)
    conn.send(b"from .7")
    rec.wait(lambda r: r.closed)
    assert got == [b"from .7"]
    assert peers and peers[0][0] == "127.0.0.7"
    with pytest.raises(ValueError):
        engine.connect(a.address, local_address=("::1", 0))


def test_addresses_after_on_close(engine):
    """Once on_close has run the socket is gone: conn.local (never asked
    before) raises ConnectionClosedError, a clear error instead of the
    system's EBADF/WSAENOTSOCK; the peer an accept recorded stays readable."""
    got = {}
    done = threading.Event()

    def on_close(conn, exc):
        try:
            got["local"] = conn.local
        except iocpx.ConnectionClosedError as e:
            got["local"] = e
        got["peer"] = conn.peer
        done.set()

    lst = engine.listen(("127.0.0.1", 0), first_data=True, on_accept=lambda c, d: c.close(),
                        on_close=on_close)
    s = socket.create_connection(lst.address, timeout=10)
    s.sendall(b"hi")
    assert done.wait(10)
    assert isinstance(got["local"], iocpx.ConnectionClosedError), got
    assert got["peer"] == s.getsockname()
    s.close()


def _nodelay_of(conn):
    """TCP_NODELAY of the server's socket for conn, found among this
    process's descriptors by its two addresses (Linux: /proc/self/fd)."""
    want = (conn.local, conn.peer)
    for name in os.listdir("/proc/self/fd"):
        try:
            if not os.readlink(f"/proc/self/fd/{name}").startswith("socket:"):
                continue
            s = socket.socket(fileno=os.dup(int(name)))
        except OSError:
            continue
        try:
            if s.type == socket.SOCK_STREAM and (s.getsockname(), s.getpeername()) == want:
                return s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        except OSError:
            pass
        finally:
            s.close()
    raise AssertionError(f"no socket {want} in this process")


@pytest.mark.skipif(not sys.platform.startswith("linux"),
                    reason="finds the server's socket through Linux's /proc/self/fd; Windows "
                           "has no way to list a process's sockets from Python")
@pytest.mark.parametrize("first_data", [True, False], ids=["first-data", "plain"])
@pytest.mark.parametrize("nodelay", [True, False], ids=["nodelay", "nagle"])
def test_accepted_connections_get_nodelay_as_asked(engine, first_data, nodelay):
    """nodelay=True (the default) is on by the time on_accept runs, also for
    a first-data connection, which gets it only once its data came."""
    got = []
    done = threading.Event()

    def on_accept(conn, data):
        got.append(_nodelay_of(conn))
        done.set()

    lst = engine.listen(("127.0.0.1", 0), first_data=first_data, on_accept=on_accept,
                        nodelay=nodelay)
    s = socket.create_connection(lst.address, timeout=10)
    if first_data:
        time.sleep(0.2)                 # it waits unseen first
        s.sendall(b"hi")
    assert done.wait(10)
    assert got == [nodelay]
    s.close()
