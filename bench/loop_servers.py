"""The asyncio applications bench/loop.py runs on each event loop: iocpx.EventLoop (io_uring,
epoll), uvloop, rloop and asyncio's own loop, the very same code on each.

What it shows: nothing by itself. Each app is the least code that does its job:
  - echo: an asyncio.Protocol whose data_received calls transport.write;
  - buffered: an asyncio.BufferedProtocol (get_buffer / buffer_updated, one 64 KiB buffer);
  - streams: asyncio.start_server, reader.read(65536), writer.write + await drain();
  - resp: a minimal RESP server as a Protocol (GET, SET, PING; -ERR for anything else),
    pipelining-aware (every complete command in a chunk answered with one write);
  - starlette: uvicorn (the h11 or httptools protocol, whichever uvicorn picks) serving a
    Starlette app whose one route returns b"Hello, World!\\n" as text/plain;
  - aiohttp: aiohttp.web with the same route and body;
  - threadsafe, threadsafe-wake, timers: not servers: the loop's call_soon_threadsafe and call_later costs,
    measured in this process, printed as one JSON line (see below).

What it needs: Python 3.11+; the loop's package (uvloop, rloop, iocpx through PYTHONPATH);
uvicorn and starlette, aiohttp for those apps.

How to run it (bench/loop.py does this for you):

    PYTHONPATH=src python bench/loop_servers.py echo iocpx-io_uring 127.0.0.1 9000
    python bench/loop_servers.py starlette uvloop 127.0.0.1 9000
    PYTHONPATH=src python bench/loop_servers.py threadsafe iocpx-epoll - 0 --count 200000

A server prints "READY <port>" once it listens and serves until SIGTERM (the default action:
it dies; the bench reads its CPU before). A loop or app that cannot be imported prints
"UNAVAILABLE <reason>" and exits 3.
"""

import argparse
import json
import os
import random
import sys
import threading
import time

LOOPS = ("iocpx-io_uring", "iocpx-epoll", "uvloop", "rloop", "asyncio")
HELLO = b"Hello, World!\n"


def unavailable(reason):
    print(f"UNAVAILABLE {reason}", flush=True)
    sys.exit(3)


def ready(port):
    print(f"READY {port}", flush=True)


def loop_factory(name):
    import asyncio
    try:
        if name.startswith("iocpx-"):
            import iocpx
            backend = name.split("-", 1)[1]
            return lambda: iocpx.new_event_loop(backend)
        if name == "uvloop":
            import uvloop
            return uvloop.new_event_loop
        if name == "rloop":
            import rloop
            return rloop.new_event_loop
    except Exception as exc:
        unavailable(f"{type(exc).__name__}: {exc}")
    return asyncio.new_event_loop


# ---- the protocol servers ----

def echo_protocol():
    import asyncio

    class Echo(asyncio.Protocol):
        def connection_made(self, transport):
            self.transport = transport

        def data_received(self, data):
            self.transport.write(data)
    return Echo


def buffered_protocol():
    import asyncio

    class BufferedEcho(asyncio.BufferedProtocol):
        def connection_made(self, transport):
            self.transport = transport
            self.buf = bytearray(65536)
            self.view = memoryview(self.buf)

        def get_buffer(self, sizehint):
            return self.view

        def buffer_updated(self, nbytes):
            self.transport.write(self.view[:nbytes])
    return BufferedEcho


def resp_protocol():
    import asyncio
    store = {b"key:__rand_int__": b"xxx"}      # what redis-benchmark -t get asks for

    class Resp(asyncio.Protocol):
        """GET, SET, PING over RESP arrays; enough for redis-benchmark -t get,set."""

        def connection_made(self, transport):
            self.transport = transport
            self.buf = b""

        def data_received(self, data):
            buf = self.buf + data if self.buf else data
            out, pos, n = [], 0, len(buf)
            while pos < n:
                if buf[pos] != 42:                  # b"*": inline commands are not served
                    out.append(b"-ERR protocol\r\n")
                    pos = n
                    break
                eol = buf.find(b"\r\n", pos)
                if eol < 0:
                    break
                argc, p, args = int(buf[pos + 1:eol]), eol + 2, []
                for _ in range(argc):
                    eol = buf.find(b"\r\n", p)
                    if eol < 0:
                        break
                    ln = int(buf[p + 1:eol])
                    end = eol + 2 + ln
                    if end + 2 > n:
                        break
                    args.append(buf[eol + 2:end])
                    p = end + 2
                if len(args) < argc:
                    break                           # a partial command: wait for the rest
                pos = p
                cmd = args[0].upper() if args else b""
                if cmd == b"GET" and argc == 2:
                    v = store.get(args[1])
                    out.append(b"$-1\r\n" if v is None else
                               b"$%d\r\n%s\r\n" % (len(v), v))
                elif cmd == b"SET" and argc >= 3:
                    store[args[1]] = args[2]
                    out.append(b"+OK\r\n")
                elif cmd == b"PING":
                    out.append(b"+PONG\r\n")
                else:
                    out.append(b"-ERR unknown command\r\n")
            self.buf = buf[pos:]
            if out:
                self.transport.write(b"".join(out))
    return Resp


def serve_protocol(app, loop_name, host, port):
    import asyncio
    factory = {"echo": echo_protocol, "buffered": buffered_protocol, "resp": resp_protocol}[app]()
    loop = loop_factory(loop_name)()
    asyncio.set_event_loop(loop)
    server = loop.run_until_complete(loop.create_server(factory, host, port, backlog=4096,
                                                        reuse_address=True))
    ready(server.sockets[0].getsockname()[1])
    loop.run_forever()


