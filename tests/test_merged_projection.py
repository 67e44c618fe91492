"""The wide-batch kernel: recurrent products that take the step's input projection in.

`paired_matmul` (kernels/cpu/merged_projection.py) on hand-built step bodies: the sum
of the projected sequence and a recurrent product, whole or sliced column for column,
either side plus a bias first, qualifies; any other use of either does not. Then the
generated wide variant (one `packed_pair_product`, no chunk projection) against the
interpreter for the RNN options, both dtypes, tile remainders, changed weights; a
program whose step reads the projection otherwise keeps the plain kernel, and a call
of too few rows never generates the variant.
"""

import numpy as np
import pytest

import rshop_ir
from rshop_ir import examples
from rshop_ir.bound import BoundProgram
from rshop_ir.builder import ProgramBuilder
from rshop_ir.interpret import interpret
from rshop_ir.kernels.cpu import background_compile, runtime
from rshop_ir.kernels.cpu.codegen import generate
from rshop_ir.kernels.cpu.merged_projection import paired_matmul


def _body(use):
    """A step body over a projected sequence k (B, 8) and a product p = h @ U (B, 8),
    whose output is `use(builder, k, p)`; returns (body, k, the matmul eqn)."""
    builder = ProgramBuilder()
    k = builder.input("float32", ("B", 8), name="k")
    h = builder.input("float32", ("B", 4), name="h")
    u = builder.input("float32", (4, 8), name="U")
    p = builder.apply("matmul", h, u)
    body = builder.build([use(builder, k, p)])
    return body, body.inputs[0], next(e for e in body.eqns if e.op == "matmul")


def _halves(builder, k, p, k_first=(0, 4), p_first=(0, 4)):
    tanh = []
    for (k_start, k_stop), (p_start, p_stop) in ((k_first, p_first), ((4, 8), (4, 8))):
        k_part = builder.apply("slice", k, axis=1, start=k_start, stop=k_stop)
        p_part = builder.apply("slice", p, axis=1, start=p_start, stop=p_stop)
        tanh.append(builder.apply("tanh", builder.apply("add", p_part, k_part)))
    return builder.apply("mul", *tanh)


def _bias(builder, value):
    return builder.apply("bias_add", value, builder.input("float32", (8,), name="bias"))


@pytest.mark.parametrize("use", [
    lambda b, k, p: b.apply("tanh", b.apply("add", k, p)),
    _halves,
    lambda b, k, p: b.apply("add", k, _bias(b, p)),
    lambda b, k, p: b.apply("add", _bias(b, _bias(b, k)), p),
], ids=["whole", "slices", "product-plus-bias", "sequence-plus-biases"])
def test_a_sum_column_for_column_pairs_the_product(use):
    body, k, matmul = _body(use)
    assert paired_matmul(body, k) is matmul


@pytest.mark.parametrize("use", [
    lambda b, k, p: b.apply("mul", k, p),
    lambda b, k, p: b.apply("add", b.apply("add", k, p), k),
    lambda b, k, p: b.apply("add", b.apply("tanh", k), p),
    lambda b, k, p: _halves(b, k, p, k_first=(0, 4), p_first=(4, 8)),
    lambda b, k, p: k,
    lambda b, k, p: b.apply("add", k, b.apply("add", p, k)),
    lambda b, k, p: b.apply("mul", _bias(b, p), b.apply("add", k, p)),
], ids=["product", "sequence-twice", "sequence-transformed", "other-columns",
        "sequence-out", "sequence-in-the-product's-sum", "product-plus-bias-multiplied"])
def test_other_uses_keep_the_projection_hoisted(use):
    body, k, _ = _body(use)
    assert paired_matmul(body, k) is None


@pytest.fixture
def wide_calls(monkeypatch):
    """Every call of 8+ rows runs the wide variant, compiled in the call."""
    monkeypatch.setattr(runtime, "MERGED_MIN_FLOPS", 0)
    monkeypatch.setattr(background_compile, "BACKGROUND", False)


def _compiled(program, dtype, seed=0):
    weights = examples.random_weights(program, seed=seed, scale=0.3)
    bound = BoundProgram(program, weights)
    return bound, rshop_ir.compile(bound)


def _counted_wide(compiled):
    """Wrap the wide variant's `run` to count its calls; returns the counter."""
    kernel, run, module = compiled._variants["wide"]
    calls = []

    def counted(*arguments):
        calls.append(arguments[0])
        return run(*arguments)
    counted.overloads = run.overloads     # compiled already
    compiled._variants["wide"] = (kernel, counted, module)
    return calls


