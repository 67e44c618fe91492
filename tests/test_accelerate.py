"""rshop_ir.accelerate: whole models compiled, with Keras for what cannot be."""

import importlib
import logging

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import layers, ops

import rshop_ir
import zoo
from keras_checks import assert_compiled_like_keras, assert_follows_new_weights, randomize
from recurrentshop import LSTMCell, RecurrentModel


def test_whole_model_compiles_and_predicts_like_keras():
    case = zoo.embedding_lstm_softmax(np.random.default_rng(2))
    fast = rshop_ir.accelerate(case.target)
    assert fast.fallbacks == []
    ids = np.random.default_rng(3).integers(0, 20, size=(70, zoo.TIME)).astype("int32")
    np.testing.assert_allclose(fast.predict(ids, batch_size=16),
                               case.target.predict(ids, batch_size=16, verbose=0), atol=1e-4)


def _model_with_unsupported_layer():
    """Dense -> an RNN whose step uses a TF function (cannot be compiled) -> LSTM."""
    x_t, h = keras.Input((4,)), keras.Input((4,))
    odd = layers.Lambda(lambda v: tf.math.cumsum(v, axis=-1), output_shape=(4,),
                        name="tf_cumsum")(x_t)
    h_new = layers.Activation("tanh")(layers.add([layers.Dense(4)(odd), h]))
    odd_rnn = RecurrentModel(backend="keras", input=x_t, initial_states=[h], output=h_new,
                             final_states=[h_new], return_sequences=True, name="odd_rnn")
    inputs = keras.Input((6, 3))
    hidden = layers.Dense(4, name="before")(inputs)
    hidden = odd_rnn(hidden)
    hidden = LSTMCell(5, input_dim=4).get_layer(backend="keras", name="after_lstm")(hidden)
    return keras.Model(inputs, layers.Dense(2, name="head")(hidden))


def test_unsupported_layer_runs_in_keras_and_is_reported(caplog):
    model = _model_with_unsupported_layer()
    with caplog.at_level(logging.INFO, logger="rshop_ir"):
        fast = rshop_ir.accelerate(model)
    names = [name for name, _ in fast.fallbacks]
    assert names == ["odd_rnn"]
    assert "tf_cumsum" in fast.fallbacks[0][1]
    assert any("odd_rnn" in record.getMessage() for record in caplog.records)
    kinds = [part[0] for part in fast._parts]
    assert kinds == ["compiled", "keras", "compiled"]
    x = np.random.default_rng(4).standard_normal((10, 6, 3)).astype("float32")
    np.testing.assert_allclose(fast.predict(x, batch_size=4), model.predict(x, verbose=0),
                               atol=1e-4)


def test_accelerate_rejects_bad_arguments():
    with pytest.raises(TypeError, match="keras.Model"):
        rshop_ir.accelerate(np.zeros(3))
    model = zoo.keras_lstm(np.random.default_rng(0)).target
    inputs = keras.Input((zoo.TIME, zoo.FEATURES))
    with pytest.raises(ValueError, match="target"):
        rshop_ir.accelerate(keras.Model(inputs, model(inputs)), target="tpu")


@pytest.mark.parametrize("keyed", [True, False], ids=["dict_model", "named_inputs"])
def test_inputs_given_as_a_dict_by_name(keyed):
    """A dict of arrays, as Keras's predict takes it: by the keys of a model built from
    a dict of inputs, or by the Inputs' names; wrong keys, None and scalars are
    refused with the names."""
    sequence, extra = keras.Input((5, 3), name="seq"), keras.Input((4,), name="aux")
    output = layers.Dense(2)(layers.Concatenate()([layers.GRU(3)(sequence), extra]))
    model = keras.Model({"seq": sequence, "aux": extra} if keyed else [sequence, extra],
                        output)
    randomize(model, 51)
    rng = np.random.default_rng(52)
    feed = {"seq": rng.standard_normal((7, 5, 3)).astype("float32"),
            "aux": rng.standard_normal((7, 4)).astype("float32")}
    fast = rshop_ir.accelerate(model)
    expected = model.predict(feed, verbose=0)
    for got in (fast.predict(feed, batch_size=np.int64(3)), fast(feed)):
        np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match=r"missing \['aux'\]"):
        fast.predict({"seq": feed["seq"]})
    with pytest.raises(ValueError, match="takes 2 input"):
        fast.predict(feed["seq"])
    with pytest.raises(TypeError, match="must be an array; received NoneType"):
        fast.predict([None, feed["aux"]])
    with pytest.raises(ValueError, match="received a scalar"):
        fast.predict([3.0, feed["aux"]])


