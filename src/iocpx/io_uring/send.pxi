# Sending on io_uring: one IORING_OP_SEND per send, queued as an SQE and
# submitted with the next io_uring_enter (one per batch); sends of at least
# SYNC_SEND_MIN bytes are tried with send() first (Backend.sync_send).


cdef inline int send_submit(IoUringBackend be, IoCtx* io) except -1:
    cdef io_uring_sqe* sqe = be._sqe()
    sqe.opcode = IORING_OP_SEND
    sqe.fd = io.fd
    sqe.addr = <uint64_t><size_t>io.buf
    sqe.len = <uint32_t>(io.len if io.len < 0x7fff0000 else 0x7fff0000)
    sqe.msg_flags = MSG_NOSIGNAL | MSG_WAITALL
    be._push(sqe, io)
    return 0
