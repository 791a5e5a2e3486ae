"""Power sampling under a constraint, through the running service: its law on the enumerable model.

The constraint is the regular expression ``[ab]+`` (vLLM's ``structured_outputs``): answers of the
words a and b, at least one. The target is p**alpha restricted to the answers it accepts. The
engine masks the other tokens before it samples and returns log-probs renormalised over the allowed
ones (p~), so two natural constrained samplers miss the target, and the test shows both far from it:
plain constrained sampling at temperature 1/alpha (served by the plain route), and p~**alpha, the
law a sampler reaches when it takes the renormalised log-probs for the model's own (computed
exactly). The power route's importance sampler (service/power/constrained.py) reweights with the
unmasked p; its served answers must follow the law of that algorithm at N particles (simulated over
the exact conditionals) within a sample-size bound, and that law is close to the target.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import pytest
import torch

from loadtests.harness import ServiceProcess
from loadtests.smc_reference import importance_law
from loadtests.stats import empirical, total_variation, tv_bound
from loadtests.tiny_model import EOS_ID, VOCAB, ExactModel, answers
from tests.conftest import TINY_MODEL_NAME, TINY_PROMPT
from tests.power.test_exactness import ALPHA, HORIZON, draw

logger = logging.getLogger(__name__)

REGEX = {"structured_outputs": {"regex": "[ab]+"}}
WORDS = frozenset({VOCAB["a"], VOCAB["b"]})
PARTICLES = 16
SAMPLES = 256
REFERENCE_RUNS = 200_000

Answer = tuple[int, ...]


def allowed(prefix: Answer) -> frozenset[int]:
    """The tokens the grammar of ``[ab]+`` lets follow ``prefix``: a word, or EOS after one."""
    return WORDS | {EOS_ID} if prefix else WORDS


def accepted(answer: Answer) -> bool:
    return all(token in allowed(answer[:t]) for t, token in enumerate(answer))


class Masked:
    """The model as a constrained request sees it: p~, renormalised over the allowed tokens."""

    def __init__(self, exact: ExactModel):
        self.exact = exact

    def logprobs(self, prefix: Answer) -> torch.Tensor:
        mask = torch.full((len(VOCAB),), -math.inf, dtype=torch.float64)
        mask[sorted(allowed(prefix))] = 0.0
        return torch.log_softmax(self.exact.next_logprobs(prefix) + mask, dim=-1)

    def law(self, per_token: float, temperature: float = 1.0) -> dict[Answer, float]:
        """∝ prod_t p~(y_t) ** per_token, token by token at ``temperature`` when it is not 1."""
        weights: dict[Answer, float] = {}
        for y in filter(accepted, answers(HORIZON)):
            total = 0.0
            for t, token in enumerate(y):
                logp = self.logprobs(y[:t])
                step = torch.log_softmax(logp / temperature, dim=-1) if temperature != 1 else logp
                total += per_token * float(step[token])
            weights[y] = total
        top = max(weights.values())
        norm = sum(math.exp(v - top) for v in weights.values())
        return {y: math.exp(v - top) / norm for y, v in weights.items()}


@pytest.fixture(scope="module")
def exact(tiny_model_dir: Path) -> ExactModel:
    return ExactModel(tiny_model_dir, TINY_PROMPT)


def test_the_constrained_power_law_is_p_to_the_alpha_restricted(
    tiny_service: ServiceProcess, exact: ExactModel
) -> None:
    everywhere = exact.power_distribution(HORIZON, ALPHA)
    restricted = {y: w for y, w in everywhere.items() if accepted(y)}
    target = {y: w / sum(restricted.values()) for y, w in restricted.items()}
    masked = Masked(exact)
    proposal = masked.law(1.0, temperature=1 / ALPHA)  # constrained sampling at 1/alpha
    locally_renormalised = masked.law(ALPHA)
    law = importance_law(proposal, target, particles=PARTICLES, runs=REFERENCE_RUNS)

    served = draw(
        tiny_service,
        f"{TINY_MODEL_NAME}-power",
        requests=1,
        n=SAMPLES,
        temperature=1 / ALPHA,
        power_method="smc",
        power_particles=PARTICLES,
        **REGEX,
    )
    plain = draw(tiny_service, TINY_MODEL_NAME, requests=1, n=SAMPLES, temperature=1 / ALPHA, **REGEX)
    assert all(map(accepted, served + plain)), "an answer the grammar refuses"
    found, found_plain = empirical(served), empirical(plain)
    bound = tv_bound(law, SAMPLES) + tv_bound(law, REFERENCE_RUNS)
    far = 3 * tv_bound(target, SAMPLES)
    logger.info(
        "power under [ab]+, N=%d, %d samples: TV to the algorithm's law %.4f (bound %.4f), to the "
        "target %.4f (the law's own %.4f); plain constrained at 1/alpha: %.4f served, %.4f exact; "
        "p~**alpha (renormalised log-probs): %.4f exact",
        PARTICLES,
        SAMPLES,
        total_variation(found, law),
        bound,
        total_variation(found, target),
        total_variation(law, target),
        total_variation(found_plain, target),
        total_variation(proposal, target),
        total_variation(locally_renormalised, target),
    )
    # The served sampler follows its algorithm, whose law is close to the restricted target ...
    assert total_variation(found, law) <= bound
    assert total_variation(law, target) < 0.01
    # ... where both samplers built on the renormalised probabilities land far away.
    assert total_variation(found_plain, proposal) <= tv_bound(proposal, SAMPLES)
    assert total_variation(found_plain, target) > far
    assert total_variation(locally_renormalised, target) > far
