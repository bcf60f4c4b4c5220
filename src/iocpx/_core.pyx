# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The engine: the completion-port server model, written once for every backend.

Threading layout (why one queue, not one ring per worker): the model's promise
is that a callback that blocks stalls only its own connection. With a ring per
worker, every connection that happens to share the blocked worker would stall
too. So an Engine owns ONE completion queue (the "port") and N workers share
it as leader/followers:

  * the leader waits in the kernel with the GIL released, takes a batch of
    completions and appends them to the run queue (a C array under `mu`);
  * a dispatcher pops events one at a time and, with the GIL held, runs the
    connection's handler. Each connection has a SchedNode: while one worker
    runs its events, events for it that another worker pops go to its
    backlog, which the running worker drains, so one connection's callbacks
    never overlap and stay in completion order;
  * by default a single dispatcher runs at a time (the GIL would serialize
    more anyway); an idle worker turns into a second dispatcher only when the
    queue has made no progress for STALL_MS (a callback that blocks).

Sends made by a callback are queued as submissions and go to the kernel in
one call at the end of the batch (or with the leader's next wait).
"""
import errno as _errno
import logging
import os
import socket as _socket
import threading
import time
import weakref
import atexit
from collections import deque

cimport cython
from cpython.ref cimport PyObject, Py_INCREF, Py_DECREF
from cpython.bytes cimport PyBytes_FromStringAndSize
from libc.stdlib cimport malloc, calloc, realloc, free
from libc.string cimport memcpy, memset
from libc.stdint cimport uint16_t, uint32_t, uint64_t, int64_t

from iocpx._sys cimport *
from iocpx._backend cimport *

log = logging.getLogger("iocpx")

cdef enum:
    BATCH = 256             # completions a leader takes per wait
    STALL_MS = 2            # queue idle this long while a dispatcher runs: help it
    QUIET_ROUNDS = 50       # follower rounds without progress before it sleeps untimed
    FLUSH_EVERY = 64        # submit queued sends at least every this many events
    COALESCE = 65536        # join queued small sends up to this many bytes
    MERGE_MAX = 64          # receive events merged into one callback, at most
    MERGE_BYTES = 262144    # ... and bytes
    PIPE_WANT = 1 << 20     # sendfile pipe size asked for
    HARD_SLACK = 8 << 20    # send() refuses past max_send_buffer + max(it, this)

cdef enum ConnState:
    C_CONNECTING = 0
    C_OPEN = 1
    C_CLOSING = 2           # no more reading: finish queued sends, then close
    C_ABORTING = 3          # cancel everything, then close
    C_CLOSED = 4

cdef enum:
    PAUSE_USER = 1          # pause_reading()
    PAUSE_FULL = 2          # send_buffered went past max_send_buffer
    SWEEP_MS = 250          # idle-timeout sweeper period

cdef enum EngState:
    E_RUNNING = 0
    E_CLOSING = 1
    E_CLOSED = 2


class ConnectionClosedError(ConnectionError):
    """Raised on use of a closed connection, listener, engine or port."""


class SendBufferFull(BlockingIOError):
    """send() would queue more than twice max_send_buffer: wait for on_drain."""


def _closed_error(what):
    return ConnectionClosedError(_errno.EPIPE, f"{what} is closed")


# ---------------------------------------------------------------------------
# backends

_probe_cache = None
_fallback_logged = False

# (name, module) best first; each module has probe() and one Backend class.
_BACKEND_MODULES = (("io_uring", "_io_uring"), ("iocp", "_iocp"), ("epoll", "_epoll"))
_BACKEND_CLASSES = {"io_uring": "UringBackend", "iocp": "IocpBackend", "epoll": "EpollBackend"}


def _probe_all():
    """{backend name: None if usable else the reason}, computed once."""
    global _probe_cache
    if _probe_cache is None:
        res = {}
        for name, module in _BACKEND_MODULES:
            try:
                mod = __import__(f"iocpx.{module}", fromlist=["probe"])
                res[name] = mod.probe()
            except ImportError as e:
                res[name] = f"not built for this platform ({e})"
        _probe_cache = res
    return _probe_cache


def available_backends():
    """Backends usable on this machine, best first."""
    return [name for name, why in _probe_all().items() if why is None]


def default_backend():
    """The backend an Engine uses when none is named (IOCPX_BACKEND overrides).
    Falls back from io_uring to epoll with one logged warning."""
    global _fallback_logged
    env = os.environ.get("IOCPX_BACKEND")
    if env:
        return env
    avail = available_backends()
    if not avail:
        reasons = "; ".join(f"{k}: {v}" for k, v in _probe_all().items())
        raise OSError(_errno.ENOSYS, f"no iocpx backend works here ({reasons})")
    probes = _probe_all()
    if avail[0] == "epoll" and probes.get("io_uring") is not None and not _fallback_logged:
        _fallback_logged = True
        log.warning("iocpx: using the epoll backend: %s", probes["io_uring"])
    return avail[0]


cdef Backend _make_backend(object name, bint single=False):
    if name is None:
        name = default_backend()
    if not isinstance(name, str):
        raise TypeError(f"backend must be a str or None, not {type(name).__name__}")
    probes = _probe_all()
    if name not in probes:
        raise ValueError(f"unknown backend {name!r}; known: {sorted(probes)}")
    if probes[name] is not None:
        raise OSError(_errno.ENOSYS, f"backend {name!r} is not available: {probes[name]}")
    module = dict(_BACKEND_MODULES)[name]
    mod = __import__(f"iocpx.{module}", fromlist=[_BACKEND_CLASSES[name]])
    cls = getattr(mod, _BACKEND_CLASSES[name])
    if name == "io_uring":
        return cls(single=single)       # one worker: the faster single-issuer ring
    return cls()


# ---------------------------------------------------------------------------
# addresses and sockets (the one place that touches the socket API directly)

cdef tuple _check_address(object address):
    if not isinstance(address, tuple) or len(address) < 2:
        raise TypeError(f"address must be a (host, port) tuple, not {address!r}")
    host, port = address[0], address[1]
    if host is not None and not isinstance(host, str):
        raise TypeError(f"host must be a str, not {type(host).__name__}")
    if isinstance(port, bool) or not isinstance(port, int):
        raise TypeError(f"port must be an int, not {type(port).__name__}")
    if not 0 <= port <= 65535:
        raise ValueError(f"port must be in 0..65535, got {port}")
    return host, port


cdef tuple _resolve(object address, bint passive):
    """(family, sockaddr tuple) of the first stream address for (host, port)."""
    host, port = _check_address(address)
    if host == "":
        host = None
    flags = _socket.AI_PASSIVE if passive else 0
    infos = _socket.getaddrinfo(host, port, 0, _socket.SOCK_STREAM, 0, flags)
    for family, _t, _p, _c, sa in infos:
        if family in (_socket.AF_INET, _socket.AF_INET6):
            return family, sa
    raise OSError(_errno.EAFNOSUPPORT, f"no IPv4/IPv6 address for {address!r}")


cdef int _fill_addr(iocpx_addr_t* a, int family, tuple sa) except -1:
    packed = _socket.inet_pton(family, sa[0])
    cdef uint32_t flow = 0, scope = 0
    if family == _socket.AF_INET6:
        flow, scope = sa[2], sa[3]
    return iocpx_addr_fill(a, family, <const char*>packed, sa[1], flow, scope)


cdef tuple _addr_tuple(iocpx_addr_t* a):
    cdef char ip[16]
    cdef int family = 0
    cdef unsigned port = 0
    cdef int n = iocpx_addr_split(a, &family, ip, &port)
    if n == 0:
        return None
    return (_socket.inet_ntop(family, ip[:n]), port)


cdef inline void _sock_close(int fd) noexcept nogil:
    iocpx_sock_close(fd)


cdef object _check_callback(object fn, str name):
    if fn is not None and not callable(fn):
        raise TypeError(f"{name} must be callable or None, not {type(fn).__name__}")
    return fn


DEFAULT_MAX_SEND = 4 << 20


cdef Py_ssize_t _check_max_send(object n) except -1:
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"max_send_buffer must be an int, not {type(n).__name__}")
    if n < 1:
        raise ValueError(f"max_send_buffer must be >= 1, got {n}")
    return n


cdef uint32_t _check_buffer_size(object n) except 0:
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"buffer_size must be an int, not {type(n).__name__}")
    if n <= 0 or n > (1 << 20):
        raise ValueError(f"buffer_size must be in 1..1048576, got {n}")
    return <uint32_t>(((n + 4095) // 4096) * 4096)    # the model's 4 KiB multiples


# ---------------------------------------------------------------------------
# scheduling node helpers (called with the engine's mutex held)

cdef int _backlog_push(SchedNode* s, Event* ev) noexcept nogil:
    cdef int cap
    cdef Event* nb
    cdef int i
    if s.bl_len == s.bl_cap:
        cap = s.bl_cap * 2 if s.bl_cap else 8
        nb = <Event*>malloc(cap * sizeof(Event))
        if nb == NULL:
            return -1
        for i in range(s.bl_len):
            nb[i] = s.backlog[(s.bl_head + i) % s.bl_cap]
        free(s.backlog)
        s.backlog = nb
        s.bl_cap = cap
        s.bl_head = 0
    s.backlog[(s.bl_head + s.bl_len) % s.bl_cap] = ev[0]
    s.bl_len += 1
    return 0


cdef inline Event _backlog_pop(SchedNode* s) noexcept nogil:
    cdef Event ev = s.backlog[s.bl_head]
    s.bl_head = (s.bl_head + 1) % s.bl_cap
    s.bl_len -= 1
    return ev


# ---------------------------------------------------------------------------

_engines = weakref.WeakSet()


@atexit.register
def _close_engines_at_exit():
    for eng in list(_engines):
        try:
            eng.close(timeout=5)
        except Exception:
            log.exception("iocpx: engine did not close at exit")


@cython.final
cdef class Engine:
    """One completion queue and a pool of worker threads that run callbacks.

    Engine(workers=None, backend=None); workers=None means 2 * os.cpu_count().
    """
    cdef Backend be
    cdef iocpx_mutex_t mu           # guards rq_*, leader, dispatchers, waiters, progress, SchedNodes
    cdef iocpx_cond_t cv            # idle workers wait here
    cdef Event* rq                  # owned: ring buffer of completions waiting for dispatch
    cdef int rq_head, rq_len, rq_cap
    cdef int leader, dispatchers, waiters, timed_waiters
    cdef uint64_t progress          # events popped so far (stall detection)
    cdef readonly int workers
    cdef int state
    cdef list _threads
    cdef dict _conns                # open connections by id (strong refs)
    cdef set _listeners             # listeners not yet closed
    cdef int64_t inflight           # ops in flight owned by connections/listeners
    cdef int64_t next_id
    cdef int64_t n_accepted, n_connected, n_closed, n_bytes_in, n_bytes_out
    cdef int64_t n_msgs_in, n_errors, n_accept_errors
    cdef int wait_errno
    cdef int64_t tick               # idle sweeper ticks so far (SWEEP_MS each)
    cdef IoCtx* sweeper             # the idle-timeout timer op, or NULL
    cdef object __weakref__

    def __cinit__(self):
        self.rq = NULL
        self.state = E_CLOSED       # until __init__ finishes
        iocpx_mutex_init(&self.mu)
        iocpx_cond_init(&self.cv)

    def __init__(self, workers=None, backend=None):
        if workers is None:
            workers = 2 * (os.cpu_count() or 1)
        if isinstance(workers, bool) or not isinstance(workers, int):
            raise TypeError(f"workers must be an int or None, not {type(workers).__name__}")
        if not 1 <= workers <= 1024:
            raise ValueError(f"workers must be in 1..1024, got {workers}")
        self.be = _make_backend(backend, workers == 1)
        self.workers = workers
        self.rq_cap = 1024
        self.rq = <Event*>malloc(self.rq_cap * sizeof(Event))
        if self.rq == NULL:
            raise MemoryError()
        self._conns = {}
        self._listeners = set()
        self.next_id = 1
        self.state = E_RUNNING
        self._threads = []
        for i in range(workers):
            t = threading.Thread(target=self._worker_main, name=f"iocpx-worker-{i}", daemon=True)
            self._threads.append(t)
            t.start()
        _engines.add(self)

    def __dealloc__(self):
        if self.rq != NULL:
            free(self.rq)
            self.rq = NULL
        iocpx_cond_destroy(&self.cv)
        iocpx_mutex_destroy(&self.mu)

    def __enter__(self):
        self._check_open()
        return self

    def __exit__(self, *exc):
        self.close()

    @property
    def backend(self):
        return self.be.name if self.be is not None else None

    @property
    def closed(self):
        return self.state != E_RUNNING

    def _in_worker(self):
        """True on one of this engine's worker threads (inside a callback)."""
        return iocpx_tls_get() == <void*>self

    cdef int _check_open(self) except -1:
        if self.state != E_RUNNING:
            raise _closed_error("engine")
        return 0

    # ---- workers ----------------------------------------------------------

    def _worker_main(self):
        self.be.attach()
        with nogil:
            self._run()

    cdef void _run(self) noexcept nogil:
        """A worker: dispatch queued completions, or lead (wait in the kernel),
        or wait as a follower. Roles are decided under mu."""
        cdef Event batch[BATCH]
        cdef int n, r
        cdef bint armed = 0             # saw a busy queue last round
        cdef bint lead = 0              # the dispatch loop reserved the leader role for us
        cdef bint timed
        cdef uint64_t seen = 0, last_progress = 0
        cdef int quiet_rounds = 0
        cdef long tmo
        iocpx_tls_set(<void*>self)
        iocpx_mutex_lock(&self.mu)
        while True:
            if not lead and self.rq_len > 0 and \
                    (self.dispatchers == 0 or (armed and self.progress == seen)):
                armed = 0
                self.dispatchers += 1
                iocpx_mutex_unlock(&self.mu)
                with gil:
                    r = self._dispatch()
                iocpx_mutex_lock(&self.mu)
                self.dispatchers -= 1
                if self.rq_len > 0 and self.waiters > 0:
                    iocpx_cond_signal(&self.cv)
                if r == 1:
                    break
                lead = r == 2
                continue
            if self.rq_len > 0:         # a dispatcher is on it: look again in STALL_MS
                armed = 1
                seen = self.progress
                tmo = STALL_MS
            else:
                armed = 0
                tmo = -1
            if lead or not self.leader:
                lead = 0
                self.leader = 1
                iocpx_mutex_unlock(&self.mu)
                n = self.be.wait(batch, BATCH, tmo)     # also submits what is queued
                iocpx_mutex_lock(&self.mu)
                self.leader = 0
                if n > 0:
                    self._rq_push(batch, n)
                elif n < 0:
                    self.wait_errno = -n
                    iocpx_mutex_unlock(&self.mu)
                    with gil:
                        log.error("iocpx: waiting for completions failed: %s", os.strerror(-n))
                        time.sleep(0.01)
                    iocpx_mutex_lock(&self.mu)
                # While we dispatch nobody waits in the kernel. Followers that
                # watch on a timer (timed_waiters) take over if we stall; if all
                # of them sleep without one, wake one to watch.
                if self.waiters > 0 and self.timed_waiters == 0:
                    iocpx_cond_signal(&self.cv)
                continue
            # follower: watch on a timer while the engine is busy, sleep when quiet
            if self.progress != last_progress:
                last_progress = self.progress
                quiet_rounds = 0
            else:
                quiet_rounds += 1
            timed = quiet_rounds < QUIET_ROUNDS or self.rq_len > 0
            self.waiters += 1
            if timed:
                self.timed_waiters += 1
            iocpx_cond_wait_ms(&self.cv, &self.mu, STALL_MS if timed else -1)
            self.waiters -= 1
            if timed:
                self.timed_waiters -= 1
        iocpx_mutex_unlock(&self.mu)
        iocpx_tls_set(NULL)

    cdef void _rq_push(self, Event* evs, int n) noexcept nogil:
        """Append n events to the run queue; mu held. Grows it (never drops)."""
        cdef int cap, i
        cdef Event* nq
        while self.rq_len + n > self.rq_cap:
            cap = self.rq_cap * 2
            nq = <Event*>malloc(cap * sizeof(Event))
            if nq == NULL:      # cannot drop completions: wait for memory
                iocpx_mutex_unlock(&self.mu)
                iocpx_sleep_ms(1)
                iocpx_mutex_lock(&self.mu)
                continue
            for i in range(self.rq_len):
                nq[i] = self.rq[(self.rq_head + i) % self.rq_cap]
            free(self.rq)
            self.rq = nq
            self.rq_cap = cap
            self.rq_head = 0
        for i in range(n):
            self.rq[(self.rq_head + self.rq_len) % self.rq_cap] = evs[i]
            self.rq_len += 1

    cdef int _dispatch(self) noexcept:
        """Run queued events until the queue is empty; GIL held.
        Returns 1 when this worker took an exit packet, 2 when it reserved
        the leader role (its next wait submits what the batch queued, one
        syscall), 0 otherwise (it submitted them itself)."""
        cdef Event run[MERGE_MAX]      # run[0]: the event; more: receives merged into it
        cdef Event* nx
        cdef SchedNode* s
        cdef int count = 0
        cdef int r, k
        cdef Py_ssize_t total
        while True:
            iocpx_mutex_lock(&self.mu)
            if self.rq_len == 0:
                if not self.leader:
                    self.leader = 1         # reserved: nobody else enters the kernel first
                    iocpx_mutex_unlock(&self.mu)
                    return 2
                iocpx_mutex_unlock(&self.mu)
                break
            run[0] = self.rq[self.rq_head]
            self.rq_head = (self.rq_head + 1) % self.rq_cap
            self.rq_len -= 1
            self.progress += 1
            s = run[0].io.sched
            k = 1
            if s != NULL:
                if s.running:
                    r = _backlog_push(s, &run[0])
                    iocpx_mutex_unlock(&self.mu)
                    if r < 0:       # out of memory: put it back and let the owner drain
                        iocpx_mutex_lock(&self.mu)
                        self._rq_push(&run[0], 1)
                        iocpx_mutex_unlock(&self.mu)
                    continue
                s.running = 1
                # Receives of one op that follow each other in the queue (a big
                # message in buffer-sized pieces) become one callback.
                if run[0].io.op == OP_RECV and run[0].res > 0 and (run[0].flags & EV_MORE):
                    total = run[0].res
                    while k < MERGE_MAX and self.rq_len > 0 and total < MERGE_BYTES:
                        nx = &self.rq[self.rq_head]
                        if nx.io != run[0].io or nx.res <= 0:
                            break
                        run[k] = nx[0]
                        k += 1
                        total += nx.res
                        self.rq_head = (self.rq_head + 1) % self.rq_cap
                        self.rq_len -= 1
                        self.progress += 1
                        if not (run[k - 1].flags & EV_MORE):
                            break
            iocpx_mutex_unlock(&self.mu)
            if run[0].io.op == OP_EXIT:
                io_free(run[0].io)
                self._flush()
                return 1
            if s != NULL:
                owner = <object>run[0].io.owner     # keeps the SchedNode's object alive
                self._handle(run, k)
                self._drain(s)
                owner = None
            else:
                self._handle(run, 1)
            count += 1
            if count >= FLUSH_EVERY:
                self._flush()
                count = 0
        self._flush()
        return 0

    cdef void _drain(self, SchedNode* s) noexcept:
        """Run the events that queued up for s while it was running, then
        release it. The caller holds a reference to s's owner."""
        cdef Event ev
        while True:
            iocpx_mutex_lock(&self.mu)
            if s.bl_len == 0:
                s.running = 0
                iocpx_mutex_unlock(&self.mu)
                return
            ev = _backlog_pop(s)
            iocpx_mutex_unlock(&self.mu)
            self._handle(&ev, 1)

    cdef void _flush(self) noexcept:
        try:
            self.be.flush()
        except BaseException:
            log.exception("iocpx: submitting queued operations failed")

    cdef void _kick(self) except *:
        """Submit now, unless this thread is one of our workers (then the
        end of its batch submits everything in one call)."""
        if iocpx_tls_get() != <void*>self:
            self.be.flush()

    cdef void _handle(self, Event* ev, int k) noexcept:
        """Run one completion (k > 1: k receives of one op, merged)."""
        cdef uint8_t op = ev.io.op
        try:
            if op == OP_RECV:
                (<Connection>ev.io.owner)._on_recv(ev, k)
            elif op == OP_SEND:
                (<Connection>ev.io.owner)._on_send(ev)
            elif op == OP_SPLICE_IN or op == OP_SPLICE_OUT or op == OP_SENDFILE:
                (<Connection>ev.io.owner)._on_splice(ev)
            elif op == OP_CONNECT:
                (<Connection>ev.io.owner)._on_connect(ev)
            elif op == OP_ACCEPT:
                (<Listener>ev.io.owner)._on_accept(ev)
            elif op == OP_TIMER:
                if type(<object>ev.io.owner) is Engine:
                    (<Engine>ev.io.owner)._on_sweep(ev)
                else:
                    (<Listener>ev.io.owner)._on_timer(ev)
            elif op == OP_CANCEL or op == OP_NOP:
                if ev.io.owner != NULL and type(<object>ev.io.owner) is Connection:
                    (<Connection>ev.io.owner)._on_aux(ev)
                elif ev.io.owner != NULL and type(<object>ev.io.owner) is Listener:
                    (<Listener>ev.io.owner)._on_aux(ev)
                else:
                    io_free(ev.io)
            else:
                log.error("iocpx: completion with unknown op %d dropped", op)
        except BaseException:
            self.n_errors += 1
            log.exception("iocpx: internal error while handling a completion (op %d)", op)

    # ---- public API -------------------------------------------------------

    def listen(self, address, *, on_accept=None, on_recv=None, on_close=None,
               accepts=None, first_data=False, buffer_size=4096, backlog=None,
               nodelay=True, on_drain=None, max_send_buffer=DEFAULT_MAX_SEND,
               idle_timeout=None, reuse_port=False):
        """Bind and listen on address ((host, port); port 0 picks one) and keep
        `accepts` accepts pre-posted. reuse_port=True sets SO_REUSEPORT so
        several processes can share the port. Returns a Listener."""
        self._check_open()
        _check_callback(on_accept, "on_accept")
        _check_callback(on_recv, "on_recv")
        _check_callback(on_close, "on_close")
        _check_callback(on_drain, "on_drain")
        max_send = _check_max_send(max_send_buffer)
        idle = self._idle_ticks(idle_timeout)
        if accepts is None:
            accepts = max(16, 2 * self.workers)
        if isinstance(accepts, bool) or not isinstance(accepts, int):
            raise TypeError(f"accepts must be an int or None, not {type(accepts).__name__}")
        if not 1 <= accepts <= 4096:
            raise ValueError(f"accepts must be in 1..4096, got {accepts}")
        if backlog is None:
            backlog = _socket.SOMAXCONN
        if isinstance(backlog, bool) or not isinstance(backlog, int):
            raise TypeError(f"backlog must be an int or None, not {type(backlog).__name__}")
        if backlog < 0:
            raise ValueError(f"backlog must be >= 0, got {backlog}")
        size = _check_buffer_size(buffer_size)
        cdef Listener lst
        family, sa = _resolve(address, True)
        s = _socket.socket(family, _socket.SOCK_STREAM)
        try:
            s.setsockopt(_socket.SOL_SOCKET, _socket.SO_REUSEADDR, 1)
            if reuse_port:
                if not hasattr(_socket, "SO_REUSEPORT"):
                    raise OSError(_errno.ENOPROTOOPT, "SO_REUSEPORT is not available here")
                s.setsockopt(_socket.SOL_SOCKET, _socket.SO_REUSEPORT, 1)
            s.bind(sa)
            s.listen(backlog)
            bound = s.getsockname()[:2]
        except BaseException:
            s.close()
            raise
        lst = Listener.__new__(Listener)
        lst.eng = self
        lst.fd = s.detach()
        self.be.adopt(lst.fd)
        lst.address = bound
        lst.on_accept = on_accept
        lst.on_recv = on_recv
        lst.on_close = on_close
        lst.on_drain = on_drain
        lst.max_send = max_send
        lst.idle_ticks = idle
        lst.first_data = bool(first_data)
        lst.nodelay = bool(nodelay)
        lst.group = <uint16_t>self.be.buffer_group(size)
        lst.buffer_size = size
        self._listeners.add(lst)
        try:
            for _ in range(accepts):
                lst._arm_new()
        except BaseException:
            lst.close()
            raise
        self._kick()
        return lst

    def connect(self, address, *, on_connect=None, on_recv=None, on_close=None,
                nodelay=True, buffer_size=4096, on_drain=None,
                max_send_buffer=DEFAULT_MAX_SEND, idle_timeout=None, local_address=None):
        """Start connecting to address; returns the Connection at once.
        on_connect(conn) runs once connected; a failure arrives as
        on_close(conn, exc). Data sent before that is queued.
        local_address=(host, port) binds the socket first."""
        self._check_open()
        _check_callback(on_connect, "on_connect")
        _check_callback(on_recv, "on_recv")
        _check_callback(on_close, "on_close")
        _check_callback(on_drain, "on_drain")
        size = _check_buffer_size(buffer_size)
        max_send = _check_max_send(max_send_buffer)
        idle = self._idle_ticks(idle_timeout)
        family, sa = _resolve(address, False)
        if local_address is not None:
            lfamily, lsa = _resolve(local_address, True)
            if lfamily != family:
                raise ValueError(f"local_address {local_address!r} is not of the family of {address!r}")
        cdef int fd = self.be.socket_open(family)
        if local_address is not None:
            bs = _socket.socket(family, _socket.SOCK_STREAM, 0, fd)
            try:
                bs.bind(lsa)
            except BaseException:
                bs.close()
                raise
            bs.detach()
        cdef Connection conn = Connection._new(self, fd, <uint16_t>self.be.buffer_group(size))
        conn.state = C_CONNECTING
        conn.surfaced = 1
        conn.on_connect = on_connect
        conn.on_recv = on_recv
        conn.on_close = on_close
        conn.on_drain = on_drain
        conn.max_send = max_send
        conn.idle_ticks = idle
        conn.last_tick = self.tick
        conn.nodelay = bool(nodelay)
        cdef IoCtx* io = conn._new_io(OP_CONNECT)
        io.addrlen = _fill_addr(&io.addr, family, sa)
        try:
            self.be.submit_connect(io)
        except BaseException:
            conn._io_done(io)
            conn.state = C_CLOSED
            _sock_close(fd)
            conn.fd = -1
            raise
        self._conns[conn.id] = conn
        self._kick()
        return conn

    def stats(self):
        """Counters: connections, bytes, pending operations, live contexts."""
        return {
            "backend": self.be.name if self.be is not None else None,
            "workers": self.workers,
            "connections": len(self._conns) if self._conns is not None else 0,
            "accepted": self.n_accepted,
            "connected": self.n_connected,
            "closed": self.n_closed,
            "bytes_in": self.n_bytes_in,
            "bytes_out": self.n_bytes_out,
            "messages_in": self.n_msgs_in,
            "pending_ops": self.inflight,
            "live_io": io_live(),
            "listeners": len(self._listeners) if self._listeners is not None else 0,
            "accept_errors": self.n_accept_errors,
            "internal_errors": self.n_errors,
            "closing": self.state == E_CLOSING,
            "closed_engine": self.state == E_CLOSED,
        }

    def close(self, timeout=None):
        """Close every listener and connection, cancel and reap every pending
        operation, wake each worker with an exit packet and join it.
        Raises TimeoutError if that takes longer than timeout seconds (the
        engine then stays closing; call close() again)."""
        if self.state == E_CLOSED:
            return
        if iocpx_tls_get() == <void*>self:
            raise RuntimeError("Engine.close() cannot run inside one of its own callbacks")
        if timeout is not None and timeout < 0:
            raise ValueError("timeout must be >= 0 or None")
        deadline = None if timeout is None else time.monotonic() + timeout
        self.state = E_CLOSING
        for lst in list(self._listeners):
            (<Listener>lst)._close_async()
        for conn in list(self._conns.values()):
            (<Connection>conn)._abort(None)
        cdef IoCtx* cio
        if self.sweeper != NULL:
            cio = io_alloc(OP_CANCEL, None, NULL)
            try:
                self.be.submit_cancel_op(cio, self.sweeper)
            except BaseException:
                io_free(cio)
        self._kick()
        delay = 0.0005
        while self.inflight > 0 or self._conns or self._listeners:
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"Engine.close(): {self.inflight} operations still pending")
            time.sleep(delay)
            delay = min(delay * 2, 0.01)
        cdef IoCtx* io
        for _ in self._threads:         # the model's exit packets, one per worker
            io = io_alloc(OP_EXIT, None, NULL)
            try:
                self.be.submit_post(io)
            except BaseException:
                io_free(io)
                raise
        self.be.flush()
        for t in self._threads:
            t.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
            if t.is_alive():
                raise TimeoutError("Engine.close(): a worker is still running a callback")
        self._threads = []
        self.be.release()
        self.state = E_CLOSED
        _engines.discard(self)

    cdef int64_t _idle_ticks(self, object idle_timeout) except -1:
        """idle_timeout (seconds or None) in sweeper ticks; starts the sweeper."""
        if idle_timeout is None:
            return 0
        if isinstance(idle_timeout, bool) or not isinstance(idle_timeout, (int, float)):
            raise TypeError(f"idle_timeout must be a number or None, not {type(idle_timeout).__name__}")
        if not idle_timeout > 0:
            raise ValueError(f"idle_timeout must be > 0, got {idle_timeout}")
        if self.sweeper == NULL:
            self.sweeper = io_alloc(OP_TIMER, self, NULL)
            try:
                self.be.submit_timer(self.sweeper, SWEEP_MS)
            except BaseException:
                io_free(self.sweeper)
                self.sweeper = NULL
                raise
            self.inflight += 1
        return max(1, int(idle_timeout * 1000 / SWEEP_MS + 0.5))

    cdef void _on_sweep(self, Event* ev) except *:
        """Every SWEEP_MS: close connections idle past their idle_timeout."""
        cdef Connection c
        if self.state != E_RUNNING or ev.res == -_errno.ECANCELED:
            io_free(ev.io)
            self.sweeper = NULL
            self.inflight -= 1
            return
        self.tick += 1
        for conn in list(self._conns.values()):
            c = <Connection>conn
            if c.idle_ticks and self.tick - c.last_tick >= c.idle_ticks and c.state <= C_CLOSING:
                c._abort(TimeoutError(_errno.ETIMEDOUT,
                                      f"idle for {c.idle_ticks * SWEEP_MS / 1000:g} s (idle_timeout)"))
        try:
            self.be.submit_timer(ev.io, SWEEP_MS)
        except BaseException:
            io_free(ev.io)
            self.sweeper = NULL
            self.inflight -= 1
            raise

    cdef int64_t _take_id(self):
        cdef int64_t i = self.next_id
        self.next_id += 1
        return i


