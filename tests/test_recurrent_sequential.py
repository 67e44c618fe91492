"""RecurrentSequential: stacks, readout modes, state sync, teacher forcing, decoding."""

import keras
import numpy as np
import pytest
from keras import layers

import numpy_rnn
from recurrentshop import GRUCell, LSTMCell, RecurrentSequential, SimpleRNNCell

# Every test runs twice: on the Keras reference and on backend="auto" (the compiled
# kernel at inference). See conftest.layer_backend.
pytestmark = pytest.mark.usefixtures("layer_backend")

BATCH, TIME, FEATURES = 3, 6, 4


def _x(rng, time=TIME, features=FEATURES):
    return rng.standard_normal((BATCH, time, features)).astype("float32")


def _randomize_all(rng, layer):
    layer.set_weights([rng.standard_normal(w.shape).astype("float32") * 0.5
                       for w in layer.get_weights()])


def _simple_step(cell):
    kernel, recurrent_kernel, bias = [w.astype(np.float64) for w in cell.get_weights()]
    return lambda x, h: numpy_rnn.simple_rnn_step(x, h, kernel, recurrent_kernel, bias)


def _lstm_step(cell):
    kernel, recurrent_kernel, bias = [w.astype(np.float64) for w in cell.get_weights()]
    return lambda x, h, c: numpy_rnn.lstm_step(x, h, c, kernel, recurrent_kernel, bias)


def _dense(layer):
    kernel, bias = [w.astype(np.float64) for w in layer.get_weights()]
    return lambda v: v @ kernel + bias


def test_stack_of_cells_and_layers(rng):
    rnn = RecurrentSequential(return_sequences=True, return_states=True)
    first, second = LSTMCell(5), SimpleRNNCell(3)
    dense = layers.Dense(6, activation="relu")
    rnn.add(first)
    rnn.add(layers.Dropout(0.5))
    rnn.add(dense)
    rnn.add(second)
    data = _x(rng)
    rnn(data)
    _randomize_all(rng, rnn)
    lstm, simple, relu_dense = _lstm_step(first), _simple_step(second), _dense(dense)

    def step(x_t, states, _readout):
        h1, c1 = lstm(x_t, states[0], states[1])
        h2 = simple(np.maximum(relu_dense(h1), 0.0), states[2])
        return h2, [h1, c1, h2]

    zeros = [np.zeros((BATCH, 5)), np.zeros((BATCH, 5)), np.zeros((BATCH, 3))]
    expected, expected_states = numpy_rnn.run_loop(step, data, zeros)
    output, *states = rnn(data, training=False)
    assert rnn.num_states == 3
    np.testing.assert_allclose(np.asarray(output), expected, atol=1e-5)
    for got, want in zip(states, expected_states):
        np.testing.assert_allclose(np.asarray(got), want, atol=1e-5)
    # Dropout is active in training only.
    trained = np.asarray(rnn(data, training=True)[0])
    assert np.abs(trained - expected).max() > 1e-3


MERGES = {
    "add": lambda x, r: x + r,
    True: lambda x, r: x + r,
    "mul": lambda x, r: x * r,
    "avg": lambda x, r: (x + r) / 2.0,
    "max": np.maximum,
}


@pytest.mark.parametrize("mode", ["add", True, "mul", "avg", "max"])
def test_readout_modes(rng, mode):
    rnn = RecurrentSequential(readout=mode, readout_activation="tanh", return_sequences=True)
    cell = SimpleRNNCell(6)
    dense = layers.Dense(FEATURES)
    rnn.add(cell)
    rnn.add(dense)
    data = _x(rng)
    rnn(data)
    _randomize_all(rng, rnn)
    simple, out_dense = _simple_step(cell), _dense(dense)

    def step(x_t, states, readout):
        h = simple(MERGES[mode](x_t, np.tanh(readout)), states[0])
        return out_dense(h), [h]

    initial_readout = rng.standard_normal((BATCH, FEATURES)).astype("float32")
    expected, _ = numpy_rnn.run_loop(step, data, [np.zeros((BATCH, 6))], readout=initial_readout)
    np.testing.assert_allclose(np.asarray(rnn(data, initial_readout=initial_readout)), expected,
                               atol=1e-5)


