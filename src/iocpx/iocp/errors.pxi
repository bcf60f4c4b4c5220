# The iocp backend's error mapping: Windows and Winsock codes -> errno (the
# negative Event.res), Windows' own messages, the OSError for a code.


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
    if e == <DWORD>WSAESHUTDOWN or e == ERROR_BROKEN_PIPE or e == ERROR_NO_DATA \
            or e == ERROR_PIPE_NOT_CONNECTED:
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


cdef object win_oserror(int err, str what):
    """OSError for -Event.res: errno where Python has one, else winerror."""
    cdef DWORD code
    if err & WINERR_TAG:
        code = <DWORD>(err & 0xFFFFFF)
        msg = f"{what}: {win_message(code)}" if what else win_message(code)
        return OSError(0, msg, None, <int>code)
    if 10000 <= err < 12000:          # a Winsock code: Windows has the words
        msg = f"{what}: {win_message(<DWORD>err)}" if what else win_message(<DWORD>err)
        return OSError(err, msg)
    return oserror(err, what)
