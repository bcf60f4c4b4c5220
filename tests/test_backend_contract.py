"""The backend contract: every backend (io_uring, epoll, iocp), driven op by op
through iocpx._core.BackendTester, gives the same result codes for the same
operations. That is what lets the engine be written once; a difference here
is an engine bug, not a reason to loosen a test.

Results are Python's errno values on every platform (res >= 0, or -errno).
Receives are "data events, then one final event": io_uring keeps a multishot
receive armed (more=True) across data events, iocp ends each receive with its
data (more=False) and the engine posts the next one, epoll may do either; an
op's final event (more=False) is its last, and EOF is a final event with res 0.
"""
import errno
import os
import socket
import threading
import time

import pytest

from iocpx._core import BackendTester
from conftest import UNDER_WINE, WINDOWS, rst, unused_port

SLOW = 10 if UNDER_WINE else 5      # generous waits (seconds); Wine is slow per I/O

# what a send to a connection the peer reset may say; the engine turns each
# into one ConnectionResetError (tests/test_peer_failures.py)
RESET_ERRNOS = {errno.ECONNRESET, errno.EPIPE, errno.ECONNABORTED}


def _close_fd(fd):
    if WINDOWS:
        socket.socket(fileno=fd).close()     # a SOCKET handle: closesocket
    else:
        os.close(fd)


class Harness:
    """A BackendTester plus the bookkeeping a test needs: completions
    collected per tag, the sockets to close, and a teardown that cancels
    whatever a failing test left pending."""

    def __init__(self, backend):
        self.t = BackendTester(backend)
        self.name = self.t.name
        self.fds = []           # raw sockets made or accepted through the backend
        self.socks = []         # Python sockets (peers, listeners)
        self.events = []
        self.n = 0

    def tag(self, prefix):
        self.n += 1
        return f"{prefix}{self.n}"

    def listener(self, backlog=16):
        ls = socket.socket()
        ls.bind(("127.0.0.1", 0))
        ls.listen(backlog)
        self.socks.append(ls)
        self.t.adopt(ls.fileno())
        return ls

    def peer(self, address):
        s = socket.create_connection(address, timeout=SLOW)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.socks.append(s)
        return s

    def own(self, fd):
        self.fds.append(fd)
        return fd

    def until(self, pred, timeout=SLOW, what="completions"):
        """Wait for completions until pred(self.events) holds."""
        deadline = time.monotonic() + timeout
        while not pred(self.events):
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"timed out waiting for {what}; got {self.events}")
            self.events.extend(self.t.wait(min(left, 0.5)))
        return self.events

    def final(self, tag, timeout=SLOW):
        """The final event (more=False) of op `tag`, waiting for it."""
        self.until(lambda evs: any(e[0] == tag and not e[3] for e in evs), timeout,
                   f"the final completion of {tag!r}")
        return [e for e in self.events if e[0] == tag and not e[3]][0]

    def of(self, tag):
        return [e for e in self.events if e[0] == tag]

    def accept_one(self, ls, client_address=None):
        """Accept one connection on ls (adopted); returns (fd, peer socket)."""
        tag = self.tag("acc")
        self.t.accept(tag, ls.fileno())
        p = self.peer(ls.getsockname())
        tag_, op, res, more, data = self.final(tag)
        assert op == "accept" and res >= 0, (op, res)
        return self.own(res), p

    def finish(self):
        if self.t.pending:      # a failed test left ops behind: cancel them all
            for fd in self.fds + [s.fileno() for s in self.socks if s.fileno() >= 0]:
                self.t.cancel_fd(self.tag("cleanup"), fd)
            deadline = time.monotonic() + SLOW
            while self.t.pending and time.monotonic() < deadline:
                self.t.wait(0.2)
        pending = self.t.pending
        if not pending:
            self.t.close()
        for fd in self.fds:
            _close_fd(fd)
        for s in self.socks:
            s.close()
        assert not pending, f"{pending} operations never completed"


@pytest.fixture
def h(backend):
    harness = Harness(backend)
    yield harness
    harness.finish()


# ---- posted packets and the wait -----------------------------------------------

