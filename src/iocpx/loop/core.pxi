# The asyncio event loop's core (iocpx.EventLoop's C half; the Python half,
# which adds asyncio's own high-level methods, is iocpx/_loop.py).
#
# The loop's thread is the engine's only worker: each iteration (_run_once)
# it waits in the kernel for completions (the GIL released, the wait ending
# at the earliest timer, or at once when callbacks are ready), runs what the
# completions mean right there (a protocol's data_received, a poll's
# readiness, an accept), moves due timers to the ready queue, and runs the
# ready callbacks that are queued at that point, asyncio's FIFO order. Sends
# made by those callbacks are submitted in one go by the next wait (one
# io_uring_enter per iteration). call_soon_threadsafe wakes a sleeping loop
# with a posted completion, the model's wake-up packet.

from asyncio import events as _aio_events
from asyncio import futures as _aio_futures
from asyncio import protocols as _aio_protocols
from asyncio import constants as _aio_constants
from cpython.exc cimport PyErr_CheckSignals
from libc.string cimport memmove

cdef object _monotonic = time.monotonic
cdef bint ON_WINDOWS = _sys.platform == "win32"
cdef object _aio_logger = logging.getLogger("asyncio")
cdef object _set_result_unless_cancelled = _aio_futures._set_result_unless_cancelled
cdef object _BufferedProtocol = _aio_protocols.BufferedProtocol

cdef enum:
    LOOP_BATCH = 256                # completions taken per wait
    TIMERS_COMPACT_MIN = 100        # cancelled timers in the heap before it is compacted ...
    RQ_FIRST = 64                   # the ready ring's first size


cdef int rq_push(LoopCore loop, object h) except -1:
    """Append h to the ready queue (a strong reference moves into the ring).
    Atomic under the GIL, so call_soon_threadsafe may use it from any thread."""
    cdef PyObject** items
    cdef Py_ssize_t cap, i
    if loop.rq_len == loop.rq_cap:
        cap = loop.rq_cap * 2 if loop.rq_cap else RQ_FIRST
        items = <PyObject**>malloc(cap * sizeof(PyObject*))
        if items == NULL:
            raise MemoryError()
        for i in range(loop.rq_len):
            items[i] = loop.rq[(loop.rq_head + i) % loop.rq_cap]
        free(loop.rq)
        loop.rq = items
        loop.rq_cap = cap
        loop.rq_head = 0
    Py_INCREF(h)
    loop.rq[(loop.rq_head + loop.rq_len) % loop.rq_cap] = <PyObject*>h
    loop.rq_len += 1
    return 0


cdef inline PyObject* rq_pop(LoopCore loop) noexcept:
    """The oldest ready callback (rq_len > 0); its reference passes to the caller."""
    cdef PyObject* h = loop.rq[loop.rq_head]
    loop.rq_head = (loop.rq_head + 1) % loop.rq_cap
    loop.rq_len -= 1
    return h


cdef void rq_clear(LoopCore loop) noexcept:
    cdef PyObject* h
    while loop.rq_len > 0:
        h = rq_pop(loop)
        Py_DECREF(<object>h)
    free(loop.rq)
    loop.rq = NULL
    loop.rq_cap = 0
    loop.rq_head = 0


cdef int loop_run_ready(LoopCore loop, object h) except -1:
    """Run one ready callback: ours without a Python frame, asyncio's own
    Handles (from asyncio code that makes them itself) through their _run()."""
    cdef type tp = type(h)
    if tp is Handle:
        if not (<Handle>h)._cancelled:
            handle_run(<Handle>h)
    elif tp is TimerHandle:
        if not (<TimerHandle>h).is_cancelled:
            timer_handle_run(<TimerHandle>h)
    elif not h._cancelled:
        h._run()
    return 0


cdef int loop_run_ready_debug(LoopCore loop, object h) except -1:
    """The debug-mode run: slow callbacks are reported as asyncio reports them."""
    if h.cancelled():
        return 0
    loop._current_handle = h
    try:
        t0 = _monotonic()
        loop_run_ready(loop, h)
        dt = _monotonic() - t0
        if dt >= loop.slow_callback_duration:
            _aio_logger.warning("Executing %s took %.3f seconds", _format_ready(h), dt)
    finally:
        loop._current_handle = None
    return 0


