"""block_dot: one block's partial sum of a dot product, in an order fixed by the block
(kernels/cpu/block_dot.py), checked against numpy adding the same numbers in that
order, and its partials against the whole dot product."""

import numpy as np
import pytest
from numba import njit

from rshop_ir.kernels.cpu.block_dot import block_dot
from rshop_ir.kernels.cpu.packed_product import BLOCK_COLUMNS


@njit
def _partials(rows, vector, out):
    for row in range(rows.shape[0]):
        for block in range(out.shape[1]):
            out[row, block] = block_dot(rows, row, vector, block)


def _fixed_order(rows, vector, width):
    """The module docstring's order in numpy: the two vectors' lane-wise products
    added, then the lanes halved and added until one is left."""
    products = (rows * vector).reshape(rows.shape[0], -1, 2, width // 2)
    total = products[:, :, 0] + products[:, :, 1]
    while total.shape[-1] > 1:
        half = total.shape[-1] // 2
        total = total[..., :half] + total[..., half:]
    return total[..., 0]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_block_partials_follow_the_fixed_order(dtype):
    width = BLOCK_COLUMNS[dtype]
    rng = np.random.default_rng(7)
    rows = rng.standard_normal((5, 4 * width)).astype(dtype)
    vector = rng.standard_normal(4 * width).astype(dtype)
    got = np.empty((5, 4), dtype)
    _partials(rows, vector, got)
    np.testing.assert_array_equal(got, _fixed_order(rows, vector, width))
    np.testing.assert_allclose(got.sum(axis=1), rows @ vector,
                               rtol=1e-5 if dtype == "float32" else 1e-12)


def test_block_partials_propagate_nan_and_inf():
    width = BLOCK_COLUMNS["float32"]
    rows = np.ones((3, 2 * width), np.float32)
    vector = np.ones(2 * width, np.float32)
    rows[0, 3] = np.nan
    rows[1, width + 1] = np.inf
    rows[2, 0], rows[2, 1] = np.inf, -np.inf
    got = np.empty((3, 2), np.float32)
    _partials(rows, vector, got)
    assert np.isnan(got[0, 0]) and got[0, 1] == width
    assert got[1, 0] == width and got[1, 1] == np.inf
    assert np.isnan(got[2, 0]) and got[2, 1] == width