def test_post_completes_with_res_0(h):
    h.t.post("p", nbytes=7)
    assert h.final("p") == ("p", "post", 0, False, None)


def test_posted_packets_come_back_in_order(h):
    tags = [f"p{i}" for i in range(50)]
    for t in tags:
        h.t.post(t)
    h.until(lambda evs: len(evs) == 50)
    assert [e[0] for e in h.events] == tags
    assert all(e[1:] == ("post", 0, False, None) for e in h.events)


def test_wait_with_nothing_pending_returns_empty_not_early(h):
    t0 = time.monotonic()
    assert h.t.wait(0.2) == []
    took = time.monotonic() - t0
    assert 0.19 <= took < 2, took


def test_a_post_from_another_thread_wakes_a_waiting_wait(h):
    """The engine wakes its leader this way (timers due sooner, close)."""
    def post_later():
        time.sleep(0.2)                         # let wait() get into the kernel first
        h.t.post("wake")
    th = threading.Thread(target=post_later)
    t0 = time.monotonic()
    th.start()
    evs = h.t.wait(10)
    th.join()
    assert [e[0] for e in evs] == ["wake"]
    assert time.monotonic() - t0 < 5, "wait() slept through a post"


# ---- accept ----------------------------------------------------------------------

def test_accept_gives_a_socket_and_the_peer_address(h):
    ls = h.listener()
    h.t.accept("a", ls.fileno())
    p = h.peer(ls.getsockname())
    tag, op, res, more, data = h.final("a")
    assert (op, more) == ("accept", False) and res >= 0
    h.own(res)
    first, addr = data
    assert first is None                       # no first data was asked for
    assert addr == p.getsockname()


@pytest.mark.parametrize("client", ["sends", "closes"])
def test_accept_with_first_data(h, client):
    """An accept that asks for first data (AcceptEx) either carries the first
    bytes (b"" when the client closed without sending), or (accept on
    connect) carries none and the bytes wait in the socket for a receive."""
    ls = h.listener()
    h.t.accept("a", ls.fileno(), 4096)
    p = h.peer(ls.getsockname())
    if client == "sends":
        p.sendall(b"hello")
    else:
        p.close()
    tag, op, res, more, (first, addr) = h.final("a")
    assert op == "accept" and res >= 0 and not more
    fd = h.own(res)
    assert addr[0] == "127.0.0.1" and addr[1] > 0
    if first:
        assert client == "sends" and first == b"hello"
        return
    assert first in (None, b"")
    h.t.recv("r", fd)
    if client == "sends":
        h.until(lambda evs: b"".join(e[4] or b"" for e in evs if e[0] == "r") == b"hello")
        p.close()
    assert h.final("r")[2] == 0                 # then EOF ends the receive


def test_accepts_queue_on_one_listener_each_completes_once(h):
    ls = h.listener()
    for i in range(4):
        h.t.accept(f"a{i}", ls.fileno())
    peers = [h.peer(ls.getsockname()) for _ in range(4)]
    h.until(lambda evs: len(evs) == 4)
    assert sorted(e[0] for e in h.events) == ["a0", "a1", "a2", "a3"]
    for _tag, op, res, more, (_first, _addr) in h.events:
        assert op == "accept" and res >= 0 and not more
        h.own(res)
    assert sorted(e[4][1] for e in h.events) == sorted(p.getsockname() for p in peers)


# ---- receive -----------------------------------------------------------------------

def _receive(h, fd, n, tag_prefix="r"):
    """Receive n bytes on fd the way the engine does: keep one receive armed,
    post the next one when an op ends. Returns (bytes, the tag still armed or
    None, every event)."""
    got = bytearray()
    evs = []
    tag = h.tag(tag_prefix)
    h.t.recv(tag, fd)
    deadline = time.monotonic() + SLOW * 2
    while len(got) < n:
        assert time.monotonic() < deadline, f"received {len(got)} of {n} bytes"
        for e in h.t.wait(0.5):
            h.events.append(e)
            assert e[0] == tag, f"event of another op: {e}"
            evs.append(e)
            _, op, res, more, data = e
            assert op == "recv"
            assert res > 0, f"a data event has res > 0, got {e}"
            assert data is not None and len(data) == res
            got += data
            if not more:                        # the op ended with its data: arm the next one
                tag = h.tag(tag_prefix)
                h.t.recv(tag, fd)
    return bytes(got), tag, evs


