"""Nested call results: a program's flat outputs returned nested as the Keras layer or
model returns them (rshop_ir/output_structure.py), for the interpreter, the CPU kernel,
`accelerate` and a saved program, compared with Keras's own results."""

import collections

import keras
import numpy as np
import pytest

import rshop_ir
from recurrentshop import LSTMCell
from rshop_ir.output_structure import (check_structure, decode_structure,
                                       encode_structure, flatten_outputs, nest_outputs,
                                       structure_of)

ATOL_FLOAT32 = 1e-4

pytestmark = pytest.mark.usefixtures("kernel_cache")


def _assert_same_nesting(got, expected, path="result"):
    """The same containers (a tuple where Keras gives a tuple, a list where it gives a
    list) down to arrays equal within ATOL_FLOAT32."""
    if isinstance(expected, (list, tuple)):
        assert isinstance(got, type(expected)), (path, type(got), type(expected))
        assert len(got) == len(expected), path
        for index, (a, b) in enumerate(zip(got, expected)):
            _assert_same_nesting(a, b, f"{path}[{index}]")
        return
    if isinstance(expected, dict):
        assert isinstance(got, dict) and sorted(got) == sorted(expected), path
        for key in expected:
            _assert_same_nesting(got[key], expected[key], f"{path}[{key!r}]")
        return
    expected = np.asarray(expected)
    assert isinstance(got, np.ndarray), (path, type(got))
    assert got.shape == expected.shape, path
    np.testing.assert_allclose(got, expected, atol=ATOL_FLOAT32, rtol=0, err_msg=path)


def _randomize(layer, seed=0, scale=0.4):
    rng = np.random.default_rng(seed)
    layer.set_weights([scale * rng.standard_normal(w.shape).astype(np.float32)
                       for w in layer.get_weights()])


def _x(batch=3, time=7, features=5, seed=1):
    return np.random.default_rng(seed).standard_normal((batch, time, features)).astype(
        np.float32)


def _stacked_layer(**options):
    cells = [keras.layers.LSTMCell(4), keras.layers.SimpleRNNCell(3),
             keras.layers.GRUCell(2)]
    return keras.layers.RNN(keras.layers.StackedRNNCells(cells), return_state=True,
                            **options)


# ---- the template itself -----------------------------------------------------------

def test_flat_results_need_no_structure():
    assert structure_of([1.0, 2.0, 3.0]) is None
    assert structure_of(1.0) is None
    assert structure_of([1.0]) is None
    assert structure_of((1.0, [2.0, 3.0])) == (0, [1, 2])
    assert structure_of({"b": 1.0, "a": [2.0]}) == {"a": [0], "b": 1}
    pair = collections.namedtuple("pair", "first second")
    assert type(structure_of(pair(1.0, [2.0]))) is tuple    # a plain tuple: it is saved


def test_nest_and_flatten_are_inverse():
    structure = (0, [1, 2], {"k": 3, "j": (4,)})
    flat = [np.full(2, float(i)) for i in range(5)]
    nested = nest_outputs(flat, structure)
    assert isinstance(nested, tuple) and isinstance(nested[1], list)
    assert nested[2]["j"][0] is flat[4]
    back = flatten_outputs(nested, structure)
    assert all(a is b for a, b in zip(back, flat))
    assert nest_outputs(flat[:1], None) is flat[0]
    assert nest_outputs(flat[:2], None) == flat[:2]


def test_encoding_keeps_lists_tuples_and_dicts_apart():
    structure = (0, [1, (2,)], {"a": 3})
    assert decode_structure(encode_structure(structure)) == structure
    with pytest.raises(ValueError, match="Not an encoded output structure"):
        decode_structure({"set": [0]})


@pytest.mark.parametrize("structure, outputs", [((0, 0), 2), ([0, 2], 2), ([0, "b"], 2),
                                                ([0, 1.5], 2), ({1: 0}, 1)])
def test_a_wrong_structure_is_refused(structure, outputs):
    with pytest.raises(ValueError, match="output structure"):
        check_structure(structure, outputs)


# ---- a compiled layer -------------------------------------------------------------

def test_stacked_cells_return_state_nested_like_keras():
    """`RNN(StackedRNNCells)` returns each cell's states in a list of its own."""
    layer = _stacked_layer(return_sequences=True)
    x = _x()
    layer(x)
    _randomize(layer)
    expected = layer(x, training=False)
    assert isinstance(expected, tuple)
    bound = rshop_ir.trace(layer)
    assert bound.program.output_structure == (0, [1, 2], [3], [4])
    assert bound.ir.splitlines()[-1].endswith("in (o, [p, q], [r], [s]) }")
    _assert_same_nesting(bound(x), expected)
    compiled = rshop_ir.compile(layer)
    _assert_same_nesting(compiled(x), expected)
    _assert_same_nesting(compiled(x[:1]), tuple(
        part[:1] if not isinstance(part, list) else [p[:1] for p in part]
        for part in expected))


def test_a_keras_layer_returns_its_states_in_a_tuple():
    """`LSTM(return_state=True)` returns the tuple `(output, h, c)`, as Keras does."""
    layer = keras.layers.LSTM(4, return_state=True)
    x = _x()
    layer(x)
    _randomize(layer, seed=6)
    bound = rshop_ir.trace(layer)
    assert bound.program.output_structure == (0, 1, 2)
    result = rshop_ir.compile(layer)(x)
    assert isinstance(result, tuple) and len(result) == 3
    _assert_same_nesting(result, layer(x, training=False))


