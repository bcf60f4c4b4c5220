"""The examples (examples/resp_server.py, examples/http_server.py) served for real on every
backend and driven by real clients: plain sockets, http.client, redis-cli and redis-benchmark
when they are installed (skipped with the reason when not), and each command line once on
asyncio and once on iocpx."""
import hashlib
import http.client
import os
import shutil
import signal
import socket
import subprocess
import sys

import pytest

from conftest import client, recv_exact, recv_until_eof

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")
sys.path.insert(0, EXAMPLES)
import http_server  # noqa: E402
import resp_server  # noqa: E402
import transports  # noqa: E402


@pytest.fixture
def resp_addr(backend):
    store = resp_server.Store()
    srv = transports.start_iocpx("127.0.0.1", 0, lambda: resp_server.RespHandler(store),
                                 backend=backend)
    yield srv.address
    srv.stop(timeout=30)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("www")
    big = b"".join(hashlib.sha256(i.to_bytes(4, "big")).digest() for i in range(40000))  # 1.2 MiB
    (root / "big.bin").write_bytes(big)
    (root / "hello.txt").write_bytes(b"hello file\n")
    (root / "empty.txt").write_bytes(b"")
    (root / "sub").mkdir()
    return root, big


@pytest.fixture
def http_addr(backend, files):
    root = str(files[0])
    srv = transports.start_iocpx("127.0.0.1", 0, lambda: http_server.HttpHandler(root),
                                 backend=backend)
    yield srv.address
    srv.stop(timeout=30)


def resp_cmd(*args):
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        a = a if isinstance(a, bytes) else str(a).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)


# ---- RESP ----

def test_resp_pipelined_round_trip(resp_addr):
    """Every command once, pipelined in one write; the replies come back byte for byte, in
    order."""
    cmds = [("PING",), ("SET", "k", "v1"), ("GET", "k"), ("GET", "missing"),
            ("INCR", "n"), ("INCR", "n"), ("INCR", "k"), ("MSET", "a", "1", "b", "2"),
            ("MGET", "a", "b", "nope"), ("EXISTS", "a", "b", "nope"), ("DEL", "a", "nope"),
            ("EXISTS", "a"), ("SET", "k", "v2", "NX"), ("SET", "k", "v3", "XX", "GET"),
            ("GET", "k"), ("CONFIG", "GET", "save"), ("HELLO", "3"), ("NOSUCH", "x"),
            ("GET",), ("PING", "hi"), ("DBSIZE",)]
    want = (b"+PONG\r\n+OK\r\n$2\r\nv1\r\n$-1\r\n:1\r\n:2\r\n"
            b"-ERR value is not an integer or out of range\r\n+OK\r\n"
            b"*3\r\n$1\r\n1\r\n$1\r\n2\r\n$-1\r\n:2\r\n:1\r\n:0\r\n$-1\r\n$2\r\nv1\r\n"
            b"$2\r\nv3\r\n*2\r\n$4\r\nsave\r\n$0\r\n\r\n"
            b"-NOPROTO unsupported protocol version\r\n"
            b"-ERR unknown command 'NOSUCH', with args beginning with: 'x'\r\n"
            b"-ERR wrong number of arguments for 'get' command\r\n$2\r\nhi\r\n:3\r\n")
    with client(resp_addr) as s:
        s.sendall(b"".join(resp_cmd(*c) for c in cmds))
        assert recv_exact(s, len(want)) == want
        s.sendall(b"PING\r\nECHO inline\r\n")                  # inline commands
        assert recv_exact(s, 19) == b"+PONG\r\n$6\r\ninline\r\n"


def test_resp_commands_split_anywhere_and_large_value(resp_addr):
    """A command cut at every byte of its framing, and a 300 kB value in odd-sized pieces."""
    value = os.urandom(300_000)
    msg = resp_cmd("SET", "big", value) + resp_cmd("GET", "big")
    cut = msg.index(value[:16])
    with client(resp_addr) as s:
        for i in range(cut):                            # "*3\r\n$3\r\nSET..." byte by byte
            s.sendall(msg[i:i + 1])
        for i in range(cut, len(msg), 7001):
            s.sendall(msg[i:i + 7001])
        want = b"+OK\r\n$%d\r\n" % len(value) + value + b"\r\n"
        assert recv_exact(s, len(want)) == want


