"""Cache keys cover exactly what changes an answer."""

from __future__ import annotations

import asyncio
from dataclasses import replace

from service.cache import MemoryStore, cache_key
from service.generation import CacheControl, GenerationRequest

BASE = GenerationRequest(prompts=((1, 2, 3),), n=2, max_tokens=8, temperature=0.5, seed=7)


def key(request: GenerationRequest, route: str = "m", revision: str = "r1") -> str:
    return cache_key(route=route, revision=revision, fields=request.output_fields())


def test_every_output_field_changes_the_key() -> None:
    changes = {
        "prompts": ((1, 2, 4),),
        "n": 3,
        "max_tokens": 9,
        "temperature": 0.25,
        "top_p": 0.9,
        "stop": ("x",),
        "seed": 8,
        "logprobs": 2,
        "power_alpha": 2.0,
        "mcmc_steps": 3,
        "block_size": 4,
        "power_stream_lag": 1,
        "presence_penalty": 0.5,
    }
    keys = {key(replace(BASE, **{field: value})) for field, value in changes.items()}
    assert len(keys) == len(changes) and key(BASE) not in keys


def test_route_and_revision_change_the_key() -> None:
    assert len({key(BASE), key(BASE, route="m-power"), key(BASE, revision="r2")}) == 3


def test_how_the_answer_travels_does_not_change_the_key() -> None:
    assert key(replace(BASE, prompt_param="messages")) == key(BASE)
    assert key(replace(BASE, cache=CacheControl(explicit=True, ttl=5))) == key(BASE)


def test_memory_store_is_an_lru_with_expiry() -> None:
    async def scenario() -> None:
        store = MemoryStore(max_entries=2)
        await store.set("a", b"1", ttl=60)
        await store.set("b", b"2", ttl=60)
        assert (await store.get("a"))[0] == b"1"  # a is now the most recent
        await store.set("c", b"3", ttl=60)
        assert await store.get("b") is None
        await store.set("d", b"4", ttl=0.01)
        await asyncio.sleep(0.02)
        assert await store.get("d") is None

    asyncio.run(scenario())
