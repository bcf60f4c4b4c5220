"""`python -m iocpx info`: the version, the platform, each backend with why it is
or is not available here, and the kernel/OS features each backend detected."""
import json
import os
import platform
import sys

import iocpx
from iocpx import _core

# (name, module) best first, as the engine tries them; the fallback only matters
# if _core ever stops exposing its table.
_FALLBACK_MODULES = (("io_uring", "_io_uring"), ("iocp", "_iocp"), ("epoll", "_epoll"))


def _wine_version():
    if sys.platform != "win32":
        return None
    try:
        import ctypes
        fn = ctypes.windll.ntdll.wine_get_version
    except (ImportError, OSError, AttributeError):
        return None
    fn.restype = ctypes.c_char_p
    return fn().decode()


def _os_description():
    if sys.platform.startswith("linux"):
        desc = f"Linux {platform.release()} ({platform.machine()})"
        try:
            with open("/proc/sys/kernel/io_uring_disabled") as f:
                desc += f", kernel.io_uring_disabled={f.read().strip()}"
        except OSError:
            pass
        try:
            libc = platform.libc_ver()
            if libc[0]:
                desc += f", {libc[0]} {libc[1]}"
        except (OSError, ValueError):
            pass
        return desc
    if sys.platform == "win32":
        # not platform.platform(): from 3.12 it asks WMI, which is slow and, under
        # Wine 8, crashes the process (propsys.VariantToString is unimplemented)
        v = sys.getwindowsversion()
        desc = f"Windows {v.major}.{v.minor}.{v.build}"
        if v.service_pack:
            desc += f" {v.service_pack}"
    else:
        desc = f"{platform.system()} {platform.release()}"
    wine = _wine_version()
    if wine:
        desc += f" (Wine {wine})"
    return desc


def collect():
    """Everything `info` prints, as a JSON-ready dict."""
    modules = getattr(_core, "_BACKEND_MODULES", _FALLBACK_MODULES)
    probe_all = getattr(_core, "_probe_all", None)
    probes = probe_all() if probe_all is not None else {}
    backends = {}
    for name, modname in modules:
        entry = {"module": f"iocpx.{modname}", "available": False, "reason": None,
                 "features": None}
        try:
            mod = __import__(f"iocpx.{modname}", fromlist=["probe"])
        except ImportError as e:
            entry["reason"] = f"not built for this platform ({e})"
            backends[name] = entry
            continue
        if name in probes:
            why = probes[name]
        else:
            try:
                why = mod.probe()
            except Exception as e:  # a probe that raises is a finding to show, not a crash
                why = f"probe() raised {type(e).__name__}: {e}"
        entry["available"] = why is None
        entry["reason"] = why
        features = getattr(mod, "features", None)
        if features is None:
            entry["features"] = None           # printed as "(not reported)"
        else:
            try:
                entry["features"] = dict(features())
            except Exception as e:
                entry["features"] = {"error": f"features() raised {type(e).__name__}: {e}"}
        backends[name] = entry
    try:
        default = iocpx.default_backend()
        default_err = None
    except OSError as e:
        default, default_err = None, str(e)
    return {
        "iocpx": iocpx.__version__,
        "package": os.path.dirname(os.path.abspath(iocpx.__file__)),
        "python": f"{platform.python_implementation()} {platform.python_version()} "
                  f"({sys.platform}, {_bits()}-bit)",
        "extension": _extension(),
        "os": _os_description(),
        "backends": backends,
        "default_backend": default,
        "default_backend_error": default_err,
        "IOCPX_BACKEND": os.environ.get("IOCPX_BACKEND"),
        "docs": _docs(),
    }


def _docs():
    """Where the documentation is: docs/ of the source tree (the Guide, the API reference, How
    it works, Performance), the checkout's own copy when iocpx runs from one."""
    here = os.path.join(os.path.dirname(os.path.abspath(iocpx.__file__)), "..", "..", "docs",
                        "index.md")
    if os.path.exists(here):
        return os.path.normpath(here)
    return "docs/index.md in the iocpx source tree (README.md links every page)"


def _bits():
    return 64 if sys.maxsize > 2 ** 32 else 32


def _extension():
    """The file name of the core extension module: its suffix tells the build
    (`.abi3.so` stable ABI on Linux; on Windows a stable-ABI build is a plain `.pyd`)."""
    return os.path.basename(getattr(_core, "__file__", "") or "?")


def _fmt_value(v):
    if v is True:
        return "yes"
    if v is False:
        return "no"
    return str(v)


def render(info):
    out = [f"iocpx {info['iocpx']}",
           f"  package   {info['package']}",
           f"  python    {info['python']}",
           f"  extension {info['extension']}",
           f"  os        {info['os']}",
           f"  docs      {info['docs']}",
           "backends (best first):"]
    for name, b in info["backends"].items():
        state = "available" if b["available"] else f"not available: {b['reason']}"
        out.append(f"  {name:9s} {state}")
        if b["reason"] is not None and b["reason"].startswith("not built"):
            continue
        feats = b["features"]
        if feats is None:
            out.append("            features: (not reported)")
        elif not feats:
            out.append("            features: (none)")
        else:
            out.append("            features:")
            width = max(len(k) for k in feats)
            for k, v in feats.items():
                out.append(f"              {k:{width}s}  {_fmt_value(v)}")
    if info["default_backend"] is not None:
        env = info["IOCPX_BACKEND"]
        out.append(f"default backend: {info['default_backend']}"
                   + (" (from IOCPX_BACKEND)" if env else ""))
    else:
        out.append(f"default backend: none ({info['default_backend_error']})")
    return "\n".join(out)


def main(args):
    info = collect()
    if args.json:
        print(json.dumps(info, indent=2, sort_keys=False))
    else:
        print(render(info))
    return 0 if any(b["available"] for b in info["backends"].values()) else 1
