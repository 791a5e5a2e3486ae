"""The Files API through the official SDK: upload, list, retrieve, content, delete, and the checks
an upload must pass (size cap 413, also while a chunked upload streams in; line cap and malformed
JSONL 400 with the line number)."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator

import httpx
import openai
import pytest

from tests.jobs.conftest import ADMIN_KEY, JobsGateway


def _jsonl(objects: list[dict]) -> bytes:
    return "".join(json.dumps(o) + "\n" for o in objects).encode()


def _upload(client: openai.OpenAI, content: bytes, purpose: str = "batch", name: str = "in.jsonl"):
    return client.files.create(file=(name, io.BytesIO(content)), purpose=purpose)  # type: ignore[arg-type]


def test_upload_list_retrieve_content_delete(jobs_client: openai.OpenAI) -> None:
    content = _jsonl([{"custom_id": "a", "method": "POST", "url": "/v1/completions", "body": {}}])
    created = _upload(jobs_client, content, name="requests.jsonl")
    assert created.object == "file"
    assert created.id.startswith("file-")
    assert (created.bytes, created.filename, created.purpose) == (
        len(content),
        "requests.jsonl",
        "batch",
    )
    assert created.status == "processed" and created.created_at > 0

    assert jobs_client.files.retrieve(created.id).model_dump() == created.model_dump()
    assert jobs_client.files.content(created.id).read() == content
    listed = [f.id for f in jobs_client.files.list(purpose="batch")]
    assert created.id in listed
    assert created.id not in [f.id for f in jobs_client.files.list(purpose="fine-tune")]

    deleted = jobs_client.files.delete(created.id)
    assert deleted.deleted and deleted.id == created.id
    with pytest.raises(openai.NotFoundError):
        jobs_client.files.retrieve(created.id)
    with pytest.raises(openai.NotFoundError):
        jobs_client.files.content(created.id)


def test_list_pages_with_after(jobs_client: openai.OpenAI) -> None:
    ids = [_upload(jobs_client, _jsonl([{"n": i}])).id for i in range(3)]
    page = jobs_client.files.list(limit=2, order="asc", purpose="batch")
    assert len(page.data) == 2 and page.has_more
    everything = [f.id for f in page]  # iterating follows `after` across pages
    assert everything[-3:] == ids
    assert len(everything) == len(set(everything))


def test_malformed_jsonl_names_the_line(jobs_client: openai.OpenAI) -> None:
    content = b'{"custom_id": "a"}\n\n{"custom_id": "b"}\n{"custom_id": \n'
    with pytest.raises(openai.BadRequestError) as caught:
        _upload(jobs_client, content)
    assert "Line 4" in caught.value.message
    with pytest.raises(openai.BadRequestError) as caught:
        _upload(jobs_client, b'{"a": 1}\n[1, 2]\n')
    assert "Line 2 is not a JSON object" in caught.value.message


def test_caps_and_purpose(jobs_client: openai.OpenAI) -> None:
    with pytest.raises(openai.APIStatusError) as caught:
        _upload(jobs_client, _jsonl([{"pad": "x" * 30_000}]))
    assert caught.value.status_code == 413
    with pytest.raises(openai.BadRequestError) as caught:
        _upload(jobs_client, _jsonl([{"n": i} for i in range(201)]))
    assert "more than 200 lines" in caught.value.message
    with pytest.raises(openai.BadRequestError) as caught:
        _upload(jobs_client, _jsonl([{"n": 1}]), purpose="vision")
    assert caught.value.param == "purpose"
    with pytest.raises(openai.BadRequestError) as caught:
        _upload(jobs_client, _jsonl([{"prompt": "no messages"}]), purpose="fine-tune")
    assert "Line 1" in caught.value.message


def test_missing_form_fields_are_400(jobs_gateway: JobsGateway) -> None:
    response = httpx.post(
        f"{jobs_gateway.service.base_url}/files",
        data={"purpose": "batch"},
        headers={"Authorization": f"Bearer {ADMIN_KEY}"},
    )
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "file"


def test_an_oversize_upload_is_refused_while_it_streams(jobs_gateway: JobsGateway) -> None:
    """A chunked upload far over the cap (20,000 bytes + 1 MiB of form here) gets its 413 once the
    cap is passed: the server stops reading long before the client would have finished."""
    sent = [0]

    def body() -> Iterator[bytes]:
        boundary = b'--x\r\nContent-Disposition: form-data; name="file"; filename="a.jsonl"\r\n\r\n'
        yield boundary
        for _ in range(64):  # 64 MiB if the server read it all
            sent[0] += 1
            yield b"{}\n" * (1 << 18) + b"\n" * (1 << 18)
        yield b"\r\n--x--\r\n"

    headers = {
        "Authorization": f"Bearer {ADMIN_KEY}",
        "content-type": "multipart/form-data; boundary=x",
    }
    try:
        response = httpx.post(
            f"{jobs_gateway.service.base_url}/files", content=body(), headers=headers, timeout=60
        )
    except httpx.HTTPError:  # the server closed the connection after its 413: also a refusal
        response = None
    assert sent[0] < 64, "the whole body was read"
    if response is not None:
        assert response.status_code == 413
        assert response.json()["error"]["code"] == "request_too_large"
    assert jobs_gateway.client().models.list().data  # still serving
