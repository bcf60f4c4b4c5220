# The Engine: one completion port (the backend) and its worker threads
# (the model's steps 1, 2 and 10). The pool's logic is in workers.pxi.

cdef enum EngState:
    E_RUNNING = 0
    E_CLOSING = 1
    E_CLOSED = 2

DEFAULT_MAX_SEND = 4 << 20
DEFAULT_DG_MAX_SEND = 4 << 20      # datagram bytes in flight per endpoint (datagram.pxi)

_engines = weakref.WeakSet()


@atexit.register
def _close_engines_at_exit():
    for eng in list(_engines):
        try:
            eng.close(timeout=5)
        except Exception:
            log.exception("iocpx: engine did not close at exit")


@cython.final
cdef class Engine:
    """One completion queue and a pool of worker threads that run callbacks.

    Engine(workers=None, backend=None); workers=None means 2 * os.cpu_count().
    One worker does the I/O loop while callbacks are quick; the others stand
    by and take over when a callback blocks (docs/how-it-works.md, "The worker model").
    """

    def __cinit__(self):
        self.state = E_CLOSED       # until __init__ finishes
        iocpx_mutex_init(&self.mu)
        iocpx_cond_init(&self.home_cv)
        iocpx_cond_init(&self.standby_cv)
        iocpx_cond_init(&self.watch_cv)

    def __init__(self, workers=None, backend=None):
        if workers is None:
            workers = 2 * (os.cpu_count() or 1)
        if isinstance(workers, bool) or not isinstance(workers, int):
            raise TypeError(f"workers must be an int or None, not {type(workers).__name__}")
        if not 1 <= workers <= 1024:
            raise ValueError(f"workers must be in 1..1024, got {workers}")
        self.be = make_backend(backend)
        self.workers = workers
        self._conns = {}
        self._listeners = set()
        self._endpoints = {}
        self.next_id = 1
        self.state = E_RUNNING
        self._threads = []
        for i in range(workers):
            t = threading.Thread(target=self._worker_main, args=(i == 0,),
                                 name=f"iocpx-worker-{i}", daemon=True)
            self._threads.append(t)
            t.start()
        _engines.add(self)

    def __dealloc__(self):
        evq_free(&self.rq)
        free(self.heap)
        iocpx_cond_destroy(&self.watch_cv)
        iocpx_cond_destroy(&self.standby_cv)
        iocpx_cond_destroy(&self.home_cv)
        iocpx_mutex_destroy(&self.mu)

    def __enter__(self):
        self._check_open()
        return self

    def __exit__(self, *exc):
        self.close()

    def _worker_main(self, bint home):
        with nogil:
            workers_run(self, home)

    @property
    def backend(self):
        return self.be.name if self.be is not None else None

    @property
    def closed(self):
        return self.state != E_RUNNING

    def _in_worker(self):
        """True on one of this engine's worker threads (inside a callback)."""
        return iocpx_tls_get() == <void*>self

    cdef int _close_all(self) except -1:
        """Close every listener, abort every connection and endpoint (close())."""
        for lst in list(self._listeners):
            listener_close_async(<Listener>lst)
        for conn in list(self._conns.values()):
            (<Connection>conn)._abort(None)
        for ep in list(self._endpoints.values()):
            dgram_abort(<Endpoint>ep, None)
        self._kick()
        return 0

    cdef int _check_open(self) except -1:
        if self.state != E_RUNNING:
            raise _closed_error("engine")
        return 0

    cdef int64_t _take_id(self):
        cdef int64_t i = self.next_id
        self.next_id += 1
        return i

    cdef void _flush(self) noexcept:
        try:
            self.be.flush()
        except BaseException:
            engine_fault(self)
            log.exception("iocpx: submitting queued operations failed")

    cdef void _kick(self) except *:
        """Submit now, unless this thread is one of our workers (then the
        end of its batch submits everything in one call)."""
        if iocpx_tls_get() != <void*>self:
            self.be.flush()

    # ---- public API -------------------------------------------------------

    def listen(self, address=None, *, on_accept=None, on_recv=None, on_close=None,
               get_buffer=None, on_recv_into=None, accepts=None, first_data=False, first_data_timeout=10.0,
               buffer_size=4096, backlog=None, nodelay=True, on_drain=None,
               max_send_buffer=DEFAULT_MAX_SEND, idle_timeout=None, reuse_port=False,
               sock=None, unlink_existing=False, ssl=None, ssl_handshake_timeout=60.0):
        """Bind and listen on address ((host, port); port 0 picks one) and keep
        `accepts` accepts pre-posted. With first_data=True a connection is
        delivered only with its first bytes, and one that stays silent for
        first_data_timeout seconds (None: no limit) is closed unseen.
        reuse_port=True sets SO_REUSEPORT so several processes can share the
        port. Returns a Listener.

        address may be a Unix socket path ("/run/app.sock"; "\\0name" for
        Linux's abstract namespace): an existing socket file makes it fail
        with EADDRINUSE unless unlink_existing=True, and the listener removes
        its file when it closes. sock= instead of an address takes over a
        bound (maybe listening) stream socket made elsewhere, a socket.socket
        or a descriptor (systemd's LISTEN_FDS): the engine owns it from then
        on, as after sock.detach().

        ssl=an ssl.SSLContext (server side) serves TLS: on_accept runs once
        the handshake is done (with first_data=True, with the first decrypted
        bytes); a handshake not done within ssl_handshake_timeout seconds, or
        failing, closes the connection unseen.

        get_buffer= and on_recv_into=, in place of on_recv=, receive into the
        application's buffers: get_buffer(conn, sizehint) returns a writable
        buffer (bytearray, memoryview...), the bytes are copied into it and
        on_recv_into(conn, nbytes) says how many landed (as asyncio's
        BufferedProtocol). No bytes object is made for them; on_accept still
        gets first data as bytes."""
        _check_recv_into(on_recv, get_buffer, on_recv_into)
        cdef Listener lst = listener_open(
            self, address, on_accept, on_recv, on_close, accepts, first_data,
            first_data_timeout, buffer_size, backlog, nodelay, on_drain, max_send_buffer,
            idle_timeout, reuse_port, sock, unlink_existing, ssl, ssl_handshake_timeout)
        lst.get_buffer = get_buffer         # (set before any accept can be dispatched:
        lst.on_recv_into = on_recv_into     # that needs the GIL, held here throughout)
        return lst

    def adopt(self, sock, *, on_recv=None, on_close=None, get_buffer=None, on_recv_into=None,
              on_drain=None, nodelay=True, buffer_size=4096, max_send_buffer=DEFAULT_MAX_SEND,
              idle_timeout=None):
        """Take over a connected stream socket made elsewhere (a socket.socket
        or a descriptor; TCP or Unix) and return its Connection, reading at
        once. The engine owns the descriptor from then on, as after
        sock.detach(): do not close it yourself, close the Connection.
        A closed or listening socket is a ValueError. get_buffer= and
        on_recv_into=: as for listen()."""
        _check_recv_into(on_recv, get_buffer, on_recv_into)
        cdef Connection c = conn_adopt(self, sock, on_recv, on_close, on_drain, nodelay,
                                       buffer_size, max_send_buffer, idle_timeout)
        c.get_buffer = get_buffer
        c.on_recv_into = on_recv_into
        return c

    def connect(self, address, *, on_connect=None, on_recv=None, on_close=None,
                get_buffer=None, on_recv_into=None, nodelay=True, buffer_size=4096, on_drain=None,
                max_send_buffer=DEFAULT_MAX_SEND, idle_timeout=None, local_address=None,
                ssl=None, server_hostname=None, ssl_handshake_timeout=60.0):
        """Start connecting to address; returns the Connection at once.
        on_connect(conn) runs once connected; a failure arrives as
        on_close(conn, exc). Data sent before that is queued.
        local_address=(host, port) binds the socket first. address may be a
        Unix socket path (local_address then a path too, or None). ssl=an
        ssl.SSLContext (client side; True: ssl.create_default_context())
        speaks TLS: on_connect runs after the handshake; server_hostname
        (default: the host of address) is checked as the context says.
        get_buffer= and on_recv_into=: as for listen()."""
        _check_recv_into(on_recv, get_buffer, on_recv_into)
        cdef Connection c = conn_open_connect(
            self, address, on_connect, on_recv, on_close, nodelay, buffer_size, on_drain,
            max_send_buffer, idle_timeout, local_address, ssl, server_hostname,
            ssl_handshake_timeout)
        c.get_buffer = get_buffer
        c.on_recv_into = on_recv_into
        return c

    def datagram(self, local_address=None, remote_address=None, *, on_datagram, on_close=None,
                 on_error=None, buffer_size=65536, reuse_port=False, broadcast=False,
                 max_send_buffer=DEFAULT_DG_MAX_SEND, rcvbuf=None, sndbuf=None):
        """A UDP endpoint bound to local_address and/or connected to
        remote_address ((host, port); IPv4 or IPv6). on_datagram(ep, data,
        addr) runs for each datagram, addr as the socket module gives it;
        on_error(ep, exc) for an ICMP error (a connected endpoint) or a failed
        send, the endpoint going on; on_close(ep, exc) at the end. buffer_size:
        the largest datagram received whole (longer ones are dropped, counted,
        and reported to on_error). rcvbuf/sndbuf set SO_RCVBUF/SO_SNDBUF (None:
        the system's default; the kernel holds datagrams not read yet in the
        first, and drops, counted, what does not fit). Returns an Endpoint
        (datagram.pxi)."""
        return dgram_open(self, local_address, remote_address, on_datagram, on_close, on_error,
                          buffer_size, reuse_port, broadcast, max_send_buffer, rcvbuf, sndbuf)

    def call_later(self, delay, fn, *args):
        """Run fn(*args) on a worker after delay seconds (time.monotonic clock).
        Returns a Timer. Thread-safe."""
        if isinstance(delay, bool) or not isinstance(delay, (int, float)):
            raise TypeError(f"delay must be a number, not {type(delay).__name__}")
        if delay != delay:
            raise ValueError("delay must not be NaN")
        return self._schedule(time.monotonic() + max(0.0, delay), fn, args)

    def call_at(self, when, fn, *args):
        """Run fn(*args) on a worker once time.monotonic() >= when. Returns a
        Timer. Thread-safe."""
        if isinstance(when, bool) or not isinstance(when, (int, float)):
            raise TypeError(f"when must be a number, not {type(when).__name__}")
        if when != when:
            raise ValueError("when must not be NaN")
        return self._schedule(when, fn, args)

    def call_soon(self, fn, *args):
        """Run fn(*args) on a worker as soon as possible, after the ones
        already scheduled. Returns a Timer. Thread-safe."""
        return self._schedule(time.monotonic(), fn, args)

    def _schedule(self, double when, fn, tuple args):
        if not callable(fn):
            raise TypeError(f"fn must be callable, not {type(fn).__name__}")
        self._check_open()
        cdef Timer t = timer_new(self, when, fn, args, False)
        timers_push(self, t)
        return t

    def stats(self):
        """Counters: connections, bytes, pending operations, live contexts."""
        if self._endpoints:
            for ep in list(self._endpoints.values()):
                dgram_sync_drops(<Endpoint>ep)      # the kernel's drops so far
        return {
            "backend": self.be.name if self.be is not None else None,
            "workers": self.workers,
            "connections": len(self._conns) if self._conns is not None else 0,
            "accepted": self.n_accepted,
            "connected": self.n_connected,
            "adopted": self.n_adopted,
            "closed": self.n_closed,
            "bytes_in": self.n_bytes_in,
            "bytes_out": self.n_bytes_out,
            "bytes_dropped": self.n_bytes_dropped,
            "messages_in": self.n_msgs_in,
            "pending_ops": self.inflight,
            "live_io": io_live(),
            "listeners": len(self._listeners) if self._listeners is not None else 0,
            "endpoints": len(self._endpoints) if self._endpoints is not None else 0,
            "datagrams_in": self.n_dg_in,
            "datagrams_out": self.n_dg_out,
            "datagrams_dropped": self.n_dg_dropped,
            "accept_errors": self.n_accept_errors,
            "first_data_timeouts": self.n_first_data_timeouts,
            "idle_timeouts": self.n_idle_timeouts,
            "timers": self.heap_len,
            "timers_fired": self.n_timers_fired,
            "tls_handshakes": self.n_tls_handshakes,
            "tls_handshake_timeouts": self.n_tls_timeouts,
            "tls_handshake_errors": self.n_tls_errors,
            "rescues": IOCPX_LOAD_I64(&self.n_rescues),     # the watcher adds to it (nogil)
            "internal_errors": self.n_errors,
            "receive_pools": self.be.pools() if hasattr(self.be, "pools") else None,
            "receive_blocks": block_count(&self.be.blocks) if self.be is not None else 0,
            "closing": self.state == E_CLOSING,
            "closed_engine": self.state == E_CLOSED,
        }

    def close(self, timeout=None):
        """Close every listener and connection, cancel and reap every pending
        operation, wake each worker with an exit packet and join it. Pending
        timers are dropped. Raises TimeoutError if that takes longer than
        timeout seconds (the engine then stays closing; call close() again)."""
        if self.state == E_CLOSED:
            return
        if iocpx_tls_get() == <void*>self:
            raise RuntimeError("Engine.close() cannot run inside one of its own callbacks")
        if timeout is not None and timeout < 0:
            raise ValueError("timeout must be >= 0 or None")
        deadline = None if timeout is None else time.monotonic() + timeout
        self.state = E_CLOSING
        timers_clear(self)
        self._close_all()
        delay = 0.0005
        while self.inflight > 0 or self._conns or self._listeners or self._endpoints:
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"Engine.close(): {self.inflight} operations still pending")
            time.sleep(delay)
            delay = min(delay * 2, 0.01)
            if delay == 0.01:
                # a listen(), connect() or datagram() that checked the engine before close()
                # began may have registered its socket after the sweep (they release the GIL
                # to resolve and bind): sweep again; closing what is closing already is a no-op
                self._close_all()
        timers_clear(self)
        if self._threads:
            with nogil:
                iocpx_mutex_lock(&self.mu)
                self.exiting = 1
                _wake_all(self)
                iocpx_mutex_unlock(&self.mu)
        cdef IoCtx* io
        for _ in self._threads:         # the model's exit packets, one per worker
            io = io_alloc_wait(OP_EXIT, None, NULL)     # close must finish: waits for memory
            try:
                self.be.submit_post(io)
            except BaseException:
                io_free(io)
                raise
        self.be.flush()
        for t in self._threads:
            t.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
            if t.is_alive():
                raise TimeoutError("Engine.close(): a worker is still running a callback")
        self._threads = []
        while self.rq.len > 0:          # wake-ups that arrived after the last worker left
            io_free(evq_peek(&self.rq).io)
            evq_drop(&self.rq)
        self.be.release()
        self.state = E_CLOSED
        _engines.discard(self)

    cdef int64_t _idle_ticks(self, object idle_timeout) except -1:
        """idle_timeout (seconds or None) in sweeper ticks; starts the sweeper."""
        cdef double secs = _check_seconds(idle_timeout, "idle_timeout", True)
        if secs == 0:
            return 0
        if self.sweeper is None:
            self.sweeper = timer_new(self, time.monotonic() + SWEEP_MS / 1000.0,
                                     self._sweep, (), True)
            timers_push(self, <Timer>self.sweeper)
        return max(1, int(secs * 1000 / SWEEP_MS + 0.5))

    def _sweep(self):
        """Every SWEEP_MS: close connections idle past their idle_timeout."""
        cdef Connection c
        self.sweeper = None
        if self.state != E_RUNNING:
            return
        self.tick += 1
        for conn in list(self._conns.values()):
            c = <Connection>conn
            # > not >=: the last activity may have come just before the tick it
            # is stamped with, so one more tick makes sure of idle_timeout
            if c.idle_ticks and self.tick - c.last_tick > c.idle_ticks and c.state <= C_CLOSING \
                    and not c.first_pending:
                self.n_idle_timeouts += 1
                c._abort(TimeoutError(_errno.ETIMEDOUT,
                                      f"idle for {c.idle_ticks * SWEEP_MS / 1000:g} s (idle_timeout)"))
        self.sweeper = timer_new(self, time.monotonic() + SWEEP_MS / 1000.0, self._sweep, (), True)
        timers_push(self, <Timer>self.sweeper)


