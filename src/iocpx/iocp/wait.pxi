# The completion side on Windows (the leader, without the GIL): events built
# at submit first (the ready list: operations that finished or failed at
# once), then GetQueuedCompletionStatusEx; each packet's IoCtx is found from
# its OVERLAPPED (the first member) and finished per op (finish). Every
# SCAN_MS it also drops first-data accepts whose client stays silent
# (accept.pxi).


cdef int wait_events(IocpBackend be, Event* out, int maxev, long timeout_ms) noexcept nogil:
    """Events from the ready list, else from GetQueuedCompletionStatusEx
    (at most maxev; timeout_ms < 0 waits without limit). Also drops
    first-data accepts whose client stays silent."""
    cdef OVERLAPPED_ENTRY entries[MAX_ENTRIES]
    cdef ULONG got = 0
    cdef int n, i
    cdef DWORD ms, nbytes, flags, err
    cdef BOOL okw
    cdef bint trim
    cdef long left
    cdef IoCtx* io
    cdef uint64_t now, deadline = 0
    if maxev > MAX_ENTRIES:
        maxev = MAX_ENTRIES
    if timeout_ms >= 0:
        deadline = iocpx_now_ns() + <uint64_t>timeout_ms * 1000000
    while True:
        if be.port == NULL:
            return -E_BADF
        now = iocpx_now_ns()
        iocpx_mutex_lock(&be.mu)
        n = evq_take(&be.ready, out, maxev)
        if n == 0:
            be.sleeping = 1
        iocpx_mutex_unlock(&be.mu)
        if n:
            return n
        # how long to sleep: the caller's timeout, or until the next scan
        if timeout_ms >= 0:
            ms = <DWORD>((deadline - now + 999999) // 1000000) if deadline > now else 0
        else:
            ms = INFINITE
        if be.pending != NULL and (ms == INFINITE or ms > SCAN_MS):
            ms = SCAN_MS
        left = -1 if ms == INFINITE else <long>ms
        trim = block_wait_ms(&be.blocks, left) != left
        if trim:                        # idle this long: the receive blocks go back
            ms = BLOCK_IDLE_MS
        okw = GetQueuedCompletionStatusEx(be.port, entries, maxev, &got, ms, False)
        err = GetLastError() if not okw else 0
        if trim and not okw and err == WAIT_TIMEOUT:
            block_trim(&be.blocks)
        iocpx_mutex_lock(&be.mu)
        be.sleeping = 0
        iocpx_mutex_unlock(&be.mu)
        n = 0
        if okw:
            for i in range(<int>got):
                if entries[i].lpOverlapped == NULL:         # KEY_WAKE
                    iocpx_mutex_lock(&be.mu)
                    be.wake_pending = 0
                    iocpx_mutex_unlock(&be.mu)
                    continue
                io = <IoCtx*>entries[i].lpOverlapped        # ovl is the first member
                nbytes = entries[i].dwNumberOfBytesTransferred
                if entries[i].lpCompletionKey == KEY_POLL:
                    poll_finish(be, io, entries[i].Internal, &out[n])    # poll.pxi
                elif io.op == OP_READ or io.op == OP_WRITE:               # pipes.pxi
                    if entries[i].Internal == 0:
                        handle_finish(io, 1, nbytes, 0, &out[n])
                    elif GetOverlappedResult(<HANDLE><size_t>io.aux.handle,
                                             <OVERLAPPED*>&io.ovl, &nbytes, False):
                        handle_finish(io, 1, nbytes, 0, &out[n])
                    else:
                        handle_finish(io, 0, nbytes, GetLastError(), &out[n])
                elif entries[i].lpCompletionKey == KEY_POST or entries[i].Internal == 0:
                    finish(be, io, 1, nbytes, 0, &out[n])
                else:       # the Winsock code for the NTSTATUS in Internal
                    flags = 0
                    if WSAGetOverlappedResult(<SOCKET>io.fd, <OVERLAPPED*>&io.ovl, &nbytes,
                                              False, &flags):
                        finish(be, io, 1, nbytes, 0, &out[n])
                    else:
                        finish(be, io, 0, nbytes, <DWORD>WSAGetLastError(), &out[n])
                n += 1
        elif err != WAIT_TIMEOUT:
            return -E_BADF if err == ERROR_ABANDONED_WAIT_0 or err == ERROR_INVALID_HANDLE \
                else win_errno(err)
        if be.pending != NULL:
            now = iocpx_now_ns()
            if now >= be.next_scan_ns:
                be.next_scan_ns = now + SCAN_MS * 1000000
                accept_scan(be)
        if n:
            return n
        if timeout_ms >= 0 and iocpx_now_ns() >= deadline:
            return 0


cdef void finish(IocpBackend be, IoCtx* io, int ok, DWORD nbytes, DWORD err, Event* ev) noexcept nogil:
    """Turn a finished operation into an event: the post-processing each
    op needs (accept/connect context, the read after a zero-byte receive)."""
    ev.io = io
    ev.flags = 0
    ev.data = NULL
    ev.res = 0
    cdef uint8_t op = io.op
    if op == OP_ACCEPT:
        accept_finish(be, io, ok, nbytes, err, ev)      # accept.pxi
    elif op == OP_RECV:
        recv_finish(be, io, ok, err, ev)                # receive.pxi
    elif op == OP_RECVFROM:
        dgram_finish_recv(io, ok, nbytes, err, ev)      # datagram.pxi
    elif op == OP_CONNECT:
        connect_finish(io, ok, err, ev)                 # connect.pxi
    elif op == OP_WAIT:
        handle_finish(io, ok, nbytes, err, ev)          # pipes.pxi (a posted packet)
    elif op == OP_SENDFILE and not ok and nbytes > 0:
        ev.res = <int32_t>nbytes        # what went out before the error: the engine counts it
                                        # (FileJob.offset) and its next piece meets the error
    else:       # OP_SEND, OP_SENDFILE, posted packets
        ev.res = <int32_t>nbytes if ok else win_errno(err)
