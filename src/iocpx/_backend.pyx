# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""What the engine and the backends share: per-I/O context allocation with a
live counter, the event queue, errno -> OSError mapping, and the Backend base
class with the plumbing more than one backend uses (the receive-size table and
the heap-buffer receive)."""
import os

from cpython.bytes cimport PyBytes_FromStringAndSize
from cpython.ref cimport Py_INCREF, Py_XDECREF
from libc.stdlib cimport malloc, calloc, realloc, free
from libc.string cimport memcpy
from iocpx._sys cimport (iocpx_mutex_init, iocpx_mutex_destroy, IOCPX_ADD_I64, IOCPX_LOAD_I64, iocpx_sock_send_now, iocpx_last_error,
                         iocpx_faults_t, iocpx_fault_names, iocpx_faults_attach, iocpx_faults_reset,
                         iocpx_faults_arm, iocpx_faults_random, iocpx_faults_calls,
                         iocpx_faults_hits, IOCPX_FAULT, IOCPX_F_COUNT, IOCPX_FAULTS_BUILT,
                         IOCPX_F_ALLOC_IOCTX, IOCPX_F_ALLOC_EVQ, IOCPX_F_SYS_SEND_SHORT,
                         IOCPX_F_SYS_SEND_EAGAIN, iocpx_sleep_ms)

cdef int64_t _live_io = 0   # per-I/O contexts allocated and not yet freed (all engines)

import errno as _errno
cdef int E_AGAIN = _errno.EAGAIN
cdef int E_NOSYS = _errno.ENOSYS


cdef IoCtx* io_alloc(uint8_t op, object owner, SchedNode* sched) except NULL:
    """Allocate a zeroed context holding a strong ref to owner. The caller
    frees it with io_free, on submit failure or at its final completion."""
    cdef IoCtx* io = NULL if IOCPX_FAULT(IOCPX_F_ALLOC_IOCTX) else <IoCtx*>calloc(1, sizeof(IoCtx))
    if io == NULL:
        raise MemoryError()
    io.op = op
    io.fd = -1
    if owner is not None:
        Py_INCREF(owner)
        io.owner = <PyObject*>owner
    io.sched = sched
    IOCPX_ADD_I64(&_live_io, 1)
    return io


cdef IoCtx* io_alloc_wait(uint8_t op, object owner, SchedNode* sched) except NULL:
    """io_alloc for a context that must exist: a cancel, a close's wake-up, an
    exit packet. Without it an operation would never end (its owner never
    closes, Engine.close() waits forever), so out of memory it waits for
    memory, the GIL released, as the engine's run queue does."""
    while True:
        try:
            return io_alloc(op, owner, sched)
        except MemoryError:
            with nogil:
                iocpx_sleep_ms(1)


cdef void io_set_obj(IoCtx* io, object obj) noexcept:
    """Keep obj alive until the context is freed (replaces any previous one)."""
    Py_XDECREF(io.obj)
    if obj is None:
        io.obj = NULL
    else:
        Py_INCREF(obj)
        io.obj = <PyObject*>obj


cdef void io_free(IoCtx* io) noexcept:
    """Drop the references the context holds and free it. GIL held."""
    Py_XDECREF(io.owner)
    Py_XDECREF(io.obj)
    free(io.extra)
    free(io)
    IOCPX_ADD_I64(&_live_io, -1)


cdef int64_t io_live() noexcept nogil:
    return IOCPX_LOAD_I64(&_live_io)


def live_io():
    """Per-I/O contexts alive in this process (every engine and port)."""
    return io_live()


cdef int evq_grow(EventQueue* q) noexcept nogil:
    """Double the ring (first push: 64 slots), keeping the order."""
    cdef int cap = q.cap * 2 if q.cap else 64
    cdef Event* ev = NULL if IOCPX_FAULT(IOCPX_F_ALLOC_EVQ) else <Event*>malloc(cap * sizeof(Event))
    cdef int i
    if ev == NULL:
        return -1
    for i in range(q.len):
        ev[i] = q.ev[(q.head + i) % q.cap]
    free(q.ev)
    q.ev = ev
    q.cap = cap
    q.head = 0
    return 0


cdef void evq_free(EventQueue* q) noexcept nogil:
    free(q.ev)
    q.ev = NULL
    q.head = q.len = q.cap = 0


cdef object _win_strerror = None     # set by _iocp: Windows' own words for a Winsock code