@pytest.fixture
def float64_keras():
    """Keras building float64 layers (`set_floatx`, and the dtype policy, which Keras
    fixes from floatx at its first use), restored after."""
    previous, policy = keras.config.floatx(), keras.config.dtype_policy()
    keras.config.set_floatx("float64")
    keras.config.set_dtype_policy("float64")
    yield
    keras.config.set_floatx(previous)
    keras.config.set_dtype_policy(policy)


def test_a_float64_model_runs_compiled_in_float64(float64_keras):
    """A model built with floatx float64: its recurrent layers' steps are traced in
    their compute dtype (float64), not the trace's default float32 (which made the
    scan's body disagree with its float64 sequence and failed); the numbers are
    Keras's to float64 rounding."""
    rng = np.random.default_rng(4)
    ids = keras.Input((7,), dtype="int32")
    hidden = layers.Embedding(12, 5, mask_zero=True)(ids)
    hidden = layers.GRU(6, reset_after=False, return_sequences=True)(hidden)
    hidden = layers.LSTM(5, return_sequences=True, go_backwards=True)(hidden)
    hidden = LSTMCell(4, input_dim=5).get_layer(backend="keras", return_sequences=True)(
        hidden)
    model = keras.Model(ids, layers.Dense(3, activation="softmax")(
        layers.SimpleRNN(4, return_sequences=True)(hidden)))
    for weight in model.weights:
        weight.assign(rng.uniform(-0.5, 0.5, size=weight.shape))
    data = rng.integers(1, 12, size=(5, 7)).astype("int32")
    data[0, -2:] = 0     # padding, masked
    fast = rshop_ir.accelerate(model)
    assert fast.fallbacks == []
    got = fast.predict(data)
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, model.predict(data, verbose=0), atol=1e-10, rtol=0)


def test_a_layer_the_generator_refuses_runs_in_keras(monkeypatch):
    """Every layer traces, but the kernel generator refuses one (an UnsupportedError
    raised when compiling, not when tracing): that layer runs in Keras and is
    reported, the layers around it run compiled, and the numbers are Keras's."""
    from rshop_ir.errors import UnsupportedError

    accelerate_module = importlib.import_module("rshop_ir.accelerate")

    inputs = keras.Input((6, 3))
    hidden = layers.Dense(4, name="before")(inputs)
    hidden = layers.Dense(4, activation="tanh", name="refused")(hidden)
    hidden = layers.LSTM(5, return_sequences=True, name="lstm")(hidden)
    model = keras.Model(inputs, layers.Dense(2, name="head")(hidden))
    compile_for = accelerate_module.compile_for
    compiled_layers = []

    def refusing(target_object, target):
        names = [layer.name for layer in target_object.layers]
        if "refused" in names:
            raise UnsupportedError("the generator refuses 'refused'")
        compiled_layers.append(names)
        return compile_for(target_object, target)

    monkeypatch.setattr(accelerate_module, "compile_for", refusing)
    fast = rshop_ir.accelerate(model)
    assert [name for name, _ in fast.fallbacks] == ["refused"]
    assert [kind for kind, *_ in fast._parts] == ["compiled", "keras", "compiled"]
    assert {name for names in compiled_layers for name in names} >= {"before", "lstm",
                                                                      "head"}
    x = np.random.default_rng(6).standard_normal((4, 6, 3)).astype("float32")
    np.testing.assert_allclose(fast.predict(x), model.predict(x, verbose=0), atol=1e-4,
                               rtol=0)


