"""The tracer's error paths name the layer; traced programs run without Keras."""

import json
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import layers, ops

import rshop_ir
import zoo
from recurrentshop import LSTMCell, RecurrentModel


def _step_rnn(make_output, name="custom_step", **kwargs):
    x_t, h = keras.Input((4,)), keras.Input((3,))
    output = make_output(x_t, h)
    return RecurrentModel(backend="keras",
                          input=x_t, initial_states=[h], output=output, final_states=[output],
                          name=name, **kwargs)


def _built(layer, features=4):
    layer(np.zeros((2, 5, features), "float32"))
    return layer


class _LearnedStartCell(layers.Layer):
    """A cell whose initial state is a weight (read by get_initial_state)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.state_size = 3

    def build(self, shape):
        self.kernel = self.add_weight(shape=(shape[-1], 3))
        self.start = self.add_weight(shape=(3,), initializer="ones")

    def get_initial_state(self, batch_size=None):
        return [ops.zeros((batch_size, 3)) + self.start]

    def call(self, inputs, states):
        output = ops.tanh(ops.matmul(inputs, self.kernel) + states[0])
        return output, [output]


UNSUPPORTED = [
    ("varying_constant_state", lambda: _built(_step_rnn(
        lambda x, h: layers.Dense(3)(x) + h, name="varying_start",
        state_initializer=keras.initializers.Constant(np.arange(3.0)))), "varying_start"),
    ("learned_initial_state", lambda: _built(layers.RNN(_LearnedStartCell(),
                                                        name="learned_start")),
     "learned_start"),
    ("conv_lstm", lambda: _built_conv_lstm(), "conv_lstm_cell"),
    ("conv2d_in_step", lambda: _built(_step_rnn(
        lambda x, h: layers.Flatten()(layers.Conv2D(3, 2, name="step_conv")(
            layers.Reshape((2, 2, 1))(x))) + h)), "step_conv"),
    ("tf_lambda", lambda: _built(_step_rnn(
        lambda x, h: layers.Lambda(lambda v: tf.math.cumsum(v, axis=-1)[:, :3],
                                   output_shape=(3,), name="tf_lambda")(x))), "tf_lambda"),
    ("sparsemax_activation", lambda: _built(_step_rnn(
        lambda x, h: layers.Dense(3, activation="sparsemax", name="sparsemax_dense")(x))),
     "sparsemax_dense"),
    ("random_state_initializer", lambda: _built(_step_rnn(
        lambda x, h: layers.Dense(3)(x), name="random_init_rnn",
        state_initializer="random_normal")), "random_init_rnn"),
]


def _built_conv_lstm():
    layer = layers.ConvLSTM1D(2, 3)
    layer(np.zeros((2, 4, 6, 3), "float32"))
    return layer


@pytest.mark.parametrize("name,make,layer_name", UNSUPPORTED, ids=[u[0] for u in UNSUPPORTED])
def test_unsupported_layers_are_named(name, make, layer_name):
    layer = make()
    with pytest.raises(rshop_ir.UnsupportedError, match=layer_name):
        rshop_ir.trace(layer)
    assert issubclass(rshop_ir.UnsupportedError, NotImplementedError)


def test_normalized_dot_compiles_with_keras_numbers():
    """`Dot(normalize=True)` (the cosine) inside a step: each input scaled by its
    inverse L2 norm capped at 1 / epsilon as Keras does, so the zero initial state
    stays zero instead of becoming NaN."""
    layer = _built(_step_rnn(lambda x, h: layers.Dense(3, activation="tanh")(x) + layers.Dot(
        axes=1, normalize=True, name="cosine")([layers.Dense(3)(x), h]) * h,
        return_sequences=True))
    x = np.random.default_rng(3).standard_normal((2, 6, 4)).astype("float32")
    expected = np.asarray(layer(x, training=False))
    assert np.all(np.isfinite(expected)) and np.abs(expected).max() > 0.1
    np.testing.assert_allclose(rshop_ir.interpret(rshop_ir.trace(layer), x), expected,
                               atol=1e-5, rtol=0)
    np.testing.assert_allclose(rshop_ir.compile(layer)(x), expected, atol=1e-4, rtol=0)


def test_stateful_layer_is_unsupported_and_named():
    layer = LSTMCell(3, input_dim=4).get_layer(backend="keras", stateful=True, name="kept_state")
    inputs = keras.Input(batch_shape=(2, 5, 4))
    layer(inputs)
    with pytest.raises(rshop_ir.UnsupportedError, match="kept_state"):
        rshop_ir.trace(layer)


def test_trace_rejects_non_keras_objects():
    with pytest.raises(TypeError, match="expects a Keras layer or model"):
        rshop_ir.trace(np.zeros(3))


def test_saved_program_runs_in_a_process_without_keras(tmp_path):
    case = zoo.attention_decoder(np.random.default_rng(5))
    program = rshop_ir.optimize(rshop_ir.trace(case.target))
    rshop_ir.save(program, tmp_path / "model")
    np.save(tmp_path / "x.npy", case.inputs[0])
    np.save(tmp_path / "expected.npy", case.reference())
    script = textwrap.dedent(f"""
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("keras", "tensorflow"):
                    raise ImportError("blocked: " + name)
        sys.meta_path.insert(0, Block())
        import numpy as np
        import rshop_ir
        program = rshop_ir.load({str(tmp_path / "model")!r})
        got = rshop_ir.interpret(program, np.load({str(tmp_path / "x.npy")!r}))
        expected = np.load({str(tmp_path / "expected.npy")!r})
        print(float(np.abs(got - expected).max()))
        print(sorted(m for m in sys.modules if m.split(".")[0] in ("keras", "tensorflow")))
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    error, modules = result.stdout.strip().splitlines()
    assert float(error) < 1e-5
    assert modules == "[]"
    text = json.loads((tmp_path / "model" / "program.json").read_text())
    assert "scan" in json.dumps(text)