cdef str strerror(int err):
    """os.strerror(err), except for the Winsock codes that Python's errno uses
    on Windows (errno.ENOBUFS is 10055 there): the C runtime has no text for
    them ("Unknown error"), Windows has (FormatMessage, through _iocp)."""
    if _win_strerror is not None and 10000 <= err < 12000:
        return _win_strerror(err)
    return os.strerror(err)


def _set_win_strerror(fn):
    global _win_strerror
    _win_strerror = fn


cdef object oserror(int err, str what=None):
    """The OSError subclass Python picks for errno err (ConnectionResetError...)."""
    msg = strerror(err)
    if what:
        msg = f"{what}: {msg}"
    return OSError(err, msg)


cdef class Backend:
    """Abstract backend; each platform module subclasses it (and sets sync_send)."""

    def __cinit__(self):
        iocpx_mutex_init(&self.blocks.mu)

    def __dealloc__(self):
        cdef int i
        for i in range(self.blocks.n):
            free(self.blocks.blocks[i])
        self.blocks.n = 0
        iocpx_mutex_destroy(&self.blocks.mu)

    cdef int socket_open(self, int family) except -1:
        raise NotImplementedError
    cdef int adopt(self, int fd) except -1:
        return 0
    cdef int adopt_stream(self, int fd) except -1:
        return self.adopt(fd)
    cdef int submit_accept(self, IoCtx* io) except -1:
        raise NotImplementedError
    cdef int submit_recv(self, IoCtx* io) except -1:
        raise NotImplementedError
    cdef int submit_send(self, IoCtx* io) except -1:
        raise NotImplementedError
    cdef Py_ssize_t try_send(self, int fd, const char* buf, Py_ssize_t n) noexcept:
        """Send what fits now, without waiting: the bytes sent, or -errno
        (-EAGAIN: nothing fits). Used for sends of at least sync_send bytes."""
        cdef long r
        if IOCPX_FAULT(IOCPX_F_SYS_SEND_EAGAIN):
            return -E_AGAIN
        if n > 1 and IOCPX_FAULT(IOCPX_F_SYS_SEND_SHORT):
            n //= 2
        r = iocpx_sock_send_now(fd, buf, n)
        if r < 0:
            return -iocpx_last_error()
        return r
    cdef int submit_connect(self, IoCtx* io) except -1:
        raise NotImplementedError
    cdef int submit_sendfile(self, IoCtx* io, int file_fd, int64_t offset, uint32_t nbytes) except -1:
        raise NotImplementedError
    cdef int submit_cancel_fd(self, IoCtx* io, int fd) except -1:
        raise NotImplementedError
    cdef int submit_cancel_op(self, IoCtx* io, IoCtx* target) except -1:
        raise NotImplementedError
    cdef int abort_by_close(self, IoCtx* recv) except -1:
        """Close the socket of a connection whose only operation in flight is
        the receive `recv`, where closing a socket ends its operations (they
        complete, aborted) and costs less than cancelling them. 1 if the
        socket is closed (the engine must not close it again), 0 if not: the
        engine cancels as usual. Only iocp does it; elsewhere closing a
        descriptor does not end an io_uring operation, so: 0."""
        return 0
    cdef int submit_post(self, IoCtx* io) except -1:
        raise NotImplementedError
    cdef int submit_poll(self, IoCtx* io) except -1:
        raise OSError(E_NOSYS, f"the {self.name} backend cannot poll a descriptor for readiness")
    cdef int handle_adopt(self, int64_t handle) except -1:
        raise OSError(E_NOSYS, f"the {self.name} backend has no Windows handles")
    cdef int submit_handle_io(self, IoCtx* io) except -1:
        raise OSError(E_NOSYS, f"the {self.name} backend has no Windows handles")
    cdef int flush(self) except -1:
        raise NotImplementedError
    cdef int wait(self, Event* out, int maxev, long timeout_ms) noexcept nogil:
        return -E_NOSYS

    cdef int buffer_group(self, uint32_t size) except -1:
        """An id for receives of up to size bytes, one per distinct size. Backends
        that read into their own buffers use this table; io_uring overrides it."""
        cdef int i
        for i in range(self.ngroups):
            if self.sizes[i] == size:
                return i
        if self.ngroups >= MAX_GROUPS:
            raise ValueError(f"too many distinct buffer sizes (at most {MAX_GROUPS})")
        self.sizes[self.ngroups] = size
        self.ngroups += 1
        return self.ngroups - 1

    # A receive event of the epoll and iocp backends carries its bytes in a
    # malloc'd block (ev.data, ev.res bytes): consuming it frees the block.
    cdef object recv_bytes(self, Event* ev):
        """The bytes a receive event carried (None if none); the backend's
        buffer is given back. Must be called for every receive event (or recv_copy)."""
        if ev.data == NULL:
            return None
        data = PyBytes_FromStringAndSize(<char*>ev.data, ev.res) if ev.res > 0 else None
        self._block_done(ev)
        return data

    cdef Py_ssize_t recv_copy(self, Event* ev, char* dst) except -1:
        """Copy a receive event's data to dst (room for ev.res bytes) and give
        the buffer back. Returns the bytes copied."""
        if ev.data == NULL:
            return 0
        cdef Py_ssize_t n = ev.res if ev.res > 0 else 0
        memcpy(dst, ev.data, n)
        self._block_done(ev)
        return n

    cdef void _block_done(self, Event* ev) noexcept:
        """The event's heap block is no longer needed: back to the cache, or freed."""
        if ev.flags & EV_BLOCK:
            block_put(&self.blocks, ev.data)
        else:
            free(ev.data)
        ev.data = NULL
        self.recv_consumed(ev)

    cdef void recv_consumed(self, Event* ev) noexcept:
        pass

    cdef void recv_release(self, Event* ev) noexcept:
        """The caller read the event's bytes in place (ev.data, ev.res
        bytes; an asyncio BufferedProtocol's buffer got them): give the
        buffer back as recv_bytes would."""
        if ev.data == NULL:
            return
        self._block_done(ev)

    cdef object accept_data(self, Event* ev):
        return None

    cdef int accept_silent(self, int listen_fd) except -1:
        """How many pending first-data accepts on listen_fd hold a client that
        connected and has not sent yet (only AcceptEx can have such slots)."""
        return 0

    cdef object error(self, int err, str what):
        return oserror(err, what)

    # ---- datagrams: every backend overrides the submits and the view --------

    cdef int dgram_adopt(self, int fd, bint connected) except -1:
        return self.adopt(fd)
    cdef int dgram_group(self, uint32_t size) except -1:
        return self.buffer_group(size)
    cdef int submit_recvfrom(self, IoCtx* io) except -1:
        raise NotImplementedError
    cdef int submit_sendto(self, IoCtx* io) except -1:
        raise NotImplementedError
    cdef Py_ssize_t try_sendto(self, int fd, const char* buf, Py_ssize_t n,
                               sockaddr* to, int tolen) noexcept:
        return -E_AGAIN      # always use submit_sendto
    cdef int dgram_view(self, Event* ev, Datagram* out) except -1:
        raise NotImplementedError
    cdef void dgram_done(self, Event* ev) noexcept:
        pass

    cdef void release(self) noexcept:
        pass


