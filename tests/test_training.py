"""Training through the reference backend: gradients flow, loss goes down."""

import keras
import numpy as np
import tensorflow as tf
from keras import layers

from recurrentshop import LSTMCell, RecurrentModel


def test_gradients_match_keras_lstm(rng):
    """Same weights, same loss: the gradients equal those of keras.layers.LSTM."""
    data = rng.standard_normal((4, 6, 3)).astype("float32")
    ours = LSTMCell(5, input_dim=3).get_layer(return_sequences=True)
    theirs = keras.layers.LSTM(5, return_sequences=True)
    ours(data)
    theirs(data)
    theirs.set_weights([rng.standard_normal(w.shape).astype("float32") * 0.5
                        for w in theirs.get_weights()])
    ours.set_weights(theirs.get_weights())
    gradients = []
    for layer in (ours, theirs):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(tf.square(layer(data, training=True)))
        gradients.append(tape.gradient(loss, layer.trainable_weights))
    for a, b in zip(*gradients):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)


def test_teacher_forced_decoder_learns_a_sequence(rng):
    """fit() with teacher forcing drives the loss down; inference runs free."""
    units, length, out_dim = 16, 6, 2
    x_t = keras.Input((3,))
    h_tm1 = keras.Input((units,))
    readout = keras.Input((out_dim,))
    hidden = layers.Dense(units, activation="tanh")(
        layers.concatenate([x_t, h_tm1, readout]))
    y = layers.Dense(out_dim)(hidden)
    rnn = RecurrentModel(input=x_t, initial_states=[h_tm1], output=y, final_states=[hidden],
                         readout_input=readout, teacher_force=True, decode=True,
                         output_length=length, return_sequences=True)
    vector = keras.Input((3,))
    truth = keras.Input((length, out_dim))
    model = keras.Model([vector, truth], rnn(vector, ground_truth=truth))
    model.compile(optimizer=keras.optimizers.Adam(0.02), loss="mse")
    inputs = rng.standard_normal((32, 3)).astype("float32")
    targets = np.stack([np.sin(inputs[:, :2] * (k + 1)) for k in range(length)], 1).astype(
        "float32")
    before = model.evaluate([inputs, targets], targets, verbose=0)  # free running
    history = model.fit([inputs, targets], targets, epochs=100, batch_size=32, verbose=0)
    after = model.evaluate([inputs, targets], targets, verbose=0)
    teacher_forced_losses = history.history["loss"]
    assert teacher_forced_losses[-1] < 0.3 * teacher_forced_losses[0]
    assert after < 0.6 * before
    # Inference (training=False) runs without the ground truth.
    free_running = np.asarray(rnn(inputs))
    assert free_running.shape == (32, length, out_dim)
    assert np.all(np.isfinite(free_running))
