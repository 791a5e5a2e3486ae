"""Fine-tuning jobs (power self-distillation as a service) through the official SDK: a job on 8
prompts runs teacher answers, LoRA training and the evaluation, its model is listed and answers, and
is still served after the gateway is killed and started again; cancel and bad requests."""

from __future__ import annotations

import json
import math
import time

import openai
import pytest
from openai.types.fine_tuning import FineTuningJob

from tests.api.test_disconnect import wait_until_idle
from tests.conftest import TINY_MODEL_NAME
from tests.jobs.conftest import JobsGateway

PROMPTS = ["a", "b", "c", "a b", "b c", "c a", "a a b", "c b a"]
# The evaluation's rows: plain sampling at temperature 1 and 1/alpha, the teacher, the job's model.
ROUTES = ("base", "base-low-temperature", "power", "distilled", "distilled-low-temperature")
# Small enough for the tiny model to run in seconds: 1 block of 3 tokens, the default teacher (SMC,
# 4 particles).
QUICK = {
    "n_epochs": 2,
    "batch_size": 4,
    "lora_rank": 8,
    "block_size": 3,
    "answer_tokens": 3,
}


def upload_prompts(client: openai.OpenAI, prompts: list[str]) -> str:
    lines = "".join(
        json.dumps({"messages": [{"role": "user", "content": prompt}]}) + "\n" for prompt in prompts
    )
    return client.files.create(file=("prompts.jsonl", lines.encode()), purpose="fine-tune").id


def wait_final(client: openai.OpenAI, job_id: str, timeout: float = 400) -> FineTuningJob:
    deadline = time.monotonic() + timeout
    while (job := client.fine_tuning.jobs.retrieve(job_id)).status not in (
        "succeeded",
        "failed",
        "cancelled",
    ):
        assert time.monotonic() < deadline, job
        time.sleep(0.5)
    return job


@pytest.fixture(scope="module")
def succeeded_job(jobs_gateway: JobsGateway) -> FineTuningJob:
    client = jobs_gateway.client()
    created = client.fine_tuning.jobs.create(
        model=TINY_MODEL_NAME,
        training_file=upload_prompts(client, PROMPTS),
        suffix="eight",
        seed=3,
        hyperparameters=QUICK,  # type: ignore[arg-type]  # the power teacher's own keys
    )
    assert created.status == "validating_files"
    assert created.hyperparameters.n_epochs == 2
    assert (created.hyperparameters.model_extra or {}).get("power_method") == "smc"
    return wait_final(client, created.id)


def test_a_job_on_8_prompts_distils_the_power_route_into_a_served_model(
    jobs_gateway: JobsGateway, succeeded_job: FineTuningJob
) -> None:
    client, job = jobs_gateway.client(), succeeded_job
    assert job.status == "succeeded", job.error
    assert job.fine_tuned_model == f"ft:{TINY_MODEL_NAME}:eight:{job.id.removeprefix('ftjob-')}"
    assert job.finished_at is not None and job.finished_at >= job.created_at
    assert job.trained_tokens and job.trained_tokens > 0
    assert job.id in [j.id for j in client.fine_tuning.jobs.list().data]

    # Events per stage: 4 teacher answers (the default answers_per_prompt) to each of 6 prompts (2
    # of 8 held out), each training step's loss, the evaluation's figures.
    events = client.fine_tuning.jobs.list_events(job.id, limit=1000).data
    stages = [e.data for e in reversed(events) if e.type == "metrics" and e.data]
    teacher = [d for d in stages if d["stage"] == "teacher"]
    assert [d["answers"] for d in teacher] == list(range(1, 25))
    assert any(e.message == "Teacher answers: 24/24." for e in events)
    training = [d for d in stages if d["stage"] == "training"]
    steps = 2 * math.ceil(24 / 4)  # 2 epochs of 24 answers, 4 per step
    assert [d["step"] for d in training] == list(range(1, steps + 1))
    assert all(d["train_loss"] > 0 for d in training)
    (evaluation,) = [d for d in stages if d["stage"] == "eval"]
    assert list(evaluation["routes"]) == list(ROUTES)
    assert events[0].message.startswith("Job succeeded")

    # The result file holds the evaluation table: self-reward and cost per route.
    (result_id,) = job.result_files
    result = json.loads(client.files.content(result_id).content)
    assert result["model"] == job.fine_tuned_model
    for route in ROUTES:
        row = result["summary"]["routes"][route]
        assert row["answers"] == 2
        assert row["self_reward_per_token"] < 0
    assert result["summary"]["routes"]["power"]["cost_per_returned_token"] > 1
    assert set(result["summary"]["beats_low_temperature"]) == {"accuracy", "self_reward"}
    assert "| distilled |" in result["table"]

    # The model is listed and answers, on both endpoints, scored under the base model.
    assert job.fine_tuned_model in [m.id for m in client.models.list().data]
    chat = client.chat.completions.create(
        model=job.fine_tuned_model,
        messages=[{"role": "user", "content": "a b"}],
        max_tokens=3,
        seed=1,
    )
    assert chat.model == job.fine_tuned_model
    assert chat.choices[0].finish_reason in ("stop", "length")
    assert chat.usage is not None and chat.usage.completion_tokens >= 1
    assert chat.model_extra and chat.model_extra["self_reward"]["sum_logprob"] < 0
    text = client.completions.create(model=job.fine_tuned_model, prompt="a", max_tokens=2)
    assert text.choices[0].finish_reason in ("stop", "length")
    assert jobs_gateway.service.metric("powerserve_fine_tuning_jobs_total", status="succeeded") >= 1


