# Addresses and argument checks: the one place that touches the socket
# module's address API, and the validation every public call shares.

cdef tuple _check_address(object address):
    if not isinstance(address, tuple) or len(address) < 2:
        raise TypeError(f"address must be a (host, port) tuple or a Unix socket path "
                        f"(with a '/': './name.sock'), not {address!r}")
    host, port = address[0], address[1]
    if host is not None and not isinstance(host, str):
        raise TypeError(f"host must be a str, not {type(host).__name__}")
    if isinstance(port, bool) or not isinstance(port, int):
        raise TypeError(f"port must be an int, not {type(port).__name__}")
    if not 0 <= port <= 65535:
        raise ValueError(f"port must be in 0..65535, got {port}")
    return host, port


cdef tuple _resolve(object address, bint passive):
    """(family, sockaddr tuple) of the first stream address for (host, port)."""
    host, port = _check_address(address)
    if host == "":
        host = None
    flags = _socket.AI_PASSIVE if passive else 0
    infos = _socket.getaddrinfo(host, port, 0, _socket.SOCK_STREAM, 0, flags)
    for family, _t, _p, _c, sa in infos:
        if family in (_socket.AF_INET, _socket.AF_INET6):
            return family, sa
    raise OSError(_errno.EAFNOSUPPORT, f"no IPv4/IPv6 address for {address!r}")


cdef int _fill_addr(iocpx_addr_t* a, int family, tuple sa) except -1:
    packed = _socket.inet_pton(family, sa[0])
    cdef uint32_t flow = 0, scope = 0
    if family == _socket.AF_INET6:
        flow, scope = sa[2], sa[3]
    return iocpx_addr_fill(a, family, <const char*>packed, sa[1], flow, scope)


cdef tuple _addr_tuple(iocpx_addr_t* a):
    cdef char ip[16]
    cdef int family = 0
    cdef unsigned port = 0
    cdef int n = iocpx_addr_split(a, &family, ip, &port)
    if n == 0:
        return None
    return (_socket.inet_ntop(family, ip[:n]), port)


cdef object _check_callback(object fn, str name):
    if fn is not None and not callable(fn):
        raise TypeError(f"{name} must be callable or None, not {type(fn).__name__}")
    return fn


cdef int _check_recv_into(object on_recv, object get_buffer, object on_recv_into) except -1:
    """The receive-into callbacks: both or neither, and not with on_recv."""
    _check_callback(get_buffer, "get_buffer")
    _check_callback(on_recv_into, "on_recv_into")
    if (get_buffer is None) != (on_recv_into is None):
        raise ValueError("get_buffer= and on_recv_into= go together: pass both, or neither")
    if get_buffer is not None and on_recv is not None:
        raise ValueError("pass on_recv=, or get_buffer= with on_recv_into=, not both")
    return 0


cdef Py_ssize_t _check_max_send(object n) except -1:
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"max_send_buffer must be an int, not {type(n).__name__}")
    if n < 1:
        raise ValueError(f"max_send_buffer must be >= 1, got {n}")
    return n


cdef uint32_t _check_buffer_size(object n) except 0:
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"buffer_size must be an int, not {type(n).__name__}")
    if n <= 0 or n > (1 << 20):
        raise ValueError(f"buffer_size must be in 1..1048576, got {n}")
    return <uint32_t>(((n + 4095) // 4096) * 4096)    # the model's 4 KiB multiples


cdef double _check_seconds(object v, str name, bint allow_none) except -1:
    """A timeout in seconds (> 0); None gives 0 (no limit) when allowed."""
    if v is None:
        if allow_none:
            return 0
        raise TypeError(f"{name} must be a number, not None")
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise TypeError(f"{name} must be a number{' or None' if allow_none else ''}, "
                        f"not {type(v).__name__}")
    if not v > 0 or v != v or v == float("inf"):
        raise ValueError(f"{name} must be > 0 and finite, got {v}")
    return v
