# Datagrams (UDP) on io_uring. Receiving: one multishot IORING_OP_RECVMSG per
# endpoint, into a plain (non-incremental) provided-buffer pool: every
# datagram takes a whole buffer, which the kernel fills as
#
#   io_uring_recvmsg_out | sender (DG_NAME bytes) | control (IOCPX_DG_CTRL) | payload
#
# so the sender's address travels inside the buffer, next to the data (the
# 28-byte IoCtx.addr could hold it, but one multishot op delivers many
# datagrams). The control room carries the kernel's drop counter
# (SO_RXQ_OVFL). The buffer goes back to the ring at dgram_done, right after
# dispatch copied the payload out. A pool that runs dry ends the multishot
# op with ENOBUFS: the pool grows (up to POOL_MAX) and the engine re-arms it;
# meanwhile datagrams wait in the socket's receive buffer, and what does not
# fit there the kernel drops and counts.
#
# Sending: one IORING_OP_SENDMSG per datagram; its msghdr and iovec live in
# io.extra (malloc'd here, freed by io_free) until the completion.

cdef enum:
    DG_OUT = 16             # sizeof(io_uring_recvmsg_out)
    DG_NAME = 28            # room for the sender: sizeof(sockaddr_in6)

cdef struct DgramSend:      # io.extra of an OP_SENDTO (freed by io_free)
    msghdr msg
    iovec iov


cdef inline int dg_head() noexcept nogil:
    """Bytes before the payload in each datagram buffer."""
    return DG_OUT + DG_NAME + IOCPX_DG_CTRL


cdef int dgram_group_io_uring(IoUringBackend be, uint32_t size) except -1:
    """The pool for datagrams of up to size bytes: size plus the header room."""
    return pool_plain(be, size + <uint32_t>dg_head())


cdef int dgram_submit_recv(IoUringBackend be, IoCtx* io) except -1:
    """Arm a multishot RECVMSG (re-armed with the same context when it ends)."""
    cdef msghdr* msg = <msghdr*>io.extra
    cdef io_uring_sqe* sqe
    if msg == NULL:
        msg = NULL if IOCPX_FAULT(IOCPX_F_ALLOC_DG_MSG) else <msghdr*>calloc(1, sizeof(msghdr))      # freed by io_free
        if msg == NULL:
            raise MemoryError()
        io.extra = msg
    msg.msg_namelen = DG_NAME       # the layout of every buffer: see the top of this file
    msg.msg_controllen = IOCPX_DG_CTRL
    sqe = be._sqe()
    sqe.opcode = IORING_OP_RECVMSG
    sqe.fd = io.fd
    sqe.addr = <uint64_t><size_t>msg
    sqe.len = 1
    sqe.ioprio = IORING_RECV_MULTISHOT
    sqe.flags = IOSQE_BUFFER_SELECT
    sqe.buf_group = io.group
    be._push(sqe, io)
    return 0


cdef int dgram_submit_send(IoUringBackend be, IoCtx* io) except -1:
    """One SENDMSG of io.len bytes at io.buf (kept alive by io.obj) to io.addr."""
    cdef DgramSend* st = <DgramSend*>io.extra
    cdef io_uring_sqe* sqe
    if st == NULL:
        st = NULL if IOCPX_FAULT(IOCPX_F_ALLOC_DG_MSG) else <DgramSend*>malloc(sizeof(DgramSend))     # freed by io_free
        if st == NULL:
            raise MemoryError()
        io.extra = st
    memset(&st.msg, 0, sizeof(msghdr))
    st.iov.iov_base = io.buf
    st.iov.iov_len = <size_t>io.len
    if io.addrlen:
        st.msg.msg_name = &io.addr
        st.msg.msg_namelen = io.addrlen
    st.msg.msg_iov = &st.iov
    st.msg.msg_iovlen = 1
    sqe = be._sqe()
    sqe.opcode = IORING_OP_SENDMSG
    sqe.fd = io.fd
    sqe.addr = <uint64_t><size_t>&st.msg
    sqe.len = 1
    be._push(sqe, io)
    return 0


cdef int dgram_view_io_uring(IoUringBackend be, Event* ev, Datagram* out) except -1:
    """The datagram in a RECVMSG completion's buffer (see the layout above)."""
    cdef BufGroup* g = &be.groups[ev.io.group]
    cdef char* base
    cdef io_uring_recvmsg_out* h
    cdef Py_ssize_t room
    if not (ev.flags & EV_BUFFER):
        if ev.res == -ENOBUFS and pool_starved(g) == 2:     # the multishot op ended for
            out.flags = DG_NOBUF                            # want of buffers, none to add
        return 0
    base = <char*>ev.data
    h = <io_uring_recvmsg_out*>base
    room = ev.res - dg_head()       # payload bytes that fit in the buffer
    if room < 0:
        room = 0
    out.data = base + dg_head()
    out.len = h.payloadlen if h.payloadlen < room else room
    out.flags = DG_TRUNC if (h.flags & MSG_TRUNC) or h.payloadlen > room else 0
    out.name = <sockaddr*>(base + DG_OUT) if h.namelen > 0 else NULL
    out.namelen = h.namelen if h.namelen < DG_NAME else DG_NAME
    out.drops = iocpx_cmsg_drops(base + DG_OUT + DG_NAME, h.controllen) if h.controllen else -1
    return 1


cdef void dgram_done_io_uring(IoUringBackend be, Event* ev) noexcept:
    """The buffer of a datagram goes back to the ring (once per event)."""
    if ev.flags & EV_BUFFER:
        pool_release_piece(&be.groups[ev.io.group], <uint16_t>(ev.flags >> EV_BUFFER_SHIFT))
        ev.flags &= ~(<uint32_t>EV_BUFFER)
