"""iocpx.EventLoop beyond CPython's own conformance tests (test_asyncio_conformance.py):
the entry points, what the engine promises holding through the loop (peer resets, refused
connects, TLS garbage, use after close, nothing left behind), flow control, BufferedProtocol
edge cases, timers, threads, and a TLS churn that must keep memory flat.

Every test runs on every backend available here (the `backend` fixture)."""
import asyncio
import gc
import os
import socket
import ssl
import sys
import threading

import pytest

import iocpx

LINUX = sys.platform.startswith("linux")


@pytest.fixture
def loop(backend):
    lp = iocpx.new_event_loop(backend=backend)
    asyncio.set_event_loop(lp)
    yield lp
    asyncio.set_event_loop(None)
    if not lp.is_closed():
        lp.run_until_complete(lp.shutdown_asyncgens())
        lp.close()
    assert lp.engine_stats["live_io"] == 0 or iocpx.live_io() == 0


def run(loop, coro, timeout=30):
    return loop.run_until_complete(asyncio.wait_for(coro, timeout))


class Echo(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.transport.write(data)


# ---- entry points ----------------------------------------------------------------

def test_entry_points(backend, monkeypatch):
    monkeypatch.setenv("IOCPX_BACKEND", backend)

    async def main():
        lp = asyncio.get_running_loop()
        assert isinstance(lp, iocpx.EventLoop)
        assert isinstance(lp, asyncio.AbstractEventLoop)
        assert lp.backend == backend
        await asyncio.sleep(0.001)
        return 42

    assert iocpx.run(main()) == 42
    if sys.version_info >= (3, 12):
        assert asyncio.run(main(), loop_factory=iocpx.new_event_loop) == 42
    if sys.version_info >= (3, 11):
        with asyncio.Runner(loop_factory=iocpx.new_event_loop) as runner:
            assert runner.run(main()) == 42
    with pytest.warns(DeprecationWarning) if sys.version_info >= (3, 14) else _nullcontext():
        policy = iocpx.EventLoopPolicy()
    lp = policy.new_event_loop()
    try:
        assert isinstance(lp, iocpx.EventLoop)
        assert lp.run_until_complete(main()) == 42
    finally:
        lp.close()


class _nullcontext:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_run_rejects_non_coroutine(backend):
    with pytest.raises((ValueError, TypeError)):
        iocpx.run(42)


def test_use_after_close_raises(loop):
    loop.close()
    for call in (lambda: loop.call_soon(print), lambda: loop.call_later(1, print),
                 lambda: loop.call_soon_threadsafe(print), lambda: loop.run_forever()):
        with pytest.raises(RuntimeError, match="closed"):
            call()
    loop.close()        # idempotent


def test_bad_arguments(loop):
    with pytest.raises(TypeError):
        loop.call_later(None, print)
    with pytest.raises(TypeError):
        loop.call_at(None, print)
    with pytest.raises(TypeError):
        loop.call_later("soon", print)


# ---- what the engine promises, the asyncio way ---------------------------------------

def test_refused_connect_raises(loop):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()                       # nobody listens there now
    with pytest.raises(ConnectionRefusedError):
        run(loop, loop.create_connection(asyncio.Protocol, "127.0.0.1", port))


def test_peer_reset_reaches_connection_lost(loop):
    lost = loop.create_future()

    class P(asyncio.Protocol):
        def connection_lost(self, exc):
            lost.set_result(exc)

    async def main():
        srv = await loop.create_server(P, "127.0.0.1", 0)
        port = srv.sockets[0].getsockname()[1]
        c = socket.create_connection(("127.0.0.1", port))
        c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        await asyncio.sleep(0.05)
        c.close()                   # SO_LINGER 0: a reset
        exc = await lost
        srv.close()
        await srv.wait_closed()
        return exc

    exc = run(loop, main())
    assert exc is None or isinstance(exc, ConnectionResetError), exc


def test_write_after_close_is_dropped_quietly(loop, caplog):
    async def main():
        srv = await loop.create_server(Echo, "127.0.0.1", 0)
        port = srv.sockets[0].getsockname()[1]
        tr, _ = await loop.create_connection(asyncio.Protocol, "127.0.0.1", port)
        tr.close()
        for _ in range(3):
            tr.write(b"late")       # asyncio: ignored (a warning after many)
        assert tr.is_closing()
        srv.close()
        await srv.wait_closed()

    run(loop, main())
    assert not [r for r in caplog.records if r.levelname == "ERROR"]


def test_write_type_errors(loop):
    async def main():
        srv = await loop.create_server(Echo, "127.0.0.1", 0)
        port = srv.sockets[0].getsockname()[1]
        tr, _ = await loop.create_connection(asyncio.Protocol, "127.0.0.1", port)
        with pytest.raises(TypeError):
            tr.write("text")
        tr.write_eof()
        with pytest.raises(RuntimeError):
            tr.write(b"after eof")
        tr.close()
        srv.close()
        await srv.wait_closed()

    run(loop, main())


def test_tls_garbage_is_a_handshake_error(loop, pki):
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(str(pki["dir"] / "server.pem"))
    errors = []
    loop.set_exception_handler(lambda lp, c: errors.append(c))

    async def main():
        srv = await loop.create_server(Echo, "127.0.0.1", 0, ssl=ctx, ssl_handshake_timeout=5)
        port = srv.sockets[0].getsockname()[1]
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(b"\x16\x03\x01\x00\x05garbage that is no TLS record at all" * 4)
        data = await asyncio.wait_for(r.read(), 10)     # the server hangs up
        w.close()
        srv.close()
        await srv.wait_closed()
        return data

    run(loop, main())
    # asyncio logs a failed server-side handshake through the exception handler
    # (SSLError); nothing else may be reported
    for c in errors:
        assert isinstance(c.get("exception"), (ssl.SSLError, ConnectionError, OSError)), c


def test_nothing_left_behind(backend):
    """Connections, servers, timers and polls of a loop: after close(), no I/O
    context is alive and no descriptor is open."""
    before = set(os.listdir("/proc/self/fd")) if LINUX else None
    live = iocpx.live_io()
    lp = iocpx.new_event_loop(backend=backend)

    async def main():
        srv = await lp.create_server(Echo, "127.0.0.1", 0)
        port = srv.sockets[0].getsockname()[1]
        pairs = [await asyncio.open_connection("127.0.0.1", port) for _ in range(20)]
        for r, w in pairs:
            w.write(b"x")
            assert await r.readexactly(1) == b"x"
        lp.call_later(3600, print)                      # a far timer, pending at close
        a, b = socket.socketpair()
        lp.add_reader(a.fileno(), print)                # a poll, pending at close
        for _r, w in pairs[:10]:
            w.close()
        lp.remove_reader(a.fileno())
        a.close()
        b.close()
        srv.close()

    lp.run_until_complete(main())
    lp.close()
    gc.collect()
    assert iocpx.live_io() == live
    if LINUX:
        assert set(os.listdir("/proc/self/fd")) <= before


# ---- readiness -----------------------------------------------------------------------

def test_add_reader_refuses_what_cannot_be_polled(loop, tmp_path):
    f = open(tmp_path / "plain", "wb")
    try:
        # epoll's answer everywhere on Linux; on Windows only sockets can be polled
        with pytest.raises(PermissionError if LINUX else OSError):
            loop.add_reader(f.fileno(), print)
    finally:
        f.close()
    a, b = socket.socketpair()
    fd = a.fileno()
    a.close()
    b.close()
    with pytest.raises((OSError, ValueError)):
        loop.add_reader(fd, print)


def test_add_reader_is_level_triggered_and_replaced(loop):
    a, b = socket.socketpair()
    calls = []

    def first():
        calls.append("first")

    def second():
        calls.append("second")
        if calls.count("second") == 3:
            loop.remove_reader(a.fileno())
            loop.stop()

    b.send(b"x")                     # stays unread: readable every iteration
    loop.add_reader(a.fileno(), first)
    loop.add_reader(a.fileno(), second)
    loop.run_forever()
    assert calls == ["second"] * 3
    assert loop.remove_reader(a.fileno()) is False
    a.close()
    b.close()



def test_add_reader_sees_each_readiness_once(loop):
    """A reader that drains its socket is not called again for the same data: it runs in
    the iteration whose wait saw the readiness, as on asyncio's selector loop, so no call
    finds nothing to read (one byte at a time and bursts, while other callbacks run)."""
    a, b = socket.socketpair()
    a.setblocking(False)
    seen = {"calls": 0, "empty": 0, "bytes": 0}
    total = 300
    sizes = [1 if i % 3 else 700 for i in range(total)]

    def reader():
        seen["calls"] += 1
        n = 0
        try:
            while True:
                n += len(a.recv(65536))
        except BlockingIOError:
            pass
        seen["bytes"] += n
        if n == 0:
            seen["empty"] += 1

    def busy(k):                        # other callbacks keep the loop iterating
        if k:
            loop.call_soon(busy, k - 1)

    def feed(i):
        if i == total:
            loop.call_later(0.05, loop.stop)
            return
        b.send(b"y" * sizes[i])
        loop.call_soon(busy, 5)
        loop.call_later(0.001, feed, i + 1)

    try:
        loop.add_reader(a.fileno(), reader)
        loop.call_soon(feed, 0)
        loop.run_forever()
        loop.remove_reader(a.fileno())
    finally:
        a.close()
        b.close()
    assert seen["bytes"] == sum(sizes)
    assert seen["empty"] == 0, seen


def test_keyboard_interrupt_in_reader_leaves_run_forever(loop):
    a, b = socket.socketpair()
    ran = []

    def reader():
        a.recv(1)
        ran.append(1)
        raise KeyboardInterrupt

    try:
        loop.add_reader(a.fileno(), reader)
        b.send(b"x")
        with pytest.raises(KeyboardInterrupt):
            loop.run_forever()
        assert ran == [1]
        loop.remove_reader(a.fileno())
        assert loop.run_until_complete(asyncio.sleep(0, result=3)) == 3
    finally:
        a.close()
        b.close()



@pytest.mark.skipif(not LINUX, reason="F_SETPIPE_SZ: a pipe larger than 64 KiB (Linux)")
def test_read_pipe_reads_at_most_64_kib_at_a_time(loop):
    """The loop's read-pipe transport reads 64 KiB at most per os.read() (asyncio's takes
    256 KiB: a buffer above glibc's mmap threshold, fresh pages per read); a pipe holding
    1 MiB still arrives whole and in order."""
    import fcntl
    r, w = os.pipe()
    fcntl.fcntl(w, getattr(fcntl, "F_SETPIPE_SZ", 1031), 1 << 20)   # Python 3.10+ names it
    blob = os.urandom(1 << 20)
    assert os.write(w, blob) == len(blob)
    os.close(w)
    chunks = []

    class Reader(asyncio.Protocol):
        def __init__(self):
            self.done = loop.create_future()

        def data_received(self, data):
            chunks.append(data)

        def connection_lost(self, exc):
            self.done.set_result(exc)

    async def main():
        _, proto = await loop.connect_read_pipe(Reader, os.fdopen(r, "rb", buffering=0))
        return await asyncio.wait_for(proto.done, 10)

    assert run(loop, main()) is None
    assert b"".join(chunks) == blob
    assert max(map(len, chunks)) <= 65536
    assert len(chunks) >= 16


# ---- flow control, BufferedProtocol ----------------------------------------------------

def test_pause_and_resume_writing(loop):
    """A peer that does not read: pause_writing at the high-water mark, resume
    once it reads again; every byte arrives. Written until the transport pauses: how much
    the kernel takes first depends on the machine (a send buffer autotuned up to
    tcp_wmem's maximum, 4 MiB and more)."""
    events = []

    class Writer(asyncio.Protocol):
        def connection_made(self, tr):
            self.tr = tr
            tr.set_write_buffer_limits(high=64 * 1024)

        def pause_writing(self):
            events.append("pause")

        def resume_writing(self):
            events.append("resume")

    async def main():
        srv_sock = socket.socket()
        srv_sock.bind(("127.0.0.1", 0))
        srv_sock.listen()
        srv_sock.setblocking(False)
        port = srv_sock.getsockname()[1]
        tr, pr = await loop.create_connection(Writer, "127.0.0.1", port)
        peer, _ = await loop.sock_accept(srv_sock)
        chunk = b"z" * 65536
        total = 0
        while "pause" not in events and total < 256 << 20:
            tr.write(chunk)
            total += len(chunk)
        assert "pause" in events, f"{total} bytes written and no pause_writing"
        for _ in range(4):          # more while paused: buffered, not lost
            tr.write(chunk)
            total += len(chunk)
        got = 0
        while got < total:
            data = await loop.sock_recv(peer, 1 << 20)
            assert data
            got += len(data)
        await asyncio.sleep(0.05)
        assert events[-1] == "resume"
        assert tr.get_write_buffer_size() == 0
        tr.close()
        peer.close()
        srv_sock.close()
        return got, total

    got, total = run(loop, main())
    assert got == total


def test_buffered_protocol_small_buffers_and_pause(loop):
    """get_buffer() returns 7 bytes at a time and reading is paused in the
    middle of a chunk: every byte arrives once, in order."""
    payload = bytes(range(256)) * 1024
    got = bytearray()
    done = loop.create_future()

    class P(asyncio.BufferedProtocol):
        def connection_made(self, tr):
            self.tr = tr
            self.buf = bytearray(7)

        def get_buffer(self, sizehint):
            return self.buf

        def buffer_updated(self, n):
            got.extend(self.buf[:n])
            if len(got) % 7000 == 0:
                self.tr.pause_reading()
                loop.call_later(0.001, self.tr.resume_reading)

        def eof_received(self):
            done.set_result(bytes(got))

    async def main():
        srv = await loop.create_server(P, "127.0.0.1", 0)
        port = srv.sockets[0].getsockname()[1]
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(payload)
        w.write_eof()
        data = await done
        w.close()
        srv.close()
        await srv.wait_closed()
        return data

    assert run(loop, main()) == payload


def test_half_close_keeps_writing(loop):
    """eof_received() returning True keeps the transport open for writing."""
    class Half(asyncio.Protocol):
        def connection_made(self, tr):
            self.tr = tr
            self.buf = b""

        def data_received(self, data):
            self.buf += data

        def eof_received(self):
            self.tr.write(self.buf[::-1])
            self.tr.close()
            return True

    async def main():
        srv = await loop.create_server(Half, "127.0.0.1", 0)
        port = srv.sockets[0].getsockname()[1]
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(b"abcdef")
        w.write_eof()
        data = await r.read()
        w.close()
        srv.close()
        await srv.wait_closed()
        return data

    assert run(loop, main()) == b"fedcba"


# ---- timers and threads ------------------------------------------------------------------

def test_cancelled_timers_do_not_pile_up(loop):
    """A program that arms and cancels long timeouts (wait_for on every request)
    keeps none of them: the engine heap is compacted, as asyncio's is."""
    async def main():
        for _ in range(5000):
            h = loop.call_later(3600, print)
            h.cancel()
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        return loop.engine_stats["timers"]

    assert run(loop, main()) < 200


def test_timer_order_and_cancel(loop):
    order = []

    async def main():
        now = loop.time()
        for i in range(50):
            loop.call_at(now + 0.01, order.append, i)       # equal deadlines: FIFO
        h = loop.call_at(now + 0.005, order.append, "cancelled")
        h.cancel()
        assert h.cancelled()
        loop.call_at(now + 0.001, order.append, "first")
        await asyncio.sleep(0.05)

    run(loop, main())
    assert order == ["first"] + list(range(50))


def test_call_soon_threadsafe_from_many_threads(loop):
    n_threads, per_thread = 8, 2000
    seen = []
    done = loop.create_future()

    def add(i):
        seen.append(i)
        if len(seen) == n_threads * per_thread:
            done.set_result(None)

    def worker(k):
        for i in range(per_thread):
            loop.call_soon_threadsafe(add, k * per_thread + i)

    async def main():
        threads = [threading.Thread(target=worker, args=(k,)) for k in range(n_threads)]
        for t in threads:
            t.start()
        await done
        for t in threads:
            t.join()

    run(loop, main())
    assert sorted(seen) == list(range(n_threads * per_thread))


def test_keyboard_interrupt_in_protocol_leaves_run_until_complete(loop):
    class Boom(asyncio.Protocol):
        def data_received(self, data):
            raise KeyboardInterrupt

    held = []

    async def main():
        srv = await loop.create_server(Boom, "127.0.0.1", 0)
        port = srv.sockets[0].getsockname()[1]
        r, w = await asyncio.open_connection("127.0.0.1", port)
        held.extend((srv, w))
        w.write(b"x")
        await asyncio.sleep(5)

    task = loop.create_task(main())
    with pytest.raises(KeyboardInterrupt):
        loop.run_until_complete(task)
    # the loop still works afterwards
    assert loop.run_until_complete(asyncio.sleep(0, result=7)) == 7
    task.cancel()
    srv, w = held
    w.close()
    srv.close()
    loop.run_until_complete(srv.wait_closed())
    with pytest.raises(asyncio.CancelledError):
        loop.run_until_complete(task)


# ---- TLS churn: memory stays flat --------------------------------------------------------

def _rss_kib():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


@pytest.mark.skipif(not LINUX, reason="reads /proc/self/statm")
def test_tls_churn_keeps_rss_flat(loop, pki):
    """Thousands of TLS handshakes and closes (client and server on this loop):
    RSS after the last thousand is within a few MiB of RSS after the first
    (uvloop#565 is a TLS leak of this kind)."""
    sctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    sctx.load_cert_chain(str(pki["dir"] / "server.pem"))
    cctx = ssl.create_default_context(cafile=str(pki["dir"] / "ca.pem"))

    async def churn(port, n):
        for _ in range(n):
            r, w = await asyncio.open_connection("127.0.0.1", port, ssl=cctx,
                                                 server_hostname="localhost")
            w.write(b"ping")
            assert await r.readexactly(4) == b"ping"
            w.close()
            await w.wait_closed()

    async def main():
        srv = await loop.create_server(Echo, "127.0.0.1", 0, ssl=sctx)
        port = srv.sockets[0].getsockname()[1]
        await churn(port, 500)
        gc.collect()
        first = _rss_kib()
        await churn(port, 1500)
        gc.collect()
        last = _rss_kib()
        srv.close()
        await srv.wait_closed()
        return first, last

    first, last = run(loop, main(), timeout=300)
    assert last - first < 6 * 1024, f"RSS grew {last - first} KiB over 1,500 TLS connections"


# ---- processes and signals (Linux) ---------------------------------------------------

def _zombies_of(pid):
    """The children of pid that are zombies (/proc)."""
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] == "Z" and int(fields[1]) == pid:
            out.append(int(d))
    return out


