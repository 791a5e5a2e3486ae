"""Step 1 of a request: resolve its defaults and refuse what cannot be served, before any work.

``resolve`` turns the request as the client sent it (``GenerationRequest``, None for "the default")
into a ``ResolvedRequest``: every default filled in from the settings, the prompt checked against the
vocabulary and the context, the power route's parameters checked against its target and the worst
case it can cost checked against the token budget. Everything after this step (the cache key, the
samplers, the metrics) reads the resolved request only.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any

from service.config import Settings
from service.engines.base import EngineInfo, SamplingOptions
from service.errors import ContextLengthError, InvalidRequestError, TokenBudgetError
from service.generation import GenerationRequest
from service.pipeline.catalog import ModelRoute, RouteKind
from service.pipeline.latency import LatencyEstimates, fit_latency
from service.pipeline.power_choice import default_particles, fit_budget, load_share
from service.power import PowerChoice, PowerConfig

__all__ = ["POWER_FIELDS", "ResolvedRequest", "resolve"]

# Request fields of the power route only; other routes refuse them.
POWER_FIELDS = (
    "power_method",
    "power_particles",
    "power_alpha",
    "mcmc_steps",
    "block_size",
    "power_stream_lag",
    "power_budget",
    "power_latency_target",
    "power_resampling",
    "power_resample_at",
)
# PowerConfig fields -> the request parameters that set them, for error messages.
_POWER_PARAMS = {
    "alpha": "power_alpha",
    "stream_lag": "power_stream_lag",
    "method": "power_method",
    "particles": "power_particles",
    "resampling": "power_resampling",
    "resample_at": "power_resample_at",
}


@dataclass(frozen=True, kw_only=True)
class ResolvedRequest:
    """A request checked against its route, with every default resolved."""

    route: ModelRoute
    prompts: tuple[tuple[int, ...], ...]
    n: int
    seed: int | None
    stop: tuple[str, ...]
    # None: no log-probs in the response; k >= 0: each token's, with k alternatives.
    logprobs: int | None
    prompt_param: str
    # Exactly one of the two: how a plain or distilled choice samples, or how a power choice does.
    sampling: SamplingOptions | None = None
    power: PowerConfig | None = None
    # What chose the power sampler's size (not part of the answer: the cache key leaves it out).
    power_choice: PowerChoice | None = None

    @property
    def num_choices(self) -> int:
        return self.n * len(self.prompts)

    @property
    def rescore(self) -> bool:
        """Score answers under the base model where the sampled log-probs are not its own: the
        distilled model's, and a constrained answer's (renormalised over the allowed tokens), so
        that self-rewards compare."""
        constrained = self.sampling is not None and self.sampling.constraint is not None
        return self.route.kind is RouteKind.DISTILLED or constrained

    @property
    def sequences(self) -> int:
        """Engine sequences this request runs at once: one per choice, or per SMC particle."""
        if self.power is not None and self.power.method == "smc":
            return self.power.particles * self.num_choices
        return self.num_choices

    @property
    def worst_case_tokens(self) -> int:
        """Most tokens this request can make the engine generate."""
        if self.power is not None:
            return self.power.worst_case_tokens() * self.num_choices
        assert self.sampling is not None
        return self.sampling.max_tokens * self.num_choices

    def cache_fields(self) -> dict[str, Any]:
        """Everything that determines the answer, defaults resolved: what a cache key must cover."""
        return {
            "model": self.route.model_id,
            "prompts": self.prompts,
            "n": self.n,
            "seed": self.seed,
            "stop": self.stop,
            "logprobs": self.logprobs,
            "sampling": None if self.sampling is None else asdict(self.sampling),
            "power": None if self.power is None else asdict(self.power),
        }


def resolve(
    route: ModelRoute,
    request: GenerationRequest,
    settings: Settings,
    info: EngineInfo,
    *,
    load: int = 0,
    latency: LatencyEstimates | None = None,
) -> ResolvedRequest:
    """``load``: the engine sequences in flight, which size the power route's default N;
    ``latency``: what recent answers took, which sizes an answer under power_latency_target."""
    if request.n > settings.max_n:
        raise InvalidRequestError(f"n must be <= {settings.max_n}.", param="n")
    common: dict[str, Any] = dict(
        route=route,
        prompts=request.prompts,
        n=request.n,
        seed=request.seed,
        stop=request.stop,
        logprobs=request.logprobs,
        prompt_param=request.prompt_param,
    )
    if route.kind is RouteKind.POWER:
        max_tokens = _max_tokens(request, info, default=settings.power_max_tokens)
        config, choice = _power_config(request, settings, max_tokens, load, latency)
        resolved = ResolvedRequest(**common, power=config, power_choice=choice)
        if choice.chosen_by == "load" and resolved.worst_case_tokens > settings.power_token_budget:
            # The load's choice must not turn a request that fits at the fixed N into a 400.
            config = replace(config, particles=settings.power_particles, follow_load=None)
            choice = replace(choice, chosen_by="default", engine_load=None)
            resolved = replace(resolved, power=config, power_choice=choice)
        _check_budget(resolved, settings.power_token_budget)
        return resolved
    for name in POWER_FIELDS:
        if getattr(request, name) is not None:
            raise InvalidRequestError(
                f"`{name}` applies to the power route only (model `{route.base_model}-power`).",
                param=name,
            )
    sampling = SamplingOptions(
        max_tokens=_max_tokens(request, info, default=settings.default_max_tokens),
        temperature=1.0 if request.temperature is None else request.temperature,
        top_p=request.top_p,
        presence_penalty=request.presence_penalty,
        frequency_penalty=request.frequency_penalty,
        stop=request.stop,
        top_logprobs=request.logprobs or 0,
        adapter=route.adapter,
        constraint=request.constraint,
        logit_bias=request.logit_bias,
    )
    return ResolvedRequest(**common, sampling=sampling)


def _power_config(
    request: GenerationRequest,
    settings: Settings,
    max_tokens: int,
    load: int,
    latency: LatencyEstimates | None,
) -> tuple[PowerConfig, PowerChoice]:
    if request.logit_bias:
        raise InvalidRequestError(
            "`logit_bias` is not supported on the power route: it would change its target.",
            param="logit_bias",
        )
    if request.top_p != 1.0:
        raise InvalidRequestError(
            "The power route samples without top-p (its proposal is the full tempered model); "
            "leave top_p at 1.",
            param="top_p",
        )
    for name in ("presence_penalty", "frequency_penalty"):
        if getattr(request, name):
            raise InvalidRequestError(
                f"`{name}` is not supported on the power route: it would change its target.",
                param=name,
            )
    alpha = _alpha(request, default=settings.power_alpha)
    # The maximum-likelihood limit (temperature 0) is a search that only MH does, and a request that
    # sets MH's own parameters without naming a method means MH (clients from before SMC do).
    mh_asked = request.mcmc_steps is not None or request.power_stream_lag is not None
    # A constraint is sampled by smc only, whatever the operator's default.
    default = "smc" if request.constraint is not None else settings.power_method
    method = request.power_method or ("mh" if math.isinf(alpha) or mh_asked else default)
    if request.constraint is not None and method != "smc":
        # MH regrows suffixes from a cut point, and the engine's grammar cannot resume a prefix.
        raise InvalidRequestError(
            f"`{request.constraint_param}` on the power route is sampled by power_method `smc` "
            "only (MH, and the temperature-0 search that is MH, cannot continue a grammar from "
            "a cut). Leave power_method, mcmc_steps and power_stream_lag unset, temperature > 0.",
            param=request.constraint_param,
        )
    if method == "smc":
        for name in ("mcmc_steps", "power_stream_lag"):
            if getattr(request, name) is not None:
                raise InvalidRequestError(
                    f"`{name}` applies to power_method `mh`; `smc` streams exactly without a lag.",
                    param=name,
                )
    else:
        for name in ("power_particles", "power_resampling", "power_resample_at"):
            if getattr(request, name) is not None:
                raise InvalidRequestError(f"`{name}` applies to power_method `smc`.", param=name)
    # The sampler's size: the request's own (power_particles or mcmc_steps), else the route's.
    asked = request.sizes_its_sampler
    if asked and request.power_latency_target is not None:
        raise InvalidRequestError(
            "power_latency_target lets the route choose the sampler's size; this request sets "
            f"{'power_particles' if request.power_particles is not None else 'mcmc_steps'} "
            "itself. Leave one of them unset.",
            param="power_latency_target",
        )
    particles, choice = settings.power_particles, PowerChoice("request" if asked else "default")
    if method == "smc" and request.power_particles is not None:
        particles = request.power_particles
    elif method == "smc":
        particles, choice = default_particles(settings, load=load, seeded=request.seed is not None)
    try:
        config = PowerConfig(
            max_tokens=max_tokens,
            method=method,
            alpha=alpha,
            mcmc_steps=settings.power_mcmc_steps if request.mcmc_steps is None else request.mcmc_steps,
            particles=particles,
            resampling=request.power_resampling or settings.power_resampling,
            resample_at=request.power_resample_at or settings.power_resample_at,
            kv_block=settings.kv_block_size,
            held_particles=settings.power_held_particles,
            block_size=request.block_size,
            top_logprobs=settings.power_top_logprobs,
            stream_lag=request.power_stream_lag,
            stop=request.stop,
            seed=request.seed,
            constraint=request.constraint,
        )
    except ValueError as exc:  # PowerConfig names the field first
        field = str(exc).split()[0]
        param = _POWER_PARAMS.get(field, field)
        if field == "alpha" and request.power_alpha is None:
            param = "temperature"
        raise InvalidRequestError(str(exc), param=param) from exc
    if request.power_budget is not None:
        config, choice = fit_budget(config, choice, request.power_budget, asked=asked)
    if request.power_latency_target is not None:
        config, choice = fit_latency(
            config, choice, request.power_latency_target, latency or LatencyEstimates()
        )
    if choice.chosen_by == "load":  # and keeps following it while the answer runs
        config = replace(config, follow_load=load_share(settings))
    return config, choice


def _check_budget(resolved: ResolvedRequest, budget: int) -> None:
    config = resolved.power
    assert config is not None
    worst_case = resolved.worst_case_tokens
    if worst_case <= budget:
        return
    how = (
        f"particles={config.particles}"
        if config.method == "smc"
        else f"mcmc_steps={config.mcmc_steps}, block_size={config.block_tokens}"
    )
    fix = "n or power_particles" if config.method == "smc" else "n or mcmc_steps, or raise block_size"
    raise TokenBudgetError(
        f"This request could make the engine generate up to {worst_case} tokens "
        f"({len(resolved.prompts)} prompt(s), n={resolved.n}, max_tokens={config.max_tokens}, "
        f"{how}), over the limit of {budget}. Lower max_tokens, {fix}.",
        param="max_tokens",
    )


def _max_tokens(request: GenerationRequest, info: EngineInfo, *, default: int) -> int:
    """max_tokens as asked, or the route's default capped by the room the prompts leave."""
    context = info.max_model_len
    prompt_len = max(len(prompt) for prompt in request.prompts)
    if prompt_len >= context:
        raise ContextLengthError(
            f"This model's maximum context length is {context} tokens; the prompt has {prompt_len}.",
            param=request.prompt_param,
        )
    if request.max_tokens is None:
        return min(default, context - prompt_len)
    if prompt_len + request.max_tokens > context:
        raise ContextLengthError(
            f"This model's maximum context length is {context} tokens; the prompt has "
            f"{prompt_len} and max_tokens asks for {request.max_tokens} more.",
            param="max_tokens",
        )
    return request.max_tokens


def _alpha(request: GenerationRequest, *, default: float) -> float:
    """The power route's exponent: power_alpha if given, else 1/temperature (0 -> inf)."""
    if request.power_alpha is not None:
        return request.power_alpha
    if request.temperature is None:
        return default
    if request.temperature > 1:
        raise InvalidRequestError(
            "On the power route temperature is 1/alpha and must be in [0, 1] (alpha >= 1).",
            param="temperature",
        )
    return math.inf if request.temperature == 0 else 1.0 / request.temperature
