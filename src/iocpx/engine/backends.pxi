# Backends: which exist here, the default, and making one. Each backend is one
# extension module (_io_uring, _epoll, _iocp; see the map in _core.pyx) with
# probe(), features() and one Backend class.

_probe_cache = None
_fallback_logged = False

# (name, module) best first; each module has probe(), features() and one Backend class.
_BACKEND_MODULES = (("io_uring", "_io_uring"), ("iocp", "_iocp"), ("epoll", "_epoll"))
_BACKEND_CLASSES = {"io_uring": "IoUringBackend", "iocp": "IocpBackend", "epoll": "EpollBackend"}


def _probe_all():
    """{backend name: None if usable else the reason}, computed once."""
    global _probe_cache
    if _probe_cache is None:
        res = {}
        for name, module in _BACKEND_MODULES:
            try:
                mod = __import__(f"iocpx.{module}", fromlist=["probe"])
                res[name] = mod.probe()
            except ImportError as e:
                res[name] = f"not built for this platform ({e})"
        _probe_cache = res
    return _probe_cache


def available_backends():
    """Backends usable on this machine, best first."""
    return [name for name, why in _probe_all().items() if why is None]


def default_backend():
    """The backend an Engine uses when none is named (IOCPX_BACKEND overrides).
    Falls back from io_uring to epoll with one logged warning."""
    global _fallback_logged
    env = os.environ.get("IOCPX_BACKEND")
    if env:
        return env
    avail = available_backends()
    if not avail:
        reasons = "; ".join(f"{k}: {v}" for k, v in _probe_all().items())
        raise OSError(_errno.ENOSYS, f"no iocpx backend works here ({reasons})")
    probes = _probe_all()
    if avail[0] == "epoll" and probes.get("io_uring") is not None and not _fallback_logged:
        _fallback_logged = True
        log.warning("iocpx: using the epoll backend: %s", probes["io_uring"])
    return avail[0]


cdef Backend make_backend(object name):
    if name is None:
        name = default_backend()
    if not isinstance(name, str):
        raise TypeError(f"backend must be a str or None, not {type(name).__name__}")
    probes = _probe_all()
    if name not in probes:
        raise ValueError(f"unknown backend {name!r}; known: {sorted(probes)}")
    if probes[name] is not None:
        raise OSError(_errno.ENOSYS, f"backend {name!r} is not available: {probes[name]}")
    module = dict(_BACKEND_MODULES)[name]
    mod = __import__(f"iocpx.{module}", fromlist=[_BACKEND_CLASSES[name]])
    return getattr(mod, _BACKEND_CLASSES[name])()
