"""CompletionPort: the raw create/post/get trio, across threads."""
import threading
import time

import pytest

import iocpx
from conftest import wait_for


@pytest.fixture
def port(backend):
    p = iocpx.CompletionPort(backend=backend)
    yield p
    p.close()
    assert p.closed


def test_post_get_roundtrip(port):
    obj = object()
    port.post(7, 123, obj)
    key, n, got = port.get(timeout=5)
    assert (key, n) == (7, 123) and got is obj
    assert port.get(timeout=0.05) is None


def test_get_timeout_waits_about_that_long(port):
    t0 = time.monotonic()
    assert port.get(timeout=0.2) is None
    assert 0.15 <= time.monotonic() - t0 < 2


def test_many_producers_many_consumers(port):
    producers, consumers, per = 4, 4, 2500
    got = []
    lock = threading.Lock()

    def consume():
        mine = []
        while True:
            item = port.get(timeout=10)
            assert item is not None, "a packet went missing"
            if item[0] == "stop":
                break
            mine.append(item)
        with lock:
            got.extend(mine)

    def produce(k):
        for i in range(per):
            port.post(("p", k), i, (k, i))

    cs = [threading.Thread(target=consume) for _ in range(consumers)]
    ps = [threading.Thread(target=produce, args=(k,)) for k in range(producers)]
    for t in cs + ps:
        t.start()
    for t in ps:
        t.join()
    for _ in cs:
        port.post("stop")
    for t in cs:
        t.join(30)
    assert sorted(obj for _, _, obj in got) == sorted((k, i) for k in range(producers) for i in range(per))
    for key, n, (k, i) in got:
        assert key == ("p", k) and n == i


def test_get_releases_the_gil(port):
    """Another Python thread runs while get() waits."""
    counter = [0]
    done = threading.Event()

    def spin():
        while not done.is_set():
            counter[0] += 1

    t = threading.Thread(target=spin)
    t.start()
    assert port.get(timeout=0.3) is None
    done.set()
    t.join()
    assert counter[0] > 1000


def test_close_wakes_waiter_and_rejects_use(backend):
    p = iocpx.CompletionPort(backend=backend)
    got, errs = [], []
    started = threading.Event()

    def waiter():
        started.set()
        while True:
            try:
                got.append(p.get())     # no timeout: only close() can end this loop
            except iocpx.ConnectionClosedError as e:
                errs.append(e)
                return

    t = threading.Thread(target=waiter)
    t.start()
    assert started.wait(5)
    p.post(1, 0, "read")
    wait_for(lambda: got, what="the waiter to take a packet")
    # No event says "the waiter sits in the kernel again"; give it a moment to
    # get there, so close() has a sleeping waiter to wake (it passes either way).
    time.sleep(0.1)
    p.close()
    t.join(5)
    assert not t.is_alive(), "close() did not wake the waiting get()"
    assert got == [(1, 0, "read")]
    assert len(errs) == 1
    with pytest.raises(iocpx.ConnectionClosedError):
        p.post(1)
    with pytest.raises(iocpx.ConnectionClosedError):
        p.get(timeout=0)
    p.close()       # idempotent


def test_unread_packets_are_dropped_at_close(backend):
    p = iocpx.CompletionPort(backend=backend)
    live0 = iocpx.live_io()
    for i in range(10):
        p.post(i, i, object())
    assert iocpx.live_io() == live0 + 10
    p.close()
    assert iocpx.live_io() == live0


def test_post_argument_errors(port):
    with pytest.raises(TypeError):
        port.post(1, "3")
    with pytest.raises(ValueError):
        port.post(1, -1)
    with pytest.raises(ValueError):
        port.get(timeout=-1)