@cython.final
@cython.no_gc_clear
cdef class Listener:
    """A listening socket with pre-posted accepts. Made by Engine.listen()."""
    cdef Engine eng
    cdef int fd
    cdef int state                  # 0 open, 1 closing, 2 closed
    cdef int inflight
    cdef readonly object address
    cdef object on_accept, on_recv, on_close, on_drain
    cdef Py_ssize_t max_send
    cdef int64_t idle_ticks
    cdef bint first_data, nodelay
    cdef uint16_t group
    cdef uint32_t buffer_size
    cdef double last_warn

    def __cinit__(self):
        self.fd = -1

    def __dealloc__(self):
        _sock_close(self.fd)

    @property
    def closed(self):
        return self.state != 0

    cdef int _arm_new(self) except -1:
        cdef IoCtx* io = io_alloc(OP_ACCEPT, self, NULL)
        io.fd = self.fd
        if self.first_data:
            io.len = self.buffer_size     # a backend that can take data with the accept does
            # ms a client may stay silent inside such an accept (AcceptEx holds it
            # before it is a Connection, so the idle sweeper cannot see it)
            io.aux = self.idle_ticks * SWEEP_MS
        try:
            self.eng.be.submit_accept(io)
        except BaseException:
            io_free(io)
            raise
        self.inflight += 1
        self.eng.inflight += 1
        return 0

    cdef void _io_done(self, IoCtx* io) noexcept:
        io_free(io)
        self.inflight -= 1
        self.eng.inflight -= 1

    cdef int _rearm(self, IoCtx* io) except -1:
        io.op = OP_ACCEPT
        try:
            self.eng.be.submit_accept(io)
        except BaseException:
            self._io_done(io)
            raise
        return 0

    cdef void _on_accept(self, Event* ev) except *:
        cdef IoCtx* io = ev.io
        cdef int res = ev.res
        cdef Engine eng = self.eng
        if self.state != 0:
            if res >= 0:
                _sock_close(res)
            self._io_done(io)
            self._maybe_finish()
            return
        if res < 0:
            err = -res
            if err == _errno.ECANCELED:
                self._io_done(io)
                self._maybe_finish()
                return
            eng.n_accept_errors += 1
            if err in (_errno.EMFILE, _errno.ENFILE, _errno.ENOBUFS, _errno.ENOMEM):
                now = time.monotonic()
                if now - self.last_warn > 1.0:
                    self.last_warn = now
                    log.warning("iocpx: accept on %s failed (%s); retrying in 100 ms",
                                self.address, os.strerror(err))
                io.op = OP_TIMER
                try:
                    eng.be.submit_timer(io, 100)
                except BaseException:
                    self._io_done(io)
                    raise
            else:
                log.debug("iocpx: accept on %s failed: %s", self.address, os.strerror(err))
                self._rearm(io)
            return
        eng.n_accepted += 1
        data = eng.be.accept_data(ev)
        cdef Connection conn = Connection._new(eng, res, self.group)
        memcpy(&conn.peer_addr, &io.addr, sizeof(iocpx_addr_t))
        conn.have_peer = 1
        self._rearm(io)                 # the slot is free again: re-post it first
        conn._start_accepted(self, data)

    cdef void _on_timer(self, Event* ev) except *:
        if self.state != 0:
            self._io_done(ev.io)
            self._maybe_finish()
            return
        self._rearm(ev.io)

    cdef void _on_aux(self, Event* ev) except *:
        self._io_done(ev.io)
        self._maybe_finish()

    cdef void _maybe_finish(self) noexcept:
        if self.state == 1 and self.inflight == 0:
            self.state = 2
            _sock_close(self.fd)
            self.fd = -1
            self.eng._listeners.discard(self)

    cdef int _close_async(self) except -1:
        if self.state != 0:
            return 0
        self.state = 1
        cdef IoCtx* io = io_alloc(OP_CANCEL, self, NULL)
        try:
            self.eng.be.submit_cancel_fd(io, self.fd)
        except BaseException:
            io_free(io)
            raise
        self.inflight += 1
        self.eng.inflight += 1
        return 0

    def close(self):
        """Stop accepting: cancel the pending accepts and close the socket.
        Waits (outside callbacks) until the socket is really closed."""
        if self.state != 0:
            return
        self._close_async()
        self.eng._kick()
        if iocpx_tls_get() == <void*>self.eng:
            return
        delay = 0.0002
        while self.state != 2:
            time.sleep(delay)
            delay = min(delay * 2, 0.01)

    def __repr__(self):
        return f"<iocpx.Listener {self.address} {'open' if self.state == 0 else 'closed'}>"


