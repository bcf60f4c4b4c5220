"""TLS on every backend: listen(ssl=), connect(ssl=), Server(ssl=), start_tls,
ssl_object and ALPN; bad input (a plain-text client, a handshake that stops
half way, a client certificate that fails, garbage after the handshake, a
peer that closes without close_notify), close_notify on close() and not on
abort(), 16 MiB in every record size, a slow reader, sendfile over TLS; and
real clients and servers nobody here wrote: Python's blocking ssl sockets,
`openssl s_client` / `s_server` and `curl` when installed.

Certificates are made per test module with trustme (the `test` extra;
tests/tls_pki.py); nothing with a private key is checked in."""
import hashlib
import logging
import os
import select
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time

import pytest

import iocpx
from conftest import Recorder, client, echo, recv_exact, wait_for


HOST = "127.0.0.1"
OPENSSL = shutil.which("openssl")
EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")
CURL = shutil.which("curl")


# ---- certificates and contexts ---------------------------------------------

# the `pki` fixture (certificates) is in conftest.py


def server_ctx(pki, require_client_cert=False, alpn=None):
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(str(pki["dir"] / "server.pem"))
    if require_client_cert:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(str(pki["dir"] / "ca.pem"))
    if alpn:
        ctx.set_alpn_protocols(alpn)
    return ctx


def client_ctx(pki, cert=None, alpn=None):
    """cert: None, "client" (issued by our CA) or "rogue-client" (by a CA nobody trusts)."""
    ctx = ssl.create_default_context(cafile=str(pki["dir"] / "ca.pem"))
    # a TCP end without close_notify must read as one (SSLEOFError): CPython 3.9 sets
    # OP_IGNORE_UNEXPECTED_EOF by default, which makes it look like a clean close_notify
    ctx.options &= ~getattr(ssl, "OP_IGNORE_UNEXPECTED_EOF", 0)
    if cert is not None:
        ctx.load_cert_chain(str(pki["dir"] / f"{cert}.pem"))
    if alpn:
        ctx.set_alpn_protocols(alpn)
    return ctx


def tls_client(pki, address, timeout=30, **kw):
    """A blocking Python ssl socket (a client nobody here wrote), handshake done."""
    raw = client(address, timeout=timeout)
    return client_ctx(pki, **kw).wrap_socket(raw, server_hostname="localhost")


def echo_ok(pki, address, msg=b"still serving"):
    with tls_client(pki, address) as s:
        s.sendall(msg)
        assert recv_exact(s, len(msg)) == msg


class BioClient:
    """A TLS client over a plain socket driven by hand (ssl.SSLObject + two
    MemoryBIOs), so a test can stop the handshake half way, send garbage
    after it, or close TCP without close_notify."""

    def __init__(self, pki, address):
        self.sock = client(address)
        self.inc, self.out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.obj = client_ctx(pki).wrap_bio(self.inc, self.out, server_hostname="localhost")

    def flush(self):
        data = self.out.read()
        if data:
            self.sock.sendall(data)

    def handshake(self):
        while True:
            try:
                self.obj.do_handshake()
                self.flush()
                return
            except ssl.SSLWantReadError:
                self.flush()
                self.fill()

    def fill(self):
        d = self.sock.recv(65536)
        if d:
            self.inc.write(d)
        else:
            self.inc.write_eof()
        return d

    def send(self, data):
        self.obj.write(data)
        self.flush()

    def recv(self, n):
        while True:
            try:
                return self.obj.read(n)
            except ssl.SSLWantReadError:
                if not self.fill():
                    raise EOFError("TCP EOF") from None

    def close(self):
        self.sock.close()


# ---- the basics -------------------------------------------------------------

def test_echo_with_python_ssl_client_alpn_and_ssl_object(engine, pki):
    """Handshake before on_accept; ssl_object tells version, cipher and the
    ALPN protocol both sides agreed on; echo both ways; close() ends with
    close_notify (the client reads a clean end, not a ragged EOF)."""
    rec = Recorder()
    seen = {}

    def on_accept(conn, data):
        o = conn.ssl_object
        seen.update(version=o.version(), alpn=o.selected_alpn_protocol(), cipher=o.cipher())
        rec.add("accept", data)

    def on_recv(conn, data):
        if data == b"bye":
            conn.send(b"ciao")
            conn.close()
        else:
            conn.send(data)

    lst = engine.listen((HOST, 0), on_accept=on_accept, on_recv=on_recv, on_close=rec.on_close,
                        ssl=server_ctx(pki, alpn=["h2", "http/1.1"]))
    raw = client(lst.address)
    s = client_ctx(pki, alpn=["http/1.1"]).wrap_socket(raw, server_hostname="localhost",
                                                      suppress_ragged_eofs=False)
    assert s.selected_alpn_protocol() == "http/1.1"
    for i in range(20):
        msg = b"message %d " % i * (i + 1)
        s.sendall(msg)
        assert recv_exact(s, len(msg)) == msg
    s.sendall(b"bye")
    assert recv_exact(s, 4) == b"ciao"
    assert s.recv(10) == b""            # close_notify: SSLEOFError if it were missing
    s.close()
    rec.wait(lambda r: r.closed)
    assert list(rec.closed.values()) == [None]
    assert rec.events[0] == ("accept", b"")
    assert seen["version"] in ("TLSv1.2", "TLSv1.3") and seen["alpn"] == "http/1.1"
    st = engine.stats()
    assert st["tls_handshakes"] == 1 and st["tls_handshake_errors"] == 0


