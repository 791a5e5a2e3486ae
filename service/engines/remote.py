"""The remote engine: a pool of stock vLLM OpenAI servers (``powerserve worker`` or any ``vllm serve``).

Requests carry token-id prompts and ask for raw log-probs with token ids (``return_tokens_as_token_ids``,
``return_token_ids``), so every route, the power sampler included, works as on the local engine.

Routing: requests with an ``affinity`` (the steps of one MCMC chain) stick to one worker, whose prefix
cache holds the chain's prefix; everything else, and every new chain, goes to the least-loaded healthy
worker.

Faults: an active health check polls every worker, backing off while one is down. A request that fails
on a worker (connection lost, server error, stall) marks it down and is retried on another; a stream
resumes from the tokens it already has, and an MCMC proposal simply re-runs from the chain's last
accepted state, so the client's request still succeeds. With no healthy worker the engine raises
``EngineUnavailableError`` at once (a 503 with Retry-After), never waits.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from service.engines.base import Engine, EngineInfo, Generated, SamplingOptions
from service.errors import EngineError, EngineUnavailableError, InvalidRequestError
from service.metrics import (
    WORKER_FAILURES,
    WORKER_IN_FLIGHT,
    WORKER_PREFIX_CACHE_HIT_RATIO,
    WORKER_REQUESTS,
    WORKER_UP,
)
from service.model_store import eos_token_ids

__all__ = ["RemoteEngine", "WorkerState"]

logger = logging.getLogger(__name__)

_TOKEN_PREFIX = "token_id:"


class _WorkerFailed(Exception):
    """This worker could not serve the request; another may."""


@dataclass(eq=False)
class WorkerState:
    url: str
    healthy: bool = False
    in_flight: int = 0
    max_model_len: int | None = None
    backoff_s: float = 0.0
    next_check: float = 0.0
    # Set while the worker is down: requests waiting on it give up and go elsewhere.
    down: asyncio.Event = field(default_factory=asyncio.Event)


class RemoteEngine(Engine):
    def __init__(
        self,
        worker_urls: Sequence[str],
        *,
        model_dir: Path,
        model_id: str,
        adapters: Sequence[str] = (),
        health_interval_s: float = 2.0,
        max_backoff_s: float = 30.0,
        request_timeout_s: float = 60.0,
        timeout_per_token_s: float = 0.5,
        affinity_slots: int = 65536,
    ):
        if not worker_urls:
            raise ValueError("RemoteEngine needs at least one worker URL")
        self.workers = [WorkerState(url.rstrip("/")) for url in worker_urls]
        self.model_dir = Path(model_dir)
        self._model_id = model_id
        self._adapters = tuple(adapters)
        self._health_interval_s = health_interval_s
        self._max_backoff_s = max_backoff_s
        self._request_timeout_s = request_timeout_s
        self._timeout_per_token_s = timeout_per_token_s
        self._affinity: OrderedDict[str, WorkerState] = OrderedDict()
        self._affinity_slots = affinity_slots
        self._client: httpx.AsyncClient | None = None
        self._monitor: asyncio.Task[None] | None = None
        for worker in self.workers:
            worker.down.set()

    # --- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(self._request_timeout_s, connect=2.0),
            limits=httpx.Limits(max_connections=4096, max_keepalive_connections=1024),
        )
        self._monitor = asyncio.create_task(self._watch_workers())
        while not any(worker.healthy for worker in self.workers):
            await asyncio.sleep(0.5)  # bounded by the caller's start timeout
        lengths = [w.max_model_len for w in self.workers if w.max_model_len is not None]
        self.info = EngineInfo(
            model_id=self._model_id,
            max_model_len=min(lengths),
            vocab_size=_vocab_size(self.model_dir),
            eos_token_ids=eos_token_ids(self.model_dir, _tokenizer_eos(self.model_dir)),
            adapters=self._adapters,
        )
        logger.info(
            "remote engine ready: %d/%d workers healthy (%s)",
            sum(w.healthy for w in self.workers),
            len(self.workers),
            ", ".join(w.url for w in self.workers),
        )

    async def close(self) -> None:
        if self._monitor is not None:
            self._monitor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._monitor
        if self._client is not None:
            await self._client.aclose()

    async def check_health(self) -> None:
        if not any(worker.healthy for worker in self.workers):
            raise EngineUnavailableError("No healthy vLLM worker.", retry_after=self._retry_after())

    def num_running_requests(self) -> int:
        return sum(worker.in_flight for worker in self.workers)

    # --- health --------------------------------------------------------------------------------

    async def _watch_workers(self) -> None:
        while True:
            now = time.monotonic()
            due = [w for w in self.workers if w.next_check <= now]
            await asyncio.gather(*(self._check(worker) for worker in due))
            await asyncio.sleep(min(0.5, self._health_interval_s))

    async def _check(self, worker: WorkerState) -> None:
        assert self._client is not None
        try:
            response = await self._client.get(f"{worker.url}/health", timeout=2.0)
            response.raise_for_status()
            if worker.max_model_len is None:
                models = (await self._client.get(f"{worker.url}/v1/models", timeout=5.0)).json()
                worker.max_model_len = int(models["data"][0]["max_model_len"])
            await self._scrape_prefix_cache(worker)
        except (httpx.HTTPError, KeyError, ValueError) as exc:
            self._mark_down(worker, f"health check failed: {exc!r}")
            return
        if not worker.healthy:
            logger.info("worker %s is healthy", worker.url)
        if worker.down.is_set():
            worker.down = asyncio.Event()  # a fresh, unset event for the requests to come
        worker.healthy, worker.backoff_s = True, 0.0
        worker.next_check = time.monotonic() + self._health_interval_s
        WORKER_UP.labels(worker.url).set(1)

    def _mark_down(self, worker: WorkerState, reason: str) -> None:
        if worker.healthy:
            logger.warning(
                "worker %s is down (%s); its requests move to other workers", worker.url, reason
            )
            WORKER_FAILURES.labels(worker.url).inc()
        worker.healthy = False
        worker.down.set()
        # Back off: check a dead worker less and less often, up to max_backoff_s.
        worker.backoff_s = min(self._max_backoff_s, max(1.0, 2 * worker.backoff_s))
        worker.next_check = time.monotonic() + worker.backoff_s
        WORKER_UP.labels(worker.url).set(0)

    async def _scrape_prefix_cache(self, worker: WorkerState) -> None:
        assert self._client is not None
        text = (await self._client.get(f"{worker.url}/metrics", timeout=2.0)).text
        hits = queries = 0.0
        for line in text.splitlines():
            if line.startswith("vllm:prefix_cache_hits_total"):
                hits += float(line.rsplit(" ", 1)[1])
            elif line.startswith("vllm:prefix_cache_queries_total"):
                queries += float(line.rsplit(" ", 1)[1])
        if queries:
            WORKER_PREFIX_CACHE_HIT_RATIO.labels(worker.url).set(hits / queries)

    def _retry_after(self) -> float:
        now = time.monotonic()
        return max(1.0, min(w.next_check for w in self.workers) - now)

    # --- routing -------------------------------------------------------------------------------

    def _pick(self, affinity: str | None) -> WorkerState:
        if (
            affinity is not None
            and (worker := self._affinity.get(affinity)) is not None
            and worker.healthy
        ):
            self._affinity.move_to_end(affinity)
            return worker
        healthy = [w for w in self.workers if w.healthy]
        if not healthy:
            raise EngineUnavailableError("No healthy vLLM worker.", retry_after=self._retry_after())
        least = min(w.in_flight for w in healthy)
        worker = random.choice([w for w in healthy if w.in_flight == least])
        if affinity is not None:
            self._affinity[affinity] = worker
            if len(self._affinity) > self._affinity_slots:
                self._affinity.popitem(last=False)  # chains long finished
        return worker

    # --- generation ----------------------------------------------------------------------------

    async def generate(
        self,
        prompt_ids: Sequence[int],
        options: SamplingOptions,
        *,
        request_id: str | None = None,
        stream: bool = False,
        affinity: str | None = None,
    ) -> AsyncIterator[Generated]:
        prompt = list(prompt_ids)
        produced = Generated()
        for _ in range(len(self.workers) + 1):
            worker = self._pick(affinity)
            remaining = options.max_tokens - len(produced.token_ids)
            if remaining <= 0:
                return
            body = self._body(prompt + produced.token_ids, options, remaining, stream=stream)
            try:
                async for part in self._call(worker, body, stream=stream, max_tokens=remaining):
                    produced.extend(part)
                    yield part
                return
            except _WorkerFailed as exc:
                self._mark_down(worker, str(exc))
                # Go on elsewhere from what we have: a stream keeps its tokens, a proposal restarts.
                if produced.finish_reason is not None:
                    return
        raise EngineUnavailableError(
            "Every vLLM worker failed this request.", retry_after=self._retry_after()
        )

    async def score(
        self, token_ids: Sequence[int], start: int, *, adapter: str | None = None
    ) -> list[float]:
        body = {
            "model": adapter or self._model_id,
            "prompt": list(token_ids),
            "max_tokens": 1,
            "temperature": 0.0,
            "prompt_logprobs": 0,
        }
        for _ in range(len(self.workers) + 1):
            worker = self._pick(None)
            try:
                result = await self._post(worker, body, max_tokens=1)
                rows = result["choices"][0]["prompt_logprobs"]
                return [
                    float(rows[t][str(token_ids[t])]["logprob"])
                    for t in range(max(start, 1), len(token_ids))
                ]
            except _WorkerFailed as exc:
                self._mark_down(worker, str(exc))
        raise EngineUnavailableError(
            "Every vLLM worker failed this request.", retry_after=self._retry_after()
        )

    def _body(
        self, prompt: list[int], options: SamplingOptions, max_tokens: int, *, stream: bool
    ) -> dict:
        if options.adapter is not None and options.adapter not in self._adapters:
            raise InvalidRequestError(f"Unknown adapter {options.adapter!r}.", param="model")
        return {
            "model": options.adapter or self._model_id,
            "prompt": prompt,
            "max_tokens": max_tokens,
            # Every sampling parameter explicit: the workers apply no defaults of their own.
            "temperature": options.temperature,
            "top_p": options.top_p,
            "top_k": 0,
            "min_p": 0.0,
            "repetition_penalty": 1.0,
            "presence_penalty": options.presence_penalty,
            "frequency_penalty": options.frequency_penalty,
            "stop": list(options.stop) or None,
            "seed": options.seed,
            "logprobs": options.top_logprobs,
            "return_tokens_as_token_ids": True,
            "return_token_ids": True,
            "skip_special_tokens": True,
            "stream": stream,
        }

    async def _call(
        self, worker: WorkerState, body: dict, *, stream: bool, max_tokens: int
    ) -> AsyncIterator[Generated]:
        if not stream:
            yield _to_generated(await self._post(worker, body, max_tokens=max_tokens))
            return
        assert self._client is not None
        try:
            with _busy(worker):
                async with self._client.stream(
                    "POST", f"{worker.url}/v1/completions", json=body
                ) as response:
                    await _raise_for_status(response)
                    lines = response.aiter_lines()
                    while (line := await _until_down(worker, lines.__anext__())) is not None:
                        if line.startswith("data: ") and line != "data: [DONE]":
                            yield _to_generated(json.loads(line.removeprefix("data: ")))
                    if worker.down.is_set():
                        raise _WorkerFailed("worker went down during the stream")
        except (httpx.TransportError, httpx.StreamError) as exc:
            raise _WorkerFailed(f"stream failed: {exc!r}") from exc

    async def _post(self, worker: WorkerState, body: dict, *, max_tokens: int) -> dict[str, Any]:
        assert self._client is not None
        # A timeout that grows with the answer: past it the worker has stalled.
        timeout = self._request_timeout_s + self._timeout_per_token_s * max_tokens
        try:
            with _busy(worker):
                request = self._client.post(f"{worker.url}/v1/completions", json=body, timeout=timeout)
                response = await _until_down(worker, request)
            if response is None:
                raise _WorkerFailed("worker went down during the request")
            await _raise_for_status(response)
            return dict(response.json())
        except httpx.TransportError as exc:  # connection refused or lost, timeout: a stalled worker
            raise _WorkerFailed(f"request failed: {exc!r}") from exc


@contextlib.contextmanager
def _busy(worker: WorkerState) -> Iterator[None]:
    """Count a request against the worker's load while it runs."""
    worker.in_flight += 1
    WORKER_IN_FLIGHT.labels(worker.url).inc()
    WORKER_REQUESTS.labels(worker.url).inc()
    try:
        yield
    finally:
        worker.in_flight -= 1
        WORKER_IN_FLIGHT.labels(worker.url).dec()


