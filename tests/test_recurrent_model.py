"""RecurrentModel features, each compared with the plain-numpy loop in numpy_rnn."""

import keras
import numpy as np
import pytest
from keras import layers

import numpy_rnn
from recurrentshop import LSTMCell, RecurrentModel, RecurrentSequential

# Every test runs twice: on the Keras reference and on backend="auto" (the compiled
# kernel at inference). See conftest.layer_backend.
pytestmark = pytest.mark.usefixtures("layer_backend")

BATCH, TIME, FEATURES, UNITS = 3, 7, 5, 4


def _randomize(rng, *dense_layers):
    for dense in dense_layers:
        dense.set_weights([rng.standard_normal(w.shape).astype("float32") * 0.5
                           for w in dense.get_weights()])


class SeedStep:
    """The seed README's step `h = tanh(x Wx + b + h Wh)`, optionally with a readout
    term `+ r Wr`; knows its own numpy step."""

    def __init__(self, rng, readout=False, features=FEATURES, units=UNITS):
        self.x_t = keras.Input((features,))
        self.h_tm1 = keras.Input((units,))
        self.input_dense = layers.Dense(units)
        self.state_dense = layers.Dense(units, use_bias=False)
        parts = [self.input_dense(self.x_t), self.state_dense(self.h_tm1)]
        self.readout_input = None
        self.readout_dense = None
        if readout:
            self.readout_input = keras.Input((units,))
            self.readout_dense = layers.Dense(units, use_bias=False)
            parts.append(self.readout_dense(self.readout_input))
        self.h_t = layers.Activation("tanh")(layers.add(parts))
        self.rng = rng

    def layer(self, **kwargs):
        rnn = RecurrentModel(input=self.x_t, initial_states=[self.h_tm1], output=self.h_t,
                             final_states=[self.h_t], readout_input=self.readout_input,
                             **kwargs)
        return rnn

    def randomize(self):
        dense_layers = [self.input_dense, self.state_dense]
        if self.readout_dense is not None:
            dense_layers.append(self.readout_dense)
        _randomize(self.rng, *dense_layers)

    def numpy_step(self, x_t, states, readout):
        kernel, bias = self.input_dense.get_weights()
        (recurrent,) = self.state_dense.get_weights()
        z = x_t @ kernel + bias + states[0] @ recurrent
        if self.readout_dense is not None:
            z = z + readout @ self.readout_dense.get_weights()[0]
        h = np.tanh(z)
        return h, [h]


def _x(rng, batch=BATCH, time=TIME, features=FEATURES):
    return rng.standard_normal((batch, time, features)).astype("float32")


def _zeros(batch=BATCH, units=UNITS):
    return np.zeros((batch, units))


def test_seed_example_in_a_model_predict(rng):
    step = SeedStep(rng)
    rnn = step.layer()
    x = keras.Input((TIME, FEATURES))
    model = keras.Model(x, rnn(x))
    step.randomize()
    data = _x(rng)
    expected, _ = numpy_rnn.run_loop(step.numpy_step, data, [_zeros()], return_sequences=False)
    np.testing.assert_allclose(model.predict(data, verbose=0), expected, atol=1e-5)


@pytest.mark.parametrize("return_sequences", [True, False])
@pytest.mark.parametrize("go_backwards", [False, True])
def test_sequences_and_direction(rng, return_sequences, go_backwards):
    step = SeedStep(rng)
    rnn = step.layer(return_sequences=return_sequences, go_backwards=go_backwards,
                     return_states=True)
    data = _x(rng)
    rnn(data)
    step.randomize()
    output, state = rnn(data)
    expected, (expected_state,) = numpy_rnn.run_loop(
        step.numpy_step, data, [_zeros()], go_backwards=go_backwards,
        return_sequences=return_sequences)
    np.testing.assert_allclose(np.asarray(output), expected, atol=1e-5)
    np.testing.assert_allclose(np.asarray(state), expected_state, atol=1e-5)


