"""Windows-only tests of the iocp backend: what the IOCP model adds beyond the
shared suite (AcceptEx first data, GetAcceptExSockAddrs, TransmitFile, exit
packets, accept errors, silent clients, both completion modes).
Run on Linux through Wine with `bash .ci/windows.sh`; skipped elsewhere."""
import os
import socket
import struct
import subprocess
import sys
import textwrap
import threading
import time

import pytest

import iocpx

from conftest import (Recorder, check_closed_engine, client, echo, held, recv_exact,
                      recv_until_eof, wait_dropped, wait_for)

pytestmark = pytest.mark.skipif(
    sys.platform != "win32" or "iocp" not in iocpx.available_backends(),
    reason="the iocp backend exists on Windows only")


@pytest.fixture
def eng():
    live0 = iocpx.live_io()
    e = iocpx.Engine(workers=4, backend="iocp")
    yield e
    e.close(timeout=30)
    check_closed_engine(e, live0)


def test_accept_ex_delivers_first_data_with_the_connection(eng):
    rec = Recorder()
    lst = eng.listen(("127.0.0.1", 0), first_data=True, accepts=4,
                     on_accept=lambda c, d: (rec.add("accept", d), c.send(d.upper())),
                     on_recv=lambda c, d: rec.add("recv", d), on_close=rec.on_close)
    s = client(lst.address)
    s.sendall(b"first bytes")
    assert recv_exact(s, 11) == b"FIRST BYTES"
    s.sendall(b"more")
    rec.wait(lambda r: any(e[0] == "recv" for e in r.events))
    assert rec.events[0] == ("accept", b"first bytes")
    assert ("recv", b"more") in rec.events
    s.close()
    rec.wait(lambda r: len(r.closed) == 1)


def test_first_data_larger_than_one_buffer_arrives_whole(eng):
    got = bytearray()
    done = threading.Event()

    def add(c, d):
        got.extend(d)
        if len(got) >= 20000:
            done.set()
    lst = eng.listen(("127.0.0.1", 0), first_data=True, buffer_size=4096,
                     on_accept=add, on_recv=add)
    payload = os.urandom(20000)
    s = client(lst.address)
    s.sendall(payload)
    assert done.wait(10)
    assert bytes(got) == payload
    s.close()


