"""The iocpx benchmark suite: echo ping-pong, connection churn, idle connections and the stress
run, every peer side by side, in one dated report with its charts.

What it shows: bench/echo.py, churn.py, idle.py and stress.py in one run (their docstrings say
what each measures); the figure throughout is server CPU per operation from /proc/PID/stat, the
server pinned to CPU 0 and the load generator to CPU 1. The other scenarios (real_clients.py,
tls.py, udp_echo.py, timers.py, silent_clients.py) run on their own.

What it needs: Linux with io_uring (6.1+), 2 CPUs, cc, taskset, Python 3.11+, the kernel header
<linux/io_uring.h> (Debian: linux-libc-dev), `pip install uvloop matplotlib`, an open-files
limit of ~20,000 for the stress run, and the in-place iocpx build (`python setup.py build_ext
--inplace`, or pass --build).

How to run it, from the repo root:

    python bench/run_all.py --quick        # smoke check, ~4 minutes: fewer rows, 2 s each
    python bench/run_all.py                # the full run, ~20 min (64 B rows: median of 3)
    python bench/run_all.py --servers uvloop,uring-c,iocpx --stress-servers iocpx

It writes bench/results/YYYY-MM-DD.md with its .json and charts beside it, and rewrites
bench/results/LATEST.md (--quick writes YYYY-MM-DD-quick.* and leaves LATEST.md alone).
Exit status 1 if an iocpx row failed.
"""

import sys

import churn
import echo
import harness as H
import idle
import stress

SCENARIOS = (echo, churn, idle, stress)

if __name__ == "__main__":
    sys.exit(H.main(*SCENARIOS, name="", title="iocpx benchmark suite", doc=__doc__,
                    defaults={"repeat": 3}))
