# Sending on Windows: WSASend from the engine's buffer (kept alive by the
# context until the completion); a partial completion returns the bytes sent
# and the engine resubmits the rest.


cdef int send_submit(IocpBackend be, IoCtx* io) except -1:
    be._check_open()
    cdef WSABUF wb
    cdef DWORD got = 0
    cdef int r = SOCKET_ERROR, err = 0
    wb.len = <ULONG>(io.len if io.len < 0x40000000 else 0x40000000)
    wb.buf = io.buf             # points into io.obj, kept alive by the context
    memset(&io.ovl, 0, sizeof(OVERLAPPED))
    if not fails_now(IOCPX_F_SYS_WSASEND, &err):
        r = WSASend(<SOCKET>io.fd, &wb, 1, &got, 0, <OVERLAPPED*>&io.ovl, NULL)
        if r != 0:
            err = WSAGetLastError()
    return be._submitted(io, r == 0, got, err)
