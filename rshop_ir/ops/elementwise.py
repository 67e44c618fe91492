"""Element-wise ops: arithmetic, math functions, activations, comparisons, logic, cast.

All follow numpy broadcasting (with "B"/"T" dims, see shapes.py) and are flagged
`elementwise`, so fusion may merge chains of them into one loop. Activations follow the
Keras 3 definitions (e.g. hard_sigmoid = relu6(x + 3) / 6, leaky_relu slope 0.2).
"""

from __future__ import annotations

import numpy as np
import scipy.special

from rshop_ir.ir import TensorType
from rshop_ir.ops.registry import REQUIRED, register
from rshop_ir.shapes import broadcast_shapes

SELU_ALPHA = 1.6732632423543772848170429916717
SELU_SCALE = 1.0507009873554804934193349852946


def _float_dtype(dtype: str) -> str:
    """Math functions of ints give float32 (as Keras does for its float ops)."""
    return dtype if np.issubdtype(np.dtype(dtype), np.inexact) else "float32"


def same_type_rule(x: TensorType, **params) -> tuple:
    return (x,)


def float_type_rule(x: TensorType, **params) -> tuple:
    return (TensorType(_float_dtype(x.dtype), x.shape),)


def binary_rule(x: TensorType, y: TensorType, **params) -> tuple:
    dtype = np.result_type(np.dtype(x.dtype), np.dtype(y.dtype)).name
    return (TensorType(dtype, broadcast_shapes(x.shape, y.shape)),)


def divide_rule(x: TensorType, y: TensorType, **params) -> tuple:
    (out,) = binary_rule(x, y)
    dtype = out.dtype if np.issubdtype(np.dtype(out.dtype), np.inexact) else "float64"
    return (TensorType(dtype, out.shape),)  # numpy's true division of ints is float64


def comparison_rule(x: TensorType, y: TensorType, **params) -> tuple:
    return (TensorType("bool", broadcast_shapes(x.shape, y.shape)),)


def logical_rule(*types: TensorType, **params) -> tuple:
    for value_type in types:
        if value_type.dtype != "bool":
            raise ValueError(f"Logical ops take bool inputs. Received dtype "
                             f"{value_type.dtype}.")
    return (TensorType("bool", broadcast_shapes(*(t.shape for t in types))),)


def where_rule(condition: TensorType, x: TensorType, y: TensorType) -> tuple:
    if condition.dtype != "bool":
        raise ValueError(f"where: the condition must be bool. Received {condition.dtype}.")
    dtype = np.result_type(np.dtype(x.dtype), np.dtype(y.dtype)).name
    return (TensorType(dtype, broadcast_shapes(condition.shape, x.shape, y.shape)),)


def cast_rule(x: TensorType, dtype: str) -> tuple:
    return (TensorType(dtype, x.shape),)


def bias_add_rule(x: TensorType, bias: TensorType) -> tuple:
    if bias.ndim != 1 or x.ndim < 1 or bias.shape[0] != x.shape[-1]:
        raise ValueError(f"bias_add: the bias must be 1-D with the size of the last axis. "
                         f"Received x {x}, bias {bias}.")
    return binary_rule(x, bias)


def _sigmoid(x):
    return scipy.special.expit(x)


def _gelu(x, approximate):
    if approximate:
        inner = np.sqrt(2.0 / np.pi) * (x + 0.044715 * x ** 3)
        return 0.5 * x * (1.0 + np.tanh(inner))
    return 0.5 * x * (1.0 + scipy.special.erf(x / np.sqrt(2.0)))


def _elu(x, alpha):
    return np.where(x > 0, x, alpha * np.expm1(np.minimum(x, 0)))


