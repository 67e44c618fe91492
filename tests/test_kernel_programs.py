"""Numba CPU kernels of hand-built IR programs (rshop_ir/examples.py) vs the numpy
interpreter: every example, both dtypes, odd sizes, the chunked projection path,
bad inputs, NaN/inf, new weights, save/load without Keras, the on-disk cache."""

import os
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import rshop_ir
from rshop_ir import examples
from rshop_ir.bound import BoundProgram
from rshop_ir.kernels.lowering import plan_program

ATOL = {"float32": 1e-4, "float64": 1e-10}


pytestmark = pytest.mark.usefixtures("kernel_cache")  # a fresh kernel disk cache


def _as_list(value):
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _check(compiled, bound, inputs, dtype, **kwargs):
    got = _as_list(compiled(*inputs, **kwargs))
    expected = _as_list(rshop_ir.interpret(bound, *inputs, **kwargs))
    assert len(got) == len(expected)
    for a, b in zip(got, expected):
        assert a.shape == b.shape and a.dtype == b.dtype
        np.testing.assert_allclose(a, b, atol=ATOL[dtype], rtol=0)
    return got


PROGRAMS = {
    "lstm": lambda dtype: examples.lstm_program(3, 4, dtype=dtype),
    "lstm_sequences_backwards_masked": lambda dtype: examples.lstm_program(
        3, 4, dtype=dtype, return_sequences=True, go_backwards=True, masked=True),
    "readout": lambda dtype: examples.readout_program(dtype=dtype),
    "readout_masked_last": lambda dtype: examples.readout_program(
        dtype=dtype, masked=True, return_sequences=False),
    "decoder": lambda dtype: examples.decoder_program(dtype=dtype),
    "nested": lambda dtype: examples.nested_program(dtype=dtype),
    "output_layer": lambda dtype: examples.output_layer_program(dtype=dtype),
    "output_layer_backwards": lambda dtype: examples.output_layer_program(
        dtype=dtype, go_backwards=True),
}
_COMPILED = {}


def compiled_example(name, dtype):
    if (name, dtype) not in _COMPILED:
        program = PROGRAMS[name](dtype)
        bound = BoundProgram(program, examples.random_weights(program, seed=1))
        _COMPILED[name, dtype] = (rshop_ir.compile(bound), bound)
    return _COMPILED[name, dtype]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", sorted(PROGRAMS))
def test_example_matches_interpreter(name, dtype):
    compiled, bound = compiled_example(name, dtype)
    for batch, steps in ((3, 100), (1, 1), (2, 7)):
        inputs = examples.random_inputs(bound.program, batch=batch, steps=steps, seed=2)
        _check(compiled, bound, inputs, dtype)


def test_hidden_size_one_and_batch_one():
    program = examples.lstm_program(1, 1, return_sequences=True)
    bound = BoundProgram(program, examples.random_weights(program))
    compiled = rshop_ir.compile(bound)
    _check(compiled, bound, examples.random_inputs(program, batch=1, steps=9), "float32")


def test_large_batch_uses_blas_path_and_matches():
    compiled, bound = compiled_example("lstm_sequences_backwards_masked", "float32")
    inputs = examples.random_inputs(bound.program, batch=9, steps=20, seed=5)
    _check(compiled, bound, inputs, "float32")


def test_a_step_is_one_loop_storing_the_outputs_where_they_go():
    """The LSTM step's two fused regions (the cell, then h reading the cell at its own
    element) share one loop nest, which stores c and h straight into the next state
    buffers and h into its row of y_all: no per-step copy loop, no buffer for a gate
    value, and the numbers of the interpreter (masked scans keep the copies)."""
    program = examples.lstm_program(3, 4, return_sequences=True)
    bound = BoundProgram(program, examples.random_weights(program))
    compiled = rshop_ir.compile(bound)
    step = compiled.source.split("for step in range(chunk_start, chunk_stop):")[1]
    step = step.split("return (")[0]
    gate_loop = step.split("for i_1 in range(B):")[1]
    for store in ("next_state_1[i_1, i_2] = e_11", "y_all[i_1, step, i_2] = e_16",
                  "next_state_0[i_1, i_2] = e_16", "e_15 = tanh_f32(np.float32(e_11))"):
        assert store in gate_loop, compiled.source
    assert "for b in range(B):" not in step
    assert not re.search(r"\bv(_\d+)? = np\.empty", compiled.source)   # no value buffers
    for batch, steps in ((3, 9), (1, 1)):
        _check(compiled, bound, examples.random_inputs(program, batch=batch, steps=steps,
                                                       seed=batch), "float32")
    masked, masked_bound = compiled_example("lstm_sequences_backwards_masked", "float32")
    assert "keep = " in masked.source


