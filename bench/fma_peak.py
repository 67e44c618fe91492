"""This machine's peak float32 multiply-add rate: the ceiling no matmul kernel passes.

    python -m bench.fma_peak [--threads N]

`fma_peak_rate(threads)` runs, on each of `threads` threads, CHAINS (256 with
AVX-512, 96 with AVX2 only) independent chains `a = a * x + y` of float32 values: enough chains that every
vector FMA unit of a core has work each cycle while each chain waits out its
latency, and no memory traffic. It reports the best of a few runs in GFLOP/s (two
FLOPs per multiply-add). A GEMM or an LSTM step's matmuls do at most this many FLOPs a
second; bench.cpu_kernels prints how close the kernel at S4 comes to it.

Measured on the 2-core Zen 4 VM (AVX-512 executed as two 256-bit halves): 117 GFLOP/s
on one thread, as a C loop of twelve `_mm512_fmadd_ps` chains (116; ad-hoc, gcc -O2
-march=native).
"""

import argparse
import os
import threading
import time

import numpy as np
from numba import njit

from rshop_ir.kernels.cpu.packed_product import _host_has_avx512
from rshop_ir.kernels.cpu.vector_width import wide_vectors

# float32 lanes per thread: 16 vectors of 512 bits with AVX-512's 32 registers; 12 of
# 256 bits with AVX2's 16 (256 lanes there spill to memory: 60 GFLOP/s on 2 threads of
# a Zen 3 VM, below the packed product's 87 at S4; 96 lanes: see BENCHMARKS.md run 32)
CHAINS = 256 if _host_has_avx512() else 96
ITERATIONS = 2_000_000
RUNS = 5


@njit(fastmath={"contract"}, nogil=True)
def _chains(iterations, out):
    """CHAINS multiply-add chains of `iterations` steps each, written to `out`
    (CHAINS,); one thread's work (the GIL is released)."""
    wide_vectors()
    values = np.empty(CHAINS, np.float32)
    for lane in range(CHAINS):
        values[lane] = np.float32(lane)
    scale, shift = np.float32(0.9999999), np.float32(1e-7)
    for _ in range(iterations):
        for lane in range(CHAINS):
            values[lane] = values[lane] * scale + shift
    for lane in range(CHAINS):
        out[lane] = values[lane]


def fma_peak_rate(threads: int = 1, iterations: int = ITERATIONS, runs: int = RUNS) -> float:
    """The best float32 multiply-add rate of `runs` runs on `threads` threads, GFLOP/s.

    The threads are Python threads, each running `_chains` without the GIL. (A Numba
    parallel loop over the threads did not scale on the 2-core Zen 3 VM: 94 GFLOP/s
    on two threads as on one, against 157-162 here; BENCHMARKS run 33.)"""
    cores = os.cpu_count() or 1
    if not 1 <= threads <= cores:
        raise ValueError(f"threads must be between 1 and {cores} (this machine's "
                         f"cores). Received: threads={threads}")
    out = np.empty((threads, CHAINS), np.float32)
    _chains(10, out[0])    # compile
    best = 0.0
    for _ in range(runs):
        workers = [threading.Thread(target=_chains, args=(iterations, out[thread]))
                   for thread in range(threads)]
        start = time.perf_counter()
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        seconds = time.perf_counter() - start
        best = max(best, 2.0 * threads * iterations * CHAINS / seconds / 1e9)
    return best


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args(argv)
    for threads in sorted({1, args.threads}):
        print(f"float32 FMA peak on {threads} thread(s): {fma_peak_rate(threads):.1f} GFLOP/s")


if __name__ == "__main__":
    main()
