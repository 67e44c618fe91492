"""Conv1D, `keras.ops.conv`, `keras.ops.pad` and 1-D pooling compiled under accelerate
(lowered to slices, fills, concatenations, one matmul or element-wise maxima and sums:
frontends/keras_trace/window_rules.py)."""

import keras
import numpy as np
import pytest
from keras import layers, ops

import rshop_ir
from keras_checks import assert_compiled_like_keras, assert_follows_new_weights, randomize

STEPS, CHANNELS = 11, 6

CONVOLUTIONS = {
    "valid": dict(filters=5, kernel_size=3),
    "same": dict(filters=5, kernel_size=4, padding="same"),
    "causal": dict(filters=5, kernel_size=3, padding="causal"),
    "causal_dilated": dict(filters=4, kernel_size=3, padding="causal", dilation_rate=2),
    "strided": dict(filters=5, kernel_size=3, strides=2),
    "strided_same": dict(filters=5, kernel_size=2, strides=3, padding="same"),
    "one_tap_relu_no_bias": dict(filters=3, kernel_size=1, activation="relu",
                                 use_bias=False),
    "grouped": dict(filters=4, kernel_size=3, groups=2, padding="same"),
    "wider_than_the_steps_same": dict(filters=2, kernel_size=15, padding="same"),
}


@pytest.mark.parametrize("name", sorted(CONVOLUTIONS))
def test_conv1d_before_an_rnn_compiles_with_keras_numbers(name):
    inputs = keras.Input((STEPS, CHANNELS))
    hidden = layers.Conv1D(**CONVOLUTIONS[name], name="conv")(inputs)
    model = keras.Model(inputs, layers.GRU(4, return_sequences=True)(hidden))
    randomize(model, 1)
    data = np.random.default_rng(2).standard_normal((3, STEPS, CHANNELS)).astype("float32")
    assert_compiled_like_keras(model, data)


@pytest.mark.parametrize("padding", ["same", "causal"])
def test_channels_first_conv1d_and_its_bias(padding):
    """Channels first, "causal" pads the last axis (the steps). TensorFlow runs a
    channels-first convolution on a CPU only with oneDNN (AVX-512 machines), so the
    numbers are checked against the channels-last layer with the same weights, run
    on the transposed input."""
    inputs = keras.Input((CHANNELS, STEPS))
    hidden = layers.Conv1D(5, 3, padding=padding, data_format="channels_first",
                           activation="tanh")(inputs)
    model = keras.Model(inputs, layers.Dense(2)(hidden))
    randomize(model, 3)
    last = keras.Input((CHANNELS, STEPS))
    steps_first = layers.Permute((2, 1))(last)
    convolved = layers.Conv1D(5, 3, padding=padding, activation="tanh")(steps_first)
    twin = keras.Model(last, layers.Dense(2)(layers.Permute((2, 1))(convolved)))
    twin.set_weights(model.get_weights())
    data = np.random.default_rng(4).standard_normal((2, CHANNELS, STEPS)).astype("float32")
    fast = rshop_ir.accelerate(model)
    assert fast.fallbacks == []
    np.testing.assert_allclose(fast.predict(data), twin.predict(data, verbose=0),
                               atol=1e-5, rtol=0)


def test_raw_pad_and_conv_ops_in_a_lambda():
    """`ops.pad` (a value, several axes) and `ops.conv` called on a kernel variable."""
    kernel = keras.Variable(np.random.default_rng(5).standard_normal(
        (2, CHANNELS + 2, 3)).astype("float32"))

    inputs = keras.Input((STEPS, CHANNELS))
    padded = layers.Lambda(lambda v: ops.pad(v, ((0, 0), (2, 1), (1, 1)),
                                             constant_values=0.5))(inputs)
    convolved = layers.Lambda(lambda v: ops.conv(v, kernel, strides=2))(padded)
    model = keras.Model(inputs, layers.SimpleRNN(3)(convolved))
    data = np.random.default_rng(6).standard_normal((2, STEPS, CHANNELS)).astype("float32")
    assert_compiled_like_keras(model, data)


DEPTHWISE_CONVOLUTIONS = {
    "depthwise_same_multiplier": (layers.DepthwiseConv1D, dict(
        kernel_size=3, depth_multiplier=2, padding="same")),
    "depthwise_dilated_valid_relu": (layers.DepthwiseConv1D, dict(
        kernel_size=2, dilation_rate=3, activation="relu")),
    "separable_same_multiplier": (layers.SeparableConv1D, dict(
        filters=4, kernel_size=3, depth_multiplier=2, padding="same")),
    "separable_strided_no_bias": (layers.SeparableConv1D, dict(
        filters=5, kernel_size=4, strides=2, use_bias=False, activation="tanh")),
}


@pytest.mark.parametrize("name", sorted(DEPTHWISE_CONVOLUTIONS))
def test_depthwise_and_separable_conv1d_follow_their_weights(name):
    """A group a channel (times the depth multiplier), and for SeparableConv1D a
    one-tap convolution after it: Keras's numbers, also after the kernels and the bias
    change (params, not constants)."""
    make, settings = DEPTHWISE_CONVOLUTIONS[name]
    inputs = keras.Input((STEPS, CHANNELS))
    hidden = make(**settings)(inputs)
    model = keras.Model(inputs, layers.GRU(3, return_sequences=True)(hidden))
    randomize(model, 8)
    data = np.random.default_rng(9).standard_normal((2, STEPS, CHANNELS)).astype("float32")
    fast = assert_compiled_like_keras(model, data)
    assert_follows_new_weights(fast, model, data, 10)


