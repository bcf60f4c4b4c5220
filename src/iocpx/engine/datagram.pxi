# Datagrams (UDP): Engine.datagram() -> Endpoint, on the same completion
# queue and workers as the streams, with the same guarantees: an endpoint's
# callbacks (on_datagram, on_error, on_close) never overlap (its SchedNode,
# like a Connection's), sendto() is thread-safe and never blocks, close()
# ends with every context reaped.
#
# Receiving: the backend keeps dgram_recvs receives armed (io_uring: one
# multishot RECVMSG; epoll: the readiness loop; iocp: several WSARecvFrom),
# each re-armed with the same context when it ends. Every datagram is one
# event; the backend's Datagram view gives its bytes, its sender and the
# kernel's drop counter, and the buffer goes back right after the copy.
# Nothing is queued in user space: when callbacks fall behind, the backends
# stop taking datagrams (their buffers or unread limits are bounded), the
# socket's receive buffer fills, and the kernel drops the rest and counts it
# (SO_RXQ_OVFL on Linux), which datagrams_dropped reports. So memory stays
# bounded whatever the flood.
#
# Sending: each sendto() is one datagram to the kernel at once: sendto(2) on
# the epoll backend (sync_sendto), a SENDMSG SQE or a WSASendTo otherwise.
# The bytes in flight (or, on epoll, queued behind a datagram that would have
# blocked) are bounded by max_send_buffer; past it sendto() drops the
# datagram, counts it and returns False. Every drop is counted:
# datagrams_dropped = the kernel's receive drops + datagrams cut by a too
# small buffer_size + sends refused, failed or cancelled.
#
# Errors: an ICMP error on a connected endpoint (port unreachable...) and a
# failed send reach on_error(ep, exc) and the endpoint goes on; an error that
# means the socket itself is broken ends the endpoint: on_close(ep, exc).

cdef enum DState:
    D_OPEN = 0
    D_CLOSING = 1           # close(): nothing delivered; sends in flight finish, then cancel
    D_ABORTING = 2          # abort()/engine close: everything cancelled, queued sends dropped
    D_CLOSED = 3

cdef enum:
    DG_MAX_V4 = 65507       # the largest UDP payload over IPv4 (65,535 - 20 - 8)
    DG_MAX_V6 = 65527       # ... over IPv6, without jumbograms (65,535 - 8)
    DG_BUF_MAX = 65536      # datagram buffer_size at most
    SENDQ_CACHE_MAX = 1024  # addresses parsed by sendto kept for reuse, at most

cdef double DG_STARVED_DELAY = 0.002    # s before a receive that found no buffer is armed again

# errno values a datagram socket reports for an ICMP message or a condition
# of one datagram: on_error, and the endpoint goes on. Any other receive
# error means the socket itself is broken: the endpoint closes with it.
cdef frozenset _DG_SOFT = frozenset(
    e for e in (getattr(_errno, n, None) for n in (
        "ECONNREFUSED", "ECONNRESET", "EHOSTUNREACH", "ENETUNREACH", "EHOSTDOWN", "ENETDOWN",
        "EMSGSIZE", "ETIMEDOUT", "EPROTO", "EACCES", "EPERM", "ENOBUFS", "ENOMEM", "EAGAIN"))
    if e is not None)


