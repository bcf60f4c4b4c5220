# Connection: the per-socket context (the model's step 7) and its life cycle:
# connect, close, abort, the one report through on_close. Receiving is in
# receive.pxi, sending in sendq.pxi and sendfile.pxi.

cdef enum ConnState:
    C_CONNECTING = 0
    C_OPEN = 1
    C_CLOSING = 2           # no more reading: finish queued sends, then close
    C_ABORTING = 3          # cancel everything, then close
    C_CLOSED = 4


cdef Connection conn_open_connect(Engine eng, object address, object on_connect, object on_recv,
                                  object on_close, object nodelay, object buffer_size,
                                  object on_drain, object max_send_buffer, object idle_timeout,
                                  object local_address, object ssl=None, object server_hostname=None,
                                  object ssl_handshake_timeout=60.0):
    """Engine.connect(): a socket, then the connect op (ConnectEx, IORING_OP_CONNECT...)."""
    eng._check_open()
    _check_callback(on_connect, "on_connect")
    _check_callback(on_recv, "on_recv")
    _check_callback(on_close, "on_close")
    _check_callback(on_drain, "on_drain")
    size = _check_buffer_size(buffer_size)
    max_send = _check_max_send(max_send_buffer)
    idle = eng._idle_ticks(idle_timeout)
    cdef double ssl_secs = 0
    if ssl is not None:
        if ssl is True:
            ssl = _ssl().create_default_context()
        tls_check_context(ssl, False)
        ssl_secs = _check_seconds(ssl_handshake_timeout, "ssl_handshake_timeout", False)
        if server_hostname is None and not is_unix_address(address):
            server_hostname = _check_address(address)[0]
    elif server_hostname is not None:
        raise ValueError("server_hostname is only meaningful with ssl")
    cdef bytes uname = None, lname = None
    if is_unix_address(address):            # unix.pxi
        family = IOCPX_AF_UNIX
        uname = unix_name(address)
        if local_address is not None:
            if not is_unix_address(local_address):
                raise ValueError(f"local_address {local_address!r} is not a Unix socket path")
            lname = unix_name(local_address)
    else:
        family, sa = _resolve(address, False)
        if local_address is not None:
            lfamily, lsa = _resolve(local_address, True)
            if lfamily != family:
                raise ValueError(f"local_address {local_address!r} is not of the family of {address!r}")
    cdef int fd = eng.be.socket_open(family)
    if lname is not None:
        try:
            unix_fill(eng.be, fd, lname, False, NULL)
        except BaseException:
            _sock_close(fd)
            raise
    elif local_address is not None:
        bs = _socket.socket(family, _socket.SOCK_STREAM, 0, fd)
        try:
            bs.bind(lsa)
        except BaseException:
            bs.close()
            raise
        bs.detach()
    cdef uint16_t group
    try:
        group = <uint16_t>eng.be.buffer_group(size)
    except BaseException:
        _sock_close(fd)
        raise
    cdef Connection c = Connection._new(eng, fd, group, on_recv, on_close, on_drain, max_send,
                                        idle, bool(nodelay) and family != IOCPX_AF_UNIX)
    c.state = C_CONNECTING
    c.surfaced = 1
    c.on_connect = on_connect
    if ssl is not None:
        try:
            c.tls = tls_new(c, ssl, False, server_hostname or None, ssl_secs)
        except BaseException:
            c.state = C_CLOSED
            c.reported = 1
            _sock_close(fd)
            c.fd = -1
            raise
        c.tls.notify_connect = 1
    cdef IoCtx* io = c._new_io(OP_CONNECT)
    try:
        if uname is not None:
            unix_fill(eng.be, fd, uname, True, io)      # the address goes in io.extra
        else:
            io.addrlen = _fill_addr(&io.addr, family, sa)
        eng.be.submit_connect(io)
    except BaseException:
        c._io_done(io)
        c.state = C_CLOSED
        c.reported = 1
        _sock_close(fd)
        c.fd = -1
        raise
    eng._conns[c.id] = c
    eng._kick()
    return c


cdef void conn_on_connect(Connection c, Event* ev) except *:
    c._io_done(ev.io)
    if ev.res < 0:
        if ev.res != -_errno.ECANCELED:
            c._abort(peer_error(c.eng.be, -ev.res, "connect"))
    elif c.state == C_CONNECTING:
        c.state = C_OPEN
        c.eng.n_connected += 1
        conn_established(c, True)
        if c.tls is not None:
            tls_start(c)                # on_connect once the handshake is done
        elif c.state == C_OPEN and c.on_connect is not None:
            c._call(c.on_connect, None)
        if c.state < C_ABORTING:
            conn_send_safe(c)
    c._maybe_finish()