def test_the_wide_variant_takes_the_projection_in():
    _, compiled = _compiled(examples.lstm_program(20, 24), "float32")
    plain = compiled.kernel
    wide = generate(compiled.program, merged=True)
    assert wide.merged_products == 1 and plain.merged_products == 0
    assert "packed_pair_product(staged_0, packed_1, packed_start_1, state_0, packed," \
        in wide.source
    assert "projected_0" not in wide.source and "projected_0" in plain.source
    assert "np.float32(-0.0) + product[" in wide.source
    assert wide.weight_slots == plain.weight_slots


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("batch, steps", [(8, 1), (13, 7), (21, 12)])
@pytest.mark.parametrize("options", [
    {}, {"return_sequences": True}, {"go_backwards": True, "return_sequences": True},
    {"masked": True, "return_sequences": True}])
def test_wide_calls_match_the_interpreter(wide_calls, dtype, batch, steps, options):
    program = examples.lstm_program(20, 24, dtype=dtype, **options)
    bound, compiled = _compiled(program, dtype, seed=batch)
    inputs = examples.random_inputs(program, batch=batch, steps=steps, seed=steps)
    inputs = [array.astype(dtype) if array.dtype.kind == "f" else array for array in inputs]
    names = dict(zip(program.input_names, inputs))
    x = names.pop("x")
    compiled(x, **names, team_size=1)          # generates and compiles the variant
    calls = _counted_wide(compiled)
    got = compiled(x, **names, team_size=1)
    assert calls == [batch]
    expected = interpret(bound, *inputs)
    tolerance = 1e-4 if dtype == "float32" else 1e-10
    for got_array, want in zip(got, expected):
        np.testing.assert_allclose(got_array, want, atol=tolerance, rtol=0)


def test_wide_calls_read_changed_weights(wide_calls):
    program = examples.lstm_program(20, 24, return_sequences=True)
    bound, compiled = _compiled(program, "float32")
    x = np.random.default_rng(3).standard_normal((9, 6, 20)).astype(np.float32)
    compiled(x, team_size=1)
    calls = _counted_wide(compiled)
    changed = {name: value * -0.7 for name, value in bound.weights.items()}
    compiled.set_weights(changed)
    got = compiled(x, team_size=1)
    assert calls == [9]
    for got_array, want in zip(got, interpret(BoundProgram(program, changed), x)):
        np.testing.assert_allclose(got_array, want, atol=1e-4, rtol=0)


def test_a_step_reading_its_projection_otherwise_keeps_the_plain_kernel(wide_calls):
    """h' = tanh(x W + h U) * (x W): the projection is read beside the sum."""
    body = ProgramBuilder()
    x_t = body.input("float32", ("B", 20), name="x_t")
    h = body.input("float32", ("B", 24), name="h")
    w = body.input("float32", (20, 24), name="W")
    u = body.input("float32", (24, 24), name="U")
    projected = body.apply("matmul", x_t, w)
    total = body.apply("add", projected, body.apply("matmul", h, u))
    new_h = body.apply("mul", body.apply("tanh", total), projected)
    step = body.build([new_h, new_h])
    builder = ProgramBuilder()
    x = builder.input("float32", ("B", "T", 20), name="x")
    h0 = builder.input("float32", ("B", 24), name="initial_state/0", default=0.0)
    weights = [builder.param("W", "float32", (20, 24)), builder.param("U", "float32", (24, 24))]
    program = builder.build(builder.scan(step, sequences=[x], states=[h0], constants=weights,
                                         return_sequences=True))
    bound, compiled = _compiled(program, "float32")
    assert "projected_0" in compiled.source           # hoisted in the plain kernel
    x_value = np.random.default_rng(5).standard_normal((12, 5, 20)).astype(np.float32)
    got = compiled(x_value, team_size=1)
    assert compiled._variants["wide"] is None
    for got_array, want in zip(got, interpret(bound, x_value)):
        np.testing.assert_allclose(got_array, want, atol=1e-4, rtol=0)


def test_calls_of_few_rows_or_little_work_never_generate_the_variant(monkeypatch):
    monkeypatch.setattr(background_compile, "BACKGROUND", False)
    _, compiled = _compiled(examples.lstm_program(20, 24), "float32")
    x = np.random.default_rng(1).standard_normal((16, 5, 20)).astype(np.float32)
    compiled(x[:runtime.MERGED_MIN_ROWS - 1], team_size=1)
    compiled(x, team_size=1)       # rows enough, but far below MERGED_MIN_FLOPS
    assert "wide" not in compiled._variants
