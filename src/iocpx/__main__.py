"""Command line.

  python -m iocpx demo     an echo server driven by a short built-in client run
  python -m iocpx serve    an echo server with a once-a-second status line
  python -m iocpx stress   the model's stress client (30,000 connections x 3 messages)
  python -m iocpx info     version, backends (available or why not), detected features
  python -m iocpx --version
"""
import argparse
import os
import sys
import threading
import time

import iocpx


def _demo(args):
    lock = threading.Lock()
    shown = [0]
    result = {"verified": 0, "mismatch": 0, "closed": 0, "errors": []}
    done = threading.Event()

    def on_accept(conn, data):
        with lock:
            if shown[0] < 5:
                shown[0] += 1
                print(f"  server: accepted {conn.peer[0]}:{conn.peer[1]} with first data {data!r}")
        conn.send(data)

    def on_recv(conn, data):
        conn.send(data)

    print(f"iocpx {iocpx.__version__}: backends available here: {iocpx.available_backends()}")
    srv = iocpx.Server(("127.0.0.1", 0), on_accept=on_accept, on_recv=on_recv,
                       first_data=True, workers=args.workers, backend=args.backend)
    with srv:
        eng = srv.engine
        print(f"echo server on {srv.address[0]}:{srv.address[1]}, backend {eng.backend}, "
              f"{eng.workers} workers, first_data=True")
        print(f"client: {args.connections} connections x {args.messages} messages "
              f"of {args.size} bytes, every echo checked")
        client = iocpx.Engine(workers=2, backend=args.backend)
        t0 = time.perf_counter()
        try:
            states = {}

            def message(cid, k):
                head = f"client {cid} message {k} ".encode()
                return (head + os.urandom(args.size).hex().encode())[:max(args.size, 1)]

            def send_next(conn):
                st = states[conn.id]
                st["expect"] = message(conn.id, st["sent"])
                st["buf"] = bytearray()
                st["sent"] += 1
                conn.send(st["expect"])

            def c_connect(conn):
                states[conn.id] = {"sent": 0}
                send_next(conn)

            def c_recv(conn, data):
                st = states[conn.id]
                st["buf"] += data
                if len(st["buf"]) < len(st["expect"]):
                    return
                ok = bytes(st["buf"]) == st["expect"]
                with lock:
                    result["verified" if ok else "mismatch"] += 1
                if st["sent"] < args.messages and ok:
                    send_next(conn)
                else:
                    conn.close()

            def c_close(conn, exc):
                with lock:
                    result["closed"] += 1
                    if exc is not None:
                        result["errors"].append(repr(exc))
                    if result["closed"] == args.connections:
                        done.set()

            for _ in range(args.connections):
                client.connect(srv.address, on_connect=c_connect, on_recv=c_recv, on_close=c_close)
            finished = done.wait(args.timeout)
        finally:
            client.close(timeout=10)
        elapsed = time.perf_counter() - t0
        st = srv.stats()
    want = args.connections * args.messages
    print(f"client: {result['verified']}/{want} echoes verified, {result['mismatch']} mismatched, "
          f"{len(result['errors'])} connection errors, in {elapsed * 1000:.0f} ms")
    print(f"server stats: accepted {st['accepted']}, bytes in {st['bytes_in']}, "
          f"bytes out {st['bytes_out']}, pending ops {st['pending_ops']}")
    print(f"after shutdown: live I/O contexts {iocpx.live_io()}")
    ok = finished and result["verified"] == want and not result["mismatch"] and not result["errors"]
    print("demo: OK" if ok else "demo: FAILED")
    return 0 if ok else 1


def _info(args):
    from iocpx._info import main as info_main
    return info_main(args)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m iocpx", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"iocpx {iocpx.__version__}")
    sub = p.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("demo", help="echo server + built-in client run")
    d.add_argument("--connections", type=int, default=200)
    d.add_argument("--messages", type=int, default=3)
    d.add_argument("--size", type=int, default=64)
    d.add_argument("--workers", type=int, default=None)
    d.add_argument("--backend", default=None)
    d.add_argument("--timeout", type=float, default=30.0)
    d.set_defaults(func=_demo)
    i = sub.add_parser("info", help="version, backends and the kernel/OS features detected")
    i.add_argument("--json", action="store_true", help="print it as JSON")
    i.set_defaults(func=_info)
    from iocpx._stress import add_parsers       # imports nothing platform-specific
    add_parsers(sub)
    args = p.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
