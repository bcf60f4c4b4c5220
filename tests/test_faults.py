"""Every failure point, failed in turn (docs/robustness.md): the SQLite way.

A build with the failure points compiled in (IOCPX_FAULTS=1, or the debug
build) names each allocation and system call of the engine and the backends
that can fail (iocpx._faults.points()). For each point and backend a small
scripted workload runs with that point's Nth call made to fail, N = 1, 2, 3...
until the workload no longer reaches the point, and then with every point
failing at random (fixed seeds). The workload: accept with first data and
echo, the engine's own client (connect), a send queue under pressure with a
sendfile behind it, timers, datagrams, and closing the engine while
connections are busy.

Every run must end in recovery, a clean OSError/MemoryError to the caller, or
on_close(conn, exc) for the connection concerned; afterwards no I/O context
is alive, the descriptors are those of before, every connection shown to the
application was closed exactly once, each timer fired at most once, the
engine counted no internal error, every byte a client received is a prefix
of what was sent to it, and the bytes the application handed to send() and
sendfile() were sent or counted in bytes_dropped.

In CI, N steps through 1, 2, 3, 5, 8, 13, ... (while the point is reached).
The full walk, every N until the point is no longer reached (minutes):
    IOCPX_FAULTS_WALK=all PYTHONPATH=src python -m pytest tests/test_faults.py
Without the failure points every
test here skips, saying how to build them.
"""
import gc
import os
import socket
import threading
import time

import pytest

import iocpx
from conftest import Recorder, open_fds, _fd_diff

WHY = ""
try:
    import iocpx._faults as faults
except ImportError as e:            # a release build
    faults = None
    WHY = str(e)

pytestmark = pytest.mark.skipif(faults is None, reason=WHY)

POINTS = faults.points() if faults else []
# which calls of a point to fail: "steps" (CI: 1, 2, 3, 5, 8, 13, ... while it is
# reached) or "all" (the full walk: every call until the point is no longer reached)
WALK = os.environ.get("IOCPX_FAULTS_WALK", "steps")
SEEDS = [int(s) for s in os.environ.get("IOCPX_FAULTS_SEEDS", "1,2,3").split(",")]
RATE = float(os.environ.get("IOCPX_FAULTS_RATE", "0.02"))
ALLOWED = (OSError, MemoryError)
PRESSURE = 1 << 20                  # bytes sent to the slow reader, before its sendfile
FILE_BYTES = 256 * 1024


