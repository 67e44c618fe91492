"""Walk Keras graphs and layers, dispatching each node to its tracing rule.

`trace_layer_call(context, layer, args, kwargs)` finds the rule for the layer's class
(walking the MRO, so user subclasses of our cells find the `RNNCell` rule) and returns
the IR values of its outputs. Functional models are walked node by node with Keras's own
traversal; masks are propagated beside the values, as Keras does with `_keras_mask`.
"""

import inspect

import keras
import numpy as np

from recurrentshop import compat
from rshop_ir.errors import UnsupportedError
from rshop_ir.ir import HALF_PRECISION, Var
from rshop_ir.frontends.keras_trace.context import unsupported
from rshop_ir.frontends.keras_trace.variable_operators import symbolic_variable_operators

# class -> rule(context, layer, args, kwargs) -> outputs. Filled by the rule modules.
LAYER_RULES = {}
# keras.ops Operation class name -> rule(context, operation, args, kwargs) -> outputs.
OP_RULES = {}


def layer_rule(*classes):
    def register(function):
        for cls in classes:
            LAYER_RULES[cls] = function
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
    """The IR outputs of `layer(*args, **kwargs)`.

    A layer without a rule of its own (a user's Keras cell, a `Lambda`, a custom
    layer) is re-traced: its `call` runs on symbolic inputs, which turns the keras.ops
    it uses into graph nodes, and that graph is walked.
    """
    if isinstance(layer, keras.layers.Layer):
        _refuse_reduced_precision(layer)
        args, kwargs = _cast_to_input_dtype(context, layer, args, kwargs)
    rule = find_layer_rule(layer)
    if rule is not None:
        return rule(context, layer, args, kwargs)
    if isinstance(layer, keras.layers.Layer):
        return retrace_layer_call(context, layer, args, kwargs)
    name = type(layer).__name__
    if name in OP_RULES:
        return OP_RULES[name](context, layer, args, kwargs)
    raise UnsupportedError(
        f"Operation {getattr(layer, 'name', name)!r} ({name}) cannot be compiled: no "
        "tracing rule for this keras.ops operation."
    )


def _refuse_reduced_precision(layer):
    """Raise `UnsupportedError` for a layer computing in float16 or bfloat16 (a mixed
    precision policy such as "mixed_float16"): the kernels compute in float32 or
    float64, and float32 results would not be the numbers Keras gives such a layer
    (its inputs, weights and every intermediate rounded to 16 bits)."""
    dtype = getattr(layer, "compute_dtype", None)
    if dtype in HALF_PRECISION:
        policy = getattr(getattr(layer, "dtype_policy", None), "name", dtype)
        raise UnsupportedError(
            f"Layer {layer.name!r} ({type(layer).__name__}) computes in {dtype} (dtype "
            f"policy {policy!r}); compiled kernels compute in float32 or float64 only. "
            "Build the layer with dtype='float32' (or 'float64') to compile it.")


def _cast_to_input_dtype(context, layer, args, kwargs):
    """`args` and `kwargs` with their float Vars cast to the layer's input dtype, as a
    Keras layer casts its float inputs when it is called (`autocast`: a float64 input
    of a float32 Dense is computed in float32)."""
    dtype = getattr(layer, "input_dtype", None)
    if dtype not in ("float32", "float64") or not getattr(layer, "autocast", True) \
            or not getattr(layer, "_convert_input_args", True):
        return args, kwargs

    def cast(value):
        if isinstance(value, Var) and value.dtype in ("float16", "float32", "float64") \
                and value.dtype != dtype:
            return context.apply("cast", value, dtype=dtype)
        return value

    return keras.tree.map_structure(cast, args), keras.tree.map_structure(cast, kwargs)


