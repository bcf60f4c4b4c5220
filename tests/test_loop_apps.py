"""Real applications, unmodified, on iocpx.EventLoop: uvicorn + Starlette (HTTP, WebSocket, and
the `uvicorn --loop iocpx:new_event_loop` command line), aiohttp (server, client, run_app),
redis-py's asyncio client against a redis-server of the test's own, websockets, asyncio
streams, psycopg 3 (async, through add_reader/add_writer) against a PostgreSQL cluster of the
test's own, and pyzmq's asyncio sockets.

Every test runs once per Linux backend (io_uring, epoll). The payloads are checked byte for
byte: 1 MiB bodies and messages both ways, and many requests at once. Where a package or a
server binary is missing the test is skipped, saying which (`pip install ".[apps]"`, and
apt-get install redis-server postgresql); CI installs them all."""
import asyncio
import functools
import hashlib
import http.client
import json
import os
import shutil
import signal
import subprocess
import sys

import pytest

import loop_apps
from loop_apps import EXAMPLES, free_port, run

pytestmark = [
    pytest.mark.skipif(not loop_apps.BACKENDS, reason="no iocpx backend available here"),
    # aiohttp's advice in debug mode (python -X dev) about bytes bodies of 1 MiB
    pytest.mark.filterwarnings("ignore:Sending a large body directly:ResourceWarning"),
]

if EXAMPLES not in sys.path:
    sys.path.insert(0, EXAMPLES)

MiB = 1024 * 1024


@pytest.fixture(scope="module", params=loop_apps.BACKENDS or ["none"])
def backend(request):
    """The loop's Linux backends available here (io_uring, epoll)."""
    return request.param


def pattern(n, seed=0):
    """n bytes of a pattern that never repeats at a short period (a shift or a cut shows)."""
    out = bytearray()
    i = seed
    while len(out) < n:
        out += hashlib.sha256(i.to_bytes(8, "big")).digest()
        i += 1
    return bytes(out[:n])


@functools.lru_cache(maxsize=None)
def example_pattern(n):
    """What the examples' GET /bytes/N returns (byte i is i * 7 % 251)."""
    return bytes(i * 7 % 251 for i in range(n))


# ---- asyncio streams ----------------------------------------------------------------

async def _stream_echo(reader, writer):
    try:
        while True:
            head = await reader.readexactly(4)
            n = int.from_bytes(head, "big")
            if n == 0:
                break
            writer.write(head + await reader.readexactly(n))
            await writer.drain()
    finally:
        writer.close()
        await writer.wait_closed()


async def _stream_client(open_connection, sizes, seed):
    reader, writer = await open_connection()
    try:
        for k, n in enumerate(sizes):
            data = pattern(n, seed * 1000 + k)
            writer.write(n.to_bytes(4, "big") + data)
            await writer.drain()
            assert await reader.readexactly(4) == n.to_bytes(4, "big")
            assert await reader.readexactly(n) == data
        writer.write(b"\0\0\0\0")
        await writer.drain()
        assert await reader.read() == b""
    finally:
        writer.close()
        await writer.wait_closed()


