"""Hand-built reference programs: small RNNs written directly in the IR.

Used by the tests, the docs and anyone checking a pass or a kernel without Keras:

    program = lstm_program(input_size=3, units=4)
    weights = random_weights(program, seed=0)
    y = rshop_ir.interpret(program, x, h0, c0, weights=weights)

`lstm_program` writes each gate with its own weights (Wi, Wf, Wc, Wo; gate order i, f,
c, o as Keras), the form that GEMM merging and hoisting turn into one input GEMM over
the whole sequence plus one recurrent GEMM per step.
"""

from __future__ import annotations

import numpy as np

from rshop_ir.builder import ProgramBuilder
from rshop_ir.ir import Program

GATES = "ifco"


def lstm_step_body(input_size: int, units: int, dtype: str = "float32") -> Program:
    """One LSTM step: inputs [x_t, h, c, W_i..o, U_i..o, b_i..o], outputs [h', h', c']."""
    body = ProgramBuilder()
    x = body.input(dtype, ("B", input_size), name="x_t")
    h = body.input(dtype, ("B", units), name="h")
    c = body.input(dtype, ("B", units), name="c")
    kernels = [body.input(dtype, (input_size, units), name=f"W{g}") for g in GATES]
    recurrent = [body.input(dtype, (units, units), name=f"U{g}") for g in GATES]
    biases = [body.input(dtype, (units,), name=f"b{g}") for g in GATES]
    pre = []
    for kernel, recurrent_kernel, bias in zip(kernels, recurrent, biases):
        total = body.apply("add", body.apply("matmul", x, kernel),
                           body.apply("matmul", h, recurrent_kernel))
        pre.append(body.apply("bias_add", total, bias))
    input_gate = body.apply("sigmoid", pre[0])
    forget_gate = body.apply("sigmoid", pre[1])
    candidate = body.apply("tanh", pre[2])
    output_gate = body.apply("sigmoid", pre[3])
    new_c = body.apply("add", body.apply("mul", forget_gate, c),
                       body.apply("mul", input_gate, candidate))
    new_h = body.apply("mul", output_gate, body.apply("tanh", new_c))
    return body.build([new_h, new_h, new_c])


def lstm_program(input_size: int = 3, units: int = 4, dtype: str = "float32",
                 return_sequences: bool = False, go_backwards: bool = False,
                 masked: bool = False) -> Program:
    """An LSTM layer: inputs [x (B,T,I), initial_state/0 h0, initial_state/1 c0];
    outputs [y, h_T, c_T]; params "lstm/W{g}", "lstm/U{g}", "lstm/b{g}"."""
    builder = ProgramBuilder()
    x = builder.input(dtype, ("B", "T", input_size), name="x")
    h0 = builder.input(dtype, ("B", units), name="initial_state/0", default=0.0)
    c0 = builder.input(dtype, ("B", units), name="initial_state/1", default=0.0)
    mask = builder.input("bool", ("B", "T"), name="mask") if masked else None
    weights = [builder.param(f"lstm/W{g}", dtype, (input_size, units)) for g in GATES]
    weights += [builder.param(f"lstm/U{g}", dtype, (units, units)) for g in GATES]
    weights += [builder.param(f"lstm/b{g}", dtype, (units,)) for g in GATES]
    outputs = builder.scan(lstm_step_body(input_size, units, dtype), sequences=[x],
                           states=[h0, c0], constants=weights, mask=mask,
                           return_sequences=return_sequences, go_backwards=go_backwards)
    return builder.build(outputs)


def random_weights(program: Program, seed: int = 0, scale: float = 0.5) -> dict:
    """Random weights for every param of `program` (normal, times `scale`)."""
    rng = np.random.default_rng(seed)
    return {name: (scale * rng.standard_normal(var.shape)).astype(var.dtype)
            for name, var in program.params}


def random_inputs(program: Program, batch: int = 3, steps: int = 5, seed: int = 0) -> list:
    """Random arrays for every input of `program`, with "B" = batch and "T" = steps
    (bools at random, ints in [0, 5), floats standard normal)."""
    rng = np.random.default_rng(seed)
    sizes = {"B": batch, "T": steps}
    arrays = []
    for var in program.inputs:
        shape = tuple(sizes.get(dim, dim) for dim in var.shape)
        kind = np.dtype(var.dtype).kind
        if kind == "b":
            arrays.append(rng.random(shape) < 0.7)
        elif kind in "iu":
            arrays.append(rng.integers(0, 5, shape).astype(var.dtype))
        else:
            arrays.append(rng.standard_normal(shape).astype(var.dtype))
    return arrays


