"""Tracing rules for Keras's core layers: Dense, Activation, merges, Dropout, norms,
Embedding, Masking, reshaping layers, TimeDistributed, Lambda, nested models."""

import keras
from keras import layers

from rshop_ir.frontends.keras_trace.activations import emit_activation, emit_relu
from rshop_ir.frontends.keras_trace.context import unsupported
from rshop_ir.frontends.keras_trace.walk import (
    layer_rule,
    retrace_layer_call,
    trace_functional,
    trace_layer_call,
)


def _single(layer, args):
    value = args[0]
    if isinstance(value, (list, tuple)):
        if len(value) != 1:
            raise unsupported(layer, f"expected one input, received {len(value)}")
        value = value[0]
    return value


def _axis(axis, ndim):
    return axis + ndim if axis < 0 else axis


@layer_rule(keras.Model)
def trace_model(context, model, args, kwargs):
    inputs = keras.tree.flatten(args[0]) if len(args) == 1 else keras.tree.flatten(args)
    outputs = trace_functional(context, model, inputs)
    return outputs[0] if len(outputs) == 1 else outputs


@layer_rule(layers.InputLayer)
def trace_input_layer(context, layer, args, kwargs):
    return _single(layer, args)


@layer_rule(layers.Dense)
def trace_dense(context, layer, args, kwargs):
    if getattr(layer, "lora_enabled", False) or getattr(layer, "quantization_mode", None):
        raise unsupported(layer, "LoRA or quantised Dense layers")
    value = context.apply("matmul", _single(layer, args), context.param_for(layer.kernel))
    if layer.use_bias:
        value = context.apply("bias_add", value, context.param_for(layer.bias))
    return emit_activation(context, layer.activation, value, layer)


@layer_rule(layers.Activation)
def trace_activation(context, layer, args, kwargs):
    return emit_activation(context, layer.activation, _single(layer, args), layer)


@layer_rule(layers.ReLU)
def trace_relu(context, layer, args, kwargs):
    return emit_relu(context, _single(layer, args), layer.negative_slope, layer.max_value,
                     layer.threshold)


@layer_rule(layers.LeakyReLU)
def trace_leaky_relu(context, layer, args, kwargs):
    return context.apply("leaky_relu", _single(layer, args),
                         negative_slope=float(layer.negative_slope))


@layer_rule(layers.PReLU)
def trace_prelu(context, layer, args, kwargs):
    """relu(x) - alpha * relu(-x), alpha a param (PReLU's call() negates it eagerly,
    which a re-trace would capture as a constant)."""
    if type(layer).call is not layers.PReLU.call:
        return retrace_layer_call(context, layer, args, kwargs)
    value = _single(layer, args)
    negative = context.apply("relu", context.apply("neg", value))
    return context.apply("sub", context.apply("relu", value), context.apply(
        "mul", context.param_for(layer.alpha), negative))


@layer_rule(layers.Softmax)
def trace_softmax(context, layer, args, kwargs):
    """Softmax over one axis; with a mask (broadcastable to the inputs) as Keras: the
    masked-out inputs replaced by -1e9 before, and their outputs by 0 after."""
    axis = layer.axis
    if isinstance(axis, (tuple, list)):
        if len(axis) != 1:
            raise unsupported(layer, "Softmax over several axes")
        axis = axis[0]
    value = _single(layer, args)
    mask = kwargs.get("mask")
    if mask is None:
        return context.apply("softmax", value, axis=int(axis))
    if mask.dtype != "bool":
        mask = context.apply("greater", mask, 0.5)
    kept = context.apply("where", mask, value, -1e9)
    return context.apply("where", mask, context.apply("softmax", kept, axis=int(axis)), 0.0)


@layer_rule(layers.Dropout, layers.SpatialDropout1D, layers.GaussianNoise,
            layers.GaussianDropout, layers.AlphaDropout)
def trace_dropout(context, layer, args, kwargs):
    rate = float(getattr(layer, "rate", 0.0) or 0.0)
    return context.apply("dropout", _single(layer, args), rate=rate)


_MERGES = {layers.Add: "add", layers.Multiply: "mul", layers.Maximum: "maximum",
           layers.Minimum: "minimum"}


@layer_rule(layers.Add, layers.Multiply, layers.Maximum, layers.Minimum, layers.Average,
            layers.Subtract)
