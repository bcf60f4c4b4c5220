# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The engine: the completion-port server model, written once for every backend.

This docstring is the map of the source (docs/how-it-works.md follows the
model's steps through it, and tests/test_sourcecode.py checks the two). One
translation unit (the worker thread-local in _sys.h is `static`), assembled
from one file per concern, as uvloop assembles loop.pyx; the class layouts
are in _core.pxd. In brackets, the steps of the completion-port model a file
holds: 1 one port, 2 the workers, 3 the listening socket, 4-6 pre-posted
accepts with first data and addresses, 7 per-socket and per-I/O contexts,
8 dequeue and dispatch, 9 receive and re-post, 10 shutdown, 11 buffers in
4 KiB multiples, 12 per-connection order, 13 TransmitFile, 14 no context
freed while pending, 15 the stress client.

  engine/errors.pxi      exceptions; a peer's failure -> the one on_close exception
  engine/backends.pxi    which backends exist, the default, making one
  engine/address.pxi     addresses and argument checks [11]
  engine/timers.pxi      the timer heap: call_later/call_at/call_soon, internal timers
  engine/workers.pxi     the worker pool: leader, dispatch, watcher and rescue [2, 8, 12]
  engine/engine.pxi      Engine: the port, its workers, listen/connect/close/stats [1, 10]
  engine/listener.pxi    Listener: the listening socket's life cycle [3]
  engine/accept.pxi      accepts, pre-posted and re-posted, and the first-data path [4-6]
  engine/connection.pxi  Connection: per-socket context, set-up, connect, close, on_close [7]
  engine/receive.pxi     the receive loop, re-post, pause/resume [9]
  engine/sendq.pxi       the send queue and flow control
  engine/sendfile.pxi    sendfile (TransmitFile / sendfile / splice) [13]
  engine/tls.pxi         TLS: ssl.MemoryBIO + SSLObject between the receive path and the send queue
  engine/completion_port.pxi  CompletionPort: post/get on the raw port
  engine/unix.pxi        Unix-domain sockets: paths, abstract names, the socket file
  engine/adopt.pxi       sockets made elsewhere: listen(sock=...), Engine.adopt()
  engine/datagram.pxi    UDP: Engine.datagram() -> Endpoint, sendto, drops counted
  engine/harness.pxi     BackendTester: one backend driven op by op (contract tests)

The asyncio event loop (iocpx.EventLoop; its Python half is _loop.py), on
the same engine, its thread the engine's only worker:

  loop/handles.pxi       Handle and TimerHandle (an engine Timer): call_soon, call_at
  loop/core.pxi          LoopCore: the ready queue, _run_once (wait, I/O, timers, ready), wake-up
  loop/selector.pxi      EngineSelector: asyncio's selector interface on OP_POLL (add_reader...)
  loop/stream.pxi        StreamTransport: an asyncio.Transport on an engine Connection
  loop/server.pxi        servers: an engine Listener per asyncio.Server socket, accepts to transports
  loop/overlapped.pxi    Windows: overlapped pipe reads/writes and process waits as futures
                         (what asyncio's proactor pipe and subprocess transports call)

What the engine and the backends share:

  _backend.pxd/.pyx      the per-I/O context IoCtx (OVERLAPPED first) [7, 14], Event,
                         EventQueue, SchedNode, the Backend interface, recv_heap
  _sys.h, _sys.pxd       the platform layer: _sys_win.h and _sys_posix.h behind one header
  _linux.pxd             the Linux system headers the Linux backends call
  _io_uring_abi.pxd      the io_uring kernel ABI (<linux/io_uring.h>)
  _winsock.pxd           Winsock, mswsock and the Win32 completion-port API

The backends: one extension module each, with its concerns in a folder of
the same name, under the same file name wherever the backend has the concern
(each module's docstring says what its files do):

  concern    io_uring: _io_uring.pyx/.pxd  epoll: _epoll.pyx     iocp: _iocp.pyx
  accept     io_uring/accept.pxi           epoll/accept.pxi      iocp/accept.pxi
  receive    io_uring/receive.pxi          epoll/receive.pxi     iocp/receive.pxi
             io_uring/buffers.pxi (pools)
  send       io_uring/send.pxi             epoll/send.pxi        iocp/send.pxi
  connect    io_uring/connect.pxi          epoll/connect.pxi     iocp/connect.pxi
  sendfile   io_uring/sendfile.pxi         epoll/sendfile.pxi    iocp/sendfile.pxi
  cancel     io_uring/cancel.pxi           epoll/cancel.pxi      iocp/cancel.pxi
  poll       io_uring/poll.pxi             epoll/poll.pxi        iocp/poll.pxi
  wait       io_uring/wait.pxi             epoll/wait.pxi        iocp/wait.pxi
  datagram   io_uring/datagram.pxi         epoll/datagram.pxi    iocp/datagram.pxi
  pipes                                                          iocp/pipes.pxi
  errors                                                         iocp/errors.pxi
  process                                                        iocp/extensions.pxi

Around them: _server.py (Server), _stress.py (the serve and stress commands [15]),
_info.py and __main__.py (the command line), _core.pyi/_server.pyi (stubs).
"""
import errno as _errno
import logging
import os
import socket as _socket
import threading
import time
import weakref
import atexit
from collections import deque

cimport cython
from cpython.ref cimport PyObject, Py_INCREF, Py_DECREF, Py_XDECREF
from cpython.bytes cimport PyBytes_FromStringAndSize
from libc.stdlib cimport malloc, calloc, realloc, free
from libc.string cimport memcpy, memset, memcmp
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int64_t

from iocpx._sys cimport *
from iocpx._backend cimport *

# failure points (IOCPX_FAULTS=1 builds): the engine's calls use _backend's table
iocpx_faults_attach(faults_table())

log = logging.getLogger("iocpx")


cdef inline void _sock_close(int fd) noexcept nogil:
    iocpx_sock_close(fd)


include "engine/errors.pxi"
include "engine/backends.pxi"
include "engine/address.pxi"
include "engine/timers.pxi"
include "engine/workers.pxi"
include "engine/engine.pxi"
include "engine/listener.pxi"
include "engine/accept.pxi"
include "engine/connection.pxi"
include "engine/receive.pxi"
include "engine/sendq.pxi"
include "engine/sendfile.pxi"
include "engine/tls.pxi"
include "engine/completion_port.pxi"
include "engine/unix.pxi"
include "engine/adopt.pxi"
include "engine/datagram.pxi"
include "engine/harness.pxi"
include "loop/handles.pxi"
include "loop/core.pxi"
include "loop/selector.pxi"
include "loop/stream.pxi"
include "loop/server.pxi"
include "loop/overlapped.pxi"
