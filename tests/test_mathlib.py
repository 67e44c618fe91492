"""The float32 math of the CPU kernels (kernels/cpu/mathlib.py) against numpy in
float64: accuracy over the whole range, and numpy's answers for NaN, infinities and
the ends of the range. Each is run inside a compiled loop, as the kernels run them."""

import numpy as np
import pytest
from numba import njit

from rshop_ir.kernels.cpu import mathlib

SPECIALS = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-30, -1e-30, 88.7228, 88.72284,
                     89.0, -87.33, -87.34, -88.0, -104.0, 1e4, -1e4], np.float32)


def _compiled_loop(function):
    @njit(error_model="numpy")
    def apply(values, out):
        for index in range(values.size):
            out[index] = function(values[index])
    return apply


def _apply(function, values):
    out = np.empty_like(values)
    _compiled_loop(function)(values, out)
    return out


def test_exp_f32_is_within_a_float32_rounding_of_exp():
    values = np.linspace(-87.3, 88.7, 1_000_001, dtype=np.float32)
    got = _apply(mathlib.exp_f32, values).astype(np.float64)
    expected = np.exp(values.astype(np.float64))
    assert np.max(np.abs(got - expected) / expected) <= 1.5e-7


def test_exp_f32_follows_numpy_at_the_edges():
    got = _apply(mathlib.exp_f32, SPECIALS)
    with np.errstate(over="ignore", under="ignore"):
        expected = np.exp(SPECIALS)              # numpy's float32 exp
    np.testing.assert_array_equal(np.isnan(got), np.isnan(expected))
    finite = ~np.isnan(expected)
    # below -87.34 numpy gives subnormals (< 1.2e-38), the kernel 0
    np.testing.assert_allclose(got[finite], expected[finite], rtol=2e-7, atol=1.2e-38)
    assert got[1] == np.inf and got[2] == 0.0 and got[9] == np.inf and got[13] == 0.0
    assert np.isfinite(got[7]) and got[7] > 3.4e38     # just below the overflow


@pytest.mark.parametrize("name, reference, tolerance", [
    ("tanh_f32", np.tanh, 3.5e-7),
    ("sigmoid_f32", lambda x: 1.0 / (1.0 + np.exp(-x)), 2e-7)])
def test_tanh_and_sigmoid_f32_are_close_and_keep_nan(name, reference, tolerance):
    values = np.linspace(-20, 20, 400_001, dtype=np.float32)
    got = _apply(getattr(mathlib, name), values).astype(np.float64)
    assert np.max(np.abs(got - reference(values.astype(np.float64)))) <= tolerance
    edges = _apply(getattr(mathlib, name), np.array([np.nan, np.inf, -np.inf], np.float32))
    assert np.isnan(edges[0])
    np.testing.assert_array_equal(edges[1:], reference(np.array([np.inf, -np.inf])))


def test_tanh_f32_is_relatively_close_near_zero_and_exactly_one_beyond_the_clamp():
    tiny = np.float32(10.0) ** np.arange(-30, 0, 0.01).astype(np.float32)
    for values in (tiny, -tiny):
        got = _apply(mathlib.tanh_f32, values).astype(np.float64)
        expected = np.tanh(values.astype(np.float64))
        assert np.max(np.abs(got - expected) / np.abs(expected)) <= 3e-7
    beyond = np.array([7.9054, 8.0, 9.5, 1e30], np.float32)
    np.testing.assert_array_equal(_apply(mathlib.tanh_f32, beyond), np.ones(4, np.float32))
    np.testing.assert_array_equal(_apply(mathlib.tanh_f32, -beyond), -np.ones(4, np.float32))
    np.testing.assert_array_equal(_apply(mathlib.sigmoid_f32, np.float32(-2) * beyond),
                                  np.zeros(4, np.float32))
