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

This file holds the backend's state (the epoll descriptor, the wake-up
eventfd, the per-descriptor table of armed ops, the ready list) and the
helpers its concerns share; each concern is in epoll/, under the same file
name as in the other backends' folders:

  epoll/accept.pxi    accept4 for the accepts queued on a listener
  epoll/receive.pxi   reads into heap blocks, bounded by MAX_UNREAD
  epoll/send.pxi      send() at once, EPOLLOUT for the rest
  epoll/connect.pxi   connect(), EPOLLOUT, SO_ERROR
  epoll/sendfile.pxi  sendfile(2)
  epoll/cancel.pxi    cancels: ops taken out of their slots
  epoll/poll.pxi      readiness polls (OP_POLL): the fd table's poll slot (the asyncio loop's add_reader)
  epoll/wait.pxi      the leader's wait: the ready list, then epoll_wait
  epoll/datagram.pxi  UDP: recvmmsg into heap blocks, sendto
"""
from cpython.bytes cimport PyBytes_FromStringAndSize
from libc.stdlib cimport malloc, calloc, realloc, free
from libc.errno cimport (errno, EAGAIN, EINTR, EINPROGRESS, ENOENT, EEXIST, EBADF, ECONNRESET,
                         ECONNABORTED, EPIPE, ENOMEM, ENOBUFS)
from libc.string cimport memset, memcpy
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int32_t, int64_t
from posix.unistd cimport close as c_close, read as c_read, write as c_write

from iocpx._sys cimport (iocpx_mutex_t, iocpx_mutex_init, iocpx_mutex_destroy, iocpx_mutex_lock,
                         iocpx_mutex_unlock, sockaddr, socklen_t, iocpx_addr_t, IOCPX_DG_CTRL,
                         iocpx_cmsg_drops,
                         IOCPX_FAULT, iocpx_faults_attach, IOCPX_F_SYS_SOCKET, IOCPX_F_ALLOC_FDTABLE,
                         IOCPX_F_SYS_EPOLL_CTL, IOCPX_F_ALLOC_DG_SCRATCH, IOCPX_F_ALLOC_DG_HEAD,
                         IOCPX_F_SYS_SENDTO, IOCPX_F_SYS_ACCEPT, IOCPX_F_SYS_RECV,
                         IOCPX_F_SYS_SEND_EAGAIN, IOCPX_F_SYS_SEND_SHORT, IOCPX_F_ALLOC_SENDFILE,
                         IOCPX_F_SYS_SENDFILE, iocpx_set_errno, iocpx_sleep_ms)
from iocpx._backend cimport (Backend, IoCtx, Event, EventQueue, ev_set, evq_push, evq_take,
                             evq_free, recv_heap, block_get_n, block_put, block_data,
                             block_trim, block_wait_ms, oserror, io_target, EV_MORE, POLL_KEEP,
                             OP_SEND, READ_MIN,
                             OP_RECVFROM, OP_SENDTO, Datagram, DG_TRUNC, faults_table)
from iocpx._linux cimport (ECANCELED, EWOULDBLOCK, fcntl, F_GETFL, F_SETFL, O_NONBLOCK,
                           c_socket, accept4, connect, recv, send, sendto, recvmmsg, getsockopt,
                           iovec, readv, msghdr, mmsghdr, SOCK_STREAM, SOCK_NONBLOCK, SOCK_CLOEXEC,
                           SOL_SOCKET, SO_ERROR, MSG_NOSIGNAL, MSG_DONTWAIT, MSG_TRUNC,
                           c_sendfile, epoll_event, epoll_create1, epoll_ctl, epoll_wait,
                           EPOLL_CLOEXEC, EPOLL_CTL_ADD, EPOLL_CTL_MOD, EPOLL_CTL_DEL, EPOLLIN,
                           EPOLLOUT, EPOLLERR, EPOLLHUP, eventfd, EFD_CLOEXEC, EFD_NONBLOCK)

# failure points (IOCPX_FAULTS=1 builds): this module's calls use _backend's table
iocpx_faults_attach(faults_table())

cdef enum:
    MAX_UNREAD = 8          # data events of one receive waiting for dispatch
    READ_BUDGET = 1 << 20   # stream bytes one wait reads, about (epoll/wait.pxi)
    WAKE_TAG = 0xFFFFFFFF   # epoll data of the wake-up eventfd

# Per-descriptor state: the operations armed on it. Accepts queue up through
# IoCtx.aux.next_accept, since a listener has many.
cdef struct FdState:
    IoCtx* recv             # armed receive (kernel-side: ours until its final event)
    IoCtx* send             # armed send or sendfile
    IoCtx* conn             # armed connect
    IoCtx* poll             # armed readiness poll (OP_POLL, one-shot: the asyncio loop's
                            # add_reader/add_writer), epoll/poll.pxi
    IoCtx* acc_head         # queued accepts, linked through aux.next_accept
    IoCtx* acc_tail
    uint32_t mask           # interest registered with epoll (0: not registered)
    int32_t pending_err     # the connection was made, then reset before the connect
                            # completed here: the next receive reports this errno

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

    # ---- helpers the concern files share ---------------------------------

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
            t = NULL if IOCPX_FAULT(IOCPX_F_ALLOC_FDTABLE) else <FdState*>realloc(self.fds, n * sizeof(FdState))
            if t == NULL:
                return NULL
            memset(t + self.nfds, 0, (n - self.nfds) * sizeof(FdState))
            self.fds = t
            self.nfds = n
        return &self.fds[fd]

    cdef int _interest(self, int fd, FdState* st) noexcept nogil:
        """Register with epoll exactly what the armed ops need. 0, or -errno
        when epoll refuses the descriptor (only OP_POLL, on a descriptor the
        engine did not make, looks at that: a regular file, a closed one)."""
        cdef uint32_t want = 0
        cdef epoll_event ev
        cdef int r = 0
        if st.acc_head != NULL or (st.recv != NULL and dg_wants(st.recv)):
            want |= EPOLLIN
        if st.send != NULL or st.conn != NULL:
            want |= EPOLLOUT
        if st.poll != NULL:
            want |= <uint32_t>st.poll.len & (EPOLLIN | EPOLLOUT)
        if want == st.mask:
            return 0
        ev.events = want
        ev.data.u64 = <uint64_t>fd
        if want == 0:
            epoll_ctl(self.ep, EPOLL_CTL_DEL, fd, &ev)
        elif IOCPX_FAULT(IOCPX_F_SYS_EPOLL_CTL):
            iocpx_set_errno(ENOMEM)
            r = -1
        elif st.mask == 0:
            r = epoll_ctl(self.ep, EPOLL_CTL_ADD, fd, &ev)
            if r < 0 and errno == EEXIST:
                r = epoll_ctl(self.ep, EPOLL_CTL_MOD, fd, &ev)
        else:
            r = epoll_ctl(self.ep, EPOLL_CTL_MOD, fd, &ev)
            if r < 0 and errno == ENOENT:
                r = epoll_ctl(self.ep, EPOLL_CTL_ADD, fd, &ev)
        if r < 0:
            r = -errno
            if r == -ENOENT or r == -EBADF:
                st.mask = 0         # (not registered any more)
            return r
        st.mask = want
        return 0

    cdef int _ready(self, IoCtx* io, int res, uint32_t flags) noexcept nogil:
        """Queue a completion made outside wait(); wakes a sleeping leader.
        Never drops it: a completion lost to a failed allocation would leave its
        context alive and its owner waiting forever (the cancels of a close
        among them), so out of memory it waits for memory, as the engine's
        run queue does (mu stays held: the caller is mid-update of its state)."""
        cdef Event ev
        ev_set(&ev, io, res, flags, NULL)
        while evq_push(&self.ready, &ev) < 0:
            iocpx_sleep_ms(1)
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

    cdef FdState* _locked_state(self, int fd) except NULL:
        """fd's state with mu held (the caller unlocks); MemoryError unlocked."""
        iocpx_mutex_lock(&self.mu)
        cdef FdState* st = self._state(fd)
        if st == NULL:
            iocpx_mutex_unlock(&self.mu)
            raise MemoryError()
        return st

    cdef int _arm_out(self, IoCtx* io, bint is_connect) except -1:
        cdef FdState* st = self._state(io.fd)
        cdef int r
        if st == NULL:
            raise MemoryError()
        if is_connect:
            st.conn = io
        else:
            st.send = io
        r = self._interest(io.fd, st)
        if r < 0:                   # epoll refused (ENOMEM): the op ends with that error
            if is_connect:
                st.conn = NULL
            else:
                st.send = NULL
            self._ready(io, r, 0)
        return 0

    # ---- sockets and posted completions (GIL held, any thread) ------------

    cdef int socket_open(self, int family) except -1:
        cdef int fd
        if IOCPX_FAULT(IOCPX_F_SYS_SOCKET):
            raise oserror(ENOBUFS, "socket")
        fd = c_socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0)
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

    cdef int submit_post(self, IoCtx* io) except -1:
        iocpx_mutex_lock(&self.mu)
        r = self._ready(io, 0, 0)
        iocpx_mutex_unlock(&self.mu)
        if r < 0:
            raise MemoryError()
        return 0

    cdef int flush(self) except -1:
        return 0        # every submit is already registered

    # ---- the Backend interface, one concern per file (epoll/*.pxi) ---------

    cdef int submit_accept(self, IoCtx* io) except -1:
        return accept_submit(self, io)                  # accept.pxi

    cdef int submit_recv(self, IoCtx* io) except -1:
        return recv_submit(self, io)                    # receive.pxi

    cdef void recv_consumed(self, Event* ev) noexcept:
        recv_consumed_epoll(self, ev)

    cdef int submit_send(self, IoCtx* io) except -1:
        return send_submit(self, io)                    # send.pxi

    cdef int submit_connect(self, IoCtx* io) except -1:
        return connect_submit(self, io)                 # connect.pxi

    cdef int submit_sendfile(self, IoCtx* io, int file_fd, int64_t offset, uint32_t nbytes) except -1:
        return sendfile_submit(self, io, file_fd, offset, nbytes)     # sendfile.pxi

    cdef int submit_cancel_fd(self, IoCtx* io, int fd) except -1:
        return cancel_fd(self, io, fd)                  # cancel.pxi

    cdef int submit_cancel_op(self, IoCtx* io, IoCtx* target) except -1:
        return cancel_op(self, io, target)

    cdef int submit_poll(self, IoCtx* io) except -1:
        return poll_submit(self, io)                    # poll.pxi

    cdef int wait(self, Event* out, int maxev, long timeout_ms) noexcept nogil:
        return wait_events(self, out, maxev, timeout_ms)    # wait.pxi

    cdef int submit_recvfrom(self, IoCtx* io) except -1:
        return recv_submit(self, io)        # datagram.pxi: the recv slot; wait() sees the op

    cdef int submit_sendto(self, IoCtx* io) except -1:
        return dgram_submit_send(self, io)

    cdef Py_ssize_t try_sendto(self, int fd, const char* buf, Py_ssize_t n,
                               sockaddr* to, int tolen) noexcept:
        return dgram_try_send(fd, buf, n, to, tolen)

    cdef int dgram_view(self, Event* ev, Datagram* out) except -1:
        return dgram_view_epoll(ev, out)

    cdef void dgram_done(self, Event* ev) noexcept:
        dgram_done_epoll(self, ev)


include "epoll/accept.pxi"
include "epoll/receive.pxi"
include "epoll/send.pxi"
include "epoll/connect.pxi"
include "epoll/sendfile.pxi"
include "epoll/cancel.pxi"
include "epoll/poll.pxi"
include "epoll/wait.pxi"
include "epoll/datagram.pxi"


def probe():
    """None: epoll works on every Linux kernel iocpx supports."""
    return None


def features():
    """What this backend uses of the kernel (for `python -m iocpx info`)."""
    return {"readiness": "epoll_wait, level-triggered", "sendfile": "sendfile(2)",
            "receive": f"read into a heap buffer (up to {READ_MIN} bytes per read)",
            "send": "send() at once, EPOLLOUT when it would block"}
