"""Hypothesis: random element-wise/matmul step graphs from the op table, alone and as scan
bodies; optimize -> interpret must equal interpret of the unoptimised program."""

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rshop_ir import ProgramBuilder, interpret, optimize, verify
from rshop_ir.examples import random_inputs, random_weights

UNITS = 4
UNARY = ("tanh", "sigmoid", "relu", "neg", "abs", "softsign", "silu", "sin", "linear",
         "dropout", "hard_sigmoid", "gelu", "elu")
BINARY = ("add", "sub", "mul", "maximum", "minimum")
LITERALS = (0.0, 1.0, 2.0, -0.5)


def random_step(data, builder, values, weights, bias):
    """Append 1..14 random eqns reading `values`; returns (y, new_state)."""
    values = list(values)
    for _ in range(data.draw(st.integers(1, 14), label="length")):
        kind = data.draw(st.sampled_from(("unary", "binary", "matmul", "bias", "repeat",
                                          "mirror")))
        operand = data.draw(st.sampled_from(values))
        if kind == "unary":
            value = builder.apply(data.draw(st.sampled_from(UNARY)), operand)
        elif kind == "binary":
            other = data.draw(st.one_of(st.sampled_from(values), st.sampled_from(LITERALS)))
            op = data.draw(st.sampled_from(BINARY))
            value = builder.apply(op, *data.draw(st.permutations([operand, other])))
        elif kind == "matmul":
            value = builder.apply("matmul", operand, data.draw(st.sampled_from(weights)))
        elif kind == "bias":
            value = builder.apply("bias_add", operand, bias)
        elif kind == "mirror":  # op(a, b) and op(b, a): CSE only for commutative ops
            other = data.draw(st.sampled_from(values))
            op = data.draw(st.sampled_from(BINARY))
            first = builder.apply(op, operand, other)
            value = builder.apply("add", first, builder.apply(op, other, operand))
        else:  # the same eqn twice: CSE fodder
            op = data.draw(st.sampled_from(("tanh", "sigmoid")))
            builder.apply(op, operand)
            value = builder.apply(op, operand)
        values.append(value)
    y = data.draw(st.sampled_from(values[3:]), label="y")
    new_state = builder.apply("tanh", data.draw(st.sampled_from(values), label="state"))
    return y, new_state


def assert_same_numbers(program, seeds=(0, 1)):
    verify(program)
    optimized = verify(optimize(program))
    for seed in seeds:
        weights = random_weights(program, seed=seed, scale=0.7)
        inputs = random_inputs(program, batch=3, steps=5, seed=seed)
        expected = interpret(program, *inputs, weights=weights)
        actual = interpret(optimized, *inputs, weights=weights)
        for want, got in zip(expected, actual):
            assert want.shape == got.shape and want.dtype == got.dtype
            np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9)
    return optimized


FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.data())
def test_random_step_graph(data):
    builder = ProgramBuilder()
    x = builder.input("float64", ("B", UNITS))
    h = builder.input("float64", ("B", UNITS))
    context = builder.input("float64", ("B", UNITS))
    weights = [builder.param(f"w{i}", "float64", (UNITS, UNITS)) for i in range(3)]
    bias = builder.param("bias", "float64", (UNITS,))
    y, new_state = random_step(data, builder, [x, h, context], weights, bias)
    assert_same_numbers(builder.build([y, new_state]))


@FUZZ
@given(st.data(), st.booleans(), st.booleans(), st.booleans())
def test_random_scan_body(data, go_backwards, return_sequences, masked):
    body = ProgramBuilder()
    x_t = body.input("float64", ("B", UNITS))
    h = body.input("float64", ("B", UNITS))
    context = body.input("float64", ("B", UNITS))    # a per-row constant, e.g. a memory
    constants = [body.input("float64", (UNITS, UNITS)) for _ in range(3)]
    bias = body.input("float64", (UNITS,))
    y, new_state = random_step(data, body, [x_t, h, context], constants, bias)
    builder = ProgramBuilder()
    xs = builder.input("float64", ("B", "T", UNITS))
    h0 = builder.input("float64", ("B", UNITS))
    outer_context = builder.input("float64", ("B", UNITS))
    mask = builder.input("bool", ("B", "T")) if masked else None
    weights = [outer_context]
    weights += [builder.param(f"w{i}", "float64", (UNITS, UNITS)) for i in range(3)]
    weights.append(builder.param("bias", "float64", (UNITS,)))
    outputs = builder.scan(body.build([y, new_state]), sequences=[xs], states=[h0],
                           constants=weights, mask=mask, go_backwards=go_backwards,
                           return_sequences=return_sequences)
    assert_same_numbers(builder.build(outputs))
