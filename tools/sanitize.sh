#!/usr/bin/env bash
# Runs the test suite against an AddressSanitizer build of iocpx.
# Needs: gcc with libasan (Debian's gcc has it), the test requirements.
# Usage: tools/sanitize.sh [pytest args...]      e.g. tools/sanitize.sh -x tests/test_echo.py
# The extension is built -O0 -g -fsanitize=address in a scratch copy of the
# tree; CPython itself is not instrumented, so libasan is preloaded and Python's
# allocator is switched to malloc (PYTHONMALLOC=malloc) so that Python objects
# are checked too. Leak detection is off: CPython keeps memory until exit by design.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
work="${IOCPX_ASAN_DIR:-/tmp/iocpx-asan}"
rm -rf "$work"
mkdir -p "$work"
cp -r "$here/setup.py" "$here/pyproject.toml" "$here/src" "$here/tests" "$work/"
cd "$work"
IOCPX_DEBUG_BUILD=1 CFLAGS="-fsanitize=address -fno-omit-frame-pointer" LDFLAGS="-fsanitize=address" \
    python setup.py build_ext --inplace > build.log 2>&1 || { tail -30 build.log; exit 1; }
libasan="$(gcc -print-file-name=libasan.so)"
echo "ASan build in $work; preloading $libasan"
set +e
LD_PRELOAD="$libasan" ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:halt_on_error=1" \
    PYTHONMALLOC=malloc PYTHONPATH="$work/src" \
    python -m pytest -q -p no:cacheprovider "${@:-tests}"
rc=$?
set -e
if [ $rc -eq 0 ]; then echo "sanitize: clean (AddressSanitizer reported nothing)"; else echo "sanitize: FAILED (rc=$rc)"; fi
exit $rc
