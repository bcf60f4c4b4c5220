# Adopted sockets: listen(sock=...) takes a bound (maybe listening) stream
# socket made elsewhere (systemd's LISTEN_FDS, a supervisor, a pre-fork
# parent), Engine.adopt(sock) a connected one. Either way the engine owns the
# descriptor from then on, as after sock.detach(): a socket.socket is
# detached (its close() no longer touches the descriptor), a bare descriptor
# is the engine's to close. What is checked first, so that misuse is a
# ValueError and never a half-adopted socket: that it is an open socket, of
# the right type, listening or connected as the call needs.
#
# A descriptor the application closes behind the engine's back anyway makes
# the next operation fail with EBADF, reported through on_close (see
# peer_error); the engine then cancels its operations by themselves (never
# by the descriptor, which may name another socket by then: io_uring still
# holds the old one for an armed receive) and does not close that number
# again (fd_lost).


cdef int sock_fd(object sock, str what) except? -1:
    """The descriptor of a socket.socket or a bare descriptor (not taken yet)."""
    cdef long fd
    if isinstance(sock, bool):
        raise TypeError(f"{what} takes a socket.socket or a descriptor, not bool")
    if isinstance(sock, int):
        fd = sock
        if fd < 0:
            raise ValueError(f"{what}: {fd} is not a descriptor")
        return <int>fd
    if not (hasattr(sock, "fileno") and hasattr(sock, "detach")):
        raise TypeError(f"{what} takes a socket.socket or a descriptor, not {type(sock).__name__}")
    fd = sock.fileno()
    if fd < 0:
        raise ValueError(f"{what}: the socket is closed")
    return <int>fd


cdef tuple sock_facts(int fd, str what, str unbound):
    """(type, listening, family) of fd; ValueError when it is no open socket,
    or is not bound (Windows has no address for an unbound one: `unbound`
    says what that means to the caller)."""
    cdef int stype = 0, listening = 0, family = 0
    if iocpx_sock_info(fd, &stype, &listening, &family) < 0:
        err = iocpx_last_error()
        raise ValueError(f"{what}: descriptor {fd} is not an open socket "
                         f"({_errno.errorcode.get(err, err)})")
    if stype != _socket.SOCK_STREAM:
        raise ValueError(f"{what} takes a stream socket (SOCK_STREAM); type {stype} given")
    if family == 0:
        raise ValueError(f"{what}: the socket is {unbound}")
    if family not in (_socket.AF_INET, _socket.AF_INET6, IOCPX_AF_UNIX):
        raise ValueError(f"{what}: address family {family} is not served (AF_INET, AF_INET6, AF_UNIX)")
    return stype, listening, family


cdef void sock_take(object sock, int fd) except *:
    """The descriptor becomes the engine's (sock.detach() semantics)."""
    if isinstance(sock, int):
        try:
            os.set_inheritable(fd, False)   # a systemd descriptor: not for our children
        except (OSError, AttributeError, ValueError):
            pass
    else:
        sock.detach()


cdef tuple adopt_listening(Backend be, object sock, int backlog):
    """listen(sock=...): check, listen() if it does not yet, take it.
    Returns (fd, address, family)."""
    cdef int fd = sock_fd(sock, "listen(sock=...)")
    stype, listening, family = sock_facts(fd, "listen(sock=...)", "not bound (bind it first)")
    address = sock_address(be, fd, 0)
    if not listening:
        if address == "" or (isinstance(address, tuple) and address[1] == 0):
            raise ValueError("listen(sock=...): the socket is not bound (bind it first, "
                             "or pass an address instead)")
        if iocpx_sock_listen(fd, backlog) < 0:
            raise be.error(iocpx_last_error(), "listen")
    sock_take(sock, fd)
    try:
        be.adopt(fd)
    except BaseException:
        _sock_close(fd)
        raise
    return fd, address, family


cdef Connection conn_adopt(Engine eng, object sock, object on_recv, object on_close,
                           object on_drain, object nodelay, object buffer_size,
                           object max_send_buffer, object idle_timeout, bint start_recv=True,
                           bint share=False):
    """Engine.adopt(): a connected stream socket becomes a Connection
    (reading at once unless start_recv is false: the asyncio loop starts
    reading once connection_made() has run). share=True (the asyncio loop)
    leaves the socket.socket usable: it shares the descriptor with the
    Connection (Connection.pysock) and is detached when the engine closes it."""
    eng._check_open()
    _check_callback(on_recv, "on_recv")
    _check_callback(on_close, "on_close")
    _check_callback(on_drain, "on_drain")
    size = _check_buffer_size(buffer_size)
    max_send = _check_max_send(max_send_buffer)
    cdef int fd = sock_fd(sock, "adopt()")
    stype, listening, family = sock_facts(fd, "adopt()", "not connected")
    if listening:
        raise ValueError("adopt() takes a connected socket; this one is listening "
                         "(use listen(sock=...))")
    try:
        peer = sock_address(eng.be, fd, 1)
    except OSError as e:
        raise ValueError(f"adopt(): the socket is not connected ({e.strerror})") from None
    idle = eng._idle_ticks(idle_timeout)
    group = <uint16_t>eng.be.buffer_group(size)
    if not share:
        sock_take(sock, fd)
    try:
        eng.be.adopt_stream(fd)
    except BaseException:
        if not share:
            _sock_close(fd)
        raise
    cdef Connection c = Connection._new(eng, fd, group, on_recv, on_close, on_drain, max_send,
                                        idle, bool(nodelay) and family != IOCPX_AF_UNIX)
    if share:
        c.pysock = sock
    c._peer = peer
    c.surfaced = 1
    eng._conns[c.id] = c
    eng.n_adopted += 1
    if start_recv:
        conn_established(c, True)
    elif c.nodelay:
        iocpx_sock_nodelay(c.fd, 1)     # (the asyncio loop starts the receive itself)
    eng._kick()
    return c


cdef inline bint fd_lost(object exc):
    """exc (a connection's end) says its descriptor is gone (EBADF): the
    application closed it behind the engine's back, and the number may be
    someone else's by now, so the engine does not close it again."""
    return exc is not None and isinstance(exc, OSError) and exc.errno == _errno.EBADF
