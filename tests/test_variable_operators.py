"""A layer's call() writing a weight on the left of an operator (`self.gamma * inputs`)
compiles: within a re-trace, Keras variables' operators with a KerasTensor operand are
keras.ops calls (frontends/keras_trace/variable_operators.py)."""

import keras
import numpy as np
import pytest
from keras import layers, ops

from keras_checks import (assert_compiled_layer_like_keras, assert_compiled_like_keras,
                          assert_follows_new_weights, randomize)
from recurrentshop import RecurrentModel
from rshop_ir.frontends.keras_trace.variable_operators import symbolic_variable_operators

STEPS, CHANNELS = 7, 5

# name -> call(weight, inputs), the weight a (CHANNELS,) or (CHANNELS, CHANNELS) variable
_LEFT_OPERATORS = {
    "add": lambda weight, inputs: weight + inputs,
    "subtract": lambda weight, inputs: weight - inputs,
    "multiply": lambda weight, inputs: weight * inputs,
    "divide": lambda weight, inputs: weight / (1.5 + inputs * inputs),
    "power": lambda weight, inputs: weight ** inputs,
    "matmul": lambda weight, inputs: ops.transpose(weight @ ops.transpose(inputs)),
    "compare": lambda weight, inputs: ops.where(weight < inputs, inputs, 0.5 * inputs)
    + ops.where(weight >= inputs, inputs, 0.0),
}


class _WeightOnTheLeft(layers.Layer):
    """Applies `_LEFT_OPERATORS[operator]` to its weight and its inputs."""

    def __init__(self, operator, **kwargs):
        super().__init__(**kwargs)
        self.operator = operator

    def build(self, shape):
        weight_shape = (shape[-1],) * (2 if self.operator == "matmul" else 1)
        self.weight = self.add_weight(shape=weight_shape, name="weight")

    def call(self, inputs):
        return _LEFT_OPERATORS[self.operator](self.weight, inputs)


def _randomize_positive_bases(model, seed):
    """`randomize`, then the power layer's weight in [0.3, 1.5) (a negative base to a
    fractional power is NaN in Keras and here alike, which would test nothing)."""
    randomize(model, seed)
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, _WeightOnTheLeft) and layer.operator == "power":
            layer.weight.assign(rng.uniform(0.3, 1.5, size=layer.weight.shape)
                                .astype("float32"))


@pytest.mark.parametrize("operator", sorted(_LEFT_OPERATORS))
def test_a_weight_on_the_left_of_an_operator_compiles_and_follows_new_weights(operator):
    """On an RNN's output: no fallback, Keras's numbers, and a weight assigned after
    accelerate is seen (the weight is a param, not a constant)."""
    inputs = keras.Input((STEPS, CHANNELS))
    hidden = _WeightOnTheLeft(operator)(layers.LSTM(CHANNELS)(inputs))
    model = keras.Model(inputs, layers.Dense(3)(hidden))
    _randomize_positive_bases(model, 3)
    data = np.random.default_rng(4).standard_normal((2, STEPS, CHANNELS)).astype("float32")
    fast = assert_compiled_like_keras(model, data)
    assert_follows_new_weights(fast, model, data, 5, assign=_randomize_positive_bases)


class _Decay(layers.Layer):
    """`self.rate * state`: a learned per-unit decay, the weight written first."""

    def build(self, shape):
        self.rate = self.add_weight(shape=(shape[-1],), name="rate")

    def call(self, state):
        return self.rate * state


def test_a_step_model_with_a_weight_on_the_left_compiles_to_the_reference():
    """Inside a RecurrentModel's step model: the compiled kernel equals the Keras
    reference, before and after the weights change."""
    x_t, h = keras.Input((CHANNELS,)), keras.Input((4,))
    summed = layers.add([layers.Dense(4)(x_t), _Decay()(h)])
    output = layers.Activation("tanh")(summed)
    rnn = RecurrentModel(input=x_t, initial_states=[h], output=output,
                         final_states=[output], return_sequences=True)
    inputs = keras.Input((STEPS, CHANNELS))
    model = keras.Model(inputs, rnn(inputs))
    data = np.random.default_rng(7).standard_normal((3, STEPS, CHANNELS)).astype("float32")
    assert_compiled_layer_like_keras(rnn, model, data, seeds=(6, 8))
    assert_compiled_like_keras(model, data)


