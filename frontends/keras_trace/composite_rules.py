"""Tracing rules for `keras.ops` built from other IR ops: statistics and norms
(logsumexp, var, std, moments, norm, normalize), index reductions (argmax, argmin), moves of
elements (tile, moveaxis, roll, take) and the activations Keras composes itself
(log_sigmoid, hard_tanh, celu, glu, squareplus and the shrinks).

Each rule writes the formula the TensorFlow backend computes, so the numbers are
Keras's; no generator needed a new op for them.
"""

import math

import numpy as np

from rshop_ir.frontends.keras_trace.op_rules import _axis, _fail, reduction_axes
from rshop_ir.frontends.keras_trace.walk import op_rule


def _float(context, value):
    """Integers and bools counted as float32, as Keras's statistics take them."""
    if value.dtype in ("float32", "float64"):
        return value
    return context.apply("cast", value, dtype="float32")


def _mean(context, value, axes, keepdims):
    return context.apply("reduce_mean", value, axes=axes, keepdims=keepdims)


@op_rule("Logsumexp")
def trace_logsumexp(context, operation, args, kwargs):
    """max + log(sum(exp(x - max))), the max taken as 0 where it is not finite (all
    -inf, or an inf) as TensorFlow's reduce_logsumexp does."""
    value = _float(context, args[0])
    axes = reduction_axes(operation, value)
    top = context.apply("reduce_max", value, axes=axes, keepdims=True)
    finite = context.apply("equal", context.apply("sub", top, top), 0.0)
    top = context.apply("where", finite, top, 0.0)
    total = context.apply("reduce_sum", context.apply("exp", context.apply("sub", value, top)),
                          axes=axes, keepdims=True)
    result = context.apply("add", context.apply("log", total), top)
    if not operation.keepdims:
        result = context.apply("squeeze", result, axis=axes)
    return result


def emit_moments(context, value, axes):
    """(mean, variance) of `value` over `axes`, both with the axes kept, as
    tf.nn.moments computes them: the variance is the mean of the squared differences
    from the mean."""
    mean = _mean(context, value, axes, True)
    centred = context.apply("sub", value, mean)
    return mean, _mean(context, context.apply("square", centred), axes, True)


def _variance(context, operation, value):
    value = _float(context, value)
    axes = reduction_axes(operation, value)
    variance = emit_moments(context, value, axes)[1]
    if not operation.keepdims:
        variance = context.apply("squeeze", variance, axis=axes)
    return variance


@op_rule("Var")
def trace_var(context, operation, args, kwargs):
    return _variance(context, operation, args[0])


@op_rule("Std")
def trace_std(context, operation, args, kwargs):
    return context.apply("sqrt", _variance(context, operation, args[0]))


@op_rule("Moments")
def trace_moments(context, operation, args, kwargs):
    """(mean, variance) as tf.nn.moments computes them: the variance is the mean of
    the squared differences from the mean. Synchronized moments outside a
    distribution strategy are the same numbers."""
    value = _float(context, args[0])
    axes = operation.axes if isinstance(operation.axes, (list, tuple)) else [operation.axes]
    axes = tuple(sorted({_axis(axis, value.ndim) for axis in axes}))
    if 0 in axes and value.ndim and value.shape[0] == "B":
        raise _fail(operation, "moments over the batch axis")
    mean, variance = emit_moments(context, value, axes)
    if not operation.keepdims:
        mean, variance = (context.apply("squeeze", statistic, axis=axes)
                          for statistic in (mean, variance))
    return mean, variance


def _vector_norm(context, operation, value, order, axes, keepdims):
    """The norm of `order` (None or 2, 1, inf, -inf, 0, another number) over `axes`."""
    if order in (None, 2, 2.0):
        squares = context.apply("reduce_sum", context.apply("square", value), axes=axes,
                                keepdims=keepdims)
        return context.apply("sqrt", squares)
    magnitude = context.apply("abs", value)
    if order in (1, 1.0):
        return context.apply("reduce_sum", magnitude, axes=axes, keepdims=keepdims)
    if order == math.inf:
        return context.apply("reduce_max", magnitude, axes=axes, keepdims=keepdims)
    if order == -math.inf:
        return context.apply("reduce_min", magnitude, axes=axes, keepdims=keepdims)
    if order == 0:
        nonzero = context.apply("cast", context.apply("not_equal", value, 0.0),
                                dtype=value.dtype)
        return context.apply("reduce_sum", nonzero, axes=axes, keepdims=keepdims)
    if isinstance(order, (int, float)) and not isinstance(order, bool):
        powered = context.apply("pow", magnitude, float(order))
        total = context.apply("reduce_sum", powered, axes=axes, keepdims=keepdims)
        return context.apply("pow", total, 1.0 / float(order))
    raise _fail(operation, f"a norm of order {order!r}")


