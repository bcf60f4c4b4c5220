# Connecting on Windows: bind to the wildcard address, then ConnectEx, then
# SO_UPDATE_CONNECT_CONTEXT when it completes. AF_UNIX has no ConnectEx: a
# connect() of its own (local, immediate), its result queued as the completion.


cdef int connect_submit(IocpBackend be, IoCtx* io) except -1:
    """ConnectEx needs a bound socket: bind to the wildcard address first."""
    be._check_open()
    if io.addr.sa.sa_family == AF_UNIX:
        return connect_unix(be, io)
    cdef iocpx_addr_t any_
    memset(&any_, 0, sizeof(any_))
    any_.sa.sa_family = io.addr.sa.sa_family
    cdef int alen = 28 if io.addr.sa.sa_family == AF_INET6 else 16
    cdef DWORD sent = 0
    cdef int err = 0
    cdef Event ev
    if bind(<SOCKET>io.fd, <sockaddr*>&any_, alen) != 0:
        err = WSAGetLastError()
        if err != WSAEINVAL:        # WSAEINVAL: already bound (connect(local_address=))
            ev_set(&ev, io, win_errno(<DWORD>err), 0, NULL)
            if be._push_ready(&ev) < 0:
                raise MemoryError()
            return 0
        err = 0
    memset(&io.ovl, 0, sizeof(OVERLAPPED))
    cdef BOOL ok = False
    if not fails_now(IOCPX_F_SYS_CONNECTEX, &err):
        ok = pConnectEx(<SOCKET>io.fd, <sockaddr*>&io.addr, <int>io.addrlen, NULL, 0,
                        &sent, <OVERLAPPED*>&io.ovl)
        if not ok:
            err = WSAGetLastError()
    return be._submitted(io, ok, 0, err)


cdef int connect_unix(IocpBackend be, IoCtx* io) except -1:
    """connect() in blocking mode (a Unix socket connects at once or is
    refused), its result queued as the completion."""
    cdef u_long mode = 0
    cdef int err = 0
    cdef Event ev
    ioctlsocket(<SOCKET>io.fd, FIONBIO, &mode)
    if connect(<SOCKET>io.fd, <sockaddr*><void*>io_target(io), <int>io.addrlen) != 0:
        err = WSAGetLastError()
    mode = 1
    ioctlsocket(<SOCKET>io.fd, FIONBIO, &mode)
    ev_set(&ev, io, win_errno(<DWORD>err) if err else 0, 0, NULL)
    if be._push_ready(&ev) < 0:
        raise MemoryError()
    return 0


cdef inline void connect_finish(IoCtx* io, int ok, DWORD err, Event* ev) noexcept nogil:
    """ConnectEx completed: the connect context, so that the socket works as
    a connected one (getpeername, shutdown)."""
    if not ok:
        ev.res = win_errno(err)
        return
    if setsockopt(<SOCKET>io.fd, SOL_SOCKET, SO_UPDATE_CONNECT_CONTEXT, NULL, 0) != 0:
        ev.res = win_errno(WSAGetLastError())
        return
    ev.res = 0