@cython.final
cdef class _FileJob:
    """A queued sendfile: the kernel moves count bytes from fd at offset."""
    cdef int fd
    cdef bint owned                 # we opened fd (a path): close it when done
    cdef int64_t offset
    cdef int64_t remaining

    cdef void finish(self) noexcept:
        if self.owned and self.fd >= 0:
            os.close(self.fd)
        self.fd = -1


@cython.final
@cython.no_gc_clear
cdef class Connection:
    """One TCP connection. Made by the engine (accept or connect)."""
    cdef Engine eng
    cdef SchedNode sched            # serializes this connection's callbacks
    cdef int fd
    cdef int state
    cdef int inflight               # I/O contexts alive that name this connection
    cdef bint first_pending         # first_data: on_accept waits for the first bytes
    cdef bint surfaced              # the user has seen it (on_accept ran / connect returned)
    cdef bint user_closed
    cdef bint nodelay
    cdef bint have_peer
    cdef IoCtx* recv_io             # the armed (multishot) receive, or NULL; kernel-owned
    cdef IoCtx* recv_cancel         # the receive a cancel was sent for (not owned)
    cdef int paused                 # PAUSE_* bits: reading is stopped while non-zero
    cdef Py_ssize_t max_send        # send_buffered above this pauses reading (backpressure)
    cdef bint was_full              # on_drain owed once send_buffered falls to max_send/2
    cdef int64_t idle_ticks         # idle_timeout in sweeper ticks (0: none)
    cdef int64_t last_tick          # the sweeper tick of the last data in or out
    cdef IoCtx* send_io             # the one send/splice in flight, or NULL; kernel-owned
    cdef object sendq               # deque of bytes / _FileJob not yet handed to the kernel, or None
    cdef readonly Py_ssize_t send_buffered  # bytes queued or in flight, not yet sent
    cdef uint16_t group
    cdef int pipe_r, pipe_w         # sendfile pipe, ours
    cdef int64_t pipe_len           # bytes sitting in the pipe
    cdef int pipe_size
    cdef object on_accept, on_recv, on_close, on_connect, on_drain
    cdef object close_exc
    cdef readonly int64_t id
    cdef object _peer, _local
    cdef iocpx_addr_t peer_addr

    def __cinit__(self):
        self.fd = -1
        self.pipe_r = -1
        self.pipe_w = -1
        self.state = C_CLOSED

    def __dealloc__(self):
        if self.sched.backlog != NULL:
            free(self.sched.backlog)
        _sock_close(self.fd)
        _sock_close(self.pipe_r)
        _sock_close(self.pipe_w)

    @staticmethod
    cdef Connection _new(Engine eng, int fd, uint16_t group):
        cdef Connection c = Connection.__new__(Connection)
        c.eng = eng
        c.fd = fd
        c.group = group
        c.sendq = None                  # a deque once something has to wait
        c.id = eng._take_id()
        c.state = C_OPEN
        return c

    # ---- contexts ---------------------------------------------------------

    cdef IoCtx* _new_io(self, uint8_t op) except NULL:
        cdef IoCtx* io = io_alloc(op, self, &self.sched)
        io.fd = self.fd
        self.inflight += 1
        self.eng.inflight += 1
        return io

    cdef void _io_done(self, IoCtx* io) noexcept:
        io_free(io)
        self.inflight -= 1
        self.eng.inflight -= 1

    # ---- life cycle -------------------------------------------------------

    cdef int _start_accepted(self, Listener lst, object data) except -1:
        """Runs in the listener's accept completion: this connection's events
        are held back (running=1) until on_accept has run. data: the first
        bytes if the backend received them with the accept, else None."""
        cdef Engine eng = self.eng
        self.on_accept = lst.on_accept
        self.on_recv = lst.on_recv
        self.on_close = lst.on_close
        self.on_drain = lst.on_drain
        self.max_send = lst.max_send
        self.idle_ticks = lst.idle_ticks
        self.last_tick = self.eng.tick
        self.nodelay = lst.nodelay
        self.first_pending = lst.first_data
        eng._conns[self.id] = self
        iocpx_mutex_lock(&eng.mu)
        self.sched.running = 1
        iocpx_mutex_unlock(&eng.mu)
        try:
            if self.nodelay:
                iocpx_sock_nodelay(self.fd, 1)
            try:
                self._start_recv()
            except BaseException as e:
                self._abort(e)
            if not self.first_pending or data is not None:
                self.first_pending = 0
                self.surfaced = 1
                if data:
                    eng.n_bytes_in += len(data)
                    eng.n_msgs_in += 1
                if self.on_accept is not None:
                    self._call(self.on_accept, data if data is not None else b"")
        finally:
            eng._drain(&self.sched)
        return 0

    cdef int _start_recv(self) except -1:
        cdef IoCtx* io = self._new_io(OP_RECV)
        io.group = self.group
        try:
            self.eng.be.submit_recv(io)
        except BaseException:
            self._io_done(io)
            raise
        self.recv_io = io
        return 0

    cdef int _call(self, fn, arg) noexcept:
        """Run a user callback; an exception is logged and closes this connection."""
        try:
            if arg is None:
                fn(self)
            else:
                fn(self, arg)
        except BaseException as e:
            log.error("iocpx: %s raised; closing connection %d", getattr(fn, "__name__", fn),
                      self.id, exc_info=e)
            self._abort(e)
            return -1
        return 0

    cdef void _on_connect(self, Event* ev) except *:
        self._io_done(ev.io)
        if ev.res < 0:
            if ev.res != -_errno.ECANCELED:
                self._abort(self.eng.be.error(-ev.res, "connect"))
        elif self.state == C_CONNECTING:
            self.state = C_OPEN
            self.eng.n_connected += 1
            if self.nodelay:
                iocpx_sock_nodelay(self.fd, 1)
            try:
                self._start_recv()
            except BaseException as e:
                self._abort(e)
            if self.state == C_OPEN and self.on_connect is not None:
                self._call(self.on_connect, None)
            if self.state < C_ABORTING:
                self._send_next()
        self._maybe_finish()

    cdef void _on_recv(self, Event* evs, int k) except *:
        """k receive events of one op (k > 1 only for data events that came
        back to back): one callback with all of their bytes, in order."""
        cdef Engine eng = self.eng
        cdef Event* ev = &evs[k - 1]        # the last one says whether the op goes on
        cdef Py_ssize_t res, off = 0, total = 0
        cdef int i
        if k == 1:
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
            if self.recv_io == ev.io:
                self.recv_io = NULL
            if self.recv_cancel == ev.io:
                self.recv_cancel = NULL
            self._io_done(ev.io)
        if res > 0:
            eng.n_bytes_in += res
            eng.n_msgs_in += 1
            self.last_tick = eng.tick
            if self.state == C_OPEN:
                if self.first_pending:
                    self.first_pending = 0
                    self.surfaced = 1
                    if self.on_accept is not None:
                        self._call(self.on_accept, data)
                elif self.on_recv is not None:
                    self._call(self.on_recv, data)
        elif res == 0:
            self._on_eof()
        elif res != -_errno.ENOBUFS and res != -_errno.ECANCELED:
            self._abort(eng.be.error(-res, "recv"))
        # a receive that ended (multishot stop, buffer pool dry, cancelled by a
        # pause that was resumed since) is armed again while we want to read
        if self.recv_io == NULL and self.state == C_OPEN and not self.paused:
            self._rearm_recv()
        self._maybe_finish()

    cdef void _rearm_recv(self) noexcept:
        try:
            self._start_recv()
        except BaseException as e:
            self._abort(e)

    cdef void _on_eof(self) except *:
        """The peer shut down its side: finish sending what is queued, then close."""
        if self.state != C_OPEN:
            return
        if self.first_pending:          # connected and closed without sending
            self.first_pending = 0
            self.surfaced = 1
            if self.on_accept is not None:
                self._call(self.on_accept, b"")
        if self.state == C_OPEN:
            self.state = C_CLOSING

    cdef void _drain_due(self) noexcept:
        """After a synchronous send: if on_drain is due, deliver it from
        dispatch (this may be any thread) through a posted completion."""
        cdef IoCtx* io
        if self.was_full and self.send_buffered <= self.max_send // 2 and self.state < C_ABORTING:
            try:
                io = self._new_io(OP_NOP)
            except BaseException:
                return
            try:
                self.eng.be.submit_post(io)
            except BaseException:
                self._io_done(io)

    cdef int _send_next(self) except -1:
        """Hand the head of the send queue to the kernel unless a send is in
        flight. Runs no Python code, so the GIL keeps it atomic."""
        cdef IoCtx* io
        cdef Py_ssize_t total, n, sent
        while self.send_io == NULL and self.sendq:
            item = self.sendq[0]
            if type(item) is _FileJob:
                if self._splice_next(<_FileJob>item):
                    return 0
                self.sendq.popleft()
                (<_FileJob>item).finish()
                continue
            n = iocpx_bytes_len(item)
            self.sendq.popleft()
            if n < COALESCE and self.sendq and type(self.sendq[0]) is bytes:
                parts = [item]
                total = n
                while self.sendq and type(self.sendq[0]) is bytes and \
                        total + iocpx_bytes_len(self.sendq[0]) <= COALESCE:
                    nxt = self.sendq.popleft()
                    total += iocpx_bytes_len(nxt)
                    parts.append(nxt)
                if len(parts) > 1:
                    item = b"".join(parts)
                    n = total
            self._submit_bytes(item, n)
        return 0

    cdef int _submit_bytes(self, object item, Py_ssize_t n) except -1:
        """Send n bytes of item now if the backend can, else hand them to the
        kernel as the one send in flight."""
        cdef IoCtx* io
        cdef Py_ssize_t sent = 0
        if self.eng.be.sync_send:   # try now: done at once costs no completion
            sent = self.eng.be.try_send(self.fd, iocpx_bytes_ptr(item), n)
            if sent == n:
                self._count_sent(n)
                self._drain_due()
                return 0
            if sent < 0:
                if sent != -_errno.EAGAIN:
                    self._abort(self.eng.be.error(-sent, "send"))
                    return 0
                sent = 0
            elif sent > 0:
                self._count_sent(sent)
        io = self._new_io(OP_SEND)
        io_set_obj(io, item)        # the kernel reads item's buffer until completion
        io.buf = iocpx_bytes_ptr(item) + sent
        io.len = n - sent
        try:
            self.eng.be.submit_send(io)
        except BaseException as e:
            self._io_done(io)
            self._abort(e)
            raise
        self.send_io = io
        return 0

    cdef bint _splice_next(self, _FileJob job) except -1:
        """Submit the next sendfile step; False when the job is complete."""
        cdef IoCtx* io
        cdef int fds[2]
        cdef int64_t n
        if self.eng.be.direct_sendfile:
            if job.remaining <= 0:
                return False
            n = job.remaining if job.remaining < 0x40000000 else 0x40000000
            io = self._new_io(OP_SENDFILE)
            try:
                self.eng.be.submit_sendfile(io, job.fd, job.offset, <uint32_t>n)
            except BaseException:
                self._io_done(io)
                raise
            self.send_io = io
            return True
        if self.pipe_len > 0:
            io = self._new_io(OP_SPLICE_OUT)
            n = self.pipe_len
            try:
                self.eng.be.submit_splice(io, self.pipe_r, -1, self.fd, <uint32_t>n)
            except BaseException:
                self._io_done(io)
                raise
            self.send_io = io
            return True
        if job.remaining <= 0:
            return False
        if self.pipe_r < 0:
            self.pipe_size = iocpx_pipe_open(fds, PIPE_WANT)
            if self.pipe_size < 0:
                raise oserror(iocpx_last_error(), "pipe")
            self.pipe_r = fds[0]
            self.pipe_w = fds[1]
        n = job.remaining if job.remaining < self.pipe_size else self.pipe_size
        io = self._new_io(OP_SPLICE_IN)
        try:
            self.eng.be.submit_splice(io, job.fd, job.offset, self.pipe_w, <uint32_t>n)
        except BaseException:
            self._io_done(io)
            raise
        self.send_io = io
        return True

    cdef void _on_send(self, Event* ev) except *:
        cdef IoCtx* io = ev.io
        cdef int res = ev.res
        if res > 0:
            io.buf += res
            io.len -= res
            self._sent(res)
            if io.len > 0 and self.state < C_ABORTING:      # partial send: the rest
                try:
                    self.eng.be.submit_send(io)
                    return
                except BaseException as e:
                    self.send_io = NULL
                    self._io_done(io)
                    self._abort(e)
                    self._maybe_finish()
                    return
        self.send_io = NULL
        self._io_done(io)
        if res < 0 and res != -_errno.ECANCELED:
            self._abort(self.eng.be.error(-res, "send"))
        elif res == 0 and io.len > 0:
            self._abort(oserror(_errno.EPIPE, "send"))
        if self.state < C_ABORTING:
            self._send_safe()
        self._maybe_finish()

    cdef void _send_safe(self) noexcept:
        try:
            self._send_next()
        except BaseException as e:
            self._abort(e)

    cdef void _on_splice(self, Event* ev) except *:
        cdef int res = ev.res
        cdef uint8_t op = ev.io.op
        self.send_io = NULL
        self._io_done(ev.io)
        if res < 0:
            if res != -_errno.ECANCELED:
                self._abort(self.eng.be.error(-res, "sendfile"))
        elif self.state < C_ABORTING and self.sendq:
            job = <_FileJob>self.sendq[0]
            if op == OP_SENDFILE:
                if res == 0:
                    self._abort(OSError(_errno.EIO, "sendfile: the file ended before count bytes"))
                else:
                    job.offset += res
                    job.remaining -= res
                    self._sent(res)
            elif op == OP_SPLICE_IN:
                if res == 0:
                    self._abort(OSError(_errno.EIO, "sendfile: the file ended before count bytes"))
                else:
                    job.offset += res
                    job.remaining -= res
                    self.pipe_len += res
            else:
                self.pipe_len -= res
                self._sent(res)
        if self.state < C_ABORTING:
            self._send_safe()
        self._maybe_finish()

    cdef void _on_aux(self, Event* ev) except *:
        self._io_done(ev.io)
        if self.state < C_ABORTING:
            self._check_drain()     # a drain found by a synchronous send outside dispatch
        self._maybe_finish()

    cdef void _abort(self, object exc) noexcept:
        """Close now: drop queued data, cancel every op, report exc to on_close."""
        if self.state >= C_ABORTING:
            return
        if self.close_exc is None:
            self.close_exc = exc
        self.state = C_ABORTING
        self._drop_queue()
        cdef IoCtx* io
        try:
            io = self._new_io(OP_CANCEL)
        except BaseException:
            return
        try:
            self.eng.be.submit_cancel_fd(io, self.fd)
        except BaseException:
            self._io_done(io)
            log.exception("iocpx: could not cancel the operations of connection %d", self.id)

    cdef void _drop_queue(self) noexcept:
        if self.sendq:
            for item in self.sendq:
                if type(item) is _FileJob:
                    (<_FileJob>item).finish()
        self.sendq = None
        self.send_buffered = 0

    cdef void _maybe_finish(self) noexcept:
        """Close the socket and report on_close once nothing is pending."""
        if self.state < C_CLOSING or self.state == C_CLOSED or self.inflight > 0:
            return
        if self.state == C_CLOSING and (self.send_io != NULL or self.sendq):
            return
        cdef Engine eng = self.eng
        self.state = C_CLOSED
        _sock_close(self.fd)
        self.fd = -1
        _sock_close(self.pipe_r)
        _sock_close(self.pipe_w)
        self.pipe_r = self.pipe_w = -1
        self._drop_queue()
        eng._conns.pop(self.id, None)
        eng.n_closed += 1
        cb = self.on_close
        exc = self.close_exc
        self.on_accept = self.on_recv = self.on_close = self.on_connect = self.on_drain = None
        self.close_exc = None
        if cb is not None and self.surfaced:
            try:
                cb(self, exc)
            except BaseException as e:
                log.error("iocpx: on_close raised for connection %d", self.id, exc_info=e)

    # ---- public API -------------------------------------------------------

    def send(self, data):
        """Queue data (bytes-like) to be sent in order; never blocks. Bytes are
        kept alive until sent, other buffers are copied. Thread-safe."""
        if type(data) is not bytes:
            if isinstance(data, str):
                raise TypeError("send() takes bytes-like data, not str (encode it first)")
            try:
                data = bytes(memoryview(data))
            except TypeError:
                raise TypeError(f"send() takes bytes-like data, not {type(data).__name__}") from None
        if self.user_closed or self.state >= C_ABORTING:
            raise _closed_error("connection")
        cdef Py_ssize_t n = iocpx_bytes_len(data)
        if n == 0:
            return
        self._reserve(n)
        if self.send_io == NULL and not self.sendq and self.state != C_CONNECTING:
            self._submit_bytes(data, n)     # the usual case: nothing queued, no deque needed
        else:
            if self.sendq is None:
                self.sendq = deque()        # made on first need: idle connections carry none
            self.sendq.append(data)
            if self.send_io == NULL and self.state != C_CONNECTING:
                self._send_next()
        self.eng._kick()

    cdef int _reserve(self, Py_ssize_t n) except -1:
        """Account n bytes about to be queued. Past max_send_buffer reading
        pauses (a request/response peer is bounded by that alone: what was
        already read is bounded by the receive pool). A producer that keeps
        pushing is refused with SendBufferFull past the hard cap."""
        cdef Py_ssize_t cap = self.max_send + (self.max_send if self.max_send > HARD_SLACK else HARD_SLACK)
        if self.send_buffered > 0 and self.send_buffered + n > cap:
            self.was_full = 1
            raise SendBufferFull(_errno.EAGAIN,
                                 f"send buffer full ({self.send_buffered} bytes queued, "
                                 f"max_send_buffer={self.max_send}); wait for on_drain")
        self.send_buffered += n
        if self.send_buffered > self.max_send and not self.was_full:
            self.was_full = 1
            if self.state == C_OPEN:
                self._pause(PAUSE_FULL)
        return 0

    def sendfile(self, file, offset=0, count=None):
        """Queue count bytes of file (a path, a file object or a descriptor)
        from offset, sent by the kernel (splice) in order with send().
        Returns the number of bytes queued."""
        if self.user_closed or self.state >= C_ABORTING:
            raise _closed_error("connection")
        for name, v in (("offset", offset), ("count", count)):
            if v is not None and (isinstance(v, bool) or not isinstance(v, int)):
                raise TypeError(f"{name} must be an int, not {type(v).__name__}")
        if offset < 0:
            raise ValueError(f"offset must be >= 0, got {offset}")
        if count is not None and count < 0:
            raise ValueError(f"count must be >= 0 or None, got {count}")
        cdef _FileJob job = _FileJob.__new__(_FileJob)
        job.fd = -1
        if isinstance(file, (str, bytes, os.PathLike)):
            job.fd = os.open(file, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0))
            job.owned = 1
        elif isinstance(file, int) and not isinstance(file, bool):
            job.fd = os.dup(file)       # our own descriptor: the caller may close theirs
            job.owned = 1
        elif hasattr(file, "fileno"):
            job.fd = os.dup(file.fileno())
            job.owned = 1
        else:
            raise TypeError(f"sendfile() takes a path, a file object or a descriptor, not {type(file).__name__}")
        try:
            size = os.fstat(job.fd).st_size
            if count is None:
                count = max(0, size - offset)
        except BaseException:
            job.finish()
            raise
        job.offset = offset
        job.remaining = count
        if count == 0:
            job.finish()
            return 0
        self._reserve(count)
        if self.sendq is None:
            self.sendq = deque()
        self.sendq.append(job)
        if self.send_io == NULL and self.state != C_CONNECTING:
            self._send_next()
        self.eng._kick()
        return count

    def close(self):
        """Close gracefully: stop reading, send what is queued, then close;
        on_close(conn, None) follows. Idempotent; thread-safe."""
        if self.user_closed or self.state >= C_ABORTING:
            return
        self.user_closed = 1
        if self.state == C_CONNECTING:
            self._abort(None)
            self.eng._kick()
            return
        self.state = C_CLOSING
        cdef IoCtx* io
        if not self._stop_reading():
            io = self._new_io(OP_NOP)   # a completion that brings us to _maybe_finish
            try:
                self.eng.be.submit_post(io)
            except BaseException:
                self._io_done(io)
                raise
        self.eng._kick()

    def pause_reading(self):
        """Stop reading from the socket (the kernel's buffer then fills and TCP
        slows the peer down). Data already read may still arrive in a few
        on_recv calls. Thread-safe."""
        if self.user_closed or self.state >= C_ABORTING:
            raise _closed_error("connection")
        self._pause(PAUSE_USER)
        self.eng._kick()

    def resume_reading(self):
        """Start reading again after pause_reading(). Thread-safe."""
        if self.user_closed or self.state >= C_ABORTING:
            raise _closed_error("connection")
        self._resume(PAUSE_USER)
        self.eng._kick()

    @property
    def reading(self):
        """False while reading is paused (by pause_reading() or a full send buffer)."""
        return self.state == C_OPEN and not self.paused

    cdef void _pause(self, int why) except *:
        cdef bint was = self.paused != 0
        self.paused |= why
        if not was and self._stop_reading():
            self.eng.be.flush()     # rare: stop the kernel reading at once

    cdef void _resume(self, int why) except *:
        if not (self.paused & why):
            return
        self.paused &= ~why
        if not self.paused and self.state == C_OPEN and self.recv_io == NULL:
            self._start_recv()

    cdef bint _stop_reading(self) except -1:
        """Cancel the armed receive; True if a cancel is (already) on its way."""
        cdef IoCtx* io
        if self.recv_io == NULL:
            return False
        if self.recv_cancel == self.recv_io:
            return True
        io = self._new_io(OP_CANCEL)
        try:
            self.eng.be.submit_cancel_op(io, self.recv_io)
        except BaseException:
            self._io_done(io)
            raise
        self.recv_cancel = self.recv_io
        self.recv_io = NULL         # a resume arms a fresh one; the old one just ends
        return True

    cdef void _sent(self, Py_ssize_t n) noexcept:
        """n more bytes left the send queue (a completion): account for them
        and resume reading / report on_drain once the queue is back to half
        of max_send_buffer."""
        self._count_sent(n)
        self._check_drain()

    cdef inline void _count_sent(self, Py_ssize_t n) noexcept:
        self.send_buffered -= n
        self.eng.n_bytes_out += n
        self.last_tick = self.eng.tick

    cdef void _check_drain(self) noexcept:
        """Runs in dispatch only (it may call on_drain)."""
        if self.was_full and self.send_buffered <= self.max_send // 2:
            self.was_full = 0
            if self.state == C_OPEN or self.state == C_CLOSING:
                try:
                    self._resume(PAUSE_FULL)
                except BaseException as e:
                    self._abort(e)
                    return
                if self.on_drain is not None and self.state < C_ABORTING:
                    self._call(self.on_drain, None)

    def abort(self):
        """Close at once, dropping queued data; on_close(conn, None) follows."""
        if self.state >= C_ABORTING:
            return
        self.user_closed = 1
        self._abort(None)
        self.eng._kick()

    @property
    def closed(self):
        """True once close()/abort() was called or the connection ended."""
        return self.user_closed or self.state >= C_ABORTING or \
            (self.state == C_CLOSING and not self.sendq and self.send_io == NULL)

    @property
    def peer(self):
        """The remote (host, port)."""
        cdef iocpx_addr_t a
        if self._peer is None:
            if not self.have_peer:
                if self.fd < 0:
                    raise _closed_error("connection")
                if iocpx_sock_peer(self.fd, &a) < 0:
                    raise oserror(iocpx_last_error(), "getpeername")
                self._peer = _addr_tuple(&a)
            else:
                self._peer = _addr_tuple(&self.peer_addr)
        return self._peer

    @property
    def local(self):
        """The local (host, port)."""
        cdef iocpx_addr_t a
        if self._local is None:
            if self.fd < 0:
                raise _closed_error("connection")
            if iocpx_sock_name(self.fd, &a) < 0:
                raise oserror(iocpx_last_error(), "getsockname")
            self._local = _addr_tuple(&a)
        return self._local

    @property
    def engine(self):
        return self.eng

    def __repr__(self):
        states = ("connecting", "open", "closing", "aborting", "closed")
        return f"<iocpx.Connection {self.id} {states[self.state]}>"


