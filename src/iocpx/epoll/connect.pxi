# Connecting on epoll: connect() at once; EINPROGRESS arms the descriptor's
# connect slot for EPOLLOUT, and SO_ERROR then says how it ended.


cdef int connect_submit(EpollBackend be, IoCtx* io) except -1:
    cdef FdState* st = be._locked_state(io.fd)
    st.pending_err = 0          # a new socket on a reused descriptor number
    try:
        if connect(io.fd, io_target(io), io.addrlen) == 0:
            be._ready_or_raise(io, 0)
        elif errno == EINPROGRESS or errno == EINTR:
            be._arm_out(io, 1)
        else:
            be._ready_or_raise(io, -errno)
    finally:
        iocpx_mutex_unlock(&be.mu)
    return 0


cdef int connect_ready(EpollBackend be, FdState* st, Event* out) noexcept nogil:
    """The connect finished. SO_ERROR also reports a reset that came after
    the connection was made (the peer accepted and reset before we got
    here): that connect succeeded, and the reset belongs to the receive,
    as io_uring and IOCP report it."""
    cdef IoCtx* io = st.conn
    cdef int err = 0
    cdef socklen_t len = sizeof(err)
    if getsockopt(io.fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0:
        err = errno
    st.conn = NULL
    if err == ECONNRESET or err == ECONNABORTED or err == EPIPE:
        st.pending_err = err
        err = 0
    ev_set(out, io, -err, 0, NULL)
    return 1
