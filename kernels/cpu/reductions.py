"""Sums along a row for the generated Numba CPU kernels: layer norm, reduce_sum/mean,
the softmax denominator, a matmul by a one-column weight.

Written inline as `total += rows[r, k]`, a float sum is one chain of dependent adds
(IEEE order), which LLVM must not reorder: a mean and a variance over 256 float32
took ~405 ns. These functions allow reassociation (`fastmath={"reassoc"}`, on their
own instructions only), so LLVM splits the sum over vector lanes: ~40 ns for the
same pair, measured on one core of the development machine. The result differs from
the sequential sum by rounding only (the reference's own reductions are not
sequential either); NaN and inf propagate as in any sum.

`zero` is the accumulator's start in the rows' dtype (np.float32(0.0) or
np.float64(0.0)), so a float32 sum stays float32.
"""

from __future__ import annotations

from numba import njit

_JIT = dict(cache=True, error_model="numpy", nogil=True, fastmath={"reassoc", "contract"})


@njit(**_JIT)
def row_sum(rows, row, zero):
    """sum(rows[row, :])"""
    total = zero
    for k in range(rows.shape[1]):
        total += rows[row, k]
    return total


@njit(**_JIT)
def row_squared_deviations(rows, row, center, zero):
    """sum((rows[row, :] - center) ** 2)"""
    total = zero
    for k in range(rows.shape[1]):
        deviation = rows[row, k] - center
        total += deviation * deviation
    return total


@njit(**_JIT)
def row_dot(rows, row, vector, zero):
    """sum(rows[row, :] * vector)"""
    total = zero
    for k in range(rows.shape[1]):
        total += rows[row, k] * vector[k]
    return total
