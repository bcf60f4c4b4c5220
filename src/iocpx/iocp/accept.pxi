# AcceptEx (the model's steps 4-6 on Windows): accept sockets made in
# advance, the first data received with the connection, GetAcceptExSockAddrs,
# and the first-data slots a silent client holds: dropped after the
# listener's first_data_timeout (SO_CONNECT_TIME, scanned by the leader every
# SCAN_MS) and counted for the engine's guard (engine/accept.pxi).


cdef int accept_submit(IocpBackend be, IoCtx* io) except -1:
    """AcceptEx on a socket made in advance, with a receive buffer of io.len
    bytes when first data is wanted (0: completes on connect)."""
    be._check_open()
    cdef AcceptState* st = <AcceptState*>io.extra
    cdef uint32_t rcvlen = <uint32_t>io.len if io.len > 0 else 0
    cdef iocpx_addr_t a
    cdef int alen = sizeof(a)
    if st != NULL and st.cap < rcvlen:      # plain mode before, first data now: grow
        closesocket(st.sock)
        free(st)
        io.extra = st = NULL
    if st == NULL:
        if getsockname(<SOCKET>io.fd, <sockaddr*>&a, &alen) != 0:
            raise win_error(WSAGetLastError(), "getsockname")
        st = <AcceptState*>malloc(sizeof(AcceptState) + rcvlen + 2 * ADDR_SLOT)
        if st == NULL:
            raise MemoryError()
        memset(st, 0, sizeof(AcceptState))
        st.sock = INVALID_SOCKET
        st.family = (<sockaddr*>&a).sa_family
        st.cap = rcvlen
        st.io = io
        io.extra = st           # freed by io_free
    st.listen = <SOCKET>io.fd
    st.rcvlen = rcvlen
    st.stale = 0
    st.seen = 0
    st.got = 0
    # io.aux.silent_ms: the listener's first_data_timeout (0: none), in whole
    # seconds as SO_CONNECT_TIME counts them
    st.limit_s = 0
    if rcvlen and io.aux.silent_ms > 0:
        st.limit_s = <uint32_t>((io.aux.silent_ms + 999) // 1000)
    cdef Event ev
    if st.sock == INVALID_SOCKET:
        try:
            st.sock = be._new_socket(st.family, False)     # non-blocking once accepted
        except OSError as e:
            # Out of sockets: complete the accept with the error instead of
            # losing the slot, so the engine backs off and re-arms it.
            ev_set(&ev, io, win_errno(<DWORD>(e.winerror or WSAENOBUFS)), 0, NULL)
            if be._push_ready(&ev) < 0:
                raise MemoryError()
            return 0
    memset(&io.ovl, 0, sizeof(OVERLAPPED))
    if st.rcvlen:
        accept_list(be, st)
    cdef DWORD got = 0
    cdef BOOL ok = False
    cdef int err = 0
    if not fails_now(IOCPX_F_SYS_ACCEPTEX, &err):
        ok = pAcceptEx(st.listen, st.sock, accept_buf(st), st.rcvlen, ADDR_SLOT, ADDR_SLOT,
                       &got, <OVERLAPPED*>&io.ovl)
        if not ok:
            err = WSAGetLastError()
    return be._submitted(io, ok, got, err)


cdef void accept_list(IocpBackend be, AcceptState* st) noexcept nogil:
    """Track a first-data accept; the first one wakes a leader sleeping
    without limit, so that it starts scanning."""
    cdef int wake = 0
    iocpx_mutex_lock(&be.mu)
    if not st.listed:
        if be.pending == NULL and be.sleeping and not be.wake_pending:
            be.wake_pending = 1
            wake = 1
        st.listed = 1
        st.prev = NULL
        st.next = be.pending
        if be.pending != NULL:
            be.pending.prev = st
        be.pending = st
    iocpx_mutex_unlock(&be.mu)
    if wake:
        PostQueuedCompletionStatus(be.port, 0, KEY_WAKE, NULL)


cdef void accept_unlist(IocpBackend be, AcceptState* st) noexcept nogil:
    iocpx_mutex_lock(&be.mu)
    if st.listed:
        st.listed = 0
        if st.prev != NULL:
            st.prev.next = st.next
        else:
            be.pending = st.next
        if st.next != NULL:
            st.next.prev = st.prev
        st.prev = st.next = NULL
    iocpx_mutex_unlock(&be.mu)


cdef void accept_finish(IocpBackend be, IoCtx* io, int ok, DWORD nbytes, DWORD err, Event* ev) noexcept nogil:
    """An AcceptEx completed: the accept context, the addresses, the socket
    handed to the engine in ev.res (it closes it from then on)."""
    cdef AcceptState* st
    cdef sockaddr* local
    cdef sockaddr* remote
    cdef int llen = 0, rlen = 0
    cdef SOCKET ls
    cdef u_long on = 1
    st = <AcceptState*>io.extra
    accept_unlist(be, st)
    if not ok:
        closesocket(st.sock)
        st.sock = INVALID_SOCKET
        # a silent client we dropped: not ECANCELED, so the engine re-arms
        ev.res = -E_TIMEDOUT if (st.stale and err == ERROR_OPERATION_ABORTED) else win_errno(err)
        return
    ls = st.listen
    if setsockopt(st.sock, SOL_SOCKET, SO_UPDATE_ACCEPT_CONTEXT, <char*>&ls, sizeof(ls)) != 0:
        err = WSAGetLastError()
        closesocket(st.sock)
        st.sock = INVALID_SOCKET
        ev.res = win_errno(err)
        return
    pGetAcceptExSockAddrs(accept_buf(st), st.rcvlen, ADDR_SLOT, ADDR_SLOT,
                          &local, &llen, &remote, &rlen)
    memset(&io.addr, 0, sizeof(io.addr))
    if remote != NULL and rlen > 0:
        memcpy(&io.addr, remote, rlen if rlen <= <int>sizeof(io.addr) else sizeof(io.addr))
    io.addrlen = rlen
    st.got = nbytes if nbytes <= st.rcvlen else st.rcvlen
    ioctlsocket(st.sock, FIONBIO, &on)
    ev.res = <int32_t>st.sock      # handed to the engine, which closes it
    st.sock = INVALID_SOCKET


cdef void accept_scan(IocpBackend be) noexcept nogil:
    """Cancel first-data accepts whose client has been connected for
    first_data_timeout seconds without sending (SO_CONNECT_TIME is -1
    while nobody is connected). The aborted AcceptEx completes with
    -ETIMEDOUT, and the engine counts it and re-arms the slot."""
    cdef AcceptState* st
    cdef DWORD secs
    cdef int slen
    iocpx_mutex_lock(&be.mu)
    st = be.pending
    while st != NULL:
        if not st.stale and st.limit_s:
            secs = <DWORD>0xFFFFFFFF
            slen = sizeof(secs)
            if getsockopt(st.sock, SOL_SOCKET, SO_CONNECT_TIME, <char*>&secs, &slen) == 0 \
                    and secs != <DWORD>0xFFFFFFFF and secs >= st.limit_s:
                st.stale = 1
                be.stale_drops += 1
                # The AcceptEx was issued on the listening socket; try the
                # accept socket too in case a provider moved it there.
                if not CancelIoEx(iocpx_sock_handle(st.listen), <OVERLAPPED*>&st.io.ovl):
                    CancelIoEx(iocpx_sock_handle(st.sock), <OVERLAPPED*>&st.io.ovl)
        st = st.next
    iocpx_mutex_unlock(&be.mu)


cdef int accept_count_silent(IocpBackend be, int listen_fd) except -1:
    """Pending first-data AcceptEx slots on listen_fd that held a connected
    client at the previous call too and still have no data from it: silent
    for at least the time between two calls (the engine's guard period).
    SO_CONNECT_TIME counts whole seconds (-1 while nobody is connected), too
    coarse to wait for; seeing a slot connected twice is not."""
    cdef AcceptState* st
    cdef DWORD secs
    cdef int slen, k = 0
    with nogil:
        iocpx_mutex_lock(&be.mu)
        st = be.pending
        while st != NULL:
            if st.listen == <SOCKET>listen_fd and not st.stale:
                secs = <DWORD>0xFFFFFFFF
                slen = sizeof(secs)
                if getsockopt(st.sock, SOL_SOCKET, SO_CONNECT_TIME, <char*>&secs, &slen) == 0 \
                        and secs != <DWORD>0xFFFFFFFF:
                    if st.seen:
                        k += 1
                    st.seen = 1
            st = st.next
        iocpx_mutex_unlock(&be.mu)
    return k


cdef object accept_first_data(Event* ev):
    """The first data AcceptEx received (b"" if the client closed without
    sending); None when the engine did not ask for it."""
    cdef AcceptState* st = <AcceptState*>ev.io.extra
    if st == NULL or st.rcvlen == 0:
        return None
    return PyBytes_FromStringAndSize(accept_buf(st), st.got)