def retrace_layer_call(context, layer, args, kwargs=None):
    """Trace `layer.call(*args, **kwargs)` by calling it on KerasTensors standing for
    the IR values among `args` and `kwargs` (a `mask=` Keras gave the call included:
    a masked global pooling or attention layer computes with it), each argument
    carrying its mask as Keras's tensors do."""
    kwargs = {name: value for name, value in (kwargs or {}).items() if name != "training"}
    arguments = [value for value in keras.tree.flatten(args) if isinstance(value, Var)]
    carried = {id(value): context.mask_of(value) for value in arguments
               if context.mask_of(value) is not None}
    values = list({id(value): value for value in keras.tree.flatten((args, kwargs))
                   + list(carried.values()) if isinstance(value, Var)}.values())
    placeholders = {
        id(value): keras.Input(batch_shape=tuple(None if isinstance(d, str) else d
                                                 for d in value.shape), dtype=value.dtype)
        for value in values
    }
    # The arguments carry their masks, as Keras's tensors do (MultiHeadAttention reads
    # its query's mask from the query itself).
    for key, mask in carried.items():
        placeholders[key]._keras_mask = placeholders[id(mask)]

    def symbolic(item):
        return placeholders.get(id(item), item) if isinstance(item, Var) else item

    symbolic_args = keras.tree.map_structure(symbolic, args)
    symbolic_kwargs = keras.tree.map_structure(symbolic, kwargs)
    inputs = [placeholders[id(value)] for value in values]
    if getattr(layer, "_call_has_training_arg", False):
        symbolic_kwargs["training"] = False

    def build_graph():
        with symbolic_variable_operators():   # `self.weight * inputs` traces too
            symbolic_outputs = layer.call(*symbolic_args, **symbolic_kwargs)
        flat_outputs = keras.tree.flatten(symbolic_outputs)
        output_masks = _output_masks(layer, symbolic_args, symbolic_kwargs, len(flat_outputs))
        graph = keras.Model(inputs, flat_outputs + [mask for mask in output_masks
                                                    if mask is not None])
        return symbolic_outputs, flat_outputs, output_masks, graph

    reads = _ReadsRecorder()
    try:
        with reads:
            symbolic_outputs, flat_outputs, output_masks, graph = build_graph()
    except UnsupportedError:
        raise
    except Exception as error:  # the call used something other than keras.ops
        raise unsupported(layer, "its call() cannot be traced through keras.ops "
                                 f"({type(error).__name__}: {error})") from None
    try:
        traced = trace_functional(context, graph, values)
    except UnsupportedError as error:
        raise unsupported(layer, str(error)) from None
    _refuse_captured_weights(layer, graph, lambda: build_graph()[3], reads.variables)
    outputs, traced_masks = traced[:len(flat_outputs)], iter(traced[len(flat_outputs):])
    for output, mask in zip(outputs, output_masks):
        if mask is not None:
            context.set_mask(output, next(traced_masks))
    return keras.tree.pack_sequence_as(symbolic_outputs, outputs)


def _output_masks(layer, symbolic_args, symbolic_kwargs, count):
    """The masks of a re-traced layer's outputs that its own `compute_mask` gives
    (Attention: its query's mask), as KerasTensors or None, one per output; all None
    where Keras's default rule applies instead (`_propagate_mask`)."""
    mask = symbolic_kwargs.get("mask")
    if mask is None or not getattr(layer, "supports_masking", False) \
            or type(layer).compute_mask is keras.layers.Layer.compute_mask:
        return [None] * count
    first = symbolic_args[0] if symbolic_args else None
    masks = keras.tree.flatten(layer.compute_mask(first, mask))
    return (masks + [None] * count)[:count]


class _ReadsRecorder(keras.StatelessScope):
    """A stateless scope (no weight changes in it, thread-local) that notes every Keras
    variable whose value is read in it, each once: `variables`, id -> variable. Keras
    reads a variable's value through the scope whenever it computes with it."""

    def __init__(self, state_mapping=None):
        super().__init__(state_mapping=state_mapping)
        self.variables = {}

    def get_current_value(self, variable):
        self.variables.setdefault(id(variable), variable)
        return super().get_current_value(variable)


