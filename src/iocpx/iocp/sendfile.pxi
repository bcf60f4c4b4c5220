# sendfile on Windows: TransmitFile, the model's step 13, from the file's
# HANDLE (the CRT descriptor's) at an offset carried in the OVERLAPPED.


cdef int sendfile_submit(IocpBackend be, IoCtx* io, int file_fd, int64_t offset, uint32_t nbytes) except -1:
    """TransmitFile of nbytes from the CRT descriptor file_fd at offset."""
    be._check_open()
    import msvcrt
    cdef HANDLE fh = <HANDLE><size_t>msvcrt.get_osfhandle(file_fd)
    cdef int err = 0
    memset(&io.ovl, 0, sizeof(OVERLAPPED))
    (<OVERLAPPED*>&io.ovl).Offset = <DWORD>(offset & 0xFFFFFFFF)
    (<OVERLAPPED*>&io.ovl).OffsetHigh = <DWORD>(offset >> 32)
    if nbytes > 0x7FFFFFFE:
        nbytes = 0x7FFFFFFE
    cdef BOOL ok = False
    if not fails_now(IOCPX_F_SYS_TRANSMITFILE, &err):
        ok = pTransmitFile(<SOCKET>io.fd, fh, nbytes, 0, <OVERLAPPED*>&io.ovl, NULL, 0)
        if not ok:
            err = WSAGetLastError()
    return be._submitted(io, ok, 0, err)
