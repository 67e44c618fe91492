"""Helpers of the accelerate tests: random weights, and a model compiled whole (or with
the named layers in Keras) giving Keras's numbers."""

import numpy as np

import rshop_ir


def randomize(model, seed):
    """Uniform weights in [-0.8, 0.8); variances in [0.2, 0.8)."""
    rng = np.random.default_rng(seed)
    for weight in model.weights:
        low = 0.2 if "variance" in weight.path else -0.8
        weight.assign(rng.uniform(low, 0.8, size=weight.shape).astype(weight.dtype))


def assert_compiled_like_keras(model, data, fallbacks=()):
    """`rshop_ir.accelerate(model)`, its `.fallbacks` naming exactly `fallbacks`, and its
    outputs (one or several) within 1e-5 of `model.predict`'s; returns it."""
    fast = rshop_ir.accelerate(model)
    assert [name for name, _ in fast.fallbacks] == list(fallbacks)
    got, expected = fast.predict(data), model.predict(data, verbose=0)
    if not isinstance(expected, (list, tuple)):
        got, expected = [got], [expected]
    assert len(got) == len(expected)
    for one, other in zip(got, expected):
        np.testing.assert_allclose(one, other, atol=1e-5, rtol=0)
    return fast


def assert_follows_new_weights(fast, model, data, seed, assign=randomize):
    """New weights (`assign(model, seed)`) given after `fast` was made: its outputs are
    still within 1e-5 of `model.predict`'s (the weights are params, not constants)."""
    assign(model, seed)
    np.testing.assert_allclose(fast.predict(data), model.predict(data, verbose=0),
                               atol=1e-5, rtol=0)


def assert_compiled_layer_like_keras(layer, model, data, seeds):
    """`rshop_ir.compile(layer)` after `randomize(model, seeds[0])`, equal to the layer's
    own call within 1e-5 then and after `randomize(model, seed)` for the other seeds."""
    randomize(model, seeds[0])
    compiled = rshop_ir.compile(layer)
    for seed in seeds:
        if seed != seeds[0]:
            randomize(model, seed)
        np.testing.assert_allclose(compiled(data), layer(data), atol=1e-5, rtol=0)