def readout_program(input_size: int = 4, units: int = 5, dtype: str = "float64",
                    masked: bool = False, return_sequences: bool = True) -> Program:
    """A scan with a readout: y_t = tanh(x_t @ W + y_{t-1} @ R + s); s' = s + y_t.
    Inputs [x, initial_state/0 s0, initial_readout r0, (mask)]; params "W", "R"."""
    body = ProgramBuilder()
    x = body.input(dtype, ("B", input_size), name="x_t")
    state = body.input(dtype, ("B", units), name="s")
    previous = body.input(dtype, ("B", units), name="readout")
    kernel = body.input(dtype, (input_size, units), name="W")
    readout_kernel = body.input(dtype, (units, units), name="R")
    total = body.apply("add", body.apply("matmul", x, kernel),
                       body.apply("matmul", previous, readout_kernel))
    y = body.apply("tanh", body.apply("add", total, state))
    new_state = body.apply("add", state, y)
    builder = ProgramBuilder()
    xs = builder.input(dtype, ("B", "T", input_size), name="x")
    s0 = builder.input(dtype, ("B", units), name="initial_state/0", default=0.0)
    r0 = builder.input(dtype, ("B", units), name="initial_readout", default=0.0)
    mask = builder.input("bool", ("B", "T"), name="mask") if masked else None
    w = builder.param("W", dtype, (input_size, units))
    r = builder.param("R", dtype, (units, units))
    outputs = builder.scan(body.build([y, new_state]), sequences=[xs], states=[s0],
                           readout=r0, constants=[w, r], mask=mask,
                           return_sequences=return_sequences)
    return builder.build(outputs)


def decoder_program(input_size: int = 4, units: int = 5, length: int = 4,
                    dtype: str = "float64") -> Program:
    """A decoder: no sequences; the encoded input (B, I) is a constant seen at each of
    `length` steps: h' = tanh(e @ W + h @ U). Inputs [encoded, initial_state/0];
    outputs [y (B, length, units), h_final]; params "W", "U"."""
    body = ProgramBuilder()
    h = body.input(dtype, ("B", units), name="h")
    context = body.input(dtype, ("B", input_size), name="encoded")
    kernel = body.input(dtype, (input_size, units), name="W")
    recurrent = body.input(dtype, (units, units), name="U")
    new_h = body.apply("tanh", body.apply("add", body.apply("matmul", context, kernel),
                                          body.apply("matmul", h, recurrent)))
    builder = ProgramBuilder()
    encoded = builder.input(dtype, ("B", input_size), name="encoded")
    h0 = builder.input(dtype, ("B", units), name="initial_state/0", default=0.0)
    w = builder.param("W", dtype, (input_size, units))
    u = builder.param("U", dtype, (units, units))
    outputs = builder.scan(body.build([new_h, new_h]), states=[h0],
                           constants=[encoded, w, u], length=length, return_sequences=True)
    return builder.build(outputs)


def attention_decoder_program(features: int = 3, units: int = 32, memory_length: int = 4,
                              length: int = 5, dtype: str = "float32") -> Program:
    """A decoder with additive attention over a memory (B, memory_length, features):
    keys = memory @ K once; at each of `length` steps q = h @ Q + b, scores = tanh(keys
    + q) @ v, a = softmax(scores), context = a . memory, h' = tanh(context @ C + h @ U
    + c). Inputs [memory, initial_state/0]; outputs [y (B, length, units), h_final];
    params "K", "Q", "b", "v", "C", "U", "c"."""
    body = ProgramBuilder()
    h = body.input(dtype, ("B", units))
    memory = body.input(dtype, ("B", memory_length, features))
    keys = body.input(dtype, ("B", memory_length, units))
    query_kernel, query_bias = body.input(dtype, (units, units)), body.input(dtype, (units,))
    score_kernel = body.input(dtype, (units, 1))
    context_kernel = body.input(dtype, (features, units))
    recurrent, bias = body.input(dtype, (units, units)), body.input(dtype, (units,))
    query = body.apply("bias_add", body.apply("matmul", h, query_kernel), query_bias)
    energy = body.apply("tanh", body.apply("add", keys, body.apply("expand_dims", query,
                                                                   axis=1)))
    scores = body.apply("reshape", body.apply("matmul", energy, score_kernel),
                        shape=("B", memory_length))
    attention = body.apply("softmax", scores, axis=-1)
    context = body.apply("einsum", attention, memory, equation="bl,blf->bf")
    new_h = body.apply("tanh", body.apply("bias_add", body.apply(
        "add", body.apply("matmul", context, context_kernel),
        body.apply("matmul", h, recurrent)), bias))
    builder = ProgramBuilder()
    memory_in = builder.input(dtype, ("B", memory_length, features), name="memory")
    h0 = builder.input(dtype, ("B", units), name="initial_state/0", default=0.0)
    weights = {name: builder.param(name, dtype, shape) for name, shape in (
        ("K", (features, units)), ("Q", (units, units)), ("b", (units,)),
        ("v", (units, 1)), ("C", (features, units)), ("U", (units, units)),
        ("c", (units,)))}
    keys_in = builder.apply("matmul", memory_in, weights["K"])
    outputs = builder.scan(body.build([new_h, new_h]), states=[h0], constants=[
        memory_in, keys_in, weights["Q"], weights["b"], weights["v"], weights["C"],
        weights["U"], weights["c"]], length=length, return_sequences=True)
    return builder.build(outputs)


