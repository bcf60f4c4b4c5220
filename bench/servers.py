"""Echo servers for the iocpx benchmarks: the same echo served by asyncio, uvloop, iocpx and a
thread per client (plain blocking sockets: the model's counter-example); and the UDP echo
served by asyncio, uvloop and iocpx (kinds asyncio-udp, uvloop-udp, iocpx-udp: bench/udp_echo.py).

What it shows: nothing by itself. bench/echo.py starts one of these per benchmark row, pinned to
CPU 0, and measures its CPU time per round trip. Each server echoes every received chunk back on
the same connection, with the least code its framework allows (asyncio/uvloop: a Protocol whose
data_received calls transport.write; iocpx: on_recv calls conn.send), so the figure is the cost
of the framework, not of the application. The thread-per-client server runs one Python thread
per connection doing blocking recv/sendall, the design iocpx exists to replace. (The C io_uring
server, the practical limit, is bench/uring_echo.c, a separate binary with the same protocol.)

What it needs: Python 3.11+; `pip install uvloop` for the uvloop server; an importable iocpx
(normally the in-place build in src/iocpx, found through PYTHONPATH) for the iocpx server.

How to run it (by hand; bench/echo.py does this for you):

    python bench/servers.py asyncio 0                        # port 0: the kernel picks one
    python bench/servers.py threads 0
    PYTHONPATH=src python bench/servers.py iocpx 9000 --workers 1 --backend io_uring
    PYTHONPATH=src python bench/servers.py iocpx 9000 --workers 0 --first-data
    python bench/servers.py uvloop 0 --tls-cert bench/.build/tls/server.pem   # the echo over TLS
    PYTHONPATH=src python bench/servers.py iocpx-udp 9000 --workers 1     # UDP, 127.0.0.1:9000
    python bench/servers.py uvloop-udp 9000     # create_datagram_endpoint + DatagramProtocol

Once listening it prints "READY <port>" on stdout (flushed). It serves until SIGTERM or SIGINT,
then closes cleanly, prints one "STATS {...}" line on stderr and exits 0. The iocpx server also
answers SIGUSR1 with a "STATS {...}" line of engine.stats() on stdout (bench/silent_clients.py
reads the connections it holds that way), and takes --first-data [--first-data-timeout S]. If
the framework cannot be imported it prints "UNAVAILABLE <reason>" on stdout and exits 3.
With --tls-cert PEM (certificate chain and key in one file) asyncio, uvloop and iocpx serve the
same echo over TLS: create_server(ssl=ctx) and listen(ssl=ctx) with the same ssl.SSLContext.
"""

import argparse
import json
import os
import signal
import sys

UNAVAILABLE_EXIT = 3


def _ready(port):
    print(f"READY {port}", flush=True)


def _unavailable(reason):
    print(f"UNAVAILABLE {reason}", flush=True)
    sys.exit(UNAVAILABLE_EXIT)


# ---- asyncio and uvloop: one Protocol, two loops ----

def tls_context(pem):
    """The server ssl.SSLContext every framework gets for --tls-cert, or None."""
    if pem is None:
        return None
    import ssl
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(pem)
    return ctx


def _loop_factory(kind):
    """uvloop's loop for the uvloop kinds ("uvloop", "uvloop-udp"), asyncio's otherwise."""
    import asyncio

    if kind.startswith("iocpx-loop"):
        import iocpx
        backend = os.environ.get("IOCPX_LOOP_BACKEND") or None
        return lambda: iocpx.new_event_loop(backend)
    if not kind.startswith("uvloop"):
        return asyncio.new_event_loop
    try:
        import uvloop
    except ImportError as exc:
        _unavailable(f"{exc} (pip install uvloop)")
    return uvloop.new_event_loop


