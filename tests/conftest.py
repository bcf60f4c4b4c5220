"""Shared fixtures and helpers.

One backend fixture (`backend`, module-scoped so module fixtures can use it
too) runs every test that asks for it once per backend available here; the
`engine` fixture adds the worker counts (w1: io_uring's single-issuer ring,
w4: a pool). Tests where the default pool (workers=None) matters parametrize
`workers` themselves with None among the values. Every test is checked
afterwards (autouse `hygiene`): the exact set of open descriptors and the
live I/O contexts are back to what they were, the engine counted no internal
error, and every Recorder saw each connection it was shown closed exactly
once."""
import collections
import gc
import logging
import os
import socket
import struct
import sys
import threading
import time
import weakref

import pytest
from pathlib import Path

import iocpx
import iocpx._core as _core
import tls_pki as _tls_pki

BACKENDS = iocpx.available_backends()
LINUX = sys.platform.startswith("linux")
WINDOWS = sys.platform == "win32"


def _under_wine():
    if sys.platform != "win32":
        return False
    try:
        import ctypes
        return hasattr(ctypes.windll.ntdll, "wine_get_version")
    except (ImportError, OSError, AttributeError):
        return False


UNDER_WINE = _under_wine()


def pytest_report_header(config):
    return f"iocpx backends available: {BACKENDS or 'none'}"


def pytest_collection_modifyitems(config, items):
    if not BACKENDS:
        raise pytest.UsageError(
            "no iocpx backend works on this machine; refusing to pass by skipping everything")


# ---- the one backend fixture, and workers ------------------------------------

@pytest.fixture(scope="module", params=BACKENDS)
def backend(request):
    """Every backend available on this machine (io_uring, epoll; iocp on Windows)."""
    return request.param


@pytest.fixture(scope="module", params=[1, 4], ids=["w1", "w4"])
def workers(request):
    """One worker (io_uring then runs its single-issuer ring) and a pool."""
    return request.param


def open_engines():
    """Engines of this process that are not closed."""
    return [e for e in list(_core._engines) if not e.closed]


def check_closed_engine(eng, live_before=None):
    """What must hold once Engine.close() has returned (each can fail)."""
    st = eng.stats()
    assert st["closed_engine"], st
    assert st["internal_errors"] == 0, f"{st['internal_errors']} internal errors"
    assert st["timers"] == 0, f"{st['timers']} timers still queued after close()"
    # every connection accepted or connected was closed (and counted) by close()
    assert st["closed"] >= st["accepted"] + st["connected"], st
    if live_before is not None and not open_engines():
        # close() reaps every context it owns before it returns
        assert iocpx.live_io() == live_before, \
            f"{iocpx.live_io() - live_before} I/O contexts alive right after close()"


@pytest.fixture
def engine(backend, workers):
    live0 = iocpx.live_io()
    eng = iocpx.Engine(workers=workers, backend=backend)
    yield eng
    eng.close(timeout=30)
    check_closed_engine(eng, live0)


# ---- hygiene: descriptors, contexts, internal errors, on_close delivery ------

def open_fds():
    """Linux: {descriptor: what it points to}. Windows: the handle count
    (the only process-wide measure Windows offers; compared exactly)."""
    if LINUX:
        out = {}
        for name in os.listdir("/proc/self/fd"):
            try:
                out[int(name)] = os.readlink(f"/proc/self/fd/{name}")
            except OSError:         # the listing's own directory descriptor, gone already
                pass
        return out
    if WINDOWS:
        import ctypes
        n = ctypes.c_ulong()
        k32 = ctypes.windll.kernel32
        if k32.GetProcessHandleCount(k32.GetCurrentProcess(), ctypes.byref(n)):
            return n.value
    return 0


def _fd_diff(before, after):
    if isinstance(before, dict):
        new = {k: v for k, v in after.items() if before.get(k) != v}
        gone = {k: v for k, v in before.items() if after.get(k) != v}
        return f"opened and not closed: {new}; closed though open before: {gone}"
    return f"{after - before:+d} handles"


