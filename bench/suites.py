"""The benchmarked models: three suites of builders `(size, rng) -> BenchCase`.

    standard  SimpleRNN, GRU and LSTM cells (recurrentshop cells in a RecurrentModel)
    custom    step models no library ships: MGU, RWA, layer-normalised LSTM, an attention
              decoder, a seq2seq decoder with readout
    models    whole Keras models around a recurrent layer

Every case holds the reference Keras model (recurrentshop on Keras's own time loop), its
numpy inputs, the matmul FLOP count of one call, and where one exists a builder of the
`keras.layers` equivalent and a `PeerSpec` that the torch / ONNX Runtime / JAX peers
rebuild with copied weights. The models are written here, not imported from the tests.
"""

from dataclasses import dataclass, field

import keras
import numpy as np
from keras import layers, ops

from recurrentshop import (GRUCell, LSTMCell, RecurrentModel, RecurrentSequential,
                           SimpleRNNCell, get_slices)

ATTENTION_LENGTH = 16  # memory length of the attention decoder (T is the decode length)
VOCABULARY = 256  # tokens of the language model in the models suite
GATES = {"simple_rnn": 1, "gru": 3, "lstm": 4}


@dataclass
class PeerSpec:
    """A model in terms every peer library has: optional embedding, recurrent layers
    (`(kind, [kernel, recurrent_kernel, bias])` in Keras layout, kind one of `GATES`),
    optional dense head `(kernel, bias, activation)` with activation linear/softmax."""

    recurrent: list
    embedding: np.ndarray = None
    head: tuple = None


@dataclass
class BenchCase:
    suite: str
    name: str
    size: object
    model: keras.Model  # the reference: recurrentshop on Keras's time loop
    inputs: list  # numpy arrays, positional
    flops: int = None  # matmul FLOPs of one call, None where not meaningful
    builtin: object = None  # () -> keras.Model of keras.layers with the same weights
    peer: PeerSpec = None
    notes: list = field(default_factory=list)

    def reference_outputs(self):
        """`model(x, training=False)`, as a list of numpy arrays."""
        outputs = self.model(self.inputs[0] if len(self.inputs) == 1 else self.inputs,
                             training=False)
        return as_numpy_list(outputs)


def as_numpy_list(outputs):
    if isinstance(outputs, (list, tuple)):
        return [np.asarray(output) for output in outputs]
    return [np.asarray(outputs)]


def randomize(model, rng):
    """Realistic random weights: kernels N(0, 1/fan_in), vectors perturbed by N(0, 0.1)
    (so biases are not zero and layer-norm gains not one)."""
    weights = []
    for weight in model.get_weights():
        if weight.ndim >= 2:
            scale = 1.0 / np.sqrt(weight.shape[-2])
            weights.append(rng.standard_normal(weight.shape) * scale)
        else:
            weights.append(weight + 0.1 * rng.standard_normal(weight.shape))
    model.set_weights([w.astype("float32") for w in weights])


def _sequence(rng, size, time=None):
    shape = (size.batch, size.time if time is None else time, size.input)
    return rng.standard_normal(shape).astype("float32")


def _wrap(layer, input_shape, name, dtype="float32"):
    x = keras.Input(input_shape, dtype=dtype)
    return keras.Model(x, layer(x), name=name)


def _recurrent_flops(kind, size, input_features=None):
    features = size.input if input_features is None else input_features
    return 2 * size.batch * size.time * (features + size.hidden) * GATES[kind] * size.hidden


# ------------------------------------------------------------------ standard cells
_CELLS = {"simple_rnn": SimpleRNNCell, "gru": GRUCell, "lstm": LSTMCell}
_KERAS_LAYERS = {"simple_rnn": layers.SimpleRNN, "gru": layers.GRU, "lstm": layers.LSTM}


def _standard(kind):
    def build(size, rng):
        layer = _CELLS[kind](size.hidden, input_dim=size.input).get_layer(
            backend="keras", return_sequences=True)
        model = _wrap(layer, (size.time, size.input), kind)
        randomize(model, rng)
        weights = model.get_weights()

        def builtin():
            twin = _wrap(_KERAS_LAYERS[kind](size.hidden, return_sequences=True),
                         (size.time, size.input), f"keras_{kind}")
            twin.set_weights(weights)
            return twin

        return BenchCase("standard", kind, size, model, [_sequence(rng, size)],
                         flops=_recurrent_flops(kind, size), builtin=builtin,
                         peer=PeerSpec([(kind, weights)]))

    build.__name__ = kind
    return build


