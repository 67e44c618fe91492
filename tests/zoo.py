"""A zoo of published step models, written with recurrentshop, shared by the tests.

Each entry is a function `(rng) -> ZooCase`: a built Keras layer or model, and inputs to
call it with. The compiler tests trace / compile each entry and compare with
`case.reference()` (Keras, `training=False`).
"""

from dataclasses import dataclass, field

import keras
import numpy as np
from keras import layers, ops

from recurrentshop import (GRUCell, LSTMCell, RecurrentModel, RecurrentSequential, RHNCell,
                           SimpleRNNCell, get_slices)

BATCH, TIME, FEATURES, UNITS = 3, 7, 5, 6


@dataclass
class ZooCase:
    name: str
    target: object  # a Keras layer or model
    inputs: list  # positional numpy inputs
    kwargs: dict = field(default_factory=dict)

    def reference(self):
        outputs = self.target(*self.inputs, training=False, **self.kwargs)
        if isinstance(outputs, (list, tuple)):
            return [np.asarray(o) for o in outputs]
        return np.asarray(outputs)


def _sequence(rng, batch=BATCH, time=TIME, features=FEATURES):
    return rng.standard_normal((batch, time, features)).astype("float32")


def _randomize(rng, layer, scale=0.5):
    layer.set_weights([rng.standard_normal(w.shape).astype("float32") * scale
                       for w in layer.get_weights()])


def _built(rng, layer, x, **kwargs):
    layer(x, **kwargs)
    _randomize(rng, layer)
    return layer


def mgu(rng):
    """Minimal gated unit (Zhou et al., 2016): one forget gate.

    f = sigmoid(W_f x + U_f h + b_f); h~ = tanh(W_h x + U_h (f * h) + b_h);
    h' = (1 - f) * h + f * h~ = h + f * (h~ - h).
    """
    x_t, h = keras.Input((FEATURES,)), keras.Input((UNITS,))
    f = layers.Activation("sigmoid")(layers.add([layers.Dense(UNITS)(x_t),
                                                 layers.Dense(UNITS, use_bias=False)(h)]))
    candidate = layers.Activation("tanh")(layers.add([
        layers.Dense(UNITS)(x_t),
        layers.Dense(UNITS, use_bias=False)(layers.multiply([f, h]))]))
    h_new = layers.add([h, layers.multiply([f, layers.subtract([candidate, h])])])
    rnn = RecurrentModel(backend="keras",
                         input=x_t, initial_states=[h], output=h_new, final_states=[h_new],
                         return_sequences=True)
    x = _sequence(rng)
    return ZooCase("mgu", _built(rng, rnn, x), [x])


def rwa(rng):
    """Recurrent weighted average (Ostmeyer & Cowell, 2017), with the running maximum
    that keeps the exponentials finite; raw keras.ops in the functional graph."""
    x_t = keras.Input((FEATURES,))
    numerator, denominator = keras.Input((UNITS,)), keras.Input((UNITS,))
    h, a_max = keras.Input((UNITS,)), keras.Input((UNITS,))
    xh = layers.concatenate([x_t, h])
    u = layers.Dense(UNITS)(x_t)
    g = layers.Dense(UNITS)(xh)
    a = layers.Dense(UNITS, use_bias=False)(xh)
    z = u * ops.tanh(g)
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
    x = _sequence(rng)
    return ZooCase("rwa", _built(rng, rnn, x), [x])


def rhn(rng):
    """Recurrent highway network, depth 3."""
    rnn = RHNCell(UNITS, recurrence_depth=3, input_dim=FEATURES).get_layer(
        backend="keras", return_sequences=True)
    x = _sequence(rng)
    return ZooCase("rhn", _built(rng, rnn, x), [x])


def layer_norm_lstm(rng):
    """Layer-normalised LSTM (Ba et al., 2016): LN on the input and recurrent
    projections and on the cell before the output tanh."""
    x_t, h, c = keras.Input((FEATURES,)), keras.Input((UNITS,)), keras.Input((UNITS,))
    projected_x = layers.LayerNormalization()(layers.Dense(4 * UNITS, use_bias=False)(x_t))
    projected_h = layers.LayerNormalization()(layers.Dense(4 * UNITS)(h))
    z = layers.add([projected_x, projected_h])
    i, f, g, o = get_slices(z, 4)
    i, f, o = (layers.Activation("sigmoid")(gate) for gate in (i, f, o))
    g = layers.Activation("tanh")(g)
    c_new = layers.add([layers.multiply([f, c]), layers.multiply([i, g])])
    h_new = layers.multiply([o, layers.Activation("tanh")(layers.LayerNormalization()(c_new))])
    rnn = RecurrentModel(backend="keras", input=x_t, initial_states=[h, c], output=h_new,
                         final_states=[h_new, c_new], return_sequences=True)
    x = _sequence(rng)
    return ZooCase("layer_norm_lstm", _built(rng, rnn, x), [x])