@op_rule("Norm")
def trace_norm(context, operation, args, kwargs):
    """Vector norms over one axis (a matrix norm over two axes runs in Keras)."""
    value = _float(context, args[0])
    axes = reduction_axes(operation, value)
    if operation.axis is None and value.ndim != 1 or len(axes) != 1:
        raise _fail(operation, "a matrix norm (over two axes, or of a whole tensor)")
    return _vector_norm(context, operation, value, operation.ord, axes,
                        bool(operation.keepdims))


@op_rule("Normalize")
def trace_normalize(context, operation, args, kwargs):
    """order 2: x * min(rsqrt(sum(x^2)), 1 / epsilon); others: x / max(norm, epsilon)."""
    value = _float(context, args[0])
    axes = reduction_axes(operation, value)
    epsilon = operation.epsilon if operation.epsilon is not None else 1e-7
    if operation.order == 2:
        squares = context.apply("reduce_sum", context.apply("square", value), axes=axes,
                                keepdims=True)
        scale = context.apply("minimum", context.apply("rsqrt", squares), 1.0 / epsilon)
        return context.apply("mul", value, scale)
    norm = _vector_norm(context, operation, value, operation.order, axes, True)
    return context.apply("div", value, context.apply("maximum", norm, float(epsilon)))


@op_rule("Argmax", "Argmin")
def trace_arg_reduction(context, operation, args, kwargs):
    value = args[0]
    if operation.axis is None:
        raise _fail(operation, "an index into the flattened input (give an axis)")
    (axis,) = reduction_axes(operation, value)
    op = "argmax" if type(operation).__name__ == "Argmax" else "argmin"
    return context.apply(op, value, axis=axis, keepdims=bool(operation.keepdims))


@op_rule("Tile")
def trace_tile(context, operation, args, kwargs):
    value = args[0]
    repeats = operation.repeats
    repeats = [int(repeats)] if np.ndim(repeats) == 0 else [int(r) for r in repeats]
    if len(repeats) > value.ndim:
        raise _fail(operation, "tiling into more axes than the input has")
    repeats = [1] * (value.ndim - len(repeats)) + repeats
    if value.ndim and value.shape[0] == "B" and repeats[0] != 1:
        raise _fail(operation, "tiling the batch axis")
    return context.apply("tile", value, repeats=tuple(repeats))


@op_rule("Moveaxis")
def trace_moveaxis(context, operation, args, kwargs):
    value = args[0]
    sources = [_axis(a, value.ndim) for a in np.atleast_1d(operation.source)]
    targets = [_axis(a, value.ndim) for a in np.atleast_1d(operation.destination)]
    order = [axis for axis in range(value.ndim) if axis not in sources]
    for target, source in sorted(zip(targets, sources)):
        order.insert(target, source)
    return context.apply("transpose", value, perm=tuple(order))


@op_rule("Roll")
def trace_roll(context, operation, args, kwargs):
    """Along each axis of known size: the last `shift` elements first."""
    value = args[0]
    if operation.axis is None:
        raise _fail(operation, "a roll of the flattened input (give an axis)")
    shifts = np.atleast_1d(operation.shift)
    axes = np.atleast_1d(operation.axis)
    if len(shifts) == 1:
        shifts = np.repeat(shifts, len(axes))
    for shift, axis in zip(shifts, axes):
        axis = _axis(int(axis), value.ndim)
        size = value.shape[axis]
        if isinstance(size, str):
            raise _fail(operation, "a roll along a symbolic dim")
        cut = size - int(shift) % size
        if cut % size == 0:
            continue
        value = context.apply("concatenate",
                              context.apply("slice", value, axis=axis, start=cut, stop=size),
                              context.apply("slice", value, axis=axis, start=0, stop=cut),
                              axis=axis)
    return value