# ---- asyncio's transport classes, in a form Cython classes can extend ------
#
# The asyncio loop's transports (_core's loop/stream.pxi) are Cython classes
# and real asyncio transport instances. Cython can extend a type from another
# module given its layout, but asyncio's transport classes are heap types
# whose deallocator (subtype_dealloc) cannot sit under a static type's. So
# this module makes a heap type over each asyncio class the loop needs, with
# the same layout (the __slots__ of asyncio's classes, all object pointers)
# and a deallocator, traverse and clear of its own; _core's classes extend them.
#   TransportBase: asyncio.transports._FlowControlMixin (a Transport), whose
#     isinstance check loop.sendfile()'s fallback makes; 5 slots
#   DatagramTransportBase: asyncio.DatagramTransport; 1 slot

cdef extern from *:
    """
    /* tp_free of the object's type: a static type (a Cython class outside the
       limited API) has no slot table PyType_GetSlot can read before 3.10 */
    #if defined(Py_LIMITED_API)
    #define IOCPX_TP_FREE(tp) ((freefunc)PyType_GetSlot((tp), Py_tp_free))
    #else
    #define IOCPX_TP_FREE(tp) ((tp)->tp_free)
    #endif
    #define IOCPX_SHIM(N)                                                           \
    typedef struct { PyObject_HEAD PyObject *slot[N]; } iocpx_shim##N##_obj;        \
    static void iocpx_shim##N##_dealloc(PyObject *o) {                              \
        PyTypeObject *tp = Py_TYPE(o);                                              \
        int i;                                                                      \
        PyObject_GC_UnTrack(o);                                                     \
        for (i = 0; i < N; i++) Py_CLEAR(((iocpx_shim##N##_obj*)o)->slot[i]);      \
        IOCPX_TP_FREE(tp)(o);                                                       \
        if (PyType_GetFlags(tp) & Py_TPFLAGS_HEAPTYPE) Py_DECREF(tp);               \
    }                                                                               \
    static int iocpx_shim##N##_traverse(PyObject *o, visitproc visit, void *arg) {  \
        int i;                                                                      \
        for (i = 0; i < N; i++) Py_VISIT(((iocpx_shim##N##_obj*)o)->slot[i]);      \
        if (PyType_GetFlags(Py_TYPE(o)) & Py_TPFLAGS_HEAPTYPE) Py_VISIT((PyObject*)Py_TYPE(o)); \
        return 0;                                                                   \
    }                                                                               \
    static int iocpx_shim##N##_clear(PyObject *o) {                                 \
        int i;                                                                      \
        for (i = 0; i < N; i++) Py_CLEAR(((iocpx_shim##N##_obj*)o)->slot[i]);      \
        return 0;                                                                   \
    }                                                                               \
    static PyType_Slot iocpx_shim##N##_slots[] = {                                  \
        {Py_tp_dealloc, (void*)iocpx_shim##N##_dealloc},                            \
        {Py_tp_traverse, (void*)iocpx_shim##N##_traverse},                          \
        {Py_tp_clear, (void*)iocpx_shim##N##_clear},                                \
        {0, 0},                                                                     \
    };
    IOCPX_SHIM(1)
    IOCPX_SHIM(5)
    static PyObject *iocpx_shim_type(const char *name, PyObject *bases, int nslots) {
        PyType_Spec spec = {name, 0, 0,
                            Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC, NULL};
        if (nslots == 1) { spec.basicsize = (int)sizeof(iocpx_shim1_obj); spec.slots = iocpx_shim1_slots; }
        else if (nslots == 5) { spec.basicsize = (int)sizeof(iocpx_shim5_obj); spec.slots = iocpx_shim5_slots; }
        else { PyErr_SetString(PyExc_SystemError, "iocpx: no shim for that many slots"); return NULL; }
        return PyType_FromSpecWithBases(&spec, bases);
    }
    """
    object iocpx_shim_type(const char* name, object bases, int nslots)

