"""A worker that misbehaves, against the remote engine: small HTTP servers on 127.0.0.1 stand in for a
faulty worker (a proxy's HTML page, a truncated or misshapen body, a 500 with a traceback, a 401), not
for vLLM. A broken answer is the worker's fault: the request moves to another worker, the broken one is
marked down, and with none left the client gets a 503. What a client reads never carries the worker's
body, URL, host, port, file paths or tracebacks; /metrics names workers by index."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest

from service.engines.base import SamplingOptions
from service.engines.remote import RemoteEngine, wire
from service.engines.remote.pool import WorkerPool
from service.errors import (
    ContextLengthError,
    EngineError,
    EngineUnavailableError,
    InvalidRequestError,
    PowerserveError,
)
from service.metrics.workers import WorkerPoolCollector
from service.serving.errors import error_of
from tests.engines.remote.test_failover import ADAPTER, Worker, remote_engine, running, with_engine

# What a faulty worker's answers carry that a client must never read.
SECRET_URL = "http://admin:s3cret@10.9.8.7:8001/v1/completions"
TRACEBACK = (
    "Traceback (most recent call last):\n"
    '  File "/opt/venv/lib/python3.11/site-packages/vllm/entrypoints/openai/api_server.py", line 12, '
    "in create_completion\n"
    f"    raise ConnectionError('{SECRET_URL}')\n"
    f"ConnectionError: {SECRET_URL} refused (worker-0.internal:8001, [fd00::7]:8001)\n"
)
LEAKS = ("10.9.8.7", "s3cret", "admin", "8001", "http", "/opt/venv", "api_server", "Traceback", "fd00")
PLAIN = SamplingOptions(max_tokens=1)


class Faulty(Worker):
    """A worker that passes its health checks but answers every completion with ``answer``: a status,
    a content type and a body (for a stream too, unless the body is an event stream)."""

    def __init__(self, status: int, content_type: str, body: bytes):
        super().__init__({"tiny", ADAPTER})
        self.answer = (status, content_type, body)

    async def complete(self, request: web.Request) -> web.StreamResponse:
        self.completions.append(await request.json())
        status, content_type, body = self.answer
        return web.Response(status=status, body=body, headers={"Content-Type": content_type})


def error_event(message: str) -> bytes:
    error = {"error": {"message": message, "type": "InternalServerError", "param": None, "code": 500}}
    return f"data: {json.dumps(error)}\n\ndata: [DONE]\n\n".encode()


# Answers that are not vLLM's, to a non-streamed and to a streamed request.
INVALID = {
    "html-page": (200, "text/html", f"<html><body>502 Bad Gateway: {SECRET_URL}</body></html>".encode()),
    "truncated-json": (200, "application/json", b'{"choices": [{"text": "b", "token_ids": [1'),
    "wrong-shape": (200, "application/json", b'{"choices": "none", "via": "10.9.8.7:8001"}'),
    "json-array": (200, "application/json", b'["10.9.8.7:8001"]'),
    "not-utf8": (200, "application/json", b"\xff\xfe\xfa\x80 10.9.8.7:8001"),
}
INVALID_STREAMS = {
    "html-page": INVALID["html-page"],
    "event-not-json": (
        200,
        "text/event-stream",
        b"data: <html>10.9.8.7:8001</html>\n\ndata: [DONE]\n\n",
    ),
    "event-wrong-shape": (200, "text/event-stream", b'data: {"choices": 5}\n\ndata: [DONE]\n\n'),
}


def message_of(exc: PowerserveError) -> tuple[int, str]:
    """(status, the error body's text) as an endpoint would answer ``exc``."""
    status, body = error_of(exc)
    return status, json.dumps(body)


def assert_clean(text: str) -> None:
    leaked = [leak for leak in LEAKS if leak in text]
    assert not leaked, f"{leaked} reached the client: {text}"


async def request(engine: RemoteEngine, *, stream: bool, options: SamplingOptions = PLAIN) -> list[int]:
    tokens: list[int] = []
    async for part in engine.generate([0, 1], options, stream=stream):
        tokens += part.token_ids
    return tokens


# --- 1. an answer that is not vLLM's is the worker's fault -------------------------------------


@pytest.mark.parametrize(
    ("stream", "kind"),
    [(False, kind) for kind in INVALID] + [(True, kind) for kind in INVALID_STREAMS],
    ids=[f"whole-{kind}" for kind in INVALID] + [f"streamed-{kind}" for kind in INVALID_STREAMS],
)
def test_an_invalid_answer_moves_the_request_and_marks_the_worker_down(
    tiny_model_dir: Path, stream: bool, kind: str
) -> None:
    faulty = Faulty(*(INVALID_STREAMS if stream else INVALID)[kind])
    working = Worker({"tiny"})

    async def body(engine: RemoteEngine) -> None:
        # Until the faulty worker has been asked at least once (each request picks at random).
        for _ in range(30):
            assert await request(engine, stream=stream) == [1]
            if faulty.completions:
                break
        assert faulty.completions, "the faulty worker was never tried"
        assert engine.pool.workers[0].failures >= 1  # marked down, until its probes pass again
        assert engine.num_running_requests() == 0

    with_engine(tiny_model_dir, [faulty, working], body)


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_when_every_worker_answers_garbage_the_client_gets_a_clean_503(
    tiny_model_dir: Path, stream: bool
) -> None:
    workers = [Faulty(*INVALID["html-page"]), Faulty(*INVALID["wrong-shape"])]

    async def body(engine: RemoteEngine) -> None:
        with pytest.raises(EngineUnavailableError) as raised:
            await request(engine, stream=stream)
        status, text = message_of(raised.value)
        assert status == 503 and raised.value.code == "engine_unavailable"
        assert_clean(text)
        assert 2 <= sum(len(w.completions) for w in workers) <= 3  # each tried, none more than once more
        assert engine.num_running_requests() == 0

    with_engine(tiny_model_dir, workers, body)


def test_a_score_answer_of_another_shape_moves_too(tiny_model_dir: Path) -> None:
    faulty, working = Faulty(200, "application/json", b'{"choices": [{"text": ""}]}'), Worker({"tiny"})

    async def body(engine: RemoteEngine) -> None:
        for _ in range(30):
            assert await engine.score([0, 1, 2], 1) == [-0.5, -0.5]
            if faulty.completions:
                break
        assert faulty.completions and engine.pool.workers[0].failures >= 1

    with_engine(tiny_model_dir, [faulty, working], body)


def test_a_stream_that_ends_before_done_moves_on_rather_than_answering_nothing(
    tiny_model_dir: Path,
) -> None:
    unfinished = b'data: {"choices": [{"text": "", "token_ids": [], "finish_reason": null}]}\n\n'
    faulty, working = Faulty(200, "text/event-stream", unfinished), Worker({"tiny"})

    async def body(engine: RemoteEngine) -> None:
        for _ in range(30):
            assert await request(engine, stream=True) == [1]
            if faulty.completions:
                break
        assert faulty.completions
        assert engine.pool.workers[0].healthy  # a cut stream is no proof the worker is broken

    with_engine(tiny_model_dir, [faulty, working], body)


class Proxied(Worker):
    """A worker whose every path answers a proxy's 200 page while ``broken``: its /health passes."""

    broken = False

    async def health(self, request: web.Request) -> web.Response:
        return self.page() if self.broken else await super().health(request)

    async def list_models(self, request: web.Request) -> web.Response:
        return self.page() if self.broken else await super().list_models(request)

    async def complete(self, request: web.Request) -> web.StreamResponse:
        if not self.broken:
            return await super().complete(request)
        self.completions.append(await request.json())
        return self.page()

    @staticmethod
    def page() -> web.Response:
        return web.Response(text=f"<html>Service moved to {SECRET_URL}</html>", content_type="text/html")


def test_a_worker_marked_down_for_garbage_is_not_taken_back_while_it_answers_garbage(
    tiny_model_dir: Path,
) -> None:
    proxied, working = Proxied({"tiny"}), Worker({"tiny"})

    async def body(engine: RemoteEngine) -> None:
        state = engine.pool.workers[0]
        proxied.broken = True  # its /health still passes: only a request finds it out
        for _ in range(30):
            assert await request(engine, stream=False) == [1]
            if proxied.completions:
                break
        assert proxied.completions and not state.healthy
        tried = len(proxied.completions)
        for _ in range(10):  # a second: many probes (0.2 s apart, backing off from 0.1 s)
            await asyncio.sleep(0.1)
            assert await request(engine, stream=False) == [1]
            assert not state.healthy
        assert len(proxied.completions) == tried  # down: asked nothing more
        proxied.broken = False
        for _ in range(100):  # taken back once it answers as vLLM does (its backoff grew to about 2 s)
            if state.healthy:
                break
            await asyncio.sleep(0.1)
        assert state.healthy

    with_engine(tiny_model_dir, [proxied, working], body)


def test_a_usage_only_event_is_no_fault(tiny_model_dir: Path) -> None:
    """A worker run with --enable-force-include-usage ends its streams with an event of no choices."""
    choice = {"text": "b", "token_ids": [1], "finish_reason": "length", "logprobs": None}
    usage = {"choices": [], "usage": {"prompt_tokens": 2, "completion_tokens": 1, "total_tokens": 3}}
    events = "".join(f"data: {json.dumps(e)}\n\n" for e in ({"choices": [choice]}, usage))
    worker = Faulty(200, "text/event-stream", f"{events}data: [DONE]\n\n".encode())

    async def body(engine: RemoteEngine) -> None:
        assert await request(engine, stream=True) == [1]
        assert engine.pool.workers[0].healthy

    with_engine(tiny_model_dir, [worker], body)


# --- 2. the workers' words stay in the log -----------------------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_a_server_error_with_a_traceback_reaches_the_client_as_a_clean_503(
    tiny_model_dir: Path, stream: bool, caplog: pytest.LogCaptureFixture
) -> None:
    workers = [
        Faulty(500, "text/plain", TRACEBACK.encode()),
        Faulty(502, "text/html", TRACEBACK.encode()),
    ]

    async def body(engine: RemoteEngine) -> None:
        with pytest.raises(EngineUnavailableError) as raised:
            await request(engine, stream=stream)
        assert_clean(message_of(raised.value)[1])

    with caplog.at_level(logging.INFO, logger="service.engines.remote"):
        with_engine(tiny_model_dir, workers, body)
    assert "10.9.8.7" in caplog.text  # the details are in the log


