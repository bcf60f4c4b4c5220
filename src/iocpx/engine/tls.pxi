# TLS: ssl.MemoryBIO + ssl.SSLObject driven by the engine, written once for
# every backend (the backends only ever see ciphertext).
#
#   receive: conn_deliver() -> tls_on_data(): all the ciphertext of a
#            completion (or of merged completions) goes into the incoming BIO
#            at once; the handshake advances, or the plaintext is read out
#            record by record and handed on as one on_accept/on_recv call.
#   send:    send()/sendfile() queue plaintext in c.sendq as for a plain
#            connection (send_buffered counts plaintext); whenever no send is
#            in flight, tls_send_next() encrypts what is queued (several sends,
#            up to TLS_CHUNK bytes, in one SSLObject.write) and hands the
#            ciphertext of the outgoing BIO, handshake records and alerts
#            included, to the send queue's one send in flight. A file is read
#            TLS_CHUNK bytes at a time as the queue drains (memory stays bounded).
#   close:   close() sends close_notify after the queued data (the hook in
#            Connection._maybe_finish), abort() does not.
#
# The SSLObject releases the GIL inside OpenSSL and send() may be called from
# any thread, so every use of it (and every submit on a TLS connection) holds
# the TlsState lock; no callback ever runs with it held.
#
# Counters: stats()["bytes_in"/"bytes_out"] stay wire bytes (ciphertext, what
# the kernel moved); send_buffered, max_send_buffer and SendBufferFull count
# plaintext. A send in flight carries c_left ciphertext bytes for p_left
# plaintext ones: send_buffered drops by p_left when its last byte is sent.

cdef enum TlsStage:
    TLS_HANDSHAKE = 0
    TLS_OPEN = 1
    TLS_SHUTDOWN = 2        # close_notify written: nothing more goes out
    TLS_FAILED = 3          # the TLS layer failed: only its alert goes out

cdef enum:
    TLS_CHUNK = 262144      # plaintext encrypted per pass (and read from a file) at most
    TLS_RECORD = 16384      # the largest plaintext of one record (TLS 1.2 and 1.3)

_ssl_module = None
_SSLError = _SSLWantRead = _SSLZeroReturn = None


cdef object _ssl():
    """The ssl module, imported on first use (plain servers never pay for it)."""
    global _ssl_module, _SSLError, _SSLWantRead, _SSLZeroReturn
    if _ssl_module is None:
        import ssl
        _SSLError = ssl.SSLError
        _SSLWantRead = ssl.SSLWantReadError
        _SSLZeroReturn = ssl.SSLZeroReturnError
        _ssl_module = ssl
    return _ssl_module


cdef object tls_check_context(object ctx, bint server_side):
    """Check an ssl= argument early (at listen/connect/start_tls, not at the
    first handshake): an ssl.SSLContext usable on that side."""
    ssl = _ssl()
    if not isinstance(ctx, ssl.SSLContext):
        raise TypeError(f"ssl must be an ssl.SSLContext or None, not {type(ctx).__name__}")
    if server_side and ctx.protocol == ssl.PROTOCOL_TLS_CLIENT:
        raise ValueError("a PROTOCOL_TLS_CLIENT context cannot serve: use "
                         "ssl.create_default_context(ssl.Purpose.CLIENT_AUTH) or PROTOCOL_TLS_SERVER")
    if not server_side and ctx.protocol == ssl.PROTOCOL_TLS_SERVER:
        raise ValueError("a PROTOCOL_TLS_SERVER context cannot connect: use "
                         "ssl.create_default_context() or PROTOCOL_TLS_CLIENT")
    return ctx


@cython.final
@cython.no_gc_clear
cdef class TlsState:
    """One connection's TLS machine (Connection.tls; None when plain)."""

    def __cinit__(self):
        iocpx_mutex_init(&self.lock)

    def __dealloc__(self):
        iocpx_mutex_destroy(&self.lock)


