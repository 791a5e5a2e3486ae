"""Durability: a gateway killed (SIGKILL) mid-batch and started again on the same state directory
finishes the batch, and every line is answered exactly once in the output."""

from __future__ import annotations

import time
from collections import Counter

from tests.jobs.batching import DISTILLED, PLAIN, POWER, completion, line, read_lines, submit, wait
from tests.jobs.conftest import JobsGateway


def test_batch_survives_a_killed_gateway(jobs_gateway: JobsGateway) -> None:
    client = jobs_gateway.client()
    bodies = [
        completion(PLAIN, max_tokens=8),
        completion(POWER, max_tokens=8, mcmc_steps=20),
        completion(DISTILLED, max_tokens=8),
    ]
    lines = [line(f"line-{i}", bodies[i % 3]) for i in range(30)]
    created = submit(client, lines)
    deadline = time.monotonic() + 120
    while (batch := client.batches.retrieve(created.id)).request_counts is None or (
        batch.request_counts.completed < 3
    ):
        assert time.monotonic() < deadline, batch
        time.sleep(0.1)
    assert batch.status == "in_progress" and batch.request_counts.completed < 30

    jobs_gateway.kill_and_restart()
    client = jobs_gateway.client()
    batch = wait(client, created.id)
    assert batch.status == "completed"
    assert batch.request_counts.model_dump() == {"total": 30, "completed": 30, "failed": 0}
    answered = Counter(x["custom_id"] for x in read_lines(client, batch.output_file_id))
    assert answered == Counter(f"line-{i}" for i in range(30))  # each exactly once
    assert batch.error_file_id is None
    # The files uploaded before the kill are still served.
    assert client.files.retrieve(created.input_file_id).purpose == "batch"