import asyncio as _asyncio
from asyncio import transports as _aio_transports


cdef object _shim(bytes name, object base, int nslots):
    if base.__basicsize__ != object.__basicsize__ + nslots * sizeof(void*):
        raise ImportError(f"asyncio's {base.__name__} does not have the layout iocpx knows "
                          f"({nslots} slots)")
    return iocpx_shim_type(name, (base,), nslots)


TransportBase = _shim(b"iocpx._backend.TransportBase", _aio_transports._FlowControlMixin, 5)
DatagramTransportBase = _shim(b"iocpx._backend.DatagramTransportBase", _asyncio.DatagramTransport, 1)


# ---- failure points (IOCPX_FAULTS=1 builds; iocpx._faults is the interface) ----

cdef iocpx_faults_t _faults_table    # the one table; every module attaches to it at import
iocpx_faults_attach(&_faults_table)


cdef iocpx_faults_t* faults_table() noexcept nogil:
    return &_faults_table


def _faults_built():
    """Whether this build has the failure points compiled in."""
    return bool(IOCPX_FAULTS_BUILT)


def _faults_names():
    return [iocpx_fault_names[i].decode() for i in range(IOCPX_F_COUNT)]


def _faults_reset():
    iocpx_faults_reset(&_faults_table)


def _faults_arm(int point, long long nth):
    if not 0 <= point < IOCPX_F_COUNT:
        raise ValueError(point)
    iocpx_faults_arm(&_faults_table, point, nth)


def _faults_random(int point, unsigned long long seed, unsigned long long rate):
    if not 0 <= point < IOCPX_F_COUNT:
        raise ValueError(point)
    iocpx_faults_random(&_faults_table, point, seed, rate)


def _faults_counts(int point):
    return iocpx_faults_calls(&_faults_table, point), iocpx_faults_hits(&_faults_table, point)