cdef TlsState tls_new(Connection c, object ctx, bint server_side, object server_hostname,
                      double timeout):
    """The TLS state of c (not started yet). Raises what wrap_bio raises
    (ValueError for a missing server_hostname with check_hostname...)."""
    ssl = _ssl()
    if not server_side and ctx.check_hostname and not server_hostname:
        raise ValueError("check_hostname requires server_hostname")   # as SSLSocket says
    cdef TlsState t = TlsState.__new__(TlsState)
    t.inc = ssl.MemoryBIO()
    t.out = ssl.MemoryBIO()
    t.obj = ctx.wrap_bio(t.inc, t.out, server_side=server_side, server_hostname=server_hostname)
    # SSLObject's read/write/pending/do_handshake only forward to this object (ssl.py, 3.7+):
    # calling it directly saves a Python frame per record
    t.sslo = getattr(t.obj, "_sslobj", t.obj)
    t.server_side = server_side
    t.timeout = timeout
    t.stage = TLS_HANDSHAKE
    return t


cdef inline void tls_lock(TlsState t) noexcept:
    if iocpx_mutex_trylock(&t.lock) != 0:
        with nogil:             # its holder may be waiting for the GIL
            iocpx_mutex_lock(&t.lock)


cdef inline void tls_unlock(TlsState t) noexcept:
    iocpx_mutex_unlock(&t.lock)


cdef void tls_start(Connection c) noexcept:
    """The connection is up (accepted, connected, or start_tls): arm the
    handshake timeout and start the handshake (a client's ClientHello goes
    into the outgoing BIO; the caller's send path flushes it)."""
    cdef TlsState t = c.tls
    try:
        t.timer = internal_timer(c.eng, t.timeout, tls_handshake_expired, c)
    except BaseException as e:
        c._abort(e)
        return
    _tls_advance(c, t, None)


def tls_handshake_expired(Connection c):
    """ssl_handshake_timeout passed (engine timer): close with TimeoutError;
    a server connection was never surfaced and closes unseen."""
    cdef TlsState t = c.tls
    if t is None:
        return
    t.timer = None
    if t.stage == TLS_HANDSHAKE and c.state < C_ABORTING:
        c.eng.n_tls_timeouts += 1
        t.stage = TLS_FAILED
        c._abort(TimeoutError(_errno.ETIMEDOUT, f"TLS handshake not complete within "
                              f"ssl_handshake_timeout ({t.timeout:g} s)"))
        c.eng._kick()


cdef void tls_release(Connection c) noexcept:
    """The connection closed: drop the handshake timer (it holds c)."""
    cdef TlsState t = c.tls
    if t.timer is not None:
        (<Timer>t.timer).cancel()
        t.timer = None
    t.lst = None


# ---- receiving --------------------------------------------------------------

cdef void tls_accepted(Connection c, Listener lst, object data) noexcept:
    """A connection accepted on a TLS listener (conn_start_accepted): it
    surfaces once the handshake is done. data: ciphertext that came with the
    accept (AcceptEx), or None."""
    cdef TlsState t
    try:
        t = tls_new(c, lst.ssl_ctx, True, None, lst.ssl_timeout)
    except BaseException as e:
        c._abort(e)
        return
    t.lst = lst
    c.tls = t
    tls_start(c)
    if data:
        _tls_advance(c, t, data)


cdef void tls_on_data(Connection c, object data) noexcept:
    """Ciphertext received (conn_deliver, in dispatch): feed it all, advance
    the handshake, deliver the plaintext."""
    _tls_advance(c, <TlsState>c.tls, data)


