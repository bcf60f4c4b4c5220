"""A hypothesis state machine drives random sequences of connect / send /
pause / resume / close on iocpx client connections against an iocpx echo
server, and checks every byte that comes back."""
import threading
import time

import pytest
from hypothesis import settings, strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, invariant, precondition, rule

import iocpx
from conftest import BACKENDS, echo


class Peer:
    def __init__(self):
        self.expected = bytearray()
        self.received = bytearray()
        self.closed = threading.Event()
        self.exc = None
        self.lock = threading.Lock()

    def on_recv(self, conn, data):
        with self.lock:
            self.received += data

    def on_close(self, conn, exc):
        self.exc = exc
        self.closed.set()


def make_machine(backend):
    class EchoMachine(RuleBasedStateMachine):
        conns = Bundle("conns")

        def __init__(self):
            super().__init__()
            self.server = iocpx.Engine(workers=2, backend=backend)
            self.lst = self.server.listen(("127.0.0.1", 0), on_recv=echo)
            self.client = iocpx.Engine(workers=2, backend=backend)
            self.peers = {}

        def settle(self, conn, peer, timeout=10):
            deadline = time.monotonic() + timeout
            while True:
                with peer.lock:
                    if len(peer.received) >= len(peer.expected):
                        break
                assert time.monotonic() < deadline, \
                    f"only {len(peer.received)} of {len(peer.expected)} bytes echoed"
                time.sleep(0.002)
            assert bytes(peer.received) == bytes(peer.expected)

        @rule(target=conns)
        def connect(self):
            peer = Peer()
            conn = self.client.connect(self.lst.address, on_recv=peer.on_recv, on_close=peer.on_close)
            self.peers[conn.id] = (conn, peer)
            return conn

        @rule(conn=conns, data=st.binary(min_size=1, max_size=20_000))
        def send(self, conn, data):
            c, peer = self.peers[conn.id]
            if c.closed:
                with pytest.raises(iocpx.ConnectionClosedError):
                    c.send(data)
                return
            c.send(data)
            peer.expected += data

        @rule(conn=conns)
        def pause(self, conn):
            c, _ = self.peers[conn.id]
            if not c.closed:
                c.pause_reading()

        @rule(conn=conns)
        def resume(self, conn):
            c, _ = self.peers[conn.id]
            if not c.closed:
                c.resume_reading()

        @rule(conn=conns)
        def close(self, conn):
            c, peer = self.peers[conn.id]
            if c.closed:
                c.close()               # idempotent
                return
            c.resume_reading()
            self.settle(c, peer)
            c.close()
            assert peer.closed.wait(10)
            assert peer.exc is None

        @invariant()
        def received_is_prefix_of_sent(self):
            for c, peer in self.peers.values():
                with peer.lock:
                    got = bytes(peer.received)
                assert bytes(peer.expected[:len(got)]) == got

        def teardown(self):
            try:
                for c, peer in self.peers.values():
                    if not c.closed:
                        c.resume_reading()
                        self.settle(c, peer)
                        c.close()
                        assert peer.closed.wait(10)
            finally:
                self.client.close(timeout=30)
                self.server.close(timeout=30)

    return EchoMachine


@pytest.mark.parametrize("backend", BACKENDS)
def test_random_connect_send_pause_resume_close(backend):
    machine = make_machine(backend)
    machine.TestCase.settings = settings(max_examples=25, stateful_step_count=30, deadline=None)
    machine.TestCase().runTest()