def test_first_data_is_the_first_decrypted_bytes(engine, pki):
    got = []
    lst = engine.listen((HOST, 0), first_data=True, ssl=server_ctx(pki),
                        on_accept=lambda c, d: (got.append(d), c.send(d)), on_recv=echo)
    with tls_client(pki, lst.address) as s:
        time.sleep(0.1)                 # handshake done, nothing sent: not surfaced yet
        assert got == []
        s.sendall(b"GET / HTTP/1.0\r\n\r\n")
        assert recv_exact(s, 18) == b"GET / HTTP/1.0\r\n\r\n"
    assert got == [b"GET / HTTP/1.0\r\n\r\n"]


def test_engine_connect_with_ssl_on_connect_after_handshake(engine, pki):
    """iocpx as the client, against an iocpx TLS server: on_connect after the
    handshake, sends made before it are queued and go out encrypted; a
    hostname that does not match fails verification (on_close, SSLError)."""
    lst = engine.listen((HOST, 0), on_recv=echo, ssl=server_ctx(pki, alpn=["x-test"]))
    rec = Recorder()

    def on_connect(conn):
        o = conn.ssl_object
        rec.add("connect", o.version(), o.selected_alpn_protocol(), o.getpeercert()["subjectAltName"])
        conn.send(b"after")

    c = engine.connect(lst.address, ssl=client_ctx(pki, alpn=["x-test"]), server_hostname="localhost",
                       on_connect=on_connect, on_recv=lambda c, d: rec.add("recv", d),
                       on_close=rec.on_close)
    c.send(b"before ")                  # queued until the handshake is done
    rec.wait(lambda r: b"".join(e[1] for e in r.events if e[0] == "recv") == b"before after")
    ev = rec.events[0]
    assert ev[0] == "connect" and ev[2] == "x-test" and ("DNS", "localhost") in ev[3]
    c.close()
    rec.wait(lambda r: r.closed)
    assert rec.closed[c.id] is None

    bad = Recorder()
    c2 = engine.connect(lst.address, ssl=client_ctx(pki), server_hostname="wrong.example",
                        on_connect=lambda c: bad.add("connect"), on_close=bad.on_close)
    bad.wait(lambda r: r.closed)
    assert isinstance(bad.closed[c2.id], ssl.SSLCertVerificationError), bad.closed
    assert not any(e[0] == "connect" for e in bad.events)
    echo_ok(pki, lst.address)


def test_server_with_ssl(backend, pki):
    with iocpx.Server((HOST, 0), backend=backend, workers=2, on_recv=echo,
                      ssl=server_ctx(pki)) as srv:
        echo_ok(pki, srv.address, b"server over tls")
    assert srv.stats()["tls_handshakes"] == 1


def test_api_misuse(engine, pki):
    with pytest.raises(TypeError):
        engine.listen((HOST, 0), ssl="yes")
    with pytest.raises(ValueError):                             # a client context cannot serve
        engine.listen((HOST, 0), ssl=ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT))
    with pytest.raises(ValueError):
        engine.listen((HOST, 0), ssl=server_ctx(pki), ssl_handshake_timeout=0)
    with pytest.raises(ValueError):
        engine.connect((HOST, 1), server_hostname="x")          # without ssl
    with pytest.raises(ValueError):                             # a server context
        engine.connect((HOST, 1), ssl=ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))
    with pytest.raises(ValueError):                             # check_hostname needs a name
        engine.connect((HOST, 1), ssl=client_ctx(pki), server_hostname="")
    conns = []
    lst = engine.listen((HOST, 0), on_accept=lambda c, d: conns.append(c))
    s = client(lst.address)
    wait_for(lambda: conns)
    c = conns[0]
    assert c.ssl_object is None
    with pytest.raises(TypeError):
        c.start_tls(object(), server_side=True)
    with pytest.raises(TypeError):
        c.start_tls(server_ctx(pki))                            # server_side is required
    c.close()
    with pytest.raises(iocpx.ConnectionClosedError):
        c.start_tls(server_ctx(pki), server_side=True)
    s.close()