cdef object _format_ready(object h):
    cb = getattr(h, "_callback", None)
    owner = getattr(cb, "__self__", None)
    if isinstance(owner, _aio_tasks_Task):
        return repr(owner)
    return str(h)

from asyncio import tasks as _aio_tasks
cdef object _aio_tasks_Task = _aio_tasks.Task


cdef Py_ssize_t loop_timers_due(LoopCore loop) except -1:
    """Due timers: ours move to the ready queue (asyncio's order: after the
    callbacks already ready and this iteration's I/O), the engine's own
    (linger, accept back-off...) run now. Returns how many were queued."""
    cdef Engine eng = loop.eng
    cdef PyObject* tp
    cdef Py_ssize_t queued = 0
    cdef uint64_t now = iocpx_now_ns()
    while True:
        iocpx_mutex_lock(&eng.mu)
        if eng.heap_len == 0 or eng.heap[0].due_ns > now:
            iocpx_mutex_unlock(&eng.mu)
            return queued
        tp = timers_pop(eng)
        iocpx_mutex_unlock(&eng.mu)
        t = <object>tp
        Py_DECREF(t)            # the heap's reference (t holds one now)
        if type(t) is TimerHandle:
            (<TimerHandle>t).queued = 0
            if (<TimerHandle>t).is_cancelled:
                if loop.timers_cancelled > 0:
                    loop.timers_cancelled -= 1
                continue
            rq_push(loop, t)
            queued += 1
        else:
            timer_fire(eng, <Timer>t)


cdef int loop_run_n(LoopCore loop, Py_ssize_t n) except -1:
    """Run the n oldest ready callbacks."""
    cdef PyObject* hp
    if loop._debug:
        while n > 0 and loop.rq_len > 0:
            n -= 1
            hp = rq_pop(loop)
            h = <object>hp
            Py_DECREF(h)
            loop_run_ready_debug(loop, h)
    else:
        while n > 0 and loop.rq_len > 0:
            n -= 1
            hp = rq_pop(loop)
            h = <object>hp
            Py_DECREF(h)
            loop_run_ready(loop, h)
    return 0


cdef int loop_drop_cancelled_head(LoopCore loop) except -1:
    """Cancelled timers at the top of the heap would end waits early for
    nothing: drop them (and compact the heap when most of it is cancelled,
    as asyncio does, so a program that cancels many long timeouts keeps none)."""
    cdef Engine eng = loop.eng
    cdef PyObject* tp
    if loop.timers_cancelled > TIMERS_COMPACT_MIN and loop.timers_cancelled * 2 > eng.heap_len:
        timers_compact(eng)
        loop.timers_cancelled = 0
        return 0
    while True:
        iocpx_mutex_lock(&eng.mu)
        if eng.heap_len == 0:
            iocpx_mutex_unlock(&eng.mu)
            return 0
        t = <object>eng.heap[0].timer
        if type(t) is not TimerHandle or not (<TimerHandle>t).is_cancelled:
            iocpx_mutex_unlock(&eng.mu)
            return 0
        tp = timers_pop(eng)
        iocpx_mutex_unlock(&eng.mu)
        (<TimerHandle>t).queued = 0
        Py_DECREF(<object>tp)
        if loop.timers_cancelled > 0:
            loop.timers_cancelled -= 1


cdef int loop_dispatch(LoopCore loop, Event* batch, int n) except -1:
    """Run n completions in order; receives of one op that follow each other
    become one callback (a large message in buffer-sized pieces)."""
    cdef Engine eng = loop.eng
    cdef int i = 0, k
    cdef Py_ssize_t total
    while i < n:
        k = 1
        if batch[i].io.op == OP_RECV and batch[i].res > 0 and (batch[i].flags & EV_MORE):
            total = batch[i].res
            while i + k < n and k < MERGE_MAX and total < MERGE_BYTES:
                if batch[i + k].io != batch[i].io or batch[i + k].res <= 0:
                    break
                total += batch[i + k].res
                k += 1
                if not (batch[i + k - 1].flags & EV_MORE):
                    break
        handle_event(eng, &batch[i], k)
        i += k
        if loop.pending_exc is not None and i < n:
            # a protocol callback raised SystemExit/KeyboardInterrupt: the
            # rest of the batch runs at the start of the next iteration
            memmove(loop.held, &batch[i], (n - i) * sizeof(Event))
            loop.held_n = n - i
            break
    return 0


