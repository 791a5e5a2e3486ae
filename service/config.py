"""Settings of the service, in groups.

Like vLLM's config classes (``ModelConfig``, ``CacheConfig``, ``LoRAConfig``... gathered by
``VllmConfig``), each group is a class of its own, and ``Settings`` inherits them all:

    ServerSettings      where the process listens and what it logs
    ModelSettings       which model is served, under which name, with which adapter
    EngineSettings      the vLLM engine (in process, or each ``powerserve worker``)
    LoRASettings        LoRA in the engine and the fine-tuning jobs that add adapters to it
    WorkerPoolSettings  the vLLM workers a gateway drives instead of an in-process engine
    RequestSettings     a completion request's defaults and caps
    PowerSettings       the power route's defaults and budget
    CacheSettings       the response cache
    JobsSettings        files, batches and the state of fine-tuning jobs
    LimitsSettings      API keys, rate limits, admission control, caps and shutdown

Each setting is an environment variable (``POWERSERVE_<NAME>``; ``HOST``, ``PORT`` and ``REDIS_URL``
also without the prefix), a line of a ``.env`` file, and a flag (``--max-model-len 4096``). The app
factory builds one ``Settings`` and passes it down; code reads it flat (``settings.max_model_len``).
Each ``powerserve`` subcommand inherits only the groups it uses, so its ``--help`` lists only those
(service/cli.py), and ``Settings.from_command`` makes the whole ``Settings`` from what it holds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, TypedDict, TypeVar, cast

from pydantic import AliasChoices, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = [
    "DEFAULT_MODEL_NAME",
    "ENV_PREFIX",
    "SETTINGS_GROUPS",
    "CacheSettings",
    "EngineSettings",
    "JobsSettings",
    "LimitsSettings",
    "LoRASettings",
    "ModelSettings",
    "PowerSettings",
    "RequestSettings",
    "ServerSettings",
    "Settings",
    "WorkerPoolOptions",
    "WorkerPoolSettings",
    "environment_names",
    "settings_group",
]

DEFAULT_MODEL_NAME = "smollm2-135m-instruct"
ENV_PREFIX = "POWERSERVE_"

_Group = TypeVar("_Group", bound=BaseSettings)


def _alias(name: str, bare: str) -> AliasChoices:
    return AliasChoices(name, bare, f"{ENV_PREFIX}{bare}")


class _SettingsGroup(BaseSettings):
    """What every group shares: the environment prefix, ``.env``, kebab-case flags."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_file=".env",
        extra="ignore",
        populate_by_name=True,
        cli_kebab_case=True,
    )


class ServerSettings(_SettingsGroup):
    """Where the process listens and what it logs (``powerserve serve`` and ``powerserve worker``)."""

    host: str = Field("127.0.0.1", validation_alias=_alias("host", "HOST"), description="Bind address.")
    port: int = Field(
        8000, validation_alias=_alias("port", "PORT"), ge=0, le=65535, description="Port to listen on."
    )
    log_level: str = Field("info", description="Log level of the service and uvicorn.")


class ModelSettings(_SettingsGroup):
    """Which model is served, under which name, and the distilled LoRA adapter served beside it."""

    model: Path | None = Field(
        None,
        description="A local Hugging Face model directory. Unset: the embedded default "
        f"({DEFAULT_MODEL_NAME}), prepared once under cache-dir.",
    )
    model_name: str | None = Field(
        None, description="Model id served; defaults to the model directory's name."
    )
    distilled_adapter: Path | None = Field(
        None,
        description="LoRA adapter directory served as <model>-distilled; unset, that route is absent.",
    )
    cache_dir: Path = Field(
        Path.home() / ".cache" / "powerserve",
        description="Where the embedded default model is prepared (outside the repository).",
    )

    @model_validator(mode="after")
    def _check(self) -> ModelSettings:
        if self.model is not None and not self.model.is_dir():
            raise ValueError(f"POWERSERVE_MODEL={self.model} is not a directory")
        return self

    @property
    def served_model_name(self) -> str:
        if self.model_name:
            return self.model_name
        return self.model.name if self.model is not None else DEFAULT_MODEL_NAME


