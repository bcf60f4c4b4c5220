# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The Windows `iocp` backend: one I/O completion port per Engine, Winsock
called directly (declarations in _winsock.pxd).

  * every socket is associated with the port once (key KEY_IO); posted
    packets (CompletionPort.post, exit packets, cancel acknowledgements) carry
    KEY_POST, the leader's wake-up KEY_WAKE;
  * wait() = GetQueuedCompletionStatusEx with the GIL released; the IoCtx is
    found again from the OVERLAPPED pointer (its first member);
  * accepts: AcceptEx on sockets created in advance, with a receive buffer of
    io.len bytes when the engine wants first data (none in the engine's plain
    mode); SO_UPDATE_ACCEPT_CONTEXT and GetAcceptExSockAddrs (peer into
    io.addr) when it completes. A first-data accept whose client connected
    but sends nothing is cancelled after the listener's first_data_timeout
    (io.aux.silent_ms; SO_CONNECT_TIME, checked from the wait loop every
    second) and completes with -ETIMEDOUT; accept_silent() counts the slots
    that held a connected client without data at two calls in a row, for the
    engine's guard (engine/accept.pxi);
  * receives: a zero-byte WSARecv, then a non-blocking recv() of up to the
    buffer size when it completes, so an idle connection pins no buffer. Each
    completion is final (no EV_MORE): the engine posts the next receive after
    the callback, as the classic model does. (Re-posting from the leader
    would race with CancelIoEx(socket, NULL): a receive re-posted just after
    the cancel ran would never complete.)
  * sends: WSASend (a partial completion returns the bytes sent; the engine
    resubmits the rest); connects: bind + ConnectEx + SO_UPDATE_CONNECT_CONTEXT;
    sendfile: TransmitFile; cancels: CancelIoEx, then the cancel op itself
    completes through PostQueuedCompletionStatus;
  * a call that fails at once queues no packet: its event is built at submit
    with the error and goes through the `ready` list, so errors always arrive
    as completions (nothing raised to the caller of send());
  * timers are the engine's (the wait's timeout); this module has none;
  * FILE_SKIP_COMPLETION_PORT_ON_SUCCESS is set on every socket when every
    protocol provider is an IFS one (no layered provider); an operation that
    then succeeds at once queues no packet, so its event is built at submit
    and handed to the leader through the `ready` list (waking it if it sleeps).

Error codes: Event.res is -errno with Python's errno values where Python has
one (ERROR_OPERATION_ABORTED -> -ECANCELED, ERROR_NETNAME_DELETED ->
-ECONNRESET, ...); any other Windows code is passed as -(WINERR_TAG | code)
and error() turns it into an OSError carrying winerror.

