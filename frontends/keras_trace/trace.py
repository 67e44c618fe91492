"""The entry point of the tracer: a layer or a model in, a bound IR program out."""

from dataclasses import dataclass

import keras
import numpy as np

from recurrentshop import compat
from recurrentshop.recurrent_model import RecurrentModel
from rshop_ir.bound import BoundProgram
from rshop_ir.errors import UnsupportedError
from rshop_ir.frontends.keras_trace.context import TraceContext, unsupported
from rshop_ir.frontends.keras_trace.recurrent_rules import (
    recurrent_model_signature,
    state_fill_values,
)
from rshop_ir.frontends.keras_trace.walk import trace_functional, trace_layer_call
from rshop_ir.ir import HALF_PRECISION
from rshop_ir.output_structure import structure_of


@dataclass(frozen=True)
class TraceResult:
    """A traced program with its weights, and the Keras variable behind each weight."""

    bound: BoundProgram
    variables: dict  # param name -> keras.Variable

    def current_weights(self):
        return {name: np.asarray(variable.numpy()) for name, variable in self.variables.items()}


def trace(target):
    """Trace a recurrent layer or a Keras model into a `BoundProgram` (unoptimised)."""
    return trace_with_variables(target).bound


def trace_with_variables(target):
    if isinstance(target, keras.Model) and not isinstance(target, RecurrentModel):
        context = _trace_model(target)
    elif isinstance(target, (RecurrentModel, keras.layers.RNN, keras.layers.Bidirectional)):
        context = _trace_recurrent_layer(target)
    elif isinstance(target, keras.layers.Layer):
        raise unsupported(target, "rshop_ir traces recurrent layers (RecurrentModel, "
                                  "RecurrentSequential, keras.layers.SimpleRNN/GRU/LSTM/RNN, "
                                  "Bidirectional) and Keras models")
    else:
        raise TypeError(f"rshop_ir.trace expects a Keras layer or model; received "
                        f"{type(target).__name__}.")
    program, variables = context
    weights = {name: np.asarray(variables[name].numpy()) for name in program.param_names}
    return TraceResult(BoundProgram(program, weights), dict(variables))


def _symbolic_shape(shape, what):
    dims = []
    for position, dim in enumerate(shape):
        if position == 0:
            dims.append("B")
        elif dim is None and position == 1:
            dims.append("T")
        elif dim is None:
            raise UnsupportedError(f"{what} has an unknown dimension at axis {position}: "
                                   f"{tuple(shape)}; only the batch and time axes may be "
                                   "unknown.")
        else:
            dims.append(int(dim))
    return tuple(dims)


def _trace_model(model):
    if not model.built or not getattr(model, "inputs", None):
        raise ValueError(f"Model {model.name!r} must be built (called on inputs) before "
                         "tracing.")
    context = TraceContext()
    inputs = []
    for index, tensor in enumerate(model.inputs):
        dtype = _program_input_dtype(tensor.dtype)
        name = "x" if len(model.inputs) == 1 else f"x/{index}"
        inputs.append(context.builder.input(dtype, _symbolic_shape(tensor.shape,
                                                                    f"Input {index}"),
                                            name=name))
    outputs = trace_functional(context, model, inputs, nested=True)
    return _build_nested(context.builder, outputs), context.variables_by_name


def _program_input_dtype(dtype) -> str:
    """The program's dtype for a model input of `dtype`: float32 for a 16-bit float (the
    output of a mixed-precision part run in Keras before a compiled one). Widening is
    exact, and no traced op computes on the value before a layer casts it to its own
    float32 or float64 (a layer computing in 16 bits is refused, walk.py), so the
    results are Keras's; the runtime casts the 16-bit array it is given."""
    name = str(getattr(dtype, "name", dtype))
    if name in HALF_PRECISION:
        return "float32"
    return np.dtype(dtype).name


def _layer_signature(layer):
    """(step input shape, [state shapes], readout output shape or None, decode)."""
    if isinstance(layer, RecurrentModel):
        if layer.model is None:
            raise ValueError(f"Layer {layer.name!r} must be built (called on inputs) before "
                             "tracing.")
        signature = recurrent_model_signature(layer)
        return (signature.step_shape, signature.state_shapes,
                signature.output_shape if signature.readout else None, signature.decode)
    if isinstance(layer, keras.layers.Bidirectional):
        step, _, _, _ = _layer_signature(layer.forward_layer)
        return step, [], None, False
    cell = layer.cell
    if not cell.built:
        raise ValueError(f"Layer {layer.name!r} must be built (called on inputs) before "
                         "tracing.")
    from rshop_ir.frontends.keras_trace.recurrent_rules import _keras_state_sizes

    built_shape = compat.built_input_shape(layer)
    if built_shape is None:
        raise unsupported(layer, "its step input shape is unknown (call it once first)")
    step_shape = tuple(built_shape[2:])
    return step_shape, _keras_state_sizes(cell), None, False


def _trace_recurrent_layer(layer):
    """Inputs: x, then one optional input per initial state and the initial readout,
    in the layer's compute dtype (float64 for `dtype="float64"`, else float32)."""
    float_dtype = "float64" if getattr(layer, "compute_dtype", None) == "float64" \
        else "float32"
    context = TraceContext(float_dtype=float_dtype)
    builder = context.builder
    step_shape, state_shapes, readout_shape, decode = _layer_signature(layer)
    x_shape = ("B", *step_shape) if decode else ("B", "T", *step_shape)
    x = builder.input(context.float_dtype, x_shape, name="x")
    fills = (state_fill_values(layer) if isinstance(layer, (RecurrentModel, keras.layers.RNN))
             else [0.0] * len(state_shapes))
    states = [builder.input(context.float_dtype, ("B", *shape), name=f"initial_state/{k}",
                            default=value)
              for k, (shape, value) in enumerate(zip(state_shapes, fills))]
    kwargs = {}
    if states:
        kwargs["initial_state"] = states
    if readout_shape is not None:
        kwargs["initial_readout"] = builder.input(context.float_dtype, ("B", *readout_shape),
                                                  name="initial_readout", default=0.0)
    if getattr(layer, "stateful", False):
        raise unsupported(layer, "stateful layers cannot be compiled yet")
    outputs = trace_layer_call(context, layer, (x,), kwargs)
    return _build_nested(builder, outputs), context.variables_by_name


def _build_nested(builder, outputs):
    """The program returning `outputs` flat, nested as the Keras call returns them."""
    structure = structure_of(outputs)
    return builder.build(keras.tree.flatten(outputs), output_structure=structure)
