"""Tracing rules for recurrent layers: each becomes one `scan` whose body is the step.

Covers our `RecurrentModel` / `RecurrentSequential` (the step model is traced), Keras's
`RNN` layers (`SimpleRNN`, `GRU`, `LSTM`, `RNN(cell)`; the cell rule is the step) and
`Bidirectional`. Inference semantics: teacher forcing feeds the model's own output, and
dropout is the identity.
"""

import keras
import numpy as np

from recurrentshop.recurrent_model import RecurrentModel
from rshop_ir.frontends.keras_trace.context import unsupported
from rshop_ir.frontends.keras_trace.walk import (layer_rule, trace_functional, trace_layer_call,
                                                 values_read_in)


class StepSignature:
    """What one step of a recurrent layer reads and returns."""

    def __init__(self, step_shape, state_shapes, output_shape, readout, decode, length):
        self.step_shape = tuple(step_shape)
        self.state_shapes = [tuple(s) for s in state_shapes]
        self.output_shape = tuple(output_shape)
        self.readout = readout
        self.decode = decode
        self.length = length


def step_dtype(context, layer) -> str:
    """The float dtype a recurrent layer's step computes in: the layer's compute dtype
    (a float64 model's layers are float64; `trace_layer_call` casts the layer's float
    inputs to it, as Keras does), else the trace's."""
    compute = getattr(layer, "compute_dtype", None)
    return compute if compute in ("float32", "float64") else context.float_dtype


def default_state(context, shape, value=0.0, dtype=None):
    """A state filled with `value`, batch dimension symbolic."""
    return context.apply("fill", shape=("B", *shape), value=float(value),
                         dtype=dtype or context.float_dtype)


def emit_scan(context, layer, signature, x, step_function, initial_states, initial_readout,
              mask, go_backwards, return_sequences):
    """Traces the step in a child context and emits the scan; returns (y, finals)."""
    body = context.child()
    dtype = step_dtype(context, layer)   # its float inputs are cast to it (walk.py)
    if signature.decode:
        sequences = []
    else:
        sequences = [x]
        step_x = body.builder.input(dtype, ("B", *signature.step_shape), name="x_t")
    states = [body.builder.input(dtype, ("B", *shape), name=f"state/{k}")
              for k, shape in enumerate(signature.state_shapes)]
    readout = None
    if signature.readout:
        readout = body.builder.input(dtype, ("B", *signature.output_shape), name="readout")
    if signature.decode:
        step_x = body.constant_input(x, name="x")
    output, new_states = step_function(body, step_x, states, readout)
    if len(new_states) != len(states):
        raise unsupported(layer, f"the step returns {len(new_states)} states for "
                                 f"{len(states)} inputs")
    for k, (state, new_state) in enumerate(zip(states, new_states)):
        if getattr(new_state, "dtype", state.dtype) != state.dtype:
            raise unsupported(layer, f"its step returns state {k} as {new_state.dtype} for a "
                                     f"{state.dtype} state (the layer computes in "
                                     f"{dtype}, its step model in another dtype)")
    body_program = body.builder.build([output, *new_states])
    try:
        results = context.builder.scan(
            body_program,
            sequences=sequences,
            states=initial_states,
            readout=initial_readout if signature.readout else None,
            constants=body.outer_constants,
            mask=mask,
            go_backwards=bool(go_backwards),
            return_sequences=bool(return_sequences),
            length=signature.length if signature.decode else None,
        )
    except ValueError as error:     # types the scan cannot take: Keras runs the layer
        raise unsupported(layer, f"its step does not fit a scan ({error})") from None
    return results[0], list(results[1:])


def _layer_outputs(context, layer, output, finals, mask, return_states):
    """A recurrent layer's result; the mask follows a returned sequence, as in Keras.
    With its states: a list `[output, *final_states]` from our layers (SPEC), a tuple
    `(output, *states)` from Keras's, as each returns it."""
    if layer.return_sequences and mask is not None:
        context.set_mask(output, mask)
    if not return_states:
        return output
    if isinstance(layer, keras.layers.RNN):
        return (output, *finals)
    return [output, *finals]


def _initial_values(context, layer, signature, initial_state, initial_readout, fills):
    if initial_state is not None:
        states = list(initial_state) if isinstance(initial_state, (list, tuple)) else [
            initial_state]
        if len(states) != len(signature.state_shapes):
            raise unsupported(layer, f"{len(states)} initial states for "
                                     f"{len(signature.state_shapes)} states")
    else:
        dtype = step_dtype(context, layer)
        states = [default_state(context, shape, value, dtype)
                  for shape, value in zip(signature.state_shapes, fills)]
    readout = None
    if signature.readout:
        readout = (initial_readout if initial_readout is not None
                   else default_state(context, signature.output_shape,
                                      dtype=step_dtype(context, layer)))
    return states, readout


