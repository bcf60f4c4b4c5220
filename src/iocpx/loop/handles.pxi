# The asyncio loop's callbacks: Handle (call_soon) and TimerHandle
# (call_later/call_at), with asyncio's semantics (context, cancel, the
# exception handler, debug tracebacks) and none of its per-call Python
# frames. A TimerHandle is an engine Timer: it sits in the engine's C heap,
# ordered by deadline and then by scheduling order; when due it moves to the
# loop's ready queue like asyncio's. The ready queue is a ring of strong
# references in C memory (LoopCore.rq*), FIFO.

cdef extern from *:
    """
    #if defined(Py_LIMITED_API)
    #define IOCPX_HAVE_CONTEXT_API 0
    static inline int iocpx_context_enter(PyObject *ctx) { (void)ctx; return -1; }
    static inline int iocpx_context_exit(PyObject *ctx) { (void)ctx; return -1; }
    #else
    #define IOCPX_HAVE_CONTEXT_API 1
    static inline int iocpx_context_enter(PyObject *ctx) { return PyContext_Enter(ctx); }
    static inline int iocpx_context_exit(PyObject *ctx) { return PyContext_Exit(ctx); }
    #endif
    """
    bint IOCPX_HAVE_CONTEXT_API
    int iocpx_context_enter(object ctx) except -1
    int iocpx_context_exit(object ctx) except -1

import contextvars as _contextvars
import sys as _sys
from asyncio import format_helpers as _format_helpers

cdef object _copy_context = _contextvars.copy_context
cdef object _extract_stack = _format_helpers.extract_stack
cdef object _format_cb = _format_helpers._format_callback_source
import inspect as _inspect_h
cdef bint _FORMAT_TAKES_DEBUG = "debug" in _inspect_h.signature(_format_cb).parameters


cdef object _format_callback_source(object fn, object args, bint debug=False):
    """asyncio's rendering of a callback (its `debug` argument is 3.12+)."""
    if _FORMAT_TAKES_DEBUG:
        return _format_cb(fn, args, debug=debug)
    return _format_cb(fn, args)


cdef inline int ctx_call(object ctx, object fn, tuple args) except -1:
    """fn(*args) inside the contextvars.Context ctx (Context.run without a
    bound method and an argument tuple per call where the C API allows)."""
    if IOCPX_HAVE_CONTEXT_API:
        iocpx_context_enter(ctx)
        try:
            fn(*args)
        finally:
            iocpx_context_exit(ctx)
    else:
        ctx.run(fn, *args)
    return 0


cdef void handle_report(LoopCore loop, object handle, object fn, object args,
                        object tb, BaseException exc) except *:
    """A callback raised: asyncio's report through call_exception_handler."""
    cb = _format_callback_source(fn, args, debug=loop._debug) if fn is not None else repr(handle)
    context = {"message": f"Exception in callback {cb}", "exception": exc, "handle": handle}
    if tb:
        context["source_traceback"] = tb
    loop.call_exception_handler(context)


cdef inline object handle_trace(LoopCore loop):
    """The caller's stack in debug mode (asyncio's Handle._source_traceback)."""
    tb = _extract_stack(_sys._getframe(2))
    if tb:
        del tb[len(tb) - 1]
    return tb


@cython.freelist(256)
cdef class Handle:
    """A callback scheduled with call_soon()/call_soon_threadsafe()."""

    def cancel(self):
        """Cancel the callback: it will not run."""
        if not self._cancelled:
            self._cancelled = 1
            if self._loop is not None and self._loop._debug:
                self._repr = self._describe()     # (callback and args are about to go)
            self._callback = None
            self._args = None

    def cancelled(self):
        return self._cancelled

    def get_context(self):
        return self._context

    def _run(self):
        handle_run(self)

    @property
    def _source_traceback(self):
        return self._tb

    cdef str _describe(self):
        info = [type(self).__name__]
        if self._cancelled:
            info.append("cancelled")
        if self._callback is not None:
            info.append(_format_callback_source(self._callback, self._args,
                                                debug=self._loop is not None and self._loop._debug))
        if self._tb:
            frame = self._tb[len(self._tb) - 1]
            info.append(f"created at {frame[0]}:{frame[1]}")
        return "<" + " ".join(info) + ">"

    def __repr__(self):
        if self._repr is not None:
            return self._repr
        return self._describe()


