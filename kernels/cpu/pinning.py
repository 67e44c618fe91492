"""Keeping the members of a team (team.py) on different cores for one call.

The members meet at a barrier every step, so two members the scheduler put on the
same core take turns: each barrier then waits for a context switch. Measured on the
2-core development machine (LSTM H=256, batch 1, 100 steps): calls ran in streaks of
~1.1 ms (members on both cores) and ~3.3 ms (on one core, 2x the one-thread time),
the scheduler moving a thread only after milliseconds. So each member runs pinned to
a core of its own: the caller to the core it is on, for the call only (its previous
affinity is restored afterwards); a member thread (team_workers.py) stays on its
core between calls (`pin_thread`), and is moved only when a call gives it another. The
native launcher (team_launch.py) pins only a member that is not on its core already.
Linux only (`os.sched_setaffinity`); elsewhere, or where the system refuses, nothing is
pinned.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from contextlib import contextmanager

_SCHED_GETCPU = None


def current_cpu():
    """The core the calling thread runs on (glibc's sched_getcpu), or None."""
    global _SCHED_GETCPU
    if _SCHED_GETCPU is None:
        _SCHED_GETCPU = False
        try:
            function = ctypes.CDLL(ctypes.util.find_library("c") or None).sched_getcpu
            function.restype, function.argtypes = ctypes.c_int, []
            _SCHED_GETCPU = function
        except (OSError, AttributeError):
            pass
    if not _SCHED_GETCPU:
        return None
    cpu = _SCHED_GETCPU()
    return cpu if cpu >= 0 else None


def member_cores(members: int):
    """One core per member, the caller's first, from the cores this thread may use;
    None when they are fewer than `members` or cannot be pinned here."""
    if not hasattr(os, "sched_setaffinity"):
        return None
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < members:
        return None
    here = current_cpu()
    start = cores.index(here) if here in cores else 0
    return [cores[(start + rank) % len(cores)] for rank in range(members)]


@contextmanager
def pinned(core):
    """The calling thread runs on `core` only (None: unchanged) inside the block."""
    previous = None
    if core is not None:
        try:
            previous = os.sched_getaffinity(0)
            os.sched_setaffinity(0, {core})
        except OSError:          # e.g. a container refusing it: run unpinned
            previous = None
    try:
        yield
    finally:
        if previous is not None:
            os.sched_setaffinity(0, previous)


def pin_thread(core) -> bool:
    """The calling thread runs on `core` only from now on (None: on the cores the
    process could use when this module was imported); False where the system
    refuses or cannot pin."""
    if _PROCESS_CORES is None:
        return False
    try:
        os.sched_setaffinity(0, {core} if core is not None else _PROCESS_CORES)
    except OSError:
        return False
    return True


_PROCESS_CORES = os.sched_getaffinity(0) if hasattr(os, "sched_setaffinity") else None
