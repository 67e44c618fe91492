"""The packed product (kernels/cpu/packed_product.py).

Directly against numpy (float64 products): shapes with whole and overhanging column
blocks, contractions that are and are not a multiple of the sum chains, row counts
that take every tile shape (8, 4 and 1 rows) and their mixes, buffers starting off
the alignment boundary, both dtypes, NaN/inf. Then inside compiled kernels: calls of
enough rows x steps take the packed product (seen in the source, and the numbers
match the interpreter), fewer keep `np.dot`, and a weight changed after compile is
packed again.
"""

import numpy as np
import pytest
from numba import njit

import rshop_ir
from rshop_ir import examples
from rshop_ir.bound import BoundProgram
from rshop_ir.interpret import interpret
from rshop_ir.kernels.cpu.packed_product import (ALIGNMENT, BLOCK_COLUMNS,
                                                 PACK_MIN_ROW_STEPS, TILE_SHAPES,
                                                 pack_row_weight, pack_weight,
                                                 packed_pair_product, packed_product,
                                                 row_buffer_size)


@njit
def _product(a, buffer, start, out):
    packed_product(a, buffer, start, out)


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
    (1, 3, 33), (3, 17, 70), (2, 64, 32), (4, 16, 32), (5, 33, 70), (8, 64, 48),
    (13, 17, 100), (21, 9, 33), (12, 256, 64), (32, 40, 160)])
@pytest.mark.parametrize("shift", [0, 1, 3])
def test_packed_product_matches_numpy(rows, contraction, columns, dtype, shift):
    rng = np.random.default_rng(rows * 1000 + contraction + columns)
    a = rng.standard_normal((rows, contraction)).astype(dtype)
    weight = rng.standard_normal((contraction, columns)).astype(dtype)
    expected = a.astype(np.float64) @ weight.astype(np.float64)
    tolerance = 1e-4 if dtype == "float32" else 1e-11
    np.testing.assert_allclose(_multiply(a, weight, shift), expected, atol=tolerance,
                               rtol=0)


def _packed(weight: np.ndarray) -> tuple:
    """(buffer, start) of `weight` packed."""
    buffer = np.empty(row_buffer_size(*weight.shape, weight.itemsize), weight.dtype)
    return buffer, pack_row_weight(weight, buffer)


@njit
def _pair_product(a, buffer, start, a_2, buffer_2, start_2, out):
    packed_pair_product(a, buffer, start, a_2, buffer_2, start_2, out)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("rows, contraction, contraction_2, columns", [
    (1, 5, 7, 37), (3, 17, 64, 70), (8, 64, 48, 32), (13, 1, 33, 100),
    (21, 9, 2, 33), (128, 40, 72, 160)])
def test_packed_pair_product_is_the_sum_of_two_products(rows, contraction,
                                                        contraction_2, columns, dtype):
    rng = np.random.default_rng(rows + contraction + 7 * contraction_2 + columns)
    a = rng.standard_normal((rows, contraction)).astype(dtype)
    a_2 = rng.standard_normal((rows, contraction_2)).astype(dtype)
    weight = rng.standard_normal((contraction, columns)).astype(dtype)
    weight_2 = rng.standard_normal((contraction_2, columns)).astype(dtype)
    expected = a.astype(np.float64) @ weight.astype(np.float64) \
        + a_2.astype(np.float64) @ weight_2.astype(np.float64)
    out = np.full((rows, columns), np.nan, dtype)
    _pair_product(a, *_packed(weight), a_2, *_packed(weight_2), out)
    tolerance = 1e-4 if dtype == "float32" else 1e-11
    np.testing.assert_allclose(out, expected, atol=tolerance, rtol=0)


