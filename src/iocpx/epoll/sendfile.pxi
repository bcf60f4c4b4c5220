# sendfile on epoll: sendfile(2) at once when submitted, the rest when the
# socket is writable (the op waits in the send slot, like a send); each
# result goes to the ready list.

cdef struct FileSend:       # IoCtx.extra of a sendfile op (freed by io_free)
    int file_fd
    long offset
    uint32_t nbytes


cdef int sendfile_submit(EpollBackend be, IoCtx* io, int file_fd, int64_t offset, uint32_t nbytes) except -1:
    cdef FileSend* fs
    if io.extra == NULL:
        io.extra = NULL if IOCPX_FAULT(IOCPX_F_ALLOC_SENDFILE) else malloc(sizeof(FileSend))   # freed by io_free
        if io.extra == NULL:
            raise MemoryError()
    fs = <FileSend*>io.extra
    fs.file_fd = file_fd
    fs.offset = offset
    fs.nbytes = nbytes
    iocpx_mutex_lock(&be.mu)
    try:
        if sendfile_try(be, io) == 0:
            be._arm_out(io, 0)
    finally:
        iocpx_mutex_unlock(&be.mu)
    return 0


cdef int sendfile_try(EpollBackend be, IoCtx* io) noexcept nogil:
    """1 when the op completed (queued as ready), 0 when it must wait."""
    cdef FileSend* fs = <FileSend*>io.extra
    cdef long off = fs.offset
    cdef ssize_t n
    if IOCPX_FAULT(IOCPX_F_SYS_SENDFILE):
        return 0                # EAGAIN: wait for EPOLLOUT
    n = c_sendfile(io.fd, fs.file_fd, &off, fs.nbytes)
    if n >= 0:
        be._ready(io, <int>n, 0)
        return 1
    if errno == EAGAIN or errno == EWOULDBLOCK or errno == EINTR:
        return 0
    be._ready(io, -errno, 0)
    return 1
