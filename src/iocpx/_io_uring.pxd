# The io_uring backend's layouts: the receive pools, the sendfile state and
# the backend class. Declarations only; the logic is in _io_uring.pyx and
# io_uring/*.pxi (mapped in _io_uring.pyx's docstring).
from libc.stdint cimport uint8_t, uint16_t, uint32_t, int32_t, int64_t, uint64_t
from iocpx._sys cimport iocpx_mutex_t
from iocpx._backend cimport Backend, IoCtx, Event, MAX_GROUPS
from iocpx._io_uring_abi cimport io_uring_sqe, io_uring_cqe, io_uring_buf

cdef enum:
    POOL_BYTES = 1024 * 1024        # a receive pool's first size, and each growth step
    POOL_MAX = 64 * 1024 * 1024     # a receive pool grows up to this much
    STARVED_GAP_NS = 5000000        # ENOBUFS grows a pool at most once per 5 ms (unless all out)
    STARVED_SOFT_MAX = 8 * 1024 * 1024  # ... and up to this size (past it: only when all out)
    INC_BUF = 256 * 1024            # buffer size of the shared incremental pool
    SYNC_SEND_MIN = 16 * 1024       # sends this large are tried with send() at once
    IOU_PBUF_RING_INC = 2           # io_uring_buf_reg flag (Linux 6.12; not in older headers)
    CQE_F_BUF_MORE = 1 << 4         # IORING_CQE_F_BUF_MORE: the buffer has room for more
    REF_DONE = 1 << 30              # BufGroup.refs: the kernel is done with this buffer
    PIPE_WANT = 1 << 20             # sendfile pipe size asked for
    PIPE_POOL = 16                  # idle sendfile pipes kept for reuse
    SPLICE_IN = 0                   # SpliceState.phase: file -> pipe
    SPLICE_OUT = 1                  #                    pipe -> socket
    SQE_TRIES = 64                  # submit-and-retry rounds for an SQE slot from the leader

# A pool of provided receive buffers. The buffers live in chunks of
# POOL_BYTES, mmap'd as the pool grows (touched lazily: an idle pool costs
# address space, not memory). Buffer bid is at addr[bid]; with incremental
# consumption the kernel fills it piece by piece, off[bid] is where the next
# piece starts (written by the leader when it harvests), and refs[bid] counts
# the pieces not yet copied out plus REF_DONE once the kernel has finished
# with it: the last copy gives the buffer back to the ring.
#
# Who touches what (two threads at once: the leader harvesting without the
# GIL, pool_piece; a dispatcher with the GIL, pool_release_piece,
# pool_starved, pool_grow):
#   out, refs[bid]  both sides, atomics only: IOCPX_ADD_I32 to change them,
#                   IOCPX_LOAD_I32 (relaxed) to read them; never a plain access
#                   while the buffer may be out (the plain `refs[bid] = 0` in
#                   pool_release_piece runs when the buffer is in nobody's hands)
#   addr[bid], off[bid]  written by one side while the other cannot reach that
#                   buffer: addr by pool_grow before it provides the buffer,
#                   off by the leader while the kernel holds it and by the last
#                   release before it goes back. The hand-over is the ring's
#                   tail (store-release) and, back, a CQE: through the kernel,
#                   so IOCPX_TSAN_RELEASE(g) / IOCPX_TSAN_ACQUIRE(g) show it to
#                   ThreadSanitizer
#   nbufs, tail, starved_ns, nchunks, chunks  dispatch side only (GIL)
#   ring, size, entries, mask, inc  set before the first receive is submitted
cdef struct BufGroup:
    io_uring_buf* ring      # owned: mmap'd ring the kernel takes buffers from
    size_t ring_sz
    char** addr             # owned: malloc'd, entries of them; addr[bid] is a buffer
    uint32_t* off           # owned: malloc'd, entries of them
    int32_t* refs           # owned: malloc'd, entries of them (atomic)
    char* chunks[128]       # owned: mmap'd POOL_BYTES each, nchunks of them
    int nchunks
    uint32_t size           # bytes per buffer
    uint32_t nbufs          # buffers provided so far
    int32_t out             # buffers the kernel has taken and we have not given back (atomic)
    uint32_t entries        # ring size: the most buffers this pool may have
    uint16_t mask
    uint16_t tail           # next free slot (published through ring[0].resv)
    uint8_t inc             # incremental consumption
    uint64_t starved_ns     # when an ENOBUFS last grew the pool (iocpx_now_ns)

# io.extra of an OP_SENDFILE (malloc'd at submit, freed by io_free); the pipe
# is ours until the op finishes, then goes back to the pool or is closed.
cdef struct SpliceState:
    int file_fd             # the engine's descriptor (not owned)
    int sock_fd
    int64_t offset          # next file offset to read
    uint32_t want           # bytes this op should move
    uint32_t moved          # bytes that reached the socket
    uint32_t in_pipe        # bytes sitting in the pipe
    int pipe_r, pipe_w
    int pipe_size
    uint8_t phase           # SPLICE_IN / SPLICE_OUT
    uint8_t cancelled       # the connection is being cancelled: submit no further step
    SpliceState* prev       # the backend's list of ops in progress (guarded by sq_mu)
    SpliceState* next



cdef class IoUringBackend(Backend):
    cdef int ring_fd
    cdef void* sq_ptr           # owned mmap of the SQ ring (and the CQ ring with SINGLE_MMAP)
    cdef size_t sq_sz
    cdef void* cq_ptr           # owned mmap of the CQ ring unless it is sq_ptr
    cdef size_t cq_sz
    cdef io_uring_sqe* sqes     # owned mmap of the SQE array
    cdef size_t sqes_sz
    cdef uint32_t* sq_khead     # kernel-shared ring indices (inside sq_ptr / cq_ptr)
    cdef uint32_t* sq_ktail
    cdef uint32_t* sq_kflags
    cdef uint32_t sq_mask
    cdef uint32_t sq_entries
    cdef uint32_t sq_tail       # our producer index; guarded by sq_mu
    cdef uint32_t* cq_khead
    cdef uint32_t* cq_ktail
    cdef uint32_t cq_mask
    cdef io_uring_cqe* cqes
    cdef BufGroup groups[MAX_GROUPS]     # ngroups (base class) of them in use
    cdef iocpx_mutex_t sq_mu        # serializes SQE production, the splice list and pipe pool
    cdef readonly unsigned setup_flags
    cdef SpliceState* splices       # sendfile ops in progress
    cdef int pipes[PIPE_POOL][2]    # idle pipes (ours)
    cdef int pipe_sizes[PIPE_POOL]
    cdef int npipes
    cdef int inc_group              # the shared incremental pool's id, or -1
    cdef readonly int inc_ok        # incremental consumption: -1 not tried, 0 no, 1 yes

    cdef void* _map(self, size_t size, long long offset) except NULL
    cdef io_uring_sqe* _sqe(self) except NULL
    cdef io_uring_sqe* _slot(self) noexcept nogil
    cdef io_uring_sqe* _slot_nogil(self) noexcept nogil
    cdef void _push(self, io_uring_sqe* sqe, IoCtx* io) noexcept nogil
    cdef int _submit_pending(self) noexcept nogil
