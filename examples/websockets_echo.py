"""A websockets echo server and client on the iocpx event loop.

What it shows: the websockets library (its asyncio implementation, websockets >= 13)
unmodified on iocpx.EventLoop: a server echoing every message, and a client that sends text
and a 1 MiB binary message and checks the echoes.

What it needs: Python 3.9+, `pip install websockets`.

How to run it (the backend: IOCPX_BACKEND=io_uring|epoll|iocp, else the best one):

    python examples/websockets_echo.py                  # server and client in one process
    python examples/websockets_echo.py --serve --port 8765      # the server alone
"""
import argparse
import asyncio
from typing import Union

from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve

import iocpx


async def echo(ws: ServerConnection) -> None:
    async for message in ws:
        await ws.send(message)


async def client(uri: str) -> None:
    async with connect(uri, max_size=None) as ws:
        big = bytes(range(256)) * 4096                              # 1 MiB
        messages: "list[Union[str, bytes]]" = ["hello", "from iocpx", big]
        for message in messages:
            await ws.send(message)
            assert await ws.recv() == message
        print(f"{len(messages)} messages echoed, the largest {len(big)} bytes")


async def main(host: str, port: int, serve_only: bool) -> None:
    async with serve(echo, host, port, max_size=None) as server:
        if serve_only:
            await server.serve_forever()
        port = server.sockets[0].getsockname()[1]
        await client(f"ws://{host}:{port}")
        print("loop:", type(asyncio.get_running_loop()).__name__,
              getattr(asyncio.get_running_loop(), "backend", None))


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--serve", action="store_true", help="serve until interrupted, no client")
    args = ap.parse_args()
    iocpx.run(main(args.host, args.port or (8765 if args.serve else 0), args.serve))
