# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The io_uring backend: one ring per Engine (the completion port), spoken to
through the kernel ABI only (io_uring_setup/enter/register + mmap). Needs
Linux 6.0+ (multishot receive into provided-buffer rings); everything else it
uses is older.

Threading: SQE production is serialized by `sq_mu` (any thread may queue and
submit); the kernel consumes the ring concurrently (acquire/release on the
indices). Only the engine's current leader reaps the completion queue.

The ring is set up with COOP_TASKRUN | TASKRUN_FLAG: completion
work the kernel queues for a thread never interrupts it while it runs
Python; it runs when that thread next enters the kernel. The engine has one
worker enter the ring for everything while callbacks are quick (see
engine/workers.pxi), so that work runs inside its waits, as with a
single-issuer ring, and yet a helper may still enter the ring when that
worker is stuck in a callback. (SINGLE_ISSUER | DEFER_TASKRUN would forbid the
helper, and without COOP_TASKRUN every arrival interrupts the worker.)

Receives are multishot into provided-buffer rings, so an idle connection pins
no buffer; the data is copied into a bytes object at dispatch and the buffer
goes back to the ring as soon as nothing in it waits for dispatch. Where the
kernel consumes provided buffers incrementally (IOU_PBUF_RING_INC, Linux
6.12+) every connection shares one pool of large buffers (INC_BUF bytes): each
receive takes only what it needs, so a 64 KiB message is one completion and
thousands of small ones fill one buffer. Older kernels get one pool of
buffer_size buffers per size. A pool that runs dry (the kernel ends a receive
with ENOBUFS) grows, up to POOL_MAX bytes.

sendfile is OP_SENDFILE to the engine, spliced here through a pipe: file ->
pipe, then pipe -> socket, each step submitted from the completion of the one
before (in the leader, without the GIL). The engine sees one completion per
pipe-load with the bytes that reached the socket.

