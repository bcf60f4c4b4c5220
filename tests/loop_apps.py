"""Helpers for tests/test_loop_apps.py: the Linux backends the loop runs on, free ports, a
loop run per backend, and the outside servers the applications talk to (redis-server,
PostgreSQL, a Python program such as `uvicorn ... --loop iocpx:new_event_loop`), each
started in a temporary directory on a free loopback port, its output going to a file (never a
pipe nobody reads), and stopped by its PID."""
import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import iocpx

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# where the iocpx under test comes from: the checkout's src/ (an in-place build) or
# site-packages (pip install): a child Python must import that same one
SRC = os.path.dirname(os.path.dirname(os.path.abspath(iocpx.__file__)))
EXAMPLES = os.path.join(ROOT, "examples")

# The loop's Linux backends available here; the applications are run on each.
BACKENDS = [b for b in iocpx.available_backends() if b in ("io_uring", "epoll", "iocp")]


def free_port(host="127.0.0.1"):
    """A loopback port nobody listens on now (bound and released at once)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def run(backend, coro, timeout=60):
    """Run coro to its end on a new iocpx loop of that backend, as asyncio.run does: then
    the async generators and the default executor are shut down and the loop closed."""
    loop = iocpx.new_event_loop(backend)
    assert loop.backend == backend
    try:
        asyncio.set_event_loop(loop)
        return loop.run_until_complete(asyncio.wait_for(coro, timeout))
    finally:
        try:
            tasks = [t for t in asyncio.all_tasks(loop) if not t.done()]
            for t in tasks:
                t.cancel()
            if tasks:
                loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
        finally:
            asyncio.set_event_loop(None)
            loop.close()


def wait_port(port, proc, log, timeout=60, host="127.0.0.1"):
    """Wait until host:port accepts a connection; fail with the log if proc exits first."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode}:\n{read_log(log)}")
        try:
            socket.create_connection((host, port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{proc.args[0]} not listening on {port}:\n{read_log(log)}") from None
            time.sleep(0.05)


def read_log(path):
    try:
        with open(path, errors="replace") as f:
            return f.read()[-4000:]
    except OSError:
        return ""


def start(args, log, env=None, cwd=None):
    """Popen args with stdout and stderr to the file log; nothing of it stays open here."""
    with open(log, "ab") as out:
        return subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                env=env, cwd=cwd, start_new_session=True)


def stop(proc, sig=signal.SIGTERM, timeout=30):
    """Stop proc by its PID: sig, then SIGKILL if it has not exited within timeout."""
    if proc.poll() is None:
        os.kill(proc.pid, sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout)
    return proc.returncode


def python_env(backend):
    """The environment of a child Python that imports this build of iocpx and the examples,
    with IOCPX_BACKEND set."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([SRC, EXAMPLES] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH")
                                                           else []))
    env["IOCPX_BACKEND"] = backend
    env["PYTHONUNBUFFERED"] = "1"
    return env


class RedisServer:
    """A redis-server of its own: temporary directory, free port, no persistence."""

    def __init__(self, tmpdir):
        self.binary = shutil.which("redis-server")
        self.dir = str(tmpdir)
        self.port = free_port()
        self.log = os.path.join(self.dir, "redis.log")
        self.proc = None

    def __enter__(self):
        self.proc = start([self.binary, "--port", str(self.port), "--bind", "127.0.0.1",
                           "--dir", self.dir, "--save", "", "--appendonly", "no",
                           "--daemonize", "no"], self.log)
        wait_port(self.port, self.proc, self.log)
        return self

    def __exit__(self, *exc):
        stop(self.proc)


def _postgres_bindir():
    """The directory of initdb and pg_ctl: PATH, else Debian's /usr/lib/postgresql/N/bin."""
    found = shutil.which("pg_ctl")
    if found and shutil.which("initdb"):
        return os.path.dirname(os.path.realpath(found))
    base = "/usr/lib/postgresql"
    if os.path.isdir(base):
        for v in sorted(os.listdir(base), key=lambda s: int(s) if s.isdigit() else 0, reverse=True):
            d = os.path.join(base, v, "bin")
            if os.path.exists(os.path.join(d, "pg_ctl")) and os.path.exists(os.path.join(d, "initdb")):
                return d
    return None


def postgres_missing():
    """Why PostgreSQL cannot be started here, or None."""
    if _postgres_bindir() is None:
        return "PostgreSQL's initdb/pg_ctl not installed (apt-get install postgresql)"
    if os.geteuid() == 0:
        if shutil.which("runuser") is None:
            return "running as root without runuser to start PostgreSQL as another user"
        try:
            import pwd
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no postgres user to run PostgreSQL as"
    return None


class PostgresServer:
    """A PostgreSQL cluster of its own: initdb in a temporary directory, trust authentication,
    listening on a free loopback port (and a Unix socket in that directory). As root it runs as
    the postgres user (runuser), as PostgreSQL refuses to run as root."""

    def __init__(self):
        self.bindir = _postgres_bindir()
        # a directory of its own under the system's temporary directory, which the postgres
        # user can reach (pytest's tmp_path is private to root)
        self.dir = tempfile.mkdtemp(prefix="iocpx-pg-")
        self.data = os.path.join(self.dir, "data")
        self.log = os.path.join(self.dir, "postgres.log")
        self.port = free_port()
        self.user = "postgres"
        self.dsn = f"host=127.0.0.1 port={self.port} user={self.user} dbname=postgres connect_timeout=10"

    def _cmd(self, *args):
        args = [os.path.join(self.bindir, args[0])] + list(args[1:])
        if os.geteuid() == 0:
            return ["runuser", "-u", "postgres", "--"] + args
        return args

    def _run(self, *args):
        with open(self.log, "ab") as out:
            r = subprocess.run(self._cmd(*args), stdin=subprocess.DEVNULL, stdout=out,
                               stderr=subprocess.STDOUT, timeout=120, cwd=self.dir)
        if r.returncode:
            raise RuntimeError(f"{args[0]} failed ({r.returncode}):\n{read_log(self.log)}")

    def __enter__(self):
        open(self.log, "ab").close()
        if os.geteuid() == 0:
            import pwd
            pw = pwd.getpwnam("postgres")
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
            os.chown(self.log, pw.pw_uid, pw.pw_gid)
        try:
            self._start()
        except BaseException:
            self._remove()
            raise
        return self

    def _start(self):
        self._run("initdb", "-D", self.data, "-U", self.user, "--auth=trust", "-E", "UTF8",
                  "--no-sync")
        self._run("pg_ctl", "-D", self.data, "-l", self.log, "-w", "-t", "60", "-o",
                  f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off",
                  "start")

    def __exit__(self, *exc):
        try:
            self._run("pg_ctl", "-D", self.data, "-m", "fast", "-w", "-t", "60", "stop")
        except (RuntimeError, subprocess.TimeoutExpired):
            pid = self.postmaster_pid()
            if pid:
                os.kill(pid, signal.SIGQUIT)
        self._remove()

    def _remove(self):
        pid = self.postmaster_pid()
        if pid:                   # still running: stop it by its PID before removing its files
            try:
                os.kill(pid, signal.SIGQUIT)
                for _ in range(100):
                    os.kill(pid, 0)
                    time.sleep(0.1)
            except ProcessLookupError:
                pass
        shutil.rmtree(self.dir, ignore_errors=True)

    def postmaster_pid(self):
        try:
            with open(os.path.join(self.data, "postmaster.pid")) as f:
                return int(f.readline())
        except (OSError, ValueError):
            return None


def python_program(args, backend, tmpdir, port, name="server", cwd=None):
    """Start a Python program (args after `python -u`) that serves on port, with this iocpx
    build importable and IOCPX_BACKEND=backend; returns (proc, log) once the port answers."""
    log = os.path.join(str(tmpdir), f"{name}.log")
    proc = start([sys.executable, "-u"] + list(args), log, env=python_env(backend), cwd=cwd)
    try:
        wait_port(port, proc, log)
    except BaseException:
        stop(proc, signal.SIGKILL)
        raise
    return proc, log
