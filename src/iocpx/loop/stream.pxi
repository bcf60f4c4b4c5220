# The loop's stream transport (TCP and Unix sockets): an asyncio.Transport
# whose I/O is an engine Connection. The Connection's receive completions
# call the protocol directly (data_received, or get_buffer/buffer_updated for
# a BufferedProtocol), writes go to its send queue, and its end is the
# protocol's connection_lost. No Future and no Handle per I/O operation.
#
# The Connection holds the transport (Connection.sink) and the engine holds
# the Connection until it has ended, as a selector loop's registered reader
# holds its transport; connection_lost drops both links.

import warnings as _warnings
import socket as _socket_mod
from asyncio import trsock as _aio_trsock

cdef object _TransportSocket = _aio_trsock.TransportSocket

cdef object _SendfileMode = _aio_constants._SendfileMode
cdef int LOG_CONNLOST = _aio_constants.LOG_THRESHOLD_FOR_CONNLOST_WRITES


cdef int stream_call_failed(StreamTransport t, BaseException exc, str what) except -1:
    """A protocol callback raised: asyncio's _fatal_error, then the
    connection ends with exc (SystemExit/KeyboardInterrupt leave run_forever)."""
    if isinstance(exc, (SystemExit, KeyboardInterrupt)):
        t.loop.pending_exc = exc
        t._force_close(exc)
        return 0
    stream_fatal(t, exc, f"Fatal error: protocol.{what}() call failed.")
    return 0


cdef int stream_fatal(StreamTransport t, object exc, str message) except -1:
    """asyncio's _fatal_error + _force_close: report (quietly for an OSError),
    abort the connection, connection_lost(exc) follows."""
    if isinstance(exc, OSError):
        if t.loop._debug:
            _aio_logger.debug("%r: %s", t, message, exc_info=True)
    else:
        t.loop.call_exception_handler({"message": message, "exception": exc,
                                       "transport": t, "protocol": t.protocol})
    t._force_close(exc)
    return 0


cdef void stream_on_data(Connection c, object data) except *:
    """Received bytes (engine receive path, in order)."""
    cdef StreamTransport t = <StreamTransport>c.sink
    cdef Py_ssize_t n, off, room
    if t.lost or t.protocol is None:
        return
    if not t.buffered:
        try:
            t.protocol.data_received(data)
        except BaseException as exc:
            stream_call_failed(t, exc, "data_received")
        return
    # a BufferedProtocol: its buffers get the bytes (as many get_buffer calls as needed)
    n = len(data)
    off = 0
    while off < n:
        try:
            buf = t.protocol.get_buffer(n - off)
            mv = memoryview(buf)
            room = mv.nbytes
            if room == 0:
                raise RuntimeError("get_buffer() returned an empty buffer")
        except BaseException as exc:
            stream_call_failed(t, exc, "get_buffer")
            return
        if room > n - off:
            room = n - off
        try:
            mv.cast("B")[:room] = data[off:off + room]
        except BaseException as exc:
            stream_call_failed(t, exc, "get_buffer")
            return
        mv = None
        buf = None
        off += room
        try:
            t.protocol.buffer_updated(room)
        except BaseException as exc:
            stream_call_failed(t, exc, "buffer_updated")
            return
        if t.lost or t.closing or t.conn is None or t.conn.paused:
            if off < n and t.conn is not None and not t.lost:
                conn_hold_front(t.conn, data[off:])    # the rest waits for resume_reading()
            return