def state_fill_values(layer):
    """The constant each state starts from; random initializers cannot be compiled."""
    if not isinstance(layer, RecurrentModel):
        return keras_cell_fill_values(layer)
    values = []
    for initializer in layer._state_initializers:
        name = type(initializer).__name__
        if name == "Zeros":
            values.append(0.0)
        elif name == "Ones":
            values.append(1.0)
        elif name == "Constant":
            values.append(_one_constant(layer, initializer.value,
                                        "a Constant state_initializer"))
        else:
            raise unsupported(layer, f"state_initializer {name} (only constant initial "
                                     "states can be compiled)")
    return values


def keras_cell_fill_values(layer):
    """The constant each state of a `keras.layers.RNN` starts from: what its cell's
    `get_initial_state` gives (zeros for Keras's cells; a user's cell may return
    other constants), computed here once. One that reads a weight (a learned
    initial state) or differs between units cannot be compiled."""
    count = len(_keras_state_sizes(layer.cell))
    make = getattr(layer.cell, "get_initial_state", None)
    if make is None:
        return [0.0] * count
    try:
        states, read = values_read_in(lambda: make(batch_size=2))
    except Exception as error:  # noqa: BLE001 - a cell that cannot make them eagerly
        raise unsupported(layer, f"its cell's get_initial_state failed on its own "
                                 f"({type(error).__name__}: {error})") from None
    if read:
        raise unsupported(layer, "its cell's get_initial_state reads a weight (a learned "
                                 "initial state); pass initial_state= to compile it")
    states = keras.tree.flatten(states)
    if len(states) != count:
        raise unsupported(layer, f"its cell's get_initial_state gives {len(states)} "
                                 f"states for {count}")
    return [_one_constant(layer, state, "the cell's get_initial_state") for state in states]


def _one_constant(layer, value, what):
    """`value` (an array or a number) as the one float all its elements equal."""
    array = np.asarray(keras.ops.convert_to_numpy(value), dtype=np.float64)
    if array.size == 0 or not np.all((array == array.flat[0])
                                     | (np.isnan(array) & np.isnan(array.flat[0]))):
        raise unsupported(layer, f"{what} gives a state whose elements differ (only one "
                                 "constant per state can be compiled; pass initial_state= "
                                 "instead)")
    return float(array.flat[0])


def recurrent_model_signature(layer):
    return StepSignature(layer.step_input_shape, layer.state_shapes,
                         layer.output_shape_per_step, layer.readout, layer.decode,
                         layer.output_length)


@layer_rule(RecurrentModel)
def trace_recurrent_model(context, layer, args, kwargs, initial_state=None,
                          initial_readout=None):
    if layer.stateful:
        raise unsupported(layer, "stateful=True inside a traced model")
    x = args[0]
    initial_state = kwargs.get("initial_state", initial_state)
    initial_readout = kwargs.get("initial_readout", initial_readout)
    signature = recurrent_model_signature(layer)
    states, readout = _initial_values(context, layer, signature, initial_state,
                                      initial_readout, state_fill_values(layer))
    mask = None if layer.decode else kwargs.get("mask")

    def step(body, step_x, step_states, step_readout):
        inputs = [step_x, *step_states] + ([step_readout] if layer.readout else [])
        outputs = trace_functional(body, layer.model, inputs)
        return outputs[0], outputs[1:]

    output, finals = emit_scan(context, layer, signature, x, step, states, readout, mask,
                               layer.go_backwards, layer.return_sequences)
    return _layer_outputs(context, layer, output, finals, mask, layer.return_states)


def _keras_state_sizes(cell):
    """[(units,)] per state of a Keras cell; `UnsupportedError` for a cell whose states
    are not vectors of a known size (a convolutional LSTM's: `state_size = -1`)."""
    size = cell.state_size
    sizes = list(size) if isinstance(size, (list, tuple)) else [size]
    flat = []
    for item in sizes:
        flat += list(item) if isinstance(item, (list, tuple)) else [item]
    if not flat or not all(isinstance(s, (int, np.integer)) and s > 0 for s in flat):
        raise unsupported(cell, f"its state_size {size!r} is not a size (or list of sizes) "
                                "of vector states")
    return [(int(s),) for s in flat]


