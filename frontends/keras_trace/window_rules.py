"""Tracing rules for ops over windows of steps: `keras.ops.pad`, 1-D `keras.ops.conv`
(which `layers.Conv1D` calls, after an `ops.pad` for "causal" padding), its depthwise
and separable forms, and 1-D pooling: lowered to ops the IR already has, so every
backend runs them.

  * pad (constant mode): along each padded axis, the value between two `fill` blocks
    of the pad value (`concatenate`);
  * conv over (batch, steps, channels): for each kernel tap j, the window of steps
    that tap reads (`slice` from j * dilation; every stride-th step taken by padding
    the window to whole strides, reshaping to (batch, steps, stride, channels) and
    keeping index 0), the taps side by side along the channels (`concatenate`), then
    ONE `matmul` with the kernel reshaped from (taps, in, out) to (taps * in, out):
    sum_j x[t * stride + j * dilation] @ kernel[j], as Keras computes it; a grouped
    kernel (fewer channels than the input's) does this per group of channels.

  * pooling in windows that neither overlap nor pad: the steps, cut to whole
    windows, reshaped into (batch, windows, pool, features) and reduced over the
    pool axis; other windows (strides, "same" padding): the element-wise maximum or
    sum of the pool's tap windows. "same" max pooling pads with copies of the first
    and last step (every window reaching the padding holds that step, so its maximum
    is the one over its real steps); "same" average pooling pads with zeros and
    divides by each window's count of real steps, as TensorFlow does.

`layers.Conv1D` has a rule of its own: its call() reshapes the bias eagerly, which a
re-trace would capture as a constant instead of a param.

Over an unknown number of steps, a convolution of stride 1 with "same" or "causal"
padding keeps the number of steps: tap j is the input moved along the steps (`shift`,
zeros where it reads the padding). Everything else needs the number of steps (and every
padded size) known when tracing: the IR has no size computed from a symbolic one. "same" padding pads as TensorFlow does (the
odd step of padding at the end).
"""

import numpy as np
from keras import layers

from rshop_ir.frontends.keras_trace.activations import emit_activation
from rshop_ir.frontends.keras_trace.context import unsupported
from rshop_ir.frontends.keras_trace.op_rules import _fail
from rshop_ir.frontends.keras_trace.walk import layer_rule, op_rule, retrace_layer_call


def _pad_block(context, value, axis, size, fill_value):
    """A (value's shape, `size` along `axis`) block of `fill_value`."""
    shape = tuple(value.shape[:axis]) + (size,) + tuple(value.shape[axis + 1:])
    return context.apply("fill", shape=shape, value=fill_value, dtype=value.dtype)


def pad_axis(context, value, axis, before, after, fill_value=0.0):
    """`value` with `before` / `after` entries of `fill_value` added along `axis`."""
    if before == 0 and after == 0:
        return value
    parts = ([_pad_block(context, value, axis, before, fill_value)] if before else []) \
        + [value] + ([_pad_block(context, value, axis, after, fill_value)] if after else [])
    return context.apply("concatenate", *parts, axis=axis)


@op_rule("Pad")
def trace_pad(context, operation, args, kwargs):
    value = args[0]
    constant = args[1] if len(args) > 1 else kwargs.get("constant_values")
    if operation.mode != "constant":
        raise _fail(operation, f"padding in mode {operation.mode!r} (only \"constant\")")
    if constant is None:
        constant = 0.0
    if not isinstance(constant, (int, float)) or isinstance(constant, bool):
        raise _fail(operation, "a pad value other than a Python number")
    widths = list(operation.pad_width)
    if len(widths) == 1:
        widths = widths * value.ndim
    for axis, (before, after) in enumerate(widths):
        if (before or after) and isinstance(value.shape[axis], str):
            raise _fail(operation, f"padding the symbolic dim {value.shape[axis]!r}")
        value = pad_axis(context, value, axis, int(before), int(after), float(constant))
    return value


def _single(setting, fail, what):
    """An int given as an int or a 1-sequence."""
    if isinstance(setting, (tuple, list)):
        if len(setting) != 1:
            raise fail(f"a {what} of {setting} for a 1-D window")
        setting = setting[0]
    return int(setting)