def test_resp_state_is_shared_between_connections_and_quit_closes(resp_addr):
    socks = [client(resp_addr) for _ in range(8)]
    try:
        for s in socks:
            s.sendall(resp_cmd("INCR", "shared") * 25)
        replies = b""
        for s in socks:
            got = b""
            while got.count(b"\r\n") < 25:
                chunk = s.recv(4096)
                assert chunk, "server closed early"
                got += chunk
            replies += got
        values = sorted(int(x[1:]) for x in replies.split(b"\r\n") if x)
        assert values == list(range(1, 201))            # every INCR counted once
        s = socks[0]
        s.sendall(resp_cmd("QUIT") + resp_cmd("PING"))
        assert recv_until_eof(s) == b"+OK\r\n"          # closed after QUIT, PING never run
    finally:
        for s in socks:
            s.close()


def test_resp_protocol_error_replies_and_closes(resp_addr):
    with client(resp_addr) as s:
        s.sendall(b"*1\r\n!3\r\nGET\r\n")
        got = recv_until_eof(s)
        assert got.startswith(b"-ERR Protocol error: expected '$', got '!'")


@pytest.mark.skipif(not shutil.which("redis-cli"),
                    reason="redis-cli is not installed (apt-get install redis-tools)")
def test_resp_redis_cli(resp_addr):
    host, port = resp_addr

    def cli(*args):
        r = subprocess.run(["redis-cli", "-h", host, "-p", str(port), *args],
                           capture_output=True, text=True, timeout=20)
        assert r.returncode == 0, r.stderr
        return r.stdout

    assert cli("PING") == "PONG\n"
    assert cli("SET", "greeting", "hello world") == "OK\n"
    assert cli("GET", "greeting") == "hello world\n"
    assert cli("MSET", "x", "1", "y", "2") == "OK\n"
    assert cli("MGET", "x", "y", "z") == "1\n2\n\n"
    assert cli("INCR", "x") == "2\n"
    assert cli("EXISTS", "x", "y", "z") == "2\n"
    assert cli("DEL", "x", "y") == "2\n"
    assert cli("CONFIG", "GET", "appendonly") == "appendonly\nno\n"


@pytest.mark.skipif(not shutil.which("redis-benchmark"),
                    reason="redis-benchmark is not installed (apt-get install redis-tools)")
