"""zeta_t from top-k log-probs: exact when they cover the vocabulary, a bounded lower bound otherwise."""

from __future__ import annotations

import math

import numpy as np
import pytest

from service.power import log_normaliser


def true_zeta(logprobs: np.ndarray, alpha: float) -> float:
    scaled = alpha * logprobs
    return float(scaled.max() + np.log(np.exp(scaled - scaled.max()).sum()))


def random_logprobs(rng: np.random.Generator, vocab: int, sharpness: float) -> np.ndarray:
    logits = rng.normal(size=vocab) * sharpness
    return logits - np.log(np.exp(logits - logits.max()).sum()) - logits.max()


@pytest.mark.parametrize("alpha", [1.5, 4.0, 10.0])
def test_exact_when_the_top_k_covers_the_vocabulary(alpha: float) -> None:
    logprobs = random_logprobs(np.random.default_rng(0), 8, 2.0)
    top = dict(enumerate(logprobs.tolist()))
    zeta, bound = log_normaliser(alpha, top, k=8, vocab_size=8)
    assert zeta == pytest.approx(true_zeta(logprobs, alpha), abs=1e-12)
    assert bound == 0.0


@pytest.mark.parametrize("alpha", [1.5, 2.0, 4.0])
@pytest.mark.parametrize("sharpness", [0.3, 1.0, 3.0])
def test_truncated_estimate_is_a_lower_bound_within_its_error_bound(
    alpha: float, sharpness: float
) -> None:
    rng = np.random.default_rng(1)
    for _ in range(50):
        logprobs = random_logprobs(rng, 1000, sharpness)
        k = 20
        order = np.argsort(-logprobs)
        top = {int(t): float(logprobs[t]) for t in order[:k]}
        sampled = int(rng.choice(1000, p=np.exp(logprobs)))
        top[sampled] = float(logprobs[sampled])  # vLLM adds the sampled token when outside the top-k
        zeta, bound = log_normaliser(alpha, top, k=k, vocab_size=1000)
        exact = true_zeta(logprobs, alpha)
        assert zeta <= exact + 1e-9
        assert exact - zeta <= bound + 1e-9


def test_bound_is_tiny_for_a_peaked_distribution() -> None:
    logprobs = np.log(np.array([0.9] + [0.1 / 999] * 999))
    top = {i: float(v) for i, v in enumerate(logprobs[:20])}
    _, bound = log_normaliser(4.0, top, k=20, vocab_size=1000)
    assert bound < 1e-9
    assert math.isfinite(bound)