@cython.final
cdef class CompletionPort:
    """The raw completion-port trio: post(key, nbytes=0, obj=None) from any
    thread, get(timeout=None) -> (key, nbytes, obj) or None on timeout.
    get() waits with the GIL released; several threads may wait at once."""
    cdef Backend be
    cdef iocpx_mutex_t mu           # guards buf_*, harvesting, closed
    cdef iocpx_cond_t cv
    cdef Event buf[64]              # completions taken from the kernel, not yet handed out
    cdef int buf_head, buf_len
    cdef int harvesting
    cdef int closed
    cdef int users                  # threads inside get()

    def __cinit__(self, backend=None):
        iocpx_mutex_init(&self.mu)
        iocpx_cond_init(&self.cv)
        self.closed = 1
        self.be = _make_backend(backend)
        self.closed = 0

    def __dealloc__(self):
        iocpx_cond_destroy(&self.cv)
        iocpx_mutex_destroy(&self.mu)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @property
    def closed(self):
        return bool(self.closed)

    def post(self, key, nbytes=0, obj=None):
        """Queue a completion packet (key, nbytes, obj)."""
        if isinstance(nbytes, bool) or not isinstance(nbytes, int):
            raise TypeError(f"nbytes must be an int, not {type(nbytes).__name__}")
        if nbytes < 0:
            raise ValueError(f"nbytes must be >= 0, got {nbytes}")
        if self.closed:
            raise _closed_error("completion port")
        cdef IoCtx* io = io_alloc(OP_POST, key, NULL)
        io.aux = nbytes
        io_set_obj(io, obj)
        try:
            self.be.submit_post(io)
        except BaseException:
            io_free(io)
            raise
        self.be.flush()

    def get(self, timeout=None):
        """Wait for a packet; (key, nbytes, obj), or None after timeout seconds."""
        cdef long ms
        if timeout is None:
            ms = -1
        else:
            if timeout < 0:
                raise ValueError("timeout must be >= 0 or None")
            ms = <long>(timeout * 1000 + 0.999)
        if self.closed:
            raise _closed_error("completion port")
        cdef Event ev
        cdef int r
        self.users += 1
        try:
            with nogil:
                r = self._get(&ev, ms)
        finally:
            self.users -= 1
        if r == 0:
            return None
        if r < 0:
            raise _closed_error("completion port") if r == -9 else oserror(-r, "completion port")
        key = <object>ev.io.owner if ev.io.owner != NULL else None
        obj = <object>ev.io.obj if ev.io.obj != NULL else None
        n = ev.io.aux
        io_free(ev.io)
        return (key, n, obj)

    cdef int _get(self, Event* out, long ms) noexcept nogil:
        cdef uint64_t deadline = 0
        cdef uint64_t now
        cdef long left = ms
        cdef int n, i
        if ms >= 0:
            deadline = iocpx_now_ns() + <uint64_t>ms * 1000000
        iocpx_mutex_lock(&self.mu)
        while True:
            while self.buf_len > 0:
                out[0] = self.buf[self.buf_head]
                self.buf_head = (self.buf_head + 1) % 64
                self.buf_len -= 1
                if out[0].io.op == OP_POST:
                    iocpx_mutex_unlock(&self.mu)
                    return 1
                with gil:               # a close() wake-up: not a packet
                    io_free(out[0].io)
            if self.closed:
                iocpx_mutex_unlock(&self.mu)
                return -9
            if ms >= 0:
                now = iocpx_now_ns()
                if now >= deadline:
                    iocpx_mutex_unlock(&self.mu)
                    return 0
                left = <long>((deadline - now + 999999) // 1000000)
            if not self.harvesting:
                self.harvesting = 1
                iocpx_mutex_unlock(&self.mu)
                n = self.be.wait(self.buf, 64, left)      # buf is empty: we own it now
                iocpx_mutex_lock(&self.mu)
                self.harvesting = 0
                if n > 0:
                    self.buf_head = 0
                    self.buf_len = n
                    iocpx_cond_broadcast(&self.cv)
                elif n < 0:
                    iocpx_mutex_unlock(&self.mu)
                    return n
            else:
                iocpx_cond_wait_ms(&self.cv, &self.mu, left)

    def close(self):
        """Close the port; waiting get() calls raise; unread packets are dropped."""
        if self.closed:
            return
        self.closed = 1
        cdef IoCtx* io = io_alloc(OP_NOP, None, NULL)
        try:
            self.be.submit_post(io)     # wakes a get() that waits in the kernel
        except BaseException:
            io_free(io)
        self.be.flush()
        with nogil:
            iocpx_mutex_lock(&self.mu)
            iocpx_cond_broadcast(&self.cv)
            iocpx_mutex_unlock(&self.mu)
        while self.users > 0:
            time.sleep(0.001)
        cdef int n, i
        while self.buf_len > 0:
            io_free(self.buf[self.buf_head].io)
            self.buf_head = (self.buf_head + 1) % 64
            self.buf_len -= 1
        while True:
            with nogil:
                n = self.be.wait(self.buf, 64, 0)
            if n <= 0:
                break
            for i in range(n):
                io_free(self.buf[i].io)
        self.be.release()