def _own_operators():
    return {name: keras.Variable.__dict__.get(name) for name in dir(keras.Variable)
            if name.startswith("__") and name.endswith("__")}


def test_the_scope_leaves_variables_as_it_found_them():
    """Nested scopes patch once and restore Keras's own operators when the last ends;
    inside, an operand that is not a KerasTensor takes Keras's operator."""
    before = _own_operators()
    variable = keras.Variable(np.array([1.0, -2.0, 3.0], dtype="float32"))
    other = np.array([0.5, 4.0, -1.0], dtype="float32")
    outside = [np.asarray(value) for value in (variable * other, other - variable,
                                               variable < other)]
    with symbolic_variable_operators():
        with symbolic_variable_operators():
            assert keras.Variable.__dict__.get("__mul__") is not before["__mul__"]
        assert keras.Variable.__dict__.get("__mul__") is not before["__mul__"]
        inside = [np.asarray(value) for value in (variable * other, other - variable,
                                                  variable < other)]
        symbolic = variable * keras.KerasTensor((None, 3))
        assert isinstance(symbolic, keras.KerasTensor)
    for first, second in zip(outside, inside):
        np.testing.assert_array_equal(first, second)
    np.testing.assert_array_equal(outside[0], [0.5, -8.0, -3.0])
    assert _own_operators() == before


class _DecayCell(layers.Layer):
    """A Keras RNN cell: tanh(x W + rate * h), the rate written first."""

    def __init__(self, units, **kwargs):
        super().__init__(**kwargs)
        self.units = self.state_size = units

    def build(self, shape):
        self.kernel = self.add_weight(shape=(shape[-1], self.units), name="kernel")
        self.rate = self.add_weight(shape=(self.units,), name="rate")

    def call(self, inputs, states):
        output = ops.tanh(ops.matmul(inputs, self.kernel) + self.rate * states[0])
        return output, [output]


def test_a_keras_cell_with_a_weight_on_the_left_compiles_to_keras():
    """`keras.layers.RNN(cell)` whose cell writes `self.rate * state`: compiled, equal
    to Keras before and after the weights change."""
    layer = layers.RNN(_DecayCell(4), return_sequences=True)
    inputs = keras.Input((STEPS, CHANNELS))
    model = keras.Model(inputs, layer(inputs))
    data = np.random.default_rng(10).standard_normal((2, STEPS, CHANNELS)).astype("float32")
    assert_compiled_layer_like_keras(layer, model, data, seeds=(9, 11))


class _MixSteps(layers.Layer):
    """`self.mix @ inputs`: a learned mixing of a known number of steps."""

    def build(self, shape):
        self.mix = self.add_weight(shape=(shape[1], shape[1]), name="mix")

    def call(self, inputs):
        return self.mix @ inputs


def test_a_weight_mixing_the_steps_compiles_and_follows_new_weights():
    """A weight on the left of a matmul over a batch of sequences (the generator runs
    one product per batch item): compiled, Keras's numbers before and after the
    weights change."""
    inputs = keras.Input((STEPS, CHANNELS))
    hidden = _MixSteps()(layers.LSTM(CHANNELS, return_sequences=True)(inputs))
    model = keras.Model(inputs, layers.GRU(3)(hidden))
    randomize(model, 12)
    data = np.random.default_rng(13).standard_normal((2, STEPS, CHANNELS)).astype("float32")
    fast = assert_compiled_like_keras(model, data)
    assert_follows_new_weights(fast, model, data, 14)
