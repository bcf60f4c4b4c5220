# Receiving (the model's step 9): one receive armed per connection (multishot
# where the backend has it), its completions turned into on_recv calls in
# stream order, the receive re-posted when it ends, reading paused and resumed.
#
# Pausing cancels the receive, but the kernel may have read ahead of the
# cancel: those bytes are held (c.held) and delivered, in order, once reading
# resumes, so no on_recv runs while a connection is paused.

cdef enum:
    PAUSE_USER = 1          # pause_reading()
    PAUSE_FULL = 2          # send_buffered went past max_send_buffer


cdef int conn_start_recv(Connection c) except -1:
    """Arm the connection's receive."""
    cdef IoCtx* io = c._new_io(OP_RECV)
    io.group = c.group
    try:
        c.eng.be.submit_recv(io)
    except BaseException:
        c._io_done(io)
        raise
    c.recv_io = io
    return 0


cdef void conn_on_recv(Connection c, Event* evs, int k) except *:
    """k receive events of one op (k > 1 only for data events that came back
    to back): one callback with all of their bytes, in order."""
    cdef Engine eng = c.eng
    cdef Event* ev = &evs[k - 1]        # the last one says whether the op goes on
    cdef Py_ssize_t res, off = 0, total = 0
    cdef int i
    cdef bint delivered = 0
    data = None
    if c.sink is not None and evs[0].res > 0 and evs[0].data != NULL and c.state == C_OPEN \
            and not c.paused and not c.held and (<StreamTransport>c.sink).buffered:
        # an asyncio BufferedProtocol: the bytes go from the receive buffers
        # straight into the protocol's (loop/stream.pxi); no bytes object
        for i in range(k):
            total += evs[i].res
        res = total
        eng.n_msgs_in += k - 1
        stream_on_events(c, evs, k)
        delivered = 1
    elif c.get_buffer is not None and evs[0].res > 0 and evs[0].data != NULL \
            and c.state == C_OPEN and not c.paused and not c.held and c.tls is None \
            and not c.first_pending:
        # the receive-into path: from the receive buffers into the application's
        for i in range(k):
            total += evs[i].res
        res = total
        eng.n_msgs_in += k - 1
        conn_into_events(c, evs, k)
        delivered = 1
    elif k == 1:
        data = eng.be.recv_bytes(ev)    # the buffer goes back to the kernel here
        res = ev.res
    else:
        for i in range(k):
            total += evs[i].res
        data = PyBytes_FromStringAndSize(NULL, total)
        for i in range(k):
            off += eng.be.recv_copy(&evs[i], iocpx_bytes_ptr(data) + off)
        res = total
        eng.n_msgs_in += k - 1
    if not (ev.flags & EV_MORE):        # this receive op is over
        if c.recv_io == ev.io:
            c.recv_io = NULL
        if c.recv_cancel == ev.io:
            c.recv_cancel = NULL
        c._io_done(ev.io)
    if res > 0:
        eng.n_bytes_in += res
        eng.n_msgs_in += 1
        c.last_tick = eng.tick
        if delivered:
            pass
        elif c.state == C_OPEN:
            if c.paused or c.held:          # read ahead of a pause: keep it, in order
                conn_hold(c, data)
            else:
                conn_deliver(c, data)
    elif res == 0:
        if c.state != C_OPEN:
            c.peer_eof = 1                  # lingering close: the peer's FIN
        elif c.held:
            c.held_eof = 1                  # after the held bytes
        else:
            conn_on_eof(c)
    elif res != -_errno.ENOBUFS and res != -_errno.ECANCELED:
        c._abort(peer_error(eng.be, -res, "recv"))
    conn_rearm_recv(c)
    c._maybe_finish()


cdef inline void conn_deliver(Connection c, object data) noexcept:
    """Received bytes to the application: on_accept with the first ones
    (first_data), on_recv after. On TLS: ciphertext, decrypted first. An
    asyncio transport's protocol gets them from the sink (loop/stream.pxi)."""
    if c.sink is not None:
        try:
            stream_on_data(c, data)
        except BaseException as e:
            c._abort(e)
    elif c.tls is not None:
        tls_on_data(c, data)
    elif c.first_pending:
        conn_surface(c, data)
    elif c.get_buffer is not None:
        conn_into_bytes(c, data)
    elif c.on_recv is not None:
        c._call(c.on_recv, data)


# ---- the receive-into path: get_buffer(conn, sizehint) + on_recv_into(conn, n) ----

cdef Py_ssize_t conn_into(Connection c, const char* ptr, Py_ssize_t n, bint whole) except -2:
    """Copy n bytes at ptr into the application's buffers: get_buffer(conn,
    sizehint), the copy, on_recv_into(conn, nbytes), as many rounds as it
    takes. Stops early when reading was paused meanwhile (unless whole: TLS
    plaintext goes out in one piece, as on_recv gets it) or the connection is
    ending; returns the bytes delivered, or -1 when a callback failed (the
    connection is then aborted with that exception)."""
    cdef Py_ssize_t off = 0, got
    while off < n:
        if c.state != C_OPEN or (c.paused and not whole):
            break
        try:
            buf = c.get_buffer(c, n - off)
            got = iocpx_copy_into(buf, ptr + off, n - off)
            if got <= 0:
                raise ValueError("get_buffer() returned an empty buffer")
        except BaseException as e:
            log.error("iocpx: get_buffer raised; closing connection %d", c.id, exc_info=e)
            c._abort(e)
            return -1
        buf = None                      # the application's again
        off += got
        if c._call(c.on_recv_into, got) < 0:
            return -1
    return off