@pytest.mark.skipif(not LINUX, reason="counts zombies and descriptors in /proc (and 10,000 "
                    "processes under Wine would take most of an hour)")
def test_ten_thousand_processes_spawned_and_reaped(backend):
    """10,000 children through create_subprocess_exec (50 at a time, stdout a pipe):
    every exit status is seen, no zombie is left, no pipe descriptor leaks and no
    I/O context stays alive."""
    n, width = int(os.environ.get("IOCPX_SPAWN_N", "10000")), 50
    before = set(os.listdir("/proc/self/fd"))
    live = iocpx.live_io()
    lp = iocpx.new_event_loop(backend=backend)

    async def one(i):
        p = await asyncio.create_subprocess_exec(
            "/bin/sh", "-c", f"echo {i}; exit {i % 7}", stdout=asyncio.subprocess.PIPE)
        out, _ = await p.communicate()
        assert out == f"{i}\n".encode()
        assert p.returncode == i % 7

    async def main():
        sem = asyncio.Semaphore(width)

        async def bounded(i):
            async with sem:
                await one(i)
        await asyncio.gather(*(bounded(i) for i in range(n)))

    try:
        lp.run_until_complete(asyncio.wait_for(main(), 600))
    finally:
        lp.close()
    gc.collect()
    assert _zombies_of(os.getpid()) == []
    assert set(os.listdir("/proc/self/fd")) <= before
    assert iocpx.live_io() == live


