# The engine's class layouts: declarations only, each field under the file
# that owns it. The logic lives in the files that _core.pyx includes
# (engine/*.pxi), one per concern; _core.pyx's docstring maps them.
from cpython.ref cimport PyObject
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int64_t
from iocpx._sys cimport iocpx_mutex_t, iocpx_cond_t, iocpx_addr_t
from iocpx._backend cimport Backend, Event, EventQueue, SchedNode, IoCtx


cdef struct TimerSlot:
    uint64_t due_ns         # deadline on the engine clock (iocpx_now_ns)
    uint64_t seq            # insertion order: equal deadlines fire first in, first out
    PyObject* timer         # strong ref to the Timer, taken when it was queued


cdef class Engine:
    cdef Backend be
    cdef readonly int workers
    cdef int state                  # EngState
    cdef list _threads
    cdef object __weakref__

    # -- the worker pool (engine/workers.pxi); everything below is guarded by mu
    cdef iocpx_mutex_t mu
    cdef iocpx_cond_t home_cv       # the home worker waits here for the leader role
    cdef iocpx_cond_t standby_cv    # helper workers with no role wait here
    cdef iocpx_cond_t watch_cv      # the watcher waits here
    cdef EventQueue rq              # completions taken from the kernel, waiting for dispatch
    cdef int leader                 # a worker waits in the kernel (or has reserved that role)
    cdef uint64_t leader_until      # engine-clock ns its wait ends by itself; 0: nobody waits
    cdef int dispatchers            # workers running events right now
    cdef int watcher                # a helper holds the watcher role
    cdef int watcher_idle           # ... and sleeps untimed: the next dispatch wakes it
    cdef int rescue                 # the home worker is stuck in a callback: helpers take over
    cdef uint64_t progress          # events and timers dispatched so far (stall detection)
    cdef int exiting                # exit packets were posted: every worker leaves
    cdef int64_t n_rescues          # times a helper took over from a stuck worker (atomic)
    cdef long home_tid              # the home worker's thread id (0 until it runs)
    cdef int home_dispatching       # the home worker is running events

    # -- timers (engine/timers.pxi), guarded by mu
    cdef TimerSlot* heap            # owned: malloc'd binary min-heap of heap_cap slots
    cdef int heap_len, heap_cap
    cdef uint64_t timer_seq
    cdef object sweeper             # the idle-timeout Timer, or None
    cdef int64_t tick               # idle sweeps so far (SWEEP_MS each)

    # -- objects and counters (GIL)
    cdef dict _conns                # open connections by id (strong refs)
    cdef set _listeners             # listeners not yet closed
    cdef int64_t inflight           # ops in flight owned by connections/listeners
    cdef int64_t next_id
    cdef int64_t n_accepted, n_connected, n_closed, n_bytes_in, n_bytes_out
    cdef int64_t n_msgs_in, n_errors, n_accept_errors, n_bytes_dropped
    cdef int64_t n_first_data_timeouts, n_idle_timeouts, n_timers_fired
    cdef int64_t n_adopted          # connections taken over by Engine.adopt()
    cdef dict _endpoints            # open datagram endpoints by id (strong refs)
    cdef int64_t n_dg_in, n_dg_out, n_dg_dropped    # datagrams (engine/datagram.pxi)

    cdef int64_t n_tls_handshakes, n_tls_timeouts, n_tls_errors     # engine/tls.pxi
    cdef object loop                # the LoopCore whose thread runs this engine (loop/), or None

    cdef int _close_all(self) except -1
    cdef int _check_open(self) except -1
    cdef int64_t _take_id(self)
    cdef void _kick(self) except *
    cdef void _flush(self) noexcept
    cdef int64_t _idle_ticks(self, object idle_timeout) except -1