cdef void conn_established(Connection c, bint nodelay_now) noexcept:
    """A connected socket starts its life, whichever way it came: TCP_NODELAY
    (unless the caller defers it: a connection waiting for first data gets it
    when it surfaces), then the receive loop; a receive that cannot be armed
    ends the connection through on_close."""
    if c.nodelay and nodelay_now:
        iocpx_sock_nodelay(c.fd, 1)
    try:
        conn_start_recv(c)
    except BaseException as e:
        c._abort(e)


cdef enum:
    LINGER_MS = 2000        # a graceful close waits this long at most for the peer's FIN


cdef bint conn_linger(Connection c) noexcept:
    """Everything queued is sent and the peer has not shut down its side:
    send FIN and read (discarding) until its FIN, for LINGER_MS at most, as
    nginx's lingering close does. Closing a socket with unread bytes makes
    the kernel send a reset, which destroys the replies still in flight to
    the peer (a pipelining HTTP client would lose them). on_close is
    delivered when the lingering starts: for the application the connection
    is closed; the engine closes the socket when the peer's FIN comes (or
    after LINGER_MS). True if lingering."""
    if iocpx_sock_shutdown_wr(c.fd) != 0:
        return False            # not connected any more: close now
    c.lingering = 1
    try:
        conn_start_recv(c)
        internal_timer(c.eng, LINGER_MS / 1000.0, conn_linger_expire, c)
    except BaseException:
        c.lingering = 0
        if c.recv_io != NULL:   # the receive is armed but no timer: cancel it
            c._abort(None)
            return True
        return False
    return True


def conn_linger_expire(Connection c):
    """The peer kept its side open past LINGER_MS: close anyway."""
    if c.lingering and c.state == C_CLOSING:
        c._abort(None)


cdef void conn_on_aux(Connection c, Event* ev) except *:
    """A connection's posted packet (close request, on_drain due, held bytes
    to deliver) or cancel completed."""
    cdef uint8_t op = ev.io.op
    c._io_done(ev.io)
    if op == OP_NOP and c.held_posted:
        conn_deliver_held(c)
    if c.state < C_ABORTING:
        conn_check_drain(c)     # a drain found by a synchronous send outside dispatch
    conn_rearm_recv(c)
    c._maybe_finish()


cdef inline void conn_release_pysock(Connection c) noexcept:
    """A socket.socket that shares the descriptor (an asyncio transport's
    socket, see Connection.pysock) lets go of it before the engine closes it,
    so that it can never close the number again once it is reused."""
    if c.pysock is not None:
        try:
            c.pysock.detach()
        except BaseException:
            pass
        c.pysock = None


cdef inline int conn_check_usable(Connection c) except -1:
    """Raise only for the application's own race: it closed the connection,
    or on_close was delivered. A failure the peer caused and on_close has not
    reported yet is not the caller's error: its calls become no-ops."""
    if c.user_closed or c.reported:
        raise _closed_error("connection")
    return 0


