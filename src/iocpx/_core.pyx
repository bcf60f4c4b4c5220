# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The engine: the completion-port server model, written once for every backend.

One translation unit (the worker thread-local in _sys.h is `static`),
assembled from one file per concern, as uvloop assembles loop.pyx. The class
layouts are in _core.pxd; README "Layout" maps each step of the model to its
file:

  engine/errors.pxi      exceptions; a peer's failure -> the one on_close exception
  engine/backends.pxi    which backends exist, the default, making one
  engine/address.pxi     addresses and argument checks
  engine/timers.pxi      the timer heap: call_later/call_at/call_soon, internal timers
  engine/workers.pxi     the worker pool: leader, dispatch, watcher and rescue
  engine/engine.pxi      Engine: the port, its workers, listen/connect/close/stats
  engine/listener.pxi    Listener: the listening socket's life cycle
  engine/accept.pxi      accepts, pre-posted and re-posted, and the first-data path
  engine/connection.pxi  Connection: per-socket context, connect, close, on_close
  engine/receive.pxi     the receive loop, re-post, pause/resume
  engine/sendq.pxi       the send queue and flow control
  engine/sendfile.pxi    sendfile (TransmitFile / sendfile / splice)
  engine/tls.pxi         TLS: ssl.MemoryBIO + SSLObject between the receive path and the send queue
  engine/completion_port.pxi  CompletionPort: post/get on the raw port
  engine/unix.pxi        Unix-domain sockets: paths, abstract names, the socket file
  engine/adopt.pxi       sockets made elsewhere: listen(sock=...), Engine.adopt()
  engine/datagram.pxi    UDP: Engine.datagram() -> Endpoint, sendto, drops counted
  engine/harness.pxi     BackendTester: one backend driven op by op (contract tests)
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
