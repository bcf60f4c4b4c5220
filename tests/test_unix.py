"""Unix-domain sockets: listen("/path"), listen("\\0abstract") (Linux),
connect("/path"), against every backend: echo, first data, sendfile, flow
control, the socket file's life cycle (stale file, unlink_existing, removal
at close), peer/local paths, and the misuse cases.

The clients are plain Python AF_UNIX sockets; where this Python has none
(CPython on Windows), engine-to-engine tests still run when the system has
AF_UNIX, and skip with the reason when it has not (Wine 8)."""
import errno
import hashlib
import os
import socket
import sys
import threading
import uuid

import pytest

from conftest import Recorder, echo, recv_exact, recv_until_eof, wait_for

HAVE_PY_UNIX = hasattr(socket, "AF_UNIX")
needs_py_unix = pytest.mark.skipif(
    not HAVE_PY_UNIX, reason="this Python has no socket.AF_UNIX (CPython on Windows): "
                             "no plain client to test against")
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="the abstract namespace is Linux's")


@pytest.fixture
def sock_path(tmp_path):
    # tmp_path can be longer than sun_path allows: a short folder of our own
    d = os.path.join("/tmp" if os.path.isdir("/tmp") else str(tmp_path),
                     f"iocpx-{uuid.uuid4().hex[:10]}")
    os.mkdir(d)
    yield os.path.join(d, "s.sock")
    for name in os.listdir(d):
        os.unlink(os.path.join(d, name))
    os.rmdir(d)


def unix_client(path, timeout=10):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.connect(path)
    return s


def listen_or_skip(engine, path, **kw):
    """engine.listen(path), or a skip when the system has no AF_UNIX at all."""
    try:
        return engine.listen(path, **kw)
    except OSError as e:
        if e.errno == errno.EAFNOSUPPORT or getattr(e, "winerror", None) == 10047:
            pytest.skip(f"no AF_UNIX on this system ({e}); Wine 8 lacks it, "
                        f"Windows has it from 10 1803 on")
        raise


@needs_py_unix
def test_unix_echo_peer_local_and_address(engine, sock_path):
    rec = Recorder()
    lst = engine.listen(sock_path, on_accept=lambda c, d: rec.add("acc", c.peer, c.local),
                        on_recv=echo, on_close=rec.on_close)
    assert lst.address == sock_path
    assert os.path.exists(sock_path)
    payload = os.urandom(3 << 20)
    s = unix_client(sock_path)
    threading.Thread(target=s.sendall, args=(payload,), daemon=True).start()
    assert recv_exact(s, len(payload)) == payload
    rec.wait(lambda r: any(e[0] == "acc" for e in r.events))
    assert ("acc", "", sock_path) in rec.events       # the client is unnamed
    s.close()
    rec.wait(lambda r: r.closed)
    assert list(rec.closed.values()) == [None]
    lst.close()
    assert not os.path.exists(sock_path), "the listener removes its socket file at close"


@needs_py_unix
@pytest.mark.parametrize("first_data", [False, True])
def test_unix_first_data(engine, sock_path, first_data):
    rec = Recorder()
    engine.listen(sock_path, first_data=first_data,
                  on_accept=lambda c, d: (rec.add("acc", d), c.send(b"<" + d + b">")),
                  on_recv=echo)
    s = unix_client(sock_path)
    s.sendall(b"hello")
    if first_data:
        assert recv_exact(s, 7) == b"<hello>"
        assert rec.events == [("acc", b"hello")]
    else:
        assert recv_exact(s, 7) == b"<>hello"      # on_accept runs before any on_recv
        assert rec.events == [("acc", b"")]
    s.close()


@needs_py_unix
def test_unix_sendfile_and_send_in_order(engine, sock_path, tmp_path):
    blob = os.urandom(5 << 20)
    f = tmp_path / "blob.bin"
    f.write_bytes(blob)

    def on_accept(conn, data):
        conn.send(b"head:")
        conn.sendfile(str(f))
        conn.sendfile(str(f), offset=100, count=1000)
        conn.send(b":tail")
        conn.close()

    engine.listen(sock_path, on_accept=on_accept)
    s = unix_client(sock_path, timeout=30)
    got = recv_until_eof(s, timeout=30)
    s.close()
    want = b"head:" + blob + blob[100:1100] + b":tail"
    assert len(got) == len(want)
    assert hashlib.sha256(got).digest() == hashlib.sha256(want).digest()


