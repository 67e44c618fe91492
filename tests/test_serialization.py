"""get_config/from_config round trips and `.keras` save/load give identical numbers.

Also checks `keras.layers.Bidirectional` around our layers against an independent
numpy computation (forward run + reversed run, flipped and concatenated).
"""

import keras
import numpy as np
import pytest
from keras import layers

from recurrentshop import (ExtendedRNNCell, GRUCell, LSTMCell, RecurrentModel,
                           RecurrentSequential, RHNCell, RNNCell, SimpleRNNCell)

BATCH, TIME, FEATURES, UNITS = 3, 6, 4, 5


@pytest.fixture
def x(rng):
    return rng.standard_normal((BATCH, TIME, FEATURES)).astype("float32")


def _randomize(layer, rng, scale=0.5):
    """Non-trivial weights (biases included) so that a lost weight shows."""
    layer.set_weights([rng.standard_normal(w.shape).astype("float32") * scale
                       for w in layer.get_weights()])


def _rebuild(layer, sample):
    """from_config(get_config()) of a built layer, built and given the same weights."""
    rebuilt = type(layer).from_config(layer.get_config())
    rebuilt(sample)
    assert len(rebuilt.get_weights()) == len(layer.get_weights())
    rebuilt.set_weights(layer.get_weights())
    return rebuilt


def _assert_same_outputs(a, b):
    a = a if isinstance(a, (list, tuple)) else [a]
    b = b if isinstance(b, (list, tuple)) else [b]
    assert len(a) == len(b)
    for left, right in zip(a, b):
        np.testing.assert_array_equal(np.asarray(left), np.asarray(right))


# ---------------------------------------------------------------- step models
def _readout_step_model_layer(**kwargs):
    """Two states (h, m), a readout, two state initialisers: a non-trivial config."""
    x_t = keras.Input((FEATURES,))
    h_tm1 = keras.Input((UNITS,))
    m_tm1 = keras.Input((UNITS,))
    y_tm1 = keras.Input((UNITS,))
    h_t = layers.Activation("tanh")(layers.add(
        [layers.Dense(UNITS)(x_t), layers.Dense(UNITS, use_bias=False)(h_tm1),
         layers.Dense(UNITS, use_bias=False)(y_tm1), m_tm1]))
    m_t = layers.Dense(UNITS, activation="sigmoid")(h_t)
    return RecurrentModel(input=x_t, output=h_t, initial_states=[h_tm1, m_tm1],
                          final_states=[h_t, m_t], readout_input=y_tm1, **kwargs)


def test_recurrent_model_config_round_trip_with_readout_and_initializer_list(x, rng):
    layer = _readout_step_model_layer(
        state_initializer=[keras.initializers.Constant(0.3), None],
        return_sequences=True, return_states=True, teacher_force=True,
        go_backwards=True, name="readout_rnn")
    layer(x)
    _randomize(layer, rng)
    rebuilt = _rebuild(layer, x)
    assert rebuilt.name == "readout_rnn"
    assert rebuilt.readout and rebuilt.teacher_force and rebuilt.go_backwards
    assert rebuilt.num_states == 2
    # Everything but the step model's own (auto-generated) name is kept.
    config, rebuilt_config = layer.get_config(), rebuilt.get_config()
    assert config.pop("step_model")["config"]["layers"] == rebuilt_config.pop(
        "step_model")["config"]["layers"]
    assert rebuilt_config == config
    _assert_same_outputs(rebuilt(x), layer(x))
    # The initialiser list survived: h0 = 0.3, m0 = 0 (the missing entry means zeros).
    zeros = np.zeros((BATCH, UNITS), "float32")
    _assert_same_outputs(
        rebuilt(x), layer(x, initial_state=[zeros + 0.3, zeros]))
    assert not np.allclose(rebuilt(x)[0], layer(x, initial_state=[zeros, zeros])[0])
    ground_truth = rng.standard_normal((BATCH, TIME, UNITS)).astype("float32")
    _assert_same_outputs(rebuilt(x, ground_truth=ground_truth, training=True),
                         layer(x, ground_truth=ground_truth, training=True))