def test_streams_tcp(backend):
    """start_server / open_connection: framed echoes of 1 byte to 1 MiB, 50 clients at once."""
    async def main():
        server = await asyncio.start_server(_stream_echo, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server:
            await _stream_client(lambda: asyncio.open_connection("127.0.0.1", port),
                                 [1, 100, 65536, MiB, 3 * MiB + 7], 0)
            await asyncio.gather(*(
                _stream_client(lambda: asyncio.open_connection("127.0.0.1", port),
                               [10, 4096, 200000], seed) for seed in range(1, 51)))
    run(backend, main())


@pytest.mark.skipif(not hasattr(asyncio, "start_unix_server"),
                    reason="asyncio has no Unix-socket streams on this platform")
def test_streams_unix(backend, tmp_path):
    """start_unix_server / open_unix_connection, the same echoes over a Unix socket."""
    path = str(tmp_path / "s")

    async def main():
        server = await asyncio.start_unix_server(_stream_echo, path)
        async with server:
            await asyncio.gather(*(
                _stream_client(lambda: asyncio.open_unix_connection(path), [1, MiB, 5000], seed)
                for seed in range(10)))
    run(backend, main())


# ---- uvicorn + Starlette --------------------------------------------------------------

async def _uvicorn_serving(app, **kw):
    """A uvicorn.Server serving app on a free port of this (running) loop: (server, task, port)."""
    import uvicorn
    # log_config=None: uvicorn's logging.config.dictConfig would close every handler of the
    # process (pytest's included)
    config = uvicorn.Config(app, host="127.0.0.1", port=0, loop="none", log_config=None, **kw)
    server = uvicorn.Server(config)
    task = asyncio.ensure_future(server.serve())
    while not server.started:
        if task.done():
            task.result()
            raise RuntimeError("uvicorn stopped before it started")
        await asyncio.sleep(0.01)
    return server, task, server.servers[0].sockets[0].getsockname()[1]


async def _uvicorn_stop(server, task):
    server.should_exit = True
    await task


@pytest.mark.parametrize("http_impl", ["h11", "httptools"])
def test_uvicorn_starlette_http(backend, http_impl):
    """uvicorn serving the Starlette example in the loop, driven by aiohttp's client on the same
    loop and by http.client in a thread: exact bodies (1 MiB both ways), 300 requests at once."""
    pytest.importorskip("starlette")
    pytest.importorskip("uvicorn")
    aiohttp = pytest.importorskip("aiohttp")
    pytest.importorskip(http_impl)
    import asgi_uvicorn

    def sync_client(port):
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            body = pattern(MiB, 7)
            c.request("POST", "/echo", body=body)
            r = c.getresponse()
            assert (r.status, r.read()) == (200, body)
            c.request("GET", "/")                     # the same keep-alive connection
            r = c.getresponse()
            assert (r.status, r.read()) == (200, b"hello from iocpx\n")
        finally:
            c.close()

    async def main():
        server, task, port = await _uvicorn_serving(asgi_uvicorn.app, http=http_impl)
        base = f"http://127.0.0.1:{port}"
        try:
            async with aiohttp.ClientSession() as s:
                async with s.get(base + "/loop") as r:
                    assert await r.json() == {"loop": "iocpx._loop.EventLoop", "backend": backend}
                async with s.get(base + f"/bytes/{MiB}") as r:
                    assert r.status == 200 and await r.read() == example_pattern(MiB)
                body = pattern(MiB + 3)
                async with s.post(base + "/echo", data=body) as r:
                    assert await r.read() == body

                async def one(i):
                    async with s.post(base + "/echo", data=pattern(i * 37, i)) as r:
                        assert r.status == 200
                        return await r.read() == pattern(i * 37, i)
                assert all(await asyncio.gather(*(one(i) for i in range(300))))
            await asyncio.get_running_loop().run_in_executor(None, sync_client, port)
        finally:
            await _uvicorn_stop(server, task)
    run(backend, main())


@pytest.mark.filterwarnings("ignore::DeprecationWarning")    # uvicorn's "websockets" (legacy)
@pytest.mark.filterwarnings("ignore:The `websockets` implementation is deprecated")
@pytest.mark.parametrize("ws_impl", ["websockets-sansio", "websockets", "wsproto"])
def test_uvicorn_starlette_websocket(backend, ws_impl):
    """uvicorn's WebSocket protocols with Starlette's WebSocket route, the websockets client on
    the same loop: text, 1 MiB binary, 200 messages in a row, 20 clients at once."""
    pytest.importorskip("starlette")
    pytest.importorskip("uvicorn")
    pytest.importorskip("websockets")
    pytest.importorskip(ws_impl.split("-")[0])
    import uvicorn.config
    if ws_impl not in uvicorn.config.WS_PROTOCOLS:
        pytest.skip(f"this uvicorn has no --ws {ws_impl}")
    from websockets.asyncio.client import connect
    import asgi_uvicorn

    async def main():
        server, task, port = await _uvicorn_serving(asgi_uvicorn.app, ws=ws_impl,
                                                    ws_max_size=16 * MiB)
        uri = f"ws://127.0.0.1:{port}/ws"
        try:
            async with connect(uri, max_size=None) as ws:
                await ws.send("héllo")
                assert await ws.recv() == "héllo"
                big = pattern(MiB)
                await ws.send(big)
                assert await ws.recv() == big
                # (no empty message: uvicorn 0.39's websockets-sansio, the last for Python
                # 3.9, drops an empty binary message on asyncio's own loop too)
                for i in range(1, 201):
                    await ws.send(pattern(i, i))
                for i in range(1, 201):
                    assert await ws.recv() == pattern(i, i)

            async def one(i):
                async with connect(uri, max_size=None) as ws:
                    await ws.send(pattern(50000, i))
                    return await ws.recv() == pattern(50000, i)
            assert all(await asyncio.gather(*(one(i) for i in range(20))))
        finally:
            await _uvicorn_stop(server, task)
    run(backend, main())


def test_uvicorn_unix_socket_httpx(backend, tmp_path):
    """uvicorn on a Unix socket (uds=, the loop's create_unix_server), fetched by httpx (anyio's
    asyncio backend) and by aiohttp's UnixConnector; then httpx over TCP: 200 requests at once
    and a 5 MiB streamed body."""
    pytest.importorskip("starlette")
    pytest.importorskip("uvicorn")
    httpx = pytest.importorskip("httpx")
    aiohttp = pytest.importorskip("aiohttp")
    import asgi_uvicorn
    uds = str(tmp_path / "uvicorn.sock")
    body = pattern(MiB, 11)

    async def main():
        server, task, _ = await _uvicorn_serving(asgi_uvicorn.app, uds=uds)
        try:
            async with httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(uds=uds)) as c:
                r = await c.get("http://x/loop")
                assert r.json() == {"loop": "iocpx._loop.EventLoop", "backend": backend}
                assert (await c.post("http://x/echo", content=body)).content == body
                rs = await asyncio.gather(*(c.get(f"http://x/bytes/{i * 100}") for i in range(100)))
                assert [r.content for r in rs] == [example_pattern(i * 100) for i in range(100)]
            async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=uds)) as s:
                async with s.post("http://x/echo", data=body) as r:
                    assert await r.read() == body
        finally:
            await _uvicorn_stop(server, task)
        server, task, port = await _uvicorn_serving(asgi_uvicorn.app)
        try:
            async with httpx.AsyncClient() as c:
                rs = await asyncio.gather(*(c.post(f"http://127.0.0.1:{port}/echo",
                                                   content=body[:i * 5000]) for i in range(200)))
                assert all(r.content == body[:i * 5000] for i, r in enumerate(rs))
                got = bytearray()
                async with c.stream("GET", f"http://127.0.0.1:{port}/bytes/{5 * MiB}") as r:
                    async for chunk in r.aiter_bytes():
                        got += chunk
                assert bytes(got) == example_pattern(5 * MiB)
        finally:
            await _uvicorn_stop(server, task)
    run(backend, main())