cdef Endpoint dgram_open(Engine eng, object local_address, object remote_address,
                         object on_datagram, object on_close, object on_error,
                         object buffer_size, object reuse_port, object broadcast,
                         object max_send_buffer, object rcvbuf, object sndbuf):
    """Engine.datagram(): check, make and bind (and connect) the socket, arm
    the receives."""
    eng._check_open()
    if on_datagram is None or not callable(on_datagram):
        raise TypeError(f"on_datagram must be callable, not {type(on_datagram).__name__}")
    _check_callback(on_close, "on_close")
    _check_callback(on_error, "on_error")
    cdef uint32_t size = _check_buffer_size(buffer_size)
    if size > DG_BUF_MAX:
        raise ValueError(f"buffer_size for datagrams must be in 1..{DG_BUF_MAX}, got {buffer_size}")
    max_send = _check_max_send(max_send_buffer)
    for name, v in (("rcvbuf", rcvbuf), ("sndbuf", sndbuf)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int)):
            raise TypeError(f"{name} must be an int or None, not {type(v).__name__}")
        if v is not None and not 1 <= v <= (1 << 30):
            raise ValueError(f"{name} must be in 1..2**30 bytes, got {v}")
    if local_address is None and remote_address is None:
        raise ValueError("datagram() needs a local_address, a remote_address or both")
    family = 0
    if remote_address is not None:
        family, rsa = _resolve(remote_address, False)
    if local_address is not None:
        lfamily, lsa = _resolve(local_address, True)
        if family and lfamily != family:
            raise ValueError(f"local_address {local_address!r} is not of the family of "
                             f"remote_address {remote_address!r}")
        family = lfamily
    s = _socket.socket(family, _socket.SOCK_DGRAM)
    try:
        if reuse_port:
            if not hasattr(_socket, "SO_REUSEPORT"):
                raise OSError(_errno.ENOPROTOOPT, "SO_REUSEPORT is not available here")
            s.setsockopt(_socket.SOL_SOCKET, _socket.SO_REUSEPORT, 1)
        if broadcast:
            s.setsockopt(_socket.SOL_SOCKET, _socket.SO_BROADCAST, 1)
        if rcvbuf is not None:          # the kernel's queue for datagrams not read yet
            s.setsockopt(_socket.SOL_SOCKET, _socket.SO_RCVBUF, rcvbuf)
        if sndbuf is not None:
            s.setsockopt(_socket.SOL_SOCKET, _socket.SO_SNDBUF, sndbuf)
        if local_address is not None:
            s.bind(lsa)
        if remote_address is not None:
            s.connect(rsa)
            peer = s.getpeername()
        bound = s.getsockname()
        iocpx_dgram_rxq_ovfl(s.fileno())     # the kernel's drop counter, where it has one
    except BaseException:
        s.close()
        raise
    cdef Endpoint ep = Endpoint.__new__(Endpoint)
    ep.eng = eng
    ep.fd = s.detach()
    ep.family = family
    ep.connected = remote_address is not None
    ep.id = eng._take_id()
    ep.address = bound[:2]
    ep.buffer_size = size
    ep.max_dgram = DG_MAX_V6 if family == _socket.AF_INET6 else DG_MAX_V4
    ep.max_send = max_send
    ep.on_datagram = on_datagram
    ep.on_close = on_close
    ep.on_error = on_error
    if ep.connected:
        ep.remote_address = peer[:2]
        ep.remote_salen = _fill_addr(&ep.remote_sa, family, peer)
    try:
        eng.be.dgram_adopt(ep.fd, ep.connected)
        ep.group = <uint16_t>eng.be.dgram_group(size)
    except BaseException:
        ep.state = D_CLOSED
        _sock_close(ep.fd)
        ep.fd = -1
        raise
    ep.state = D_OPEN
    eng._endpoints[ep.id] = ep
    try:
        for _ in range(eng.be.dgram_recvs):
            dgram_arm(ep, NULL)
    except BaseException:
        ep.user_closed = 1
        dgram_abort(ep, None)
        eng._kick()
        raise
    eng._kick()
    return ep


cdef IoCtx* ep_new_io(Endpoint ep, uint8_t op) except NULL:
    cdef IoCtx* io = io_alloc(op, ep, &ep.sched)
    io.fd = ep.fd
    ep.inflight += 1
    ep.eng.inflight += 1
    return io


cdef void ep_io_done(Endpoint ep, IoCtx* io) noexcept:
    io_free(io)
    ep.inflight -= 1
    ep.eng.inflight -= 1