# ------------------------------------------------------------------ custom step models
def mgu(size, rng):
    """Minimal gated unit (Zhou et al., 2016): f = sigmoid(W_f x + U_f h + b_f),
    h~ = tanh(W_h x + U_h (f * h) + b_h), h' = h + f * (h~ - h)."""
    x_t, h = keras.Input((size.input,)), keras.Input((size.hidden,))
    units = size.hidden
    f = layers.Activation("sigmoid")(layers.add(
        [layers.Dense(units)(x_t), layers.Dense(units, use_bias=False)(h)]))
    candidate = layers.Activation("tanh")(layers.add(
        [layers.Dense(units)(x_t), layers.Dense(units, use_bias=False)(layers.multiply([f, h]))]))
    h_new = layers.add([h, layers.multiply([f, layers.subtract([candidate, h])])])
    rnn = RecurrentModel(backend="keras",
                         input=x_t, initial_states=[h], output=h_new, final_states=[h_new],
                         return_sequences=True)
    model = _wrap(rnn, (size.time, size.input), "mgu")
    randomize(model, rng)
    flops = 2 * size.batch * size.time * (size.input + size.hidden) * 2 * units
    return BenchCase("custom", "mgu", size, model, [_sequence(rng, size)], flops=flops)


def rwa(size, rng):
    """Recurrent weighted average (Ostmeyer & Cowell, 2017) with the running maximum that
    keeps the exponentials finite; raw keras.ops in the step graph."""
    units = size.hidden
    x_t = keras.Input((size.input,))
    numerator, denominator = keras.Input((units,)), keras.Input((units,))
    h, a_max = keras.Input((units,)), keras.Input((units,))
    xh = layers.concatenate([x_t, h])
    z = layers.Dense(units)(x_t) * ops.tanh(layers.Dense(units)(xh))
    a = layers.Dense(units, use_bias=False)(xh)
    new_max = ops.maximum(a_max, a)
    decay = ops.exp(a_max - new_max)
    weight = ops.exp(a - new_max)
    new_numerator = numerator * decay + z * weight
    new_denominator = denominator * decay + weight
    h_new = ops.tanh(new_numerator / new_denominator)
    rnn = RecurrentModel(backend="keras",
                         input=x_t, initial_states=[numerator, denominator, h, a_max],
                         output=h_new,
                         final_states=[new_numerator, new_denominator, h_new, new_max],
                         return_sequences=True)
    model = _wrap(rnn, (size.time, size.input), "rwa")
    randomize(model, rng)
    flops = 2 * size.batch * size.time * units * (size.input + 2 * (size.input + units))
    return BenchCase("custom", "rwa", size, model, [_sequence(rng, size)], flops=flops)


def layer_norm_lstm(size, rng):
    """Layer-normalised LSTM (Ba et al., 2016): LayerNorm on the input and recurrent
    projections and on the cell before the output tanh."""
    units = size.hidden
    x_t, h, c = keras.Input((size.input,)), keras.Input((units,)), keras.Input((units,))
    projected_x = layers.LayerNormalization()(layers.Dense(4 * units, use_bias=False)(x_t))
    projected_h = layers.LayerNormalization()(layers.Dense(4 * units)(h))
    i, f, g, o = get_slices(layers.add([projected_x, projected_h]), 4)
    i, f, o = (layers.Activation("sigmoid")(gate) for gate in (i, f, o))
    g = layers.Activation("tanh")(g)
    c_new = layers.add([layers.multiply([f, c]), layers.multiply([i, g])])
    h_new = layers.multiply([o, layers.Activation("tanh")(layers.LayerNormalization()(c_new))])
    rnn = RecurrentModel(backend="keras", input=x_t, initial_states=[h, c], output=h_new,
                         final_states=[h_new, c_new], return_sequences=True)
    model = _wrap(rnn, (size.time, size.input), "layer_norm_lstm")
    randomize(model, rng)
    return BenchCase("custom", "layer_norm_lstm", size, model, [_sequence(rng, size)],
                     flops=_recurrent_flops("lstm", size))


