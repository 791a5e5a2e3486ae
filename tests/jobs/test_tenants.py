"""Keys that isolate their owners, through the official SDK on the jobs gateway (keys of projects
red (two keys), blue and green, and the operator's admin key):

- every cross-project access to a file, batch or fine-tuning job is a 404 or absent from a list,
  and never moves the object; keys of one project share their objects; the admin key sees all;
- a batch line is charged to the key that created the batch, like an HTTP request.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import TINY_MODEL_NAME
from tests.jobs.conftest import KEYS, JobsGateway
from tests.jobs.test_fine_tuning import QUICK, upload_prompts


def _client(gateway: JobsGateway, name: str) -> openai.OpenAI:
    return gateway.client(key=KEYS[name][0])


def _batch_file(client: openai.OpenAI, lines: int = 2, max_tokens: int = 2) -> str:
    body = "".join(
        json.dumps(
            {
                "custom_id": f"line-{i}",
                "method": "POST",
                "url": "/v1/completions",
                "body": {"model": TINY_MODEL_NAME, "prompt": "a b", "max_tokens": max_tokens, "seed": i},
            }
        )
        + "\n"
        for i in range(lines)
    )
    return client.files.create(file=("batch.jsonl", body.encode()), purpose="batch").id


def _completed(client: openai.OpenAI, batch_id: str) -> int:
    counts = client.batches.retrieve(batch_id).request_counts
    return counts.completed if counts is not None else 0


def _not_found(call: Callable[[], Any]) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        call()
    assert caught.value.status_code == 404
    assert caught.value.code == "not_found"


def _wait_batch(client: openai.OpenAI, batch_id: str, timeout: float = 120, poll_s: float = 0.3) -> Any:
    deadline = time.monotonic() + timeout
    while (batch := client.batches.retrieve(batch_id)).status not in (
        "completed",
        "failed",
        "cancelled",
        "expired",
    ):
        assert time.monotonic() < deadline, batch
        time.sleep(poll_s)
    return batch


def test_files_and_batches_are_their_projects_own(jobs_gateway: JobsGateway) -> None:
    alice, alan = _client(jobs_gateway, "alice"), _client(jobs_gateway, "alan")
    bob, ops = _client(jobs_gateway, "bob"), _client(jobs_gateway, "ops")
    file_id = _batch_file(alice)

    # Another project: not found, not listed, not usable, not deletable.
    _not_found(lambda: bob.files.retrieve(file_id))
    _not_found(lambda: bob.files.content(file_id))
    _not_found(lambda: bob.files.delete(file_id))
    assert file_id not in [f.id for f in bob.files.list()]
    _not_found(
        lambda: bob.batches.create(
            input_file_id=file_id, endpoint="/v1/completions", completion_window="24h"
        )
    )
    # The same project (another key) and the operator see it.
    assert alan.files.retrieve(file_id).id == file_id
    assert file_id in [f.id for f in alan.files.list()]
    assert ops.files.retrieve(file_id).id == file_id

    batch = alice.batches.create(
        input_file_id=file_id, endpoint="/v1/completions", completion_window="24h"
    )
    _not_found(lambda: bob.batches.retrieve(batch.id))
    _not_found(lambda: bob.batches.cancel(batch.id))
    assert batch.id not in [b.id for b in bob.batches.list(limit=100)]
    assert batch.id in [b.id for b in alan.batches.list(limit=100)]
    assert batch.id in [b.id for b in ops.batches.list(limit=100)]

    done = _wait_batch(alan, batch.id)
    assert done.status == "completed"  # bob's cancel did not touch it
    assert done.request_counts is not None and done.request_counts.completed == 2
    # Its output file is the batch's project's too.
    assert done.output_file_id is not None
    assert len(alice.files.content(done.output_file_id).text.splitlines()) == 2
    _not_found(lambda: bob.files.content(done.output_file_id))  # type: ignore[arg-type]
    # Bob's failed delete left the input file in place.
    assert ops.files.retrieve(file_id).id == file_id


def test_fine_tuning_jobs_are_their_projects_own(jobs_gateway: JobsGateway) -> None:
    alice, bob, ops = (_client(jobs_gateway, name) for name in ("alice", "bob", "ops"))
    training = upload_prompts(alice, ["a", "b", "c", "a b"])
    _not_found(
        lambda: bob.fine_tuning.jobs.create(
            model=TINY_MODEL_NAME,
            training_file=training,
            hyperparameters=QUICK,  # type: ignore[arg-type]
        )
    )
    job = alice.fine_tuning.jobs.create(
        model=TINY_MODEL_NAME,
        training_file=training,
        hyperparameters=QUICK,  # type: ignore[arg-type]  # the power teacher's own keys
    )
    try:
        _not_found(lambda: bob.fine_tuning.jobs.retrieve(job.id))
        _not_found(lambda: bob.fine_tuning.jobs.cancel(job.id))
        _not_found(lambda: bob.fine_tuning.jobs.list_events(job.id))
        assert job.id not in [j.id for j in bob.fine_tuning.jobs.list(limit=100)]
        assert job.id in [j.id for j in ops.fine_tuning.jobs.list(limit=100)]
        assert alice.fine_tuning.jobs.retrieve(job.id).status != "cancelled"
    finally:
        assert alice.fine_tuning.jobs.cancel(job.id).status == "cancelled"


def _requests_window(gateway: JobsGateway, key: str) -> tuple[int, float]:
    """(requests left, seconds to the reset) of ``key``'s window, after one more request."""
    response = httpx.post(
        f"{gateway.service.base_url}/completions",
        json={"model": TINY_MODEL_NAME, "prompt": "a", "max_tokens": 1},
        headers={"Authorization": f"Bearer {key}"},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    reset = _seconds(response.headers["x-ratelimit-reset-requests"])
    return int(response.headers["x-ratelimit-remaining-requests"]), reset


def _seconds(text: str) -> float:
    """OpenAI's reset format: 20ms, 1.5s, 6m0s."""
    if text.endswith("ms"):
        return float(text.removesuffix("ms")) / 1000
    minutes, minute_mark, rest = text.partition("m")
    if minute_mark:
        return 60 * float(minutes) + float(rest.removesuffix("s") or 0)
    return float(text.removesuffix("s"))


def test_a_batch_line_is_charged_to_the_batch_owner(jobs_gateway: JobsGateway) -> None:
    """Two lines of green's batch count against green's requests per minute, as two HTTP requests
    would: 3 fewer requests left after the batch and one more request (in one window)."""
    key = KEYS["batcher"][0]
    green = jobs_gateway.client(key=key)
    for _attempt in range(3):  # a window that resets during the batch is not a measurement
        before, reset_s = _requests_window(jobs_gateway, key)
        began = time.monotonic()
        batch = green.batches.create(
            input_file_id=_batch_file(green), endpoint="/v1/completions", completion_window="24h"
        )
        assert _wait_batch(green, batch.id).status == "completed"
        after, _ = _requests_window(jobs_gateway, key)
        if time.monotonic() - began < reset_s - 1:
            assert before - after == 3
            return
    pytest.fail("every attempt crossed a rate-limit window")


def test_a_large_batch_does_not_make_another_projects_batch_wait(jobs_gateway: JobsGateway) -> None:
    """Red's 100 lines came first; blue's 2 lines are answered in blue's first turn, long before
    red's batch ends (each project's turn is a bounded number of lines). Blue's batch is done after
    at most three of red's 8-line turns; red's lines are long (32 tokens) so that the other 76 take
    seconds, far more than one poll (the order itself is checked without a clock in
    test_batch_faults)."""
    alice, bob = _client(jobs_gateway, "alice"), _client(jobs_gateway, "bob")
    large_file, small_file = _batch_file(alice, lines=100, max_tokens=32), _batch_file(bob)
    large = alice.batches.create(
        input_file_id=large_file, endpoint="/v1/completions", completion_window="24h"
    )
    # Blue asks once red's lines are being answered (a batch still validating is not in the way).
    deadline = time.monotonic() + 60
    while _completed(alice, large.id) == 0:
        assert time.monotonic() < deadline, "red's batch never started"
        time.sleep(0.05)
    small = bob.batches.create(
        input_file_id=small_file, endpoint="/v1/completions", completion_window="24h"
    )
    assert _wait_batch(bob, small.id, poll_s=0.05).status == "completed"
    meanwhile = alice.batches.retrieve(large.id)
    assert meanwhile.status == "in_progress", meanwhile
    assert meanwhile.request_counts is not None and meanwhile.request_counts.completed < 100
    assert _wait_batch(alice, large.id).status == "completed"


def test_a_keys_power_budget_is_the_default_of_its_power_requests(jobs_gateway: JobsGateway) -> None:
    """alan's key sets power_budget = 2: his SMC requests that set none run at most 2 particles,
    one that sets its own keeps it; alice's key (same project) has none; his plain requests are
    not refused for a power field he never sent."""

    def report(name: str, **extra: object) -> dict[str, Any]:
        completion = _client(jobs_gateway, name).completions.create(
            model=f"{TINY_MODEL_NAME}-power",
            prompt="a b",
            max_tokens=3,
            extra_body={"power_method": "smc", **extra},
        )
        return (completion.model_extra or {})["power"]

    alan = report("alan")
    assert (alan["particles"], alan["chosen_by"], alan["budget"]) == (2, "budget", 2.0)
    own = report("alan", power_budget=3)
    assert (own["particles"], own["budget"]) == (3, 3.0)
    alice = report("alice")
    assert (alice["particles"], alice["chosen_by"]) == (4, "default") and "budget" not in alice
    plain = _client(jobs_gateway, "alan").completions.create(
        model=TINY_MODEL_NAME, prompt="a b", max_tokens=2
    )
    assert plain.choices[0].finish_reason in ("stop", "length")
    # bob's key sets a latency target no answer meets: once the gateway has timed an answer (the
    # plain one above), his requests run one particle; one that sets its own N is not refused.
    bob = report("bob")
    assert (bob["particles"], bob["chosen_by"], bob["latency_target"]) == (1, "latency_target", 1e-6)
    own = report("bob", power_particles=3)
    assert (own["particles"], own["chosen_by"]) == (3, "request") and "latency_target" not in own