cdef int dgram_arm(Endpoint ep, IoCtx* io) except -1:
    """Arm a receive: a new one (io NULL), or io again (it ended)."""
    if io == NULL:
        io = ep_new_io(ep, OP_RECVFROM)
        io.group = ep.group
    try:
        ep.eng.be.submit_recvfrom(io)
    except BaseException:
        ep_io_done(ep, io)
        raise
    ep.recv_armed += 1
    return 0


cdef inline void dgram_dropped(Endpoint ep, int64_t n) noexcept:
    ep.datagrams_dropped += n
    ep.eng.n_dg_dropped += n


cdef void dgram_sync_drops(Endpoint ep) noexcept:
    """The kernel's drop counter read now (Linux), not only as the next
    datagram carries it: drops show in stats() even if nothing follows them."""
    cdef int64_t d
    if ep.fd < 0:
        return
    d = iocpx_sock_drops(ep.fd)
    if d > ep.kdrops:
        dgram_dropped(ep, d - ep.kdrops)
        ep.kdrops = d


cdef object dgram_error(Endpoint ep, int err, str what):
    """The exception on_error gets. An ICMP port unreachable reads as
    ECONNREFUSED on Linux and WSAECONNRESET on Windows: one
    ConnectionRefusedError on every backend."""
    if err == _errno.ECONNREFUSED or err == _errno.ECONNRESET:
        return ConnectionRefusedError(_errno.ECONNREFUSED,
                                      f"{what}: the peer's port is unreachable (ICMP)")
    return ep.eng.be.error(err, what)


cdef void dgram_call(Endpoint ep, object fn, object a, object b) noexcept:
    """Run an application callback: fn(ep, a) or fn(ep, a, b). An exception is
    logged (with the traceback: the application's own fault) and the
    endpoint serves on: one datagram cannot take a server down."""
    try:
        if b is None:
            fn(ep, a)
        else:
            fn(ep, a, b)
    except BaseException as e:
        log.error("iocpx: %s raised on endpoint %d", getattr(fn, "__name__", fn), ep.id, exc_info=e)


cdef void dgram_report(Endpoint ep, object exc) noexcept:
    """on_error(ep, exc), or a debug log line without one (dispatch only)."""
    if ep.on_error is not None and ep.state == D_OPEN:
        dgram_call(ep, ep.on_error, exc, None)
    else:
        log.debug("iocpx: endpoint %d: %r", ep.id, exc)


cdef void dgram_on_recv(Endpoint ep, Event* ev) except *:
    """A datagram (or the end of a receive) arrived."""
    cdef Engine eng = ep.eng
    cdef IoCtx* io = ev.io
    cdef int res = ev.res
    cdef bint final = not (ev.flags & EV_MORE)
    cdef Datagram dg
    cdef int got = 0
    cdef uint32_t flags = 0
    cdef int64_t drops = -1
    data = addr = err = None
    dg.flags = 0
    try:
        got = eng.be.dgram_view(ev, &dg)
        if got:
            flags = dg.flags
            drops = dg.drops
            if ep.state == D_OPEN and not (flags & DG_TRUNC):
                data = PyBytes_FromStringAndSize(dg.data, dg.len)
                addr = dgram_addr_of(ep, dg.name, dg.namelen)
    except BaseException as e:          # out of memory: this datagram is lost, not the receive
        err = e
        if got:
            dgram_dropped(ep, 1)
        got = 0
    finally:
        eng.be.dgram_done(ev)           # the buffer goes back at once
    if drops > ep.kdrops:               # the kernel dropped some since we last looked
        dgram_dropped(ep, drops - ep.kdrops)
        ep.kdrops = drops
    if final:
        ep.recv_armed -= 1
        if ep.state == D_OPEN and not got and (dg.flags & DG_NOBUF) and ep.recv_armed == 0:
            # every buffer of the pool, at its limit, waits in some endpoint's queue (a slow
            # on_datagram): re-armed now, the receive would end at once again, over and over;
            # the kernel keeps the datagrams meanwhile (and counts what its queue cannot hold)
            ep_io_done(ep, io)
            internal_timer(eng, DG_STARVED_DELAY, _dgram_rearm, ep)
        elif ep.state == D_OPEN and (got or res >= 0 or -res in _DG_SOFT or res == -_errno.ECANCELED):
            try:
                dgram_arm(ep, io)       # the same context, at once: reading goes on meanwhile
            except BaseException as e:
                dgram_abort(ep, e)
        else:
            ep_io_done(ep, io)
    if got:
        if ep.state != D_OPEN:
            pass                        # closing: nothing more is delivered
        elif flags & DG_TRUNC:
            dgram_dropped(ep, 1)
            dgram_report(ep, OSError(_errno.EMSGSIZE,
                                     f"a datagram longer than buffer_size ({ep.buffer_size}) "
                                     f"was cut by the kernel and dropped"))
        else:
            ep.datagrams_in += 1
            eng.n_dg_in += 1
            eng.n_bytes_in += dg.len
            if addr is None:
                addr = ep.remote_address
            dgram_call(ep, ep.on_datagram, data, addr)
    elif err is not None:
        if ep.state == D_OPEN:
            dgram_report(ep, err)
    elif res < 0 and res != -_errno.ECANCELED and res != -_errno.ENOBUFS and ep.state == D_OPEN:
        if -res in _DG_SOFT:
            dgram_report(ep, dgram_error(ep, -res, "recvfrom"))
        else:
            dgram_abort(ep, peer_error(eng.be, -res, "recvfrom"))
    dgram_maybe_finish(ep)


