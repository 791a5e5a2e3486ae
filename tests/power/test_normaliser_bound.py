"""With top-k smaller than the vocabulary the normalisers are lower bounds: the reported
``normaliser_error_bound`` must cover the true error of every answer.

A service of its own fetches k = 2 log-probs per token of the 4-token model; for each returned answer
the exact normalisers zeta_t = log sum_v p(v | y_<t) ** alpha are computed with transformers and
compared with what the sampler could see (the top 2 and the sampled token).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import torch

from loadtests.harness import ServiceProcess
from loadtests.tiny_model import VOCAB, ExactModel
from tests.conftest import TINY_MODEL_NAME, TINY_PROMPT, start_service, tiny_engine_args

K = 2
ALPHA = 4.0


@pytest.fixture(scope="module")
def top2_service(
    tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path
) -> Iterator[ServiceProcess]:
    args = [*tiny_engine_args(tiny_model_dir), "--power-top-logprobs", str(K)]
    service = start_service(tmp_path_factory, "top2", args)
    yield service
    service.stop()


def true_error(exact: ExactModel, answer: tuple[int, ...]) -> float:
    """sum_t (zeta_t - zeta_hat_t): what the top-k normalisers of ``answer`` miss."""
    total = 0.0
    for t, token in enumerate(answer):
        logp = exact.next_logprobs(answer[:t]) * ALPHA
        seen = set(torch.topk(logp, K).indices.tolist()) | {token}
        total += float(torch.logsumexp(logp, -1) - torch.logsumexp(logp[sorted(seen)], -1))
    return total


@pytest.mark.parametrize("method", ["mh", "smc"])
def test_reported_bound_covers_the_true_error(
    top2_service: ServiceProcess, tiny_model_dir: Path, method: str
) -> None:
    exact = ExactModel(tiny_model_dir, TINY_PROMPT)
    body = {
        "model": f"{TINY_MODEL_NAME}-power",
        "prompt": list(TINY_PROMPT),
        "max_tokens": 4,
        "temperature": 1 / ALPHA,
        "logprobs": 0,
        "power_method": method,
        "block_size": 1,
    }
    errors, bounds = [], []
    for _ in range(24):
        response = httpx.post(f"{top2_service.base_url}/completions", json=body, timeout=120)
        assert response.status_code == 200, response.text
        data = response.json()
        answer = tuple(VOCAB[t] for t in data["choices"][0]["logprobs"]["tokens"])
        errors.append(true_error(exact, answer))
        bounds.append(data["power"]["normaliser_error_bound"])
    pairs = list(zip(errors, bounds, strict=True))
    assert all(e <= b + 1e-9 for e, b in pairs), pairs
    assert max(errors) > 0  # k < vocabulary: the normalisers did leave mass out
