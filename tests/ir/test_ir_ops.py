"""Each op's numpy semantics against an independent formula, and its shape rule."""

import math

import numpy as np
import pytest
import scipy.special

import rshop_ir
from rshop_ir import ProgramBuilder, UnsupportedError, get_op, interpret
from rshop_ir.ir import TensorType


def run_op(op, *arrays, **params):
    """Build a one-eqn program for `op` over concrete inputs and interpret it."""
    builder = ProgramBuilder()
    inputs = [builder.input(np.asarray(a).dtype.name, np.shape(a)) for a in arrays]
    out = builder.apply(op, *inputs, **params)
    program = rshop_ir.verify(builder.build([out]))
    result = interpret(program, *arrays)
    assert result.dtype == np.dtype(out.dtype)
    assert result.shape == tuple(out.shape)
    return result


RNG = np.random.default_rng(1)
X = (3 * RNG.standard_normal((4, 5))).astype("float64")
Y = (3 * RNG.standard_normal((4, 5))).astype("float64")
POSITIVE = np.abs(X) + 0.1


UNARY_FORMULAS = {
    "neg": lambda x: -x,
    "abs": lambda x: np.where(x < 0, -x, x),
    "square": lambda x: x * x,
    "sqrt": lambda x: x ** 0.5,
    "rsqrt": lambda x: x ** -0.5,
    "exp": lambda x: math.e ** x,
    "log": lambda x: np.vectorize(math.log)(x),
    "tanh": lambda x: (np.exp(2 * x) - 1) / (np.exp(2 * x) + 1),
    "sigmoid": lambda x: 1 / (1 + np.exp(-x)),
    "hard_sigmoid": lambda x: np.where(x <= -3, 0.0, np.where(x >= 3, 1.0, x / 6 + 0.5)),
    "relu": lambda x: x * (x > 0),
    "relu6": lambda x: np.vectorize(lambda v: min(max(v, 0.0), 6.0))(x),
    "elu": lambda x: np.where(x > 0, x, np.exp(x) - 1),
    "selu": lambda x: 1.0507009873554805 * np.where(x > 0, x, 1.6732632423543772
                                                      * (np.exp(x) - 1)),
    "softplus": lambda x: np.log(1 + np.exp(x)),
    "softsign": lambda x: x / (1 + np.abs(x)),
    "silu": lambda x: x / (1 + np.exp(-x)),
    "linear": lambda x: x,
    "dropout": lambda x: x,
    "erf": lambda x: np.vectorize(math.erf)(x),
}


@pytest.mark.parametrize("op", sorted(UNARY_FORMULAS))
def test_unary_op_matches_formula(op):
    x = POSITIVE if op in ("sqrt", "rsqrt", "log") else X
    np.testing.assert_allclose(run_op(op, x), UNARY_FORMULAS[op](x), rtol=1e-12, atol=1e-12)


def test_gelu_exact_and_tanh_forms():
    exact = 0.5 * X * (1 + np.vectorize(math.erf)(X / math.sqrt(2)))
    np.testing.assert_allclose(run_op("gelu", X, approximate=False), exact, rtol=1e-12)
    tanh_form = 0.5 * X * (1 + np.tanh(math.sqrt(2 / math.pi) * (X + 0.044715 * X ** 3)))
    np.testing.assert_allclose(run_op("gelu", X, approximate=True), tanh_form, rtol=1e-12)
    assert np.abs(tanh_form - exact).max() > 1e-5  # the two forms really differ


def test_leaky_relu_default_slope_is_keras_0_2():
    np.testing.assert_allclose(run_op("leaky_relu", X), np.where(X > 0, X, 0.2 * X))
    np.testing.assert_allclose(run_op("leaky_relu", X, negative_slope=0.01),
                               np.where(X > 0, X, 0.01 * X))


def test_elu_alpha_and_clip():
    np.testing.assert_allclose(run_op("elu", X, alpha=0.5), np.where(X > 0, X, 0.5 * np.expm1(X)))
    np.testing.assert_allclose(run_op("clip", X, min_value=-1.0, max_value=2.0),
                               np.minimum(np.maximum(X, -1.0), 2.0))


BINARY_FORMULAS = {
    "add": lambda x, y: x + y, "sub": lambda x, y: x - y, "mul": lambda x, y: x * y,
    "div": lambda x, y: x / y, "maximum": lambda x, y: np.where(x > y, x, y),
    "minimum": lambda x, y: np.where(x < y, x, y), "pow": lambda x, y: np.exp(y * np.log(x)),
}


@pytest.mark.parametrize("op", sorted(BINARY_FORMULAS))
def test_binary_op_matches_formula(op):
    x = POSITIVE if op == "pow" else X
    np.testing.assert_allclose(run_op(op, x, Y), BINARY_FORMULAS[op](x, Y), rtol=1e-12)


