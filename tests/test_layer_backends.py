"""The `backend=` argument of the recurrentshop layers: the compiled CPU kernel at
inference under "auto"/"numba-cpu", the Keras reference in training and as fallback."""

import logging
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import layers

from recurrentshop import LSTMCell, RecurrentModel, RecurrentSequential, SimpleRNNCell

RNG = np.random.default_rng(11)


def _step_rnn(backend, name, odd=False, **kwargs):
    """h_t = tanh(W x_t + U h_{t-1} + b), optionally with a TF function in the step."""
    x_t, h = keras.Input((3,)), keras.Input((4,))
    source = x_t
    if odd:  # tf.math.cumsum has no IR rule: the step cannot be compiled
        source = layers.Lambda(lambda v: tf.math.cumsum(v, axis=-1), output_shape=(3,),
                               name="tf_cumsum")(x_t)
    h_new = layers.Activation("tanh")(layers.add(
        [layers.Dense(4)(source), layers.Dense(4, use_bias=False)(h)]))
    return RecurrentModel(input=x_t, initial_states=[h], output=h_new, final_states=[h_new],
                          backend=backend, name=name, **kwargs)


def _pair(build, x_shape):
    """The same layer twice, on backend 'auto' and 'keras', with equal weights."""
    fast, reference = build("auto"), build("keras")
    fast.build(x_shape)
    reference.build(x_shape)
    reference.set_weights(fast.get_weights())
    return fast, reference


class _CountingKernel:
    def __init__(self, compiled):
        self.compiled, self.calls = compiled, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.compiled(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.compiled, name)


def _count_kernel_calls(layer):
    counter = _CountingKernel(layer._compiled_path.compiled)
    layer._compiled_path.compiled = counter
    return counter


def test_auto_runs_the_kernel_in_predict_with_the_reference_numbers():
    x = RNG.standard_normal((6, 9, 3)).astype("float32")
    fast, reference = _pair(lambda b: _step_rnn(b, f"rnn_{b}", return_sequences=True),
                            x.shape)
    np.testing.assert_allclose(fast(x), reference(x), atol=1e-5)  # eager call
    assert fast._compiled_path is not None and fast.fallback_reason is None
    assert reference._compiled_path is None
    counter = _count_kernel_calls(fast)
    inputs = keras.Input((9, 3))
    model = keras.Model(inputs, fast(inputs))
    expected = keras.Model(inputs, reference(inputs)).predict(x, verbose=0)
    np.testing.assert_allclose(model.predict(x, batch_size=4, verbose=0), expected,
                               atol=1e-5)
    assert counter.calls == 2  # one per predict batch: the kernel, not Keras's loop


def test_auto_sees_new_weights_after_set_weights():
    x = RNG.standard_normal((2, 5, 3)).astype("float32")
    fast, reference = _pair(lambda b: _step_rnn(b, f"w_{b}"), x.shape)
    fast(x)
    new_weights = [w + 0.3 for w in fast.get_weights()]
    fast.set_weights(new_weights)
    reference.set_weights(new_weights)
    np.testing.assert_allclose(fast(x), reference(x), atol=1e-5)


def test_auto_in_predict_sees_weights_changed_by_fit_and_set_weights():
    """Inside `predict` the kernel keeps the variables' buffers of its last call and
    skips comparing them while they are the same: training and set_weights must still
    be seen on the next predict."""
    x = RNG.standard_normal((4, 6, 3)).astype("float32")
    fast, reference = _pair(lambda b: _step_rnn(b, f"fit_{b}", return_sequences=True),
                            x.shape)
    inputs = keras.Input((6, 3))
    model = keras.Model(inputs, fast(inputs))
    expected_model = keras.Model(inputs, reference(inputs))
    np.testing.assert_allclose(model.predict(x, verbose=0),
                               expected_model.predict(x, verbose=0), atol=1e-5)
    model.compile(keras.optimizers.SGD(0.3), "mse")
    model.fit(x, np.ones((4, 6, 4), np.float32), epochs=2, verbose=0)
    reference.set_weights(fast.get_weights())
    after_fit = model.predict(x, verbose=0)
    np.testing.assert_allclose(after_fit, expected_model.predict(x, verbose=0), atol=1e-5)
    fast.set_weights([w * 0.5 for w in fast.get_weights()])
    reference.set_weights(fast.get_weights())
    np.testing.assert_allclose(model.predict(x, verbose=0),
                               expected_model.predict(x, verbose=0), atol=1e-5)
    assert not np.allclose(model.predict(x, verbose=0), after_fit, atol=1e-4)


