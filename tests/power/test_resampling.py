"""SMC's resampling schemes as functions of the weights (service/power/smc.py): systematic and
chopthin keep N particles and each particle's weight in expectation; chopthin also keeps every
weight within a ratio eta of the others and each particle's copies at floor or ceil of its
expected count."""

from __future__ import annotations

import math

import numpy as np
import pytest

from service.power.smc import CHOPTHIN_ETA, chopthin_resample, systematic_resample

# One heavy particle, some middling, some light: every branch of chopthin (chop, keep, thin).
LOG_WEIGHTS = np.log(np.array([50.0, 1.0, 0.2, 0.01, 3.0, 0.5]))
RUNS = 20_000


def weight_kept(resample, log_weights: np.ndarray, runs: int) -> np.ndarray:
    """Mean over runs of the weight each particle's copies carry (scaled to mean 1 per particle)."""
    rng = np.random.default_rng(7)
    n = len(log_weights)
    total = np.zeros(n)
    for _ in range(runs):
        ancestors, new_log_weights = resample(log_weights, rng)
        assert len(ancestors) == n
        w = np.exp(new_log_weights)
        np.add.at(total, ancestors, w / w.sum() * n)
    return total / runs


def test_chopthin_keeps_each_weight_in_expectation() -> None:
    w = np.exp(LOG_WEIGHTS)
    expected = w / w.sum() * len(w)
    kept = weight_kept(chopthin_resample, LOG_WEIGHTS, RUNS)
    assert kept == pytest.approx(expected, rel=0.05, abs=2e-3)


def test_systematic_keeps_each_weight_in_expectation() -> None:
    w = np.exp(LOG_WEIGHTS)
    expected = w / w.sum() * len(w)

    def systematic(log_weights: np.ndarray, rng: np.random.Generator):
        return systematic_resample(log_weights, rng), np.zeros(len(log_weights))

    assert weight_kept(systematic, LOG_WEIGHTS, RUNS) == pytest.approx(expected, rel=0.05, abs=2e-3)


@pytest.mark.parametrize("size", [1, 2, 3, 5])
def test_systematic_to_fewer_particles_keeps_each_weight(size: int) -> None:
    """Resampling N = 6 to fewer (an answer letting particles go as the load grows): each index
    appears floor or ceil of size * w times, so its share of the copies is its weight on average."""
    rng = np.random.default_rng(size)
    w = np.exp(LOG_WEIGHTS) / np.exp(LOG_WEIGHTS).sum()
    share = np.zeros(len(w))
    for _ in range(RUNS):
        counts = np.bincount(systematic_resample(LOG_WEIGHTS, rng, size), minlength=len(w))
        assert counts.sum() == size
        assert (counts >= np.floor(size * w)).all() and (counts <= np.ceil(size * w)).all()
        share += counts / size
    # A share's standard error is at most 0.5 / sqrt(RUNS) = 0.0035: four of them.
    assert share / RUNS == pytest.approx(w, abs=0.014)


@pytest.mark.parametrize("seed", range(20))
def test_chopthin_bounds_the_weights_ratio_and_the_copies(seed: int) -> None:
    rng = np.random.default_rng(seed)
    log_weights = rng.normal(scale=4.0, size=16)  # weights over ~30 nats
    ancestors, new_log_weights = chopthin_resample(log_weights, rng)
    assert len(ancestors) == 16 and np.isfinite(new_log_weights).all()
    assert np.exp(new_log_weights.max() - new_log_weights.min()) <= CHOPTHIN_ETA * (1 + 1e-9)
    # Copies of one particle share its weight exactly: chopping loses nothing.
    w = np.exp(log_weights - log_weights.max())
    w = w / w.sum() * 16
    new = np.exp(new_log_weights)
    scale = None
    for i in set(ancestors.tolist()):
        copies = ancestors == i
        if copies.sum() > 1:
            ratio = new[copies].sum() / w[i]
            scale = ratio if scale is None else scale
            assert ratio == pytest.approx(scale)


def test_equal_weights_are_left_as_they_are() -> None:
    rng = np.random.default_rng(0)
    ancestors, new_log_weights = chopthin_resample(np.zeros(8), rng)
    assert sorted(ancestors.tolist()) == list(range(8))
    assert np.ptp(new_log_weights) == pytest.approx(0.0, abs=1e-12)


def test_a_single_surviving_weight_takes_every_slot() -> None:
    rng = np.random.default_rng(0)
    log_weights = np.array([0.0, -math.inf, -math.inf, -math.inf])
    ancestors, new_log_weights = chopthin_resample(log_weights, rng)
    assert ancestors.tolist() == [0, 0, 0, 0]
    assert np.isfinite(new_log_weights).all()
