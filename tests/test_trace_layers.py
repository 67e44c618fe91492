"""Tracer coverage: each kind of Keras layer and op node, traced and interpreted
against Keras (`training=False`)."""

import keras
import numpy as np
import pytest
from keras import layers, ops

import rshop_ir
from recurrentshop import GRUCell, LSTMCell, RecurrentModel, RecurrentSequential


class MinimalKerasCell(keras.layers.Layer):
    """A user's Keras cell written with keras.ops (traced by re-running its call)."""

    def __init__(self, units, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.state_size = units

    def build(self, input_shape):
        self.kernel = self.add_weight(shape=(input_shape[-1], self.units), name="kernel")
        self.recurrent_kernel = self.add_weight(shape=(self.units, self.units),
                                                name="recurrent_kernel")

    def call(self, inputs, states):
        output = ops.tanh(ops.matmul(inputs, self.kernel)
                          + 0.5 * ops.matmul(states[0], self.recurrent_kernel))
        return output, [output]


class _ConstantStartCell(MinimalKerasCell):
    """Starts from 0.7 everywhere (its get_initial_state), as Keras's RNN asks it."""

    def get_initial_state(self, batch_size=None):
        return [ops.ones((batch_size, self.units)) * 0.7]


def _x(rng, shape=(3, 6, 4)):
    return rng.standard_normal(shape).astype("float32")


def _step_rnn(build_output, units=3, features=4, **kwargs):
    x_t, h = keras.Input((features,)), keras.Input((units,))
    output = build_output(x_t, h)
    return RecurrentModel(input=x_t, initial_states=[h], output=output, final_states=[output],
                          return_sequences=True, backend="keras", **kwargs)


def _sequential_model():
    return keras.Sequential([
        keras.Input((6, 4)),
        layers.TimeDistributed(layers.Dense(5, activation="relu")),
        LSTMCell(3, input_dim=5).get_layer(return_sequences=True, backend="keras"),
        layers.Flatten(),
        layers.Dense(2, activation="softmax"),
    ])


def _shapes_model():
    inputs = keras.Input((6, 4))
    permuted = layers.Permute((2, 1))(inputs)                  # (B, 4, 6)
    reshaped = layers.Reshape((6, 4))(permuted)                # (B, 6, 4)
    last = GRUCell(3, input_dim=4).get_layer(backend="keras")(reshaped)  # (B, 3)
    repeated = layers.RepeatVector(2)(last)                    # (B, 2, 3)
    decoded = RecurrentSequential(return_sequences=True, backend="keras")
    decoded.add(LSTMCell(2))
    return keras.Model(inputs, decoded(repeated))


def _nested_model_step():
    inner_x, inner_h = keras.Input((4,)), keras.Input((3,))
    inner = keras.Model([inner_x, inner_h],
                        layers.Dense(3, activation="tanh")(layers.concatenate([inner_x, inner_h])))
    return _step_rnn(lambda x, h: inner([x, h]))


CASES = {
    "keras_ops_with_scalars": lambda: _step_rnn(
        lambda x, h: ops.tanh(layers.Dense(3)(x) * 2.0 - h / 3.0 + 1.0)),
    "slicing_and_reductions": lambda: _step_rnn(
        # No broadcasting arithmetic on a slice here: Keras 3.15's functional replay of
        # `x[:, :3] + y` with y of shape (batch, 1) gives wrong numbers (its eager call
        # is right), so the reductions are concatenated instead.
        lambda x, h: layers.Dense(3, activation="sigmoid")(layers.concatenate([
            x[:, 1:4], ops.mean(x, axis=-1, keepdims=True),
            ops.max(h, axis=1, keepdims=True), h[..., ::1], x[:, -1][:, None]]))),
    "lambda_with_keras_ops": lambda: _step_rnn(
        lambda x, h: layers.Lambda(lambda v: ops.tanh(v[0][:, :3] * v[1]))([x, h])),
    "nested_functional_model": _nested_model_step,
    "einsum_and_where": lambda: _step_rnn(
        lambda x, h: ops.where(h > 0.0, ops.einsum("bi,ij->bj", x, ops.ones((4, 3))) * 0.1,
                               ops.tanh(h))),
    "running_sums_and_products": lambda: _step_rnn(
        lambda x, h: ops.tanh(ops.cumsum(layers.Dense(3)(x), axis=-1) * 0.3
                              + ops.cumprod(ops.tanh(h), axis=1))),
    "keras_rnn_custom_cell": lambda: layers.RNN(MinimalKerasCell(3), return_sequences=True),
    "keras_rnn_cell_initial_state": lambda: layers.RNN(_ConstantStartCell(3),
                                                       return_sequences=True),
    "one_constant_state_array": lambda: _step_rnn(
        lambda x, h: ops.tanh(layers.Dense(3)(x) + h),
        state_initializer=keras.initializers.Constant(np.full(3, 0.4))),
    "keras_stacked_cells": lambda: layers.RNN([layers.LSTMCell(3), layers.GRUCell(2)],
                                              return_sequences=True),
    "sequential_model": _sequential_model,
    "shape_layers_model": _shapes_model,
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_traced_layer_matches_keras(rng, name):
    target = CASES[name]()
    x = _x(rng)
    target(x)  # build
    target.set_weights([rng.standard_normal(w.shape).astype("float32") * 0.5
                        for w in target.get_weights()])
    expected = np.asarray(target(x, training=False))
    program = rshop_ir.trace(target)
    np.testing.assert_allclose(rshop_ir.interpret(program, x), expected, atol=1e-5)
    np.testing.assert_allclose(rshop_ir.interpret(rshop_ir.optimize(program), x), expected,
                               atol=1e-5)
    np.testing.assert_allclose(rshop_ir.compile(program)(x), expected, atol=1e-4)


def test_weights_are_params_not_values(rng):
    """Changing a weight changes the traced program's output without re-tracing."""
    layer = LSTMCell(3, input_dim=4).get_layer()
    x = _x(rng)
    layer(x)
    program = rshop_ir.trace(layer)
    assert sorted(program.weights) == sorted(program.program.param_names)
    assert len(program.program.param_names) == 3
    new_weights = {name: value * 2.0 for name, value in program.weights.items()}
    layer.set_weights([new_weights[name] for name in program.program.param_names])
    np.testing.assert_allclose(rshop_ir.interpret(program.program, x, weights=new_weights),
                               np.asarray(layer(x)), atol=1e-5)
