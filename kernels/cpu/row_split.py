"""Running one kernel call as several batch slices at once, one per core.

The generated kernels release the GIL (`nogil=True`) and a program whose batch rows
are independent (kernels/batch_rows.py) gives the same rows whether it runs the whole
batch or a slice. So a big call is cut into one slice of rows per core; the calling
thread runs the first slice and a small thread pool the others, each slice with
single-threaded BLAS and its own packed copy of the recurrent weights, and the
outputs are joined along axis 0.

Why not always threaded BLAS: OpenBLAS's threads wake, split and join once per step
(per recurrent GEMM); slices synchronise once per call, and a slice whose core is taken
by another process only delays the join instead of stalling every step. Each slice
streams all the weights every step, which the register tiles make cheap enough from
one tile of rows per slice on.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

# A call is split only when its matmuls amount to this many FLOPs (about a millisecond
# of single-threaded work): below it, handing a slice to a thread costs too much.
MIN_SPLIT_FLOPS = 3e7
# ... and into slices of at least one whole register tile of rows (kernels/cpu/tiles.py:
# from 2 rows on, each slice's recurrent matmuls run as tiles over a weight the slice
# packs once). Measured on 2 cores, LSTM T=100, one slice vs slices of >= 4 rows:
# H=256 batch 8 6.34 vs 4.16 ms, batch 32 25.1 vs 15.0 ms; batch 4 (2 slices of 2
# rows, half-empty tiles) 3.26 vs 3.31 ms. With OpenBLAS's sgemm instead of tiles
# (earlier), slices only paid from 128 rows on.
MIN_ROWS_PER_SLICE = 4

_POOL = None
_POOL_LOCK = threading.Lock()


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def slice_count(batch: int, flops: float) -> int:
    """How many slices a call of `batch` rows and `flops` FLOPs runs as (1: no split)."""
    if batch < 2 * MIN_ROWS_PER_SLICE or flops < MIN_SPLIT_FLOPS:
        return 1                 # decided before the affinity system call
    cores = usable_cores()
    return 1 if cores < 2 else min(cores, batch // MIN_ROWS_PER_SLICE)


def worker_pool(workers: int) -> ThreadPoolExecutor:
    global _POOL
    with _POOL_LOCK:
        if _POOL is None or _POOL._max_workers < workers:
            _POOL = ThreadPoolExecutor(max_workers=workers,
                                       thread_name_prefix="rshop_ir-rows")
        return _POOL


def row_bounds(batch: int, slices: int) -> list:
    """`slices` contiguous (start, stop) row ranges covering `batch` rows, sizes within 1."""
    edges = np.linspace(0, batch, slices + 1).round().astype(int)
    return [(int(start), int(stop)) for start, stop in zip(edges[:-1], edges[1:])]


def run_in_slices(run_slice, batch: int, slices: int, batched_outputs) -> list:
    """`run_slice(start, stop)` -> list of outputs, run for each slice at once; outputs
    whose flag in `batched_outputs` is set are joined along axis 0, the others (no
    batch rows: equal in every slice) are taken from the slice that ended first."""
    bounds = row_bounds(batch, slices)
    joined = _Joined(batch, batched_outputs)

    def run_and_place(start, stop):
        joined.place(start, stop, run_slice(start, stop))
    pool = worker_pool(slices - 1)
    futures = [pool.submit(run_and_place, start, stop) for start, stop in bounds[1:]]
    try:
        run_and_place(*bounds[0])
    finally:
        # Wait for every slice even when one failed: none may outlive the call.
        failures = [future.exception() for future in futures]
    for failure in failures:
        if failure is not None:
            raise failure
    return joined.arrays


class _Joined:
    """The outputs of a call's slices joined: each slice copies its rows in on its own
    thread as soon as it ends, so the copies run on all cores, beside the slices still
    computing, instead of one `np.concatenate` after the last (26 MB for the LSTM at
    S4: ~2.2 ms on one core of the 2-core VM, ad-hoc, BENCHMARKS.md run 30)."""

    def __init__(self, batch: int, batched_outputs):
        self.batch, self.batched = batch, list(batched_outputs)
        self.arrays = None
        self._lock = threading.Lock()

    def place(self, start: int, stop: int, outputs) -> None:
        with self._lock:
            if self.arrays is None:    # the first slice to end allocates the outputs
                self.arrays = [np.empty((self.batch, *output.shape[1:]), output.dtype)
                               if batched else output
                               for output, batched in zip(outputs, self.batched)]
        for array, output, batched in zip(self.arrays, outputs, self.batched):
            if batched:
                array[start:stop] = output
