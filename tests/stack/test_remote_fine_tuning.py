"""A fine-tuning job on the remote stack: the gateway trains the adapter and loads it into both
workers (vLLM's /v1/load_lora_adapter, from the state directory they share); its `ft:` model answers
through the gateway and from each worker, and a worker that restarts gets it again from the gateway's
health probe, unasked."""

from __future__ import annotations

import time

import httpx
import openai

from tests.conftest import TINY_MODEL_NAME
from tests.jobs.test_fine_tuning import QUICK, upload_prompts, wait_final
from tests.stack.conftest import Stack

PROMPTS = ["a b", "b c", "c a", "a a", "b b", "c c", "a c", "b a"]


def serves(worker_url: str, model: str) -> bool:
    """The worker lists ``model`` and answers a completion with it (asked directly, not through
    the gateway)."""
    listed = httpx.get(f"{worker_url}/v1/models", timeout=30).json()
    if model not in {card["id"] for card in listed["data"]}:
        return False
    body = {"model": model, "prompt": "a b", "max_tokens": 2}
    return httpx.post(f"{worker_url}/v1/completions", json=body, timeout=60).status_code == 200


def test_a_jobs_model_is_served_by_every_worker_also_after_a_restart(stack: Stack) -> None:
    client = openai.OpenAI(base_url=stack.gateway.base_url, api_key="unused", max_retries=0)
    created = client.fine_tuning.jobs.create(
        model=TINY_MODEL_NAME,
        training_file=upload_prompts(client, PROMPTS),
        suffix="remote",
        seed=3,
        hyperparameters=QUICK,  # type: ignore[arg-type]
    )
    job = wait_final(client, created.id)
    assert job.status == "succeeded", job.error
    model = job.fine_tuned_model
    assert model is not None and model in [m.id for m in client.models.list().data]
    assert all(serves(worker.url, model) for worker in stack.workers)
    answer = client.completions.create(model=model, prompt="a", max_tokens=2, seed=1)
    assert answer.model == model and answer.choices[0].text is not None

    # A worker restarted knows nothing of the job: the gateway's next probes load it again.
    restarted = stack.restart_worker(0)
    deadline = time.monotonic() + 60
    while not serves(restarted.url, model):
        assert time.monotonic() < deadline, "the restarted worker never got the job's adapter"
        time.sleep(1)
    for seed in range(4):  # requests to either worker succeed
        assert client.completions.create(model=model, prompt="a", max_tokens=2, seed=seed).choices
