"""Shared fixtures: every test runs once per backend available here, and every
test checks that live I/O contexts and open descriptors return to baseline."""
import gc
import os
import socket
import sys
import threading
import time

import pytest

import iocpx

BACKENDS = iocpx.available_backends()
LINUX = sys.platform.startswith("linux")


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


def open_fds():
    """Open descriptors (Linux) or handles (Windows) of this process."""
    if LINUX:
        return len(os.listdir("/proc/self/fd"))
    if sys.platform == "win32":
        import ctypes
        n = ctypes.c_ulong()
        k32 = ctypes.windll.kernel32
        if k32.GetProcessHandleCount(k32.GetCurrentProcess(), ctypes.byref(n)):
            return n.value
    return 0


@pytest.fixture(params=BACKENDS)
def backend(request):
    return request.param


@pytest.fixture(autouse=True)
def no_leaks():
    """Fail a test that leaves I/O contexts or descriptors behind."""
    gc.collect()
    live0, fds0 = iocpx.live_io(), open_fds()
    yield
    deadline = time.monotonic() + 5
    while True:
        gc.collect()
        live, fds = iocpx.live_io(), open_fds()
        if (live <= live0 and fds <= fds0) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert live <= live0, f"{live - live0} I/O contexts leaked"
    assert fds <= fds0, f"{fds - fds0} descriptors leaked"


@pytest.fixture(params=[1, 4], ids=["w1", "w4"])
def workers(request):
    """One worker (io_uring then runs its single-issuer ring) and a pool."""
    return request.param


@pytest.fixture
def engine(backend, workers):
    eng = iocpx.Engine(workers=workers, backend=backend)
    yield eng
    eng.close(timeout=30)
    st = eng.stats()
    assert st["pending_ops"] == 0 and st["connections"] == 0


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
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


class Recorder:
    """Collects callback events thread-safely."""

    def __init__(self):
        self.lock = threading.Lock()
        self.events = []
        self.closed = {}
        self.cond = threading.Condition(self.lock)

    def add(self, *ev):
        with self.cond:
            self.events.append(ev)
            self.cond.notify_all()

    def on_close(self, conn, exc):
        with self.cond:
            self.closed[conn.id] = exc
            self.events.append(("close", conn.id, exc))
            self.cond.notify_all()

    def wait(self, pred, timeout=10):
        with self.cond:
            if not self.cond.wait_for(lambda: pred(self), timeout):
                raise AssertionError(f"timed out; events: {self.events[-10:]}")


def client(address, timeout=10):
    s = socket.create_connection(address, timeout=timeout)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s