def serve_streams(loop_name, host, port):
    import asyncio

    async def handle(reader, writer):
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        writer.close()

    loop = loop_factory(loop_name)()
    asyncio.set_event_loop(loop)
    server = loop.run_until_complete(asyncio.start_server(handle, host, port, backlog=4096,
                                                          reuse_address=True))
    ready(server.sockets[0].getsockname()[1])
    loop.run_forever()


# ---- the frameworks ----

def serve_starlette(loop_name, host, port):
    import asyncio
    try:
        import uvicorn
        from starlette.applications import Starlette
        from starlette.responses import PlainTextResponse
        from starlette.routing import Route
    except Exception as exc:
        unavailable(f"{type(exc).__name__}: {exc} (pip install uvicorn starlette)")

    async def hello(request):
        return PlainTextResponse(HELLO)
    app = Starlette(routes=[Route("/", hello)])
    config = uvicorn.Config(app, host=host, port=port, loop="none", log_level="error",
                            access_log=False, lifespan="off", backlog=4096)
    server = uvicorn.Server(config)
    loop = loop_factory(loop_name)()
    asyncio.set_event_loop(loop)

    async def main():
        task = asyncio.ensure_future(server.serve())
        while not server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.02)
        ready(port)
        await task
    loop.run_until_complete(main())


def serve_aiohttp(loop_name, host, port):
    import asyncio
    try:
        from aiohttp import web
    except Exception as exc:
        unavailable(f"{type(exc).__name__}: {exc} (pip install aiohttp)")

    async def hello(request):
        return web.Response(body=HELLO, content_type="text/plain")

    loop = loop_factory(loop_name)()
    asyncio.set_event_loop(loop)

    async def main():
        app = web.Application()
        app.router.add_get("/", hello)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, host, port, backlog=4096, reuse_address=True)
        await site.start()
        ready(port)
        await asyncio.Event().wait()
    loop.run_until_complete(main())


# ---- the loop's own costs, measured in this process ----

def cpu_now():
    return time.clock_gettime(time.CLOCK_PROCESS_CPUTIME_ID)


def bench_threadsafe(loop_name, count, wake=False):
    """One other thread calls loop.call_soon_threadsafe(cb) `count` times as fast as it can
    (wake=True: one at a time, each time waiting until the loop ran it, so every call wakes
    the sleeping loop); the figures: callbacks run per wall second from the first call to the
    last callback, and process CPU (both threads) per callback."""
    import asyncio
    loop = loop_factory(loop_name)()
    done = loop.create_future()
    n = [0]
    ran = threading.Event()

    def cb():
        n[0] += 1
        if wake:
            ran.set()
        if n[0] == count:
            done.set_result(None)

    def producer():
        cst = loop.call_soon_threadsafe
        if wake:
            for _ in range(count):
                cst(cb)
                ran.wait()
                ran.clear()
            return
        for _ in range(count):
            cst(cb)

    async def main():
        await asyncio.sleep(0.05)
        t = threading.Thread(target=producer)
        c0, w0 = cpu_now(), time.monotonic()
        t.start()
        await done
        c1, w1 = cpu_now(), time.monotonic()
        t.join()
        return {"ops": count, "seconds": w1 - w0, "cpu_s": c1 - c0}
    try:
        return loop.run_until_complete(main())
    finally:
        loop.close()


def bench_timers(loop_name, count, spread=0.25):
    """call_later churn: `count` timers with random delays in [0, spread) s, every other one
    cancelled before it fires (as timeouts mostly are), each fired one counted; the figures:
    timers scheduled per process CPU second and CPU us per timer, from the first call_later
    to the last callback."""
    import asyncio
    loop = loop_factory(loop_name)()
    rnd = random.Random(18)
    delays = [rnd.random() * spread for _ in range(count)]
    want = count - count // 2
    fired = [0]
    done = loop.create_future()

    def cb():
        fired[0] += 1
        if fired[0] == want:
            done.set_result(None)

    async def main():
        await asyncio.sleep(0.05)
        call_later = loop.call_later
        c0, w0 = cpu_now(), time.monotonic()
        for i, d in enumerate(delays):
            h = call_later(d, cb)
            if i & 1:
                h.cancel()
        await done
        c1, w1 = cpu_now(), time.monotonic()
        return {"ops": count, "seconds": w1 - w0, "cpu_s": c1 - c0}
    try:
        return loop.run_until_complete(main())
    finally:
        loop.close()


def main(argv=None):
    ap = argparse.ArgumentParser(description="asyncio apps for bench/loop.py")
    ap.add_argument("app", choices=["echo", "buffered", "streams", "resp", "starlette",
                                    "aiohttp", "threadsafe", "threadsafe-wake", "timers"])
    ap.add_argument("loop", choices=LOOPS)
    ap.add_argument("host")
    ap.add_argument("port", type=int)
    ap.add_argument("--count", type=int, default=200000, help="threadsafe, timers: operations")
    a = ap.parse_args(argv)
    if a.app in ("threadsafe", "threadsafe-wake", "timers"):
        res = (bench_timers(a.loop, a.count) if a.app == "timers" else
               bench_threadsafe(a.loop, a.count, wake=a.app == "threadsafe-wake"))
        res.update(app=a.app, loop=a.loop, pid=os.getpid())
        print(json.dumps(res), flush=True)
        return 0
    if a.app == "streams":
        serve_streams(a.loop, a.host, a.port)
    elif a.app == "starlette":
        serve_starlette(a.loop, a.host, a.port)
    elif a.app == "aiohttp":
        serve_aiohttp(a.loop, a.host, a.port)
    else:
        serve_protocol(a.app, a.loop, a.host, a.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