def attention_decoder(size, rng, energy="tanh"):
    """Bahdanau-style additive attention over a memory of ATTENTION_LENGTH vectors of I
    features, decoding T steps of I features from a tanh state of H units. `energy`:
    the activation of keys + query ("sigmoid": a gated attention's scores)."""
    units, length = size.hidden, ATTENTION_LENGTH
    name = {"tanh": "attention_decoder", "sigmoid": "gated_attention_decoder"}[energy]
    memory = keras.Input((length, size.input))
    h = keras.Input((units,))
    keys = layers.Dense(units, use_bias=False)(memory)
    query = layers.RepeatVector(length)(layers.Dense(units)(h))
    scores = layers.Dense(1, use_bias=False)(layers.Activation(energy)(
        layers.add([keys, query])))
    attention = layers.Softmax()(layers.Reshape((length,))(scores))
    context = layers.Dot(axes=(1, 1))([attention, memory])
    h_new = layers.Dense(units, activation="tanh")(layers.concatenate([context, h]))
    y = layers.Dense(size.input)(h_new)
    rnn = RecurrentModel(backend="keras",
                         input=memory, initial_states=[h], output=y, final_states=[h_new],
                         decode=True, output_length=size.time, return_sequences=True)
    model = _wrap(rnn, (length, size.input), name)
    randomize(model, rng)
    per_step = (length * size.input * units + units * units + length * units
                + length * size.input + (size.input + units) * units + units * size.input)
    return BenchCase("custom", name, size, model,
                     [_sequence(rng, size, time=length)],
                     flops=2 * size.batch * size.time * per_step,
                     notes=[f"memory length {length}, T decode steps"])


def gated_attention_decoder(size, rng):
    """The attention decoder with sigmoid(keys + query) for its energies: a gated
    attention's scores (compiled, the sigmoid is factored as the tanh is:
    kernels/cpu/factored_activation.py)."""
    return attention_decoder(size, rng, energy="sigmoid")


def readout_decoder(size, rng):
    """A seq2seq decoder: LSTM(H) -> Dense(I), the previous output (tanh) replaces the
    input at each step (readout only, teacher forced in training), T steps decoded
    from an input vector of I features."""
    rnn = RecurrentSequential(backend="keras",
                              readout="readout_only", decode=True, output_length=size.time,
                              teacher_force=True, readout_activation="tanh",
                              return_sequences=True)
    rnn.add(LSTMCell(size.hidden))
    rnn.add(layers.Dense(size.input))
    model = _wrap(rnn, (size.input,), "readout_decoder")
    randomize(model, rng)
    vector = rng.standard_normal((size.batch, size.input)).astype("float32")
    flops = _recurrent_flops("lstm", size) + 2 * size.batch * size.time * size.hidden * size.input
    return BenchCase("custom", "readout_decoder", size, model, [vector], flops=flops)


# ------------------------------------------------------------------ whole models
def embedding_lstm_softmax(size, rng):
    """A next-token language model: Embedding(VOCABULARY, I) -> LSTM(H) -> Dense softmax
    over the vocabulary, at every step."""
    tokens = keras.Input((size.time,), dtype="int32")
    embedding = layers.Embedding(VOCABULARY, size.input)
    stack = RecurrentSequential(backend="keras", return_sequences=True)
    stack.add(LSTMCell(size.hidden))
    head = layers.Dense(VOCABULARY, activation="softmax")
    model = keras.Model(tokens, head(stack(embedding(tokens))), name="embedding_lstm_softmax")
    randomize(model, rng)
    ids = rng.integers(0, VOCABULARY, size=(size.batch, size.time)).astype("int32")
    lstm_weights = stack.get_weights()
    embedding_matrix = embedding.get_weights()[0]
    head_kernel, head_bias = head.get_weights()

    def builtin():
        inputs = keras.Input((size.time,), dtype="int32")
        hidden = layers.LSTM(size.hidden, return_sequences=True)(
            layers.Embedding(VOCABULARY, size.input)(inputs))
        twin = keras.Model(inputs, layers.Dense(VOCABULARY, activation="softmax")(hidden))
        twin.set_weights(model.get_weights())
        return twin

    flops = (_recurrent_flops("lstm", size)
             + 2 * size.batch * size.time * size.hidden * VOCABULARY)
    peer = PeerSpec([("lstm", lstm_weights)], embedding=embedding_matrix,
                    head=(head_kernel, head_bias, "softmax"))
    return BenchCase("models", "embedding_lstm_softmax", size, model, [ids], flops=flops,
                     builtin=builtin, peer=peer, notes=[f"vocabulary {VOCABULARY}"])