def test_recurrent_model_config_round_trip_decoder(rng):
    x_t = keras.Input((FEATURES,))
    h_tm1 = keras.Input((UNITS,))
    h_t = layers.Dense(UNITS, activation="tanh")(layers.concatenate([x_t, h_tm1]))
    layer = RecurrentModel(input=x_t, output=h_t, initial_states=h_tm1, final_states=h_t,
                           decode=True, output_length=4, return_sequences=True,
                           state_initializer="ones")
    vector = rng.standard_normal((BATCH, FEATURES)).astype("float32")
    layer(vector)
    _randomize(layer, rng)
    rebuilt = _rebuild(layer, vector)
    assert (rebuilt.decode, rebuilt.output_length) == (True, 4)
    _assert_same_outputs(rebuilt(vector), layer(vector))
    assert rebuilt(vector).shape == (BATCH, 4, UNITS)


@pytest.mark.parametrize("mode", ["add", "mul", "max"])
def test_recurrent_sequential_config_round_trip_readout_state_sync(x, rng, mode):
    layer = RecurrentSequential(readout=mode, readout_activation="tanh", state_sync=True,
                                return_sequences=True, return_states=True,
                                state_initializer=[None, "ones"])
    layer.add(LSTMCell(FEATURES))
    layer.add(layers.Dropout(0.25))
    layer.add(LSTMCell(FEATURES))
    layer(x)
    _randomize(layer, rng)
    rebuilt = _rebuild(layer, x)
    assert rebuilt.readout_mode == mode and rebuilt.state_sync
    assert rebuilt.num_states == 2
    assert [type(item).__name__ for item in rebuilt.stack] == [
        "LSTMCell", "Dropout", "LSTMCell"]
    assert rebuilt.stack[1].rate == 0.25
    _assert_same_outputs(rebuilt(x), layer(x))


BUILTIN_CELLS = {
    "simple": lambda: SimpleRNNCell(UNITS, activation="relu", input_dim=FEATURES),
    "gru_reset_after": lambda: GRUCell(UNITS, input_dim=FEATURES),
    "gru_reset_before": lambda: GRUCell(UNITS, reset_after=False, use_bias=False,
                                        input_dim=FEATURES),
    "lstm": lambda: LSTMCell(UNITS, recurrent_activation="hard_sigmoid",
                             unit_forget_bias=False, input_dim=FEATURES),
    "rhn": lambda: RHNCell(UNITS, recurrence_depth=3, input_dim=FEATURES),
}


@pytest.mark.parametrize("name", sorted(BUILTIN_CELLS))
def test_builtin_cell_config_round_trip(x, rng, name):
    cell = BUILTIN_CELLS[name]()
    rebuilt_cell = type(cell).from_config(cell.get_config())
    assert rebuilt_cell.get_config() == cell.get_config()

    layer = cell.get_layer(return_sequences=True, return_states=True)
    other = rebuilt_cell.get_layer(return_sequences=True, return_states=True)
    layer(x)
    other(x)
    _randomize(layer, rng)
    other.set_weights(layer.get_weights())
    _assert_same_outputs(other(x), layer(x))

    # The layer made by get_layer() round-trips too (its step model holds the cell).
    _assert_same_outputs(_rebuild(layer, x)(x), layer(x))


def test_rhn_depth_is_kept(x):
    cell = RHNCell(UNITS, recurrence_depth=3, input_dim=FEATURES)
    rebuilt = RHNCell.from_config(cell.get_config())
    assert rebuilt.recurrence_depth == 3
    # Depth 3: 3 x (candidate + gate) recurrent Dense with bias + 2 input kernels.
    assert len(rebuilt.get_layer().weights) == 3 * 2 * 2 + 2


# --------------------------------------------------------------- .keras files
class UserCell(RNNCell):
    """A user cell that is NOT registered: it needs `custom_objects` to load."""

    def build_model(self, input_shape):
        x = keras.Input(input_shape[1:])
        h = keras.Input((self.units,))
        y = layers.Activation("tanh")(layers.add(
            [layers.Dense(self.units)(x), layers.Dense(self.units, use_bias=False)(h)]))
        return keras.Model([x, h], [y, y])


