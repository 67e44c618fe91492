"""MultiHeadAttention and GroupedQueryAttention compiled under accelerate: their
`ops.dot_product_attention` lowered to einsums, a masked softmax and a where
(frontends/keras_trace/attention_rules.py), checked against Keras's numbers."""

import keras
import numpy as np
import pytest
from keras import layers

from keras_checks import assert_compiled_like_keras, randomize

STEPS, FEATURES = 7, 6


def _self_attention(inputs, **options):
    return layers.MultiHeadAttention(2, 4, name="attention", **options)(inputs, inputs)


ATTENTIONS = {
    "self": lambda inputs: _self_attention(inputs),
    "causal": lambda inputs: layers.MultiHeadAttention(3, 2, name="attention")(
        inputs, inputs, use_causal_mask=True),
    "cross_value_dim": lambda inputs: layers.MultiHeadAttention(
        2, 3, value_dim=5, name="attention")(inputs, layers.Dense(4)(inputs[:, :4])),
    "grouped_query": lambda inputs: layers.GroupQueryAttention(
        4, 4, 2, name="attention")(inputs, inputs),
    "grouped_query_causal": lambda inputs: layers.GroupQueryAttention(
        4, 4, 2, name="attention")(inputs, inputs, use_causal_mask=True),
}


@pytest.mark.parametrize("name", sorted(ATTENTIONS))
def test_attention_before_an_rnn_compiles_with_keras_numbers(name):
    inputs = keras.Input((STEPS, FEATURES))
    attended = ATTENTIONS[name](inputs)
    model = keras.Model(inputs, layers.LSTM(3, return_sequences=True)(attended))
    randomize(model, 1)
    data = np.random.default_rng(2).standard_normal((3, STEPS, FEATURES)).astype("float32")
    assert_compiled_like_keras(model, data)


def test_attention_with_an_embedding_mask_compiles_with_keras_numbers():
    """The padding mask of an Embedding reaches the attention (query and key masks
    combined, as Keras combines them) and the LSTM after it."""
    ids = keras.Input((STEPS,), dtype="int32")
    embedded = layers.Embedding(10, FEATURES, mask_zero=True)(ids)
    hidden = layers.LSTM(3, return_sequences=True)(_self_attention(embedded))
    model = keras.Model(ids, layers.GlobalAveragePooling1D()(hidden))
    randomize(model, 3)
    data = np.array([[1, 2, 3, 0, 0, 0, 0], [4, 5, 6, 7, 8, 9, 1], [9, 0, 0, 0, 0, 0, 0]],
                    dtype="int32")
    assert_compiled_like_keras(model, data)


@pytest.mark.parametrize("masked", [False, True], ids=["unmasked", "embedding_mask"])
def test_attention_scores_and_dropout_take_keras_other_path(masked):
    """With dropout (off at inference) or the scores returned, MultiHeadAttention
    computes its einsums and masked Softmax itself: compiled too."""
    if masked:
        inputs = keras.Input((STEPS,), dtype="int32")
        embedded = layers.Embedding(10, FEATURES, mask_zero=True)(inputs)
        data = np.array([[1, 2, 3, 0, 0, 0, 0], [4, 5, 6, 7, 8, 9, 1]], dtype="int32")
    else:
        inputs = embedded = keras.Input((STEPS, FEATURES))
        data = np.random.default_rng(5).standard_normal((2, STEPS, FEATURES)).astype(
            "float32")
    attention = layers.MultiHeadAttention(2, 4, dropout=0.3, name="attention")
    attended, scores = attention(embedded, embedded, return_attention_scores=True)
    model = keras.Model(inputs, [layers.GRU(3)(attended), scores])
    randomize(model, 4)
    assert_compiled_like_keras(model, data)