cdef class Timer:
    cdef Engine eng
    cdef readonly double when       # time.monotonic() at which it is due
    cdef uint64_t due_ns            # the same deadline on the engine clock
    cdef object fn
    cdef tuple args
    cdef int queued                 # sits in the engine's heap
    cdef uint64_t seq               # its order among equal deadlines (kept when re-queued)
    cdef int is_cancelled
    cdef int internal               # the engine's own (sweeper, back-off): errors count as internal


cdef class Listener:
    # -- the listening socket and its pre-posted accepts (engine/listener.pxi, engine/accept.pxi)
    cdef Engine eng
    cdef int fd
    cdef int state                  # LState
    cdef int inflight               # accept (and cancel) ops in flight
    cdef int armed                  # accept ops in the kernel
    cdef int accepts                # accept ops to keep posted
    cdef readonly object address
    cdef double last_warn           # when an accept failure was last logged
    # -- what each accepted connection gets (conn_setup, engine/connection.pxi)
    cdef object on_accept, on_recv, on_close, on_drain
    cdef object get_buffer, on_recv_into   # the receive-into path (engine/receive.pxi)
    cdef Py_ssize_t max_send
    cdef int64_t idle_ticks
    cdef bint nodelay
    cdef uint16_t group
    cdef uint32_t buffer_size
    # -- the first-data path (engine/accept.pxi)
    cdef bint first_data            # on_accept waits for the connection's first bytes
    cdef double first_data_timeout  # seconds a connection may stay silent before (0: no limit)
    cdef PyObject* silent_head      # Connections waiting for first data, oldest first: a
    cdef PyObject* silent_tail      #   list linked through each one's SilentLink
    cdef object silent_timer        # Timer for the oldest of them, or None
    # -- the guard of AcceptEx slots held by silent clients (engine/accept.pxi;
    # -- backends whose accept receives first data: iocp)
    cdef int silent_slots           # AcceptEx slots last seen holding a silent client
    cdef double plain_until         # until then, accepts are posted without a receive buffer
    cdef object guard_timer         # the periodic check of silent AcceptEx slots, or None
    # -- TLS (engine/tls.pxi)
    cdef object ssl_ctx             # ssl.SSLContext (server side), or None: plain
    cdef double ssl_timeout         # ssl_handshake_timeout, seconds
    # -- Unix-domain sockets (engine/unix.pxi)
    cdef object unix_cleanup        # (path, st_dev, st_ino) of the socket file to remove at close, or None
    cdef object glue                # the asyncio loop's ServerGlue (loop/server.pxi), or None
    cdef bint borrowed              # fd is not ours to close (the asyncio loop on Windows closes it)


cdef class FileJob:
    cdef int fd
    cdef bint owned                 # we opened or dup'ed fd: close it when done
    cdef int64_t offset
    cdef int64_t remaining
    cdef void finish(self) noexcept


cdef class SilentLink:
    """A connection's place in its listener's list of connections waiting for
    first data: made only while it waits, so other connections carry 8 bytes."""
    cdef Listener owner             # the listener whose list holds the connection
    cdef PyObject* prev             # neighbours' Connections (the list holds a
    cdef PyObject* next             #   reference to each member)
    cdef double deadline            # time.monotonic() when silence ends it

cdef class TlsState:
    # A connection's TLS machine (engine/tls.pxi). Every use of obj, and every
    # send submitted on its connection, holds lock.
    cdef object obj                 # ssl.SSLObject over the two BIOs (Connection.ssl_object)
    cdef object sslo                # the _ssl object it wraps (its read/write without a Python frame)
    cdef object inc                 # ssl.MemoryBIO: ciphertext received, not yet decrypted
    cdef object out                 # ssl.MemoryBIO: ciphertext made, not yet handed to the kernel
    cdef iocpx_mutex_t lock         # initialized in __cinit__, destroyed in __dealloc__
    cdef int stage                  # TlsStage
    cdef bint server_side
    cdef bint notify_connect        # Engine.connect: on_connect once the handshake is done
    cdef bint raw                   # the send in flight carries plain bytes (queued before start_tls)
    cdef int raw_items              # items at the head of sendq queued before start_tls
    cdef Py_ssize_t c_left          # ciphertext bytes of the send in flight not sent yet
    cdef Py_ssize_t p_left          # plaintext bytes that send carries (leave send_buffered at its end)
    cdef Py_ssize_t head_off        # plaintext of sendq[0] already encrypted (large sends go in pieces)
    cdef double timeout             # ssl_handshake_timeout, seconds
    cdef object timer               # the handshake timeout (Timer, holds the connection), or None
    cdef Listener lst               # accepted: the listener whose on_accept is due after the handshake


