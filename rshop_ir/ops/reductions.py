"""Reductions over axes (reduce_sum/mean/max/min/prod, argmax/argmin), softmax, and
the running sums and products along one axis (cumsum, cumprod).

`axes=None` reduces every axis. softmax and log_softmax are computed in the stable
form (subtracting the max along `axis`). cumsum and cumprod keep their input's dtype
(a frontend casts first, as `keras.ops.cumsum(x, dtype=...)` does).
"""

from __future__ import annotations

import numpy as np

from rshop_ir.ir import TensorType
from rshop_ir.ops.elementwise import _float_dtype
from rshop_ir.ops.registry import register
from rshop_ir.shapes import normalize_axes, normalize_axis


def _reduced_shape(x: TensorType, axes, keepdims: bool) -> tuple:
    axes = normalize_axes(axes, x.ndim)
    if keepdims:
        return tuple(1 if i in axes else d for i, d in enumerate(x.shape))
    return tuple(d for i, d in enumerate(x.shape) if i not in axes)


def reduce_rule(x: TensorType, axes, keepdims) -> tuple:
    return (TensorType(x.dtype, _reduced_shape(x, axes, keepdims)),)


def mean_rule(x: TensorType, axes, keepdims) -> tuple:
    return (TensorType(_float_dtype(x.dtype), _reduced_shape(x, axes, keepdims)),)


def arg_rule(x: TensorType, axis, keepdims) -> tuple:
    return (TensorType("int32", _reduced_shape(x, normalize_axis(axis, x.ndim), keepdims)),)


def softmax_rule(x: TensorType, axis) -> tuple:
    normalize_axis(axis, x.ndim)
    return (TensorType(_float_dtype(x.dtype), x.shape),)


def softmax_impl(x, axis):
    shifted = x - np.max(x, axis=axis, keepdims=True)
    exponentials = np.exp(shifted)
    return exponentials / np.sum(exponentials, axis=axis, keepdims=True)


def log_softmax_impl(x, axis):
    shifted = x - np.max(x, axis=axis, keepdims=True)
    return shifted - np.log(np.sum(np.exp(shifted), axis=axis, keepdims=True))


def cumulative_rule(x: TensorType, axis) -> tuple:
    if x.ndim == 0:
        raise ValueError(f"A running sum or product needs an axis; got a scalar {x}.")
    normalize_axis(axis, x.ndim)
    if x.dtype == "bool":
        raise ValueError(f"A running sum or product of {x}: cast the bools to a number "
                         "dtype first.")
    return (TensorType(x.dtype, x.shape),)


def _cumulative(function):
    def impl(x, axis):
        return function(x, axis=axis, dtype=x.dtype)
    return impl


def _reduction(function):
    def impl(x, axes, keepdims):
        return function(x, axis=None if axes is None else tuple(np.atleast_1d(axes)),
                        keepdims=keepdims)
    return impl


_REDUCE_PARAMS = {"axes": None, "keepdims": False}
register("reduce_sum", reduce_rule, _reduction(np.sum), params=_REDUCE_PARAMS, num_inputs=1)
register("reduce_mean", mean_rule, _reduction(np.mean), params=_REDUCE_PARAMS, num_inputs=1)
register("reduce_max", reduce_rule, _reduction(np.max), params=_REDUCE_PARAMS, num_inputs=1)
register("reduce_min", reduce_rule, _reduction(np.min), params=_REDUCE_PARAMS, num_inputs=1)
register("reduce_prod", reduce_rule, _reduction(np.prod), params=_REDUCE_PARAMS, num_inputs=1)
register("argmax", arg_rule,
         lambda x, axis, keepdims: np.argmax(x, axis=axis, keepdims=keepdims),
         params={"axis": -1, "keepdims": False}, num_inputs=1)
register("argmin", arg_rule,
         lambda x, axis, keepdims: np.argmin(x, axis=axis, keepdims=keepdims),
         params={"axis": -1, "keepdims": False}, num_inputs=1)
register("softmax", softmax_rule, softmax_impl, params={"axis": -1}, num_inputs=1)
register("log_softmax", softmax_rule, log_softmax_impl, params={"axis": -1}, num_inputs=1)
register("cumsum", cumulative_rule, _cumulative(np.cumsum), params={"axis": -1}, num_inputs=1)
register("cumprod", cumulative_rule, _cumulative(np.cumprod), params={"axis": -1},
         num_inputs=1)