def test_child_dying_mid_write_is_a_broken_pipe(loop):
    """The child exits without reading: the parent's writes to its stdin end in
    BrokenPipeError (or ConnectionResetError) from drain(), the asyncio way, and
    the exit status is still reported."""
    async def main():
        p = await asyncio.create_subprocess_exec(
            sys.executable, "-c", "import sys; sys.stdin.close(); sys.exit(3)",
            stdin=asyncio.subprocess.PIPE)
        chunk = b"x" * 65536
        with pytest.raises((BrokenPipeError, ConnectionResetError)):
            for _ in range(10000):                      # far more than a pipe holds
                p.stdin.write(chunk)
                await p.stdin.drain()
        assert await p.wait() == 3

    run(loop, main(), timeout=60)


@pytest.mark.skipif(not LINUX, reason="add_signal_handler exists on POSIX only")
@pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")
def test_signal_storm(loop):
    """Signals sent one at a time, each after the last was handled, are each
    handled exactly once, on the loop's thread; then a storm from another
    thread: the handler runs at least once and at most once per signal (POSIX
    coalesces pending ones), and the loop stays responsive."""
    import signal
    seen = []
    loop_thread = threading.get_ident()

    def handler(tag):
        assert threading.get_ident() == loop_thread
        seen.append(tag)

    async def main():
        loop.add_signal_handler(signal.SIGUSR1, handler, "usr1")
        try:
            for i in range(200):                        # one at a time
                os.kill(os.getpid(), signal.SIGUSR1)
                for _ in range(1000):
                    if len(seen) == i + 1:
                        break
                    await asyncio.sleep(0.001)
                assert len(seen) == i + 1
            storm = 20000
            done = threading.Event()

            def sender():
                for _ in range(storm):
                    os.kill(os.getpid(), signal.SIGUSR1)
                done.set()
            t = threading.Thread(target=sender)
            t.start()
            while not done.is_set():                    # the loop keeps running callbacks
                await asyncio.sleep(0.001)
            t.join()
            await asyncio.sleep(0.05)
            assert 200 < len(seen) <= 200 + storm
            n = len(seen)
            os.kill(os.getpid(), signal.SIGUSR1)        # and still works afterwards
            for _ in range(1000):
                if len(seen) > n:
                    break
                await asyncio.sleep(0.001)
            assert len(seen) == n + 1
        finally:
            assert loop.remove_signal_handler(signal.SIGUSR1)

    run(loop, main(), timeout=120)


