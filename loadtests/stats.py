"""Statistics for checking samples against exact distributions."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Hashable, Iterable, Mapping

__all__ = ["empirical", "total_variation", "tv_bound"]


def empirical(samples: Iterable[Hashable]) -> dict[Hashable, float]:
    counts = Counter(samples)
    total = sum(counts.values())
    return {key: count / total for key, count in counts.items()}


def total_variation(p: Mapping, q: Mapping) -> float:
    return 0.5 * sum(abs(p.get(k, 0.0) - q.get(k, 0.0)) for k in set(p) | set(q))


def tv_bound(law: Mapping[Hashable, float], n: int, *, failure: float = 1e-4) -> float:
    """A distance that n samples of ``law`` exceed with chance at most ``failure``.

    E[TV(empirical, law)] <= 1/2 sum_i sqrt(p_i (1 - p_i) / n) (Jensen, per outcome), and TV moves by
    at most 1/n when one sample changes, so by McDiarmid P(TV >= E + t) <= exp(-2 n t**2).
    """
    expected = 0.5 * sum(math.sqrt(p * (1 - p) / n) for p in law.values())
    return expected + math.sqrt(math.log(1 / failure) / (2 * n))