def test_readout_only_decoder_with_teacher_forcing(rng):
    """A seq2seq-style decoder: the step input is only the previous output."""
    units, out_dim, length = 5, 3, 5
    rnn = RecurrentSequential(readout="readout_only", decode=True, output_length=length,
                              teacher_force=True, return_sequences=True)
    cell = GRUCell(units)
    dense = layers.Dense(out_dim)
    rnn.add(cell)
    rnn.add(dense)
    vector = rng.standard_normal((BATCH, 7)).astype("float32")  # ignored by readout_only
    truth = rng.standard_normal((BATCH, length, out_dim)).astype("float32")
    rnn(vector)
    _randomize_all(rng, rnn)
    weights = [w.astype(np.float64) for w in cell.get_weights()]
    out_dense = _dense(dense)

    def step(_x, states, readout):
        h = numpy_rnn.gru_step(readout, states[0], *weights)
        return out_dense(h), [h]

    zeros = [np.zeros((BATCH, units))]
    free, _ = numpy_rnn.run_loop(step, vector, zeros, readout=np.zeros((BATCH, out_dim)),
                                 decode_length=length)
    forced, _ = numpy_rnn.run_loop(step, vector, zeros, readout=np.zeros((BATCH, out_dim)),
                                   decode_length=length, ground_truth=truth)
    np.testing.assert_allclose(np.asarray(rnn(vector)), free, atol=1e-5)
    np.testing.assert_allclose(np.asarray(rnn(vector, ground_truth=truth, training=True)),
                               forced, atol=1e-5)


def test_state_sync_shares_one_state_set(rng):
    rnn = RecurrentSequential(state_sync=True, return_sequences=True, return_states=True)
    cells = [LSTMCell(4), LSTMCell(4), LSTMCell(4)]
    for cell in cells:
        rnn.add(cell)
    data = _x(rng)
    rnn(data)
    _randomize_all(rng, rnn)
    steps = [_lstm_step(cell) for cell in cells]
    assert rnn.num_states == 2

    def step(x_t, states, _readout):
        h, c = states
        value = x_t
        for lstm in steps:
            h, c = lstm(value, h, c)
            value = h
        return h, [h, c]

    h0 = rng.standard_normal((BATCH, 4)).astype("float32")
    c0 = rng.standard_normal((BATCH, 4)).astype("float32")
    expected, (eh, ec) = numpy_rnn.run_loop(step, data, [h0, c0])
    output, h_last, c_last = rnn(data, initial_state=[h0, c0])
    np.testing.assert_allclose(np.asarray(output), expected, atol=1e-5)
    np.testing.assert_allclose(np.asarray(h_last), eh, atol=1e-5)
    np.testing.assert_allclose(np.asarray(c_last), ec, atol=1e-5)


def test_masked_stack_with_go_backwards(rng):
    rnn = RecurrentSequential(return_sequences=True, go_backwards=True)
    cell = SimpleRNNCell(4)
    rnn.add(cell)
    data = _x(rng)
    data[0, :2] = 0.0
    data[2, 3] = 0.0
    inputs = keras.Input((TIME, FEATURES))
    model = keras.Model(inputs, rnn(layers.Masking()(inputs)))
    _randomize_all(rng, rnn)
    simple = _simple_step(cell)

    def step(x_t, states, _readout):
        h = simple(x_t, states[0])
        return h, [h]

    mask = np.any(data != 0, -1)
    expected, _ = numpy_rnn.run_loop(step, data, [np.zeros((BATCH, 4))], mask=mask,
                                     go_backwards=True)
    np.testing.assert_allclose(model.predict(data, verbose=0), expected, atol=1e-5)


def test_stack_is_trainable_end_to_end(rng):
    rnn = RecurrentSequential()
    rnn.add(LSTMCell(8))
    rnn.add(layers.Dense(1))
    inputs = keras.Input((TIME, FEATURES))
    model = keras.Model(inputs, rnn(inputs))
    model.compile(optimizer=keras.optimizers.Adam(0.02), loss="mse")
    data = _x(rng)
    target = data.sum(axis=(1, 2), keepdims=False)[:, None] / 10.0
    before = model.evaluate(data, target, verbose=0)
    model.fit(data, target, epochs=40, verbose=0)
    after = model.evaluate(data, target, verbose=0)
    assert after < 0.5 * before
