"""The remote engine's failover, against small HTTP servers on 127.0.0.1 that answer as vLLM's OpenAI
server does: a worker that lacks the model asked for (404) passes the request on to one that has it,
and only when no worker has it does the request fail, as an engine error; a server error moves the
request too; a worker failing its probes is marked down, then taken back."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from service.config import Settings
from service.engines.base import SamplingOptions
from service.engines.remote import RemoteEngine
from service.errors import EngineError, InvalidRequestError

ADAPTER = "distilled"


class Worker:
    """A worker serving ``models``: health, model list and non-streamed or streamed completions."""

    def __init__(self, models: Collection[str], *, status: int = 200):
        self.models = set(models)
        self.status = status  # of every completion of a model it has
        self.healthy = True
        self.completions: list[dict[str, Any]] = []
        self.url = ""

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/health", self.health)
        app.router.add_get("/v1/models", self.list_models)
        app.router.add_post("/v1/completions", self.complete)
        return app

    async def health(self, _: web.Request) -> web.Response:
        return web.Response(status=200 if self.healthy else 500)

    async def list_models(self, _: web.Request) -> web.Response:
        return web.json_response({"data": [{"id": m, "max_model_len": 64} for m in sorted(self.models)]})

    async def complete(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.completions.append(body)
        if body["model"] not in self.models:  # vLLM's answer for a model or adapter it lacks
            error = {"message": f"The model `{body['model']}` does not exist.", "code": 404}
            return web.json_response({"error": error}, status=404)
        if self.status != 200:
            error = {"message": f"failed with {self.status}", "code": self.status}
            return web.json_response({"error": error}, status=self.status)
        if "prompt_logprobs" in body:
            rows = [None] + [{str(t): {"logprob": -0.5}} for t in body["prompt"][1:]]
            return web.json_response({"choices": [{"text": "", "prompt_logprobs": rows}]})
        choice = {
            "text": "b",
            "token_ids": [1],
            "finish_reason": "length",
            "logprobs": {"tokens": ["token_id:1"], "token_logprobs": [-0.25], "top_logprobs": None},
        }
        if not body["stream"]:
            return web.json_response({"choices": [choice]})
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(f"data: {json.dumps({'choices': [choice]})}\n\n".encode())
        await response.write(b"data: [DONE]\n\n")
        return response


@asynccontextmanager
async def running(*workers: Worker) -> AsyncIterator[None]:
    runners = []
    try:
        for worker in workers:
            runner = web.AppRunner(worker.app())
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            port = runner.addresses[0][1]
            worker.url = f"http://127.0.0.1:{port}"
            runners.append(runner)
        yield
    finally:
        for runner in runners:
            await runner.cleanup()


def remote_engine(model_dir: Path, *workers: Worker) -> RemoteEngine:
    settings = Settings()
    return RemoteEngine(
        [w.url for w in workers],
        model_dir=model_dir,
        model_id="tiny",
        adapters=(ADAPTER,),
        health_interval_s=0.2,
        probe_timeout_s=settings.worker_probe_timeout_s,
        stall_probes=settings.worker_stall_probes,
        backoff_initial_s=0.1,
        backoff_max_s=settings.worker_backoff_max_s,
        request_timeout_s=settings.worker_timeout_s,
        timeout_per_token_s=settings.worker_timeout_per_token_s,
    )


def with_engine(
    model_dir: Path, workers: list[Worker], body: Callable[[RemoteEngine], Awaitable[None]]
) -> None:
    async def run() -> None:
        async with running(*workers):
            engine = remote_engine(model_dir, *workers)
            try:
                await asyncio.wait_for(engine.start(), timeout=30)
                await asyncio.wait_for(body(engine), timeout=60)
            finally:
                await engine.close()

    asyncio.run(run())


OPTIONS = SamplingOptions(max_tokens=1, adapter=ADAPTER)


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_a_404_moves_the_request_to_a_worker_that_has_the_adapter(
    tiny_model_dir: Path, stream: bool
) -> None:
    lacking, having = Worker({"tiny"}), Worker({"tiny", ADAPTER})

    async def body(engine: RemoteEngine) -> None:
        # Until the lacking worker has been asked at least once (each request picks at random).
        for _ in range(30):
            parts = [part async for part in engine.generate([0, 1], OPTIONS, stream=stream)]
            assert [p.token_ids for p in parts if p.token_ids] == [[1]]
            if lacking.completions:
                break
        assert lacking.completions, "the lacking worker was never tried"
        assert all(w.healthy for w in engine.pool.workers)  # a 404 is no fault of the worker
        assert engine.num_running_requests() == 0

    with_engine(tiny_model_dir, [lacking, having], body)
    assert len(having.completions) >= len(lacking.completions)


def test_score_moves_on_a_404_too(tiny_model_dir: Path) -> None:
    lacking, having = Worker({"tiny"}), Worker({"tiny", ADAPTER})

    async def body(engine: RemoteEngine) -> None:
        for _ in range(30):
            assert await engine.score([0, 1, 2], 1, adapter=ADAPTER) == [-0.5, -0.5]
            if lacking.completions:
                break
        assert lacking.completions

    with_engine(tiny_model_dir, [lacking, having], body)


def test_when_no_worker_has_the_adapter_the_request_fails_as_an_engine_error(
    tiny_model_dir: Path,
) -> None:
    workers = [Worker({"tiny"}), Worker({"tiny"})]

    async def body(engine: RemoteEngine) -> None:
        with pytest.raises(EngineError, match="No worker serves the model asked for"):
            await engine.complete([0, 1], OPTIONS)
        assert [len(w.completions) for w in workers] == [1, 1]  # each asked once, none twice
        assert (await engine.complete([0, 1], SamplingOptions(max_tokens=1))).token_ids == [1]

    with_engine(tiny_model_dir, workers, body)


def test_a_400_is_the_clients_and_is_not_retried(tiny_model_dir: Path) -> None:
    workers = [Worker({"tiny"}, status=400), Worker({"tiny"}, status=400)]

    async def body(engine: RemoteEngine) -> None:
        with pytest.raises(InvalidRequestError, match="failed with 400"):
            await engine.complete([0, 1], SamplingOptions(max_tokens=1))
        assert sum(len(w.completions) for w in workers) == 1

    with_engine(tiny_model_dir, workers, body)


def test_a_server_error_moves_the_request_and_leaves_the_worker_up(tiny_model_dir: Path) -> None:
    failing, working = Worker({"tiny"}, status=500), Worker({"tiny"})

    async def body(engine: RemoteEngine) -> None:
        for _ in range(30):
            assert (await engine.complete([0, 1], SamplingOptions(max_tokens=1))).token_ids == [1]
            if failing.completions:
                break
        assert failing.completions
        assert all(w.healthy for w in engine.pool.workers)  # only the health check marks it down

    with_engine(tiny_model_dir, [failing, working], body)


async def until(condition: Callable[[], bool]) -> None:
    while not condition():
        await asyncio.sleep(0.05)


def test_a_worker_failing_its_probe_is_marked_down_avoided_and_taken_back(
    tiny_model_dir: Path,
) -> None:
    sick, well = Worker({"tiny"}), Worker({"tiny"})

    async def body(engine: RemoteEngine) -> None:
        state = engine.pool.workers[0]
        sick.healthy = False
        await until(lambda: not state.healthy)
        assert state.failures == 1 and state.down.is_set()
        for _ in range(10):
            await engine.complete([0, 1], SamplingOptions(max_tokens=1))
        assert not sick.completions and len(well.completions) == 10
        sick.healthy = True
        await until(lambda: state.healthy)
        assert [s.up for s in engine.worker_snapshot()] == [True, True]
        assert [s.requests for s in engine.worker_snapshot()] == [0, 10]

    with_engine(tiny_model_dir, [sick, well], body)
