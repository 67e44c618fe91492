"""Scalar math for the generated Numba CPU kernels (the names listed in
kernels/scalar_ops.py MATH_FUNCTIONS, one per dtype: `tanh_f32`, `tanh_f64`, ...).

float32 tanh/sigmoid use a rational approximation (Eigen's `ptanh_float`: clamp to
+-7.9053, odd degree-13 / even degree-6 polynomials) that is branch-free, so LLVM
vectorises the gate loops (libm's tanhf is a scalar call). Measured max error against
float64 tanh: 3.4e-7 absolute/relative over [-12, 12]; NaN stays NaN (comparisons with
NaN are false, so the clamp lets it through), +-inf clamp to +-1 exactly. sigmoid(x) =
0.5 + 0.5 * tanh(x / 2) (absolute error <= 2e-7). float64 uses the real libm functions,
so float64 kernels match the reference to rounding. Every function follows numpy's
NaN semantics (maximum(nan, 1) is nan, unlike Python's max).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

_JIT = dict(cache=True, error_model="numpy", nogil=True)

_F = np.float32
_TANH_CLAMP = _F(7.90531110763549805)
_A1, _A3, _A5, _A7 = _F(4.89352455891786e-03), _F(6.37261928875436e-04), \
    _F(1.48572235717979e-05), _F(5.12229709037114e-08)
_A9, _A11, _A13 = _F(-8.60467152213735e-11), _F(2.00018790482477e-13), \
    _F(-2.76076847742355e-16)
_B0, _B2, _B4, _B6 = _F(4.89352518554385e-03), _F(2.26843463243900e-03), \
    _F(1.18534705686654e-04), _F(1.19825839466702e-06)
_HALF32 = _F(0.5)


@njit(**_JIT)
def tanh_f32(x):
    if x > _TANH_CLAMP:
        x = _TANH_CLAMP
    if x < -_TANH_CLAMP:
        x = -_TANH_CLAMP
    x2 = x * x
    p = x2 * _A13 + _A11
    p = x2 * p + _A9
    p = x2 * p + _A7
    p = x2 * p + _A5
    p = x2 * p + _A3
    p = x2 * p + _A1
    q = x2 * _B6 + _B4
    q = x2 * q + _B2
    q = x2 * q + _B0
    return x * p / q


@njit(**_JIT)
def sigmoid_f32(x):
    return _HALF32 + _HALF32 * tanh_f32(_HALF32 * x)


@njit(**_JIT)
def tanh_f64(x):
    return math.tanh(x)


@njit(**_JIT)
def sigmoid_f64(x):
    return 1.0 / (1.0 + math.exp(-x))


@njit(**_JIT)
def softplus_any(x):
    # numpy's logaddexp(0, x): max(x, 0) + log1p(exp(-|x|)); NaN stays NaN.
    if x != x:
        return x
    if x > 0:
        return x + math.log1p(math.exp(-x))
    return math.log1p(math.exp(x))


@njit(**_JIT)
def maximum_any(a, b):
    if a != a:
        return a
    if b != b:
        return b
    return a if a >= b else b


@njit(**_JIT)
def minimum_any(a, b):
    if a != a:
        return a
    if b != b:
        return b
    return a if a <= b else b


@njit(**_JIT)
def sign_any(x):
    if x != x:
        return x
    if x > 0:
        return x - x + 1
    if x < 0:
        return x - x - 1
    return x - x


@njit(**_JIT)
def round_any(x):
    return np.round(x)     # half to even, as numpy


@njit(**_JIT)
def div_any(a, b):
    return a / b           # error_model="numpy": 1/0 is inf, 0/0 is nan


@njit(**_JIT)
def floor_divide_any(a, b):
    return a // b


@njit(**_JIT)
def mod_any(a, b):
    return a % b


@njit(**_JIT)
def pow_any(a, b):
    return a ** b


@njit(**_JIT)
def select_any(condition, a, b):
    return a if condition else b


@njit(**_JIT)
def erf_any(x):
    return math.erf(x)


# scalar_ops name -> (module attribute for float32, for float64 / other dtypes)
FUNCTIONS = {
    "tanh": ("tanh_f32", "tanh_f64"),
    "sigmoid": ("sigmoid_f32", "sigmoid_f64"),
    "softplus": ("softplus_any", "softplus_any"),
    "maximum": ("maximum_any", "maximum_any"),
    "minimum": ("minimum_any", "minimum_any"),
    "sign": ("sign_any", "sign_any"),
    "round": ("round_any", "round_any"),
    "div": ("div_any", "div_any"),
    "floor_divide": ("floor_divide_any", "floor_divide_any"),
    "mod": ("mod_any", "mod_any"),
    "pow": ("pow_any", "pow_any"),
    "select": ("select_any", "select_any"),
    "erf": ("erf_any", "erf_any"),
    # straight libm calls (rendered as math.<name>)
    "exp": ("math.exp", "math.exp"),
    "expm1": ("math.expm1", "math.expm1"),
    "log": ("math.log", "math.log"),
    "log1p": ("math.log1p", "math.log1p"),
    "sqrt": ("math.sqrt", "math.sqrt"),
    "sin": ("math.sin", "math.sin"),
    "cos": ("math.cos", "math.cos"),
    "floor": ("np.floor", "np.floor"),
    "ceil": ("np.ceil", "np.ceil"),
    "abs": ("abs", "abs"),
}