cdef int loop_run_once(LoopCore loop) except -1:
    """One iteration of the loop (BaseEventLoop.run_forever calls _run_once),
    in asyncio's order: the callbacks that were ready when it began, then
    this iteration's I/O (run right here, in completion order, instead of
    being queued as handles), then the timers that came due; what those
    schedule runs in the next iteration."""
    cdef Engine eng = loop.eng
    cdef Event batch[LOOP_BATCH]
    cdef long tmo
    cdef int n
    cdef Py_ssize_t nready, ntimers
    loop_drop_cancelled_head(loop)
    if loop.selector is not None:
        selector_rearm(<EngineSelector>loop.selector)
    iocpx_tls_set(<void*>eng)
    try:
        nready = loop.rq_len
        if nready > 0 or loop._stopping or loop.held_n > 0:
            tmo = 0
        else:
            iocpx_mutex_lock(&eng.mu)
            tmo = timers_wait_ms(eng, iocpx_now_ns())
            iocpx_mutex_unlock(&eng.mu)
        if loop.held_n > 0:         # left over when a callback raised KeyboardInterrupt
            n = loop.held_n
            loop.held_n = 0
            memcpy(batch, loop.held, n * sizeof(Event))
        elif tmo == 0:
            n = eng.be.wait(batch, LOOP_BATCH, 0)
        else:
            loop.sleeping = 1
            with nogil:
                n = eng.be.wait(batch, LOOP_BATCH, tmo)
            loop.sleeping = 0
            loop.wake_pending = 0
        if n < 0:
            if n != -_errno.EINTR:
                _aio_logger.error("iocpx: waiting for completions failed: %s", strerror(-n))
            n = 0
        if n > 0:
            # the I/O of this iteration runs after what was ready: keep its
            # completions for after those callbacks, which may raise
            loop.held_n = n
            memcpy(loop.held, batch, n * sizeof(Event))
        PyErr_CheckSignals()            # Ctrl-C while waiting: KeyboardInterrupt, as asyncio
        ntimers = loop_timers_due(loop)
        loop_run_n(loop, nready)
        if loop.held_n > 0:
            n = loop.held_n
            loop.held_n = 0
            loop_dispatch(loop, loop.held, n)
        eng._flush()
        if loop.pending_exc is not None:
            exc = loop.pending_exc
            loop.pending_exc = None
            raise exc
        loop_run_n(loop, ntimers)
    finally:
        iocpx_tls_set(NULL)
    return 0


cdef void loop_wake(LoopCore loop) noexcept:
    """From another thread: end the loop's wait with a posted completion
    (once per wait)."""
    if loop.sleeping and not loop.wake_pending and loop.eng is not None \
            and loop.eng.state == E_RUNNING:
        loop.wake_pending = 1
        engine_wake(loop.eng)


