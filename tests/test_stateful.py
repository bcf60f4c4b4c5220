"""A hypothesis state machine drives random sequences of connect / send /
pause / resume / close on iocpx client connections against an iocpx echo
server, and checks every byte that comes back, and what pausing promises."""
import threading
import time

import pytest
from hypothesis import settings, strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, invariant, rule

import iocpx
from conftest import check_closed_engine, echo


class Peer:
    def __init__(self):
        self.expected = bytearray()     # every byte sent so far (the echo to come)
        self.received = bytearray()
        self.connected = threading.Event()
        self.closed = threading.Event()
        self.exc = None
        self.lock = threading.Lock()
        self.paused = False             # the model: pause_reading() called, not resumed since
        self.sent_at_pause = 0          # len(expected) when pause_reading() returned

    def on_connect(self, conn):
        self.connected.set()

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
            conn = self.client.connect(self.lst.address, on_connect=peer.on_connect,
                                       on_recv=peer.on_recv, on_close=peer.on_close)
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
            c, peer = self.peers[conn.id]
            if c.closed:
                with pytest.raises(iocpx.ConnectionClosedError):
                    c.pause_reading()
                return
            c.pause_reading()
            assert not c.reading
            if not peer.paused:
                peer.paused = True
                peer.sent_at_pause = len(peer.expected)

        @rule(conn=conns)
        def resume(self, conn):
            c, peer = self.peers[conn.id]
            if c.closed:
                with pytest.raises(iocpx.ConnectionClosedError):
                    c.resume_reading()
                return
            if peer.paused:
                # while paused, no on_recv delivered what was sent after the pause
                with peer.lock:
                    got = len(peer.received)
                assert got <= peer.sent_at_pause, \
                    f"{got - peer.sent_at_pause} bytes sent after pause_reading() were delivered"
            c.resume_reading()
            peer.paused = False
            assert peer.connected.wait(10), "never connected"
            assert c.reading
            self.settle(c, peer)            # reading really resumed: every echo arrives

        @rule(conn=conns)
        def close(self, conn):
            c, peer = self.peers[conn.id]
            if c.closed:
                c.close()               # idempotent
                c.abort()
                return
            c.resume_reading()
            peer.paused = False
            self.settle(c, peer)
            c.close()
            assert c.closed
            assert peer.closed.wait(10)
            assert peer.exc is None

        @invariant()
        def received_is_prefix_of_sent(self):
            for _c, peer in self.peers.values():
                with peer.lock:
                    got = bytes(peer.received)
                assert bytes(peer.expected[:len(got)]) == got

        @invariant()
        def reading_matches_the_model(self):
            for c, peer in self.peers.values():
                if c.closed:
                    assert not c.reading
                elif peer.connected.is_set():
                    assert c.reading == (not peer.paused)

        def teardown(self):
            try:
                for c, peer in self.peers.values():
                    if not c.closed:
                        c.resume_reading()
                        self.settle(c, peer)
                        c.close()
                        assert peer.closed.wait(10)
                        assert peer.exc is None
            finally:
                self.client.close(timeout=30)
                self.server.close(timeout=30)
            check_closed_engine(self.client)
            check_closed_engine(self.server)

    return EchoMachine


def test_random_connect_send_pause_resume_close(backend):
    machine = make_machine(backend)
    machine.TestCase.settings = settings(max_examples=25, stateful_step_count=30, deadline=None)
    machine.TestCase().runTest()
