"""Gateway replicas sharing a batch: two gateway processes on the same workers and one Redis job
store (`--jobs-redis-url`) answer the lines of one batch together; one is killed (SIGKILL)
mid-batch, the other takes its claimed lines over and finishes the batch, every line answered
exactly once in the output. Runs before test_remote_mode.py, which stops the workers."""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from collections.abc import Iterator

import openai
import pytest

from loadtests.harness import RedisProcess, ServiceProcess
from tests.conftest import start_service
from tests.jobs.batching import DISTILLED, PLAIN, POWER, completion, line, read_lines, submit, wait
from tests.stack.conftest import Stack

CLAIM_TIMEOUT_S = 3


@pytest.fixture
def replicas(tmp_path_factory: pytest.TempPathFactory, stack: Stack) -> Iterator[list[ServiceProcess]]:
    jobs_redis = RedisProcess().start()
    env = {"POWERSERVE_WORKERS": stack.worker_urls, "POWERSERVE_JOBS_REDIS_URL": jobs_redis.url}
    args = [
        *stack.args,
        "--power-method",
        "mh",
        "--batch-concurrency",
        "2",
        "--batch-claim-timeout-s",
        str(CLAIM_TIMEOUT_S),
    ]
    started: list[ServiceProcess] = []
    try:
        for name in ("replica-a", "replica-b"):
            state = tmp_path_factory.mktemp(name)
            started.append(
                start_service(tmp_path_factory, name, [*args, "--state-dir", str(state)], env)
            )
        yield started
    finally:
        for replica in started:
            replica.stop()
        jobs_redis.stop()


def client(replica: ServiceProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=replica.base_url, api_key="unused", max_retries=0, timeout=120)


def answered(replica: ServiceProcess) -> float:
    return replica.metric("powerserve_batch_lines_total", result="completed")


def test_replicas_share_a_batch_and_finish_the_lines_of_a_killed_one(
    replicas: list[ServiceProcess],
) -> None:
    first, second = replicas
    bodies = [
        completion(PLAIN, max_tokens=8),
        completion(POWER, max_tokens=8, mcmc_steps=20),
        completion(DISTILLED, max_tokens=8),
    ]
    lines = [line(f"line-{i}", bodies[i % 3]) for i in range(30)]
    created = submit(client(first), lines)

    # The batch created through the first replica is seen, and worked on, by the second.
    deadline = time.monotonic() + 120
    while answered(first) < 2 or answered(second) < 2:
        assert time.monotonic() < deadline, client(second).batches.retrieve(created.id)
        time.sleep(0.2)
    assert client(second).batches.retrieve(created.id).status == "in_progress"

    os.killpg(first.process.pid, signal.SIGKILL)  # with the lines it had claimed
    first.process.wait(timeout=30)
    batch = wait(client(second), created.id)
    assert batch.status == "completed", batch
    assert batch.request_counts is not None
    assert batch.request_counts.model_dump() == {"total": 30, "completed": 30, "failed": 0}
    output = read_lines(client(second), batch.output_file_id)
    assert Counter(x["custom_id"] for x in output) == Counter(f"line-{i}" for i in range(30))
    power = [x["response"]["body"] for x in output if x["response"]["body"]["model"] == POWER]
    assert len(power) == 10 and all(body["power"]["method"] == "mh" for body in power)
    assert batch.error_file_id is None
    # The killed replica's claimed lines were taken over once their claims went stale.
    assert second.metric("powerserve_batch_lines_taken_over_total") >= 1
    # What was uploaded through the killed replica is still served by the other.
    assert client(second).files.retrieve(created.input_file_id).purpose == "batch"
    assert created.id in [b.id for b in client(second).batches.list(limit=5)]