def test_training_runs_the_differentiable_reference():
    x = RNG.standard_normal((4, 6, 3)).astype("float32")
    fast, reference = _pair(lambda b: _step_rnn(b, f"t_{b}"), x.shape)
    gradients = []
    for layer in (fast, reference):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(layer(x, training=True) ** 2)
        gradients.append(tape.gradient(loss, layer.trainable_variables))
    assert fast._compiled_path is None  # training never builds the kernel
    for ours, theirs in zip(*gradients):
        assert ours is not None
        np.testing.assert_allclose(ours, theirs, atol=1e-5)


def test_gradients_through_the_kernel_raise_instead_of_vanishing():
    x = tf.constant(RNG.standard_normal((2, 4, 3)).astype("float32"))
    layer = _step_rnn("auto", "no_grad")
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(layer(x))
    with pytest.raises(ValueError, match="no gradients.*training=True.*backend='keras'"):
        tape.gradient(loss, layer.trainable_variables)


def test_fit_with_auto_trains_and_predict_matches_keras():
    x = RNG.standard_normal((32, 6, 3)).astype("float32")
    y = np.sin(x.sum(axis=(1, 2)))[:, None].repeat(4, axis=1).astype("float32")
    inputs = keras.Input((6, 3))
    layer = _step_rnn("auto", "fit_rnn")
    model = keras.Model(inputs, layer(inputs))
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss="mse")
    history = model.fit(x, y, epochs=15, batch_size=8, verbose=0)
    assert history.history["loss"][-1] < 0.7 * history.history["loss"][0]
    predicted = model.predict(x, verbose=0)
    assert layer._compiled_path is not None
    reference = _step_rnn("keras", "fit_reference")
    reference.build(x.shape)
    reference.set_weights(layer.get_weights())
    np.testing.assert_allclose(predicted, reference(x), atol=1e-5)


def test_auto_falls_back_with_a_reason_and_one_info_log(caplog):
    x = RNG.standard_normal((2, 5, 3)).astype("float32")
    fast, reference = _pair(lambda b: _step_rnn(b, f"odd_{b}", odd=True), x.shape)
    with caplog.at_level(logging.INFO, logger="rshop_ir"):
        first = fast(x)
        fast(x)
    np.testing.assert_allclose(first, reference(x), atol=1e-6)
    assert fast._compiled_path is None and "tf_cumsum" in fast.fallback_reason
    messages = [r.getMessage() for r in caplog.records if "odd_auto" in r.getMessage()]
    assert len(messages) == 1 and "runs in Keras" in messages[0]


def test_auto_leaves_a_mixed_precision_layer_to_keras():
    """A layer under the "mixed_float16" policy computes in float16; a float32 kernel
    would not give its numbers (or its float16 outputs), so "auto" runs it in Keras
    with the reason."""
    policy = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16")
    try:
        x = RNG.standard_normal((2, 5, 3)).astype("float32")
        fast, reference = _pair(lambda b: _step_rnn(b, f"half_{b}", return_sequences=True),
                                x.shape)
        got = fast(x)
    finally:
        keras.config.set_dtype_policy(policy)
    assert fast._compiled_path is None and "computes in float16" in fast.fallback_reason
    assert got.dtype == "float16"
    np.testing.assert_array_equal(np.asarray(got), np.asarray(reference(x)))


def test_explicit_numba_cpu_refuses_what_it_cannot_compile():
    layer = _step_rnn("numba-cpu", "odd_explicit", odd=True)
    with pytest.raises(ValueError, match="(?s)cannot run on backend='numba-cpu'.*tf_cumsum"
                                         ".*backend='auto'"):
        layer(RNG.standard_normal((2, 5, 3)).astype("float32"))


