"""Scalar math for the generated CUDA kernels: the names of kernels/scalar_ops.py's
MATH_FUNCTIONS as `@cuda.jit(device=True)` functions, one per float dtype
(`sigmoid_f32`, `sigmoid_f64`, ...), or straight `math.<name>` calls.

Each float32 function keeps float32 arithmetic (constants are np.float32: an int or a
Python float literal would promote the expression to float64 on the device). Every
function follows numpy's NaN semantics (maximum(nan, 1) is nan); sigmoid only takes exp
of non-positive numbers, so it never overflows; division by zero gives inf/nan as numpy
(also in the simulator, where the operands may be Python floats).
"""

from __future__ import annotations

import math

import numpy as np

from rshop_ir.kernels.cuda.device import cuda

_device = cuda.jit(device=True)
_EXACT_INTEGER = {"f32": 8388608.0, "f64": 4503599627370496.0}   # 2**23, 2**52


def _functions(suffix: str, scalar):
    zero, one, half = scalar(0), scalar(1), scalar(0.5)
    nan, inf = scalar(math.nan), scalar(math.inf)
    exact = scalar(_EXACT_INTEGER[suffix])

    @_device
    def sigmoid(x):
        if x >= zero:
            return one / (one + math.exp(-x))
        e = math.exp(x)
        return e / (one + e)

    @_device
    def softplus(x):
        if x != x:
            return x
        if x > zero:
            return x + math.log1p(math.exp(-x))
        return scalar(math.log1p(math.exp(x)))

    @_device
    def maximum(a, b):
        if a != a:
            return a
        if b != b:
            return b
        return a if a >= b else b

    @_device
    def minimum(a, b):
        if a != a:
            return a
        if b != b:
            return b
        return a if a <= b else b

    @_device
    def sign(x):
        if x != x:
            return x
        if x > zero:
            return one
        if x < zero:
            return -one
        return x

    @_device
    def floor(x):
        if not (abs(x) < exact):      # NaN, inf and numbers that are already integers
            return x
        return scalar(math.floor(x))

    @_device
    def ceil(x):
        if not (abs(x) < exact):
            return x
        return scalar(math.ceil(x))

    @_device
    def round_half_even(x):
        if not (abs(x) < exact):
            return x
        below = scalar(math.floor(x))
        fraction = x - below
        if fraction > half or (fraction == half and
                               scalar(math.floor(below * half)) * 2 != below):
            below = below + one
        return below

    @_device
    def div(a, b):
        if b == zero:
            if a != a or a == zero:
                return nan
            return inf if (a > zero) == (math.copysign(1.0, b) > 0) else -inf
        return scalar(a / b)

    @_device
    def floor_divide(a, b):
        return floor(div(a, b))

    @_device
    def mod(a, b):
        if b == zero or a != a or b != b:
            return nan
        return scalar(a - b * floor(div(a, b)))

    @_device
    def power(a, b):
        return scalar(a ** b)

    @_device
    def select(condition, a, b):
        return a if condition else b

    return {"sigmoid": sigmoid, "softplus": softplus, "maximum": maximum,
            "minimum": minimum, "sign": sign, "floor": floor, "ceil": ceil,
            "round": round_half_even, "div": div, "floor_divide": floor_divide,
            "mod": mod, "pow": power, "select": select}


_GENERATED = {"f32": _functions("f32", np.float32), "f64": _functions("f64", np.float64)}
for _suffix, _table in _GENERATED.items():
    for _name, _function in _table.items():
        globals()[f"{_name}_{_suffix}"] = _function

# math functions every dtype maps straight to `math.<name>` (libdevice on the device)
LIBM = {"tanh", "exp", "expm1", "log", "log1p", "sqrt", "sin", "cos", "erf"}
DEVICE_FUNCTION_NAMES = sorted(f"{name}_{suffix}" for suffix, table in _GENERATED.items()
                               for name in table)


def function_name(function: str, dtype: str) -> str:
    """The name generated code calls for scalar_ops `function` at `dtype`, or None."""
    if function in LIBM:
        return f"math.{function}"
    if function == "abs":
        return "abs"
    if function == "select":
        return "select_f32"          # type-generic: works for every dtype
    suffix = {"float32": "f32", "float64": "f64"}.get(dtype)
    if suffix is None or function not in _GENERATED[suffix]:
        return None
    return f"{function}_{suffix}"