def attention_decoder(rng):
    """Bahdanau-style additive attention decoder over an encoded sequence."""
    encoded_length = 4
    memory = keras.Input((encoded_length, FEATURES))
    h = keras.Input((UNITS,))
    keys = layers.Dense(UNITS, use_bias=False)(memory)                  # (B, L, U)
    query = layers.RepeatVector(encoded_length)(layers.Dense(UNITS)(h))  # (B, L, U)
    energy = layers.Dense(1, use_bias=False)(layers.Activation("tanh")(
        layers.add([keys, query])))                                       # (B, L, 1)
    weights = layers.Softmax()(layers.Reshape((encoded_length,))(energy))
    context = layers.Dot(axes=(1, 1))([weights, memory])                 # (B, F)
    gru_input = layers.concatenate([context, h])
    h_new = layers.Dense(UNITS, activation="tanh")(gru_input)
    y = layers.Dense(3)(h_new)
    rnn = RecurrentModel(backend="keras",
                         input=memory, initial_states=[h], output=y, final_states=[h_new],
                         decode=True, output_length=5, return_sequences=True)
    x = _sequence(rng, time=encoded_length)
    return ZooCase("attention_decoder", _built(rng, rnn, x), [x])


def stacked_cells(rng):
    """LSTM -> Dropout -> Dense -> GRU in one step."""
    rnn = RecurrentSequential(backend="keras", return_sequences=True, return_states=True)
    rnn.add(LSTMCell(UNITS))
    rnn.add(layers.Dropout(0.3))
    rnn.add(layers.Dense(4, activation="relu"))
    rnn.add(GRUCell(UNITS, reset_after=False))
    x = _sequence(rng)
    return ZooCase("stacked_cells", _built(rng, rnn, x), [x])


def state_synced_stack(rng):
    rnn = RecurrentSequential(backend="keras", state_sync=True, return_sequences=True)
    for _ in range(3):
        rnn.add(SimpleRNNCell(UNITS))
    x = _sequence(rng, features=UNITS)
    return ZooCase("state_synced_stack", _built(rng, rnn, x), [x])


def readout_decoder(rng):
    """A seq2seq decoder: readout only, teacher forced (inference: its own output)."""
    rnn = RecurrentSequential(backend="keras",
                              readout="readout_only", decode=True, output_length=6,
                              teacher_force=True, readout_activation="tanh",
                              return_sequences=True)
    rnn.add(LSTMCell(UNITS))
    rnn.add(layers.Dense(3))
    vector = rng.standard_normal((BATCH, FEATURES)).astype("float32")
    readout = rng.standard_normal((BATCH, 3)).astype("float32")
    return ZooCase("readout_decoder", _built(rng, rnn, vector), [vector],
                   {"initial_readout": readout})


def readout_add_go_backwards(rng):
    rnn = RecurrentSequential(backend="keras",
                              readout="add", go_backwards=True, return_sequences=True)
    rnn.add(GRUCell(UNITS))
    rnn.add(layers.Dense(FEATURES))
    x = _sequence(rng)
    return ZooCase("readout_add_go_backwards", _built(rng, rnn, x), [x])


def keras_lstm(rng):
    x = _sequence(rng)
    return ZooCase("keras_lstm", _built(rng, layers.LSTM(UNITS, return_sequences=True), x), [x])


def keras_gru(rng):
    x = _sequence(rng)
    return ZooCase("keras_gru", _built(rng, layers.GRU(UNITS, return_state=True), x), [x])


def keras_simple_rnn(rng):
    x = _sequence(rng)
    return ZooCase("keras_simple_rnn", _built(rng, layers.SimpleRNN(UNITS, go_backwards=True),
                                              x), [x])


def embedding_lstm_softmax(rng):
    """A whole model: Embedding(mask_zero) -> LSTM stack -> Dense softmax."""
    tokens = keras.Input((TIME,), dtype="int32")
    embedded = layers.Embedding(20, FEATURES, mask_zero=True)(tokens)
    stack = RecurrentSequential(backend="keras", return_sequences=True)
    stack.add(LSTMCell(UNITS))
    hidden = stack(embedded)
    probabilities = layers.Dense(4, activation="softmax")(hidden)
    model = keras.Model(tokens, probabilities)
    _randomize(rng, model)
    ids = rng.integers(1, 20, size=(BATCH, TIME)).astype("int32")
    ids[0, -3:] = 0  # padding, masked
    return ZooCase("embedding_lstm_softmax", model, [ids])


def masked_bidirectional(rng):
    """Masking -> Bidirectional(our LSTM, last output) -> Dense."""
    inputs = keras.Input((TIME, FEATURES))
    masked = layers.Masking()(inputs)
    both = layers.Bidirectional(LSTMCell(UNITS, input_dim=FEATURES).get_layer(
        backend="keras"))(masked)
    model = keras.Model(inputs, layers.Dense(2)(both))
    _randomize(rng, model)
    x = _sequence(rng)
    x[1, -2:] = 0.0
    return ZooCase("masked_bidirectional", model, [x])


def nested_rnn(rng):
    """An RNN used as a cell inside another RNN's step (get_cell)."""
    inner = SimpleRNNCell(UNITS, input_dim=FEATURES).get_layer(backend="keras")
    x = _sequence(rng)
    inner(x)
    outer = RecurrentSequential(backend="keras", return_sequences=True)
    outer.add(inner.get_cell())
    outer.add(LSTMCell(4))
    return ZooCase("nested_rnn", _built(rng, outer, x), [x])


ZOO = [mgu, rwa, rhn, layer_norm_lstm, attention_decoder, stacked_cells, state_synced_stack,
       readout_decoder, readout_add_go_backwards, keras_lstm, keras_gru, keras_simple_rnn,
       embedding_lstm_softmax, masked_bidirectional, nested_rnn]
