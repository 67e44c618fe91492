"""Numba CPU kernels of Keras layers vs the Keras reference (training=False):
keras.layers.LSTM/GRU/SimpleRNN, our LSTMCell/GRUCell/RHNCell layers with every RNN
option, and weights changed after compiling. (Whole-model cases, readout, decode,
masking and stacks are in tests/test_kernel_zoo.py.)"""

import keras
import numpy as np
import pytest

import rshop_ir
from recurrentshop import GRUCell, LSTMCell, RHNCell

ATOL_FLOAT32 = 1e-4
BATCH, TIME, FEATURES, UNITS = 3, 100, 5, 6


pytestmark = pytest.mark.usefixtures("kernel_cache")  # a fresh kernel disk cache


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


def test_layers_alike_but_for_their_names_share_one_kernel_module():
    """Keras numbers each new layer (`lstm`, `lstm_1`, ...) and the kernel's arguments
    are named after the weights: the module is still shared, each compiled layer
    running it with its own weights."""
    x = _x(time=20)
    layers = [keras.layers.LSTM(UNITS, return_sequences=True) for _ in range(2)]
    layers.append(keras.layers.LSTM(UNITS + 1, return_sequences=True))
    for seed, layer in enumerate(layers):
        layer(x)
        _randomize(layer, seed=seed)
    first, second, other = (rshop_ir.compile(layer) for layer in layers)
    assert second.module is first.module and other.module is not first.module
    assert layers[0].name != layers[1].name
    assert first.kernel.named_arguments != second.kernel.named_arguments
    assert all(name in second.source for name in second.kernel.named_arguments)
    for compiled, layer in zip((first, second, other), layers):
        _assert_matches(compiled, layer, x)


@pytest.mark.parametrize("how", ["assign_add", "fit", "fit_xla"])
def test_weights_changed_by_training_or_assignment_are_seen(how):
    """The compiled layer keeps the arrays of its last read of the Keras variables and
    re-reads only what changed: every way of writing a variable must be seen."""
    layer = keras.layers.GRU(UNITS, return_sequences=True)
    model = keras.Sequential([keras.Input((None, FEATURES)), layer])
    x = _x(time=12)
    compiled = rshop_ir.compile(layer)
    before = compiled(x)
    if how == "assign_add":
        layer.cell.recurrent_kernel.assign_add(np.full((UNITS, 3 * UNITS), 0.3, np.float32))
    else:
        model.compile(keras.optimizers.SGD(0.5), "mse", jit_compile=how == "fit_xla")
        model.fit(x, np.ones((BATCH, 12, UNITS), np.float32), epochs=2, verbose=0)
    after = compiled(x)
    assert not np.allclose(before, after, atol=1e-4)
    _assert_matches(compiled, layer, x)


@pytest.mark.parametrize("reader", ["read_all", "read_each"])
def test_unchanged_variables_are_not_compared_again(reader, monkeypatch):
    """Both TensorFlow read paths: every variable in one op, or (where that op is
    missing) one op per variable."""
    from tensorflow.python.eager import execute

    from rshop_ir.keras_variables import VariableWatcher

    if reader == "read_each":
        original = execute.quick_execute

        def without_batched_reads(op_name, *args, **kwargs):
            if op_name == "_ReadVariablesOp":
                raise RuntimeError("no such op in this build")
            return original(op_name, *args, **kwargs)

        monkeypatch.setattr(execute, "quick_execute", without_batched_reads)
    layer = keras.layers.LSTM(UNITS)
    layer(_x(time=3))
    watcher = VariableWatcher({variable.path: variable for variable in layer.weights})
    assert watcher._read_all.__name__ == reader
    first = watcher()
    assert watcher.poll() is None
    layer.cell.bias.assign(np.ones(4 * UNITS, np.float32))
    changed = watcher.poll()
    assert changed is not None
    np.testing.assert_array_equal(changed[layer.cell.bias.path], np.ones(4 * UNITS))
    np.testing.assert_array_equal(changed[layer.cell.kernel.path],
                                  first[layer.cell.kernel.path])
    assert watcher.poll() is None


@pytest.mark.parametrize("batch", [1, 2, 3, 4, 5, 9])
def test_tiled_recurrent_matmul_matches_keras(batch):
    """The recurrent matmul runs as the packed product (kernels/cpu/packed_product.py)
    for every batch. GRU with 257 units: 771 columns (whole blocks of 32 or 16 columns
    and 3 columns of overhang) and batches made of every mix of the 8- (or 6-), 4-, 2-
    and 1-row tiles, compared with Keras."""
    units, features = 257, 7
    layer = keras.layers.GRU(units, return_sequences=True, return_state=True)
    rng = np.random.default_rng(batch)
    x = rng.standard_normal((batch, 6, features)).astype(np.float32)
    layer(x)
    _randomize(layer, seed=batch, scale=0.1)
    compiled = rshop_ir.compile(layer)
    assert "packed_product(" in compiled.source
    _assert_matches(compiled, layer, x)