@pytest.fixture(scope="module")
def payload_file(tmp_path_factory):
    p = tmp_path_factory.mktemp("faults") / "payload.bin"
    p.write_bytes(bytes(range(256)) * (FILE_BYTES // 256))
    return str(p)


class Run:
    """One run of the workload: what the application did and saw."""

    def __init__(self):
        self.rec = Recorder()
        self.errors = []            # exceptions the API raised to the caller
        self.bad = []               # exceptions that are not allowed, and broken checks
        self.handed = 0             # bytes send()/sendfile() accepted
        self.lock = threading.Lock()
        self.fired = {}

    def call(self, fn, *args, **kw):
        """Call the API: an OSError/MemoryError is a clean outcome, anything else is not."""
        try:
            return fn(*args, **kw)
        except ALLOWED as e:
            self.errors.append(e)
        except BaseException as e:      # noqa: BLE001 - it is what the test looks for
            self.bad.append(f"{fn}: {e!r}")
        return None


def _sent(run, conn, data):
    """conn.send(data), counting what the application was told went out."""
    try:
        conn.send(data)
    except ALLOWED as e:
        run.errors.append(e)
        return False
    with run.lock:
        run.handed += len(data)
    return True


def _reader(sock, got, expect, slow=False):
    """Read until EOF, reset or timeout into got (a bytearray)."""
    sock.settimeout(5)
    try:
        while True:
            b = sock.recv(65536)
            if not b:
                break
            got.extend(b)
            if slow:
                time.sleep(0.001)
            if expect is not None and len(got) >= expect:
                break
    except OSError:
        pass


def workload(backend, payload_file, run):
    file_data = open(payload_file, "rb").read()
    pressure = bytes(i % 251 for i in range(PRESSURE))
    eng = run.call(iocpx.Engine, workers=2, backend=backend)
    if eng is None:
        return None                     # a clean MemoryError/OSError from Engine()
    socks, threads = [], []
    try:
        rec = run.rec

        def on_accept(conn, data):
            rec.accept(conn, data)
            if data:
                _sent(run, conn, data)

        def on_recv(conn, data):
            _sent(run, conn, data)

        lst = run.call(eng.listen, ("127.0.0.1", 0), first_data=True, first_data_timeout=3,
                       on_accept=on_accept, on_recv=on_recv, on_close=rec.on_close)

        def on_accept_pressure(conn, data):
            rec.accept(conn, data)
            for i in range(0, PRESSURE, 65536):
                if not _sent(run, conn, pressure[i:i + 65536]):
                    return
            try:
                n = conn.sendfile(payload_file)
            except ALLOWED as e:
                run.errors.append(e)
                return
            with run.lock:
                run.handed += n
            run.call(conn.close)

        lst2 = run.call(eng.listen, ("127.0.0.1", 0), on_accept=on_accept_pressure,
                        on_close=rec.on_close)

        # timers: five fire, one is cancelled
        def fire(k):
            with run.lock:
                run.fired[k] = run.fired.get(k, 0) + 1
        timers = [run.call(eng.call_later, 0.01 * (k + 1), fire, k) for k in range(6)]
        if timers[5] is not None:
            timers[5].cancel()

        # datagrams: echo
        def on_dg(ep, data, addr):
            if run.call(ep.sendto, data, addr):
                with run.lock:
                    run.handed += len(data)     # bytes_out counts datagrams too
        ep = run.call(eng.datagram, ("127.0.0.1", 0), on_datagram=on_dg)

        echo_got = []
        if lst is not None:
            for i in range(3):
                msg = (b"first-%d|" % i) + os.urandom(20000)
                try:
                    s = socket.create_connection(lst.address, timeout=5)
                except OSError:
                    continue
                socks.append(s)
                got = bytearray()
                echo_got.append((msg, got))
                t = threading.Thread(target=_reader, args=(s, got, len(msg)))
                t.start()
                threads.append(t)
                try:
                    s.sendall(msg[:9])
                    s.sendall(msg[9:])
                except OSError:
                    pass

            # the engine's own client
            def on_connect(conn):
                rec.connect(conn)
                _sent(run, conn, b"ping")
            conn = run.call(eng.connect, lst.address, on_connect=on_connect,
                            on_recv=lambda c, d: None, on_close=rec.on_close)
            if conn is not None:
                rec.expect(conn)        # connect() returned it: on_close is owed

        slow_got = bytearray()
        if lst2 is not None:
            try:
                s2 = socket.create_connection(lst2.address, timeout=5)
                socks.append(s2)
                t = threading.Thread(target=_reader, args=(s2, slow_got, None, True))
                t.start()
                threads.append(t)
            except OSError:
                pass

        dg_ok = 0
        if ep is not None:
            u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            socks.append(u)
            u.settimeout(0.3)
            for i in range(10):
                try:
                    u.sendto(b"dg%03d" % i, ep.address)
                except OSError:
                    pass
            try:
                while True:
                    d, _ = u.recvfrom(100)
                    if not (d.startswith(b"dg") and len(d) == 5):
                        run.bad.append(f"datagram mangled: {d!r}")
                    dg_ok += 1
            except OSError:
                pass

        for t in threads[:len(echo_got)]:
            t.join(10)
        time.sleep(0.1)
        # close under load: the slow reader's connection may still be sending
    finally:
        eng.close(timeout=20)
        for t in threads:
            t.join(10)
            if t.is_alive():
                run.bad.append("a client thread hung")
        for s in socks:
            s.close()
    st = eng.stats()
    # every byte a client got is a prefix of what it was sent
    for msg, got in echo_got:
        if bytes(got) != msg[:len(got)]:
            run.bad.append(f"echo corrupted: {len(got)} bytes, first difference at "
                           f"{next(i for i in range(len(got)) if got[i] != msg[i])}")
    stream = pressure + file_data
    if bytes(slow_got) != stream[:len(slow_got)]:
        run.bad.append("the send queue's bytes arrived corrupted")
    if any(v > 1 for v in run.fired.values()) or 5 in run.fired:
        run.bad.append(f"timers fired wrongly: {run.fired}")
    if st["internal_errors"]:
        run.bad.append(f"{st['internal_errors']} internal errors")
    if st["bytes_out"] + st["bytes_dropped"] != run.handed:
        run.bad.append(f"bytes handed to send()/sendfile() {run.handed} != bytes_out "
                       f"{st['bytes_out']} + bytes_dropped {st['bytes_dropped']}")
    return st


def _settle(live0, fds0):
    deadline = time.monotonic() + 5
    while True:
        gc.collect()
        live, fds = iocpx.live_io(), open_fds()
        if (live == live0 and fds == fds0) or time.monotonic() > deadline:
            return live, fds
        time.sleep(0.02)


def one_run(backend, payload_file, arm):
    faults.reset()
    live0, fds0 = iocpx.live_io(), open_fds()
    run = Run()
    arm()
    try:
        workload(backend, payload_file, run)
    finally:
        hit = {p: faults.counts(p) for p in POINTS}
        faults.reset()
    live, fds = _settle(live0, fds0)
    problems = list(run.bad)
    try:
        run.rec.check()
    except AssertionError as e:
        problems.append(str(e))
    if live != live0:
        problems.append(f"{live - live0:+d} I/O contexts alive")
    if fds != fds0:
        problems.append(f"descriptors: {_fd_diff(fds0, fds)}")
    return hit, problems


@pytest.mark.parametrize("point", POINTS)
def test_fail_nth_call(backend, point, payload_file):
    """Fail the point's 1st, 2nd, ... call; stop when the workload no longer reaches it."""
    n, prev, runs, failures = 1, 1, 0, []
    while True:
        hit, problems = one_run(backend, payload_file, lambda n=n: faults.arm(point, n))
        runs += 1
        if problems:
            failures.append(f"{point} call {n}: {problems}")
        if hit[point][1] == 0:          # not reached this time: the walk is over
            break
        n, prev = (n + 1, n) if WALK == "all" or n < 3 else (n + prev, n)
    print(f"{backend} {point}: {runs} runs, its calls failed up to the {n - 1}th")
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("seed", SEEDS)
def test_fail_at_random(backend, seed, payload_file):
    """Every point fails with probability RATE, the draws from a fixed seed."""
    hit, problems = one_run(backend, payload_file, lambda: faults.arm_random(seed, RATE))
    print(f"{backend} seed {seed}: failed {sum(h for _, h in hit.values())} calls: "
          f"{ {p: h for p, (_, h) in hit.items() if h} }")
    assert not problems, problems