cdef void conn_into_events(Connection c, Event* evs, int k) except *:
    """Receive events on the receive-into path: each one's bytes copied from
    the receive buffer, which goes straight back; what a pause leaves is held,
    in order (c.held), for when reading resumes."""
    cdef Backend be = c.eng.be
    cdef int i
    cdef Py_ssize_t n, got = 0
    cdef bint failed = 0
    for i in range(k):
        n = evs[i].res
        if not failed:
            got = conn_into(c, <const char*>evs[i].data, n, False) if not c.held else 0
            if got < 0:
                failed = 1              # aborted: the rest is dropped with the connection
            elif got < n and c.state == C_OPEN:
                conn_hold(c, PyBytes_FromStringAndSize(<const char*>evs[i].data + got, n - got))
        be.recv_release(&evs[i])


cdef void conn_into_bytes(Connection c, object data) except *:
    """Bytes (from a backend without in-place receive buffers, held ones, TLS
    plaintext) on the receive-into path; a remainder a pause leaves goes back
    to the front of what is held."""
    cdef Py_ssize_t n = iocpx_bytes_len(data)
    cdef Py_ssize_t got = conn_into(c, iocpx_bytes_ptr(data), n, c.tls is not None)
    if 0 <= got < n and c.state == C_OPEN:
        conn_hold_front(c, data[got:])


cdef void conn_hold(Connection c, object data) except *:
    if c.held is None:
        c.held = deque()
    c.held.append(data)
    if not c.paused:
        conn_post_held(c)


cdef void conn_post_held(Connection c) except *:
    """Have the held bytes delivered from dispatch (this may be any thread)."""
    cdef IoCtx* io
    if c.held_posted:
        return
    io = c._new_io_wait(OP_NOP)         # else the held bytes wait, unseen, for another resume
    try:
        c.eng.be.submit_post(io)
    except BaseException:
        c._io_done(io)
        raise
    c.held_posted = 1


cdef void conn_deliver_held(Connection c) except *:
    """Runs in dispatch (conn_on_aux): the held bytes, then a held EOF."""
    c.held_posted = 0
    while c.held and not c.paused and c.state == C_OPEN:
        conn_deliver(c, c.held.popleft())
    if not c.held:
        c.held = None
        if c.held_eof and c.state == C_OPEN:
            c.held_eof = 0
            conn_on_eof(c)


cdef void conn_rearm_recv(Connection c) noexcept:
    """The receive re-post: a receive that ended (a multishot op the kernel
    stopped, a buffer pool that ran dry, one cancelled by a pause that was
    resumed since, or a backend whose receives are one-shot) is armed again
    while the connection wants to read and holds nothing back."""
    if c.recv_io == NULL and c.state == C_OPEN and not c.paused and not c.held and not c.held_eof \
            and not c.peer_eof and (c.sink is None or (<StreamTransport>c.sink).made):
        try:
            conn_start_recv(c)
        except BaseException as e:
            c._abort(e)


cdef void conn_on_eof(Connection c) except *:
    """The peer shut down its side: finish sending what is queued, then close."""
    c.peer_eof = 1
    if c.state != C_OPEN:
        return
    if c.sink is not None:              # an asyncio transport: eof_received() decides
        stream_on_eof(c)
        return
    if c.tls is not None and tls_on_eof(c):
        return                          # during the TLS handshake
    if c.first_pending:                 # connected and closed without sending
        conn_surface(c, b"")
    if c.state == C_OPEN:
        c.state = C_CLOSING


cdef void conn_pause(Connection c, int why) except *:
    cdef bint was = c.paused != 0
    c.paused |= why
    if not was and conn_stop_reading(c):
        c.eng.be.flush()                # rare: stop the kernel reading at once


cdef void conn_resume(Connection c, int why) except *:
    if not (c.paused & why):
        return
    c.paused &= ~why
    if not c.paused and c.state == C_OPEN:
        if c.held:
            conn_post_held(c)       # the held bytes first; the receive is armed after them
        elif c.recv_io == NULL and not c.peer_eof:
            conn_start_recv(c)


cdef bint conn_stop_reading(Connection c) except -1:
    """Cancel the armed receive; True if a cancel is (already) on its way."""
    cdef IoCtx* io
    if c.recv_io == NULL:
        return False
    if c.recv_cancel == c.recv_io:
        return True
    io = c._new_io(OP_CANCEL)
    try:
        c.eng.be.submit_cancel_op(io, c.recv_io)
    except BaseException:
        c._io_done(io)
        raise
    c.recv_cancel = c.recv_io
    c.recv_io = NULL                    # a resume arms a fresh one; the old one just ends
    return True