def test_resp_redis_benchmark_small_run(resp_addr):
    host, port = resp_addr
    r = subprocess.run(["redis-benchmark", "-h", host, "-p", str(port), "-c", "10", "-n", "3000",
                        "-P", "8", "-t", "set,get", "--csv"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    rows = {line.split(",")[0].strip('"'): line for line in r.stdout.splitlines()[1:]}
    assert set(rows) == {"SET", "GET"}, r.stdout + r.stderr
    assert "Could not fetch server CONFIG" not in r.stderr + r.stdout


# ---- HTTP ----

def read_response(sock, buf=b"", head_only=False):
    """(status, headers dict, body, rest of buf) of one response from a raw socket (the
    response to a HEAD request has no body, whatever its Content-Length)."""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        assert chunk, f"EOF inside a response head: {buf!r}"
        buf += chunk
    head, _, buf = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    n = 0 if head_only else int(headers["content-length"])
    while len(buf) < n:
        chunk = sock.recv(1 << 20)
        assert chunk, "EOF inside a response body"
        buf += chunk
    return status, headers, buf[:n], buf[n:]


def assert_closed(sock, rest=b""):
    """Nothing more, then the server's close: EOF, or a reset when the server closed with bytes
    of ours unread (a plain close() on Linux answers those with RST)."""
    assert rest == b""
    try:
        assert recv_until_eof(sock, timeout=10) == b""
    except (ConnectionResetError, ConnectionAbortedError):
        pass


def test_http_keep_alive_with_http_client(http_addr, files):
    _, big = files
    conn = http.client.HTTPConnection(*http_addr, timeout=10)
    try:
        conn.request("GET", "/")
        r = conn.getresponse()
        assert (r.status, r.read()) == (200, b"Hello, World!\n")
        sock = conn.sock
        for path, body in (("/files/hello.txt", b"hello file\n"), ("/files/big.bin", big),
                           ("/files/empty.txt", b""), ("/?q=1", b"Hello, World!\n"),
                           ("http://x/files/hello.txt", b"hello file\n")):   # absolute-form
            conn.request("GET", path)
            r = conn.getresponse()
            assert r.status == 200 and r.read() == body, path
            assert int(r.getheader("Content-Length")) == len(body)
        conn.request("HEAD", "/files/big.bin")
        r = conn.getresponse()
        assert r.status == 200 and r.getheader("Content-Length") == str(len(big))
        assert r.read() == b""
        for path, status in (("/nope", 404), ("/files/nope", 404), ("/files/sub", 404),
                             ("/files/../test_examples.py", 404)):
            conn.request("GET", path)
            r = conn.getresponse()
            r.read()
            assert r.status == status, path
        conn.request("POST", "/", body=b"x" * 1000)
        r = conn.getresponse()
        r.read()
        assert r.status == 405 and r.getheader("Allow") == "GET, HEAD"
        conn.request("GET", "/")                        # the body of the POST was skipped
        r = conn.getresponse()
        assert (r.status, r.read()) == (200, b"Hello, World!\n")
        assert conn.sock is sock, "the connection was not kept alive"
    finally:
        conn.close()


def test_http_pipelined_raw(http_addr, files):
    _, big = files
    reqs = (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
            b"GET /files/big.bin HTTP/1.1\r\nHost: x\r\n\r\n"
            b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n"
            b"POST /files/hello.txt HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nabcde"
            b"GET /files/hello.txt HTTP/1.1\r\nHost: x\r\n\r\n"
            b"GET /missing HTTP/1.1\r\nHost: x\r\n\r\n"
            b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    with client(http_addr) as s:
        # in small pieces, so requests straddle receives
        for i in range(0, len(reqs), 7):
            s.sendall(reqs[i:i + 7])
        got = []
        buf = b""
        for i in range(7):
            status, headers, body, buf = read_response(s, buf, head_only=i == 2)
            got.append((status, body, headers.get("connection")))
        assert_closed(s, buf)                           # closed after Connection: close
    assert [g[0] for g in got] == [200, 200, 200, 405, 200, 404, 200]
    assert got[0][1] == b"Hello, World!\n" and got[1][1] == big and got[2][1] == b""
    assert got[4][1] == b"hello file\n"
    assert got[6][2] == "close"


def test_http_malformed_gets_400_and_close(http_addr):
    for bad in (b"GARBAGE\r\n\r\n", b"GET / HTTP/1.1\r\nNo colon here\r\n\r\n",
                b"GET / HTTP/1.1\r\n\r\n",                       # HTTP/1.1 without Host
                b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
                b"GET / HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 20000):  # head too large
        with client(http_addr) as s:
            s.sendall(bad)
            status, headers, _, rest = read_response(s)
            assert status == 400, bad[:40]
            assert headers.get("connection") == "close"
            assert_closed(s, rest)
    with client(http_addr) as s:
        s.sendall(b"GET / HTTP/2.0\r\nHost: x\r\n\r\n")
        assert read_response(s)[0] == 505


def test_http_10_closes_unless_keep_alive(http_addr):
    with client(http_addr) as s:
        s.sendall(b"GET / HTTP/1.0\r\n\r\n")
        status, headers, body, rest = read_response(s)
        assert (status, body) == (200, b"Hello, World!\n")
        assert_closed(s, rest)
    with client(http_addr) as s:
        s.sendall(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n" * 2)
        buf = b""
        for _ in range(2):
            status, headers, _, buf = read_response(s, buf)
            assert status == 200 and headers["connection"] == "keep-alive"


# ---- the command lines, once on asyncio/uvloop and once on iocpx ----

@pytest.mark.skipif(sys.platform == "win32",
                    reason="the test stops the server with SIGTERM (POSIX); on Windows the "
                           "examples stop with Ctrl-C")
@pytest.mark.parametrize("loop", ["asyncio", "iocpx"])
@pytest.mark.parametrize("example", ["resp_server.py", "http_server.py"])
def test_command_line(example, loop, files):
    if loop == "asyncio":
        try:
            import uvloop  # noqa: F401
            loop = "uvloop"
        except ImportError:
            pass
    cmd = [sys.executable, os.path.join(EXAMPLES, example), "--port", "0", "--loop", loop]
    if example == "http_server.py":
        cmd += ["--dir", str(files[0])]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = p.stdout.readline()
        assert line.startswith("serving "), line + p.stderr.read()
        port = int(line.split()[3].rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            if example == "resp_server.py":
                s.sendall(resp_cmd("SET", "a", "b") + resp_cmd("GET", "a"))
                assert recv_exact(s, 12) == b"+OK\r\n$1\r\nb\r\n"
            else:
                s.sendall(b"GET /files/hello.txt HTTP/1.1\r\nHost: x\r\n\r\n")
                status, _, body, _ = read_response(s)
                assert (status, body) == (200, b"hello file\n")
        p.send_signal(signal.SIGTERM)
        assert p.wait(timeout=20) == 0, p.stderr.read()
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        p.stdout.close()
        p.stderr.close()
