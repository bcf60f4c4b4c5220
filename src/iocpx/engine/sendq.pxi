# Sending: the per-connection send queue (one send in flight, small sends
# coalesced, partial sends finished), and flow control (max_send_buffer,
# on_drain, SendBufferFull). send() is thread-safe: this code runs no Python
# callbacks between its checks and its updates, so the GIL keeps it atomic.

cdef enum:
    COALESCE = 65536        # join queued small sends up to this many bytes
    HARD_SLACK = 8 << 20    # send() refuses past max_send_buffer + max(it, this)


cdef int conn_send(Connection c, object data) except -1:
    """Connection.send()."""
    if type(data) is not bytes:
        if isinstance(data, str):
            raise TypeError("send() takes bytes-like data, not str (encode it first)")
        try:
            data = bytes(memoryview(data))
        except TypeError:
            raise TypeError(f"send() takes bytes-like data, not {type(data).__name__}") from None
    conn_check_usable(c)
    cdef Py_ssize_t n = iocpx_bytes_len(data)
    if n == 0:
        return 0
    if c.state >= C_ABORTING:           # the peer broke it: on_close will say so
        c.eng.n_bytes_dropped += n
        return 0
    if c.tls is not None:
        return tls_send(c, data, n)     # plaintext queued, encrypted on its way out
    conn_reserve(c, n)
    if c.send_io == NULL and not c.sendq and c.state != C_CONNECTING:
        conn_submit_bytes(c, data, n)   # the usual case: nothing queued, no deque needed
    else:
        if c.sendq is None:
            c.sendq = deque()           # made on first need: idle connections carry none
        c.sendq.append(data)
        if c.send_io == NULL and c.state != C_CONNECTING:
            conn_send_safe(c)           # queued: a failure ends the connection, not this call
    c.eng._kick()
    return 0


cdef int conn_reserve(Connection c, Py_ssize_t n) except -1:
    """Account n bytes about to be queued. Past max_send_buffer reading
    pauses (a request/response peer is bounded by that alone: what was
    already read is bounded by the receive pool). A producer that keeps
    pushing is refused with SendBufferFull past the hard cap."""
    cdef Py_ssize_t cap = c.max_send + (c.max_send if c.max_send > HARD_SLACK else HARD_SLACK)
    if c.send_buffered > 0 and c.send_buffered + n > cap:
        c.was_full = 1
        raise SendBufferFull(_errno.EAGAIN,
                             f"send buffer full ({c.send_buffered} bytes queued, "
                             f"max_send_buffer={c.max_send}); wait for on_drain")
    c.send_buffered += n
    if c.send_buffered > c.max_send and not c.was_full:
        c.was_full = 1
        if c.state == C_OPEN and (c.tls is None or c.tls.stage != TLS_HANDSHAKE):
            # (a handshake needs reading: tls_ready pauses once it is done)
            conn_pause(c, PAUSE_FULL)
    return 0


cdef int conn_send_next(Connection c) except -1:
    """Hand the head of the send queue to the kernel unless a send is in flight."""
    cdef Py_ssize_t total, n
    if c.tls is not None:
        return tls_send_next(c)
    while c.send_io == NULL and c.sendq:
        item = c.sendq[0]
        if type(item) is FileJob:
            if conn_sendfile_next(c, <FileJob>item):
                return 0
            c.sendq.popleft()
            (<FileJob>item).finish()
            continue
        n = iocpx_bytes_len(item)
        c.sendq.popleft()
        if n < COALESCE and c.sendq and type(c.sendq[0]) is bytes:
            parts = [item]
            total = n
            while c.sendq and type(c.sendq[0]) is bytes and \
                    total + iocpx_bytes_len(c.sendq[0]) <= COALESCE:
                nxt = c.sendq.popleft()
                total += iocpx_bytes_len(nxt)
                parts.append(nxt)
            if len(parts) > 1:
                item = b"".join(parts)
                n = total
        conn_submit_bytes(c, item, n)
        if c.state >= C_ABORTING:
            break
    return 0


cdef void conn_send_safe(Connection c) noexcept:
    try:
        conn_send_next(c)
    except BaseException as e:
        c._abort(e)


