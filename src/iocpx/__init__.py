"""iocpx: the I/O completion port server model for Python.

The kernel performs the I/O, finished operations land in one completion queue,
and a small pool of worker threads, waiting with the GIL released, takes them
off and runs the application's accept, receive and close callbacks.
"""
from iocpx._core import (
    CompletionPort,
    Connection,
    ConnectionClosedError,
    Endpoint,
    Engine,
    Listener,
    SendBufferFull,
    Timer,
    available_backends,
    default_backend,
)
from iocpx._backend import live_io
from iocpx._server import Server
from iocpx._loop import EventLoop, EventLoopPolicy, new_event_loop, run

__all__ = [
    "CompletionPort",
    "Connection",
    "ConnectionClosedError",
    "Endpoint",
    "Engine",
    "EventLoop",
    "EventLoopPolicy",
    "Listener",
    "SendBufferFull",
    "Server",
    "Timer",
    "available_backends",
    "default_backend",
    "live_io",
    "new_event_loop",
    "run",
]
__version__ = "0.1.0"
