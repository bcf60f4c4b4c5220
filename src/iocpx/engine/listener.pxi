# Listener: a listening socket bound to the port (the model's step 3) and
# its life cycle. What happens when an accept completes, first data
# included, is in accept.pxi.

cdef enum LState:
    L_OPEN = 0
    L_CLOSING = 1           # accepts cancelled, waiting for their completions
    L_CLOSED = 2

cdef enum:
    BACKOFF_MS = 100        # accept out of descriptors/memory: retry after this


cdef Listener listener_open(Engine eng, object address, object on_accept, object on_recv,
                            object on_close, object accepts, object first_data,
                            object first_data_timeout, object buffer_size, object backlog,
                            object nodelay, object on_drain, object max_send_buffer,
                            object idle_timeout, object reuse_port, object sock=None,
                            object unlink_existing=False, object ssl=None,
                            object ssl_handshake_timeout=60.0):
    """Engine.listen(): check everything, bind, listen, pre-post the accepts.
    address: (host, port), or a Unix socket path (unix.pxi); or sock=, a
    socket made elsewhere (adopt.pxi)."""
    eng._check_open()
    _check_callback(on_accept, "on_accept")
    _check_callback(on_recv, "on_recv")
    _check_callback(on_close, "on_close")
    _check_callback(on_drain, "on_drain")
    max_send = _check_max_send(max_send_buffer)
    cdef double fdt = _check_seconds(first_data_timeout, "first_data_timeout", True)
    idle = eng._idle_ticks(idle_timeout)
    if accepts is None:
        accepts = max(16, 2 * eng.workers)
    if isinstance(accepts, bool) or not isinstance(accepts, int):
        raise TypeError(f"accepts must be an int or None, not {type(accepts).__name__}")
    if not 1 <= accepts <= 4096:
        raise ValueError(f"accepts must be in 1..4096, got {accepts}")
    if backlog is None:
        backlog = _socket.SOMAXCONN
    if isinstance(backlog, bool) or not isinstance(backlog, int):
        raise TypeError(f"backlog must be an int or None, not {type(backlog).__name__}")
    if backlog < 0:
        raise ValueError(f"backlog must be >= 0, got {backlog}")
    size = _check_buffer_size(buffer_size)
    cdef double ssl_secs = 0
    if ssl is not None:
        tls_check_context(ssl, True)
        ssl_secs = _check_seconds(ssl_handshake_timeout, "ssl_handshake_timeout", False)
    cleanup = None
    cdef Listener lst = Listener.__new__(Listener)
    lst.eng = eng
    if sock is not None:
        if address is not None:
            raise TypeError("listen() takes an address or sock=, not both")
        lst.fd, bound, family = adopt_listening(eng.be, sock, backlog)
    elif address is None:
        raise TypeError("listen() needs an address ((host, port) or a Unix socket path) or sock=")
    elif is_unix_address(address):
        lst.fd, bound, cleanup = unix_listen_open(eng.be, unix_name(address), backlog,
                                                  bool(unlink_existing))
        family = IOCPX_AF_UNIX
        try:
            eng.be.adopt(lst.fd)
        except BaseException:
            _sock_close(lst.fd)
            lst.fd = -1
            unix_cleanup(cleanup)
            raise
    else:
        family, sa = _resolve(address, True)
        s = _socket.socket(family, _socket.SOCK_STREAM)
        try:
            s.setsockopt(_socket.SOL_SOCKET, _socket.SO_REUSEADDR, 1)
            if reuse_port:
                if not hasattr(_socket, "SO_REUSEPORT"):
                    raise OSError(_errno.ENOPROTOOPT, "SO_REUSEPORT is not available here")
                s.setsockopt(_socket.SOL_SOCKET, _socket.SO_REUSEPORT, 1)
            s.bind(sa)
            s.listen(backlog)
            bound = s.getsockname()[:2]
        except BaseException:
            s.close()
            raise
        lst.fd = s.detach()
        try:
            eng.be.adopt(lst.fd)
        except BaseException:
            _sock_close(lst.fd)
            lst.fd = -1
            raise
    lst.address = bound
    lst.unix_cleanup = cleanup
    lst.on_accept = on_accept
    lst.on_recv = on_recv
    lst.on_close = on_close
    lst.on_drain = on_drain
    lst.max_send = max_send
    lst.idle_ticks = idle
    lst.first_data = bool(first_data)
    lst.first_data_timeout = fdt
    lst.nodelay = bool(nodelay) and family != IOCPX_AF_UNIX     # no Nagle on Unix sockets
    lst.group = <uint16_t>eng.be.buffer_group(size)
    lst.buffer_size = size
    lst.accepts = accepts
    lst.ssl_ctx = ssl
    lst.ssl_timeout = ssl_secs
    eng._listeners.add(lst)
    try:
        for _ in range(accepts):
            listener_arm(lst)
        if lst.first_data and eng.be.accept_with_data:
            guard_schedule(lst)
    except BaseException:
        lst.close()
        raise
    eng._kick()
    return lst


