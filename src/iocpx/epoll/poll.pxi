# Readiness polls (OP_POLL, one-shot or kept armed with POLL_KEEP): the
# asyncio loop's add_reader and add_writer on any descriptor epoll takes. The descriptor's table slot holds
# the armed poll; its interest joins what the slot's other ops need; the
# first matching event completes it with the EPOLL* bits that happened
# (the PL_* bits are EPOLLIN/EPOLLOUT/EPOLLERR/EPOLLHUP).


cdef int poll_submit(EpollBackend be, IoCtx* io) except -1:
    """Arm a poll. A descriptor epoll refuses (a regular file, a closed one)
    completes the op at once with -errno, as io_uring would."""
    cdef FdState* st = be._locked_state(io.fd)
    cdef int r
    if st.poll != NULL:
        iocpx_mutex_unlock(&be.mu)
        raise OSError(EEXIST, f"descriptor {io.fd} is already polled")
    st.poll = io
    r = be._interest(io.fd, st)
    if r < 0:
        st.poll = NULL
        be._interest(io.fd, st)
        be._ready(io, r, 0)
    iocpx_mutex_unlock(&be.mu)
    return 0


cdef inline int poll_ready(EpollBackend be, int fd, FdState* st, uint32_t e,
                           Event* out) noexcept nogil:
    """The poll's event happened (mu held): one completion. A POLL_KEEP poll
    stays in its slot, and so does its interest: the next epoll_wait reports
    the descriptor again while it is ready, with no epoll_ctl in between
    (a one-shot poll costs a DEL and an ADD per event)."""
    cdef IoCtx* io = st.poll
    if io.group & POLL_KEEP:
        ev_set(out, io, <int>(e & (<uint32_t>io.len | EPOLLERR | EPOLLHUP)), EV_MORE, NULL)
        return 1
    ev_set(out, io, <int>(e & (<uint32_t>io.len | EPOLLERR | EPOLLHUP)), 0, NULL)
    st.poll = NULL
    return 1
