"""Weights a layer's call() reads outside the traced graph (an eager reshape, cast or
negation of a variable runs at once, and a re-trace would hold its value as a
constant): the layers Keras ships get rules taking them as params, and any other
layer doing so runs in Keras (frontends/keras_trace/walk.py)."""

import keras
import numpy as np
import pytest
from keras import layers, ops

from keras_checks import assert_compiled_like_keras, assert_follows_new_weights, randomize
from recurrentshop import RecurrentModel

STEPS, CHANNELS = 11, 6


class _EagerShift(layers.Layer):
    """Adds a weight it reshapes outside the traced graph (at once, on its value)."""

    def build(self, shape):
        self.shift = self.add_weight(shape=(shape[-1],), initializer="ones")

    def call(self, inputs):
        return inputs + ops.reshape(self.shift, (1, 1, -1))


@pytest.mark.parametrize("make", [
    lambda: layers.Conv1D(CHANNELS, 2, padding="causal"),
    lambda: layers.BatchNormalization(),
    lambda: layers.PReLU(),
    _EagerShift,
], ids=["conv1d", "batch_normalization", "prelu", "eager_shift"])
def test_weights_changed_after_accelerate_give_keras_numbers(make):
    """Conv1D's bias, BatchNormalization's statistics and PReLU's alpha are params (a
    re-trace of their calls captured them as constants, and changed weights kept the
    old numbers); a custom layer doing the same runs in Keras."""
    inputs = keras.Input((STEPS, CHANNELS))
    layer = make()
    model = keras.Model(inputs, layers.LSTM(3)(layer(inputs)))
    randomize(model, 8)
    data = np.random.default_rng(9).standard_normal((2, STEPS, CHANNELS)).astype("float32")
    refused = [layer.name] if isinstance(layer, _EagerShift) else []
    fast = assert_compiled_like_keras(model, data, fallbacks=refused)
    if refused:
        assert "compiled in as a constant" in fast.fallbacks[0][1]
    assert_follows_new_weights(fast, model, data, 10)


class _ParamAndCaptured(layers.Layer):
    """Reads its weight through the graph AND eagerly (the reshape runs at once)."""

    def build(self, shape):
        self.scale = self.add_weight(shape=(shape[-1],), initializer="ones", name="scale")

    def call(self, inputs):
        return inputs * self.scale + ops.reshape(self.scale, (1, 1, -1))


class _SummingCell(layers.Layer):
    """A Keras cell reading its recurrent kernel in a matmul and in an eager sum."""

    def __init__(self, units, **kwargs):
        super().__init__(**kwargs)
        self.units = self.state_size = units

    def build(self, shape):
        self.kernel = self.add_weight(shape=(shape[-1], self.units), name="kernel")
        self.recurrent = self.add_weight(shape=(self.units, self.units), name="recurrent")

    def call(self, inputs, states):
        output = ops.tanh(ops.matmul(inputs, self.kernel)
                          + ops.matmul(states[0], self.recurrent)
                          + ops.sum(self.recurrent, axis=0))
        return output, [output]


def _step_reading_another_layers_kernel():
    """A RecurrentModel step whose Lambda sums a Dense layer's kernel eagerly."""
    x_t, h = keras.Input((CHANNELS,)), keras.Input((3,))
    dense = layers.Dense(3)
    total = layers.add([dense(x_t), layers.Dense(3, use_bias=False)(h)])
    shifted = layers.Lambda(lambda v: v + ops.sum(dense.kernel, axis=0))(total)
    output = layers.Activation("tanh")(shifted)
    return RecurrentModel(input=x_t, initial_states=[h], output=output,
                          final_states=[output], name="stepped")


@pytest.mark.parametrize("make, refused, weight", [
    (_ParamAndCaptured, None, "scale"),
    (lambda: layers.RNN(_SummingCell(3), name="summing"), "summing", "recurrent"),
    (_step_reading_another_layers_kernel, "stepped", "dense"),
], ids=["param_and_captured", "cell_sum_of_its_kernel", "lambda_reads_a_dense_kernel"])
def test_a_weight_read_eagerly_beside_the_graph_is_never_frozen(make, refused, weight):
    """A weight that is a param may be read eagerly too, by its own layer or by another
    (a Lambda); either way the layer runs in Keras and follows new weights."""
    inputs = keras.Input((STEPS, CHANNELS))
    layer = make()
    model = keras.Model(inputs, layer(inputs))
    randomize(model, 14)
    data = np.random.default_rng(15).standard_normal((2, STEPS, CHANNELS)).astype("float32")
    fast = assert_compiled_like_keras(model, data, fallbacks=[refused or layer.name])
    assert "compiled in as a constant" in fast.fallbacks[0][1]
    assert weight in fast.fallbacks[0][1]
    assert_follows_new_weights(fast, model, data, 16)


class _UnusedWeight(layers.Layer):
    """Holds a weight its call() never reads, and one it reads the shape of only."""

    def build(self, shape):
        self.spare = self.add_weight(shape=(3,), initializer="ones")
        self.width = self.add_weight(shape=(shape[-1],), initializer="ones")

    def call(self, inputs):
        return inputs * 2.0 + ops.ones(self.width.shape)


def test_a_weight_the_call_does_not_read_is_no_reason_to_refuse():
    """Changing the unread weights changes no constant of the re-traced graph, so the
    layer compiles (it ran in Keras before); the numbers follow Keras's, and the
    weights keep their values after the check."""
    inputs = keras.Input((STEPS, CHANNELS))
    layer = _UnusedWeight()
    model = keras.Model(inputs, layers.LSTM(3)(layer(inputs)))
    randomize(model, 12)
    kept = [np.array(weight) for weight in layer.get_weights()]
    data = np.random.default_rng(13).standard_normal((2, STEPS, CHANNELS)).astype("float32")
    assert_compiled_like_keras(model, data, fallbacks=[])
    for before, after in zip(kept, layer.get_weights()):
        np.testing.assert_array_equal(before, after)


@pytest.mark.parametrize("options", [{}, {"invert": True}, {"axis": None},
                                     {"mean": 1.0, "variance": 4.0}],
                         ids=["adapted", "inverted", "over_all_axes", "given"])
def test_normalization_compiles_and_follows_a_new_adapt(options):
    """Adapted statistics are params: after another adapt() the compiled model gives
    the numbers of the model's eager call (Keras's own `predict` keeps the function
    it traced before, with the old statistics in it)."""
    data = np.random.default_rng(11).standard_normal((4, STEPS, 3)).astype("float32") * 3 + 1
    normalization = layers.Normalization(**options)
    if "mean" not in options:
        normalization.adapt(data)
    inputs = keras.Input((STEPS, 3))
    model = keras.Model(inputs, layers.GRU(2)(normalization(inputs)))
    fast = assert_compiled_like_keras(model, data)
    if "mean" not in options:
        normalization.adapt(data * 2 + 5)
        np.testing.assert_allclose(fast.predict(data), np.asarray(model(data)),
                                   atol=1e-5, rtol=0)
