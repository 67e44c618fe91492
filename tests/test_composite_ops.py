"""`keras.ops` traced as formulas of other IR ops (frontends/keras_trace/
composite_rules.py, and split points, mod and floor_divide in op_rules.py), compiled
whole by accelerate and compared with Keras."""

import keras
import numpy as np
import pytest
from keras import layers, ops

from keras_checks import assert_compiled_like_keras

OPS = {
    "logsumexp": lambda v: ops.logsumexp(v, axis=-1),
    "logsumexp_two_axes_kept": lambda v: ops.logsumexp(v, axis=(1, 2), keepdims=True),
    "argmax": lambda v: ops.argmax(v, axis=-1),
    "argmin_kept": lambda v: ops.argmin(v, axis=1, keepdims=True),
    "var": lambda v: ops.var(v, axis=-1),
    "std_two_axes_kept": lambda v: ops.std(v, axis=(1, 2), keepdims=True),
    "norm": lambda v: ops.norm(v, axis=-1),
    "norm_1": lambda v: ops.norm(v, ord=1, axis=1),
    "norm_inf": lambda v: ops.norm(v, ord=np.inf, axis=-1),
    "norm_3_kept": lambda v: ops.norm(v, ord=3, axis=-1, keepdims=True),
    "normalize": lambda v: ops.normalize(v, axis=-1),
    "normalize_order_1": lambda v: ops.normalize(v, axis=1, order=1),
    "tile": lambda v: ops.tile(v, (2, 3)),
    "moveaxis": lambda v: ops.moveaxis(v, 1, 2),
    "roll": lambda v: ops.roll(v, -2, axis=-1),
    "roll_two_axes": lambda v: ops.roll(v, (1, 3), axis=(1, 2)),
    "take": lambda v: ops.take(v, [0, 2, -1], axis=1),
    "take_one": lambda v: ops.take(v, -1, axis=2),
    "round": lambda v: ops.round(v),
    "round_2": lambda v: ops.round(v, 2),
    "mod": lambda v: ops.mod(v, 0.7),
    "floor_divide": lambda v: ops.floor_divide(v, 0.7),
    "split_at_points": lambda v: ops.split(v, [1, 3], axis=-1)[1],
    "log_sigmoid": ops.log_sigmoid,
    "hard_tanh": ops.hard_tanh,
    "tanh_shrink": ops.tanh_shrink,
    "celu": lambda v: ops.celu(v, alpha=0.5),
    "glu": lambda v: ops.glu(v, axis=1),
    "squareplus": ops.squareplus,
    "soft_shrink": lambda v: ops.soft_shrink(v, 0.3),
    "hard_shrink": ops.hard_shrink,
}


@pytest.fixture(scope="module")
def data():
    values = 2 * np.random.default_rng(81).standard_normal((3, 6, 4)).astype("float32")
    values[0, 0] = [2.5, -0.5, 1.5, 0.125]      # halves: rounded to even, as Keras
    values[1, 2] = -np.inf                       # a row of -inf: logsumexp gives -inf
    return values


@pytest.mark.parametrize("name", sorted(OPS))
def test_composite_op_compiles_with_keras_numbers(name, data):
    inputs = keras.Input((6, 4))
    model = keras.Model(inputs, layers.Lambda(OPS[name])(inputs))
    finite = np.where(np.isfinite(data), data, 1.0) if "logsumexp" not in name else data
    fast = assert_compiled_like_keras(model, finite)
    assert fast.predict(finite).dtype == model.predict(finite, verbose=0).dtype