cdef void listener_io_done(Listener lst, IoCtx* io) noexcept:
    io_free(io)
    lst.inflight -= 1
    lst.eng.inflight -= 1


cdef void listener_on_aux(Listener lst, Event* ev) except *:
    """A cancel (close) completed."""
    listener_io_done(lst, ev.io)
    listener_maybe_finish(lst)


cdef void listener_maybe_finish(Listener lst) noexcept:
    """Close the socket once every accept is reaped. L_CLOSED comes last:
    close() returns when it sees it, and removing a socket file releases the
    GIL (os.stat, os.unlink), so the file must be gone by then."""
    cdef int fd = lst.fd
    if lst.state != L_CLOSING or lst.inflight != 0 or fd < 0:
        return
    lst.fd = -1                         # (and no second pass while the GIL is away)
    if not lst.borrowed:
        _sock_close(fd)
    cleanup = lst.unix_cleanup
    lst.unix_cleanup = None
    unix_cleanup(cleanup)
    lst.eng._listeners.discard(lst)
    lst.state = L_CLOSED


cdef int listener_close_async(Listener lst) except -1:
    """Cancel every accept; the socket closes once they have all completed."""
    if lst.state != L_OPEN:
        return 0
    lst.state = L_CLOSING
    if lst.guard_timer is not None:     # (the first-data deadlines go on: the connections
        (<Timer>lst.guard_timer).cancel()   # it accepted outlive the listener)
    lst.guard_timer = None
    cdef IoCtx* io = io_alloc_wait(OP_CANCEL, lst, NULL)     # else the listener never closes
    try:
        lst.eng.be.submit_cancel_fd(io, lst.fd)
    except BaseException:
        io_free(io)
        raise
    lst.inflight += 1
    lst.eng.inflight += 1
    return 0


@cython.final
@cython.no_gc_clear
cdef class Listener:
    """A listening socket with pre-posted accepts. Made by Engine.listen()."""

    def __cinit__(self):
        self.fd = -1

    def __dealloc__(self):
        if not self.borrowed:
            _sock_close(self.fd)

    @property
    def closed(self):
        return self.state != L_OPEN

    def close(self):
        """Stop accepting: cancel the pending accepts and close the socket.
        Waits (outside callbacks) until the socket is really closed.
        Connections it accepted stay open."""
        if self.state != L_OPEN:
            return
        listener_close_async(self)
        self.eng._kick()
        if iocpx_tls_get() == <void*>self.eng:
            return
        delay = 0.0002
        while self.state != L_CLOSED:
            time.sleep(delay)
            delay = min(delay * 2, 0.01)

    def __repr__(self):
        return f"<iocpx.Listener {self.address!r} {'open' if self.state == L_OPEN else 'closed'}>"
