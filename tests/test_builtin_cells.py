"""Built-in cells: same numbers as Keras's layers with the same weights, and numpy."""

import keras
import numpy as np
import pytest

import numpy_rnn
from recurrentshop import GRUCell, LSTMCell, RHNCell, RNNCellFromModel, SimpleRNNCell

# Every test runs twice: on the Keras reference and on backend="auto" (the compiled
# kernel at inference). See conftest.layer_backend.
pytestmark = pytest.mark.usefixtures("layer_backend")

BATCH, TIME, FEATURES, UNITS = 3, 6, 4, 5


def _sequence(rng):
    return rng.standard_normal((BATCH, TIME, FEATURES)).astype("float32")


CASES = [
    ("simple", lambda: SimpleRNNCell(UNITS, input_dim=FEATURES),
     lambda: keras.layers.SimpleRNN(UNITS, return_sequences=True, return_state=True)),
    ("gru_reset_after", lambda: GRUCell(UNITS, input_dim=FEATURES),
     lambda: keras.layers.GRU(UNITS, return_sequences=True, return_state=True)),
    ("gru_reset_before", lambda: GRUCell(UNITS, reset_after=False, input_dim=FEATURES),
     lambda: keras.layers.GRU(UNITS, reset_after=False, return_sequences=True,
                              return_state=True)),
    ("lstm", lambda: LSTMCell(UNITS, input_dim=FEATURES),
     lambda: keras.layers.LSTM(UNITS, return_sequences=True, return_state=True)),
]


@pytest.mark.parametrize("name,make_cell,make_keras", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("direction", ["keras_to_ours", "ours_to_keras"])
def test_cell_matches_keras_layer_with_copied_weights(rng, name, make_cell, make_keras,
                                                      direction):
    x = _sequence(rng)
    ours = make_cell().get_layer(return_sequences=True, return_states=True)
    theirs = make_keras()
    ours(x)
    theirs(x)
    assert [w.shape for w in ours.get_weights()] == [w.shape for w in theirs.get_weights()]
    # Random non-trivial weights on the source side, copied across.
    source, target = (theirs, ours) if direction == "keras_to_ours" else (ours, theirs)
    source.set_weights([rng.standard_normal(w.shape).astype("float32") * 0.5
                        for w in source.get_weights()])
    target.set_weights(source.get_weights())
    our_out = ours(x)
    their_out = theirs(x)
    assert len(our_out) == len(their_out)
    for a, b in zip(our_out, their_out):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)


def test_weight_order_is_keras_order():
    cell = LSTMCell(UNITS, input_dim=FEATURES)
    cell.build((None, FEATURES))
    shapes = [tuple(w.shape) for w in cell.get_weights()]
    assert shapes == [(FEATURES, 4 * UNITS), (UNITS, 4 * UNITS), (4 * UNITS,)]
    gru = GRUCell(UNITS, input_dim=FEATURES)
    gru.build((None, FEATURES))
    assert [tuple(w.shape) for w in gru.get_weights()] == [
        (FEATURES, 3 * UNITS), (UNITS, 3 * UNITS), (2, 3 * UNITS)]


def test_lstm_cell_against_numpy(rng):
    x = _sequence(rng)
    layer = LSTMCell(UNITS, input_dim=FEATURES).get_layer(return_sequences=True)
    layer(x)
    layer.set_weights([rng.standard_normal(w.shape).astype("float32") * 0.5
                       for w in layer.get_weights()])
    kernel, recurrent_kernel, bias = layer.get_weights()

    def step(x_t, states, _readout):
        h, c = numpy_rnn.lstm_step(x_t, *states, kernel, recurrent_kernel, bias)
        return h, [h, c]

    zeros = np.zeros((BATCH, UNITS))
    expected, _ = numpy_rnn.run_loop(step, x.astype(np.float64), [zeros, zeros])
    np.testing.assert_allclose(np.asarray(layer(x)), expected, atol=1e-5)


