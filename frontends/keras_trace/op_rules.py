"""Tracing rules for raw `keras.ops` nodes of functional graphs (`x * 2.0`, `x[:, :4]`,
`ops.tanh(x)`, ...). Each rule reads the operation's attributes (axis, dtype, ...) and
its call arguments, in which Python numbers stay numbers (they become IR literals)."""

import keras

from rshop_ir.errors import UnsupportedError
from rshop_ir.frontends.keras_trace.activations import emit_relu
from rshop_ir.frontends.keras_trace.walk import op_rule

_BINARY = {
    "Add": "add", "Subtract": "sub", "Multiply": "mul", "TrueDivide": "div",
    "Divide": "div", "Power": "pow", "Maximum": "maximum", "Minimum": "minimum",
    "Greater": "greater", "GreaterEqual": "greater_equal", "Less": "less",
    "LessEqual": "less_equal", "Equal": "equal", "NotEqual": "not_equal",
    "LogicalAnd": "logical_and", "LogicalOr": "logical_or", "Mod": "mod",
    "FloorDivide": "floor_divide",
}
_UNARY = {
    "Negative": "neg", "Absolute": "abs", "Abs": "abs", "Square": "square", "Sqrt": "sqrt",
    "Rsqrt": "rsqrt", "Exp": "exp", "Log": "log", "Log1p": "log1p", "Expm1": "expm1",
    "Tanh": "tanh", "Sigmoid": "sigmoid", "Relu": "relu", "Relu6": "relu6",
    "Selu": "selu", "Softplus": "softplus", "Softsign": "softsign", "Silu": "silu",
    "Swish": "silu", "HardSigmoid": "hard_sigmoid", "HardSilu": "hard_silu",
    "Sign": "sign", "Floor": "floor", "Ceil": "ceil", "Sin": "sin", "Cos": "cos",
    "Erf": "erf", "LogicalNot": "logical_not", "Reciprocal": "reciprocal",
}
_REDUCTIONS = {"Sum": "reduce_sum", "Mean": "reduce_mean", "Max": "reduce_max",
               "Min": "reduce_min", "Prod": "reduce_prod"}


def _fail(operation, what):
    return UnsupportedError(
        f"Operation {operation.name!r} ({type(operation).__name__}) cannot be compiled: "
        f"{what}."
    )


def _axis(axis, ndim):
    return axis + ndim if axis < 0 else axis


@op_rule(*_BINARY)
def trace_binary(context, operation, args, kwargs):
    first, second = args[0], args[1]
    return context.apply(_BINARY[type(operation).__name__], first, second)


@op_rule(*_UNARY)
def trace_unary(context, operation, args, kwargs):
    return context.apply(_UNARY[type(operation).__name__], args[0])


@op_rule("Elu")
def trace_elu(context, operation, args, kwargs):
    return context.apply("elu", args[0], alpha=float(getattr(operation, "alpha", 1.0)))


@op_rule("LeakyRelu")
def trace_leaky_relu(context, operation, args, kwargs):
    slope = getattr(operation, "negative_slope", 0.2)
    return context.apply("leaky_relu", args[0], negative_slope=float(slope))


@op_rule("ReLU")
def trace_general_relu(context, operation, args, kwargs):
    """`keras.activations.relu` with its options (PReLU's call uses it)."""
    return emit_relu(context, args[0], operation.negative_slope, operation.max_value,
                     operation.threshold)


@op_rule("BatchNorm")
def trace_batch_norm(context, operation, args, kwargs):
    """`ops.batch_normalization` (see `emit_batch_norm`) over the last axis."""
    value, mean, variance, offset, scale = (list(args) + [None] * 5)[:5]
    offset, scale = kwargs.get("offset", offset), kwargs.get("scale", scale)
    if _axis(operation.axis, value.ndim) != value.ndim - 1:
        raise _fail(operation, "batch normalization over an axis other than the last")
    return emit_batch_norm(context, value, mean, variance, offset, scale,
                           float(operation.epsilon))