def test_the_compiled_pieces_around_a_refused_layer_are_joined(monkeypatch):
    """Eight layers, the generator refusing the fourth: halving the run finds it by
    cutting the three before it into two pieces; those are joined again, so the model
    runs as one compiled segment on each side of the refused layer."""
    from rshop_ir.errors import UnsupportedError

    accelerate_module = importlib.import_module("rshop_ir.accelerate")
    hidden = inputs = keras.Input((5, 3))
    for index in range(8):
        name = "refused" if index == 3 else f"dense_{index}"
        hidden = layers.Dense(4, activation="tanh", name=name)(hidden)
    model = keras.Model(inputs, hidden)
    compile_for = accelerate_module.compile_for

    def refusing(target_object, target):
        if "refused" in [layer.name for layer in target_object.layers]:
            raise UnsupportedError("the generator refuses 'refused'")
        return compile_for(target_object, target)

    monkeypatch.setattr(accelerate_module, "compile_for", refusing)
    fast = rshop_ir.accelerate(model)
    assert [name for name, _ in fast.fallbacks] == ["refused"]
    kinds = [kind for kind, *_ in fast._parts]
    assert kinds == ["compiled", "keras", "compiled"]
    assert [len(fast._parts[0][1].program.params), len(fast._parts[2][1].program.params)] \
        == [6, 8]    # a kernel and a bias for each of 3 and of 4 layers
    x = np.random.default_rng(10).standard_normal((4, 5, 3)).astype("float32")
    np.testing.assert_allclose(fast.predict(x), model.predict(x, verbose=0), atol=1e-5,
                               rtol=0)


def test_float64_inputs_of_float32_layers_are_cast_as_keras_casts_them():
    """A float64 `keras.Input` feeding float32 layers: Keras casts a layer's float
    inputs to its compute dtype, so the trace does too (the Dense's float64 x float32
    matmul made the generator refuse the model)."""
    inputs = keras.Input((6, 3), dtype="float64")
    hidden = layers.Dense(4, activation="tanh")(inputs)
    hidden = layers.SimpleRNN(5, return_sequences=True)(hidden)
    model = keras.Model(inputs, layers.Dense(2)(hidden))
    fast = rshop_ir.accelerate(model)
    assert fast.fallbacks == []
    x = np.random.default_rng(7).standard_normal((4, 6, 3))
    got = fast.predict(x)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, model.predict(x, verbose=0), atol=1e-4, rtol=0)


@pytest.fixture
def mixed_precision():
    """Keras building layers under a mixed-precision policy, restored after."""
    policy = keras.config.dtype_policy()

    def use(name):
        keras.config.set_dtype_policy(name)

    yield use
    keras.config.set_dtype_policy(policy)


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_layers_run_in_keras_and_float32_ones_compiled(mixed_precision,
                                                                       policy):
    """Layers computing in 16 bits run in Keras (a float32 kernel's numbers differ from
    Keras's by the 16-bit rounding, ~1e-3), listed in `fallbacks`; a float32 layer
    after them runs compiled on their 16-bit output, widened exactly: the numbers are
    Keras's. Before, the float32 head crashed Numba (no float16 arguments) and the
    mixed layers ran in float32."""
    mixed_precision(policy)
    inputs = keras.Input((6, 5))
    hidden = layers.Dense(8, name="dense16")(inputs)
    hidden = layers.LSTM(16, return_sequences=True, name="lstm16")(hidden)
    model = keras.Model(inputs, layers.Dense(3, dtype="float32", name="head")(hidden))
    fast = rshop_ir.accelerate(model)
    assert [name for name, _ in fast.fallbacks] == ["dense16", "lstm16"]
    assert all("computes in" in reason and policy in reason
               for _, reason in fast.fallbacks)
    assert [kind for kind, *_ in fast._parts] == ["keras", "keras", "compiled"]
    x = np.random.default_rng(8).standard_normal((5, 6, 5)).astype("float32")
    got = fast.predict(x)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, model.predict(x, verbose=0), atol=1e-6, rtol=0)
    with pytest.raises(rshop_ir.UnsupportedError, match="computes in"):
        rshop_ir.compile(model.get_layer("lstm16"))


def test_a_cast_to_float16_runs_in_keras():
    """An explicit cast to float16 inside a float32 model: the kernels do not compute
    in float16, so the cast runs in Keras and the float32 layer after it is compiled
    on its output (Keras's numbers, not float32 ones)."""
    inputs = keras.Input((4, 3))
    hidden = keras.ops.cast(layers.Dense(6)(inputs), "float16")
    model = keras.Model(inputs, layers.Dense(2)(hidden))
    fast = rshop_ir.accelerate(model)
    assert len(fast.fallbacks) == 1 and "float16" in fast.fallbacks[0][1]
    x = np.random.default_rng(9).standard_normal((3, 4, 3)).astype("float32") * 3
    np.testing.assert_allclose(fast.predict(x), model.predict(x, verbose=0), atol=1e-6,
                               rtol=0)


