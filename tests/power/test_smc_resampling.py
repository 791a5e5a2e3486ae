"""The pieces of Power-SMC that need no engine: effective sample size and systematic resampling."""

from __future__ import annotations

import numpy as np
import pytest

from service.power.smc import effective_sample_size, systematic_resample


def test_effective_sample_size_spans_one_to_n() -> None:
    assert effective_sample_size(np.zeros(8)) == pytest.approx(8)
    assert effective_sample_size(np.array([0.0, -1e9, -1e9, -1e9])) == pytest.approx(1)
    # Invariant to a common shift of the log-weights (they are only known up to a constant).
    w = np.log(np.array([0.5, 0.25, 0.125, 0.125]))
    assert effective_sample_size(w) == pytest.approx(effective_sample_size(w + 1000))


def test_systematic_resampling_copies_each_particle_in_proportion_to_its_weight() -> None:
    weights = np.array([0.5, 0.3, 0.15, 0.05])
    n = len(weights)
    rng = np.random.default_rng(0)
    counts = np.zeros(n)
    draws = 20_000
    for _ in range(draws):
        ancestors = systematic_resample(np.log(weights), rng)
        assert len(ancestors) == n and ancestors.min() >= 0 and ancestors.max() < n
        copies = np.bincount(ancestors, minlength=n)
        # Systematic resampling keeps each count within one of its expectation N * w.
        assert np.all(np.abs(copies - n * weights) < 1)
        counts += copies
    assert counts / (draws * n) == pytest.approx(weights, abs=0.005)  # unbiased