# name -> (impl, rule, params). Same-dtype ops keep ints as ints; float ops promote.
UNARY_OPS = {
    "neg": (np.negative, same_type_rule, {}),
    "abs": (np.abs, same_type_rule, {}),
    "square": (np.square, same_type_rule, {}),
    "sign": (np.sign, same_type_rule, {}),
    "floor": (np.floor, same_type_rule, {}),
    "ceil": (np.ceil, same_type_rule, {}),
    "round": (np.round, same_type_rule, {}),
    "sqrt": (np.sqrt, float_type_rule, {}),
    "rsqrt": (lambda x: 1.0 / np.sqrt(x), float_type_rule, {}),
    "reciprocal": (lambda x: 1.0 / x, float_type_rule, {}),
    "exp": (np.exp, float_type_rule, {}),
    "expm1": (np.expm1, float_type_rule, {}),
    "log": (np.log, float_type_rule, {}),
    "log1p": (np.log1p, float_type_rule, {}),
    "sin": (np.sin, float_type_rule, {}),
    "cos": (np.cos, float_type_rule, {}),
    "erf": (scipy.special.erf, float_type_rule, {}),
    "linear": (lambda x: x, same_type_rule, {}),
    "tanh": (np.tanh, float_type_rule, {}),
    "sigmoid": (_sigmoid, float_type_rule, {}),
    "hard_sigmoid": (lambda x: np.clip(x + 3.0, 0.0, 6.0) / 6.0, float_type_rule, {}),
    "hard_silu": (lambda x: x * np.clip(x + 3.0, 0.0, 6.0) / 6.0, float_type_rule, {}),
    "relu": (lambda x: np.maximum(x, 0), same_type_rule, {}),
    "relu6": (lambda x: np.clip(x, 0, 6), same_type_rule, {}),
    "elu": (_elu, float_type_rule, {"alpha": 1.0}),
    "selu": (lambda x: SELU_SCALE * _elu(x, SELU_ALPHA), float_type_rule, {}),
    "softplus": (lambda x: np.logaddexp(0.0, x), float_type_rule, {}),
    "softsign": (lambda x: x / (1.0 + np.abs(x)), float_type_rule, {}),
    "silu": (lambda x: x * _sigmoid(x), float_type_rule, {}),
    "gelu": (_gelu, float_type_rule, {"approximate": False}),
    "leaky_relu": (lambda x, negative_slope: np.where(x >= 0, x, negative_slope * x),
                   float_type_rule, {"negative_slope": 0.2}),
    "clip": (lambda x, min_value, max_value: np.clip(x, min_value, max_value),
             same_type_rule, {"min_value": None, "max_value": None}),
    "dropout": (lambda x, rate: x, same_type_rule, {"rate": 0.0}),
    "logical_not": (np.logical_not, logical_rule, {}),
}

# name -> (impl, rule, commutative)
BINARY_OPS = {
    "add": (np.add, binary_rule, True),
    "sub": (np.subtract, binary_rule, False),
    "mul": (np.multiply, binary_rule, True),
    "div": (np.true_divide, divide_rule, False),
    "floor_divide": (np.floor_divide, binary_rule, False),
    "mod": (np.mod, binary_rule, False),
    "pow": (np.power, binary_rule, False),
    "maximum": (np.maximum, binary_rule, True),
    "minimum": (np.minimum, binary_rule, True),
    "bias_add": (np.add, bias_add_rule, False),
    "greater": (np.greater, comparison_rule, False),
    "greater_equal": (np.greater_equal, comparison_rule, False),
    "less": (np.less, comparison_rule, False),
    "less_equal": (np.less_equal, comparison_rule, False),
    "equal": (np.equal, comparison_rule, True),
    "not_equal": (np.not_equal, comparison_rule, True),
    "logical_and": (np.logical_and, logical_rule, True),
    "logical_or": (np.logical_or, logical_rule, True),
    "logical_xor": (np.logical_xor, logical_rule, True),
}

for _name, (_impl, _rule, _params) in UNARY_OPS.items():
    register(_name, _rule, _impl, params=_params, elementwise=True, num_inputs=1)

for _name, (_impl, _rule, _commutative) in BINARY_OPS.items():
    register(_name, _rule, _impl, elementwise=True, commutative=_commutative, num_inputs=2)

register("where", where_rule, np.where, elementwise=True, num_inputs=3)
register("cast", cast_rule, lambda x, dtype: np.asarray(x).astype(dtype),
         params={"dtype": REQUIRED}, elementwise=True, num_inputs=1)