def test_packed_layout_is_column_blocks_zero_padded():
    weight = np.arange(3 * 40, dtype=np.float32).reshape(3, 40)
    width = BLOCK_COLUMNS["float32"]
    buffer = np.empty(row_buffer_size(3, 40, 4), np.float32)
    start = pack_row_weight(weight, buffer)
    count = -(-40 // width)      # 2 blocks of 32 columns (AVX-512), 3 of 16 (AVX2)
    blocks = buffer[start:start + count * 3 * width].reshape(count, 3, width)
    for block in range(count - 1):
        np.testing.assert_array_equal(blocks[block],
                                      weight[:, block * width:(block + 1) * width])
    last = 40 - (count - 1) * width
    np.testing.assert_array_equal(blocks[-1, :, :last], weight[:, (count - 1) * width:])
    assert not blocks[-1, :, last:].any()


@pytest.mark.parametrize("rows", [1, 4, 8, 13])
def test_packed_product_propagates_nan_and_inf_like_numpy(rows):
    a = np.ones((rows, 20), np.float32)
    weight = np.ones((20, 35), np.float32)
    weight[2, 5] = np.nan
    weight[4, 34] = np.inf
    expected = a @ weight
    np.testing.assert_array_equal(_multiply(a, weight), expected)
    a[rows // 2, 7] = -np.inf
    with np.errstate(invalid="ignore"):
        expected = a @ weight
    np.testing.assert_array_equal(_multiply(a, weight), expected)


def _lstm(dtype: str, features: int = 6, units: int = 40):
    program = examples.lstm_program(features, units, dtype=dtype, return_sequences=True)
    bound = BoundProgram(program, examples.random_weights(program))
    return bound, rshop_ir.compile(bound)


def test_tile_shapes_cover_every_row_count():
    """Tiles of 8, 4 and 1 rows, biggest first: any row count is made of them."""
    assert [shape[0] for shape in TILE_SHAPES] == sorted(
        (shape[0] for shape in TILE_SHAPES), reverse=True)
    assert TILE_SHAPES[-1][0] == 1


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("batch, steps", [(1, 1), (1, PACK_MIN_ROW_STEPS - 1),
                                          (1, PACK_MIN_ROW_STEPS), (1, 37), (2, 3),
                                          (2, 4), (5, 9), (9, 2), (13, 5)])
def test_kernel_matches_interpreter(dtype, batch, steps):
    bound, compiled = _lstm(dtype)
    assert "packed_product(" in compiled.source
    # the recurrent weight comes packed by the runtime, for every batch and length
    assert ("packed", ("prologue", 1)) in compiled.kernel.weight_slots
    assert "row_weight" not in compiled.source
    x = np.random.default_rng(steps).standard_normal((batch, steps, 6)).astype(dtype)
    expected = interpret(bound, x)
    tolerance = 1e-4 if dtype == "float32" else 1e-10
    for got, want in zip(compiled(x, team_size=1), expected):
        np.testing.assert_allclose(got, want, atol=tolerance, rtol=0)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_pack_weight_lays_out_blocks_from_an_aligned_start(dtype):
    weight = np.random.default_rng(4).standard_normal((5, 37)).astype(dtype)
    buffer = pack_weight(weight)
    block = BLOCK_COLUMNS[dtype]
    assert buffer.size == row_buffer_size(5, 37, buffer.itemsize)
    start = ((64 - buffer.ctypes.data % 64) % 64) // buffer.itemsize
    assert (buffer.ctypes.data + start * buffer.itemsize) % 64 == 0
    for column in range(37):
        first = start + (column // block) * 5 * block + column % block
        np.testing.assert_array_equal(buffer[first:first + 5 * block:block],
                                      weight[:, column])
    last = 36 // block                     # the last block: its columns past 37 are 0
    tail = buffer[start + last * 5 * block:start + (last + 1) * 5 * block].reshape(5, block)
    assert not tail[:, 37 - last * block:].any()


def test_kernel_packs_changed_weights_again():
    bound, compiled = _lstm("float32")
    x = np.random.default_rng(1).standard_normal((1, 20, 6)).astype(np.float32)
    compiled(x)
    changed = {name: value * 0.5 for name, value in bound.weights.items()}
    compiled.set_weights(changed)
    expected = interpret(BoundProgram(bound.program, changed), x)
    for got, want in zip(compiled(x), expected):
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("batch, steps, chunk_steps", [(1, 1, None), (1, 70, None),
                                                       (3, 50, 7), (9, 23, None),
                                                       (2, 200, 33)])
def test_input_projection_runs_as_packed_panels(dtype, batch, steps, chunk_steps):
    """An input projection by a weight of 16+ input features runs as the packed
    product over the weight packed by the runtime, in panels of rows; chunks and
    panels that do not line up with the steps still give the interpreter's numbers."""
    bound, compiled = _lstm(dtype, features=20, units=24)
    assert "packed_product(staged_0[panel:panel_end]" in compiled.source
    assert ("packed", ("prologue", 0)) in compiled.kernel.weight_slots
    x = np.random.default_rng(steps).standard_normal((batch, steps, 20)).astype(dtype)
    expected = interpret(bound, x)
    tolerance = 1e-4 if dtype == "float32" else 1e-10
    for got, want in zip(compiled(x, chunk_steps=chunk_steps, team_size=1), expected):
        np.testing.assert_allclose(got, want, atol=tolerance, rtol=0)