@op_rule("Take")
def trace_take(context, operation, args, kwargs):
    """Known indices along one axis: a slice per index (a scalar index drops it)."""
    value, indices = args[0], args[1]
    if operation.axis is None or not isinstance(indices, (int, list, tuple, np.ndarray)):
        raise _fail(operation, "take without an axis, or with computed indices")
    axis = _axis(int(operation.axis), value.ndim)
    size = value.shape[axis]
    array = np.asarray(indices)
    if isinstance(size, str) or array.ndim > 1 or array.size == 0 \
            or not np.issubdtype(array.dtype, np.integer):
        raise _fail(operation, "take of a symbolic dim or with indices not a list of ints")
    if axis == 0 and value.shape[0] == "B":
        raise _fail(operation, "take along the batch axis")
    picked = []
    for index in array.ravel():
        index = int(index) + size if index < 0 else int(index)
        if not 0 <= index < size:
            raise _fail(operation, f"index {index} out of range for size {size}")
        picked.append(context.apply("slice", value, axis=axis, start=index, stop=index + 1))
    if array.ndim == 0:
        return context.apply("squeeze", picked[0], axis=(axis,))
    return picked[0] if len(picked) == 1 else context.apply("concatenate", *picked, axis=axis)


# ---- activations Keras builds from others ------------------------------------------------

@op_rule("LogSigmoid")
def trace_log_sigmoid(context, operation, args, kwargs):
    return context.apply("neg", context.apply("softplus", context.apply("neg", args[0])))


@op_rule("HardTanh")
def trace_hard_tanh(context, operation, args, kwargs):
    return context.apply("clip", args[0], min_value=-1.0, max_value=1.0)


@op_rule("TanhShrink")
def trace_tanh_shrink(context, operation, args, kwargs):
    return context.apply("sub", args[0], context.apply("tanh", args[0]))


@op_rule("Celu")
def trace_celu(context, operation, args, kwargs):
    """max(x, 0) + alpha * expm1(min(x, 0) / alpha)."""
    value, alpha = args[0], float(operation.alpha)
    negative = context.apply("div", context.apply("minimum", value, 0.0), alpha)
    return context.apply("add", context.apply("maximum", value, 0.0),
                         context.apply("mul", context.apply("expm1", negative), alpha))


@op_rule("Glu")
def trace_glu(context, operation, args, kwargs):
    """The first half along `axis` times the sigmoid of the second."""
    value = args[0]
    axis = _axis(operation.axis, value.ndim)
    size = value.shape[axis]
    if isinstance(size, str) or size % 2:
        raise _fail(operation, f"glu over an axis of size {size} (not even)")
    first = context.apply("slice", value, axis=axis, start=0, stop=size // 2)
    second = context.apply("slice", value, axis=axis, start=size // 2, stop=size)
    return context.apply("mul", first, context.apply("sigmoid", second))


@op_rule("Squareplus")
def trace_squareplus(context, operation, args, kwargs):
    """(x + sqrt(x^2 + b)) / 2."""
    value = args[0]
    root = context.apply("sqrt", context.apply("add", context.apply("square", value),
                                               float(operation.b)))
    return context.apply("div", context.apply("add", value, root), 2.0)


@op_rule("SoftShrink")
def trace_soft_shrink(context, operation, args, kwargs):
    """x - t above t, x + t below -t, 0 between."""
    value, threshold = args[0], float(operation.threshold)
    below = context.apply("where", context.apply("less", value, -threshold),
                          context.apply("add", value, threshold), 0.0)
    return context.apply("where", context.apply("greater", value, threshold),
                         context.apply("sub", value, threshold), below)


@op_rule("HardShrink")
def trace_hard_shrink(context, operation, args, kwargs):
    """x where |x| > t, else 0."""
    value = args[0]
    large = context.apply("greater", context.apply("abs", value), float(operation.threshold))
    return context.apply("where", large, value, 0.0)


@op_rule("Round")
def trace_round(context, operation, args, kwargs):
    """Half to even; with decimals, of x * 10^decimals, divided back."""
    value, decimals = args[0], int(operation.decimals)
    if decimals == 0:
        return context.apply("round", value)
    if value.dtype not in ("float32", "float64"):
        raise _fail(operation, "rounding integers to decimals")
    factor = float(10.0 ** decimals)
    return context.apply("div", context.apply("round", context.apply("mul", value, factor)),
                         factor)
