"""Step 1 of a request: defaults come from the settings, and what cannot be served is refused with
the parameter to blame, before any work."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import pytest

from service.config import Settings
from service.engines.base import DISTILLED_ADAPTER, EngineInfo
from service.errors import ContextLengthError, InvalidRequestError, TokenBudgetError
from service.generation import GenerationRequest
from service.pipeline import POWER_FIELDS, ModelRoute, RouteKind, resolve
from service.pipeline.latency import LatencyEstimates
from service.power import FollowLoad, PowerChoice

INFO = EngineInfo(model_id="m", max_model_len=4096, vocab_size=8, eos_token_ids=frozenset({3}))
PLAIN = ModelRoute("m", RouteKind.PLAIN, "m")
POWER = ModelRoute("m-power", RouteKind.POWER, "m")
DISTILLED = ModelRoute("m-distilled", RouteKind.DISTILLED, "m", adapter=DISTILLED_ADAPTER)
REQUEST = GenerationRequest(prompts=((1, 2, 3),))
SETTINGS = Settings()
# Load-adaptive N, between 4 (a busy engine) and 8 (an idle one), in a batch room of 16.
ADAPTIVE = Settings(power_particles=4, power_particles_max=8, power_batch_room=16)

# Power fields set to a valid value each, for the routes that must refuse them.
POWER_VALUES: dict[str, Any] = {
    "power_method": "mh",
    "power_particles": 4,
    "power_alpha": 2.0,
    "mcmc_steps": 2,
    "block_size": 4,
    "power_stream_lag": 1,
    "power_budget": 2.0,
    "power_latency_target": 5.0,
    "power_resampling": "chopthin",
    "power_resample_at": "kv_block",
}


def refused(route: ModelRoute, request: GenerationRequest, settings: Settings = SETTINGS) -> str | None:
    """The parameter a refusal names."""
    with pytest.raises(InvalidRequestError) as raised:
        resolve(route, request, settings, INFO)
    return raised.value.param


# --- defaults --------------------------------------------------------------------------------------


def test_plain_defaults() -> None:
    resolved = resolve(PLAIN, REQUEST, SETTINGS, INFO)
    assert resolved.power is None and resolved.sampling is not None
    assert resolved.sampling.max_tokens == SETTINGS.default_max_tokens
    assert resolved.sampling.temperature == 1.0
    assert resolved.sampling.adapter is None
    assert not resolved.rescore


def test_default_max_tokens_is_capped_by_the_room_the_prompt_leaves() -> None:
    small = replace(INFO, max_model_len=64)
    assert resolve(PLAIN, REQUEST, SETTINGS, small).sampling.max_tokens == 61  # type: ignore[union-attr]
    assert resolve(POWER, REQUEST, SETTINGS, small).power.max_tokens == 61  # type: ignore[union-attr]


def test_the_distilled_route_samples_its_adapter_and_is_rescored() -> None:
    resolved = resolve(DISTILLED, REQUEST, SETTINGS, INFO)
    assert resolved.sampling is not None and resolved.sampling.adapter == DISTILLED_ADAPTER
    assert resolved.rescore


def test_power_defaults_come_from_the_settings() -> None:
    assert SETTINGS.power_particles_max <= SETTINGS.power_particles  # fixed N unless raised
    for settings in (Settings(), Settings(power_method="mh", power_mcmc_steps=3, power_max_tokens=32)):
        resolved = resolve(POWER, REQUEST, settings, INFO, load=0)
        config = resolved.power
        assert config is not None and resolved.power_choice == PowerChoice("default")
        assert config.method == settings.power_method
        assert config.alpha == settings.power_alpha
        assert config.particles == settings.power_particles
        assert config.mcmc_steps == settings.power_mcmc_steps
        assert config.max_tokens == settings.power_max_tokens
        assert config.top_logprobs == settings.power_top_logprobs


def test_power_temperature_is_one_over_alpha() -> None:
    config = resolve(POWER, replace(REQUEST, temperature=0.5), SETTINGS, INFO).power
    assert config is not None and config.alpha == 2.0
    config = resolve(POWER, replace(REQUEST, temperature=0.5, power_alpha=3.0), SETTINGS, INFO).power
    assert config is not None and config.alpha == 3.0  # power_alpha wins


def test_power_temperature_zero_is_the_mh_search() -> None:
    """The maximum-likelihood limit is a search only MH does, whatever the default method."""
    assert SETTINGS.power_method == "smc"
    config = resolve(POWER, replace(REQUEST, temperature=0), SETTINGS, INFO).power
    assert config is not None and config.method == "mh" and math.isinf(config.alpha)


def test_the_request_overrides_power_defaults() -> None:
    request = replace(REQUEST, power_method="mh", mcmc_steps=0, block_size=4, power_stream_lag=1)
    config = resolve(POWER, replace(request, max_tokens=16, seed=5), SETTINGS, INFO).power
    assert config is not None
    assert (config.method, config.mcmc_steps, config.block_size) == ("mh", 0, 4)
    assert (config.stream_lag, config.max_tokens, config.seed) == (1, 16, 5)
    smc = resolve(POWER, replace(REQUEST, power_method="smc", power_particles=3), SETTINGS, INFO)
    assert smc.power is not None and smc.power.particles == 3


# --- the sampler's size: the engine's load and the request's budget --------------------------------


@pytest.mark.parametrize(
    ("load", "particles"),
    [(0, 8), (9, 7), (12, 4), (400, 4)],  # power_batch_room 16 less the load, within [4, 8]
)
def test_particles_fill_the_room_in_the_engines_batch(load: int, particles: int) -> None:
    resolved = resolve(POWER, REQUEST, ADAPTIVE, INFO, load=load)
    assert resolved.power is not None and resolved.power.particles == particles
    assert resolved.power_choice == PowerChoice("load", engine_load=load)
    # ... and keeps following it while the answer runs, within the same room and floor.
    assert resolved.power.follow_load == FollowLoad(fewest=4, room=16)


@pytest.mark.parametrize(
    ("particles", "others", "kept"),
    [(8, 0, 8), (8, 8, 8), (8, 10, 6), (8, 16, 4), (8, 400, 4), (2, 400, 2), (4, 0, 4)],
)
def test_an_answer_lets_particles_go_as_the_load_grows(particles: int, others: int, kept: int) -> None:
    """The room less the other sequences, never more than it has nor fewer than the floor (or its
    own N, where a budget set that lower)."""
    assert FollowLoad(fewest=4, room=16).keep(particles, others) == kept


def test_what_the_load_does_not_choose() -> None:
    seeded = resolve(POWER, replace(REQUEST, seed=7), ADAPTIVE, INFO, load=0)
    assert seeded.power is not None and seeded.power.particles == ADAPTIVE.power_particles
    assert seeded.power_choice == PowerChoice("seed")  # the same seed, the same answer, any load
    assert seeded.power.follow_load is None
    asked = resolve(POWER, replace(REQUEST, power_particles=2), ADAPTIVE, INFO, load=0)
    assert asked.power is not None and asked.power.particles == 2
    assert asked.power_choice == PowerChoice("request")
    mh = resolve(POWER, replace(REQUEST, power_method="mh"), ADAPTIVE, INFO, load=0)
    assert mh.power_choice == PowerChoice("default")


def test_the_loads_choice_never_breaks_the_servers_token_budget() -> None:
    """At N = 8 this request's worst case is over the budget, at the fixed N = 4 it is not: it is
    served at 4, not refused."""
    request = replace(REQUEST, max_tokens=64)
    config = resolve(POWER, request, ADAPTIVE, INFO, load=0).power
    assert config is not None and config.particles == 8
    budget = replace(config, particles=4).worst_case_tokens()
    assert config.worst_case_tokens() > budget
    tight = ADAPTIVE.model_copy(update={"power_token_budget": budget})
    resolved = resolve(POWER, request, tight, INFO, load=0)
    assert resolved.power is not None and resolved.power.particles == 4
    assert resolved.power_choice == PowerChoice("default")
    assert resolved.power.follow_load is None


@pytest.mark.parametrize(("budget", "particles"), [(1.0, 1), (3.5, 3), (100.0, 8)])
def test_power_budget_caps_the_particles(budget: float, particles: int) -> None:
    resolved = resolve(POWER, replace(REQUEST, power_budget=budget), ADAPTIVE, INFO, load=0)
    assert resolved.power is not None and resolved.power.particles == particles
    assert resolved.power.planned_cost() <= budget
    chosen_by = "load" if particles == 8 else "budget"
    assert resolved.power_choice == PowerChoice(chosen_by, engine_load=0, budget=budget)


def test_power_budget_caps_mh_steps() -> None:
    request = replace(REQUEST, power_method="mh", max_tokens=64, power_budget=20.0)
    config = resolve(POWER, request, SETTINGS, INFO).power
    assert config is not None and config.method == "mh"
    assert config.planned_cost() <= 20 < replace(config, mcmc_steps=config.mcmc_steps + 1).planned_cost()
    assert 0 < config.mcmc_steps < SETTINGS.power_mcmc_steps


def test_a_sampler_size_the_request_sets_over_its_budget_is_refused() -> None:
    over = [
        replace(REQUEST, power_particles=8, power_budget=4.0),
        replace(REQUEST, mcmc_steps=10, max_tokens=64, power_budget=4.0),
    ]
    for request in over:
        assert refused(POWER, request) == "power_budget"
    fits = resolve(POWER, replace(REQUEST, power_particles=4, power_budget=4.0), SETTINGS, INFO)
    assert fits.power is not None and fits.power.particles == 4


# --- refusals --------------------------------------------------------------------------------------


@pytest.mark.parametrize("route", [PLAIN, DISTILLED])
@pytest.mark.parametrize("field", POWER_FIELDS)
def test_power_fields_are_refused_off_the_power_route(route: ModelRoute, field: str) -> None:
    assert refused(route, replace(REQUEST, **{field: POWER_VALUES[field]})) == field


def test_every_power_field_has_a_test_value() -> None:
    assert set(POWER_VALUES) == set(POWER_FIELDS)


@pytest.mark.parametrize("field", ["mcmc_steps", "power_stream_lag"])
def test_mh_fields_are_refused_with_smc(field: str) -> None:
    request = replace(REQUEST, power_method="smc", **{field: POWER_VALUES[field]})
    assert refused(POWER, request) == field


def test_power_latency_target_fits_the_particles_to_recent_answers() -> None:
    estimates = LatencyEstimates()
    estimates.observe("plain", 1, seconds=1.0, tokens=100)  # 10 ms a token
    request = replace(REQUEST, max_tokens=100, power_latency_target=2.5)
    resolved = resolve(POWER, request, SETTINGS, INFO, latency=estimates)
    # Unseen sizes are priced at N plain tokens: 4 particles 4 s, 2 particles 2 s.
    assert resolved.power is not None and resolved.power.particles == 2
    assert resolved.power_choice == PowerChoice(
        "latency_target", latency_target=2.5, predicted_latency_s=pytest.approx(2.0)
    )
    # Once 4 particles have been seen to take 20 ms a token, they fit.
    estimates.observe("smc", 4, seconds=1.0, tokens=50)
    resolved = resolve(POWER, request, SETTINGS, INFO, latency=estimates)
    assert resolved.power is not None and resolved.power.particles == 4
    assert resolved.power_choice is not None and resolved.power_choice.chosen_by == "default"
    assert resolved.power_choice.predicted_latency_s == pytest.approx(2.0)


def test_power_latency_target_refuses_a_size_the_request_sets() -> None:
    for size in ({"power_particles": 4}, {"power_method": "mh", "mcmc_steps": 2}):
        assert refused(POWER, replace(REQUEST, power_latency_target=5.0, **size)) == (
            "power_latency_target"
        )


def test_power_resampling_is_smc_only_and_defaults_to_the_settings() -> None:
    assert refused(POWER, replace(REQUEST, power_method="mh", power_resampling="chopthin")) == (
        "power_resampling"
    )
    asked = resolve(POWER, replace(REQUEST, power_resampling="chopthin"), SETTINGS, INFO)
    assert asked.power is not None and asked.power.resampling == "chopthin"
    default = resolve(POWER, REQUEST, Settings(power_resampling="chopthin"), INFO)
    assert default.power is not None and default.power.resampling == "chopthin"
    assert resolve(POWER, REQUEST, SETTINGS, INFO).power.resampling == "systematic"  # type: ignore[union-attr]


def test_power_resample_at_is_smc_only_and_knows_the_kv_block() -> None:
    assert refused(POWER, replace(REQUEST, power_method="mh", power_resample_at="kv_block")) == (
        "power_resample_at"
    )
    asked = resolve(POWER, replace(REQUEST, power_resample_at="kv_block"), SETTINGS, INFO).power
    assert asked is not None and (asked.resample_at, asked.kv_block) == ("kv_block", 32)
    default = resolve(POWER, REQUEST, Settings(power_resample_at="kv_block", kv_block_size=64), INFO)
    assert default.power is not None
    assert (default.power.resample_at, default.power.kv_block) == ("kv_block", 64)


def test_particles_are_refused_with_mh() -> None:
    assert refused(POWER, replace(REQUEST, power_method="mh", power_particles=4)) == "power_particles"
    # Temperature 0 means MH even when the default is SMC.
    assert refused(POWER, replace(REQUEST, temperature=0, power_particles=4)) == "power_particles"


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"top_p": 0.9}, "top_p"),
        ({"presence_penalty": 0.5}, "presence_penalty"),
        ({"frequency_penalty": 0.5}, "frequency_penalty"),
        ({"temperature": 1.5}, "temperature"),  # alpha < 1
        ({"power_alpha": 0.5}, "power_alpha"),
        ({"power_method": "smc", "power_alpha": math.inf}, "power_alpha"),
        ({"power_method": "mh", "block_size": 0}, "block_size"),
    ],
)
def test_power_parameters_out_of_range_name_their_field(change: dict[str, Any], param: str) -> None:
    assert refused(POWER, replace(REQUEST, **change)) == param


def test_top_p_is_accepted_off_the_power_route() -> None:
    resolved = resolve(PLAIN, replace(REQUEST, top_p=0.9), SETTINGS, INFO)
    assert resolved.sampling is not None and resolved.sampling.top_p == 0.9


@pytest.mark.parametrize("route", [PLAIN, POWER])
def test_the_context_is_checked(route: ModelRoute) -> None:
    context = INFO.max_model_len
    too_long = replace(REQUEST, prompts=((1,) * context,), prompt_param="messages")
    with pytest.raises(ContextLengthError) as raised:
        resolve(route, too_long, SETTINGS, INFO)
    assert (raised.value.code, raised.value.param) == ("context_length_exceeded", "messages")

    fills = replace(REQUEST, max_tokens=context - 3)
    resolve(route, fills, SETTINGS, INFO)  # the prompt plus max_tokens fit exactly
    with pytest.raises(ContextLengthError) as raised:
        resolve(route, replace(fills, max_tokens=context - 2), SETTINGS, INFO)
    assert (raised.value.code, raised.value.param) == ("context_length_exceeded", "max_tokens")


def test_the_longest_prompt_counts() -> None:
    prompts = ((1,), (1,) * (INFO.max_model_len - 4))
    assert refused(PLAIN, replace(REQUEST, prompts=prompts, max_tokens=5)) == "max_tokens"


@pytest.mark.parametrize("route", [PLAIN, POWER, DISTILLED])
def test_n_is_capped(route: ModelRoute) -> None:
    settings = Settings(max_n=4)
    resolve(route, replace(REQUEST, n=4), settings, INFO)
    assert refused(route, replace(REQUEST, n=5), settings) == "n"


# --- cost ------------------------------------------------------------------------------------------

# MH, 8 tokens in blocks of 4, 2 steps per block: the answer grows 8 tokens, and each step proposes a
# suffix regrown up to the block's horizon: 2 * 4 after block 1, 2 * 8 after block 2.
MH = replace(REQUEST, n=2, max_tokens=8, power_method="mh", block_size=4, mcmc_steps=2)
MH_WORST_CASE = 2 * (8 + 2 * 4 + 2 * 8)
# SMC: each of 3 particles grows to 8 tokens; two prompts, one choice each.
SMC = replace(REQUEST, prompts=((1,), (2,)), max_tokens=8, power_method="smc", power_particles=3)
# Per prompt: 3 particles' requests of up to 8 tokens, and at each of the 7 resampling points (1-token
# blocks) 2 copies whose requests may run to the end.
SMC_WORST_CASE = 2 * (3 * 8 + 2 * sum(8 - h for h in range(1, 8)))


def test_worst_case_tokens() -> None:
    assert resolve(POWER, MH, SETTINGS, INFO).worst_case_tokens == MH_WORST_CASE
    assert resolve(POWER, SMC, SETTINGS, INFO).worst_case_tokens == SMC_WORST_CASE
    plain = replace(REQUEST, prompts=((1,), (2,)), n=3, max_tokens=8)
    assert resolve(PLAIN, plain, SETTINGS, INFO).worst_case_tokens == 2 * 3 * 8


@pytest.mark.parametrize(("request_", "worst_case"), [(MH, MH_WORST_CASE), (SMC, SMC_WORST_CASE)])
def test_the_token_budget_refuses_the_worst_case(request_: GenerationRequest, worst_case: int) -> None:
    resolve(POWER, request_, Settings(power_token_budget=worst_case), INFO)
    with pytest.raises(TokenBudgetError) as raised:
        resolve(POWER, request_, Settings(power_token_budget=worst_case - 1), INFO)
    assert (raised.value.code, raised.value.param) == ("token_budget_exceeded", "max_tokens")
    assert str(worst_case) in raised.value.message


def test_the_budget_binds_the_power_route_only() -> None:
    huge = replace(REQUEST, n=16, max_tokens=4000)
    resolve(PLAIN, huge, Settings(power_token_budget=1), INFO)


def test_mh_parameters_without_a_method_mean_mh() -> None:
    """Clients from before SMC send mcmc_steps (or a stream lag) and no power_method: they get MH."""
    for extra in ({"mcmc_steps": 3}, {"power_stream_lag": 1}):
        resolved = resolve(POWER, replace(REQUEST, **extra), SETTINGS, INFO)
        assert resolved.power is not None and resolved.power.method == "mh"
    assert refused(POWER, replace(REQUEST, mcmc_steps=3, power_particles=4)) == "power_particles"