def trace_merge(context, layer, args, kwargs):
    values = list(args[0])
    masks = [context.mask_of(value) for value in values]
    if any(mask is not None for mask in masks) and isinstance(
            layer, (layers.Multiply, layers.Maximum, layers.Minimum)):
        result = _masked_merge(context, layer, values, masks)
    elif isinstance(layer, layers.Subtract):
        result = context.apply("sub", values[0], values[1])
    else:
        op = "add" if isinstance(layer, layers.Average) else _MERGES[type(layer)]
        result = values[0]
        for value in values[1:]:
            result = context.apply(op, result, value)
        if isinstance(layer, layers.Average):
            result = context.apply("mul", result, 1.0 / len(values))
    if all(mask is not None for mask in masks):   # Keras: the OR of all the masks
        context.set_mask(result, _mask_or(context, masks))
    return result


def _masked_merge(context, layer, values, masks):
    """Multiply, Maximum and Minimum of inputs of which some carry masks, as Keras
    merges them: Multiply takes a masked input's masked steps as 1 (and, when every
    input is masked, gives 0 where all are masked); Maximum and Minimum take them from
    the merge so far (or give it to the next input), having no neutral value."""
    expanded = []
    for value, mask in zip(values, masks):
        if mask is not None and mask.ndim != value.ndim - 1:
            raise unsupported(layer, f"a mask of rank {mask.ndim} on an input of rank "
                                     f"{value.ndim}")
        expanded.append(None if mask is None else
                        context.apply("expand_dims", mask, axis=mask.ndim))
    if isinstance(layer, layers.Multiply):
        result, either = None, None
        for value, mask in zip(values, expanded):
            if mask is not None:
                value = context.apply("where", mask, value, 1)
                either = mask if either is None else context.apply("logical_or", either, mask)
            result = value if result is None else context.apply("mul", result, value)
        if all(mask is not None for mask in expanded):
            result = context.apply("where", either, result, 0)
        return result
    op = _MERGES[type(layer)]
    result, kept = values[0], expanded[0]
    for value, mask in zip(values[1:], expanded[1:]):
        if mask is not None:
            value = context.apply("where", mask, value, result)
        if kept is not None:
            result = context.apply("where", kept, result, value)
        kept = None if mask is None or kept is None else context.apply("logical_or", kept,
                                                                       mask)
        result = context.apply(op, result, value)
    return result


@layer_rule(layers.Concatenate)
def trace_concatenate(context, layer, args, kwargs):
    values = list(args[0])
    axis = _axis(layer.axis, values[0].ndim)
    result = context.apply("concatenate", *values, axis=axis)
    masks = [context.mask_of(value) for value in values]
    if all(mask is None for mask in masks):
        return result
    if axis != values[0].ndim - 1 or any(
            mask is not None and mask.ndim != value.ndim - 1
            for mask, value in zip(masks, values)):
        raise unsupported(layer, "Concatenate of masked inputs other than sequences "
                                 "along their last axis")
    # Keras: the inputs' masks (all true for an unmasked input) concatenated, any()
    # over the last axis: the OR of the masks, or all true (no masking) when an
    # input has none
    if all(mask is not None for mask in masks):
        context.set_mask(result, _mask_or(context, masks))
    return result


def _mask_or(context, masks):
    result = masks[0]
    for mask in masks[1:]:
        result = context.apply("logical_or", result, mask)
    return result


_LETTERS = "cdefghijklmnopqrstuvwxyz"


def _l2_normalized(context, value, axis):
    """`keras.ops.normalize(value, axis)` as Keras computes it: value times the
    inverse L2 norm along `axis`, capped at 1 / epsilon (a zero vector stays zero)."""
    square_sum = context.apply("reduce_sum", context.apply("square", value), axes=(axis,),
                               keepdims=True)
    inverse_norm = context.apply("minimum", context.apply("rsqrt", square_sum),
                                 1.0 / keras.config.epsilon())
    return context.apply("mul", value, inverse_norm)