cdef void _tls_advance(Connection c, TlsState t, object data) noexcept:
    cdef bint done = 0, eof = 0
    cdef object plain = None, err = None
    tls_lock(t)
    try:
        if t.stage >= TLS_SHUTDOWN or c.state >= C_ABORTING:
            return
        if data is not None:
            t.inc.write(data)
        if t.stage == TLS_HANDSHAKE:
            try:
                t.sslo.do_handshake()
                t.stage = TLS_OPEN
                done = 1
            except _SSLWantRead:
                pass
        if t.stage == TLS_OPEN:
            plain, eof = _tls_read(t)
    except BaseException as e:      # ssl.SSLError: garbage, a plain-text client, a
        err = e                     # certificate that does not verify...
    finally:
        tls_unlock(t)
    if err is not None:
        tls_fail(c, err)
        return
    if done:
        tls_ready(c, t)
    if c.state < C_ABORTING and c.state != C_CONNECTING and c.send_io == NULL and \
            (t.out.pending or (done and c.sendq)):
        try:
            tls_send_next(c)        # handshake records, a reply to a key update, queued sends
        except BaseException as e:
            c._abort(e)
            return
    if plain and c.state == C_OPEN:
        if c.first_pending:
            conn_surface(c, plain)
        elif c.get_buffer is not None:
            conn_into_bytes(c, plain)
        elif c.on_recv is not None:
            c._call(c.on_recv, plain)
    if eof and c.state == C_OPEN:   # the peer's close_notify: an orderly end
        try:
            conn_on_eof(c)
            conn_stop_reading(c)
        except BaseException as e:
            c._abort(e)


cdef tuple _tls_read(TlsState t):
    """All the plaintext the incoming BIO holds, record by record, joined
    (lock held). (plaintext or None, the peer sent close_notify)."""
    cdef Py_ssize_t want = 0, have
    cdef bint whole = 0                 # the last read took the rest of its record
    cdef list parts = None
    first = None
    obj = t.sslo
    inc = t.inc
    while True:
        have = inc.pending              # ciphertext not consumed yet
        if have == 0:
            if whole:
                break
            want = obj.pending()        # decrypted, not read yet
            if want == 0:
                break
        else:                           # a record's plaintext is shorter than its ciphertext
            want = have if have < TLS_RECORD else TLS_RECORD
        try:
            d = obj.read(want)
        except _SSLWantRead:            # a record not complete yet
            break
        except _SSLZeroReturn:
            return _tls_join(first, parts), True
        if not d:                       # close_notify
            return _tls_join(first, parts), True
        whole = len(d) < want
        if first is None:
            first = d
        else:
            if parts is None:
                parts = [first]
            parts.append(d)
    return _tls_join(first, parts), False


cdef inline object _tls_join(object first, list parts):
    if parts is None:
        return first
    return b"".join(parts)


cdef void tls_ready(Connection c, TlsState t) noexcept:
    """The handshake completed (dispatch): on_accept or on_connect now."""
    cdef Listener lst
    if t.timer is not None:
        (<Timer>t.timer).cancel()
        t.timer = None
    c.eng.n_tls_handshakes += 1
    if c.state != C_OPEN:
        return
    if c.was_full and c.send_buffered > c.max_send:
        try:
            conn_pause(c, PAUSE_FULL)   # held off while the handshake needed reading
        except BaseException as e:
            c._abort(e)
            return
    if t.lst is not None:               # accepted: the application sees it now
        lst = t.lst
        t.lst = None
        if lst.first_data:
            c.first_pending = 1         # on_accept waits for the first plaintext
            silent_add(lst, c)
        else:
            conn_surface(c, b"")
    elif t.notify_connect:
        t.notify_connect = 0
        if c.on_connect is not None:
            c._call(c.on_connect, None)


cdef bint tls_on_eof(Connection c) noexcept:
    """The peer closed TCP. During the handshake that ends the connection
    (ConnectionResetError, as asyncio says; unseen on a server); after it,
    True is not returned and the EOF is an ordinary one (asyncio's choice
    too: a missing close_notify is not reported)."""
    cdef TlsState t = c.tls
    if t.stage != TLS_HANDSHAKE:
        return False
    c.eng.n_tls_errors += 1
    t.stage = TLS_FAILED
    c._abort(ConnectionResetError(_errno.ECONNRESET,
                                  "TLS handshake: the peer closed the connection"))
    return True


cdef void tls_fail(Connection c, object exc) noexcept:
    """The TLS layer failed (bad record, a plain-text client, a certificate
    that does not verify): send the alert OpenSSL wrote, then close with exc
    (on_close(conn, exc) if the application saw the connection)."""
    cdef TlsState t = c.tls
    if t.stage == TLS_HANDSHAKE:
        c.eng.n_tls_errors += 1
    t.stage = TLS_FAILED
    if t.timer is not None:
        (<Timer>t.timer).cancel()
        t.timer = None
    if c.state >= C_ABORTING:
        return
    if c.send_io != NULL or c.state == C_CONNECTING:
        c._abort(exc)               # a send in flight may never finish: no alert
        return
    conn_drop_queue(c)              # queued plaintext can no longer be encrypted
    if c.close_exc is None:
        c.close_exc = exc
    c.state = C_CLOSING
    try:
        conn_stop_reading(c)
        tls_send_next(c)            # the alert; the socket closes once it is sent
    except BaseException as e:
        c._abort(e)


