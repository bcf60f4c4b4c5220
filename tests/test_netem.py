"""A lossy network: a test-owned network namespace joined to this one by a veth
pair, with `tc qdisc ... netem` on both ends (delay with jitter, reordering,
loss, duplication). An iocpx Engine serves on this side; clients nobody here
wrote (plain Python sockets, Python's ssl) run on the other side in a
subprocess under `ip netns exec`. Checked: TCP echo with every byte verified,
first-data accept, TLS echo, and datagrams with the losses counted.

Needs root, `ip` and `tc` (iproute2) and the kernel's sch_netem; without one
of them every test here skips, saying which is missing (a kernel without
sch_netem, built in or loadable, cannot emulate loss). IOCPX_NETEM_PLAIN=1
runs the same workloads over the plain veth pair where netem is missing
(checks the test itself, not the network's faults)."""
import os
import shutil
import ssl
import subprocess
import sys
import textwrap
import threading

import pytest

import iocpx
from conftest import LINUX, Recorder, echo, wait_for

NS = f"iocpx-netem-{os.getpid()}"
HOST_IF, NS_IF = f"ixn{os.getpid() % 100000}a", f"ixn{os.getpid() % 100000}b"
HOST_IP, NS_IP = "10.203.0.1", "10.203.0.2"
# delay 5 ms +- 2 ms, 25% of packets reordered, 2% lost, 1% duplicated, on each end
NETEM = ["delay", "5ms", "2ms", "reorder", "25%", "50%", "loss", "2%", "duplicate", "1%"]


def _run(*cmd, check=True):
    return subprocess.run(cmd, capture_output=True, text=True, check=check, timeout=30)


def _teardown():
    # deleting the namespace removes its veth end, and with it the peer on this side
    _run("ip", "netns", "del", NS, check=False)
    _run("ip", "link", "del", HOST_IF, check=False)


def _setup():
    """Returns None when netem is in place, else the reason it is not."""
    _run("ip", "netns", "add", NS)
    _run("ip", "link", "add", HOST_IF, "type", "veth", "peer", "name", NS_IF)
    _run("ip", "link", "set", NS_IF, "netns", NS)
    _run("ip", "addr", "add", f"{HOST_IP}/24", "dev", HOST_IF)
    _run("ip", "link", "set", HOST_IF, "up")
    _run("ip", "netns", "exec", NS, "ip", "addr", "add", f"{NS_IP}/24", "dev", NS_IF)
    _run("ip", "netns", "exec", NS, "ip", "link", "set", NS_IF, "up")
    _run("ip", "netns", "exec", NS, "ip", "link", "set", "lo", "up")
    if shutil.which("modprobe"):
        _run("modprobe", "sch_netem", check=False)
    r = _run("tc", "qdisc", "add", "dev", HOST_IF, "root", "netem", *NETEM, check=False)
    if r.returncode != 0:
        return (f"tc netem is not available on this kernel ({os.uname().release}): "
                f"`tc qdisc add ... netem` said {r.stderr.strip()!r} "
                f"(sch_netem is neither built in nor loadable)")
    _run("ip", "netns", "exec", NS, "tc", "qdisc", "add", "dev", NS_IF, "root", "netem", *NETEM)
    return None


@pytest.fixture(scope="module")
def lossy():
    """The namespace and the veth pair; removed at the end whatever happens."""
    if not LINUX:
        pytest.skip("network namespaces and tc netem are Linux only")
    if os.geteuid() != 0:
        pytest.skip("creating a network namespace and a veth pair needs root")
    missing = [p for p in ("ip", "tc") if not shutil.which(p)]
    if missing:
        pytest.skip(f"{' and '.join(missing)} not found: apt-get install iproute2")
    _teardown()
    try:
        try:
            reason = _setup()
        except subprocess.CalledProcessError as e:
            pytest.skip(f"could not set up the namespace: {' '.join(e.cmd)} -> {e.stderr.strip()}")
        if reason and os.environ.get("IOCPX_NETEM_PLAIN") != "1":
            pytest.skip(reason)
        yield {"netem": reason is None}
    finally:
        _teardown()


