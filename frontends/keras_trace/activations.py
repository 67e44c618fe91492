"""Keras activations as IR ops."""

from rshop_ir.errors import UnsupportedError

# keras.activations function name -> (IR op, params).
_ACTIVATIONS = {
    "linear": None,
    "tanh": ("tanh", {}),
    "sigmoid": ("sigmoid", {}),
    "hard_sigmoid": ("hard_sigmoid", {}),
    "relu": ("relu", {}),
    "relu6": ("relu6", {}),
    "elu": ("elu", {}),
    "selu": ("selu", {}),
    "softplus": ("softplus", {}),
    "softsign": ("softsign", {}),
    "exponential": ("exp", {}),
    "silu": ("silu", {}),
    "swish": ("silu", {}),
    "hard_silu": ("hard_silu", {}),
    "hard_swish": ("hard_silu", {}),
    "gelu": ("gelu", {"approximate": False}),
    "leaky_relu": ("leaky_relu", {"negative_slope": 0.2}),
    "softmax": ("softmax", {"axis": -1}),
    "log_softmax": ("log_softmax", {"axis": -1}),
    "mish": "mish",     # composite: x * tanh(softplus(x)), emit_activation
}


def activation_name(function):
    """The Keras name of an activation function (`keras.activations.tanh` -> "tanh")."""
    return getattr(function, "__name__", None) or type(function).__name__


def emit_activation(context, function, value, layer=None):
    """`function(value)` in IR; `UnsupportedError` for activations the table lacks."""
    name = activation_name(function)
    if name not in _ACTIVATIONS:
        where = f"layer {layer.name!r}: " if layer is not None else ""
        raise UnsupportedError(
            f"{where}activation {name!r} has no IR op. Supported: "
            f"{', '.join(sorted(_ACTIVATIONS))}."
        )
    entry = _ACTIVATIONS[name]
    if entry is None:
        return value
    if entry == "mish":
        return context.apply("mul", value, context.apply("tanh", context.apply(
            "softplus", value)))
    op, params = entry
    return context.apply(op, value, **params)


def emit_relu(context, value, negative_slope=0.0, max_value=None, threshold=0.0):
    """Keras's general ReLU (`keras.activations.relu`, the `ReLU` layer): x above
    `threshold` (else 0), clipped at `max_value`, minus `negative_slope` times the
    part below the threshold; the same ops in the same order as Keras's."""
    negative_slope, threshold = float(negative_slope), float(threshold)
    if negative_slope and max_value is None and not threshold:
        return context.apply("leaky_relu", value, negative_slope=negative_slope)
    negative_part = None
    if negative_slope:
        below = context.apply("neg", value)
        if threshold:
            below = context.apply("add", below, threshold)
        negative_part = context.apply("relu", below)
    clip = max_value is not None
    if threshold:
        result = context.apply("where", context.apply("greater", value, threshold),
                               value, 0.0)
    elif max_value == 6:
        result, clip = context.apply("relu6", value), False
    else:
        result = context.apply("relu", value)
    if clip:
        result = context.apply("clip", result, min_value=0.0, max_value=float(max_value))
    if negative_part is not None:
        result = context.apply("sub", result, context.apply("mul", negative_part,
                                                            negative_slope))
    return result
