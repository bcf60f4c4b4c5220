"""iocpx as an asyncio event loop.

``iocpx.EventLoop`` joins the engine's C half (``iocpx._core.LoopCore``: the
wait on the completion queue, the ready queue, timers in the engine's heap,
stream transports on engine connections, servers on engine listeners,
readiness through OP_POLL) with asyncio's own selector event loop class, which
supplies what is the same for every loop (create_connection and happy
eyeballs, create_server, getaddrinfo, executors, sendfile fallback, start_tls,
the exception handler, debug mode; on Linux also Unix sockets, pipes,
subprocesses and signals) on top of that readiness. The running Python's own
asyncio provides those parts, so their behaviour is that version's.

Use it as::

    asyncio.run(main(), loop_factory=iocpx.new_event_loop)     # 3.12+
    iocpx.run(main())                                          # any version
    uvicorn app:app --loop iocpx:new_event_loop
"""
import asyncio
import io
import os
import signal
import sys
import threading

from asyncio import events, exceptions, selector_events
from asyncio.log import logger

# private classes, not in the stub; StreamTransport is imported for the docs and isinstance
from iocpx._core import LoopCore, StreamTransport  # type: ignore[attr-defined]  # noqa: F401
from iocpx import _core

__all__ = ["EventLoop", "EventLoopPolicy", "new_event_loop", "run"]

if sys.platform == "win32":
    import weakref
    from asyncio import proactor_events, windows_events
    _Base = selector_events.BaseSelectorEventLoop
    _HAVE_PIDFD = False

    class _PortProactor:
        """What asyncio's proactor pipe transports and its Windows subprocess
        transport call on `loop._proactor`, as overlapped operations on this
        loop's completion port (iocpx/loop/overlapped.pxi): those asyncio
        classes then run unchanged, their I/O completing among the loop's
        other completions."""

        def __init__(self, loop):
            self._loop = loop
            self._joined = weakref.WeakSet()    # pipe objects whose handle is on the port

        def _join(self, conn):
            if conn not in self._joined:
                _core._ov_adopt(self._loop, conn.fileno())
                self._joined.add(conn)
            return conn.fileno()

        def recv(self, conn, nbytes, flags=0):
            return _core._ov_recv(self._loop, self._join(conn), nbytes)

        def recv_into(self, conn, buf, flags=0):
            return _core._ov_recv_into(self._loop, self._join(conn), buf)

        def send(self, conn, buf, flags=0):
            return _core._ov_send(self._loop, self._join(conn), buf)

        def wait_for_handle(self, handle, timeout=None):
            if timeout is not None:
                raise ValueError("iocpx: wait_for_handle() takes no timeout")
            return _core._ov_wait(self._loop, handle)
else:
    from asyncio import unix_events
    _Base = unix_events._UnixSelectorEventLoop

    class _ReadPipeTransport(unix_events._UnixReadPipeTransport):  # type: ignore[name-defined]
        """asyncio's Unix read-pipe transport, reading at most 64 KiB at a time
        where asyncio reads 256 KiB. A pipe holds 64 KiB unless it was enlarged,
        so reads are no smaller; but a 256 KiB os.read() buffer is above glibc's
        mmap threshold until something has raised it, and then every read maps,
        faults in and unmaps fresh pages: 0.9-1.2 ms of CPU per MiB instead of
        0.35 in bench/loop_os.py's pipe row, on one run or another of the same
        code (uvloop reads into a buffer of its own)."""
        max_size = 64 * 1024

    def _pidfd_works():
        if not hasattr(os, "pidfd_open"):
            return False
        try:
            os.close(os.pidfd_open(os.getpid()))
        except OSError:
            return False
        return True

    _HAVE_PIDFD = _pidfd_works()


async def _subprocess_started(transp, waiter):
    """A subprocess transport once its pipes are connected (waiter); one that
    fails to start is closed and its process waited for, as asyncio does."""
    try:
        await waiter
    except (SystemExit, KeyboardInterrupt):
        raise
    except BaseException:
        transp.close()
        await transp._wait()
        raise
    return transp