@cython.final
@cython.no_gc_clear
cdef class Connection:
    """One stream connection (TCP or Unix). Made by the engine (accept,
    connect or adopt)."""

    def __cinit__(self):
        self.fd = -1
        self.state = C_CLOSED

    def __dealloc__(self):
        evq_free(&self.sched.backlog)
        if self.fd >= 0:
            conn_release_pysock(self)
        _sock_close(self.fd)

    @staticmethod
    cdef Connection _new(Engine eng, int fd, uint16_t group, object on_recv, object on_close,
                         object on_drain, Py_ssize_t max_send, int64_t idle_ticks, bint nodelay):
        """The one set-up of a connection, however it came (accept, connect,
        adopt): the socket (owned from here on: closed if even this fails),
        the receive buffers, the callbacks and limits every kind has. The
        caller adds what is its own (on_accept / on_connect, the peer, TLS)."""
        cdef Connection c
        try:
            c = Connection.__new__(Connection)
        except BaseException:
            _sock_close(fd)
            raise
        c.eng = eng
        c.fd = fd
        c.group = group
        c.sendq = None                  # a deque once something has to wait
        c.id = eng._take_id()
        c.state = C_OPEN
        c.on_recv = on_recv
        c.on_close = on_close
        c.on_drain = on_drain
        c.max_send = max_send
        c.idle_ticks = idle_ticks
        c.last_tick = eng.tick
        c.nodelay = nodelay
        return c

    cdef IoCtx* _new_io(self, uint8_t op) except NULL:
        cdef IoCtx* io = io_alloc(op, self, &self.sched)
        io.fd = self.fd
        self.inflight += 1
        self.eng.inflight += 1
        return io

    cdef IoCtx* _new_io_wait(self, uint8_t op) except NULL:
        """_new_io for a context that must exist (a cancel, a wake-up): waits
        for memory rather than fail (io_alloc_wait)."""
        cdef IoCtx* io = io_alloc_wait(op, self, &self.sched)
        io.fd = self.fd
        self.inflight += 1
        self.eng.inflight += 1
        return io

    cdef void _io_done(self, IoCtx* io) noexcept:
        io_free(io)
        self.inflight -= 1
        self.eng.inflight -= 1

    cdef int _call(self, fn, arg) noexcept:
        """Run an application callback; an exception is logged (ERROR, with the
        traceback: the application's own fault) and closes this connection."""
        try:
            if arg is None:
                fn(self)
            else:
                fn(self, arg)
        except BaseException as e:
            log.error("iocpx: %s raised; closing connection %d", getattr(fn, "__name__", fn),
                      self.id, exc_info=e)
            self._abort(e)
            return -1
        return 0

    cdef void _abort(self, object exc) noexcept:
        """Close now: drop queued data, cancel every op, report exc to on_close."""
        if self.state >= C_ABORTING:
            return
        if self.close_exc is None:
            self.close_exc = exc
        cdef bint connecting = self.state == C_CONNECTING
        self.state = C_ABORTING
        conn_drop_queue(self)
        try:
            if connecting:
                self._cancel(NULL)          # the connect op: cancel by socket
            else:
                # by op, not by socket: io_uring looks an op up by its address in
                # O(1) but walks every pending op for a socket (thousands of
                # silent clients timing out together made that a stall)
                if self.recv_io != NULL and self.inflight == 1 and not fd_lost(self.close_exc) \
                        and not self.surfaced and self.eng.be.abort_by_close(self.recv_io):
                    # the receive was all there was, and this backend ends it by
                    # closing the socket (iocp): one call. The socket is gone at
                    # once, so only for connections the application never saw
                    # (silent first-data clients timing out, above all)
                    self.fd = -1
                    self.recv_cancel = self.recv_io
                    self.recv_io = NULL
                    return
                if self.recv_io != NULL:
                    self._cancel(self.recv_io)
                    self.recv_cancel = self.recv_io
                    self.recv_io = NULL
                if self.send_io != NULL:
                    self._cancel(self.send_io)
                if self.inflight == 0:
                    # nothing in the kernel (reading paused, a send that failed at
                    # once): a posted completion brings us to _maybe_finish, in
                    # dispatch like every other end
                    self._post_nop()
        except BaseException:
            engine_fault(self.eng)
            log.exception("iocpx: could not cancel the operations of connection %d", self.id)

    cdef int _post_nop(self) except -1:
        """A completion of our own, with no I/O (it ends in conn_on_aux)."""
        cdef IoCtx* io = self._new_io_wait(OP_NOP)
        try:
            self.eng.be.submit_post(io)
        except BaseException:
            self._io_done(io)
            raise
        return 0

    cdef int _cancel(self, IoCtx* target) except -1:
        """Cancel one op of ours (NULL: every op on the socket)."""
        cdef IoCtx* io = self._new_io_wait(OP_CANCEL)
        try:
            if target == NULL:
                self.eng.be.submit_cancel_fd(io, self.fd)
            else:
                self.eng.be.submit_cancel_op(io, target)
        except BaseException:
            self._io_done(io)
            raise
        return 0

    cdef void _maybe_finish(self) noexcept:
        """Close the socket and report on_close once nothing is pending."""
        if self.state < C_CLOSING or self.state == C_CLOSED or self.inflight > 0:
            return
        if self.state == C_CLOSING and (self.send_io != NULL or self.sendq):
            return
        if self.state == C_CLOSING and self.tls is not None and tls_shutdown(self):
            return                      # close_notify on its way
        if self.state == C_CLOSING and not self.peer_eof and not self.lingering \
                and not self.no_linger:
            if conn_linger(self):
                self._report()          # our side is done; the socket lingers unseen
                return
        cdef Engine eng = self.eng
        self.state = C_CLOSED
        if not fd_lost(self.close_exc):     # closed behind our back: not ours to close (adopt.pxi)
            conn_release_pysock(self)
            _sock_close(self.fd)
        self.fd = -1
        conn_drop_queue(self)
        if self.tls is not None:
            tls_release(self)
        if self.silent is not None:
            silent_remove(self)
        eng._conns.pop(self.id, None)
        eng.n_closed += 1
        self._report()

    cdef void _report(self) noexcept:
        """Deliver on_close, once."""
        if self.reported:
            return
        cb = self.on_close
        exc = self.close_exc
        self.on_accept = self.on_recv = self.on_close = self.on_connect = self.on_drain = None
        self.get_buffer = self.on_recv_into = None
        self.close_exc = None
        self.reported = 1
        if exc is not None:
            log.debug("iocpx: connection %d closed: %r", self.id, exc)
        if self.sink is not None:
            stream_on_lost(self, exc)   # an asyncio transport: connection_lost(exc) soon
            return
        if cb is not None and self.surfaced:
            try:
                cb(self, exc)
            except BaseException as e:
                log.error("iocpx: on_close raised for connection %d", self.id, exc_info=e)

    # ---- public API -------------------------------------------------------

    def send(self, data):
        """Queue data (bytes-like) to be sent in order; never blocks. Bytes are
        kept alive until sent, other buffers are copied. Thread-safe.
        If the peer has broken the connection the data is dropped (counted in
        stats()["bytes_dropped"]) and on_close reports why; ConnectionClosedError
        only after the application closed it or on_close was delivered."""
        conn_send(self, data)

    def sendfile(self, file, offset=0, count=None):
        """Queue count bytes of file (a path, a file object or a descriptor)
        from offset, sent by the kernel (TransmitFile, sendfile, splice) in
        order with send(). Returns the number of bytes queued."""
        return conn_sendfile(self, file, offset, count)

    def close(self):
        """Close gracefully: stop reading, send what is queued, then close;
        on_close(conn, None) follows. Idempotent; thread-safe."""
        if self.user_closed:
            return
        self.user_closed = 1
        if self.state >= C_ABORTING:
            return                      # already ending; on_close reports why
        if self.state == C_CONNECTING or (self.tls is not None and self.tls.stage == TLS_HANDSHAKE):
            self._abort(None)           # nothing can be sent before the handshake is done
            self.eng._kick()
            return
        self.state = C_CLOSING
        cdef IoCtx* io
        if not conn_stop_reading(self):
            self._post_nop()            # a completion that brings us to _maybe_finish
        self.eng._kick()

    def abort(self):
        """Close at once, dropping queued data; on_close(conn, None) follows."""
        if self.user_closed and self.state >= C_ABORTING:
            return
        self.user_closed = 1
        self._abort(None)
        self.eng._kick()

    def pause_reading(self):
        """Stop reading from the socket (the kernel's buffer then fills and TCP
        slows the peer down). Data already read may still arrive in a few
        on_recv calls. Thread-safe."""
        conn_check_usable(self)
        if self.state >= C_ABORTING:
            return
        conn_pause(self, PAUSE_USER)
        self.eng._kick()

    def resume_reading(self):
        """Start reading again after pause_reading(). Thread-safe."""
        conn_check_usable(self)
        if self.state >= C_ABORTING:
            return
        conn_resume(self, PAUSE_USER)
        self.eng._kick()

    def start_tls(self, ssl_context, *, server_side, server_hostname=None,
                  ssl_handshake_timeout=60.0):
        """Upgrade this open plain connection to TLS (STARTTLS). What was
        sent before is sent as it was; everything after is encrypted, and
        bytes the peer sent after the upgrade request that were not yet
        delivered (read ahead, held by a pause) go through TLS. Returns at
        once; sends made now are queued until the handshake is done. A
        failed handshake closes the connection (on_close(conn, exc))."""
        tls_upgrade(self, ssl_context, bool(server_side), server_hostname, ssl_handshake_timeout)

    @property
    def ssl_object(self):
        """The ssl.SSLObject of a TLS connection (version(), cipher(),
        getpeercert(), selected_alpn_protocol()...), or None when plain."""
        return self.tls.obj if self.tls is not None else None

    @property
    def reading(self):
        """False while reading is paused (by pause_reading() or a full send buffer)."""
        return self.state == C_OPEN and not self.paused

    @property
    def closed(self):
        """True once close()/abort() was called or the connection ended."""
        return bool(self.user_closed or self.state >= C_ABORTING or
                    (self.state == C_CLOSING and not self.sendq and self.send_io == NULL))

    @property
    def peer(self):
        """The remote (host, port); on a Unix socket its path ("" unnamed)."""
        if self._peer is None:
            if self.have_peer:
                self._peer = _addr_tuple(&self.peer_addr)     # None: not inet (Unix)
            if self._peer is None:
                if self.lingering or self.fd < 0:
                    raise _closed_error("connection")
                self._peer = sock_address(self.eng.be, self.fd, 1)
        return self._peer

    @property
    def local(self):
        """The local (host, port); on a Unix socket its path ("" unnamed)."""
        if self._local is None:
            if self.lingering or self.fd < 0:
                raise _closed_error("connection")
            self._local = sock_address(self.eng.be, self.fd, 0)
        return self._local

    @property
    def engine(self):
        return self.eng

    def __repr__(self):
        states = ("connecting", "open", "closing", "aborting", "closed")
        return f"<iocpx.Connection {self.id} {states[self.state]}>"