cdef class LoopCore:
    """The C half of iocpx.EventLoop: the engine (its thread is this loop's),
    the ready queue, timers in the engine's heap, the wait, call_soon*."""

    def __cinit__(self):
        self.rq = NULL

    def __dealloc__(self):
        cdef PyObject* h
        while self.rq_len > 0:
            h = rq_pop(self)
            Py_XDECREF(h)
        free(self.rq)
        self.rq = NULL

    def _core_init(self, backend=None):
        self.eng = engine_for_loop(backend)
        self.eng.loop = self
        self.slow_callback_duration = 0.1
        self.serving = {}
        self.ovops = set()

    # ---- transports and servers (loop/stream.pxi, loop/server.pxi) ---------

    def _core_socket_transport(self, sock, protocol, waiter, extra, server):
        """A connected stream socket (a socket.socket: the transport owns it
        from now on, as after sock.detach()) becomes a StreamTransport."""
        cdef Connection c = conn_adopt(self.eng, sock, None, None, None, True, 4096,
                                       LOOP_MAX_SEND, None, False, True)
        return stream_new(self, c, protocol, waiter, server, extra)

    def _core_start_serving(self, protocol_factory, sock, sslcontext, server, backlog,
                            handshake_timeout, shutdown_timeout):
        server_start(self, protocol_factory, sock, sslcontext, server, backlog,
                     handshake_timeout, shutdown_timeout)

    def _core_stop_serving(self, sock):
        server_stop(self, sock)

    @property
    def backend(self):
        """The engine backend this loop runs on (io_uring, epoll, iocp)."""
        return self.eng.be.name if self.eng is not None and self.eng.be is not None else None

    @property
    def engine_stats(self):
        """The engine's counters (Engine.stats())."""
        return self.eng.stats()

    # ---- running ----------------------------------------------------------

    def _run_once(self):
        """Run one full iteration of the event loop (asyncio's contract)."""
        loop_run_once(self)

    def time(self):
        """The loop's clock: time.monotonic()."""
        return _monotonic()

    # ---- scheduling -------------------------------------------------------

    def call_soon(self, callback, *args, context=None):
        """Arrange for callback(*args) to be called soon (FIFO). Returns a Handle."""
        if self._closed:
            raise RuntimeError("Event loop is closed")
        if self._debug:
            self._check_thread()
            self._check_callback(callback, "call_soon")
        cdef Handle h = handle_new(self, callback, args, context)
        rq_push(self, h)
        return h

    def _call_soon(self, callback, args, context):
        cdef Handle h = handle_new(self, callback, tuple(args), context)
        rq_push(self, h)
        return h

    def call_soon_threadsafe(self, callback, *args, context=None):
        """Like call_soon(), from any thread: wakes the loop with a posted completion."""
        if self._closed:
            raise RuntimeError("Event loop is closed")
        if self._debug:
            self._check_callback(callback, "call_soon_threadsafe")
        cdef Handle h = handle_new(self, callback, args, context)
        rq_push(self, h)
        loop_wake(self)
        return h

    def _write_to_self(self):
        loop_wake(self)

    def _add_callback(self, handle):
        """Queue a Handle made elsewhere (asyncio's selector code makes its own)."""
        if not handle._cancelled:
            rq_push(self, handle)

    def call_later(self, delay, callback, *args, context=None):
        """Arrange for callback(*args) to run after delay seconds. Returns a TimerHandle."""
        if delay is None:
            raise TypeError("delay must not be None")
        return self._call_at(_monotonic() + delay, callback, args, context)

    def call_at(self, when, callback, *args, context=None):
        """Arrange for callback(*args) to run at loop.time() == when."""
        if when is None:
            raise TypeError("when cannot be None")
        return self._call_at(when, callback, args, context)

    cdef TimerHandle _call_at(self, object when, object callback, tuple args, object context):
        if self._closed:
            raise RuntimeError("Event loop is closed")
        if self._debug:
            self._check_thread()
            self._check_callback(callback, "call_at")
        cdef TimerHandle t = TimerHandle.__new__(TimerHandle)
        cdef double w = when
        t.eng = self.eng
        (<Timer>t).when = w
        t.fn = callback
        t.args = args
        t._context = _copy_context() if context is None else context
        t._loop = self
        t.due_ns = _due_ns(w * 1e9 + clock_offset())
        if self._debug:
            t._tb = handle_trace(self)
        timers_push(self.eng, t)
        return t

    def _timer_handle_cancelled(self, handle):
        """asyncio's TimerHandle.cancel() hook (our TimerHandles count themselves)."""
        pass

    # ---- readiness (the selector the asyncio code talks to) ----------------

    def _make_selector(self):
        self.selector = EngineSelector.__new__(EngineSelector)
        (<EngineSelector>self.selector).loop = self
        (<EngineSelector>self.selector).keys = {}
        (<EngineSelector>self.selector).regs = {}
        (<EngineSelector>self.selector).rearm = []
        return self.selector

    # ---- closing ----------------------------------------------------------

    def _core_close(self, timeout=5.0):
        """Close the engine: every transport and listener aborted without
        callbacks, every operation reaped. After BaseEventLoop.close()."""
        self.closing = 1
        rq_clear(self)
        if self.eng is not None:
            ovops_cancel_all(self)
            engine_close_loop(self.eng, timeout)