def test_a_masked_global_average_runs_compiled_with_its_mask():
    """GlobalAveragePooling1D after Masking: Keras averages over the unmasked steps
    only, through the `mask=` its node records; the layer is traced through its call
    with that mask (it was traced without it, and averaged the padding in)."""
    inputs = keras.Input((5, 3))
    hidden = layers.Masking(0.0)(inputs)
    hidden = layers.GlobalAveragePooling1D()(layers.Dense(4, activation="tanh")(hidden))
    model = keras.Model(inputs, layers.Dense(2)(hidden))
    fast = rshop_ir.accelerate(model)
    assert fast.fallbacks == []
    x = np.random.default_rng(11).standard_normal((4, 5, 3)).astype("float32")
    x[0, 2:] = 0.0
    x[2, :1] = 0.0
    got = fast.predict(x)
    np.testing.assert_allclose(got, model.predict(x, verbose=0), atol=1e-5, rtol=0)


class _MaskedRunningSum(layers.Layer):
    """Running sums of the unmasked steps, in TensorFlow (no tracing rule): without its
    mask it would sum the padded steps too."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.supports_masking = True

    def call(self, inputs, mask=None):
        if mask is None:
            return tf.math.cumsum(inputs, axis=1)
        return tf.math.cumsum(inputs * tf.cast(mask, inputs.dtype)[..., None], axis=1)


def test_a_layer_run_in_keras_gets_its_inputs_masks():
    """A layer after an Embedding(mask_zero=True) that runs in Keras reads its inputs'
    mask from the tensors themselves (`_keras_mask`), which the numpy arrays between
    parts do not carry: the masks are computed and set on its inputs, so the padded
    rows give Keras's numbers."""
    ids = keras.Input((6,), dtype="int32")
    embedded = layers.Embedding(10, 4, mask_zero=True)(ids)
    summed = _MaskedRunningSum(name="running_sum")(embedded)
    hidden = layers.LSTM(3, return_sequences=True)(summed)
    model = keras.Model(ids, layers.GlobalAveragePooling1D()(hidden))
    fast = rshop_ir.accelerate(model)
    assert [name for name, _ in fast.fallbacks] == ["running_sum"]
    data = np.array([[1, 2, 3, 0, 0, 0], [4, 5, 6, 7, 8, 9], [9, 0, 0, 0, 0, 0]],
                    dtype="int32")
    np.testing.assert_allclose(fast.predict(data), model.predict(data, verbose=0),
                               atol=1e-5, rtol=0)


@pytest.mark.parametrize("steps", [6, None], ids=["known_steps", "any_steps"])
def test_running_sums_over_the_steps_compile(steps):
    """`ops.cumsum` / `ops.cumprod` along the steps and the features, over bools (a
    count, int32 as in Keras) and in another dtype, all compiled."""
    inputs = keras.Input((steps, 4))
    hidden = layers.GRU(5, return_sequences=True)(
        layers.Lambda(lambda v: ops.cumsum(v, axis=1))(inputs))
    outputs = [layers.Lambda(lambda v: ops.cumprod(ops.tanh(v), axis=-1))(hidden),
               layers.Lambda(lambda v: ops.cumsum(v > 0, axis=1))(hidden),
               layers.Lambda(lambda v: ops.cumsum(v, axis=-2, dtype="float64"))(hidden)]
    model = keras.Model(inputs, outputs)
    randomize(model, 21)
    data = np.random.default_rng(22).standard_normal((3, 6, 4)).astype("float32")
    fast = assert_compiled_like_keras(model, data)
    assert [output.dtype for output in fast.predict(data)] == ["float32", "int32", "float64"]


def _masked_rnn_given_its_state(kind):
    """Masking, then an RNN called with its initial state as a second tensor: Keras
    gives a call of several tensors no mask, so the RNN runs unmasked."""
    sequence, state = keras.Input((5, 3)), keras.Input((4,))
    if kind == "keras":
        rnn = layers.SimpleRNN(4, return_sequences=True)
    else:
        x_t, h = keras.Input((3,)), keras.Input((4,))
        h_new = layers.Dense(4, activation="tanh")(layers.concatenate([x_t, h]))
        rnn = RecurrentModel(input=x_t, initial_states=[h], output=h_new,
                             final_states=[h_new], return_sequences=True)
    return keras.Model([sequence, state],
                       rnn(layers.Masking()(sequence), initial_state=[state]))


def _masked_sequential():
    """A Sequential passes each layer its input's mask: the LSTM is masked."""
    return keras.Sequential([keras.Input((5, 3)), layers.Masking(),
                             layers.LSTM(4, return_sequences=True)])


