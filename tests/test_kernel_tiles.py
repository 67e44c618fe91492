"""The register-tiled matmul (kernels/cpu/tiles.py) against numpy, directly.

Shapes cover whole tiles, rows and columns that overhang them, the smallest sizes,
both dtypes, and NaN/inf in either operand; the kernels call the same callback
(tests/test_kernel_keras.py compares whole compiled RNNs with Keras).
"""

import re

import numpy as np
import pytest
from numba import njit

from rshop_ir.kernels.cpu import codegen
from rshop_ir.kernels.cpu.slp import slp_vectorizer
from rshop_ir.kernels.cpu.tiles import call_tiles, tile_addresses, tile_source

ROWS, COLUMNS = codegen.TILE_ROWS, codegen.TILE_COLUMNS


@njit
def _tiled_product(address, a, packed, out, a_tiles, overhang):
    call_tiles(address, a, packed, out, a_tiles, overhang)


def _multiply(a: np.ndarray, weight: np.ndarray) -> np.ndarray:
    dtype = a.dtype
    rows, contraction = a.shape
    columns = weight.shape[1]
    blocks = -(-columns // COLUMNS)
    padded = np.zeros((contraction, blocks * COLUMNS), dtype)
    padded[:, :columns] = weight
    packed = np.ascontiguousarray(padded.reshape(contraction, blocks, COLUMNS)
                                  .transpose(1, 0, 2))
    out = np.full((rows, columns), np.nan, dtype)
    a_tiles = np.full((-(-rows // ROWS), contraction, ROWS), np.nan, dtype)
    overhang = np.full((ROWS, COLUMNS), np.nan, dtype)
    address = tile_addresses((dtype.name,))[codegen.TILE_DTYPES.index(dtype.name)]
    _tiled_product(address, a, packed, out, a_tiles, overhang)
    return out


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("rows, contraction, columns", [
    (4, 16, 16), (8, 64, 256), (2, 16, 16), (3, 17, 33), (5, 40, 47), (13, 23, 70),
    (1, 1, 1), (6, 300, 18)])
def test_tiles_match_numpy(rows, contraction, columns, dtype):
    rng = np.random.default_rng(rows * 1000 + contraction + columns)
    a = rng.standard_normal((rows, contraction)).astype(dtype)
    weight = rng.standard_normal((contraction, columns)).astype(dtype)
    expected = a.astype(np.float64) @ weight.astype(np.float64)
    tolerance = 1e-4 if dtype == "float32" else 1e-11
    np.testing.assert_allclose(_multiply(a, weight), expected, atol=tolerance, rtol=0)


def test_tiles_propagate_nan_and_inf_like_numpy():
    a = np.ones((6, 20), np.float32)
    weight = np.ones((20, 35), np.float32)
    a[1, 3] = np.nan                  # row 1 all NaN
    a[4, 0] = np.inf                  # row 4 +inf ...
    weight[0, 7] = -np.inf            # ... except column 7: inf * -inf = -inf
    weight[5, 30] = np.inf            # column 30: +inf in every other row
    with np.errstate(invalid="ignore"):
        expected = a @ weight
    got = _multiply(a, weight)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(expected))
    np.testing.assert_array_equal(got[np.isinf(expected)], expected[np.isinf(expected)])
    finite = np.isfinite(expected)
    np.testing.assert_allclose(got[finite], expected[finite], atol=1e-5, rtol=0)


def test_tile_callback_is_vectorised():
    """Without the SLP vectoriser the tile runs ~15x slower (7 vs 106-109 GFLOP/s
    here): its machine code must multiply packed vectors, not one float at a time."""
    from numba import cfunc, types

    scope = {"np": np, "carray": __import__("numba").carray, "cfunc": cfunc,
             "types": types}
    source = tile_source("float32").replace("cache=True, ", "")
    with slp_vectorizer():
        exec(compile(source, "<tile>", "exec"), scope)
    assembly = scope["multiply"]._library.get_asm_str()
    packed = re.findall(r"\b(?:vfmadd\d{3}ps|v?mulps)\b", assembly)
    assert len(packed) >= 4, "the tile's products are not packed into vector registers"
