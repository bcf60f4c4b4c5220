# What the engine and every backend share: the per-I/O context, the
# completion event and the one queue of events, the per-connection scheduling
# node, and the small backend interface. Layouts and inline helpers only; the
# rest of the shared logic is in _backend.pyx, each backend in its own module.
from cpython.ref cimport PyObject
from libc.stdint cimport uint8_t, uint16_t, uint32_t, int32_t, int64_t
from libc.stdlib cimport malloc, realloc, free
from libc.string cimport memcpy
from iocpx._sys cimport (iocpx_ovl_t, iocpx_addr_t, socklen_t, iocpx_sock_recv, sockaddr,
                         IOCPX_AF_UNIX, iocpx_faults_t, iocpx_mutex_t, iocpx_mutex_lock,
                         iocpx_mutex_unlock, IOCPX_FAULT, IOCPX_F_ALLOC_RECV_BLOCK)

# Operation types: one enum for every backend.
cpdef enum OpType:
    OP_NOP = 0          # a posted completion with no I/O (a wake-up, a close or drain request)
    OP_ACCEPT = 1
    OP_RECV = 2
    OP_SEND = 3
    OP_CONNECT = 4
    OP_SENDFILE = 5     # file -> socket: TransmitFile, sendfile(2), or splice through a pipe
    OP_CANCEL = 6       # completes once the cancel request itself is done
    OP_POST = 7         # CompletionPort.post packet
    OP_EXIT = 8         # one per worker at shutdown (the model's exit packet)
    OP_RECVFROM = 9     # datagram receive with its source address (multishot where the
                        # backend has it); each datagram's event is read through dgram_view()
    OP_SENDTO = 10      # one datagram of io.len bytes at io.buf to io.addr (io.addrlen 0:
                        # the connected peer); res is the bytes sent or -errno
    OP_POLL = 11        # readiness of io.fd for the PL_* events in io.len, once (one-shot);
                        # res is the PL_* events that happened, or -errno. With POLL_KEEP
                        # in io.group a backend may keep it armed, level-triggered: each
                        # readiness it sees is an event with EV_MORE, until a cancel ends it
    OP_READ = 12        # Windows: ReadFile of io.len bytes into io.buf from the HANDLE in
                        # io.aux.handle (a pipe); res is the bytes read, 0 at its end, or -errno
    OP_WRITE = 13       # Windows: WriteFile of io.len bytes at io.buf to the HANDLE; res as above
    OP_WAIT = 14        # Windows: the object (a process) in io.aux.handle is signalled;
                        # res 0, or -ECANCELED

cdef enum:
    POLL_KEEP = 1       # OP_POLL io.group: the poll may stay armed (see OP_POLL)

# OP_POLL event bits, backend-neutral (the values of Linux's POLLIN/POLLOUT/POLLERR/POLLHUP).
cdef enum:
    PL_IN = 0x001
    PL_OUT = 0x004
    PL_ERR = 0x008
    PL_HUP = 0x010

# Event.flags bits, backend-neutral. io_uring passes its cqe flags through
# unchanged, so _io_uring.pyx checks at compile time that these equal
# IORING_CQE_F_BUFFER, IORING_CQE_F_MORE and IORING_CQE_BUFFER_SHIFT.
cdef enum:
    EV_BUFFER = 1           # a provided receive buffer was used: its id in the high 16 bits
    EV_MORE = 2             # the (multishot) op stays armed: more completions follow
    EV_BUFFER_SHIFT = 16
    EV_BLOCK = 0x80         # (epoll, iocp) ev.data is a READ_MIN block of the backend's
                            # BlockCache: consuming the event gives it back there

cdef struct Event:
    IoCtx* io           # the context the completion belongs to
    int32_t res         # >= 0 result, < 0 -errno (backends translate their own codes)
    uint32_t flags      # EV_* bits
    void* data          # malloc'd bytes this completion carries (epoll, iocp receives),
                        # or NULL; freed by Backend.recv_bytes()/recv_copy()

cdef inline void ev_set(Event* ev, IoCtx* io, int32_t res, uint32_t flags, void* data) noexcept nogil:
    ev.io = io
    ev.res = res
    ev.flags = flags
    ev.data = data