class EngineSettings(_SettingsGroup):
    """The vLLM engine: the in-process one, or each ``powerserve worker`` (both get the same engine
    arguments, service/runtime.py). ``power-top-logprobs`` is here because it sets the engine's
    ``max_logprobs``: a worker must be started able to return what the gateway's power route asks."""

    max_model_len: int | None = Field(
        None,
        ge=16,
        description="Context length (prompt + answer). Unset: the model's own limit "
        "(max_position_embeddings; 8,192 for the embedded default), or 2048 when the model does not "
        "say.",
    )
    dtype: str = Field("float32", description="float32 on CPUs without AVX-512 bf16; auto on GPUs.")
    enforce_eager: bool = Field(
        True, description="Skip graph capture: 30 s start-up instead of 200 s on CPU."
    )
    gpu_memory_utilization: float = Field(
        0.5,
        gt=0,
        le=1,
        description="Share of the GPU's memory the vLLM engine takes (weights and KV cache); the rest "
        "is left, e.g. to a fine-tuning job's training.",
    )
    kv_cache_gib: int = Field(2, ge=1, description="KV-cache size on CPU (VLLM_CPU_KVCACHE_SPACE).")
    max_num_seqs: int = Field(256, ge=1, description="Sequences the engine batches at once.")
    kv_block_size: int | None = Field(
        32,
        ge=16,
        description="Tokens per KV-cache block, the prefix cache's granularity: an MCMC cut reuses the "
        "cached prefix up to the last whole block. vLLM's CPU default is 128; unset: vLLM's default.",
    )
    engine_start_timeout_s: float = Field(
        600.0, gt=0, description="Seconds the engine may take to start before start-up fails."
    )
    power_top_logprobs: int = Field(
        20,
        ge=1,
        description="Top-k raw log-probs per proposed token, from which the acceptance normalisers "
        "are computed (exact when k covers the vocabulary; otherwise a bounded lower bound).",
    )

    def context_length(self, model_limit: int | None) -> int:
        """The engine's max_model_len: as set, else the model's own limit (clients such as agent
        CLIs send thousands of tokens of instructions), else 2048."""
        if self.max_model_len is not None:
            return self.max_model_len
        return model_limit or 2048


class LoRASettings(_SettingsGroup):
    """LoRA in the engine: whether fine-tuning jobs run (and so the engine starts able to load the
    adapters they make), how many adapters it holds and how large they may be."""

    fine_tuning: bool | None = Field(
        None,
        description="Serve /v1/fine_tuning/jobs (power self-distillation) and the models they make, "
        "which needs an engine started able to load LoRA adapters. Unset: on when the in-process "
        "engine serves an adapter anyway (the embedded default's -distilled); true: LoRA is enabled "
        "for it.",
    )
    max_loras: int = Field(
        4, ge=1, description="LoRA adapters the engine holds at once when fine-tuning is on."
    )
    fine_tuning_max_rank: int = Field(
        16, ge=1, le=64, description="Largest LoRA rank a fine-tuning job may ask for."
    )


class WorkerPoolOptions(TypedDict):
    """``RemoteEngine``'s options for its worker pool (service/engines/remote/engine.py)."""

    health_interval_s: float
    probe_timeout_s: float
    stall_probes: int
    backoff_initial_s: float
    backoff_max_s: float
    request_timeout_s: float
    timeout_per_token_s: float


class WorkerPoolSettings(_SettingsGroup):
    """Scale-out: the vLLM workers a gateway drives instead of an in-process engine, and how it
    watches them and moves requests between them."""

    workers: str | None = Field(
        None,
        description="Comma-separated base URLs of vLLM workers (`powerserve worker`, or any vllm serve "
        "of the same model): the gateway drives them instead of an in-process engine.",
    )
    worker_health_interval_s: float = Field(
        2.0, gt=0, description="Seconds between worker health checks."
    )
    worker_probe_timeout_s: float = Field(
        5.0,
        gt=0,
        description="Health-probe timeout. A worker that misses worker-stall-probes probes in a row "
        "while answering nothing else is marked down; one that keeps answering requests is only busy.",
    )
    worker_stall_probes: int = Field(
        2,
        ge=1,
        description="Timed-out probes in a row, with nothing else answered meanwhile, that mark a "
        "worker down.",
    )
    worker_backoff_initial_s: float = Field(
        1.0,
        gt=0,
        description="Wait before re-probing a worker found down; it doubles with each failed probe.",
    )
    worker_backoff_max_s: float = Field(
        30.0, gt=0, description="Longest wait between probes of a worker that stays down."
    )
    worker_timeout_s: float = Field(
        60.0,
        gt=0,
        description="Worker request timeout (plus worker-timeout-per-token-s per requested token), "
        "past which a request moves to another worker.",
    )
    worker_timeout_per_token_s: float = Field(
        0.5,
        ge=0,
        description="Seconds added to a worker request's timeout per token it asks for: a long answer "
        "may take long without its worker being stalled.",
    )

    def worker_urls(self) -> list[str]:
        """The workers' base URLs; empty without workers (the in-process engine)."""
        return [url.strip() for url in (self.workers or "").split(",") if url.strip()]

    def worker_pool_options(self) -> WorkerPoolOptions:
        """The pool's options, by ``RemoteEngine``'s keyword names: ``RemoteEngine(urls, ...,
        **settings.worker_pool_options())``."""
        return WorkerPoolOptions(
            health_interval_s=self.worker_health_interval_s,
            probe_timeout_s=self.worker_probe_timeout_s,
            stall_probes=self.worker_stall_probes,
            backoff_initial_s=self.worker_backoff_initial_s,
            backoff_max_s=self.worker_backoff_max_s,
            request_timeout_s=self.worker_timeout_s,
            timeout_per_token_s=self.worker_timeout_per_token_s,
        )


