"""Tracing rules for the layers that shift and scale values: by statistics of the
values (LayerNormalization, GroupNormalization), by statistics kept in weights
(BatchNormalization at inference, Normalization) or by constants (Rescaling). Each
writes the formula Keras's TensorFlow backend computes, in its order of operations.

Their weights are params: Keras's calls reshape or cast them eagerly, which a re-trace
of the call would hold as constants (walk.py); a subclass with a call() of its own is
re-traced.
"""

import keras
import numpy as np
from keras import layers

from rshop_ir.frontends.keras_trace.composite_rules import emit_moments
from rshop_ir.frontends.keras_trace.context import unsupported
from rshop_ir.frontends.keras_trace.core_rules import _axis, _single
from rshop_ir.frontends.keras_trace.op_rules import emit_batch_norm
from rshop_ir.frontends.keras_trace.walk import layer_rule, retrace_layer_call


def _broadcast_param(context, variable, value, positions):
    """A normalisation's weight or statistic over `value`'s axes `positions`, shaped
    to broadcast against `value` as Keras reshapes it (unchanged over the last axis
    alone)."""
    weight = context.param_for(variable)
    if list(positions) == [value.ndim - 1]:
        return weight
    return context.apply("reshape", weight, shape=tuple(
        value.shape[index] if index in positions else 1 for index in range(1, value.ndim)))


@layer_rule(layers.LayerNormalization)
def trace_layer_norm(context, layer, args, kwargs):
    if getattr(layer, "rms_scaling", False):
        raise unsupported(layer, "LayerNormalization(rms_scaling=True)")
    value = _single(layer, args)
    axes = [layer.axis] if isinstance(layer.axis, int) else list(layer.axis)
    positions = sorted({_axis(axis, value.ndim) for axis in axes})
    if 0 in positions:
        raise unsupported(layer, "LayerNormalization over the batch axis")
    if positions == [value.ndim - 1]:
        axis = -1
    elif any(isinstance(value.shape[position], str) for position in positions):
        raise unsupported(layer, "LayerNormalization over an axis of unknown size")
    elif positions != list(range(value.ndim - len(positions), value.ndim)):
        return _layer_norm_moved_last(context, layer, value, positions)
    else:
        axis = tuple(positions)
    gamma = _broadcast_param(context, layer.gamma, value, positions) if layer.scale else 1.0
    beta = _broadcast_param(context, layer.beta, value, positions) if layer.center else 0.0
    return context.apply("layer_norm", value, gamma, beta, axis=axis,
                         epsilon=float(layer.epsilon))


def _layer_norm_moved_last(context, layer, value, positions):
    """A LayerNormalization over axes that are not the trailing ones (the steps
    alone, say): the normalised axes are moved last, normalised there, and moved back.
    The weights keep Keras's element order: Keras reshapes them to broadcast, and the
    axes moved are their size-1 ones."""
    kept = [position for position in range(value.ndim) if position not in positions]
    order = kept + list(positions)
    moved = context.apply("transpose", value, perm=tuple(order))
    shape = tuple(value.shape[position] for position in positions)

    def weight(variable, enabled, default):
        if not enabled:
            return default
        return context.apply("reshape", context.param_for(variable), shape=shape)

    normalized = context.apply(
        "layer_norm", moved, weight(layer.gamma, layer.scale, 1.0),
        weight(layer.beta, layer.center, 0.0),
        axis=tuple(range(len(kept), value.ndim)), epsilon=float(layer.epsilon))
    return context.apply("transpose", normalized, perm=tuple(int(i) for i in np.argsort(order)))


@layer_rule(layers.BatchNormalization)
def trace_batch_normalization(context, layer, args, kwargs):
    """BatchNormalization at inference, its moving statistics, scale and offset as
    params (its call() casts them eagerly, which a re-trace would capture as
    constants); a subclass with a call() of its own is re-traced."""
    if type(layer).call is not layers.BatchNormalization.call:
        return retrace_layer_call(context, layer, args, kwargs)
    value = _single(layer, args)
    axis = layer.axis
    if isinstance(axis, (tuple, list)):
        axis = axis[0] if len(axis) == 1 else None
    position = None if axis is None else _axis(axis, value.ndim)
    if position is None or position == 0:
        raise unsupported(layer, "BatchNormalization over several axes or the batch axis")
    if position != value.ndim - 1 and isinstance(value.shape[position], str):
        raise unsupported(layer, "BatchNormalization over an axis of unknown size")

    def param(variable):
        return _broadcast_param(context, variable, value, [position])
    scale = param(layer.gamma) if layer.scale else None
    offset = param(layer.beta) if layer.center else None
    return emit_batch_norm(context, value, param(layer.moving_mean),
                           param(layer.moving_variance), offset, scale,
                           float(layer.epsilon))