# A growable FIFO ring of events: the engine's run queue, a connection's
# backlog, the ready lists of the epoll and iocp backends. Not locked: the
# owner of the queue says which mutex guards it.
cdef struct EventQueue:
    Event* ev           # owned: malloc'd ring of cap slots (NULL until the first push)
    int head
    int len
    int cap

cdef int evq_grow(EventQueue* q) noexcept nogil
cdef void evq_free(EventQueue* q) noexcept nogil

cdef inline int evq_push(EventQueue* q, Event* ev) noexcept nogil:
    """Append a copy of ev; -1 when out of memory (nothing queued)."""
    if q.len == q.cap and evq_grow(q) < 0:
        return -1
    q.ev[(q.head + q.len) % q.cap] = ev[0]
    q.len += 1
    return 0

cdef inline Event* evq_peek(EventQueue* q) noexcept nogil:
    """The oldest event (q.len > 0), still queued."""
    return &q.ev[q.head]

cdef inline void evq_drop(EventQueue* q) noexcept nogil:
    """Remove the oldest event (q.len > 0)."""
    q.head = (q.head + 1) % q.cap
    q.len -= 1

cdef inline int evq_take(EventQueue* q, Event* out, int maxev) noexcept nogil:
    """Move up to maxev of the oldest events to out; returns how many."""
    cdef int n = 0
    while q.len > 0 and n < maxev:
        out[n] = q.ev[q.head]
        q.head = (q.head + 1) % q.cap
        q.len -= 1
        n += 1
    return n

# Serializes one connection's callbacks across workers (guarded by the
# engine's mutex). Lives inside the owning Python object.
cdef struct SchedNode:
    int running         # a worker is running this owner's events
    EventQueue backlog  # events that arrived while it was running, in order

# What IoCtx.aux holds depends on the op and the backend; one name per use.
cdef union IoAux:
    int64_t post_nbytes     # OP_POST: the packet's nbytes (CompletionPort)
    int64_t unread          # epoll OP_RECV: data events handed out, not yet consumed
    IoCtx* next_accept      # epoll OP_ACCEPT: the next accept queued on the same listener
    int64_t silent_ms       # OP_ACCEPT with first data (iocp AcceptEx): how long a
                            # connected client may stay silent in the slot (0: no limit)
    int32_t claim           # iocp OP_RECV: who had the finished receive first, the read
                            # after it or abort_by_close() (IocpBackend.abort_by_close)
    int64_t handle          # OP_READ, OP_WRITE, OP_WAIT: the Windows HANDLE

# The per-I/O context: plain C memory (calloc), its address is what the
# kernel hands back. Freed in exactly two places: a synchronous submit
# failure, and the dispatch of its final completion (io_free).
cdef struct IoCtx:
    iocpx_ovl_t ovl     # OVERLAPPED on Windows: must stay the first member
    uint8_t op          # OpType
    uint16_t group      # receive buffer group (Backend.buffer_group)
    int32_t fd          # the socket (or listening socket) the op runs on
    PyObject* owner     # strong ref: the Connection/Listener/key; dropped by io_free
    SchedNode* sched    # borrowed from owner; NULL when the owner is not serialized
    PyObject* obj       # strong ref to what the kernel reads (send data) or a posted object
    char* buf           # points into obj (not owned)
    Py_ssize_t len      # bytes left at buf; OP_ACCEPT: first-data bytes wanted with the accept;
                        # epoll OP_RECV: its last read filled a whole block (large messages)
    IoAux aux           # op- and backend-specific, see IoAux
    iocpx_addr_t addr   # accept: peer address written by the kernel; connect: target
                        # (sa_family AF_UNIX: the target is in extra, see io_target)
    socklen_t addrlen
    void* extra         # owned by the backend (timespec, AcceptState, sendfile state),
                        # or by the engine for an AF_UNIX connect (its iocpx_unaddr_t);
                        # freed by io_free through Backend-agnostic free()