def serve_asyncio(kind, port, backlog, ssl=None):
    import asyncio

    loop_factory = _loop_factory(kind)

    transports = set()      # open connections, so shutdown can close them (3.11 does not)

    class EchoProtocol(asyncio.Protocol):
        def connection_made(self, transport):
            self.transport = transport
            transports.add(transport)
            # asyncio and uvloop already set TCP_NODELAY on accepted TCP sockets.

        def data_received(self, data):
            self.transport.write(data)

        def connection_lost(self, exc):
            transports.discard(self.transport)

    async def main():
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        server = await loop.create_server(EchoProtocol, "127.0.0.1", port, backlog=backlog,
                                          reuse_address=True, ssl=ssl)
        _ready(server.sockets[0].getsockname()[1])
        await stop.wait()
        server.close()
        n_open = len(transports)
        for tr in list(transports):
            tr.abort()
        await server.wait_closed()
        await asyncio.sleep(0)          # let connection_lost callbacks run
        return {"kind": kind, "open_at_stop": n_open}

    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(main())


# ---- UDP echo: asyncio/uvloop's create_datagram_endpoint, iocpx's Engine.datagram ----

def serve_asyncio_udp(kind, port):
    import asyncio

    loop_factory = _loop_factory(kind)

    class EchoDatagram(asyncio.DatagramProtocol):
        def connection_made(self, transport):
            self.transport = transport

        def datagram_received(self, data, addr):
            self.transport.sendto(data, addr)

    async def main():
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        transport, _ = await loop.create_datagram_endpoint(EchoDatagram,
                                                           local_addr=("127.0.0.1", port))
        _ready(transport.get_extra_info("sockname")[1])
        await stop.wait()
        transport.close()
        await asyncio.sleep(0)
        return {"kind": kind}

    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(main())


def serve_iocpx_udp(port, workers, backend):
    sigs = {signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, sigs)     # as serve_iocpx: workers inherit the mask
    try:
        import iocpx
    except Exception as exc:
        _unavailable(f"{type(exc).__name__}: {exc}")

    def echo(ep, data, addr):
        ep.sendto(data, addr)

    eng = iocpx.Engine(workers=workers, backend=backend)
    try:
        ep = eng.datagram(("127.0.0.1", port), on_datagram=echo)
        _ready(ep.address[1])
        signal.sigwait(sigs)
        stats = eng.stats()
        ep.close()
    finally:
        eng.close(timeout=10)
    stats = dict(stats)
    stats["kind"] = "iocpx-udp"
    return stats


# ---- a thread per client: blocking sockets, the counter-example ----

def serve_threads(port, backlog):
    import socket
    import threading

    stopping = threading.Event()
    conns = set()               # open sockets, so shutdown can close them
    lock = threading.Lock()

    def handle(sock):
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            recv, sendall = sock.recv, sock.sendall
            while True:
                data = recv(65536)
                if not data:
                    break
                sendall(data)
        except OSError:
            pass
        finally:
            with lock:
                conns.discard(sock)
            sock.close()

    def on_stop(signum, frame):
        stopping.set()
        raise KeyboardInterrupt     # interrupts the blocking accept() below

    lsock = socket.create_server(("127.0.0.1", port), backlog=backlog)
    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
    _ready(lsock.getsockname()[1])
    accepted = 0
    try:
        while not stopping.is_set():
            sock, _ = lsock.accept()
            accepted += 1
            with lock:
                conns.add(sock)
            threading.Thread(target=handle, args=(sock,), daemon=True).start()
    except KeyboardInterrupt:
        pass
    lsock.close()
    with lock:
        n_open = len(conns)
        for sock in list(conns):
            try:
                sock.shutdown(socket.SHUT_RDWR)     # the thread sees EOF and exits
            except OSError:
                pass
    return {"kind": "threads", "accepted": accepted, "open_at_stop": n_open}


# ---- iocpx: the public API, nothing else ----

