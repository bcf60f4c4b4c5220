"""Timers: Engine.call_later / call_at / call_soon (time.monotonic clock).

They run on the engine's workers with the GIL held, in deadline order (equal
deadlines first in, first out), never before their time; cancel() returns
True only if the timer was still pending, and a cancelled timer never runs;
an exception in one is logged and the others run; pending timers are dropped
at Engine.close()."""
import gc
import logging
import math
import os
import random
import subprocess
import sys
import textwrap
import threading
import time
import weakref

import pytest

import iocpx
from conftest import check_closed_engine, client, echo, recv_exact, wait_for

SLOW = 20           # generous bound for "every timer ran"


class Fired:
    """Records (key, time.monotonic(), thread name) per call; done once n ran."""

    def __init__(self, n):
        self.n = n
        self.calls = []
        self.done = threading.Event()
        self.lock = threading.Lock()

    def __call__(self, key):
        now = time.monotonic()
        with self.lock:
            self.calls.append((key, now, threading.current_thread().name))
            if len(self.calls) >= self.n:
                self.done.set()

    def wait(self, timeout=SLOW):
        assert self.done.wait(timeout), f"only {len(self.calls)} of {self.n} timers ran"
        return self.calls


# In a child process, so that its first timer (where the engine measures how
# its clock relates to time.monotonic()) comes right after time.monotonic()
# ticks: the phase that makes a coarse time.monotonic() (GetTickCount64,
# CPython < 3.13 on Windows) find timers early.
ORDER_AFTER_A_TICK = textwrap.dedent("""
    import random, sys, time
    import iocpx
    eng = iocpx.Engine(workers=1, backend=sys.argv[1])
    t = time.monotonic()
    while time.monotonic() == t:
        pass
    eng.call_soon(len, "")                  # the first timer of the process
    rnd = random.Random(7)
    base = time.monotonic() + 0.1
    whens, order = [], []
    for i in range(3000):
        whens.append(rnd.choice(whens) if i and rnd.random() < 0.5 else base + rnd.random() * 0.1)
        eng.call_at(whens[-1], order.append, i)
    deadline = time.monotonic() + 20
    while len(order) < 3000 and time.monotonic() < deadline:
        time.sleep(0.01)
    eng.close()
    expected = sorted(range(3000), key=lambda i: (whens[i], i))
    print("RESULT", len(order), sum(1 for a, b in zip(order, expected) if a != b), flush=True)
""")


def test_deadline_order_with_the_clock_offset_taken_right_after_a_tick(backend):
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "PYTHONMALLOC")}
    r = subprocess.run([sys.executable, "-c", ORDER_AFTER_A_TICK, backend],
                       capture_output=True, text=True, timeout=120, env=env)
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("RESULT ")]
    assert lines, f"exit {r.returncode}: {r.stdout[-2000:]}{r.stderr[-2000:]}"
    ran, misplaced = map(int, lines[-1].split()[1:])
    assert ran == 3000
    assert misplaced == 0, f"{misplaced} of 3000 timers fired out of deadline order"


def test_10000_random_deadlines_fire_in_deadline_order(engine):
    """Half the deadlines random, half repeating earlier ones exactly: the
    fired order is sorted by (when, order of scheduling)."""
    n = 10_000
    rnd = random.Random(1234)
    base = time.monotonic() + 0.1
    whens = []
    for i in range(n):
        if i and rnd.random() < 0.5:
            whens.append(rnd.choice(whens))             # an exact tie with an earlier timer
        else:
            whens.append(base + rnd.random() * 0.5)
    order = []
    for i, w in enumerate(whens):
        engine.call_at(w, order.append, i)      # C-level: records exactly when it is called
    wait_for(lambda: len(order) == n, timeout=SLOW, what=f"{n} timers")
    assert sorted(order) == list(range(n))
    expected = sorted(range(n), key=lambda i: (whens[i], i))
    bad = sum(1 for a, b in zip(order, expected) if a != b)
    assert order == expected, f"{bad} of {n} timers fired out of deadline order"