@pytest.mark.parametrize("family,host", [(socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")])
def test_get_accept_ex_sock_addrs_fills_peer_and_local(eng, family, host):
    seen = {}
    ready = threading.Event()

    def on_accept(c, d):
        seen["peer"], seen["local"], seen["data"] = c.peer, c.local, d
        ready.set()
    try:
        lst = eng.listen((host, 0), first_data=True, on_accept=on_accept)
    except OSError as e:
        pytest.skip(f"no {host} here: {e}")
    s = socket.socket(family, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(lst.address)
    s.sendall(b"x")
    assert ready.wait(10)
    assert seen["peer"] == s.getsockname()[:2]
    assert seen["local"] == lst.address
    assert seen["data"] == b"x"
    s.close()


def test_transmit_file_offsets_and_order_with_send(eng, tmp_path):
    blob = os.urandom(300_000)
    path = tmp_path / "blob.bin"
    path.write_bytes(blob)

    files = []

    def on_accept(c, d):
        c.send(b"<")
        c.sendfile(str(path), offset=1000, count=100_000)
        f = open(path, "rb")                        # open until sent: closed below
        files.append(f)
        c.sendfile(f, offset=250_000)               # to the end, from a file object
        c.send(b">")
        c.close()
    lst = eng.listen(("127.0.0.1", 0), on_accept=on_accept)
    s = client(lst.address)
    data = recv_until_eof(s)
    for f in files:
        f.close()
    assert data == b"<" + blob[1000:101_000] + blob[250_000:] + b">"
    s.close()


def test_exit_packets_wake_every_worker_and_close_reaps_everything():
    e = iocpx.Engine(workers=8, backend="iocp")
    lst = e.listen(("127.0.0.1", 0), on_recv=echo, accepts=32)
    conns = [client(lst.address) for _ in range(20)]
    for s in conns:
        s.sendall(b"ping")
    for s in conns:
        assert recv_exact(s, 4) == b"ping"
    t0 = time.monotonic()
    e.close(timeout=30)
    assert time.monotonic() - t0 < 10
    check_closed_engine(e, live_before=0)
    assert e.stats()["closed"] == e.stats()["accepted"] == 20
    assert not [t for t in threading.enumerate() if t.name.startswith("iocpx-worker")]
    for s in conns:
        assert recv_until_eof(s, timeout=10) == b""
        s.close()


def test_completion_port_packets_keep_key_count_and_object():
    with iocpx.CompletionPort(backend="iocp") as port:
        obj = object()
        port.post("k", 123456, obj)
        assert port.get(5) == ("k", 123456, obj)
        assert port.get(0.05) is None


def test_accept_errors_do_not_stop_accepting(eng):
    """Clients that connect and reset at once (the accept may fail with
    ERROR_NETNAME_DELETED, as CPython's proactor knows) leave the server
    accepting on every pre-posted slot."""
    rec = Recorder()
    lst = eng.listen(("127.0.0.1", 0), first_data=True, accepts=2, on_recv=echo,
                     on_accept=lambda c, d: c.send(d), on_close=rec.on_close)
    for _ in range(30):
        s = socket.create_connection(lst.address, timeout=10)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("HH", 1, 0))
        s.close()                                   # RST
    for i in range(10):
        s = client(lst.address)
        msg = b"alive %d" % i
        s.sendall(msg)
        assert recv_exact(s, len(msg)) == msg
        s.close()
    wait_for(lambda: eng.stats()["connections"] == 0, what="all connections closed")


def test_silent_client_does_not_hold_an_accept_slot():
    """first_data=True with a single pre-posted AcceptEx: a client that
    connects and never sends takes the slot. The engine counts silent slots
    every second (SO_CONNECT_TIME) and then posts slots without a receive
    buffer, so the next client is served; the silent one is dropped after
    first_data_timeout, counted in first_data_timeouts (and stale_drops)."""
    from iocpx import _iocp
    drops0 = sum(b.stale_drops for b in _iocp.live_backends())
    live0 = iocpx.live_io()
    e = iocpx.Engine(workers=2, backend="iocp")
    try:
        lst = e.listen(("127.0.0.1", 0), first_data=True, first_data_timeout=1, accepts=1,
                       on_accept=lambda c, d: c.send(d), on_recv=echo)
        silent = socket.create_connection(lst.address, timeout=15)
        t_silent = time.monotonic()
        wait_for(lambda: held(e) == 1, what="the silent client to sit in the slot")
        talker = client(lst.address, timeout=15)
        talker.sendall(b"hello")
        t0 = time.monotonic()
        assert recv_exact(talker, 5, timeout=15) == b"hello"
        assert time.monotonic() - t0 < 5, "the talker waited behind the silent client"
        assert wait_dropped(silent, timeout=15)
        assert time.monotonic() - t_silent >= 1.0
        wait_for(lambda: e.stats()["first_data_timeouts"] == 1, what="the drop to be counted")
        assert sum(b.stale_drops for b in _iocp.live_backends()) - drops0 == 1
        assert e.stats()["accepted"] == 1        # the silent client never was
        talker.close()
        silent.close()
    finally:
        e.close(timeout=30)
    check_closed_engine(e, live0)


def test_first_data_timeout_none_keeps_a_silent_slot_client():
    """With first_data_timeout=None a silent AcceptEx client is never
    dropped; the slot it holds does not stop others being served."""
    e = iocpx.Engine(workers=2, backend="iocp")
    try:
        lst = e.listen(("127.0.0.1", 0), first_data=True, first_data_timeout=None, accepts=1,
                       on_accept=lambda c, d: c.send(d), on_recv=echo)
        silent = socket.create_connection(lst.address, timeout=15)
        wait_for(lambda: held(e) == 1, what="the silent client to sit in the slot")
        talker = client(lst.address, timeout=15)
        talker.sendall(b"hi")
        assert recv_exact(talker, 2, timeout=15) == b"hi"
        # past two SO_CONNECT_TIME checks: still there
        wait_for(lambda: max(t for b in _iocp_backends() for t in b.pending_connect_times()) >= 2,
                 timeout=15, what="the silent client to be connected 2 s")
        silent.setblocking(False)
        with pytest.raises(BlockingIOError):
            silent.recv(1)                       # neither closed nor reset
        silent.setblocking(True)
        silent.sendall(b"late")
        assert recv_exact(silent, 4, timeout=15) == b"late"
        assert e.stats()["first_data_timeouts"] == 0
        talker.close()
        silent.close()
    finally:
        e.close(timeout=30)


def _iocp_backends():
    from iocpx import _iocp
    return _iocp.live_backends()


def test_the_old_first_data_switches_are_gone():
    """first_data_timeout is a listen() option now: no backend attribute and
    no IOCPX_FIRST_DATA_TIMEOUT environment variable."""
    from iocpx import _iocp
    b = _iocp.IocpBackend()
    assert not hasattr(b, "first_data_timeout")
    assert hasattr(b, "stale_drops")
    del b
    import iocpx._core as core
    for mod in (core, _iocp):                # nobody reads the variable any more
        with open(mod.__file__, "rb") as f:
            assert b"IOCPX_FIRST_DATA_TIMEOUT" not in f.read(), mod.__file__


def test_error_mapping_gives_errno_subclasses(eng):
    """Windows codes become the OSError subclass Python users expect."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))        # bound, not listening: refused, and the port
    port = s.getsockname()[1]       # cannot be handed out as an ephemeral one meanwhile
    rec = Recorder()
    eng.connect(("127.0.0.1", port), on_close=rec.on_close)
    rec.wait(lambda r: len(r.closed) == 1, timeout=30)
    s.close()
    exc = list(rec.closed.values())[0]
    assert isinstance(exc, ConnectionRefusedError), repr(exc)


def test_echo_without_skip_on_success_mode(tmp_path):
    """The same echo with FILE_SKIP_COMPLETION_PORT_ON_SUCCESS off: every
    immediate success then also queues a packet (the other path)."""
    script = tmp_path / "echo_noskip.py"
    script.write_text(textwrap.dedent("""
        import socket, iocpx
        from iocpx import _iocp
        with iocpx.Engine(workers=2, backend="iocp") as e:
            assert not _iocp.IocpBackend().skip_on_success
            lst = e.listen(("127.0.0.1", 0), on_recv=lambda c, d: c.send(d))
            for i in range(20):
                s = socket.create_connection(lst.address, timeout=10)
                for j in range(5):
                    m = b"m%d-%d" % (i, j)
                    s.sendall(m)
                    got = b""
                    while len(got) < len(m):
                        got += s.recv(100)
                    assert got == m
                s.close()
        assert iocpx.live_io() == 0
        print("NOSKIP-OK")
    """))
    env = dict(os.environ, IOCPX_IOCP_SKIP_ON_SUCCESS="0")
    r = subprocess.run([sys.executable, str(script)], env=env, capture_output=True,
                       text=True, timeout=120)
    assert "NOSKIP-OK" in r.stdout, r.stdout + r.stderr
