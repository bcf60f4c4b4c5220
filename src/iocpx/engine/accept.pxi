# Accepting, and the first-data path in one piece (the model's steps 4-6).
#
# Accepts are pre-posted: `accepts` of them sit in the kernel, each re-posted
# as soon as it completes. With first_data=True a connection reaches the
# application only together with its first bytes: on_accept(conn, data).
#
#  * Where the kernel can accept and receive in one operation (AcceptEx on
#    Windows) the accept asks for the first bytes: io.len = buffer_size, and
#    the completion carries them (accept_data). A client that connects and
#    says nothing holds such a slot, so the backend cancels a slot whose
#    client stays silent for first_data_timeout (SO_CONNECT_TIME), and the
#    guard below checks the slots every GUARD_MS: a slot that held a connected
#    client without data at two checks in a row holds a silent one. If any,
#    new slots are posted without a receive buffer for a while (plain mode),
#    plus one extra slot per silent one, so silent clients can never use up
#    the accepts.
#  * Everywhere else (and in plain mode) the accept completes on connect; the
#    connection waits, unseen, in the listener's silent list for its first
#    receive, and is closed unseen when first_data_timeout passes first.
#
# Either way a timed-out client is never surfaced and is counted in
# stats()["first_data_timeouts"]; a client that connects and closes without
# sending surfaces as on_accept(conn, b"") followed by on_close(conn, None).

cdef enum:
    GUARD_MS = 100          # how often AcceptEx slots are checked for silent clients
    EXPIRE_BATCH = 64       # silent connections closed per timer run at most
    EXPIRE_SHARE = 4        # ... and the runs take at most 1/EXPIRE_SHARE of the time,
    EXPIRE_BEHIND_SHARE = 2 # or 1/EXPIRE_BEHIND_SHARE once they are EXPIRE_BEHIND_S late
    PLAIN_MIN_S = 10        # plain mode lasts at least this long after a silent slot was seen

cdef double EXPIRE_BEHIND_S = 2.0


cdef int listener_arm(Listener lst) except -1:
    """Post one more accept."""
    cdef IoCtx* io = io_alloc(OP_ACCEPT, lst, NULL)
    io.fd = lst.fd
    _accept_prepare(lst, io)
    try:
        lst.eng.be.submit_accept(io)
    except BaseException:
        io_free(io)
        raise
    lst.inflight += 1
    lst.armed += 1
    lst.eng.inflight += 1
    return 0


cdef inline void _accept_prepare(Listener lst, IoCtx* io) noexcept:
    """Ask for first data with the accept, unless in plain mode."""
    if lst.first_data and lst.eng.be.accept_with_data and time.monotonic() >= lst.plain_until:
        io.len = lst.buffer_size
        io.aux.silent_ms = <int64_t>(lst.first_data_timeout * 1000)
    else:
        io.len = 0
        io.aux.silent_ms = 0


cdef int listener_rearm(Listener lst, IoCtx* io) except -1:
    """Post a completed accept's context again, or retire it when the
    listener has more slots than it needs (extra slots of the guard)."""
    if lst.armed >= lst.accepts + lst.silent_slots:
        listener_io_done(lst, io)
        return 0
    io.op = OP_ACCEPT
    _accept_prepare(lst, io)
    try:
        lst.eng.be.submit_accept(io)
    except BaseException:
        listener_io_done(lst, io)
        raise
    lst.armed += 1
    return 0