cdef extern from *:
    """
    /* Copy n bytes into a writable buffer-protocol object (a BufferedProtocol's
       get_buffer() result): at most its length; returns the bytes copied, or -1
       with an exception set. The buffer API is in the limited API from 3.11 on
       only: before that, memoryview slice assignment does it. */
    static Py_ssize_t iocpx_copy_into(PyObject *dst, const char *src, Py_ssize_t n) {
    #ifndef PyBUF_READ
    #define PyBUF_READ 0x100        /* (stable ABI since 3.3, declared for it from 3.11) */
    #endif
    #if !defined(Py_LIMITED_API) || Py_LIMITED_API+0 >= 0x030B0000
        Py_buffer view;
        if (PyObject_GetBuffer(dst, &view, PyBUF_WRITABLE | PyBUF_SIMPLE) < 0) return -1;
        if (view.len < n) n = view.len;
        memcpy(view.buf, src, (size_t)n);
        PyBuffer_Release(&view);
        return n;
    #else
        PyObject *mv = NULL, *flat = NULL, *from = NULL, *len = NULL;
        Py_ssize_t room;
        int r = -1;
        mv = PyMemoryView_FromObject(dst);
        if (mv == NULL) return -1;
        flat = PyObject_CallMethod(mv, "cast", "s", "B");
        if (flat == NULL) goto done;
        room = PyObject_Length(flat);
        if (room < 0) goto done;
        if (room < n) n = room;
        from = PyMemoryView_FromMemory((char *)src, n, PyBUF_READ);
        if (from == NULL) goto done;
        {
            PyObject *sl = PySlice_New(NULL, (len = PyLong_FromSsize_t(n)), NULL);
            if (sl == NULL) goto done;
            r = PyObject_SetItem(flat, sl, from);
            Py_DECREF(sl);
        }
    done:
        Py_XDECREF(len); Py_XDECREF(from); Py_XDECREF(flat); Py_XDECREF(mv);
        return r < 0 ? -1 : n;
    #endif
    }
    """
    Py_ssize_t iocpx_copy_into(object dst, const char* src, Py_ssize_t n) except -1


cdef void stream_on_events(Connection c, Event* evs, int k) except *:
    """Receive events for a BufferedProtocol (engine receive path): their bytes
    are copied from the receive buffers into the protocol's buffers (as many
    get_buffer() calls as it takes) and the receive buffers go straight back.
    If the protocol pauses reading (or is replaced, or fails) midway, the rest
    is kept, in order, for later (Connection.held)."""
    cdef StreamTransport t = <StreamTransport>c.sink
    cdef Backend be = c.eng.be
    cdef int i
    cdef Py_ssize_t n, off, got
    cdef char* ptr
    cdef list rest = None
    for i in range(k):
        ptr = <char*>evs[i].data
        n = evs[i].res
        off = 0
        while off < n:
            if rest is not None or t.lost or t.closing or c.paused or t.protocol is None \
                    or not t.buffered or c.sink is not t:
                if rest is None:
                    rest = []
                rest.append(PyBytes_FromStringAndSize(ptr + off, n - off))
                break
            try:
                buf = t.protocol.get_buffer(n - off)
                got = iocpx_copy_into(buf, ptr + off, n - off)
                if got <= 0:
                    raise RuntimeError("get_buffer() returned an empty buffer")
            except BaseException as exc:
                buf = None
                stream_call_failed(t, exc, "get_buffer")
                off = n
                rest = []           # the connection is ending: the rest is dropped
                break
            buf = None
            off += got
            try:
                t.protocol.buffer_updated(got)
            except BaseException as exc:
                stream_call_failed(t, exc, "buffer_updated")
                rest = []
                break
        be.recv_release(&evs[i])
    if rest:
        if t.lost or t.closing or c.state != C_OPEN:
            return
        if not t.buffered and c.sink is t and not c.paused:
            for data in rest:           # a plain Protocol now (set_protocol)
                stream_on_data(c, data)
            return
        for data in reversed(rest):
            conn_hold_front(c, data)
        if not c.paused:
            conn_post_held(c)


cdef object stream_socket(StreamTransport t):
    """The transport's socket.socket (asyncio's transports keep theirs): the
    one it was made from, or, for an accepted connection, one made on first
    use over the engine's descriptor; either is detached before the engine
    closes the descriptor (Connection.pysock)."""
    cdef Connection c = t.conn
    if c is None or c.fd < 0 or c.lingering:
        return None
    if c.pysock is None:
        c.pysock = _socket_mod.socket(fileno=c.fd)
    return c.pysock


cdef void stream_on_eof(Connection c) except *:
    """The peer shut down its side: eof_received(); closed unless it returns true."""
    cdef StreamTransport t = <StreamTransport>c.sink
    if t.lost or t.protocol is None:
        return
    if t.loop._debug:
        _aio_logger.debug("%r received EOF", t)
    try:
        keep_open = t.protocol.eof_received()
    except BaseException as exc:
        stream_call_failed(t, exc, "eof_received")
        return
    if not keep_open:
        t.close()