# ---- bad input: a clear outcome, and the server serves on ---------------------

@pytest.fixture
def quiet_log(caplog):
    """Failures a peer causes are logged at DEBUG at most (docs/guide.md, "What
    you can rely on"): fail the test if iocpx logged anything above that."""
    caplog.set_level(logging.DEBUG, logger="iocpx")
    yield
    loud = [r for r in caplog.records if r.name.startswith("iocpx") and r.levelno > logging.DEBUG]
    assert not loud, [r.getMessage() for r in loud]


def test_plain_http_client_on_tls_port(engine, pki, quiet_log):
    """Not TLS at all: the handshake fails (ssl.SSLError), the connection
    closes unseen (never reached on_accept: no on_close either), it is
    counted, and the server serves on."""
    rec = Recorder()
    lst = engine.listen((HOST, 0), on_accept=lambda c, d: rec.add("accept"), on_recv=echo,
                        on_close=rec.on_close, ssl=server_ctx(pki))
    keep = tls_client(pki, lst.address)            # a good connection across the failure
    with client(lst.address) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        s.settimeout(10)
        try:
            rest = s.recv(4096)                     # a TLS alert record, then EOF
            while s.recv(4096):
                pass
        except ConnectionResetError:
            rest = b""
        assert not rest.startswith(b"HTTP"), rest
    wait_for(lambda: engine.stats()["tls_handshake_errors"] == 1)
    keep.sendall(b"ok?")
    assert recv_exact(keep, 3) == b"ok?"
    keep.close()
    echo_ok(pki, lst.address)
    rec.wait(lambda r: len(r.closed) == 2)
    assert [e[0] for e in rec.events].count("accept") == 2      # the two good clients only


def client_hello():
    """The first bytes a TLS client sends (a ClientHello record)."""
    out = ssl.MemoryBIO()
    o = ssl.create_default_context().wrap_bio(ssl.MemoryBIO(), out, server_hostname="localhost")
    with pytest.raises(ssl.SSLWantReadError):
        o.do_handshake()
    return out.read()


