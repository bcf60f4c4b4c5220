# Datagrams (UDP) on epoll. Receiving: the endpoint's OP_RECVFROM sits in
# the descriptor's recv slot like a stream receive; on readiness the leader
# reads with recvmmsg, DG_BATCH datagrams per call, into the backend's
# scratch area (used under mu only), and copies each into a heap block of
# its own size: a DgHead (the sender, the flags, the kernel's drop counter)
# followed by the payload, handed over in Event.data (res = payload bytes)
# and freed by dgram_done. Reading stops while DG_UNREAD datagrams of the
# endpoint wait for dispatch, so a slow callback leaves the rest in the
# socket's receive buffer, where the kernel drops what does not fit and
# counts it (SO_RXQ_OVFL).
#
# Sending: sendto() at once (try_sendto, from the engine with the GIL); a
# datagram that would block waits for EPOLLOUT in the send slot (the engine
# queues any others behind it).

cdef enum:
    DG_UNREAD = 64          # datagram events of one receive waiting for dispatch, at most
    DG_BATCH = 16           # datagrams per recvmmsg call
    DG_CTRL_ROOM = 32       # control bytes per datagram (IOCPX_DG_CTRL fits)

cdef struct DgHead:         # heads a datagram's heap block (Event.data); the payload follows
    int32_t namelen
    uint32_t flags          # DG_TRUNC
    int64_t drops           # SO_RXQ_OVFL counter, -1: not reported
    iocpx_addr_t name

cdef struct DgScratch:      # the leader's recvmmsg area (EpollBackend.dg, used under mu)
    mmsghdr msgs[DG_BATCH]
    iovec iov[DG_BATCH]
    iocpx_addr_t names[DG_BATCH]
    char ctrl[DG_BATCH][DG_CTRL_ROOM]
    size_t size             # payload bytes per slot of bufs
    char* bufs              # owned: malloc'd, DG_BATCH slots of size bytes


cdef inline bint dg_wants(IoCtx* io) noexcept nogil:
    """May this receive read more (stream or datagram limit)?"""
    if io.op == OP_RECVFROM:
        return io.aux.unread < DG_UNREAD
    return io.aux.unread < MAX_UNREAD


cdef DgScratch* dg_scratch(EpollBackend be, size_t size) noexcept nogil:
    """The scratch area with slots of at least size bytes; NULL when out of memory."""
    cdef DgScratch* s = <DgScratch*>be.dg
    cdef char* b
    if IOCPX_FAULT(IOCPX_F_ALLOC_DG_SCRATCH):
        return NULL
    if s == NULL:
        s = <DgScratch*>calloc(1, sizeof(DgScratch))
        if s == NULL:
            return NULL
        be.dg = s
    if s.size < size:
        b = <char*>malloc(DG_BATCH * size)
        if b == NULL:
            return NULL
        free(s.bufs)
        s.bufs = b
        s.size = size
    return s


cdef void dg_scratch_free(EpollBackend be) noexcept nogil:
    cdef DgScratch* s = <DgScratch*>be.dg
    if s != NULL:
        free(s.bufs)
        free(s)
        be.dg = NULL