This file holds the port, the sockets' association with it, the ready list
and the backend's interface; each concern is in iocp/, under the same file
name as in the other backends' folders:

  iocp/errors.pxi      Windows/Winsock codes -> errno, messages, OSError
  iocp/extensions.pxi  process-wide state: the extension functions, skip-on-success
  iocp/accept.pxi      AcceptEx with first data, GetAcceptExSockAddrs, silent slots
  iocp/receive.pxi     the zero-byte WSARecv and the read after it
  iocp/send.pxi        WSASend
  iocp/connect.pxi     ConnectEx (connect() for AF_UNIX)
  iocp/sendfile.pxi    TransmitFile
  iocp/cancel.pxi      CancelIoEx, and abort_by_close
  iocp/poll.pxi        readiness polls through the AFD driver (the asyncio loop's add_reader)
  iocp/pipes.pxi       pipe HANDLEs on the port (ReadFile/WriteFile), process waits posted to it
  iocp/wait.pxi        the leader's GetQueuedCompletionStatusEx, each op finished
  iocp/datagram.pxi    UDP: WSARecvFrom kept posted, WSASendTo
"""
import errno as _errno
import os as _os

from cpython.bytes cimport PyBytes_FromStringAndSize
from libc.stdlib cimport malloc, calloc, realloc, free
from cpython.unicode cimport PyUnicode_FromWideChar
from libc.string cimport memset, memcpy
from libc.stddef cimport wchar_t
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int32_t, int64_t

from iocpx._sys cimport (iocpx_mutex_t, iocpx_mutex_init, iocpx_mutex_destroy,
                         iocpx_mutex_lock, iocpx_mutex_unlock, iocpx_now_ns,
                         iocpx_addr_t, sockaddr as sys_sockaddr, IOCPX_FAULT, iocpx_faults_attach,
                         IOCPX_F_SYS_SOCKET, IOCPX_F_SYS_RECV, IOCPX_F_SYS_SENDTO,
                         IOCPX_F_SYS_WSARECV, IOCPX_F_SYS_WSASEND, IOCPX_F_SYS_ACCEPTEX,
                         IOCPX_F_SYS_CONNECTEX, IOCPX_F_SYS_TRANSMITFILE, IOCPX_F_SYS_WSARECVFROM)
from iocpx._backend cimport (Backend, IoCtx, Event, EventQueue, ev_set, evq_push, evq_take,
                             evq_free, recv_heap, block_trim, block_wait_ms, BLOCK_IDLE_MS,
                             oserror, io_target, OP_NOP, OP_ACCEPT, OP_RECV, OP_SEND,
                             OP_CONNECT, OP_CANCEL, OP_POST, OP_EXIT, OP_SENDFILE, OP_POLL,
                             OP_READ, OP_WRITE, OP_WAIT,
                             OP_RECVFROM, Datagram, DG_TRUNC, faults_table)
from iocpx._winsock cimport *

# failure points (IOCPX_FAULTS=1 builds): this module's calls use _backend's table
iocpx_faults_attach(faults_table())


cdef inline bint fails_now(int point, int* err) noexcept nogil:
    """A failure point in front of a Winsock call (IOCPX_FAULTS=1 builds; 0
    elsewhere): when this call is to fail, it is not made and *err is
    WSAENOBUFS, as if it had failed at once (no completion packet follows)."""
    if IOCPX_FAULT(point):
        err[0] = WSAENOBUFS
        return True
    return False

cdef enum:
    KEY_IO = 1              # a socket's own operations
    KEY_POST = 2            # PostQueuedCompletionStatus packets with an IoCtx
    KEY_WAKE = 3            # wake-up for the leader (no OVERLAPPED)
    KEY_POLL = 4            # the AFD helper handle's readiness polls (iocp/poll.pxi)
    ADDR_SLOT = 112 + 16    # AcceptEx address slot: the largest address (SOCKADDR_UN, 110 bytes,
                            # rounded up) + 16, as AcceptEx requires
    MAX_ENTRIES = 256
    SCAN_MS = 1000          # how often the leader checks first-data accepts
    WINERR_TAG = 0x20000000 # Event.res = -(WINERR_TAG | code): a Windows code without errno
    DG_POSTED = 8           # WSARecvFrom kept posted per datagram endpoint (iocp/datagram.pxi)
    CLAIM_READ = 1          # io.aux.claim of an OP_RECV: the read after it ran (or runs)
    CLAIM_CLOSED = 2        # abort_by_close() closed the socket first

import weakref as _weakref
_live = _weakref.WeakSet()      # every IocpBackend alive (diagnostics, tests)


def live_backends():
    """The IocpBackend objects alive in this process (diagnostics and tests)."""
    return list(_live)

include "iocp/errors.pxi"
include "iocp/extensions.pxi"


def _winsock_message(code):
    """Windows' words for a Winsock code (errno.ENOBUFS is 10055 here: the C
    runtime's strerror has none)."""
    return win_message(<DWORD>code)


from iocpx import _backend as _backend_mod     # noqa: E402 - after the helpers it is handed
_backend_mod._set_win_strerror(_winsock_message)


# ---------------------------------------------------------------------------
# per-op state kept in io.extra (malloc, freed by io_free)

cdef struct AcceptState:
    SOCKET sock             # the socket created in advance; ours until handed to the engine
    SOCKET listen
    int family
    uint32_t cap            # bytes of receive buffer allocated after this struct
    uint32_t rcvlen         # first data wanted this time: AcceptEx receive length (0: none)
    uint32_t got            # bytes AcceptEx received with the connection
    uint8_t stale           # cancelled by us: the client stayed silent too long
    uint8_t seen            # the guard's last count saw a client connected here
    uint32_t limit_s        # seconds a connected client may stay silent (0: no limit)
    uint8_t listed          # linked in the backend's pending first-data list
    IoCtx* io               # back pointer (for CancelIoEx from the scan)
    AcceptState* prev       # pending first-data list, guarded by the backend's mu
    AcceptState* next
    # followed by cap + 2 * ADDR_SLOT bytes of AcceptEx buffer

cdef inline char* accept_buf(AcceptState* st) noexcept nogil:
    return (<char*>st) + sizeof(AcceptState)


cdef class IocpBackend(Backend):
    cdef HANDLE port                # owned: the completion port
    cdef iocpx_mutex_t mu           # guards ready, pending accepts, sleeping, wake_pending
    cdef EventQueue ready           # events built at submit (done or failed at once)
    cdef AcceptState* pending       # first-data accepts in flight (not owned: in io.extra)
    cdef int sleeping               # the leader is inside GetQueuedCompletionStatusEx
    cdef int wake_pending           # a KEY_WAKE packet is queued
    cdef uint64_t next_scan_ns
    cdef bint skip                  # FILE_SKIP_COMPLETION_PORT_ON_SUCCESS on our sockets
    cdef HANDLE afd                 # owned: \Device\Afd helper for readiness polls, or NULL
    cdef readonly int64_t stale_drops      # silent first-data clients dropped
    cdef object __weakref__

    def __cinit__(self):
        self.name = "iocp"
        self.sync_send = -1         # every send is a WSASend (a completion)
        self.accept_with_data = True
        self.dgram_recvs = DG_POSTED    # iocp/datagram.pxi
        self.port = NULL
        iocpx_mutex_init(&self.mu)
        resolve_extensions()
        self.skip = g_skip_ok == 1
        self.port = CreateIoCompletionPort(INVALID_HANDLE_VALUE, NULL, 0, 0)
        if self.port == NULL:
            raise win_error(GetLastError(), "CreateIoCompletionPort")
        _live.add(self)

    def __dealloc__(self):
        self.release()
        iocpx_mutex_destroy(&self.mu)

    cdef void release(self) noexcept:
        """Close the port. Only once no operation is pending."""
        if self.afd != NULL:
            CloseHandle(self.afd)
            self.afd = NULL
        if self.port != NULL:
            CloseHandle(self.port)
            self.port = NULL
        evq_free(&self.ready)

    @property
    def skip_on_success(self):
        """True when FILE_SKIP_COMPLETION_PORT_ON_SUCCESS is set on the sockets."""
        return bool(self.skip)

    # ---- sockets ------------------------------------------------------------

    cdef int _check_open(self) except -1:
        if self.port == NULL:
            raise OSError(E_BADF, "iocp backend is closed")
        return 0

    cdef int _associate(self, SOCKET s, bint nonblock) except -1:
        """Join the port, skip packets on immediate success, non-blocking mode
        (for the read after a zero-byte receive)."""
        cdef u_long on = 1
        if CreateIoCompletionPort(iocpx_sock_handle(s), self.port, KEY_IO, 0) == NULL:
            raise win_error(GetLastError(), "CreateIoCompletionPort(socket)")
        if self.skip:
            if not SetFileCompletionNotificationModes(
                    iocpx_sock_handle(s),
                    FILE_SKIP_COMPLETION_PORT_ON_SUCCESS | FILE_SKIP_SET_EVENT_ON_HANDLE):
                raise win_error(GetLastError(), "SetFileCompletionNotificationModes")
        if nonblock and ioctlsocket(s, FIONBIO, &on) != 0:
            raise win_error(WSAGetLastError(), "ioctlsocket(FIONBIO)")
        return 0

    cdef SOCKET _new_socket(self, int family, bint nonblock=True) except? 0:
        """A stream socket joined to the port; non-blocking unless told not to
        (an AcceptEx socket: accept_finish sets the mode once it is connected,
        after SO_UPDATE_ACCEPT_CONTEXT, so setting it here too costs a call)."""
        cdef int err = 0
        cdef SOCKET s = INVALID_SOCKET
        if not fails_now(IOCPX_F_SYS_SOCKET, &err):
            s = WSASocketW(family, SOCK_STREAM, IPPROTO_TCP if family != AF_UNIX else 0,
                           NULL, 0, WSA_FLAG_OVERLAPPED | WSA_FLAG_NO_HANDLE_INHERIT)
            if s == INVALID_SOCKET:
                err = WSAGetLastError()
        if s == INVALID_SOCKET:
            raise win_error(err, "WSASocketW")
        try:
            self._associate(s, nonblock)
        except BaseException:
            closesocket(s)
            raise
        return s

    cdef int socket_open(self, int family) except -1:
        self._check_open()
        return <int>self._new_socket(family)

    cdef int adopt(self, int fd) except -1:
        self._check_open()
        self._associate(<SOCKET>fd, False)
        return 0

    cdef int adopt_stream(self, int fd) except -1:
        """A connected socket made elsewhere: non-blocking too, for the read
        after a zero-byte receive."""
        self._check_open()
        self._associate(<SOCKET>fd, True)
        return 0

    # ---- completions of operations that finished at submit; posted packets --

    cdef int _push_ready(self, Event* ev) noexcept nogil:
        cdef int wake = 0
        iocpx_mutex_lock(&self.mu)
        if evq_push(&self.ready, ev) < 0:
            iocpx_mutex_unlock(&self.mu)
            return -1
        if self.sleeping and not self.wake_pending:
            self.wake_pending = 1
            wake = 1
        iocpx_mutex_unlock(&self.mu)
        if wake:
            PostQueuedCompletionStatus(self.port, 0, KEY_WAKE, NULL)
        return 0

    cdef int _submitted(self, IoCtx* io, BOOL ok, DWORD nbytes, int err) except -1:
        """After an overlapped call: done at once, pending, or failed. Done at
        once with skipping on, or failed: no packet follows, so the event is
        built now (with the error: the engine learns of it as a completion)."""
        cdef Event ev
        if ok:
            if self.skip:
                finish(self, io, 1, nbytes, 0, &ev)
                if self._push_ready(&ev) < 0:
                    raise MemoryError()
            return 0
        if err == WSA_IO_PENDING:
            return 0
        finish(self, io, 0, 0, <DWORD>err, &ev)
        if self._push_ready(&ev) < 0:
            raise MemoryError()
        return 0

    cdef int _post(self, IoCtx* io, DWORD nbytes) except -1:
        self._check_open()
        memset(&io.ovl, 0, sizeof(OVERLAPPED))
        if not PostQueuedCompletionStatus(self.port, nbytes, KEY_POST, <OVERLAPPED*>&io.ovl):
            raise win_error(GetLastError(), "PostQueuedCompletionStatus")
        return 0

    cdef int submit_post(self, IoCtx* io) except -1:
        return self._post(io, 0)    # res 0 on every backend (CompletionPort keeps nbytes in io.aux)

    cdef int flush(self) except -1:
        return 0        # every submit is already a system call

    # ---- diagnostics ----------------------------------------------------------

    def pending_connect_times(self):
        """SO_CONNECT_TIME (seconds, -1: nobody connected yet) of each socket
        waiting in a first-data AcceptEx; for tests and diagnostics."""
        cdef AcceptState* st
        cdef DWORD secs
        cdef int slen
        out = []
        iocpx_mutex_lock(&self.mu)
        st = self.pending
        while st != NULL:
            secs = <DWORD>0xFFFFFFFF
            slen = sizeof(secs)
            getsockopt(st.sock, SOL_SOCKET, SO_CONNECT_TIME, <char*>&secs, &slen)
            out.append(-1 if secs == <DWORD>0xFFFFFFFF else <long>secs)
            st = st.next
        iocpx_mutex_unlock(&self.mu)
        return out

    # ---- the Backend interface, one concern per file (iocp/*.pxi) ------------

    cdef int submit_accept(self, IoCtx* io) except -1:
        return accept_submit(self, io)                  # accept.pxi

    cdef object accept_data(self, Event* ev):
        """The first data AcceptEx received (b"" if the client closed without
        sending); None when the engine did not ask for it."""
        return accept_first_data(ev)

    cdef int accept_silent(self, int listen_fd) except -1:
        return accept_count_silent(self, listen_fd)

    cdef int submit_recv(self, IoCtx* io) except -1:
        return recv_submit(self, io)                    # receive.pxi

    cdef int submit_send(self, IoCtx* io) except -1:
        return send_submit(self, io)                    # send.pxi

    cdef int submit_connect(self, IoCtx* io) except -1:
        return connect_submit(self, io)                 # connect.pxi

    cdef int submit_sendfile(self, IoCtx* io, int file_fd, int64_t offset, uint32_t nbytes) except -1:
        return sendfile_submit(self, io, file_fd, offset, nbytes)     # sendfile.pxi

    cdef int submit_cancel_fd(self, IoCtx* io, int fd) except -1:
        return cancel_fd(self, io, fd)                  # cancel.pxi

    cdef int submit_cancel_op(self, IoCtx* io, IoCtx* target) except -1:
        return cancel_op(self, io, target)

    cdef int submit_poll(self, IoCtx* io) except -1:
        return poll_submit(self, io)                    # poll.pxi

    cdef int handle_adopt(self, int64_t handle) except -1:
        return handle_adopt(self, handle)               # pipes.pxi

    cdef int submit_handle_io(self, IoCtx* io) except -1:
        return handle_submit(self, io)

    cdef int abort_by_close(self, IoCtx* recv) except -1:
        return close_abort(self, recv)

    cdef int wait(self, Event* out, int maxev, long timeout_ms) noexcept nogil:
        """Events from the ready list, else from GetQueuedCompletionStatusEx
        (at most maxev; timeout_ms < 0 waits without limit). Also drops
        first-data accepts whose client stays silent."""
        return wait_events(self, out, maxev, timeout_ms)    # wait.pxi

    cdef int dgram_adopt(self, int fd, bint connected) except -1:
        return dgram_adopt_iocp(self, fd, connected)    # datagram.pxi

    cdef int submit_recvfrom(self, IoCtx* io) except -1:
        return dgram_submit_recv_iocp(self, io)

    cdef int submit_sendto(self, IoCtx* io) except -1:
        return dgram_submit_send_iocp(self, io)

    cdef int dgram_view(self, Event* ev, Datagram* out) except -1:
        return dgram_view_iocp(ev, out)

    cdef object error(self, int err, str what):
        """OSError for -Event.res: errno where Python has one, else winerror."""
        return win_oserror(err, what)                   # errors.pxi


include "iocp/accept.pxi"
include "iocp/receive.pxi"
include "iocp/send.pxi"
include "iocp/connect.pxi"
include "iocp/sendfile.pxi"
include "iocp/cancel.pxi"
include "iocp/poll.pxi"
include "iocp/pipes.pxi"
include "iocp/wait.pxi"
include "iocp/datagram.pxi"


def probe():
    """None if the iocp backend works here, else the reason why not."""
    cdef IoCtx probe_io
    if <char*>&probe_io.ovl != <char*>&probe_io:
        return "IoCtx.ovl is not the first member"
    try:
        b = IocpBackend()
        b.release()
    except OSError as e:
        return f"iocp unavailable: {e}"
    return None


def features():
    """What this Windows offers that the backend uses (for `python -m iocpx info`)."""
    out = {}
    try:
        resolve_extensions()
    except OSError as e:
        return {"available": f"no ({e})"}
    out["AcceptEx"] = pAcceptEx != NULL
    out["ConnectEx"] = pConnectEx != NULL
    out["GetAcceptExSockAddrs"] = pGetAcceptExSockAddrs != NULL
    out["TransmitFile"] = pTransmitFile != NULL
    out["skip_completion_port_on_success"] = g_skip_ok == 1
    out["GetQueuedCompletionStatusEx"] = True
    return out
