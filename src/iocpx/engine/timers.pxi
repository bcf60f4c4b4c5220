# Timers: one binary min-heap per engine, on the engine clock. The leader's
# kernel wait ends at the earliest deadline, and due timers run in the
# dispatch loop like completions, on a worker with the GIL held. There are no
# kernel timers: every backend gets timers from its wait timeout alone. The
# idle-timeout sweeper, the accept back-off and the first-data deadlines are
# timers like the application's own.

cdef enum:
    SWEEP_MS = 250          # idle-timeout sweeper period
    WAIT_MAX_MS = 3600000   # a leader waits an hour at most for a far timer (fits a 32-bit long)

cdef uint64_t FAR_NS = 1 << 62  # a deadline this far is "never"


cdef class Timer:          # (not final: the asyncio loop's TimerHandle extends it)
    """A callback scheduled by Engine.call_later/call_at/call_soon."""

    def cancel(self):
        """Stop the timer. True if it was still pending (it will not run),
        False if it already ran, is running or was cancelled. Thread-safe."""
        if not self.queued or self.is_cancelled:
            return False
        self.is_cancelled = 1
        self.fn = None          # drop what the callback refers to at once
        self.args = None
        return True

    def cancelled(self):
        """True once cancel() stopped it."""
        return bool(self.is_cancelled)

    def __repr__(self):
        state = "cancelled" if self.is_cancelled else ("pending" if self.queued else "done")
        return f"<iocpx.Timer when={self.when:.6f} {state}>"


cdef int64_t _clock_offset_ns = 0     # engine clock - time.monotonic(), in ns, plus the
cdef bint _clock_offset_known = 0       # resolution of time.monotonic() where it is coarse