@pytest.mark.parametrize("batch, steps, team_size", [(1, 70, 1), (1, 70, 2), (1, 130, 3),
                                                     (3, 40, None), (9, 20, None)])
def test_packed_input_projection_and_team_match_keras(batch, steps, team_size):
    """With 40 input features the input projection runs as the packed product too,
    in panels of 64 rows over the weight the runtime packed once; on a team, each
    member computes blocks of whole 8-row tiles and its columns of the recurrent product. Keras's
    LSTM, one row and several, on one thread and on teams of 2 and 3."""
    layer = keras.layers.LSTM(48, return_sequences=True, return_state=True)
    x = np.random.default_rng(steps).standard_normal((batch, steps, 40)).astype(np.float32)
    layer(x)
    _randomize(layer, seed=steps, scale=0.15)
    compiled = rshop_ir.compile(layer)
    assert "packed_product(staged_0[panel:panel_end]" in compiled.source
    expected = _as_list(layer(x, training=False))
    got = _as_list(compiled(x, team_size=team_size))
    assert len(got) == len(expected)
    for a, b in zip(got, expected):
        np.testing.assert_allclose(a, b, atol=ATOL_FLOAT32, rtol=0)


def test_model_with_a_fixed_length_projects_its_input_in_chunks():
    """A model whose input fixes the sequence length (keras.Input((30, 40))) traces to
    a program with T = 30: its input projection is still computed a chunk at a time
    inside the kernel (as the packed product), not as one GEMM of all steps before it.
    Keras's numbers on one thread and on a team, chunks of 7 steps and the default."""
    inputs = keras.Input((30, 40))
    layer = keras.layers.LSTM(48, return_sequences=True)
    model = keras.Model(inputs, layer(inputs))
    _randomize(layer, seed=5, scale=0.15)
    compiled = rshop_ir.compile(model)
    assert "packed_product(staged_0[panel:panel_end]" in compiled.source
    assert "np.dot(in_" not in compiled.source
    x = np.random.default_rng(5).standard_normal((2, 30, 40)).astype(np.float32)
    expected = np.asarray(model(x, training=False))
    for team_size in (1, 2):
        for chunk_steps in (7, None):
            got = compiled(x, team_size=team_size, chunk_steps=chunk_steps)
            np.testing.assert_allclose(got, expected, atol=ATOL_FLOAT32, rtol=0)


@pytest.mark.parametrize("batch", [2, 7])
def test_tiled_recurrent_matmul_float64_matches_numpy(batch):
    """The tiles in float64 against an independent numpy LSTM (tests/numpy_rnn.py)."""
    import numpy_rnn

    units = 20                        # 80 columns: 5 whole blocks
    layer = keras.layers.LSTM(units, return_sequences=True, dtype="float64")
    x = np.random.default_rng(batch).standard_normal((batch, 5, 3))
    layer(x)
    compiled = rshop_ir.compile(layer)
    assert "packed_product(" in compiled.source
    weights = [w.numpy() for w in layer.weights]

    def step(x_t, states, readout):
        h, c = numpy_rnn.lstm_step(x_t, *states, *weights)
        return h, [h, c]

    zeros = np.zeros((batch, units))
    expected, _ = numpy_rnn.run_loop(step, x, [zeros, zeros])
    np.testing.assert_allclose(compiled(x), expected, atol=1e-10, rtol=0)


def test_repeated_calls_skip_the_checks_but_never_share_buffers():
    """A call like the previous one (same shape and dtype) skips the input checks and
    reuses the filled default states: the results must stay exact and independent."""
    layer = keras.layers.LSTM(UNITS, return_sequences=True, return_state=True)
    x = _x(time=9)
    expected = _as_list(layer(x))
    compiled = rshop_ir.compile(layer)
    first = compiled(x)
    for output in first:
        output[...] = 7.0            # the caller owns its outputs
    for variant in (x, x.copy(), np.asfortranarray(x), x.astype(np.float64)):
        got = compiled(variant)
        for a, b in zip(got, expected):
            np.testing.assert_allclose(a, b, atol=ATOL_FLOAT32, rtol=0)
    shorter = x[:, ::2]              # a strided view of another shape
    _assert_matches(compiled, layer, shorter)
    with pytest.raises(ValueError, match="Input 'x'"):
        compiled(x[:, :, :2])


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
