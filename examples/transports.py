"""Serve one transport-independent protocol handler on iocpx or on asyncio/uvloop.

What it shows: the glue between a protocol written once and two transports, so that the examples
(resp_server.py, http_server.py) can be run, and benchmarked, on either with the very same
protocol code. A handler is any object with

    feed(data: bytes) -> bytes | list      what to send for the bytes just received: bytes, or a
                                           list of bytes and FileRegion items, in order
    closing: bool                          True once the connection should be closed after what
                                           feed() returned has been sent (QUIT, Connection: close,
                                           a malformed request)

and one is made per connection by a factory (a callable with no arguments).

iocpx (`start_iocpx`): on_accept makes the connection's handler, on_recv feeds it and sends what
it returns (conn.send, conn.sendfile for a FileRegion: the kernel moves the file), on_close drops
it. One connection's callbacks never overlap, so a handler needs no lock of its own; different
connections may run on different worker threads. conn.close() is graceful: what was queued is
sent first. Flow control comes with iocpx: past max_send_buffer (4 MiB) a connection whose peer
does not read its replies stops being read.

asyncio/uvloop (`serve_asyncio`): a Protocol doing the same in data_received; a FileRegion is
read and written (asyncio has no sendfile for a Protocol's transport); pause_writing /
resume_writing pause reading, the same flow control.

What it needs: Python 3.9+; iocpx for the iocpx runner, `pip install uvloop` for uvloop.

TLS (`--tls-cert FILE --tls-key FILE`): the same handler behind TLS, on iocpx
(`listen(ssl=ctx)`: the engine drives ssl.MemoryBIO/SSLObject; a file is then read and encrypted
instead of moved by the kernel) and on asyncio/uvloop (`create_server(ssl=ctx)`), with the same
certificate. `--tls-alpn h2,http/1.1` sets the ALPN protocols offered.

How to run it: not by itself; `python examples/resp_server.py --help` shows the options it adds
(--host, --port, --loop, --workers, --backend, --first-data, --tls-cert, --tls-key, --tls-alpn).
"""

import os
import signal
import sys


class FileRegion:
    """`count` bytes of the file at `path` from `offset`: sent by conn.sendfile on iocpx."""

    __slots__ = ("path", "offset", "count")

    def __init__(self, path, offset, count):
        self.path, self.offset, self.count = path, offset, count

    def read(self):
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            return f.read(self.count)


# ---- iocpx ----

def start_iocpx(host, port, factory, *, workers=None, backend=None, **listen_options):
    """An iocpx.Server serving handlers from `factory`, started; stop() it when done.
    workers/backend None (the default) leave iocpx's own choice."""
    import iocpx

    handlers = {}                   # connection id -> its handler

    def deliver(conn, handler, out):
        if out.__class__ is bytes:
            if out:
                conn.send(out)
        else:
            for item in out:
                if item.__class__ is bytes:
                    conn.send(item)
                else:
                    conn.sendfile(item.path, item.offset, item.count)
        if handler.closing:
            conn.close()

    def on_accept(conn, data):
        handler = handlers[conn.id] = factory()
        if data:                    # first_data=True delivers the first bytes with the accept
            deliver(conn, handler, handler.feed(data))

    def on_recv(conn, data):
        handler = handlers[conn.id]
        if not handler.closing:     # closing: reading has stopped, a last piece may still come
            deliver(conn, handler, handler.feed(data))

    def on_close(conn, exc):
        handlers.pop(conn.id, None)

    kw = {}
    if workers is not None:
        kw["workers"] = workers
    if backend is not None:
        kw["backend"] = backend
    srv = iocpx.Server((host, port), on_accept=on_accept, on_recv=on_recv, on_close=on_close,
                       **kw, **listen_options)
    srv.start()
    return srv


# ---- asyncio / uvloop ----

def make_protocol_class():
    import asyncio

    class HandlerProtocol(asyncio.Protocol):
        """One connection: feeds its handler and writes what it returns."""

        def __init__(self, factory, transports):
            self.handler = factory()
            self.transports = transports
            self.transport = None

        def connection_made(self, transport):
            self.transport = transport
            self.transports.add(transport)      # asyncio/uvloop set TCP_NODELAY themselves

        def data_received(self, data):
            handler = self.handler
            if handler.closing:
                return
            out = handler.feed(data)
            write = self.transport.write
            if out.__class__ is bytes:
                if out:
                    write(out)
            else:
                for item in out:
                    write(item if item.__class__ is bytes else item.read())
            if handler.closing:
                self.transport.close()          # after the buffered writes

        def pause_writing(self):                # the peer does not read: stop reading it
            self.transport.pause_reading()

        def resume_writing(self):
            self.transport.resume_reading()

        def connection_lost(self, exc):
            self.transports.discard(self.transport)

    return HandlerProtocol


