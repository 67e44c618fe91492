"""The one-row product over a packed weight (kernels/cpu/row_product.py).

Directly against numpy (float64 products): shapes with whole and overhanging column
blocks, contractions that are and are not a multiple of the sum chains, one and
several rows, buffers starting off the alignment boundary, both dtypes, NaN/inf.
Then inside compiled kernels: a one-row call of enough steps takes the packed product
(seen in the source, and the numbers match the interpreter), fewer steps keep
`np.dot`, and a weight changed after compile is packed again.
"""

import numpy as np
import pytest
from numba import njit

import rshop_ir
from rshop_ir import examples
from rshop_ir.bound import BoundProgram
from rshop_ir.interpret import interpret
from rshop_ir.kernels.cpu.row_product import (ALIGNMENT, ROW_BLOCK_COLUMNS,
                                              ROW_PACK_MIN_STEPS, pack_row_weight,
                                              row_buffer_size, row_product)


@njit
def _product(a, buffer, start, out):
    row_product(a, buffer, start, out)


def _multiply(a: np.ndarray, weight: np.ndarray, shift: int = 0) -> np.ndarray:
    """a @ weight through the packed product, the buffer starting `shift` elements
    past an allocation (so its aligned start moves)."""
    contraction, columns = weight.shape
    size = row_buffer_size(contraction, columns, weight.itemsize)
    buffer = np.full(size + shift, np.nan, weight.dtype)[shift:]
    start = pack_row_weight(weight, buffer)
    assert (buffer.ctypes.data + start * buffer.itemsize) % ALIGNMENT == 0
    out = np.full((a.shape[0], columns), np.nan, a.dtype)
    _product(a, buffer, start, out)
    return out


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("rows, contraction, columns", [
    (1, 64, 256), (1, 256, 1024), (1, 1, 1), (1, 5, 37), (1, 33, 300), (1, 7, 16),
    (1, 3, 33), (3, 17, 70), (2, 64, 32)])
@pytest.mark.parametrize("shift", [0, 1, 3])
def test_row_product_matches_numpy(rows, contraction, columns, dtype, shift):
    rng = np.random.default_rng(rows * 1000 + contraction + columns)
    a = rng.standard_normal((rows, contraction)).astype(dtype)
    weight = rng.standard_normal((contraction, columns)).astype(dtype)
    expected = a.astype(np.float64) @ weight.astype(np.float64)
    tolerance = 1e-4 if dtype == "float32" else 1e-11
    np.testing.assert_allclose(_multiply(a, weight, shift), expected, atol=tolerance,
                               rtol=0)


def test_packed_layout_is_column_blocks_zero_padded():
    weight = np.arange(3 * 40, dtype=np.float32).reshape(3, 40)
    width = ROW_BLOCK_COLUMNS["float32"]
    buffer = np.empty(row_buffer_size(3, 40, 4), np.float32)
    start = pack_row_weight(weight, buffer)
    blocks = buffer[start:start + 2 * 3 * width].reshape(2, 3, width)
    np.testing.assert_array_equal(blocks[0], weight[:, :width])
    np.testing.assert_array_equal(blocks[1, :, :40 - width], weight[:, width:])
    assert not blocks[1, :, 40 - width:].any()


def test_row_product_propagates_nan_and_inf_like_numpy():
    a = np.ones((1, 20), np.float32)
    weight = np.ones((20, 35), np.float32)
    weight[2, 5] = np.nan
    weight[4, 34] = np.inf
    expected = a @ weight
    np.testing.assert_array_equal(_multiply(a, weight), expected)
    a[0, 7] = -np.inf
    with np.errstate(invalid="ignore"):
        expected = a @ weight
    np.testing.assert_array_equal(_multiply(a, weight), expected)


def _lstm(dtype: str, features: int = 6, units: int = 40):
    program = examples.lstm_program(features, units, dtype=dtype, return_sequences=True)
    bound = BoundProgram(program, examples.random_weights(program))
    return bound, rshop_ir.compile(bound)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("steps", [1, ROW_PACK_MIN_STEPS - 1, ROW_PACK_MIN_STEPS, 37])
def test_one_row_kernel_matches_interpreter(dtype, steps):
    bound, compiled = _lstm(dtype)
    assert "row_product(" in compiled.source
    assert f"steps >= {ROW_PACK_MIN_STEPS}" in compiled.source
    x = np.random.default_rng(steps).standard_normal((1, steps, 6)).astype(dtype)
    expected = interpret(bound, x)
    tolerance = 1e-4 if dtype == "float32" else 1e-10
    for got, want in zip(compiled(x, team_size=1), expected):
        np.testing.assert_allclose(got, want, atol=tolerance, rtol=0)


def test_one_row_kernel_packs_changed_weights_again():
    bound, compiled = _lstm("float32")
    x = np.random.default_rng(1).standard_normal((1, 20, 6)).astype(np.float32)
    compiled(x)
    changed = {name: value * 0.5 for name, value in bound.weights.items()}
    compiled.set_weights(changed)
    expected = interpret(BoundProgram(bound.program, changed), x)
    for got, want in zip(compiled(x), expected):
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
