# io_uring receive pools: provided-buffer rings the kernel picks receive
# buffers from (multishot receive), shared by every connection. See the
# module docstring for the two kinds (incremental, per size) and BufGroup in
# _io_uring.pxd for the bookkeeping.

cdef inline char* pool_piece(BufGroup* g, io_uring_cqe* c) noexcept nogil:
    """(Leader) where the data of a receive completion is, and one more
    piece of its buffer waiting to be copied out."""
    cdef uint16_t bid = <uint16_t>(c.flags >> EV_BUFFER_SHIFT)
    cdef char* p = g.addr[bid]
    cdef int32_t add = 1 + REF_DONE
    IOCPX_TSAN_ACQUIRE(g)           # addr/off of this buffer: written before it went to the ring
    if not g.inc or g.off[bid] == 0:
        IOCPX_ADD_I32(&g.out, 1)    # the first piece of a buffer: it left the ring
    if g.inc:
        p += g.off[bid]
        if c.res > 0:
            g.off[bid] += c.res
        if c.flags & CQE_F_BUF_MORE:
            add = 1                 # the kernel goes on filling this buffer
    IOCPX_ADD_I32(&g.refs[bid], add)
    return p

cdef void pool_release_piece(BufGroup* g, uint16_t bid) noexcept:
    """A piece was copied out (GIL held: dispatch serializes the ring's
    producer side): the last one gives the buffer back to the kernel."""
    cdef io_uring_buf* slot
    if IOCPX_ADD_I32(&g.refs[bid], -1) != REF_DONE:
        return
    g.refs[bid] = 0
    g.off[bid] = 0
    IOCPX_ADD_I32(&g.out, -1)
    slot = &g.ring[g.tail & g.mask]
    slot.addr = <uint64_t><size_t>g.addr[bid]
    slot.len = g.size
    slot.bid = bid
    g.tail += 1
    IOCPX_TSAN_RELEASE(g)           # pool_piece's acquire: the buffer comes back through the kernel
    IOCPX_STORE_REL_U16(&g.ring[0].resv, g.tail)   # the ring's tail overlays bufs[0].resv