_RECORDERS = []


@pytest.fixture(autouse=True)
def hygiene():
    """Fail a test that leaves descriptors or I/O contexts behind, makes the
    engine count an internal error, or whose Recorders saw a connection
    closed twice, closed unseen, or not closed at all."""
    gc.collect()
    errors0 = _core._internal_errors()
    live0, fds0 = iocpx.live_io(), open_fds()
    del _RECORDERS[:]
    yield
    recorders = [r() for r in _RECORDERS]
    del _RECORDERS[:]
    for rec in recorders:
        if rec is not None:
            rec.check()
    assert _core._internal_errors() == errors0, \
        f"{_core._internal_errors() - errors0} internal errors (see the iocpx log)"
    deadline = time.monotonic() + 5
    while True:
        gc.collect()
        live, fds = iocpx.live_io(), open_fds()
        if (live == live0 and fds == fds0) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert live == live0, f"{live - live0:+d} I/O contexts compared with the test's start"
    assert fds == fds0, f"descriptors differ from the test's start: {_fd_diff(fds0, fds)}"


# ---- helpers -----------------------------------------------------------------

def echo(conn, data):
    conn.send(data)


def recv_exact(sock, n, timeout=30):
    sock.settimeout(timeout)
    chunks, got = [], 0
    while got < n:
        b = sock.recv(min(1 << 20, n - got))
        if not b:
            raise EOFError(f"EOF after {got} of {n} bytes")
        chunks.append(b)
        got += len(b)
    return b"".join(chunks)


def recv_until_eof(sock, timeout=30):
    sock.settimeout(timeout)
    chunks = []
    while True:
        b = sock.recv(1 << 20)
        if not b:
            return b"".join(chunks)
        chunks.append(b)


def wait_for(pred, timeout=10, what="condition"):
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.005)


def wait_dropped(sock, timeout=10):
    """Wait until the server closed sock (EOF or reset); True if it did."""
    sock.settimeout(timeout)
    try:
        while sock.recv(65536):
            pass
        return True
    except (ConnectionResetError, ConnectionAbortedError):
        return True
    except socket.timeout:
        return False


def still_open(sock):
    """True if the peer has neither closed nor reset sock (nothing to read)."""
    sock.setblocking(False)
    try:
        sock.recv(1)
    except BlockingIOError:
        return True
    except OSError:
        return False
    else:
        return False            # EOF, or data nobody should have sent
    finally:
        sock.setblocking(True)


_LINGER_RST = struct.pack("HH" if WINDOWS else "ii", 1, 0)


def rst(sock):
    """Close sock with a reset (SO_LINGER 0) instead of a FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
    sock.close()


def client(address, timeout=10):
    s = socket.create_connection(address, timeout=timeout)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def unused_port():
    """A socket bound to a loopback port and not listening: connecting to it is
    refused. Keep it open while the port is in use (so it cannot be handed
    out as an ephemeral port meanwhile), then close it."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    return s


def loud(caplog, level=logging.DEBUG):
    """iocpx log records above level (what an operator would see)."""
    return [r for r in caplog.records if r.name == "iocpx" and r.levelno > level]


def assert_quiet(caplog):
    """Nothing above DEBUG on the iocpx logger: what peer failures, idle and
    first-data timeouts (and the iocp guard against silent clients) may log."""
    noisy = loud(caplog)
    assert not noisy, [f"{r.levelname}: {r.getMessage()}" for r in noisy]


@pytest.fixture
def log(caplog):
    """caplog with every iocpx record, DEBUG included, captured."""
    caplog.set_level(logging.DEBUG, logger="iocpx")
    return caplog


def held(eng):
    """Client connections the engine holds: accepted and not closed, plus
    (iocp) AcceptEx slots whose client is connected but has sent nothing
    (SO_CONNECT_TIME >= 0), which the engine has not accepted yet."""
    st = eng.stats()
    n = st["accepted"] - st["closed"]
    if eng.backend == "iocp":
        from iocpx import _iocp
        n += sum(t >= 0 for b in _iocp.live_backends() for t in b.pending_connect_times())
    return n


