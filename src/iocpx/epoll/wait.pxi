# The completion side on epoll (the leader, without the GIL): completions
# made outside the wait first (the ready list: submits that finished at once,
# cancels, posts), then epoll_wait, whose readiness each descriptor's armed
# ops turn into finished operations (accept.pxi, receive.pxi, send.pxi,
# connect.pxi, datagram.pxi); the eventfd wakes a sleeping leader.
#
# One wait reads about READ_BUDGET bytes of stream data at most: the
# descriptors left over are still ready (level-triggered) and come first in
# the next wait (epoll puts what it reported at the end of its ready list).
# Reading everything that is ready before the callbacks run would stage tens
# of MiB at 100 connections x 1 MiB, so the copy into each callback's bytes
# would come from memory instead of the cache.


cdef int wait_events(EpollBackend be, Event* out, int maxev, long timeout_ms) noexcept nogil:
    cdef epoll_event evs[128]
    cdef int n, k, i, fd, cap, k0
    cdef long ms
    cdef Py_ssize_t budget = READ_BUDGET   # bytes read in this wait, at most (about)
    cdef uint64_t junk
    cdef uint32_t e
    cdef FdState* st
    iocpx_mutex_lock(&be.mu)
    n = evq_take(&be.ready, out, maxev)
    if n > 0:
        iocpx_mutex_unlock(&be.mu)
        return n
    be.in_wait = 1
    iocpx_mutex_unlock(&be.mu)
    cap = maxev if maxev < 128 else 128
    while True:
        ms = block_wait_ms(&be.blocks, timeout_ms)
        k = epoll_wait(be.ep, evs, cap, <int>ms)
        if k != 0 or ms == timeout_ms:
            break
        block_trim(&be.blocks)      # idle for BLOCK_IDLE_MS: the receive blocks go back
        if timeout_ms > 0:
            timeout_ms -= ms
    iocpx_mutex_lock(&be.mu)
    be.in_wait = 0
    n = evq_take(&be.ready, out, maxev)
    if k < 0:
        k = 0
    for i in range(k):
        if n >= maxev:
            break               # level-triggered: the rest is reported again
        if evs[i].data.u64 == WAKE_TAG:
            c_read(be.wake_fd, &junk, 8)
            be.wake_pending = 0
            continue
        fd = <int>evs[i].data.u64
        if fd >= be.nfds:
            continue
        st = &be.fds[fd]
        e = evs[i].events
        if st.poll != NULL and e & (<uint32_t>st.poll.len | EPOLLERR | EPOLLHUP):
            n += poll_ready(be, fd, st, e, out + n)         # poll.pxi
            if n >= maxev:
                be._interest(fd, st)
                break
        if e & (EPOLLIN | EPOLLERR | EPOLLHUP):
            if st.acc_head != NULL:
                n += accept_ready(be, fd, st, out + n, maxev - n)
            elif st.recv != NULL and st.recv.op == OP_RECVFROM:
                n += dgram_read(be, fd, st, out + n, maxev - n)
            elif st.recv != NULL and st.recv.aux.unread < MAX_UNREAD and budget > 0:
                k0 = n
                n += recv_ready(be, fd, st, out + n, maxev - n)
                while k0 < n:
                    budget -= out[k0].res if out[k0].res > 0 else 0
                    k0 += 1
        if n < maxev and e & (EPOLLOUT | EPOLLERR | EPOLLHUP):
            if st.conn != NULL:
                n += connect_ready(be, st, out + n)
            elif st.send != NULL:
                n += send_ready(be, st, out + n)
        be._interest(fd, st)
    n += evq_take(&be.ready, out + n, maxev - n)     # sendfile results queued above
    iocpx_mutex_unlock(&be.mu)
    return n
