"""An aiohttp web application, and an aiohttp client, on the iocpx event loop.

What it shows: aiohttp's server (web.Application, web.run_app) and client (ClientSession)
unmodified on iocpx.EventLoop. GET / and /loop say which loop and backend serve the request,
POST /echo returns the request body, GET /bytes/N returns N bytes, /ws echoes WebSocket
messages.

What it needs: Python 3.9+, `pip install aiohttp`.

How to run it (the backend: IOCPX_BACKEND=io_uring|epoll|iocp, else the best one):

    python examples/aiohttp_app.py --port 8080                       # serve (web.run_app)
    python examples/aiohttp_app.py --get http://127.0.0.1:8080/loop  # a ClientSession request
"""
import argparse
import asyncio

from aiohttp import ClientSession, WSMsgType, web

import iocpx


def pattern(n: int) -> bytes:
    """n bytes that differ from one position to the next (a shifted or cut body shows)."""
    period = bytes(i * 7 % 251 for i in range(251))              # i * 7 % 251 repeats every 251
    return (period * (n // 251 + 1))[:n]


async def hello(request: web.Request) -> web.Response:
    return web.Response(text="hello from iocpx\n")


async def loop_info(request: web.Request) -> web.Response:
    loop = asyncio.get_running_loop()
    return web.json_response({"loop": f"{type(loop).__module__}.{type(loop).__qualname__}",
                              "backend": getattr(loop, "backend", None)})


async def echo(request: web.Request) -> web.Response:
    return web.Response(body=await request.read(), content_type="application/octet-stream")


async def some_bytes(request: web.Request) -> web.Response:
    return web.Response(body=pattern(int(request.match_info["n"])),
                        content_type="application/octet-stream")


async def ws_echo(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse(max_msg_size=0)
    await ws.prepare(request)
    async for msg in ws:
        if msg.type == WSMsgType.BINARY:
            await ws.send_bytes(msg.data)
        elif msg.type == WSMsgType.TEXT:
            await ws.send_str(msg.data)
    return ws


def make_app() -> web.Application:
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.add_routes([web.get("/", hello), web.get("/loop", loop_info), web.post("/echo", echo),
                    web.get(r"/bytes/{n:\d+}", some_bytes), web.get("/ws", ws_echo)])
    return app


async def get(url: str) -> bytes:
    async with ClientSession() as session:
        async with session.get(url) as resp:
            resp.raise_for_status()
            return await resp.read()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8080)
    ap.add_argument("--get", metavar="URL", help="fetch URL with a ClientSession and print it")
    args = ap.parse_args()
    if args.get:
        print(iocpx.run(get(args.get)).decode(errors="replace"))
    else:
        web.run_app(make_app(), host=args.host, port=args.port, loop=iocpx.new_event_loop())


if __name__ == "__main__":
    main()
