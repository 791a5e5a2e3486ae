"""Cache keys cover exactly what changes an answer, after defaults are resolved; stores expire."""

from __future__ import annotations

import asyncio
from dataclasses import replace

from service.cache import MemoryStore
from service.config import Settings
from service.engines.base import EngineInfo
from service.generation import GenerationRequest
from service.pipeline import CacheControl, ModelRoute, ResultCache, RouteKind, resolve

INFO = EngineInfo(model_id="m", max_model_len=64, vocab_size=8, eos_token_ids=frozenset({3}))
PLAIN = ModelRoute("m", RouteKind.PLAIN, "m")
POWER = ModelRoute("m-power", RouteKind.POWER, "m")
BASE = GenerationRequest(prompts=((1, 2, 3),), n=2, max_tokens=8, temperature=0.5, seed=7)


def key(
    request: GenerationRequest,
    route: ModelRoute = PLAIN,
    settings: Settings | None = None,
    revision: str = "r1",
    control: CacheControl = CacheControl(),  # noqa: B008 - immutable
) -> str:
    resolved = resolve(route, request, settings or Settings(), INFO)
    cache = ResultCache(MemoryStore(), revision=revision, default_ttl_s=60)
    policy = cache.policy(resolved, control)
    assert policy is not None
    return policy.key


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
        "presence_penalty": 0.5,
    }
    keys = {key(replace(BASE, **{field: value})) for field, value in changes.items()}
    assert len(keys) == len(changes) and key(BASE) not in keys


def test_every_power_field_changes_the_key() -> None:
    base = replace(BASE, temperature=None, power_method="mh")
    changes = {
        "power_alpha": 2.0,
        "mcmc_steps": 3,
        "block_size": 4,
        "power_stream_lag": 1,
        "power_method": "smc",
    }
    keys = {key(replace(base, **{field: value}), POWER) for field, value in changes.items()}
    assert len(keys) == len(changes) and key(base, POWER) not in keys
    smc = replace(base, power_method="smc")
    assert key(replace(smc, power_particles=4), POWER) != key(replace(smc, power_particles=5), POWER)


def test_server_defaults_are_part_of_the_key() -> None:
    """A seeded request asked with defaults is answered anew when the defaults change (another
    replica's settings, or a restart with new ones), not from entries computed under old ones."""
    request = replace(BASE, temperature=None, max_tokens=None, power_method="mh")
    ten, four = Settings(power_mcmc_steps=10), Settings(power_mcmc_steps=4)
    assert key(request, POWER, ten) != key(request, POWER, four)
    assert key(request, POWER, Settings(power_alpha=4)) != key(request, POWER, Settings(power_alpha=2))
    plain = replace(BASE, max_tokens=None)
    assert key(plain, settings=Settings(default_max_tokens=16)) != key(
        plain, settings=Settings(default_max_tokens=32)
    )


def test_route_and_revision_change_the_key() -> None:
    request = replace(BASE, temperature=None)
    assert len({key(request), key(request, POWER), key(request, revision="r2")}) == 3


def test_how_the_answer_travels_does_not_change_the_key() -> None:
    assert key(replace(BASE, prompt_param="messages")) == key(BASE)
    assert key(BASE, control=CacheControl(explicit=True, ttl=5)) == key(BASE)


def test_only_reproducible_requests_are_cached_by_default() -> None:
    cache = ResultCache(MemoryStore(), revision="r", default_ttl_s=60)
    unseeded = resolve(PLAIN, replace(BASE, seed=None), Settings(), INFO)
    greedy = resolve(PLAIN, replace(BASE, seed=None, temperature=0), Settings(), INFO)
    power_greedy = resolve(POWER, replace(BASE, seed=None, temperature=0), Settings(), INFO)
    assert cache.policy(unseeded, CacheControl()) is None
    assert cache.policy(greedy, CacheControl()) is not None
    assert cache.policy(power_greedy, CacheControl()) is None  # its search still draws proposals
    assert cache.policy(unseeded, CacheControl(explicit=True)) is not None


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