@op_rule("Conv")
def trace_conv(context, operation, args, kwargs):
    def fail(what):
        return _fail(operation, what)
    return emit_conv1d(context, args[0], args[1], operation.strides, operation.dilation_rate,
                       operation.padding, operation.data_format, fail)


@layer_rule(layers.Conv1D)
def trace_conv1d_layer(context, layer, args, kwargs):
    """Conv1D with its kernel and bias as params (its own call() would reshape the bias
    outside the traced graph); a subclass with a call() of its own is re-traced."""
    if type(layer).call is not layers.Conv1D.call:
        return retrace_layer_call(context, layer, args, kwargs)
    value = args[0][0] if isinstance(args[0], (list, tuple)) else args[0]

    def fail(what):
        return unsupported(layer, what)
    padding = layer.padding
    steps_axis = 2 if layer.data_format == "channels_first" else 1
    if padding == "causal" and value.ndim == 3 and not isinstance(value.shape[steps_axis],
                                                                  str):
        # zeros before the steps (the last axis, channels first); over an unknown
        # number of steps, emit_conv1d shifts each tap instead
        dilation = _single(layer.dilation_rate, fail, "dilation rate")
        value = pad_axis(context, value, steps_axis, (layer.kernel_size[0] - 1) * dilation,
                         0)
        padding = "valid"
    bias = context.param_for(layer.bias) if layer.use_bias else None
    result = emit_conv1d(context, value, context.param_for(layer.kernel), layer.strides,
                         layer.dilation_rate, padding, layer.data_format, fail, bias)
    return emit_activation(context, layer.activation, result, layer)


def _depthwise_kernel(context, kernel):
    """A depthwise kernel (taps, channels, multiplier) as a grouped one (taps, 1,
    channels * multiplier), a group a channel: filter c * multiplier + m is channel c's
    m-th, the order of the reshape."""
    if kernel.ndim != 3:
        return kernel
    taps, channels, multiplier = kernel.shape
    return context.apply("reshape", kernel, shape=(taps, 1, channels * multiplier))


@op_rule("DepthwiseConv")
def trace_depthwise_conv(context, operation, args, kwargs):
    def fail(what):
        return _fail(operation, what)
    return emit_conv1d(context, args[0], _depthwise_kernel(context, args[1]),
                       operation.strides, operation.dilation_rate, operation.padding,
                       operation.data_format, fail)


@op_rule("SeparableConv")
def trace_separable_conv(context, operation, args, kwargs):
    def fail(what):
        return _fail(operation, what)
    depthwise = emit_conv1d(context, args[0], _depthwise_kernel(context, args[1]),
                            operation.strides, operation.dilation_rate, operation.padding,
                            operation.data_format, fail)
    return emit_conv1d(context, depthwise, args[2], 1, 1, "valid", operation.data_format,
                       fail)


@layer_rule(layers.DepthwiseConv1D, layers.SeparableConv1D)
def trace_depthwise_conv1d_layer(context, layer, args, kwargs):
    """DepthwiseConv1D (a grouped convolution, a group a channel) and SeparableConv1D
    (that, then a one-tap convolution mixing the channels), as Keras's ops compute
    them, with the kernels and the bias as params (their calls reshape the bias outside
    the traced graph); a subclass with a call() of its own is re-traced."""
    separable = isinstance(layer, layers.SeparableConv1D)
    if type(layer).call is not (layers.SeparableConv1D if separable
                                else layers.DepthwiseConv1D).call:
        return retrace_layer_call(context, layer, args, kwargs)
    value = args[0][0] if isinstance(args[0], (list, tuple)) else args[0]

    def fail(what):
        return unsupported(layer, what)
    kernel = layer.depthwise_kernel if separable else layer.kernel
    bias = context.param_for(layer.bias) if layer.use_bias else None
    result = emit_conv1d(context, value, _depthwise_kernel(context, context.param_for(kernel)),
                         layer.strides, layer.dilation_rate, layer.padding, layer.data_format,
                         fail, None if separable else bias)
    if separable:
        result = emit_conv1d(context, result, context.param_for(layer.pointwise_kernel), 1,
                             1, "valid", layer.data_format, fail, bias)
    return emit_activation(context, layer.activation, result, layer)