# What a datagram receive event carried, as Backend.dgram_view() shows it.
# Where the bytes and the sender's address live is the backend's business
# (inside an io_uring provided buffer, a heap block, the receive's own
# buffer): the view is valid until Backend.dgram_done(ev).
cdef enum:
    DG_TRUNC = 1            # Datagram.flags: it was longer than the buffer; data is cut
    DG_NOBUF = 2            # (no datagram) the receive ended for want of buffers, and the
                            # pool is at its limit: every buffer waits in some queue

cdef struct Datagram:
    char* data              # the payload (backend memory, not owned)
    Py_ssize_t len          # its bytes (0 is a valid, empty datagram)
    sockaddr* name          # the sender (backend memory), or NULL when not reported
    int namelen
    uint32_t flags          # DG_* bits
    int64_t drops           # the kernel's count of datagrams it dropped on this socket so
                            # far (SO_RXQ_OVFL), as of this one; -1: not reported

cdef inline sockaddr* io_target(IoCtx* io) noexcept nogil:
    """The address an OP_CONNECT goes to (io.addrlen bytes): io.addr, or an
    AF_UNIX path, too big for io.addr, kept out of line in io.extra."""
    if io.addr.sa.sa_family == IOCPX_AF_UNIX and io.extra != NULL:
        return <sockaddr*>io.extra
    return &io.addr.sa

cdef enum:
    READ_MIN = 65536        # a heap-buffer receive reads up to this much, whatever buffer_size
    BLOCK_CACHE = 128       # READ_MIN blocks a backend keeps for its next reads (8 MiB):
                            # one wait's worth of 64 KiB reads (epoll reads 128 at most)
    BLOCK_KEEP = 4          # ... and what it keeps once it has been idle BLOCK_IDLE_MS
    BLOCK_IDLE_MS = 1000

# The READ_MIN blocks of the heap-buffer receive, kept between reads. Each
# read used to malloc its own 64 KiB and the consumer freed it; glibc then
# trimmed the heap (or an arena, with MADV_DONTNEED), and the next recv()
# page-faulted its way into fresh pages: at 64 KiB messages the faults cost
# more than the copy. A block here stays mapped and warm. Its own mutex: the
# reader (the leader, no GIL) and the consumers (workers, GIL) are different
# threads. The blocks are plain malloc blocks, so a free() of one is correct.
# Idle memory stays small: while the cache holds more than BLOCK_KEEP, the
# backend's wait sleeps at most BLOCK_IDLE_MS, and a wait that slept that
# long for nothing gives the rest back (block_trim).
cdef struct BlockCache:
    iocpx_mutex_t mu
    int n
    void* blocks[BLOCK_CACHE]

cdef inline int block_get_n(BlockCache* bc, void** out, int n) noexcept nogil:
    """n READ_MIN blocks at out (one lock round); returns how many it got
    (fewer only when out of memory)."""
    cdef int i = 0
    iocpx_mutex_lock(&bc.mu)
    while i < n and bc.n > 0:
        bc.n -= 1
        out[i] = bc.blocks[bc.n]
        i += 1
    iocpx_mutex_unlock(&bc.mu)
    while i < n:
        out[i] = NULL if IOCPX_FAULT(IOCPX_F_ALLOC_RECV_BLOCK) else malloc(READ_MIN)
        if out[i] == NULL:
            break
        i += 1
    return i

cdef inline void* block_get(BlockCache* bc) noexcept nogil:
    """One READ_MIN block, from the cache or malloc; NULL when out of memory."""
    cdef void* b = NULL
    block_get_n(bc, &b, 1)
    return b

cdef inline void block_put(BlockCache* bc, void* b) noexcept nogil:
    """Give a READ_MIN block back: kept if the cache has room, else freed."""
    iocpx_mutex_lock(&bc.mu)
    if bc.n < BLOCK_CACHE:
        bc.blocks[bc.n] = b
        bc.n += 1
        b = NULL
    iocpx_mutex_unlock(&bc.mu)
    free(b)

cdef inline void block_trim(BlockCache* bc) noexcept nogil:
    """The backend has been idle: free the cached blocks beyond BLOCK_KEEP."""
    cdef void* spare[BLOCK_CACHE]
    cdef int i, k = 0
    iocpx_mutex_lock(&bc.mu)
    while bc.n > BLOCK_KEEP:
        bc.n -= 1
        spare[k] = bc.blocks[bc.n]
        k += 1
    iocpx_mutex_unlock(&bc.mu)
    for i in range(k):
        free(spare[i])

