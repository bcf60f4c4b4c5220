"""redis-py's asyncio client on the iocpx event loop, against a running redis-server.

What it shows: redis.asyncio unmodified on iocpx.EventLoop: commands, a pipeline (many
commands, one write), a large value, and publish/subscribe.

What it needs: Python 3.9+, `pip install redis`, a redis-server (e.g. `redis-server --port 6379`).

How to run it (the backend: IOCPX_BACKEND=io_uring|epoll|iocp, else the best one):

    python examples/redis_client.py --port 6379
"""
import argparse
import asyncio

import redis.asyncio as redis

import iocpx


async def main(host: str, port: int) -> None:
    r = redis.Redis(host=host, port=port)
    try:
        print("PING:", await r.ping())
        await r.set("iocpx:greeting", "hello")
        print("GET:", await r.get("iocpx:greeting"))
        big = bytes(range(256)) * 4096                              # 1 MiB
        await r.set("iocpx:big", big)
        assert await r.get("iocpx:big") == big
        print("1 MiB value: round trip ok")
        async with r.pipeline(transaction=False) as pipe:
            for _ in range(1000):
                pipe.incr("iocpx:counter")
            print("pipeline of 1000 INCR, last:", (await pipe.execute())[-1])
        async with r.pubsub() as ps:
            await ps.subscribe("iocpx:news")
            await ps.get_message(timeout=5)                         # the subscribe confirmation
            await r.publish("iocpx:news", "published through iocpx")
            msg = None
            while msg is None:
                msg = await ps.get_message(ignore_subscribe_messages=True, timeout=5)
            print("pub/sub:", msg["data"])
        await r.delete("iocpx:greeting", "iocpx:big", "iocpx:counter")
        print("loop:", type(asyncio.get_running_loop()).__name__,
              getattr(asyncio.get_running_loop(), "backend", None))
    finally:
        await r.aclose()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=6379)
    args = ap.parse_args()
    iocpx.run(main(args.host, args.port))