def test_initial_state_and_lstm_two_states(rng):
    x_t = keras.Input((FEATURES,))
    h = keras.Input((UNITS,))
    c = keras.Input((UNITS,))
    cell = keras.layers.LSTMCell(UNITS)
    y, (h2, c2) = cell(x_t, [h, c])
    rnn = RecurrentModel(input=x_t, initial_states=[h, c], output=y, final_states=[h2, c2],
                         return_sequences=True, return_states=True)
    data = _x(rng)
    h0 = rng.standard_normal((BATCH, UNITS)).astype("float32")
    c0 = rng.standard_normal((BATCH, UNITS)).astype("float32")
    output, h_last, c_last = rnn(data, initial_state=[h0, c0])
    kernel, recurrent_kernel, bias = cell.get_weights()

    def numpy_step(x_t, states, _readout):
        h_new, c_new = numpy_rnn.lstm_step(x_t, *states, kernel, recurrent_kernel, bias)
        return h_new, [h_new, c_new]

    expected, (eh, ec) = numpy_rnn.run_loop(numpy_step, data, [h0, c0])
    np.testing.assert_allclose(np.asarray(output), expected, atol=1e-5)
    np.testing.assert_allclose(np.asarray(h_last), eh, atol=1e-5)
    np.testing.assert_allclose(np.asarray(c_last), ec, atol=1e-5)


def test_readout_feeds_back_previous_output(rng):
    step = SeedStep(rng, readout=True)
    rnn = step.layer(return_sequences=True)
    data = _x(rng)
    rnn(data)
    step.randomize()
    expected, _ = numpy_rnn.run_loop(step.numpy_step, data, [_zeros()], readout=_zeros())
    np.testing.assert_allclose(np.asarray(rnn(data)), expected, atol=1e-5)
    # With an explicit initial readout.
    r0 = rng.standard_normal((BATCH, UNITS)).astype("float32")
    expected, _ = numpy_rnn.run_loop(step.numpy_step, data, [_zeros()], readout=r0)
    np.testing.assert_allclose(np.asarray(rnn(data, initial_readout=r0)), expected, atol=1e-5)


@pytest.mark.parametrize("go_backwards", [False, True])
def test_teacher_forcing_uses_ground_truth_only_in_training(rng, go_backwards):
    step = SeedStep(rng, readout=True)
    rnn = step.layer(return_sequences=True, teacher_force=True, go_backwards=go_backwards)
    data = _x(rng)
    truth = rng.standard_normal((BATCH, TIME, UNITS)).astype("float32")
    rnn(data)
    step.randomize()
    forced, _ = numpy_rnn.run_loop(step.numpy_step, data, [_zeros()], readout=_zeros(),
                                   ground_truth=truth, go_backwards=go_backwards)
    free, _ = numpy_rnn.run_loop(step.numpy_step, data, [_zeros()], readout=_zeros(),
                                 go_backwards=go_backwards)
    assert np.abs(forced - free).max() > 1e-3  # the two semantics really differ here
    trained = rnn(data, ground_truth=truth, training=True)
    np.testing.assert_allclose(np.asarray(trained), forced, atol=1e-5)
    # At inference the ground truth is ignored and may be omitted.
    np.testing.assert_allclose(np.asarray(rnn(data, ground_truth=truth, training=False)),
                               free, atol=1e-5)
    np.testing.assert_allclose(np.asarray(rnn(data)), free, atol=1e-5)


def test_decode_feeds_the_same_input_every_step(rng):
    step = SeedStep(rng, readout=True)
    rnn = step.layer(decode=True, output_length=6, return_sequences=True)
    vector = rng.standard_normal((BATCH, FEATURES)).astype("float32")
    rnn(vector)
    step.randomize()
    expected, _ = numpy_rnn.run_loop(step.numpy_step, vector, [_zeros()], readout=_zeros(),
                                     decode_length=6)
    output = np.asarray(rnn(vector))
    assert output.shape == (BATCH, 6, UNITS)
    np.testing.assert_allclose(output, expected, atol=1e-5)


