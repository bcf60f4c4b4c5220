# Accepting on io_uring: one IORING_OP_ACCEPT per pre-posted accept; the
# completion's res is the new socket, the peer is written into io.addr.


cdef inline int accept_submit(IoUringBackend be, IoCtx* io) except -1:
    cdef io_uring_sqe* sqe = be._sqe()
    sqe.opcode = IORING_OP_ACCEPT
    sqe.fd = io.fd
    io.addrlen = sizeof(io.addr)
    sqe.addr = <uint64_t><size_t>&io.addr
    sqe.addr2 = <uint64_t><size_t>&io.addrlen
    sqe.accept_flags = SOCK_CLOEXEC
    be._push(sqe, io)
    return 0
