"""Graceful close with the peer still sending: the engine sends FIN and reads (discarding) until
the peer's FIN, instead of closing a socket with unread bytes, which makes the kernel reset the
connection and destroy the replies still on their way (a pipelining HTTP client's lost
responses). Every backend."""
import socket
import time

import iocpx

from conftest import Recorder


def test_close_with_unread_pipelined_request_delivers_the_whole_reply(backend):
    reply = b"R" * 2_000_000
    rec = Recorder()
    with iocpx.Engine(backend=backend) as eng:
        lst = eng.listen(("127.0.0.1", 0), on_recv=lambda c, d: (c.send(reply), c.close()),
                         on_close=rec.on_close)
        for _ in range(5):
            s = socket.create_connection(lst.address, timeout=30)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
            s.sendall(b"GET /1\r\n")
            got = s.recv(1000)
            assert got, "no reply"
            s.sendall(b"GET /2\r\n" * 100)      # pipelined; the server has stopped reading
            time.sleep(0.01)
            while True:
                b = s.recv(65536)              # a reset here is the bug
                if not b:
                    break
                got += b
            assert got == reply
            s.close()
        rec.wait(lambda r: len(r.closed) == 5)
        assert all(exc is None for exc in rec.closed.values())


def test_close_lingers_at_most_two_seconds_for_a_peer_that_keeps_its_side_open(backend):
    rec = Recorder()
    with iocpx.Engine(backend=backend) as eng:
        lst = eng.listen(("127.0.0.1", 0), on_recv=lambda c, d: (c.send(b"bye"), c.close()),
                         on_close=rec.on_close)
        s = socket.create_connection(lst.address, timeout=10)
        s.sendall(b"x")
        assert s.recv(3) == b"bye"
        rec.wait(lambda r: len(r.closed) == 1)       # on_close when our side is done
        assert eng.stats()["connections"] == 1       # the socket lingers, unseen
        t0 = time.monotonic()
        assert s.recv(10) == b""                     # our FIN
        deadline = time.monotonic() + 10
        while eng.stats()["connections"] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert eng.stats()["connections"] == 0
        assert 1.0 < time.monotonic() - t0 < 5.0
        s.close()
