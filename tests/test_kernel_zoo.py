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