cdef void stream_on_sent(Connection c) noexcept:
    """A send completed: resume_writing() at the low-water mark, the FIN of
    write_eof() and sendfile's empty waiter once everything is out."""
    cdef StreamTransport t = <StreamTransport>c.sink
    if t is None or t.lost or c.state >= C_ABORTING:
        return                          # (an abort drops the queue: nothing was sent)
    try:
        stream_maybe_resume(t)
        if c.send_buffered == 0 and c.send_io == NULL and not c.sendq:
            if t.eof_written and not t.shut_wr and c.fd >= 0 and c.state == C_OPEN:
                t.shut_wr = 1
                iocpx_sock_shutdown_wr(c.fd)
            if t.empty_waiter is not None and not t.empty_waiter.done():
                t.empty_waiter.set_result(None)
    except BaseException as exc:
        t.loop.call_exception_handler({"message": "iocpx: transport bookkeeping failed",
                                       "exception": exc, "transport": t})


cdef enum:
    CLOSE_INFLIGHT_MAX = 65536      # close() reports connection_lost at once when no more
                                    # than this is in flight (and nothing queued behind it)


cdef void stream_detach(StreamTransport t, object exc) except *:
    """The transport lets go of its connection now (close with nothing left to
    write, abort, a fatal error): connection_lost(exc) is scheduled, as
    asyncio's transports do; the engine finishes the connection on its own."""
    cdef Connection c = t.conn
    t.closing = 1
    if c is not None and c.sink is t:
        c.sink = None
    if t.empty_waiter is not None and not t.empty_waiter.done():
        t.empty_waiter.set_exception(ConnectionError("Connection is closed by peer"))
    if not t.loop.closing:
        rq_push(t.loop, handle_new(t.loop, t._call_connection_lost, (exc,), None))
    else:
        t.lost = 1


cdef void stream_on_lost(Connection c, object exc) noexcept:
    """The connection ended (engine's one report): connection_lost(exc) soon,
    after any callback already queued for this transport, as asyncio does."""
    cdef StreamTransport t = <StreamTransport>c.sink
    c.sink = None
    if t is None:
        return
    t.closing = 1
    try:
        if t.empty_waiter is not None and not t.empty_waiter.done():
            t.empty_waiter.set_exception(ConnectionError("Connection is closed by peer"))
        if t.loop.closing:
            t.lost = 1
            return
        rq_push(t.loop, handle_new(t.loop, t._call_connection_lost, (exc,), None))
    except BaseException as e:
        log.error("iocpx: could not schedule connection_lost for %r", t, exc_info=e)


cdef int stream_maybe_pause(StreamTransport t) except -1:
    if t.proto_paused or t.conn is None or t.conn.send_buffered <= t.high:
        return 0
    t.proto_paused = 1
    try:
        t.protocol.pause_writing()
    except (SystemExit, KeyboardInterrupt):
        raise
    except BaseException as exc:
        t.loop.call_exception_handler({"message": "protocol.pause_writing() failed",
                                       "exception": exc, "transport": t, "protocol": t.protocol})
    return 0


cdef int stream_maybe_resume(StreamTransport t) except -1:
    if not t.proto_paused or t.conn is None or t.conn.send_buffered > t.low:
        return 0
    t.proto_paused = 0
    try:
        t.protocol.resume_writing()
    except (SystemExit, KeyboardInterrupt):
        raise
    except BaseException as exc:
        t.loop.call_exception_handler({"message": "protocol.resume_writing() failed",
                                       "exception": exc, "transport": t, "protocol": t.protocol})
    return 0


cdef StreamTransport stream_new(LoopCore loop, Connection c, object protocol, object waiter,
                                object server, object extra):
    """Wrap an open Connection (not reading yet): connection_made() soon,
    then reading starts, then waiter's result."""
    cdef StreamTransport t = StreamTransport.__new__(StreamTransport)
    if extra is None:
        extra = {}
    Py_INCREF(extra)
    t._slot_extra = <PyObject*>extra
    t.loop = loop
    t.conn = c
    t.protocol = protocol
    t.buffered = isinstance(protocol, _BufferedProtocol)
    t.waiter = waiter
    t.server = server
    t.high = 64 * 1024
    t.low = 16 * 1024
    c.sink = t
    c.surfaced = 1
    c.no_linger = 1
    c.max_send = LOOP_MAX_SEND
    if server is not None:
        if SERVER_ATTACH_TAKES_TRANSPORT:
            server._attach(t)
        else:
            server._attach()
    rq_push(loop, handle_new(loop, t._start, (), None))
    return t


