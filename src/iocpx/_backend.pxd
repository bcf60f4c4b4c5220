# What the engine and every backend share: the per-I/O context, the completion
# event, the per-connection scheduling node, and the small backend interface.
# Layouts only; the logic is in _backend.pyx (helpers) and each backend module.
from cpython.ref cimport PyObject
from libc.stdint cimport uint8_t, uint16_t, uint32_t, int32_t, int64_t
from iocpx._sys cimport iocpx_ovl_t, iocpx_addr_t, socklen_t

# Operation types: one enum for every backend.
cpdef enum OpType:
    OP_NOP = 0          # a completion with no I/O: wake-up or close request
    OP_ACCEPT = 1
    OP_RECV = 2
    OP_SEND = 3
    OP_CONNECT = 4
    OP_SPLICE_IN = 5    # file -> pipe (sendfile, Linux)
    OP_SPLICE_OUT = 6   # pipe -> socket (sendfile, Linux)
    OP_CANCEL = 7
    OP_POST = 8         # CompletionPort.post packet
    OP_EXIT = 9         # one per worker at shutdown
    OP_TIMER = 10       # delayed re-arm (accept back-off)
    OP_SENDFILE = 11    # file -> socket in one op (TransmitFile; backends with direct_sendfile)

# Event.flags bits, backend-neutral (the values are io_uring's, so that
# backend passes its cqe flags through unchanged).
cdef enum:
    EV_BUFFER = 1           # a provided receive buffer was used: id in the high 16 bits
    EV_MORE = 2             # the (multishot) op stays armed: more completions follow
    EV_BUFFER_SHIFT = 16

cdef struct Event:
    IoCtx* io           # the context the completion belongs to
    int32_t res         # >= 0 result, < 0 -errno (backends translate their own codes)
    uint32_t flags      # EV_* bits (io_uring passes its cqe flags through)
    void* data          # backend-owned bytes of this completion, if it carries any;
                        # the backend frees it in recv_bytes()/accept_data()

# Serializes one connection's callbacks across workers (guarded by the
# engine's run-queue mutex). Lives inside the owning Python object.
cdef struct SchedNode:
    int running         # a worker is running this owner's events
    int bl_head
    int bl_len
    int bl_cap
    Event* backlog      # owned: malloc array of events queued while running

# The per-I/O context: plain C memory (calloc), its address is what
# the kernel hands back. Freed in exactly two places: a synchronous submit
# failure, and the dispatch of its final completion (io_free).
cdef struct IoCtx:
    iocpx_ovl_t ovl     # OVERLAPPED on Windows: must stay the first member
    uint8_t op          # OpType
    uint8_t more        # set by the backend while a multishot op stays armed
    uint16_t group      # receive buffer group (io_uring provided buffers)
    int32_t fd          # the socket (or listening socket) the op runs on
    PyObject* owner     # strong ref: the Connection/Listener/key; dropped by io_free
    SchedNode* sched    # borrowed from owner; NULL when the owner is not serialized
    PyObject* obj       # strong ref to what the kernel reads (send data) or a posted object
    char* buf           # points into obj (not owned)
    Py_ssize_t len      # bytes left at buf
    int64_t aux         # op-specific: posted nbytes, splice length, timer ms
    iocpx_addr_t addr   # accept: peer address written by the kernel; connect: target
    socklen_t addrlen
    void* extra         # owned by the backend (timespec, WSABUF...); freed by io_free

cdef IoCtx* io_alloc(uint8_t op, object owner, SchedNode* sched) except NULL
cdef void io_free(IoCtx* io) noexcept
cdef void io_set_obj(IoCtx* io, object obj) noexcept
cdef int64_t io_live() noexcept nogil

cdef object oserror(int err, str what=*)

# The interface every backend implements. Accept completions: res is the new
# socket, io.addr the peer. When the engine wants first data with the accept
# it sets io.len to the buffer size before submit_accept; a backend that can
# receive it with the accept (AcceptEx) hands it over in accept_data(). Submit calls run with the GIL held
# and may be called from any thread; wait() runs without the GIL in at most
# one thread at a time per backend instance (the engine's leader).
cdef enum:
    MAX_GROUPS = 64         # distinct receive buffer sizes per backend

cdef class Backend:
    cdef readonly str name
    cdef uint32_t sizes[MAX_GROUPS]     # receive size of each buffer group (default buffer_group)
    cdef int ngroups
    cdef readonly bint direct_sendfile  # True: OP_SENDFILE; False: the engine splices via a pipe
    cdef readonly bint sync_send        # try_send() works: a send that fits goes out at once
    cdef int socket_open(self, int family) except -1       # a new stream socket for connect()
    cdef int adopt(self, int fd) except -1                 # a listening socket joins the port
    cdef int attach(self) except -1     # called once by each worker thread before it waits
    cdef int submit_accept(self, IoCtx* io) except -1
    cdef int submit_recv(self, IoCtx* io) except -1
    cdef int submit_send(self, IoCtx* io) except -1
    cdef Py_ssize_t try_send(self, int fd, const char* buf, Py_ssize_t n) noexcept   # bytes sent now, or -errno
    cdef int submit_connect(self, IoCtx* io) except -1
    cdef int submit_splice(self, IoCtx* io, int fd_in, int64_t off_in, int fd_out, uint32_t nbytes) except -1
    cdef int submit_cancel_fd(self, IoCtx* io, int fd) except -1
    cdef int submit_cancel_op(self, IoCtx* io, IoCtx* target) except -1
    cdef int submit_post(self, IoCtx* io) except -1
    cdef int submit_timer(self, IoCtx* io, long ms) except -1
    cdef int submit_sendfile(self, IoCtx* io, int file_fd, int64_t offset, uint32_t nbytes) except -1
    cdef int flush(self) except -1
    cdef int wait(self, Event* out, int maxev, long timeout_ms) noexcept nogil
    cdef int buffer_group(self, uint32_t size) except -1
    cdef object recv_bytes(self, Event* ev)
    cdef Py_ssize_t recv_copy(self, Event* ev, char* dst) except -1   # copy ev's data to dst, give the buffer back
    cdef object accept_data(self, Event* ev)    # first data an accept carried (AcceptEx), or None
    cdef object error(self, int err, str what)  # the OSError for a backend error code
    cdef void release(self) noexcept