def emit_batch_norm(context, value, mean, variance, offset, scale, epsilon):
    """Batch normalization over the last axis (BatchNormalization at inference) as
    TensorFlow computes it: x * inv + (offset - mean * inv), inv = rsqrt(variance +
    epsilon) * scale; `offset` / `scale` None when absent."""
    inverse = context.apply("rsqrt", context.apply("add", variance, epsilon))
    if scale is not None:
        inverse = context.apply("mul", inverse, scale)
    shift = context.apply("mul", mean, inverse)
    shift = context.apply("sub", offset, shift) if offset is not None \
        else context.apply("neg", shift)
    return context.apply("add", context.apply("mul", value, inverse), shift)


@op_rule("Repeat")
def trace_repeat(context, operation, args, kwargs):
    if operation.axis is None or not isinstance(operation.repeats, int):
        raise _fail(operation, "repeat without an axis or with several repeat counts")
    return context.apply("repeat", args[0], repeats=int(operation.repeats),
                         axis=_axis(operation.axis, args[0].ndim))


@op_rule("Flip")
def trace_flip(context, operation, args, kwargs):
    value, axes = args[0], operation.axis
    axes = range(value.ndim) if axes is None else (
        (axes,) if isinstance(axes, int) else tuple(axes))
    for axis in axes:
        value = context.apply("reverse", value, axis=_axis(axis, value.ndim))
    return value


@op_rule("Swapaxes")
def trace_swapaxes(context, operation, args, kwargs):
    value = args[0]
    perm = list(range(value.ndim))
    first, second = _axis(operation.axis1, value.ndim), _axis(operation.axis2, value.ndim)
    perm[first], perm[second] = perm[second], perm[first]
    return context.apply("transpose", value, perm=tuple(perm))


@op_rule("Gelu")
def trace_gelu(context, operation, args, kwargs):
    return context.apply("gelu", args[0], approximate=bool(getattr(operation, "approximate",
                                                                    True)))


@op_rule("Softmax", "LogSoftmax")
def trace_softmax(context, operation, args, kwargs):
    axis = operation.axis
    if not isinstance(axis, int):
        raise _fail(operation, "softmax over several axes")
    op = "softmax" if type(operation).__name__ == "Softmax" else "log_softmax"
    return context.apply(op, args[0], axis=axis)


def reduction_axes(operation, value):
    """The axes `operation.axis` names (all for None), refusing the batch axis."""
    axis = operation.axis
    if axis is None:
        axes = tuple(range(value.ndim))
    else:
        axes = tuple(_axis(a, value.ndim) for a in (axis if isinstance(axis, (list, tuple))
                                                     else [axis]))
    if 0 in axes and value.ndim and value.shape[0] == "B":
        raise _fail(operation, "a reduction over the batch axis")
    return axes


@op_rule(*_REDUCTIONS)
def trace_reduction(context, operation, args, kwargs):
    value = args[0]
    axes = reduction_axes(operation, value)
    if getattr(operation, "initial", None) is not None:
        raise _fail(operation, "a reduction with `initial`")
    return context.apply(_REDUCTIONS[type(operation).__name__], value, axes=axes,
                         keepdims=bool(operation.keepdims))


@op_rule("RMSNorm")
def trace_rms_norm(context, operation, args, kwargs):
    """`keras.ops.rms_normalization` (the RMSNormalization layer's call): x *
    rsqrt(mean(x^2 over the axes) + epsilon), then times `scale`, in Keras's order."""
    value = args[0]
    scale = args[1] if len(args) > 1 else kwargs.get("scale")
    epsilon = operation.epsilon if operation.epsilon is not None else keras.config.epsilon()
    mean_square = context.apply("reduce_mean", context.apply("square", value),
                                axes=reduction_axes(operation, value), keepdims=True)
    inverse_rms = context.apply("rsqrt", context.apply("add", mean_square, float(epsilon)))
    outputs = context.apply("mul", value, inverse_rms)
    return outputs if scale is None else context.apply("mul", outputs, scale)


@op_rule("Cumsum", "Cumprod")
def trace_cumulative(context, operation, args, kwargs):
    """Running sums and products along one axis, in the dtype Keras computes them in
    (`dtype=`, else the input's; bools count as int32)."""
    value = args[0]
    if operation.axis is None:
        raise _fail(operation, "a running sum or product over the flattened input (give "
                               "an axis)")
    axis = _axis(int(operation.axis), value.ndim)
    if axis == 0 and value.shape and value.shape[0] == "B":
        raise _fail(operation, "a running sum or product over the batch axis")
    dtype = keras.backend.standardize_dtype(operation.dtype or value.dtype)
    if dtype == "bool":
        dtype = "int32"
    if value.dtype != dtype:
        value = context.apply("cast", value, dtype=dtype)
    op = "cumsum" if type(operation).__name__ == "Cumsum" else "cumprod"
    return context.apply(op, value, axis=axis)