cdef int dgram_read(EpollBackend be, int fd, FdState* st, Event* out, int room) noexcept nogil:
    """(Leader, mu held) Read what datagrams the socket has, as events: each
    with its heap block, EV_MORE set; an error ends the receive (final event)."""
    cdef IoCtx* io = st.recv
    cdef size_t size = be.sizes[io.group]
    cdef DgScratch* s
    cdef int n = 0, want, r, i
    cdef unsigned int len
    cdef DgHead* h
    cdef msghdr* m
    while n < room and io.aux.unread < DG_UNREAD:
        want = room - n
        if want > DG_UNREAD - io.aux.unread:
            want = <int>(DG_UNREAD - io.aux.unread)
        if want > DG_BATCH:
            want = DG_BATCH
        s = dg_scratch(be, size)
        if s == NULL:
            return n                # out of memory: EPOLLIN stays, we try again
        for i in range(want):
            m = &s.msgs[i].msg_hdr
            s.iov[i].iov_base = s.bufs + <size_t>i * size
            s.iov[i].iov_len = size
            m.msg_iov = &s.iov[i]
            m.msg_iovlen = 1
            m.msg_name = &s.names[i]
            m.msg_namelen = sizeof(iocpx_addr_t)
            m.msg_control = s.ctrl[i] if IOCPX_DG_CTRL > 0 else NULL
            m.msg_controllen = IOCPX_DG_CTRL
            m.msg_flags = 0
        r = recvmmsg(fd, s.msgs, want, MSG_DONTWAIT, NULL)
        if r < 0:
            if errno == EAGAIN or errno == EWOULDBLOCK or errno == EINTR:
                return n
            st.recv = NULL          # an error (an ICMP report...): this receive ends
            ev_set(&out[n], io, -errno, 0, NULL)
            return n + 1
        for i in range(r):
            m = &s.msgs[i].msg_hdr
            len = s.msgs[i].msg_len
            h = (NULL if IOCPX_FAULT(IOCPX_F_ALLOC_DG_HEAD)
                 else <DgHead*>malloc(sizeof(DgHead) + len))    # freed by dgram_done
            if h == NULL:
                continue            # out of memory: this one is lost
            h.namelen = <int32_t>(m.msg_namelen if m.msg_namelen <= sizeof(iocpx_addr_t)
                                  else sizeof(iocpx_addr_t))
            memcpy(&h.name, &s.names[i], h.namelen)
            h.flags = DG_TRUNC if (m.msg_flags & MSG_TRUNC) else 0
            h.drops = iocpx_cmsg_drops(m.msg_control, m.msg_controllen)
            memcpy((<char*>h) + sizeof(DgHead), s.iov[i].iov_base, len)
            io.aux.unread += 1
            ev_set(&out[n], io, <int>len, EV_MORE, h)
            n += 1
        if r < want:
            break                   # the socket is empty
    return n


cdef int dgram_view_epoll(Event* ev, Datagram* out) noexcept:
    cdef DgHead* h = <DgHead*>ev.data
    if h == NULL:
        return 0
    out.data = (<char*>h) + sizeof(DgHead)
    out.len = ev.res
    out.name = &h.name.sa if h.namelen > 0 else NULL
    out.namelen = h.namelen
    out.flags = h.flags
    out.drops = h.drops
    return 1


cdef bint dgram_send_now(IoCtx* io, int* res) noexcept nogil:
    """sendto() an OP_SENDTO's datagram: False if it would block (wait for
    EPOLLOUT), else True with res set (bytes sent or -errno)."""
    cdef ssize_t r
    if IOCPX_FAULT(IOCPX_F_SYS_SENDTO):
        res[0] = -ENOBUFS
        return True
    r = sendto(io.fd, io.buf, <size_t>io.len, MSG_DONTWAIT | MSG_NOSIGNAL,
               &io.addr.sa if io.addrlen else NULL, io.addrlen)
    if r < 0:
        if errno == EAGAIN or errno == EWOULDBLOCK or errno == EINTR:
            return False
        res[0] = -errno
    else:
        res[0] = <int>r
    return True


cdef int dgram_submit_send(EpollBackend be, IoCtx* io) except -1:
    cdef int res
    iocpx_mutex_lock(&be.mu)
    try:
        if dgram_send_now(io, &res):
            be._ready_or_raise(io, res)
        else:
            be._arm_out(io, 0)
    finally:
        iocpx_mutex_unlock(&be.mu)
    return 0


cdef Py_ssize_t dgram_try_send(int fd, const char* buf, Py_ssize_t n, sockaddr* to, int tolen) noexcept:
    """sendto() at once (the engine's try_sendto): bytes sent, or -errno."""
    cdef ssize_t r
    if IOCPX_FAULT(IOCPX_F_SYS_SENDTO):
        return -ENOBUFS
    r = sendto(fd, buf, <size_t>n, MSG_DONTWAIT | MSG_NOSIGNAL,
                            to if tolen > 0 else NULL, <socklen_t>tolen)
    if r < 0:
        return -errno
    return r


cdef void dgram_done_epoll(EpollBackend be, Event* ev) noexcept:
    """A datagram was taken: its block is freed, the receive may read again."""
    if ev.data != NULL:
        free(ev.data)
        ev.data = NULL
        recv_consumed_epoll(be, ev)
