"""The Batch API through the official SDK, on every route: statuses and their times, counts, the
output and error files in OpenAI's line format, answers equal to the HTTP endpoint's, validation,
cancelling and listing."""

from __future__ import annotations

import openai
import pytest

from tests.jobs.batching import DISTILLED, PLAIN, POWER, completion, line, read_lines, submit, wait
from tests.jobs.conftest import JobsGateway


def test_every_route_in_one_batch(jobs_client: openai.OpenAI) -> None:
    lines = [
        line("plain", completion(PLAIN, seed=1)),
        line("power-mh", completion(POWER, mcmc_steps=3, seed=2)),
        line("power-smc", completion(POWER, power_method="smc", power_particles=4, seed=3)),
        line("distilled", completion(DISTILLED, seed=4, logprobs=1)),
        line("unknown-model", completion("no-such-model")),
        line("bad-param", completion(PLAIN, temperature=9)),
    ]
    created = submit(jobs_client, lines, metadata={"purpose": "test"})
    assert created.object == "batch" and created.id.startswith("batch_")
    assert created.status == "validating" and created.metadata == {"purpose": "test"}
    assert created.expires_at == created.created_at + 24 * 3600

    batch = wait(jobs_client, created.id)
    assert batch.status == "completed"
    assert batch.request_counts.model_dump() == {"total": 6, "completed": 4, "failed": 2}
    assert batch.in_progress_at and batch.finalizing_at and batch.completed_at
    assert batch.created_at <= batch.in_progress_at <= batch.finalizing_at <= batch.completed_at

    outputs = {x["custom_id"]: x for x in read_lines(jobs_client, batch.output_file_id)}
    errors = {x["custom_id"]: x for x in read_lines(jobs_client, batch.error_file_id)}
    assert set(outputs) == {"plain", "power-mh", "power-smc", "distilled"}
    assert set(errors) == {"unknown-model", "bad-param"}
    for name, out in outputs.items():
        assert out["id"].startswith("batch_req_") and out["error"] is None
        response = out["response"]
        assert response["status_code"] == 200
        body = response["body"]
        assert response["request_id"] == body["id"] and body["object"] == "text_completion"
        assert body["choices"][0]["finish_reason"] in ("stop", "length")
        assert ("power" in body) == name.startswith("power")
    assert outputs["power-mh"]["response"]["body"]["power"]["method"] == "mh"
    assert outputs["power-smc"]["response"]["body"]["power"]["method"] == "smc"
    assert outputs["distilled"]["response"]["body"]["model"] == DISTILLED
    assert outputs["distilled"]["response"]["body"]["choices"][0]["logprobs"]["tokens"]

    missing = errors["unknown-model"]
    assert missing["response"]["status_code"] == 404
    assert missing["error"]["code"] == "model_not_found"
    invalid = errors["bad-param"]["response"]
    assert invalid["status_code"] == 400 and invalid["body"]["error"]["param"] == "temperature"

    output_file = jobs_client.files.retrieve(batch.output_file_id)
    assert output_file.purpose == "batch_output"


def test_a_line_answers_as_the_endpoint_does_and_reuses_the_cache(
    jobs_gateway: JobsGateway, jobs_client: openai.OpenAI
) -> None:
    body = {"model": PLAIN, "messages": [{"role": "user", "content": "a b"}], "max_tokens": 5}
    body |= {"seed": 1234, "logprobs": True, "top_logprobs": 2}
    direct = jobs_client.chat.completions.create(**body)  # computed and cached (it has a seed)
    hits = jobs_gateway.service.metric("powerserve_cache_lookups_total", route="plain", result="hit")

    batch = wait(
        jobs_client,
        submit(
            jobs_client, [line("c", body, "/v1/chat/completions")], endpoint="/v1/chat/completions"
        ).id,
    )
    assert batch.status == "completed"
    (out,) = read_lines(jobs_client, batch.output_file_id)
    answered = out["response"]["body"]
    assert answered["object"] == "chat.completion"
    assert answered["choices"][0]["message"]["content"] == direct.choices[0].message.content
    expected = direct.model_dump()["choices"][0]["logprobs"]["content"]
    assert answered["choices"][0]["logprobs"]["content"] == expected
    after = jobs_gateway.service.metric("powerserve_cache_lookups_total", route="plain", result="hit")
    assert after == hits + 1  # served from the cache, not recomputed


def test_invalid_lines_fail_the_batch(jobs_client: openai.OpenAI) -> None:
    lines = [
        line("a", completion(PLAIN)),
        line("a", completion(PLAIN)),
        line("b", completion(PLAIN), url="/v1/chat/completions"),
    ]
    batch = wait(jobs_client, submit(jobs_client, lines).id)
    assert batch.status == "failed" and batch.failed_at
    codes = [(e.code, e.line) for e in batch.errors.data]
    assert ("duplicate_custom_id", 2) in codes and ("mismatched_endpoint", 3) in codes
    assert batch.output_file_id is None


def test_create_refuses_bad_requests(jobs_client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError):
        jobs_client.batches.create(
            input_file_id="file-missing", endpoint="/v1/completions", completion_window="24h"
        )
    file = submit(jobs_client, [line("a", completion(PLAIN))]).input_file_id
    with pytest.raises(openai.BadRequestError) as caught:
        jobs_client.batches.create(
            input_file_id=file, endpoint="/v1/embeddings", completion_window="24h"
        )
    assert caught.value.param == "endpoint"
    with pytest.raises(openai.BadRequestError):
        jobs_client.batches.create(
            input_file_id=file,
            endpoint="/v1/completions",
            completion_window="1h",  # type: ignore[arg-type]
        )
    with pytest.raises(openai.NotFoundError):
        jobs_client.batches.retrieve("batch_missing")


def test_cancel_keeps_what_was_answered(jobs_client: openai.OpenAI) -> None:
    lines = [line(f"l{i}", completion(POWER, mcmc_steps=30, max_tokens=8)) for i in range(40)]
    created = submit(jobs_client, lines)
    wait(jobs_client, created.id, until=("in_progress",))
    cancelling = jobs_client.batches.cancel(created.id)
    assert cancelling.status in ("cancelling", "cancelled") and cancelling.cancelling_at
    batch = wait(jobs_client, created.id)
    assert batch.status == "cancelled" and batch.cancelled_at
    counts = batch.request_counts
    assert counts.total == 40 and counts.completed + counts.failed < 40
    answered = read_lines(jobs_client, batch.output_file_id)
    assert len(answered) == counts.completed
    with pytest.raises(openai.BadRequestError):
        jobs_client.batches.cancel(
            wait(jobs_client, submit(jobs_client, [line("x", completion(PLAIN))]).id).id
        )


def test_list_newest_first_with_limit_and_after(jobs_client: openai.OpenAI) -> None:
    ids = [submit(jobs_client, [line("x", completion(PLAIN))]).id for _ in range(3)]
    page = jobs_client.batches.list(limit=2)
    assert [b.id for b in page.data] == ids[::-1][:2] and page.has_more
    following = jobs_client.batches.list(limit=2, after=page.data[-1].id)
    assert following.data[0].id == ids[0]
    with pytest.raises(openai.BadRequestError):
        jobs_client.batches.list(limit=101)
    for batch_id in ids:
        assert wait(jobs_client, batch_id).status == "completed"
