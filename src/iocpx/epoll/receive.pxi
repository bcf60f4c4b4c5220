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
    io.len = 0                  # small messages until a read fills its block
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


cdef enum:
    READ_BLOCKS = 4         # blocks one readiness reads into at most (readv: 256 KiB)


cdef int recv_ready(EpollBackend be, int fd, FdState* st, Event* out, int room) noexcept nogil:
    """(Leader, mu held) one read of what the socket has: data events (one
    per block it filled, at most room; they reach the application as one
    callback), or an EOF/error event, or 0 (nothing there yet, or out of
    memory: EPOLLIN stays and it is tried again).

    Per connection, by what its last read saw: a recv() into one cache
    block while messages are small; once a read fills its block (a large
    message is arriving), one readv() into up to READ_BLOCKS blocks, so a
    large message costs one system call per 256 KiB and leaves in as few
    sends (the engine merges the events into one callback), as a 256 KiB
    read buffer would, without pinning 256 KiB per connection."""
    cdef IoCtx* io = st.recv
    cdef iovec iov[READ_BLOCKS]
    cdef void* blocks[READ_BLOCKS]
    cdef void* data
    cdef int nb = 1, i, n = 0
    cdef uint32_t flags
    cdef long r, part
    if IOCPX_FAULT(IOCPX_F_SYS_RECV):
        return 0                # readiness that was not (EAGAIN): EPOLLIN stays
    if io.len and be.sizes[io.group] <= READ_MIN:
        nb = READ_BLOCKS
        if nb > room:
            nb = room
        if nb > MAX_UNREAD - io.aux.unread:
            nb = MAX_UNREAD - io.aux.unread
    if nb == 1:
        flags = EV_MORE
        r = recv_heap(&be.blocks, fd, be.sizes[io.group], &blocks[0], &flags)
        if r > 0:
            io.len = r >= READ_MIN
            io.aux.unread += 1
            ev_set(out, io, <int>r, flags, blocks[0])
            return 1
    else:
        nb = block_get_n(&be.blocks, blocks, nb)
        for i in range(nb):
            iov[i].iov_base = blocks[i]
            iov[i].iov_len = READ_MIN
        r = readv(fd, iov, nb) if nb > 0 else -2
        if r > 0:
            io.len = r >= READ_MIN
        while r > 0 and n < nb:     # the blocks it filled, in order
            part = r if r < READ_MIN else READ_MIN
            flags = EV_MORE
            data = block_data(&be.blocks, blocks[n], part, &flags)
            ev_set(out + n, io, <int>part, flags, data)
            io.aux.unread += 1
            r -= part
            n += 1
        for i in range(n, nb):      # the blocks it did not need
            block_put(&be.blocks, blocks[i])
        if n > 0:
            return n
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