@pytest.mark.parametrize("make", [lambda: _masked_rnn_given_its_state("keras"),
                                  lambda: _masked_rnn_given_its_state("recurrentshop"),
                                  _masked_sequential],
                         ids=["simple_rnn_with_state", "recurrent_model_with_state",
                              "sequential"])
def test_an_rnn_is_masked_exactly_when_keras_passes_it_the_mask(make):
    model = make()
    randomize(model, 41)
    rng = np.random.default_rng(42)
    sequences = rng.standard_normal((2, 5, 3)).astype("float32")
    sequences[0, 1:3] = 0.0
    sequences[1, 4] = 0.0
    data = sequences if len(model.inputs) == 1 else \
        [sequences, rng.standard_normal((2, 4)).astype("float32")]
    assert_compiled_like_keras(model, data)


_PADDED_IDS = np.array([[3, 5, 2, 0, 0, 0], [1, 0, 4, 2, 0, 0], [7, 7, 7, 7, 7, 7],
                        [0, 0, 0, 0, 0, 0]], dtype="int32")


@pytest.mark.parametrize("return_sequences", [True, False], ids=["sequences", "last"])
@pytest.mark.parametrize("make", [
    lambda sequences: layers.Bidirectional(layers.LSTM(4, return_sequences=sequences)),
    lambda sequences: layers.Bidirectional(layers.GRU(4, return_sequences=sequences),
                                           merge_mode=None),
    lambda sequences: layers.SimpleRNN(4, return_sequences=sequences,
                                       zero_output_for_mask=True),
    lambda sequences: layers.SimpleRNN(4, return_sequences=sequences, go_backwards=True,
                                       zero_output_for_mask=True),
], ids=["bidirectional", "bidirectional_unmerged", "zero_output", "zero_output_backwards"])
def test_masked_steps_output_zeros_where_keras_zeroes_them(make, return_sequences):
    """A Bidirectional returning sequences sets `zero_output_for_mask` on its layers:
    their masked steps output zeros, and the last output is the last processed
    step's (these ran in Keras before)."""
    ids = keras.Input((6,), dtype="int32")
    outputs = make(return_sequences)(layers.Embedding(8, 3, mask_zero=True)(ids))
    model = keras.Model(ids, [layers.Activation("linear")(one)
                              for one in keras.tree.flatten(outputs)])
    randomize(model, 71)
    assert_compiled_like_keras(model, _PADDED_IDS)


_STRIDED = {
    "every_second_step": (lambda v: v[:, ::2], 7),
    "every_third_feature": (lambda v: v[:, :, 1::3], None),
    "steps_reversed": (lambda v: v[:, ::-1], None),
    "backwards_by_two": (lambda v: v[:, 5:0:-2], 7),
    "features_backwards_by_two": (lambda v: v[..., ::-2], None),
    "last_group_cut": (lambda v: v[:, 0:6:3], 7),
}


@pytest.mark.parametrize("name", sorted(_STRIDED))
def test_strided_and_reversed_slices_compile(name):
    """`x[:, ::2]`, `x[:, ::-1]`, ... (a known size, or reversing any): slices, a
    reshape into groups, a reverse."""
    cut, steps = _STRIDED[name]
    inputs = keras.Input((steps, 5))
    model = keras.Model(inputs, layers.GRU(3, return_sequences=True)(
        layers.Lambda(cut)(inputs)))
    randomize(model, 61)
    data = np.random.default_rng(62).standard_normal((3, 7, 5)).astype("float32")
    assert_compiled_like_keras(model, data)


@pytest.mark.parametrize("masked", ["all", "first", "second"])
@pytest.mark.parametrize("merge", [layers.Multiply, layers.Maximum, layers.Minimum])
def test_merges_of_masked_inputs_replace_the_masked_steps_as_keras(merge, masked):
    """Keras's Multiply takes masked steps as 1, Maximum and Minimum take them from
    the other inputs; merged raw, the numbers differed by up to 2.2."""
    ids = [keras.Input((6,), dtype="int32") for _ in range(3)]
    embedded = [layers.Embedding(8, 3, mask_zero=masked == "all" or position == masked)(one)
                for one, position in zip(ids, ["first", "second", "third"])]
    merged = merge()(embedded)
    model = keras.Model(ids, [merged, layers.GRU(4)(merged)])
    randomize(model, 31)
    data = [np.array([[3, 5, 2, 0, 0, 0], [1, 0, 4, 2, 0, 0], [7, 7, 7, 7, 7, 7]]),
            np.array([[1, 1, 1, 1, 0, 0], [0, 2, 2, 2, 2, 0], [0, 0, 3, 3, 3, 3]]),
            np.array([[0, 4, 0, 4, 0, 4], [5, 5, 0, 0, 5, 5], [6, 0, 6, 0, 6, 0]])]
    assert_compiled_like_keras(model, [one.astype("int32") for one in data])