def _dgram_rearm(Endpoint ep):
    """(Timer) The receive that ended for want of buffers, armed again."""
    if ep.state == D_OPEN and ep.recv_armed == 0:
        try:
            dgram_arm(ep, NULL)
        except BaseException as e:
            dgram_abort(ep, e)


cdef void dgram_on_send(Endpoint ep, Event* ev) except *:
    """A datagram left (or failed, or was cancelled)."""
    cdef IoCtx* io = ev.io
    cdef int res = ev.res
    ep.send_inflight -= 1
    ep.send_buffered -= io.len
    if ep.send_wait == io:
        ep.send_wait = NULL
    ep_io_done(ep, io)
    if res >= 0:
        ep.datagrams_out += 1
        ep.eng.n_dg_out += 1
        ep.eng.n_bytes_out += res
    else:
        dgram_dropped(ep, 1)
        if res != -_errno.ECANCELED:
            dgram_report(ep, dgram_error(ep, -res, "sendto"))
    if ep.sendq:
        dgram_send_queued(ep)
    dgram_progress(ep)
    dgram_maybe_finish(ep)              # this send may be the last thing a close waited for


cdef void dgram_on_aux(Endpoint ep, Event* ev) except *:
    """A posted packet (an error found by sendto outside dispatch) or a
    cancel completed."""
    cdef uint8_t op = ev.io.op
    exc = <object>ev.io.obj if ev.io.obj != NULL else None
    ep_io_done(ep, ev.io)
    if op == OP_NOP and exc is not None:
        dgram_report(ep, exc)
    dgram_maybe_finish(ep)


# ---- sending -------------------------------------------------------------------

