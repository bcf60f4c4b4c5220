# The iocp backend's process-wide state and error mapping: the extension
# functions (resolved once), Windows/Winsock codes -> errno, messages.


cdef LPFN_ACCEPTEX pAcceptEx = NULL
cdef LPFN_CONNECTEX pConnectEx = NULL
cdef LPFN_GETACCEPTEXSOCKADDRS pGetAcceptExSockAddrs = NULL
cdef LPFN_TRANSMITFILE pTransmitFile = NULL
cdef int g_skip_ok = -1         # FILE_SKIP_COMPLETION_PORT_ON_SUCCESS safe (-1: not checked)

# Python's errno values (on Windows ECONNRESET etc. are the WSA codes, and
# ECANCELED/EMFILE are the CRT's): read from the errno module, not errno.h.
cdef int E_CANCELED = _errno.ECANCELED
cdef int E_CONNRESET = _errno.ECONNRESET
cdef int E_CONNREFUSED = _errno.ECONNREFUSED
cdef int E_CONNABORTED = _errno.ECONNABORTED
cdef int E_TIMEDOUT = _errno.ETIMEDOUT
cdef int E_NETUNREACH = _errno.ENETUNREACH
cdef int E_HOSTUNREACH = _errno.EHOSTUNREACH
cdef int E_MFILE = _errno.EMFILE
cdef int E_NOBUFS = _errno.ENOBUFS
cdef int E_PIPE = _errno.EPIPE
cdef int E_NOTCONN = _errno.ENOTCONN
cdef int E_BADF = _errno.EBADF
cdef int E_INVAL = _errno.EINVAL
cdef int E_ADDRINUSE = _errno.EADDRINUSE
cdef int E_ADDRNOTAVAIL = _errno.EADDRNOTAVAIL
cdef int E_ACCES = _errno.EACCES
cdef int E_AGAIN = _errno.EAGAIN
cdef int E_NETDOWN = _errno.ENETDOWN


cdef int win_errno(DWORD e) noexcept nogil:
    """The negative Event.res for a Windows / Winsock error code."""
    if e == ERROR_OPERATION_ABORTED or e == <DWORD>WSA_OPERATION_ABORTED:
        return -E_CANCELED
    if e == ERROR_NETNAME_DELETED or e == <DWORD>WSAECONNRESET or e == <DWORD>WSAENETRESET:
        return -E_CONNRESET
    if e == <DWORD>WSAECONNREFUSED or e == ERROR_CONNECTION_REFUSED or e == ERROR_PORT_UNREACHABLE:
        return -E_CONNREFUSED
    if e == <DWORD>WSAECONNABORTED or e == ERROR_CONNECTION_ABORTED or e == ERROR_REQUEST_ABORTED \
            or e == <DWORD>WSAEDISCON:
        return -E_CONNABORTED
    if e == <DWORD>WSAETIMEDOUT or e == ERROR_SEM_TIMEOUT:
        return -E_TIMEDOUT
    if e == <DWORD>WSAENETUNREACH or e == ERROR_NETWORK_UNREACHABLE:
        return -E_NETUNREACH
    if e == <DWORD>WSAEHOSTUNREACH or e == ERROR_HOST_UNREACHABLE:
        return -E_HOSTUNREACH
    if e == <DWORD>WSAEMFILE or e == ERROR_TOO_MANY_OPEN_FILES:
        return -E_MFILE
    if e == <DWORD>WSAENOBUFS or e == ERROR_NOT_ENOUGH_MEMORY or e == ERROR_NO_SYSTEM_RESOURCES:
        return -E_NOBUFS
    if e == <DWORD>WSAESHUTDOWN or e == ERROR_BROKEN_PIPE:
        return -E_PIPE
    if e == <DWORD>WSAENOTCONN:
        return -E_NOTCONN
    if e == <DWORD>WSAENOTSOCK or e == <DWORD>WSAEBADF or e == ERROR_INVALID_HANDLE:
        return -E_BADF
    if e == <DWORD>WSAEINVAL or e == ERROR_INVALID_PARAMETER:
        return -E_INVAL
    if e == <DWORD>WSAEADDRINUSE:
        return -E_ADDRINUSE
    if e == <DWORD>WSAEADDRNOTAVAIL:
        return -E_ADDRNOTAVAIL
    if e == <DWORD>WSAEACCES or e == ERROR_ACCESS_DENIED:
        return -E_ACCES
    if e == <DWORD>WSAEWOULDBLOCK:
        return -E_AGAIN
    if e == <DWORD>WSAENETDOWN:
        return -E_NETDOWN
    return -<int>(WINERR_TAG | (e & 0xFFFFFF))