def in_ns(script, *args, timeout=60):
    """Runs a Python client in the other namespace; returns its stdout (it must exit 0)."""
    r = subprocess.run(["ip", "netns", "exec", NS, sys.executable, "-c", textwrap.dedent(script),
                        *map(str, args)], capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"client failed ({r.returncode}):\n{r.stdout}\n{r.stderr}"
    return r.stdout


ECHO_CLIENT = """
    import random, socket, sys, hashlib, threading
    host, port, conns, total = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    bad = []
    def one(i):
        rnd = random.Random(i)
        data = rnd.randbytes(total)
        s = socket.create_connection((host, port), timeout=30)
        got = bytearray()
        def reader():
            while len(got) < total:
                b = s.recv(1 << 16)
                if not b:
                    break
                got.extend(b)
        t = threading.Thread(target=reader); t.start()
        off = 0
        while off < total:                      # random write sizes
            n = rnd.randint(1, 40000)
            s.sendall(data[off:off + n]); off += n
        t.join(60)
        if bytes(got) != data:
            bad.append((i, len(got)))
        s.close()
    ts = [threading.Thread(target=one, args=(i,)) for i in range(conns)]
    [t.start() for t in ts]; [t.join() for t in ts]
    print("bad", bad)
    sys.exit(1 if bad else 0)
"""


def test_tcp_echo_every_byte_verified(lossy, backend):
    """8 connections echo 512 KiB each in random write sizes across the lossy link."""
    rec = Recorder()
    with iocpx.Engine(backend=backend) as eng:
        lst = eng.listen((HOST_IP, 0), on_accept=rec.accept, on_recv=echo, on_close=rec.on_close)
        out = in_ns(ECHO_CLIENT, HOST_IP, lst.address[1], 8, 512 * 1024)
        assert "bad []" in out
        wait_for(lambda: len(rec.closed) == 8, what="the 8 connections to close")
        st = eng.stats()
        assert st["bytes_in"] == st["bytes_out"] == 8 * 512 * 1024, st


FIRST_DATA_CLIENT = """
    import socket, sys
    host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    for i in range(n):
        s = socket.create_connection((host, port), timeout=30)
        msg = b"hello %d " % i * 50
        s.sendall(msg)
        got = b""
        while len(got) < len(msg):
            b = s.recv(65536)
            assert b, (i, len(got))
            got += b
        assert got == msg, i
        s.close()
    print("ok")
"""


def test_first_data_accept(lossy, backend):
    """first_data=True: on_accept gets the first bytes; 30 connections one after another."""
    firsts = []

    def on_accept(conn, data):
        firsts.append(bytes(data))
        conn.send(data)

    with iocpx.Engine(backend=backend) as eng:
        lst = eng.listen((HOST_IP, 0), first_data=True, first_data_timeout=20,
                         on_accept=on_accept, on_recv=echo)
        assert "ok" in in_ns(FIRST_DATA_CLIENT, HOST_IP, lst.address[1], 30)
    assert len(firsts) == 30 and all(firsts), firsts


TLS_CLIENT = """
    import hashlib, socket, ssl, sys
    host, port, ca, n = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    ctx = ssl.create_default_context(cafile=ca)
    ctx.check_hostname = False
    for i in range(n):
        data = hashlib.sha256(b"%d" % i).digest() * 8192          # 256 KiB
        with socket.create_connection((host, port), timeout=30) as raw:
            with ctx.wrap_socket(raw) as s:
                s.sendall(data)
                got = bytearray()
                while len(got) < len(data):
                    b = s.recv(65536)
                    assert b, (i, len(got))
                    got.extend(b)
                assert got == data, i
    print("ok")
"""


def test_tls_echo(lossy, backend, pki):
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(str(pki["dir"] / "server.pem"))
    with iocpx.Engine(backend=backend) as eng:
        lst = eng.listen((HOST_IP, 0), on_recv=echo, ssl=ctx)
        assert "ok" in in_ns(TLS_CLIENT, HOST_IP, lst.address[1], pki["dir"] / "ca.pem", 4)
        assert eng.stats()["tls_handshakes"] == 4


DGRAM_CLIENT = """
    import socket, sys, threading, time
    host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    s.settimeout(1.0)
    seen = set(); dup = [0]; done = threading.Event()
    def reader():
        while True:
            try:
                d, _ = s.recvfrom(2048)
            except socket.timeout:
                if done.is_set():
                    return
                continue
            k = int(d[:6])
            if k in seen:
                dup[0] += 1
            seen.add(k)
            assert d == b"%06d" % k + b"x" * 500
    t = threading.Thread(target=reader); t.start()
    for i in range(n):
        s.sendto(b"%06d" % i + b"x" * 500, (host, port))
        if i % 20 == 19:
            time.sleep(0.002)
    done.set(); t.join()
    print(len(seen), dup[0])
"""


def test_datagrams_losses_counted(lossy, backend):
    """2,000 datagrams there and back: each echoed one is intact; the losses are
    counted and, with netem's 2% each way, some are lost but most arrive."""
    n = 2000
    got = []
    lock = threading.Lock()

    def on_dg(ep, data, addr):
        with lock:
            got.append(bytes(data[:6]))
        ep.sendto(data, addr)

    with iocpx.Engine(backend=backend) as eng:
        ep = eng.datagram((HOST_IP, 0), on_datagram=on_dg, rcvbuf=1 << 20)
        echoed, dups = map(int, in_ns(DGRAM_CLIENT, HOST_IP, ep.address[1], n).split())
        st = ep.stats()
    arrived = len(set(got))
    print(f"datagrams: {n} sent, {arrived} arrived at the server, {echoed} echoed back, "
          f"{dups} duplicates; endpoint {st}")
    assert echoed <= arrived <= n
    assert echoed > n * 0.8, (echoed, n)
    if lossy["netem"]:
        assert echoed < n, "netem loses 2% each way, yet every datagram came back"
