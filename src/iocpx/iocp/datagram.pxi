# Datagrams (UDP) on Windows: dgram_recvs (DG_POSTED) WSARecvFrom kept
# posted per endpoint, each into a buffer of its own in io.extra
# (RecvFromState, allocated once and reused as the engine re-posts the same
# context after dispatch), the sender written straight into io.addr
# (sockaddr_in6 fits its 28 bytes). Each completion is final, as with stream
# receives. A datagram longer than the buffer completes with WSAEMSGSIZE and
# the cut bytes: reported as DG_TRUNC. Sends are WSASendTo from io.buf (kept
# alive by io.obj) to io.addr.
#
# Order: a datagram socket joins the port WITHOUT
# FILE_SKIP_COMPLETION_PORT_ON_SUCCESS. With several receives posted, a
# receive that finds a datagram at once would otherwise hand it over through
# the ready list, ahead of earlier datagrams whose packets still wait in the
# port: every completion goes through the port instead, where the pending
# receives complete in the order they were posted, so an endpoint's datagrams
# reach on_datagram in order. (dgram_submitted is _submitted for such a socket.)
#
# ICMP: Windows fails a UDP socket's next WSARecvFrom with WSAECONNRESET when
# an ICMP port unreachable comes back. On a connected endpoint that is the
# report iocpx passes to on_error; on an unconnected one it would only be a
# stray error about some earlier peer, so SIO_UDP_CONNRESET turns it off
# there (as Linux reports nothing on unconnected sockets), and SIO_UDP_NETRESET
# likewise for ICMP "time exceeded" (WSAENETRESET). Windows has no
# counter of the datagrams it drops (Linux's SO_RXQ_OVFL): Datagram.drops is -1.

cdef struct RecvFromState:  # io.extra of an OP_RECVFROM (freed by io_free)
    DWORD flags             # WSARecvFrom's in/out flags: must live until completion
    int fromlen             # ... and the sender's length (io.addr holds the sender)
    uint32_t size           # bytes of buffer after this struct
    uint8_t trunc           # the last datagram was cut (WSAEMSGSIZE)

cdef inline char* recvfrom_buf(RecvFromState* st) noexcept nogil:
    return (<char*>st) + sizeof(RecvFromState)


cdef int dgram_adopt_iocp(IocpBackend be, int fd, bint connected) except -1:
    cdef BOOL off = False
    cdef DWORD got = 0
    be._check_open()
    if CreateIoCompletionPort(iocpx_sock_handle(<SOCKET>fd), be.port, KEY_IO, 0) == NULL:
        raise win_error(GetLastError(), "CreateIoCompletionPort(socket)")    # no skip mode: see above
    if not connected:       # no stray WSAECONNRESET from ICMP about some earlier peer
        WSAIoctl(<SOCKET>fd, SIO_UDP_CONNRESET, &off, sizeof(off), NULL, 0, &got, NULL, NULL)
        WSAIoctl(<SOCKET>fd, SIO_UDP_NETRESET, &off, sizeof(off), NULL, 0, &got, NULL, NULL)
    return 0


cdef int dgram_submit_recv_iocp(IocpBackend be, IoCtx* io) except -1:
    cdef uint32_t size = be.sizes[io.group] if io.group < be.ngroups else 65536
    cdef RecvFromState* st = <RecvFromState*>io.extra
    cdef WSABUF wb
    cdef int r, err = 0
    be._check_open()
    if st != NULL and st.size < size:
        free(st)
        io.extra = st = NULL
    if st == NULL:
        st = <RecvFromState*>malloc(sizeof(RecvFromState) + size)     # freed by io_free
        if st == NULL:
            raise MemoryError()
        st.size = size
        io.extra = st
    st.flags = 0
    st.fromlen = sizeof(iocpx_addr_t)
    st.trunc = 0
    wb.len = st.size
    wb.buf = recvfrom_buf(st)
    memset(&io.ovl, 0, sizeof(OVERLAPPED))
    # no byte count out-parameter (NULL): the completion brings it; a pointer to this
    # frame could be written after the call returned
    r = SOCKET_ERROR
    if not fails_now(IOCPX_F_SYS_WSARECVFROM, &err):
        r = WSARecvFrom(<SOCKET>io.fd, &wb, 1, NULL, &st.flags, <sockaddr*>&io.addr, &st.fromlen,
                        <OVERLAPPED*>&io.ovl, NULL)
        if r != 0:
            err = WSAGetLastError()
    return dgram_submitted(be, io, r == 0, err)


cdef int dgram_submitted(IocpBackend be, IoCtx* io, BOOL ok, int err) except -1:
    """_submitted for a datagram socket (no skip mode): done at once or
    pending, a packet follows; failed at once, none does: the event is built
    now, with the error. For a receive, WSAEMSGSIZE is not a failure: a
    datagram was received, cut (STATUS_BUFFER_OVERFLOW, a warning), and its
    packet follows like any other; building an event for it too would
    complete it twice. For a send it is a plain failure (no packet)."""
    cdef Event ev
    if ok or err == WSA_IO_PENDING or (err == WSAEMSGSIZE and io.op == OP_RECVFROM):
        return 0
    finish(be, io, 0, 0, <DWORD>err, &ev)
    if be._push_ready(&ev) < 0:
        raise MemoryError()
    return 0


cdef void dgram_finish_recv(IoCtx* io, int ok, DWORD nbytes, DWORD err, Event* ev) noexcept nogil:
    """A WSARecvFrom finished: res is the datagram's bytes, or -errno."""
    cdef RecvFromState* st = <RecvFromState*>io.extra
    if ok:
        ev.res = <int32_t>nbytes
    elif err == <DWORD>WSAEMSGSIZE:
        st.trunc = 1
        ev.res = <int32_t>(nbytes if nbytes <= st.size else st.size)
    else:
        ev.res = win_errno(err)


cdef int dgram_view_iocp(Event* ev, Datagram* out) noexcept:
    cdef RecvFromState* st = <RecvFromState*>ev.io.extra
    if ev.res < 0 or st == NULL:
        return 0
    out.data = recvfrom_buf(st)
    out.len = ev.res
    out.name = <sys_sockaddr*>&ev.io.addr if st.fromlen > 0 else NULL
    out.namelen = st.fromlen
    out.flags = DG_TRUNC if st.trunc else 0
    out.drops = -1
    return 1


cdef int dgram_submit_send_iocp(IocpBackend be, IoCtx* io) except -1:
    cdef WSABUF wb
    cdef int r, err = 0
    be._check_open()
    wb.len = <ULONG>io.len
    wb.buf = io.buf             # points into io.obj, kept alive by the context
    memset(&io.ovl, 0, sizeof(OVERLAPPED))
    r = SOCKET_ERROR
    if not fails_now(IOCPX_F_SYS_SENDTO, &err):
        r = WSASendTo(<SOCKET>io.fd, &wb, 1, NULL, 0,
                      <sockaddr*>&io.addr if io.addrlen else NULL, <int>io.addrlen,
                      <OVERLAPPED*>&io.ovl, NULL)
        if r != 0:
            err = WSAGetLastError()
    return dgram_submitted(be, io, r == 0, err)
