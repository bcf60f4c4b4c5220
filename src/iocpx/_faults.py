"""The failure points of a debug build (docs/robustness.md): every allocation
and system call of the engine and the backends that can fail, by name.

Only in a build made with IOCPX_FAULTS=1 (or IOCPX_DEBUG_BUILD=1):
    IOCPX_FAULTS=1 python setup.py build_ext --inplace
Importing this module from any other build raises ImportError.

    points()                    the names, in table order
    arm(name, nth)              fail the nth call of that point from now on (once)
    arm_random(seed, rate, names=None)
                                fail calls of those points (all: None) at random,
                                rate the probability per call, the draws seeded
    counts(name)                (calls since armed, calls made to fail)
    reset()                     disarm everything, zero the counts
"""
from iocpx import _backend

if not _backend._faults_built():
    raise ImportError("iocpx was built without failure points: build it with IOCPX_FAULTS=1 "
                      "(IOCPX_FAULTS=1 python setup.py build_ext --inplace)")

_NAMES = _backend._faults_names()
_IDS = {n: i for i, n in enumerate(_NAMES)}


def points():
    return list(_NAMES)


def _id(name):
    try:
        return _IDS[name]
    except KeyError:
        raise ValueError(f"no failure point {name!r}; there are {_NAMES}") from None


def arm(name, nth):
    _backend._faults_arm(_id(name), int(nth))


def arm_random(seed, rate, names=None):
    for n in _NAMES if names is None else names:
        _backend._faults_random(_id(n), int(seed), int(rate * (1 << 32)))


def counts(name):
    return _backend._faults_counts(_id(name))


def reset():
    _backend._faults_reset()
