"""CPython's own asyncio tests, the loop-agnostic ones, run on iocpx.EventLoop.

CPython ships the event-loop tests of its asyncio package as mixins that any
loop can be bound to (its `create_event_loop` / `new_loop` hook); uvloop and
the proactor run them the same way. Here they are bound to
iocpx.new_event_loop(backend=...) for every backend available on this machine:

  test_events        UnixEventLoopTestsMixin (EventLoopTestsMixin on Windows)
                     and SubprocessTestsMixin
  test_sock_lowlevel BaseSockTestsMixin
  test_sendfile      SendfileTestsBase
  test_server        BaseStartServer
  test_buffered_proto BaseTestBufferedProtocol
  test_sslproto      BaseStartTLS
  test_subprocess    SubprocessMixin

The tests come from the `test` package of the interpreter running pytest
(CPython installs it; some distributions split it off: then this module skips,
saying so). The embeddable CPython for Windows ships no `test` package: the
Windows run copies the matching Lib/test files next to the suite and points
IOCPX_CPYTHON_TESTS at them (tools/windows/run-tests.sh).

Tests left out are listed in LEFT_OUT with the reason; docs/asyncio.md repeats
the list. Setting IOCPX_CONFORMANCE=0 skips the whole module (for quick runs).
"""
import asyncio
import importlib
import os
import sys
import unittest

import pytest

import iocpx

if os.environ.get("IOCPX_CONFORMANCE", "1") == "0":
    pytest.skip("IOCPX_CONFORMANCE=0: CPython's asyncio conformance tests not run",
                allow_module_level=True)

if os.environ.get("IOCPX_CPYTHON_TESTS"):
    sys.path.insert(0, os.environ["IOCPX_CPYTHON_TESTS"])

try:
    from test.test_asyncio import utils as test_utils
    _te = importlib.import_module("test.test_asyncio.test_events")
    _ts = importlib.import_module("test.test_asyncio.test_sock_lowlevel")
    _tf = importlib.import_module("test.test_asyncio.test_sendfile")
    _tsv = importlib.import_module("test.test_asyncio.test_server")
    _tb = importlib.import_module("test.test_asyncio.test_buffered_proto")
    _tl = importlib.import_module("test.test_asyncio.test_sslproto")
    _tp = importlib.import_module("test.test_asyncio.test_subprocess")
except (ImportError, unittest.SkipTest) as exc:
    pytest.skip(f"CPython's test.test_asyncio package is not importable here ({exc}); "
                "install the interpreter's test package to run the conformance tests",
                allow_module_level=True)



def _under_wine():
    if sys.platform != "win32":
        return False
    try:
        import ctypes
        return hasattr(ctypes.WinDLL("ntdll"), "wine_get_version")
    except (ImportError, OSError):
        return False


# Tests left out, with the reason (at most five; white-box tests only).
LEFT_OUT = {
}
if _under_wine():
    LEFT_OUT["Subprocess.test_kill_issue43884"] = (
        "os.kill(pid, CTRL_BREAK_EVENT) (GenerateConsoleCtrlEvent) fails under Wine with "
        "'Invalid access' whatever the loop: asyncio's ProactorEventLoop fails it too")


_EVENTS_MIXIN = getattr(_te, "UnixEventLoopTestsMixin", None) or _te.EventLoopTestsMixin


def _factory(backend):
    def create_event_loop(self):
        return iocpx.new_event_loop(backend=backend)
    return create_event_loop


def _subprocess_setup(backend):
    def setUp(self):
        test_utils.TestCase.setUp(self)
        self.loop = iocpx.new_event_loop(backend=backend)
        self.set_event_loop(self.loop)
    return setUp


def _left_out(cls):
    for name, reason in LEFT_OUT.items():
        cls_name, _, meth = name.rpartition(".")
        if cls_name == cls.__name__.split("_")[0] and hasattr(cls, meth):
            setattr(cls, meth, unittest.skip(f"left out: {reason}")(getattr(cls, meth)))
    return cls


def _bind(backend):
    b = backend.replace("-", "_")
    mk = _factory(backend)
    classes = [
        type(f"Events_{b}", (_EVENTS_MIXIN, _te.SubprocessTestsMixin, test_utils.TestCase),
             {"create_event_loop": mk}),
        type(f"SockLowlevel_{b}", (_ts.BaseSockTestsMixin, test_utils.TestCase),
             {"create_event_loop": mk}),
        type(f"Sendfile_{b}", (_tf.SendfileTestsBase, test_utils.TestCase),
             {"create_event_loop": mk}),
        type(f"StartServer_{b}", (_tsv.BaseStartServer, unittest.TestCase), {"new_loop": mk}),
        type(f"BufferedProtocol_{b}", (_tb.BaseTestBufferedProtocol, unittest.TestCase),
             {"new_loop": mk}),
        type(f"StartTLS_{b}", (_tl.BaseStartTLS, unittest.TestCase), {"new_loop": mk}),
        type(f"Subprocess_{b}", (_tp.SubprocessMixin, test_utils.TestCase),
             {"setUp": _subprocess_setup(backend)}),
    ]
    for cls in classes:
        cls.__module__ = __name__
        cls.__qualname__ = cls.__name__
        globals()[f"Test{cls.__name__}"] = _left_out(cls)


for _backend in iocpx.available_backends():
    _bind(_backend)


def teardown_module(module):
    asyncio.set_event_loop_policy(None)