def values_read_in(function):
    """`function()` and the float Keras variables whose values it read (a list)."""
    with _ReadsRecorder() as reads:
        result = function()
    return result, [variable for variable in reads.variables.values()
                    if np.issubdtype(np.dtype(variable.dtype), np.floating)]


def _refuse_captured_weights(layer, graph, rebuild_graph, read):
    """Raise `UnsupportedError` when the re-traced `graph` of `layer` holds the value of
    a weight as a constant: its call() computed with the weight outside the graph (say
    `ops.reshape(self.bias, ...)` or `ops.sum(other_layer.kernel)`, run at once on the
    variable's value), and the compiled program would keep that value after the weight
    changed. A weight used through keras.ops on the call's inputs is a graph node
    argument (a param); that is fine.

    The suspects are the float variables whose value the call read (`read`, id ->
    variable) and the layer's own float weights. The graph is traced again with every
    suspect given other values, in a stateless scope (the variables themselves are not
    touched): its constants stay the same only when they hold none of the values."""
    constants = _graph_constants(graph)
    if not constants:
        return
    suspects = dict(read)
    if isinstance(layer, keras.layers.Layer):
        suspects.update((id(variable), variable) for variable in layer.weights)
    suspects = [variable for variable in suspects.values()
                if np.issubdtype(np.dtype(variable.dtype), np.floating)]
    if not suspects or not _constants_follow(suspects, constants, rebuild_graph):
        return
    named = [variable for variable in suspects
             if _constants_follow([variable], constants, rebuild_graph)] or suspects
    paths = ", ".join(repr(variable.path) for variable in named)
    raise unsupported(
        layer, f"its call() computes with the weight(s) {paths} other than through keras.ops "
               "on its inputs (the value would be compiled in as a constant, and a changed "
               "weight missed); give the layer a tracing rule or compute with the variable "
               "itself")


def _constants_follow(variables, constants, rebuild_graph) -> bool:
    """Whether the constants of the graph `rebuild_graph()` traces change when
    `variables` hold other values (each v as 0.3 - 1.7 v: every value and every sign
    changes but that of 0.3 / 2.7)."""
    mapping = [(variable, (0.3 - 1.7 * np.asarray(variable.numpy()))
                .astype(np.dtype(variable.dtype))) for variable in variables]
    try:
        with _ReadsRecorder(mapping):
            changed = _graph_constants(rebuild_graph())
    except Exception:  # noqa: BLE001 - a call failing on other values computes with them
        return True
    return len(changed) != len(constants) or not all(
        first.shape == second.shape and first.dtype == second.dtype
        and np.array_equal(first, second, equal_nan=first.dtype.kind in "fc")
        for first, second in zip(constants, changed))


def _graph_constants(graph):
    """The concrete arrays and numbers the nodes of a traced functional `graph` are
    called with, in node order (the values `_ir_argument` turns into constants)."""
    constants = []
    for node in compat.functional_nodes(graph):
        for item in keras.tree.flatten((node.arguments.args, node.arguments.kwargs)):
            if isinstance(item, (keras.KerasTensor, keras.Variable, Var)):
                continue
            if isinstance(item, (bool, int, float)) or (
                    hasattr(item, "shape") and hasattr(item, "dtype")):
                constants.append(np.asarray(item))
    return constants


def _ir_argument(context, item):
    """Keras variables used by keras.ops nodes become params; concrete arrays in the
    graph (e.g. `ops.ones((4, 3))`) become constants."""
    if isinstance(item, keras.Variable):
        return context.param_for(item)
    if hasattr(item, "shape") and hasattr(item, "dtype") and not isinstance(
            item, (Var, keras.KerasTensor)):
        array = np.asarray(item)
        if array.ndim == 0:
            return array.item()
        return context.constant(array)
    return item


