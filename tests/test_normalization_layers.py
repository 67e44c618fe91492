"""GroupNormalization, Rescaling and `keras.ops.moments` compiled under accelerate with
Keras's numbers (frontends/keras_trace/normalization_rules.py, composite_rules.py)."""

import keras
import numpy as np
import pytest
from keras import layers, ops

from keras_checks import assert_compiled_like_keras, assert_follows_new_weights, randomize

STEPS, CHANNELS = 7, 6


def _data(seed, shape=(3, STEPS, CHANNELS)):
    return np.random.default_rng(seed).standard_normal(shape).astype("float32")


@pytest.mark.parametrize("settings", [
    dict(groups=3),
    dict(groups=6, epsilon=0.5),
    dict(groups=2, center=False),
    dict(groups=1, scale=False),
    dict(groups=3, axis=1),
], ids=["three_groups", "a_group_a_channel", "no_center", "no_scale", "over_the_steps"])
def test_group_normalization_before_an_rnn_follows_its_weights(settings):
    """Groups of channels (or of steps, axis=1) normalised over the steps and their
    channels; gamma and beta are params: changed weights give Keras's numbers."""
    inputs = keras.Input((STEPS + 2, CHANNELS) if settings.get("axis") == 1
                         else (STEPS, CHANNELS))
    hidden = layers.Dense(CHANNELS)(inputs)
    hidden = layers.GroupNormalization(**settings)(hidden)
    model = keras.Model(inputs, layers.LSTM(4, return_sequences=True)(hidden))
    randomize(model, 1)
    data = _data(2, (3,) + tuple(inputs.shape[1:]))
    fast = assert_compiled_like_keras(model, data)
    assert_follows_new_weights(fast, model, data, 3)


@pytest.mark.parametrize("scale, offset, dtype", [
    (1 / 255, 0.0, "int32"),
    (0.5, -1.0, "float32"),
    ([0.5, 2.0, -1.0, 0.25, 3.0, 1.5], 0.1, "float32"),
], ids=["integers_to_unit", "scalar", "per_channel"])
def test_rescaling_compiles_with_keras_numbers(scale, offset, dtype):
    """Rescaling of integer or float inputs by a scalar or per-channel scale: a
    constant multiply-add in the layer's dtype."""
    inputs = keras.Input((STEPS, CHANNELS), dtype=dtype)
    hidden = layers.Rescaling(scale, offset=offset)(inputs)
    model = keras.Model(inputs, layers.GRU(3)(hidden))
    randomize(model, 4)
    data = _data(5) * 2
    if dtype == "int32":
        data = np.random.default_rng(5).integers(0, 256, size=data.shape).astype(dtype)
    assert_compiled_like_keras(model, data)


def test_moments_in_a_lambda_with_and_without_kept_axes():
    """`ops.moments` over the steps (kept) and over the channels (dropped), as
    tf.nn.moments computes them."""
    def standardise(value):
        mean, variance = ops.moments(value, axes=[1], keepdims=True)
        channel_mean, channel_variance = ops.moments(value, axes=[2])
        spread = ops.expand_dims(channel_variance - channel_mean, -1)
        return (value - mean) * ops.rsqrt(variance + 1e-3) + spread

    inputs = keras.Input((STEPS, CHANNELS))
    hidden = layers.Lambda(standardise)(layers.Dense(CHANNELS)(inputs))
    model = keras.Model(inputs, layers.SimpleRNN(3)(hidden))
    randomize(model, 6)
    assert_compiled_like_keras(model, _data(7))