class RequestSettings(_SettingsGroup):
    """What a completion request gets when it sets nothing, how many samples it may ask for, and
    how long and how large the Responses API's stored responses may be."""

    max_n: int = Field(16, ge=1, description="Largest `n` (samples per request) accepted.")
    max_choices: int = Field(
        128,
        ge=1,
        description="Most choices (prompts x n: engine sequences) one request may ask for; one "
        "prompt may always ask for max-n. Checked before any prompt is tokenised (400 above).",
    )
    default_max_tokens: int = Field(
        1024,
        ge=1,
        description="max_tokens of a chat request that sets none (capped by the context).",
    )
    responses_ttl_s: int = Field(
        86_400,
        ge=1,
        description="How long a stored response (POST /v1/responses with store true, the default) "
        "can be retrieved and continued with previous_response_id.",
    )
    responses_max_stored: int = Field(
        10_000,
        ge=1,
        description="Most responses kept in this process's memory (without Redis), the least "
        "recently used going first; with Redis (jobs-redis-url, else redis-url) only the TTL bounds "
        "them.",
    )
    responses_max_bytes: int = Field(
        1 << 20,
        ge=1,
        description="Largest stored response (its conversation and output, as JSON); a larger one "
        "is answered but not stored (logged).",
    )
    tool_call_parser: str = Field(
        "hermes",
        description="How the model writes the tool calls it chooses to make (tool_choice auto): the "
        "name of vLLM's parser for its syntax, as vllm serve --tool-call-parser takes. Required and "
        "named tool calls are constrained decoding and work with any model.",
    )


class PowerSettings(_SettingsGroup):
    """The power route's defaults (a request may override each) and its token budget."""

    power_alpha: float = Field(
        4.0, ge=1, description="Default alpha (temperature 1/alpha) of the power route."
    )
    power_method: Literal["mh", "smc"] = Field(
        "smc",
        description="Default power sampler: smc (Power-SMC particles, near plain-decoding latency) or "
        "mh (exact suffix Metropolis-Hastings, the reference). A request's power_method overrides.",
    )
    power_particles: int = Field(
        4,
        ge=1,
        le=256,
        description="SMC particles per answer (the fewest load-adaptive N gives, and a seeded "
        "request's N; 4: the most self-reward per second of latency in make bench).",
    )
    power_particles_max: int = Field(
        4,
        ge=1,
        le=256,
        description="SMC particles per answer on an idle engine: a request that sets none gets what "
        "the batch has room for (power-batch-room less the sequences in flight), between "
        "power-particles and this, and lets particles go, down to power-particles, when the load "
        "grows while it runs. At or below power-particles (the default) N is fixed: on the "
        "2-core CPU of make bench-particles, 8 particles took 1.40x the p50 of 4 one request at a "
        "time. Raise it (8) where the batch has width to spare, as on a GPU.",
    )
    power_batch_room: int = Field(
        16,
        ge=1,
        description="Sequences the engine (all workers together) decodes at little more cost per "
        "step than one; load-adaptive N fills it.",
    )
    power_resampling: Literal["systematic", "chopthin"] = Field(
        "systematic",
        description="How SMC resamples when its weights degenerate: systematic (N equal copies by "
        "weight) or chopthin (thin light particles, chop heavy ones, weights kept within a ratio). "
        "A request's power_resampling overrides.",
    )
    power_resample_at: Literal["block", "kv_block"] = Field(
        "block",
        description="Where SMC may resample: at every block's horizon (block), or only where a "
        "copy's prompt ends at most one block past a whole KV-cache block (kv_block: a copy then "
        "prefills at most block_size tokens, not up to kv_block_size; there it resamples unless "
        "the weights are even). A request's power_resample_at overrides.",
    )
    power_held_particles: bool = Field(
        True,
        description="Each SMC particle is one engine request for the whole answer. False re-submits "
        "every growing particle as a new request each block (the sampler before held particles: "
        "the same law, a prefill and a round trip per particle per block), kept so that make "
        "bench-particles measures the two in one run.",
    )
    power_mcmc_steps: int = Field(10, ge=0, description="Default Metropolis-Hastings steps per block.")
    power_max_tokens: int = Field(
        256,
        ge=1,
        description="max_tokens of a power request that sets none (each token costs many).",
    )
    power_token_budget: int = Field(
        200_000,
        ge=1,
        description="Most tokens one power request may make the engine generate (all chains, "
        "rejected proposals included); a request whose worst case exceeds it is refused with 400.",
    )


