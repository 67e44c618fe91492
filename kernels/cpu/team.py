"""Running one kernel call on a team of threads that split each step's matmul columns.

For a small batch, a step's recurrent matmul is a matrix-vector product bound by
streaming its weights from cache (LSTM H=256: 1 MB per step, ~13 us on one core of
the 2-core development machine), and row slices (row_split.py) cannot help: each slice
would stream all of it again. A team splits the weight's COLUMNS instead: member r
of P reads its 1/P of the column blocks of the packed weight (which then stay in its
own core's cache), computes its block of the product, meets the others at a barrier
(kernels/cpu/team_sync.py), and gathers the whole product; the rest of the step runs
on every member alike. The input projection of each chunk of steps is split too:
the members take its rows in units (whole 8-row tiles of the packed product, whole
panels for np.dot: codegen's `_team_projections`) from a shared count and compute
them into buffers all members read, so every sum is added in the order one thread
adds it (the outputs are equal bit for bit). The last member first asks whether the
weights changed (team_poll.py) and takes fewer units. The members are the calling
thread (rank 0, whose outputs are returned) and other threads running the same
`nogil` kernel, each pinned to a core of its own.

When: `compiled(x, team_size=N)` asks for N members (1: never a team). Without it,
`auto_team_size` forms a team of 2 for a one-row call of at least `AUTO_MIN_STEPS`
steps whose split weights (`team_weight_bytes`: all the split matmuls of a step
together) are too big to stream from one core's cache quickly
(`AUTO_MIN_WEIGHT_BYTES`), when 2+ cores are usable and other processes leave them
idle (core_load.py): a barrier per step waits a scheduler slice for a member whose
core was taken. The runtime then keeps that team only while its calls are faster than
one thread's (team_choice.py times both). Members compute their block with the packed product
(packed_product.py) over the weight the runtime packed once per weight version.

Members are started by the kernel module's native launcher where it may run
(team_launch.py), else by Python member threads (team_workers.py): a one-step call
of an LSTM H=256 took 58 / 135 us on a team started either way, 38 us on one thread
(BENCHMARKS.md run 14). Measured on the 2-core development machine with a native
launcher (`python -m bench.team_overhead --repeats 7 --steps 32,100 --hidden H`, LSTM
batch 1, team / one thread, us per call; an earlier state of the launcher, ~10 us a
call cheaper): H=64 (64 KB of split weight) 100 steps 182 / 137; H=96 266 / 242;
H=128 (256 KB) 402 / 394; H=192 (576 KB) 32 steps 226 / 244, 100 steps 632 / 751;
with the final one H=256 (1 MB) 100 steps 960 / 1,302. An MGU at S2 (two 256 KB
matrices, one after the other), the compiled Keras model at 100 steps: 0.59 / 0.66
ms (ad-hoc script, 200 calls each). Hence a team for long enough calls and split weights of AUTO_MIN_WEIGHT_BYTES or
more.
"""

from __future__ import annotations

import numpy as np

from rshop_ir.kernels.cpu.core_load import others_idle
from rshop_ir.kernels.cpu.packed_product import BLOCK_COLUMNS
from rshop_ir.kernels.cpu.pinning import member_cores, pinned
from rshop_ir.kernels.cpu import team_workers
from rshop_ir.kernels.cpu.team_launch import MASK_WORDS
from rshop_ir.kernels.cpu.row_split import usable_cores
from rshop_ir.kernels.cpu.team_sync import (ABORT, COUNTER_SIZE, FINISHED, MAX_MEMBERS,
                                            POLL_ADDRESS, STARTED, wait_for_count)

MAX_TEAM = MAX_MEMBERS       # members at most
AUTO_MAX_ROWS = 1            # the automatic team: one-row calls ...
AUTO_MIN_STEPS = 32          # ... of this many steps or more ...
AUTO_MIN_WEIGHT_BYTES = 512 * 2 ** 10   # ... splitting weights of this size or more


def auto_team_size(kernel, batch: int, steps: int) -> int:
    """Members of the team a call forms when it does not ask (see the module
    docstring); `kernel` is the plain kernel, whose `team_weight_bytes` tells what a
    team would split per step."""
    if not 1 <= batch <= AUTO_MAX_ROWS or steps < AUTO_MIN_STEPS \
            or kernel.team_weight_bytes < AUTO_MIN_WEIGHT_BYTES:
        return 1
    return 2 if usable_cores() >= 2 and others_idle() else 1


def team_size_for(kernel, requested=None) -> int:
    """How many threads run a call: `requested` (None: 1), at most `MAX_TEAM` and the
    width of the kernel's widest split matmul; 1 when the kernel splits none."""
    if not kernel.team_columns or requested is None:
        return 1
    if int(requested) < 1:
        raise ValueError(f"team_size must be >= 1. Received: team_size={requested}")
    return min(int(requested), MAX_TEAM, kernel.team_columns)


