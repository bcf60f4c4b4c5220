# Windows handles that are not sockets, through the port: the asyncio loop's
# pipes (a subprocess's stdin/stdout/stderr: overlapped named pipes made by
# asyncio.windows_utils) and process exits. A pipe HANDLE is associated with
# the port once (handle_adopt, key KEY_IO); OP_READ / OP_WRITE are an
# overlapped ReadFile / WriteFile on it, each finishing with a packet (no
# skipping on success for these handles). OP_WAIT registers a thread-pool
# wait on the object; its firing posts the context (iocpx_wait_t in
# _winsock.pxd). Every context completes exactly once: a failed submit
# raises (the caller frees it), everything else ends in one event.


cdef int handle_adopt(IocpBackend be, int64_t handle) except -1:
    be._check_open()
    if CreateIoCompletionPort(<HANDLE><size_t>handle, be.port, KEY_IO, 0) == NULL:
        raise win_error(GetLastError(), f"CreateIoCompletionPort(handle {handle})")
    return 0


cdef int handle_submit(IocpBackend be, IoCtx* io) except -1:
    cdef HANDLE h = <HANDLE><size_t>io.aux.handle
    cdef BOOL ok
    cdef DWORD err = 0
    cdef Event ev
    cdef iocpx_wait_t* w
    be._check_open()
    memset(&io.ovl, 0, sizeof(OVERLAPPED))
    if io.op == OP_WAIT:
        w = <iocpx_wait_t*>calloc(1, sizeof(iocpx_wait_t))     # freed by io_free
        if w == NULL:
            raise MemoryError()
        io.extra = w
        w.port = be.port
        w.ov = <OVERLAPPED*>&io.ovl
        if not iocpx_wait_register(w, h):
            raise win_error(GetLastError(), "RegisterWaitForSingleObject")
        return 0
    if io.op == OP_READ:
        ok = ReadFile(h, io.buf, <DWORD>io.len, NULL, <OVERLAPPED*>&io.ovl)
    else:
        ok = WriteFile(h, io.buf, <DWORD>io.len, NULL, <OVERLAPPED*>&io.ovl)
    if not ok:
        err = GetLastError()
    if ok or err == ERROR_IO_PENDING:
        return 0                        # a packet follows (also after an immediate success)
    handle_finish(io, 0, 0, err, &ev)   # failed at once: no packet, the event is built now
    if be._push_ready(&ev) < 0:
        raise MemoryError()
    return 0


cdef void handle_finish(IoCtx* io, int ok, DWORD nbytes, DWORD err, Event* ev) noexcept nogil:
    ev.io = io
    ev.flags = 0
    ev.data = NULL
    if io.op == OP_WAIT:
        iocpx_wait_release(<iocpx_wait_t*>io.extra)
        ev.res = 0 if nbytes == 1 else -E_CANCELED
    elif ok:
        ev.res = <int32_t>nbytes
    elif io.op == OP_READ and (err == ERROR_BROKEN_PIPE or err == ERROR_HANDLE_EOF):
        ev.res = 0                      # the writer closed its end: the pipe's end
    else:
        ev.res = win_errno(err)


cdef int handle_cancel(IocpBackend be, IoCtx* target) except -1:
    """Cancel an OP_READ/OP_WRITE/OP_WAIT; it completes (-ECANCELED, or with
    what it did if it finished first)."""
    if target.op == OP_WAIT:
        if target.extra != NULL and iocpx_wait_cancel(<iocpx_wait_t*>target.extra):
            PostQueuedCompletionStatus(be.port, 0, KEY_POST, <OVERLAPPED*>&target.ovl)
    else:
        CancelIoEx(<HANDLE><size_t>target.aux.handle, <OVERLAPPED*>&target.ovl)
    return 0
