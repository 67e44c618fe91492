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

A team is formed only when asked for: `compiled(x, team_size=2)`. A barrier per step
is cheap between threads that keep their cores, but waits a scheduler slice for a
member whose core was taken, and on the 2-vCPU development machine that happened
often: at S2 (batch 1, H=256) a team of 2 took 0.7x to 1.7x the time of one thread
from run to run (alone in a process; 2-3x slower next to ONNX Runtime's spinning
pool). So it is an option for machines with dedicated cores, measured there first.
"""

from __future__ import annotations

import numpy as np

from rshop_ir.kernels.cpu.row_split import worker_pool
from rshop_ir.kernels.cpu.team_sync import ABORT, COUNTER_SIZE

MAX_TEAM = 16                # members at most

def team_size_for(kernel, requested=None) -> int:
    """How many threads run a call: `requested` (None: 1), at most `MAX_TEAM` and the
    width of the kernel's widest split matmul; 1 when the kernel splits none."""
    if not kernel.team_columns or requested is None:
        return 1
    if int(requested) < 1:
        raise ValueError(f"team_size must be >= 1. Received: team_size={requested}")
    return min(int(requested), MAX_TEAM, kernel.team_columns)


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