cdef int64_t clock_offset() except? -1:
    """How far the engine clock (iocpx_now_ns) is ahead of time.monotonic(),
    measured once per process (the tightest of a few paired reads), so that a
    deadline converts the same way every time: equal `when`s get equal
    deadlines and keep their scheduling order. On Linux both are
    CLOCK_MONOTONIC and this is about 0."""
    global _clock_offset_ns, _clock_offset_known
    cdef uint64_t a, b
    cdef int64_t best_span = -1, off = 0
    cdef double res
    if not _clock_offset_known:
        for _ in range(5):
            a = iocpx_now_ns()
            m = time.monotonic()
            b = iocpx_now_ns()
            if best_span < 0 or <int64_t>(b - a) < best_span:
                best_span = <int64_t>(b - a)
                off = <int64_t>((a + b) // 2) - <int64_t>(m * 1e9)
        # A coarse time.monotonic() (GetTickCount64 on Windows before CPython
        # 3.13: 15.6 ms) reaches `when` up to one tick after the engine clock
        # does: due one tick later on the engine clock, a timer is never found
        # early, so it never goes back in the heap behind later ones.
        res = time.get_clock_info("monotonic").resolution
        if res > 1e-6:
            off += <int64_t>(res * 1e9) + 1000000
        _clock_offset_ns = off
        _clock_offset_known = 1
    return _clock_offset_ns


cdef Timer timer_new(Engine eng, double when, object fn, tuple args, bint internal):
    cdef Timer t = Timer.__new__(Timer)
    cdef int64_t due
    t.eng = eng
    t.when = when
    t.fn = fn
    t.args = args
    t.internal = internal
    # the same deadline on the engine clock; timer_fire re-checks on
    # time.monotonic(), so a conversion error can only delay, never advance
    t.due_ns = _due_ns(when * 1e9 + clock_offset())
    return t


cdef inline uint64_t _due_ns(double ns) noexcept:
    """A deadline in engine-clock ns, clamped: the past is 0, and a far or
    infinite one is FAR_NS (about 146 years: pending for good)."""
    if ns != ns or ns <= 0:
        return 0
    if ns >= <double>FAR_NS:
        return FAR_NS
    return <uint64_t>ns


cdef int timers_push(Engine eng, Timer t) except -1:
    """Queue t (GIL held, any thread). Wakes the leader if t is due before
    the leader's wait ends by itself."""
    cdef TimerSlot* h
    cdef int i, parent, cap
    cdef bint wake = 0
    iocpx_mutex_lock(&eng.mu)       # with the GIL: never wait for the GIL holding mu
    if eng.heap_len == eng.heap_cap:
        cap = eng.heap_cap * 2 if eng.heap_cap else 64
        h = NULL if IOCPX_FAULT(IOCPX_F_ALLOC_TIMERS) else <TimerSlot*>realloc(eng.heap, cap * sizeof(TimerSlot))
        if h == NULL:
            iocpx_mutex_unlock(&eng.mu)
            raise MemoryError()
        eng.heap = h
        eng.heap_cap = cap
    if t.seq == 0:                      # a re-queued timer keeps its place among equals
        eng.timer_seq += 1
        t.seq = eng.timer_seq
    i = eng.heap_len
    eng.heap_len += 1
    while i > 0:                        # sift up
        parent = (i - 1) // 2
        if not _slot_before(t.due_ns, t.seq, &eng.heap[parent]):
            break
        eng.heap[i] = eng.heap[parent]
        i = parent
    eng.heap[i].due_ns = t.due_ns
    eng.heap[i].seq = t.seq
    eng.heap[i].timer = <PyObject*>t
    Py_INCREF(t)
    t.queued = 1
    if eng.leader_until != 0 and t.due_ns < eng.leader_until:
        wake = 1
        eng.leader_until = t.due_ns     # one wake-up is enough
    iocpx_mutex_unlock(&eng.mu)
    if wake:
        engine_wake(eng)
    return 0


cdef inline bint _slot_before(uint64_t due, uint64_t seq, TimerSlot* b) noexcept nogil:
    return due < b.due_ns or (due == b.due_ns and seq < b.seq)


cdef PyObject* timers_pop(Engine eng) noexcept nogil:
    """Remove the earliest timer (heap_len > 0, mu held); the heap's
    reference passes to the caller."""
    cdef PyObject* top = eng.heap[0].timer
    cdef TimerSlot last
    cdef int i = 0, c
    eng.heap_len -= 1
    if eng.heap_len > 0:
        last = eng.heap[eng.heap_len]
        while True:                     # sift down
            c = 2 * i + 1
            if c >= eng.heap_len:
                break
            if c + 1 < eng.heap_len and _slot_before(eng.heap[c + 1].due_ns, eng.heap[c + 1].seq, &eng.heap[c]):
                c += 1
            if not _slot_before(eng.heap[c].due_ns, eng.heap[c].seq, &last):
                break
            eng.heap[i] = eng.heap[c]
            i = c
        eng.heap[i] = last
    return top


cdef long timers_wait_ms(Engine eng, uint64_t now) noexcept nogil:
    """How long the leader may wait in the kernel (ms, rounded up; -1: no
    limit). mu held."""
    cdef uint64_t ms
    if eng.heap_len == 0:
        return -1
    if eng.heap[0].due_ns <= now:
        return 0
    ms = (eng.heap[0].due_ns - now + 999999) // 1000000
    return <long>(ms if ms < WAIT_MAX_MS else WAIT_MAX_MS)


cdef void timer_fire(Engine eng, Timer t) noexcept:
    """Run a due timer (GIL held). A timer found early on Python's clock
    (time.monotonic and the engine clock can differ by a tick) goes back."""
    t.queued = 0
    if t.is_cancelled:
        return
    left = t.when - time.monotonic()
    if left > 0:
        t.due_ns = _due_ns(<double>iocpx_now_ns() + left * 1e9 + 1000)
        try:
            timers_push(eng, t)
        except BaseException:
            log.exception("iocpx: could not re-queue a timer")
        return
    fn, args = t.fn, t.args
    t.fn = None
    t.args = None
    eng.n_timers_fired += 1
    try:
        fn(*args)
    except BaseException as e:
        if t.internal:
            engine_fault(eng)
            log.error("iocpx: internal timer %r raised", fn, exc_info=e)
        else:
            log.error("iocpx: timer callback %r raised", fn, exc_info=e)


cdef void timers_clear(Engine eng) noexcept:
    """Drop every queued timer (engine close): none of them runs."""
    cdef PyObject* tp
    while True:
        iocpx_mutex_lock(&eng.mu)       # with the GIL: never wait for the GIL holding mu
        if eng.heap_len == 0:
            iocpx_mutex_unlock(&eng.mu)
            break
        tp = timers_pop(eng)
        iocpx_mutex_unlock(&eng.mu)
        (<Timer>tp).queued = 0
        (<Timer>tp).fn = None
        (<Timer>tp).args = None
        Py_DECREF(<object>tp)
    free(eng.heap)
    eng.heap = NULL
    eng.heap_cap = 0


cdef void engine_wake(Engine eng) noexcept:
    """Make the leader's wait return now: post a no-op completion."""
    cdef IoCtx* io
    try:
        io = io_alloc_wait(OP_NOP, None, NULL)  # a lost wake-up delays the timers it is for
    except BaseException:
        return
    try:
        eng.be.submit_post(io)
        eng.be.flush()
    except BaseException:
        io_free(io)


cdef void timers_compact(Engine eng) noexcept:
    """Drop every cancelled timer from the heap and rebuild it (the asyncio
    loop calls this when most of its timers are cancelled, as asyncio does)."""
    cdef int i, j = 0, k, c
    cdef TimerSlot tmp
    cdef list dropped = []
    iocpx_mutex_lock(&eng.mu)
    for i in range(eng.heap_len):
        t = <object>eng.heap[i].timer
        if (<Timer>t).is_cancelled:
            dropped.append(t)           # the heap's reference goes with the list
            Py_DECREF(t)
        else:
            eng.heap[j] = eng.heap[i]
            j += 1
    eng.heap_len = j
    i = j // 2 - 1
    while i >= 0:                       # heapify: sift each parent down
        k = i
        while True:
            c = 2 * k + 1
            if c >= j:
                break
            if c + 1 < j and _slot_before(eng.heap[c + 1].due_ns, eng.heap[c + 1].seq, &eng.heap[c]):
                c += 1
            if not _slot_before(eng.heap[c].due_ns, eng.heap[c].seq, &eng.heap[k]):
                break
            tmp = eng.heap[k]
            eng.heap[k] = eng.heap[c]
            eng.heap[c] = tmp
            k = c
        i -= 1
    iocpx_mutex_unlock(&eng.mu)
    for t in dropped:
        (<Timer>t).queued = 0
