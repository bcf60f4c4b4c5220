# The completion side on io_uring (the leader, without the GIL): submit what
# is queued and wait in one io_uring_enter, run completion work the kernel
# queued for us (COOP_TASKRUN), then harvest the completion queue into events:
# a receive's piece of buffer (receive.pxi), a splice step of a sendfile
# (sendfile.pxi), or the completion as it is.


cdef int wait_events(IoUringBackend be, Event* out, int maxev, long timeout_ms) noexcept nogil:
    """Submit what is queued, wait for at least one completion (or the
    timeout; < 0 means none) and copy up to maxev of them into out."""
    cdef int n, r
    cdef uint32_t pending
    cdef io_uring_getevents_arg arg
    cdef __kernel_timespec ts
    while True:
        n = harvest(be, out, maxev)
        pending = IOCPX_LOAD_ACQ_U32(be.sq_ktail) - IOCPX_LOAD_ACQ_U32(be.sq_khead)
        if n > 0:
            if pending:
                sys_enter(be.ring_fd, pending, 0, 0, NULL, 0)
            return n
        if IOCPX_LOAD_ACQ_U32(be.sq_kflags) & (IORING_SQ_TASKRUN | IORING_SQ_CQ_OVERFLOW):
            # completion work waits for us: run it, then look again
            r = sys_enter(be.ring_fd, pending, 0, IORING_ENTER_GETEVENTS, NULL, 0)
            if r >= 0 or r == -EINTR or r == -EAGAIN or r == -EBUSY:
                n = harvest(be, out, maxev)
                if n > 0:
                    return n
                pending = IOCPX_LOAD_ACQ_U32(be.sq_ktail) - IOCPX_LOAD_ACQ_U32(be.sq_khead)
        if timeout_ms >= 0:
            memset(&arg, 0, sizeof(arg))
            ts.tv_sec = timeout_ms // 1000
            ts.tv_nsec = (timeout_ms % 1000) * 1000000
            arg.ts = <uint64_t><size_t>&ts
            r = sys_enter(be.ring_fd, pending, 1, IORING_ENTER_GETEVENTS | IORING_ENTER_EXT_ARG,
                          &arg, sizeof(arg))
        else:
            r = sys_enter(be.ring_fd, pending, 1, IORING_ENTER_GETEVENTS, NULL, 0)
        if IOCPX_FAULT(IOCPX_F_SYS_URING_WAIT):
            r = -EINTR              # a signal: the wait ends early, whatever it did
        if r < 0:
            if r == -ETIME:
                return harvest(be, out, maxev)
            if r != -EINTR and r != -EAGAIN and r != -EBUSY:
                return r
        elif r < <int>pending:
            continue      # only part was submitted (another thread raced us): we did not wait
        if timeout_ms >= 0:
            return harvest(be, out, maxev)


cdef inline int harvest(IoUringBackend be, Event* out, int maxev) noexcept nogil:
    """Copy up to maxev completions from the CQ ring into out."""
    cdef uint32_t head = be.cq_khead[0]
    cdef uint32_t tail = IOCPX_LOAD_ACQ_U32(be.cq_ktail)
    cdef int n = 0
    cdef int result
    cdef io_uring_cqe* c
    cdef IoCtx* io
    while head != tail and n < maxev:
        c = &be.cqes[head & be.cq_mask]
        head += 1
        io = <IoCtx*><size_t>c.user_data
        IOCPX_TSAN_ACQUIRE(io)      # filled by the thread that submitted it (_push)
        if c.flags & EV_BUFFER:
            ev_set(&out[n], io, c.res, c.flags, pool_piece(&be.groups[io.group], c))
        elif io.op == OP_SENDFILE and io.extra != NULL:
            if not splice_step(be, io, c.res, &result):
                continue                # its next step is on its way
            ev_set(&out[n], io, result, 0, NULL)
        else:
            ev_set(&out[n], io, c.res, c.flags, NULL)
        n += 1
    IOCPX_STORE_REL_U32(be.cq_khead, head)
    return n