cdef inline Handle handle_new(LoopCore loop, object fn, tuple args, object context):
    cdef Handle h = Handle.__new__(Handle)
    h._callback = fn
    h._args = args
    h._context = _copy_context() if context is None else context
    h._loop = loop
    if loop._debug:
        h._tb = handle_trace(loop)
    return h


cdef int handle_run(Handle h) except -1:
    """Run one ready Handle. SystemExit and KeyboardInterrupt propagate (out of
    run_forever, as asyncio's do); any other exception goes to the loop's
    exception handler."""
    fn = h._callback
    args = h._args
    try:
        ctx_call(h._context, fn, args)
    except (SystemExit, KeyboardInterrupt):
        raise
    except BaseException as exc:
        handle_report(h._loop, h, fn, args, h._tb, exc)
    return 0


@cython.final
cdef class TimerHandle(Timer):
    """A callback scheduled with call_later()/call_at(): an engine Timer in the
    engine's heap, with asyncio's TimerHandle interface."""

    def when(self):
        """The absolute time (loop.time()) at which it is due."""
        return (<Timer>self).when

    def cancel(self):
        if not self.is_cancelled:
            self.is_cancelled = 1
            if self.queued and self._loop is not None:
                self._loop.timers_cancelled += 1
            if self._loop is not None and self._loop._debug:
                self._repr = self._describe()
            self.fn = None
            self.args = None

    def cancelled(self):
        return bool(self.is_cancelled)

    def get_context(self):
        return self._context

    def _run(self):
        timer_handle_run(self)

    @property
    def _when(self):
        return (<Timer>self).when

    @property
    def _scheduled(self):
        return bool(self.queued)

    @property
    def _cancelled(self):
        return bool(self.is_cancelled)

    @property
    def _callback(self):
        return self.fn

    @property
    def _args(self):
        return self.args

    @property
    def _source_traceback(self):
        return self._tb

    cdef str _describe(self):
        info = [type(self).__name__]
        if self.is_cancelled:
            info.append("cancelled")
        info.append(f"when={(<Timer>self).when}")
        if self.fn is not None:
            info.append(_format_callback_source(self.fn, self.args,
                                                debug=self._loop is not None and self._loop._debug))
        if self._tb:
            frame = self._tb[len(self._tb) - 1]
            info.append(f"created at {frame[0]}:{frame[1]}")
        return "<" + " ".join(info) + ">"

    def __repr__(self):
        if self._repr is not None:
            return self._repr
        return self._describe()

    def __hash__(self):
        return hash((<Timer>self).when)

    def __richcmp__(self, other, int op):
        if not isinstance(other, TimerHandle):
            return NotImplemented
        a = (<Timer>self).when
        b = (<Timer>other).when
        if op == 0:
            return a < b
        if op == 1:
            return a <= b or self is other
        if op == 4:
            return a > b
        if op == 5:
            return a >= b or self is other
        same = self is other or (a == b and self.fn == (<TimerHandle>other).fn
                                 and self.args == (<TimerHandle>other).args
                                 and self.is_cancelled == (<TimerHandle>other).is_cancelled)
        return same if op == 2 else not same


cdef int timer_handle_run(TimerHandle t) except -1:
    fn = t.fn
    args = t.args
    try:
        ctx_call(t._context, fn, args)
    except (SystemExit, KeyboardInterrupt):
        raise
    except BaseException as exc:
        handle_report(t._loop, t, fn, args, t._tb, exc)
    return 0
