"""A pure-Python Power-SMC over a model's exact conditionals: the law the served sampler must follow
(and ``importance_law``, the same for the constrained sampler, one block and no resampling).

``smc_law`` runs the algorithm of service/power/smc.py (blocks of B tokens, incremental log-weights
zeta_t, systematic resampling when ESS < threshold * N at a horizon where it may resample and more
blocks follow, one final particle drawn by weight) many times over the exact next-token log-probs
of an enumerable model, with no engine, and returns the empirical law of its answers. Its own
sampling noise is what the exactness test adds to its bound (``runs`` large keeps it small).

Two variants that the served sampler does not run, measured by ``make bench-fidelity`` (issue 22):

- exponent bridging (``ramp_tokens`` R > 0, as Power-SMC's code does): the intermediate target after
  t tokens is p^alpha_t, alpha_t ramped linearly from 1 to alpha over the first R tokens, the
  proposal staying at temperature 1/alpha. The log-weight after t tokens is then
  (alpha_t - alpha) log p(y) + sum of zeta (an ended answer keeps being reweighted as alpha_t grows);
  the last target is p^alpha whatever R is.
- chopthin resampling (``resampling="chopthin"``, Gandy & Lee 2017): instead of N equal copies,
  light particles are thinned (kept with chance w / a, at weight a) and heavy ones chopped into
  copies of weight at most eta * a, so that N particles remain whose weights differ by at most eta.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Collection
from typing import Literal

import numpy as np
import torch

__all__ = ["CHOPTHIN_ETA", "Answer", "importance_law", "smc_law"]

Answer = tuple[int, ...]

# Gandy & Lee's default bound on the ratio of weights after chopthin, 3 + 2 sqrt(2) (at least 4).
CHOPTHIN_ETA = 3 + 2 * math.sqrt(2)


def smc_law(
    next_logprobs: Callable[[Answer], torch.Tensor],
    *,
    absorbing: frozenset[int],
    alpha: float,
    max_tokens: int,
    block_size: int,
    particles: int,
    runs: int,
    threshold: float = 0.5,
    seed: int = 0,
    ramp_tokens: int = 0,
    resampling: Literal["systematic", "chopthin"] = "systematic",
    eta: float = CHOPTHIN_ETA,
    resample_horizons: Collection[int] | None = None,
) -> dict[Answer, float]:
    """The empirical law of ``runs`` independent Power-SMC answers, all runs simulated at once.
    ``resample_horizons``: the only horizons where it may resample (None: every block's; the
    served sampler's PowerConfig.may_resample)."""
    rng = np.random.default_rng(seed)
    # Every reachable prefix gets an id; per id: q(. | prefix), zeta, and whether it has ended.
    prefixes: list[Answer] = [()]
    ids: dict[Answer, int] = {(): 0}
    frontier: list[Answer] = [()]
    for _ in range(max_tokens):
        frontier = [
            (*y, t)
            for y in frontier
            if not (y and y[-1] in absorbing)
            for t in range(_vocab(next_logprobs))
        ]
        for y in frontier:
            ids[y] = len(prefixes)
            prefixes.append(y)
    vocab = _vocab(next_logprobs)
    q = np.zeros((len(prefixes), vocab))
    zeta = np.zeros(len(prefixes))
    log_p = np.zeros(len(prefixes))  # log p of the prefix under the base model
    zeta_sum = np.zeros(len(prefixes))  # the sum of zeta over the prefix's tokens
    child = np.zeros((len(prefixes), vocab), dtype=np.int64)
    ended = np.array([bool(y) and y[-1] in absorbing for y in prefixes])
    length = np.array([len(y) for y in prefixes])
    for y, k in ids.items():
        if ended[k] or len(y) == max_tokens:
            continue
        scaled = next_logprobs(y).double() * alpha
        zeta[k] = float(torch.logsumexp(scaled, dim=-1))
        q[k] = torch.exp(scaled - zeta[k]).numpy()
        child[k] = [ids[(*y, t)] for t in range(vocab)]
        base = next_logprobs(y).double().numpy()
        for t in range(vocab):
            log_p[child[k, t]] = log_p[k] + base[t]
            zeta_sum[child[k, t]] = zeta_sum[k] + zeta[k]
    cdf = np.cumsum(q, axis=1)

    def log_weight(tokens: int, k: np.ndarray) -> np.ndarray:
        """log of p^alpha_t(y) / q(y) up to a constant, for prefixes k after ``tokens`` tokens."""
        return (_bridged(alpha, tokens, ramp_tokens, max_tokens) - alpha) * log_p[k] + zeta_sum[k]

    state = np.zeros((runs, particles), dtype=np.int64)  # prefix id of each particle
    logw = np.zeros((runs, particles))
    rows = np.arange(runs)[:, None]
    num_blocks = math.ceil(max_tokens / block_size)
    previous = 0
    for block in range(1, num_blocks + 1):
        horizon = min(block * block_size, max_tokens)
        start = state.copy()
        # 1. grow every particle that has not ended, token by token, to the horizon
        while True:
            growing = ~ended[state] & (length[state] < horizon)
            if not growing.any():
                break
            u = rng.random(state.shape)
            token = (u[..., None] > cdf[state]).sum(axis=-1).clip(max=vocab - 1)
            state = np.where(growing, child[state, token], state)
        logw += log_weight(horizon, state) - log_weight(previous, start)
        previous = horizon
        if block == num_blocks:
            break
        if resample_horizons is not None and horizon not in resample_horizons:
            continue
        # 2. resampling of the runs whose ESS fell below the threshold
        w = np.exp(logw - logw.max(axis=1, keepdims=True))
        ess = w.sum(axis=1) ** 2 / (w**2).sum(axis=1)
        low = (ess < threshold * particles) & ~ended[state].all(axis=1)
        if not low.any():
            continue
        if resampling == "chopthin":
            picks, kept = _chopthin(w[low], eta, rng)
            logw[low] = np.log(kept)
        else:
            picks = _systematic(w[low] / w[low].sum(axis=1, keepdims=True), rng)
            logw[low] = 0.0
        state[low] = state[low][np.arange(len(picks))[:, None], picks]
    # 3. one final particle per run, by weight
    w = np.exp(logw - logw.max(axis=1, keepdims=True))
    cum = np.cumsum(w / w.sum(axis=1, keepdims=True), axis=1)
    pick = (rng.random((runs, 1)) > cum).sum(axis=1).clip(max=particles - 1)
    counts = Counter(prefixes[k] for k in state[rows[:, 0], pick])
    return {y: c / runs for y, c in counts.items()}


def _vocab(next_logprobs: Callable[[Answer], torch.Tensor]) -> int:
    return int(next_logprobs(()).shape[0])


def _bridged(alpha: float, tokens: int, ramp_tokens: int, max_tokens: int) -> float:
    """The exponent of the intermediate target after ``tokens`` tokens (alpha at the end)."""
    if ramp_tokens <= 0 or tokens >= min(ramp_tokens, max_tokens):
        return alpha
    return 1.0 + (alpha - 1.0) * tokens / ramp_tokens


def _systematic(expected: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Per row, N indices drawn systematically with expected counts ``expected`` (rows sum to N,
    or to 1 for probabilities): each index appears floor or ceil of its expected count times."""
    rows, n = expected.shape
    edges = np.cumsum(expected / expected.sum(axis=1, keepdims=True), axis=1)
    edges[:, -1] = 1.0
    points = (rng.random((rows, 1)) + np.arange(n)) / n
    return np.array([np.searchsorted(e, p, side="right") for e, p in zip(edges, points, strict=True)])


def _chopthin(w: np.ndarray, eta: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Chopthin per row of positive weights: N indices and the weights their copies carry.

    With b = eta * a / 2, a weight below a is kept with chance w / a (at weight a), one between a
    and b is kept once as it is, and one above b is chopped into floor or ceil of w / b copies
    sharing it; a is where those expected counts sum to N. Every copy's weight is then within
    [a, eta * a), and each particle's weight is kept in expectation (a chopped one exactly).
    """
    n = w.shape[1]
    w = w / w.sum(axis=1, keepdims=True) * n  # mean 1: a lies in (0, n]

    def expected(a: np.ndarray) -> np.ndarray:
        a = a[:, None]
        b = eta * a / 2
        return np.where(w < a, w / a, np.where(w < b, 1.0, w / b))

    # The expected count falls as a grows: bisect log a until it sums to N.
    lo, hi = np.full(len(w), 1e-12), np.full(len(w), float(n))
    for _ in range(60):
        mid = np.sqrt(lo * hi)
        over = expected(mid).sum(axis=1) > n
        lo, hi = np.where(over, mid, lo), np.where(over, hi, mid)
    counts = expected(hi)
    picks = _systematic(counts, rng)
    rows = np.arange(len(w))[:, None]
    copies = np.zeros_like(w)
    np.add.at(copies, (np.broadcast_to(rows, picks.shape), picks), 1.0)
    weight = np.where(counts < 1, w / counts, w / np.maximum(copies, 1.0))
    return picks, weight[rows, picks]


def importance_law(
    proposal: dict[Answer, float],
    target: dict[Answer, float],
    *,
    particles: int,
    runs: int,
    seed: int = 0,
) -> dict[Answer, float]:
    """The empirical law of ``runs`` independent importance samplers (service/power/constrained.py):
    ``particles`` whole answers drawn from ``proposal``, one of them kept with chance ∝ its weight
    target / proposal. Both laws are over the same answers, given exactly."""
    rng = np.random.default_rng(seed)
    answers = [y for y, p in proposal.items() if p > 0]
    q = np.array([proposal[y] for y in answers])
    with np.errstate(divide="ignore"):  # an answer the target gives (numerically) 0 weighs 0
        log_w = np.log([target.get(y, 0.0) for y in answers]) - np.log(q)
    drawn = rng.choice(len(answers), size=(runs, particles), p=q / q.sum())
    w = np.exp(log_w[drawn] - log_w[drawn].max(axis=1, keepdims=True))
    cum = np.cumsum(w / w.sum(axis=1, keepdims=True), axis=1)
    pick = (rng.random((runs, 1)) > cum).sum(axis=1).clip(max=particles - 1)
    counts = Counter(answers[k] for k in drawn[np.arange(runs), pick])
    return {y: c / runs for y, c in counts.items()}
