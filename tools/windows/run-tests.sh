#!/usr/bin/env bash
# Install a Windows wheel into the official embeddable CPython of one version
# under Wine and test it there: `python -m iocpx info`, `python -m iocpx demo`,
# then pytest on the test suite (tests/, which holds tests/windows).
#
# Usage: tools/windows/run-tests.sh WHEEL VERSION [pytest args...]
#        e.g. tools/windows/run-tests.sh dist/iocpx-0.1.0-cp39-abi3-win_amd64.whl 3.12
# Env:   IOCPX_WIN_TIMEOUT   limit in seconds for the pytest run (default 1200)
#        IOCPX_WIN_NO_RERUN  set: no second chance for tests that failed
#        IOCPX_TESTS_DIR     the tests folder to run (default: this checkout's tests/)
#        IOCPX_WIN_CONFORMANCE  the versions that also run CPython's asyncio tests (default 3.11)
#        IOCPX_WIN_BUILD, PYTHON: see tools/windows/common.sh
#
# "Install" = unpack the wheel into a fresh site folder after checking every
# file against its RECORD, and list that folder in the interpreter's ._pth
# (the embeddable CPython ignores PYTHONPATH); pytest & co. go in a second
# folder. Nothing of the checkout is importable there: the suite runs against
# the wheel. Wine notes: python.exe needs a pipe as stdout ("init_sys_streams
# ... Invalid handle" otherwise), hence "| cat"; WINEDEBUG=-all; a private
# WINEPREFIX under the build folder (the first start creates it).
# Exit status: 0 only if info, demo and the suite all passed.
set -euo pipefail
LOG_PREFIX=run-tests
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
[ $# -ge 2 ] || die "usage: tools/windows/run-tests.sh WHEEL VERSION [pytest args...]"
WHL="$(cd "$(dirname "$1")" && pwd)/$(basename "$1")"
VER="$2"; shift 2
V="$(nodot "$VER")"
LOG_PREFIX="run-tests $VER"
[ -f "$WHL" ] || die "no wheel at $WHL"
ensure_toolchain

PYDIR="$(embed_dir "$VER")"
LIBS="$(test_libs "$VER")"
SITE="$BUILD/site-cp$V"
rm -rf "$SITE"; mkdir -p "$SITE"
"$PY" "$ROOT/tools/windows/install_wheel.py" "$WHL" "$SITE" "$VER"
TESTS="${IOCPX_TESTS_DIR:-$ROOT/tests}"
# A ._pth file also drops the running script's folder from sys.path, which a regular
# install has: the examples (run as scripts by tests/test_examples.py, importing their
# sibling modules) get their folder listed instead.
EXAMPLES="$(dirname "$TESTS")/examples"
# Wine 8 lacks propsys.VariantToString, which CPython 3.12+ reaches through _wmi whenever
# platform.system()/uname() runs (hypothesis calls it at import): the process crashes.
# A sitecustomize in a folder of its own makes _wmi unimportable in this test
# interpreter only, so platform takes its pre-3.12 path (sys.getwindowsversion()).
FIX="$BUILD/winefix"
mkdir -p "$FIX"
cat > "$FIX/sitecustomize.py" <<'PYEOF'
# Written by tools/windows/run-tests.sh for runs under Wine: see the comment there.
import sys
sys.modules.setdefault("_wmi", None)
PYEOF
{ printf 'python%s.zip\n.\n%s\n%s\n%s\n' "$V" "$(winpath "$SITE")" "$(winpath "$LIBS")" "$(winpath "$FIX")"
  [ -d "$EXAMPLES" ] && winpath "$EXAMPLES"
  echo "import site"; } > "$PYDIR/python$V._pth"

# winedbg.exe disabled: a crashing process ends at once instead of waiting in the debugger
export WINEPREFIX="$BUILD/wineprefix" WINEDEBUG=-all WINEDLLOVERRIDES="mscoree,mshtml=;winedbg.exe=d"
export PYTHONDONTWRITEBYTECODE=1 PYTHONUTF8=1
unset PYTHONPATH PYTHONHOME
if [ ! -d "$WINEPREFIX" ]; then
    log "creating the Wine prefix"
    timeout 300 wineboot -i >/dev/null 2>&1 || true
fi
WPY="$PYDIR/python.exe"
LOGS="$BUILD/logs"; mkdir -p "$LOGS"
rc_all=0

# ---- the command line from the wheel -------------------------------------------
step() {    # step NAME TIMEOUT cmd...: run a Windows command, log it, fail loudly
    local name="$1" tmo="$2"; shift 2
    set +e
    timeout -k 10 "$tmo" wine "$@" 2>&1 | tee "$LOGS/$name-cp$V.log"
    local rc=${PIPESTATUS[0]}
    set -e
    if [ "$rc" -ne 0 ]; then log "FAILED: $name (exit $rc)"; rc_all=1; fi
    return 0
}
step import 300 "$WPY" -c "import iocpx, sys; assert iocpx.__file__.startswith(r'$(winpath "$SITE")'), iocpx.__file__; print('iocpx', iocpx.__version__, 'from', iocpx.__file__, 'on', sys.platform, sys.version.split()[0])"
step info 120 "$WPY" -m iocpx info
step demo 300 "$WPY" -m iocpx demo

# ---- the suite -----------------------------------------------------------------
# Loopback connections of earlier runs sit in TIME_WAIT for 60 s; under Wine a
# client's implicit bind() counts them, so wait (bounded) for most to go.
for _ in $(seq 1 90); do
    tw=$(ss -Htan state time-wait 2>/dev/null | wc -l || echo 0)
    [ "$tw" -lt 3000 ] && break
    sleep 1
done
# The TLS tests' certificates: trustme needs cryptography, whose compiled module does not load
# under Wine, so they are made here on the Linux side (tests/tls_pki.py) and named in
# IOCPX_TEST_PKI (Wine passes the environment on). Without them the TLS tests would skip, so
# that is an error here: the iocp backend's TLS is tested under Wine or the run fails.
PKI="$BUILD/pki-cp$V"
rm -rf "$PKI"
"$PY" "$TESTS/tls_pki.py" "$PKI" >/dev/null 2>"$LOGS/pki-cp$V.log" \
    || die "no certificates for the TLS tests ($PY: $(tail -1 "$LOGS/pki-cp$V.log")); pip install trustme"
export IOCPX_TEST_PKI="$(winpath "$PKI")"
# CPython's asyncio conformance tests (tests/test_asyncio_conformance.py) come from the
# interpreter's `test` package, which the embeddable CPython does not ship: for the versions
# in IOCPX_WIN_CONFORMANCE (default 3.11; "" for none) the matching files are copied from
# this machine's CPython of that version (pyenv's) and named in IOCPX_CPYTHON_TESTS. For
# the other versions the module skips, saying the package is not importable.
CONFORMANCE=" ${IOCPX_WIN_CONFORMANCE-3.11} "
if [[ "$CONFORMANCE" == *" $VER "* ]]; then
    LIBTEST=""
    for d in "${PYENV_ROOT:-$HOME/.pyenv}"/versions/"$VER".*/lib/python"$VER"/test; do
        [ -d "$d/test_asyncio" ] && LIBTEST="$d"
    done
    [ -n "$LIBTEST" ] || die "IOCPX_WIN_CONFORMANCE names $VER, but no CPython $VER with its test package is here"
    CPT="$BUILD/cpython-tests-cp$V"
    rm -rf "$CPT"; mkdir -p "$CPT/test"
    cp "$LIBTEST/__init__.py" "$CPT/test/"
    for part in support test_asyncio certdata; do
        [ -e "$LIBTEST/$part" ] && cp -r "$LIBTEST/$part" "$CPT/test/"
    done
    export IOCPX_CPYTHON_TESTS="$(winpath "$CPT")"
    log "asyncio conformance: CPython's tests from $LIBTEST"
fi
args=("$@")
[ ${#args[@]} -eq 0 ] && args=("$(winpath "$TESTS")")
cd "$(dirname "$TESTS")"
set +e
timeout -k 30 "${IOCPX_WIN_TIMEOUT:-1200}" wine "$WPY" -m pytest -p no:cacheprovider \
    -o addopts="" -ra --timeout=300 "${args[@]}" 2>&1 | tee "$LOGS/pytest-cp$V.log"
rc=${PIPESTATUS[0]}
set -e
# Wine is an emulator under load here: a test that failed is run once more on
# its own, and the run passes only if every such test passes then. Each one is
# named below as flaky, so it is never hidden.
if [ "$rc" -eq 1 ] && [ -z "${IOCPX_WIN_NO_RERUN:-}" ]; then
    mapfile -t again < <(tr -d '\r' < "$LOGS/pytest-cp$V.log" \
                         | sed -n 's/^\(FAILED\|ERROR\) \([^ ]*\).*/\2/p' | sed 's/\\/\//g' | sort -u)
    if [ ${#again[@]} -gt 0 ]; then
        log "rerunning ${#again[@]} failed test(s) once: ${again[*]}"
        # node ids go through a file (pytest's @file): Wine's command line drops "[...]"
        printf '%s\n' "${again[@]}" > "$BUILD/rerun-cp$V.txt"
        set +e
        timeout -k 30 600 wine "$WPY" -m pytest -p no:cacheprovider -o addopts="" -ra \
            --timeout=300 "@$(winpath "$BUILD/rerun-cp$V.txt")" 2>&1 | tee "$LOGS/pytest-rerun-cp$V.log"
        rc=${PIPESTATUS[0]}
        set -e
        [ "$rc" -eq 0 ] && log "FLAKY under Wine (failed, then passed alone): ${again[*]}"
    fi
fi
wineserver -k 2>/dev/null || true
[ "$rc" -eq 0 ] || { log "FAILED: pytest exited $rc"; rc_all=1; }
summary="$(tr -d '\r' < "$LOGS/pytest-cp$V.log" | grep -E '^=+ .*(passed|failed|error).* =+$' | tail -1 \
           | tr -d '=' | sed 's/^ *//;s/ *$//' || true)"
log "CPython $VER: ${summary:-no pytest summary}; $([ "$rc_all" -eq 0 ] && echo OK || echo FAILED)"
exit "$rc_all"