@pytest.mark.parametrize("how", ["uvicorn-cli", "uvicorn-workers", "uvicorn.run"])
def test_uvicorn_command_line(backend, how, tmp_path):
    """`uvicorn asgi_uvicorn:app --loop iocpx:new_event_loop` (and the example's uvicorn.run)
    in a child process, IOCPX_BACKEND choosing the backend, driven by http.client and curl;
    SIGINT stops it cleanly, after the application's shutdown."""
    pytest.importorskip("starlette")
    uvicorn = pytest.importorskip("uvicorn")
    pytest.importorskip("websockets")
    if not hasattr(uvicorn.Config, "get_loop_factory"):
        pytest.skip("this uvicorn (before 0.36) takes no --loop module:factory")
    if how == "uvicorn-workers" and sys.platform == "win32":
        pytest.skip("stopping uvicorn's worker processes needs a console Ctrl-C, which Wine does "
                    "not deliver; TerminateProcess on the supervisor would orphan its workers")
    port = free_port()
    if how.startswith("uvicorn-"):
        args = ["-m", "uvicorn", "asgi_uvicorn:app", "--app-dir", EXAMPLES, "--host", "127.0.0.1",
                "--port", str(port), "--loop", "iocpx:new_event_loop"]
        if how == "uvicorn-workers":            # worker processes, each with a loop of its own
            args += ["--workers", "2"]
    else:
        args = [os.path.join(EXAMPLES, "asgi_uvicorn.py"), "--port", str(port)]
    proc, log = loop_apps.python_program(args, backend, tmp_path, port)
    try:
        for _ in range(4 if how == "uvicorn-workers" else 1):
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            c.request("GET", "/loop")
            r = c.getresponse()
            assert json.loads(r.read()) == {"loop": "iocpx._loop.EventLoop", "backend": backend}
            c.close()
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        c.request("GET", f"/bytes/{MiB}")
        assert c.getresponse().read() == example_pattern(MiB)
        body = pattern(2 * MiB)
        c.request("POST", "/echo", body=body)
        assert c.getresponse().read() == body
        c.close()
        if shutil.which("curl"):
            out = tmp_path / "curl.out"
            subprocess.run(["curl", "-sS", "--fail", "-o", str(out),
                            f"http://127.0.0.1:{port}/bytes/{MiB}"], check=True, timeout=60)
            assert out.read_bytes() == example_pattern(MiB)
    finally:
        rc = loop_apps.stop(proc, signal.SIGINT)
    text = loop_apps.read_log(log)
    if sys.platform != "win32":     # (on Windows the signal is TerminateProcess: no clean exit;
        assert rc == 0, text        # CTRL_C_EVENT, the console's Ctrl-C, does not work under Wine)
        assert "Application shutdown complete" in text and "Traceback" not in text, text


# ---- aiohttp ------------------------------------------------------------------------