# how the engine takes a receive's bytes: on_recv's bytes, a copy of merged events into one
# buffer, or read in place and given back (BufferedProtocol, get_buffer/on_recv_into)
CONSUME = ["bytes", "copy", "release"]


@pytest.mark.parametrize("consume", CONSUME)
def test_recv_data_events_then_eof_ends_the_op(h, consume):
    h.t.consume = consume
    ls = h.listener()
    fd, p = h.accept_one(ls)
    p.sendall(b"hello")
    data, tag, evs = _receive(h, fd, 5)
    assert data == b"hello"
    p.shutdown(socket.SHUT_WR)
    tag_, op, res, more, data = h.final(tag)
    assert (op, res, more) == ("recv", 0, False)
    assert data in (None, b"")
    assert h.of(tag)[-1] == (tag, op, res, more, data), "events after the final one"


@pytest.mark.parametrize("consume", CONSUME)
def test_recv_a_large_stream_in_order(h, consume):
    h.t.consume = consume
    ls = h.listener()
    fd, p = h.accept_one(ls)
    blob = os.urandom(1 << 20)
    th = threading.Thread(target=p.sendall, args=(blob,))
    th.start()
    data, tag, evs = _receive(h, fd, len(blob))
    th.join(SLOW)
    assert data == blob
    p.close()
    assert h.final(tag)[2] == 0


def test_recv_sees_a_peer_reset_as_econnreset(h):
    ls = h.listener()
    fd, p = h.accept_one(ls)
    h.t.recv("r", fd)
    h.socks.remove(p)
    rst(p)
    tag, op, res, more, data = h.final("r")
    assert (op, more) == ("recv", False)
    assert res == -errno.ECONNRESET, f"recv after a reset: {res} ({errno.errorcode.get(-res)})"


# ---- connect and send ----------------------------------------------------------------

def test_connect_to_a_closed_port_is_econnrefused(h):
    closed = unused_port()
    try:
        fd = h.own(h.t.socket())
        h.t.connect("c", fd, closed.getsockname())
        tag, op, res, more, data = h.final("c")
    finally:
        closed.close()
    assert (op, more) == ("connect", False)
    assert res == -errno.ECONNREFUSED, f"{res} ({errno.errorcode.get(-res)})"


def test_connect_then_send_and_receive(h):
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(4)
    h.socks.append(ls)
    fd = h.own(h.t.socket())
    h.t.connect("c", fd, ls.getsockname())
    assert h.final("c")[1:3] == ("connect", 0)
    a, _ = ls.accept()
    h.socks.append(a)
    h.t.send("s", fd, b"x" * 1000)
    assert h.final("s")[1:4] == ("send", 1000, False)
    a.settimeout(SLOW)
    got = b""
    while len(got) < 1000:
        got += a.recv(1000)
    assert got == b"x" * 1000
    a.sendall(b"back")
    data, tag, evs = _receive(h, fd, 4)
    assert data == b"back"
    h.t.cancel_fd("x", fd)
    assert h.final(tag)[2] == -errno.ECANCELED
    h.final("x")


def test_send_after_a_peer_reset_fails_with_a_reset_errno(h):
    ls = h.listener()
    fd, p = h.accept_one(ls)
    h.socks.remove(p)
    rst(p)
    for _ in range(20):                         # the first may still be taken by the kernel
        tag = h.tag("s")
        h.t.send(tag, fd, b"y" * 1000)
        res = h.final(tag)[2]
        if res < 0:
            break
        assert res == 1000
    assert res < 0, "send kept succeeding after the peer reset"
    assert -res in RESET_ERRNOS, f"{res} ({errno.errorcode.get(-res)})"


# ---- sendfile -------------------------------------------------------------------------

