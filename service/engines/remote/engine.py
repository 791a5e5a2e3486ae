"""The remote engine: a pool of stock vLLM OpenAI servers (``powerserve worker`` or any ``vllm serve``).

Faults: an active health check polls every worker, backing off while one is down; it is the judge of
health. A failed probe marks a worker down, except one that merely timed out while the worker kept
answering requests: a saturated worker on a small machine answers its probe late yet is alive. From a
request, a refused connection marks a worker down, and so does an answer that is not vLLM's (not JSON,
JSON of another shape: a proxy's error page, a truncated body); it is taken back when its probes pass.
Any other failed request (connection lost, server error, a refusal that is the worker's such as 401 or
429, timeout) moves to another worker; a stream resumes from the tokens it already has, and an MCMC
proposal simply re-runs from the chain's last accepted state, so the client's request still succeeds.
A worker marked down releases its in-flight requests at once, and they move too. A worker that answers
404 lacks the model or adapter asked for: the request moves to another worker, and only when no healthy
worker has it does it fail (``EngineError``). With no healthy worker, or when every worker failed the
request, the engine raises ``EngineUnavailableError`` (a 503 with Retry-After).

Adapters added at run time (a fine-tuning job's model, ``add_adapter``) are loaded into every
healthy worker through vLLM's /v1/load_lora_adapter from a path the workers share with the gateway;
after every passed probe a worker's /v1/models is compared with them and what it lacks is loaded, so
a worker that restarts, or was down when the job ended, serves them again. Until then it answers 404
for them and their requests go to a worker that has them.

Clients read none of a worker's words but a refusal that is their request's fault (client.py): a
failure's details (the worker's body, its URL) go to the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import aiohttp

from service.engines.base import Engine, EngineInfo, Generated, SamplingOptions
from service.engines.remote import wire
from service.engines.remote.client import (
    WorkerAnswerInvalid,
    WorkerCannotServe,
    WorkerClient,
    WorkerFailed,
    WorkerRefused,
)
from service.engines.remote.health import HealthMonitor
from service.engines.remote.pool import WorkerPool, WorkerSnapshot, WorkerState, loggable_url
from service.errors import EngineError, EngineUnavailableError, InvalidRequestError
from service.model_store import eos_token_ids

__all__ = ["RemoteEngine"]

logger = logging.getLogger(__name__)

_T = TypeVar("_T")
_R = TypeVar("_R")


class RemoteEngine(Engine):
    def __init__(
        self,
        worker_urls: Sequence[str],
        *,
        model_dir: Path,
        model_id: str,
        adapters: Sequence[str] = (),
        adds_adapters: bool = False,
        health_interval_s: float,
        probe_timeout_s: float,
        stall_probes: int,
        backoff_initial_s: float,
        backoff_max_s: float,
        request_timeout_s: float,
        timeout_per_token_s: float,
        affinity_slots: int = 65536,
    ):
        self.pool = WorkerPool(worker_urls, affinity_slots=affinity_slots)
        self.model_dir = Path(model_dir)
        self._model_id = model_id
        self._adapters = tuple(adapters)
        self._adds_adapters = adds_adapters
        # Adapters added while the engine runs (fine-tuned models), name -> path where the workers
        # read it: loaded into every worker, and into one that (re)starts later by its health probe.
        self._added: dict[str, Path] = {}
        self._probe_timeout_s = probe_timeout_s
        self._request_timeout_s = request_timeout_s
        self._timeout_per_token_s = timeout_per_token_s
        self._client = WorkerClient(request_timeout_s=request_timeout_s)
        self._monitor = HealthMonitor(
            self.pool.workers,
            self._client,
            interval_s=health_interval_s,
            probe_timeout_s=probe_timeout_s,
            stall_probes=stall_probes,
            backoff_initial_s=backoff_initial_s,
            backoff_max_s=backoff_max_s,
            on_up=self._load_missing_adapters,
        )

    # --- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        # The one place that says which worker is which: elsewhere (metrics, errors) only the index.
        logger.info(
            "remote engine workers: %s",
            ", ".join(f"{w.index} = {loggable_url(w.url)}" for w in self.pool.workers),
        )
        self._client.start()
        self._monitor.start()
        while not self.pool.healthy():
            await asyncio.sleep(0.5)  # bounded by the caller's start timeout
        lengths = [w.max_model_len for w in self.pool.workers if w.max_model_len is not None]
        self.info = EngineInfo(
            model_id=self._model_id,
            max_model_len=min(lengths),
            vocab_size=_vocab_size(self.model_dir),
            eos_token_ids=eos_token_ids(self.model_dir, _tokenizer_eos(self.model_dir)),
            adapters=self._adapters,
        )
        logger.info(
            "remote engine ready: %d/%d workers healthy (%s)",
            len(self.pool.healthy()),
            len(self.pool.workers),
            ", ".join(str(w.index) for w in self.pool.healthy()),
        )

    async def close(self) -> None:
        await self._monitor.close()
        await self._client.close()

    async def check_health(self) -> None:
        if not self.pool.healthy():
            raise EngineUnavailableError(
                "No worker can serve requests now.", retry_after=self.pool.retry_after()
            )

    def num_running_requests(self) -> int:
        return sum(worker.in_flight for worker in self.pool.workers)

    def worker_snapshot(self) -> list[WorkerSnapshot]:
        """Each worker's health, load and counts now, for the metrics."""
        return self.pool.snapshot()

    # --- adapters added at run time -----------------------------------------------------------

    @property
    def adds_adapters(self) -> bool:
        """The workers were started able to load adapters at run time (``powerserve worker`` with
        fine-tuning on: vLLM's /v1/load_lora_adapter), and read the path the gateway gives."""
        return self._adds_adapters

    async def add_adapter(self, name: str, path: Path) -> None:
        """Load the adapter in ``path`` into every healthy worker as ``name``; workers down now get
        it when they are back. Fails when no worker could load it."""
        if not self._adds_adapters:
            await super().add_adapter(name, path)
        self._added[name] = Path(path)
        loaded = await asyncio.gather(*(self._load_adapter(w, name) for w in self.pool.healthy()))
        if not any(loaded):
            del self._added[name]
            raise EngineError(f"No worker could load the adapter in {path}.")
        if name not in self.info.adapters:
            self.info = replace(self.info, adapters=(*self.info.adapters, name))

    async def _load_adapter(self, worker: WorkerState, name: str) -> bool:
        path = str(self._added[name])
        try:
            status, text = await self._client.post(
                f"{worker.url}/v1/load_lora_adapter",
                wire.load_adapter_body(name, path),
                timeout_s=self._request_timeout_s,
            )
        except (aiohttp.ClientError, TimeoutError) as exc:
            logger.error("worker %d: loading adapter %s failed: %r", worker.index, name, exc)
            return False
        if status == 200 or "already been loaded" in text:
            logger.info("worker %d: serving adapter %s", worker.index, name)
            return True
        logger.error(
            "worker %d: cannot load adapter %s from %s: %d %s",
            *(worker.index, name, path, status, text[:500]),
        )
        return False

    async def _load_missing_adapters(self, worker: WorkerState) -> None:
        """After a passed probe: the added adapters a worker lacks (it restarted, or was down when
        one was added) are loaded into it."""
        if not self._added:
            return
        models = await self._client.get(f"{worker.url}/v1/models", timeout_s=self._probe_timeout_s)
        served = wire.served_models(models)
        for name in [name for name in self._added if name not in served]:
            await self._load_adapter(worker, name)

    # --- requests ------------------------------------------------------------------------------

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
        options = self.within_vocabulary(options)
        model = self._model(options.adapter)
        produced = Generated()

        async def attempt(worker: WorkerState) -> AsyncIterator[Generated]:
            # Go on from what we have: a stream keeps its tokens, a proposal restarts.
            remaining = options.max_tokens - len(produced.token_ids)
            body = wire.completion_body(
                prompt + produced.token_ids, options, model=model, max_tokens=remaining, stream=stream
            )
            if stream:
                # Closed here even when an event is not vLLM's: the request stops counting on it.
                async with contextlib.aclosing(self._client.stream(worker, body)) as events:
                    async for event in events:
                        part = _parsed(wire.to_generated, event)
                        produced.extend(part)
                        yield part
            else:
                result = await self._client.complete(worker, body, timeout_s=self._timeout(remaining))
                part = _parsed(wire.to_generated, result)
                produced.extend(part)
                yield part

        def finished() -> bool:
            return produced.finish_reason is not None or len(produced.token_ids) >= options.max_tokens

        async for part in self._on_workers(attempt, affinity=affinity, finished=finished):
            yield part

    async def score(
        self, token_ids: Sequence[int], start: int, *, adapter: str | None = None
    ) -> list[float]:
        body = wire.score_body(token_ids, model=adapter or self._model_id)

        async def attempt(worker: WorkerState) -> AsyncIterator[list[float]]:
            result = await self._client.complete(worker, body, timeout_s=self._timeout(1))
            yield _parsed(lambda r: wire.prompt_logprobs(r, token_ids, start), result)

        [scored] = [logprobs async for logprobs in self._on_workers(attempt, affinity=None)]
        return scored

    async def _on_workers(
        self,
        attempt: Callable[[WorkerState], AsyncIterator[_T]],
        *,
        affinity: str | None,
        finished: Callable[[], bool] = lambda: False,
    ) -> AsyncIterator[_T]:
        """Yield what ``attempt`` yields on a worker, running it again on another each time a worker
        fails it, until one completes it or ``finished()`` says that what came is the whole answer:
        the failover of every request."""
        failed: list[WorkerState] = []
        cannot_serve: list[WorkerState] = []
        for _ in range(len(self.pool.workers) + 1):
            worker = self.pool.pick(affinity, avoid=failed, exclude=cannot_serve)
            try:
                async for part in attempt(worker):
                    yield part
                return
            except WorkerCannotServe as exc:
                logger.info("request moves off %s, which cannot serve it: %s", worker.name, exc)
                cannot_serve.append(worker)
                healthy = self.pool.healthy()
                if healthy and all(w in cannot_serve for w in healthy):
                    raise EngineError("No worker serves the model asked for.") from exc
            except WorkerFailed as exc:
                if isinstance(exc, WorkerRefused | WorkerAnswerInvalid) and worker.healthy:
                    worker.mark_down(str(exc))  # which logs why
                else:
                    logger.info("request moves off %s: %s", worker.name, exc)
                failed.append(worker)
                if finished():
                    return
        raise EngineUnavailableError(
            "A worker failed on this request.", retry_after=self.pool.retry_after()
        )

    def _model(self, adapter: str | None) -> str:
        """The name the workers serve ``adapter`` under (the base model's when None)."""
        if adapter is not None and adapter not in self._adapters and adapter not in self._added:
            raise InvalidRequestError(f"Unknown adapter {adapter!r}.", param="model")
        return adapter or self._model_id

    def _timeout(self, max_tokens: int) -> float:
        # A timeout that grows with the answer: past it the request gives up on this worker.
        return self._request_timeout_s + self._timeout_per_token_s * max_tokens


def _parsed(parse: Callable[[dict[str, Any]], _R], answer: dict[str, Any]) -> _R:
    """``parse(answer)``; an answer without the fields vLLM's has is the worker's fault."""
    try:
        return parse(answer)
    except (LookupError, TypeError, ValueError, AttributeError) as exc:
        raise WorkerAnswerInvalid(
            f"an answer of another shape than vLLM's ({exc!r}): {json.dumps(answer)[:500]}"
        ) from None


def _vocab_size(model_dir: Path) -> int:
    return int(json.loads((model_dir / "config.json").read_text())["vocab_size"])


def _tokenizer_eos(model_dir: Path) -> int | None:
    from transformers import AutoTokenizer

    eos = AutoTokenizer.from_pretrained(str(model_dir)).eos_token_id
    return None if eos is None else int(eos)
