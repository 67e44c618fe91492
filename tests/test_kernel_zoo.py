"""Every model of the zoo (tests/zoo.py) compiled to a Numba CPU kernel vs Keras."""

import numpy as np
import pytest

import rshop_ir
import zoo

ATOL_FLOAT32 = 1e-4


pytestmark = pytest.mark.usefixtures("kernel_cache")  # a fresh kernel disk cache


def _as_list(value):
    return list(value) if isinstance(value, (list, tuple)) else [value]


@pytest.mark.parametrize("entry", zoo.ZOO, ids=[entry.__name__ for entry in zoo.ZOO])
def test_compiled_zoo_entry_matches_keras(entry):
    case = entry(np.random.default_rng(3))
    compiled = rshop_ir.compile(case.target, target="cpu")
    expected = _as_list(case.reference())
    got = _as_list(compiled(*case.inputs, **case.kwargs))
    assert len(got) == len(expected)
    for a, b in zip(got, expected):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, atol=ATOL_FLOAT32, rtol=0)


def _compiled_packed_everywhere(entry, monkeypatch):
    from rshop_ir.kernels.cpu import codegen

    monkeypatch.setattr(codegen, "PACKED_MIN_COLUMNS", 1)
    monkeypatch.setattr(codegen, "PACKED_MIN_CONTRACTION", 1)
    monkeypatch.setattr(codegen, "PACK_MIN_ROW_STEPS", 1)
    case = entry(np.random.default_rng(3))
    return case, rshop_ir.compile(case.target, target="cpu")


@pytest.mark.parametrize("entry", zoo.ZOO, ids=[entry.__name__ for entry in zoo.ZOO])
def test_zoo_entry_with_every_recurrent_matmul_packed_matches_keras(entry, monkeypatch):
    """The zoo's weights are below the packed product's size thresholds; with the
    thresholds at 1, every recurrent matmul by a scan constant runs as the packed
    product (kernels/cpu/packed_product.py) at the zoo's batch of 3 (three one-row
    tiles). Every zoo model has a recurrent matmul by a scan constant, so every kernel
    must call it."""
    case, compiled = _compiled_packed_everywhere(entry, monkeypatch)
    _assert_matches_keras(case, compiled)
    assert "packed_product(" in compiled.source


def _assert_matches_keras(case, compiled) -> None:
    expected = _as_list(case.reference())
    got = _as_list(compiled(*case.inputs, **case.kwargs))
    assert len(got) == len(expected)
    for a, b in zip(got, expected):
        np.testing.assert_allclose(a, b, atol=ATOL_FLOAT32, rtol=0)


def _compiled_wide(entry, monkeypatch):
    """The entry compiled with every recurrent matmul packed and every call on the
    wide-batch variant where it has one (kernels/cpu/merged_projection.py)."""
    from rshop_ir.kernels.cpu import background_compile, runtime

    monkeypatch.setattr(runtime, "MERGED_MIN_ROWS", 1)
    monkeypatch.setattr(runtime, "MERGED_MIN_FLOPS", 0)
    monkeypatch.setattr(background_compile, "BACKGROUND", False)
    return _compiled_packed_everywhere(entry, monkeypatch)


# LSTMs (Keras's and recurrentshop's cells, stacked or state-synced, where the plain
# kernel asks for the packed weights in another order) and a SimpleRNN (its bias added
# to the hoisted projection) run on the variant; a GRU (its reset gate multiplies the
# candidate's recurrent product) and an MGU (one projection for two recurrent products
# of half its width) keep the plain kernel.
TAKES_THE_WIDE_VARIANT = {"keras_lstm", "keras_simple_rnn", "stacked_cells",
                          "state_synced_stack", "embedding_lstm_softmax"}
KEEPS_THE_PLAIN_KERNEL = {"keras_gru", "mgu"}


@pytest.mark.parametrize("entry", zoo.ZOO, ids=[entry.__name__ for entry in zoo.ZOO])
def test_zoo_entry_on_the_wide_batch_variant_matches_keras(entry, monkeypatch):
    case, compiled = _compiled_wide(entry, monkeypatch)
    _assert_matches_keras(case, compiled)
    name = entry.__name__
    if name in TAKES_THE_WIDE_VARIANT:
        assert compiled._variants.get("wide") is not None, f"{name} kept the plain kernel"
    if name in KEEPS_THE_PLAIN_KERNEL:
        assert compiled._variants.get("wide") is None, f"{name} took the wide variant"


def test_the_wide_variant_sets_name_zoo_entries():
    """The two sets above name entries of the zoo (a renamed entry would make them
    vacuous)."""
    names = {entry.__name__ for entry in zoo.ZOO}
    assert TAKES_THE_WIDE_VARIANT <= names and KEEPS_THE_PLAIN_KERNEL <= names