def output_layer_program(input_size: int = 3, units: int = 4, outputs: int = 6,
                         dtype: str = "float32", go_backwards: bool = False) -> Program:
    """An RNN whose step ends in an output layer only y reads: h' = tanh(x_t @ W + h @ U),
    y = tanh(h' @ V + c) (passes/sink_output_projection.py moves it after the loop).
    Inputs [x (B,T,I), initial_state/0]; outputs [y (B, T, outputs), h_T]; params "W",
    "U", "V", "c"."""
    body = ProgramBuilder()
    x_t, h = body.input(dtype, ("B", input_size)), body.input(dtype, ("B", units))
    kernel, recurrent = body.input(dtype, (input_size, units)), body.input(dtype, (units, units))
    output_kernel, output_bias = body.input(dtype, (units, outputs)), body.input(dtype, (outputs,))
    new_h = body.apply("tanh", body.apply("add", body.apply("matmul", x_t, kernel),
                                          body.apply("matmul", h, recurrent)))
    y = body.apply("tanh", body.apply("bias_add", body.apply("matmul", new_h, output_kernel),
                                      output_bias))
    builder = ProgramBuilder()
    x = builder.input(dtype, ("B", "T", input_size), name="x")
    h0 = builder.input(dtype, ("B", units), name="initial_state/0", default=0.0)
    weights = [builder.param(name, dtype, shape) for name, shape in (
        ("W", (input_size, units)), ("U", (units, units)), ("V", (units, outputs)),
        ("c", (outputs,)))]
    results = builder.scan(body.build([y, new_h]), sequences=[x], states=[h0],
                           constants=weights, return_sequences=True,
                           go_backwards=go_backwards)
    return builder.build(results)


def nested_program(input_size: int = 3, units: int = 4, dtype: str = "float64") -> Program:
    """A nested RNN: x (B, T, S, I); each outer step runs an inner tanh-RNN over the S
    axis of its slice and adds the result to the outer state. Params "W", "U", "V"."""
    inner = ProgramBuilder()
    x = inner.input(dtype, ("B", input_size))
    g = inner.input(dtype, ("B", units))
    w = inner.input(dtype, (input_size, units))
    u = inner.input(dtype, (units, units))
    new_g = inner.apply("tanh", inner.apply("add", inner.apply("matmul", x, w),
                                            inner.apply("matmul", g, u)))
    outer = ProgramBuilder()
    slice_t = outer.input(dtype, ("B", 5, input_size))
    h = outer.input(dtype, ("B", units))
    ow, ou, ov = (outer.input(dtype, shape) for shape in
                  ((input_size, units), (units, units), (units, units)))
    summary, _ = outer.scan(inner.build([new_g, new_g]), sequences=[slice_t], states=[h],
                            constants=[ow, ou])
    new_h = outer.apply("tanh", outer.apply("add", outer.apply("matmul", h, ov), summary))
    builder = ProgramBuilder()
    xs = builder.input(dtype, ("B", "T", 5, input_size), name="x")
    h0 = builder.input(dtype, ("B", units), name="initial_state/0", default=0.0)
    weights = [builder.param("W", dtype, (input_size, units)),
               builder.param("U", dtype, (units, units)),
               builder.param("V", dtype, (units, units))]
    outputs = builder.scan(outer.build([new_h, new_h]), sequences=[xs], states=[h0],
                           constants=weights, return_sequences=True)
    return builder.build(outputs)