def test_sendfile_completions_sum_to_n_then_0_at_end_of_file(h, tmp_path):
    n = 300_000
    blob = os.urandom(n)
    path = tmp_path / "f.bin"
    path.write_bytes(blob)
    ls = h.listener()
    fd, p = h.accept_one(ls)
    got = bytearray()

    def reader():
        p.settimeout(SLOW * 2)
        while len(got) < n:
            b = p.recv(65536)
            if not b:
                return
            got.extend(b)

    th = threading.Thread(target=reader)
    th.start()
    ffd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
    try:
        moved = 0
        while moved < n:
            tag = h.tag("f")
            h.t.sendfile(tag, fd, ffd, moved, n - moved)
            tag_, op, res, more, data = h.final(tag)
            assert op == "sendfile" and not more
            assert 0 < res <= n - moved, f"sendfile of {n - moved} bytes gave {res}"
            moved += res
        th.join(SLOW * 2)
        assert bytes(got) == blob
        h.t.sendfile("eof", fd, ffd, n, 1000)       # at the end of the file
        assert h.final("eof")[1:4] == ("sendfile", 0, False)
    finally:
        os.close(ffd)


# ---- cancel -----------------------------------------------------------------------------

def test_cancel_fd_cancels_pending_accepts(h):
    ls = h.listener()
    h.t.accept("a1", ls.fileno())
    h.t.accept("a2", ls.fileno())
    h.t.cancel_fd("x", ls.fileno())
    h.until(lambda evs: {e[0] for e in evs} >= {"a1", "a2", "x"})
    for tag in ("a1", "a2"):
        assert h.of(tag) == [(tag, "accept", -errno.ECANCELED, False, None)]
    (x,) = h.of("x")
    assert x[1] == "cancel" and x[2] >= 0 and not x[3]


def test_cancel_fd_cancels_a_pending_recv(h):
    ls = h.listener()
    fd, p = h.accept_one(ls)
    h.t.recv("r", fd)
    h.t.cancel_fd("x", fd)
    h.until(lambda evs: {e[0] for e in evs} >= {"r", "x"})
    assert h.of("r") == [("r", "recv", -errno.ECANCELED, False, None)]
    (x,) = h.of("x")
    assert x[1] == "cancel" and x[2] >= 0 and not x[3]
    # the socket is intact: a new receive gets the next bytes
    p.sendall(b"after")
    data, tag, evs = _receive(h, fd, 5)
    assert data == b"after"
    p.close()
    assert h.final(tag)[2] == 0


def test_cancel_one_op_leaves_the_others(h):
    ls = h.listener()
    h.t.accept("a1", ls.fileno())
    h.t.accept("a2", ls.fileno())
    h.t.cancel("k", "a1")
    h.until(lambda evs: {e[0] for e in evs} >= {"a1", "k"})
    assert h.of("a1") == [("a1", "accept", -errno.ECANCELED, False, None)]
    assert [e[1:4] for e in h.of("k")] == [("cancel", 0, False)]
    p = h.peer(ls.getsockname())                # a2 is still armed
    tag, op, res, more, (first, addr) = h.final("a2")
    assert res >= 0 and addr == p.getsockname()
    h.own(res)


def test_cancel_a_pending_recv(h):
    ls = h.listener()
    fd, p = h.accept_one(ls)
    h.t.recv("r", fd)
    h.t.cancel("k", "r")
    h.until(lambda evs: {e[0] for e in evs} >= {"r", "k"})
    assert h.of("r") == [("r", "recv", -errno.ECANCELED, False, None)]
    assert [e[1:4] for e in h.of("k")] == [("cancel", 0, False)]


def test_cancel_fd_with_nothing_pending_still_completes(h):
    """The cancel op completes once even when it found nothing (its res is
    not an error the engine reports: io_uring and epoll say -ENOENT, iocp's
    posted acknowledgement says 0)."""
    ls = h.listener()
    fd, p = h.accept_one(ls)
    h.t.cancel_fd("x", fd)
    tag, op, res, more, data = h.final("x")
    assert (op, more) == ("cancel", False)
    assert res in (0, -errno.ENOENT), res
    assert h.t.pending == 0
