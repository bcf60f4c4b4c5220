# Errors: the exceptions iocpx raises, and the one place that turns a failure
# caused by the peer or the network into the exception on_close receives,
# the same on every backend (docs/guide.md, "What you can rely on").

class ConnectionClosedError(ConnectionError):
    """Raised on use of a connection, listener, engine or port that the
    application itself closed (or after on_close was delivered)."""


class SendBufferFull(BlockingIOError):
    """send() would queue more than max_send_buffer + max(max_send_buffer, 8 MiB)
    bytes: wait for on_drain."""


def _closed_error(what):
    return ConnectionClosedError(_errno.EPIPE, f"{what} is closed")


# errno values (Python's own: on Windows these are the WSA codes the iocp
# backend maps its results to) that mean "the peer or the network broke the
# connection". Such failures are reported once, through on_close, never
# raised by send() and friends, and never logged above DEBUG.
cdef frozenset _RESET_ERRNOS = frozenset(
    e for e in (getattr(_errno, n, None) for n in ("ECONNRESET", "EPIPE", "ECONNABORTED", "ENETRESET",
                                                     "ESHUTDOWN", "ENOTCONN"))
    if e is not None)
cdef frozenset _NET_ERRNOS = frozenset(
    e for e in (getattr(_errno, n, None) for n in ("ETIMEDOUT", "ECONNREFUSED", "ENETUNREACH",
                                                     "EHOSTUNREACH", "ENETDOWN", "EHOSTDOWN"))
    if e is not None) | _RESET_ERRNOS


cdef int _E_NOTSOCK = getattr(_errno, "ENOTSOCK", -1)


cdef object peer_error(Backend be, int err, str what):
    """The exception on_close receives for a failed operation (err: errno).

    A reset is a ConnectionResetError whatever the kernel said (ECONNRESET on
    a receive, EPIPE or ECONNABORTED on a send, WSAECONNABORTED on Windows), so
    a program sees the same type on every backend for the same event; the
    message keeps the kernel's own word. Everything else is the OSError subclass
    Python picks for the errno (ConnectionRefusedError, TimeoutError, ...),
    with winerror where Windows has no errno for it."""
    if err in _RESET_ERRNOS:
        name = _errno.errorcode.get(err, str(err))
        return ConnectionResetError(_errno.ECONNRESET,
                                    f"{what}: connection reset by peer ({name})")
    if err == _errno.EBADF or err == _E_NOTSOCK:
        return OSError(err, f"{what}: {strerror(err)} (the descriptor was closed outside "
                            f"iocpx? once adopted or listened on, a socket belongs to the engine)")
    return be.error(err, what)


cdef bint is_peer_failure(object exc):
    """True for the failures a peer or the network causes (logged at DEBUG)."""
    return isinstance(exc, OSError) and exc.errno in _NET_ERRNOS


cdef int64_t _faults_total = 0     # internal errors in every engine of the process


cdef inline void engine_fault(Engine eng) noexcept:
    """Count an internal error (a bug in iocpx or its backend, not the peer's
    or the application's): stats()["internal_errors"], and process-wide for
    the test suite, which fails any test that causes one."""
    global _faults_total
    eng.n_errors += 1
    _faults_total += 1


def _internal_errors():
    """Internal errors counted by every engine in this process (tests)."""
    return _faults_total