cdef object dgram_sendto(Endpoint ep, object data, object addr):
    """Endpoint.sendto(): True if the datagram went to the kernel (or waits
    for the socket), False if it was dropped (counted)."""
    cdef iocpx_addr_t sa
    cdef int salen = 0
    cdef Py_ssize_t n, r
    cdef Backend be = ep.eng.be
    if type(data) is not bytes:
        if isinstance(data, str):
            raise TypeError("sendto() takes bytes-like data, not str (encode it first)")
        try:
            data = bytes(memoryview(data))
        except TypeError:
            raise TypeError(f"sendto() takes bytes-like data, not {type(data).__name__}") from None
    n = iocpx_bytes_len(data)
    if n > ep.max_dgram:
        raise OSError(_errno.EMSGSIZE,
                      f"sendto(): a datagram of {n} bytes is larger than UDP over "
                      f"{'IPv6' if ep.family == _socket.AF_INET6 else 'IPv4'} carries "
                      f"({ep.max_dgram}); nothing was sent")
    if ep.user_closed or ep.state != D_OPEN:
        raise _closed_error("endpoint")
    if addr is None:
        if not ep.connected:
            raise ValueError("sendto() needs an address: this endpoint has no remote_address")
    else:
        salen = dgram_addr_parse(ep, addr, &sa)
        if ep.state != D_OPEN:          # closed while a new address was parsed (GIL released)
            raise _closed_error("endpoint")
        if ep.connected:
            if salen != ep.remote_salen or memcmp(&sa, &ep.remote_sa, salen) != 0:
                raise ValueError(f"sendto(): this endpoint is connected to "
                                 f"{ep.remote_address!r}; addr must be None or that, not {addr!r}")
            salen = 0                   # a connected socket sends without an address
    if ep.send_buffered > 0 and ep.send_buffered + n > ep.max_send:
        dgram_dropped(ep, 1)            # UDP may drop: counted, and said by the result
        return False
    if be.sync_sendto:
        if ep.send_wait != NULL or ep.sendq:   # some wait for the socket: queue behind, in order
            if ep.sendq is None:
                ep.sendq = deque()
            ep.sendq.append((data, PyBytes_FromStringAndSize(<char*>&sa, salen)))
            ep.send_buffered += n
            return True
        r = be.try_sendto(ep.fd, iocpx_bytes_ptr(data), n, &sa.sa, salen)
        if r >= 0:
            ep.datagrams_out += 1
            ep.eng.n_dg_out += 1
            ep.eng.n_bytes_out += r
            return True
        if r != -_errno.EAGAIN:
            dgram_dropped(ep, 1)
            dgram_post_error(ep, dgram_error(ep, <int>-r, "sendto"))
            return False
    dgram_submit(ep, data, n, &sa, salen)
    ep.eng._kick()
    return True


cdef int dgram_submit(Endpoint ep, object data, Py_ssize_t n, iocpx_addr_t* sa, int salen) except -1:
    """Hand one datagram to the kernel as an OP_SENDTO."""
    cdef Backend be = ep.eng.be
    cdef IoCtx* io = ep_new_io(ep, OP_SENDTO)
    io_set_obj(io, data)                # the kernel reads data's buffer until completion
    io.buf = iocpx_bytes_ptr(data)
    io.len = n
    if salen:
        memcpy(&io.addr, sa, salen)
    io.addrlen = salen
    try:
        be.submit_sendto(io)
    except BaseException:
        ep_io_done(ep, io)
        raise
    ep.send_inflight += 1
    ep.send_buffered += n
    if be.sync_sendto:
        ep.send_wait = io
    return 0


cdef void dgram_send_queued(Endpoint ep) noexcept:
    """(Dispatch, sync-send backends) The datagram that waited for the socket
    is out: send what queued behind it, until one would block again."""
    cdef iocpx_addr_t sa
    cdef Py_ssize_t n, r
    cdef int salen
    while ep.sendq and ep.send_wait == NULL:
        data, raw = ep.sendq.popleft()
        n = iocpx_bytes_len(data)
        ep.send_buffered -= n
        if ep.state >= D_ABORTING:
            dgram_dropped(ep, 1)
            continue
        salen = <int>iocpx_bytes_len(raw)
        if salen:
            memcpy(&sa, iocpx_bytes_ptr(raw), salen)
        r = ep.eng.be.try_sendto(ep.fd, iocpx_bytes_ptr(data), n, &sa.sa, salen)
        if r >= 0:
            ep.datagrams_out += 1
            ep.eng.n_dg_out += 1
            ep.eng.n_bytes_out += r
        elif r == -_errno.EAGAIN:
            try:
                dgram_submit(ep, data, n, &sa, salen)
            except BaseException as e:
                dgram_dropped(ep, 1)
                dgram_report(ep, e)
        else:
            dgram_dropped(ep, 1)
            dgram_report(ep, dgram_error(ep, <int>-r, "sendto"))
    if not ep.sendq:
        ep.sendq = None