class TeamBuffers:
    """What a team of `members` threads running `kernel` keeps between calls (the
    caller holds one per team size and calling thread): the exchange buffer of the
    split matmuls' blocks and the bytes of the input projections' chunk buffers every
    member sees, grown when a call needs more (fresh megabytes per call would cost
    page faults, and freeing them a TLB shootdown on every core)."""

    def __init__(self, kernel, members: int):
        self.kernel, self.members = kernel, members
        dtype = np.dtype(kernel.team_dtype)
        # a member's share: whole column blocks of the packed weight (codegen's
        # team_width)
        block = BLOCK_COLUMNS[dtype.name]
        blocks = -(-kernel.team_columns // block)
        self._member_columns = -(-blocks // members) * block
        self._pool = np.empty((2 * members, 1), dtype)
        self._shared = np.empty(0, np.uint8)
        # each member's kept and wanted thread affinity (team_launch.pin_member)
        self.masks = np.zeros((members, 2, MASK_WORDS), np.uint64)

    def pool(self, batch: int) -> np.ndarray:
        width = batch * self._member_columns
        if self._pool.shape[1] < width:
            self._pool = np.empty((2 * self.members, width), self._pool.dtype)
        return self._pool

    def shared(self, batch: int, chunk: int) -> np.ndarray:
        kernel = self.kernel
        size = chunk * batch * kernel.team_shared_row_bytes \
            + 64 * (kernel.team_shared_buffers + 1) \
            + batch * kernel.team_run_row_bytes + 64 * kernel.team_run_buffers
        if self._shared.size < size:
            self._shared = np.empty(size, np.uint8)
        return self._shared


def new_counter(poll_address: int = 0) -> np.ndarray:
    """A team call's counters (team_sync's layout), with the weight question's callback
    (team_poll.py; 0: none)."""
    counter = np.zeros(COUNTER_SIZE, np.int64)
    counter[POLL_ADDRESS] = poll_address
    return counter


def launch_natively(launch, buffers: TeamBuffers, batch: int, chunk: int,
                    poll_address: int = 0):
    """Rank 0's results of `launch(members, counter, pool, shared, cores, masks)`, the
    kernel module's `launch_team` (team_launch.py: Numba's threads run the members),
    or None when a member failed, gave up waiting or found the weights changed (the
    caller runs the call again on one thread). `poll_address`: the
    team_poll.PollCallback the last member calls first (0: none)."""
    members = buffers.members
    counter = new_counter(poll_address)
    cores = np.array(member_cores(members) or [-1] * members, np.int64)
    results = launch(members, counter, buffers.pool(batch), buffers.shared(batch, chunk),
                     cores, buffers.masks)
    if counter[ABORT] or counter[FINISHED] != members or len(results) != 1:
        return None     # a member failed or gave up waiting
    return list(results[0])


def run_team(run_member, buffers: TeamBuffers, batch: int, chunk: int,
             poll_address: int = 0):
    """`run_member(rank, members, counter, pool, shared)` on `buffers.members` threads;
    rank 0's results (None when a member gave up waiting for another, or found the
    weights changed: `poll_address` as for `launch_natively`). `shared` holds the input
    projections' chunk buffers every member sees (`chunk` steps).

    A thread that blocks on a lock, the GIL included, wakes ~30-50 us late on the
    development machine's VM, so the caller never lets one wait for the GIL: it posts
    the other members their calls (team_workers.py), polls outside the GIL until their
    kernels started (`team_enter`), then runs its own; afterwards it polls until every
    kernel is done with the team's buffers (`team_leave`) and returns without waiting
    for the other threads to hand back their (unused) results. Only an abort, or polls
    that ran out, make it wait for them."""
    members = buffers.members
    counter = new_counter(poll_address)
    pool, shared = buffers.pool(batch), buffers.shared(batch, chunk)
    cores = member_cores(members) or [None] * members

    threads = team_workers.acquire(members - 1)

    def member(rank):
        try:
            if rank == 0:     # the caller's thread: its own affinity back afterwards
                with pinned(cores[0]):
                    return run_member(rank, members, counter, pool, shared)
            threads[rank - 1].stay_on(cores[rank])   # a member thread stays there
            return run_member(rank, members, counter, pool, shared)
        except BaseException:
            counter[ABORT] = 1     # the others stop waiting for this member
            raise

    futures = [thread.submit(member, rank) for rank, thread in enumerate(threads, 1)]
    failures = []
    try:
        wait_for_count(counter, STARTED, members - 1, team_workers.SPIN_POLLS,
                       team_workers.YIELD_POLLS)
        results = member(0)
    finally:
        finished = wait_for_count(counter, FINISHED, members, team_workers.SPIN_POLLS,
                                  team_workers.YIELD_POLLS)
        if not finished or counter[ABORT]:
            failures = [thread.wait(future) for thread, future in zip(threads, futures)]
        team_workers.release(threads)
    for failure in failures:
        if failure is not None:
            raise failure
    # An abort without a failure: a member gave up waiting (team_sync.team_wait) and
    # rank 0's results are incomplete.
    return None if counter[ABORT] else results