def test_subprocess_pipes_round_trip(loop):
    """A Python child copies stdin to stdout (1 MiB) and writes to stderr; the
    exit status comes back; kill() ends a child that would wait for ever. On
    every backend (on Windows: overlapped pipes and a wait on the port)."""
    code = ("import sys\n"
            "data = sys.stdin.buffer.read()\n"
            "sys.stdout.buffer.write(data)\n"
            "sys.stderr.write('done %d' % len(data))\n"
            "sys.exit(5)\n")
    payload = os.urandom(1 << 20)

    async def main():
        p = await asyncio.create_subprocess_exec(
            sys.executable, "-c", code, stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await p.communicate(payload)
        assert out == payload
        assert err.decode() == f"done {len(payload)}"
        assert p.returncode == 5
        sleeper = await asyncio.create_subprocess_exec(
            sys.executable, "-c", "import time; time.sleep(600)")
        sleeper.kill()
        assert await sleeper.wait() != 0

    run(loop, main(), timeout=120)


@pytest.mark.skipif(sys.platform != "win32", reason="the Windows console's Ctrl-C path")
def test_ctrl_c_ends_iocpx_run_on_windows(backend, monkeypatch):
    """SIGINT while the loop waits in the port (GIL released): CPython's handler
    writes to the loop's wake-up socket, the wait ends, and iocpx.run() raises
    KeyboardInterrupt, as asyncio.run() does on ProactorEventLoop. (The signal
    is raised from a thread: GenerateConsoleCtrlEvent does not work under Wine.)"""
    import signal
    monkeypatch.setenv("IOCPX_BACKEND", backend)

    async def main():
        await asyncio.sleep(60)

    t = threading.Timer(0.5, signal.raise_signal, (signal.SIGINT,))
    t.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            iocpx.run(main())
    finally:
        t.cancel()
