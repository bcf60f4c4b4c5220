"""Server: an Engine with one Listener, for the common case."""
import threading

from iocpx._core import Engine


class Server:
    """Server(address, **listen options, workers=None, backend=None).

    start() binds and starts accepting; stop() closes everything;
    `with Server(...) as srv:` starts on entry and stops on exit.
    """

    def __init__(self, address, *, workers=None, backend=None, **listen_options):
        self._address = address
        self._workers = workers
        self._backend = backend
        self._options = listen_options
        self._engine = None
        self._listener = None
        self._stopped = threading.Event()
        self._serving = False
        self._final_stats = None    # the engine's counters when stop() closed it

    def start(self):
        if self._engine is not None:
            raise RuntimeError("Server already started")
        self._engine = Engine(workers=self._workers, backend=self._backend)
        try:
            self._listener = self._engine.listen(self._address, **self._options)
        except BaseException:
            self._engine.close()
            self._engine = None
            raise
        self._stopped.clear()
        return self

    def stop(self, timeout=None):
        if self._engine is None:
            return
        if self._engine._in_worker():
            # inside a callback: an engine cannot join its own workers, so
            # hand the shutdown to serve_forever (or a thread of our own)
            if not self._serving:
                threading.Thread(target=self.stop, args=(timeout,), daemon=True).start()
            self._stopped.set()
            return
        engine, self._engine = self._engine, None
        try:
            engine.close(timeout)
        finally:
            self._final_stats = engine.stats()
            self._stopped.set()

    def serve_forever(self):
        """Start if needed and block until stop() is called (from another
        thread, a callback or a signal handler)."""
        if self._engine is None:
            self.start()
        self._serving = True
        try:
            while not self._stopped.wait(0.2):
                pass
        finally:
            self._serving = False
            self.stop()

    @property
    def address(self):
        if self._listener is None:
            raise RuntimeError("Server not started")
        return self._listener.address

    @property
    def engine(self):
        return self._engine

    def stats(self):
        """The engine's counters; after stop(), the final ones (live_io 0)."""
        if self._engine is None:
            if self._final_stats is not None:
                return dict(self._final_stats)
            raise RuntimeError("Server not started")
        return self._engine.stats()

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()
