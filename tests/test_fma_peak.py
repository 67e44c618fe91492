"""bench/fma_peak.py: the chains it times compute what they claim, the rate is a rate."""

import numpy as np
import pytest

from bench import fma_peak


def test_the_timed_chains_are_multiply_adds_of_every_lane():
    out = np.empty((2, fma_peak.CHAINS), np.float32)
    for thread in range(2):
        fma_peak._chains(7, out[thread])
    expected = np.arange(fma_peak.CHAINS, dtype=np.float64)
    for _ in range(7):
        expected = expected * np.float32(0.9999999) + np.float32(1e-7)
    for thread in range(2):
        np.testing.assert_allclose(out[thread], expected, rtol=1e-6, atol=1e-6)


def test_the_peak_rate_is_positive_and_threads_are_checked():
    assert 0.0 < fma_peak.fma_peak_rate(1, iterations=1000, runs=2) < 1e5
    with pytest.raises(ValueError, match="threads must be between 1 and"):
        fma_peak.fma_peak_rate(0)
