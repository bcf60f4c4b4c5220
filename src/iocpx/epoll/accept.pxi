# Accepting on epoll: an accept is queued on its listener (FdState's accept
# list, linked through IoCtx.aux.next_accept: a listener has many) and EPOLLIN
# is registered while any is queued; on readiness the leader runs accept4()
# for as many queued accepts as the socket has connections.


cdef int accept_submit(EpollBackend be, IoCtx* io) except -1:
    cdef FdState* st = be._locked_state(io.fd)
    cdef IoCtx* prev = st.acc_tail
    cdef int r
    io.aux.next_accept = NULL
    if st.acc_tail != NULL:
        st.acc_tail.aux.next_accept = io
    else:
        st.acc_head = io
    st.acc_tail = io
    r = be._interest(io.fd, st)
    if r < 0:                   # epoll refused (ENOMEM): unqueue it, it ends with that error
        st.acc_tail = prev
        if prev != NULL:
            prev.aux.next_accept = NULL
        else:
            st.acc_head = NULL
        be._ready(io, r, 0)
    iocpx_mutex_unlock(&be.mu)
    return 0


cdef int accept_ready(EpollBackend be, int fd, FdState* st, Event* out, int room) noexcept nogil:
    """(Leader, mu held) accept4() for the queued accepts: an event each."""
    cdef int n = 0, s
    cdef IoCtx* io
    while st.acc_head != NULL and n < room:
        io = st.acc_head
        io.addrlen = sizeof(io.addr)
        if IOCPX_FAULT(IOCPX_F_SYS_ACCEPT):
            s = -1
            iocpx_set_errno(ENOBUFS)
        else:
            s = accept4(fd, &io.addr.sa, &io.addrlen, SOCK_NONBLOCK | SOCK_CLOEXEC)
        if s < 0:
            if errno == EAGAIN or errno == EWOULDBLOCK:
                break
            if errno == EINTR:
                continue
            s = -errno
        st.acc_head = io.aux.next_accept
        if st.acc_head == NULL:
            st.acc_tail = NULL
        if s >= 0 and s < be.nfds:
            be.fds[s].pending_err = 0     # a new socket on a reused descriptor number
        ev_set(&out[n], io, s, 0, NULL)
        n += 1
    return n