def test_aiohttp_server_and_client(backend):
    """The aiohttp example application served (AppRunner, TCPSite) and a ClientSession on the
    same loop: exact bodies, 1 MiB both ways, a chunked upload, 300 requests at once, and a
    WebSocket with a 1 MiB message."""
    aiohttp = pytest.importorskip("aiohttp")
    from aiohttp import web
    import aiohttp_app

    async def main():
        runner = web.AppRunner(aiohttp_app.make_app())
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        base = f"http://127.0.0.1:{port}"
        try:
            async with aiohttp.ClientSession() as s:
                async with s.get(base + "/loop") as r:
                    assert await r.json() == {"loop": "iocpx._loop.EventLoop", "backend": backend}
                async with s.get(base + "/") as r:
                    assert await r.read() == b"hello from iocpx\n"
                async with s.get(base + f"/bytes/{MiB}") as r:
                    assert await r.read() == example_pattern(MiB)
                body = pattern(MiB)
                async with s.post(base + "/echo", data=body) as r:
                    assert await r.read() == body

                async def chunks():
                    for i in range(64):
                        yield pattern(16384, i)
                async with s.post(base + "/echo", data=chunks()) as r:
                    assert await r.read() == b"".join(pattern(16384, i) for i in range(64))

                async def one(i):
                    async with s.post(base + "/echo", data=pattern(i * 41, i)) as r:
                        return await r.read() == pattern(i * 41, i)
                assert all(await asyncio.gather(*(one(i) for i in range(300))))

                async with s.ws_connect(base + "/ws", max_msg_size=0) as ws:
                    await ws.send_str("héllo")
                    assert await ws.receive_str() == "héllo"
                    big = pattern(MiB, 3)
                    await ws.send_bytes(big)
                    assert await ws.receive_bytes() == big
        finally:
            await runner.cleanup()
    run(backend, main())


