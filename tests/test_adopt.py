"""Adopted sockets, against every backend: listen(sock=...) with a bound or
already listening socket (a socket.socket or a bare descriptor, as systemd's
LISTEN_FDS hands them over), Engine.adopt() with a connected socket (one end
of a socketpair, a TCP client), the engine owning the descriptor afterwards,
the misuse cases (ValueError/TypeError, nothing taken), and a descriptor
closed behind the engine's back (a clear error through on_close, no hang)."""
import errno
import os
import socket
import sys

import pytest

import iocpx
from conftest import Recorder, client, echo, recv_exact, recv_until_eof

WINDOWS = sys.platform == "win32"


def close_fd(fd):
    if WINDOWS:
        socket.socket(fileno=fd).close()     # a SOCKET handle: closesocket
    else:
        os.close(fd)


@pytest.mark.parametrize("listening", [False, True], ids=["bound", "listening"])
def test_listen_sock_tcp(engine, listening):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    addr = s.getsockname()
    early = None
    if listening:
        s.listen(8)
        early = client(addr)                 # waits in the backlog before the engine has it
    lst = engine.listen(sock=s, on_recv=echo)
    assert s.fileno() == -1, "the socket object is detached: the engine owns the descriptor"
    assert lst.address == addr
    for c in filter(None, [early, client(addr)]):
        c.sendall(b"adopted")
        assert recv_exact(c, 7) == b"adopted"
        c.close()
    lst.close()


def test_listen_sock_bare_descriptor(engine):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(8)
    addr = s.getsockname()
    fd = s.detach()                          # e.g. systemd's LISTEN_FDS (fd 3, ...)
    lst = engine.listen(sock=fd, on_recv=echo)
    c = client(addr)
    c.sendall(b"fd")
    assert recv_exact(c, 2) == b"fd"
    c.close()
    lst.close()                              # closes fd: the no-leak check would see it


