# BackendTester: one backend driven directly, op by op, for the
# backend-contract tests (tests/test_backend_contract.py): every backend must
# give the same results for the same operations, which is what lets the
# engine be written once. Not part of the public API.

_OP_NAMES = {OP_NOP: "nop", OP_ACCEPT: "accept", OP_RECV: "recv", OP_SEND: "send",
             OP_CONNECT: "connect", OP_SENDFILE: "sendfile", OP_CANCEL: "cancel",
             OP_POST: "post", OP_EXIT: "exit", OP_RECVFROM: "recvfrom", OP_SENDTO: "sendto"}


@cython.final
cdef class BackendTester:
    """BackendTester(backend): submit operations to a fresh backend instance,
    each named by a tag, and wait() for their completions as
    (tag, op, res, more, data) tuples; res is >= 0 or -errno (Python's errno
    values), more is True while a multishot op stays armed, data is the bytes
    a receive carried (or an accept's first data, or None; a datagram
    receive's data is (bytes, sender (host, port), truncated, kernel drop
    counter or -1))."""
    cdef Backend be
    cdef dict targets               # tag -> address of a context not yet completed
    cdef int pending
    cdef public str consume         # how wait() takes a receive's bytes, as the engine's
                                    # paths do: "bytes" (recv_bytes: on_recv), "copy"
                                    # (recv_copy: merged events), "release" (read in
                                    # place, then recv_release: BufferedProtocol, get_buffer)

    def __cinit__(self, backend=None):
        self.be = make_backend(backend)
        self.targets = {}
        self.consume = "bytes"

    @property
    def name(self):
        return self.be.name

    @property
    def pending(self):
        """Operations submitted whose final completion has not been seen."""
        return self.pending

    cdef IoCtx* _new(self, uint8_t op, object tag, int fd) except NULL:
        if tag in self.targets:
            raise ValueError(f"tag {tag!r} is in use")
        cdef IoCtx* io = io_alloc(op, tag, NULL)
        io.fd = fd
        return io

    cdef void _submitted(self, IoCtx* io, object tag) except *:
        self.targets[tag] = <size_t>io
        self.pending += 1
        self.be.flush()

    def socket(self, family=_socket.AF_INET):
        """A new stream socket made by the backend (the caller closes it)."""
        return self.be.socket_open(family)

    def adopt(self, fd):
        """A listening socket joins the port."""
        self.be.adopt(fd)

    def post(self, tag, nbytes=0):
        cdef IoCtx* io = self._new(OP_POST, tag, -1)
        io.aux.post_nbytes = nbytes
        try:
            self.be.submit_post(io)
        except BaseException:
            io_free(io)
            raise
        self._submitted(io, tag)

    def accept(self, tag, int listen_fd, int first_data=0):
        cdef IoCtx* io = self._new(OP_ACCEPT, tag, listen_fd)
        io.len = first_data
        try:
            self.be.submit_accept(io)
        except BaseException:
            io_free(io)
            raise
        self._submitted(io, tag)

    def recv(self, tag, int fd, buffer_size=4096):
        cdef IoCtx* io = self._new(OP_RECV, tag, fd)
        io.group = <uint16_t>self.be.buffer_group(_check_buffer_size(buffer_size))
        try:
            self.be.submit_recv(io)
        except BaseException:
            io_free(io)
            raise
        self._submitted(io, tag)

    def send(self, tag, int fd, bytes data):
        cdef IoCtx* io = self._new(OP_SEND, tag, fd)
        io_set_obj(io, data)
        io.buf = iocpx_bytes_ptr(data)
        io.len = len(data)
        try:
            self.be.submit_send(io)
        except BaseException:
            io_free(io)
            raise
        self._submitted(io, tag)

    def connect(self, tag, int fd, address):
        cdef IoCtx* io = self._new(OP_CONNECT, tag, fd)
        family, sa = _resolve(address, False)
        io.addrlen = _fill_addr(&io.addr, family, sa)
        try:
            self.be.submit_connect(io)
        except BaseException:
            io_free(io)
            raise
        self._submitted(io, tag)

    def sendfile(self, tag, int fd, int file_fd, int64_t offset, uint32_t count):
        cdef IoCtx* io = self._new(OP_SENDFILE, tag, fd)
        try:
            self.be.submit_sendfile(io, file_fd, offset, count)
        except BaseException:
            io_free(io)
            raise
        self._submitted(io, tag)

    def cancel_fd(self, tag, int fd):
        cdef IoCtx* io = self._new(OP_CANCEL, tag, fd)
        try:
            self.be.submit_cancel_fd(io, fd)
        except BaseException:
            io_free(io)
            raise
        self._submitted(io, tag)

    def cancel(self, tag, target):
        """Cancel the op named target (it must still be pending)."""
        if target not in self.targets:
            raise KeyError(f"no pending op {target!r}")
        cdef IoCtx* t = <IoCtx*><size_t>self.targets[target]
        cdef IoCtx* io = self._new(OP_CANCEL, tag, t.fd)
        try:
            self.be.submit_cancel_op(io, t)
        except BaseException:
            io_free(io)
            raise
        self._submitted(io, tag)

    def dgram_adopt(self, fd, connected=False):
        """A UDP socket joins the port."""
        self.be.dgram_adopt(fd, bool(connected))

    def recvfrom(self, tag, int fd, buffer_size=65536):
        """Arm a datagram receive (multishot where the backend has it)."""
        cdef IoCtx* io = self._new(OP_RECVFROM, tag, fd)
        io.group = <uint16_t>self.be.dgram_group(_check_buffer_size(buffer_size))
        try:
            self.be.submit_recvfrom(io)
        except BaseException:
            io_free(io)
            raise
        self._submitted(io, tag)

    def sendto(self, tag, int fd, bytes data, address=None):
        """One datagram to address ((host, port); None: the connected peer)."""
        cdef IoCtx* io = self._new(OP_SENDTO, tag, fd)
        io_set_obj(io, data)
        io.buf = iocpx_bytes_ptr(data)
        io.len = len(data)
        try:
            if address is not None:
                family, sa = _resolve(address, False)
                io.addrlen = _fill_addr(&io.addr, family, sa)
            self.be.submit_sendto(io)
        except BaseException:
            io_free(io)
            raise
        self._submitted(io, tag)

    def wait(self, timeout=1.0, int maxev=64):
        """Completions that arrive within timeout seconds (at least one unless
        the timeout passes), in the order the backend reports them."""
        cdef Event evs[64]
        cdef long ms = -1 if timeout is None else <long>(timeout * 1000)
        cdef int n, i
        cdef IoCtx* io
        cdef Datagram dg
        if maxev > 64:
            maxev = 64
        with nogil:
            n = self.be.wait(evs, maxev, ms)
        if n < 0:
            raise oserror(-n, "wait")
        out = []
        for i in range(n):
            io = evs[i].io
            tag = <object>io.owner if io.owner != NULL else None
            more = bool(evs[i].flags & EV_MORE)
            data = None
            if io.op == OP_RECV:
                if self.consume == "bytes" or evs[i].data == NULL:
                    data = self.be.recv_bytes(&evs[i])
                elif self.consume == "copy":
                    data = PyBytes_FromStringAndSize(NULL, evs[i].res)
                    self.be.recv_copy(&evs[i], iocpx_bytes_ptr(data))
                else:
                    data = PyBytes_FromStringAndSize(<char*>evs[i].data, evs[i].res)
                    self.be.recv_release(&evs[i])
            elif io.op == OP_RECVFROM:
                try:
                    if self.be.dgram_view(&evs[i], &dg):
                        data = (PyBytes_FromStringAndSize(dg.data, dg.len),
                                _addr_tuple(<iocpx_addr_t*>dg.name) if dg.name != NULL else None,
                                bool(dg.flags & DG_TRUNC), dg.drops)
                finally:
                    self.be.dgram_done(&evs[i])
            elif io.op == OP_ACCEPT and evs[i].res >= 0:
                data = self.be.accept_data(&evs[i])
                data = (data, _addr_tuple(&io.addr))
            out.append((tag, _OP_NAMES.get(io.op, io.op), evs[i].res, more, data))
            if not more:
                self.targets.pop(tag, None)
                self.pending -= 1
                io_free(io)
        return out

    def close(self):
        """Release the backend; every op must have completed."""
        if self.pending:
            raise RuntimeError(f"{self.pending} operations still pending")
        self.be.release()
