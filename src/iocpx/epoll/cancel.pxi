# Cancelling on epoll: nothing is in the kernel, so a cancel takes the ops
# out of their descriptor's slots and completes them with -ECANCELED through
# the ready list, then completes itself (-ENOENT when nothing was found).


cdef int cancel_fd(EpollBackend be, IoCtx* io, int fd) except -1:
    cdef int n = 0
    cdef FdState* st
    cdef IoCtx* a
    cdef IoCtx* nxt
    iocpx_mutex_lock(&be.mu)
    st = be._state(fd)
    if st != NULL:
        if st.recv != NULL:
            be._ready(st.recv, -ECANCELED, 0)
            st.recv = NULL
            n += 1
        if st.send != NULL:
            be._ready(st.send, -ECANCELED, 0)
            st.send = NULL
            n += 1
        if st.conn != NULL:
            be._ready(st.conn, -ECANCELED, 0)
            st.conn = NULL
            n += 1
        if st.poll != NULL:
            be._ready(st.poll, -ECANCELED, 0)
            st.poll = NULL
            n += 1
        a = st.acc_head
        while a != NULL:
            nxt = a.aux.next_accept
            be._ready(a, -ECANCELED, 0)
            a = nxt
            n += 1
        st.acc_head = st.acc_tail = NULL
        be._interest(fd, st)
    be._ready(io, n if n else -ENOENT, 0)
    iocpx_mutex_unlock(&be.mu)
    return 0


cdef int cancel_op(EpollBackend be, IoCtx* io, IoCtx* target) except -1:
    cdef int found = 0
    cdef FdState* st
    cdef IoCtx* a
    cdef IoCtx* prev = NULL
    iocpx_mutex_lock(&be.mu)
    st = be._state(target.fd)
    if st != NULL:
        if st.recv == target:
            st.recv = NULL
            found = 1
        elif st.send == target:
            st.send = NULL
            found = 1
        elif st.conn == target:
            st.conn = NULL
            found = 1
        elif st.poll == target:
            st.poll = NULL
            found = 1
        else:
            a = st.acc_head
            while a != NULL:
                if a == target:
                    if prev == NULL:
                        st.acc_head = a.aux.next_accept
                    else:
                        prev.aux.next_accept = a.aux.next_accept
                    if st.acc_tail == a:
                        st.acc_tail = prev
                    found = 1
                    break
                prev = a
                a = a.aux.next_accept
        if found:
            be._ready(target, -ECANCELED, 0)
            be._interest(target.fd, st)
    be._ready(io, 0 if found else -ENOENT, 0)
    iocpx_mutex_unlock(&be.mu)
    return 0