# the engine never pauses reading or refuses a send for an asyncio transport:
# flow control is the protocol's (pause_writing/resume_writing)
cdef Py_ssize_t LOOP_MAX_SEND = (<Py_ssize_t>1) << 60


@cython.final
cdef class StreamTransport(TransportBase):
    """A stream socket's asyncio.Transport on the iocpx engine."""

    _start_tls_compatible = True
    _sendfile_compatible = _SendfileMode.TRY_NATIVE

    def _start(self):
        """connection_made(), then reading starts, then the waiter (asyncio's order)."""
        c = self.conn
        if self.made:
            return
        self.made = 1
        if self.protocol is not None and not self.lost:
            try:
                self.protocol.connection_made(self)
            except BaseException as exc:
                stream_call_failed(self, exc, "connection_made")
                return
        if c is not None and not self.closing and not self.reading_paused and \
                self.conn.state == C_OPEN and self.conn.recv_io == NULL and not self.conn.peer_eof:
            try:
                conn_start_recv(self.conn)
            except BaseException as exc:
                stream_fatal(self, exc, "Fatal error: could not start reading")
        if self.waiter is not None:
            _set_result_unless_cancelled(self.waiter, None)
            self.waiter = None

    def _call_connection_lost(self, exc):
        if self.lost:
            return
        if not self.made:           # (closed before connection_made ran: that first)
            self._start()
        self.lost = 1
        self.closing = 1
        try:
            if self.protocol is not None:
                self.protocol.connection_lost(exc)
        finally:
            self.protocol = None
            server = self.server
            self.server = None
            self.conn = None
            if server is not None:
                if SERVER_ATTACH_TAKES_TRANSPORT:
                    server._detach(self)
                else:
                    server._detach()

    # ---- writing ----------------------------------------------------------

    def write(self, data):
        cdef Connection c
        if type(data) is not bytes and not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"data argument must be a bytes-like object, not {type(data).__name__!r}")
        if self.eof_written:
            raise RuntimeError("Cannot call write() after write_eof()")
        if self.empty_waiter is not None:
            raise RuntimeError("unable to write; sendfile is in progress")
        if not data:
            return
        c = self.conn
        if self.lost or self.closing or c is None or c.state >= C_CLOSING:
            if self.conn_lost_writes >= LOG_CONNLOST:
                _aio_logger.warning("socket.send() raised exception.")
            self.conn_lost_writes += 1
            return
        conn_send(c, data)
        if c.send_buffered > self.high:
            stream_maybe_pause(self)

    def writelines(self, list_of_data):
        if self.eof_written:
            raise RuntimeError("Cannot call writelines() after write_eof()")
        if self.empty_waiter is not None:
            raise RuntimeError("unable to writelines; sendfile is in progress")
        data = b"".join(list_of_data)
        if data:
            self.write(data)

    def write_eof(self):
        cdef Connection c = self.conn
        if self.closing or self.eof_written:
            return
        self.eof_written = 1
        if c is not None and c.send_buffered == 0 and c.send_io == NULL and not c.sendq \
                and c.fd >= 0 and c.state == C_OPEN:
            self.shut_wr = 1
            iocpx_sock_shutdown_wr(c.fd)

    def can_write_eof(self):
        return True

    def get_write_buffer_size(self):
        return self.conn.send_buffered if self.conn is not None else 0

    def get_write_buffer_limits(self):
        return (self.low, self.high)

    def set_write_buffer_limits(self, high=None, low=None):
        if high is None:
            high = 64 * 1024 if low is None else 4 * low
        if low is None:
            low = high // 4
        if not high >= low >= 0:
            raise ValueError(f"high ({high!r}) must be >= low ({low!r}) must be >= 0")
        self.high = high
        self.low = low
        stream_maybe_pause(self)

    # ---- reading ----------------------------------------------------------

    def pause_reading(self):
        if self.closing or self.reading_paused:
            return
        self.reading_paused = 1
        if self.made and self.conn is not None and self.conn.state == C_OPEN:
            conn_pause(self.conn, PAUSE_USER)
        if self.loop._debug:
            _aio_logger.debug("%r pauses reading", self)

    def resume_reading(self):
        if self.closing or not self.reading_paused:
            return
        self.reading_paused = 0
        if self.made and self.conn is not None and self.conn.state == C_OPEN:
            conn_resume(self.conn, PAUSE_USER)
            if self.conn.recv_io == NULL and not self.conn.held and not self.conn.peer_eof \
                    and not self.conn.paused:
                conn_start_recv(self.conn)
        if self.loop._debug:
            _aio_logger.debug("%r resumes reading", self)

    def is_reading(self):
        return not self.reading_paused and not self.closing

    # ---- closing ----------------------------------------------------------

    def is_closing(self):
        return bool(self.closing)

    def close(self):
        cdef Connection c = self.conn
        if self.closing:
            return
        self.closing = 1
        if c is None or self.lost:
            return
        if not c.sendq and c.send_buffered <= CLOSE_INFLIGHT_MAX and c.sink is self:
            # Everything written is in the kernel's hands (or an SQE): asyncio's
            # close reports connection_lost now (call_soon) in this case, and so
            # do we; the engine still sends those bytes, then closes.
            stream_detach(self, None)
        c.close()

    def abort(self):
        cdef Connection c = self.conn
        self.closing = 1
        if c is None or self.lost:
            return
        if c.sink is self:
            stream_detach(self, None)
        c.abort()

    def _force_close(self, exc):
        cdef Connection c = self.conn
        self.closing = 1
        if c is None or self.lost:
            return
        if c.sink is self:
            stream_detach(self, exc)
        c._abort(exc)
        c.eng._kick()

    def _fatal_error(self, exc, message="Fatal error on transport"):
        stream_fatal(self, exc, message)

    # ---- _FlowControlMixin's fields, as asyncio code reads them ------------

    @property
    def _loop(self):
        return self.loop

    @property
    def _protocol_paused(self):
        return bool(self.proto_paused)

    @property
    def _high_water(self):
        return self.high

    @property
    def _low_water(self):
        return self.low

    def _maybe_pause_protocol(self):
        stream_maybe_pause(self)

    def _maybe_resume_protocol(self):
        stream_maybe_resume(self)

    # ---- protocol, extra info ---------------------------------------------

    def get_protocol(self):
        return self.protocol

    def set_protocol(self, protocol):
        self.protocol = protocol
        self.buffered = isinstance(protocol, _BufferedProtocol)

    def get_extra_info(self, name, default=None):
        extra = <object>self._slot_extra
        if name in extra:
            return extra[name]
        if name == "socket" or name == "peername" or name == "sockname":
            sock = stream_socket(self)
            if sock is None:
                return default
            if name == "socket":
                extra[name] = _TransportSocket(sock)
            else:
                try:
                    extra[name] = sock.getpeername() if name == "peername" else sock.getsockname()
                except OSError:
                    extra[name] = None
            return extra[name]
        return default

    # ---- sendfile (loop.sendfile's native path) ---------------------------

    def _make_empty_waiter(self):
        if self.empty_waiter is not None:
            raise RuntimeError("Empty waiter is already set")
        self.empty_waiter = self.loop.create_future()
        c = self.conn
        if c is None or (c.send_buffered == 0 and c.send_io == NULL and not c.sendq):
            self.empty_waiter.set_result(None)
        return self.empty_waiter

    def _reset_empty_waiter(self):
        self.empty_waiter = None

    def _sendfile_queue(self, fileno, offset, count):
        """Queue count bytes of the file at offset on the engine's kernel path
        (splice / sendfile(2) / TransmitFile), after what is queued."""
        if self.conn is None or self.closing:
            raise RuntimeError("Transport is closing")
        return conn_sendfile(self.conn, fileno, offset, count, True)

    def __repr__(self):
        c = self.conn
        state = "closed" if self.lost else ("closing" if self.closing else "open")
        fd = c.fd if c is not None else -1
        return f"<iocpx.StreamTransport fd={fd} {state}>"


cdef void conn_hold_front(Connection c, object rest) except *:
    """Bytes a BufferedProtocol did not take before pausing: they come first
    when reading resumes (engine receive.pxi delivers c.held in order)."""
    if c.held is None:
        c.held = deque()
    c.held.appendleft(rest)
