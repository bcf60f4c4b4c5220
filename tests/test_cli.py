"""The command line, run as a user runs it (`python -m iocpx ...` in a child
process): --version, info (text and JSON), demo, and a short serve + stress run
with a clean stop. The same tests run on Linux and on Windows (under Wine in CI)."""
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time

import pytest

import iocpx

from conftest import UNDER_WINE

WINDOWS = sys.platform == "win32"
# Python start-up and connection set-up are much slower under Wine.
SLOW = 4 if UNDER_WINE else 1


def run_cli(*args, timeout=120):
    proc = subprocess.run([sys.executable, "-m", "iocpx", *args], stdin=subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          timeout=timeout * SLOW)
    return proc.returncode, proc.stdout, proc.stderr


def test_version_is_the_package_version():
    rc, out, err = run_cli("--version")
    assert rc == 0, err
    assert out.strip() == f"iocpx {iocpx.__version__}"


def test_info_json_agrees_with_the_library():
    rc, out, err = run_cli("info", "--json")
    assert rc == 0, err
    info = json.loads(out)
    assert info["iocpx"] == iocpx.__version__
    assert set(info["backends"]) == {"io_uring", "iocp", "epoll"}
    avail = {name for name, b in info["backends"].items() if b["available"]}
    assert avail == set(iocpx.available_backends())
    for name, b in info["backends"].items():
        if b["available"]:
            assert b["reason"] is None
            assert b["features"] is None or isinstance(b["features"], dict)
        else:
            assert isinstance(b["reason"], str) and b["reason"], name
    assert info["default_backend"] == iocpx.default_backend()


def test_info_text_names_each_backend_and_why():
    rc, out, err = run_cli("info")
    assert rc == 0, err
    assert out.startswith(f"iocpx {iocpx.__version__}\n")
    for name in iocpx.available_backends():
        assert re.search(rf"^  {re.escape(name)} +available$", out, re.M), out
    for name in {"io_uring", "iocp", "epoll"} - set(iocpx.available_backends()):
        assert re.search(rf"^  {re.escape(name)} +not available: .+$", out, re.M), out
    # every backend that was built says which features it detected, or that it reports none
    assert out.count("features") >= len(iocpx.available_backends())
    assert f"default backend: {iocpx.default_backend()}" in out
    # where the documentation is: the checkout's docs/index.md when run from one
    m = re.search(r"^  docs +(.+)$", out, re.M)
    assert m and "docs/index.md" in m.group(1).replace(os.sep, "/"), out


def test_demo_runs_and_verifies_every_echo():
    rc, out, err = run_cli("demo", "--connections", "40", timeout=60)
    assert rc == 0, out + err
    assert "client: 120/120 echoes verified, 0 mismatched, 0 connection errors" in out
    assert "after shutdown: live I/O contexts 0" in out
    assert out.rstrip().endswith("demo: OK")


def test_bad_command_line_is_a_usage_error():
    rc, out, err = run_cli("stress", "--connections", "0", "--port", "9")
    assert rc == 2 and "--connections and --messages must be at least 1" in err
    rc, out, err = run_cli("no-such-command")
    assert rc == 2 and "invalid choice" in err


def _reader(stream, lines):
    for line in stream:
        lines.put(line)
    lines.put(None)


def test_serve_then_stress_then_clean_stop():
    # POSIX: stopped by SIGINT (Ctrl-C). Windows: by its own --duration, since a console
    # event cannot be sent to a child without a console (Wine with piped output), and
    # there CPython 3.9's os.kill(pid, CTRL_BREAK_EVENT) then falls back to TerminateProcess.
    duration = 20 if WINDOWS else 120
    srv = subprocess.Popen(
        [sys.executable, "-m", "iocpx", "serve", "--port", "0", "--log-accepts", "3",
         "--duration", str(duration)],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = queue.Queue()
    t = threading.Thread(target=_reader, args=(srv.stdout, lines), daemon=True)
    t.start()
    seen = []
    try:
        first = lines.get(timeout=30 * SLOW)
        seen.append(first)
        m = re.search(r"listening on (\S+):(\d+) backend=(\S+) .* pid=(\d+)$", first or "")
        assert m, f"unexpected first line from serve: {first!r}"
        port, pid = m.group(2), int(m.group(4))
        assert pid == srv.pid and m.group(3) == iocpx.default_backend()

        rc, out, err = run_cli("stress", "--port", port, "--connections", "20", "--messages", "2",
                               "--interval", "0.2", "--timeout", str(30 * SLOW),
                               "--server-pid", str(pid), timeout=120)
        assert rc == 0, out + err
        assert "messages     sent 40, echoed 40, verified 40 (of 40)" in out, out
        assert "errors       none" in out
        # the server's CPU time and memory were read (from /proc, or GetProcessTimes on Windows)
        assert re.search(rf"server +pid {pid}: CPU [\d.]+ s .* peak RSS [\d.]+ MiB", out), out

        # wait for a status line (printed once a second), then stop the server
        deadline = time.monotonic() + 15 * SLOW
        while not any(x and x.startswith("conns ") for x in seen):
            line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
            assert line is not None, "serve exited early: " + "".join(seen)
            seen.append(line)
        if not WINDOWS:
            srv.send_signal(signal.SIGINT)
        rc = srv.wait(timeout=duration + 30 * SLOW)
        t.join(10)
        while True:
            line = lines.get_nowait()
            if line is None:
                break
            seen.append(line)
        text = "".join(seen)
        assert rc == 0, text
        assert re.search(r"^accepted 127\.0\.0\.\d+:\d+ first data b''$", text, re.M), text
        assert re.search(r"^conns .* cpu +[\d.]+% +rss +[\d.]+ MiB$", text, re.M), text
        assert text.rstrip().endswith("iocpx serve: stopped")
    finally:
        if srv.poll() is None:
            srv.kill()
            srv.wait(30)
        srv.stdout.close()


def test_serve_duration_stops_by_itself():
    t0 = time.monotonic()
    rc, out, err = run_cli("serve", "--port", "0", "--quiet", "--duration", "1", timeout=60)
    assert rc == 0, out + err
    assert "listening on 127.0.0.1:" in out and out.rstrip().endswith("iocpx serve: stopped")
    assert time.monotonic() - t0 >= 1.0


@pytest.mark.skipif(hasattr(__import__("socket"), "SO_REUSEPORT"),
                    reason="this platform has SO_REUSEPORT, so serve --processes N is allowed")
def test_serve_processes_without_reuseport_is_a_clear_error():
    rc, out, err = run_cli("serve", "--port", "0", "--processes", "2", timeout=60)
    assert rc == 2
    assert "SO_REUSEPORT" in err and "run one server process" in err
