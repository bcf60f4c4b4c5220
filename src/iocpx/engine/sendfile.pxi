# sendfile (the model's step 13, TransmitFile): a file queued in order with
# send(), moved by the kernel. Every backend takes the same OP_SENDFILE: iocp
# calls TransmitFile, epoll sendfile(2), io_uring splices through a pipe of
# its own; each completion says how many bytes went out.

cdef enum:
    SENDFILE_CHUNK = 0x40000000     # bytes asked for per OP_SENDFILE at most


@cython.final
cdef class FileJob:
    """A queued sendfile: the kernel moves `remaining` bytes from fd at offset."""

    @property
    def offset(self):
        """The file offset of the next byte to send (what went out so far)."""
        return self.offset

    cdef void finish(self) noexcept:
        if self.owned and self.fd >= 0:
            os.close(self.fd)
        self.fd = -1


cdef object conn_sendfile(Connection c, object file, object offset, object count,
                          bint want_job=False):
    """Connection.sendfile(): the bytes queued (want_job: the FileJob, whose
    offset then tracks what went out, or None when nothing was queued)."""
    conn_check_usable(c)
    for name, v in (("offset", offset), ("count", count)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int)):
            raise TypeError(f"{name} must be an int, not {type(v).__name__}")
    if offset < 0:
        raise ValueError(f"offset must be >= 0, got {offset}")
    if count is not None and count < 0:
        raise ValueError(f"count must be >= 0 or None, got {count}")
    cdef FileJob job = FileJob.__new__(FileJob)
    job.fd = -1
    if isinstance(file, (str, bytes, os.PathLike)):
        job.fd = os.open(file, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0))
    elif isinstance(file, int) and not isinstance(file, bool):
        job.fd = os.dup(file)           # our own descriptor: the caller may close theirs
    elif hasattr(file, "fileno"):
        job.fd = os.dup(file.fileno())
    else:
        raise TypeError(f"sendfile() takes a path, a file object or a descriptor, not {type(file).__name__}")
    job.owned = 1
    try:
        size = os.fstat(job.fd).st_size
        if count is None:
            count = max(0, size - offset)
    except BaseException:
        job.finish()
        raise
    job.offset = offset
    job.remaining = count
    if count == 0:
        job.finish()
        return None if want_job else 0
    if c.state >= C_ABORTING:           # the peer broke it: on_close will say so
        job.finish()
        c.eng.n_bytes_dropped += count
        return None if want_job else count
    conn_reserve(c, count)
    if c.sendq is None:
        c.sendq = deque()
    c.sendq.append(job)
    if c.send_io == NULL and c.state != C_CONNECTING:
        conn_send_safe(c)               # queued: a failure ends the connection, not this call
    c.eng._kick()
    return job if want_job else count


cdef bint conn_sendfile_next(Connection c, FileJob job) except -1:
    """Submit the next piece of job; False when the job is complete."""
    cdef IoCtx* io
    cdef int64_t n
    if job.remaining <= 0:
        return False
    n = job.remaining if job.remaining < SENDFILE_CHUNK else SENDFILE_CHUNK
    io = c._new_io(OP_SENDFILE)
    io_set_obj(io, job)                 # its completion advances job.offset, even after an
    try:                                # abort has dropped the queue (loop.sendfile seeks)
        c.eng.be.submit_sendfile(io, job.fd, job.offset, <uint32_t>n)
    except BaseException:
        c._io_done(io)
        raise
    c.send_io = io
    return True


cdef void conn_on_sendfile(Connection c, Event* ev) except *:
    cdef int res = ev.res
    cdef FileJob job = <FileJob>ev.io.obj if ev.io.obj != NULL else None
    c.send_io = NULL
    if res > 0 and job is not None:
        job.offset += res               # what reached the socket, whatever happens next
        job.remaining -= res
    c._io_done(ev.io)
    if res < 0:
        if res != -_errno.ECANCELED:
            c._abort(peer_error(c.eng.be, -res, "sendfile"))
    elif c.state < C_ABORTING and c.sendq:
        if res == 0:
            c._abort(OSError(_errno.EIO, "sendfile: the file ended before count bytes"))
        else:
            conn_sent(c, res)
    elif res > 0:
        conn_count_sent(c, res)
    if c.state < C_ABORTING:
        conn_send_safe(c)
    if c.sink is not None:
        stream_on_sent(c)               # an asyncio transport: loop.sendfile() waits for this
    c._maybe_finish()