cdef void dgram_post_error(Endpoint ep, object exc) noexcept:
    """An error found outside dispatch (sendto runs on any thread): deliver
    it to on_error from dispatch, in line with the endpoint's other callbacks."""
    cdef IoCtx* io
    if ep.on_error is None:
        log.debug("iocpx: endpoint %d: %r", ep.id, exc)
        return
    try:
        io = ep_new_io(ep, OP_NOP)
    except BaseException:
        return
    io_set_obj(io, exc)
    try:
        ep.eng.be.submit_post(io)
        ep.eng._kick()
    except BaseException:
        ep_io_done(ep, io)


# ---- addresses: the sender's tuple, and sendto's address, cached ---------------

cdef inline int _sa_key(sockaddr* sa, int salen) noexcept nogil:
    """Bytes of a sockaddr that name it (family, port, address; v6 flow and
    scope too), 0 for a family a datagram endpoint does not serve."""
    if sa.sa_family == AF_INET and salen >= 8:
        return 8
    if sa.sa_family == AF_INET6 and salen >= 28:
        return 28
    return 0


cdef inline uint32_t _bytes_hash(const char* p, int n) noexcept nogil:
    cdef uint32_t h = 2166136261u      # FNV-1a
    cdef int i
    for i in range(n):
        h = (h ^ <uint8_t>p[i]) * 16777619u
    return h


cdef inline int _obj_slot(object o) noexcept:
    cdef size_t p = <size_t><PyObject*>o
    return <int>(((p >> 4) ^ (p >> 10)) & (ADDR_SLOTS - 1))


cdef object dgram_addr_of(Endpoint ep, sockaddr* sa, int salen):
    """The address on_datagram gets for a sender, as the socket module gives
    it: (host, port) for IPv4, (host, port, flowinfo, scope_id) for IPv6.
    Cached by the sockaddr, so a known peer costs a hash and a compare."""
    cdef int klen, h
    cdef AddrSlot* slot
    if sa == NULL:
        return None
    klen = _sa_key(sa, salen)
    if klen == 0:
        return None
    if ep.cache == NULL:
        ep.cache = (NULL if IOCPX_FAULT(IOCPX_F_ALLOC_DGRAM_CACHE)
                    else <AddrCache*>calloc(1, sizeof(AddrCache)))     # freed by dgram_cache_free
        if ep.cache == NULL:
            raise MemoryError()
    h = <int>(_bytes_hash(<char*>sa, klen) & (ADDR_SLOTS - 1))
    slot = &ep.cache.slot[h]
    if slot.salen == klen and memcmp(&slot.sa, sa, klen) == 0:
        return <object>slot.tup
    tup = _dg_tuple(<iocpx_addr_t*>sa)
    Py_XDECREF(slot.tup)
    Py_INCREF(tup)
    slot.tup = <PyObject*>tup
    memset(&slot.sa, 0, sizeof(iocpx_addr_t))
    memcpy(&slot.sa, sa, klen)
    slot.salen = klen
    ep.cache.by_obj[_obj_slot(tup)] = <uint8_t>(h + 1)
    return tup


cdef object _dg_tuple(iocpx_addr_t* a):
    cdef char ip[16]
    cdef int family = 0
    cdef unsigned port = 0
    cdef int n = iocpx_addr_split(a, &family, ip, &port)
    host = _socket.inet_ntop(family, ip[:n])
    if family == AF_INET6:
        return (host, port, _socket.ntohl(a.v6.sin6_flowinfo), a.v6.sin6_scope_id)
    return (host, port)


