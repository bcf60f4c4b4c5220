# Receiving on epoll: the connection's receive sits in its descriptor's recv
# slot while EPOLLIN is registered; on readiness the leader reads what the
# socket has into a heap block (recv_heap, _backend.pxd) and hands it over as
# a data event (EV_MORE: the receive stays armed). Bounded: once MAX_UNREAD of
# its data events wait for dispatch EPOLLIN is dropped, until recv_consumed()
# says one was taken, so a slow callback throttles its own peer.


cdef int recv_submit(EpollBackend be, IoCtx* io) except -1:
    cdef FdState* st = be._locked_state(io.fd)
    cdef int r
    io.aux.unread = 0           # data events not yet consumed by recv_bytes
    if st.pending_err:          # reset right after the connect: say so, as io_uring would
        be._ready(io, -st.pending_err, 0)
        st.pending_err = 0
        iocpx_mutex_unlock(&be.mu)
        return 0
    st.recv = io
    r = be._interest(io.fd, st)
    if r < 0:                   # epoll refused (ENOMEM): the receive ends with that error
        st.recv = NULL
        be._ready(io, r, 0)
    iocpx_mutex_unlock(&be.mu)
    return 0


cdef int recv_ready(EpollBackend be, int fd, FdState* st, Event* out) noexcept nogil:
    """(Leader, mu held) one read into a heap block: 1 event, or 0 (nothing
    there yet, or out of memory: EPOLLIN stays and it is tried again)."""
    cdef IoCtx* io = st.recv
    cdef void* buf = NULL
    cdef long r
    if IOCPX_FAULT(IOCPX_F_SYS_RECV):
        return 0                # readiness that was not (EAGAIN): EPOLLIN stays
    r = recv_heap(fd, be.sizes[io.group], &buf)
    if r > 0:
        io.aux.unread += 1
        ev_set(out, io, <int>r, EV_MORE, buf)
        return 1
    if r == -2 or (r < 0 and (errno == EAGAIN or errno == EWOULDBLOCK or errno == EINTR)):
        return 0                # out of memory: EPOLLIN stays, we try again
    st.recv = NULL              # EOF or error: the receive ends here
    ev_set(out, io, 0 if r == 0 else -errno, 0, NULL)
    return 1


cdef void recv_consumed_epoll(EpollBackend be, Event* ev) noexcept:
    """A data event was taken: the receive may read again."""
    cdef IoCtx* io = ev.io
    cdef FdState* st
    iocpx_mutex_lock(&be.mu)
    io.aux.unread -= 1
    if io.fd < be.nfds:
        st = &be.fds[io.fd]
        if st.recv == io:
            be._interest(io.fd, st)
    iocpx_mutex_unlock(&be.mu)