class UserGatedCell(ExtendedRNNCell):
    """A user ExtendedRNNCell with one extra argument of its own."""

    def __init__(self, units=None, gate_scale=1.0, **kwargs):
        super().__init__(units, **kwargs)
        self.gate_scale = gate_scale

    def build_model(self, input_shape):
        x = keras.Input(input_shape[1:])
        h = keras.Input((self.units,))
        both = layers.concatenate([x, h])
        candidate = layers.Dense(self.units, activation=self.activation,
                                 use_bias=self.use_bias,
                                 kernel_initializer=self.kernel_initializer)(both)
        gate = layers.Dense(self.units, activation=self.recurrent_activation)(both)
        gate = layers.Rescaling(self.gate_scale)(gate)
        new_h = layers.add([h, layers.multiply([gate, layers.subtract([candidate, h])])])
        return keras.Model([x, h], [new_h, new_h])

    def get_config(self):
        return {**super().get_config(), "gate_scale": self.gate_scale}


def _save_and_load(model, tmp_path, custom_objects=None):
    path = tmp_path / f"{model.name}.keras"
    model.save(path)
    return keras.saving.load_model(path, custom_objects=custom_objects)


def _check_file_round_trip(model, x, tmp_path, custom_objects=None):
    expected = model.predict(x, verbose=0)
    loaded = _save_and_load(model, tmp_path, custom_objects)
    _assert_same_outputs(loaded.predict(x, verbose=0), expected)
    assert len(loaded.get_weights()) == len(model.get_weights())
    for a, b in zip(loaded.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(a, b)
    return loaded


def test_keras_file_recurrent_model(x, rng, tmp_path):
    inputs = keras.Input((TIME, FEATURES))
    rnn = _readout_step_model_layer(state_initializer="ones", return_sequences=True)
    outputs = layers.Dense(2)(rnn(inputs))
    model = keras.Model(inputs, outputs, name="rm_model")
    _randomize(model, rng)
    loaded = _check_file_round_trip(model, x, tmp_path)
    assert isinstance(loaded.layers[1], RecurrentModel)
    assert loaded.layers[1].readout


def test_keras_file_recurrent_sequential(x, rng, tmp_path):
    inputs = keras.Input((TIME, FEATURES))
    masked = layers.Masking()(inputs)
    stack = RecurrentSequential(readout="avg", return_sequences=True, state_sync=True)
    stack.add(GRUCell(FEATURES))
    stack.add(layers.Dropout(0.5))
    stack.add(GRUCell(FEATURES))
    model = keras.Model(inputs, stack(masked), name="rs_model")
    _randomize(model, rng)
    x = x.copy()
    x[0, -2:] = 0.0  # masked steps are part of what must survive
    loaded = _check_file_round_trip(model, x, tmp_path)
    assert isinstance(loaded.layers[-1], RecurrentSequential)
    assert loaded.layers[-1].readout_mode == "avg"


def test_keras_file_decoder_sequential(rng, tmp_path):
    inputs = keras.Input((FEATURES,))
    decoder = RecurrentSequential(decode=True, output_length=3, return_sequences=True)
    decoder.add(LSTMCell(UNITS))
    decoder.add(layers.Dense(2))
    model = keras.Model(inputs, decoder(inputs), name="decoder_model")
    _randomize(model, rng)
    vector = rng.standard_normal((BATCH, FEATURES)).astype("float32")
    _check_file_round_trip(model, vector, tmp_path)


@pytest.mark.parametrize("cell_class,kwargs", [
    (UserCell, {}),
    (UserGatedCell, {"gate_scale": 0.5, "activation": "relu"}),
], ids=["RNNCell_subclass", "ExtendedRNNCell_subclass"])
def test_keras_file_user_cell_with_custom_objects(x, rng, tmp_path, cell_class, kwargs):
    inputs = keras.Input((TIME, FEATURES))
    rnn = cell_class(UNITS, input_dim=FEATURES, **kwargs).get_layer(return_sequences=True)
    model = keras.Model(inputs, rnn(inputs), name=f"user_{cell_class.__name__}")
    _randomize(model, rng)
    loaded = _check_file_round_trip(model, x, tmp_path,
                                    {cell_class.__name__: cell_class})
    cells = [layer for layer in loaded.layers[1].model.layers
             if isinstance(layer, cell_class)]
    assert len(cells) == 1
    if cell_class is UserGatedCell:
        assert cells[0].gate_scale == 0.5
        assert cells[0].activation is keras.activations.relu


def test_keras_file_user_cell_in_sequential_stack(x, rng, tmp_path):
    inputs = keras.Input((TIME, FEATURES))
    stack = RecurrentSequential(return_sequences=True)
    stack.add(UserCell(UNITS))
    stack.add(UserGatedCell(UNITS, gate_scale=2.0))
    model = keras.Model(inputs, stack(inputs), name="user_stack")
    _randomize(model, rng)
    _check_file_round_trip(model, x, tmp_path,
                           {"UserCell": UserCell, "UserGatedCell": UserGatedCell})


def test_loading_user_cell_without_custom_objects_fails(x, tmp_path):
    inputs = keras.Input((TIME, FEATURES))
    rnn = UserCell(UNITS, input_dim=FEATURES).get_layer()
    model = keras.Model(inputs, rnn(inputs), name="needs_custom_objects")
    path = tmp_path / "needs_custom_objects.keras"
    model.save(path)
    with pytest.raises(TypeError, match="UserCell"):
        keras.saving.load_model(path)


# -------------------------------------------------------------- Bidirectional
def _numpy_lstm(x, kernel, recurrent_kernel, bias):
    """Plain numpy LSTM (Keras gate order i, f, c, o), all outputs."""
    def sigmoid(v):
        return 1.0 / (1.0 + np.exp(-v))

    units = recurrent_kernel.shape[0]
    h = np.zeros((x.shape[0], units))
    c = np.zeros((x.shape[0], units))
    outputs = []
    for t in range(x.shape[1]):
        z = x[:, t] @ kernel + h @ recurrent_kernel + bias
        i, f, g, o = np.split(z, 4, axis=-1)
        c = sigmoid(f) * c + sigmoid(i) * np.tanh(g)
        h = sigmoid(o) * np.tanh(c)
        outputs.append(h)
    return np.stack(outputs, axis=1)


def test_bidirectional_recurrent_model_matches_independent_computation(x, rng):
    bi = layers.Bidirectional(LSTMCell(UNITS, input_dim=FEATURES).get_layer(
        return_sequences=True))
    bi(x)
    _randomize(bi, rng)
    out = np.asarray(bi(x))
    assert out.shape == (BATCH, TIME, 2 * UNITS)
    assert bi.backward_layer.go_backwards and not bi.forward_layer.go_backwards
    forward_weights = bi.forward_layer.get_weights()
    backward_weights = bi.backward_layer.get_weights()
    assert not np.allclose(forward_weights[0], backward_weights[0])  # two weight sets

    expected_forward = _numpy_lstm(x, *forward_weights)
    expected_backward = np.flip(_numpy_lstm(np.flip(x, axis=1), *backward_weights), axis=1)
    np.testing.assert_allclose(out, np.concatenate([expected_forward, expected_backward],
                                                   axis=-1), atol=1e-5)
    # The same numbers as Keras's own Bidirectional(LSTM) with the same weights.
    theirs = layers.Bidirectional(layers.LSTM(UNITS, return_sequences=True))
    theirs(x)
    theirs.set_weights(bi.get_weights())
    np.testing.assert_allclose(out, np.asarray(theirs(x)), atol=1e-5)


def test_bidirectional_recurrent_sequential_last_output(x, rng):
    stack = RecurrentSequential()
    stack.add(LSTMCell(UNITS))
    bi = layers.Bidirectional(stack, merge_mode="sum")
    bi(x)
    _randomize(bi, rng)
    out = np.asarray(bi(x))
    assert out.shape == (BATCH, UNITS)
    # The backward layer's last output is the state after reading x[:, 0]: a forward
    # run over the reversed sequence.
    expected = (_numpy_lstm(x, *bi.forward_layer.get_weights())[:, -1]
                + _numpy_lstm(np.flip(x, axis=1), *bi.backward_layer.get_weights())[:, -1])
    np.testing.assert_allclose(out, expected, atol=1e-5)


@pytest.mark.parametrize("kind", ["recurrent_model", "recurrent_sequential"])
def test_keras_file_bidirectional(x, rng, tmp_path, kind):
    if kind == "recurrent_model":
        rnn = _readout_step_model_layer(return_sequences=True)
    else:
        rnn = RecurrentSequential(readout="add", return_sequences=True)
        rnn.add(SimpleRNNCell(FEATURES))
        rnn.add(layers.Dense(FEATURES))
    inputs = keras.Input((TIME, FEATURES))
    model = keras.Model(inputs, layers.Bidirectional(rnn)(inputs), name=f"bi_{kind}")
    _randomize(model, rng)
    loaded = _check_file_round_trip(model, x, tmp_path)
    bi = loaded.layers[1]
    assert isinstance(bi.forward_layer, type(rnn))
    assert bi.backward_layer.go_backwards
