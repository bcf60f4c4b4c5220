"""The receive-into path: get_buffer(conn, sizehint) + on_recv_into(conn, nbytes)
in place of on_recv, on listen, connect, adopt and Server, on every backend:
byte-exact streams through buffers of every size, pausing midway, TLS, first
data, callbacks that fail, and misuse."""
import hashlib
import os
import random
import socket
import ssl
import threading
import time

import pytest

import iocpx
from conftest import client, recv_exact, wait_for


class Into:
    """An application that parses in place: one bytearray it hands out in
    pieces of random sizes (1 byte up), and a hash of everything that landed."""

    def __init__(self, seed=0, max_piece=70000, echo=False):
        self.rng = random.Random(seed)
        self.arena = bytearray(max_piece)
        self.max_piece = max_piece
        self.view = None
        self.hash = hashlib.sha256()
        self.n = 0
        self.calls = 0
        self.echo = echo
        self.hints = []
        self.closed = threading.Event()
        self.close_exc = "not closed"

    def get_buffer(self, conn, sizehint):
        assert sizehint > 0
        self.hints.append(sizehint)
        self.view = memoryview(self.arena)[:self.rng.randint(1, self.max_piece)]
        return self.view

    def on_recv_into(self, conn, nbytes):
        assert 0 < nbytes <= len(self.view)
        chunk = bytes(self.view[:nbytes])
        self.view = None
        self.hash.update(chunk)
        self.n += nbytes
        self.calls += 1
        if self.echo:
            conn.send(chunk)

    def on_close(self, conn, exc):
        self.close_exc = exc
        self.closed.set()


def test_stream_lands_byte_exact_in_pieces_of_every_size(engine):
    """8 MiB sent in random writes arrive in order through buffers of 1 byte to
    70,000 bytes; no on_recv, no bytes objects for the application."""
    app = Into(seed=1)
    lst = engine.listen(("127.0.0.1", 0), get_buffer=app.get_buffer,
                        on_recv_into=app.on_recv_into, on_close=app.on_close)
    payload = os.urandom(8 << 20)
    with client(lst.address) as s:
        pos, rng = 0, random.Random(2)
        while pos < len(payload):
            step = rng.randint(1, 300000)
            s.sendall(payload[pos:pos + step])
            pos += step
        wait_for(lambda: app.n >= len(payload), timeout=60, what="all bytes landed")
    assert app.n == len(payload)
    assert app.hash.digest() == hashlib.sha256(payload).digest()
    assert app.calls >= 2


def test_echo_both_ends_on_the_receive_into_path(engine):
    """Server and client (connect) both receive into their buffers; the echo
    comes back byte-exact."""
    srv = Into(seed=3, echo=True)
    cli = Into(seed=4, max_piece=5000)
    lst = engine.listen(("127.0.0.1", 0), get_buffer=srv.get_buffer,
                        on_recv_into=srv.on_recv_into)
    connected = threading.Event()
    c = engine.connect(lst.address, get_buffer=cli.get_buffer, on_recv_into=cli.on_recv_into,
                       on_connect=lambda conn: connected.set(), on_close=cli.on_close)
    assert connected.wait(10)
    payload = os.urandom(1 << 20)
    for i in range(0, len(payload), 65536):
        c.send(payload[i:i + 65536])
    wait_for(lambda: cli.n >= len(payload), timeout=60, what="the echo")
    assert cli.hash.digest() == hashlib.sha256(payload).digest()
    c.close()
    assert cli.closed.wait(10)


def test_pause_midway_holds_the_rest_in_order(engine):
    """on_recv_into pauses reading: no further on_recv_into runs while paused,
    even for bytes the kernel already read; resume delivers them, in order."""
    got = bytearray()
    state = {"paused": False, "during_pause": 0, "conn": None}
    buf = bytearray(1000)

    def get_buffer(conn, hint):
        return buf

    def on_recv_into(conn, n):
        if state["paused"]:
            state["during_pause"] += 1
        got.extend(buf[:n])
        if len(got) >= 300000 and state["conn"] is None:
            state["conn"] = conn
            state["paused"] = True
            conn.pause_reading()

    lst = engine.listen(("127.0.0.1", 0), get_buffer=get_buffer, on_recv_into=on_recv_into)
    payload = os.urandom(2 << 20)
    with client(lst.address) as s:
        t = threading.Thread(target=s.sendall, args=(payload,))
        t.start()
        wait_for(lambda: state["conn"] is not None, timeout=30, what="the pause")
        n_paused = len(got)
        time.sleep(0.3)
        assert len(got) == n_paused and state["during_pause"] == 0
        state["paused"] = False
        state["conn"].resume_reading()
        t.join(30)
        wait_for(lambda: len(got) >= len(payload), timeout=60, what="the rest after resume")
    assert bytes(got) == payload