def test_equal_deadlines_fire_first_in_first_out(engine):
    """Scheduled over ~50 ms (several ticks of every clock involved, also
    Windows' 15.6 ms GetTickCount64 behind time.monotonic() before 3.13),
    all due at one instant: they run in the order they were scheduled."""
    n = 2000
    when = time.monotonic() + 0.2
    order = []
    for i in range(n):
        engine.call_at(when, order.append, i)
        if i % 200 == 199:
            time.sleep(0.005)
    wait_for(lambda: len(order) == n, timeout=SLOW, what=f"{n} timers")
    bad = sum(1 for a, b in zip(order, order[1:]) if b < a)
    assert order == list(range(n)), f"{bad} inversions among {n} equal deadlines"


def test_10000_random_deadlines_all_run_never_early_on_workers(engine):
    n = 10_000
    rnd = random.Random(99)
    base = time.monotonic()
    fired = Fired(n)
    timers = [engine.call_later(rnd.random() * 0.5, fired, i) for i in range(n)]
    assert engine.stats()["timers"] >= 1
    calls = fired.wait()
    assert sorted(k for k, _, _ in calls) == list(range(n))
    early = [(k, timers[k].when - at) for k, at, _ in calls if at < timers[k].when]
    assert not early, f"{len(early)} timers ran before their time, e.g. {early[:3]}"
    assert all(base <= t.when <= base + 0.5 + 5 for t in timers)
    assert all(name.startswith("iocpx-worker") for _, _, name in calls)
    wait_for(lambda: engine.stats()["timers_fired"] >= n, what="timers_fired")
    assert engine.stats()["timers"] == 0


def test_timer_attributes_and_when(engine):
    t0 = time.monotonic()
    t = engine.call_later(30, print)
    assert t0 + 30 <= t.when <= time.monotonic() + 30
    at = time.monotonic() + 40
    assert engine.call_at(at, print).when == at
    s = engine.call_soon(print)
    assert s.when <= time.monotonic()
    assert not t.cancelled()
    assert "pending" in repr(t)
    assert engine.stats()["timers"] >= 2
    assert t.cancel() is True
    assert "cancelled" in repr(t)


def test_cancel_true_then_false_and_the_timer_never_runs(engine):
    ran = []
    t = engine.call_later(0.05, ran.append, "cancelled one")
    assert t.cancel() is True
    assert t.cancel() is False
    assert t.cancelled()
    later = Fired(1)                             # due after it: by then it would have run
    engine.call_later(0.15, later, "sentinel")
    later.wait()
    assert ran == []
    done = Fired(1)
    t2 = engine.call_soon(done, "ran")
    done.wait()
    wait_for(lambda: "done" in repr(t2), what="the timer to be marked done")
    assert t2.cancel() is False                  # it ran already
    assert not t2.cancelled()


def test_cancel_releases_what_the_callback_refers_to(engine):
    class Big:
        pass
    obj = Big()
    ref = weakref.ref(obj)
    t = engine.call_later(60, print, obj)
    del obj
    gc.collect()
    assert ref() is not None
    assert t.cancel()
    gc.collect()
    assert ref() is None, "a cancelled timer keeps its arguments alive"


