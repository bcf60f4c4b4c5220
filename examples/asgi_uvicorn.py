"""A Starlette application served by uvicorn on the iocpx event loop: HTTP and WebSocket.

What it shows: an unmodified ASGI stack (uvicorn's HTTP and WebSocket protocols, Starlette's
routing) running on iocpx.EventLoop; the only iocpx-specific part is the loop factory handed
to uvicorn. GET / and /loop say which loop and backend serve the request, POST /echo returns
the request body, GET /bytes/N returns N bytes, /ws echoes WebSocket messages.

What it needs: Python 3.9+, `pip install uvicorn starlette websockets`.

How to run it (the backend: IOCPX_BACKEND=io_uring|epoll|iocp, else the best one):

    uvicorn asgi_uvicorn:app --app-dir examples --loop iocpx:new_event_loop --port 8000
    python examples/asgi_uvicorn.py --port 8000          # the same, through uvicorn.run()
    curl http://127.0.0.1:8000/loop
"""
import argparse
import asyncio

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect


def pattern(n: int) -> bytes:
    """n bytes that differ from one position to the next (a shifted or cut body shows)."""
    period = bytes(i * 7 % 251 for i in range(251))              # i * 7 % 251 repeats every 251
    return (period * (n // 251 + 1))[:n]


async def hello(request: Request) -> Response:
    return PlainTextResponse("hello from iocpx\n")


async def loop_info(request: Request) -> Response:
    loop = asyncio.get_running_loop()
    return JSONResponse({"loop": f"{type(loop).__module__}.{type(loop).__qualname__}",
                         "backend": getattr(loop, "backend", None)})


async def echo(request: Request) -> Response:
    return Response(await request.body(), media_type="application/octet-stream")


async def some_bytes(request: Request) -> Response:
    return Response(pattern(int(request.path_params["n"])), media_type="application/octet-stream")


async def ws_echo(websocket: WebSocket) -> None:
    await websocket.accept()
    try:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            if message.get("bytes") is not None:
                await websocket.send_bytes(message["bytes"])
            else:
                await websocket.send_text(message["text"])
    except WebSocketDisconnect:
        pass


app = Starlette(routes=[
    Route("/", hello),
    Route("/loop", loop_info),
    Route("/echo", echo, methods=["POST"]),
    Route("/bytes/{n:int}", some_bytes),
    WebSocketRoute("/ws", ws_echo),
])


def main() -> None:
    import uvicorn
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000)
    args = ap.parse_args()
    uvicorn.run(app, host=args.host, port=args.port, loop="iocpx:new_event_loop")


if __name__ == "__main__":
    main()