@layer_rule(layers.Dot)
def trace_dot(context, layer, args, kwargs):
    """`Dot` is Keras's batch_dot: contract one axis of each input, keep the batch;
    with `normalize`, each input L2-normalised along its axis first (the cosine)."""
    first, second = args[0]
    axes = layer.axes if isinstance(layer.axes, (list, tuple)) else (layer.axes, layer.axes)
    axes = (_axis(axes[0], first.ndim), _axis(axes[1], second.ndim))
    if layer.normalize:
        first = _l2_normalized(context, first, axes[0])
        second = _l2_normalized(context, second, axes[1])
    letters = iter(_LETTERS)
    first_labels = ["b"] + [next(letters) for _ in range(first.ndim - 1)]
    second_labels = ["b"] + [next(letters) for _ in range(second.ndim - 1)]
    second_labels[axes[1]] = first_labels[axes[0]]
    contracted = first_labels[axes[0]]
    output = [label for label in first_labels if label != contracted]
    output += [label for label in second_labels[1:] if label != contracted]
    equation = f"{''.join(first_labels)},{''.join(second_labels)}->{''.join(output)}"
    result = context.apply("einsum", first, second, equation=equation)
    if result.ndim == 1:
        result = context.apply("expand_dims", result, axis=1)
    return result


@layer_rule(layers.Embedding)
def trace_embedding(context, layer, args, kwargs):
    ids = _single(layer, args)
    if getattr(layer, "lora_enabled", False) or getattr(layer, "quantization_mode", None):
        raise unsupported(layer, "LoRA or quantised Embedding layers")
    if not ids.dtype.startswith("int"):
        ids = context.apply("cast", ids, dtype="int32")
    output = context.apply("gather", context.param_for(layer.embeddings), ids, axis=0)
    if layer.mask_zero:
        context.set_mask(output, context.apply("not_equal", ids, 0))
    return output


@layer_rule(layers.Masking)
def trace_masking(context, layer, args, kwargs):
    value = _single(layer, args)
    differs = context.apply("not_equal", value, float(layer.mask_value))
    mask = context.apply("reduce_max", differs, axes=(value.ndim - 1,), keepdims=False)
    keep = context.apply("cast", context.apply("expand_dims", mask, axis=value.ndim - 1),
                         dtype=value.dtype)
    output = context.apply("mul", value, keep)
    context.set_mask(output, mask)
    return output


@layer_rule(layers.Reshape)
def trace_reshape(context, layer, args, kwargs):
    value = _single(layer, args)
    target = tuple(layer.target_shape)
    if -1 in target:
        known = 1
        for dim in value.shape[1:]:
            known *= dim
        for dim in target:
            if dim != -1:
                known //= dim
        target = tuple(known if dim == -1 else dim for dim in target)
    return context.apply("reshape", value, shape=(value.shape[0], *target))


@layer_rule(layers.Flatten)
def trace_flatten(context, layer, args, kwargs):
    value = _single(layer, args)
    size = 1
    for dim in value.shape[1:]:
        if isinstance(dim, str):
            raise unsupported(layer, "Flatten over a symbolic (time) dimension")
        size *= dim
    return context.apply("reshape", value, shape=(value.shape[0], size))


@layer_rule(layers.RepeatVector)
def trace_repeat_vector(context, layer, args, kwargs):
    value = context.apply("expand_dims", _single(layer, args), axis=1)
    return context.apply("repeat", value, repeats=int(layer.n), axis=1)


@layer_rule(layers.Permute)
def trace_permute(context, layer, args, kwargs):
    return context.apply("transpose", _single(layer, args), perm=(0, *layer.dims))


_PER_POSITION_LAYERS = (layers.Dense, layers.Activation, layers.Dropout, layers.ReLU,
                        layers.LeakyReLU, layers.LayerNormalization, layers.Softmax)


@layer_rule(layers.TimeDistributed)
def trace_time_distributed(context, layer, args, kwargs):
    """Per-position layers (Dense, activations, ...) act on the last axis, so they run
    on the whole (B, T, ...) tensor at once."""
    inner = layer.layer
    if not isinstance(inner, _PER_POSITION_LAYERS):
        raise unsupported(layer, f"TimeDistributed({type(inner).__name__}) is only "
                                 "supported for per-position layers such as Dense")
    return trace_layer_call(context, inner, args, {})


@layer_rule(layers.Lambda)
def trace_lambda(context, layer, args, kwargs):
    """Re-trace the function on symbolic inputs: keras.ops calls become graph nodes."""
    if layer.mask is not None:
        raise unsupported(layer, "Lambda with an output mask (mask=)")
    return retrace_layer_call(context, layer, (args[0],))