class EventLoop(LoopCore, _Base):
    """An asyncio event loop on the iocpx engine (io_uring, epoll or iocp).

    EventLoop(backend=None): backend as for iocpx.Engine (None: IOCPX_BACKEND,
    else the best one available)."""

    def __init__(self, backend=None):
        self._core_init(backend)
        _Base.__init__(self, self._make_selector())
        self._child_pidfds = {}             # pidfd -> pid of children being watched
        if sys.platform == "win32":
            self._proactor = _PortProactor(self)
            # Ctrl-C: the console handler's byte on the self-pipe wakes the wait,
            # and the loop then raises KeyboardInterrupt (as ProactorEventLoop does).
            self._wakeup_set = False
            if threading.current_thread() is threading.main_thread():
                try:
                    signal.set_wakeup_fd(self._csock.fileno())
                    self._wakeup_set = True
                except (ValueError, OSError):
                    pass

    # ---- servers: engine listeners with pre-posted accepts -----------------

    def _start_serving(self, protocol_factory, sock, sslcontext=None, server=None,
                       backlog=100, ssl_handshake_timeout=None, ssl_shutdown_timeout=None):
        from asyncio import constants
        if ssl_handshake_timeout is None:
            ssl_handshake_timeout = constants.SSL_HANDSHAKE_TIMEOUT
        if ssl_shutdown_timeout is None:
            ssl_shutdown_timeout = getattr(constants, "SSL_SHUTDOWN_TIMEOUT", 30.0)
        self._core_start_serving(protocol_factory, sock, sslcontext, server, backlog,
                                 ssl_handshake_timeout, ssl_shutdown_timeout)

    def _stop_serving(self, sock):
        self._core_stop_serving(sock)

    # ---- transports on engine connections ---------------------------------

    def _make_socket_transport(self, sock, protocol, waiter=None, *, extra=None, server=None):
        return self._core_socket_transport(sock, protocol, waiter, extra, server)

    def _make_ssl_transport(self, rawsock, protocol, sslcontext, waiter=None, *,
                            server_side=False, server_hostname=None, extra=None, server=None,
                            ssl_handshake_timeout=None, ssl_shutdown_timeout=None,
                            call_connection_made=True):
        from asyncio import constants, sslproto
        if ssl_handshake_timeout is None:
            ssl_handshake_timeout = constants.SSL_HANDSHAKE_TIMEOUT
        kw = {"ssl_handshake_timeout": ssl_handshake_timeout}
        if hasattr(constants, "SSL_SHUTDOWN_TIMEOUT"):
            kw["ssl_shutdown_timeout"] = (constants.SSL_SHUTDOWN_TIMEOUT
                                          if ssl_shutdown_timeout is None else ssl_shutdown_timeout)
        ssl_protocol = sslproto.SSLProtocol(self, protocol, sslcontext, waiter, server_side,
                                            server_hostname, call_connection_made=call_connection_made,
                                            **kw)
        self._core_socket_transport(rawsock, ssl_protocol, None, extra, server)
        return ssl_protocol._app_transport

    # ---- loop.sendfile(): the engine's kernel path -------------------------

    async def _sendfile_native(self, transp, file, offset, count):
        if not isinstance(transp, StreamTransport):
            raise exceptions.SendfileNotAvailableError("not an iocpx stream transport")
        try:
            fileno = file.fileno()
        except (AttributeError, io.UnsupportedOperation) as err:
            raise exceptions.SendfileNotAvailableError("not a regular file") from err
        try:
            fsize = os.fstat(fileno).st_size
        except OSError:
            raise exceptions.SendfileNotAvailableError("not a regular file") from None
        todo = max(0, fsize - offset)
        if count:
            todo = min(todo, count)
        if todo == 0:
            return 0
        await transp._make_empty_waiter()       # what was written before goes first
        transp._reset_empty_waiter()
        job = None
        try:
            job = transp._sendfile_queue(fileno, offset, todo)
            await transp._make_empty_waiter()   # (writes raise until the file is out)
            return todo
        finally:
            transp._reset_empty_waiter()
            if job is not None and job.offset > offset:
                file.seek(job.offset)           # what went out, as asyncio's does

    # ---- subprocesses: exit noticed through a pidfd (Linux) ----------------

    if sys.platform != "win32":

        async def _make_subprocess_transport(self, protocol, args, shell, stdin, stdout,
                                             stderr, bufsize, extra=None, **kwargs):
            """asyncio's Unix subprocess transport; the child's exit is seen
            through a pidfd polled on the loop (no SIGCHLD handler to race, no
            helper thread, works on a loop in any thread). Without pidfds
            (Linux < 5.3) asyncio's child watcher does it, as usual."""
            if not _HAVE_PIDFD:
                return await super()._make_subprocess_transport(
                    protocol, args, shell, stdin, stdout, stderr, bufsize, extra=extra, **kwargs)
            waiter = self.create_future()
            transp = unix_events._UnixSubprocessTransport(
                self, protocol, args, shell, stdin, stdout, stderr, bufsize,
                waiter=waiter, extra=extra, **kwargs)
            self._watch_child(transp.get_pid(), transp)
            return await _subprocess_started(transp, waiter)

        def _watch_child(self, pid, transp):
            try:
                pidfd = os.pidfd_open(pid)
            except OSError:
                # out of descriptors, say: a thread waits for this child instead
                threading.Thread(target=self._child_wait_thread, args=(pid, transp),
                                 name=f"iocpx-waitpid-{pid}", daemon=True).start()
                return
            self._child_pidfds[pidfd] = pid
            self._add_reader(pidfd, self._child_exited, pidfd, pid, transp)

        def _child_exited(self, pidfd, pid, transp):
            self._remove_reader(pidfd)
            self._child_pidfds.pop(pidfd, None)
            os.close(pidfd)
            try:
                _, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                status = None
            self._child_report(pid, transp, status)

        def _child_wait_thread(self, pid, transp):
            try:
                _, status = os.waitpid(pid, 0)
            except ChildProcessError:
                status = None
            if not self.is_closed():
                self.call_soon_threadsafe(self._child_report, pid, transp, status)

        def _child_report(self, pid, transp, status):
            if status is None:          # reaped by someone else (os.wait() elsewhere)
                logger.warning("Unknown child process pid %d, will report returncode 255", pid)
                returncode = 255
            else:
                returncode = os.waitstatus_to_exitcode(status)
            if self.get_debug():
                logger.debug("process %s exited with returncode %s", pid, returncode)
            transp._process_exited(returncode)

        def add_signal_handler(self, sig, callback, *args):
            """asyncio's, but a signal that finds the wake-up socket full is not
            reported as an error from the C signal handler ("Exception ignored ...
            BlockingIOError" on asyncio's loop under a storm): a full socket means
            the loop is being woken already, and POSIX coalesces such signals anyway."""
            super().add_signal_handler(sig, callback, *args)
            signal.set_wakeup_fd(self._csock.fileno(), warn_on_full_buffer=False)

    # ---- pipes and subprocesses: asyncio's proactor classes on Windows, its Unix ones here --

    if sys.platform == "win32":

        def _make_read_pipe_transport(self, pipe, protocol, waiter=None, extra=None):
            return proactor_events._ProactorReadPipeTransport(self, pipe, protocol, waiter, extra)

        def _make_write_pipe_transport(self, pipe, protocol, waiter=None, extra=None):
            return proactor_events._ProactorWritePipeTransport(self, pipe, protocol, waiter, extra)

        async def _make_subprocess_transport(self, protocol, args, shell, stdin, stdout,
                                             stderr, bufsize, extra=None, **kwargs):
            """asyncio's Windows subprocess transport: overlapped pipes and the
            exit through a wait posted to the loop's port."""
            waiter = self.create_future()
            transp = windows_events._WindowsSubprocessTransport(
                self, protocol, args, shell, stdin, stdout, stderr, bufsize,
                waiter=waiter, extra=extra, **kwargs)
            return await _subprocess_started(transp, waiter)

    else:

        def _make_read_pipe_transport(self, pipe, protocol, waiter=None, extra=None):
            return _ReadPipeTransport(self, pipe, protocol, waiter, extra)

    # ---- closing ----------------------------------------------------------

    def close(self):
        if self.is_running():
            raise RuntimeError("Cannot close a running event loop")
        if self.is_closed():
            return
        if sys.platform == "win32" and self._wakeup_set:
            self._wakeup_set = False
            if threading.current_thread() is threading.main_thread():
                signal.set_wakeup_fd(-1)
        try:
            _Base.close(self)
        finally:
            for pidfd in list(self._child_pidfds):
                os.close(pidfd)
            self._child_pidfds.clear()
            self._core_close()

    def __repr__(self):
        return (f"<{type(self).__name__} backend={self.backend} running={self.is_running()} "
                f"closed={self.is_closed()} debug={self.get_debug()}>")