@layer_rule(keras.layers.RNN)
def trace_keras_rnn(context, layer, args, kwargs, initial_state=None):
    if layer.stateful:
        raise unsupported(layer, "stateful=True inside a traced model")
    x = args[0]
    initial_state = kwargs.get("initial_state", initial_state)
    cell = layer.cell
    state_shapes = _keras_state_sizes(cell)
    output_size = getattr(cell, "output_size", None) or state_shapes[0][0]
    signature = StepSignature(tuple(x.shape[2:]), state_shapes, (int(output_size),),
                              False, False, None)
    states, _ = _initial_values(context, layer, signature, initial_state, None,
                                keras_cell_fill_values(layer) if initial_state is None
                                else [0.0] * len(state_shapes))
    mask = kwargs.get("mask")

    def step(body, step_x, step_states, _readout):
        output, new_states = trace_layer_call(body, cell, (step_x, step_states), {})
        new_states = list(new_states) if isinstance(new_states, (list, tuple)) else [
            new_states]
        return output, keras.tree.flatten(new_states)

    output, finals = emit_scan(context, layer, signature, x, step, states, None, mask,
                               layer.go_backwards, layer.return_sequences)
    if mask is not None and layer.zero_output_for_mask:
        output = _zero_masked_outputs(context, output, mask, layer.go_backwards,
                                      layer.return_sequences)
    if layer.return_state:
        finals = _nested_like_keras(layer, finals)
    return _layer_outputs(context, layer, output, finals, mask, layer.return_state)


def _nested_like_keras(layer, finals):
    """The final states nested as `layer(x, return_state=True)` returns them after
    the output: like the layer's initial states (Keras carries their structure through
    the loop), so `RNN(StackedRNNCells([LSTMCell, GRUCell]))` gives `[h, c], [h]`
    where one cell's states are flat."""
    template = layer.get_initial_state(batch_size=1)
    if not keras.tree.is_nested(template):
        template = [template]
    template = list(template)
    if len(keras.tree.flatten(template)) != len(finals):
        return finals
    return keras.tree.pack_sequence_as(template, list(finals))


def _zero_masked_outputs(context, output, mask, go_backwards, return_sequences):
    """`zero_output_for_mask=True` (Bidirectional sets it on its layers when they
    return sequences): Keras's loop outputs zeros at masked steps instead of the
    previous output, and the last output is the last processed step's. The outputs
    come in processing order, reversed time for `go_backwards`."""
    in_order = context.apply("reverse", mask, axis=1) if go_backwards else mask
    if return_sequences:
        kept = context.apply("expand_dims", in_order, axis=2)
    else:   # the last processed step: first of the order reversed (any length)
        kept = context.apply("slice", context.apply("reverse", in_order, axis=1),
                             axis=1, start=0, stop=1)
    return context.apply("where", kept, output, 0.0)


@layer_rule(keras.layers.Bidirectional)
def trace_bidirectional(context, layer, args, kwargs):
    """Both directions, merged as Keras merges them; with `return_state`, Keras's
    `(output, *forward states, *backward states)` (`merge_mode=None`: both outputs
    first), each direction's states nested as that layer returns them."""
    if layer.stateful:
        raise unsupported(layer, "Bidirectional with stateful=True")
    if kwargs.get("initial_state") is not None:
        raise unsupported(layer, "Bidirectional with an initial_state")
    x = args[0]
    mask = kwargs.get("mask")
    inner_kwargs = {"mask": mask} if mask is not None else {}
    forward = trace_layer_call(context, layer.forward_layer, (x,), dict(inner_kwargs))
    backward = trace_layer_call(context, layer.backward_layer, (x,), dict(inner_kwargs))
    states = ()
    if layer.return_state:
        states = (*forward[1:], *backward[1:])
        forward, backward = forward[0], backward[0]
    if layer.return_sequences:
        backward = context.apply("reverse", backward, axis=1)
    mode = layer.merge_mode
    if mode == "concat":
        output = context.apply("concatenate", forward, backward, axis=forward.ndim - 1)
    elif mode == "sum":
        output = context.apply("add", forward, backward)
    elif mode == "mul":
        output = context.apply("mul", forward, backward)
    elif mode == "ave":
        output = context.apply("mul", context.apply("add", forward, backward), 0.5)
    elif mode is None:                  # both directions, unmerged
        output = (forward, backward)
    else:
        raise unsupported(layer, f"merge_mode={mode!r}")
    if layer.return_sequences and mask is not None:
        for one in keras.tree.flatten(output):
            context.set_mask(one, mask)
    if layer.return_state:
        return output + states if mode is None else (output,) + states
    return output