def test_raw_depthwise_and_separable_conv_ops_and_unknown_steps():
    """`ops.depthwise_conv` and `ops.separable_conv` on kernel variables, over an
    unknown number of steps with "same" padding (taps shifted)."""
    rng = np.random.default_rng(11)
    depthwise = keras.Variable(rng.standard_normal((3, CHANNELS, 2)).astype("float32"))
    pointwise = keras.Variable(rng.standard_normal((1, 2 * CHANNELS, 4)).astype("float32"))
    inputs = keras.Input((None, CHANNELS))
    first = layers.Lambda(lambda v: ops.depthwise_conv(v, depthwise, padding="same"))(inputs)
    second = layers.Lambda(lambda v: ops.separable_conv(v, depthwise, pointwise,
                                                        padding="same"))(inputs)
    model = keras.Model(inputs, layers.LSTM(3)(layers.Concatenate()([first, second])))
    for steps in (2, STEPS):
        data = rng.standard_normal((2, steps, CHANNELS)).astype("float32")
        assert_compiled_like_keras(model, data)

UNKNOWN_STEPS_CONVOLUTIONS = {
    "causal": dict(filters=4, kernel_size=3, padding="causal"),
    "causal_dilated_grouped": dict(filters=4, kernel_size=3, padding="causal",
                                   dilation_rate=2, groups=2),
    "same_even_taps_dilated": dict(filters=5, kernel_size=4, padding="same",
                                   dilation_rate=3, activation="relu"),
}


@pytest.mark.parametrize("name", sorted(UNKNOWN_STEPS_CONVOLUTIONS))
def test_conv1d_over_unknown_steps_compiles_for_every_length(name):
    """Stride 1, "causal" or "same" padding over `(None, channels)` inputs: each tap is
    the input shifted along the steps, one compiled program for every length, Keras's
    numbers at lengths shorter than the kernel's reach too."""
    inputs = keras.Input((None, CHANNELS))
    hidden = layers.Conv1D(**UNKNOWN_STEPS_CONVOLUTIONS[name], name="conv")(inputs)
    model = keras.Model(inputs, layers.LSTM(3, return_sequences=True)(hidden))
    randomize(model, 7)
    fast = rshop_ir.accelerate(model)
    for steps in (1, 2, STEPS):
        data = np.random.default_rng(steps).standard_normal(
            (2, steps, CHANNELS)).astype("float32")
        assert fast.fallbacks == []
        np.testing.assert_allclose(fast.predict(data), model.predict(data, verbose=0),
                                   atol=1e-5, rtol=0)


@pytest.mark.parametrize("settings", [dict(padding="valid"), dict(strides=2, padding="same")],
                         ids=["valid", "strided"])
def test_conv1d_over_unknown_steps_that_changes_their_number_runs_in_keras(settings):
    inputs = keras.Input((None, CHANNELS))
    hidden = layers.Conv1D(4, 3, name="conv", **settings)(inputs)
    model = keras.Model(inputs, layers.LSTM(3)(hidden))
    data = np.random.default_rng(7).standard_normal((2, STEPS, CHANNELS)).astype("float32")
    fast = assert_compiled_like_keras(model, data, fallbacks=["conv"])
    assert "unknown number of steps" in fast.fallbacks[0][1]


POOLINGS = {
    "overlapping": dict(pool_size=3, strides=1),
    "strided_same": dict(pool_size=3, strides=2, padding="same"),
    "same_wider_than_stride": dict(pool_size=4, padding="same"),
    "same_stride_one": dict(pool_size=2, strides=1, padding="same"),
    "valid_cut": dict(pool_size=5, strides=3),
}


@pytest.mark.parametrize("pooling", ["max", "average"])
@pytest.mark.parametrize("name", sorted(POOLINGS))
def test_pooling_that_overlaps_or_pads_compiles_with_keras_numbers(name, pooling):
    """"same" average pooling divides by each window's real steps, as TensorFlow."""
    make = layers.MaxPooling1D if pooling == "max" else layers.AveragePooling1D
    inputs = keras.Input((STEPS, CHANNELS))
    model = keras.Model(inputs, layers.GRU(3, return_sequences=True)(
        make(**POOLINGS[name])(inputs)))
    randomize(model, 12)
    data = np.random.default_rng(13).standard_normal((3, STEPS, CHANNELS)).astype("float32")
    assert_compiled_like_keras(model, data)


def test_channels_first_pooling():
    inputs = keras.Input((CHANNELS, STEPS))
    pooled = layers.AveragePooling1D(3, strides=2, padding="same",
                                     data_format="channels_first")(inputs)
    model = keras.Model(inputs, layers.MaxPooling1D(2, data_format="channels_first")(pooled))
    data = np.random.default_rng(14).standard_normal((2, CHANNELS, STEPS)).astype("float32")
    assert_compiled_like_keras(model, data)