@pytest.mark.parametrize("reset_after", [True, False])
def test_gru_cell_against_numpy(rng, reset_after):
    x = _sequence(rng)
    layer = GRUCell(UNITS, reset_after=reset_after, input_dim=FEATURES).get_layer()
    layer(x)
    layer.set_weights([rng.standard_normal(w.shape).astype("float32") * 0.5
                       for w in layer.get_weights()])
    weights = layer.get_weights()

    def step(x_t, states, _readout):
        h = numpy_rnn.gru_step(x_t, states[0], *weights, reset_after=reset_after)
        return h, [h]

    expected, _ = numpy_rnn.run_loop(step, x.astype(np.float64), [np.zeros((BATCH, UNITS))],
                                     return_sequences=False)
    np.testing.assert_allclose(np.asarray(layer(x)), expected, atol=1e-5)


@pytest.mark.parametrize("depth", [1, 3])
def test_rhn_cell_against_numpy(rng, depth):
    x = _sequence(rng)
    cell = RHNCell(UNITS, recurrence_depth=depth, input_dim=FEATURES)
    layer = cell.get_layer(return_sequences=True)
    layer(x)
    def dense(role):
        return cell.model.get_layer(f"{cell.name}_{role}")

    roles = [f"{kind}_recurrent_{d}" for d in range(depth) for kind in ("candidate", "gate")]
    roles += ["candidate_input", "gate_input"]
    assert len([l for l in cell.model.layers if isinstance(l, keras.layers.Dense)]) == len(roles)
    weights = {}
    for role in roles:
        dense(role).set_weights([rng.standard_normal(w.shape).astype("float32") * 0.5
                                 for w in dense(role).get_weights()])
        weights[role] = [w.astype(np.float64) for w in dense(role).get_weights()]

    def apply(role, value):
        w = weights[role]
        return value @ w[0] + (w[1] if len(w) > 1 else 0.0)

    def step(x_t, states, _readout):
        s = states[0]
        for d in range(depth):
            h_pre = apply(f"candidate_recurrent_{d}", s)
            t_pre = apply(f"gate_recurrent_{d}", s)
            if d == 0:
                h_pre = h_pre + apply("candidate_input", x_t)
                t_pre = t_pre + apply("gate_input", x_t)
            hh = np.tanh(h_pre)
            t = numpy_rnn.sigmoid(t_pre)
            s = t * hh + (1.0 - t) * s
        return s, [s]

    expected, _ = numpy_rnn.run_loop(step, x.astype(np.float64), [np.zeros((BATCH, UNITS))])
    np.testing.assert_allclose(np.asarray(layer(x)), expected, atol=1e-5)


def test_rnn_cell_from_model_runs_the_wrapped_step(rng):
    x_t = keras.Input((FEATURES,))
    h = keras.Input((UNITS,))
    dense = keras.layers.Dense(UNITS, activation="tanh")
    y = dense(keras.layers.concatenate([x_t, h]))
    cell = RNNCellFromModel(keras.Model([x_t, h], [y, y]))
    assert cell.num_states == 1
    layer = cell.get_layer(return_sequences=True)
    x = _sequence(rng)
    kernel, bias = dense.get_weights()

    def step(x_t, states, _readout):
        out = np.tanh(np.concatenate([x_t, states[0]], -1) @ kernel + bias)
        return out, [out]

    expected, _ = numpy_rnn.run_loop(step, x.astype(np.float64), [np.zeros((BATCH, UNITS))])
    np.testing.assert_allclose(np.asarray(layer(x)), expected, atol=1e-5)


def test_cell_shape_properties():
    cell = LSTMCell(UNITS, input_dim=FEATURES)
    assert cell.num_states == 2
    assert cell.state_shape == [(None, UNITS), (None, UNITS)]
    assert cell.output_dim == UNITS
    assert SimpleRNNCell(output_dim=3, input_dim=2).num_states == 1
