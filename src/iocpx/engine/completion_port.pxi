# CompletionPort: the raw trio of the model, CreateIoCompletionPort,
# PostQueuedCompletionStatus and GetQueuedCompletionStatus, on any backend.

cdef enum:
    PORT_BATCH = 64         # packets one get() takes from the kernel at most
    PORT_CLOSED = -1000000  # _get(): the port was closed (no errno has this value)


@cython.final
cdef class CompletionPort:
    """The raw completion-port trio: post(key, nbytes=0, obj=None) from any
    thread, get(timeout=None) -> (key, nbytes, obj) or None on timeout.
    get() waits with the GIL released; several threads may wait at once."""

    def __cinit__(self, backend=None):
        iocpx_mutex_init(&self.mu)
        iocpx_cond_init(&self.cv)
        self.closed = 1
        self.be = make_backend(backend)
        self.closed = 0

    def __init__(self, backend=None):
        # the work is done in __cinit__; this declares the signature (embedsignature)
        pass

    def __dealloc__(self):
        evq_free(&self.q)
        iocpx_cond_destroy(&self.cv)
        iocpx_mutex_destroy(&self.mu)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @property
    def closed(self):
        return bool(self.closed)

    def post(self, key, nbytes=0, obj=None):
        """Queue a completion packet (key, nbytes, obj)."""
        if isinstance(nbytes, bool) or not isinstance(nbytes, int):
            raise TypeError(f"nbytes must be an int, not {type(nbytes).__name__}")
        if nbytes < 0:
            raise ValueError(f"nbytes must be >= 0, got {nbytes}")
        if self.closed:
            raise _closed_error("completion port")
        cdef IoCtx* io = io_alloc(OP_POST, key, NULL)
        io.aux.post_nbytes = nbytes
        io_set_obj(io, obj)
        try:
            self.be.submit_post(io)
        except BaseException:
            io_free(io)
            raise
        self.be.flush()

    def get(self, timeout=None):
        """Wait for a packet; (key, nbytes, obj), or None after timeout seconds."""
        cdef long ms
        if timeout is None:
            ms = -1
        else:
            if timeout < 0:
                raise ValueError("timeout must be >= 0 or None")
            ms = <long>(timeout * 1000 + 0.999)
        if self.closed:
            raise _closed_error("completion port")
        cdef Event ev
        cdef int r
        self.users += 1
        try:
            with nogil:
                r = self._get(&ev, ms)
        finally:
            self.users -= 1
        if r == 0:
            return None
        if r == PORT_CLOSED:
            raise _closed_error("completion port")
        if r < 0:
            raise oserror(-r, "completion port")
        key = <object>ev.io.owner if ev.io.owner != NULL else None
        obj = <object>ev.io.obj if ev.io.obj != NULL else None
        n = ev.io.aux.post_nbytes
        io_free(ev.io)
        return (key, n, obj)

    cdef int _get(self, Event* out, long ms) noexcept nogil:
        """1 with a packet in out, 0 on timeout, PORT_CLOSED, or -errno."""
        cdef Event batch[PORT_BATCH]
        cdef uint64_t deadline = 0
        cdef uint64_t now
        cdef long left = ms
        cdef int n, i
        if ms >= 0:
            deadline = iocpx_now_ns() + <uint64_t>ms * 1000000
        iocpx_mutex_lock(&self.mu)
        while True:
            while self.q.len > 0:
                out[0] = evq_peek(&self.q)[0]
                evq_drop(&self.q)
                if out[0].io.op == OP_POST:
                    iocpx_mutex_unlock(&self.mu)
                    return 1
                with gil:               # a close() wake-up: not a packet
                    io_free(out[0].io)
            if self.closed:
                iocpx_mutex_unlock(&self.mu)
                return PORT_CLOSED
            if ms >= 0:
                now = iocpx_now_ns()
                if now >= deadline:
                    iocpx_mutex_unlock(&self.mu)
                    return 0
                left = <long>((deadline - now + 999999) // 1000000)
            if not self.harvesting:
                self.harvesting = 1
                iocpx_mutex_unlock(&self.mu)
                n = self.be.wait(batch, PORT_BATCH, left)
                iocpx_mutex_lock(&self.mu)
                self.harvesting = 0
                for i in range(n):
                    while evq_push(&self.q, &batch[i]) < 0:
                        iocpx_mutex_unlock(&self.mu)
                        iocpx_sleep_ms(1)
                        iocpx_mutex_lock(&self.mu)
                if n > 0:
                    iocpx_cond_broadcast(&self.cv)
                elif n < 0:
                    iocpx_mutex_unlock(&self.mu)
                    return n
            else:
                iocpx_cond_wait_ms(&self.cv, &self.mu, left)

    def close(self):
        """Close the port; waiting get() calls raise; unread packets are dropped."""
        if self.closed:
            return
        self.closed = 1
        cdef IoCtx* io = io_alloc_wait(OP_NOP, None, NULL)   # a get() waiting must wake
        try:
            self.be.submit_post(io)     # wakes a get() that waits in the kernel
        except BaseException:
            io_free(io)
        self.be.flush()
        with nogil:
            iocpx_mutex_lock(&self.mu)
            iocpx_cond_broadcast(&self.cv)
            iocpx_mutex_unlock(&self.mu)
        while self.users > 0:
            time.sleep(0.001)
        cdef Event batch[PORT_BATCH]
        cdef int n, i
        while self.q.len > 0:
            io_free(evq_peek(&self.q).io)
            evq_drop(&self.q)
        while True:
            with nogil:
                n = self.be.wait(batch, PORT_BATCH, 0)
            if n <= 0:
                break
            for i in range(n):
                io_free(batch[i].io)
        self.be.release()