@op_rule("Any", "All")
def trace_any_all(context, operation, args, kwargs):
    """Boolean reductions (Keras computes masks with them): max / min over bools."""
    value = args[0]
    if value.dtype != "bool":
        value = context.apply("not_equal", value, 0)
    axis = operation.axis
    axes = tuple(range(value.ndim)) if axis is None else tuple(
        _axis(a, value.ndim) for a in (axis if isinstance(axis, (list, tuple)) else [axis]))
    op = "reduce_max" if type(operation).__name__ == "Any" else "reduce_min"
    return context.apply(op, value, axes=axes, keepdims=bool(operation.keepdims))


@op_rule("Matmul")
def trace_matmul(context, operation, args, kwargs):
    return context.apply("matmul", args[0], args[1])


@op_rule("Einsum")
def trace_einsum(context, operation, args, kwargs):
    return context.apply("einsum", *args, equation=operation.subscripts)


@op_rule("Concatenate")
def trace_concatenate(context, operation, args, kwargs):
    values = list(args[0])
    return context.apply("concatenate", *values, axis=_axis(operation.axis, values[0].ndim))


@op_rule("Stack")
def trace_stack(context, operation, args, kwargs):
    values = list(args[0])
    axis = _axis(operation.axis, values[0].ndim + 1)
    expanded = [context.apply("expand_dims", value, axis=axis) for value in values]
    return context.apply("concatenate", *expanded, axis=axis)


