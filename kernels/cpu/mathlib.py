"""Scalar math for the generated Numba CPU kernels (the names listed in
kernels/scalar_ops.py MATH_FUNCTIONS, one per dtype: `tanh_f32`, `tanh_f64`, ...).

float32 tanh/sigmoid use a rational approximation (Eigen's `ptanh_float`: clamp to
+-7.9053, odd degree-13 / even degree-6 polynomials) that is branch-free, so LLVM
vectorises the gate loops (libm's tanhf is a scalar call). The polynomials are fused
multiply-adds in Estrin's pairs, a short chain: an LSTM's gate loop of 128 x 512
units, one thread on the 2-core Zen 2 VM, went 250 -> 219 us from the separately
rounded Horner form (ad-hoc, in-process). Measured max error against float64 tanh:
3.2e-7 absolute/relative over [-20, 20]; NaN stays NaN (comparisons with NaN are
false, so the clamp lets it through), +-1 exactly beyond the clamp and at +-inf.
sigmoid(x) = 0.5 + 0.5 * tanh(x / 2) (absolute error <= 1.9e-7, tests/test_mathlib.py).
float32 exp reduces x to r = x - n ln 2 (|r| <= ln 2 / 2), takes a degree-7
polynomial for exp(r) (the coefficients of Cephes' expf) and scales by 2^n built from
its bits, again without a branch or a libm call (expf is a scalar call LLVM cannot
vectorise); measured relative error against float64 exp: <= 8e-8 over [-87, 88]; it
is inf above 88.72, 0 below -87.34 (where expf is subnormal, < 1.2e-38) and NaN for
NaN. float64 uses the real libm functions,
so float64 kernels match the reference to rounding. Every function follows numpy's
NaN semantics (maximum(nan, 1) is nan, unlike Python's max).
"""

from __future__ import annotations

import math

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

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


def _f32(value) -> ir.Constant:
    return ir.Constant(ir.FloatType(), float(np.float32(value)))


def _tanh_f32_code(builder, x):
    """LLVM code of the float32 rational tanh: clamp (a NaN passes, its comparisons are
    false), then x * p(x^2) / q(x^2), the polynomials in fused multiply-adds evaluated
    in pairs of terms (Estrin's scheme: p's longest chain is x^2, x^4, x^8 and one
    multiply-add, where Horner's takes x^2 and 6 multiply-adds, or 12 operations
    rounded apart), and +-1 exactly beyond the clamp."""
    high = builder.fcmp_ordered(">", x, _f32(_TANH_CLAMP))
    low = builder.fcmp_ordered("<", x, _f32(-_TANH_CLAMP))
    x = builder.select(low, _f32(-_TANH_CLAMP), builder.select(high, _f32(_TANH_CLAMP), x))
    x2 = builder.fmul(x, x)
    x4 = builder.fmul(x2, x2)
    x8 = builder.fmul(x4, x4)
    terms_1_3 = _multiply_add(builder, x2, _f32(_A3), _f32(_A1))
    terms_5_7 = _multiply_add(builder, x2, _f32(_A7), _f32(_A5))
    terms_9_13 = _multiply_add(builder, x4, _f32(_A13),
                               _multiply_add(builder, x2, _f32(_A11), _f32(_A9)))
    p = _multiply_add(builder, x8, terms_9_13,
                      _multiply_add(builder, x4, terms_5_7, terms_1_3))
    q = _multiply_add(builder, x4, _multiply_add(builder, x2, _f32(_B6), _f32(_B4)),
                      _multiply_add(builder, x2, _f32(_B2), _f32(_B0)))
    ratio = builder.fdiv(builder.fmul(x, p), q)
    # the fused ratio at the clamp is 1 - 2.4e-7: +-1 exactly beyond it, as tanh(+-inf)
    return builder.select(low, _f32(-1.0), builder.select(high, _f32(1.0), ratio))


def _multiply_add(builder, a, b, c):
    """a * b + c, which LLVM may fuse into one multiply-add."""
    return builder.fadd(builder.fmul(a, b, flags=("contract",)), c, flags=("contract",))


# tanh_f32 and sigmoid_f32 are intrinsics, not `@njit` functions: their few
# instructions are written straight into the calling kernel. As functions, each was
# compiled apart (typed, lowered, optimised, turned into machine code) and then
# linked into the kernel and optimised again: 0.3-0.45 s of an LSTM's first compile
# with Numba's cache empty (BENCHMARKS run 33).
@intrinsic
def tanh_f32(typing_context, x):
    """float32 tanh, branch-free (see the module docstring)."""
    if x != types.float32:
        return None

    def codegen(context, builder, signature, arguments):
        return _tanh_f32_code(builder, arguments[0])
    return types.float32(types.float32), codegen


@intrinsic
def sigmoid_f32(typing_context, x):
    """float32 sigmoid: 0.5 + 0.5 * tanh_f32(0.5 * x)."""
    if x != types.float32:
        return None

    def codegen(context, builder, signature, arguments):
        half = _f32(_HALF32)
        tanh = _tanh_f32_code(builder, builder.fmul(half, arguments[0]))
        return _multiply_add(builder, half, tanh, half)
    return types.float32(types.float32), codegen


@intrinsic
def _float32_from_bits(typing_context, bits):
    """The float32 whose IEEE bits are the low 32 bits of the integer `bits`."""
    if not isinstance(bits, types.Integer):
        return None

    def codegen(context, builder, signature, arguments):
        word = context.cast(builder, arguments[0], signature.args[0], types.int32)
        return builder.bitcast(word, ir.FloatType())
    return types.float32(bits), codegen


_EXP_HIGH = _F(88.72283935546875)     # exp(x) > the largest float32 above this
_EXP_LOW = _F(-87.33654022216797)     # exp(x) subnormal below this
_LOG2E = _F(1.4426950408889634)
_LN2_HIGH, _LN2_LOW = _F(0.693359375), _F(-2.12194440e-4)   # ln 2 in two parts
_P0, _P1, _P2 = _F(1.9875691500e-4), _F(1.3981999507e-3), _F(8.3334519073e-3)
_P3, _P4, _P5 = _F(4.1665795894e-2), _F(1.6666665459e-1), _F(5.0000001201e-1)
_ONE32, _ZERO32, _INF32 = _F(1.0), _F(0.0), _F(np.inf)


@njit(**_JIT)
def exp_f32(x):
    y = x
    if y != y:
        y = _ZERO32                   # computed on 0, NaN returned below
    if y > _EXP_HIGH:
        y = _EXP_HIGH
    if y < _EXP_LOW:
        y = _EXP_LOW
    n = np.floor(y * _LOG2E + _HALF32)
    r = (y - n * _LN2_HIGH) - n * _LN2_LOW
    p = r * _P0 + _P1
    p = r * p + _P2
    p = r * p + _P3
    p = r * p + _P4
    p = r * p + _P5
    p = (r * r) * p + r + _ONE32
    # 2^n as two normal powers of two (n in [-126, 128]; 2^128 alone would be inf)
    k = np.int32(n)
    half = k >> 1
    p = p * _float32_from_bits((half + 127) << 23)
    p = p * _float32_from_bits((k - half + 127) << 23)
    if x > _EXP_HIGH:
        p = _INF32
    if x < _EXP_LOW:
        p = _ZERO32
    if x != x:
        p = x
    return p


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
    return np.sign(x)      # of x's type; +-1 for +-inf (x - x + 1 gave NaN there)


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
    "exp": ("exp_f32", "math.exp"),
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
