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
    tiles)."""
    case, compiled = _compiled_packed_everywhere(entry, monkeypatch)
    expected = _as_list(case.reference())
    got = _as_list(compiled(*case.inputs, **case.kwargs))
    assert len(got) == len(expected)
    for a, b in zip(got, expected):
        np.testing.assert_allclose(a, b, atol=ATOL_FLOAT32, rtol=0)


def test_packed_zoo_run_is_not_vacuous(monkeypatch):
    """Every zoo model has a recurrent matmul by a scan constant: all of them must
    have taken the packed product in the test above (the kernels come from the
    cache)."""
    tiled = [entry.__name__ for entry in zoo.ZOO
             if "packed_product(" in _compiled_packed_everywhere(entry, monkeypatch)[1].source]
    assert tiled == [entry.__name__ for entry in zoo.ZOO]