@pytest.mark.parametrize("chunk_steps", [1, 3, 7])
def test_chunked_projection_long_sequence(chunk_steps):
    compiled, bound = compiled_example("lstm_sequences_backwards_masked", "float64")
    inputs = examples.random_inputs(bound.program, batch=2, steps=50, seed=3)
    expected = _as_list(rshop_ir.interpret(bound, *inputs))
    got = _as_list(compiled(*inputs, chunk_steps=chunk_steps))
    for a, b in zip(got, expected):
        np.testing.assert_allclose(a, b, atol=1e-10, rtol=0)


@pytest.mark.parametrize("name", ["output_layer", "output_layer_backwards"])
@pytest.mark.parametrize("chunk_steps", [1, 4, 50])
def test_output_layer_after_the_loop_chunk_by_chunk(name, chunk_steps):
    """The output layer moved after the loop (passes/sink_output_projection.py) runs on
    each chunk's rows of y inside the kernel: the kernel keeps a chunk of y, not the
    sequence, and gives the interpreter's numbers (of the program before the passes too)
    for every chunk size."""
    compiled, bound = compiled_example(name, "float64")
    assert [eqn.op for eqn in compiled.program.eqns][-3:] == ["scan", "matmul", "fused"]
    assert "y_all = new_array((B, chunk_steps, 4), np.float64)" in compiled.source
    assert "y_out = new_array((B, steps, 6), np.float64)" in compiled.source
    inputs = examples.random_inputs(bound.program, batch=3, steps=23, seed=4)
    expected = _as_list(rshop_ir.interpret(bound, *inputs))
    got = _as_list(compiled(*inputs, chunk_steps=chunk_steps))
    assert [a.shape for a in got] == [(3, 23, 6), (3, 4)]
    for a, b in zip(got, expected):
        np.testing.assert_allclose(a, b, atol=1e-10, rtol=0)


def test_a_projection_of_the_next_scan_stays_that_scans_projection():
    """Two stacked LSTMs: the matmul of the first one's sequence by the second's input
    weight is the second scan's chunked input projection, not an output layer of the
    first (which would hold the projected sequence whole)."""
    builder = rshop_ir.ProgramBuilder()
    sequence = builder.input("float64", ("B", "T", 3), name="x")
    for layer, input_size in enumerate((3, 4)):
        h0 = builder.input("float64", ("B", 4), name=f"h0_{layer}", default=0.0)
        shapes = [(input_size, 4)] * 4 + [(4, 4)] * 4 + [(4,)] * 4
        weights = [builder.param(f"lstm{layer}/{k}", "float64", shape)
                   for k, shape in enumerate(shapes)]
        sequence = builder.scan(examples.lstm_step_body(input_size, 4, "float64"),
                                sequences=[sequence], states=[h0, h0], constants=weights,
                                return_sequences=True)[0]
    program = builder.build([sequence])
    bound = BoundProgram(program, examples.random_weights(program, seed=2))
    compiled = rshop_ir.compile(bound)
    plans = [item for kind, item in plan_program(compiled.program, epilogues=True).steps
             if kind == "scan"]
    assert [plan.epilogue for plan in plans] == [None, None]
    assert [len(plan.projections) for plan in plans] == [1, 1]
    _check(compiled, bound, examples.random_inputs(program, batch=2, steps=11, seed=5),
           "float64")


def test_memory_budget_bounds_the_chunk():
    compiled, bound = compiled_example("lstm", "float32")
    assert compiled.kernel.projection_row_bytes == (3 + 16) * 4
    # 1000 rows x 76 bytes a step: 16 MB hold 220 steps, the 4 MB kept near the
    # cache 55 (still 55,000 rows, more than MIN_CHUNK_ROWS)
    assert compiled._chunk(batch=1000, chunk_steps=None) == 55
    assert compiled._chunk(batch=1000, chunk_steps=200) == 200   # asked: only 16 MB bound it
    assert compiled._chunk(batch=1000, chunk_steps=500) == 220
    assert compiled._chunk(batch=1, chunk_steps=None) == 256


