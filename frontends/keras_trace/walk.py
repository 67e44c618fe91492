"""Walk Keras graphs and layers, dispatching each node to its tracing rule.

`trace_layer_call(context, layer, args, kwargs)` finds the rule for the layer's class
(walking the MRO, so user subclasses of our cells find the `RNNCell` rule) and returns
the IR values of its outputs. Functional models are walked node by node with Keras's own
traversal; masks are propagated beside the values, as Keras does with `_keras_mask`.
"""

import keras

from recurrentshop import compat
from rshop_ir.errors import UnsupportedError
from rshop_ir.frontends.keras_trace.context import unsupported

# class -> rule(context, layer, args, kwargs) -> outputs. Filled by the rule modules.
LAYER_RULES = {}
# keras.ops Operation class name -> rule(context, operation, args, kwargs) -> outputs.
OP_RULES = {}
# Layers that pass the mask of their first input through unchanged.
MASK_PASSING = []


def layer_rule(*classes, passes_mask=False):
    def register(function):
        for cls in classes:
            LAYER_RULES[cls] = function
            if passes_mask:
                MASK_PASSING.append(cls)
        return function

    return register


def op_rule(*names):
    def register(function):
        for name in names:
            OP_RULES[name] = function
        return function

    return register


def find_layer_rule(layer):
    for cls in type(layer).__mro__:
        if cls in LAYER_RULES:
            return LAYER_RULES[cls]
    return None


def trace_layer_call(context, layer, args, kwargs):
    """The IR outputs of `layer(*args, **kwargs)`."""
    rule = find_layer_rule(layer)
    if rule is not None:
        return rule(context, layer, args, kwargs)
    if isinstance(layer, keras.layers.Layer):
        raise unsupported(layer, "no tracing rule for this layer type")
    name = type(layer).__name__
    if name in OP_RULES:
        return OP_RULES[name](context, layer, args, kwargs)
    raise UnsupportedError(
        f"Operation {getattr(layer, 'name', name)!r} ({name}) cannot be compiled: no "
        "tracing rule for this keras.ops operation."
    )


def trace_functional(context, model, inputs):
    """Trace a functional model called on IR values `inputs` (a list)."""
    if isinstance(model, keras.Sequential):
        functional = compat.sequential_functional(model)
        if functional is None:
            return _trace_sequential_layers(context, model, inputs)
        model = functional
    if len(inputs) != len(model.inputs):
        raise unsupported(
            model, f"called with {len(inputs)} inputs, its graph has {len(model.inputs)}"
        )

    def call(operation, *args, **kwargs):
        kwargs.pop("training", None)
        outputs = trace_layer_call(context, operation, args, kwargs)
        _propagate_mask(context, operation, args, kwargs, outputs)
        return outputs

    outputs = compat.run_functional_graph(model, list(inputs), call)
    return keras.tree.flatten(outputs)


def _trace_sequential_layers(context, model, inputs):
    (value,) = inputs
    for layer in model.layers:
        outputs = trace_layer_call(context, layer, (value,), {})
        _propagate_mask(context, layer, (value,), {}, outputs)
        value = outputs
    return keras.tree.flatten(value)


def _propagate_mask(context, operation, args, kwargs, outputs):
    """Masks flow through layers that pass them (Dense, Dropout, Activation, ...)."""
    flat_outputs = keras.tree.flatten(outputs)
    if any(context.mask_of(value) is not None for value in flat_outputs):
        return  # the rule set the mask itself (Masking, Embedding, RNNs)
    if not any(isinstance(operation, cls) for cls in MASK_PASSING):
        return
    first = keras.tree.flatten(args)[0] if args else None
    mask = context.mask_of(first) if first is not None else None
    for value in flat_outputs:
        context.set_mask(value, mask)