cdef class Connection:
    # Sized for idle connections (docs/performance.md: about 0.5 KiB each): flags are bytes.
    cdef Engine eng
    cdef SchedNode sched            # serializes this connection's callbacks
    cdef int fd
    cdef int inflight               # I/O contexts alive that name this connection
    cdef uint8_t state              # ConnState
    cdef uint8_t paused             # PAUSE_* bits: reading is stopped while non-zero
    cdef uint8_t first_pending      # first_data: on_accept waits for the first bytes
    cdef uint8_t surfaced           # the user has seen it (on_accept ran / connect returned)
    cdef uint8_t user_closed        # the application called close() or abort()
    cdef uint8_t reported           # on_close was delivered (or would have been: not surfaced)
    cdef uint8_t nodelay
    cdef uint8_t have_peer
    cdef uint8_t was_full           # on_drain owed once send_buffered falls to max_send/2
    cdef uint8_t peer_eof           # the peer has shut down its side
    cdef uint8_t lingering          # close(): FIN sent, reading (and discarding) until the peer's
    cdef uint8_t held_eof           # the peer's EOF came after the held bytes
    cdef uint8_t held_posted        # a completion that delivers the held bytes is on its way
    cdef uint8_t no_linger          # close() closes once sent, without reading to the peer's FIN
                                    # (an asyncio transport: asyncio's close semantics)
    cdef uint16_t group
    cdef object held                # deque of bytes read ahead of a pause, or None
    cdef IoCtx* recv_io             # the armed (multishot) receive, or NULL; kernel-owned
    cdef IoCtx* recv_cancel         # the receive a cancel was sent for (not owned)
    cdef IoCtx* send_io             # the one send/sendfile in flight, or NULL; kernel-owned
    cdef Py_ssize_t max_send        # send_buffered above this pauses reading (backpressure)
    cdef int64_t idle_ticks         # idle_timeout in sweeper ticks (0: none)
    cdef int64_t last_tick          # the sweeper tick of the last data in or out
    cdef SilentLink silent          # while it waits for first data (with a deadline), or None
    cdef object sendq               # deque of bytes / FileJob not yet handed to the kernel, or None
    cdef readonly Py_ssize_t send_buffered  # bytes queued or in flight, not yet sent
    cdef object on_accept, on_recv, on_close, on_connect, on_drain
    cdef object get_buffer, on_recv_into   # the receive-into path, in place of on_recv
    cdef object close_exc
    cdef readonly int64_t id
    cdef object _peer, _local
    cdef iocpx_addr_t peer_addr
    cdef TlsState tls               # engine/tls.pxi; None for a plain connection
    cdef object sink                # the asyncio loop's StreamTransport (loop/stream.pxi), or None:
                                    # it gets what on_recv/on_close would (strong ref; dropped at the end)
    cdef object pysock              # a socket.socket sharing fd (asyncio's transport socket), or
                                    # None; detached before the engine closes fd (conn_release_pysock)

    @staticmethod
    cdef Connection _new(Engine eng, int fd, uint16_t group, object on_recv, object on_close,
                         object on_drain, Py_ssize_t max_send, int64_t idle_ticks, bint nodelay)
    cdef IoCtx* _new_io(self, uint8_t op) except NULL
    cdef IoCtx* _new_io_wait(self, uint8_t op) except NULL
    cdef void _io_done(self, IoCtx* io) noexcept
    cdef int _call(self, fn, arg) noexcept
    cdef void _abort(self, object exc) noexcept
    cdef int _cancel(self, IoCtx* target) except -1
    cdef int _post_nop(self) except -1
    cdef void _maybe_finish(self) noexcept
    cdef void _report(self) noexcept