def test_aiohttp_run_app(backend, tmp_path):
    """examples/aiohttp_app.py: web.run_app on an iocpx loop in a child process, fetched by the
    example's ClientSession mode (another child on the same backend) and by http.client; SIGTERM
    (through the loop's add_signal_handler) stops it with status 0."""
    pytest.importorskip("aiohttp")
    port = free_port()
    proc, log = loop_apps.python_program([os.path.join(EXAMPLES, "aiohttp_app.py"), "--port", str(port)],
                                         backend, tmp_path, port)
    try:
        r = subprocess.run([sys.executable, os.path.join(EXAMPLES, "aiohttp_app.py"), "--get",
                            f"http://127.0.0.1:{port}/loop"], env=loop_apps.python_env(backend),
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stdout + r.stderr
        assert json.loads(r.stdout) == {"loop": "iocpx._loop.EventLoop", "backend": backend}
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        body = pattern(MiB)
        c.request("POST", "/echo", body=body)
        assert c.getresponse().read() == body
        c.close()
    finally:
        rc = loop_apps.stop(proc, signal.SIGTERM)
    if sys.platform != "win32":     # (on Windows SIGTERM is TerminateProcess: no clean exit)
        assert rc == 0, loop_apps.read_log(log)


# ---- redis-py -------------------------------------------------------------------------

@pytest.fixture
def redis_server(tmp_path):
    pytest.importorskip("redis")
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server not installed (apt-get install redis-server)")
    with loop_apps.RedisServer(tmp_path) as srv:
        yield srv


def test_redis_asyncio(backend, redis_server):
    """redis.asyncio against a real redis-server: 1 MiB values, a 1000-command pipeline, 500
    commands at once over a pool, a transaction, publish/subscribe and a blocking BLPOP."""
    pytest.importorskip("redis")
    import redis.asyncio as redis

    async def main():
        pool = redis.BlockingConnectionPool(host="127.0.0.1", port=redis_server.port,
                                            max_connections=50, timeout=30)
        r = redis.Redis(connection_pool=pool)
        try:
            assert await r.ping()
            big = pattern(MiB)
            await r.set("big", big)
            assert await r.get("big") == big
            assert await r.strlen("big") == MiB
            async with r.pipeline(transaction=False) as p:
                for i in range(1000):
                    p.set(f"k{i}", pattern(i, i))
                assert await p.execute() == [True] * 1000
            vals = await asyncio.gather(*(r.get(f"k{i}") for i in range(500)))
            assert vals == [pattern(i, i) for i in range(500)]
            async with r.pipeline(transaction=True) as p:
                p.incr("n").incr("n").get("n")
                assert await p.execute() == [1, 2, b"2"]

            async with r.pubsub() as ps:
                await ps.subscribe("ch")
                assert (await ps.get_message(timeout=10))["type"] == "subscribe"
                for i in range(50):
                    await r.publish("ch", pattern(1000, i))
                got = []
                while len(got) < 50:
                    m = await ps.get_message(ignore_subscribe_messages=True, timeout=10)
                    assert m is not None
                    got.append(m["data"])
                assert got == [pattern(1000, i) for i in range(50)]

            async def push_later():
                await asyncio.sleep(0.05)
                await r.rpush("q", b"item")
            waiter = asyncio.ensure_future(r.blpop(["q"], timeout=20))
            await push_later()
            assert await waiter == (b"q", b"item")
        finally:
            await r.aclose()
            await pool.disconnect()
    run(backend, main())


def test_redis_example(backend, redis_server):
    """examples/redis_client.py in a child process on the backend."""
    pytest.importorskip("redis")
    r = subprocess.run([sys.executable, os.path.join(EXAMPLES, "redis_client.py"), "--port",
                        str(redis_server.port)], env=loop_apps.python_env(backend),
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "1 MiB value: round trip ok" in r.stdout
    assert "pub/sub: b'published through iocpx'" in r.stdout
    assert f"loop: EventLoop {backend}" in r.stdout


# ---- websockets -----------------------------------------------------------------------

def test_websockets(backend):
    """websockets' asyncio server and client: text, 1 MiB binary, a fragmented message, 500
    messages in a row, ping/pong, 30 clients at once with 100 kB each, 150 clients at once with
    20 messages each, and the close handshake."""
    pytest.importorskip("websockets")
    from websockets.asyncio.client import connect
    from websockets.asyncio.server import serve
    from websockets.exceptions import ConnectionClosedOK

    async def echo(ws):
        async for message in ws:
            await ws.send(message)
        await ws.close(4000, "bye")

    async def main():
        async with serve(echo, "127.0.0.1", 0, max_size=None) as server:
            uri = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}"
            async with connect(uri, max_size=None) as ws:
                await ws.send("héllo")
                assert await ws.recv() == "héllo"
                big = pattern(MiB)
                await ws.send(big)
                assert await ws.recv() == big
                await ws.send(pattern(10000, i) for i in range(10))          # one fragmented message
                assert await ws.recv() == b"".join(pattern(10000, i) for i in range(10))
                for i in range(500):
                    await ws.send(pattern(i, i))
                for i in range(500):
                    assert await ws.recv() == pattern(i, i)
                await asyncio.wait_for(await ws.ping(), 10)

            async def one(i):
                async with connect(uri, max_size=None) as ws:
                    await ws.send(pattern(100000, i))
                    ok = await ws.recv() == pattern(100000, i)
                    await ws.close()
                    return ok
            assert all(await asyncio.gather(*(one(i) for i in range(30))))

            async def chatty(k):
                async with connect(uri) as ws:
                    for i in range(20):
                        await ws.send(b"%d-%d" % (k, i) * 50)
                    return [await ws.recv() for _ in range(20)] == [b"%d-%d" % (k, i) * 50
                                                                     for i in range(20)]
            assert all(await asyncio.gather(*(chatty(k) for k in range(150))))

            async with connect(uri) as ws:
                await ws.send("x")
                await ws.recv()
                ws_task = asyncio.ensure_future(ws.recv())
                await ws.close()
                with pytest.raises(ConnectionClosedOK):
                    await ws_task
    run(backend, main())


def test_websockets_example(backend):
    """examples/websockets_echo.py in a child process on the backend."""
    pytest.importorskip("websockets")
    r = subprocess.run([sys.executable, os.path.join(EXAMPLES, "websockets_echo.py")],
                       env=loop_apps.python_env(backend), capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"3 messages echoed, the largest {MiB} bytes" in r.stdout
    assert f"loop: EventLoop {backend}" in r.stdout


# ---- psycopg 3 (async: add_reader / add_writer) ---------------------------------------

@pytest.fixture(scope="module")
def postgres():
    pytest.importorskip("psycopg")
    why = loop_apps.postgres_missing()
    if why:
        pytest.skip(why)
    with loop_apps.PostgresServer() as srv:
        yield srv


def test_psycopg_async(backend, postgres):
    """psycopg's AsyncConnection against a real PostgreSQL: TCP and Unix-socket connects, a
    table filled by executemany and read back, a 1 MiB bytea both ways, COPY in and out,
    LISTEN/NOTIFY, and 10 connections querying at once."""
    psycopg = pytest.importorskip("psycopg")

    async def main():
        async with await psycopg.AsyncConnection.connect(postgres.dsn, autocommit=True) as conn:
            cur = conn.cursor()
            await cur.execute("SELECT 1 + 1")
            assert await cur.fetchone() == (2,)
            table = f"t_{backend}"
            await cur.execute(f"DROP TABLE IF EXISTS {table}")
            await cur.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, data bytea)")
            await cur.executemany(f"INSERT INTO {table} VALUES (%s, %s)",
                                  [(i, pattern(i, i)) for i in range(1000)])
            await cur.execute(f"SELECT id, data FROM {table} ORDER BY id")
            assert await cur.fetchall() == [(i, pattern(i, i)) for i in range(1000)]
            big = pattern(MiB)
            await cur.execute("SELECT %s::bytea", (big,))
            assert (await cur.fetchone())[0] == big

            async with cur.copy(f"COPY {table} (id, data) FROM STDIN") as copy:
                for i in range(1000, 3000):
                    await copy.write_row((i, pattern(100, i)))
            out = bytearray()
            async with cur.copy(f"COPY (SELECT id FROM {table} WHERE id >= 1000 ORDER BY id) "
                                "TO STDOUT") as copy:
                async for chunk in copy:
                    out += chunk
            assert bytes(out) == b"".join(b"%d\n" % i for i in range(1000, 3000))

            async with await psycopg.AsyncConnection.connect(postgres.dsn, autocommit=True) as other:
                await conn.execute("LISTEN news")
                gen = conn.notifies(timeout=10, stop_after=5)
                for i in range(5):
                    await other.execute("SELECT pg_notify('news', %s)", (f"n{i}",))
                got = []
                async for n in gen:
                    got.append(n.payload)
                assert got == [f"n{i}" for i in range(5)]

        async def one(i):
            async with await psycopg.AsyncConnection.connect(
                    f"host={postgres.dir} port={postgres.port} user={postgres.user} dbname=postgres"
                    if i % 2 else postgres.dsn) as c:
                cur = await c.execute("SELECT pg_sleep(0.05), %s::int * 2", (i,))
                return (await cur.fetchone())[1]
        assert await asyncio.gather(*(one(i) for i in range(10))) == [i * 2 for i in range(10)]
    run(backend, main())


# ---- pyzmq (asyncio sockets: add_reader on the ZMQ_FD) ---------------------------------

def test_pyzmq_asyncio(backend):
    """zmq.asyncio PUSH/PULL and REQ/REP over TCP: 2000 messages in order, a 1 MiB message, and
    multipart round trips. ZMQ's descriptor is edge-triggered, so this checks that the loop's
    readers see every wake-up."""
    zmq_asyncio = pytest.importorskip("zmq.asyncio")
    import zmq

    async def main():
        ctx = zmq_asyncio.Context()
        socks = []
        try:
            def sock(kind):
                s = ctx.socket(kind)
                s.setsockopt(zmq.LINGER, 0)
                socks.append(s)
                return s

            def pair(bound, connecting):
                a, b = sock(bound), sock(connecting)
                b.connect(f"tcp://127.0.0.1:{a.bind_to_random_port('tcp://127.0.0.1')}")
                return a, b
            pull, push = pair(zmq.PULL, zmq.PUSH)

            async def send_all():
                for i in range(2000):
                    await push.send(pattern(i % 300, i))
                await push.send(pattern(MiB))
            sender = asyncio.ensure_future(send_all())
            for i in range(2000):
                assert await pull.recv() == pattern(i % 300, i)
            assert await pull.recv() == pattern(MiB)
            await sender

            rep, req = pair(zmq.REP, zmq.REQ)

            async def serve():
                for _ in range(200):
                    parts = await rep.recv_multipart()
                    await rep.send_multipart(parts[::-1])
            server = asyncio.ensure_future(serve())
            for i in range(200):
                await req.send_multipart([b"a%d" % i, pattern(i, i)])
                assert await req.recv_multipart() == [pattern(i, i), b"a%d" % i]
            await server
        finally:
            for s in socks:
                s.close()
            ctx.term()
    run(backend, main())


# ---- TLS, sendfile, flow control, many connections ------------------------------------

def _tls_contexts(pki):
    import ssl
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(str(pki["dir"] / "server.pem"))
    client = ssl.create_default_context(cafile=str(pki["dir"] / "ca.pem"))
    return server, client


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
def test_aiohttp_files_and_tls(backend, tls, pki, tmp_path):
    """aiohttp's FileResponse (loop.sendfile on a plain transport, the read-and-write fallback
    under TLS) whole and by Range, 1 MiB both ways and a 1 MiB WebSocket message, over TLS
    (asyncio's SSLProtocol on the loop's transports) as well."""
    aiohttp = pytest.importorskip("aiohttp")
    from aiohttp import web
    import aiohttp_app
    server_ctx, client_ctx = _tls_contexts(pki) if tls else (None, None)
    data = pattern(3 * MiB + 5)
    (tmp_path / "f.bin").write_bytes(data)

    async def file(request):
        return web.FileResponse(tmp_path / "f.bin")

    async def main():
        loop = asyncio.get_running_loop()
        sendfiles = []
        real_sendfile = loop.sendfile

        async def sendfile(transport, file, offset=0, count=None, **kw):
            sendfiles.append(count)
            return await real_sendfile(transport, file, offset, count, **kw)
        loop.sendfile = sendfile                   # counted: aiohttp is to use it
        app = aiohttp_app.make_app()
        app.router.add_get("/file", file)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_ctx)
        await site.start()
        base = f"{'https' if tls else 'http'}://127.0.0.1:{runner.addresses[0][1]}"
        try:
            conn = aiohttp.TCPConnector(ssl=client_ctx if tls else False)
            async with aiohttp.ClientSession(connector=conn) as s:
                async with s.get(base + "/file") as r:
                    assert r.status == 200 and await r.read() == data
                async with s.get(base + "/file", headers={"Range": "bytes=1000-1999999"}) as r:
                    assert r.status == 206 and await r.read() == data[1000:2000000]
                body = pattern(MiB, 9)
                async with s.post(base + "/echo", data=body) as r:
                    assert await r.read() == body

                async def one(i):
                    async with s.get(base + "/file", headers={"Range": f"bytes={i * 1000}-{i * 9000}"}) as r:
                        return await r.read() == data[i * 1000:i * 9000 + 1]
                assert all(await asyncio.gather(*(one(i) for i in range(1, 60))))
                async with s.ws_connect(base + "/ws", max_msg_size=0) as ws:
                    await ws.send_bytes(body)
                    assert await ws.receive_bytes() == body
            assert len(sendfiles) == 61 and sendfiles[:2] == [len(data), 1999000], sendfiles[:3]
        finally:
            del loop.sendfile
            await runner.cleanup()
    run(backend, main())