def test_cancel_from_another_thread_while_timers_fire(engine):
    """cancel() True <=> the timer never runs, even while it is firing."""
    n = 3000
    ran = set()
    lock = threading.Lock()

    def fn(i):
        with lock:
            ran.add(i)

    when = time.monotonic() + 0.05
    timers = [engine.call_at(when + (i % 100) * 0.001, fn, i) for i in range(n)]  # over 0.1 s
    results = {}

    order = random.Random(5).sample(range(n), n)

    def canceller(mine):
        for i in mine:
            results[i] = timers[i].cancel()

    ths = [threading.Thread(target=canceller, args=(order[k::2],)) for k in range(2)]
    time.sleep(max(0.0, when + 0.03 - time.monotonic()))   # race them against the firing
    for th in ths:
        th.start()
    for th in ths:
        th.join(SLOW)
    sentinel = Fired(1)
    engine.call_at(when + 0.2, sentinel, "after all")
    sentinel.wait()
    assert len(results) == n
    both = [i for i in range(n) if results[i] and i in ran]
    neither = [i for i in range(n) if not results[i] and i not in ran]
    assert not both, f"{len(both)} timers ran although cancel() returned True"
    assert not neither, f"{len(neither)} timers neither ran nor were cancelled"
    assert all(timers[i].cancelled() == results[i] for i in range(n))
    assert 0 < sum(results.values()) < n, "the cancels did not race the firing; retune the test"
    assert not any(t.cancel() for t in timers)          # a second cancel is always False


def test_call_soon_from_8_threads_all_run_fifo_per_thread(engine):
    """Started in FIFO order per thread. (With several workers two due
    timers may run at once, so the order is observed where the engine calls
    them: list.append records at the call itself, under the GIL.)"""
    per = 1000
    calls = []
    start = threading.Barrier(8)

    def producer(k):
        start.wait()
        for i in range(per):
            engine.call_soon(calls.append, (k, i))

    ths = [threading.Thread(target=producer, args=(k,)) for k in range(8)]
    for th in ths:
        th.start()
    for th in ths:
        th.join(SLOW)
    wait_for(lambda: len(calls) == 8 * per, timeout=SLOW, what="every call_soon to run")
    seen = {k: [i for kk, i in calls if kk == k] for k in range(8)}
    for k in range(8):
        assert seen[k] == list(range(per)), f"thread {k}'s call_soon ran out of order"


def test_timers_scheduled_from_timers_and_callbacks(engine):
    fired = Fired(100)

    def chain(i):
        fired(i)
        if i < 99:
            engine.call_soon(chain, i + 1)

    engine.call_soon(chain, 0)
    assert [k for k, _, _ in fired.wait()] == list(range(100))
    lst = engine.listen(("127.0.0.1", 0),
                        on_recv=lambda c, d: engine.call_later(0.01, c.send, d.upper()))
    s = client(lst.address)
    s.sendall(b"later")
    assert recv_exact(s, 5) == b"LATER"
    s.close()


def test_an_exception_in_a_timer_is_logged_and_the_rest_run(engine, caplog):
    caplog.set_level(logging.DEBUG, logger="iocpx")
    fired = Fired(20)

    class Boom(Exception):
        pass

    def bad():
        raise Boom("timer failed")

    for i in range(20):
        engine.call_later(0.001 * i, fired, i)
        if i % 5 == 0:
            engine.call_later(0.001 * i, bad)
    assert sorted(k for k, _, _ in fired.wait()) == list(range(20))
    wait_for(lambda: len([r for r in caplog.records if r.exc_info]) == 4, what="4 logged errors")
    errors = [r for r in caplog.records if r.name == "iocpx" and r.levelno >= logging.ERROR]
    assert len(errors) == 4
    assert all(isinstance(r.exc_info[1], Boom) for r in errors)
    assert engine.stats()["internal_errors"] == 0       # the application's fault, not iocpx's
    lst = engine.listen(("127.0.0.1", 0), on_recv=echo)  # the engine goes on
    s = client(lst.address)
    s.sendall(b"fine")
    assert recv_exact(s, 4) == b"fine"
    s.close()