def test_an_error_event_in_a_stream_moves_the_request(tiny_model_dir: Path) -> None:
    faulty = Faulty(200, "text/event-stream", error_event(TRACEBACK))
    working = Worker({"tiny"})

    async def body(engine: RemoteEngine) -> None:
        for _ in range(30):
            assert await request(engine, stream=True) == [1]
            if faulty.completions:
                break
        assert faulty.completions

    with_engine(tiny_model_dir, [faulty, working], body)


def test_a_400_keeps_vllms_message_without_the_internals(tiny_model_dir: Path) -> None:
    message = (
        "This model's maximum context length is 64 tokens. However, your prompt contains 90 input "
        f"tokens, which exceeds this limit even without any output tokens. See {SECRET_URL} and "
        f"/opt/venv/lib/python3.11/site-packages/vllm/renderers/params.py.\n{TRACEBACK}"
    )
    error = {
        "error": {"message": message, "type": "BadRequestError", "param": "input_tokens", "code": 400}
    }
    workers = [Faulty(400, "application/json", json.dumps(error).encode()) for _ in range(2)]

    async def body(engine: RemoteEngine) -> None:
        with pytest.raises(ContextLengthError) as raised:
            await request(engine, stream=False)
        status, text = message_of(raised.value)
        assert status == 400
        assert "maximum context length is 64 tokens" in raised.value.message
        assert_clean(text)
        assert sum(len(w.completions) for w in workers) == 1  # the client's fault: not retried

    with_engine(tiny_model_dir, workers, body)