cdef inline int block_count(BlockCache* bc) noexcept nogil:
    """The blocks the cache holds now."""
    cdef int n
    iocpx_mutex_lock(&bc.mu)
    n = bc.n
    iocpx_mutex_unlock(&bc.mu)
    return n

cdef inline long block_wait_ms(BlockCache* bc, long timeout_ms) noexcept nogil:
    """The timeout a backend's wait sleeps with: at most BLOCK_IDLE_MS while
    the cache holds more than BLOCK_KEEP blocks."""
    if (timeout_ms < 0 or timeout_ms > BLOCK_IDLE_MS) and block_count(bc) > BLOCK_KEEP:
        return BLOCK_IDLE_MS
    return timeout_ms

cdef inline void* block_data(BlockCache* bc, void* block, long r, uint32_t* flags) noexcept nogil:
    """A cache block that received r > 0 bytes, as an event's data: the block
    itself (EV_BLOCK in *flags), or, when r is under half of it, a malloc'd
    copy of its own size, the block going back to the cache, so that an unread
    small message pins no 64 KiB."""
    cdef void* small
    if r < READ_MIN // 2:
        small = malloc(r)
        if small != NULL:
            memcpy(small, block, r)
            block_put(bc, block)
            return small
    flags[0] |= EV_BLOCK
    return block

cdef inline long recv_heap(BlockCache* bc, int fd, uint32_t size, void** data,
                           uint32_t* flags) noexcept nogil:
    """The heap-buffer receive of the epoll and iocp backends: read what the
    socket has into a block of max(size, READ_MIN) bytes. Returns n > 0 with
    *data set (it travels in Event.data and is given back by
    Backend.recv_bytes/recv_copy/recv_release; EV_BLOCK in *flags when it is a
    cache block), 0 at EOF, -1 on an error (read iocpx_last_error() next), -2
    when out of memory. A read that used less than half of its block moves
    to a block of its own size (block_data; realloc for larger buffer sizes)."""
    cdef char* buf
    cdef void* small
    cdef long r
    cdef bint cached = size <= READ_MIN
    if cached:
        size = READ_MIN         # one read takes what is there (a 64 KiB message at once)
        buf = <char*>block_get(bc)
    elif IOCPX_FAULT(IOCPX_F_ALLOC_RECV_BLOCK):
        buf = NULL
    else:
        buf = <char*>malloc(size)
    if buf == NULL:
        return -2
    r = iocpx_sock_recv(fd, buf, size)
    if r <= 0:
        if cached:
            block_put(bc, buf)
        else:
            free(buf)
        return r
    if cached:
        data[0] = block_data(bc, buf, r, flags)
        return r
    if r < size // 2:
        small = realloc(buf, r)
        if small != NULL:
            buf = <char*>small
    data[0] = buf
    return r

cdef IoCtx* io_alloc(uint8_t op, object owner, SchedNode* sched) except NULL
cdef IoCtx* io_alloc_wait(uint8_t op, object owner, SchedNode* sched) except NULL
cdef void io_free(IoCtx* io) noexcept
cdef void io_set_obj(IoCtx* io, object obj) noexcept
cdef int64_t io_live() noexcept nogil

cdef str strerror(int err)
cdef object oserror(int err, str what=*)

# The interface every backend implements. Submit calls run with the GIL held
# and may be called from any thread; wait() runs without the GIL, in one
# thread at a time per backend instance (the engine's leader).
# Accept completions: res is the new socket, io.addr the peer. When the engine
# wants first data with the accept it sets io.len to the buffer size before
# submit_accept; a backend that can receive it with the accept (AcceptEx)
# hands it over in accept_data(), the others ignore io.len.
# Sendfile completions: res is the number of bytes the kernel moved (0: the
# file ended). Cancels: the cancelled ops complete with -ECANCELED, then the
# cancel op itself completes (its res is not an error the engine reports).
cdef enum:
    MAX_GROUPS = 64         # distinct receive buffer sizes per backend