cdef class CompletionPort:
    cdef Backend be
    cdef iocpx_mutex_t mu           # guards q, harvesting, closed
    cdef iocpx_cond_t cv
    cdef EventQueue q               # completions taken from the kernel, not yet handed out
    cdef int harvesting             # a get() waits in the kernel
    cdef int closed
    cdef int users                  # threads inside get()
    cdef int _get(self, Event* out, long ms) noexcept nogil


# A datagram endpoint's cache of sender addresses: the tuples handed to
# on_datagram, found again from the kernel's sockaddr (by its hash) and from
# the tuple itself when the application replies with it (by its identity),
# so an echo neither formats nor parses an address per datagram.
cdef enum:
    ADDR_SLOTS = 64

cdef struct AddrSlot:
    iocpx_addr_t sa
    int salen               # 0: empty
    PyObject* tup           # strong ref: the address as on_datagram shows it

cdef struct AddrCache:
    AddrSlot slot[ADDR_SLOTS]
    uint8_t by_obj[ADDR_SLOTS]      # slot + 1 of the tuple whose identity hashes here (0: none)


cdef class Endpoint:
    cdef Engine eng
    cdef SchedNode sched            # serializes this endpoint's callbacks
    cdef int fd
    cdef int family
    cdef int inflight               # I/O contexts alive that name this endpoint
    cdef int recv_armed             # receives in the kernel
    cdef int send_inflight          # sendto ops in the kernel
    cdef uint8_t state              # DState
    cdef uint8_t connected          # remote_address given: the socket is connected
    cdef uint8_t user_closed        # the application called close() or abort()
    cdef uint8_t cancel_sent        # the receives (and what else is pending) are being cancelled
    cdef uint16_t group
    cdef uint32_t buffer_size
    cdef Py_ssize_t max_dgram       # largest datagram sendto takes (65,507 IPv4, 65,527 IPv6)
    cdef Py_ssize_t max_send        # bytes queued or in flight at most: past it sendto drops
    cdef readonly Py_ssize_t send_buffered  # bytes queued or in flight
    cdef object sendq               # deque of (bytes, raw address) waiting behind send_wait, or None
    cdef IoCtx* send_wait           # sync-send backends: the datagram waiting for writability
    cdef object on_datagram, on_close, on_error
    cdef object close_exc
    cdef readonly object address
    cdef readonly object remote_address
    cdef iocpx_addr_t remote_sa     # the connected peer (connected only)
    cdef int remote_salen
    cdef int64_t kdrops             # the kernel's drop counter last seen (SO_RXQ_OVFL)
    cdef readonly int64_t datagrams_in, datagrams_out, datagrams_dropped
    cdef AddrCache* cache           # owned: calloc'd on the first datagram, freed at close
    cdef object sendto_cache        # dict: other addresses sendto was given -> raw sockaddr, or None
    cdef readonly int64_t id


# ---- the asyncio event loop (loop/*.pxi; iocpx/_loop.py is its Python half) ----

# asyncio's transport classes as heap types Cython can extend (made in
# _backend.pyx); their fields are the __slots__ of asyncio's classes, owned
# by the base type's deallocator.
cdef extern class iocpx._backend.TransportBase [object iocpx_TransportBase_obj]:
    cdef PyObject* _slot_extra      # BaseTransport._extra (a dict)
    cdef PyObject* _slot_flow[4]    # _FlowControlMixin's slots (unused: ours are C fields)

cdef extern class iocpx._backend.DatagramTransportBase [object iocpx_DatagramTransportBase_obj]:
    cdef PyObject* _slot_extra      # BaseTransport._extra (a dict)


cdef class LoopCore       # (forward: Handle and TimerHandle point back at it)