@op_rule("Split")
def trace_split(context, operation, args, kwargs):
    value = args[0]
    sections = operation.indices_or_sections
    axis = _axis(operation.axis, value.ndim)
    size = value.shape[axis]
    if isinstance(size, str):
        raise _fail(operation, "a split of a symbolic dim")
    if isinstance(sections, int):
        if size % sections:
            raise _fail(operation, f"a split of {size} into {sections} unequal parts")
        points = [k * (size // sections) for k in range(1, sections)]
    else:       # the indices where the parts start, as numpy's
        points = [min(max(int(p) + size if int(p) < 0 else int(p), 0), size)
                  for p in sections]
    bounds = list(zip([0, *points], [*points, size]))
    if any(stop <= start for start, stop in bounds):
        raise _fail(operation, "a split with an empty part")
    return [context.apply("slice", value, axis=axis, start=start, stop=stop)
            for start, stop in bounds]


@op_rule("Reshape")
def trace_reshape(context, operation, args, kwargs):
    value = args[0]
    shape = tuple(operation.newshape)
    if shape and shape[0] in (-1, None) and value.shape and value.shape[0] == "B":
        rest = shape[1:]
        if -1 in rest:
            raise _fail(operation, "a reshape with two unknown dims")
        shape = ("B", *rest)
    elif -1 in shape:
        raise _fail(operation, "a reshape with an unknown dim outside the batch axis")
    return context.apply("reshape", value, shape=shape)


@op_rule("ExpandDims")
def trace_expand_dims(context, operation, args, kwargs):
    value = args[0]
    axis = operation.axis
    if isinstance(axis, (list, tuple)):
        if len(axis) != 1:
            raise _fail(operation, "expand_dims over several axes")
        axis = axis[0]
    return context.apply("expand_dims", value, axis=_axis(axis, value.ndim + 1))


@op_rule("Squeeze")
def trace_squeeze(context, operation, args, kwargs):
    value = args[0]
    axis = operation.axis
    if axis is None:
        axis = tuple(i for i, d in enumerate(value.shape) if d == 1)
    axes = axis if isinstance(axis, (list, tuple)) else (axis,)
    return context.apply("squeeze", value, axis=tuple(_axis(a, value.ndim) for a in axes))


@op_rule("Transpose")
def trace_transpose(context, operation, args, kwargs):
    value = args[0]
    perm = operation.axes
    if perm is None:
        perm = tuple(reversed(range(value.ndim)))
    return context.apply("transpose", value, perm=tuple(perm))


@op_rule("Cast")
def trace_cast(context, operation, args, kwargs):
    return context.apply("cast", args[0], dtype=str(operation.dtype))


@op_rule("ConvertToTensor")
def trace_convert_to_tensor(context, operation, args, kwargs):
    value, dtype = args[0], operation.dtype
    if dtype is None or str(dtype) == value.dtype:
        return value
    return context.apply("cast", value, dtype=str(dtype))


@op_rule("ZerosLike", "OnesLike")
def trace_filled_like(context, operation, args, kwargs):
    """zeros_like / ones_like in `operation.dtype` (Concatenate's masks use them)."""
    value = args[0]
    dtype = str(operation.dtype) if operation.dtype is not None else value.dtype
    if dtype != value.dtype:
        value = context.apply("cast", value, dtype=dtype)
    return context.apply("zeros_like" if type(operation).__name__ == "ZerosLike"
                         else "ones_like", value)


@op_rule("Clip")
def trace_clip(context, operation, args, kwargs):
    return context.apply("clip", args[0], min_value=float(operation.x_min),
                         max_value=float(operation.x_max))


@op_rule("Where")
def trace_where(context, operation, args, kwargs):
    if len(args) != 3:
        raise _fail(operation, "where() with one argument")
    return context.apply("where", *args)


def _every(context, value, axis, start, count, step):
    """`count` elements of `value` along `axis` (a known size), from `start`, `step`
    apart: a slice; for a step > 1, reshaped into (count, step) groups whose first
    element is kept, the last element on its own when the last group would pass the
    end."""
    if step == 1:
        return context.apply("slice", value, axis=axis, start=start, stop=start + count)
    whole = count if start + count * step <= value.shape[axis] else count - 1
    parts = []
    if whole:
        span = context.apply("slice", value, axis=axis, start=start, stop=start + whole * step)
        grouped = context.apply("reshape", span, shape=(
            *span.shape[:axis], whole, step, *span.shape[axis + 1:]))
        first = context.apply("slice", grouped, axis=axis + 1, start=0, stop=1)
        parts.append(context.apply("squeeze", first, axis=(axis + 1,)))
    if whole < count:
        last = start + whole * step
        parts.append(context.apply("slice", value, axis=axis, start=last, stop=last + 1))
    return parts[0] if len(parts) == 1 else context.apply("concatenate", *parts, axis=axis)


@op_rule("GetItem")
def trace_get_item(context, operation, args, kwargs):
    """`x[key]` with ints, slices (any step, over a known size), `...` and `None`."""
    value, key = args
    if not isinstance(key, tuple):
        key = (key,)
    if sum(item is Ellipsis for item in key) > 1:
        raise _fail(operation, "indexing with several `...`")
    explicit = sum(item is not None and item is not Ellipsis for item in key)
    if Ellipsis in key:
        position = key.index(Ellipsis)
        key = key[:position] + (slice(None),) * (value.ndim - explicit) + key[position + 1:]
    key = key + (slice(None),) * (value.ndim - sum(item is not None for item in key))
    axis = 0
    squeeze_axes = []
    for item in key:
        if item is None:
            value = context.apply("expand_dims", value, axis=axis)
            axis += 1
            continue
        size = value.shape[axis]
        if isinstance(item, int):
            if isinstance(size, str):
                raise _fail(operation, "an integer index into a symbolic dim")
            start = item + size if item < 0 else item
            value = context.apply("slice", value, axis=axis, start=start, stop=start + 1)
            squeeze_axes.append(axis)
        elif isinstance(item, slice):
            if item.start is None and item.stop is None and item.step in (None, 1, -1):
                if item.step == -1:          # any size: the axis reversed
                    value = context.apply("reverse", value, axis=axis)
                axis += 1
                continue
            if isinstance(size, str):
                raise _fail(operation, "slicing a symbolic dim")
            start, stop, step = item.indices(size)
            count = len(range(start, stop, step))
            if count == 0:
                raise _fail(operation, "an empty slice")
            if step < 0:       # the same elements, counted from the reversed axis
                value = context.apply("reverse", value, axis=axis)
                start, step = size - 1 - start, -step
            value = _every(context, value, axis, start, count, step)
        else:
            raise _fail(operation, f"an index of type {type(item).__name__}")
        axis += 1
    if squeeze_axes:
        value = context.apply("squeeze", value, axis=tuple(squeeze_axes))
    return value