def test_broadcasting_and_bias_add():
    bias = RNG.standard_normal(5)
    np.testing.assert_allclose(run_op("bias_add", X, bias), X + bias[None, :])
    column = RNG.standard_normal((4, 1))
    np.testing.assert_allclose(run_op("mul", X, column), X * np.repeat(column, 5, axis=1))


@pytest.mark.parametrize("op,formula", [
    ("greater", lambda x, y: x > y), ("greater_equal", lambda x, y: x >= y),
    ("less", lambda x, y: x < y), ("less_equal", lambda x, y: x <= y),
    ("equal", lambda x, y: x == y), ("not_equal", lambda x, y: x != y)])
def test_comparisons_give_bool(op, formula):
    y = np.where(RNG.random(X.shape) < 0.3, X, Y)  # some ties
    result = run_op(op, X, y)
    assert result.dtype == np.bool_
    np.testing.assert_array_equal(result, formula(X, y))


def test_logical_ops_and_where():
    a, b = X > 0, Y > 0
    np.testing.assert_array_equal(run_op("logical_and", a, b), [[p and q for p, q in zip(r, s)]
                                                               for r, s in zip(a, b)])
    np.testing.assert_array_equal(run_op("logical_or", a, b), a | b)
    np.testing.assert_array_equal(run_op("logical_xor", a, b), a != b)
    np.testing.assert_array_equal(run_op("logical_not", a), ~a)
    np.testing.assert_array_equal(run_op("where", a, X, Y), a * X + (~a) * Y)


def test_cast_and_zeros_ones_like():
    result = run_op("cast", X, dtype="int32")
    assert result.dtype == np.int32
    np.testing.assert_array_equal(result, np.trunc(X))
    np.testing.assert_array_equal(run_op("zeros_like", X), 0 * X)
    np.testing.assert_array_equal(run_op("ones_like", X), X ** 0)


def test_matmul_2d_and_dense_on_last_axis():
    a, w = RNG.standard_normal((4, 3)), RNG.standard_normal((3, 6))
    manual = np.array([[sum(a[i, k] * w[k, j] for k in range(3)) for j in range(6)]
                       for i in range(4)])
    np.testing.assert_allclose(run_op("matmul", a, w), manual)
    sequence = RNG.standard_normal((2, 5, 3))
    result = run_op("matmul", sequence, w)
    for t in range(5):
        np.testing.assert_allclose(result[:, t], sequence[:, t] @ w)


def test_einsum_batch_dot_and_attention():
    query, keys = RNG.standard_normal((2, 4)), RNG.standard_normal((2, 7, 4))
    scores = run_op("einsum", query, keys, equation="bd,btd->bt")
    manual = np.array([[query[b] @ keys[b, t] for t in range(7)] for b in range(2)])
    np.testing.assert_allclose(scores, manual)


def test_layer_norm_matches_manual():
    gamma, beta = RNG.standard_normal(5), RNG.standard_normal(5)
    result = run_op("layer_norm", X, gamma, beta, axis=-1, epsilon=1e-3)
    for row in range(X.shape[0]):
        values = X[row]
        mean = sum(values) / len(values)
        variance = sum((v - mean) ** 2 for v in values) / len(values)
        expected = [(v - mean) / math.sqrt(variance + 1e-3) * g + b
                    for v, g, b in zip(values, gamma, beta)]
        np.testing.assert_allclose(result[row], expected, rtol=1e-10)


def test_softmax_and_log_softmax():
    result = run_op("softmax", X, axis=-1)
    manual = np.exp(X) / np.exp(X).sum(axis=-1, keepdims=True)
    np.testing.assert_allclose(result, manual, rtol=1e-12)
    np.testing.assert_allclose(run_op("log_softmax", X, axis=0),
                               np.log(np.exp(X) / np.exp(X).sum(axis=0)), rtol=1e-10)
    big = np.array([[1000.0, 1000.0]])
    np.testing.assert_allclose(run_op("softmax", big), [[0.5, 0.5]])  # stable form


def test_running_sums_and_products():
    for axis in (0, 1, -1):
        moved = np.moveaxis(X, axis, -1)
        sums = np.zeros_like(moved)
        products = np.zeros_like(moved)
        for index in np.ndindex(moved.shape[:-1]):
            total, product = 0.0, 1.0
            for position, value in enumerate(moved[index]):
                total, product = total + value, product * value
                sums[index][position], products[index][position] = total, product
        np.testing.assert_allclose(run_op("cumsum", X, axis=axis),
                                   np.moveaxis(sums, -1, axis), rtol=1e-12)
        np.testing.assert_allclose(run_op("cumprod", X, axis=axis),
                                   np.moveaxis(products, -1, axis), rtol=1e-12)
    counts = run_op("cumsum", np.array([[1, 0, 1, 1]], dtype="int32"), axis=1)
    np.testing.assert_array_equal(counts, [[1, 1, 2, 3]])       # int32 stays int32
    for bad, match in [(TensorType("bool", (2, 3)), "cast"),
                       (TensorType("float32", ()), "scalar")]:
        with pytest.raises(ValueError, match=match):
            get_op("cumsum").shape_rule(bad, axis=-1)