def test_default_chunk_stays_near_the_cache_with_rows_enough(monkeypatch):
    """By default a chunk's buffers stay within CACHE_CHUNK_BYTES unless that leaves a
    chunk fewer than MIN_CHUNK_ROWS rows; the numbers do not depend on the chunk."""
    from rshop_ir.kernels.cpu import runtime

    compiled, bound = compiled_example("lstm_sequences_backwards_masked", "float32")
    row_bytes = compiled.kernel.projection_row_bytes
    monkeypatch.setattr(runtime, "CACHE_CHUNK_BYTES", 9 * 2 * row_bytes)
    monkeypatch.setattr(runtime, "MIN_CHUNK_ROWS", 9)
    assert compiled._chunk(batch=9, chunk_steps=None) == 2     # 2 steps in the cache
    assert compiled._chunk(batch=3, chunk_steps=None) == 6     # 6 steps of 3 rows
    monkeypatch.setattr(runtime, "MIN_CHUNK_ROWS", 40)
    assert compiled._chunk(batch=9, chunk_steps=None) == 5     # 5 x 9 rows >= 40
    inputs = examples.random_inputs(bound.program, batch=9, steps=23, seed=4)
    _check(compiled, bound, inputs, "float32")


def test_initial_state_and_readout_by_name():
    compiled, bound = compiled_example("readout", "float64")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 6, 4))
    s0, r0 = rng.standard_normal((2, 5)), rng.standard_normal((2, 5))
    _check(compiled, bound, [x], "float64", initial_state=[s0], initial_readout=r0)


def test_weights_changed_after_compile_are_seen():
    compiled, bound = compiled_example("lstm", "float32")
    inputs = examples.random_inputs(bound.program, batch=2, steps=5)
    before = _as_list(compiled(*inputs))[0]
    new_weights = examples.random_weights(bound.program, seed=99)
    compiled.set_weights(new_weights)
    after = _as_list(compiled(*inputs))[0]
    expected = _as_list(rshop_ir.interpret(bound.program, *inputs, weights=new_weights))[0]
    assert not np.allclose(before, after)
    np.testing.assert_allclose(after, expected, atol=1e-4)
    compiled.set_weights(bound.weights)


def test_zero_batch_and_zero_length():
    compiled, bound = compiled_example("lstm_sequences_backwards_masked", "float32")
    for batch, steps in ((0, 5), (2, 0), (0, 0)):
        inputs = examples.random_inputs(bound.program, batch=batch, steps=steps)
        _check(compiled, bound, inputs, "float32")
    compiled, bound = compiled_example("readout", "float64")
    rng = np.random.default_rng(1)
    s0 = rng.standard_normal((2, 5))
    y, s = compiled(np.zeros((2, 0, 4)), initial_state=[s0])
    assert y.shape == (2, 0, 5)
    np.testing.assert_array_equal(s, s0)


def test_nan_and_inf_propagate_like_the_interpreter():
    for dtype in ("float32", "float64"):
        compiled, bound = compiled_example("lstm_sequences_backwards_masked", dtype)
        x, h0, c0, mask = examples.random_inputs(bound.program, batch=4, steps=6)
        x[0, 2, 1] = np.nan
        x[1, 3, :] = np.inf
        x[2, 1, 0] = -np.inf
        got = _as_list(compiled(x, h0, c0, mask))
        expected = _as_list(rshop_ir.interpret(bound, x, h0, c0, mask))
        for a, b in zip(got, expected):
            np.testing.assert_array_equal(np.isnan(a), np.isnan(b))
            np.testing.assert_allclose(a, b, atol=ATOL[dtype], rtol=0)