def test_a_400_that_is_not_vllms_json_is_a_plain_invalid_request(tiny_model_dir: Path) -> None:
    workers = [Faulty(400, "text/html", f"<h1>400</h1>{SECRET_URL}".encode()) for _ in range(2)]

    async def body(engine: RemoteEngine) -> None:
        with pytest.raises(InvalidRequestError) as raised:
            await request(engine, stream=True)
        status, text = message_of(raised.value)
        assert status == 400
        assert_clean(text)

    with_engine(tiny_model_dir, workers, body)


def test_a_404_everywhere_says_so_without_the_workers_words(tiny_model_dir: Path) -> None:
    error = {"error": {"message": f"The model `{ADAPTER}` does not exist at {SECRET_URL}.", "code": 404}}
    workers = [Faulty(404, "application/json", json.dumps(error).encode()) for _ in range(2)]

    async def body(engine: RemoteEngine) -> None:
        with pytest.raises(EngineError) as raised:
            await request(engine, stream=False, options=SamplingOptions(max_tokens=1, adapter=ADAPTER))
        assert_clean(message_of(raised.value)[1])

    with_engine(tiny_model_dir, workers, body)


@pytest.mark.parametrize("status", [401, 403, 405, 429])
def test_a_refusal_that_is_the_workers_moves_the_request(tiny_model_dir: Path, status: int) -> None:
    faulty = Faulty(status, "text/plain", f"denied by {SECRET_URL}".encode())
    working = Worker({"tiny"})

    async def body(engine: RemoteEngine) -> None:
        for _ in range(30):
            assert await request(engine, stream=False) == [1]
            if faulty.completions:
                break
        assert faulty.completions

    with_engine(tiny_model_dir, [faulty, working], body)


