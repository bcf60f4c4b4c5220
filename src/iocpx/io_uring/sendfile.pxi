# sendfile on io_uring: splice through a pipe. OP_SENDFILE to the engine;
# here file -> pipe, then pipe -> socket, each step submitted from the
# completion of the one before (by the leader, without the GIL), so the engine
# sees one completion per pipe-load with the bytes that reached the socket.
# The pipe is the op's until it ends, then goes back to the backend's pool
# (empty) or is closed. A connection's cancel marks its ops (the file -> pipe
# step cannot be cancelled through the socket) so that no further step starts.

cdef int sendfile_submit(IoUringBackend be, IoCtx* io, int file_fd, int64_t offset, uint32_t nbytes) except -1:
    """OP_SENDFILE: take a pipe and submit the first step (splice_submit)."""
    cdef SpliceState* st = (NULL if IOCPX_FAULT(IOCPX_F_ALLOC_SENDFILE)
                            else <SpliceState*>calloc(1, sizeof(SpliceState)))   # freed by io_free
    cdef int fds[2]
    if st == NULL:
        raise MemoryError()
    io.extra = st
    st.file_fd = file_fd
    st.sock_fd = io.fd
    st.offset = offset
    st.want = nbytes
    iocpx_mutex_lock(&be.sq_mu)
    if be.npipes > 0:
        be.npipes -= 1
        st.pipe_r = be.pipes[be.npipes][0]
        st.pipe_w = be.pipes[be.npipes][1]
        st.pipe_size = be.pipe_sizes[be.npipes]
        iocpx_mutex_unlock(&be.sq_mu)
    else:
        iocpx_mutex_unlock(&be.sq_mu)
        st.pipe_size = iocpx_pipe_open(fds, PIPE_WANT)
        if st.pipe_size < 0:
            raise oserror(errno, "pipe")
        st.pipe_r = fds[0]
        st.pipe_w = fds[1]
    iocpx_mutex_lock(&be.sq_mu)
    st.next = be.splices
    if be.splices != NULL:
        be.splices.prev = st
    be.splices = st
    iocpx_mutex_unlock(&be.sq_mu)
    if splice_submit(be, io, st) < 0:
        splice_end(be, st)
        raise OSError(EBUSY, "io_uring submission queue stays full")
    return 0

cdef int splice_submit(IoUringBackend be, IoCtx* io, SpliceState* st) noexcept nogil:
    """Submit the next splice of st: file -> pipe, or pipe -> socket."""
    cdef io_uring_sqe* sqe = be._slot_nogil()
    cdef uint32_t n
    if sqe == NULL:
        return -1
    sqe.opcode = IORING_OP_SPLICE
    sqe.splice_flags = SPLICE_F_MOVE
    if st.phase == SPLICE_IN:
        n = st.want - st.moved
        if n > <uint32_t>st.pipe_size:
            n = <uint32_t>st.pipe_size
        sqe.fd = st.pipe_w
        sqe.off = <uint64_t>-1
        sqe.splice_fd_in = st.file_fd
        sqe.splice_off_in = <uint64_t>st.offset
        sqe.len = n
    else:
        sqe.fd = st.sock_fd
        sqe.off = <uint64_t>-1
        sqe.splice_fd_in = st.pipe_r
        sqe.splice_off_in = <uint64_t>-1
        sqe.len = st.in_pipe
    be._push(sqe, io)
    return 0

cdef int splice_step(IoUringBackend be, IoCtx* io, int res, int* result) noexcept nogil:
    """A splice of an OP_SENDFILE completed. 1 when the op is over (result:
    what the engine sees: bytes moved, 0 at the end of the file, or -errno),
    0 when the next step was submitted."""
    cdef SpliceState* st = <SpliceState*>io.extra
    if res < 0:
        result[0] = <int>st.moved if st.moved > 0 else res     # (cancelled too: what went out counts)
    elif st.phase == SPLICE_IN:
        if res == 0:
            result[0] = <int>st.moved       # the file ended
        else:
            st.in_pipe = res
            st.offset += res
            st.phase = SPLICE_OUT
            if not st.cancelled and splice_submit(be, io, st) == 0:
                return 0
            result[0] = -ECANCELED if st.cancelled else -EBUSY
    else:
        if res == 0:
            result[0] = <int>st.moved if st.moved > 0 else -EPIPE
        else:
            st.in_pipe -= res
            st.moved += res
            if st.in_pipe == 0:
                result[0] = <int>st.moved   # one pipe-load reached the socket
            elif not st.cancelled and splice_submit(be, io, st) == 0:
                return 0
            else:
                result[0] = -ECANCELED if st.cancelled else -EBUSY
    splice_end(be, st)
    return 1

cdef void splice_end(IoUringBackend be, SpliceState* st) noexcept nogil:
    """The op is over: unlist it; an empty pipe goes back to the pool."""
    iocpx_mutex_lock(&be.sq_mu)
    if st.prev != NULL:
        st.prev.next = st.next
    elif be.splices == st:
        be.splices = st.next
    if st.next != NULL:
        st.next.prev = st.prev
    st.prev = st.next = NULL
    if st.pipe_r >= 0 and st.in_pipe == 0 and be.npipes < PIPE_POOL and be.ring_fd >= 0:
        be.pipes[be.npipes][0] = st.pipe_r
        be.pipes[be.npipes][1] = st.pipe_w
        be.pipe_sizes[be.npipes] = st.pipe_size
        be.npipes += 1
    elif st.pipe_r >= 0:
        c_close(st.pipe_r)
        c_close(st.pipe_w)
    st.pipe_r = st.pipe_w = -1
    iocpx_mutex_unlock(&be.sq_mu)