cdef void listener_on_accept(Listener lst, Event* ev) except *:
    """An accept completed: a new connection (res = its socket), or an error."""
    cdef IoCtx* io = ev.io
    cdef int res = ev.res
    cdef Engine eng = lst.eng
    cdef int err
    lst.armed -= 1
    if lst.state != L_OPEN:
        if res >= 0:
            _sock_close(res)
        listener_io_done(lst, io)
        listener_maybe_finish(lst)
        return
    if res < 0:
        err = -res
        if err == _errno.ECANCELED:
            listener_io_done(lst, io)
            listener_maybe_finish(lst)
        elif err == _errno.ETIMEDOUT and io.len > 0:
            # the backend dropped a client that stayed silent in an AcceptEx slot
            eng.n_first_data_timeouts += 1
            listener_rearm(lst, io)
        elif err in (_errno.EMFILE, _errno.ENFILE, _errno.ENOBUFS, _errno.ENOMEM):
            eng.n_accept_errors += 1
            now = time.monotonic()
            if now - lst.last_warn > 1.0:
                lst.last_warn = now
                log.warning("iocpx: accept on %s failed (%s); retrying in %d ms",
                            lst.address, strerror(err), BACKOFF_MS)
            listener_io_done(lst, io)
            internal_timer(eng, BACKOFF_MS / 1000.0, listener_retry, lst)
        else:
            # the client went away before it was accepted (ECONNABORTED,
            # ERROR_NETNAME_DELETED...): re-post at once, as CPython's proactor does not
            eng.n_accept_errors += 1
            log.debug("iocpx: accept on %s failed: %s", lst.address, strerror(err))
            listener_rearm(lst, io)
        return
    eng.n_accepted += 1
    data = eng.be.accept_data(ev)       # AcceptEx's first bytes, or None
    if data:                            # (bytes from receives are counted in conn_on_recv)
        eng.n_bytes_in += len(data)
        eng.n_msgs_in += 1
    cdef Connection conn = Connection._new(eng, res, lst.group, lst.on_recv, lst.on_close,
                                           lst.on_drain, lst.max_send, lst.idle_ticks, lst.nodelay)
    conn.get_buffer = lst.get_buffer
    conn.on_recv_into = lst.on_recv_into
    memcpy(&conn.peer_addr, &io.addr, sizeof(iocpx_addr_t))
    conn.have_peer = 1
    listener_rearm(lst, io)             # the slot is free again: re-post it first
    conn_start_accepted(conn, lst, data)


def listener_retry(Listener lst):
    """The accept back-off ended: post the accept again (engine timer)."""
    if lst.state == L_OPEN and lst.eng.state == E_RUNNING and lst.armed < lst.accepts:
        listener_arm(lst)


cdef int conn_start_accepted(Connection c, Listener lst, object data) except -1:
    """Runs in the listener's accept completion. This connection's events are
    held back (running=1) until on_accept has run or it waits for first data.
    data: the first bytes if the backend received them with the accept."""
    cdef Engine eng = c.eng
    cdef bint waits
    if lst.glue is not None:            # the asyncio loop's server: a transport, reading
        eng._conns[c.id] = c            # once connection_made() has run (loop/server.pxi)
        c.nodelay = lst.nodelay
        if c.nodelay:
            iocpx_sock_nodelay(c.fd, 1)
        server_on_accept(<ServerGlue>lst.glue, c)
        return 0
    c.on_accept = lst.on_accept
    eng._conns[c.id] = c
    iocpx_mutex_lock(&eng.mu)       # with the GIL: never wait for the GIL holding mu
    c.sched.running = 1
    iocpx_mutex_unlock(&eng.mu)
    try:
        waits = lst.ssl_ctx is None and lst.first_data and data is None   # for its first data
        conn_established(c, not waits)  # (one that waits for first data: nodelay when it surfaces)
        if lst.ssl_ctx is not None:
            tls_accepted(c, lst, data)  # surfaces after the handshake
        elif not waits:
            conn_surface(c, data if data is not None else b"")
        else:
            c.first_pending = 1
            silent_add(lst, c)
    finally:
        drain_node(eng, &c.sched)
    return 0


cdef void conn_surface(Connection c, object data) noexcept:
    """Hand the connection to the application: on_accept(conn, data)."""
    if c.first_pending and c.nodelay and c.tls is None and c.fd >= 0:
        iocpx_sock_nodelay(c.fd, 1)     # not set while it waited: silent ones never need it
    c.first_pending = 0
    if c.silent is not None:
        silent_remove(c)
    if c.state > C_CLOSING:
        return                          # it failed on the way (arming its receive): it closes unseen
    c.surfaced = 1
    if c.on_accept is not None:
        c._call(c.on_accept, data)


# ---- connections waiting for first data: a list per listener, oldest first,
# ---- and one timer at the oldest deadline (the timeout is the same for all)

@cython.final
@cython.no_gc_clear
cdef class SilentLink:
    """A waiting connection's links and deadline (layout in _core.pxd)."""

