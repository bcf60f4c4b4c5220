# The loop's servers: asyncio's create_server()/create_unix_server() make and
# bind the listening sockets and keep them (asyncio.Server.sockets); each one
# is served by an engine Listener on a duplicate of its descriptor, with the
# engine's pre-posted accepts. An accepted connection becomes a
# StreamTransport (plain, or under asyncio's SSLProtocol) right in the accept
# completion: no Task per connection, as asyncio's _accept_connection2 has.

import inspect as _inspect
from asyncio import base_events as _aio_base_events
from asyncio import sslproto as _aio_sslproto

cdef bint SERVER_ATTACH_TAKES_TRANSPORT = \
    "transport" in _inspect.signature(_aio_base_events.Server._attach).parameters
cdef object _SSLProtocol = _aio_sslproto.SSLProtocol
cdef bint SSLPROTO_SHUTDOWN_TIMEOUT = \
    "ssl_shutdown_timeout" in _inspect.signature(_aio_sslproto.SSLProtocol).parameters


cdef object make_ssl_protocol(LoopCore loop, object app_protocol, object sslcontext,
                              object waiter, bint server_side, object server_hostname,
                              object handshake_timeout, object shutdown_timeout,
                              bint call_connection_made=True):
    """asyncio's SSLProtocol (the version of the running Python), as the
    selector loop's _make_ssl_transport builds it."""
    kw = {"ssl_handshake_timeout": handshake_timeout}
    if SSLPROTO_SHUTDOWN_TIMEOUT:
        kw["ssl_shutdown_timeout"] = shutdown_timeout
    return _SSLProtocol(loop, app_protocol, sslcontext, waiter, server_side, server_hostname,
                        call_connection_made=call_connection_made, **kw)


@cython.final
cdef class ServerGlue:
    """What one served socket's accepts turn into (its Listener's glue)."""

    def __repr__(self):
        return f"<iocpx.ServerGlue {self.listener!r}>"


cdef void server_on_accept(ServerGlue g, Connection c) except *:
    """An accepted connection (engine accept completion): protocol, transport."""
    cdef LoopCore loop = g.loop
    try:
        protocol = g.protocol_factory()
        if g.sslcontext is not None:
            waiter = loop.create_future()
            ssl_proto = make_ssl_protocol(loop, protocol, g.sslcontext, waiter, True, None,
                                          g.handshake_timeout, g.shutdown_timeout)
            stream_new(loop, c, ssl_proto, None, g.server, None)
            waiter.add_done_callback(_ssl_accept_done)
        else:
            stream_new(loop, c, protocol, None, g.server, None)
    except (SystemExit, KeyboardInterrupt) as exc:
        loop.pending_exc = exc
        c._abort(None)
    except BaseException as exc:
        if loop._debug:
            loop.call_exception_handler({"message": "Error on transport creation for incoming connection",
                                         "exception": exc})
        else:
            loop.call_exception_handler({"message": "Error on transport creation for incoming connection",
                                         "exception": exc})
        c._abort(None)


def _ssl_accept_done(fut):
    """A server-side TLS handshake ended; its failure was reported by
    SSLProtocol (and the connection closed): only retrieve it here."""
    if not fut.cancelled():
        fut.exception()


cdef object server_start(LoopCore loop, object protocol_factory, object sock, object sslcontext,
                         object server, object backlog, object handshake_timeout,
                         object shutdown_timeout):
    """BaseSelectorEventLoop._start_serving: serve sock (listening already)."""
    cdef ServerGlue g = ServerGlue.__new__(ServerGlue)
    cdef Listener lst
    g.loop = loop
    g.protocol_factory = protocol_factory
    g.sslcontext = sslcontext
    g.server = server
    g.handshake_timeout = handshake_timeout
    g.shutdown_timeout = shutdown_timeout
    if ON_WINDOWS:
        # The engine borrows the socket itself: _stop_serving cancels the
        # accepts (CancelIoEx, at once) and then closes it, and closing ends
        # the listening at once, as asyncio's does.
        lst = loop.eng.listen(sock=sock.fileno(), backlog=backlog if backlog is not None else 100)
        lst.borrowed = 1
    else:
        # A duplicate the engine owns (sock stays asyncio.Server's): io_uring
        # accepts hold the socket until they are reaped, so _stop_serving
        # shuts the duplicate down to stop the listening at once.
        dup = sock.dup()
        try:
            lst = loop.eng.listen(sock=dup, backlog=backlog if backlog is not None else 100)
        except BaseException:
            dup.close()
            raise
    lst.glue = g
    g.listener = lst
    loop.serving[sock.fileno()] = g
    return g


cdef int server_stop(LoopCore loop, object sock) except -1:
    """BaseSelectorEventLoop._stop_serving: stop accepting on sock and close it."""
    cdef ServerGlue g
    glue = loop.serving.pop(sock.fileno(), None)
    if glue is not None:
        g = <ServerGlue>glue
        fd = g.listener.fd
        listener_close_async(g.listener)
        if fd >= 0 and not ON_WINDOWS:
            # The engine's duplicate closes once its accepts are reaped (the
            # next iteration); until then it would still take connections.
            # Shut it down now: the port refuses from here on, as asyncio's does.
            s = _socket_mod.socket(fileno=fd)
            try:
                s.shutdown(_socket_mod.SHUT_RDWR)
            except OSError:
                pass
            finally:
                s.detach()
        loop.eng._kick()
    sock.close()
    return 0