def test_our_layer_returns_its_states_flat_in_a_list():
    """`RecurrentModel(return_states=True)` returns `[output, *final_states]` (SPEC), so
    its program needs no nesting."""
    layer = LSTMCell(4, input_dim=5).get_layer(backend="keras", return_states=True)
    x = _x()
    layer(x)
    _randomize(layer, seed=7)
    bound = rshop_ir.trace(layer)
    assert bound.program.output_structure is None
    result = rshop_ir.compile(layer)(x)
    expected = layer(x, training=False)
    assert isinstance(expected, list) and isinstance(result, list) and len(result) == 3
    _assert_same_nesting(result, expected)


def test_saved_program_keeps_the_nesting(tmp_path):
    layer = _stacked_layer()
    x = _x(seed=2)
    layer(x)
    _randomize(layer, seed=3)
    expected = layer(x, training=False)
    path = str(tmp_path / "stacked")
    rshop_ir.save(rshop_ir.compile(layer), path)
    loaded = rshop_ir.load(path)
    assert loaded.program.output_structure == (0, [1, 2], [3], [4])
    _assert_same_nesting(loaded(x), expected)
    _assert_same_nesting(rshop_ir.compile(loaded)(x), expected)


# ---- models ---------------------------------------------------------------------

def _nested_model():
    inputs = keras.Input((7, 5))
    sequence, h, c = keras.layers.LSTM(4, return_sequences=True, return_state=True)(inputs)
    summary = keras.layers.Dense(3)(h)
    return keras.Model(inputs, (summary, [sequence, c]))


def test_accelerated_model_returns_the_model_nesting():
    model = _nested_model()
    _randomize(model, seed=4)
    x = _x(batch=5)
    accelerated = rshop_ir.accelerate(model)
    assert accelerated.fallbacks == []
    _assert_same_nesting(accelerated.predict(x, batch_size=2), model.predict(
        x, batch_size=2, verbose=0))
    _assert_same_nesting(accelerated(x), model(x, training=False))
    compiled = rshop_ir.compile(model)
    _assert_same_nesting(compiled(x), model(x, training=False))


def test_accelerated_model_with_a_keras_part_returns_the_model_nesting():
    """A layer run in Keras (a TensorFlow op in a Lambda) between compiled parts: the
    parts' flat outputs are nested as the model's at the end."""
    import tensorflow as tf

    inputs = keras.Input((7, 5))
    sequence, h = keras.layers.GRU(4, return_sequences=True, return_state=True)(inputs)
    odd = keras.layers.Lambda(lambda value: tf.math.cumsum(value, axis=-1),
                              output_shape=(4,), name="tf_cumsum")(h)
    model = keras.Model(inputs, {"last": keras.layers.Dense(2)(odd), "all": [sequence]})
    _randomize(model, seed=5)
    x = _x(batch=4, seed=6)
    accelerated = rshop_ir.accelerate(model)
    assert [name for name, _ in accelerated.fallbacks] == ["tf_cumsum"]
    expected = model.predict(x, verbose=0)
    assert isinstance(expected, dict)
    _assert_same_nesting(accelerated.predict(x), expected)


def test_stacked_cells_in_a_sequential_model():
    model = keras.Sequential([keras.Input((7, 5)), _stacked_layer()])
    _randomize(model, seed=7)
    x = _x(batch=2, seed=8)
    _assert_same_nesting(rshop_ir.accelerate(model).predict(x), model.predict(x, verbose=0))


# ---- Bidirectional with return_state ----------------------------------------------

BIDIRECTIONAL_LAYERS = {
    "lstm_concat": lambda: keras.layers.Bidirectional(
        keras.layers.LSTM(4, return_sequences=True, return_state=True)),
    "gru_unmerged": lambda: keras.layers.Bidirectional(
        keras.layers.GRU(3, return_state=True), merge_mode=None),
    "stacked_sum": lambda: keras.layers.Bidirectional(_stacked_layer(), merge_mode="sum"),
    "ours_ave": lambda: keras.layers.Bidirectional(
        LSTMCell(4, input_dim=5).get_layer(return_states=True, backend="keras"),
        merge_mode="ave"),
}


@pytest.mark.parametrize("name", sorted(BIDIRECTIONAL_LAYERS))
def test_bidirectional_return_state_like_keras(name):
    """Keras's `(output, *forward states, *backward states)`, both outputs first when
    unmerged, compiled as one program (no part left to Keras)."""
    layer = BIDIRECTIONAL_LAYERS[name]()
    x = _x(seed=9)
    layer(x)
    _randomize(layer, seed=10)
    expected = layer(x, training=False)
    assert isinstance(expected, tuple)
    _assert_same_nesting(rshop_ir.compile(layer)(x), expected)
    inputs = keras.Input((7, 5))
    model = keras.Model(inputs, layer(inputs))
    accelerated = rshop_ir.accelerate(model)
    assert accelerated.fallbacks == []
    _assert_same_nesting(accelerated.predict(x, batch_size=2),
                         model.predict(x, batch_size=2, verbose=0))