def test_explicit_numba_cpu_compiles_a_stack_with_readout():
    x = RNG.standard_normal((3, 7, 4)).astype("float32")

    def build(backend):
        stack = RecurrentSequential(readout="add", return_sequences=True, backend=backend)
        stack.add(LSTMCell(4, input_dim=4))
        stack.add(SimpleRNNCell(4))
        return stack

    fast, reference = build("numba-cpu"), build("keras")
    fast.build(x.shape)
    reference.build(x.shape)
    reference.set_weights(fast.get_weights())
    np.testing.assert_allclose(fast(x), reference(x), atol=1e-5)
    assert fast._compiled_path is not None


def test_stateful_and_masked_calls_run_the_reference():
    x = RNG.standard_normal((2, 5, 3)).astype("float32")
    fast, reference = _pair(lambda b: _step_rnn(b, f"s_{b}", stateful=True), x.shape)
    for _ in range(2):  # the second call continues from the first's final state
        np.testing.assert_allclose(fast(x), reference(x), atol=1e-5)
    assert "stateful" in fast.fallback_reason

    masked_x = x.copy()
    masked_x[:, 3:] = 0.0
    mask = np.arange(5)[None, :] < np.array([[3], [5]])
    fast, reference = _pair(lambda b: _step_rnn(b, f"m_{b}"), x.shape)
    np.testing.assert_allclose(fast(masked_x, mask=mask), reference(masked_x, mask=mask),
                               atol=1e-6)
    assert fast._compiled_path is None


def test_auto_target_is_the_cpu_without_a_real_gpu(monkeypatch):
    import rshop_ir.targets as targets

    monkeypatch.setattr(targets, "gpu_present", lambda: False)
    assert targets.resolve_target("auto") == "cpu"
    assert targets.resolve_target("cuda") == "cuda"
    monkeypatch.setattr(targets, "gpu_present", lambda: True)
    assert targets.resolve_target("auto") == "cuda"
    with pytest.raises(ValueError, match="Unknown target 'tpu'.*'auto', 'cpu', 'cuda'"):
        targets.resolve_target("tpu")


def test_auto_compiles_for_the_cpu_where_cuda_cannot(monkeypatch):
    """With a GPU, "auto" tries CUDA first; an UnsupportedError there means the CPU."""
    import rshop_ir.targets as targets
    from rshop_ir.errors import UnsupportedError

    compile_module = sys.modules["rshop_ir.compile"]  # the name rshop_ir.compile is
    real_compile, asked = compile_module.compile, []  # the function; patch its module

    def compile_without_cuda(target_object, target="cpu", **kwargs):
        asked.append(target)
        if target == "cuda":
            raise UnsupportedError("op 'cumsum' has no CUDA rendering (simulated)")
        return real_compile(target_object, target=target, **kwargs)

    monkeypatch.setattr(targets, "gpu_present", lambda: True)
    monkeypatch.setattr(compile_module, "compile", compile_without_cuda)
    x = RNG.standard_normal((2, 5, 3)).astype("float32")
    fast, reference = _pair(lambda b: _step_rnn(b, f"gpu_{b}"), x.shape)
    np.testing.assert_allclose(fast(x), reference(x), atol=1e-5)
    assert asked == ["cuda", "cpu"] and fast.fallback_reason is None


def test_a_float64_layer_around_a_float32_step_falls_back_with_the_reason():
    """The states start float64 and the step returns float32: "auto" runs the layer in
    Keras (its numbers), where it raised the scan's ValueError before."""
    fast, reference = _pair(lambda backend: _step_rnn(backend, f"mixed_{backend}",
                                                      return_sequences=True,
                                                      dtype="float64"), (2, 5, 3))
    x = RNG.standard_normal((2, 5, 3))
    np.testing.assert_allclose(np.asarray(fast(x)), np.asarray(reference(x)), atol=1e-6)
    assert "float32" in fast.fallback_reason and "float64" in fast.fallback_reason
