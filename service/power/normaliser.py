"""Per-position normalisers of the power proposal.

With the proposal q(v) = p(v) ** alpha / Z_t (the base model at temperature 1/alpha), the log
normaliser at position t is

    zeta_t = log Z_t = log sum_v p(v | y_<t) ** alpha,

and the Metropolis-Hastings ratio of the power target collapses onto these: for a suffix resampled
from cut m, log A = sum_{t>=m} zeta_t(proposal) - sum_{t>=m} zeta_t(current) (+ the cut-point
correction). vLLM returns the raw log-probs of the top-k tokens of each position, so zeta_t is a
log-sum-exp over them: exact when they cover the vocabulary, otherwise a lower bound. The tokens left
out each have p <= p_k (the k-th largest) and together have mass 1 - sum(top-k p), hence

    0 <= zeta_t - zeta_hat_t <= log(1 + p_k ** (alpha - 1) * (1 - sum top-k p) / exp(zeta_hat_t)).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

__all__ = ["log_normaliser"]


def log_normaliser(
    alpha: float, top_logprobs: Mapping[int, float], k: int, vocab_size: int
) -> tuple[float, float]:
    """Return (zeta_hat, error_bound) for one position from its raw top-k log-probs.

    ``top_logprobs`` holds the k most likely tokens and possibly the sampled one besides (vLLM adds
    it when it falls outside the top-k); ``k`` is how many were asked for.
    """
    values = sorted(top_logprobs.values(), reverse=True)
    scaled_max = alpha * values[0]
    zeta_hat = scaled_max + math.log(sum(math.exp(alpha * v - scaled_max) for v in values))
    if len(values) >= vocab_size:
        return zeta_hat, 0.0
    covered = sum(math.exp(v) for v in values)
    tail_mass = max(0.0, 1.0 - covered)
    if tail_mass == 0.0:
        return zeta_hat, 0.0
    kth = values[min(k, len(values)) - 1]  # the sampled token, if extra, is below the top-k
    # log of (bound on the left-out sum of p ** alpha) / exp(zeta_hat), kept in log space.
    log_ratio = (alpha - 1.0) * kth + math.log(tail_mass) - zeta_hat
    return zeta_hat, log_ratio if log_ratio > 30 else math.log1p(math.exp(log_ratio))
