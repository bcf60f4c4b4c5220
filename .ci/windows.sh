#!/usr/bin/env bash
# The Windows side alone, on Linux: cross-build the stable-ABI wheel from a fresh
# sdist of this checkout (tools/build-windows.sh), then install it into the
# official embeddable CPython of each version under Wine and run `python -m iocpx
# info`, `python -m iocpx demo` and the test suite there (tools/windows/run-tests.sh).
# tools/release.sh does the same as part of the release; this is the quick loop.
#
# Usage: bash .ci/windows.sh [pytest args...]        (default: the whole tests/ folder)
# Env:   IOCPX_WIN_PYTHONS  versions to test with (default "3.9 3.10 3.11 3.12 3.13")
#        IOCPX_WIN_TIMEOUT, IOCPX_WIN_NO_RERUN, IOCPX_WIN_BUILD: see tools/windows/run-tests.sh
set -euo pipefail
cd "$(dirname "$0")/.."
WHL="$(bash tools/build-windows.sh | tail -1)"
echo "windows.sh: built $WHL"
rc=0
declare -a RESULTS=()
for ver in ${IOCPX_WIN_PYTHONS:-3.9 3.10 3.11 3.12 3.13}; do
    t=$SECONDS
    if bash tools/windows/run-tests.sh "$WHL" "$ver" "$@"; then r=passed; else r=FAILED; rc=1; fi
    RESULTS+=("CPython $ver: $r ($((SECONDS - t)) s)")
done
echo "windows.sh: $(basename "$WHL") under Wine:"
printf '  %s\n' "${RESULTS[@]}"
exit "$rc"
