# Receiving on Windows: a zero-byte WSARecv, which completes when data (or
# EOF) is there, then a non-blocking recv() of up to the buffer size into a
# heap block (recv_heap, _backend.pxd), run when the completion is dequeued:
# an idle connection pins no buffer. Each completion is final (no EV_MORE):
# the engine posts the next receive after the callback, as the classic model
# does. (Re-posting from the leader would race with CancelIoEx(socket, NULL):
# a receive re-posted just after the cancel ran would never complete.)
# The read claims the receive (iocpx_claim): abort_by_close() may have closed
# the socket first (cancel.pxi).


cdef int recv_submit(IocpBackend be, IoCtx* io) except -1:
    """A zero-byte WSARecv: completes when data (or EOF) is there."""
    be._check_open()
    cdef WSABUF wb
    cdef DWORD flags = 0, got = 0
    cdef int r = SOCKET_ERROR, err = 0
    wb.len = 0
    wb.buf = NULL
    memset(&io.ovl, 0, sizeof(OVERLAPPED))
    io.aux.claim = 0
    if not fails_now(IOCPX_F_SYS_WSARECV, &err):
        r = WSARecv(<SOCKET>io.fd, &wb, 1, &got, &flags, <OVERLAPPED*>&io.ovl, NULL)
        if r != 0:
            err = WSAGetLastError()
    return be._submitted(io, r == 0, got, err)


cdef inline void recv_finish(IocpBackend be, IoCtx* io, int ok, DWORD err, Event* ev) noexcept nogil:
    """The zero-byte receive completed: read what is there (the leader)."""
    cdef long r
    cdef int fault = 0
    if not ok:
        ev.res = win_errno(err)
        return
    if not iocpx_claim(&io.aux.claim, CLAIM_READ):
        ev.res = -E_CANCELED            # abort_by_close() closed the socket
        return
    if fails_now(IOCPX_F_SYS_RECV, &fault):     # readiness that was not: re-armed
        ev.res = -E_NOBUFS
        return
    r = recv_heap(&be.blocks, io.fd, be.sizes[io.group] if io.group < be.ngroups else 4096,
                  &ev.data, &ev.flags)
    if r > 0:
        ev.res = <int32_t>r
    elif r == 0:
        ev.res = 0                          # EOF
    elif r == -2:
        ev.res = -E_NOBUFS                  # out of memory: the engine arms the receive again
    else:
        err = WSAGetLastError()
        # nothing to read after all: ENOBUFS makes the engine post the receive again
        ev.res = -E_NOBUFS if err == <DWORD>WSAEWOULDBLOCK else win_errno(err)