def _row_sums_program(width: int, dtype: str):
    """A scan whose step takes a layer norm, a softmax and a mean along rows of
    `width` (the sums kernels/cpu/reductions.py vectorises, buffers allocated before
    the time loop), then top-level reductions of its outputs (sum, argmax, max over
    time)."""
    from rshop_ir import ProgramBuilder

    body = ProgramBuilder()
    x_t = body.input(dtype, ("B", width))
    h = body.input(dtype, ("B", width))
    gamma = body.input(dtype, (width,))
    beta = body.input(dtype, (width,))
    total = body.apply("add", x_t, h)
    normal = body.apply("layer_norm", total, gamma, beta, axis=-1, epsilon=1e-3)
    weights = body.apply("softmax", normal, axis=-1)
    mean = body.apply("reduce_mean", total, axes=1, keepdims=True)
    new_h = body.apply("add", body.apply("mul", body.apply("tanh", normal), weights),
                       body.apply("tanh", mean))
    builder = ProgramBuilder()
    xs = builder.input(dtype, ("B", "T", width), name="x")
    h0 = builder.input(dtype, ("B", width), name="h0", default=0.0)
    params = [builder.param(name, dtype, (width,)) for name in ("gamma", "beta")]
    y, h_last = builder.scan(body.build([new_h, new_h]), sequences=[xs], states=[h0],
                             constants=params, return_sequences=True)
    return builder.build([y, builder.apply("reduce_sum", h_last, axes=1),
                          builder.apply("argmax", h_last, axis=1),
                          builder.apply("reduce_max", y, axes=1)])


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("width", [1, 7, 16, 67])
def test_row_sums_match_the_interpreter_with_nan_and_inf(width, dtype):
    """Row widths around the vector width (tails), and rows holding NaN or inf: the
    reassociated sums give the interpreter's numbers and its NaN/inf."""
    program = _row_sums_program(width, dtype)
    bound = BoundProgram(program, examples.random_weights(program, seed=width))
    compiled = rshop_ir.compile(bound)
    assert "row_sum(" in compiled.source and "row_squared_deviations(" in compiled.source
    x = np.random.default_rng(width).standard_normal((3, 5, width)).astype(dtype)
    _check(compiled, bound, [x], dtype)
    x[0, 2, width // 2] = np.nan
    x[1, 1, 0] = np.inf
    got = _check(compiled, bound, [x], dtype)
    assert np.isnan(got[0][0, 2:]).all() and not np.isnan(got[0][2]).any()


def _attention_program(width: int, length: int, dtype: str):
    """An additive-attention step: the state, repeated over the `length` memory rows, is
    added to them; Dense(1) scores (a one-column matmul of a 3-D value), a softmax,
    the context; plus a one-column matmul of the 2-D state."""
    from rshop_ir import ProgramBuilder

    body = ProgramBuilder()
    x_t = body.input(dtype, ("B", width))
    h = body.input(dtype, ("B", width))
    memory = body.input(dtype, ("B", length, width))
    score_weight = body.input(dtype, (width, 1))
    repeated = body.apply("repeat", body.apply("expand_dims", h, axis=1), repeats=length,
                          axis=1)
    scores = body.apply("matmul", body.apply("tanh", body.apply("add", memory, repeated)),
                        score_weight)
    attention = body.apply("softmax", body.apply("reshape", scores, shape=("B", length)),
                           axis=-1)
    context = body.apply("einsum", attention, memory, equation="bl,blw->bw")
    gate = body.apply("matmul", h, score_weight)                         # (B, 1)
    new_h = body.apply("tanh", body.apply("add", body.apply("add", context, x_t), gate))
    return _scan_over_memory(body.build([new_h, new_h]), width, length, dtype,
                             "score", (width, 1))


def _scan_over_memory(step, width: int, length: int, dtype: str, weight: str, shape):
    """A program scanning `step` (inputs x_t, h, memory, the weight) over x (B, T,
    width) with the constants memory (B, length, width) and the param `weight`."""
    from rshop_ir import ProgramBuilder

    builder = ProgramBuilder()
    xs = builder.input(dtype, ("B", "T", width), name="x")
    memory_in = builder.input(dtype, ("B", length, width), name="memory")
    h0 = builder.input(dtype, ("B", width), name="h0", default=0.0)
    y, _ = builder.scan(step, sequences=[xs], states=[h0],
                        constants=[memory_in, builder.param(weight, dtype, shape)],
                        return_sequences=True)
    return builder.build([y])


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("width", [1, 5, 40])
def test_attention_step_one_column_products_and_broadcast_repeat(width, dtype):
    """The optimised step adds the state by broadcasting instead of repeating it
    (passes/simplify.py), and both one-column matmuls run as vectorised row dots:
    numbers of the interpreter on the program as written, NaN included."""
    program = _attention_program(width, 6, dtype)
    bound = BoundProgram(program, examples.random_weights(program, seed=width))
    compiled = rshop_ir.compile(bound)
    scan = [eqn for eqn in compiled.program.eqns if eqn.op == "scan"][0]
    assert "repeat" not in [eqn.op for eqn in scan.params["body"].eqns]
    # a row dot each, or sums by blocks where the width fills whole blocks (block_dot.py)
    assert compiled.source.count("row_dot(") + compiled.source.count("block_dot(") == 2
    rng = np.random.default_rng(width)
    x = rng.standard_normal((3, 7, width)).astype(dtype)
    memory = rng.standard_normal((3, 6, width)).astype(dtype)
    _check(compiled, bound, [x, memory], dtype)
    memory[1, 2, 0] = np.nan
    got = _check(compiled, bound, [x, memory], dtype)
    assert np.isnan(got[0][1]).all() and not np.isnan(got[0][[0, 2]]).any()


def _einsum_program(width: int, length: int, dtype: str):
    """A step summing einsums of every loop form the generator writes: the output's
    last axis innermost (contiguous in an input, strided in one, the batch axis
    itself) and a scalar sum per element where nothing is contracted."""
    from rshop_ir import ProgramBuilder

    body = ProgramBuilder()
    x_t, h = body.input(dtype, ("B", width)), body.input(dtype, ("B", width))
    memory = body.input(dtype, ("B", length, width))
    square = body.input(dtype, (width, width))
    attention = body.apply("softmax", body.apply("einsum", memory, h,
                                                 equation="blw,bw->bl"), axis=-1)
    terms = [
        body.apply("einsum", attention, memory, equation="bl,blw->bw"),
        body.apply("einsum", h, square, equation="bw,wv->bv"),
        body.apply("einsum", h, square, equation="bw,vw->bv"),
        body.apply("einsum", x_t, h, equation="bw,bw->bw"),
        body.apply("expand_dims", body.apply("einsum", x_t, h, equation="bw,bw->b"),
                   axis=1),
    ]
    total = terms[0]
    for term in terms[1:]:
        total = body.apply("add", total, term)
    new_h = body.apply("tanh", body.apply("add", total, x_t))
    return _scan_over_memory(body.build([new_h, new_h]), width, length, dtype,
                             "square", (width, width))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("width", [1, 3, 37])
def test_einsums_match_the_interpreter(width, dtype):
    program = _einsum_program(width, 4, dtype)
    bound = BoundProgram(program, examples.random_weights(program, seed=width))
    compiled = rshop_ir.compile(bound)
    rng = np.random.default_rng(width)
    x = (0.5 * rng.standard_normal((3, 6, width))).astype(dtype)
    memory = (0.5 * rng.standard_normal((3, 4, width))).astype(dtype)
    _check(compiled, bound, [x, memory], dtype)
    memory[2, 1, 0] = np.inf
    got = _check(compiled, bound, [x, memory], dtype)
    assert np.isnan(got[0][2]).any() and not np.isnan(got[0][:2]).any()


_EDGE_UNARY = ("sign", "abs", "floor", "ceil", "round", "neg", "exp", "tanh", "sigmoid",
               "softplus", "relu", "elu", "selu", "silu", "softsign", "log1p", "expm1")


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_element_wise_ops_at_the_edges_like_numpy(dtype):
    """inf, -inf, NaN, -0.0 and halves through the unary ops of the fused loops
    (sign(+-inf) gave NaN: `x - x + 1`)."""
    builder = rshop_ir.ProgramBuilder()
    x = builder.input(dtype, ("B", 8), name="x")
    program = builder.build([builder.apply(op, x) for op in _EDGE_UNARY])
    bound = BoundProgram(program, {})
    data = np.array([[np.inf, -np.inf, np.nan, -0.0, 2.5, -3.5, 1e-30, -40.0]], dtype)
    _check(rshop_ir.compile(bound), bound, [data], dtype)


def test_integer_and_bool_arithmetic_keeps_its_declared_type():
    """int32 * int32 wraps as numpy's int32 (Numba's scalars widen to int64), bool +
    bool is the logical or and bool * bool the and (Numba's give ints)."""
    builder = rshop_ir.ProgramBuilder()
    x, m = builder.input("int32", ("B", 3), name="x"), builder.input("bool", ("B", 3), name="m")
    outputs = [builder.apply("cast", builder.apply(op, a, a), dtype="float32")
               for op, a in (("mul", x), ("add", x), ("add", m), ("mul", m))]
    program = builder.build(outputs)
    bound = BoundProgram(program, {})
    data = [np.array([[100000, -70000, 3]], np.int32), np.array([[True, False, True]])]
    got = _check(rshop_ir.compile(bound), bound, data, "float32")
    np.testing.assert_array_equal(got[2], [[1.0, 0.0, 1.0]])


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_means_and_norms_over_several_axes(dtype):
    """reduce_mean and layer_norm over two axes divide by the product of their sizes
    (the generated `acc / 6 * 4` multiplied by 4 instead; the row-split check took
    layer_norm's axes for one axis)."""
    builder = rshop_ir.ProgramBuilder()
    x = builder.input(dtype, ("B", 6, 4), name="x")
    mean = builder.apply("reduce_mean", x, axes=(1, 2), keepdims=True)
    centred = builder.apply("sub", x, mean)
    variance = builder.apply("reduce_mean", builder.apply("square", centred), axes=(1, 2))
    normal = builder.apply("layer_norm", x, 1.0, 0.0, axis=(1, 2), epsilon=1e-3)
    program = builder.build([mean, variance, normal])
    bound = BoundProgram(program, {})
    data = np.random.default_rng(3).standard_normal((3, 6, 4)).astype(dtype) * 2 + 1
    got = _check(rshop_ir.compile(bound), bound, [data], dtype)
    np.testing.assert_allclose(got[1], data.var(axis=(1, 2)), atol=ATOL[dtype], rtol=0)


def test_bad_inputs_raise_clear_errors():
    compiled, bound = compiled_example("lstm", "float32")
    good = np.zeros((2, 5, 3), np.float32)
    with pytest.raises(ValueError, match="rank"):
        compiled(np.zeros((2, 3), np.float32))
    with pytest.raises(ValueError, match="shape"):
        compiled(np.zeros((2, 5, 4), np.float32))
    with pytest.raises(TypeError, match="numeric"):
        compiled(np.full((2, 5, 3), "a"))
    with pytest.raises(ValueError, match="initial_state"):
        compiled(good, initial_state=[np.zeros((3, 4)), np.zeros((2, 4))])
    for partial in ([np.zeros((2, 4))], np.zeros((2, 4))):   # 1 of the LSTM's 2 states
        with pytest.raises(ValueError, match="takes 2 of them.*received 1"):
            compiled(good, initial_state=partial)
    # float64 is cast to float32, ints too; non-contiguous arrays are accepted
    wide = np.random.default_rng(0).standard_normal((2, 10, 3))
    expected = compiled(wide[:, ::2].astype(np.float32))
    np.testing.assert_array_equal(compiled(wide[:, ::2]), expected)
    assert compiled(good.astype(np.int64))[0].dtype == np.float32
    fortran = np.asfortranarray(wide.astype(np.float32))
    np.testing.assert_array_equal(compiled(fortran)[0], compiled(wide.astype(np.float32))[0])


def test_attributes_and_debug_source(capfd, monkeypatch):
    program = examples.decoder_program(units=3)
    bound = BoundProgram(program, examples.random_weights(program))
    monkeypatch.setenv("RSHOP_DEBUG", "2")
    compiled = rshop_ir.compile(bound)
    err = capfd.readouterr().err
    assert "generated Numba CPU source" in err and "def scan_0(" in err
    # the scan, `run`, and the launcher asking about the weights beside a one-thread
    # call (kernels/cpu/team_poll.py)
    assert re.findall(r"^def (\w+)\(", compiled.source, re.M) == ["scan_0", "run",
                                                                    "launch_polled"]
    assert compiled.source.count("@njit(") == 3
    assert "scan" in compiled.ir and "scan" in compiled.ir_before_passes
    assert compiled.ir == str(rshop_ir.optimize(program))


def test_a_lone_scan_is_written_into_run():
    """A program that only runs one scan and returns its results gets no separate scan
    function: the scan's body is `run`'s (compiled once, not twice)."""
    program = examples.lstm_program(4, 6, return_sequences=True)
    bound = BoundProgram(program, examples.random_weights(program, seed=3))
    compiled = rshop_ir.compile(bound)
    assert re.findall(r"^def (\w+)\(", compiled.source, re.M) == ["run", "launch_polled"]
    inputs = examples.random_inputs(program, batch=3, steps=7, seed=4)
    expected = _as_list(rshop_ir.interpret(bound, *inputs))
    got = _as_list(compiled(*inputs))
    assert len(got) == len(expected) == 3
    for value, reference in zip(got, expected):
        np.testing.assert_allclose(value, reference, rtol=1e-5, atol=1e-5)


def test_weights_are_arguments_not_constants():
    compiled, bound = compiled_example("lstm", "float32")
    for value in bound.weights.values():
        assert repr(float(value.ravel()[0]))[:8] not in compiled.source


def test_cuda_target_and_bad_objects():
    compiled, bound = compiled_example("lstm", "float32")
    from rshop_ir.kernels.cuda.device import cuda_available

    if cuda_available()[0]:  # a GPU or the simulator: the CUDA kernel gives the numbers
        x = np.random.default_rng(0).standard_normal((2, 4, 3)).astype("float32")
        np.testing.assert_allclose(rshop_ir.compile(bound, target="cuda")(x)[0],
                                   compiled(x)[0], atol=1e-4)
    else:
        with pytest.raises(ValueError, match="target='cuda' needs a CUDA GPU.*"
                                             "Use target='cpu'"):
            rshop_ir.compile(bound, target="cuda")
    with pytest.raises(ValueError, match="Unknown target"):
        rshop_ir.compile(bound, target="tpu")
    with pytest.raises(TypeError, match="expects"):
        rshop_ir.compile(42)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_a_weight_on_the_left_multiplies_every_batch_item(dtype):
    """`W @ x` with W (4, 6) and x (B, 6, 5): one product per batch item, the
    interpreter's and numpy's numbers."""
    builder = rshop_ir.ProgramBuilder()
    x = builder.input(dtype, ("B", 6, 5))
    mix = builder.param("mix", dtype, (4, 6))
    program = builder.build([builder.apply("matmul", mix, x)])
    rng = np.random.default_rng(5)
    weights = {"mix": rng.standard_normal((4, 6)).astype(dtype)}
    bound = BoundProgram(program, weights)
    data = rng.standard_normal((3, 6, 5)).astype(dtype)
    got = _check(rshop_ir.compile(bound), bound, [data], dtype)
    np.testing.assert_allclose(got[0], weights["mix"] @ data, atol=ATOL[dtype], rtol=0)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_shift_along_the_steps_fills_zeros_at_every_length(dtype):
    """`shift` by -3..3 along a symbolic number of steps, lengths 1 to 5 (shorter than
    the offset too), NaN moved like any value: the interpreter's numbers and a
    hand-written loop's."""
    builder = rshop_ir.ProgramBuilder()
    x = builder.input(dtype, ("B", "T", 2))
    offsets = (-3, -1, 0, 2, 3)
    bound = BoundProgram(builder.build([builder.apply("shift", x, axis=1, offset=offset)
                                        for offset in offsets]), {})
    compiled = rshop_ir.compile(bound)
    for steps in (1, 2, 5):
        data = np.random.default_rng(steps).standard_normal((3, steps, 2)).astype(dtype)
        data[1, 0, 1] = np.nan
        got = _check(compiled, bound, [data], dtype)
        for offset, result in zip(offsets, got):
            expected = np.zeros_like(data)
            for step in range(steps):
                if 0 <= step - offset < steps:
                    expected[:, step] = data[:, step - offset]
            np.testing.assert_array_equal(result, expected)


def test_unsupported_op_names_the_op():
    builder = rshop_ir.ProgramBuilder()
    x = builder.input("float32", ("B", 4, 4))
    w = builder.input("float32", ("B", 1, 4, 4))
    y = builder.apply("matmul", x, w)       # broadcast batch dims: not generated
    with pytest.raises(rshop_ir.UnsupportedError, match="matmul"):
        rshop_ir.compile(builder.build([y]))


SUBPROCESS = textwrap.dedent("""
    import sys, numpy as np
    import rshop_ir
    from rshop_ir import examples
    from rshop_ir.bound import BoundProgram
    from rshop_ir.kernels.cpu import cache
    bound = rshop_ir.load(sys.argv[1])
    compiled = rshop_ir.compile(bound)
    x = np.ones((2, 5, 3), np.float32)
    y = compiled(x)
    misses = sum(compiled._run.stats.cache_misses.values())
    hits = sum(compiled._run.stats.cache_hits.values())
    team = compiled(x, team_size=2)      # the team's kernel: compiled, then loaded
    team_error = max(float(np.abs(a - b).max()) for a, b in zip(team, y))
    # a program new to each process (its size is the argument), compiled after a
    # quick load (see quick_cache_load.py)
    other = examples.readout_program(units=int(sys.argv[2]), dtype="float64")
    other_bound = BoundProgram(other, examples.random_weights(other, seed=3))
    inputs = examples.random_inputs(other, batch=2, steps=6, seed=4)
    other_compiled = rshop_ir.compile(other_bound)
    other_error = max(float(np.abs(a - b).max()) for a, b in zip(
        other_compiled(*inputs), rshop_ir.interpret(other_bound, *inputs)))
    print("RESULT", cache.STATS["files_written"], hits, misses,
          "keras" in sys.modules or "tensorflow" in sys.modules, float(y[0].sum()),
          type(compiled._run._cache).__name__, team_error, other_error,
          sum(other_compiled._run.stats.cache_misses.values()))
""")


def test_save_load_and_disk_cache_in_fresh_processes(tmp_path, kernel_cache):
    compiled, bound = compiled_example("lstm", "float32")
    path = str(tmp_path / "saved")
    rshop_ir.save(compiled, path)
    env = {**os.environ, "RSHOP_CACHE_DIR": str(tmp_path / "fresh_cache")}
    runs = []
    for units in (5, 6):
        output = subprocess.run([sys.executable, "-c", SUBPROCESS, path, str(units)], env=env,
                                capture_output=True, text=True, timeout=240)
        line = [text for text in output.stdout.splitlines() if text.startswith("RESULT")]
        assert line, output.stderr[-2000:]
        runs.append(line[0].split()[1:])
    expected = float(compiled(np.ones((2, 5, 3), np.float32))[0].sum())
    first, second = runs
    # the LSTM's module files (plain and team kernels) are reused; each process writes
    # its readout program's
    assert first[0] == "3" and second[0] == "1"
    assert second[1] != "0" and second[2] == "0"         # numba loaded, compiled nothing
    assert first[3] == second[3] == "False"              # no keras/tensorflow import
    assert abs(float(second[4]) - expected) < 1e-5
    assert second[5] == "QuickLoadingCache"
    for run in runs:
        assert float(run[6]) < 1e-5                      # the team's numbers are one thread's
        assert float(run[7]) < 1e-10 and run[8] != "0"   # compiled in the process


def test_an_output_that_is_a_filled_default_is_never_handed_out_twice():
    """A program returning an omitted input (its filled default) or a view of it: a
    call like the previous one reuses the filled defaults, so those outputs must not
    be the buffers the caller got and wrote last time. The outputs of a scan are
    always new arrays and are not checked (runtime.py `_outputs_maybe_inputs`)."""
    from rshop_ir.builder import ProgramBuilder

    builder = ProgramBuilder()
    x = builder.input("float32", ("B", 4), name="x")
    state = builder.input("float32", ("B", 4), name="state", default=0.0)
    program = builder.build([builder.apply("tanh", x), state,
                             builder.apply("reshape", state, shape=("B", 2, 2))])
    compiled = rshop_ir.compile(BoundProgram(program, {}))
    assert compiled._outputs_to_check == [0, 1, 2]    # none comes from a scan
    x_value = np.full((2, 4), 0.5, np.float32)
    for _ in range(3):
        outputs = compiled(x_value)
        np.testing.assert_allclose(outputs[0], np.tanh(x_value), rtol=1e-6)
        np.testing.assert_array_equal(outputs[1], np.zeros((2, 4)))
        np.testing.assert_array_equal(outputs[2], np.zeros((2, 2, 2)))
        outputs[1][...] = 5.0          # the caller owns its outputs
        outputs[2][...] = 6.0
    lstm = examples.lstm_program(4, 3, return_sequences=True)
    assert rshop_ir.compile(BoundProgram(lstm, examples.random_weights(lstm)))\
        ._outputs_to_check == []


@pytest.mark.parametrize("output", ["scalar", "weight_sized"])
def test_a_step_output_without_batch_rows_is_refused_by_name(output):
    """The interpreter runs it; the generators keep outputs per batch row, and said so
    with a SyntaxError or a reshape error inside Numba before."""
    body = rshop_ir.ProgramBuilder()
    x_t, h = body.input("float32", ("B", 3)), body.input("float32", ("B", 4))
    kernel = body.input("float32", (3, 4))
    h_new = body.apply("tanh", body.apply("add", body.apply("matmul", x_t, kernel), h))
    y = (body.apply("reduce_sum", h_new, axes=None) if output == "scalar"
         else body.apply("tanh", kernel))
    builder = rshop_ir.ProgramBuilder()
    x, h0 = builder.input("float32", ("B", "T", 3)), builder.input("float32", ("B", 4))
    outputs = builder.scan(body.build([y, h_new]), sequences=[x], states=[h0],
                           constants=[builder.param("kernel", "float32", (3, 4))],
                           return_sequences=output != "scalar")
    bound = BoundProgram(builder.build(outputs), {"kernel": np.ones((3, 4), np.float32)})
    with pytest.raises(rshop_ir.UnsupportedError, match="step output is f32"):
        rshop_ir.compile(bound)