# ---- sending ----------------------------------------------------------------

cdef int tls_send(Connection c, object data, Py_ssize_t n) except -1:
    """send() on a TLS connection: queue plaintext (accounted as such) and
    encrypt it at once when nothing is ahead of it."""
    cdef TlsState t = c.tls
    if t.stage >= TLS_SHUTDOWN:         # close_notify is out or TLS failed: on_close says why
        c.eng.n_bytes_dropped += n
        return 0
    conn_reserve(c, n)
    if c.send_io == NULL and not c.sendq and t.stage == TLS_OPEN and not t.raw_items \
            and c.state < C_ABORTING and c.state != C_CONNECTING and n <= TLS_CHUNK:
        tls_lock(t)                     # the usual case: nothing ahead, encrypt now
        try:
            if c.send_io == NULL and not c.sendq:
                try:
                    t.sslo.write(data)
                    if c.state < C_ABORTING:
                        t.raw = 0
                        cipher = t.out.read()
                        t.c_left = iocpx_bytes_len(cipher)
                        t.p_left = n
                        conn_submit_bytes(c, cipher, t.c_left)
                except BaseException as e:  # the TLS layer broke: on_close says so
                    c._abort(e)
                c.eng._kick()
                return 0
        finally:
            tls_unlock(t)
    if c.sendq is None:
        c.sendq = deque()
    c.sendq.append(data)
    if c.send_io == NULL and c.state != C_CONNECTING:
        tls_send_next(c)
    c.eng._kick()
    return 0


cdef int tls_send_next(Connection c) except -1:
    """The TLS send queue step (conn_send_next's TLS branch): unless a send is
    in flight, hand the next ciphertext to the kernel. A failure (a file that
    cannot be read, the TLS layer) ends the connection; it is not raised."""
    cdef TlsState t = c.tls
    tls_lock(t)
    try:
        _tls_pump(c, t)
    except BaseException as e:
        c._abort(e)
    finally:
        tls_unlock(t)
    return 0


cdef int _tls_pump(Connection c, TlsState t) except -1:
    """Lock held. Only holders of the lock submit sends on a TLS connection,
    so send_io == NULL seen here stays so until we submit."""
    cdef Py_ssize_t plain, n
    while c.send_io == NULL and c.state < C_ABORTING and c.state != C_CONNECTING:
        if t.raw_items > 0:             # plain bytes queued before start_tls: as they are
            if not c.sendq:
                t.raw_items = 0
                continue
            item = c.sendq[0]
            t.raw = 1
            if type(item) is FileJob:
                if conn_sendfile_next(c, <FileJob>item):
                    return 0
                c.sendq.popleft()
                (<FileJob>item).finish()
                t.raw_items -= 1
                continue
            c.sendq.popleft()
            t.raw_items -= 1
            conn_submit_bytes(c, item, iocpx_bytes_len(item))
            continue
        t.raw = 0
        plain = 0
        if t.stage == TLS_OPEN and c.sendq:
            plain = _tls_encrypt(c, t)
            if c.state >= C_ABORTING:   # aborted while OpenSSL ran without the GIL
                return 0
        if not t.out.pending:
            break
        cipher = t.out.read()
        n = iocpx_bytes_len(cipher)
        t.c_left = n
        t.p_left = plain
        conn_submit_bytes(c, cipher, n)
    return 0


