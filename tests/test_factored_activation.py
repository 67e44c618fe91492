"""kernels/cpu/factored_activation.py: tanh(keys + query) from exp(2 keys), and
sigmoid(keys + query) from exp(-keys), once a call.

Each test compares the compiled kernel with the numpy interpreter: in the usual range,
where a key is too far for the factored form (the usual loop then runs, the numbers
stay right), where queries are far (the factored loop still runs: tanh takes their
exponential in two factors), also on only one member's columns, with NaN and inf
keys; teams give one thread's numbers bit for bit. The benchmark's Keras decoder, factored, is compared with Keras in
test_kernel_parallel.py (test_team_members_share_the_rows_of_a_product_before_the_scan).
"""

import numpy as np
import pytest

import rshop_ir
from rshop_ir import ProgramBuilder
from rshop_ir.bound import BoundProgram
from rshop_ir.interpret import interpret
from rshop_ir.kernels.cpu import factored_activation
from rshop_ir.kernels.cpu.factored_activation import EXPONENTIAL_NAMES

UNITS, ROWS, STEPS = 64, 4, 6       # 64 units: two column blocks, split by a team
# the bias of the mixed cases: queries beyond 40 in the first 32 units (unit 3, which the
# score reads most, among them), near in the others (another member's on a team)
MIXED = np.where(np.arange(UNITS) < 32, 44.5, 38.0)

pytestmark = pytest.mark.usefixtures("kernel_cache")  # a fresh kernel disk cache


def _scores_program(dtype="float32", activation="tanh"):
    """Per step: q = h @ U + b; y = activation(keys + q) @ v, (B, ROWS) (the attention's
    scores, kept as the output so that every activation value shows);
    h' = tanh(h @ W)."""
    body = ProgramBuilder()
    h = body.input(dtype, ("B", UNITS))
    keys = body.input(dtype, ("B", ROWS, UNITS))
    query_kernel, query_bias = body.input(dtype, (UNITS, UNITS)), body.input(dtype, (UNITS,))
    score_kernel = body.input(dtype, (UNITS, 1))
    recurrent = body.input(dtype, (UNITS, UNITS))
    query = body.apply("bias_add", body.apply("matmul", h, query_kernel), query_bias)
    energy = body.apply(activation, body.apply("add", keys, body.apply("expand_dims", query,
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
    """`bias`: a number, or one a unit."""
    rng = np.random.default_rng(4)
    return {"U": (0.1 * spread * rng.standard_normal((UNITS, UNITS))).astype(dtype),
            "b": (np.asarray(bias) + spread * rng.standard_normal(UNITS)).astype(dtype),
            # the score: unit 3's activation, plus 0.01 of every other unit's (their
            # last bits show too)
            "v": (np.eye(UNITS, 1, -3) + 0.01).astype(dtype),
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


@pytest.mark.parametrize("activation, keys_low, keys_high, bias, spread", [
    ("tanh", -2.0, 2.0, 0.0, 0.1),          # the usual range: the factored loop runs
    ("tanh", 44.37, 44.5, -39.9, 0.02),     # keys too far (exp(2k) overflows, tanh(4.5)
                                            # is not 1): the usual loop
    ("tanh", -40.0, -39.9, 44.5, 0.02),     # queries too far (exp(2q) would overflow:
                                            # taken in two factors, the factored loop)
    ("tanh", 39.9, 40.0, -43.8, 0.02),      # queries too far on the other side (exp(2q)
                                            # would be subnormal)
    ("tanh", -40.0, -39.9, MIXED, 0.02),    # some queries too far, on one member

    ("sigmoid", -2.0, 2.0, 0.0, 0.1),
    ("sigmoid", -2.0, 2.0, MIXED, 0.02),    # queries beyond 40 (sigmoid near 1) on one
                                            # member, usual ones on the other
    ("sigmoid", 95.0, 95.1, -92.0, 0.02),   # keys and queries too far (exp(-k) 0 or
                                            # subnormal, exp(-q) inf; sigmoid(3) is not 0)
    ("sigmoid", -95.1, -95.0, 97.5, 0.02),  # the other side (exp(-k) inf, exp(-q) 0:
                                            # NaN). Either alone too far cannot change
                                            # sigmoid's numbers: its product saturates
                                            # the right way
])
def test_factored_activation_matches_the_interpreter(activation, keys_low, keys_high, bias,
                                                     spread):
    program = _scores_program(activation=activation)
    rng = np.random.default_rng(5)
    keys = rng.uniform(keys_low, keys_high, (2, ROWS, UNITS)).astype(np.float32)
    h0 = (0.5 * rng.standard_normal((2, UNITS))).astype(np.float32)
    compiled = _compare(program, _weights(bias, spread=spread), keys, h0)
    assert EXPONENTIAL_NAMES[activation] in compiled.source
    assert f"{activation}_f32(" in compiled.source        # the usual loop is there too


@pytest.mark.parametrize("activation", ["tanh", "sigmoid"])
def test_nan_and_inf_keys_propagate_as_in_the_interpreter(activation):
    program = _scores_program(activation=activation)
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
    float64 = rshop_ir.compile(BoundProgram(_scores_program("float64", "sigmoid"),
                                            _weights(0.0, "float64")))
    assert "exp_negated" not in float64.source
    program = _scores_program()
    scan = next(eqn for eqn in program.eqns if eqn.op == "scan")
    body = scan.params["body"]
    keys, query = body.inputs[1], body.eqns[2].outputs[0]     # (B, R, n), (B, 1, n)
    assert factored_activation._applies(keys, query, set(), {keys}, keys.shape)
    assert not factored_activation._applies(query, keys, set(), {keys}, keys.shape)
    assert not factored_activation._applies(keys, keys, set(), {keys}, keys.shape)
    assert not factored_activation._applies(keys, query, {query}, {keys}, keys.shape)


def test_a_keras_decoder_with_sigmoid_scores_gives_the_keras_numbers():
    """The benchmark's gated attention decoder, sigmoid(keys + query) for its energies
    (bench/suites.py): both kernels take it factored, teams give one thread's numbers
    bit for bit, and one thread gives Keras's, at batches 1 and 3."""
    from bench import sizes, suites

    case = suites.gated_attention_decoder(sizes.parse_size("1,7,12,64"),
                                          np.random.default_rng(8))
    compiled = rshop_ir.compile(case.model, target="cpu")
    assert "exp_negated" in compiled.source and "exp_twice" not in compiled.source
    assert "exp_negated" in compiled._team_kernel()[0].source
    memory = np.random.default_rng(9).standard_normal((3, 16, 12)).astype(np.float32)
    for inputs in (case.inputs[0], memory):
        expected = case.model.predict(inputs, verbose=0)
        one = compiled(inputs, team_size=1)
        assert one.shape == expected.shape
        np.testing.assert_allclose(one, expected, rtol=0, atol=1e-4)
        for members in (2, 3):
            np.testing.assert_array_equal(compiled(inputs, team_size=members), one)