@pytest.mark.skipif(not hasattr(socket, "AF_UNIX"), reason="this Python has no AF_UNIX")
def test_listen_sock_unix(engine, tmp_path):
    path = os.path.join("/tmp", f"iocpx-adopt-{os.getpid()}-{id(engine)}.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(path)
    try:
        lst = engine.listen(sock=s, on_recv=echo)
        assert lst.address == path
        c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        c.settimeout(10)
        c.connect(path)
        c.sendall(b"unix")
        assert recv_exact(c, 4) == b"unix"
        c.close()
        lst.close()
        assert os.path.exists(path), "an adopted socket's file is not the engine's to remove"
    finally:
        os.unlink(path)


def test_adopt_socketpair(engine):
    a, b = socket.socketpair()
    rec = Recorder()
    conn = engine.adopt(a, on_recv=lambda c, d: (rec.add("data", d), c.send(d.upper())),
                        on_close=rec.on_close)
    assert a.fileno() == -1
    assert isinstance(conn, iocpx.Connection) and not conn.closed
    if b.family == getattr(socket, "AF_UNIX", None):
        assert conn.peer == "" and conn.local == ""
    else:
        assert conn.peer == b.getsockname()[:2]
    b.settimeout(10)
    b.sendall(b"hello")
    assert recv_exact(b, 5) == b"HELLO"
    big = os.urandom(1 << 20)
    conn.send(big)
    assert recv_exact(b, len(big)) == big
    b.shutdown(socket.SHUT_WR)               # EOF: the connection closes cleanly
    rec.wait(lambda r: r.closed)
    assert rec.closed == {conn.id: None}
    assert recv_until_eof(b) == b""
    b.close()
    assert engine.stats()["adopted"] == 1


def test_adopt_tcp_client_socket(engine):
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    c = socket.create_connection(srv.getsockname())
    peer, _ = srv.accept()
    rec = Recorder()
    conn = engine.adopt(c.detach(), on_recv=lambda cn, d: rec.add("data", d),
                        on_close=rec.on_close)
    assert conn.peer == srv.getsockname()
    assert conn.local == peer.getpeername()
    conn.send(b"from engine")
    peer.settimeout(10)
    assert recv_exact(peer, 11) == b"from engine"
    peer.sendall(b"to engine")
    rec.wait(lambda r: ("data", b"to engine") in r.events)
    conn.close()
    assert recv_until_eof(peer) == b""
    rec.wait(lambda r: r.closed)
    peer.close()
    srv.close()


def test_adopt_and_listen_sock_misuse(engine):
    # closed socket
    s = socket.socket()
    s.close()
    with pytest.raises(ValueError):
        engine.adopt(s)
    with pytest.raises(ValueError):
        engine.listen(sock=s)
    # listening socket: adopt() refuses, and leaves the socket untouched
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(1)
    with pytest.raises(ValueError, match="listening"):
        engine.adopt(ls)
    assert ls.fileno() != -1
    # not connected
    u = socket.socket()
    with pytest.raises(ValueError, match="not connected"):
        engine.adopt(u)
    # not bound: listen(sock=) refuses
    with pytest.raises(ValueError, match="not bound"):
        engine.listen(sock=u)
    assert u.fileno() != -1
    # datagram sockets are not streams
    d = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    d.bind(("127.0.0.1", 0))
    with pytest.raises(ValueError, match="stream"):
        engine.listen(sock=d)
    with pytest.raises(ValueError, match="stream"):
        engine.adopt(d)
    # wrong types, both address and sock, a descriptor that is no socket
    with pytest.raises(TypeError):
        engine.adopt("socket")
    with pytest.raises(TypeError):
        engine.listen(sock=1.5)
    with pytest.raises(TypeError):
        engine.listen(("127.0.0.1", 0), sock=ls)
    with pytest.raises(TypeError):
        engine.listen()
    with pytest.raises(ValueError):
        engine.adopt(-1)
    if not WINDOWS:
        r, w = os.pipe()
        with pytest.raises(ValueError, match="not an open socket"):
            engine.adopt(r)
        os.close(r)
        os.close(w)
    # ... and the engine still works with the sockets it was refused
    lst = engine.listen(sock=ls, on_recv=echo)
    c = client(lst.address)
    c.sendall(b"ok")
    assert recv_exact(c, 2) == b"ok"
    c.close()
    for x in (u, d):
        x.close()


@pytest.mark.parametrize("then", ["send", "engine_close"])
def test_adopted_descriptor_closed_behind_the_engines_back(backend, then):
    """The application closes a descriptor it gave away: the next operation
    fails with EBADF through on_close (with a hint), nothing crashes, and
    Engine.close() does not wait for an operation the kernel still holds."""
    eng = iocpx.Engine(workers=2, backend=backend)
    a, b = socket.socketpair()
    fd = a.detach()
    rec = Recorder()
    conn = eng.adopt(fd, on_recv=lambda c, d: rec.add("data", d), on_close=rec.on_close)
    b.sendall(b"before")
    rec.wait(lambda r: ("data", b"before") in r.events)
    close_fd(fd)                             # behind the engine's back
    if then == "send":
        conn.send(b"after")
        rec.wait(lambda r: r.closed)
        exc = rec.closed[conn.id]
        assert isinstance(exc, OSError), exc
        assert exc.errno in (errno.EBADF, getattr(errno, "ENOTSOCK", -1),
                             getattr(errno, "WSAENOTSOCK", -1)), exc
        assert "outside iocpx" in str(exc)
    eng.close(timeout=10)                    # must not hang on the orphaned receive
    rec.wait(lambda r: r.closed)
    assert eng.stats()["pending_ops"] == 0
    b.close()


def test_adopted_connection_closes_with_the_engine(backend):
    eng = iocpx.Engine(workers=1, backend=backend)
    a, b = socket.socketpair()
    rec = Recorder()
    eng.adopt(a, on_close=rec.on_close)
    eng.close(timeout=10)
    assert list(rec.closed.values()) == [None]
    b.settimeout(10)
    assert recv_until_eof(b) == b""          # the engine closed its end
    b.close()