async def _until_down(worker: WorkerState, awaitable: Any) -> Any:
    """Await ``awaitable`` unless the worker is marked down first (then None); an iterator's end
    (StopAsyncIteration) also gives None."""
    task = asyncio.ensure_future(awaitable)
    down = asyncio.ensure_future(worker.down.wait())
    try:
        await asyncio.wait({task, down}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        down.cancel()
    if not task.done():
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        return None
    try:
        return task.result()
    except StopAsyncIteration:
        return None


async def _raise_for_status(response: httpx.Response) -> None:
    if response.status_code < 400:
        return
    await response.aread()
    message = response.text[:500]
    if response.status_code in (400, 404, 422):
        raise InvalidRequestError(f"The worker refused the request: {message}")
    if response.status_code >= 500:
        raise _WorkerFailed(f"HTTP {response.status_code}: {message}")
    raise EngineError(f"The worker answered HTTP {response.status_code}: {message}")


def _token_id(key: str) -> int:
    return int(key.removeprefix(_TOKEN_PREFIX))


def _to_generated(result: dict[str, Any]) -> Generated:
    """A vLLM completion (or stream chunk) as the engine contract's ``Generated``."""
    choice = result["choices"][0]
    logprobs = choice.get("logprobs") or {}
    token_ids = choice.get("token_ids") or [_token_id(t) for t in logprobs.get("tokens", [])]
    tops = logprobs.get("top_logprobs") or []
    return Generated(
        token_ids=list(token_ids),
        logprobs=[float(lp) for lp in logprobs.get("token_logprobs", [])],
        top_logprobs=[{_token_id(t): float(lp) for t, lp in (top or {}).items()} for top in tops],
        text=choice.get("text") or "",
        finish_reason=choice.get("finish_reason"),
    )


def _vocab_size(model_dir: Path) -> int:
    return int(json.loads((model_dir / "config.json").read_text())["vocab_size"])


def _tokenizer_eos(model_dir: Path) -> int | None:
    from transformers import AutoTokenizer

    eos = AutoTokenizer.from_pretrained(str(model_dir)).eos_token_id
    return None if eos is None else int(eos)