cdef class Backend:
    cdef readonly str name
    cdef uint32_t sizes[MAX_GROUPS]     # receive size of each buffer group (default buffer_group)
    cdef int ngroups
    cdef BlockCache blocks              # READ_MIN blocks of the heap-buffer receive (recv_heap)
    cdef readonly Py_ssize_t sync_send  # sends of at least this many bytes are tried at once
                                        # with try_send() (-1: never); what fits costs no completion
    cdef readonly bint accept_with_data # an accept can wait for the client's first bytes (AcceptEx)
    cdef readonly bint sync_sendto      # try_sendto() works: a datagram goes out at once
    cdef readonly int dgram_recvs       # datagram receives an endpoint keeps armed
    cdef int socket_open(self, int family) except -1       # a new stream socket for connect()
    cdef int adopt(self, int fd) except -1                 # a listening socket joins the port
    cdef int adopt_stream(self, int fd) except -1          # a connected stream socket joins it
    cdef int submit_accept(self, IoCtx* io) except -1
    cdef int submit_recv(self, IoCtx* io) except -1
    cdef int submit_send(self, IoCtx* io) except -1
    cdef Py_ssize_t try_send(self, int fd, const char* buf, Py_ssize_t n) noexcept   # bytes sent now, or -errno
    cdef int submit_connect(self, IoCtx* io) except -1
    cdef int submit_sendfile(self, IoCtx* io, int file_fd, int64_t offset, uint32_t nbytes) except -1
    cdef int submit_cancel_fd(self, IoCtx* io, int fd) except -1
    cdef int submit_cancel_op(self, IoCtx* io, IoCtx* target) except -1
    cdef int abort_by_close(self, IoCtx* recv) except -1    # 1: closed, recv completes aborted
    cdef int submit_post(self, IoCtx* io) except -1
    cdef int submit_poll(self, IoCtx* io) except -1     # OP_POLL on io.fd, any descriptor the backend can poll
    cdef int handle_adopt(self, int64_t handle) except -1   # Windows: a pipe HANDLE joins the port
    cdef int submit_handle_io(self, IoCtx* io) except -1    # OP_READ, OP_WRITE, OP_WAIT
    cdef int flush(self) except -1
    cdef int wait(self, Event* out, int maxev, long timeout_ms) noexcept nogil
    cdef int buffer_group(self, uint32_t size) except -1
    cdef object recv_bytes(self, Event* ev)
    cdef Py_ssize_t recv_copy(self, Event* ev, char* dst) except -1   # copy ev's data to dst, give the buffer back
    cdef void recv_consumed(self, Event* ev) noexcept   # hook: a heap receive buffer was consumed
    cdef void recv_release(self, Event* ev) noexcept    # give a receive event's buffer back uncopied
    cdef void _block_done(self, Event* ev) noexcept     # a heap receive block back (cache or free)
                                                        # (its ev.res bytes at ev.data were read in place)
    cdef object accept_data(self, Event* ev)    # first data an accept carried (AcceptEx), or None
    cdef int accept_silent(self, int listen_fd) except -1   # pending first-data accepts holding a silent client
    cdef object error(self, int err, str what)  # the OSError for a backend error code
    # datagrams (UDP): see Datagram above and engine/datagram.pxi
    cdef int dgram_adopt(self, int fd, bint connected) except -1   # a UDP socket joins the port
    cdef int dgram_group(self, uint32_t size) except -1    # receive buffers for datagrams of up to size
    cdef int submit_recvfrom(self, IoCtx* io) except -1
    cdef int submit_sendto(self, IoCtx* io) except -1
    cdef Py_ssize_t try_sendto(self, int fd, const char* buf, Py_ssize_t n,
                               sockaddr* to, int tolen) noexcept   # bytes sent now, or -errno
    cdef int dgram_view(self, Event* ev, Datagram* out) except -1  # 1: a datagram, 0: none
    cdef void dgram_done(self, Event* ev) noexcept      # the view's buffer goes back
    cdef void release(self) noexcept

# The failure-point table every module attaches to at import (_sys.h; NULL-free, all zero
# and unused outside an IOCPX_FAULTS=1 build).
cdef iocpx_faults_t* faults_table() noexcept nogil
