"""Tracing rules for one step of a cell: Keras's SimpleRNNCell/GRUCell/LSTMCell and
StackedRNNCells (their math written in IR, in Keras's order of operations), and our
`RNNCell`s (their step model is traced).

A cell rule takes `(context, cell, args, kwargs)` with `args = (x, states)` as a Keras
cell is called, and returns `(y, [new_states])`.
"""

import keras

from recurrentshop.cells import RNNCell
from rshop_ir.frontends.keras_trace.activations import emit_activation
from rshop_ir.frontends.keras_trace.context import unsupported
from rshop_ir.frontends.keras_trace.walk import layer_rule, trace_functional


def _states(states):
    return list(states) if isinstance(states, (list, tuple)) else [states]


def _split(context, value, parts):
    width = value.shape[-1] // parts
    axis = value.ndim - 1
    return [context.apply("slice", value, axis=axis, start=k * width, stop=(k + 1) * width)
            for k in range(parts)]


def _columns(context, weight, start, stop):
    return context.apply("slice", weight, axis=1, start=start, stop=stop)


def _row(context, weight, index):
    row = context.apply("slice", weight, axis=0, start=index, stop=index + 1)
    return context.apply("squeeze", row, axis=(0,))


@layer_rule(keras.layers.SimpleRNNCell)
def trace_simple_rnn_cell(context, cell, args, kwargs):
    x, states = args[0], _states(args[1] if len(args) > 1 else kwargs["states"])
    value = context.apply("matmul", x, context.param_for(cell.kernel))
    if cell.use_bias:
        value = context.apply("bias_add", value, context.param_for(cell.bias))
    value = context.apply("add", value,
                          context.apply("matmul", states[0],
                                        context.param_for(cell.recurrent_kernel)))
    output = emit_activation(context, cell.activation, value, cell)
    return output, [output]


@layer_rule(keras.layers.LSTMCell)
def trace_lstm_cell(context, cell, args, kwargs):
    x, states = args[0], _states(args[1] if len(args) > 1 else kwargs["states"])
    h, c = states
    z = context.apply("matmul", x, context.param_for(cell.kernel))
    z = context.apply("add", z, context.apply("matmul", h,
                                              context.param_for(cell.recurrent_kernel)))
    if cell.use_bias:
        z = context.apply("bias_add", z, context.param_for(cell.bias))
    z_i, z_f, z_c, z_o = _split(context, z, 4)
    gate = cell.recurrent_activation
    i = emit_activation(context, gate, z_i, cell)
    f = emit_activation(context, gate, z_f, cell)
    candidate = emit_activation(context, cell.activation, z_c, cell)
    c_new = context.apply("add", context.apply("mul", f, c), context.apply("mul", i, candidate))
    o = emit_activation(context, gate, z_o, cell)
    h_new = context.apply("mul", o, emit_activation(context, cell.activation, c_new, cell))
    return h_new, [h_new, c_new]


@layer_rule(keras.layers.GRUCell)
def trace_gru_cell(context, cell, args, kwargs):
    x, states = args[0], _states(args[1] if len(args) > 1 else kwargs["states"])
    h = states[0]
    units = cell.units
    kernel = context.param_for(cell.kernel)
    recurrent_kernel = context.param_for(cell.recurrent_kernel)
    input_bias = recurrent_bias = None
    if cell.use_bias:
        bias = context.param_for(cell.bias)
        if cell.reset_after:
            input_bias, recurrent_bias = _row(context, bias, 0), _row(context, bias, 1)
        else:
            input_bias = bias
    matrix_x = context.apply("matmul", x, kernel)
    if input_bias is not None:
        matrix_x = context.apply("bias_add", matrix_x, input_bias)
    x_z, x_r, x_h = _split(context, matrix_x, 3)
    if cell.reset_after:
        matrix_inner = context.apply("matmul", h, recurrent_kernel)
        if recurrent_bias is not None:
            matrix_inner = context.apply("bias_add", matrix_inner, recurrent_bias)
        recurrent_z, recurrent_r, recurrent_h = _split(context, matrix_inner, 3)
    else:
        matrix_inner = context.apply("matmul", h, _columns(context, recurrent_kernel, 0,
                                                           2 * units))
        recurrent_z, recurrent_r = _split(context, matrix_inner, 2)
    gate = cell.recurrent_activation
    z = emit_activation(context, gate, context.apply("add", x_z, recurrent_z), cell)
    r = emit_activation(context, gate, context.apply("add", x_r, recurrent_r), cell)
    if cell.reset_after:
        recurrent_h = context.apply("mul", r, recurrent_h)
    else:
        recurrent_h = context.apply(
            "matmul", context.apply("mul", r, h),
            _columns(context, recurrent_kernel, 2 * units, 3 * units))
    candidate = emit_activation(context, cell.activation,
                                context.apply("add", x_h, recurrent_h), cell)
    h_new = context.apply("add", context.apply("mul", z, h),
                          context.apply("mul", context.apply("sub", 1.0, z), candidate))
    return h_new, [h_new]


@layer_rule(keras.layers.StackedRNNCells)
def trace_stacked_cells(context, cell, args, kwargs):
    x, states = args[0], _states(args[1] if len(args) > 1 else kwargs["states"])
    new_states = []
    position = 0
    for inner in cell.cells:
        sizes = inner.state_size if isinstance(inner.state_size, (list, tuple)) else [
            inner.state_size]
        inner_states = states[position:position + len(sizes)]
        position += len(sizes)
        from rshop_ir.frontends.keras_trace.walk import trace_layer_call

        x, inner_new = trace_layer_call(context, inner, (x, inner_states), {})
        new_states += _states(inner_new)
    return x, new_states


@layer_rule(RNNCell)
def trace_rnn_cell(context, cell, args, kwargs):
    """Our cells are called as `cell([x, *states])`: trace their step model."""
    if cell.model is None:
        raise unsupported(cell, "the cell is not built")
    if len(args) == 2:  # called the Keras way: cell(x, states)
        inputs = [args[0], *_states(args[1])]
        outputs = trace_functional(context, cell.model, inputs)
        return outputs[0], outputs[1:]
    return trace_functional(context, cell.model, list(args[0]))