def test_pending_timers_are_dropped_at_close(backend):
    live0 = iocpx.live_io()
    eng = iocpx.Engine(workers=2, backend=backend)
    ran = []

    class Arg:
        pass
    arg = Arg()
    ref = weakref.ref(arg)
    timers = [eng.call_later(5 + i * 0.01, ran.append, arg) for i in range(100)]
    timers += [eng.call_at(time.monotonic() + 3600, ran.append, arg)]
    del arg
    assert eng.stats()["timers"] == 101
    eng.close(timeout=30)
    check_closed_engine(eng, live0)
    assert eng.stats()["timers"] == 0
    gc.collect()
    assert ref() is None, "close() kept the dropped timers' arguments alive"
    assert all(t.cancel() is False for t in timers)     # no longer pending
    assert ran == []
    with pytest.raises(iocpx.ConnectionClosedError):
        eng.call_later(0, print)
    with pytest.raises(iocpx.ConnectionClosedError):
        eng.call_at(time.monotonic(), print)
    with pytest.raises(iocpx.ConnectionClosedError):
        eng.call_soon(print)
    assert ran == []


@pytest.mark.parametrize("call, exc", [
    (lambda e: e.call_later(1, None), TypeError),
    (lambda e: e.call_later(1, "print"), TypeError),
    (lambda e: e.call_soon(42), TypeError),
    (lambda e: e.call_at(time.monotonic(), object()), TypeError),
    (lambda e: e.call_later("1", print), TypeError),
    (lambda e: e.call_later(None, print), TypeError),
    (lambda e: e.call_later(True, print), TypeError),
    (lambda e: e.call_later(math.nan, print), ValueError),
    (lambda e: e.call_at("soon", print), TypeError),
    (lambda e: e.call_at(math.nan, print), ValueError),
])
def test_timer_misuse(engine, call, exc):
    with pytest.raises(exc):
        call(engine)
    assert engine.stats()["timers"] == 0


@pytest.mark.parametrize("schedule", [
    lambda e, fn: e.call_later(1e12, fn),
    lambda e, fn: e.call_later(math.inf, fn),
    lambda e, fn: e.call_at(math.inf, fn),
], ids=["later-1e12", "later-inf", "at-inf"])
def test_a_far_or_infinite_deadline_is_refused_or_stays_pending(engine, schedule):
    ran = []
    try:
        t = schedule(engine, ran.append)
    except (ValueError, OverflowError):
        return                                  # refused up front: fine
    sentinel = Fired(1)
    engine.call_later(0.1, sentinel, "sentinel")
    sentinel.wait()
    assert ran == []
    assert engine.stats()["timers"] == 1, "the timer is no longer queued"
    assert t.cancel() is True, "the timer is gone although it never ran"


def test_negative_delay_and_past_deadline_run_soon(engine):
    fired = Fired(2)
    engine.call_later(-5, fired, "negative")
    engine.call_at(time.monotonic() - 100, fired, "past")
    assert sorted(k for k, _, _ in fired.wait(5)) == ["negative", "past"]


def test_a_timer_that_blocks_does_not_stall_connections(backend):
    """With the default pool, a timer callback that sleeps 0.5 s stalls no
    connection: echoes go on meanwhile (a helper takes over: rescues)."""
    live0 = iocpx.live_io()
    eng = iocpx.Engine(backend=backend)
    blocking = threading.Event()

    def block():
        blocking.set()
        time.sleep(0.5)

    try:
        lst = eng.listen(("127.0.0.1", 0), on_recv=echo)
        socks = [client(lst.address) for _ in range(20)]
        eng.call_soon(block)
        assert blocking.wait(5)
        t0 = time.monotonic()
        worst, rounds = 0.0, 0
        while time.monotonic() - t0 < 0.35:
            for i, s in enumerate(socks):
                t1 = time.monotonic()
                s.sendall(b"%03d" % i)
                assert recv_exact(s, 3, timeout=5) == b"%03d" % i
                worst = max(worst, time.monotonic() - t1)
            rounds += 1
        assert rounds >= 2, f"only {rounds} rounds of echoes while a timer blocked"
        # a stalled echo would wait for the end of the 0.5 s block
        assert worst < 0.35, f"an echo took {worst:.3f} s while a timer blocked"
        assert eng.stats()["rescues"] >= 1
        for s in socks:
            s.close()
    finally:
        eng.close(timeout=30)
    check_closed_engine(eng, live0)
