"""A pure-Python Power-SMC over a model's exact conditionals: the law the served sampler must follow
(and ``importance_law``, the same for the constrained sampler, one block and no resampling).

``smc_law`` runs the algorithm of service/power/smc.py (blocks of B tokens, incremental log-weights
zeta_t, systematic resampling when ESS < threshold * N and more blocks follow, one final particle
drawn by weight) many times over the exact next-token log-probs of an enumerable model, with no
engine, and returns the empirical law of its answers. Its own sampling noise is what the exactness
test adds to its bound (``runs`` large keeps it small).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable

import numpy as np
import torch

__all__ = ["Answer", "importance_law", "smc_law"]

Answer = tuple[int, ...]


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
) -> dict[Answer, float]:
    """The empirical law of ``runs`` independent Power-SMC answers, all runs simulated at once."""
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
    cdf = np.cumsum(q, axis=1)

    state = np.zeros((runs, particles), dtype=np.int64)  # prefix id of each particle
    logw = np.zeros((runs, particles))
    rows = np.arange(runs)[:, None]
    num_blocks = math.ceil(max_tokens / block_size)
    for block in range(1, num_blocks + 1):
        horizon = min(block * block_size, max_tokens)
        # 1. grow every particle that has not ended, token by token, to the horizon
        while True:
            growing = ~ended[state] & (length[state] < horizon)
            if not growing.any():
                break
            u = rng.random(state.shape)
            token = (u[..., None] > cdf[state]).sum(axis=-1).clip(max=vocab - 1)
            logw = np.where(growing, logw + zeta[state], logw)
            state = np.where(growing, child[state, token], state)
        if block == num_blocks:
            break
        # 2. systematic resampling of the runs whose ESS fell below the threshold
        w = np.exp(logw - logw.max(axis=1, keepdims=True))
        ess = w.sum(axis=1) ** 2 / (w**2).sum(axis=1)
        low = (ess < threshold * particles) & ~ended[state].all(axis=1)
        if low.any():
            edges = np.cumsum(w[low] / w[low].sum(axis=1, keepdims=True), axis=1)
            edges[:, -1] = 1.0
            points = (rng.random((int(low.sum()), 1)) + np.arange(particles)) / particles
            picks = np.array(
                [np.searchsorted(e, p, side="right") for e, p in zip(edges, points, strict=True)]
            )
            state[low] = state[low][np.arange(len(picks))[:, None], picks]
            logw[low] = 0.0
    # 3. one final particle per run, by weight
    w = np.exp(logw - logw.max(axis=1, keepdims=True))
    cum = np.cumsum(w / w.sum(axis=1, keepdims=True), axis=1)
    pick = (rng.random((runs, 1)) > cum).sum(axis=1).clip(max=particles - 1)
    counts = Counter(prefixes[k] for k in state[rows[:, 0], pick])
    return {y: c / runs for y, c in counts.items()}


def _vocab(next_logprobs: Callable[[Answer], torch.Tensor]) -> int:
    return int(next_logprobs(()).shape[0])


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