def test_uvicorn_tls(backend, pki):
    """uvicorn with a certificate (ssl_certfile/ssl_keyfile) serving Starlette: HTTPS with 1 MiB
    both ways, and WSS through the websockets client."""
    pytest.importorskip("starlette")
    pytest.importorskip("uvicorn")
    aiohttp = pytest.importorskip("aiohttp")
    pytest.importorskip("websockets")
    from websockets.asyncio.client import connect
    import asgi_uvicorn
    _, client_ctx = _tls_contexts(pki)

    async def main():
        server, task, port = await _uvicorn_serving(
            asgi_uvicorn.app, ssl_certfile=str(pki["dir"] / "server-cert.pem"),
            ssl_keyfile=str(pki["dir"] / "server-key.pem"), ws_max_size=16 * MiB)
        try:
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=client_ctx)) as s:
                async with s.get(f"https://127.0.0.1:{port}/bytes/{MiB}") as r:
                    assert await r.read() == example_pattern(MiB)
                body = pattern(MiB, 5)

                async def one(i):
                    async with s.post(f"https://127.0.0.1:{port}/echo", data=body[:i * 9973]) as r:
                        return await r.read() == body[:i * 9973]
                assert all(await asyncio.gather(*(one(i) for i in range(1, 40))))
            async with connect(f"wss://127.0.0.1:{port}/ws", ssl=client_ctx, max_size=None) as ws:
                await ws.send(body)
                assert await ws.recv() == body
        finally:
            await _uvicorn_stop(server, task)
    run(backend, main())


