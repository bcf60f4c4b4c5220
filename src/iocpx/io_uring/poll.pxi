# Readiness polls (OP_POLL): the asyncio loop's add_reader and add_writer, as a
# one-shot IORING_OP_POLL_ADD on the ring (no second poller, no thread); the
# PL_* bits are POLLIN/POLLOUT/POLLERR/POLLHUP, and res is the revents.


cdef int poll_submit(IoUringBackend be, IoCtx* io) except -1:
    cdef io_uring_sqe* sqe = be._sqe()
    sqe.opcode = IORING_OP_POLL_ADD
    sqe.fd = io.fd
    sqe.poll32_events = <uint32_t>io.len
    be._push(sqe, io)
    return 0