cdef str win_message(DWORD code):
    """Windows' own text for an error code (FormatMessageW)."""
    cdef wchar_t buf[512]
    cdef DWORD n = FormatMessageW(FORMAT_MESSAGE_FROM_SYSTEM | FORMAT_MESSAGE_IGNORE_INSERTS,
                                  NULL, code, 0, buf, 512, NULL)
    while n > 0 and (buf[n - 1] == c'\n' or buf[n - 1] == c'\r' or buf[n - 1] == c' ' or buf[n - 1] == c'.'):
        n -= 1
    if n == 0:
        return f"Windows error {code}"
    return PyUnicode_FromWideChar(buf, n)


cdef object win_error(DWORD code, str what):
    """The OSError for a Windows code right after a failed call (winerror set)."""
    cdef int neg = win_errno(code)
    msg = f"{what}: {win_message(code)}" if what else win_message(code)
    if neg == -E_CANCELED:
        return OSError(E_CANCELED, msg)
    return OSError(0, msg, None, <int>code)


cdef int resolve_extensions() except -1:
    """Resolve AcceptEx, ConnectEx, GetAcceptExSockAddrs and TransmitFile once
    per process, and decide whether skipping completions on success is safe."""
    global pAcceptEx, pConnectEx, pGetAcceptExSockAddrs, pTransmitFile, g_skip_ok
    if pAcceptEx != NULL and pConnectEx != NULL and pGetAcceptExSockAddrs != NULL \
            and pTransmitFile != NULL and g_skip_ok >= 0:
        return 0
    cdef WSADATA wsa
    if WSAStartup(MAKEWORD(2, 2), &wsa) != 0:
        raise win_error(WSAGetLastError(), "WSAStartup")
    cdef SOCKET s = WSASocketW(AF_INET, SOCK_STREAM, IPPROTO_TCP, NULL, 0, WSA_FLAG_OVERLAPPED)
    if s == INVALID_SOCKET:
        raise win_error(WSAGetLastError(), "WSASocketW")
    cdef DWORD got = 0
    cdef WSAPROTOCOL_INFOW info
    cdef int ilen = sizeof(info)
    try:
        if WSAIoctl(s, SIO_GET_EXTENSION_FUNCTION_POINTER, &iocpx_WSAID_ACCEPTEX, sizeof(GUID),
                    &pAcceptEx, sizeof(pAcceptEx), &got, NULL, NULL) != 0:
            raise win_error(WSAGetLastError(), "WSAIoctl(AcceptEx)")
        if WSAIoctl(s, SIO_GET_EXTENSION_FUNCTION_POINTER, &iocpx_WSAID_CONNECTEX, sizeof(GUID),
                    &pConnectEx, sizeof(pConnectEx), &got, NULL, NULL) != 0:
            raise win_error(WSAGetLastError(), "WSAIoctl(ConnectEx)")
        if WSAIoctl(s, SIO_GET_EXTENSION_FUNCTION_POINTER, &iocpx_WSAID_GETACCEPTEXSOCKADDRS,
                    sizeof(GUID), &pGetAcceptExSockAddrs, sizeof(pGetAcceptExSockAddrs),
                    &got, NULL, NULL) != 0:
            raise win_error(WSAGetLastError(), "WSAIoctl(GetAcceptExSockAddrs)")
        if WSAIoctl(s, SIO_GET_EXTENSION_FUNCTION_POINTER, &iocpx_WSAID_TRANSMITFILE, sizeof(GUID),
                    &pTransmitFile, sizeof(pTransmitFile), &got, NULL, NULL) != 0:
            raise win_error(WSAGetLastError(), "WSAIoctl(TransmitFile)")
        # Skipping the completion packet on immediate success is only safe
        # when the base provider hands out IFS handles (no layered provider).
        memset(&info, 0, sizeof(info))
        if getsockopt(s, SOL_SOCKET, SO_PROTOCOL_INFOW, <char*>&info, &ilen) == 0:
            g_skip_ok = 1 if (info.dwServiceFlags1 & XP1_IFS_HANDLES) else 0
        else:
            g_skip_ok = 0
        if _os.environ.get("IOCPX_IOCP_SKIP_ON_SUCCESS") == "0":
            g_skip_ok = 0
    finally:
        closesocket(s)
    return 0
