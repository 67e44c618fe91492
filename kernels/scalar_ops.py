"""Element-wise ops as scalar expressions: the one table every kernel renderer reads.

A fused region (ops/fused.py) and every lone element-wise op become ONE loop nest whose
body computes each element with scalar expressions. This table says, for every
element-wise op of the op table, how one element is computed, in a renderer-neutral
way: an entry is `fn(args, params, ctx) -> str`, where `args` are the operands'
scalar expressions (already rendered), `params` the eqn's params, and `ctx` a
`ScalarContext` supplied by the renderer (Numba CPU now, CUDA later). The context
renders constants (`ctx.const(2.0, "float32")`: typed, nan/inf explicit), casts, and
calls of named math functions (`ctx.call("tanh", dtype, x)`), which each renderer maps
to its own implementation (a vectorisable polynomial on the CPU, `math.tanh` on a GPU).

    SCALAR_OPS["mul"](["a[i0, i1]", "b[i1]"], {}, ctx)   -> "(a[i0, i1] * b[i1])"

The math functions a renderer must provide are listed in MATH_FUNCTIONS; every one of
them must follow numpy's NaN/inf semantics (e.g. maximum(nan, 1) is nan).
"""

from __future__ import annotations

import math

import numpy as np

from rshop_ir.errors import UnsupportedError
from rshop_ir.ops import get_op

SELU_ALPHA = 1.6732632423543772848170429916717
SELU_SCALE = 1.0507009873554804934193349852946

# name -> number of arguments; each follows numpy semantics (NaN in -> NaN out).
MATH_FUNCTIONS = {
    "tanh": 1, "sigmoid": 1, "exp": 1, "expm1": 1, "log": 1, "log1p": 1, "sqrt": 1,
    "sin": 1, "cos": 1, "erf": 1, "floor": 1, "ceil": 1, "round": 1, "abs": 1,
    "sign": 1, "softplus": 1, "maximum": 2, "minimum": 2, "pow": 2, "floor_divide": 2,
    "mod": 2, "div": 2, "select": 3,
}


class ScalarContext:
    """What a renderer supplies to the templates (see the module docstring).

    `const` and `cast` write numpy scalar constructors (`np.float32(2.0)`), which both
    Numba targets compile; a subclass names in `special_float_module` the module its
    generated code spells NaN and inf with ("np" -> `np.nan`, "math" -> `math.nan`)
    and implements `call`, the math functions of its target.
    """

    special_float_module = "np"

    def const(self, value, dtype: str) -> str:
        """`value` as a typed constant of `dtype` (nan/inf spelled explicitly)."""
        if dtype == "bool":
            return "True" if value else "False"
        if np.issubdtype(np.dtype(dtype), np.integer):
            return f"np.{dtype}({int(value)})"
        value = float(value)
        module = self.special_float_module
        if math.isnan(value):
            text = f"{module}.nan"
        elif math.isinf(value):
            text = f"{module}.inf" if value > 0 else f"-{module}.inf"
        else:
            text = repr(value)
        return f"np.{dtype}({text})"

    def cast(self, expression: str, dtype: str) -> str:
        """`expression` converted to `dtype` (to bool: compared with zero)."""
        if dtype == "bool":
            return f"({expression} != 0)"
        return f"np.{dtype}({expression})"

    def call(self, function: str, dtype: str, *args: str) -> str:
        """A call of the math function `function` (MATH_FUNCTIONS) on `args`."""
        raise NotImplementedError


def _binary(symbol):
    return lambda args, params, ctx, dtype: f"({args[0]} {symbol} {args[1]})"


def _function(name):
    return lambda args, params, ctx, dtype: ctx.call(name, dtype, *args)


def _clip(args, params, ctx, dtype):
    value = args[0]
    if params.get("min_value") is not None:
        value = ctx.call("maximum", dtype, value, ctx.const(params["min_value"], dtype))
    if params.get("max_value") is not None:
        value = ctx.call("minimum", dtype, value, ctx.const(params["max_value"], dtype))
    return value


def _relu(args, params, ctx, dtype):
    return ctx.call("maximum", dtype, args[0], ctx.const(0, dtype))


def _relu6(args, params, ctx, dtype):
    return ctx.call("minimum", dtype, _relu(args, params, ctx, dtype), ctx.const(6, dtype))


def _hard_sigmoid(args, params, ctx, dtype):
    shifted = f"({args[0]} + {ctx.const(3.0, dtype)})"
    return f"({_relu6([shifted], params, ctx, dtype)} / {ctx.const(6.0, dtype)})"


def _elu_with(alpha_scale):
    def render(args, params, ctx, dtype):
        alpha, scale = alpha_scale(params)
        x = args[0]
        negative = ctx.call("expm1", dtype, ctx.call("minimum", dtype, x, ctx.const(0, dtype)))
        value = ctx.call("select", dtype, f"({x} > {ctx.const(0, dtype)})", x,
                         f"({ctx.const(alpha, dtype)} * {negative})")
        return value if scale == 1.0 else f"({ctx.const(scale, dtype)} * {value})"
    return render


