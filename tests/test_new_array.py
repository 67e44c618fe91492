"""kernels/cpu/new_array.py: the kernels' allocations, against NumPy's constructors."""

import numpy as np
import pytest
from numba import njit

from rshop_ir.kernels.cpu.new_array import full_array, new_array


@njit
def _allocate(rows, columns):
    matrix = new_array((rows, columns), np.float32)
    vector = new_array(rows, np.int64)
    like = new_array((rows, columns, 2), matrix.dtype)
    for row in range(rows):
        vector[row] = row
        for column in range(columns):
            matrix[row, column] = row * columns + column
    return matrix, vector, like


@njit
def _fill(rows, columns):
    return (full_array((rows, columns, 2), np.float64(1.5)),
            full_array((), np.float32(-2.0)),
            full_array(rows, True),
            full_array((rows, columns), np.int32(7)))


@pytest.mark.parametrize("rows, columns", [(3, 5), (0, 4), (1, 1)])
def test_new_arrays_are_numpys_empty_arrays(rows, columns):
    matrix, vector, like = _allocate(rows, columns)
    assert (matrix.shape, matrix.dtype) == ((rows, columns), np.float32)
    assert (vector.shape, vector.dtype) == ((rows,), np.int64)
    assert (like.shape, like.dtype) == ((rows, columns, 2), np.float32)
    assert all(array.flags.c_contiguous for array in (matrix, vector, like))
    np.testing.assert_array_equal(matrix, np.arange(rows * columns).reshape(rows, columns))
    np.testing.assert_array_equal(vector, np.arange(rows))


@pytest.mark.parametrize("rows, columns", [(3, 5), (0, 4)])
def test_full_arrays_are_numpys_full_arrays(rows, columns):
    floats, scalar, flags, integers = _fill(rows, columns)
    for got, want in ((floats, np.full((rows, columns, 2), 1.5)),
                      (scalar, np.full((), -2.0, np.float32)),
                      (flags, np.full(rows, True)),
                      (integers, np.full((rows, columns), 7, np.int32))):
        assert got.dtype == want.dtype and got.shape == want.shape
        np.testing.assert_array_equal(got, want)


def test_a_size_beyond_memory_raises_like_numpy():
    with pytest.raises(ValueError, match="array is too big"):
        _allocate(2 ** 62, 2 ** 62)