class CacheSettings(_SettingsGroup):
    """The response cache: Redis shared by gateway replicas (which also holds the rate-limit
    counters), or an in-process LRU."""

    redis_url: str | None = Field(
        None,
        validation_alias=_alias("redis_url", "REDIS_URL"),
        description="Redis for the response cache (shared by gateway replicas); unset: in-process LRU.",
    )
    cache_ttl_s: float = Field(3600.0, gt=0, description="How long a cached answer lives, by default.")
    cache_max_entries: int = Field(1024, ge=1, description="Size of the in-process LRU (without Redis).")
    cache_shared_across_projects: bool = Field(
        False,
        description="With API keys, answers are cached per project (a hit would tell one tenant "
        "what another asked); true shares one cache between every key.",
    )


class JobsSettings(_SettingsGroup):
    """Uploaded files, batches and fine-tuning jobs (service/jobs): where their state lives, upload
    caps, what each project may create (bytes stored, uploads per minute, batches and jobs at once),
    and how batch lines share the engine with interactive requests."""

    state_dir: Path | None = Field(
        None,
        description="Where uploaded files, batch and fine-tuning job state live (SQLite and files); "
        "unset: <cache-dir>/state.",
    )
    jobs_redis_url: str | None = Field(
        None,
        description="Redis holding files, batches and the queue of batch lines, shared by gateway "
        "replicas: each claims lines, and a replica that dies has its lines taken over. A durable "
        "Redis that does not evict (not the response cache's allkeys-lru one); unset: SQLite under "
        "state-dir, one gateway.",
    )
    batch_claim_timeout_s: float = Field(
        60.0,
        gt=0,
        description="With jobs-redis-url: a line a replica has not renewed its claim on for this "
        "long is taken over by another (live replicas renew every third of it).",
    )
    files_max_bytes: int = Field(
        100 * 1024 * 1024, ge=1, description="Largest file accepted by POST /v1/files (413 above)."
    )
    files_max_lines: int = Field(
        50_000, ge=1, description="Most JSONL lines (requests) in one uploaded file (400 above)."
    )
    files_retention_s: int = Field(
        30 * 24 * 3600,
        ge=0,
        description="How long an uploaded file and a batch's output and error files are kept when "
        "the upload sets no expires_after (0: until deleted). Expired files are deleted.",
    )
    files_max_bytes_per_project: int = Field(
        10 * 1024**3,
        ge=0,
        description="Most bytes of files one project keeps (its uploads, batch output and error "
        "files, fine-tuning results; expired files not counted): an upload that would go over it "
        "is refused (400 storage_limit_exceeded). Files created without API keys count as one "
        "shared project. 0: unlimited.",
    )
    uploads_per_minute: int = Field(
        60,
        ge=0,
        description="Uploads (POST /v1/files) one project may make per minute (a moving window); "
        "above: 429 with retry-after. Counted in each gateway replica's memory (N replicas admit up "
        "to N times this). Uploads without API keys share one count. 0: unlimited.",
    )
    batch_concurrency: int = Field(
        8, ge=1, description="Batch lines in flight at once while no interactive request runs."
    )
    batch_busy_concurrency: int = Field(
        1,
        ge=0,
        description="Batch lines in flight at once while interactive requests run (batch work "
        "yields to them; 0 pauses batches while any runs).",
    )
    batch_yield_s: float = Field(
        2.0,
        ge=0,
        description="Batches stay at their busy share this long after the last interactive "
        "request ended.",
    )
    batch_priority: int = Field(
        10,
        ge=1,
        description="vLLM scheduling priority of batch lines' engine requests (interactive ones have "
        "0; lower runs first).",
    )
    batches_max_active_per_project: int = Field(
        10,
        ge=0,
        description="Batches one project may have not yet final (validating, in_progress, "
        "finalizing, cancelling); creating another is refused (429 too_many_active). Batches "
        "created without API keys count as one shared project. 0: unlimited.",
    )
    fine_tuning_max_active_per_project: int = Field(
        2,
        ge=0,
        description="Fine-tuning jobs one project may have not yet final (validating_files, queued, "
        "running); creating another is refused (429 too_many_active). Jobs created without API "
        "keys count as one shared project. 0: unlimited.",
    )