@needs_py_unix
def test_unix_flow_control_pauses_and_drains(engine, sock_path):
    """A client that does not read: send_buffered passes max_send_buffer,
    on_drain comes once it reads, and every byte arrives in order."""
    limit = 256 << 10
    total = 16 << 20
    chunk = os.urandom(64 << 10)
    state = {"sent": 0, "drains": 0}
    done = threading.Event()

    def push(conn):
        while state["sent"] < total:
            conn.send(chunk)
            state["sent"] += len(chunk)
            if conn.send_buffered > limit:
                return                      # wait for on_drain
        conn.close()
        done.set()

    def on_drain(conn):
        state["drains"] += 1
        push(conn)

    engine.listen(sock_path, on_accept=lambda c, d: push(c), on_drain=on_drain,
                  max_send_buffer=limit)
    s = unix_client(sock_path, timeout=30)
    wait_for(lambda: state["sent"] > limit, what="the first push")
    assert not done.is_set()
    got = recv_until_eof(s, timeout=60)
    s.close()
    assert len(got) == total
    assert got == chunk * (total // len(chunk))
    assert state["drains"] > 0


@needs_py_unix
def test_engine_connect_to_unix_path(engine, sock_path):
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(sock_path)
    srv.listen(4)
    rec = Recorder()
    conn = engine.connect(sock_path, nodelay=True,     # ignored on a Unix socket
                          on_connect=lambda c: (rec.add("up", c.peer, c.local), c.send(b"ping")),
                          on_recv=lambda c, d: rec.add("data", d), on_close=rec.on_close)
    srv.settimeout(10)
    peer, _ = srv.accept()
    assert recv_exact(peer, 4) == b"ping"
    peer.sendall(b"pong")
    rec.wait(lambda r: ("data", b"pong") in r.events)
    assert ("up", sock_path, "") in rec.events
    conn.close()
    assert recv_until_eof(peer) == b""
    rec.wait(lambda r: r.closed)
    assert rec.closed == {conn.id: None}
    peer.close()
    srv.close()


def test_unix_engine_to_engine(engine, sock_path):
    """Server and client both iocpx (runs where Python itself has no AF_UNIX)."""
    lst = listen_or_skip(engine, sock_path, on_recv=echo)
    rec = Recorder()
    msg = os.urandom(100_000)
    got = bytearray()

    def on_recv(c, d):
        got.extend(d)
        if len(got) == len(msg):
            c.close()

    conn = engine.connect(sock_path, on_connect=lambda c: c.send(msg), on_recv=on_recv,
                          on_close=rec.on_close)
    rec.wait(lambda r: r.closed, timeout=30)
    assert bytes(got) == msg and rec.closed == {conn.id: None}
    lst.close()


def test_connect_to_missing_path_reports_on_close(engine, sock_path):
    rec = Recorder()
    try:
        conn = engine.connect(sock_path, on_connect=lambda c: rec.add("up"), on_close=rec.on_close)
    except OSError as e:
        if e.errno == errno.EAFNOSUPPORT or getattr(e, "winerror", None) == 10047:
            pytest.skip(f"no AF_UNIX on this system ({e}); Wine 8 lacks it")
        raise
    rec.wait(lambda r: r.closed)
    exc = rec.closed[conn.id]
    assert isinstance(exc, OSError) and ("up",) not in rec.events
    if HAVE_PY_UNIX:
        assert exc.errno in (errno.ENOENT, errno.ECONNREFUSED), exc


@needs_py_unix
def test_stale_socket_file_and_unlink_existing(engine, sock_path):
    old = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old.bind(sock_path)
    old.close()                             # a crashed server leaves its file behind
    assert os.path.exists(sock_path)
    with pytest.raises(OSError) as ei:
        engine.listen(sock_path, on_recv=echo)
    assert ei.value.errno == errno.EADDRINUSE
    lst = engine.listen(sock_path, on_recv=echo, unlink_existing=True)
    s = unix_client(sock_path)
    s.sendall(b"again")
    assert recv_exact(s, 5) == b"again"
    s.close()
    lst.close()
    assert not os.path.exists(sock_path)


def test_unlink_existing_never_removes_other_files(engine, sock_path):
    with open(sock_path, "w") as f:
        f.write("precious")
    with pytest.raises(FileExistsError):
        engine.listen(sock_path, unlink_existing=True)
    with open(sock_path) as f:
        assert f.read() == "precious"


@needs_py_unix
def test_listener_keeps_a_file_it_no_longer_owns(engine, sock_path):
    """Close removes the socket file only if it is still the listener's own."""
    lst = engine.listen(sock_path, on_recv=echo)
    os.unlink(sock_path)
    other = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    other.bind(sock_path)                   # someone else's socket at the same path
    lst.close()
    assert os.path.exists(sock_path)
    other.close()


@linux_only
def test_abstract_namespace(engine):
    name = f"\0iocpx-test-{uuid.uuid4().hex}"
    rec = Recorder()
    lst = engine.listen(name, on_accept=lambda c, d: rec.add("acc", c.local), on_recv=echo)
    assert lst.address == name
    s = unix_client(name)
    s.sendall(b"abstract")
    assert recv_exact(s, 8) == b"abstract"
    rec.wait(lambda r: r.events)
    assert rec.events == [("acc", name)]
    got = []
    conn = engine.connect(name.encode(), on_connect=lambda c: c.send(b"x"),
                          on_recv=lambda c, d: (got.append(d), c.close()))
    wait_for(lambda: got == [b"x"] and conn.closed)
    s.close()
    lst.close()


@needs_py_unix
def test_connect_with_local_path(engine, sock_path):
    rec = Recorder()
    engine.listen(sock_path, on_accept=lambda c, d: rec.add("peer", c.peer), on_recv=echo)
    me = sock_path + ".client"
    conn = engine.connect(sock_path, local_address=me, on_connect=lambda c: c.send(b"hi"),
                          on_recv=lambda c, d: rec.add("data", d))
    rec.wait(lambda r: ("data", b"hi") in r.events)
    assert ("peer", me) in rec.events
    assert conn.local == me
    conn.close()
    wait_for(lambda: conn.closed)
    os.unlink(me)


@pytest.mark.parametrize("address, exc", [
    ("name-without-slash.sock", TypeError),     # not a path: the (host, port) TypeError
    ("127.0.0.1:80", TypeError),
    ("/" + "x" * 200, OSError),                 # longer than sun_path
    ("/tmp/a\0b", ValueError),
    (b"", TypeError),
])
def test_unix_address_misuse(engine, address, exc):
    with pytest.raises(exc):
        engine.listen(address)
    with pytest.raises(exc):
        engine.connect(address)
    if exc is OSError:
        with pytest.raises(OSError) as ei:
            engine.listen(address)
        assert ei.value.errno == errno.ENAMETOOLONG


@needs_py_unix
def test_tls_over_a_unix_socket(engine, sock_path, tmp_path_factory):
    """TLS runs over any stream: listen(path, ssl=) and connect(path, ssl=)."""
    try:
        import tls_pki
        import trustme  # noqa: F401
    except ImportError as e:
        pytest.skip(f"TLS certificates are made with trustme ({e})")
    import ssl
    pki = tls_pki.write_pki(str(tmp_path_factory.mktemp("pki")))
    sctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    sctx.load_cert_chain(os.path.join(pki, "server.pem"))
    cctx = ssl.create_default_context(cafile=os.path.join(pki, "ca.pem"))
    engine.listen(sock_path, ssl=sctx, on_recv=echo)
    rec = Recorder()
    msg = os.urandom(200_000)
    got = bytearray()

    def on_recv(c, d):
        got.extend(d)
        if len(got) == len(msg):
            c.close()

    conn = engine.connect(sock_path, ssl=cctx, server_hostname="localhost",
                          on_connect=lambda c: c.send(msg), on_recv=on_recv,
                          on_close=rec.on_close)
    rec.wait(lambda r: r.closed, timeout=30)
    assert rec.closed == {conn.id: None} and bytes(got) == msg