def test_attention_decoder_reads_a_whole_sequence_each_step(rng):
    memory_length = 5
    memory = keras.Input((memory_length, FEATURES))
    h_tm1 = keras.Input((UNITS,))
    query = layers.Dense(FEATURES, use_bias=False)
    scores = layers.Dot(axes=(2, 1))([memory, query(h_tm1)])
    weights = layers.Softmax()(scores)
    context = layers.Dot(axes=(1, 1))([weights, memory])
    update = layers.Dense(UNITS, activation="tanh")
    h_t = update(layers.concatenate([context, h_tm1]))
    rnn = RecurrentModel(input=memory, initial_states=[h_tm1], output=h_t, final_states=[h_t],
                         decode=True, output_length=4, return_sequences=True)
    data = _x(rng, time=memory_length)
    rnn(data)
    _randomize(rng, query, update)
    (query_kernel,) = query.get_weights()
    kernel, bias = update.get_weights()

    def numpy_step(mem, states, _readout):
        h = states[0]
        s = np.einsum("btf,bf->bt", mem, h @ query_kernel)
        a = np.exp(s - s.max(-1, keepdims=True))
        a = a / a.sum(-1, keepdims=True)
        ctx = np.einsum("bt,btf->bf", a, mem)
        h_new = np.tanh(np.concatenate([ctx, h], -1) @ kernel + bias)
        return h_new, [h_new]

    expected, _ = numpy_rnn.run_loop(numpy_step, data.astype(np.float64), [_zeros()],
                                     decode_length=4)
    np.testing.assert_allclose(np.asarray(rnn(data)), expected, atol=1e-5)


def test_masking_keeps_previous_state_and_output(rng):
    step = SeedStep(rng, readout=True)
    rnn = step.layer(return_sequences=True, return_states=True)
    data = _x(rng)
    data[0, 2:4] = 0.0  # masked by keras.layers.Masking
    data[1, 0] = 0.0
    data[2, -1] = 0.0
    inputs = keras.Input((TIME, FEATURES))
    outputs = rnn(layers.Masking(0.0)(inputs))
    model = keras.Model(inputs, outputs)
    step.randomize()
    mask = np.any(data != 0.0, axis=-1)
    r0 = np.zeros((BATCH, UNITS))
    expected, (expected_state,) = numpy_rnn.run_loop(step.numpy_step, data, [_zeros()],
                                                     readout=r0, mask=mask)
    output, state = model.predict(data, verbose=0)
    np.testing.assert_allclose(output, expected, atol=1e-5)
    np.testing.assert_allclose(state, expected_state, atol=1e-5)
    # The explicit mask argument gives the same.
    output, _ = rnn(data, mask=mask)
    np.testing.assert_allclose(np.asarray(output), expected, atol=1e-5)


def test_unroll_gives_the_same_numbers(rng):
    step = SeedStep(rng, readout=True)
    looped = step.layer(return_sequences=True)
    unrolled = step.layer(return_sequences=True, unroll=True)
    data = _x(rng)
    looped(data)
    step.randomize()
    expected, _ = numpy_rnn.run_loop(step.numpy_step, data, [_zeros()], readout=_zeros())
    np.testing.assert_allclose(np.asarray(unrolled(data)), expected, atol=1e-5)
    np.testing.assert_allclose(np.asarray(looped(data)), expected, atol=1e-5)


