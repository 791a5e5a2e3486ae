"""Step 2 of a request: may the response cache answer it, and under which key.

Sampling is random, so by default only reproducible requests use the cache: those with a ``seed``,
and greedy ones (temperature 0) off the power route, whose temperature-0 search still draws
proposals. A request's ``cache`` object (LiteLLM's keys) opts in or out. Keys hash the resolved
request (service/pipeline/resolve.py), so answers computed under other defaults are never reused.

A cache never makes a request fail: a store that is down counts as a miss or a skipped write, is
counted (``powerserve_cache_errors_total``) and logged at most once a minute.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace

from pydantic import TypeAdapter

from service.cache import ResponseStore, StoreUnavailable, cache_key
from service.generation import Choice, ChoiceDelta, GenerationResult
from service.metrics import record
from service.pipeline.resolve import ResolvedRequest
from service.prompts import PromptRenderer, TextStream

__all__ = ["CacheControl", "CachePolicy", "ResultCache", "replay"]

logger = logging.getLogger(__name__)

_RESULTS = TypeAdapter(GenerationResult)


@dataclass(frozen=True, kw_only=True)
class CacheControl:
    """A request's say on the response cache (LiteLLM's keys). ``explicit`` when the request sent
    any: then it is served from and stored in the cache even if not reproducible."""

    explicit: bool = False
    no_cache: bool = False  # do not answer from the cache
    no_store: bool = False  # do not store this answer
    ttl: float | None = None  # store for this many seconds
    s_maxage: float | None = None  # accept only a cached answer at most this old
    # Whose answers this request may read and write (a project's, when keys are configured): a hit
    # must not tell one tenant what another asked.
    partition: str | None = None


@dataclass(frozen=True)
class CachePolicy:
    key: str
    read: bool
    write: bool
    ttl: float
    max_age: float | None


class ResultCache:
    """Cached results of resolved requests, in a ``ResponseStore``."""

    def __init__(
        self, store: ResponseStore, *, revision: str, default_ttl_s: float, log_interval_s: float = 60
    ):
        self.store = store
        self.revision = revision  # of the weights and adapters: part of every key
        self.default_ttl_s = default_ttl_s
        self._log_interval_s = log_interval_s
        self._last_logged = -log_interval_s

    def policy(self, resolved: ResolvedRequest, control: CacheControl) -> CachePolicy | None:
        """How the cache may serve this request; None: not at all."""
        sampling = resolved.sampling
        greedy = sampling is not None and sampling.temperature == 0
        if not (resolved.seed is not None or greedy or control.explicit):
            return None
        if control.no_cache and control.no_store:
            return None
        return CachePolicy(
            key=cache_key(
                route=resolved.route.model_id,
                revision=self.revision,
                fields=resolved.cache_fields(),
                partition=control.partition,
            ),
            read=not control.no_cache,
            write=not control.no_store,
            ttl=control.ttl if control.ttl is not None else self.default_ttl_s,
            max_age=control.s_maxage,
        )

    async def lookup(self, policy: CachePolicy) -> GenerationResult | None:
        if not policy.read:
            return None
        try:
            found = await self.store.get(policy.key)
        except StoreUnavailable as exc:
            self._unavailable("get", exc)
            return None
        if found is None:
            return None
        value, stored_at = found
        if policy.max_age is not None and time.time() - stored_at > policy.max_age:
            return None
        return replace(_RESULTS.validate_json(value), cache="hit")

    async def store_result(self, policy: CachePolicy, result: GenerationResult) -> None:
        if not policy.write:
            return
        try:
            await self.store.set(policy.key, _RESULTS.dump_json(result), policy.ttl)
        except StoreUnavailable as exc:
            self._unavailable("set", exc)

    def _unavailable(self, operation: str, exc: StoreUnavailable) -> None:
        record.cache_error(operation)
        now = time.monotonic()
        if now - self._last_logged >= self._log_interval_s:
            self._last_logged = now
            logger.warning("response cache unavailable (%s); serving uncached, will retry", exc)


async def replay(
    result: GenerationResult, renderer: PromptRenderer
) -> AsyncIterator[ChoiceDelta | Choice | GenerationResult]:
    """A cached result as the stream it was: one delta per token (with its log-probs), each choice
    as it ends, then the result. The deltas' text adds up to the choice's text exactly."""
    for choice in result.choices:
        decoder = TextStream(renderer)
        sent = 0
        last = len(choice.token_ids) - 1
        for t, token in enumerate(choice.token_ids):
            upto = (
                len(choice.text)
                if t == last
                else min(sent + len(decoder.push([token])), len(choice.text))
            )
            yield ChoiceDelta(
                index=choice.index,
                text=choice.text[sent:upto],
                token_ids=[token],
                logprobs=choice.logprobs[t : t + 1],
                top_logprobs=None if choice.top_logprobs is None else choice.top_logprobs[t : t + 1],
            )
            sent = max(sent, upto)
        yield choice
    yield result