def test_reductions():
    np.testing.assert_allclose(run_op("reduce_sum", X, axes=(1,)),
                               [sum(row) for row in X])
    np.testing.assert_allclose(run_op("reduce_mean", X, axes=(0,), keepdims=True),
                               [[sum(col) / 4 for col in X.T]])
    np.testing.assert_allclose(run_op("reduce_max", X), max(X.ravel()))
    np.testing.assert_allclose(run_op("reduce_min", X, axes=1), [min(row) for row in X])
    np.testing.assert_array_equal(run_op("argmax", X), [list(r).index(max(r)) for r in X])


def test_structure_ops():
    a, b = X, Y[:, :2]
    np.testing.assert_array_equal(run_op("concatenate", a, b, axis=1)[:, 5:], b)
    np.testing.assert_array_equal(run_op("slice", X, axis=1, start=1, stop=3), X[:, 1:3])
    np.testing.assert_array_equal(run_op("reshape", X, shape=(5, -1)).ravel(), X.ravel())
    assert run_op("expand_dims", X, axis=1).shape == (4, 1, 5)
    assert run_op("squeeze", X[:, None], axis=1).shape == (4, 5)
    np.testing.assert_array_equal(run_op("repeat", X, repeats=2, axis=0)[1], X[0])
    np.testing.assert_array_equal(run_op("tile", X, repeats=(1, 2))[:, 5:], X)
    np.testing.assert_array_equal(run_op("transpose", X, perm=(1, 0)), X.T)
    np.testing.assert_array_equal(run_op("reverse", X, axis=1), X[:, ::-1])


def test_gather_is_embedding_lookup():
    table = RNG.standard_normal((10, 3))
    ids = np.array([[1, 9, 0], [4, 4, 2]], dtype="int32")
    result = run_op("gather", table, ids)
    assert result.shape == (2, 3, 3)
    np.testing.assert_array_equal(result[1, 0], table[4])


def test_fill_with_symbolic_batch_and_constant():
    builder = ProgramBuilder()
    x = builder.input("float32", ("B", 3))
    zeros = builder.apply("fill", shape=("B", 3), value=0.5, dtype="float32")
    table = builder.apply("constant", value=(1.0, 2.0, 3.0), dtype="float32", shape=(3,))
    out = builder.apply("add", builder.apply("mul", x, zeros), table)
    result = interpret(builder.build([out]), np.ones((4, 3)))
    np.testing.assert_allclose(result, np.tile([1.5, 2.5, 3.5], (4, 1)))


def test_shape_rules_with_symbolic_dims():
    add = get_op("add")
    (out,) = add.infer([TensorType("float32", ("B", 1, 4)), TensorType("float32", ("T", 4))],
                       {})
    assert out.shape == ("B", "T", 4)
    with pytest.raises(ValueError, match="broadcast"):
        add.infer([TensorType("float32", ("B", 4)), TensorType("float32", (3, 4))], {})
    (out,) = get_op("matmul").infer([TensorType("float32", ("B", "T", 8)),
                                     TensorType("float32", (8, 16))], {})
    assert out == TensorType("float32", ("B", "T", 16))
    (out,) = get_op("reshape").infer([TensorType("float32", ("B", 4, 4))],
                                     {"shape": ("B", -1)})
    assert out.shape == ("B", 16)
    with pytest.raises(ValueError, match="symbolic"):
        get_op("concatenate").infer([TensorType("float32", ("B", 2))] * 2, {"axis": 0})


def test_missing_op_raises_unsupported_error():
    with pytest.raises(UnsupportedError, match="'fft'"):
        get_op("fft")
    builder = ProgramBuilder()
    x = builder.input("float32", (2,))
    with pytest.raises(UnsupportedError):
        builder.apply("fft", x)
    assert issubclass(UnsupportedError, NotImplementedError)


def test_unknown_and_missing_params_are_rejected():
    builder = ProgramBuilder()
    x = builder.input("float32", (2, 3))
    with pytest.raises(ValueError, match="has no param"):
        builder.apply("tanh", x, axis=1)
    with pytest.raises(ValueError, match="requires the param 'perm'"):
        builder.apply("transpose", x)


def test_every_op_has_rule_and_impl():
    assert len(rshop_ir.OPS) > 60
    for name, op in rshop_ir.OPS.items():
        assert op.name == name and callable(op.shape_rule) and callable(op.impl)


def test_float32_results_stay_float32():
    x = X.astype("float32")
    for op in ("sigmoid", "gelu", "softplus", "tanh"):
        assert run_op(op, x).dtype == np.float32
    np.testing.assert_allclose(run_op("sigmoid", x), scipy.special.expit(X), rtol=1e-6)
