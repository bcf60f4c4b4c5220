# Sending on epoll: send() at once when submitted (as uvloop's try-write;
# the engine's try_send goes first, see Backend.sync_send); only what would
# block is armed in the descriptor's send slot and waits for EPOLLOUT.


cdef int send_submit(EpollBackend be, IoCtx* io) except -1:
    cdef ssize_t n
    iocpx_mutex_lock(&be.mu)
    try:
        if IOCPX_FAULT(IOCPX_F_SYS_SEND_EAGAIN):
            n = -1
            iocpx_set_errno(EAGAIN)
        else:
            n = send(io.fd, io.buf, io.len // 2 if io.len > 1 and IOCPX_FAULT(IOCPX_F_SYS_SEND_SHORT)
                     else io.len, MSG_NOSIGNAL | MSG_DONTWAIT)
        if n >= 0:
            be._ready_or_raise(io, <int>n)
        elif errno == EAGAIN or errno == EWOULDBLOCK or errno == EINTR:
            be._arm_out(io, 0)
        else:
            be._ready_or_raise(io, -errno)
    finally:
        iocpx_mutex_unlock(&be.mu)
    return 0


cdef int send_ready(EpollBackend be, FdState* st, Event* out) noexcept nogil:
    """(Leader, mu held) the descriptor is writable: send what waited (a
    stream send, a datagram or a sendfile) or leave it armed."""
    cdef IoCtx* io = st.send
    cdef ssize_t r
    cdef int res
    if io.op == OP_SENDTO:      # a datagram that would have blocked
        if not dgram_send_now(io, &res):
            return 0
        st.send = NULL
        ev_set(out, io, res, 0, NULL)
        return 1
    if io.op != OP_SEND:        # the other op armed for EPOLLOUT: a sendfile
        if sendfile_try(be, io):
            st.send = NULL
        return 0                # its result went to the ready list
    if IOCPX_FAULT(IOCPX_F_SYS_SEND_EAGAIN):
        return 0
    r = send(io.fd, io.buf, io.len // 2 if io.len > 1 and IOCPX_FAULT(IOCPX_F_SYS_SEND_SHORT)
             else io.len, MSG_NOSIGNAL | MSG_DONTWAIT)
    if r < 0 and (errno == EAGAIN or errno == EWOULDBLOCK or errno == EINTR):
        return 0
    st.send = NULL
    ev_set(out, io, <int>r if r >= 0 else -errno, 0, NULL)
    return 1