class Recorder:
    """Collects callback events thread-safely, and checks at the end of the
    test (hygiene) that on_close came exactly once for each connection it
    saw surface (through its accept/connect methods), and never for one it
    did not see."""

    def __init__(self):
        self.lock = threading.RLock()        # re-entrant: wait() predicates call kinds()...
        self.cond = threading.Condition(self.lock)
        self.events = []
        self.closed = {}
        self.close_calls = collections.Counter()
        self.surfaced = set()
        self.conns = {}
        self.tracking = False
        _RECORDERS.append(weakref.ref(self))

    def add(self, *ev):
        with self.cond:
            self.events.append(ev)
            self.cond.notify_all()

    # callbacks (or call them from yours)
    def expect(self, conn):
        """conn is the application's (Engine.connect() returned it): on_close is owed."""
        with self.cond:
            self.tracking = True
            self.surfaced.add(conn.id)
            self.conns[conn.id] = conn
        return conn

    def accept(self, conn, data):
        with self.cond:
            self.tracking = True
            self.surfaced.add(conn.id)
            self.conns[conn.id] = conn
            self.events.append(("accept", conn.id, data))
            self.cond.notify_all()

    def connect(self, conn):
        with self.cond:
            self.tracking = True
            self.surfaced.add(conn.id)
            self.conns[conn.id] = conn
            self.events.append(("connect", conn.id, None))
            self.cond.notify_all()

    def recv(self, conn, data):
        self.add("recv", conn.id, data)

    def on_close(self, conn, exc):
        with self.cond:
            self.close_calls[conn.id] += 1
            self.closed.setdefault(conn.id, exc)
            self.events.append(("close", conn.id, exc))
            self.cond.notify_all()

    def wait(self, pred, timeout=10, what=None):
        with self.cond:
            if not self.cond.wait_for(lambda: pred(self), timeout):
                raise AssertionError(f"timed out waiting for {what or 'events'}; "
                                     f"last events: {self.events[-10:]}")

    def wait_closed(self, n=1, timeout=10):
        self.wait(lambda r: len(r.closed) >= n, timeout, f"{n} on_close call(s)")

    def kinds(self, conn_id=None):
        with self.lock:
            return [e[0] for e in self.events if conn_id is None or e[1] == conn_id]

    def data(self, conn_id=None, kinds=("accept", "recv")):
        with self.lock:
            return b"".join(e[2] for e in self.events
                            if e[0] in kinds and (conn_id is None or e[1] == conn_id) and e[2])

    def check(self, complete=True):
        with self.lock:
            twice = {k: v for k, v in self.close_calls.items() if v > 1}
            assert not twice, f"on_close delivered more than once: {twice}"
            if self.tracking:
                unseen = set(self.close_calls) - self.surfaced
                assert not unseen, f"on_close for connections never surfaced: {unseen}"
                if complete:
                    missing = self.surfaced - set(self.close_calls)
                    assert not missing, f"connections surfaced but never closed: {missing}"


# ---- certificates (TLS tests of the engine and of the asyncio loop) ---------------

@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """The folder of PEM files tests/_tls_pki.py makes: here with trustme, or
    the one IOCPX_TEST_PKI names (made beforehand on the Linux side of a Wine run)."""
    given = os.environ.get("IOCPX_TEST_PKI")
    if given:
        missing = [f for f in _tls_pki.FILES if not os.path.exists(os.path.join(given, f))]
        assert not missing, f"IOCPX_TEST_PKI={given} lacks {missing}"
        return {"dir": Path(given)}
    try:
        import trustme  # noqa: F401
    except ImportError as e:
        pytest.skip(f"the TLS tests make their certificates with trustme ({e}): "
                    "pip install trustme (it is in the test extra)")
    return {"dir": Path(_tls_pki.write_pki(str(tmp_path_factory.mktemp("pki"))))}