_AROUND_AN_RNN = {
    "batch_normalization": lambda: layers.BatchNormalization(),
    "batch_normalization_plain": lambda: layers.BatchNormalization(center=False,
                                                                   scale=False),
    "batch_normalization_time_axis": lambda: layers.BatchNormalization(axis=1),
    "layer_normalization_steps_and_features": lambda: layers.LayerNormalization(
        axis=[1, 2]),
    "relu_max_value_threshold": lambda: layers.ReLU(max_value=0.8, threshold=0.1),
    "relu_slope_max_value": lambda: layers.ReLU(max_value=6.0, negative_slope=0.1),
    "relu_all_options": lambda: layers.ReLU(max_value=0.5, negative_slope=0.2,
                                            threshold=0.3),
    "prelu": lambda: layers.PReLU(),
    "up_sampling": lambda: layers.UpSampling1D(2),
    "average_pooling": lambda: layers.AveragePooling1D(2),
    "max_pooling_cut": lambda: layers.MaxPooling1D(4),    # 6 steps: one window
    "mish": lambda: layers.Activation("mish"),
    "elu_alpha": lambda: layers.ELU(alpha=0.7),
    "elu_op_alpha": lambda: layers.Lambda(lambda value: keras.ops.elu(value, alpha=0.3)),
    "flip_time": lambda: layers.Lambda(lambda value: keras.ops.flip(value, axis=1)),
    "rms_normalization": lambda: layers.RMSNormalization(),
    "rms_normalization_time_and_features": lambda: layers.RMSNormalization(
        axis=[1, 2], epsilon=1e-3),
    "attention": lambda: layers.Lambda(lambda value: value),  # replaced in the test
    "attention_concat": lambda: layers.Lambda(lambda value: value),  # the same
    "attention_concat_scaled": lambda: layers.Lambda(lambda value: value),  # the same
}
_ATTENTION_OPTIONS = {"attention": {"use_scale": True},
                      "attention_concat": {"score_mode": "concat"},
                      "attention_concat_scaled": {"score_mode": "concat", "use_scale": True}}


@pytest.mark.parametrize("name", sorted(_AROUND_AN_RNN))
def test_layers_around_an_rnn_compile_with_keras_numbers(name):
    """Layers common around RNNs, compiled (no fallback) with Keras's numbers:
    BatchNormalization at inference (over the features or the steps),
    LayerNormalization over the steps and features, ReLU with its
    options and PReLU (through `keras.activations.relu`), UpSampling1D
    (`ops.repeat`), 1-D pooling in windows that neither overlap nor pad, mish, ELU's
    alpha, `ops.flip`, RMSNormalization (`ops.rms_normalization`), and Attention with
    dot-product (`ops.swapaxes`) and additive scores, with an Embedding's mask."""
    rng = np.random.default_rng(12)
    ids = keras.Input((6,), dtype="int32")
    hidden = layers.Embedding(9, 5, mask_zero=True)(ids)
    hidden = layers.GRU(5, return_sequences=True)(hidden)
    if name in _ATTENTION_OPTIONS:
        hidden = layers.Attention(**_ATTENTION_OPTIONS[name])([hidden, hidden])
    else:
        hidden = _AROUND_AN_RNN[name]()(hidden)
    model = keras.Model(ids, layers.Dense(3)(layers.LSTM(4, return_sequences=True)(hidden)))
    for weight in model.weights:
        low = 0.2 if "variance" in weight.path else -1.0
        weight.assign(rng.uniform(low, 1.0, size=weight.shape))
    fast = rshop_ir.accelerate(model)
    assert fast.fallbacks == []
    data = rng.integers(1, 9, size=(5, 6)).astype("int32")
    data[1, 4:] = 0
    np.testing.assert_allclose(fast.predict(data), model.predict(data, verbose=0),
                               atol=2e-5, rtol=0)


