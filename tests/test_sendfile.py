"""conn.sendfile: the kernel moves the file (splice on Linux), in order with send()."""
import hashlib
import os

import pytest

from conftest import Recorder, client, recv_exact, recv_until_eof, wait_for


@pytest.fixture(scope="module")
def big_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("sf") / "big.bin"
    h = hashlib.sha256()
    with open(path, "wb") as f:
        for i in range(50):
            chunk = hashlib.sha256(i.to_bytes(4, "big")).digest() * (1 << 15)   # 1 MiB
            f.write(chunk)
            h.update(chunk)
    return path, h.hexdigest(), 50 << 20


def test_sendfile_50mib_by_path_hash(engine, big_file):
    path, digest, size = big_file
    rec = Recorder()

    def on_accept(conn, data):
        queued = conn.sendfile(str(path))
        rec.add("queued", queued)
        conn.close()

    lst = engine.listen(("127.0.0.1", 0), on_accept=on_accept, on_close=rec.on_close)
    s = client(lst.address, timeout=60)
    got = recv_until_eof(s, timeout=60)
    s.close()
    assert len(got) == size
    assert hashlib.sha256(got).hexdigest() == digest
    rec.wait(lambda r: r.closed)
    assert ("queued", size) in rec.events
    assert list(rec.closed.values()) == [None]


def test_sendfile_file_object_fd_offset_count_and_order(engine, big_file):
    path, _, size = big_file
    with open(path, "rb") as f:
        ref = f.read()
    fobj = open(path, "rb")
    fd = os.open(path, os.O_RDONLY)

    def on_accept(conn, data):
        conn.send(b"<head>")
        conn.sendfile(fobj, offset=10, count=100_000)
        fobj.close()                                   # the queued send keeps its own descriptor
        conn.send(b"<mid>")
        conn.sendfile(fd, offset=size - 5000)          # to the end
        conn.sendfile(path, count=0)                   # nothing
        conn.send(b"<tail>")
        conn.close()

    try:
        lst = engine.listen(("127.0.0.1", 0), on_accept=on_accept)
        s = client(lst.address)
        got = recv_until_eof(s)
        s.close()
    finally:
        fobj.close()
        os.close(fd)
    assert got == b"<head>" + ref[10:100_010] + b"<mid>" + ref[-5000:] + b"<tail>"


def test_sendfile_bad_arguments(engine, tmp_path):
    conns = []
    lst = engine.listen(("127.0.0.1", 0), on_accept=lambda c, d: conns.append(c))
    s = client(lst.address)
    wait_for(lambda: conns)
    c = conns[0]
    p = tmp_path / "x"
    p.write_bytes(b"x" * 10)
    with pytest.raises(ValueError):
        c.sendfile(p, offset=-1)
    with pytest.raises(ValueError):
        c.sendfile(p, count=-5)
    with pytest.raises(TypeError):
        c.sendfile(3.5)
    with pytest.raises(TypeError):
        c.sendfile(p, offset="0")
    with pytest.raises(FileNotFoundError):
        c.sendfile(tmp_path / "missing")
    c.sendfile(p, offset=4)
    assert recv_exact(s, 6) == b"x" * 6
    s.close()


def test_sendfile_past_end_of_file_closes_with_error(engine, tmp_path):
    p = tmp_path / "short"
    p.write_bytes(b"y" * 1000)
    rec = Recorder()
    lst = engine.listen(("127.0.0.1", 0), on_accept=lambda c, d: c.sendfile(p, count=5000),
                        on_close=rec.on_close)
    s = client(lst.address)
    got = recv_until_eof(s)
    s.close()
    rec.wait(lambda r: r.closed)
    assert got == b"y" * 1000
    exc = list(rec.closed.values())[0]
    assert isinstance(exc, OSError) and "ended before" in str(exc)
