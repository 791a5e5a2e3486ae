"""The remote engine: a pool of stock vLLM OpenAI servers (``powerserve worker`` or any ``vllm serve``).

Requests carry token-id prompts and ask for raw log-probs with token ids (``return_tokens_as_token_ids``,
``return_token_ids``), so every route, the power sampler included, works as on the local engine.

Routing: requests with an ``affinity`` (the steps of one MCMC chain) stick to one worker, whose prefix
cache holds the chain's prefix; everything else, and every new chain, goes to the least-loaded healthy
worker.

Faults: an active health check polls every worker, backing off while one is down; it is the judge of
health. A failed probe marks a worker down, except one that merely timed out while the worker kept
answering requests: a saturated worker on a small machine answers its probe late yet is alive. Only a
refused connection marks a worker down from a request. Any other failed request (connection lost,
server error, timeout) moves to another worker; a stream resumes from the tokens it already has, and an
MCMC proposal simply re-runs from the chain's last accepted state, so the client's request still
succeeds. A worker marked down releases its in-flight requests at once, and they move too. With no
healthy worker the engine raises ``EngineUnavailableError`` at once (a 503 with Retry-After).

The HTTP client is aiohttp: every MCMC proposal is a request, hundreds in flight at once, and httpx's
connection pool costs CPU that grows with the connections in use (encode/httpx#3215).
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

import aiohttp

from service.engines.base import Engine, EngineInfo, Generated, SamplingOptions
from service.errors import EngineError, EngineUnavailableError, InvalidRequestError
from service.metrics.registry import (
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
    """This worker could not serve the request; another may. ``refused``: nothing listens there."""

    def __init__(self, reason: str, *, refused: bool = False):
        super().__init__(reason)
        self.refused = refused


@dataclass(eq=False)
class WorkerState:
    url: str
    healthy: bool = False
    in_flight: int = 0
    max_model_len: int | None = None
    backoff_s: float = 0.0
    next_check: float = 0.0
    # When the worker last answered anything, and how many probes in a row timed out since.
    last_progress: float = 0.0
    late_probes: int = 0
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
        probe_timeout_s: float = 5.0,
        stall_probes: int = 2,
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
        self._probe_timeout_s = probe_timeout_s
        self._stall_probes = stall_probes
        self._max_backoff_s = max_backoff_s
        self._request_timeout_s = request_timeout_s
        self._timeout_per_token_s = timeout_per_token_s
        self._affinity: OrderedDict[str, WorkerState] = OrderedDict()
        self._affinity_slots = affinity_slots
        self._client: aiohttp.ClientSession | None = None
        self._monitor: asyncio.Task[None] | None = None
        for worker in self.workers:
            worker.down.set()

    # --- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        self._client = aiohttp.ClientSession(
            # Idle connections expire before the workers' (uvicorn: 5 s) so none is reused as it closes.
            connector=aiohttp.TCPConnector(limit=4096, keepalive_timeout=2.0),
            timeout=aiohttp.ClientTimeout(sock_connect=2.0, sock_read=self._request_timeout_s),
            read_bufsize=1 << 20,  # a streamed event is one line, whatever its top log-probs
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
            await self._client.close()

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
        probe_began = time.monotonic()
        try:
            await self._get(f"{worker.url}/health")
            if worker.max_model_len is None:
                models = json.loads(await self._get(f"{worker.url}/v1/models"))
                worker.max_model_len = int(models["data"][0]["max_model_len"])
        except TimeoutError as exc:
            if worker.healthy and not self._stalled(worker, since=probe_began):
                worker.next_check = time.monotonic() + self._health_interval_s
                return  # late but alive: it answered requests meanwhile, or may yet
            self._mark_down(worker, f"health check timed out: {exc!r}")
            return
        except (aiohttp.ClientError, KeyError, ValueError) as exc:
            self._mark_down(worker, f"health check failed: {exc!r}")
            return
        if not worker.healthy:
            logger.info("worker %s is healthy", worker.url)
        if worker.down.is_set():
            worker.down = asyncio.Event()  # a fresh, unset event for the requests to come
        worker.healthy, worker.backoff_s, worker.late_probes = True, 0.0, 0
        worker.next_check = time.monotonic() + self._health_interval_s
        WORKER_UP.labels(worker.url).set(1)
        with contextlib.suppress(aiohttp.ClientError, TimeoutError, ValueError):  # a metric only
            await self._scrape_prefix_cache(worker)

    async def _get(self, url: str) -> bytes:
        assert self._client is not None
        timeout = aiohttp.ClientTimeout(total=self._probe_timeout_s)
        async with self._client.get(url, timeout=timeout) as response:
            response.raise_for_status()
            return await response.read()

    def _stalled(self, worker: WorkerState, *, since: float) -> bool:
        """A timed-out probe counts against a worker only if nothing came back from it meanwhile."""
        if worker.last_progress >= since:
            worker.late_probes = 0
            return False
        worker.late_probes += 1
        return worker.late_probes >= self._stall_probes

    def _mark_down(self, worker: WorkerState, reason: str) -> None:
        if worker.healthy:
            logger.warning(
                "worker %s is down (%s); its requests move to other workers", worker.url, reason
            )
            WORKER_FAILURES.labels(worker.url).inc()
        worker.healthy, worker.late_probes = False, 0
        worker.down.set()
        # Back off: check a dead worker less and less often, up to max_backoff_s.
        worker.backoff_s = min(self._max_backoff_s, max(1.0, 2 * worker.backoff_s))
        worker.next_check = time.monotonic() + worker.backoff_s
        WORKER_UP.labels(worker.url).set(0)

    async def _scrape_prefix_cache(self, worker: WorkerState) -> None:
        text = (await self._get(f"{worker.url}/metrics")).decode()
        hits = queries = 0.0
        for line in text.splitlines():
            if line.startswith("vllm:prefix_cache_hits_total"):
                hits += float(line.rsplit(" ", 1)[1])
            elif line.startswith("vllm:prefix_cache_queries_total"):
                queries += float(line.rsplit(" ", 1)[1])
        if queries:
            WORKER_PREFIX_CACHE_HIT_RATIO.labels(worker.url).set(hits / queries)

    def _failed(self, worker: WorkerState, exc: _WorkerFailed) -> None:
        if exc.refused:
            self._mark_down(worker, str(exc))
        else:
            logger.info("request moves off worker %s: %s", worker.url, exc)

    def _retry_after(self) -> float:
        now = time.monotonic()
        return max(1.0, min(w.next_check for w in self.workers) - now)

    # --- routing -------------------------------------------------------------------------------

    def _pick(self, affinity: str | None, avoid: Sequence[WorkerState] = ()) -> WorkerState:
        """The affinity's worker if it is healthy, else the least-loaded healthy worker, preferring
        those this request has not failed on yet."""
        if (
            affinity is not None
            and (worker := self._affinity.get(affinity)) is not None
            and worker.healthy
            and worker not in avoid
        ):
            self._affinity.move_to_end(affinity)
            return worker
        healthy = [w for w in self.workers if w.healthy]
        if not healthy:
            raise EngineUnavailableError("No healthy vLLM worker.", retry_after=self._retry_after())
        healthy = [w for w in healthy if w not in avoid] or healthy
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
        failed: list[WorkerState] = []
        for _ in range(len(self.workers) + 1):
            worker = self._pick(affinity, failed)
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
                self._failed(worker, exc)
                failed.append(worker)
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
        failed: list[WorkerState] = []
        for _ in range(len(self.workers) + 1):
            worker = self._pick(None, failed)
            try:
                result = await self._post(worker, body, max_tokens=1)
                rows = result["choices"][0]["prompt_logprobs"]
                return [
                    float(rows[t][str(token_ids[t])]["logprob"])
                    for t in range(max(start, 1), len(token_ids))
                ]
            except _WorkerFailed as exc:
                self._failed(worker, exc)
                failed.append(worker)
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
                async with self._client.post(f"{worker.url}/v1/completions", json=body) as response:
                    await _raise_for_status(response)
                    while line := await _until_down(worker, response.content.readline()):
                        worker.last_progress = time.monotonic()
                        event = line.decode().strip()
                        if event.startswith("data: ") and event != "data: [DONE]":
                            yield _to_generated(json.loads(event.removeprefix("data: ")))
                    if worker.down.is_set():
                        raise _WorkerFailed("worker went down during the stream")
        except aiohttp.ClientConnectorError as exc:
            raise _WorkerFailed(f"connection refused: {exc!r}", refused=True) from exc
        except (aiohttp.ClientError, TimeoutError) as exc:  # connection lost, a stalled stream
            raise _WorkerFailed(f"stream failed: {exc!r}") from exc

    async def _post(self, worker: WorkerState, body: dict, *, max_tokens: int) -> dict[str, Any]:
        # A timeout that grows with the answer: past it the request gives up on this worker.
        timeout = self._request_timeout_s + self._timeout_per_token_s * max_tokens
        try:
            with _busy(worker):
                result = await _until_down(worker, self._fetch(worker, body, timeout))
            if result is None:
                raise _WorkerFailed("worker went down during the request")
            worker.last_progress = time.monotonic()
            return result
        except aiohttp.ClientConnectorError as exc:
            raise _WorkerFailed(f"connection refused: {exc!r}", refused=True) from exc
        except (aiohttp.ClientError, TimeoutError) as exc:  # connection lost, a stalled worker
            raise _WorkerFailed(f"request failed: {exc!r}") from exc

    async def _fetch(self, worker: WorkerState, body: dict, timeout: float) -> dict[str, Any]:
        assert self._client is not None
        async with self._client.post(
            f"{worker.url}/v1/completions",
            json=body,
            timeout=aiohttp.ClientTimeout(total=timeout, sock_connect=2.0),
        ) as response:
            await _raise_for_status(response)
            return dict(json.loads(await response.read()))


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
    """Await ``awaitable`` unless the worker is marked down first (then None)."""
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
    return task.result()


async def _raise_for_status(response: aiohttp.ClientResponse) -> None:
    if response.status < 400:
        return
    message = (await response.text())[:500]
    if response.status in (400, 404, 422):
        raise InvalidRequestError(f"The worker refused the request: {message}")
    if response.status >= 500:
        raise _WorkerFailed(f"HTTP {response.status}: {message}")
    raise EngineError(f"The worker answered HTTP {response.status}: {message}")


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
