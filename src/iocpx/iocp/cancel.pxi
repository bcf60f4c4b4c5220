# Cancelling on Windows: CancelIoEx ends the operations (each completes with
# ERROR_OPERATION_ABORTED), and the cancel op itself completes through a
# posted packet. abort_by_close() ends a silent connection's receive by
# closing its socket instead: one call instead of two.


cdef int cancel_fd(IocpBackend be, IoCtx* io, int fd) except -1:
    """Cancel every operation on the socket; each completes (aborted), and
    so does this one, through a posted packet."""
    be._check_open()
    CancelIoEx(iocpx_sock_handle(<SOCKET>fd), NULL)     # ERROR_NOT_FOUND: none pending
    return be._post(io, 0)


cdef int cancel_op(IocpBackend be, IoCtx* io, IoCtx* target) except -1:
    """Cancel one operation; it completes (aborted), and so does this one."""
    be._check_open()
    if target.op == OP_POLL:
        poll_cancel(be, target)         # poll.pxi: polls are the AFD helper's, not the socket's
    elif target.op == OP_READ or target.op == OP_WRITE or target.op == OP_WAIT:
        handle_cancel(be, target)       # pipes.pxi: a pipe or a wait, not a socket
    else:
        CancelIoEx(iocpx_sock_handle(<SOCKET>target.fd), <OVERLAPPED*>&target.ovl)
    return be._post(io, 0)


cdef int close_abort(IocpBackend be, IoCtx* recv) except -1:
    """Closing a socket ends its pending operations: each completes with
    ERROR_OPERATION_ABORTED (closesocket's documented behaviour), at the
    cost of one call, where CancelIoEx plus the cancel's own packet cost
    two and, under Wine, CancelIoEx walks every pending operation of the
    process (thousands of silent clients expiring made that the
    bottleneck). The socket may only be closed while nobody reads from it:
    a zero-byte receive that has completed is followed by a recv() on its
    socket (recv_finish in receive.pxi, on the leader's thread), so
    whichever comes first claims the receive, and a receive already claimed
    for the read is left to the usual cancel (return 0)."""
    be._check_open()
    if not iocpx_claim(&recv.aux.claim, CLAIM_CLOSED):
        return 0
    closesocket(<SOCKET>recv.fd)
    return 1