def test_a_cancelled_job_stops_and_serves_nothing(
    jobs_gateway: JobsGateway, succeeded_job: FineTuningJob
) -> None:
    client = jobs_gateway.client()
    slow = QUICK | {"power_method": "mh", "mcmc_steps": 64, "answer_tokens": 8, "block_size": 8}
    created = client.fine_tuning.jobs.create(
        model=TINY_MODEL_NAME,
        training_file=upload_prompts(client, PROMPTS * 4),
        hyperparameters=slow,  # type: ignore[arg-type]
    )
    deadline = time.monotonic() + 60
    while client.fine_tuning.jobs.retrieve(created.id).status != "running":
        assert time.monotonic() < deadline
        time.sleep(0.2)
    cancelled = client.fine_tuning.jobs.cancel(created.id)
    assert cancelled.status == "cancelled"
    wait_until_idle(jobs_gateway.service, timeout=10)  # its teacher requests left the engine
    job = client.fine_tuning.jobs.retrieve(created.id)
    assert job.status == "cancelled" and job.fine_tuned_model is None
    messages = [e.message for e in client.fine_tuning.jobs.list_events(created.id, limit=100).data]
    assert messages[0] == "Job cancelled."
    assert not any(m.startswith("Training") for m in messages)  # it stopped in the teacher stage
    assert not any(m.id.endswith(created.id.removeprefix("ftjob-")) for m in client.models.list().data)
    assert client.fine_tuning.jobs.cancel(created.id).status == "cancelled"  # repeating is fine
    with pytest.raises(openai.BadRequestError):  # a job that succeeded cannot be cancelled
        client.fine_tuning.jobs.cancel(succeeded_job.id)


def test_bad_fine_tuning_requests_are_clear_errors(jobs_gateway: JobsGateway) -> None:
    client = jobs_gateway.client()
    prompts = upload_prompts(client, PROMPTS)

    def create(**fields: object) -> None:
        body = {"model": TINY_MODEL_NAME, "training_file": prompts, "hyperparameters": QUICK}
        client.fine_tuning.jobs.create(**(body | fields))  # type: ignore[arg-type]

    with pytest.raises(openai.NotFoundError):
        create(training_file="file-nope")
    request = {"custom_id": "a", "method": "POST", "url": "/v1/completions", "body": {}}
    batch_file = client.files.create(
        file=("b.jsonl", json.dumps(request).encode() + b"\n"), purpose="batch"
    )
    with pytest.raises(openai.BadRequestError) as wrong_purpose:
        create(training_file=batch_file.id)
    assert wrong_purpose.value.param == "training_file"
    with pytest.raises(openai.BadRequestError) as wrong_model:
        create(model=f"{TINY_MODEL_NAME}-power")
    assert wrong_model.value.code == "model_not_available"
    for hyper in (
        {"lora_rank": 64},  # above POWERSERVE_FINE_TUNING_MAX_RANK
        {"answer_tokens": 64},  # the tiny model's whole context
        {"n_epochs": 0},
        {"not_a_setting": 1},
        {"eval_share": 1},
    ):
        with pytest.raises(openai.BadRequestError) as refused:
            create(hyperparameters=QUICK | hyper)
        assert str(refused.value.param).startswith(f"hyperparameters.{next(iter(hyper))}")
    with pytest.raises(openai.NotFoundError):
        client.fine_tuning.jobs.retrieve("ftjob-nope")
    with pytest.raises(openai.NotFoundError):
        client.fine_tuning.jobs.list_events("ftjob-nope")


def test_the_fine_tuned_model_is_served_after_a_restart(
    jobs_gateway: JobsGateway, succeeded_job: FineTuningJob
) -> None:
    jobs_gateway.kill_and_restart()
    client = jobs_gateway.client()
    model = succeeded_job.fine_tuned_model
    assert model in [m.id for m in client.models.list().data]
    answer = client.completions.create(model=model, prompt="a b", max_tokens=3)  # type: ignore[arg-type]
    assert answer.model == model and answer.choices[0].finish_reason in ("stop", "length")
    assert client.fine_tuning.jobs.retrieve(succeeded_job.id).status == "succeeded"
