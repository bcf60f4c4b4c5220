"""Build the iocpx extension modules; sources and libraries are chosen per platform.

Environment switches:
  IOCPX_DEBUG_BUILD=1   -O0 -g, for sanitizer/valgrind runs; compiles in the
                        failure points (IOCPX_FAULTS=1) unless IOCPX_FAULTS=0
  IOCPX_FAULTS=1        the failure points (iocpx._faults, docs/robustness.md)
                        in any build; never in a release build
  IOCPX_LIMITED_API=1   stable ABI: Py_LIMITED_API=3.9 + CYTHON_LIMITED_API, one
                        cp39-abi3 wheel for every CPython >= 3.9 (the Windows
                        release wheels are built this way, see tools/build-windows.sh)

Compiler flags follow the compiler actually used: GCC/Clang (also zig cc and
MinGW-w64) get -O2 and warning switches, MSVC gets /O2 (the atomics in _sys.h
have an MSVC branch using the _Interlocked* intrinsics).
"""
import os
import sys

from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

here = os.path.dirname(os.path.abspath(__file__))
debug = os.environ.get("IOCPX_DEBUG_BUILD") == "1"
limited = os.environ.get("IOCPX_LIMITED_API") == "1"
faults = os.environ.get("IOCPX_FAULTS", "1" if debug else "0") == "1"
LIMITED_HEX = "0x03090000"          # the oldest CPython supported: 3.9

define_macros = []
if faults:
    define_macros.append(("IOCPX_FAULTS", "1"))
if limited:
    define_macros += [("Py_LIMITED_API", LIMITED_HEX), ("CYTHON_LIMITED_API", "1")]


def ext(name, libraries=()):
    return Extension(
        f"iocpx.{name}",
        [f"src/iocpx/{name}.pyx"],
        include_dirs=[os.path.join(here, "src", "iocpx")],
        define_macros=list(define_macros),
        libraries=list(libraries),
        py_limited_api=limited,
    )


class BuildExt(build_ext):
    """Adds optimisation and warning flags in the dialect of the compiler in use."""

    def build_extensions(self):
        if self.compiler.compiler_type == "msvc":
            flags = ["/Od", "/Zi"] if debug else ["/O2"]
        else:
            flags = ["-O0", "-g", "-fno-omit-frame-pointer"] if debug else ["-O2"]
            flags += ["-Wno-unused-function", "-Wno-unreachable-code"]
        for e in self.extensions:
            e.extra_compile_args = flags + list(e.extra_compile_args or [])
        super().build_extensions()


modules = [ext("_backend"), ext("_core")]
if sys.platform.startswith("linux"):
    modules += [ext("_io_uring"), ext("_epoll")]
elif sys.platform == "win32":
    modules[0].libraries.append("ws2_32")       # _backend: try_send's send() now
    modules[1].libraries.append("ws2_32")       # _core: socket address helpers
    modules.append(ext("_iocp", libraries=["ws2_32", "mswsock"]))

options = {}
if limited:
    options["bdist_wheel"] = {"py_limited_api": "cp39"}

# Making an sdist (or only reading metadata) compiles nothing: skip Cython then, so
# the sdist carries the .pyx sources and no platform-specific generated C.
BUILD_COMMANDS = {"build", "build_ext", "bdist_wheel", "install", "develop", "editable_wheel"}
metadata_only = (len(sys.argv) > 1 and sys.argv[1] in {"sdist", "egg_info", "dist_info"}
                 and not BUILD_COMMANDS & set(sys.argv))
if not metadata_only:
    modules = cythonize(
        modules,
        language_level=3,
        compiler_directives={"embedsignature": True},
    )

setup(
    ext_modules=modules,
    cmdclass={"build_ext": BuildExt},
    options=options,
)
