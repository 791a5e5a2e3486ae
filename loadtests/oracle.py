"""The exact law of the power sampler's output on a model whose answers can be enumerated.

``chain_law`` follows service/power/mh.py step by step, but instead of drawing one cut, one
proposal and one coin per step it propagates every cut, every proposal and both outcomes with their
probabilities. The result is the distribution the sampler's answers follow for the given settings;
its distance to p**alpha shows how far the chain is from mixed, free of sampling noise, and the
variants (no cut-point correction, stopping at EOS) show what each fix of the reference code buys.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import torch

__all__ = ["Answer", "NextLogprobs", "chain_law", "chain_run"]

Answer = tuple[int, ...]
NextLogprobs = Callable[[Answer], torch.Tensor]


def _suffixes(
    next_logprobs: NextLogprobs,
    prefix: Answer,
    horizon: int,
    temperature: float,
    absorbing: frozenset[int],
) -> list[tuple[Answer, float, float]]:
    """Every suffix the proposal can draw after ``prefix``: (suffix, q(suffix), sum of zeta)."""
    out: list[tuple[Answer, float, float]] = []

    def grow(suffix: Answer, q: float, zeta_sum: float) -> None:
        logp = next_logprobs(prefix + suffix)
        alpha = 1.0 / temperature
        logq = torch.log_softmax(logp * alpha, dim=-1)
        zeta = float(torch.logsumexp(logp * alpha, dim=-1))
        for token in range(logp.shape[0]):
            step_q = q * math.exp(float(logq[token]))
            longer = (*suffix, token)
            if token in absorbing or len(prefix) + len(longer) >= horizon:
                out.append((longer, step_q, zeta_sum + zeta))
            else:
                grow(longer, step_q, zeta_sum + zeta)

    grow((), 1.0, 0.0)
    return out


def chain_law(next_logprobs: NextLogprobs, **settings: Any) -> dict[Answer, float]:
    """The distribution of the sampler's answers (alpha finite); settings as ``chain_run``."""
    return chain_run(next_logprobs, **settings)[0]


def chain_run(
    next_logprobs: NextLogprobs,
    *,
    eos: int | frozenset[int],
    alpha: float,
    max_tokens: int,
    block_size: int,
    mcmc_steps: int,
    stream_lag: int | None = None,
    cut_correction: bool = True,
    stop_at_eos: bool = False,
    ended_schedule: str = "final",
) -> tuple[dict[Answer, float], float]:
    """(the law of the sampler's answers, the expected number of tokens it generates). ``eos``: the
    absorbing token(s), EOS and the tokens of stop words. ``ended_schedule``: what a chain whose
    answer has ended does at later blocks: "final" (N steps at the final horizon, then done: what
    service/power/mh.py does) or "every_block" (N steps at each later block's horizon: what it did
    before)."""
    absorbing = frozenset({eos}) if isinstance(eos, int) else eos
    temperature = 1.0 / alpha
    law: dict[Answer, float] = {(): 1.0}
    finished: dict[Answer, float] = defaultdict(float)  # chains done early ("final" schedule)
    tokens = 0.0
    num_blocks = math.ceil(max_tokens / block_size)
    cache: dict[tuple[Answer, int], list[tuple[Answer, float, float]]] = {}

    def suffixes(prefix: Answer, horizon: int) -> list[tuple[Answer, float, float]]:
        if (prefix, horizon) not in cache:
            cache[prefix, horizon] = _suffixes(next_logprobs, prefix, horizon, temperature, absorbing)
        return cache[prefix, horizon]

    def zeta_sum(answer: Answer, start: int, horizon: int) -> float:
        for suffix, _, z in suffixes(answer[:start], horizon):
            if suffix == answer[start:]:
                return z
        raise AssertionError("answer not reachable")

    def ended(answer: Answer) -> bool:
        return bool(answer) and answer[-1] in absorbing

    def mix(law: dict[Answer, float], horizon: int, frozen_at: int) -> dict[Answer, float]:
        nonlocal tokens
        for _ in range(mcmc_steps):
            moved: dict[Answer, float] = defaultdict(float)
            for answer, w in law.items():
                frozen = min(frozen_at, len(answer))
                if len(answer) <= frozen or (stop_at_eos and ended(answer)):
                    moved[answer] += w
                    continue
                cuts = range(frozen, len(answer))
                for cut in cuts:
                    current = zeta_sum(answer, cut, horizon)
                    for suffix, q, proposed in suffixes(answer[:cut], horizon):
                        candidate = answer[:cut] + suffix
                        log_accept = proposed - current
                        if cut_correction:
                            log_accept += math.log(len(answer) - frozen) - math.log(
                                len(candidate) - frozen
                            )
                        accept = 1.0 if log_accept >= 0 else math.exp(log_accept)
                        share = w * q / len(cuts)
                        tokens += share * len(suffix)
                        moved[candidate] += share * accept
                        moved[answer] += share * (1.0 - accept)
            law = dict(moved)
        return law

    for block in range(1, num_blocks + 1):
        horizon = min(block * block_size, max_tokens)
        frozen_at = 0 if stream_lag is None else max(0, (block - 1 - stream_lag) * block_size)
        if ended_schedule == "final" and block > 1:
            # Ended answers take their last steps at the final horizon, then are done.
            done = {a: w for a, w in law.items() if ended(a)}
            law = {a: w for a, w in law.items() if not ended(a)}
            for answer, w in mix(done, max_tokens, frozen_at).items():
                finished[answer] += w
        # 1. grow
        grown: dict[Answer, float] = defaultdict(float)
        for answer, w in law.items():
            if ended(answer) or len(answer) >= horizon:
                grown[answer] += w
            else:
                for suffix, q, _ in suffixes(answer, horizon):
                    grown[answer + suffix] += w * q
                    tokens += w * q * len(suffix)
        # 2. mix
        law = mix(dict(grown), horizon, frozen_at)
    for answer, w in finished.items():
        law[answer] = law.get(answer, 0.0) + w
    return law, tokens