cdef int pool_new(IoUringBackend be, uint32_t size, bint inc) except -2:
    """Make and register a pool; its id, or -1 when the kernel refuses
    incremental consumption (inc=1) so the caller falls back."""
    if be.ngroups >= MAX_GROUPS:
        raise ValueError(f"too many distinct buffer sizes (at most {MAX_GROUPS})")
    cdef int gid = be.ngroups
    cdef BufGroup* g = &be.groups[gid]
    cdef uint32_t entries = 1
    cdef iocpx_buf_reg reg
    cdef long r
    while entries < 32768 and <uint64_t>entries * 2 * size <= POOL_MAX:
        entries *= 2
    memset(g, 0, sizeof(BufGroup))
    g.size = size
    g.entries = entries
    g.mask = <uint16_t>(entries - 1)
    g.inc = inc
    g.ring_sz = entries * sizeof(io_uring_buf)
    if IOCPX_FAULT(IOCPX_F_ALLOC_POOL):
        g.ring = <io_uring_buf*>MAP_FAILED
        iocpx_set_errno(ENOMEM)
    else:
        g.ring = <io_uring_buf*>mmap(NULL, g.ring_sz, PROT_READ | PROT_WRITE,
                                     MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
    if <void*>g.ring == MAP_FAILED:
        g.ring = NULL
        raise oserror(errno, "mmap buffer ring")
    g.addr = <char**>calloc(entries, sizeof(char*))
    g.off = <uint32_t*>calloc(entries, sizeof(uint32_t))
    g.refs = <int32_t*>calloc(entries, sizeof(int32_t))
    if g.addr == NULL or g.off == NULL or g.refs == NULL:
        pool_free(be, g, -1)
        raise MemoryError()
    memset(&reg, 0, sizeof(reg))
    reg.ring_addr = <uint64_t><size_t>g.ring
    reg.ring_entries = entries
    reg.bgid = <uint16_t>gid
    reg.flags = IOU_PBUF_RING_INC if inc else 0
    r = syscall(__NR_io_uring_register, be.ring_fd, IORING_REGISTER_PBUF_RING, &reg, 1)
    if r < 0:
        err = errno
        pool_free(be, g, -1)
        if inc and err == EINVAL:
            return -1
        raise oserror(err, "io_uring provided buffer ring")
    be.ngroups += 1
    try:
        pool_grow(g)
    except BaseException:
        be.ngroups -= 1
        pool_free(be, g, gid)
        raise
    return gid

cdef int pool_plain(IoUringBackend be, uint32_t size) except -1:
    """A non-incremental pool of buffers of exactly size bytes, made on first
    use and shared by every receive that asks for that size. For receives
    that need a whole buffer each: a datagram's buffer holds its
    io_uring_recvmsg_out header, address and payload (io_uring/datagram.pxi),
    which the shared incremental pool cannot give."""
    cdef int i
    for i in range(be.ngroups):
        if not be.groups[i].inc and be.groups[i].size == size:
            return i
    return pool_new(be, size, 0)

cdef int pool_starved(BufGroup* g) except -1:
    """A receive ended for want of buffers (ENOBUFS). Grow the pool if it is
    nearly all out now, or if it has not grown for STARVED_GAP_NS: by the time
    the ENOBUFS is dispatched, the completions before it have usually given
    buffers back, yet receives keep ending for want of them while the pool
    is smaller than what is in flight (1,000 connections x 4 KiB with the
    first 1 MiB: the pool never grew and those receives ended over and
    over). One burst of ENOBUFS grows it once. Past STARVED_SOFT_MAX only
    a pool that is nearly all out grows: a larger pool than that is colder
    memory for every receive (1,000 x 64 KiB cost 10% more with a 64 MiB
    pool than with the kernel holding the data until buffers come back).
    1: grown, 0: not now, 2: at its limit."""
    cdef uint64_t now = iocpx_now_ns()
    if (IOCPX_LOAD_I32(&g.out) >= <int32_t>g.nbufs - (g.nbufs // 8)   # the leader adds to out
            or (now - g.starved_ns >= STARVED_GAP_NS
                and <uint64_t>g.nbufs * g.size < STARVED_SOFT_MAX)):
        g.starved_ns = now
        return pool_grow(g) or 2
    return 0

cdef int pool_grow(BufGroup* g) except -1:
    """Provide one more chunk (POOL_BYTES) of buffers, up to g.entries
    buffers (GIL held). 0 when the pool is at its limit."""
    cdef uint32_t n = POOL_BYTES // g.size
    cdef uint32_t j, bid
    cdef char* mem
    cdef io_uring_buf* slot
    if n == 0:
        n = 1
    if g.nbufs + n > g.entries or g.nchunks >= 128:
        return 0
    if IOCPX_FAULT(IOCPX_F_ALLOC_POOL_CHUNK):
        raise oserror(ENOMEM, "mmap receive buffers")
    mem = <char*>mmap(NULL, POOL_BYTES, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
    if <void*>mem == MAP_FAILED:
        raise oserror(errno, "mmap receive buffers")
    g.chunks[g.nchunks] = mem
    g.nchunks += 1
    for j in range(n):
        bid = g.nbufs + j
        g.addr[bid] = mem + <size_t>j * g.size
        slot = &g.ring[g.tail & g.mask]
        slot.addr = <uint64_t><size_t>g.addr[bid]
        slot.len = g.size
        slot.bid = <uint16_t>bid
        g.tail += 1
    g.nbufs += n
    IOCPX_TSAN_RELEASE(g)           # pool_piece's acquire: addr[] reaches the leader through the kernel
    IOCPX_STORE_REL_U16(&g.ring[0].resv, g.tail)
    return 1

cdef void pool_free(IoUringBackend be, BufGroup* g, int gid) noexcept:
    """Unregister (gid >= 0) and unmap a pool. Only once no receive is pending."""
    cdef iocpx_buf_reg reg
    cdef int c
    if gid >= 0 and be.ring_fd >= 0:
        memset(&reg, 0, sizeof(reg))
        reg.bgid = <uint16_t>gid
        syscall(__NR_io_uring_register, be.ring_fd, IORING_UNREGISTER_PBUF_RING, &reg, 1)
    if g.ring != NULL:
        munmap(g.ring, g.ring_sz)
        g.ring = NULL
    for c in range(g.nchunks):
        munmap(g.chunks[c], POOL_BYTES)
    g.nchunks = 0
    free(g.addr)
    free(g.off)
    free(g.refs)
    g.addr = NULL
    g.off = NULL
    g.refs = NULL


cdef int pool_group(IoUringBackend be, uint32_t size) except -1:
    """The receive pool for receives of up to size bytes: the shared
    incremental pool where the kernel has it, else one pool per size."""
    cdef int i
    if be.inc_group >= 0:
        return be.inc_group
    if be.inc_ok != 0:
        i = pool_new(be, INC_BUF, 1)
        if i >= 0:
            be.inc_ok = 1
            be.inc_group = i
            return i
        be.inc_ok = 0             # this kernel has no incremental consumption
    return pool_plain(be, size)
