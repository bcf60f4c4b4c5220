# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The epoll backend: completion emulation for kernels or containers where
io_uring is switched off (kernel.io_uring_disabled, seccomp profiles).

The engine sees the same completions as with io_uring: the leader's wait()
turns readiness into finished operations (accept4, a read into a fresh
buffer, send, sendfile, connect's SO_ERROR) and hands them over as Events.
Sends, connects and sendfiles are tried at once when submitted (like
uvloop's try-write); only what would block waits for EPOLLOUT. Timers are
the engine's (the wait's timeout); this module has none.

Locking: `mu` guards the per-descriptor table and the ready list.
Submitters hold the GIL and take `mu`; the leader takes `mu` without the GIL.
The I/O done under `mu` is non-blocking and short.

Bounded reads: a receive stops reading once MAX_UNREAD of its data events
wait for dispatch (EPOLLIN is dropped until recv_bytes() consumes one), so a
slow callback throttles its own peer instead of growing memory.
"""
from cpython.bytes cimport PyBytes_FromStringAndSize
from libc.stdlib cimport malloc, calloc, realloc, free
from libc.errno cimport (errno, EAGAIN, EINTR, EINPROGRESS, ENOENT, EEXIST, ECONNRESET,
                         ECONNABORTED, EPIPE)
from libc.string cimport memset, memcpy
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int32_t, int64_t
from posix.unistd cimport close as c_close, read as c_read, write as c_write

from iocpx._sys cimport (iocpx_mutex_t, iocpx_mutex_init, iocpx_mutex_destroy, iocpx_mutex_lock,
                         iocpx_mutex_unlock, sockaddr, socklen_t, iocpx_addr_t, IOCPX_DG_CTRL,
                         iocpx_cmsg_drops)
from iocpx._backend cimport (Backend, IoCtx, Event, EventQueue, ev_set, evq_push, evq_take,
                             evq_free, recv_heap, oserror, io_target, EV_MORE, OP_SEND, READ_MIN,
                             OP_RECVFROM, OP_SENDTO, Datagram, DG_TRUNC)
from iocpx._linux cimport (ECANCELED, EWOULDBLOCK, fcntl, F_GETFL, F_SETFL, O_NONBLOCK,
                           c_socket, accept4, connect, recv, send, sendto, recvmmsg, getsockopt,
                           iovec, msghdr, mmsghdr, SOCK_STREAM, SOCK_NONBLOCK, SOCK_CLOEXEC,
                           SOL_SOCKET, SO_ERROR, MSG_NOSIGNAL, MSG_DONTWAIT, MSG_TRUNC,
                           c_sendfile, epoll_event, epoll_create1, epoll_ctl, epoll_wait,
                           EPOLL_CLOEXEC, EPOLL_CTL_ADD, EPOLL_CTL_MOD, EPOLL_CTL_DEL, EPOLLIN,
                           EPOLLOUT, EPOLLERR, EPOLLHUP, eventfd, EFD_CLOEXEC, EFD_NONBLOCK)

cdef enum:
    MAX_UNREAD = 8          # data events of one receive waiting for dispatch
    WAKE_TAG = 0xFFFFFFFF   # epoll data of the wake-up eventfd

# Per-descriptor state: the operations armed on it. Accepts queue up through
# IoCtx.aux.next_accept, since a listener has many.
cdef struct FdState:
    IoCtx* recv             # armed receive (kernel-side: ours until its final event)
    IoCtx* send             # armed send or sendfile
    IoCtx* conn             # armed connect
    IoCtx* acc_head         # queued accepts, linked through aux.next_accept
    IoCtx* acc_tail
    uint32_t mask           # interest registered with epoll (0: not registered)
    int32_t pending_err     # the connection was made, then reset before the connect
                            # completed here: the next receive reports this errno

cdef struct FileSend:       # IoCtx.extra of a sendfile op (freed by io_free)
    int file_fd
    long offset
    uint32_t nbytes


cdef class EpollBackend(Backend):
    cdef int ep                     # epoll descriptor, ours
    cdef int wake_fd                # eventfd that interrupts epoll_wait, ours
    cdef iocpx_mutex_t mu
    cdef FdState* fds               # owned: indexed by descriptor
    cdef int nfds
    cdef EventQueue ready           # completions made outside wait() (submit, cancel, post)
    cdef int in_wait                # the leader sleeps in epoll_wait
    cdef int wake_pending           # an eventfd write is outstanding
    cdef void* dg                   # owned: the datagram scratch area (DgScratch), or NULL

    def __cinit__(self):
        self.name = "epoll"
        self.sync_send = 0          # every send is tried at once (uvloop's try-write)
        self.sync_sendto = True     # and every datagram (epoll/datagram.pxi)
        self.dgram_recvs = 1
        self.ep = -1
        self.wake_fd = -1
        iocpx_mutex_init(&self.mu)
        self.ep = epoll_create1(EPOLL_CLOEXEC)
        if self.ep < 0:
            raise oserror(errno, "epoll_create1")
        self.wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)
        if self.wake_fd < 0:
            raise oserror(errno, "eventfd")
        cdef epoll_event ev
        ev.events = EPOLLIN
        ev.data.u64 = WAKE_TAG
        if epoll_ctl(self.ep, EPOLL_CTL_ADD, self.wake_fd, &ev) < 0:
            raise oserror(errno, "epoll_ctl")

    def __dealloc__(self):
        self.release()
        iocpx_mutex_destroy(&self.mu)

    cdef void release(self) noexcept:
        if self.ep >= 0:
            c_close(self.ep)
            self.ep = -1
        if self.wake_fd >= 0:
            c_close(self.wake_fd)
            self.wake_fd = -1
        free(self.fds)
        self.fds = NULL
        self.nfds = 0
        dg_scratch_free(self)
        evq_free(&self.ready)

    # ---- helpers (mu held) ------------------------------------------------

    cdef FdState* _state(self, int fd) noexcept nogil:
        """The state slot of fd, growing the table; NULL when out of memory."""
        cdef int n
        cdef FdState* t
        if fd < 0:
            return NULL
        if fd >= self.nfds:
            n = self.nfds * 2 if self.nfds else 1024
            while n <= fd:
                n *= 2
            t = <FdState*>realloc(self.fds, n * sizeof(FdState))
            if t == NULL:
                return NULL
            memset(t + self.nfds, 0, (n - self.nfds) * sizeof(FdState))
            self.fds = t
            self.nfds = n
        return &self.fds[fd]

    cdef void _interest(self, int fd, FdState* st) noexcept nogil:
        """Register with epoll exactly what the armed ops need."""
        cdef uint32_t want = 0
        cdef epoll_event ev
        cdef int r
        if st.acc_head != NULL or (st.recv != NULL and dg_wants(st.recv)):
            want |= EPOLLIN
        if st.send != NULL or st.conn != NULL:
            want |= EPOLLOUT
        if want == st.mask:
            return
        ev.events = want
        ev.data.u64 = <uint64_t>fd
        if want == 0:
            epoll_ctl(self.ep, EPOLL_CTL_DEL, fd, &ev)
        elif st.mask == 0:
            r = epoll_ctl(self.ep, EPOLL_CTL_ADD, fd, &ev)
            if r < 0 and errno == EEXIST:
                epoll_ctl(self.ep, EPOLL_CTL_MOD, fd, &ev)
        else:
            r = epoll_ctl(self.ep, EPOLL_CTL_MOD, fd, &ev)
            if r < 0 and errno == ENOENT:
                epoll_ctl(self.ep, EPOLL_CTL_ADD, fd, &ev)
        st.mask = want

    cdef int _ready(self, IoCtx* io, int res, uint32_t flags) noexcept nogil:
        """Queue a completion made outside wait(); wakes a sleeping leader."""
        cdef Event ev
        ev_set(&ev, io, res, flags, NULL)
        if evq_push(&self.ready, &ev) < 0:
            return -1
        self._wake()
        return 0

    cdef void _wake(self) noexcept nogil:
        cdef uint64_t one = 1
        if self.in_wait and not self.wake_pending:
            self.wake_pending = 1
            c_write(self.wake_fd, &one, 8)

    cdef int _ready_or_raise(self, IoCtx* io, int res) except -1:
        if self._ready(io, res, 0) < 0:
            raise MemoryError()
        return 0

    # ---- submission (GIL held, any thread) --------------------------------

    cdef int socket_open(self, int family) except -1:
        cdef int fd = c_socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0)
        if fd < 0:
            raise oserror(errno, "socket")
        return fd

    cdef int adopt(self, int fd) except -1:
        cdef int fl = fcntl(fd, F_GETFL)
        if fl < 0 or fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0:
            raise oserror(errno, "fcntl")
        cdef FdState* st = self._locked_state(fd)
        st.pending_err = 0          # a new socket on a reused descriptor number
        iocpx_mutex_unlock(&self.mu)
        return 0

    cdef FdState* _locked_state(self, int fd) except NULL:
        """fd's state with mu held (the caller unlocks); MemoryError unlocked."""
        iocpx_mutex_lock(&self.mu)
        cdef FdState* st = self._state(fd)
        if st == NULL:
            iocpx_mutex_unlock(&self.mu)
            raise MemoryError()
        return st

    cdef int submit_accept(self, IoCtx* io) except -1:
        cdef FdState* st = self._locked_state(io.fd)
        io.aux.next_accept = NULL
        if st.acc_tail != NULL:
            st.acc_tail.aux.next_accept = io
        else:
            st.acc_head = io
        st.acc_tail = io
        self._interest(io.fd, st)
        iocpx_mutex_unlock(&self.mu)
        return 0

    cdef int submit_recv(self, IoCtx* io) except -1:
        cdef FdState* st = self._locked_state(io.fd)
        io.aux.unread = 0           # data events not yet consumed by recv_bytes
        if st.pending_err:          # reset right after the connect: say so, as io_uring would
            self._ready(io, -st.pending_err, 0)
            st.pending_err = 0
            iocpx_mutex_unlock(&self.mu)
            return 0
        st.recv = io
        self._interest(io.fd, st)
        iocpx_mutex_unlock(&self.mu)
        return 0

    cdef int _arm_out(self, IoCtx* io, bint is_connect) except -1:
        cdef FdState* st = self._state(io.fd)
        if st == NULL:
            raise MemoryError()
        if is_connect:
            st.conn = io
        else:
            st.send = io
        self._interest(io.fd, st)
        return 0

    cdef int submit_send(self, IoCtx* io) except -1:
        cdef ssize_t n
        iocpx_mutex_lock(&self.mu)
        try:
            n = send(io.fd, io.buf, io.len, MSG_NOSIGNAL | MSG_DONTWAIT)
            if n >= 0:
                self._ready_or_raise(io, <int>n)
            elif errno == EAGAIN or errno == EWOULDBLOCK or errno == EINTR:
                self._arm_out(io, 0)
            else:
                self._ready_or_raise(io, -errno)
        finally:
            iocpx_mutex_unlock(&self.mu)
        return 0

    cdef int submit_sendfile(self, IoCtx* io, int file_fd, int64_t offset, uint32_t nbytes) except -1:
        cdef FileSend* fs
        if io.extra == NULL:
            io.extra = malloc(sizeof(FileSend))   # freed by io_free
            if io.extra == NULL:
                raise MemoryError()
        fs = <FileSend*>io.extra
        fs.file_fd = file_fd
        fs.offset = offset
        fs.nbytes = nbytes
        iocpx_mutex_lock(&self.mu)
        try:
            if self._try_sendfile(io) == 0:
                self._arm_out(io, 0)
        finally:
            iocpx_mutex_unlock(&self.mu)
        return 0

    cdef int _try_sendfile(self, IoCtx* io) noexcept nogil:
        """1 when the op completed (queued as ready), 0 when it must wait."""
        cdef FileSend* fs = <FileSend*>io.extra
        cdef long off = fs.offset
        cdef ssize_t n = c_sendfile(io.fd, fs.file_fd, &off, fs.nbytes)
        if n >= 0:
            self._ready(io, <int>n, 0)
            return 1
        if errno == EAGAIN or errno == EWOULDBLOCK or errno == EINTR:
            return 0
        self._ready(io, -errno, 0)
        return 1

    cdef int submit_connect(self, IoCtx* io) except -1:
        cdef FdState* st = self._locked_state(io.fd)
        st.pending_err = 0          # a new socket on a reused descriptor number
        try:
            if connect(io.fd, io_target(io), io.addrlen) == 0:
                self._ready_or_raise(io, 0)
            elif errno == EINPROGRESS or errno == EINTR:
                self._arm_out(io, 1)
            else:
                self._ready_or_raise(io, -errno)
        finally:
            iocpx_mutex_unlock(&self.mu)
        return 0

    cdef int submit_cancel_fd(self, IoCtx* io, int fd) except -1:
        cdef int n = 0
        cdef FdState* st
        cdef IoCtx* a
        cdef IoCtx* nxt
        iocpx_mutex_lock(&self.mu)
        st = self._state(fd)
        if st != NULL:
            if st.recv != NULL:
                self._ready(st.recv, -ECANCELED, 0)
                st.recv = NULL
                n += 1
            if st.send != NULL:
                self._ready(st.send, -ECANCELED, 0)
                st.send = NULL
                n += 1
            if st.conn != NULL:
                self._ready(st.conn, -ECANCELED, 0)
                st.conn = NULL
                n += 1
            a = st.acc_head
            while a != NULL:
                nxt = a.aux.next_accept
                self._ready(a, -ECANCELED, 0)
                a = nxt
                n += 1
            st.acc_head = st.acc_tail = NULL
            self._interest(fd, st)
        self._ready(io, n if n else -ENOENT, 0)
        iocpx_mutex_unlock(&self.mu)
        return 0

    cdef int submit_cancel_op(self, IoCtx* io, IoCtx* target) except -1:
        cdef int found = 0
        cdef FdState* st
        cdef IoCtx* a
        cdef IoCtx* prev = NULL
        iocpx_mutex_lock(&self.mu)
        st = self._state(target.fd)
        if st != NULL:
            if st.recv == target:
                st.recv = NULL
                found = 1
            elif st.send == target:
                st.send = NULL
                found = 1
            elif st.conn == target:
                st.conn = NULL
                found = 1
            else:
                a = st.acc_head
                while a != NULL:
                    if a == target:
                        if prev == NULL:
                            st.acc_head = a.aux.next_accept
                        else:
                            prev.aux.next_accept = a.aux.next_accept
                        if st.acc_tail == a:
                            st.acc_tail = prev
                        found = 1
                        break
                    prev = a
                    a = a.aux.next_accept
            if found:
                self._ready(target, -ECANCELED, 0)
                self._interest(target.fd, st)
        self._ready(io, 0 if found else -ENOENT, 0)
        iocpx_mutex_unlock(&self.mu)
        return 0

    cdef int submit_post(self, IoCtx* io) except -1:
        iocpx_mutex_lock(&self.mu)
        r = self._ready(io, 0, 0)
        iocpx_mutex_unlock(&self.mu)
        if r < 0:
            raise MemoryError()
        return 0

    cdef int flush(self) except -1:
        return 0        # every submit is already registered

    # ---- completions (leader, no GIL) -------------------------------------

    cdef int wait(self, Event* out, int maxev, long timeout_ms) noexcept nogil:
        cdef epoll_event evs[128]
        cdef int n, k, i, fd, cap
        cdef uint64_t junk
        cdef uint32_t e
        cdef FdState* st
        iocpx_mutex_lock(&self.mu)
        n = evq_take(&self.ready, out, maxev)
        if n > 0:
            iocpx_mutex_unlock(&self.mu)
            return n
        self.in_wait = 1
        iocpx_mutex_unlock(&self.mu)
        cap = maxev if maxev < 128 else 128
        k = epoll_wait(self.ep, evs, cap, <int>timeout_ms)
        iocpx_mutex_lock(&self.mu)
        self.in_wait = 0
        n = evq_take(&self.ready, out, maxev)
        if k < 0:
            k = 0
        for i in range(k):
            if n >= maxev:
                break               # level-triggered: the rest is reported again
            if evs[i].data.u64 == WAKE_TAG:
                c_read(self.wake_fd, &junk, 8)
                self.wake_pending = 0
                continue
            fd = <int>evs[i].data.u64
            if fd >= self.nfds:
                continue
            st = &self.fds[fd]
            e = evs[i].events
            if e & (EPOLLIN | EPOLLERR | EPOLLHUP):
                if st.acc_head != NULL:
                    n += self._do_accepts(fd, st, out + n, maxev - n)
                elif st.recv != NULL and st.recv.op == OP_RECVFROM:
                    n += dgram_read(self, fd, st, out + n, maxev - n)     # epoll/datagram.pxi
                elif st.recv != NULL and st.recv.aux.unread < MAX_UNREAD:
                    n += self._do_recv(fd, st, out + n)
            if n < maxev and e & (EPOLLOUT | EPOLLERR | EPOLLHUP):
                if st.conn != NULL:
                    n += self._do_connect(st, out + n)
                elif st.send != NULL:
                    n += self._do_send(st, out + n)
            self._interest(fd, st)
        n += evq_take(&self.ready, out + n, maxev - n)     # sendfile results queued above
        iocpx_mutex_unlock(&self.mu)
        return n

    cdef int _do_accepts(self, int fd, FdState* st, Event* out, int room) noexcept nogil:
        cdef int n = 0, s
        cdef IoCtx* io
        while st.acc_head != NULL and n < room:
            io = st.acc_head
            io.addrlen = sizeof(io.addr)
            s = accept4(fd, &io.addr.sa, &io.addrlen, SOCK_NONBLOCK | SOCK_CLOEXEC)
            if s < 0:
                if errno == EAGAIN or errno == EWOULDBLOCK:
                    break
                if errno == EINTR:
                    continue
                s = -errno
            st.acc_head = io.aux.next_accept
            if st.acc_head == NULL:
                st.acc_tail = NULL
            if s >= 0 and s < self.nfds:
                self.fds[s].pending_err = 0     # a new socket on a reused descriptor number
            ev_set(&out[n], io, s, 0, NULL)
            n += 1
        return n

    cdef int _do_recv(self, int fd, FdState* st, Event* out) noexcept nogil:
        cdef IoCtx* io = st.recv
        cdef void* buf = NULL
        cdef long r = recv_heap(fd, self.sizes[io.group], &buf)
        if r > 0:
            io.aux.unread += 1
            ev_set(out, io, <int>r, EV_MORE, buf)
            return 1
        if r == -2 or (r < 0 and (errno == EAGAIN or errno == EWOULDBLOCK or errno == EINTR)):
            return 0                # out of memory: EPOLLIN stays, we try again
        st.recv = NULL              # EOF or error: the receive ends here
        ev_set(out, io, 0 if r == 0 else -errno, 0, NULL)
        return 1

    cdef int _do_send(self, FdState* st, Event* out) noexcept nogil:
        cdef IoCtx* io = st.send
        cdef ssize_t r
        cdef int res
        if io.op == OP_SENDTO:      # a datagram that would have blocked
            if not dgram_send_now(io, &res):
                return 0
            st.send = NULL
            ev_set(out, io, res, 0, NULL)
            return 1
        if io.op != OP_SEND:        # the other op armed for EPOLLOUT: a sendfile
            if self._try_sendfile(io):
                st.send = NULL
            return 0                # its result went to the ready list
        r = send(io.fd, io.buf, io.len, MSG_NOSIGNAL | MSG_DONTWAIT)
        if r < 0 and (errno == EAGAIN or errno == EWOULDBLOCK or errno == EINTR):
            return 0
        st.send = NULL
        ev_set(out, io, <int>r if r >= 0 else -errno, 0, NULL)
        return 1

    cdef int _do_connect(self, FdState* st, Event* out) noexcept nogil:
        """The connect finished. SO_ERROR also reports a reset that came after
        the connection was made (the peer accepted and reset before we got
        here): that connect succeeded, and the reset belongs to the receive,
        as io_uring and IOCP report it."""
        cdef IoCtx* io = st.conn
        cdef int err = 0
        cdef socklen_t len = sizeof(err)
        if getsockopt(io.fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0:
            err = errno
        st.conn = NULL
        if err == ECONNRESET or err == ECONNABORTED or err == EPIPE:
            st.pending_err = err
            err = 0
        ev_set(out, io, -err, 0, NULL)
        return 1

    # ---- datagrams (epoll/datagram.pxi) ------------------------------------

    cdef int submit_recvfrom(self, IoCtx* io) except -1:
        return self.submit_recv(io)         # the recv slot; wait() sees the op

    cdef Py_ssize_t try_sendto(self, int fd, const char* buf, Py_ssize_t n,
                               sockaddr* to, int tolen) noexcept:
        cdef ssize_t r = sendto(fd, buf, <size_t>n, MSG_DONTWAIT | MSG_NOSIGNAL,
                                to if tolen > 0 else NULL, <socklen_t>tolen)
        if r < 0:
            return -errno
        return r

    cdef int submit_sendto(self, IoCtx* io) except -1:
        cdef int res
        iocpx_mutex_lock(&self.mu)
        try:
            if dgram_send_now(io, &res):
                self._ready_or_raise(io, res)
            else:
                self._arm_out(io, 0)
        finally:
            iocpx_mutex_unlock(&self.mu)
        return 0

    cdef int dgram_view(self, Event* ev, Datagram* out) except -1:
        return dgram_view_epoll(ev, out)

    cdef void dgram_done(self, Event* ev) noexcept:
        """A datagram was taken: its block is freed, the receive may read again."""
        if ev.data != NULL:
            free(ev.data)
            ev.data = NULL
            self.recv_consumed(ev)

    # ---- receive buffers: heap blocks, freed by Backend.recv_bytes/recv_copy ----

    cdef void recv_consumed(self, Event* ev) noexcept:
        """A data event was taken: the receive may read again."""
        cdef IoCtx* io = ev.io
        cdef FdState* st
        iocpx_mutex_lock(&self.mu)
        io.aux.unread -= 1
        if io.fd < self.nfds:
            st = &self.fds[io.fd]
            if st.recv == io:
                self._interest(io.fd, st)
        iocpx_mutex_unlock(&self.mu)


include "epoll/datagram.pxi"


def probe():
    """None: epoll works on every Linux kernel iocpx supports."""
    return None


def features():
    """What this backend uses of the kernel (for `python -m iocpx info`)."""
    return {"readiness": "epoll_wait, level-triggered", "sendfile": "sendfile(2)",
            "receive": f"read into a heap buffer (up to {READ_MIN} bytes per read)",
            "send": "send() at once, EPOLLOUT when it would block"}