def test_aiohttp_slow_reader_and_early_close(backend):
    """Write flow control and a peer that leaves: a 16 MiB streamed response read by a raw
    stream client that pauses (the server's writes wait in drain()), then clients that close
    in the middle of such responses; the handlers see the disconnect and nothing is left."""
    pytest.importorskip("aiohttp")
    from aiohttp import web
    chunk = pattern(65536)
    ended = []

    async def stream(request):
        resp = web.StreamResponse()
        resp.content_length = 256 * len(chunk)
        await resp.prepare(request)
        try:
            for _ in range(256):
                await resp.write(chunk)
        except (ConnectionResetError, asyncio.CancelledError):
            ended.append("disconnect")
            raise
        ended.append("complete")
        return resp

    async def main():
        app = web.Application()
        app.router.add_get("/stream", stream)
        runner = web.AppRunner(app, handler_cancellation=True)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=65536)
            writer.write(b"GET /stream HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200")
            got = 0
            while got < 256 * len(chunk):
                piece = await reader.read(100000)
                assert piece == (chunk * 3)[got % len(chunk):got % len(chunk) + len(piece)]
                got += len(piece)
                if got % 7 == 0:
                    await asyncio.sleep(0.001)
            assert await reader.read() == b""
            writer.close()
            await writer.wait_closed()

            async def leave_early():
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n")
                await reader.readexactly(500000)
                writer.transport.abort()
            await asyncio.gather(*(leave_early() for _ in range(10)))
            for _ in range(500):
                if len(ended) == 11:
                    break
                await asyncio.sleep(0.01)
            assert ended.count("complete") == 1 and ended.count("disconnect") == 10, ended
        finally:
            await runner.cleanup()
    run(backend, main())


def test_many_connections(backend):
    """400 clients connected at once to an aiohttp server, each making a request on a
    connection of its own (the accept path under load), then closing."""
    aiohttp = pytest.importorskip("aiohttp")
    from aiohttp import web
    import aiohttp_app

    async def main():
        runner = web.AppRunner(aiohttp_app.make_app())
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, backlog=1024)
        await site.start()
        port = runner.addresses[0][1]
        try:
            conn = aiohttp.TCPConnector(limit=0, force_close=True)
            async with aiohttp.ClientSession(connector=conn) as s:
                async def one(i):
                    async with s.post(f"http://127.0.0.1:{port}/echo", data=pattern(i, i)) as r:
                        return await r.read() == pattern(i, i)
                assert all(await asyncio.gather(*(one(i) for i in range(400))))
        finally:
            await runner.cleanup()
    run(backend, main())


