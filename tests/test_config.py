"""service/config.py: the settings, in groups, read from the environment, ``.env`` and arguments.

The contract below is every environment variable name the flat ``Settings`` of before the groups
read (generated from that class, then written out by hand): each still sets its field, in
``Settings`` and in the group that now holds the field.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from pydantic_settings import BaseSettings

from service.config import (
    DEFAULT_MODEL_NAME,
    SETTINGS_GROUPS,
    CacheSettings,
    EngineSettings,
    JobsSettings,
    LimitsSettings,
    LoRASettings,
    ModelSettings,
    PowerSettings,
    RequestSettings,
    ServerSettings,
    Settings,
    WorkerPoolSettings,
    environment_names,
    settings_group,
)

# The model directory must exist: "<tmp>" stands for a directory the test makes.
MODEL_DIR = "<tmp>"

# environment variable -> (field, value in the environment, value read)
CONTRACT: dict[str, tuple[str, str, Any]] = {
    "HOST": ("host", "0.0.0.0", "0.0.0.0"),
    "POWERSERVE_HOST": ("host", "10.0.0.1", "10.0.0.1"),
    "PORT": ("port", "9001", 9001),
    "POWERSERVE_PORT": ("port", "9002", 9002),
    "POWERSERVE_LOG_LEVEL": ("log_level", "debug", "debug"),
    "POWERSERVE_MODEL": ("model", MODEL_DIR, MODEL_DIR),
    "POWERSERVE_MODEL_NAME": ("model_name", "mine", "mine"),
    "POWERSERVE_DISTILLED_ADAPTER": ("distilled_adapter", "/srv/adapter", Path("/srv/adapter")),
    "POWERSERVE_CACHE_DIR": ("cache_dir", "/srv/cache", Path("/srv/cache")),
    "POWERSERVE_MAX_MODEL_LEN": ("max_model_len", "4096", 4096),
    "POWERSERVE_DTYPE": ("dtype", "bfloat16", "bfloat16"),
    "POWERSERVE_ENFORCE_EAGER": ("enforce_eager", "false", False),
    "POWERSERVE_GPU_MEMORY_UTILIZATION": ("gpu_memory_utilization", "0.9", 0.9),
    "POWERSERVE_KV_CACHE_GIB": ("kv_cache_gib", "8", 8),
    "POWERSERVE_MAX_NUM_SEQS": ("max_num_seqs", "64", 64),
    "POWERSERVE_KV_BLOCK_SIZE": ("kv_block_size", "16", 16),
    "POWERSERVE_ENGINE_START_TIMEOUT_S": ("engine_start_timeout_s", "30", 30.0),
    "POWERSERVE_WORKERS": ("workers", "http://a:1,http://b:2", "http://a:1,http://b:2"),
    "POWERSERVE_WORKER_HEALTH_INTERVAL_S": ("worker_health_interval_s", "3", 3.0),
    "POWERSERVE_WORKER_PROBE_TIMEOUT_S": ("worker_probe_timeout_s", "7", 7.0),
    "POWERSERVE_WORKER_STALL_PROBES": ("worker_stall_probes", "4", 4),
    "POWERSERVE_WORKER_BACKOFF_INITIAL_S": ("worker_backoff_initial_s", "0.5", 0.5),
    "POWERSERVE_WORKER_BACKOFF_MAX_S": ("worker_backoff_max_s", "10", 10.0),
    "POWERSERVE_WORKER_TIMEOUT_S": ("worker_timeout_s", "90", 90.0),
    "POWERSERVE_WORKER_TIMEOUT_PER_TOKEN_S": ("worker_timeout_per_token_s", "0.25", 0.25),
    "POWERSERVE_MAX_N": ("max_n", "4", 4),
    "POWERSERVE_DEFAULT_MAX_TOKENS": ("default_max_tokens", "128", 128),
    "POWERSERVE_POWER_ALPHA": ("power_alpha", "2", 2.0),
    "POWERSERVE_POWER_METHOD": ("power_method", "mh", "mh"),
    "POWERSERVE_POWER_PARTICLES": ("power_particles", "8", 8),
    "POWERSERVE_POWER_MCMC_STEPS": ("power_mcmc_steps", "3", 3),
    "POWERSERVE_POWER_MAX_TOKENS": ("power_max_tokens", "64", 64),
    "POWERSERVE_POWER_TOP_LOGPROBS": ("power_top_logprobs", "10", 10),
    "POWERSERVE_POWER_TOKEN_BUDGET": ("power_token_budget", "1000", 1000),
    "REDIS_URL": ("redis_url", "redis://cache:6379/0", "redis://cache:6379/0"),
    "POWERSERVE_REDIS_URL": ("redis_url", "redis://cache:6379/2", "redis://cache:6379/2"),
    "POWERSERVE_CACHE_TTL_S": ("cache_ttl_s", "60", 60.0),
    "POWERSERVE_CACHE_MAX_ENTRIES": ("cache_max_entries", "10", 10),
    "POWERSERVE_STATE_DIR": ("state_dir", "/srv/state", Path("/srv/state")),
    "POWERSERVE_JOBS_REDIS_URL": ("jobs_redis_url", "redis://jobs:6379/1", "redis://jobs:6379/1"),
    "POWERSERVE_BATCH_CLAIM_TIMEOUT_S": ("batch_claim_timeout_s", "30", 30.0),
    "POWERSERVE_FILES_MAX_BYTES": ("files_max_bytes", "1000", 1000),
    "POWERSERVE_FILES_MAX_LINES": ("files_max_lines", "10", 10),
    "POWERSERVE_BATCH_CONCURRENCY": ("batch_concurrency", "2", 2),
    "POWERSERVE_BATCH_BUSY_CONCURRENCY": ("batch_busy_concurrency", "0", 0),
    "POWERSERVE_BATCH_YIELD_S": ("batch_yield_s", "1", 1.0),
    "POWERSERVE_BATCH_PRIORITY": ("batch_priority", "5", 5),
    "POWERSERVE_FINE_TUNING": ("fine_tuning", "true", True),
    "POWERSERVE_MAX_LORAS": ("max_loras", "2", 2),
    "POWERSERVE_FINE_TUNING_MAX_RANK": ("fine_tuning_max_rank", "32", 32),
    "POWERSERVE_API_KEYS": ("api_keys", "alice=sk-a", "alice=sk-a"),
    "POWERSERVE_API_KEYS_FILE": ("api_keys_file", "/srv/keys.toml", Path("/srv/keys.toml")),
    "POWERSERVE_METRICS_REQUIRE_KEY": ("metrics_require_key", "true", True),
    "POWERSERVE_RATE_LIMIT_RPM": ("rate_limit_rpm", "60", 60),
    "POWERSERVE_RATE_LIMIT_TPM": ("rate_limit_tpm", "1000", 1000),
    "POWERSERVE_MAX_INFLIGHT_REQUESTS": ("max_inflight_requests", "8", 8),
    "POWERSERVE_MAX_INFLIGHT_TOKENS": ("max_inflight_tokens", "5000", 5000),
    "POWERSERVE_MAX_BODY_BYTES": ("max_body_bytes", "2000", 2000),
    "POWERSERVE_DRAIN_TIMEOUT_S": ("drain_timeout_s", "5", 5.0),
}

GROUPS: dict[type[BaseSettings], list[str]] = {
    ServerSettings: ["host", "port", "log_level"],
    ModelSettings: ["model", "model_name", "distilled_adapter", "cache_dir"],
    EngineSettings: [
        "max_model_len", "dtype", "enforce_eager", "gpu_memory_utilization", "kv_cache_gib",
        "max_num_seqs", "kv_block_size", "engine_start_timeout_s", "power_top_logprobs",
    ],
    LoRASettings: ["fine_tuning", "max_loras", "fine_tuning_max_rank"],
    WorkerPoolSettings: [
        "workers", "worker_health_interval_s", "worker_probe_timeout_s", "worker_stall_probes",
        "worker_backoff_initial_s", "worker_backoff_max_s", "worker_timeout_s",
        "worker_timeout_per_token_s",
    ],
    RequestSettings: ["max_n", "default_max_tokens"],
    PowerSettings: [
        "power_alpha", "power_method", "power_particles", "power_mcmc_steps", "power_max_tokens",
        "power_token_budget",
    ],
    CacheSettings: ["redis_url", "cache_ttl_s", "cache_max_entries"],
    JobsSettings: [
        "state_dir", "jobs_redis_url", "batch_claim_timeout_s", "files_max_bytes", "files_max_lines",
        "batch_concurrency", "batch_busy_concurrency", "batch_yield_s", "batch_priority",
    ],
    LimitsSettings: [
        "api_keys", "api_keys_file", "metrics_require_key", "rate_limit_rpm", "rate_limit_tpm",
        "max_inflight_requests", "max_inflight_tokens", "max_body_bytes", "drain_timeout_s",
    ],
}  # fmt: skip


# No setting from the machine running the tests, and no .env but the test's own.
pytestmark = pytest.mark.usefixtures("clean_settings_environment")


def _expected(value: Any, tmp_path: Path) -> Any:
    return tmp_path if value == MODEL_DIR else value


# --- the environment contract ------------------------------------------------------------------


def test_the_contract_names_the_56_settings_of_before_the_groups() -> None:
    fields = {field for field, _, _ in CONTRACT.values()}
    assert len(fields) == 56 and fields <= set(Settings.model_fields)  # settings may be added
    named = {name for field in Settings.model_fields for name in environment_names(field)}
    assert set(CONTRACT) <= named


@pytest.mark.parametrize("name", sorted(CONTRACT))
def test_each_environment_variable_sets_its_field(
    name: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    field, raw, value = CONTRACT[name]
    monkeypatch.setenv(name, str(tmp_path) if raw == MODEL_DIR else raw)
    expected = _expected(value, tmp_path)
    assert getattr(Settings(), field) == expected
    group = settings_group(field)
    assert group is not None
    assert getattr(group(), field) == expected  # a subcommand holding only this group reads it too


def test_defaults_are_unchanged() -> None:
    settings = Settings()
    assert (settings.host, settings.port, settings.log_level) == ("127.0.0.1", 8000, "info")
    assert settings.model is None and settings.cache_dir == Path.home() / ".cache" / "powerserve"
    assert (settings.max_model_len, settings.dtype, settings.kv_block_size) == (None, "float32", 32)
    assert (settings.enforce_eager, settings.gpu_memory_utilization) == (True, 0.5)
    assert (settings.workers, settings.worker_timeout_s, settings.worker_stall_probes) == (None, 60.0, 2)
    assert (settings.power_method, settings.power_particles, settings.power_alpha) == ("smc", 4, 4.0)
    assert (settings.power_top_logprobs, settings.power_token_budget) == (20, 200_000)
    assert (settings.redis_url, settings.cache_ttl_s, settings.cache_max_entries) == (None, 3600.0, 1024)
    assert (settings.files_max_bytes, settings.batch_priority) == (100 * 1024 * 1024, 10)
    assert (settings.fine_tuning, settings.max_loras, settings.fine_tuning_max_rank) == (None, 4, 16)
    assert (settings.api_keys, settings.rate_limit_rpm, settings.max_inflight_requests) == (None,) * 3
    assert settings.metrics_require_key is False
    assert (settings.max_body_bytes, settings.drain_timeout_s) == (1_000_000, 60.0)


def test_names_are_case_insensitive(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("powerserve_max_n", "5")
    monkeypatch.setenv("port", "8123")
    settings = Settings()
    assert (settings.max_n, settings.port) == (5, 8123)


def test_arguments_beat_the_environment_which_beats_dotenv(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / ".env").write_text(
        "POWERSERVE_MAX_MODEL_LEN=1024\nPORT=9100\nREDIS_URL=redis://dotenv:6379/0\n"
        "POWERSERVE_BATCH_CONCURRENCY=3\nPOWERSERVE_UNKNOWN=ignored\n"
    )
    settings = Settings()
    assert settings.max_model_len == 1024
    assert settings.port == 9100
    assert settings.redis_url == "redis://dotenv:6379/0"
    assert settings.batch_concurrency == 3
    assert EngineSettings().max_model_len == 1024  # each group reads .env too

    monkeypatch.setenv("POWERSERVE_MAX_MODEL_LEN", "512")
    assert Settings().max_model_len == 512
    assert Settings(max_model_len=256).max_model_len == 256
    assert Settings(host="::1", redis_url=None).redis_url is None


@pytest.mark.parametrize(
    ("name", "raw", "message"),
    [
        ("PORT", "70000", "less than or equal to 65535"),
        ("POWERSERVE_MAX_MODEL_LEN", "8", "greater than or equal to 16"),
        ("POWERSERVE_GPU_MEMORY_UTILIZATION", "0", "greater than 0"),
        ("POWERSERVE_POWER_METHOD", "beam", "'mh' or 'smc'"),
        ("POWERSERVE_POWER_PARTICLES", "257", "less than or equal to 256"),
        ("POWERSERVE_FINE_TUNING_MAX_RANK", "128", "less than or equal to 64"),
        ("POWERSERVE_BATCH_BUSY_CONCURRENCY", "-1", "greater than or equal to 0"),
        ("POWERSERVE_RATE_LIMIT_RPM", "0", "greater than or equal to 1"),
        ("POWERSERVE_MAX_N", "many", "valid integer"),
        ("POWERSERVE_MODEL", "/nonexistent/model", "is not a directory"),
    ],
)
def test_invalid_values_are_refused(
    name: str, raw: str, message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(name, raw)
    with pytest.raises(ValidationError, match=message):
        Settings()


def test_the_model_directory_is_checked_by_its_group_too() -> None:
    with pytest.raises(ValidationError, match="POWERSERVE_MODEL=/nonexistent is not a directory"):
        ModelSettings(model=Path("/nonexistent"))


# --- the groups --------------------------------------------------------------------------------


def test_groups_hold_every_setting_once() -> None:
    assert list(SETTINGS_GROUPS) == list(GROUPS)
    for group, fields in GROUPS.items():
        assert set(fields) <= set(group.model_fields)
        assert issubclass(Settings, group)
        assert all(settings_group(field) is group for field in fields)
    # Each setting in one group; Settings lists them group by group, in SETTINGS_GROUPS' order.
    assert list(Settings.model_fields) == [f for group in SETTINGS_GROUPS for f in group.model_fields]
    assert settings_group("no_such_setting") is None


def test_environment_names() -> None:
    assert environment_names("max_model_len") == ("POWERSERVE_MAX_MODEL_LEN",)
    assert environment_names("host") == ("HOST", "POWERSERVE_HOST")
    assert environment_names("redis_url") == ("REDIS_URL", "POWERSERVE_REDIS_URL")


def test_group_gives_one_group_with_the_same_values(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings(max_model_len=4096, workers="http://a:1")
    monkeypatch.setenv("POWERSERVE_MAX_MODEL_LEN", "64")  # not read again
    engine = settings.group(EngineSettings)
    assert type(engine) is EngineSettings
    assert engine.model_dump() == {name: getattr(settings, name) for name in EngineSettings.model_fields}
    assert settings.group(WorkerPoolSettings).worker_urls() == ["http://a:1"]


def test_from_command_takes_the_command_values_and_the_environment_for_the_rest(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    class Command(EngineSettings, ModelSettings):
        rank: int = 8  # a command's own option, not a setting

    monkeypatch.setenv("POWERSERVE_MAX_N", "3")
    command = Command(max_model_len=4096, model=tmp_path)
    monkeypatch.setenv("POWERSERVE_MAX_MODEL_LEN", "64")  # the command's value wins
    settings = Settings.from_command(command, distilled_adapter=Path("/srv/adapter"))
    assert type(settings) is Settings
    assert (settings.max_model_len, settings.model, settings.max_n) == (4096, tmp_path, 3)
    assert settings.distilled_adapter == Path("/srv/adapter")
    assert not hasattr(settings, "rank")


# --- computed helpers --------------------------------------------------------------------------


def test_resolved_state_dir_is_a_property_not_a_setting(tmp_path: Path) -> None:
    assert isinstance(vars(Settings)["resolved_state_dir"], property)
    assert "resolved_state_dir" not in Settings.model_fields
    assert "resolved_state_dir" not in Settings().model_dump()
    assert Settings(cache_dir=tmp_path).resolved_state_dir == tmp_path / "state"
    assert Settings(cache_dir=tmp_path, state_dir=Path("/srv/state")).resolved_state_dir == Path(
        "/srv/state"
    )


def test_served_model_name(tmp_path: Path) -> None:
    model = tmp_path / "my-model"
    model.mkdir()
    assert Settings().served_model_name == DEFAULT_MODEL_NAME
    assert Settings(model=model).served_model_name == "my-model"
    assert Settings(model=model, model_name="alias").served_model_name == "alias"


def test_context_length() -> None:
    assert Settings().context_length(None) == 2048
    assert Settings().context_length(1024) == 1024
    assert Settings().context_length(8192) == 8192
    assert Settings(max_model_len=4096).context_length(1024) == 4096


def test_worker_pool_options_are_remote_engine_keywords() -> None:
    settings = Settings(
        workers=" http://a:1/ ,, http://b:2",
        worker_health_interval_s=3,
        worker_probe_timeout_s=7,
        worker_stall_probes=4,
        worker_backoff_initial_s=0.5,
        worker_backoff_max_s=10,
        worker_timeout_s=90,
        worker_timeout_per_token_s=0.25,
    )
    assert settings.worker_urls() == ["http://a:1/", "http://b:2"]
    assert settings.worker_pool_options() == {
        "health_interval_s": 3.0,
        "probe_timeout_s": 7.0,
        "stall_probes": 4,
        "backoff_initial_s": 0.5,
        "backoff_max_s": 10.0,
        "request_timeout_s": 90.0,
        "timeout_per_token_s": 0.25,
    }
    assert Settings().worker_urls() == []
