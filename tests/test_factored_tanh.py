"""kernels/cpu/factored_tanh.py: tanh(keys + query) from exp(2 keys), once a call.

Each test compares the compiled kernel with the numpy interpreter: in the usual range,
where a key or a query value is too far for the factored form (the usual tanh loop
then runs, the numbers stay right), with NaN and inf keys; teams give one thread's
numbers bit for bit. The benchmark's Keras decoder, factored, is compared with Keras in
test_kernel_parallel.py (test_team_members_share_the_rows_of_a_product_before_the_scan).
"""

import numpy as np
import pytest

import rshop_ir
from rshop_ir import ProgramBuilder
from rshop_ir.bound import BoundProgram
from rshop_ir.interpret import interpret
from rshop_ir.kernels.cpu import factored_tanh

UNITS, ROWS, STEPS = 32, 4, 6

pytestmark = pytest.mark.usefixtures("kernel_cache")  # a fresh kernel disk cache


def _scores_program(dtype="float32"):
    """Per step: q = h @ U + b; y = tanh(keys + q) @ v, (B, ROWS) (the attention's
    scores, kept as the output so that every tanh value shows); h' = tanh(h @ W)."""
    body = ProgramBuilder()
    h = body.input(dtype, ("B", UNITS))
    keys = body.input(dtype, ("B", ROWS, UNITS))
    query_kernel, query_bias = body.input(dtype, (UNITS, UNITS)), body.input(dtype, (UNITS,))
    score_kernel = body.input(dtype, (UNITS, 1))
    recurrent = body.input(dtype, (UNITS, UNITS))
    query = body.apply("bias_add", body.apply("matmul", h, query_kernel), query_bias)
    energy = body.apply("tanh", body.apply("add", keys, body.apply("expand_dims", query,
                                                                   axis=1)))
    scores = body.apply("reshape", body.apply("matmul", energy, score_kernel),
                        shape=("B", ROWS))
    new_h = body.apply("tanh", body.apply("matmul", h, recurrent))
    builder = ProgramBuilder()
    keys_in = builder.input(dtype, ("B", ROWS, UNITS), name="keys")
    h0 = builder.input(dtype, ("B", UNITS), name="initial_state/0", default=0.0)
    weights = {name: builder.param(name, dtype, shape) for name, shape in (
        ("U", (UNITS, UNITS)), ("b", (UNITS,)), ("v", (UNITS, 1)), ("W", (UNITS, UNITS)))}
    outputs = builder.scan(body.build([scores, new_h]), states=[h0], constants=[
        keys_in, weights["U"], weights["b"], weights["v"], weights["W"]],
        length=STEPS, return_sequences=True)
    return builder.build(outputs)


def _weights(bias, dtype="float32", spread=0.1):
    rng = np.random.default_rng(4)
    return {"U": (0.1 * spread * rng.standard_normal((UNITS, UNITS))).astype(dtype),
            "b": (bias + spread * rng.standard_normal(UNITS)).astype(dtype),
            "v": np.eye(UNITS, 1, -3, dtype=dtype),    # the score is unit 3's tanh
            "W": (0.3 * rng.standard_normal((UNITS, UNITS))).astype(dtype)}


def _compare(program, weights, keys, h0):
    compiled = rshop_ir.compile(BoundProgram(program, weights))
    expected = interpret(program, keys, initial_state=h0, weights=weights)
    one = compiled(keys, initial_state=h0, team_size=1)
    for got, want in zip(one, expected):
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)
    for members in (2, 3):
        for got, want in zip(compiled(keys, initial_state=h0, team_size=members), one):
            np.testing.assert_array_equal(got, want)
    return compiled


@pytest.mark.parametrize("keys_low, keys_high, bias, spread", [
    (-2.0, 2.0, 0.0, 0.1),          # the usual range: the factored loop runs
    (44.37, 44.5, -39.9, 0.02),     # keys too far (exp(2k) overflows, tanh(4.5) is not
                                    # 1): the usual loop
    (-40.0, -39.9, 44.5, 0.02),     # queries too far (exp(2q) overflows): the usual loop
    (39.9, 40.0, -43.8, 0.02),      # queries too far on the other side (exp(2q) is
                                    # subnormal)
])
def test_factored_tanh_matches_the_interpreter(keys_low, keys_high, bias, spread):
    program = _scores_program()
    rng = np.random.default_rng(5)
    keys = rng.uniform(keys_low, keys_high, (2, ROWS, UNITS)).astype(np.float32)
    h0 = (0.5 * rng.standard_normal((2, UNITS))).astype(np.float32)
    compiled = _compare(program, _weights(bias, spread=spread), keys, h0)
    assert "exp_twice" in compiled.source and "tanh_f32(" in compiled.source


def test_nan_and_inf_keys_propagate_as_in_the_interpreter():
    program = _scores_program()
    rng = np.random.default_rng(6)
    keys = rng.standard_normal((3, ROWS, UNITS)).astype(np.float32)
    keys[0, 1, 3] = np.nan
    keys[1, 2, 3] = np.inf
    keys[2, 0, 3] = -np.inf
    weights = _weights(0.0)
    compiled = rshop_ir.compile(BoundProgram(program, weights))
    expected = interpret(program, keys, weights=weights)
    for members in (1, 2):
        for got, want in zip(compiled(keys, team_size=members), expected):
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-4, equal_nan=True)
            np.testing.assert_array_equal(np.isnan(got), np.isnan(want))


def test_only_float32_and_a_constant_plus_a_step_value_are_factored():
    float64 = rshop_ir.compile(BoundProgram(_scores_program("float64"),
                                            _weights(0.0, "float64")))
    assert "exp_twice" not in float64.source
    program = _scores_program()
    scan = next(eqn for eqn in program.eqns if eqn.op == "scan")
    body = scan.params["body"]
    keys, query = body.inputs[1], body.eqns[2].outputs[0]     # (B, R, n), (B, 1, n)
    assert factored_tanh._applies(keys, query, set(), {keys}, keys.shape)
    assert not factored_tanh._applies(query, keys, set(), {keys}, keys.shape)
    assert not factored_tanh._applies(keys, keys, set(), {keys}, keys.shape)
    assert not factored_tanh._applies(keys, query, {query}, {keys}, keys.shape)