def new_event_loop(backend=None):
    """A new iocpx.EventLoop (backend: io_uring, epoll, iocp; None picks as
    iocpx.Engine does, IOCPX_BACKEND first)."""
    return EventLoop(backend)


def run(main, *, debug=None):
    """asyncio.run(main) on a new iocpx.EventLoop."""
    if sys.version_info >= (3, 12):
        return asyncio.run(main, debug=debug, loop_factory=new_event_loop)
    if events._get_running_loop() is not None:
        raise RuntimeError("iocpx.run() cannot be called from a running event loop")
    if sys.version_info >= (3, 11):
        with asyncio.Runner(debug=debug, loop_factory=new_event_loop) as runner:
            return runner.run(main)
    # 3.9, 3.10: asyncio.run's steps, with our loop
    if not asyncio.iscoroutine(main):
        raise ValueError(f"a coroutine was expected, got {main!r}")
    loop = new_event_loop()
    try:
        events.set_event_loop(loop)
        if debug is not None:
            loop.set_debug(debug)
        return loop.run_until_complete(main)
    finally:
        try:
            _cancel_all_tasks(loop)
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
        finally:
            events.set_event_loop(None)
            loop.close()


def _cancel_all_tasks(loop):
    to_cancel = asyncio.all_tasks(loop)
    if not to_cancel:
        return
    for task in to_cancel:
        task.cancel()
    loop.run_until_complete(asyncio.gather(*to_cancel, return_exceptions=True))
    for task in to_cancel:
        if task.cancelled():
            continue
        if task.exception() is not None:
            loop.call_exception_handler({
                "message": "unhandled exception during iocpx.run() shutdown",
                "exception": task.exception(),
                "task": task,
            })


if sys.platform == "win32":
    _PolicyBase = asyncio.DefaultEventLoopPolicy
else:
    _PolicyBase = asyncio.DefaultEventLoopPolicy


class EventLoopPolicy(_PolicyBase):
    """An asyncio event loop policy whose loops are iocpx.EventLoop
    (asyncio.set_event_loop_policy(iocpx.EventLoopPolicy()))."""

    def _loop_factory(self):
        return new_event_loop()

    def new_event_loop(self):
        return new_event_loop()
