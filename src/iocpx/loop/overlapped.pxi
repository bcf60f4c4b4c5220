# Overlapped operations on Windows handles for the asyncio loop: what
# asyncio's own proactor pipe transports and Windows subprocess transport ask
# of `loop._proactor` (recv, recv_into, send, wait_for_handle), as futures
# completed by the port (iocp/pipes.pxi). iocpx.EventLoop on Windows hands
# those asyncio classes an adapter over these (iocpx/_loop.py), so pipes and
# subprocesses behave exactly as on ProactorEventLoop, with their I/O on the
# loop's one completion port. A read goes into a fresh bytes object the
# context keeps alive (the kernel writes it while the op is pending); a
# future cancelled by its caller cancels the operation, whose completion then
# only frees the context.

cdef enum:
    OV_RECV = 0         # result: the bytes read (b"" at the pipe's end)
    OV_RECV_INTO = 1    # result: how many were copied into the caller's buffer
    OV_SEND = 2         # result: the bytes written
    OV_WAIT = 3         # result: True once the object is signalled


@cython.final
@cython.no_gc_clear
cdef class OvOp:
    """One overlapped operation of a loop (owner of its IoCtx)."""

    def __repr__(self):
        return f"<iocpx.OvOp kind={self.kind} handle={self.handle} pending={self.io != NULL}>"

    def _fut_done(self, fut):
        if fut.cancelled():
            ovop_cancel(self)


cdef object ovop_start(LoopCore loop, int kind, int64_t handle, object arg):
    """Submit one operation; its future."""
    cdef Engine eng = loop.eng
    cdef OvOp op
    cdef IoCtx* io
    cdef Py_ssize_t n
    if loop._closed or eng is None:
        raise RuntimeError("Event loop is closed")
    op = OvOp.__new__(OvOp)
    op.loop = loop
    op.kind = kind
    op.handle = handle
    op.fut = loop.create_future()
    if kind == OV_RECV:
        n = arg
        if n <= 0:
            raise ValueError(f"nbytes must be > 0, got {n}")
        op.buf = PyBytes_FromStringAndSize(NULL, n)
    elif kind == OV_RECV_INTO:
        n = len(arg)
        if n <= 0:
            raise ValueError("the buffer is empty")
        op.dst = arg
        op.buf = PyBytes_FromStringAndSize(NULL, n)
    elif kind == OV_SEND:
        op.buf = arg if type(arg) is bytes else bytes(arg)
    io = io_alloc(OP_WAIT if kind == OV_WAIT else OP_WRITE if kind == OV_SEND else OP_READ, op, NULL)
    io.aux.handle = handle
    if op.buf is not None:
        io_set_obj(io, op.buf)          # the kernel reads or writes it until the completion
        io.buf = iocpx_bytes_ptr(op.buf)
        io.len = iocpx_bytes_len(op.buf)
    try:
        eng.be.submit_handle_io(io)
    except BaseException:
        io_free(io)
        raise
    eng.inflight += 1
    op.io = io
    loop.ovops.add(op)
    op.fut.add_done_callback(op._fut_done)
    return op.fut


cdef int ovop_cancel(OvOp op) except -1:
    """Cancel op's operation (if still pending); it completes, aborted."""
    cdef LoopCore loop = op.loop
    cdef IoCtx* io
    if op.io == NULL or loop.eng is None or op.cancelling:
        return 0
    op.cancelling = 1
    io = io_alloc(OP_CANCEL, op, NULL)
    try:
        loop.eng.be.submit_cancel_op(io, op.io)
    except BaseException:
        io_free(io)
        raise
    loop.eng.inflight += 1
    return 0


cdef void ovop_on_done(OvOp op, Event* ev) except *:
    """An operation (or a cancel of one) completed (handle_event)."""
    cdef LoopCore loop = op.loop
    cdef IoCtx* io = ev.io
    cdef int res = ev.res
    cdef uint8_t kind = io.op
    io_free(io)
    if loop.eng is not None:
        loop.eng.inflight -= 1
    if kind == OP_CANCEL:
        return
    op.io = NULL
    loop.ovops.discard(op)
    fut = op.fut
    if fut.done() or loop.closing:
        return
    if res < 0:
        if res == -_errno.ECANCELED:
            # the handle was closed under it (asyncio's proactor says the same)
            exc = ConnectionResetError(_errno.ECONNRESET, "the operation was aborted: handle closed")
        else:
            exc = loop.eng.be.error(-res, "ReadFile" if kind == OP_READ else
                                    "WriteFile" if kind == OP_WRITE else "wait")
        fut.set_exception(exc)
    elif op.kind == OV_RECV:
        fut.set_result(op.buf if res == len(op.buf) else op.buf[:res])
    elif op.kind == OV_RECV_INTO:
        fut.set_result(iocpx_copy_into(op.dst, iocpx_bytes_ptr(op.buf), res) if res else 0)
    elif op.kind == OV_SEND:
        fut.set_result(res)
    else:
        fut.set_result(True)
    op.buf = None
    op.dst = None


def _ov_adopt(LoopCore loop, handle):
    """A pipe HANDLE joins the loop's completion port (once per handle)."""
    if loop._closed or loop.eng is None:
        raise RuntimeError("Event loop is closed")
    loop.eng.be.handle_adopt(int(handle))


def _ov_recv(LoopCore loop, handle, nbytes):
    return ovop_start(loop, OV_RECV, int(handle), nbytes)


def _ov_recv_into(LoopCore loop, handle, buf):
    return ovop_start(loop, OV_RECV_INTO, int(handle), buf)


def _ov_send(LoopCore loop, handle, data):
    return ovop_start(loop, OV_SEND, int(handle), data)


def _ov_wait(LoopCore loop, handle):
    return ovop_start(loop, OV_WAIT, int(handle), None)


cdef int ovops_cancel_all(LoopCore loop) except -1:
    """The loop closes: every pending operation is cancelled (and reaped by
    engine_close_loop)."""
    if loop.ovops:
        for op in list(loop.ovops):
            ovop_cancel(<OvOp>op)
    return 0