cdef int conn_submit_bytes(Connection c, object item, Py_ssize_t n) except -1:
    """Send n bytes of item now if the backend can, else hand them to the
    kernel as the one send in flight. A failure ends the connection (on_close
    reports it); it is not raised."""
    cdef IoCtx* io
    cdef Py_ssize_t sent = 0
    if 0 <= c.eng.be.sync_send <= n:    # try now: done at once costs no completion
        sent = c.eng.be.try_send(c.fd, iocpx_bytes_ptr(item), n)
        if sent == n:
            conn_count_sent(c, n)
            conn_drain_due(c)
            return 0
        if sent < 0:
            if sent != -_errno.EAGAIN:
                c._abort(peer_error(c.eng.be, <int>-sent, "send"))
                return 0
            sent = 0
        elif sent > 0:
            conn_count_sent(c, sent)
    try:
        io = c._new_io(OP_SEND)
    except BaseException as e:          # the bytes are reserved: end the connection, not this call
        c._abort(e)
        return 0
    io_set_obj(io, item)                # the kernel reads item's buffer until completion
    io.buf = iocpx_bytes_ptr(item) + sent
    io.len = n - sent
    try:
        c.eng.be.submit_send(io)
    except BaseException as e:
        c._io_done(io)
        c._abort(e)
        return 0
    c.send_io = io
    return 0


cdef void conn_on_send(Connection c, Event* ev) except *:
    cdef IoCtx* io = ev.io
    cdef int res = ev.res
    if res > 0:
        io.buf += res
        io.len -= res
        conn_sent(c, res)
        if io.len > 0 and c.state < C_ABORTING:     # partial send: the rest
            try:
                c.eng.be.submit_send(io)
                return
            except BaseException as e:
                c.send_io = NULL
                c._io_done(io)
                c._abort(e)
                c._maybe_finish()
                return
    c.send_io = NULL
    c._io_done(io)
    if res < 0 and res != -_errno.ECANCELED:
        c._abort(peer_error(c.eng.be, -res, "send"))
    elif res == 0 and io.len > 0:
        c._abort(peer_error(c.eng.be, _errno.EPIPE, "send"))
    if c.state < C_ABORTING:
        conn_send_safe(c)
    if c.sink is not None:
        stream_on_sent(c)               # an asyncio transport's write flow control
    c._maybe_finish()


cdef void conn_drop_queue(Connection c) noexcept:
    """Forget what is queued (abort, close): its bytes count as dropped."""
    if c.sendq:
        for item in c.sendq:
            if type(item) is FileJob:
                (<FileJob>item).finish()
    c.sendq = None
    c.eng.n_bytes_dropped += c.send_buffered
    c.send_buffered = 0


cdef void conn_sent(Connection c, Py_ssize_t n) noexcept:
    """n more bytes left the send queue (a completion): account for them
    and resume reading / report on_drain once the queue is back to half
    of max_send_buffer."""
    conn_count_sent(c, n)
    conn_check_drain(c)


cdef inline void conn_count_sent(Connection c, Py_ssize_t n) noexcept:
    c.eng.n_bytes_out += n
    c.last_tick = c.eng.tick
    if c.tls is not None:
        n = tls_sent(c.tls, n)          # wire bytes -> the plaintext they carried
    if c.state >= C_ABORTING:           # counted as dropped when the queue was dropped
        c.eng.n_bytes_dropped -= n
    else:
        c.send_buffered -= n


cdef void conn_drain_due(Connection c) noexcept:
    """After a synchronous send: if on_drain is due, deliver it from
    dispatch (this may be any thread) through a posted completion."""
    cdef IoCtx* io
    if c.was_full and c.send_buffered <= c.max_send // 2 and c.state < C_ABORTING:
        try:
            io = c._new_io(OP_NOP)
        except BaseException:
            return
        try:
            c.eng.be.submit_post(io)
        except BaseException:
            c._io_done(io)


cdef void conn_check_drain(Connection c) noexcept:
    """Runs in dispatch only (it may call on_drain)."""
    if c.was_full and c.send_buffered <= c.max_send // 2:
        c.was_full = 0
        if c.state == C_OPEN or c.state == C_CLOSING:
            try:
                conn_resume(c, PAUSE_FULL)
            except BaseException as e:
                c._abort(e)
                return
            if c.on_drain is not None and c.state < C_ABORTING:
                c._call(c.on_drain, None)
