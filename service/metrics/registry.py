"""Every metric of the service, in one registry.

Names carry the ``powerserve_`` prefix and their unit; counters end in ``_total``. Labels stay
low-cardinality: ``route`` (plain, power, distilled), ``model`` (the served model ids), ``status``
(HTTP status code), ``kind`` and ``result`` (small fixed sets).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from prometheus_client import REGISTRY as DEFAULT_REGISTRY
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)

from service.metrics.workers import WORKER_POOL

__all__ = [
    "ANSWER_NLL",
    "BATCHES",
    "BATCH_LINES",
    "BATCH_LINES_TAKEN_OVER",
    "BATCH_QUEUE_DEPTH",
    "BATCH_STORE_ERRORS",
    "BATCH_STORE_OPERATIONS",
    "CACHE_ERRORS",
    "CACHE_LOOKUPS",
    "ENGINE_REQUESTS",
    "FINE_TUNING_JOBS",
    "POWER_ACCEPTANCE_RATE",
    "POWER_COST_MULTIPLIER",
    "POWER_REQUESTS",
    "POWER_SMC_PARTICLES",
    "POWER_SMC_PARTICLES_SHED",
    "POWER_SMC_RESAMPLES",
    "RATE_LIMIT_ERRORS",
    "REGISTRY",
    "REJECTIONS",
    "REJECTION_REASONS",
    "REQUESTS",
    "REQUESTS_IN_FLIGHT",
    "REQUEST_LATENCY",
    "TIME_TO_FIRST_TOKEN",
    "TOKENS",
    "prime",
    "render_latest",
    "watch_engine",
]

# No `_created` series: timestamps nobody graphs, doubling every counter's lines.
disable_created_metrics()

REGISTRY = CollectorRegistry()
REJECTION_REASONS = (
    "unauthenticated",
    "rate_limit_requests",
    "rate_limit_tokens",
    "overloaded",
    "body_too_large",
    "draining",
)
# The remote workers' families, from the engine's pool at scrape time (workers.py).
REGISTRY.register(WORKER_POOL)

# Latencies span milliseconds (a cache hit) to minutes (a long power chain on a CPU).
_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 60, 120, 300, 600)

REQUESTS = Counter(
    "powerserve_requests_total",
    "Completion requests answered, by route, model and HTTP status.",
    ["route", "model", "status"],
    registry=REGISTRY,
)
REQUESTS_IN_FLIGHT = Gauge(
    "powerserve_requests_in_flight",
    "Completion requests being served now.",
    ["route"],
    registry=REGISTRY,
)
REQUEST_LATENCY = Histogram(
    "powerserve_request_duration_seconds",
    "End-to-end latency of completion requests (to the last byte), by route.",
    ["route"],
    buckets=_SECONDS,
    registry=REGISTRY,
)
TIME_TO_FIRST_TOKEN = Histogram(
    "powerserve_time_to_first_token_seconds",
    "Time until the first answer token was sent to a streaming client, by route.",
    ["route"],
    buckets=_SECONDS,
    registry=REGISTRY,
)
TOKENS = Counter(
    "powerserve_tokens_total",
    "Tokens by route and kind: prompt; returned (in answers); generated (everything the engine "
    "produced, rejected power proposals included).",
    ["route", "kind"],
    registry=REGISTRY,
)
POWER_COST_MULTIPLIER = Histogram(
    "powerserve_power_cost_multiplier",
    "Tokens generated per token returned, per power request.",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
    registry=REGISTRY,
)
POWER_ACCEPTANCE_RATE = Histogram(
    "powerserve_power_acceptance_rate",
    "Share of Metropolis-Hastings proposals accepted, per power request.",
    buckets=(0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0),
    registry=REGISTRY,
)
# Observed negated: a histogram's _sum must never fall, or rate() reads each fall as a counter reset.
POWER_SMC_RESAMPLES = Histogram(
    "powerserve_power_smc_resamples",
    "Resampling events per SMC answer.",
    buckets=(0, 1, 2, 4, 8, 16, 32, 64),
    registry=REGISTRY,
)
POWER_SMC_PARTICLES = Histogram(
    "powerserve_power_smc_particles",
    "Particles per SMC request, by what chose them: request, default, seed (a seeded request's "
    "fixed N), load (the room in the engine's batch), budget (the request's power_budget) or "
    "latency_target (fitted to the request's power_latency_target).",
    ["chosen_by"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
    registry=REGISTRY,
)
POWER_SMC_PARTICLES_SHED = Counter(
    "powerserve_power_smc_particles_shed_total",
    "SMC particles answers let go before their end because the engine's load grew after the load "
    "had chosen their N (load-adaptive N follows the load while the answer runs).",
    registry=REGISTRY,
)
POWER_REQUESTS = Counter(
    "powerserve_power_requests_total",
    "Power requests computed, by sampler method (mh, smc).",
    ["method"],
    registry=REGISTRY,
)
ANSWER_NLL = Histogram(
    "powerserve_answer_nll_per_token",
    "Minus the self-reward: negative mean log p per returned token under the base model, per answer, "
    "by route (lower is likelier).",
    ["route"],
    buckets=(0, 0.1, 0.25, 0.5, 0.75, 1, 1.25, 1.5, 2, 2.5, 3, 4, 6, 8),
    registry=REGISTRY,
)
CACHE_LOOKUPS = Counter(
    "powerserve_cache_lookups_total",
    "Response-cache lookups by route and result (hit, miss, bypass).",
    ["route", "result"],
    registry=REGISTRY,
)
CACHE_ERRORS = Counter(
    "powerserve_cache_errors_total",
    "Response-cache operations that failed (Redis unreachable or erroring); requests go on uncached.",
    ["operation"],
    registry=REGISTRY,
)
ENGINE_REQUESTS = Gauge(
    "powerserve_engine_requests",
    "Requests the engine holds now, queued or running (every MCMC proposal is one).",
    registry=REGISTRY,
)

# Files, batches and fine-tuning jobs (service/jobs).
BATCH_LINES = Counter(
    "powerserve_batch_lines_total",
    "Batch lines answered, by result (completed: status 200; failed: any other); rate() is lines "
    "per second.",
    ["result"],
    registry=REGISTRY,
)
BATCHES = Counter(
    "powerserve_batches_total",
    "Batches that reached a final status (completed, failed, cancelled, expired).",
    ["status"],
    registry=REGISTRY,
)
BATCH_QUEUE_DEPTH = Gauge(
    "powerserve_batch_queue_depth",
    "Lines of the batch being worked on that this gateway holds, not answered yet (queued or in "
    "flight).",
    registry=REGISTRY,
)
BATCH_LINES_TAKEN_OVER = Counter(
    "powerserve_batch_lines_taken_over",
    "Batch lines this gateway took over from a replica that stopped renewing its claims (it died "
    "or lost Redis), with the job store in Redis.",
    registry=REGISTRY,
)
# What the batch worker was doing when the job store failed: listing the active batches, or for
# one batch validating, claiming lines, recording a line's result, finalizing, expiring, or failing
# it (after failures in a row).
BATCH_STORE_OPERATIONS = ("list", "validate", "claim", "record", "finalize", "expire", "fail")
BATCH_STORE_ERRORS = Counter(
    "powerserve_batch_store_errors_total",
    "Job-store failures the batch worker met, by operation: list (the active batches), validate, "
    "claim (lines), record (a line's result), finalize (output files), expire, fail (failing a "
    "batch after failures in a row). The batch backs off and tries again; after failures in a row "
    "it is failed with state_unavailable.",
    ["operation"],
    registry=REGISTRY,
)
FINE_TUNING_JOBS = Counter(
    "powerserve_fine_tuning_jobs_total",
    "Fine-tuning jobs that reached a status: running, then succeeded, failed or cancelled.",
    ["status"],
    registry=REGISTRY,
)
REJECTIONS = Counter(
    "powerserve_rejections_total",
    "Requests refused before any work, by reason: unauthenticated (401), rate_limit_requests and "
    "rate_limit_tokens (429), overloaded (503, admission control), body_too_large (413), draining "
    "(503 while shutting down).",
    ["reason"],
    registry=REGISTRY,
)
RATE_LIMIT_ERRORS = Counter(
    "powerserve_rate_limit_errors_total",
    "Rate-limit store operations that failed (Redis unreachable); requests were admitted unlimited.",
    ["operation"],
    registry=REGISTRY,
)


def prime(routes: Sequence[str]) -> None:
    """Create every known label combination at 0, so that dashboards show zero, not "no data",
    for what has not happened yet (no cache error). The workers' families need none: their
    collector shows every worker of the pool, at 0 until it has counted something."""
    for route in routes:
        REQUESTS_IN_FLIGHT.labels(route)
        for kind in ("prompt", "returned", "generated"):
            TOKENS.labels(route, kind)
        for result in ("hit", "miss", "bypass"):
            CACHE_LOOKUPS.labels(route, result)
    for method in ("mh", "smc"):
        POWER_REQUESTS.labels(method)
    for operation in ("get", "set"):
        CACHE_ERRORS.labels(operation)
    for result in ("completed", "failed"):
        BATCH_LINES.labels(result)
    for status in ("completed", "failed", "cancelled", "expired"):
        BATCHES.labels(status)
    for operation in BATCH_STORE_OPERATIONS:
        BATCH_STORE_ERRORS.labels(operation)
    for status in ("running", "succeeded", "failed", "cancelled"):
        FINE_TUNING_JOBS.labels(status)
    for reason in REJECTION_REASONS:
        REJECTIONS.labels(reason)
    for operation in ("reserve", "settle"):
        RATE_LIMIT_ERRORS.labels(operation)


def watch_engine(num_running_requests: Callable[[], int]) -> None:
    """Read the engine's queue depth at scrape time."""
    ENGINE_REQUESTS.set_function(num_running_requests)


def render_latest() -> bytes:
    """Our metrics, then the process's default registry: vLLM's own (``vllm:*``, from an in-process
    engine) and the Python process collectors."""
    return generate_latest(REGISTRY) + generate_latest(DEFAULT_REGISTRY)
