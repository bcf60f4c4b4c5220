# Receiving on io_uring: one multishot IORING_OP_RECV per connection, into a
# provided-buffer pool (buffers.pxi): each completion carries a piece of a
# buffer (EV_BUFFER, its id in the flags), copied out at dispatch by
# recv_bytes/recv_copy, which give the piece back. A receive the kernel ends
# for want of buffers (-ENOBUFS) makes the pool grow; the engine re-arms it.


cdef inline int recv_submit(IoUringBackend be, IoCtx* io) except -1:
    cdef io_uring_sqe* sqe = be._sqe()
    sqe.opcode = IORING_OP_RECV
    sqe.fd = io.fd
    sqe.ioprio = IORING_RECV_MULTISHOT
    sqe.flags = IOSQE_BUFFER_SELECT
    sqe.buf_group = io.group
    be._push(sqe, io)
    return 0


cdef inline void recv_release_io_uring(IoUringBackend be, Event* ev) noexcept:
    """The event's bytes were read in place (an asyncio BufferedProtocol): the
    piece goes back as recv_bytes would give it."""
    cdef BufGroup* g = &be.groups[ev.io.group]
    if not (ev.flags & EV_BUFFER):
        if ev.res == -ENOBUFS:
            pool_starved(g)
        return
    pool_release_piece(g, <uint16_t>(ev.flags >> EV_BUFFER_SHIFT))


cdef inline object recv_bytes_io_uring(IoUringBackend be, Event* ev):
    """The bytes a receive completion carried (None if none); its piece
    of buffer is released. Must be called for every recv event (or
    recv_copy). A receive the kernel ended for want of buffers grows the pool."""
    if not (ev.flags & EV_BUFFER):
        recv_release_io_uring(be, ev)
        return None
    data = PyBytes_FromStringAndSize(<char*>ev.data, ev.res) if ev.res > 0 else None
    recv_release_io_uring(be, ev)
    return data


cdef inline Py_ssize_t recv_copy_io_uring(IoUringBackend be, Event* ev, char* dst) except -1:
    cdef Py_ssize_t n = ev.res if ev.res > 0 else 0
    if not (ev.flags & EV_BUFFER):
        recv_release_io_uring(be, ev)
        return 0
    memcpy(dst, ev.data, n)
    recv_release_io_uring(be, ev)
    return n
