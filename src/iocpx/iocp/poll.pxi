# Readiness polls (OP_POLL) on Windows: the asyncio loop's add_reader and
# add_writer as completions on the port, through the AFD driver's poll (the
# mechanism libuv, mio and wepoll use; declarations in _winsock.pxd). One
# helper handle per backend, opened on \Device\Afd\Iocpx at the first poll
# and associated with the port under KEY_POLL; each poll names the socket's
# base handle, so the polled socket itself is neither associated with our
# port nor otherwise touched: add_reader() works on any socket. The poll's
# AFD_POLL_INFO lives in io.extra until its completion (freed by io_free).
# A poll that is ready at once still queues its packet (the helper handle
# does not skip completions on success).


cdef int poll_submit(IocpBackend be, IoCtx* io) except -1:
    cdef DWORD err = 0
    cdef SOCKET base
    cdef iocpx_afd_poll_t* info
    cdef NTSTATUS st
    be._check_open()
    if be.afd == NULL:
        be.afd = iocpx_afd_open(be.port, KEY_POLL, &err)
        if be.afd == NULL:
            raise win_error(err, "opening \\Device\\Afd for readiness polls")
    base = iocpx_base_socket(<SOCKET><size_t>io.fd, &err)
    if base == 0:
        raise win_error(err, f"socket {io.fd} cannot be polled")
    if io.extra == NULL:
        io.extra = calloc(1, sizeof(iocpx_afd_poll_t))     # freed by io_free
        if io.extra == NULL:
            raise MemoryError()
    info = <iocpx_afd_poll_t*>io.extra
    info.Timeout.QuadPart = 0x7FFFFFFFFFFFFFFF
    info.NumberOfHandles = 1
    info.Exclusive = 0
    info.Handles[0].Handle = <HANDLE>base
    info.Handles[0].Events = iocpx_afd_events(<int>io.len)
    info.Handles[0].Status = 0
    memset(&io.ovl, 0, sizeof(OVERLAPPED))
    st = iocpx_afd_poll(be.afd, <OVERLAPPED*>&io.ovl, info)
    if st != 0 and st != IOCPX_STATUS_PENDING:
        raise win_error(iocpx_afd_status_error(st), "IOCTL_AFD_POLL")
    return 0


cdef void poll_finish(IocpBackend be, IoCtx* io, ULONG_PTR status, Event* ev) noexcept nogil:
    """A poll's packet: the PL_* events that happened, or -errno."""
    cdef iocpx_afd_poll_t* info = <iocpx_afd_poll_t*>io.extra
    cdef NTSTATUS st = <NTSTATUS>status
    ev.io = io
    ev.flags = 0
    ev.data = NULL
    if st == IOCPX_STATUS_CANCELLED:
        ev.res = -E_CANCELED
    elif st != 0:
        ev.res = win_errno(iocpx_afd_status_error(st))
    elif info == NULL or info.NumberOfHandles < 1:
        ev.res = 0
    else:
        ev.res = iocpx_afd_result(info.Handles[0].Events)


cdef void poll_cancel(IocpBackend be, IoCtx* target) noexcept:
    """Cancel an armed poll: it completes with STATUS_CANCELLED."""
    if be.afd != NULL:
        iocpx_afd_cancel(be.afd, <OVERLAPPED*>&target.ovl)