def _parameters_for_variables(context, structure):
    return keras.tree.map_structure(lambda item: _ir_argument(context, item), structure)


def trace_functional(context, model, inputs, nested=False):
    """Trace a functional model called on IR values `inputs` (a list); its outputs,
    flat, or as the model nests them if `nested`."""
    if isinstance(model, keras.Sequential):
        functional = compat.sequential_functional(model)
        if functional is None:
            return _trace_sequential_layers(context, model, inputs, nested)
        model = functional
    if len(inputs) != len(model.inputs):
        raise unsupported(
            model, f"called with {len(inputs)} inputs, its graph has {len(model.inputs)}"
        )

    def call(operation, *args, **kwargs):
        kwargs.pop("training", None)
        args = _parameters_for_variables(context, args)
        kwargs = _parameters_for_variables(context, kwargs)
        kwargs = _call_masks(context, operation, args, kwargs)
        outputs = trace_layer_call(context, operation, args, kwargs)
        _propagate_mask(context, operation, args, kwargs, outputs)
        return outputs

    outputs = compat.run_functional_graph(model, list(inputs), call)
    return outputs if nested else keras.tree.flatten(outputs)


def _trace_sequential_layers(context, model, inputs, nested=False):
    (value,) = inputs
    for layer in model.layers:
        kwargs = _call_masks(context, layer, (value,), {})
        outputs = trace_layer_call(context, layer, (value,), kwargs)
        _propagate_mask(context, layer, (value,), kwargs, outputs)
        value = outputs
    return value if nested else keras.tree.flatten(value)


def _call_masks(context, operation, args, kwargs):
    """`kwargs` with the masks Keras's `Layer.__call__` gives the call from its inputs'
    masks where the caller gave none (a functional node does not always record them:
    Attention's `mask=[query mask, value mask]`): `mask=` for a call of one tensor
    argument, `<name>_mask=` for each tensor argument `<name>` of a call of several."""
    if not isinstance(operation, keras.layers.Layer):
        return kwargs
    try:
        signature = inspect.signature(operation.call)
        arguments = signature.bind_partial(*args, **kwargs).arguments
    except (TypeError, ValueError):
        return kwargs
    tensors = {name: value for name, value in arguments.items()
               if not name.endswith("mask")
               and any(isinstance(item, Var) for item in keras.tree.flatten(value))}
    wanted = ({"mask": next(iter(tensors.values()))} if len(tensors) == 1 else
              {f"{name}_mask": value for name, value in tensors.items()})
    for name, value in wanted.items():
        if name not in signature.parameters or arguments.get(name) is not None:
            continue
        masks = keras.tree.map_structure(
            lambda item: context.mask_of(item) if isinstance(item, Var) else None, value)
        if any(mask is not None for mask in keras.tree.flatten(masks)):
            kwargs = {**kwargs, name: masks}
    return kwargs


def _propagate_mask(context, operation, args, kwargs, outputs):
    """The masks of a layer's outputs where its rule set none, by Keras's own rule
    (`Layer.__call__`): a layer that supports masking and keeps the default
    `compute_mask` passes on the mask it was called with (its `mask=` argument, else
    its first input's); any other layer's outputs carry the masks its rule set
    (Embedding, Masking, the recurrent layers, the merges) or none (Reshape, a Lambda,
    a global pooling: Keras drops the mask there too)."""
    flat_outputs = keras.tree.flatten(outputs)
    if any(context.mask_of(value) is not None for value in flat_outputs):
        return
    if not isinstance(operation, keras.layers.Layer) or not operation.supports_masking \
            or type(operation).compute_mask is not keras.layers.Layer.compute_mask:
        return
    previous = kwargs.get("mask")
    if previous is None and args:
        previous = keras.tree.map_structure(
            lambda item: context.mask_of(item) if isinstance(item, Var) else None, args[0])
    for value, mask in zip(flat_outputs, keras.tree.flatten(previous)):
        context.set_mask(value, mask)