def test_client_message_strips_urls_hosts_ports_paths_and_tracebacks() -> None:
    message = (
        f"top_p must be in (0, 1], got 1.5 (see {SECRET_URL}, 10.0.0.1, localhost:8000, "
        'C:\\vllm\\x.py, ~/.cache/huggingface/hub, File "/srv/app.py", line 3, in main).\n' + TRACEBACK
    )
    cleaned = wire.client_message(json.dumps({"error": {"message": message}}))
    assert cleaned is not None and cleaned.startswith("top_p must be in (0, 1], got 1.5 (see")
    for leak in (*LEAKS, "10.0.0.1", "localhost", "8000", "vllm\\x.py", ".cache", "app.py", "\n"):
        assert leak not in cleaned
    assert wire.client_message(json.dumps({"message": "n must be at least 1"})) == "n must be at least 1"
    assert wire.client_message(json.dumps({"error": {"message": "x" * 5000}})) == "x" * 497 + "..."
    for body in ("<html>400</html>", "[]", '{"error": {"code": 400}}', '{"error": 5}', '"x"'):
        assert wire.client_message(body) is None


# --- the health monitor survives a worker that answers its probes wrongly ----------------------


class WrongModels(Worker):
    """Answers /v1/models with JSON of another shape until ``fixed``."""

    fixed = False

    async def list_models(self, request: web.Request) -> web.Response:
        return await super().list_models(request) if self.fixed else web.json_response(["tiny"])


def test_a_probe_answer_of_another_shape_keeps_the_worker_down_and_watched(tiny_model_dir: Path) -> None:
    worker = WrongModels({"tiny"})

    async def run() -> None:
        async with running(worker):
            engine = remote_engine(tiny_model_dir, worker)
            try:
                starting = asyncio.ensure_future(engine.start())
                await asyncio.sleep(1.0)  # several probes, each failed
                assert not starting.done() and not engine.pool.workers[0].healthy
                worker.fixed = True
                await asyncio.wait_for(starting, timeout=10)  # still watched: taken up at last
                assert (await engine.complete([0, 1], PLAIN)).token_ids == [1]
            finally:
                await engine.close()

    asyncio.run(run())


# --- 3. /metrics names workers by index ---------------------------------------------------------


def test_metrics_label_workers_by_index_not_url() -> None:
    urls = ["http://admin:s3cret@10.9.8.7:8001/", "http://worker-1.internal:8001"]
    pool = WorkerPool(urls, affinity_slots=4)
    for worker in pool.workers:
        worker.mark_up()
        worker.prefix_cache_hit_ratio = 0.5
    registry = CollectorRegistry()
    registry.register(WorkerPoolCollector(pool.snapshot))
    text = generate_latest(registry).decode()
    assert 'powerserve_worker_up{worker="0"} 1.0' in text
    assert 'powerserve_worker_up{worker="1"} 1.0' in text
    for leak in ("10.9.8.7", "s3cret", "internal", "8001", "http"):
        assert leak not in text


def test_the_start_up_log_says_which_index_is_which_url_without_credentials(
    tiny_model_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    workers = [Worker({"tiny"}), Worker({"tiny"})]
    seen: dict[str, Any] = {}

    async def body(engine: RemoteEngine) -> None:
        seen["urls"] = [w.url for w in engine.pool.workers]

    async def run() -> None:
        async with running(*workers):
            for worker in workers:  # credentials in the configured URL
                worker.url = worker.url.replace("http://", "http://admin:s3cret@")
            engine = remote_engine(tiny_model_dir, *workers)
            try:
                await asyncio.wait_for(engine.start(), timeout=30)
                await body(engine)
            finally:
                await engine.close()

    with caplog.at_level(logging.INFO, logger="service.engines.remote"):
        asyncio.run(run())
    mapping = [r.getMessage() for r in caplog.records if "remote engine workers" in r.getMessage()]
    assert len(mapping) == 1
    for index, url in enumerate(seen["urls"]):
        assert f"{index} = {url.replace('admin:s3cret@', '')}" in mapping[0]
    assert "s3cret" not in caplog.text
