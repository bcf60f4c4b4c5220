# Unix-domain sockets: listen("/path"), listen("\0abstract") (Linux),
# connect("/path"). A path is an os.PathLike, or a str/bytes holding a path
# separator ("./app.sock" for a relative one) or starting with NUL (abstract);
# a bare "127.0.0.1:80" stays the TypeError it always was, not a socket file
# in the current folder. A tuple is (host, port). AF_UNIX addresses never sit in IoCtx.addr (iocpx_addr_t,
# inet/inet6 only, is in every per-I/O context): a connect carries its
# iocpx_unaddr_t in io.extra (io_target() in _backend.pxd finds it), and an
# accepted connection's peer is read with getpeername when asked for.
#
# A listener that bound a path removes its socket file when it closes (if
# the file is still the one it made), as asyncio does; a stale file left by a
# crashed process makes listen() fail with EADDRINUSE, unless
# unlink_existing=True, which removes an existing socket file (never another
# kind of file) before binding.

cdef enum:
    UN_ROOM = 128               # bytes for any address getsockname may return here

cdef unsigned IO_REPARSE_TAG_AF_UNIX = 0x80000023    # Windows: what an AF_UNIX socket file is


cdef bint is_unix_address(object address):
    if isinstance(address, os.PathLike):
        return True
    if isinstance(address, str):
        seps = ("/", "\\") if os.name == "nt" else ("/",)
        return address[:1] == "\0" or any(sep in address for sep in seps)
    if isinstance(address, bytes):
        seps = (b"/", b"\\") if os.name == "nt" else (b"/",)
        return address[:1] == b"\0" or any(sep in address for sep in seps)
    return False


cdef bytes unix_name(object address):
    """The raw name of a Unix socket address (bytes; a leading NUL for the
    abstract namespace). TypeError/ValueError when it cannot be one."""
    if isinstance(address, os.PathLike):
        address = os.fspath(address)
    name = os.fsencode(address)
    if not name:
        raise ValueError("a Unix socket path must not be empty")
    if b"\0" in name[1:] and name[:1] != b"\0":
        raise ValueError(f"a Unix socket path must not contain NUL bytes: {address!r}")
    cdef iocpx_unaddr_t a
    if iocpx_unaddr_fill(&a, name, len(name)) < 0:
        raise OSError(_errno.ENAMETOOLONG,
                      f"Unix socket path too long ({len(name)} bytes, at most "
                      f"{sizeof(a.sun_path) - 1}): {address!r}")
    return name


cdef str unix_decode(const char* buf, int n):
    """A raw AF_UNIX address (n bytes) as iocpx shows it: the path, "\\0name"
    for an abstract one, "" for an unnamed socket."""
    if n <= IOCPX_UN_OFF:
        return ""
    raw = buf[IOCPX_UN_OFF:n]
    if raw[:1] == b"\0":
        return "\0" + os.fsdecode(raw[1:])
    i = raw.find(b"\0")
    return os.fsdecode(raw if i < 0 else raw[:i])


cdef object sock_address(Backend be, int fd, bint peer):
    """The local (peer=0) or remote (peer=1) address of a socket of any
    family iocpx serves: (host, port), or a Unix path (str)."""
    cdef char buf[UN_ROOM]
    cdef int n = UN_ROOM
    if fd < 0:
        raise _closed_error("connection")
    memset(buf, 0, UN_ROOM)
    if iocpx_sock_name_raw(fd, peer, buf, &n) < 0:
        raise be.error(iocpx_last_error(), "getpeername" if peer else "getsockname")
    if (<sockaddr*>buf).sa_family == IOCPX_AF_UNIX:
        return unix_decode(buf, n)
    return _addr_tuple(<iocpx_addr_t*>buf)


cdef int unix_fill(Backend be, int fd, bytes name, bint connect, IoCtx* io) except -1:
    """Bind fd to name (io NULL), or make io an AF_UNIX connect to name: the
    address goes out of line into io.extra (freed by io_free)."""
    cdef iocpx_unaddr_t a
    cdef iocpx_unaddr_t* p
    cdef int alen = iocpx_unaddr_fill(&a, name, len(name))
    if alen < 0:
        raise OSError(_errno.ENAMETOOLONG, f"Unix socket path too long: {name!r}")
    if connect:
        p = <iocpx_unaddr_t*>malloc(sizeof(iocpx_unaddr_t))
        if p == NULL:
            raise MemoryError()
        memcpy(p, &a, sizeof(iocpx_unaddr_t))
        io.extra = p
        memset(&io.addr, 0, sizeof(io.addr))
        io.addr.sa.sa_family = IOCPX_AF_UNIX     # io_target(): the address is in extra
        io.addrlen = alen
        return 0
    if iocpx_sock_bind(fd, &a, alen) < 0:
        raise be.error(iocpx_last_error(), f"bind {os.fsdecode(name)!r}")
    return 0


cdef void unix_unlink_existing(bytes name) except *:
    """unlink_existing=True: remove a socket file at name (a stale one, or a
    live server's); refuse to remove any other kind of file."""
    if name[:1] == b"\0":
        return                          # abstract names have no file
    try:
        st = os.lstat(name)
    except FileNotFoundError:
        return
    import stat as _stat
    if _stat.S_ISSOCK(st.st_mode) or getattr(st, "st_reparse_tag", 0) == IO_REPARSE_TAG_AF_UNIX:
        os.unlink(name)
    else:
        raise FileExistsError(_errno.EEXIST,
                              f"{os.fsdecode(name)!r} exists and is not a socket "
                              f"(unlink_existing removes only socket files)")


cdef tuple unix_listen_open(Backend be, bytes name, int backlog, bint unlink_existing):
    """A listening AF_UNIX socket bound to name: (fd, address, cleanup), where
    cleanup says which file to remove when the listener closes (or None)."""
    if unlink_existing:
        unix_unlink_existing(name)
    cdef int fd = iocpx_sock_open(IOCPX_AF_UNIX, _socket.SOCK_STREAM)
    if fd < 0:
        raise be.error(iocpx_last_error(), "socket(AF_UNIX)")
    cleanup = None
    try:
        unix_fill(be, fd, name, False, NULL)
        if iocpx_sock_listen(fd, backlog) < 0:
            raise be.error(iocpx_last_error(), "listen")
        if name[:1] != b"\0":
            st = os.stat(name)
            cleanup = (name, st.st_dev, st.st_ino)
        address = sock_address(be, fd, 0)
    except BaseException:
        _sock_close(fd)
        raise
    return fd, address, cleanup


cdef void unix_cleanup(object cleanup) noexcept:
    """Remove the socket file a closed listener bound, if it is still that file."""
    if cleanup is None:
        return
    name, dev, ino = cleanup
    try:
        st = os.stat(name)
        if st.st_dev == dev and st.st_ino == ino:
            os.unlink(name)
    except OSError:
        pass