def serve_iocpx(port, workers, backend, backlog, first_data=False, first_data_timeout=None,
                ssl=None):
    # Block the stop signals (and SIGUSR1, "print your stats") before the engine starts its
    # worker threads, so they inherit the mask and the main thread alone receives them, in
    # sigwait (no polling, no wake-ups).
    sigs = {signal.SIGTERM, signal.SIGINT, signal.SIGUSR1}
    signal.pthread_sigmask(signal.SIG_BLOCK, sigs)
    try:
        import iocpx
    except Exception as exc:        # ImportError, or a broken in-place build
        _unavailable(f"{type(exc).__name__}: {exc}")

    def echo_first(conn, data):     # first_data=True: the first bytes come with the accept
        if data:
            conn.send(data)

    eng = iocpx.Engine(workers=workers, backend=backend)
    try:
        listen_kw = {}
        if ssl is not None:
            listen_kw["ssl"] = ssl
        if backlog is not None:
            listen_kw["backlog"] = backlog
        if first_data:
            listen_kw.update(first_data=True, on_accept=echo_first)
        fdt = "not asked"
        if first_data_timeout is not None:
            try:                    # a newer listen option: pass it only where it exists
                lst = eng.listen(("127.0.0.1", port), on_recv=lambda conn, data: conn.send(data),
                                 first_data_timeout=first_data_timeout, **listen_kw)
                fdt = f"{first_data_timeout:g} s"
            except TypeError:
                lst = None
                fdt = "not supported by this iocpx"
        else:
            lst = None
        if lst is None:
            lst = eng.listen(("127.0.0.1", port),
                             on_recv=lambda conn, data: conn.send(data), **listen_kw)
        print(f"OPTIONS first_data={first_data} first_data_timeout={fdt}", file=sys.stderr,
              flush=True)
        _ready(lst.address[1])
        while signal.sigwait(sigs) == signal.SIGUSR1:
            print("STATS " + json.dumps(eng.stats(), default=repr), flush=True)
        stats = eng.stats()     # before close: what was open while serving
        lst.close()
    finally:
        eng.close(timeout=10)
    try:
        stats = dict(stats)
        stats["after_close"] = dict(eng.stats())
    except Exception as exc:        # stats() after close may be refused; say so, do not fail
        stats["after_close"] = f"unavailable: {exc!r}"
    stats["kind"] = "iocpx"
    return stats


def main(argv=None):
    ap = argparse.ArgumentParser(description="Echo server for bench/echo.py")
    ap.add_argument("kind", choices=["asyncio", "uvloop", "iocpx", "threads", "iocpx-loop",
                                     "asyncio-udp", "uvloop-udp", "iocpx-udp"])
    ap.add_argument("port", type=int, help="TCP port on 127.0.0.1; 0 lets the kernel choose")
    ap.add_argument("--workers", type=int, default=1,
                    help="iocpx worker threads (default 1; 0: iocpx's own default)")
    ap.add_argument("--backend", default=None, help="iocpx backend (default: iocpx's choice)")
    ap.add_argument("--backlog", type=int, default=None,
                    help="listen backlog (default: 1024 for asyncio/uvloop/threads, iocpx's own)")
    ap.add_argument("--first-data", action="store_true",
                    help="iocpx: accept a connection only with its first data (first_data=True)")
    ap.add_argument("--first-data-timeout", type=float, default=None,
                    help="iocpx: pass first_data_timeout=S to listen() if this iocpx has it")
    ap.add_argument("--tls-cert", metavar="PEM", default=None,
                    help="serve the echo over TLS with this certificate chain + key (one PEM); "
                         "asyncio, uvloop and iocpx")
    args = ap.parse_args(argv)
    if args.tls_cert and args.kind == "threads":
        ap.error("--tls-cert: the thread-per-client server has no TLS variant")
    ctx = tls_context(args.tls_cert)

    if args.kind == "iocpx-udp":
        stats = serve_iocpx_udp(args.port, args.workers or None, args.backend)
    elif args.kind.endswith("-udp"):
        stats = serve_asyncio_udp(args.kind, args.port)
    elif args.kind == "iocpx":
        stats = serve_iocpx(args.port, args.workers or None, args.backend, args.backlog,
                            args.first_data, args.first_data_timeout, ctx)
    elif args.kind == "threads":
        stats = serve_threads(args.port, args.backlog or 1024)
    else:
        stats = serve_asyncio(args.kind, args.port, args.backlog or 1024, ctx)
    stats["pid"] = os.getpid()
    print("STATS " + json.dumps(stats, default=repr), file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