def test_redis_unix_socket(backend, tmp_path):
    """redis.asyncio over a Unix socket (create_unix_connection)."""
    pytest.importorskip("redis")
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server not installed (apt-get install redis-server)")
    import redis.asyncio as redis
    path = str(tmp_path / "redis.sock")
    port = free_port()
    log = str(tmp_path / "redis.log")
    proc = loop_apps.start(["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                            "--unixsocket", path, "--dir", str(tmp_path), "--save", "",
                            "--appendonly", "no"], log)
    try:
        loop_apps.wait_port(port, proc, log)

        async def main():
            r = redis.Redis(unix_socket_path=path)
            try:
                big = pattern(2 * MiB)
                await r.set("big", big)
                assert await r.get("big") == big
                assert await asyncio.gather(*(r.echo(pattern(i, i)) for i in range(100))) == \
                    [pattern(i, i) for i in range(100)]
            finally:
                await r.aclose()
                await r.connection_pool.disconnect()
        run(backend, main())
    finally:
        loop_apps.stop(proc)


def test_shutdown_with_live_connections(backend):
    """Servers shut down while clients are still connected, as on asyncio's loop: uvicorn with a
    keep-alive connection and a WebSocket open (the WebSocket closes with 1012, service
    restart), aiohttp's runner.cleanup() with the same, websockets' server.close()."""
    pytest.importorskip("starlette")
    pytest.importorskip("uvicorn")
    aiohttp = pytest.importorskip("aiohttp")
    pytest.importorskip("websockets")
    from aiohttp import WSMsgType, web
    from websockets.asyncio.client import connect
    from websockets.asyncio.server import serve
    from websockets.exceptions import ConnectionClosed
    import aiohttp_app
    import asgi_uvicorn

    async def main():
        server, task, port = await _uvicorn_serving(asgi_uvicorn.app, timeout_graceful_shutdown=5)
        async with aiohttp.ClientSession() as s:
            async with s.get(f"http://127.0.0.1:{port}/") as r:
                await r.read()                          # the connection stays, kept alive
            async with connect(f"ws://127.0.0.1:{port}/ws") as ws:
                await ws.send("x")
                assert await ws.recv() == "x"
                await _uvicorn_stop(server, task)
                with pytest.raises(ConnectionClosed) as e:
                    await ws.recv()
                assert e.value.rcvd.code == 1012

        runner = web.AppRunner(aiohttp_app.make_app(), shutdown_timeout=0.5)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        base = f"http://127.0.0.1:{runner.addresses[0][1]}"
        async with aiohttp.ClientSession() as s:
            async with s.get(base + "/") as r:
                await r.read()
            async with s.ws_connect(base + "/ws") as ws:
                await ws.send_str("x")
                assert (await ws.receive()).data == "x"
                await runner.cleanup()
                assert (await ws.receive()).type in (WSMsgType.CLOSE, WSMsgType.CLOSING,
                                                     WSMsgType.CLOSED)

        async def echo(ws):
            async for m in ws:
                await ws.send(m)
        wserver = await serve(echo, "127.0.0.1", 0)
        uri = f"ws://127.0.0.1:{wserver.sockets[0].getsockname()[1]}"
        clients = [await connect(uri) for _ in range(5)]
        wserver.close()
        await wserver.wait_closed()
        for c in clients:
            with pytest.raises(ConnectionClosed):
                await c.recv()
            await c.close()
    run(backend, main())


def test_uvicorn_streaming_and_slow_client(backend):
    """Starlette's StreamingResponse of 20000 small chunks (as many small writes), and a 16 MiB
    body read 100 kB at a time with pauses by aiohttp's client, whose transport is paused and
    resumed as its buffer fills and drains (pause_reading/resume_reading) while uvicorn waits
    on the write side (pause_writing/resume_writing)."""
    pytest.importorskip("starlette")
    pytest.importorskip("uvicorn")
    aiohttp = pytest.importorskip("aiohttp")
    from starlette.applications import Starlette
    from starlette.responses import StreamingResponse
    from starlette.routing import Mount, Route
    import asgi_uvicorn

    async def chunks(request):
        async def gen():
            for i in range(20000):
                yield b"%08d\n" % i
        return StreamingResponse(gen())

    app = Starlette(routes=[Route("/chunks", chunks), Mount("/", asgi_uvicorn.app)])
    n = 16 * MiB

    async def main():
        server, task, port = await _uvicorn_serving(app)
        try:
            async with aiohttp.ClientSession(read_bufsize=2 ** 16) as s:
                async with s.get(f"http://127.0.0.1:{port}/chunks") as r:
                    assert await r.read() == b"".join(b"%08d\n" % i for i in range(20000))
                async with s.get(f"http://127.0.0.1:{port}/bytes/{n}") as r:
                    got = bytearray()
                    while True:
                        piece = await r.content.read(100000)
                        if not piece:
                            break
                        got += piece
                        if len(got) % 3 == 0:
                            await asyncio.sleep(0.001)
                assert bytes(got) == asgi_uvicorn.pattern(n)
                assert got[:1000] == example_pattern(1000)
        finally:
            await _uvicorn_stop(server, task)
    run(backend, main())
