"""Numba CPU kernels of Keras layers vs the Keras reference (training=False):
keras.layers.LSTM/GRU/SimpleRNN, our LSTMCell/GRUCell/RHNCell layers with every RNN
option, and weights changed after compiling. (Whole-model cases, readout, decode,
masking and stacks are in tests/test_kernel_zoo.py.)"""

import os

import keras
import numpy as np
import pytest

import rshop_ir
from recurrentshop import GRUCell, LSTMCell, RHNCell

ATOL_FLOAT32 = 1e-4
BATCH, TIME, FEATURES, UNITS = 3, 100, 5, 6


@pytest.fixture(scope="module", autouse=True)
def _kernel_cache(tmp_path_factory):
    previous = os.environ.get("RSHOP_CACHE_DIR")
    os.environ["RSHOP_CACHE_DIR"] = str(tmp_path_factory.mktemp("kernel_cache"))
    yield
    if previous is None:
        os.environ.pop("RSHOP_CACHE_DIR", None)
    else:
        os.environ["RSHOP_CACHE_DIR"] = previous


def _as_list(value):
    return [np.asarray(v) for v in value] if isinstance(value, (list, tuple)) \
        else [np.asarray(value)]


def _randomize(layer, seed=0, scale=0.4):
    rng = np.random.default_rng(seed)
    layer.set_weights([scale * rng.standard_normal(w.shape).astype(np.float32)
                       for w in layer.get_weights()])


def _assert_matches(compiled, layer, *inputs, **kwargs):
    expected = _as_list(layer(*inputs, training=False, **kwargs))
    got = _as_list(compiled(*inputs, **kwargs))
    assert len(got) == len(expected)
    for a, b in zip(got, expected):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, atol=ATOL_FLOAT32, rtol=0)


def _x(batch=BATCH, time=TIME, seed=1):
    return np.random.default_rng(seed).standard_normal((batch, time, FEATURES)).astype(
        np.float32)


KERAS_LAYERS = {
    "lstm_sequences_state": lambda: keras.layers.LSTM(UNITS, return_sequences=True,
                                                      return_state=True),
    "gru_reset_after": lambda: keras.layers.GRU(UNITS, reset_after=True),
    "gru_reset_before_backwards": lambda: keras.layers.GRU(UNITS, reset_after=False,
                                                           go_backwards=True,
                                                           return_sequences=True),
    "simple_rnn": lambda: keras.layers.SimpleRNN(UNITS, return_sequences=True),
}


@pytest.mark.parametrize("name", sorted(KERAS_LAYERS))
def test_keras_layer(name):
    layer = KERAS_LAYERS[name]()
    x = _x()
    layer(x)
    _randomize(layer)
    compiled = rshop_ir.compile(layer)
    _assert_matches(compiled, layer, x)
    _assert_matches(compiled, layer, _x(batch=1, time=1, seed=4))


OUR_LAYERS = {
    "lstm_cell_states_init": (lambda: LSTMCell(UNITS, input_dim=FEATURES).get_layer(
        backend="keras", return_sequences=True, return_states=True), 2),
    "gru_cell_last_backwards": (lambda: GRUCell(UNITS, input_dim=FEATURES).get_layer(
        backend="keras", go_backwards=True), 1),
    "rhn_cell_depth2": (lambda: RHNCell(UNITS, recurrence_depth=2, input_dim=FEATURES)
                        .get_layer(backend="keras", return_sequences=True, return_states=True), 1),
}


@pytest.mark.parametrize("name", sorted(OUR_LAYERS))
def test_recurrentshop_layer_with_initial_states(name):
    build, num_states = OUR_LAYERS[name]
    layer = build()
    x = _x()
    layer(x)
    _randomize(layer)
    compiled = rshop_ir.compile(layer)
    _assert_matches(compiled, layer, x)
    rng = np.random.default_rng(9)
    states = [rng.standard_normal((BATCH, UNITS)).astype(np.float32)
              for _ in range(num_states)]
    _assert_matches(compiled, layer, x, initial_state=states)


def test_weights_changed_after_compile_give_new_numbers():
    layer = keras.layers.LSTM(UNITS, return_sequences=True)
    x = _x(time=20)
    layer(x)
    compiled = rshop_ir.compile(layer)
    before = compiled(x)
    _randomize(layer, seed=5)
    after = compiled(x)
    assert not np.allclose(before, after, atol=1e-3)
    np.testing.assert_allclose(after, np.asarray(layer(x)), atol=ATOL_FLOAT32, rtol=0)


def test_float64_input_is_cast_and_save_load_runs(tmp_path):
    layer = GRUCell(UNITS, input_dim=FEATURES).get_layer(backend="keras", return_sequences=True)
    x = _x(time=30)
    layer(x)
    _randomize(layer, seed=2)
    compiled = rshop_ir.compile(layer)
    got = compiled(x.astype(np.float64))
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, np.asarray(layer(x)), atol=ATOL_FLOAT32, rtol=0)
    rshop_ir.save(compiled, str(tmp_path / "gru"))
    reloaded = rshop_ir.compile(rshop_ir.load(str(tmp_path / "gru")))
    np.testing.assert_array_equal(reloaded(x), compiled(x))