def _gelu(args, params, ctx, dtype):
    x = args[0]
    if params.get("approximate"):
        cube = f"({ctx.const(0.044715, dtype)} * {x} * {x} * {x})"
        inner = f"({ctx.const(0.7978845608028654, dtype)} * ({x} + {cube}))"
        return (f"({ctx.const(0.5, dtype)} * {x} * ({ctx.const(1.0, dtype)} + "
                f"{ctx.call('tanh', dtype, inner)}))")
    scaled = f"({x} * {ctx.const(0.7071067811865476, dtype)})"
    return (f"({ctx.const(0.5, dtype)} * {x} * ({ctx.const(1.0, dtype)} + "
            f"{ctx.call('erf', dtype, scaled)}))")


SCALAR_OPS = {
    # arithmetic
    "add": _binary("+"),
    "bias_add": _binary("+"),
    "sub": _binary("-"),
    "mul": _binary("*"),
    "div": _function("div"),
    "floor_divide": _function("floor_divide"),
    "mod": _function("mod"),
    "pow": _function("pow"),
    "maximum": _function("maximum"),
    "minimum": _function("minimum"),
    "neg": lambda args, params, ctx, dtype: f"(-{args[0]})",
    "square": lambda args, params, ctx, dtype: f"({args[0]} * {args[0]})",
    "reciprocal": lambda args, params, ctx, dtype: ctx.call(
        "div", dtype, ctx.const(1.0, dtype), args[0]),
    "rsqrt": lambda args, params, ctx, dtype: ctx.call(
        "div", dtype, ctx.const(1.0, dtype), ctx.call("sqrt", dtype, args[0])),
    # math functions
    **{name: _function(name) for name in (
        "abs", "sign", "floor", "ceil", "round", "sqrt", "exp", "expm1", "log", "log1p",
        "sin", "cos", "erf", "tanh", "sigmoid", "softplus")},
    # activations
    "linear": lambda args, params, ctx, dtype: args[0],
    "dropout": lambda args, params, ctx, dtype: args[0],     # inference: identity
    "relu": _relu,
    "relu6": _relu6,
    "hard_sigmoid": _hard_sigmoid,
    "hard_silu": lambda args, params, ctx, dtype: (
        f"({args[0]} * {_hard_sigmoid(args, params, ctx, dtype)})"),
    "elu": _elu_with(lambda params: (params.get("alpha", 1.0), 1.0)),
    "selu": _elu_with(lambda params: (SELU_ALPHA, SELU_SCALE)),
    "softsign": lambda args, params, ctx, dtype: ctx.call(
        "div", dtype, args[0], f"({ctx.const(1.0, dtype)} + {ctx.call('abs', dtype, args[0])})"),
    "silu": lambda args, params, ctx, dtype: f"({args[0]} * {ctx.call('sigmoid', dtype, args[0])})",
    "gelu": _gelu,
    "leaky_relu": lambda args, params, ctx, dtype: ctx.call(
        "select", dtype, f"({args[0]} >= {ctx.const(0, dtype)})", args[0],
        f"({ctx.const(params['negative_slope'], dtype)} * {args[0]})"),
    "clip": _clip,
    # comparisons and logic (results are bool)
    "greater": _binary(">"),
    "greater_equal": _binary(">="),
    "less": _binary("<"),
    "less_equal": _binary("<="),
    "equal": _binary("=="),
    "not_equal": _binary("!="),
    "logical_and": _binary("and"),
    "logical_or": _binary("or"),
    "logical_xor": _binary("!="),
    "logical_not": lambda args, params, ctx, dtype: f"(not {args[0]})",
    # selection, conversion, value sources
    "where": lambda args, params, ctx, dtype: ctx.call("select", dtype, *args),
    "cast": lambda args, params, ctx, dtype: ctx.cast(args[0], params["dtype"]),
    "zeros_like": lambda args, params, ctx, dtype: ctx.const(0, dtype),
    "ones_like": lambda args, params, ctx, dtype: ctx.const(1, dtype),
}


def scalar_expression(op_name: str, args, params, ctx: ScalarContext, dtype: str) -> str:
    """One element of `op_name` applied to scalar expressions `args`, as a string in
    the result dtype `dtype` (the renderer casts it when stored)."""
    if not get_op(op_name).elementwise:
        raise ValueError(f"{op_name!r} is not an element-wise op.")
    template = SCALAR_OPS.get(op_name)
    if template is None:
        raise UnsupportedError(f"The kernel generator has no scalar template for the "
                               f"element-wise op {op_name!r}; add one to "
                               f"rshop_ir/kernels/scalar_ops.py.")
    return template(list(args), dict(params), ctx, dtype)