# ---- the engine of an asyncio loop (loop/core.pxi) ---------------------------
# No worker threads: the loop's thread waits and dispatches (LoopCore._run_once),
# so nothing here may wait for a worker; closing drives the completions itself.

cdef Engine engine_for_loop(object backend):
    cdef Engine eng = Engine.__new__(Engine)
    eng.be = make_backend(backend)
    eng.workers = 0
    eng._conns = {}
    eng._listeners = set()
    eng._endpoints = {}
    eng._threads = []
    eng.next_id = 1
    eng.state = E_RUNNING
    return eng


cdef int engine_close_loop(Engine eng, double timeout) except -1:
    """Close a loop's engine from the loop's thread (the loop is not running):
    abort everything, then wait for and run the completions until every
    operation is reaped (timeout seconds at most: past that the backend is
    released anyway and what the kernel still holds is leaked, with a warning,
    rather than hang)."""
    cdef Event batch[256]
    cdef int n, i
    cdef double deadline
    if eng.state == E_CLOSED:
        return 0
    eng.state = E_CLOSING
    timers_clear(eng)
    deadline = time.monotonic() + timeout
    iocpx_tls_set(<void*>eng)
    try:
        eng._close_all()
        while eng.inflight > 0 or eng._conns or eng._listeners or eng._endpoints:
            if time.monotonic() > deadline:
                log.warning("iocpx: loop engine closed with %d operations still pending",
                            eng.inflight)
                break
            eng.be.flush()
            with nogil:
                n = eng.be.wait(batch, 256, 10)
            for i in range(n if n > 0 else 0):
                handle_event(eng, &batch[i], 1)
            if n <= 0:
                eng._close_all()        # registered after the first sweep
    finally:
        iocpx_tls_set(NULL)
    timers_clear(eng)
    eng.be.release()
    eng.state = E_CLOSED
    return 0
