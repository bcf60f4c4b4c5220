# Connecting on io_uring: one IORING_OP_CONNECT to io.addr (or an AF_UNIX
# path kept out of line in io.extra, see io_target).


cdef inline int connect_submit(IoUringBackend be, IoCtx* io) except -1:
    cdef io_uring_sqe* sqe = be._sqe()
    sqe.opcode = IORING_OP_CONNECT
    sqe.fd = io.fd
    sqe.addr = <uint64_t><size_t>io_target(io)     # io.addr, or an AF_UNIX path in io.extra
    sqe.off = io.addrlen
    be._push(sqe, io)
    return 0
