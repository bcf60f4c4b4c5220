# Readiness polls (OP_POLL, one-shot): the asyncio loop's add_reader and
# add_writer on any descriptor epoll takes. The descriptor's table slot holds
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
    """The poll's event happened (mu held): one completion."""
    ev_set(out, st.poll, <int>(e & (<uint32_t>st.poll.len | EPOLLERR | EPOLLHUP)), 0, NULL)
    st.poll = NULL
    return 1