@layer_rule(layers.Normalization)
def trace_normalization(context, layer, args, kwargs):
    """Normalization: (x - mean) / max(sqrt(variance), epsilon), or its inverse, as its
    eager call computes it. Statistics adapted to data are params (its call() uses
    copies of them made when adapt() ends, which a re-trace would capture as
    constants); statistics given to the constructor are constants, as in Keras."""
    if type(layer).call is not layers.Normalization.call:
        return retrace_layer_call(context, layer, args, kwargs)
    value = _single(layer, args)
    shape = tuple(layer._broadcast_shape)
    if len(shape) != value.ndim or any(size is None for size in shape[1:]):
        raise unsupported(layer, f"statistics of shape {shape} over inputs {value.type}")
    shape = (1,) + shape[1:]

    def statistic(variable, given):
        if layer.input_mean is not None:
            return context.constant(np.asarray(given, dtype=value.dtype).reshape(shape))
        stat = context.apply("reshape", context.param_for(variable), shape=shape)
        return stat if stat.dtype == value.dtype else context.apply(
            "cast", stat, dtype=value.dtype)
    mean = statistic(getattr(layer, "adapt_mean", None), layer.mean)
    variance = statistic(getattr(layer, "adapt_variance", None), layer.variance)
    spread = context.apply("maximum", context.apply("sqrt", variance),
                           float(keras.backend.epsilon()))
    if layer.invert:
        return context.apply("add", mean, context.apply("mul", value, spread))
    return context.apply("div", context.apply("sub", value, mean), spread)


@layer_rule(layers.GroupNormalization)
def trace_group_normalization(context, layer, args, kwargs):
    """GroupNormalization: the channels split into groups (reshaped), each group
    normalised by the mean and variance over its channels and every other axis but the
    batch's (as tf.nn.moments), then scaled and shifted per channel as a batch norm
    of those statistics: x * inv + (beta - mean * inv), inv = rsqrt(variance + epsilon)
    * gamma, the same numbers as Keras's -mean * inv + beta."""
    if type(layer).call is not layers.GroupNormalization.call:
        return retrace_layer_call(context, layer, args, kwargs)
    value = _single(layer, args)
    position = _axis(layer.axis, value.ndim)
    channels = value.shape[position]
    if position == 0 or isinstance(channels, str):
        raise unsupported(layer, "GroupNormalization over the batch axis or channels of "
                                 "unknown number")
    split = (layer.groups, channels // layer.groups)
    grouped_shape = value.shape[:position] + split + value.shape[position + 1:]
    grouped = context.apply("reshape", value, shape=grouped_shape)
    axes = tuple(axis for axis in range(1, len(grouped_shape)) if axis != position)
    mean, variance = emit_moments(context, grouped, axes)
    broadcast = tuple(size if axis in (position, position + 1) else 1
                      for axis, size in enumerate(grouped_shape) if axis > 0)

    def param(variable, enabled):
        return context.apply("reshape", context.param_for(variable),
                             shape=broadcast) if enabled else None
    normalized = emit_batch_norm(context, grouped, mean, variance,
                                 param(layer.beta, layer.center),
                                 param(layer.gamma, layer.scale), float(layer.epsilon))
    return context.apply("reshape", normalized, shape=value.shape)


@layer_rule(layers.Rescaling)
def trace_rescaling(context, layer, args, kwargs):
    """Rescaling: inputs (cast to the layer's dtype) * scale + offset, both constants
    of that dtype (a scale with axes is reshaped as Keras's call reshapes it)."""
    if type(layer).call is not layers.Rescaling.call:
        return retrace_layer_call(context, layer, args, kwargs)
    value = _single(layer, args)
    dtype = layer.compute_dtype
    if value.dtype != dtype:
        value = context.apply("cast", value, dtype=dtype)
    scale, offset = (np.asarray(setting, dtype=dtype) for setting in (layer.scale,
                                                                       layer.offset))
    if scale.ndim and keras.config.image_data_format() == "channels_first":
        scale = scale.reshape(scale.shape + (1,) * (3 - scale.ndim))

    def constant(array):
        return float(array) if array.ndim == 0 else context.constant(array)
    return context.apply("add", context.apply("mul", value, constant(scale)),
                         constant(offset))
