"""Running one kernel call on a team of threads that split each step's matmul columns.

For a small batch, a step's recurrent matmul is a matrix-vector product bound by
streaming its weights from cache (LSTM H=256: 1 MB per step, ~12 us on one core of
the 2-core development machine), and row slices (row_split.py) cannot help: each slice
would stream all of it again. A team splits the weight's COLUMNS instead: member r
of P keeps its 1/P of the columns (which then fit its own core's cache), computes its
block of the product, meets the others at a barrier (kernels/cpu/team_sync.py), and
gathers the whole product; the rest of the step runs on every member alike. The
members are the calling thread (rank 0, whose outputs are returned) and pool threads
running the same `nogil` kernel.

A team is used only while the machine's other cores are idle (the count of runnable
tasks in /proc/loadavg): a barrier per step is cheap between running threads, but
waits a whole scheduler slice for a member whose core was taken.
"""

from __future__ import annotations

import time

import numpy as np

from rshop_ir.kernels.cpu.row_split import usable_cores, worker_pool
from rshop_ir.kernels.cpu.team_sync import ABORT, COUNTER_SIZE

MAX_TEAM = 4                 # members at most (barriers get dearer with more)
# Teams pay for one batch row (a matrix-vector product per step). Measured at 2-8 rows
# (LSTM H=256, T=100, interleaved medians): 1.9-2x SLOWER than one thread, as
# OpenBLAS's sgemm on a member's column block packs it again every step.
MAX_TEAM_BATCH = 1
MIN_TEAM_WEIGHT_BYTES = 512 * 1024   # smaller weights stay in one core's cache anyway
MAX_MEMBER_WEIGHT_BYTES = 1024 * 1024   # a member's share must fit its core's L2
MIN_TEAM_STEPS = 8

_SOLO = {}
_IDLE_CACHE = [0.0, False]


def _others_idle(members: int) -> bool:
    """True when at most this thread runs now, cached for 50 ms. Where /proc/loadavg
    is missing, the 1-minute load average decides."""
    now = time.monotonic()
    if now - _IDLE_CACHE[0] > 0.05:
        try:
            with open("/proc/loadavg") as handle:
                running = int(handle.read().split()[3].split("/")[0])
            idle = running + members - 1 <= usable_cores()
        except (OSError, ValueError, IndexError):
            import os

            try:
                idle = os.getloadavg()[0] + members - 1 <= usable_cores()
            except OSError:
                idle = False
        _IDLE_CACHE[:] = [now, idle]
    return _IDLE_CACHE[1]


def team_size_for(kernel, batch: int, steps: int, requested=None) -> int:
    """How many threads run a call (1: the calling thread alone)."""
    if not kernel.team_columns:
        return 1
    if requested is not None:
        return max(1, min(int(requested), MAX_TEAM, kernel.team_columns))
    members = min(usable_cores(), MAX_TEAM)
    if members < 2 or not 1 <= batch <= MAX_TEAM_BATCH or steps < MIN_TEAM_STEPS \
            or not MIN_TEAM_WEIGHT_BYTES <= kernel.team_weight_bytes \
            <= MAX_MEMBER_WEIGHT_BYTES * members:
        return 1
    return members if _others_idle(members) else 1


def solo_arguments(kernel) -> tuple:
    """The team arguments of a call run by the calling thread alone."""
    key = kernel.team_dtype
    if key not in _SOLO:
        _SOLO[key] = (0, 1, np.zeros(COUNTER_SIZE, np.int64),
                      np.zeros((2, 1), np.dtype(kernel.team_dtype)))
    return _SOLO[key]


def run_team(run_member, kernel, batch: int, members: int):
    """`run_member(*team_arguments)` on `members` threads; rank 0's results."""
    counter = np.zeros(COUNTER_SIZE, np.int64)
    width = -(-kernel.team_columns // members)
    pool = np.empty((2 * members, max(1, batch * width)), np.dtype(kernel.team_dtype))

    def member(rank):
        try:
            return run_member(rank, members, counter, pool)
        except BaseException:
            counter[ABORT] = 1     # the others stop waiting for this member
            raise

    futures = [worker_pool(members - 1).submit(member, rank)
               for rank in range(1, members)]
    try:
        results = member(0)
    finally:
        failures = [future.exception() for future in futures]
    for failure in failures:
        if failure is not None:
            raise failure
    return results
