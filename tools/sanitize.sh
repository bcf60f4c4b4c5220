#!/usr/bin/env bash
# Runs tests against a sanitizer build of iocpx.
# Needs: gcc with libasan/libubsan/libtsan (Debian's gcc has them), the test requirements.
# Usage: tools/sanitize.sh [--asan | --tsan] [--faults] [--] [pytest args...]
#   --asan (the default)  AddressSanitizer + UndefinedBehaviorSanitizer; stops at the first report
#   --tsan                ThreadSanitizer; every report is logged, counted, and fails the run
#   --faults              also compile in the failure points (IOCPX_FAULTS=1, docs/robustness.md)
#   e.g. tools/sanitize.sh --tsan -- tests/test_echo.py -k io_uring
# The extension is built -O0 -g with the sanitizer in a scratch copy of the tree
# (/tmp/iocpx-asan or /tmp/iocpx-tsan; IOCPX_SANITIZE_DIR overrides;
# IOCPX_SANITIZE_REUSE=1 reuses that build and only runs the tests); CPython
# itself is not instrumented, so the runtime is preloaded and Python's allocator
# is switched to malloc (PYTHONMALLOC=malloc) so that Python objects are checked
# too. ASan's leak detection is off: CPython keeps memory until exit by design.
# Under TSan the io_uring backend's kernel-boundary annotations (IOCPX_TSAN_* in
# src/iocpx/_sys.h) are on; tools/tsan.supp silences CPython internals only.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
mode=asan
faults=0
while [ $# -gt 0 ]; do
    case "$1" in
        --asan) mode=asan; shift ;;
        --tsan) mode=tsan; shift ;;
        --faults) faults=1; shift ;;
        --) shift; break ;;
        *) break ;;
    esac
done
work="${IOCPX_SANITIZE_DIR:-${IOCPX_ASAN_DIR:-/tmp/iocpx-$mode}}"
if [ "$mode" = tsan ]; then
    cflags="-fsanitize=thread -fno-omit-frame-pointer"
    runtime="$(gcc -print-file-name=libtsan.so)"
else
    cflags="-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer"
    runtime="$(gcc -print-file-name=libasan.so):$(gcc -print-file-name=libubsan.so)"
fi
# the interpreter itself: a launcher script in front of it (pyenv's shims) crashes
# under a preloaded sanitizer runtime
py="$(python -c 'import sys; print(sys.executable)')"
if [ "${IOCPX_SANITIZE_REUSE:-0}" = 1 ] && [ -f "$work/build.log" ]; then
    cd "$work"          # the build of an earlier run (only the tests are run again)
else
    rm -rf "$work"
    mkdir -p "$work"
    # the tests read the examples, bench, docs and README too (the whole suite runs here)
    for f in setup.py pyproject.toml README.md CHANGELOG.md src tests examples bench docs tools; do
        [ -e "$here/$f" ] && cp -r "$here/$f" "$work/"
    done
    cd "$work"
    IOCPX_DEBUG_BUILD=1 IOCPX_FAULTS=$faults CFLAGS="$cflags" LDFLAGS="${cflags%% *}" \
        "$py" setup.py build_ext --inplace -j2 > build.log 2>&1 || { tail -30 build.log; exit 1; }
fi
echo "$mode build in $work; preloading $runtime"
set +e
if [ "$mode" = tsan ]; then
    # Reports go to the process's stderr, copied to tsan.log: pytest captures at the
    # sys level only (--capture=sys), so they are not swallowed with a passing
    # test's output, and no log file appears among the descriptors tests compare.
    LD_PRELOAD="$runtime" \
        TSAN_OPTIONS="suppressions=$here/tools/tsan.supp:halt_on_error=0:exitcode=0:report_signal_unsafe=0:history_size=4" \
        PYTHONMALLOC=malloc PYTHONPATH="$work/src" \
        "$py" -m pytest -q -p no:cacheprovider --capture=sys "${@:-tests}" 2> >(tee "$work/tsan.log" >&2)
    rc=$?
    sleep 1     # the tee
    reports=$(grep -c "^WARNING: ThreadSanitizer" "$work/tsan.log" || true)
    echo "sanitize: ThreadSanitizer reports: $reports (in $work/tsan.log)"
    [ "$reports" -eq 0 ] || { [ $rc -ne 0 ] || rc=66; }
else
    # Reports go to files (log_path: sanitizer.asan.PID, sanitizer.ubsan.PID), printed
    # below: pytest captures a test's stderr (fd 2) and a process that halts on a report
    # takes the capture with it (UBSan exits with status 1, and nothing would say why).
    rm -f "$work"/sanitizer.*
    LD_PRELOAD="$runtime" \
        ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:halt_on_error=1:log_path=$work/sanitizer.asan" \
        UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:log_path=$work/sanitizer.ubsan" \
        PYTHONMALLOC=malloc PYTHONPATH="$work/src" \
        "$py" -m pytest -q -p no:cacheprovider "${@:-tests}"
    rc=$?
    if compgen -G "$work/sanitizer.*" > /dev/null; then
        for f in "$work"/sanitizer.*; do echo "=== $f"; cat "$f"; done
        [ $rc -ne 0 ] || rc=66
    fi
fi
set -e
if [ $rc -eq 0 ]; then echo "sanitize: clean ($mode reported nothing)"; else echo "sanitize: FAILED (rc=$rc)"; fi
exit $rc