def test_handshake_stopped_half_way_times_out(engine, pki, quiet_log):
    """A client that sends half a ClientHello and stops: closed after
    ssl_handshake_timeout, never surfaced, counted; the other side of the
    coin: iocpx as a client of a server that never answers gets TimeoutError
    in on_close."""
    rec = Recorder()
    lst = engine.listen((HOST, 0), on_accept=lambda c, d: rec.add("accept"), on_recv=echo,
                        on_close=rec.on_close, ssl=server_ctx(pki), ssl_handshake_timeout=0.5)
    hello = client_hello()
    with client(lst.address) as s:
        s.sendall(hello[:len(hello) // 2])
        t0 = time.monotonic()
        s.settimeout(10)
        try:
            assert s.recv(100) == b""
        except ConnectionResetError:
            pass
        assert 0.3 < time.monotonic() - t0 < 5
    assert engine.stats()["tls_handshake_timeouts"] == 1
    assert rec.events == []
    echo_ok(pki, lst.address)

    mute = socket.create_server((HOST, 0))         # accepts (backlog) and never answers
    try:
        crec = Recorder()
        c = engine.connect(mute.getsockname(), ssl=client_ctx(pki), server_hostname="localhost",
                           ssl_handshake_timeout=0.3, on_connect=lambda c: crec.add("connect"),
                           on_close=crec.on_close)
        crec.wait(lambda r: r.closed)
        assert isinstance(crec.closed[c.id], TimeoutError), crec.closed
        assert crec.events[0][0] == "close"
    finally:
        mute.close()
    assert engine.stats()["tls_handshake_timeouts"] == 2


def test_client_certificate_required(engine, pki, quiet_log):
    """A server that requires a client certificate: a client without one,
    and one whose certificate comes from an unknown CA, fail verification
    (never surfaced, counted); a good one gets in and is seen in ssl_object."""
    peers = []
    lst = engine.listen((HOST, 0), ssl=server_ctx(pki, require_client_cert=True), on_recv=echo,
                        on_accept=lambda c, d: peers.append(c.ssl_object.getpeercert()))
    for cert in (None, "rogue-client"):
        raw = client(lst.address)
        try:
            s = client_ctx(pki, cert=cert).wrap_socket(raw, server_hostname="localhost")
            s.sendall(b"x")             # TLS 1.3: the server's verdict comes after the client's Finished
            with pytest.raises((ssl.SSLError, ConnectionResetError, EOFError)):
                if not s.recv(10):
                    raise EOFError
        except (ssl.SSLError, ConnectionResetError):
            pass                        # TLS 1.2: the handshake itself fails
        finally:
            raw.close()
    wait_for(lambda: engine.stats()["tls_handshake_errors"] == 2)
    assert peers == []
    with tls_client(pki, lst.address, cert="client") as s:
        s.sendall(b"trusted")
        assert recv_exact(s, 7) == b"trusted"
    assert len(peers) == 1
    assert ("email", "client@example.test") in peers[0]["subjectAltName"]


def test_garbage_after_handshake(engine, pki, quiet_log):
    """Bytes that are not TLS records after a good handshake: on_close gets
    an ssl.SSLError, once; other connections go on; nothing logged above DEBUG."""
    rec = Recorder()
    lst = engine.listen((HOST, 0), on_accept=lambda c, d: rec.add("accept", c.id), on_recv=echo,
                        on_close=rec.on_close, ssl=server_ctx(pki))
    keep = tls_client(pki, lst.address)
    b = BioClient(pki, lst.address)
    b.handshake()
    b.send(b"fine")
    assert b.recv(10) == b"fine"
    b.sock.sendall(os.urandom(64) + b"\x17\x03\x03\x00\x10" + os.urandom(16))
    rec.wait(lambda r: len(r.closed) == 1)
    exc = list(rec.closed.values())[0]
    assert isinstance(exc, ssl.SSLError), exc
    b.close()
    keep.sendall(b"unharmed")
    assert recv_exact(keep, 8) == b"unharmed"
    keep.close()


def test_peer_closes_without_close_notify(engine, pki, quiet_log):
    """A peer that closes TCP without close_notify after sending: everything
    it sent is delivered, then on_close(conn, None), as asyncio reports it
    (a missing close_notify is not an error); with close_notify the same."""
    rec = Recorder()
    got = []
    lst = engine.listen((HOST, 0), on_recv=lambda c, d: got.append(d), on_close=rec.on_close,
                        ssl=server_ctx(pki))
    b = BioClient(pki, lst.address)
    b.handshake()
    b.send(b"last words")
    b.sock.shutdown(socket.SHUT_WR)     # FIN, no close_notify
    rec.wait(lambda r: len(r.closed) == 1)
    assert b"".join(got) == b"last words"
    assert list(rec.closed.values()) == [None]
    b.close()

    s = tls_client(pki, lst.address)
    s.sendall(b"polite")
    s = s.unwrap()                      # close_notify, then the peer's (our close_notify reply)
    s.close()
    rec.wait(lambda r: len(r.closed) == 2)
    assert list(rec.closed.values()) == [None, None]
    assert b"".join(got) == b"last wordspolite"


def test_handshake_eof_is_unseen_on_server_and_reset_on_client(engine, pki, quiet_log):
    lst = engine.listen((HOST, 0), on_accept=lambda c, d: pytest.fail("surfaced"),
                        ssl=server_ctx(pki))
    with client(lst.address) as s:
        s.sendall(client_hello()[:20])
    wait_for(lambda: engine.stats()["tls_handshake_errors"] == 1)
    closer = socket.create_server((HOST, 0))

    def accept_and_close():
        a, _ = closer.accept()
        a.recv(100)
        a.close()

    t = threading.Thread(target=accept_and_close, daemon=True)
    t.start()
    rec = Recorder()
    c = engine.connect(closer.getsockname(), ssl=client_ctx(pki), server_hostname="localhost",
                       on_close=rec.on_close)
    rec.wait(lambda r: r.closed)
    assert isinstance(rec.closed[c.id], ConnectionResetError), rec.closed
    t.join(5)
    closer.close()


def test_close_sends_close_notify_abort_does_not(engine, pki):
    """close(): the queued data, then close_notify. abort(): neither (the
    peer sees a TCP end without close_notify, or a reset)."""
    conns = []
    lst = engine.listen((HOST, 0), on_accept=lambda c, d: conns.append(c), ssl=server_ctx(pki))
    for how in ("close", "abort"):
        b = BioClient(pki, lst.address)
        try:
            b.handshake()
            wait_for(lambda: conns)
            c = conns.pop()
            c.send(b"x" * 100_000)
            if how == "close":
                c.close()
                assert recv_all_plain(b) == (b"x" * 100_000, "close_notify")
            else:
                c.abort()
                try:
                    data, end = recv_all_plain(b)
                    assert end == "eof"
                except ConnectionResetError:
                    pass
        finally:
            b.close()


def recv_all_plain(b):
    """(plaintext, how the TLS stream ended: "close_notify" or "eof")."""
    out = bytearray()
    while True:
        try:
            d = b.obj.read(65536)
        except ssl.SSLWantReadError:
            b.fill()
            continue
        except ssl.SSLZeroReturnError:
            return bytes(out), "close_notify"
        except ssl.SSLEOFError:
            return bytes(out), "eof"
        except ssl.SSLError as e:       # CPython 3.9 with OpenSSL 3: not mapped to SSLEOFError
            if "UNEXPECTED_EOF" not in str(e):
                raise
            return bytes(out), "eof"
        if not d:
            return bytes(out), "close_notify"
        out += d


# ---- volume and flow control ---------------------------------------------------

def record_sizes(total):
    """Record sizes 1, 2, ..., 4000, then larger steps up to 16384 (the
    largest TLS record), repeated until `total` bytes."""
    sizes = list(range(1, 4001)) + list(range(4001, 16385, 15))
    out, got, i = [], 0, 0
    while got < total:
        n = min(sizes[i % len(sizes)], total - got)
        out.append(n)
        got += n
        i += 1
    return out


def test_16mib_in_every_record_size_echoed_in_order(engine, pki):
    """16 MiB sent as records of (nearly) every size a TLS record can have,
    echoed back through iocpx's TLS, compared by hash. (One thread drives
    the client: an SSL object must not be read and written concurrently.)"""
    total = 16 << 20
    lst = engine.listen((HOST, 0), on_recv=echo, ssl=server_ctx(pki), max_send_buffer=8 << 20)
    b = BioClient(pki, lst.address)
    b.handshake()
    sock = b.sock
    sock.setblocking(False)
    blob = os.urandom(total)
    sizes = record_sizes(total)
    h_in = hashlib.sha256()
    got, pos, k = 0, 0, 0
    pending = bytearray()
    deadline = time.monotonic() + 120
    while got < total:
        assert time.monotonic() < deadline, f"{got} of {total} bytes echoed"
        while len(pending) < (256 << 10) and k < len(sizes):
            b.obj.write(blob[pos:pos + sizes[k]])       # one record per write
            pos += sizes[k]
            k += 1
            pending += b.out.read()
        r, w, _ = select.select([sock], [sock] if pending else [], [], 10)
        if w:
            try:
                del pending[:sock.send(pending)]
            except BlockingIOError:
                pass
        if r:
            d = sock.recv(1 << 20)
            assert d, "EOF from the server"
            b.inc.write(d)
            while True:
                try:
                    plain = b.obj.read(1 << 20)
                except ssl.SSLWantReadError:
                    break
                h_in.update(plain)
                got += len(plain)
    assert got == total
    assert h_in.hexdigest() == hashlib.sha256(blob).hexdigest()
    b.close()


def test_one_16mib_send_arrives_whole(engine, pki):
    """One send() of 16 MiB: encrypted piece by piece as the queue drains."""
    blob = os.urandom(16 << 20)
    lst = engine.listen((HOST, 0), on_accept=lambda c, d: (c.send(blob), c.close()),
                        ssl=server_ctx(pki), max_send_buffer=32 << 20)
    with tls_client(pki, lst.address, timeout=120) as s:
        out = bytearray()
        while True:
            d = s.recv(1 << 20)
            if not d:
                break
            out += d
    assert hashlib.sha256(out).digest() == hashlib.sha256(blob).digest()


def test_slow_reader_bounded_by_max_send_buffer(engine, pki):
    """A producer over TLS facing a reader that stops: send_buffered
    (plaintext) stays within the same bounds as for plain, SendBufferFull
    past the hard cap, on_drain resumes it, every byte arrives in order."""
    limit, chunk, total = 1 << 20, 256 << 10, 48 << 20
    block = os.urandom(chunk)
    state = {"sent": 0, "full": 0, "max": 0, "drains": 0}

    def push(conn):
        try:
            while state["sent"] < total:
                conn.send(block)
                state["sent"] += chunk
                state["max"] = max(state["max"], conn.send_buffered)
        except iocpx.SendBufferFull:
            state["full"] += 1
            return
        conn.close()

    def on_drain(conn):
        state["drains"] += 1
        push(conn)

    lst = engine.listen((HOST, 0), on_accept=lambda c, d: push(c), on_drain=on_drain,
                        max_send_buffer=limit, ssl=server_ctx(pki))
    raw = client(lst.address, timeout=60)
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 10)
    s = client_ctx(pki).wrap_socket(raw, server_hostname="localhost")
    assert len(s.recv(1)) == 1
    time.sleep(0.5)                     # the reader stalls
    assert state["full"] >= 1
    assert state["sent"] < total // 2
    h = hashlib.sha256()
    got = 1
    h.update(block[:1])
    while True:
        d = s.recv(1 << 20)
        if not d:
            break
        h.update(d)
        got += len(d)
    s.close()
    assert got == total
    assert h.digest() == hashlib.sha256(block * (total // chunk)).digest()
    assert state["max"] <= limit + max(limit, 8 << 20) + chunk
    assert state["drains"] >= 1


def test_sendfile_over_tls_in_order_with_send(engine, pki, tmp_path):
    """sendfile() on TLS reads the file and encrypts it, in order with send()."""
    path = tmp_path / "blob"
    data = os.urandom(3 * 1024 * 1024 + 123)
    path.write_bytes(data)

    def on_accept(conn, d):
        conn.send(b"head:")
        assert conn.sendfile(str(path), 100, len(data) - 200) == len(data) - 200
        conn.send(b":tail")
        conn.close()

    lst = engine.listen((HOST, 0), on_accept=on_accept, ssl=server_ctx(pki))
    with tls_client(pki, lst.address, timeout=60) as s:
        out = bytearray()
        while True:
            d = s.recv(1 << 20)
            if not d:
                break
            out += d
    assert bytes(out) == b"head:" + data[100:-100] + b":tail"


# ---- STARTTLS -----------------------------------------------------------------

@pytest.mark.parametrize("pause", [False, True], ids=["direct", "held"])
def test_start_tls_both_sides_iocpx(engine, pki, pause):
    """A plain connection upgraded on request, iocpx on both ends. The server
    replies in plain text and upgrades inside on_recv while the client's
    ClientHello is already on its way (queued behind the callback, or read
    ahead and held by a pause): nothing is lost."""
    srv = Recorder()

    def on_recv(conn, data):
        if conn.ssl_object is None:
            assert data == b"STARTTLS\r\n", data
            if pause:
                conn.pause_reading()
            conn.send(b"220 go ahead\r\n")
            time.sleep(0.2)             # the ClientHello arrives meanwhile
            conn.start_tls(server_ctx(pki), server_side=True)
            if pause:
                conn.resume_reading()
        else:
            srv.add("secret", data, conn.ssl_object.version())
            conn.send(data.upper())

    lst = engine.listen((HOST, 0), on_recv=on_recv, on_close=srv.on_close)
    cli = Recorder()

    def c_recv_upgrade(conn, data):     # the client upgrades once the reply came, as SMTP does
        if conn.ssl_object is None:
            cli.add("plain", data)
            conn.start_tls(client_ctx(pki), server_side=False, server_hostname="localhost")
            conn.send(b"secret")        # queued until the handshake is done
        else:
            cli.add("tls", data)
            conn.close()

    c = engine.connect(lst.address, on_connect=lambda c: c.send(b"STARTTLS\r\n"),
                       on_recv=c_recv_upgrade,
                       on_close=cli.on_close)
    cli.wait(lambda r: r.closed)
    assert cli.closed[c.id] is None
    assert [e[:2] for e in cli.events if e[0] != "close"] == [("plain", b"220 go ahead\r\n"),
                                                              ("tls", b"SECRET")]
    srv.wait(lambda r: r.closed)
    assert srv.events[0][:2] == ("secret", b"secret")


def test_start_tls_with_python_client_pipelining_hello(engine, pki):
    """The peer sends its ClientHello right behind the upgrade request
    without waiting; the server's on_recv is still running when it arrives."""
    def on_recv(conn, data):
        if conn.ssl_object is None:
            time.sleep(0.2)
            conn.start_tls(server_ctx(pki), server_side=True)
        else:
            conn.send(b"<" + data + b">")

    lst = engine.listen((HOST, 0), on_recv=on_recv)
    s = client(lst.address)
    s.sendall(b"STARTTLS\r\n")
    time.sleep(0.05)                    # a separate segment, while on_recv sleeps
    t = client_ctx(pki).wrap_socket(s, server_hostname="localhost")
    t.sendall(b"hello")
    assert recv_exact(t, 7) == b"<hello>"
    t.close()


# ---- real clients and servers nobody here wrote ---------------------------------

@pytest.mark.skipif(OPENSSL is None, reason="needs the openssl command (Debian: apt-get install openssl)")
def test_openssl_s_client(engine, pki):
    """openssl s_client: handshake, certificate verified against our CA,
    ALPN, a line echoed, the server's close_notify ends it cleanly."""
    alpn = []

    def on_recv(conn, data):
        alpn.append(conn.ssl_object.selected_alpn_protocol())
        conn.send(data)
        if b"\n" in data:
            conn.close()

    lst = engine.listen((HOST, 0), on_recv=on_recv, ssl=server_ctx(pki, alpn=["h2", "x-iocpx"]))
    d = pki["dir"]
    p = subprocess.Popen([OPENSSL, "s_client", "-connect", f"{HOST}:{lst.address[1]}",
                          "-CAfile", str(d / "ca.pem"), "-servername", "localhost",
                          "-verify_return_error", "-alpn", "x-iocpx", "-brief", "-ign_eof"],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        out, _ = p.communicate(b"hello from s_client\n", timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    text = out.decode(errors="replace")
    assert p.returncode == 0, text
    assert "Verification: OK" in text and "hello from s_client" in text, text
    assert alpn and set(alpn) == {"x-iocpx"}


@pytest.mark.skipif(OPENSSL is None, reason="needs the openssl command (Debian: apt-get install openssl)")
def test_connect_to_openssl_s_server(engine, pki):
    """iocpx as the client of openssl s_server (-rev reverses each line)."""
    d = pki["dir"]
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        port = probe.getsockname()[1]
    p = subprocess.Popen([OPENSSL, "s_server", "-accept", f"{HOST}:{port}", "-naccept", "1",
                          "-cert", str(d / "server-cert.pem"), "-key", str(d / "server-key.pem"),
                          "-rev"],
                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    lines = []
    ready = threading.Event()

    def drain():                        # s_server says ACCEPT once it listens
        for line in p.stdout:
            lines.append(line)
            if line.startswith(b"ACCEPT"):
                ready.set()

    t = threading.Thread(target=drain, daemon=True)
    t.start()
    try:
        assert ready.wait(20), b"".join(lines)
        rec = Recorder()
        c = engine.connect((HOST, port), ssl=client_ctx(pki), server_hostname="localhost",
                           on_connect=lambda c: c.send(b"iocpx client\n"),
                           on_recv=lambda c, d: rec.add("recv", d), on_close=rec.on_close)
        rec.wait(lambda r: b"xpcoi" in b"".join(e[1] for e in r.events if e[0] == "recv"), timeout=20)
        assert b"tneilc xpcoi" in b"".join(e[1] for e in rec.events if e[0] == "recv")
        c.close()
        rec.wait(lambda r: r.closed)
    finally:
        p.kill()
        p.wait()
        t.join(5)
        p.stdout.close()


@pytest.mark.skipif(CURL is None or sys.platform == "win32",
                    reason="needs the curl command (Debian: apt-get install curl) and a POSIX "
                    "stop signal for the example")
@pytest.mark.parametrize("loop", ["iocpx", "asyncio"])
def test_curl_against_the_http_example_over_tls(backend, pki, tmp_path, loop):
    """examples/http_server.py --tls-cert/--tls-key, fetched by curl --cacert:
    the small body, and a 2 MiB file (sendfile over TLS: read and encrypted),
    on two keep-alive requests; the same handler on asyncio for reference."""
    if loop == "asyncio" and backend != iocpx.available_backends()[0]:
        pytest.skip("the asyncio reference runs once, not once per backend")
    d = pki["dir"]
    (tmp_path / "big.bin").write_bytes(os.urandom(2 << 20))
    cmd = [sys.executable, os.path.join(EXAMPLES, "http_server.py"), "--port", "0",
           "--loop", loop, "--dir", str(tmp_path), "--tls-cert", str(d / "server.pem")]
    if loop == "iocpx":
        cmd += ["--backend", backend, "--workers", "2"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = p.stdout.readline()
        assert line.startswith("serving ") and "TLS" in line, line + p.stderr.read()
        port = int(line.split()[3].rsplit(":", 1)[1])
        out = tmp_path / "got.bin"
        r = subprocess.run([CURL, "-sS", "--fail", "--cacert", str(d / "ca.pem"),
                            "--resolve", f"localhost:{port}:127.0.0.1",
                            f"https://localhost:{port}/", "-o", str(tmp_path / "root.txt"),
                            f"https://localhost:{port}/files/big.bin", "-o", str(out),
                            "-w", "%{http_version} %{ssl_verify_result} %{num_connects}\n"],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        assert (tmp_path / "root.txt").read_bytes() == b"Hello, World!\n"
        assert out.read_bytes() == (tmp_path / "big.bin").read_bytes()
        assert r.stdout.split("\n")[0].split()[1] == "0"      # certificate verified
        p.terminate()
        assert p.wait(timeout=20) in (0, -15), p.stderr.read()
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        p.stdout.close()
        p.stderr.close()


# ---- what every connection has keeps working over TLS ---------------------------

def test_sends_from_many_threads_keep_each_threads_order(engine, pki):
    """send() from four foreign threads at once on one TLS connection (the
    SSLObject is shared: its lock serializes them): every message arrives
    whole, each thread's in its order."""
    conns = []
    lst = engine.listen((HOST, 0), on_accept=lambda c, d: conns.append(c), ssl=server_ctx(pki),
                        max_send_buffer=64 << 20)
    s = tls_client(pki, lst.address, timeout=60)
    wait_for(lambda: conns)
    c = conns[0]
    per, nthreads = 2000, 4

    def producer(k):
        for i in range(per):
            c.send(b"<%d:%06d:%s>" % (k, i, b"x" * (i % 300)))

    threads = [threading.Thread(target=producer, args=(k,)) for k in range(nthreads)]
    for t in threads:
        t.start()
    want = sum(len(b"<%d:%06d:%s>" % (k, i, b"x" * (i % 300)))
               for k in range(nthreads) for i in range(per))
    data = recv_exact(s, want, timeout=60)
    for t in threads:
        t.join()
    seen = {k: 0 for k in range(nthreads)}
    for part in data[1:-1].split(b"><"):
        k, i, pad = part.split(b":")
        assert int(i) == seen[int(k)] and pad == b"x" * (int(i) % 300)
        seen[int(k)] += 1
    assert seen == {k: per for k in range(nthreads)}
    s.close()


def test_idle_timeout_over_tls(engine, pki, quiet_log):
    rec = Recorder()
    lst = engine.listen((HOST, 0), on_recv=echo, on_close=rec.on_close, ssl=server_ctx(pki),
                        idle_timeout=0.5)
    with tls_client(pki, lst.address) as s:
        s.sendall(b"hi")
        assert recv_exact(s, 2) == b"hi"
        rec.wait(lambda r: r.closed, timeout=10)        # then silence
    assert isinstance(list(rec.closed.values())[0], TimeoutError)


def test_a_blocking_callback_stalls_only_its_tls_connection(backend, pki):
    """Default pool: one TLS connection's on_recv sleeps; another TLS
    connection keeps echoing meanwhile."""
    eng = iocpx.Engine(backend=backend)
    slept = threading.Event()

    def on_recv(conn, data):
        if data == b"sleep":
            slept.set()
            time.sleep(1.0)
        conn.send(data)

    try:
        lst = eng.listen((HOST, 0), on_recv=on_recv, ssl=server_ctx(pki))
        a, b = tls_client(pki, lst.address), tls_client(pki, lst.address)
        a.sendall(b"sleep")
        assert slept.wait(5)
        t0 = time.monotonic()
        for i in range(20):
            b.sendall(b"ping%d" % i)
            assert recv_exact(b, len(b"ping%d" % i)) == b"ping%d" % i
        assert time.monotonic() - t0 < 0.8, "the other connection waited for the sleeping one"
        assert recv_exact(a, 5) == b"sleep"
        a.close()
        b.close()
    finally:
        eng.close(timeout=30)


@pytest.mark.skipif(not sys.platform.startswith("linux"),
                    reason="TLS over a Unix socket is checked where the engine's Unix sockets are "
                           "tested too (Linux; Wine 8 has no AF_UNIX)")
def test_tls_over_a_unix_socket(engine, pki):
    """listen/connect on a socket path with ssl=: the hostname still comes
    from server_hostname (a path has none: without it check_hostname refuses)."""
    path = os.path.join("/tmp", f"iocpx-tls-{os.getpid()}-{id(engine):x}.sock")
    lst = engine.listen(path, on_recv=lambda c, d: c.send(d[::-1]), ssl=server_ctx(pki),
                        unlink_existing=True)
    try:
        with pytest.raises(ValueError, match="server_hostname"):
            engine.connect(path, ssl=client_ctx(pki))
        rec = Recorder()
        c = engine.connect(path, ssl=client_ctx(pki), server_hostname="localhost",
                           on_connect=lambda c: c.send(b"olleh"),
                           on_recv=lambda c, d: (rec.add("recv", d), c.close()),
                           on_close=rec.on_close)
        rec.wait(lambda r: r.closed)
        assert rec.events[0] == ("recv", b"hello") and rec.closed[c.id] is None
    finally:
        lst.close()