def test_state_initializer_one_for_all_and_list(rng):
    x_t = keras.Input((FEATURES,))
    h = keras.Input((UNITS,))
    c = keras.Input((2,))
    y = layers.Dense(UNITS, activation="tanh")(layers.concatenate([x_t, h, c]))
    c_new = layers.Dense(2)(c)
    data = _x(rng)

    def run(initializer):
        rnn = RecurrentModel(input=x_t, initial_states=[h, c], output=y, final_states=[y, c_new],
                             state_initializer=initializer, return_states=True)
        return rnn

    # Initial states are observable through a zero-length-effect check: run one step.
    one_step = data[:, :1]
    dense_y = [l for l in keras.Model([x_t, h, c], y).layers if isinstance(l, layers.Dense)][0]
    kernel, bias = dense_y.get_weights()
    for initializer, (h0, c0) in [
        (keras.initializers.Constant(0.5), (0.5, 0.5)),
        ([keras.initializers.Constant(2.0)], (2.0, 0.0)),
        ([None, "ones"], (0.0, 1.0)),
    ]:
        output, _, _ = run(initializer)(one_step)
        start = np.concatenate([data[:, 0], np.full((BATCH, UNITS), h0), np.full((BATCH, 2), c0)],
                               -1)
        np.testing.assert_allclose(np.asarray(output), np.tanh(start @ kernel + bias), atol=1e-5)
    random_states = run(keras.initializers.RandomNormal(stddev=1.0))(one_step)
    assert np.asarray(random_states[0]).shape == (BATCH, UNITS)


def test_stateful_continues_across_calls_and_resets(rng):
    step = SeedStep(rng)
    rnn = step.layer(stateful=True, return_sequences=True)
    data = _x(rng, time=8)
    inputs = keras.Input(batch_shape=(BATCH, 4, FEATURES))
    model = keras.Model(inputs, rnn(inputs))
    step.randomize()
    whole, _ = numpy_rnn.run_loop(step.numpy_step, data, [_zeros()])
    first = model.predict(data[:, :4], batch_size=BATCH, verbose=0)
    second = model.predict(data[:, 4:], batch_size=BATCH, verbose=0)
    np.testing.assert_allclose(np.concatenate([first, second], 1), whole, atol=1e-5)
    rnn.reset_states()
    np.testing.assert_allclose(model.predict(data[:, :4], batch_size=BATCH, verbose=0),
                               whole[:, :4], atol=1e-5)
    h0 = rng.standard_normal((BATCH, UNITS)).astype("float32")
    rnn.reset_states([h0])
    expected, _ = numpy_rnn.run_loop(step.numpy_step, data[:, :4], [h0])
    np.testing.assert_allclose(model.predict(data[:, :4], batch_size=BATCH, verbose=0),
                               expected, atol=1e-5)


def test_get_cell_nests_an_rnn_inside_a_stack(rng):
    inner_step = SeedStep(rng, readout=True)
    inner = inner_step.layer()
    data = _x(rng)
    inner(data)
    inner_step.randomize()
    cell = inner.get_cell()
    assert cell.num_states == 2  # the state and the readout
    outer = RecurrentSequential(return_sequences=True)
    outer.add(cell)
    outer.add(layers.Dense(3))
    output = np.asarray(outer(data))
    dense = outer.stack[-1]
    kernel, bias = dense.get_weights()
    hidden, _ = numpy_rnn.run_loop(inner_step.numpy_step, data, [_zeros()], readout=_zeros())
    np.testing.assert_allclose(output, hidden @ kernel + bias, atol=1e-5)
    # The nested cell shares its weights with the original RNN.
    np.testing.assert_allclose(np.asarray(inner(data)), hidden[:, -1], atol=1e-5)


def test_stacked_lstm_cell_layer_in_functional_model(rng):
    layer = LSTMCell(UNITS, input_dim=FEATURES).get_layer(return_sequences=True)
    inputs = keras.Input((None, FEATURES))
    model = keras.Model(inputs, layers.Dense(2)(layer(inputs)))
    data = _x(rng)
    assert model.predict(data, verbose=0).shape == (BATCH, TIME, 2)
    kernel, recurrent_kernel, bias = layer.get_weights()

    def numpy_step(x_t, states, _readout):
        h, c = numpy_rnn.lstm_step(x_t, *states, kernel, recurrent_kernel, bias)
        return h, [h, c]

    hidden, _ = numpy_rnn.run_loop(numpy_step, data, [_zeros(), _zeros()])
    dense_kernel, dense_bias = model.layers[-1].get_weights()
    np.testing.assert_allclose(model.predict(data, verbose=0), hidden @ dense_kernel + dense_bias,
                               atol=1e-5)