def emit_conv1d(context, value, kernel, strides, dilation, padding, data_format, fail,
                bias=None):
    """The IR of a 1-D convolution of `value` (batch, steps, channels; channels first
    when `data_format` says so) with `kernel` (taps, channels / groups, filters), plus
    `bias` (filters) when given: see the module docstring. `fail(what)` makes the
    UnsupportedError to raise."""
    if value.ndim != 3 or kernel.ndim != 3:
        raise fail("a convolution other than 1-D")
    strides = _single(strides, fail, "stride")
    dilation = _single(dilation, fail, "dilation rate")
    channels_first = data_format == "channels_first"
    if channels_first:
        value = context.apply("transpose", value, perm=(0, 2, 1))
    steps, channels = value.shape[1], value.shape[2]
    taps, group_channels, filters = kernel.shape
    if channels % group_channels or filters % (channels // group_channels):
        raise fail(f"a kernel of {group_channels} channels a group over {channels} "
                   f"input channels and {filters} filters")
    reach = (taps - 1) * dilation + 1           # steps one output step reads
    padding = str(padding).lower()
    if isinstance(steps, str):
        windows = _shifted_taps(context, value, taps, dilation, strides, padding, fail)
    else:
        windows = _padded_taps(context, value, taps, dilation, strides, padding, reach, fail)
    groups = channels // group_channels
    group_filters = filters // groups
    results = []
    for group in range(groups):
        taps_of_group = windows if groups == 1 else [
            context.apply("slice", window, axis=2, start=group * group_channels,
                          stop=(group + 1) * group_channels) for window in windows]
        stacked = taps_of_group[0] if taps == 1 else context.apply(
            "concatenate", *taps_of_group, axis=2)
        group_kernel = kernel if groups == 1 else context.apply(
            "slice", kernel, axis=2, start=group * group_filters,
            stop=(group + 1) * group_filters)
        flat_kernel = context.apply("reshape", group_kernel,
                                    shape=(taps * group_channels, group_filters))
        results.append(context.apply("matmul", stacked, flat_kernel))
    result = results[0] if groups == 1 else context.apply("concatenate", *results, axis=2)
    if bias is not None:
        result = context.apply("bias_add", result, bias)
    if channels_first:
        result = context.apply("transpose", result, perm=(0, 2, 1))
    return result


def _padded_taps(context, value, taps, dilation, strides, padding, reach, fail):
    """Over a known number of steps: each tap's window of the padded steps
    (`_tap_window`)."""
    steps = value.shape[1]
    if padding == "same":
        out_steps = -(-steps // strides)
        total = max((out_steps - 1) * strides + reach - steps, 0)
        value = pad_axis(context, value, 1, total // 2, total - total // 2)
    elif padding == "valid":
        if steps < reach:
            raise fail(f"a 'valid' convolution reaching {reach} steps over {steps}")
        out_steps = (steps - reach) // strides + 1
    else:
        raise fail(f"padding {padding!r}")
    return [_tap_window(context, value, j * dilation, out_steps, strides)
            for j in range(taps)]


def _shifted_taps(context, value, taps, dilation, strides, padding, fail):
    """Over an unknown number of steps, stride 1 and "same" or "causal" padding (or
    one tap): tap j reads step t + j * dilation - before, `value` shifted by
    `before - j * dilation` (zeros where it reads the padding), as many steps as the
    input."""
    total = (taps - 1) * dilation
    if strides != 1 or (padding not in ("same", "causal") and total):
        raise fail(f"a convolution over an unknown number of steps with stride {strides} "
                   f"and padding {padding!r} (only stride 1, 'same' or 'causal' padding, "
                   "or one tap)")
    before = total if padding == "causal" else total // 2
    return [value if before == j * dilation else
            context.apply("shift", value, axis=1, offset=before - j * dilation)
            for j in range(taps)]


def _tap_window(context, value, start, out_steps, strides):
    """value[:, start + t * strides] for t < out_steps, (batch, out_steps, channels)."""
    length = (out_steps - 1) * strides + 1
    window = context.apply("slice", value, axis=1, start=start, stop=start + length)
    if strides == 1:
        return window
    window = pad_axis(context, window, 1, 0, out_steps * strides - length)
    channels = value.shape[2]
    grouped = context.apply("reshape", window,
                            shape=(value.shape[0], out_steps, strides, channels))
    first = context.apply("slice", grouped, axis=2, start=0, stop=1)
    return context.apply("reshape", first, shape=(value.shape[0], out_steps, channels))


@op_rule("AveragePool", "MaxPool")
def trace_pool(context, operation, args, kwargs):
    """1-D pooling over (batch, steps, features), or channels first (see the module
    docstring)."""
    value = args[0]

    def fail(what):
        return _fail(operation, what)
    pool = _single(operation.pool_size, fail, "pool size")
    strides = pool if operation.strides is None else _single(operation.strides, fail,
                                                             "stride")
    padding = str(operation.padding).lower()
    if value.ndim != 3 or padding not in ("valid", "same"):
        raise fail(f"pooling other than 1-D (inputs {value.type}, padding {padding!r})")
    channels_first = operation.data_format == "channels_first"
    if channels_first:
        value = context.apply("transpose", value, perm=(0, 2, 1))
    steps = value.shape[1]
    if isinstance(steps, str):
        raise _fail(operation, "pooling over an unknown number of steps")
    average = type(operation).__name__ == "AveragePool"
    if padding == "valid" and strides == pool:
        result = _pool_in_blocks(context, value, pool, average, operation)
    else:
        result = _pool_in_taps(context, value, pool, strides, padding, average, operation)
    if channels_first:
        result = context.apply("transpose", result, perm=(0, 2, 1))
    return result


def _pool_in_blocks(context, value, pool, average, operation):
    """Windows that neither overlap nor pad: reshaped and reduced."""
    windows = value.shape[1] // pool
    if windows == 0:
        raise _fail(operation, f"a pool of {pool} over {value.shape[1]} steps")
    if windows * pool != value.shape[1]:
        value = context.apply("slice", value, axis=1, start=0, stop=windows * pool)
    grouped = context.apply("reshape", value, shape=("B", windows, pool, value.shape[2]))
    return context.apply("reduce_mean" if average else "reduce_max", grouped, axes=(2,),
                         keepdims=False)


def _pool_in_taps(context, value, pool, strides, padding, average, operation):
    """Any windows: the maximum or mean of the pool's tap windows."""
    steps = value.shape[1]
    if padding == "same":
        out_steps = -(-steps // strides)
        total = max((out_steps - 1) * strides + pool - steps, 0)
        before, after = total // 2, total - total // 2
        if average:
            value = pad_axis(context, value, 1, before, after)
        else:   # copies of the edge steps: see the module docstring
            parts = [context.apply("slice", value, axis=1, start=0, stop=1)] * before \
                + [value] + [context.apply("slice", value, axis=1, start=steps - 1,
                                           stop=steps)] * after
            value = parts[0] if len(parts) == 1 else context.apply(
                "concatenate", *parts, axis=1)
    else:
        if steps < pool:
            raise _fail(operation, f"a pool of {pool} over {steps} steps")
        out_steps = (steps - pool) // strides + 1
        before = 0
    result = None
    for tap in range(pool):
        window = _tap_window(context, value, tap, out_steps, strides)
        result = window if result is None else context.apply(
            "add" if average else "maximum", result, window)
    if not average:
        return result
    # the real steps in each window
    starts = np.arange(out_steps) * strides - before
    counts = np.minimum(starts + pool, steps) - np.maximum(starts, 0) if padding == "same" \
        else np.full(out_steps, pool)
    if np.all(counts == pool):
        return context.apply("div", result, float(pool))
    divisor = context.constant(counts.astype(result.dtype).reshape(1, out_steps, 1))
    return context.apply("div", result, divisor)
