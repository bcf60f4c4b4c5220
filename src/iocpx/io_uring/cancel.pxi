# Cancelling on io_uring: IORING_OP_ASYNC_CANCEL, by socket (every op on it)
# or by op (its address is the user_data). A sendfile's file -> pipe step
# cannot be cancelled through the socket: its ops are marked so that no
# further splice starts (sendfile.pxi).


cdef int cancel_fd(IoUringBackend be, IoCtx* io, int fd) except -1:
    cdef SpliceState* st
    iocpx_mutex_lock(&be.sq_mu)
    st = be.splices           # a file -> pipe step cannot be cancelled by the
    while st != NULL:           # socket: stop the sendfile before its next step
        if st.sock_fd == fd:
            st.cancelled = 1
        st = st.next
    iocpx_mutex_unlock(&be.sq_mu)
    cdef io_uring_sqe* sqe = be._sqe()
    sqe.opcode = IORING_OP_ASYNC_CANCEL
    sqe.fd = fd
    sqe.cancel_flags = IORING_ASYNC_CANCEL_FD | IORING_ASYNC_CANCEL_ALL
    be._push(sqe, io)
    return 0


cdef int cancel_op(IoUringBackend be, IoCtx* io, IoCtx* target) except -1:
    if target.op == OP_SENDFILE and target.extra != NULL:
        iocpx_mutex_lock(&be.sq_mu)
        (<SpliceState*>target.extra).cancelled = 1
        iocpx_mutex_unlock(&be.sq_mu)
    cdef io_uring_sqe* sqe = be._sqe()
    sqe.opcode = IORING_OP_ASYNC_CANCEL
    sqe.addr = <uint64_t><size_t>target
    be._push(sqe, io)
    return 0