cdef class Handle:
    cdef readonly object _callback
    cdef readonly object _args
    cdef object _context
    cdef LoopCore _loop
    cdef readonly bint _cancelled
    cdef object _tb                 # debug mode: where it was made (_source_traceback)
    cdef object _repr
    cdef object __weakref__
    cdef str _describe(self)


cdef class TimerHandle(Timer):
    cdef object _context
    cdef LoopCore _loop
    cdef object _tb
    cdef object _repr
    cdef str _describe(self)


cdef class LoopCore:
    cdef Engine eng                 # workers=0: this loop's thread is its only worker
    cdef PyObject** rq              # owned: ring of strong refs to ready callbacks (FIFO)
    cdef Py_ssize_t rq_head, rq_len, rq_cap
    cdef public bint _stopping      # BaseEventLoop's fields, kept in C for _run_once
    cdef public bint _closed
    cdef public bint _debug
    cdef public double slow_callback_duration
    cdef public object _current_handle
    cdef int sleeping               # the loop waits in the kernel (GIL released)
    cdef int wake_pending           # a wake-up completion is posted for this wait
    cdef int closing                # _core_close() runs: no protocol callbacks any more
    cdef int64_t timers_cancelled   # cancelled TimerHandles still in the engine's heap
    cdef object pending_exc         # SystemExit/KeyboardInterrupt from a protocol callback
    cdef Event held[256]            # completions not yet run when pending_exc was raised
    cdef int held_n
    cdef object selector            # EngineSelector
    cdef dict serving               # listening fd -> ServerGlue (loop/server.pxi)
    cdef set ovops                  # OvOps in flight (Windows pipes, waits: loop/overlapped.pxi)
    cdef TimerHandle _call_at(self, object when, object callback, tuple args, object context)


cdef class EngineSelector:
    cdef LoopCore loop
    cdef dict keys                  # fd -> selectors.SelectorKey
    cdef dict regs                  # fd -> PollReg
    cdef list rearm                 # PollRegs whose poll fired: armed again before the next wait
    cdef bint closed


cdef class OvOp:
    cdef LoopCore loop
    cdef object fut                 # what the caller awaits
    cdef object buf                 # the bytes read into / written (also the IoCtx's obj)
    cdef object dst                 # recv_into: the caller's buffer
    cdef int kind                   # OV_*
    cdef int64_t handle
    cdef IoCtx* io                  # in flight, or NULL
    cdef bint cancelling


cdef class PollReg:
    cdef EngineSelector sel
    cdef int fd
    cdef int events                 # selectors.EVENT_* wanted now
    cdef int armed                  # ... and those of the poll in the kernel
    cdef IoCtx* io                  # the armed OP_POLL (kernel-owned), or NULL
    cdef bint closed                # unregistered


cdef class StreamTransport(TransportBase):
    cdef LoopCore loop
    cdef Connection conn            # None once connection_lost ran
    cdef object protocol
    cdef object server              # the asyncio.Server it belongs to, or None
    cdef object waiter              # future: its result once connection_made ran, or None
    cdef object empty_waiter        # sendfile: resolved once nothing is queued, or None
    cdef Py_ssize_t high, low       # write buffer limits
    cdef int conn_lost_writes
    cdef bint buffered              # the protocol is a BufferedProtocol
    cdef bint made                  # connection_made() ran
    cdef bint closing               # close()/abort()/a fatal error: is_closing()
    cdef bint lost                  # connection_lost() ran (or the loop closed)
    cdef bint eof_written           # write_eof() was called
    cdef bint shut_wr               # ... and the FIN went out
    cdef bint proto_paused          # pause_writing() was called, resume_writing() not yet
    cdef bint reading_paused        # pause_reading()
    cdef object __weakref__


cdef class ServerGlue:
    cdef LoopCore loop
    cdef Listener listener
    cdef object protocol_factory
    cdef object sslcontext
    cdef object server
    cdef object handshake_timeout
    cdef object shutdown_timeout