def test_first_data_goes_to_on_accept_as_bytes(engine):
    seen = {}
    app = Into(seed=5)

    def on_accept(conn, data):
        seen["first"] = data

    lst = engine.listen(("127.0.0.1", 0), first_data=True, on_accept=on_accept,
                        get_buffer=app.get_buffer, on_recv_into=app.on_recv_into)
    with client(lst.address) as s:
        s.sendall(b"hello")
        wait_for(lambda: "first" in seen, what="on_accept")
        rest = os.urandom(100000)
        s.sendall(rest)
        wait_for(lambda: app.n >= len(rest), what="the rest")
    assert type(seen["first"]) is bytes and seen["first"] == b"hello"
    assert app.n == len(rest)
    assert app.hash.digest() == hashlib.sha256(rest).digest()


def test_tls_plaintext_lands_in_the_buffers(engine, pki):
    srv_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    srv_ctx.load_cert_chain(str(pki["dir"] / "server.pem"))
    cli_ctx = ssl.create_default_context(cafile=str(pki["dir"] / "ca.pem"))
    app = Into(seed=6, echo=True, max_piece=3000)
    lst = engine.listen(("127.0.0.1", 0), ssl=srv_ctx, get_buffer=app.get_buffer,
                        on_recv_into=app.on_recv_into)
    payload = os.urandom(500000)
    raw = client(lst.address, timeout=30)
    with cli_ctx.wrap_socket(raw, server_hostname="localhost") as s:
        s.sendall(payload)
        back = recv_exact(s, len(payload))
    assert back == payload
    assert app.hash.digest() == hashlib.sha256(payload).digest()


def test_adopt_and_server_take_the_pair(engine, backend):
    app = Into(seed=7, echo=True)
    a, b = socket.socketpair() if hasattr(socket, "AF_UNIX") and backend != "iocp" else _tcp_pair()
    c = engine.adopt(a, get_buffer=app.get_buffer, on_recv_into=app.on_recv_into)
    b.sendall(b"x" * 100000)
    assert recv_exact(b, 100000) == b"x" * 100000
    c.close()
    b.close()
    app2 = Into(seed=8, echo=True)
    with iocpx.Server(("127.0.0.1", 0), backend=backend, get_buffer=app2.get_buffer,
                      on_recv_into=app2.on_recv_into) as server:
        with client(server.address) as s:
            s.sendall(b"ping" * 1000)
            assert recv_exact(s, 4000) == b"ping" * 1000


def _tcp_pair():
    lst = socket.socket()
    lst.bind(("127.0.0.1", 0))
    lst.listen(1)
    b = socket.create_connection(lst.getsockname())
    a, _ = lst.accept()
    lst.close()
    return a, b


@pytest.mark.parametrize("failure", ["raises", "empty", "not-a-buffer", "on_recv_into raises"])
def test_a_failing_callback_closes_the_connection_with_its_error(engine, failure, caplog):
    closed = {}
    done = threading.Event()

    def get_buffer(conn, hint):
        if failure == "raises":
            raise KeyError("no buffer today")
        if failure == "empty":
            return bytearray()
        if failure == "not-a-buffer":
            return 42
        return bytearray(100)

    def on_recv_into(conn, n):
        raise KeyError("cannot parse")

    def on_close(conn, exc):
        closed["exc"] = exc
        done.set()

    lst = engine.listen(("127.0.0.1", 0), get_buffer=get_buffer, on_recv_into=on_recv_into,
                        on_close=on_close)
    with client(lst.address) as s:
        s.sendall(b"data")
        assert done.wait(10)
        s.settimeout(10)
        try:
            assert s.recv(10) == b""            # the server closed it
        except ConnectionResetError:
            pass
    exc = closed["exc"]
    expected = {"raises": KeyError, "empty": ValueError, "not-a-buffer": TypeError,
                "on_recv_into raises": KeyError}[failure]
    assert isinstance(exc, expected), repr(exc)


def test_misuse_is_refused_before_anything_opens(engine):
    def gb(conn, hint):
        return bytearray(10)

    def ri(conn, n):
        pass

    with pytest.raises(ValueError, match="together"):
        engine.listen(("127.0.0.1", 0), get_buffer=gb)
    with pytest.raises(ValueError, match="together"):
        engine.connect(("127.0.0.1", 9), on_recv_into=ri)
    with pytest.raises(ValueError, match="not both"):
        engine.listen(("127.0.0.1", 0), on_recv=lambda c, d: None, get_buffer=gb, on_recv_into=ri)
    with pytest.raises(TypeError, match="get_buffer must be callable"):
        engine.listen(("127.0.0.1", 0), get_buffer=5, on_recv_into=ri)
    a, b = _tcp_pair()
    try:
        with pytest.raises(ValueError, match="together"):
            engine.adopt(a, get_buffer=gb)
    finally:
        a.close()
        b.close()