def stacked_lstm_dense(size, rng):
    """Two LSTM(H) cells in one RecurrentSequential step, then a Dense(I) per step."""
    stack = RecurrentSequential(backend="keras", return_sequences=True)
    stack.add(LSTMCell(size.hidden))
    stack.add(LSTMCell(size.hidden))
    x = keras.Input((size.time, size.input))
    head = layers.Dense(size.input)
    model = keras.Model(x, head(stack(x)), name="stacked_lstm_dense")
    randomize(model, rng)
    first, second = stack.get_weights()[:3], stack.get_weights()[3:]

    def builtin():
        inputs = keras.Input((size.time, size.input))
        hidden = layers.LSTM(size.hidden, return_sequences=True)(inputs)
        hidden = layers.LSTM(size.hidden, return_sequences=True)(hidden)
        twin = keras.Model(inputs, layers.Dense(size.input)(hidden))
        twin.set_weights(model.get_weights())
        return twin

    flops = (_recurrent_flops("lstm", size)
             + _recurrent_flops("lstm", size, input_features=size.hidden)
             + 2 * size.batch * size.time * size.hidden * size.input)
    peer = PeerSpec([("lstm", first), ("lstm", second)],
                    head=(*head.get_weights(), "linear"))
    return BenchCase("models", "stacked_lstm_dense", size, model, [_sequence(rng, size)],
                     flops=flops, builtin=builtin, peer=peer)


def conv_lstm(size, rng):
    """A convolutional front end before an RNN: Conv1D(I, 5, causal, relu) ->
    MaxPooling1D(3, stride 1, same) -> LSTM(H) -> Dense(I), at every step (the
    convolution and the pooling are compiled too: frontends/keras_trace/window_rules.py)."""
    x = keras.Input((size.time, size.input))
    hidden = layers.Conv1D(size.input, 5, padding="causal", activation="relu")(x)
    hidden = layers.MaxPooling1D(3, strides=1, padding="same")(hidden)
    stack = RecurrentSequential(backend="keras", return_sequences=True)
    stack.add(LSTMCell(size.hidden))
    model = keras.Model(x, layers.Dense(size.input)(stack(hidden)), name="conv_lstm")
    randomize(model, rng)
    flops = (2 * size.batch * size.time * 5 * size.input * size.input
             + _recurrent_flops("lstm", size)
             + 2 * size.batch * size.time * size.hidden * size.input)
    return BenchCase("models", "conv_lstm", size, model, [_sequence(rng, size)],
                     flops=flops)


SUITES = {
    "standard": [_standard("simple_rnn"), _standard("gru"), _standard("lstm")],
    "custom": [mgu, rwa, layer_norm_lstm, attention_decoder, gated_attention_decoder,
               readout_decoder],
    "models": [embedding_lstm_softmax, stacked_lstm_dense, conv_lstm],
}
ALL_CASES = {build.__name__: (suite, build) for suite, builds in SUITES.items()
             for build in builds}


def select_cases(suites=None, models=None):
    """`(suite, builder)` pairs for the named suites (`"all"` or None: every suite),
    optionally restricted to the named models."""
    if suites is None or "all" in suites:
        suites = list(SUITES)
    unknown = [name for name in suites if name not in SUITES]
    if unknown:
        raise ValueError(f"Unknown suite(s) {unknown}. Expected some of "
                         f"{', '.join(SUITES)} or 'all'.")
    chosen = [(suite, build) for suite in suites for build in SUITES[suite]]
    if models:
        unknown = [name for name in models if name not in ALL_CASES]
        if unknown:
            raise ValueError(f"Unknown model(s) {unknown}. Expected some of "
                             f"{', '.join(ALL_CASES)}.")
        chosen = [ALL_CASES[name] for name in models]
    return chosen