cdef int dgram_addr_parse(Endpoint ep, object addr, iocpx_addr_t* out) except -1:
    """sendto's address as a sockaddr (its length): the tuple on_datagram
    gave (found by identity), one seen before, or parsed. Only numeric
    addresses: sendto never blocks on name resolution."""
    cdef int i
    cdef AddrSlot* slot
    if ep.cache != NULL:
        i = ep.cache.by_obj[_obj_slot(addr)]
        if i:
            slot = &ep.cache.slot[i - 1]
            if slot.tup == <PyObject*>addr:
                memcpy(out, &slot.sa, sizeof(iocpx_addr_t))
                return sizeof(out.v6) if ep.family == AF_INET6 else sizeof(out.v4)
    if ep.sendto_cache is not None:
        raw = ep.sendto_cache.get(addr) if type(addr) is tuple else None
        if raw is not None:
            memcpy(out, iocpx_bytes_ptr(raw), iocpx_bytes_len(raw))
            return <int>iocpx_bytes_len(raw)
    cdef int n = _dg_parse(ep, addr, out)
    if type(addr) is tuple:
        if ep.sendto_cache is None or len(ep.sendto_cache) >= SENDQ_CACHE_MAX:
            ep.sendto_cache = {}
        ep.sendto_cache[addr] = PyBytes_FromStringAndSize(<char*>out, n)
    return n


cdef int _dg_parse(Endpoint ep, object addr, iocpx_addr_t* out) except -1:
    fam = "IPv6" if ep.family == AF_INET6 else "IPv4"
    if not isinstance(addr, tuple) or len(addr) not in (2, 4):
        raise TypeError(f"addr must be a (host, port) tuple, not {addr!r}")
    host, port = addr[0], addr[1]
    if not isinstance(host, str):
        raise TypeError(f"host must be a str, not {type(host).__name__}")
    if isinstance(port, bool) or not isinstance(port, int):
        raise TypeError(f"port must be an int, not {type(port).__name__}")
    if not 0 < port <= 65535:
        raise ValueError(f"port must be in 1..65535, got {port}")
    try:
        infos = _socket.getaddrinfo(host, port, ep.family, _socket.SOCK_DGRAM, 0,
                                    _socket.AI_NUMERICHOST)
    except _socket.gaierror:
        other = AF_INET if ep.family == AF_INET6 else AF_INET6
        try:
            _socket.getaddrinfo(host, port, other, _socket.SOCK_DGRAM, 0, _socket.AI_NUMERICHOST)
        except _socket.gaierror:
            raise ValueError(f"sendto() takes a numeric IP address, not {host!r} (it never "
                             f"blocks on name resolution: resolve names with "
                             f"socket.getaddrinfo first)") from None
        raise ValueError(f"{host!r} is an {'IPv4' if other == AF_INET else 'IPv6'} address, "
                         f"and this endpoint is {fam}") from None
    sa = infos[0][4]
    if len(addr) == 4 and ep.family == AF_INET6:
        sa = (sa[0], sa[1], addr[2], addr[3])
    return _fill_addr(out, ep.family, sa)


cdef void dgram_cache_free(Endpoint ep) noexcept:
    cdef int i
    if ep.cache == NULL:
        return
    for i in range(ADDR_SLOTS):
        Py_XDECREF(ep.cache.slot[i].tup)
    free(ep.cache)
    ep.cache = NULL


# ---- closing -------------------------------------------------------------------

cdef void dgram_close(Endpoint ep) noexcept:
    """close(): deliver nothing more, let the datagrams in flight go, then
    cancel the receives; on_close(ep, None) once all is reaped."""
    if ep.user_closed:
        return
    ep.user_closed = 1
    if ep.state == D_OPEN:
        ep.state = D_CLOSING
    dgram_progress(ep)


cdef void dgram_abort(Endpoint ep, object exc) noexcept:
    """Close now: drop the queued datagrams, cancel everything."""
    if ep.state >= D_ABORTING:
        return
    if ep.close_exc is None:
        ep.close_exc = exc
    ep.state = D_ABORTING
    if ep.sendq:
        for data, raw in ep.sendq:
            ep.send_buffered -= iocpx_bytes_len(data)
        dgram_dropped(ep, len(ep.sendq))
    ep.sendq = None
    dgram_cancel(ep)