class LimitsSettings(_SettingsGroup):
    """What guards the HTTP API (service/limits, service/api/guards.py, service/api/shutdown.py):
    API keys, rate limits per key, admission control, the body cap and the drain on shutdown.
    docs/operations/access.md explains each."""

    api_keys: str | None = Field(
        None,
        description="API keys as name=key pairs, comma-separated. With keys (here or in api-keys-file) "
        "every /v1 call needs `Authorization: Bearer <key>`; without, the API is open.",
    )
    api_keys_file: Path | None = Field(
        None,
        description="TOML or JSON file of API keys by name, each its SHA-256 hash (`powerserve "
        "hash-key`) and optional rpm/tpm overrides.",
    )
    metrics_require_key: bool = Field(
        False, description="/metrics needs an API key too (when keys are configured)."
    )
    rate_limit_rpm: int | None = Field(
        None, ge=1, description="Requests per minute per key (per client address without keys)."
    )
    rate_limit_tpm: int | None = Field(
        None,
        ge=1,
        description="Engine tokens per minute per key: a request reserves its worst case when admitted "
        "and gets back what it did not generate when it ends.",
    )
    max_inflight_requests: int | None = Field(
        None, ge=1, description="Completion requests in flight per process; past it, 503 at once."
    )
    max_inflight_tokens: int | None = Field(
        None,
        ge=1,
        description="Worst-case engine tokens reserved by the requests in flight per process; past it, "
        "503 at once (a request alone is always admitted).",
    )
    max_body_bytes: int = Field(
        1_000_000, ge=1, description="Largest request body; larger ones get 413 before parsing."
    )
    drain_timeout_s: float = Field(
        60.0,
        ge=0,
        description="On SIGTERM: /health turns 503, new requests get 503, and requests in flight get "
        "this long to finish before the process exits.",
    )


# In the order of this file, which is the order of `powerserve serve --help`.
SETTINGS_GROUPS: tuple[type[BaseSettings], ...] = (
    ServerSettings,
    ModelSettings,
    EngineSettings,
    LoRASettings,
    WorkerPoolSettings,
    RequestSettings,
    PowerSettings,
    CacheSettings,
    JobsSettings,
    LimitsSettings,
)


# Pydantic puts the fields of the last base first: the groups are listed last to first, so that
# the fields (and the help) come in the order above.
class Settings(
    LimitsSettings,
    JobsSettings,
    CacheSettings,
    PowerSettings,
    RequestSettings,
    WorkerPoolSettings,
    LoRASettings,
    EngineSettings,
    ModelSettings,
    ServerSettings,
):
    """Every setting: all the groups, read flat (``settings.max_model_len``). Built once by the app
    factory (or ``powerserve serve``) and passed down; ``settings.group(EngineSettings)`` gives one
    group alone."""

    @property
    def resolved_state_dir(self) -> Path:
        """Where job state lives: state-dir, else <cache-dir>/state (two groups: jobs and model)."""
        return self.state_dir if self.state_dir is not None else self.cache_dir / "state"

    def group(self, group: type[_Group]) -> _Group:
        """One group of these settings, with their values (not read again from the environment)."""
        values = {name: getattr(self, name) for name in group.model_fields}
        return cast(_Group, group.model_construct(**values))

    @classmethod
    def from_command(cls, command: BaseSettings, **overrides: Any) -> Settings:
        """The whole settings of a command that holds only some groups (``powerserve worker``, the
        distill stages): the command's values and ``overrides``, and for the other groups what the
        environment and ``.env`` say (their defaults otherwise), as ``Settings()`` would read them."""
        names = type(command).model_fields.keys() & cls.model_fields.keys()
        return cls(**{**{name: getattr(command, name) for name in names}, **overrides})


def settings_group(name: str) -> type[BaseSettings] | None:
    """The group that holds the setting ``name`` (``EngineSettings`` for ``max_model_len``)."""
    return next((group for group in SETTINGS_GROUPS if name in group.model_fields), None)


def environment_names(name: str) -> tuple[str, ...]:
    """The environment variables that set the setting ``name``: ``POWERSERVE_<NAME>``, or its aliases
    (``HOST`` and ``POWERSERVE_HOST``)."""
    alias = Settings.model_fields[name].validation_alias
    if isinstance(alias, AliasChoices):
        choices = [choice.upper() for choice in alias.choices if isinstance(choice, str)]
        return tuple(dict.fromkeys(choices))
    return (f"{ENV_PREFIX}{name.upper()}",)