def serve_asyncio(host, port, factory, loop="asyncio", on_ready=None, backlog=1024, ssl=None):
    """Serve until SIGINT/SIGTERM on asyncio's loop or uvloop's; on_ready(address) once
    listening. ssl: an ssl.SSLContext to serve TLS with, or None."""
    import asyncio
    if loop == "uvloop":
        import uvloop
        loop_factory = uvloop.new_event_loop
    else:
        loop_factory = asyncio.new_event_loop
    protocol = make_protocol_class()
    transports = set()

    async def main():
        ev = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                ev.add_signal_handler(sig, stop.set)
            except (NotImplementedError, AttributeError):
                pass                # Windows: Ctrl-C raises KeyboardInterrupt in the loop
        server = await ev.create_server(lambda: protocol(factory, transports), host, port,
                                        backlog=backlog, reuse_address=True, ssl=ssl)
        if on_ready:
            on_ready(server.sockets[0].getsockname()[:2])
        await stop.wait()
        server.close()
        for tr in list(transports):
            tr.abort()
        await server.wait_closed()

    loop_obj = loop_factory()
    try:
        loop_obj.run_until_complete(main())
    except KeyboardInterrupt:
        pass
    finally:
        loop_obj.close()


# ---- command line ----

def add_common_arguments(ap, default_port):
    ap.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    ap.add_argument("--port", type=int, default=default_port,
                    help=f"TCP port (default {default_port}; 0: the kernel picks one)")
    ap.add_argument("--loop", choices=["iocpx", "uvloop", "asyncio"], default="iocpx",
                    help="transport: iocpx (default), or the same handler on uvloop or asyncio")
    ap.add_argument("--workers", type=int, default=None,
                    help="iocpx worker threads (default: iocpx's own default)")
    ap.add_argument("--backend", default=None,
                    help="iocpx backend: io_uring, epoll, iocp (default: iocpx's choice)")
    ap.add_argument("--first-data", action="store_true",
                    help="iocpx: accept a connection only together with its first data")
    ap.add_argument("--tls-cert", metavar="PEM", default=None,
                    help="serve TLS with this certificate chain (PEM; may hold the key too)")
    ap.add_argument("--tls-key", metavar="PEM", default=None,
                    help="the private key of --tls-cert, if not in the same file")
    ap.add_argument("--tls-alpn", metavar="P1,P2", default=None,
                    help="ALPN protocols to offer with --tls-cert, comma-separated")


def tls_context(args):
    """The server ssl.SSLContext the --tls-* options ask for, or None."""
    if args.tls_cert is None:
        if args.tls_key or args.tls_alpn:
            raise SystemExit("--tls-key/--tls-alpn need --tls-cert")
        return None
    import ssl
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(args.tls_cert, args.tls_key)
    if args.tls_alpn:
        ctx.set_alpn_protocols(args.tls_alpn.split(","))
    return ctx


def serve_main(args, what, factory):
    """Run the chosen transport until SIGINT/SIGTERM; prints `serving WHAT on HOST:PORT (...)`."""
    ctx = tls_context(args)

    def ready(address, detail):
        if ctx is not None:
            detail += ", TLS"
        print(f"serving {what} on {address[0]}:{address[1]} ({detail})", flush=True)

    if args.loop != "iocpx":
        if args.workers is not None or args.backend is not None or args.first_data:
            print("--workers/--backend/--first-data apply to --loop iocpx only", file=sys.stderr)
            return 2
        serve_asyncio(args.host, args.port, factory, args.loop,
                      on_ready=lambda a: ready(a, f"{args.loop}, pid {os.getpid()}"), ssl=ctx)
        return 0
    # POSIX: block the stop signals before the engine starts its threads, so they inherit the
    # mask and the main thread alone takes them, in sigwait: no polling loop, no wake-ups while
    # serving. Windows has no sigwait: Server.serve_forever() until Ctrl-C.
    posix = hasattr(signal, "pthread_sigmask")
    if posix:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    opts = {"first_data": True} if args.first_data else {}
    if ctx is not None:
        opts["ssl"] = ctx
    srv = start_iocpx(args.host, args.port, factory, workers=args.workers, backend=args.backend,
                      **opts)
    try:
        eng = srv.engine
        ready(srv.address, f"iocpx {eng.backend}, {eng.workers} workers, pid {os.getpid()}")
        if posix:
            signal.sigwait({signal.SIGTERM, signal.SIGINT})
        else:
            srv.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        srv.stop(timeout=10)
    return 0
