"""Recording what happened: the only code that changes a metric.

The HTTP layer reports each finished request (``request_finished``); the request path reports cache
lookups and failures, requests in flight, the first streamed token, and what each computed answer
cost and got (``answer_computed``). Engines report nothing: their state is read at scrape time.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from service.metrics.registry import (
    ANSWER_NLL,
    BATCH_LINES,
    BATCH_LINES_TAKEN_OVER,
    BATCH_QUEUE_DEPTH,
    BATCH_STORE_ERRORS,
    BATCHES,
    CACHE_ERRORS,
    CACHE_LOOKUPS,
    FINE_TUNING_JOBS,
    POWER_ACCEPTANCE_RATE,
    POWER_COST_MULTIPLIER,
    POWER_REQUESTS,
    POWER_SMC_PARTICLES,
    POWER_SMC_PARTICLES_SHED,
    POWER_SMC_RESAMPLES,
    RATE_LIMIT_ERRORS,
    REJECTIONS,
    REQUEST_LATENCY,
    REQUESTS,
    REQUESTS_IN_FLIGHT,
    TIME_TO_FIRST_TOKEN,
    TOKENS,
)

if TYPE_CHECKING:
    from service.generation import GenerationResult

__all__ = [
    "answer_computed",
    "batch_finished",
    "batch_line",
    "batch_lines_taken_over",
    "batch_queue_depth",
    "batch_store_error",
    "cache_error",
    "cache_lookup",
    "fine_tuning_job",
    "first_token",
    "in_flight",
    "rate_limit_error",
    "rejected",
    "request_finished",
]


def request_finished(route: str, model: str, status: int, seconds: float | None) -> None:
    """A completion request answered with ``status``; ``seconds`` to its last byte, when it had a
    route (requests refused before one was chosen count under route and model "none")."""
    REQUESTS.labels(route, model, str(status)).inc()
    if seconds is not None:
        REQUEST_LATENCY.labels(route).observe(seconds)


def first_token(route: str, seconds: float) -> None:
    """The first answer token of a streamed request is on its way to the client."""
    TIME_TO_FIRST_TOKEN.labels(route).observe(seconds)


@contextmanager
def in_flight(route: str) -> Iterator[None]:
    gauge = REQUESTS_IN_FLIGHT.labels(route)
    gauge.inc()
    try:
        yield
    finally:
        gauge.dec()


def cache_lookup(route: str, outcome: str) -> None:
    """``outcome``: hit, miss or bypass."""
    CACHE_LOOKUPS.labels(route, outcome).inc()


def cache_error(operation: str) -> None:
    CACHE_ERRORS.labels(operation).inc()


def answer_computed(route: str, result: GenerationResult) -> None:
    """What a computed (not cached) result cost and what it got."""
    TOKENS.labels(route, "prompt").inc(result.prompt_tokens)
    TOKENS.labels(route, "returned").inc(result.completion_tokens)
    TOKENS.labels(route, "generated").inc(result.tokens_generated)
    for choice in result.choices:
        if choice.token_ids:
            ANSWER_NLL.labels(route).observe(-choice.self_reward.mean_logprob)
    power = result.power
    if power is None:
        return
    POWER_REQUESTS.labels(power.method).inc()
    if power.cost_multiplier is not None and math.isfinite(power.cost_multiplier):
        POWER_COST_MULTIPLIER.observe(power.cost_multiplier)
    if power.acceptance_rate is not None:
        POWER_ACCEPTANCE_RATE.observe(power.acceptance_rate)
    if power.particles is not None:
        POWER_SMC_PARTICLES.labels(power.chosen_by or "request").observe(power.particles)
    for choice in result.choices:
        if power.method == "smc" and choice.sampler is not None:
            POWER_SMC_RESAMPLES.observe(choice.sampler.resamples)
            final = choice.sampler.final_particles
            if power.particles is not None and final is not None and final < power.particles:
                POWER_SMC_PARTICLES_SHED.inc(power.particles - final)


def batch_line(result: str) -> None:
    """A batch line answered; ``result``: completed (status 200) or failed."""
    BATCH_LINES.labels(result).inc()


def batch_finished(status: str) -> None:
    """A batch reached a final status."""
    BATCHES.labels(status).inc()


def batch_lines_taken_over(lines: int) -> None:
    """Lines claimed from a replica whose claims went stale."""
    BATCH_LINES_TAKEN_OVER.inc(lines)


def batch_queue_depth(lines: int) -> None:
    """Lines of the running batch not answered yet."""
    BATCH_QUEUE_DEPTH.set(lines)


def batch_store_error(operation: str) -> None:
    """The job store failed the batch worker on ``operation`` (see BATCH_STORE_OPERATIONS)."""
    BATCH_STORE_ERRORS.labels(operation).inc()


def fine_tuning_job(status: str) -> None:
    """A fine-tuning job reached ``status`` (running, succeeded, failed, cancelled)."""
    FINE_TUNING_JOBS.labels(status).inc()


def rejected(reason: str) -> None:
    """A request refused before any work (a key, a limit, a cap, shutdown): see REJECTION_REASONS."""
    REJECTIONS.labels(reason).inc()


def rate_limit_error(operation: str) -> None:
    """The rate-limit store failed on ``operation`` (reserve, settle); the request went on."""
    RATE_LIMIT_ERRORS.labels(operation).inc()