@pytest.mark.parametrize("axis", [1, [1, 3]], ids=["steps", "steps_and_last"])
def test_layer_norm_over_axes_that_are_not_trailing_compiles(axis):
    """A LayerNormalization over the steps alone, or over the steps and the last axis
    of a 4-D value (not trailing axes: moved last, normalised, moved back), compiles
    with Keras's numbers, also after its weights change."""
    inputs = keras.Input((6, 10))
    hidden = layers.GRU(10, return_sequences=True)(inputs)
    hidden = layers.Reshape((6, 2, 5))(hidden)
    hidden = layers.LayerNormalization(axis=axis, name="not_trailing")(hidden)
    hidden = layers.Reshape((6, 10))(hidden)
    model = keras.Model(inputs, layers.LSTM(4)(hidden))
    randomize(model, 32)
    data = np.random.default_rng(33).standard_normal((3, 6, 10)).astype("float32")
    np.testing.assert_allclose(rshop_ir.trace(model)(data), model.predict(data, verbose=0),
                               atol=1e-5, rtol=0)
    fast = rshop_ir.accelerate(model, target="cpu")
    assert fast.fallbacks == []
    np.testing.assert_allclose(fast.predict(data), model.predict(data, verbose=0),
                               atol=1e-5, rtol=0)
    assert_follows_new_weights(fast, model, data, 34)


def test_stacked_attention_keeps_the_query_mask():
    """Keras gives an Attention layer its inputs' masks at call time (its node records
    none) and gives its output the query's mask (its own compute_mask): a second
    Attention and the GRU after it are masked by the Embedding's padding."""
    ids = keras.Input((6,), dtype="int32")
    hidden = layers.Embedding(9, 5, mask_zero=True)(ids)
    hidden = layers.Attention()([hidden, hidden])
    hidden = layers.Attention()([hidden, hidden])
    model = keras.Model(ids, layers.GRU(3)(hidden))
    fast = rshop_ir.accelerate(model)
    assert fast.fallbacks == []
    data = np.random.default_rng(13).integers(1, 9, size=(3, 6)).astype("int32")
    data[1, 4:] = 0
    np.testing.assert_allclose(fast.predict(data), model.predict(data, verbose=0),
                               atol=1e-5, rtol=0)


@pytest.mark.parametrize("merge", ["add", "concatenate", "reshape"])
def test_masks_through_merges_and_reshapes_follow_keras(merge):
    """Keras's masks after a merge: Add ORs its inputs' masks, Concatenate (sequences
    along features) ORs them too; a Reshape drops the mask. The first input is padded
    at its end, the second at its start (the merge used to pass the first's mask)."""
    first_ids, second_ids = keras.Input((6,), dtype="int32"), keras.Input((6,), dtype="int32")
    first = layers.Embedding(9, 4, mask_zero=True)(first_ids)
    second = layers.Embedding(9, 4, mask_zero=True)(second_ids)
    if merge == "add":
        hidden = layers.Add()([first, second])
    elif merge == "concatenate":
        hidden = layers.Concatenate()([first, second])
    else:
        hidden = layers.Reshape((6, 4))(first)
    model = keras.Model([first_ids, second_ids], layers.LSTM(3)(hidden))
    fast = rshop_ir.accelerate(model)
    assert fast.fallbacks == []
    rng = np.random.default_rng(14)
    data = [rng.integers(1, 9, size=(3, 6)).astype("int32") for _ in range(2)]
    data[0][0, 3:] = 0
    data[1][0, :2] = 0
    data[1][1, 4:] = 0
    np.testing.assert_allclose(fast.predict(data), model.predict(data, verbose=0),
                               atol=1e-5, rtol=0)


def test_negative_embedding_ids_count_from_the_end_as_keras():
    """Keras's take adds the table size to a negative id once; beyond the table an id
    is an error."""
    ids = keras.Input((4,), dtype="int32")
    model = keras.Model(ids, layers.GRU(3)(layers.Embedding(6, 2)(ids)))
    randomize(model, 91)
    data = np.array([[1, -1, 2, -6], [0, 5, -3, 4]], dtype="int32")
    fast = assert_compiled_like_keras(model, data)
    with pytest.raises(IndexError, match="out of range of the table"):
        fast.predict(np.array([[1, 6, 0, 0]], dtype="int32"))
    with pytest.raises(IndexError, match="out of range of the table"):
        fast.predict(np.array([[1, -7, 0, 0]], dtype="int32"))
