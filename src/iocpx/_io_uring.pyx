# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The io_uring backend: one ring per Engine (the completion port), spoken to
through the kernel ABI only (io_uring_setup/enter/register + mmap).

Threading: SQE production is serialized by `sq_mu` (any thread may queue);
the kernel consumes the ring concurrently (acquire/release on the indices).
Only the engine's current leader reaps the completion queue.

Two modes:
  * shared (workers > 1): any thread may call io_uring_enter. No SINGLE_ISSUER
    or DEFER_TASKRUN, because completions' task work must keep running while
    a callback sleeps in another worker (the model's promise).
  * single issuer (workers == 1): the ring is created disabled and enabled by
    the one worker thread (attach), with SINGLE_ISSUER | DEFER_TASKRUN: no
    task-work interrupts, completions processed in batches when that thread
    waits. Other threads only write SQEs and wake the owner through an
    eventfd that a READ on the ring watches; the owner submits them.

Receives are multishot into provided-buffer rings, so an idle connection pins
no buffer; the data is copied into a bytes object at dispatch and the buffer
goes straight back to the ring.
"""
from cpython.bytes cimport PyBytes_FromStringAndSize
from libc.errno cimport errno, EINTR, ETIME, EBUSY, EAGAIN, EINVAL, ENOMEM
from libc.string cimport memset, memcpy
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int64_t
from libc.stdlib cimport malloc, calloc, realloc, free
from posix.unistd cimport close as c_close, write as c_write

from iocpx._sys cimport iocpx_mutex_t, iocpx_mutex_init, iocpx_mutex_destroy, iocpx_mutex_lock, \
    iocpx_mutex_unlock, iocpx_sleep_ms

cdef extern from "<pthread.h>" nogil:
    ctypedef unsigned long pthread_t
    pthread_t pthread_self()
    int pthread_equal(pthread_t a, pthread_t b)
cdef extern from "<sys/eventfd.h>" nogil:
    int eventfd(unsigned int initval, int flags)
    int EFD_CLOEXEC, EFD_NONBLOCK

from iocpx._sys cimport IOCPX_LOAD_ACQ_U32, IOCPX_STORE_REL_U32, IOCPX_STORE_REL_U16
from iocpx._backend cimport (Backend, IoCtx, Event, oserror, EV_BUFFER, EV_BUFFER_SHIFT,
                             MAX_GROUPS)
from iocpx._uring cimport *

cdef extern from "<sys/socket.h>" nogil:
    int c_socket "socket"(int domain, int type, int protocol)
    int MSG_NOSIGNAL, MSG_WAITALL, SOCK_CLOEXEC, SOCK_STREAM
cdef extern from "<fcntl.h>" nogil:
    unsigned SPLICE_F_MOVE

cdef enum:
    POOL_BYTES = 4 * 1024 * 1024    # receive pool per buffer size (touched lazily)

cdef struct BufGroup:
    char* mem               # owned: mmap'd nbufs * size bytes, the buffers themselves
    size_t mem_sz
    io_uring_buf* ring      # owned: mmap'd ring the kernel takes buffers from
    size_t ring_sz
    uint32_t size
    uint32_t nbufs
    uint16_t mask
    uint16_t tail           # next free slot (published through ring[0].resv)


cdef inline int sys_enter(int fd, unsigned to_submit, unsigned min_complete,
                          unsigned flags, void* arg, size_t argsz) noexcept nogil:
    cdef long r = syscall(__NR_io_uring_enter, fd, to_submit, min_complete, flags, arg, argsz)
    if r < 0:
        return -errno
    return <int>r


cdef class UringBackend(Backend):
    cdef int ring_fd
    cdef void* sq_ptr           # owned mmap of the SQ ring (and the CQ ring with SINGLE_MMAP)
    cdef size_t sq_sz
    cdef void* cq_ptr           # owned mmap of the CQ ring unless it is sq_ptr
    cdef size_t cq_sz
    cdef io_uring_sqe* sqes     # owned mmap of the SQE array
    cdef size_t sqes_sz
    cdef uint32_t* sq_khead     # kernel-shared ring indices (inside sq_ptr / cq_ptr)
    cdef uint32_t* sq_ktail
    cdef uint32_t sq_mask
    cdef uint32_t sq_entries
    cdef uint32_t sq_tail       # our producer index; GIL-protected
    cdef uint32_t* cq_khead
    cdef uint32_t* cq_ktail
    cdef uint32_t cq_mask
    cdef io_uring_cqe* cqes
    cdef BufGroup groups[MAX_GROUPS]     # ngroups (base class) of them in use
    cdef iocpx_mutex_t sq_mu        # serializes SQE production (sq_tail, slot contents)
    cdef readonly bint single       # single-issuer mode (see the module docstring)
    cdef bint attached              # the owner thread enabled the ring
    cdef pthread_t owner            # the only thread that enters the ring (single mode)
    cdef int wake_fd                # eventfd other threads write to wake the owner (ours)
    cdef uint64_t wake_val          # the kernel reads the eventfd count into this
    cdef IoCtx* wake_io             # owned: user_data of that READ (not an engine op)
    cdef bint wake_rearm            # the READ must be armed again (no SQE slot was free)
    cdef io_uring_buf_reg* reg_req  # single mode: a registration the owner must make
    cdef int reg_res                # its result (0 or -errno), valid once reg_req is NULL

    def __cinit__(self, unsigned entries=4096, bint single=False):
        self.name = "io_uring"
        # sync_send stays False: sends queued as SQEs go out in one io_uring_enter
        # per batch, measured cheaper than a send() each from 100 connections up
        self.ring_fd = -1
        self.wake_fd = -1
        self.ngroups = 0
        self.single = single
        iocpx_mutex_init(&self.sq_mu)
        cdef io_uring_params p
        memset(&p, 0, sizeof(p))
        p.flags = IORING_SETUP_CQSIZE | IORING_SETUP_SUBMIT_ALL | IORING_SETUP_CLAMP
        if single:
            p.flags |= IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN | IORING_SETUP_R_DISABLED
        p.cq_entries = entries * 4
        cdef long fd = syscall(__NR_io_uring_setup, entries, &p)
        if fd < 0 and single:           # kernel before 6.1: the shared mode works everywhere
            self.single = single = False
            p.flags &= ~(IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN | IORING_SETUP_R_DISABLED)
            fd = syscall(__NR_io_uring_setup, entries, &p)
        if fd < 0:
            raise oserror(errno, "io_uring_setup")
        self.ring_fd = <int>fd
        if single:
            self.wake_fd = eventfd(0, EFD_CLOEXEC)     # blocking: io_uring polls it
            self.wake_io = <IoCtx*>calloc(1, sizeof(IoCtx))
            if self.wake_fd < 0 or self.wake_io == NULL:
                err = errno
                self.release()
                raise oserror(err, "eventfd")
        if not (p.features & IORING_FEAT_NODROP) or not (p.features & IORING_FEAT_EXT_ARG):
            self.release()
            raise OSError(EINVAL, "io_uring: kernel too old (needs NODROP and EXT_ARG, Linux 5.11+)")
        self.sq_sz = p.sq_off.array + p.sq_entries * sizeof(uint32_t)
        self.cq_sz = p.cq_off.cqes + p.cq_entries * sizeof(io_uring_cqe)
        if p.features & IORING_FEAT_SINGLE_MMAP:
            if self.cq_sz > self.sq_sz:
                self.sq_sz = self.cq_sz
            self.cq_sz = self.sq_sz
        self.sq_ptr = mmap(NULL, self.sq_sz, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE,
                           self.ring_fd, IORING_OFF_SQ_RING)
        if self.sq_ptr == MAP_FAILED:
            self.sq_ptr = NULL
            err = errno
            self.release()
            raise oserror(err, "io_uring mmap")
        if p.features & IORING_FEAT_SINGLE_MMAP:
            self.cq_ptr = self.sq_ptr
        else:
            self.cq_ptr = mmap(NULL, self.cq_sz, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE,
                               self.ring_fd, IORING_OFF_CQ_RING)
            if self.cq_ptr == MAP_FAILED:
                self.cq_ptr = NULL
                err = errno
                self.release()
                raise oserror(err, "io_uring mmap")
        self.sqes_sz = p.sq_entries * sizeof(io_uring_sqe)
        self.sqes = <io_uring_sqe*>mmap(NULL, self.sqes_sz, PROT_READ | PROT_WRITE,
                                        MAP_SHARED | MAP_POPULATE, self.ring_fd, IORING_OFF_SQES)
        if <void*>self.sqes == MAP_FAILED:
            self.sqes = NULL
            err = errno
            self.release()
            raise oserror(err, "io_uring mmap")
        cdef char* sq = <char*>self.sq_ptr
        cdef char* cq = <char*>self.cq_ptr
        self.sq_khead = <uint32_t*>(sq + p.sq_off.head)
        self.sq_ktail = <uint32_t*>(sq + p.sq_off.tail)
        self.sq_mask = (<uint32_t*>(sq + p.sq_off.ring_mask))[0]
        self.sq_entries = p.sq_entries
        cdef uint32_t* arr = <uint32_t*>(sq + p.sq_off.array)
        cdef uint32_t i
        for i in range(p.sq_entries):
            arr[i] = i          # identity map: SQE slot i is array slot i
        self.sq_tail = self.sq_ktail[0]
        self.cq_khead = <uint32_t*>(cq + p.cq_off.head)
        self.cq_ktail = <uint32_t*>(cq + p.cq_off.tail)
        self.cq_mask = (<uint32_t*>(cq + p.cq_off.ring_mask))[0]
        self.cqes = <io_uring_cqe*>(cq + p.cq_off.cqes)

    def __dealloc__(self):
        self.release()
        iocpx_mutex_destroy(&self.sq_mu)

    cdef void release(self) noexcept:
        """Unmap everything and close the ring. Only once no op is pending."""
        cdef int i
        cdef io_uring_buf_reg reg
        for i in range(self.ngroups):
            if self.ring_fd >= 0:
                memset(&reg, 0, sizeof(reg))
                reg.bgid = <uint16_t>i
                syscall(__NR_io_uring_register, self.ring_fd, IORING_UNREGISTER_PBUF_RING, &reg, 1)
            if self.groups[i].ring != NULL:
                munmap(self.groups[i].ring, self.groups[i].ring_sz)
            if self.groups[i].mem != NULL:
                munmap(self.groups[i].mem, self.groups[i].mem_sz)
        self.ngroups = 0
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
        if self.wake_fd >= 0:
            c_close(self.wake_fd)
            self.wake_fd = -1
        if self.wake_io != NULL:
            free(self.wake_io)
            self.wake_io = NULL

    cdef int socket_open(self, int family) except -1:
        cdef int fd = c_socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0)
        if fd < 0:
            raise oserror(errno, "socket")
        return fd

    # ---- submission side (GIL held) ---------------------------------------

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

    cdef inline io_uring_sqe* _slot(self) noexcept nogil:
        """A zeroed free slot or NULL; sq_mu held."""
        cdef io_uring_sqe* sqe
        if self.sq_tail - IOCPX_LOAD_ACQ_U32(self.sq_khead) >= self.sq_entries:
            return NULL
        sqe = &self.sqes[self.sq_tail & self.sq_mask]
        memset(sqe, 0, sizeof(io_uring_sqe))
        return sqe

    cdef inline void _push(self, io_uring_sqe* sqe, IoCtx* io) noexcept nogil:
        sqe.user_data = <uint64_t><size_t>io
        self.sq_tail += 1
        IOCPX_STORE_REL_U32(self.sq_ktail, self.sq_tail)
        iocpx_mutex_unlock(&self.sq_mu)

    cdef inline bint _is_owner(self) noexcept nogil:
        return not self.single or (self.attached and pthread_equal(self.owner, pthread_self()))

    cdef void _arm_wake(self) noexcept nogil:
        """(Owner) watch the wake eventfd with a READ."""
        cdef io_uring_sqe* sqe
        iocpx_mutex_lock(&self.sq_mu)
        sqe = self._slot()
        if sqe == NULL:
            self.wake_rearm = 1
            iocpx_mutex_unlock(&self.sq_mu)
            return
        self.wake_rearm = 0
        sqe.opcode = IORING_OP_READ
        sqe.fd = self.wake_fd
        sqe.addr = <uint64_t><size_t>&self.wake_val
        sqe.len = 8
        self._push(sqe, self.wake_io)

    cdef int _register_pbuf(self, io_uring_buf_reg* reg) except? -1:
        """IORING_REGISTER_PBUF_RING; in single mode only the owner may register,
        so another thread hands the request over and waits for it."""
        cdef long r
        cdef uint64_t one = 1
        cdef int waited = 0
        if self._is_owner() or not self.attached:
            r = syscall(__NR_io_uring_register, self.ring_fd, IORING_REGISTER_PBUF_RING, reg, 1)
            if r >= 0:
                return 0
            if not (self.single and errno == 17):      # EEXIST: the owner attached meanwhile
                return -errno
        with nogil:
            iocpx_mutex_lock(&self.sq_mu)
            while self.reg_req != NULL:             # one request at a time
                iocpx_mutex_unlock(&self.sq_mu)
                iocpx_sleep_ms(1)
                iocpx_mutex_lock(&self.sq_mu)
            self.reg_req = reg
            iocpx_mutex_unlock(&self.sq_mu)
            c_write(self.wake_fd, &one, 8)
            while True:
                iocpx_sleep_ms(1)
                iocpx_mutex_lock(&self.sq_mu)
                if self.reg_req != reg:
                    iocpx_mutex_unlock(&self.sq_mu)
                    break
                waited += 1
                if waited > 10000:                  # the owner is stuck in a callback
                    self.reg_req = NULL
                    iocpx_mutex_unlock(&self.sq_mu)
                    return -110                     # ETIMEDOUT
                iocpx_mutex_unlock(&self.sq_mu)
        return self.reg_res

    cdef void _serve_register(self) noexcept nogil:
        """(Owner) make a registration another thread asked for."""
        cdef long r
        iocpx_mutex_lock(&self.sq_mu)
        if self.reg_req != NULL:
            r = syscall(__NR_io_uring_register, self.ring_fd, IORING_REGISTER_PBUF_RING, self.reg_req, 1)
            self.reg_res = 0 if r >= 0 else -errno
            self.reg_req = NULL
        iocpx_mutex_unlock(&self.sq_mu)

    cdef int attach(self) except -1:
        """Single mode: the calling worker becomes the ring's only issuer."""
        if not self.single:
            return 0
        if self.attached:
            raise RuntimeError("io_uring single-issuer ring already has its worker")
        cdef long r = syscall(__NR_io_uring_register, self.ring_fd, IORING_REGISTER_ENABLE_RINGS, NULL, 0)
        if r < 0:
            raise oserror(errno, "io_uring enable")
        self.owner = pthread_self()
        self.attached = 1
        self._arm_wake()
        self.flush()
        return 0

    cdef int flush(self) except -1:
        cdef uint32_t pending
        cdef int r
        cdef uint64_t one = 1
        if not self._is_owner():        # single mode: the owner submits for us
            if self.sq_tail != IOCPX_LOAD_ACQ_U32(self.sq_khead):
                c_write(self.wake_fd, &one, 8)
            return 0
        while True:
            pending = self.sq_tail - IOCPX_LOAD_ACQ_U32(self.sq_khead)
            if pending == 0:
                return 0
            r = sys_enter(self.ring_fd, pending, 0, 0, NULL, 0)
            if r >= 0 or r == -EINTR:
                continue
            if r == -EAGAIN or r == -EBUSY:
                return 0        # completion backlog: the next wait submits them
            raise oserror(-r, "io_uring_enter")

    cdef int submit_accept(self, IoCtx* io) except -1:
        cdef io_uring_sqe* sqe = self._sqe()
        sqe.opcode = IORING_OP_ACCEPT
        sqe.fd = io.fd
        io.addrlen = sizeof(io.addr)
        sqe.addr = <uint64_t><size_t>&io.addr
        sqe.addr2 = <uint64_t><size_t>&io.addrlen
        sqe.accept_flags = SOCK_CLOEXEC
        self._push(sqe, io)
        return 0

    cdef int submit_recv(self, IoCtx* io) except -1:
        cdef io_uring_sqe* sqe = self._sqe()
        sqe.opcode = IORING_OP_RECV
        sqe.fd = io.fd
        sqe.ioprio = IORING_RECV_MULTISHOT
        sqe.flags = IOSQE_BUFFER_SELECT
        sqe.buf_group = io.group
        self._push(sqe, io)
        return 0

    cdef int submit_send(self, IoCtx* io) except -1:
        cdef io_uring_sqe* sqe = self._sqe()
        sqe.opcode = IORING_OP_SEND
        sqe.fd = io.fd
        sqe.addr = <uint64_t><size_t>io.buf
        sqe.len = <uint32_t>(io.len if io.len < 0x7fff0000 else 0x7fff0000)
        sqe.msg_flags = MSG_NOSIGNAL | MSG_WAITALL
        self._push(sqe, io)
        return 0

    cdef int submit_connect(self, IoCtx* io) except -1:
        cdef io_uring_sqe* sqe = self._sqe()
        sqe.opcode = IORING_OP_CONNECT
        sqe.fd = io.fd
        sqe.addr = <uint64_t><size_t>&io.addr
        sqe.off = io.addrlen
        self._push(sqe, io)
        return 0

    cdef int submit_splice(self, IoCtx* io, int fd_in, int64_t off_in, int fd_out, uint32_t nbytes) except -1:
        cdef io_uring_sqe* sqe = self._sqe()
        sqe.opcode = IORING_OP_SPLICE
        sqe.fd = fd_out
        sqe.off = <uint64_t>-1
        sqe.splice_fd_in = fd_in
        sqe.splice_off_in = <uint64_t>off_in if off_in >= 0 else <uint64_t>-1
        sqe.len = nbytes
        sqe.splice_flags = SPLICE_F_MOVE
        self._push(sqe, io)
        return 0

    cdef int submit_cancel_fd(self, IoCtx* io, int fd) except -1:
        cdef io_uring_sqe* sqe = self._sqe()
        sqe.opcode = IORING_OP_ASYNC_CANCEL
        sqe.fd = fd
        sqe.cancel_flags = IORING_ASYNC_CANCEL_FD | IORING_ASYNC_CANCEL_ALL
        self._push(sqe, io)
        return 0

    cdef int submit_cancel_op(self, IoCtx* io, IoCtx* target) except -1:
        cdef io_uring_sqe* sqe = self._sqe()
        sqe.opcode = IORING_OP_ASYNC_CANCEL
        sqe.addr = <uint64_t><size_t>target
        self._push(sqe, io)
        return 0

    cdef int submit_post(self, IoCtx* io) except -1:
        cdef io_uring_sqe* sqe = self._sqe()
        sqe.opcode = IORING_OP_NOP
        self._push(sqe, io)
        return 0

    cdef int submit_timer(self, IoCtx* io, long ms) except -1:
        cdef __kernel_timespec* ts
        if io.extra == NULL:
            io.extra = malloc(sizeof(__kernel_timespec))   # freed by io_free
            if io.extra == NULL:
                raise MemoryError()
        ts = <__kernel_timespec*>io.extra
        ts.tv_sec = ms // 1000
        ts.tv_nsec = (ms % 1000) * 1000000
        cdef io_uring_sqe* sqe = self._sqe()
        sqe.opcode = IORING_OP_TIMEOUT
        sqe.addr = <uint64_t><size_t>ts
        sqe.len = 1
        self._push(sqe, io)
        return 0

    # ---- completion side (leader thread, no GIL) --------------------------

    cdef int wait(self, Event* out, int maxev, long timeout_ms) noexcept nogil:
        """Submit what is queued, wait for at least one completion (or the
        timeout; < 0 means none) and copy up to maxev of them into out."""
        cdef int n, r
        cdef uint32_t pending
        cdef unsigned flags
        cdef io_uring_getevents_arg arg
        cdef __kernel_timespec ts
        while True:
            if self.reg_req != NULL:
                self._serve_register()
            n = self._harvest(out, maxev)
            pending = IOCPX_LOAD_ACQ_U32(self.sq_ktail) - IOCPX_LOAD_ACQ_U32(self.sq_khead)
            if n > 0:
                if pending:
                    sys_enter(self.ring_fd, pending, 0, 0, NULL, 0)
                return n
            flags = IORING_ENTER_GETEVENTS
            if timeout_ms >= 0:
                memset(&arg, 0, sizeof(arg))
                ts.tv_sec = timeout_ms // 1000
                ts.tv_nsec = (timeout_ms % 1000) * 1000000
                arg.ts = <uint64_t><size_t>&ts
                r = sys_enter(self.ring_fd, pending, 1, flags | IORING_ENTER_EXT_ARG, &arg, sizeof(arg))
            else:
                r = sys_enter(self.ring_fd, pending, 1, flags, NULL, 0)
            if r < 0:
                if r == -ETIME:
                    return self._harvest(out, maxev)
                if r != -EINTR and r != -EAGAIN and r != -EBUSY:
                    return r
            elif r < <int>pending:
                continue      # another thread submitted part of it: we did not wait
            if timeout_ms >= 0:
                return self._harvest(out, maxev)

    cdef inline int _harvest(self, Event* out, int maxev) noexcept nogil:
        cdef uint32_t head = self.cq_khead[0]
        cdef uint32_t tail = IOCPX_LOAD_ACQ_U32(self.cq_ktail)
        cdef int n = 0
        cdef io_uring_cqe* c
        cdef bint rearm = self.wake_rearm
        while head != tail and n < maxev:
            c = &self.cqes[head & self.cq_mask]
            if c.user_data == <uint64_t><size_t>self.wake_io and self.wake_io != NULL:
                head += 1               # a wake-up: its job (submitting) is done by waking
                rearm = 1
                continue
            out[n].io = <IoCtx*><size_t>c.user_data
            out[n].res = c.res
            out[n].flags = c.flags
            out[n].data = NULL
            n += 1
            head += 1
        IOCPX_STORE_REL_U32(self.cq_khead, head)
        if rearm:
            self._arm_wake()
        return n

    # ---- provided receive buffers -----------------------------------------

    cdef int buffer_group(self, uint32_t size) except -1:
        """The id of a receive buffer pool of `size`-byte buffers, created on first use."""
        cdef int i
        for i in range(self.ngroups):
            if self.groups[i].size == size:
                return i
        if self.ngroups >= MAX_GROUPS:
            raise ValueError(f"too many distinct buffer sizes (at most {MAX_GROUPS})")
        cdef uint32_t nbufs = 64
        while nbufs < 4096 and <uint64_t>nbufs * 2 * size <= POOL_BYTES:
            nbufs *= 2
        cdef BufGroup* g = &self.groups[self.ngroups]
        memset(g, 0, sizeof(BufGroup))
        g.size = size
        g.nbufs = nbufs
        g.mask = <uint16_t>(nbufs - 1)
        g.ring_sz = nbufs * sizeof(io_uring_buf)
        g.ring = <io_uring_buf*>mmap(NULL, g.ring_sz, PROT_READ | PROT_WRITE,
                                     MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
        if <void*>g.ring == MAP_FAILED:
            g.ring = NULL
            raise oserror(errno, "mmap buffer ring")
        g.mem_sz = <size_t>nbufs * size
        g.mem = <char*>mmap(NULL, g.mem_sz, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
        if <void*>g.mem == MAP_FAILED:
            g.mem = NULL
            munmap(g.ring, g.ring_sz)
            g.ring = NULL
            raise oserror(errno, "mmap receive buffers")
        cdef uint32_t b
        for b in range(nbufs):
            g.ring[b].addr = <uint64_t><size_t>(g.mem + <size_t>b * size)
            g.ring[b].len = size
            g.ring[b].bid = <uint16_t>b
        g.tail = <uint16_t>nbufs
        IOCPX_STORE_REL_U16(&g.ring[0].resv, g.tail)   # the ring's tail overlays bufs[0].resv
        cdef io_uring_buf_reg reg
        memset(&reg, 0, sizeof(reg))
        reg.ring_addr = <uint64_t><size_t>g.ring
        reg.ring_entries = nbufs
        reg.bgid = <uint16_t>self.ngroups
        cdef int r = self._register_pbuf(&reg)
        if r < 0:
            err = -r
            munmap(g.ring, g.ring_sz)
            munmap(g.mem, g.mem_sz)
            g.ring = NULL
            g.mem = NULL
            raise oserror(err, "io_uring provided buffer ring (needs Linux 5.19+)")
        self.ngroups += 1
        return self.ngroups - 1

    cdef object recv_bytes(self, Event* ev):
        """The bytes a receive completion carried (None if none) and the buffer
        given back to the kernel at once. Must be called for every recv event
        (or recv_copy)."""
        if not (ev.flags & EV_BUFFER):
            return None
        cdef BufGroup* g = &self.groups[ev.io.group]
        cdef uint16_t bid = <uint16_t>(ev.flags >> EV_BUFFER_SHIFT)
        data = None
        if ev.res > 0:
            data = PyBytes_FromStringAndSize(g.mem + <size_t>bid * g.size, ev.res)
        self._recycle(g, bid)
        return data

    cdef Py_ssize_t recv_copy(self, Event* ev, char* dst) except -1:
        if not (ev.flags & EV_BUFFER):
            return 0
        cdef BufGroup* g = &self.groups[ev.io.group]
        cdef uint16_t bid = <uint16_t>(ev.flags >> EV_BUFFER_SHIFT)
        cdef Py_ssize_t n = ev.res if ev.res > 0 else 0
        memcpy(dst, g.mem + <size_t>bid * g.size, n)
        self._recycle(g, bid)
        return n

    cdef inline void _recycle(self, BufGroup* g, uint16_t bid) noexcept:
        """Give buffer bid back to the kernel's ring (dispatch holds the GIL,
        which serializes this producer side)."""
        cdef io_uring_buf* slot = &g.ring[g.tail & g.mask]
        slot.addr = <uint64_t><size_t>(g.mem + <size_t>bid * g.size)
        slot.len = g.size
        slot.bid = bid
        g.tail += 1
        IOCPX_STORE_REL_U16(&g.ring[0].resv, g.tail)


def probe():
    """None if this kernel runs the io_uring backend, else the reason why not."""
    import os
    try:
        b = UringBackend(8)
        b.buffer_group(4096)
    except OSError as e:
        return f"io_uring unavailable: {e}"
    release = os.uname().release.split(".")
    try:
        major, minor = int(release[0]), int(release[1].split("-")[0])
    except (ValueError, IndexError):
        return None
    if (major, minor) < (6, 0):
        return f"io_uring backend needs Linux 6.0+ (multishot receive), kernel is {os.uname().release}"
    return None
