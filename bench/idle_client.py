"""Idle-connection holder for the iocpx benchmarks: opens connections to an echo server, keeps them.

What it shows: nothing by itself. bench/run_all.py runs it (pinned to CPU 1, in its own process,
so the server's process holds only its own ends: one process may open at most ~20,000 files
here) and measures the server's RSS at N/2 and at N open connections; the marginal RSS per
connection between the two is the figure, so fixed pools and buffers do not count.
Each connection does one 16-byte echo round trip (verified) before it is counted, so the server
has surely accepted it and set up whatever it keeps per connection; then it stays idle.

What it needs: Python 3.8+, nothing else (blocking sockets, one at a time).

How to run it (by hand; run_all.py does this for you): start an echo server, then

    python bench/idle_client.py 127.0.0.1 PORT

and type commands on stdin, one per line; each gets one reply line on stdout:
    OPEN N      open connections until N are open -> "OK <open> <seconds>" or "ERR <open> <why>"
    EXIT        close everything and exit 0 (EOF on stdin does the same)
"""

import resource
import socket
import sys
import time


def main():
    host, port = sys.argv[1], int(sys.argv[2])
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    socks = []                  # every open connection; closed at exit
    for line in sys.stdin:
        cmd = line.split()
        if not cmd:
            continue
        if cmd[0] == "EXIT":
            break
        if cmd[0] != "OPEN" or len(cmd) != 2:
            print(f"ERR {len(socks)} unknown command {line.strip()!r}", flush=True)
            continue
        want = int(cmd[1])
        t0 = time.monotonic()
        err = None
        while len(socks) < want:
            i = len(socks)
            msg = b"idle%012d" % i
            try:
                s = socket.create_connection((host, port), timeout=10)
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                s.sendall(msg)
                got = b""
                while len(got) < len(msg):
                    chunk = s.recv(len(msg) - len(got))
                    if not chunk:
                        raise ConnectionError("server closed the connection")
                    got += chunk
                if got != msg:
                    raise ValueError(f"echo differs: {got!r} != {msg!r}")
            except (OSError, ValueError) as exc:
                err = f"connection {i}: {type(exc).__name__}: {exc}"
                break
            socks.append(s)
        dt = time.monotonic() - t0
        if err:
            print(f"ERR {len(socks)} {err}", flush=True)
        else:
            print(f"OK {len(socks)} {dt:.3f}", flush=True)
    for s in socks:
        s.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