cdef void silent_add(Listener lst, Connection c) noexcept:
    if lst.first_data_timeout <= 0:
        return
    cdef SilentLink link = SilentLink.__new__(SilentLink)
    link.owner = lst
    link.deadline = time.monotonic() + lst.first_data_timeout
    link.prev = lst.silent_tail
    link.next = NULL
    c.silent = link
    Py_INCREF(c)                        # the list's reference
    if lst.silent_tail != NULL:
        (<Connection>lst.silent_tail).silent.next = <PyObject*>c
    else:
        lst.silent_head = <PyObject*>c
    lst.silent_tail = <PyObject*>c
    if lst.silent_timer is None:
        _silent_schedule(lst)


cdef void silent_remove(Connection c) noexcept:
    """Unlink c from its listener's list (it surfaced, closed or timed out)."""
    cdef SilentLink link = c.silent
    if link is None:
        return
    cdef Listener lst = link.owner
    if link.prev != NULL:
        (<Connection>link.prev).silent.next = link.next
    else:
        lst.silent_head = link.next
    if link.next != NULL:
        (<Connection>link.next).silent.prev = link.prev
    else:
        lst.silent_tail = link.prev
    c.silent = None
    Py_DECREF(c)


cdef void _silent_schedule(Listener lst, double not_before=0.0) noexcept:
    if lst.silent_head == NULL or lst.eng.state != E_RUNNING:
        return
    try:
        lst.silent_timer = internal_timer_at(
            lst.eng, max((<Connection>lst.silent_head).silent.deadline, not_before),
            silent_expire, lst)
    except BaseException:
        log.exception("iocpx: could not schedule the first-data timeout")


def silent_expire(Listener lst):
    """Close, unseen, the connections whose first data did not come in time.
    Closing them is the engine's least urgent work: a run closes EXPIRE_BATCH
    at most, and the next run waits (EXPIRE_SHARE - 1) times as long as this
    one took, so that thousands expiring together (a burst of silent clients)
    take at most a quarter of the time and never hold up the accepts and the
    other connections' events; where closing is slow, as under Wine, that
    matters. Once the oldest is EXPIRE_BEHIND_S late, they get half of the
    time, so that a steady stream of silent clients cannot pile up."""
    cdef Connection c
    cdef int n = 0
    lst.silent_timer = None
    now = time.monotonic()
    cdef int share = EXPIRE_SHARE
    if lst.silent_head != NULL and now - (<Connection>lst.silent_head).silent.deadline > EXPIRE_BEHIND_S:
        share = EXPIRE_BEHIND_SHARE
    while lst.silent_head != NULL and n < EXPIRE_BATCH:
        c = <Connection>lst.silent_head
        if c.silent.deadline > now:
            break
        silent_remove(c)
        if c.first_pending and c.state == C_OPEN:
            n += 1
            lst.eng.n_first_data_timeouts += 1
            c._abort(TimeoutError(_errno.ETIMEDOUT,
                                  f"no data within first_data_timeout ({lst.first_data_timeout:g} s)"))
    done = time.monotonic()
    _silent_schedule(lst, done + (done - now) * (share - 1))


# ---- AcceptEx slots held by silent clients (backends with accept_with_data)

cdef void guard_schedule(Listener lst) except *:
    lst.guard_timer = internal_timer(lst.eng, GUARD_MS / 1000.0, guard_check, lst)


def guard_check(Listener lst):
    """Count the slots that hold a silent client; while there are any, post
    new slots without a receive buffer, and one extra slot per silent one."""
    lst.guard_timer = None
    if lst.state != L_OPEN or lst.eng.state != E_RUNNING:
        return
    cdef int k = lst.eng.be.accept_silent(lst.fd)
    if k > 0:
        if lst.plain_until <= time.monotonic():
            log.debug("iocpx: %d accept slot(s) on %s hold clients that send nothing; "
                     "accepting without first data for now", k, lst.address)
        lst.plain_until = time.monotonic() + max(lst.first_data_timeout, <double>PLAIN_MIN_S)
    lst.silent_slots = k
    while lst.armed < lst.accepts + lst.silent_slots:
        listener_arm(lst)
    lst.eng._kick()
    guard_schedule(lst)


cdef Timer internal_timer(Engine eng, double delay, object fn, object arg):
    return internal_timer_at(eng, time.monotonic() + delay, fn, arg)


cdef Timer internal_timer_at(Engine eng, double when, object fn, object arg):
    """The engine's own timers (back-off, first-data deadlines, guard): their
    errors count as internal. Not queued once the engine closes."""
    cdef Timer t = timer_new(eng, when, fn, (arg,), True)
    if eng.state == E_RUNNING:
        timers_push(eng, t)
    return t
