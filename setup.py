"""Build the iocpx extension modules; sources and libraries are chosen per platform."""
import os
import sys

from Cython.Build import cythonize
from setuptools import Extension, setup

here = os.path.dirname(os.path.abspath(__file__))
debug = os.environ.get("IOCPX_DEBUG_BUILD") == "1"   # -O0 -g, for sanitizer/valgrind runs
cflags = ["-O0", "-g", "-fno-omit-frame-pointer"] if debug else ["-O2"]
cflags += ["-Wno-unused-function", "-Wno-unreachable-code"]


def ext(name, libraries=()):
    return Extension(
        f"iocpx.{name}",
        [f"src/iocpx/{name}.pyx"],
        include_dirs=[os.path.join(here, "src", "iocpx")],
        extra_compile_args=cflags,
        libraries=list(libraries),
    )


modules = [ext("_backend"), ext("_core")]
if sys.platform.startswith("linux"):
    modules += [ext("_io_uring"), ext("_epoll")]
elif sys.platform == "win32":
    modules.append(ext("_iocp", libraries=["ws2_32", "mswsock"]))

setup(
    ext_modules=cythonize(
        modules,
        language_level=3,
        compiler_directives={"embedsignature": True},
    ),
)
