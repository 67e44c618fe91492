"""The packed product of the CPU kernels vs `np.dot`, one product at a time.

    python -m bench.tiles [--repeats N]

For each (rows, contraction, columns) and dtype, `out = a @ weight` through the
packed product (kernels/cpu/packed_product.py, the weight packed beforehand as the
runtime packs it once per weight version; in panels of PROJECTION_PANEL_ROWS rows, as
a kernel runs its input projection) and through `np.dot` inside an `@njit` function
(what the kernels call otherwise), both on ONE thread (OpenBLAS limited to 1), results
checked against each other, medians of interleaved rounds. Packing is not timed. The
shapes after the first eight are input projections: S2's (100 steps x 1 row), S3's
(100 x 32) and a chunk of S4's (14 steps x 128 rows of a row slice). The last two
bound what a kernel can reach on this core:
  * 1 x 256 x 512, the 512 KB of weights an S2 step of the MGU or RWA reads: a
    matrix-vector product streams its weight from the L2 cache, so its "weight GB/s"
    (the packed weight's bytes over the time) is the cache's rate;
  * 4096 x 64 x 32, one column block whose 8 KB of weights stay in L1: the register
    tile's own rate, bound by the fused multiply-adds.
"""

import argparse
import os
import platform
import time

import numpy as np


SHAPES = [(1, 64, 256), (1, 256, 1024), (2, 256, 1024), (4, 256, 1024), (8, 256, 1024),
          (32, 256, 1024), (128, 512, 2048), (33, 100, 300),
          (100, 128, 1024), (3200, 128, 1024), (1792, 256, 2048),
          (1, 256, 512), (4096, 64, 32)]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args(argv)
    from numba import njit

    from rshop_ir.kernels.cpu.blas_threads import blas_threads_for
    from rshop_ir.kernels.cpu.codegen import PROJECTION_PANEL_ROWS
    from rshop_ir.kernels.cpu.packed_product import (ALIGNMENT, BLOCK_COLUMNS, pack_weight,
                                                     packed_product)

    @njit(nogil=True)
    def blas(a, weight, out):
        np.dot(a, weight, out)

    @njit(nogil=True)
    def packed(a, buffer, start, out):
        for first in range(0, a.shape[0], PROJECTION_PANEL_ROWS):
            last = min(first + PROJECTION_PANEL_ROWS, a.shape[0])
            packed_product(a[first:last], buffer, start, out[first:last])

    def median_seconds(function, calls):
        samples = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            for _ in range(calls):
                function()
            samples.append((time.perf_counter() - start) / calls)
        return float(np.median(samples))

    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, one thread; "
          f"command: python -m bench.tiles --repeats {args.repeats}")
    print(f"{'dtype':8} {'rows x contraction x columns':30} {'np.dot GFLOP/s':>15} "
          f"{'packed GFLOP/s':>15} {'packed / np.dot':>16} {'weight GB/s':>12}")
    rng = np.random.default_rng(0)
    with blas_threads_for(0.0):     # OpenBLAS on one thread
        for dtype in BLOCK_COLUMNS:
            for rows, contraction, columns in SHAPES:
                a = rng.standard_normal((rows, contraction)).astype(dtype)
                weight = rng.standard_normal((contraction, columns)).astype(dtype)
                buffer = pack_weight(weight)
                start = (-buffer.ctypes.data % ALIGNMENT) // buffer.itemsize
                out_blas, out_packed = (np.empty((rows, columns), dtype) for _ in range(2))
                blas(a, weight, out_blas)
                packed(a, buffer, start, out_packed)
                np.testing.assert_allclose(out_packed, out_blas,
                                           atol=1e-3 if dtype == "float32" else 1e-10)
                flops = 2.0 * rows * contraction * columns
                calls = max(5, int(1e8 / flops))
                blas_rates, packed_rates = [], []
                for _ in range(3):   # interleaved rounds
                    blas_rates.append(flops / median_seconds(
                        lambda: blas(a, weight, out_blas), calls) / 1e9)
                    packed_rates.append(flops / median_seconds(
                        lambda: packed(a, buffer, start, out_packed), calls) / 1e9)
                blas_rate, packed_rate = np.median(blas_rates), np.median(packed_rates)
                # the packed weight read once per product, at the packed product's rate
                weight_rate = packed_rate * weight.nbytes / flops
                print(f"{dtype:8} {f'{rows} x {contraction} x {columns}':30} "
                      f"{blas_rate:15.1f} {packed_rate:15.1f} "
                      f"{packed_rate / blas_rate:15.2f}x {weight_rate:12.1f}")


if __name__ == "__main__":
    main()
