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
    op, params = entry
    return context.apply(op, value, **params)