cdef Py_ssize_t _tls_encrypt(Connection c, TlsState t) except -1:
    """Encrypt up to TLS_CHUNK bytes from the head of the send queue in one
    SSLObject.write (lock held); returns the plaintext bytes taken."""
    cdef Py_ssize_t total = 0, n, room
    cdef FileJob job
    cdef list parts = []
    q = c.sendq
    while q and total < TLS_CHUNK:
        item = q[0]
        room = TLS_CHUNK - total
        if type(item) is FileJob:
            job = <FileJob>item
            n = job.remaining if job.remaining < room else room
            piece = _file_read(job.fd, job.offset, n)
            if not piece:
                raise OSError(_errno.EIO, "sendfile: the file ended before count bytes")
            n = len(piece)
            job.offset += n
            job.remaining -= n
            parts.append(piece)
            total += n
            if job.remaining <= 0:
                q.popleft()
                job.finish()
            continue
        n = iocpx_bytes_len(item) - t.head_off
        if n <= room:
            parts.append(item if t.head_off == 0 else memoryview(item)[t.head_off:])
            q.popleft()
            t.head_off = 0
            total += n
        else:                           # a large send goes in TLS_CHUNK pieces
            parts.append(memoryview(item)[t.head_off:t.head_off + room])
            t.head_off += room
            total += room
    if total:
        t.sslo.write(parts[0] if len(parts) == 1 else b"".join(parts))
    return total


cdef object _file_read(int fd, int64_t offset, Py_ssize_t n):
    """n bytes of the file at offset (fewer at its end). Our own descriptor
    (FileJob.owned), so moving its position is ours to do where there is no pread."""
    if _HAVE_PREAD:
        return os.pread(fd, n, offset)
    os.lseek(fd, offset, os.SEEK_SET)
    return os.read(fd, n)

_HAVE_PREAD = hasattr(os, "pread")


cdef inline Py_ssize_t tls_sent(TlsState t, Py_ssize_t n) noexcept:
    """n ciphertext bytes of the send in flight went out: the plaintext bytes
    that leave send_buffered (all of the chunk's once its last byte is sent)."""
    if t.raw:
        return n
    t.c_left -= n
    if t.c_left > 0:
        return 0
    n = t.p_left
    t.p_left = 0
    return n


cdef bint tls_shutdown(Connection c) noexcept:
    """Closing and the queue is empty (Connection._maybe_finish): write
    close_notify once and send it. True while that send is in flight."""
    cdef TlsState t = c.tls
    if t.stage == TLS_OPEN:
        tls_lock(t)
        try:
            t.stage = TLS_SHUTDOWN
            try:
                t.obj.unwrap()          # writes close_notify; we do not wait for the peer's
            except _SSLError:           # SSLWantReadError: the peer's is not here
                pass
            _tls_pump(c, t)
        except BaseException as e:
            c._abort(e)
        finally:
            tls_unlock(t)
    elif t.stage == TLS_FAILED and c.send_io == NULL and t.out.pending and c.state == C_CLOSING:
        try:
            tls_send_next(c)            # an alert written after the queue was dropped
        except BaseException as e:
            c._abort(e)
    return c.send_io != NULL


# ---- STARTTLS ---------------------------------------------------------------

cdef int tls_upgrade(Connection c, object ctx, bint server_side, object server_hostname,
                     object timeout) except -1:
    """Connection.start_tls(): from now on every byte is TLS. What was sent
    before is still sent as it is; bytes received and not yet delivered
    (held while paused, or still queued behind this callback) are ciphertext."""
    conn_check_usable(c)
    if c.tls is not None:
        raise ValueError("start_tls(): the connection already uses TLS")
    if c.state == C_CONNECTING:
        raise ValueError("start_tls(): the connection is not connected yet")
    if c.state != C_OPEN:
        raise _closed_error("connection")
    tls_check_context(ctx, server_side)
    cdef double secs = _check_seconds(timeout, "ssl_handshake_timeout", False)
    if server_side and server_hostname is not None:
        raise ValueError("server_hostname is only meaningful with server_side=False")
    cdef TlsState t = tls_new(c, ctx, server_side, server_hostname, secs)
    t.raw_items = len(c.sendq) if c.sendq else 0
    t.raw = c.send_io != NULL       # the send in flight carries plain bytes
    c.tls = t
    tls_start(c)
    if c.state < C_ABORTING:
        tls_send_next(c)
    c.eng._kick()
    return 0