cdef void dgram_progress(Endpoint ep) noexcept:
    """Closing: once the sends in flight are done, cancel the receives."""
    if ep.state == D_CLOSING and ep.send_inflight == 0 and not ep.sendq:
        dgram_cancel(ep)


cdef void dgram_cancel(Endpoint ep) noexcept:
    cdef IoCtx* io
    if ep.cancel_sent or ep.fd < 0:
        return
    ep.cancel_sent = 1
    try:
        io = io_alloc_wait(OP_CANCEL, ep, &ep.sched)    # without it the endpoint never ends
    except BaseException:
        return
    io.fd = ep.fd
    ep.inflight += 1
    ep.eng.inflight += 1
    try:
        ep.eng.be.submit_cancel_fd(io, ep.fd)
    except BaseException:
        ep_io_done(ep, io)
        engine_fault(ep.eng)
        log.exception("iocpx: could not cancel the operations of endpoint %d", ep.id)


cdef void dgram_maybe_finish(Endpoint ep) noexcept:
    """Close the socket and report on_close once nothing is pending (dispatch)."""
    if ep.state == D_OPEN or ep.state == D_CLOSED or ep.inflight > 0:
        return
    if ep.state == D_CLOSING and not ep.cancel_sent:
        return
    cdef Engine eng = ep.eng
    ep.state = D_CLOSED
    _sock_close(ep.fd)
    ep.fd = -1
    dgram_cache_free(ep)
    ep.sendto_cache = None
    eng._endpoints.pop(ep.id, None)
    cb = ep.on_close
    exc = ep.close_exc
    ep.on_datagram = ep.on_close = ep.on_error = None
    ep.close_exc = None
    if exc is not None:
        log.debug("iocpx: endpoint %d closed: %r", ep.id, exc)
    if cb is not None:
        try:
            cb(ep, exc)
        except BaseException as e:
            log.error("iocpx: on_close raised for endpoint %d", ep.id, exc_info=e)


@cython.final
@cython.no_gc_clear
cdef class Endpoint:
    """A UDP socket on the engine's port. Made by Engine.datagram()."""

    def __cinit__(self):
        self.fd = -1
        self.state = D_CLOSED

    def __dealloc__(self):
        evq_free(&self.sched.backlog)
        dgram_cache_free(self)
        _sock_close(self.fd)

    def sendto(self, data, addr=None):
        """Send one datagram (bytes-like) to addr, a numeric (host, port)
        (None: the remote_address). Thread-safe; never blocks. Returns True
        when the datagram went to the kernel, False when it was dropped
        because max_send_buffer bytes are still in flight (counted in
        datagrams_dropped). A datagram larger than UDP carries (65,507 bytes
        over IPv4, 65,527 over IPv6) is OSError(EMSGSIZE) at once, nothing
        sent; a bad address a TypeError/ValueError. Errors of the network
        reach on_error."""
        return dgram_sendto(self, data, addr)

    def close(self):
        """Stop delivering, let the datagrams in flight go, then close; on_close(ep,
        None) follows. Idempotent; thread-safe."""
        dgram_close(self)
        self.eng._kick()

    def abort(self):
        """Close at once, dropping queued datagrams; on_close(ep, None) follows."""
        if self.user_closed and self.state >= D_ABORTING:
            return
        self.user_closed = 1
        dgram_abort(self, None)
        self.eng._kick()

    @property
    def closed(self):
        return bool(self.user_closed or self.state != D_OPEN)

    @property
    def engine(self):
        return self.eng

    def stats(self):
        """This endpoint's counters."""
        dgram_sync_drops(self)
        return {"datagrams_in": self.datagrams_in, "datagrams_out": self.datagrams_out,
                "datagrams_dropped": self.datagrams_dropped,
                "send_buffered": self.send_buffered}

    def __repr__(self):
        states = ("open", "closing", "aborting", "closed")
        return f"<iocpx.Endpoint {self.id} {self.address!r} {states[self.state]}>"