This file holds the ring (set-up, the submission side every concern uses)
and the backend's interface; each concern is in io_uring/, under the same
file name as in the other backends' folders; the layouts are in
_io_uring.pxd, the kernel ABI in _io_uring_abi.pxd:

  io_uring/accept.pxi    IORING_OP_ACCEPT
  io_uring/receive.pxi   multishot IORING_OP_RECV; the data copied out at dispatch
  io_uring/buffers.pxi   the provided-buffer receive pools
  io_uring/send.pxi      IORING_OP_SEND
  io_uring/connect.pxi   IORING_OP_CONNECT
  io_uring/sendfile.pxi  sendfile as splices through a pipe
  io_uring/cancel.pxi    IORING_OP_ASYNC_CANCEL, by socket or by op
  io_uring/poll.pxi      IORING_OP_POLL_ADD (the asyncio loop's readiness)
  io_uring/wait.pxi      the leader's io_uring_enter and the CQ ring harvest
  io_uring/datagram.pxi  UDP: multishot IORING_OP_RECVMSG, IORING_OP_SENDMSG
"""
cimport cython
from cpython.bytes cimport PyBytes_FromStringAndSize
from libc.errno cimport errno, EINTR, ETIME, EBUSY, EAGAIN, EINVAL, ENOMEM, ENOBUFS, EPIPE
from libc.string cimport memset, memcpy
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int32_t, int64_t
from libc.stdlib cimport malloc, calloc, free
from posix.unistd cimport close as c_close

from iocpx._sys cimport (iocpx_mutex_t, iocpx_mutex_init, iocpx_mutex_destroy, iocpx_mutex_lock,
                         iocpx_mutex_unlock, iocpx_sleep_ms, iocpx_pipe_open, sockaddr,
                         IOCPX_DG_CTRL, iocpx_cmsg_drops, iocpx_now_ns,
                         IOCPX_LOAD_ACQ_U32, IOCPX_STORE_REL_U32, IOCPX_STORE_REL_U16,
                         IOCPX_ADD_I32, IOCPX_LOAD_I32, IOCPX_TSAN_RELEASE, IOCPX_TSAN_ACQUIRE,
                         IOCPX_FAULT, iocpx_faults_attach, IOCPX_F_SYS_SOCKET,
                         IOCPX_F_SYS_URING_SQ_FULL, IOCPX_F_SYS_URING_SUBMIT, IOCPX_F_SYS_URING_WAIT,
                         IOCPX_F_ALLOC_POOL, IOCPX_F_ALLOC_POOL_CHUNK, IOCPX_F_ALLOC_DG_MSG,
                         IOCPX_F_ALLOC_SENDFILE, iocpx_set_errno)
from iocpx._backend cimport (Backend, IoCtx, Event, ev_set, oserror, io_target, EV_BUFFER,
                             EV_BUFFER_SHIFT, MAX_GROUPS, OP_SENDFILE, Datagram, DG_TRUNC, DG_NOBUF, faults_table)
from iocpx._linux cimport (ECANCELED, syscall, __NR_io_uring_setup, __NR_io_uring_enter,
                           __NR_io_uring_register, mmap, munmap, MAP_FAILED, PROT_READ,
                           PROT_WRITE, MAP_SHARED, MAP_POPULATE, MAP_PRIVATE, MAP_ANONYMOUS,
                           c_socket, SOCK_STREAM, SOCK_CLOEXEC, MSG_NOSIGNAL, MSG_WAITALL,
                           MSG_TRUNC, SPLICE_F_MOVE, iovec, msghdr)
from iocpx._io_uring_abi cimport *

# failure points (IOCPX_FAULTS=1 builds): this module's calls use _backend's table
iocpx_faults_attach(faults_table())


cdef inline int sys_enter(int fd, unsigned to_submit, unsigned min_complete,
                          unsigned flags, void* arg, size_t argsz) noexcept nogil:
    cdef long r = syscall(__NR_io_uring_enter, fd, to_submit, min_complete, flags, arg, argsz)
    if r < 0:
        return -errno
    return <int>r


@cython.final
cdef class IoUringBackend(Backend):
    """The io_uring backend (layout in _io_uring.pxd)."""

    def __cinit__(self, unsigned entries=4096):
        self.name = "io_uring"
        # Small sends are queued as SQEs and go out in one io_uring_enter per
        # batch (measured cheaper than a send() each from 100 connections up);
        # large ones are tried at once, so that their bytes are freed right
        # away instead of a whole batch of them living until the next enter
        # (a 6 MiB swing per batch at 100 x 64 KiB made malloc trim and
        # re-fault the heap every time: 33 us per round trip, 26.5 without).
        self.sync_send = SYNC_SEND_MIN
        self.dgram_recvs = 1            # one multishot RECVMSG per endpoint
        self.ring_fd = -1
        self.ngroups = 0
        self.inc_group = -1
        self.inc_ok = -1
        iocpx_mutex_init(&self.sq_mu)
        cdef io_uring_params p
        memset(&p, 0, sizeof(p))
        p.flags = (IORING_SETUP_CQSIZE | IORING_SETUP_CLAMP | IORING_SETUP_SUBMIT_ALL |
                   IORING_SETUP_COOP_TASKRUN | IORING_SETUP_TASKRUN_FLAG)
        p.cq_entries = entries * 4
        cdef long fd = syscall(__NR_io_uring_setup, entries, &p)
        if fd < 0:
            raise oserror(errno, "io_uring_setup")
        self.ring_fd = <int>fd
        self.setup_flags = p.flags
        if not (p.features & IORING_FEAT_NODROP) or not (p.features & IORING_FEAT_EXT_ARG):
            self.release()
            raise OSError(EINVAL, "io_uring: kernel too old (needs NODROP and EXT_ARG)")
        self.sq_sz = p.sq_off.array + p.sq_entries * sizeof(uint32_t)
        self.cq_sz = p.cq_off.cqes + p.cq_entries * sizeof(io_uring_cqe)
        if p.features & IORING_FEAT_SINGLE_MMAP:
            if self.cq_sz > self.sq_sz:
                self.sq_sz = self.cq_sz
            self.cq_sz = self.sq_sz
        self.sq_ptr = self._map(self.sq_sz, IORING_OFF_SQ_RING)
        if p.features & IORING_FEAT_SINGLE_MMAP:
            self.cq_ptr = self.sq_ptr
        else:
            self.cq_ptr = self._map(self.cq_sz, IORING_OFF_CQ_RING)
        self.sqes_sz = p.sq_entries * sizeof(io_uring_sqe)
        self.sqes = <io_uring_sqe*>self._map(self.sqes_sz, IORING_OFF_SQES)
        cdef char* sq = <char*>self.sq_ptr
        cdef char* cq = <char*>self.cq_ptr
        self.sq_khead = <uint32_t*>(sq + p.sq_off.head)
        self.sq_ktail = <uint32_t*>(sq + p.sq_off.tail)
        self.sq_kflags = <uint32_t*>(sq + p.sq_off.flags)
        self.sq_mask = (<uint32_t*>(sq + p.sq_off.ring_mask))[0]
        self.sq_entries = p.sq_entries
        cdef uint32_t* arr = <uint32_t*>(sq + p.sq_off.array)
        cdef uint32_t j
        for j in range(p.sq_entries):
            arr[j] = j          # identity map: SQE slot j is array slot j
        self.sq_tail = self.sq_ktail[0]
        self.cq_khead = <uint32_t*>(cq + p.cq_off.head)
        self.cq_ktail = <uint32_t*>(cq + p.cq_off.tail)
        self.cq_mask = (<uint32_t*>(cq + p.cq_off.ring_mask))[0]
        self.cqes = <io_uring_cqe*>(cq + p.cq_off.cqes)

    cdef void* _map(self, size_t size, long long offset) except NULL:
        """mmap one region of the ring; on failure release everything and raise."""
        cdef void* p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE,
                            self.ring_fd, offset)
        if p == MAP_FAILED:
            err = errno
            self.release()
            raise oserror(err, "io_uring mmap")
        return p

    def __dealloc__(self):
        self.release()
        iocpx_mutex_destroy(&self.sq_mu)

    cdef void release(self) noexcept:
        """Unmap everything and close the ring. Only once no op is pending."""
        cdef int i
        for i in range(self.ngroups):
            pool_free(self, &self.groups[i], i)
        self.ngroups = 0
        self.inc_group = -1
        while self.npipes > 0:
            self.npipes -= 1
            c_close(self.pipes[self.npipes][0])
            c_close(self.pipes[self.npipes][1])
        if self.sqes != NULL:
            munmap(self.sqes, self.sqes_sz)
            self.sqes = NULL
        if self.cq_ptr != NULL and self.cq_ptr != self.sq_ptr:
            munmap(self.cq_ptr, self.cq_sz)
        self.cq_ptr = NULL
        if self.sq_ptr != NULL:
            munmap(self.sq_ptr, self.sq_sz)
            self.sq_ptr = NULL
        if self.ring_fd >= 0:
            c_close(self.ring_fd)
            self.ring_fd = -1

    # ---- sockets ------------------------------------------------------------

    cdef int socket_open(self, int family) except -1:
        cdef int fd
        if IOCPX_FAULT(IOCPX_F_SYS_SOCKET):
            raise oserror(ENOBUFS, "socket")
        fd = c_socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0)
        if fd < 0:
            raise oserror(errno, "socket")
        return fd

    # ---- the submission ring (GIL held, any thread; _slot_nogil: the leader) --

    cdef io_uring_sqe* _sqe(self) except NULL:
        """A zeroed SQE slot, returned with sq_mu held; _push commits it and
        unlocks. When the ring is full, what is queued is submitted first."""
        cdef int tries = 0
        cdef io_uring_sqe* sqe
        if self.sqes == NULL:
            raise OSError(EBUSY, "io_uring backend is closed")
        while True:
            iocpx_mutex_lock(&self.sq_mu)
            sqe = self._slot()
            if sqe != NULL:
                return sqe
            iocpx_mutex_unlock(&self.sq_mu)
            self.flush()
            tries += 1
            if tries > 2000:
                raise OSError(EBUSY, "io_uring submission queue stays full")
            if tries > 10:
                with nogil:
                    iocpx_sleep_ms(1)

    cdef io_uring_sqe* _slot(self) noexcept nogil:
        """A zeroed free slot or NULL; sq_mu held."""
        cdef io_uring_sqe* sqe
        if IOCPX_FAULT(IOCPX_F_SYS_URING_SQ_FULL):
            return NULL
        if self.sq_tail - IOCPX_LOAD_ACQ_U32(self.sq_khead) >= self.sq_entries:
            return NULL
        sqe = &self.sqes[self.sq_tail & self.sq_mask]
        memset(sqe, 0, sizeof(io_uring_sqe))
        return sqe

    cdef io_uring_sqe* _slot_nogil(self) noexcept nogil:
        """_sqe for the leader without the GIL: submits what is queued while
        the ring is full; NULL if it stays full. Returns with sq_mu held."""
        cdef io_uring_sqe* sqe
        cdef int tries
        for tries in range(SQE_TRIES):
            iocpx_mutex_lock(&self.sq_mu)
            sqe = self._slot()
            if sqe != NULL:
                return sqe
            iocpx_mutex_unlock(&self.sq_mu)
            self._submit_pending()
        return NULL

    cdef void _push(self, io_uring_sqe* sqe, IoCtx* io) noexcept nogil:
        sqe.user_data = <uint64_t><size_t>io
        IOCPX_TSAN_RELEASE(io)      # the harvest's IOCPX_TSAN_ACQUIRE(io): the edge goes through the kernel
        self.sq_tail += 1
        IOCPX_STORE_REL_U32(self.sq_ktail, self.sq_tail)
        iocpx_mutex_unlock(&self.sq_mu)

    cdef int _submit_pending(self) noexcept nogil:
        """io_uring_enter for what is queued; 0 or -errno."""
        cdef uint32_t pending
        cdef int r
        while True:
            pending = IOCPX_LOAD_ACQ_U32(self.sq_ktail) - IOCPX_LOAD_ACQ_U32(self.sq_khead)
            if pending == 0:
                return 0
            r = (-EAGAIN if IOCPX_FAULT(IOCPX_F_SYS_URING_SUBMIT)
                 else sys_enter(self.ring_fd, pending, 0, 0, NULL, 0))
            if r >= 0 or r == -EINTR:
                continue
            if r == -EAGAIN or r == -EBUSY:
                return 0        # completion backlog: the next wait submits them
            return r

    cdef int flush(self) except -1:
        """Submit what is queued (GIL held, any thread). A sleeping leader does
        not see SQEs left in the ring, so when the kernel refuses them for now
        (EAGAIN, EBUSY: a completion backlog the leader is reaping) they are
        tried again for up to a second rather than left there: an exit packet
        or a wake-up left in the ring is a worker that never wakes."""
        cdef int r, tries = 0
        if self.ring_fd < 0:
            return 0
        while True:
            r = self._submit_pending()
            if r < 0:
                raise oserror(-r, "io_uring_enter")
            if IOCPX_LOAD_ACQ_U32(self.sq_ktail) == IOCPX_LOAD_ACQ_U32(self.sq_khead) or tries >= 1000:
                return 0
            tries += 1
            with nogil:
                iocpx_sleep_ms(1)

    cdef int submit_post(self, IoCtx* io) except -1:
        cdef io_uring_sqe* sqe = self._sqe()
        sqe.opcode = IORING_OP_NOP
        self._push(sqe, io)
        return 0

    # ---- the Backend interface, one concern per file (io_uring/*.pxi) --------

    cdef int submit_accept(self, IoCtx* io) except -1:
        return accept_submit(self, io)                  # accept.pxi

    cdef int submit_recv(self, IoCtx* io) except -1:
        return recv_submit(self, io)                    # receive.pxi

    cdef object recv_bytes(self, Event* ev):
        """The bytes a receive completion carried (None if none); its piece
        of buffer is released. Must be called for every recv event (or
        recv_copy). A receive the kernel ended for want of buffers grows the pool."""
        return recv_bytes_io_uring(self, ev)

    cdef Py_ssize_t recv_copy(self, Event* ev, char* dst) except -1:
        return recv_copy_io_uring(self, ev, dst)

    cdef void recv_release(self, Event* ev) noexcept:
        recv_release_io_uring(self, ev)

    cdef int submit_poll(self, IoCtx* io) except -1:
        return poll_submit(self, io)                    # poll.pxi

    cdef int submit_send(self, IoCtx* io) except -1:
        return send_submit(self, io)                    # send.pxi

    cdef int submit_connect(self, IoCtx* io) except -1:
        return connect_submit(self, io)                 # connect.pxi

    cdef int submit_sendfile(self, IoCtx* io, int file_fd, int64_t offset, uint32_t nbytes) except -1:
        return sendfile_submit(self, io, file_fd, offset, nbytes)     # sendfile.pxi: splice

    cdef int submit_cancel_fd(self, IoCtx* io, int fd) except -1:
        return cancel_fd(self, io, fd)                  # cancel.pxi

    cdef int submit_cancel_op(self, IoCtx* io, IoCtx* target) except -1:
        return cancel_op(self, io, target)

    cdef int wait(self, Event* out, int maxev, long timeout_ms) noexcept nogil:
        """Submit what is queued, wait for at least one completion (or the
        timeout; < 0 means none) and copy up to maxev of them into out."""
        return wait_events(self, out, maxev, timeout_ms)    # wait.pxi

    cdef int buffer_group(self, uint32_t size) except -1:
        """The receive pool for receives of up to size bytes: the shared
        incremental pool where the kernel has it, else one pool per size."""
        return pool_group(self, size)                   # buffers.pxi

    def pools(self):
        """[(buffer size, buffers provided, incremental)] of each receive pool."""
        return [(self.groups[i].size, self.groups[i].nbufs, bool(self.groups[i].inc))
                for i in range(self.ngroups)]

    cdef int dgram_group(self, uint32_t size) except -1:
        return dgram_group_io_uring(self, size)         # datagram.pxi

    cdef int submit_recvfrom(self, IoCtx* io) except -1:
        return dgram_submit_recv(self, io)

    cdef int submit_sendto(self, IoCtx* io) except -1:
        return dgram_submit_send(self, io)

    cdef int dgram_view(self, Event* ev, Datagram* out) except -1:
        return dgram_view_io_uring(self, ev, out)

    cdef void dgram_done(self, Event* ev) noexcept:
        dgram_done_io_uring(self, ev)


include "io_uring/accept.pxi"
include "io_uring/receive.pxi"
include "io_uring/send.pxi"
include "io_uring/connect.pxi"
include "io_uring/sendfile.pxi"
include "io_uring/cancel.pxi"
include "io_uring/poll.pxi"
include "io_uring/wait.pxi"
include "io_uring/buffers.pxi"
include "io_uring/datagram.pxi"


def probe():
    """None if this kernel runs the io_uring backend, else the reason why not."""
    import os
    release = os.uname().release.split(".")
    try:
        major, minor = int(release[0]), int(release[1].split("-")[0])
    except (ValueError, IndexError):
        major, minor = 99, 0
    if (major, minor) < (6, 0):
        return f"io_uring backend needs Linux 6.0+ (multishot receive), kernel is {os.uname().release}"
    try:
        b = IoUringBackend(8)
        b.buffer_group(4096)
    except OSError as e:
        return f"io_uring unavailable: {e}"
    return None


def features():
    """What this kernel's io_uring offers that the backend uses or could."""
    import os
    out = {"kernel": os.uname().release}
    try:
        b = IoUringBackend(8)
    except OSError as e:
        out["available"] = f"no ({e})"
        return out
    flags = b.setup_flags
    out["coop_taskrun"] = bool(flags & IORING_SETUP_COOP_TASKRUN)
    try:
        b.buffer_group(4096)
        out["provided_buffer_rings"] = True
    except OSError:
        out["provided_buffer_rings"] = False
    out["incremental_buffers"] = b.inc_ok == 1
    out["multishot_receive"] = out["provided_buffer_rings"] and probe() is None
    b.release()
    return out
