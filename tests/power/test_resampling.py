"""SMC's resampling schemes as functions of the weights (service/power/smc.py): systematic and
chopthin keep N particles and each particle's weight in expectation; chopthin also keeps every
weight within a ratio eta of the others and each particle's copies at floor or ceil of its
expected count."""

from __future__ import annotations

import math

import numpy as np
import pytest

from service.power import PowerConfig
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


@pytest.mark.parametrize(
    ("prompt", "block", "horizons"),
    [
        (31, 1, [2, 34]),  # a 33-token prompt: 32 cached, 1 prefilled; at H = 1, all 32
        (30, 4, [4, 36]),  # 34 and 66 tokens: 2 prefilled each; at H = 8, 6
        (10, 4, [24, 56]),  # at H = 20 (30 tokens, one partial block) all 30
        (0, 8, [8, 40]),  # the first block is 8 tokens, all prefilled; at 40, 8 past 32
        (5, 32, [32, 64]),  # blocks as long as the KV block: every horizon qualifies
    ],
)
def test_kv_block_resampling_horizons(prompt: int, block: int, horizons: list[int]) -> None:
    """A copy at horizon H prefills the prompt's tokens past its last whole 32-token block but the
    last token: resample_at = kv_block keeps the horizons where that is at most one block, and
    resamples there unless the weights are even (an ESS threshold of N) where it left some out."""
    config = PowerConfig(
        max_tokens=64, method="smc", block_size=block, resample_at="kv_block", kv_block=32
    )
    found = [h for h in range(block, 65, block) if config.may_resample(prompt, h)]
    assert found == horizons
    assert config.sparse_resampling == (block < 32)
    assert config.ess_threshold == (1.0 if block < 32 else 0.5)
    every = PowerConfig(max_tokens=64, method="smc", block_size=block, kv_block=32)
    assert all(every.may_resample(prompt, h) for h in range(block, 65, block))
    assert not every.sparse_resampling and every.ess_threshold == 0.5
    resubmitted = PowerConfig(
        max_tokens=64,
        method="smc",
        block_size=block,
        resample_at="kv_block",
        kv_block=32,
        held_particles=False,
    )
    assert all(resubmitted.may_resample(prompt, h) for h in range(block, 65, block))
    assert resubmitted.ess_threshold == 0.5
