"""service/runtime.py: the engine built from the settings (vLLM's arguments, LoRA, the adapter, the
worker pool). Engines are built, never started: no vLLM, no worker."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from service.config import Settings
from service.engines.base import DISTILLED_ADAPTER, LORA_TARGET_MODULES
from service.engines.local import LocalEngine, platform_arguments
from service.engines.remote import RemoteEngine
from service.metrics.workers import WORKER_POOL
from service.model_store import DEFAULT_ADAPTER_DIR
from service.runtime import (
    build_engine,
    engine_adapters,
    engine_arguments,
    fine_tuning_enabled,
    resolve_adapter,
)

# No setting from the machine running the tests, and no .env but the test's own.
pytestmark = pytest.mark.usefixtures("clean_settings_environment")


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    """A model directory as far as the arguments look: its config.json's context limit."""
    model = tmp_path / "my-model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"max_position_embeddings": 1024}))
    return model


@pytest.fixture
def adapter(tmp_path: Path) -> Path:
    """A peft adapter directory as far as the arguments look: its rank and modules."""
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    config = {"r": 8, "target_modules": ["q_proj", "v_proj"]}
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    return adapter


# --- engine_arguments ----------------------------------------------------------------------------


def test_engine_arguments_follow_the_settings(model_dir: Path) -> None:
    settings = Settings(
        model=model_dir, dtype="bfloat16", enforce_eager=False, gpu_memory_utilization=0.8,
        max_num_seqs=64, kv_block_size=16, power_top_logprobs=40,
    )  # fmt: skip
    arguments = engine_arguments(settings, model_dir)
    assert arguments == {
        "model": str(model_dir),
        "served_model_name": "my-model",
        "dtype": "bfloat16",
        "enforce_eager": False,
        "gpu_memory_utilization": 0.8,
        "max_model_len": 1024,  # the model's own limit
        "max_num_seqs": 64,
        "max_logprobs": 40,
        "enable_prefix_caching": True,
        "disable_log_stats": False,
        "scheduling_policy": "priority",
        "structured_outputs_config": {"backend": "xgrammar", "disable_any_whitespace": True},
        "block_size": 16,
        **platform_arguments(1024),
    }


def test_engine_arguments_context_and_block_size(model_dir: Path) -> None:
    settings = Settings(model=model_dir, max_model_len=4096, kv_block_size=None, power_top_logprobs=5)
    arguments = engine_arguments(settings, model_dir)
    assert arguments["max_model_len"] == 4096  # as set, over the model's own limit
    assert "block_size" not in arguments  # vLLM's default
    assert arguments["max_logprobs"] == 20  # never under 20, whatever power-top-logprobs says


def test_engine_arguments_without_adapters_enable_no_lora(model_dir: Path) -> None:
    arguments = engine_arguments(Settings(model=model_dir), model_dir)
    assert "enable_lora" not in arguments and "max_loras" not in arguments


def test_engine_arguments_with_fine_tuning_make_room_for_its_adapters(model_dir: Path) -> None:
    settings = Settings(model=model_dir, fine_tuning=True, max_loras=3, fine_tuning_max_rank=32)
    arguments = engine_arguments(settings, model_dir)
    assert arguments["enable_lora"] is True
    assert arguments["max_loras"] == 3
    assert arguments["max_lora_rank"] == 32
    assert arguments["lora_target_modules"] == sorted(LORA_TARGET_MODULES)


def test_engine_arguments_serve_the_distilled_adapter(model_dir: Path, adapter: Path) -> None:
    # Fine-tuning off: room for the adapter alone, at its own rank and modules.
    settings = Settings(model=model_dir, distilled_adapter=adapter, fine_tuning=False)
    arguments = engine_arguments(settings, model_dir)
    assert (arguments["enable_lora"], arguments["max_loras"], arguments["max_lora_rank"]) == (True, 1, 8)
    assert arguments["lora_target_modules"] == ["q_proj", "v_proj"]
    # Unset: on, as an adapter is served anyway; the jobs' ranks and modules too.
    arguments = engine_arguments(settings.model_copy(update={"fine_tuning": None}), model_dir)
    assert (arguments["max_loras"], arguments["max_lora_rank"]) == (4, 16)
    assert arguments["lora_target_modules"] == sorted(LORA_TARGET_MODULES)


# --- fine_tuning_enabled, resolve_adapter --------------------------------------------------------


def test_fine_tuning_enabled(model_dir: Path, adapter: Path) -> None:
    assert not fine_tuning_enabled(Settings(model=model_dir))
    assert fine_tuning_enabled(Settings(model=model_dir, fine_tuning=True))
    assert fine_tuning_enabled(Settings(model=model_dir, distilled_adapter=adapter))
    off = Settings(model=model_dir, distilled_adapter=adapter, fine_tuning=False)
    assert not fine_tuning_enabled(off)
    # With workers only when asked for: they must be started for it and share the state directory.
    assert fine_tuning_enabled(Settings(model=model_dir, fine_tuning=True, workers="http://a:1"))
    remote = Settings(model=model_dir, distilled_adapter=adapter, workers="http://a:1")
    assert not fine_tuning_enabled(remote)


def test_resolve_adapter(model_dir: Path, adapter: Path) -> None:
    assert resolve_adapter(Settings(model=model_dir, distilled_adapter=adapter)) == adapter
    assert resolve_adapter(Settings(model=model_dir)) is None  # a model of one's own: no adapter
    assert resolve_adapter(Settings(distilled_adapter=adapter)) == adapter
    shipped = (DEFAULT_ADAPTER_DIR / "adapter_config.json").exists()
    assert resolve_adapter(Settings()) == (DEFAULT_ADAPTER_DIR if shipped else None)
    # The embedded default named by its path (the workers' --model in compose and k8s) is still
    # the default: it gets the shipped adapter.
    (model_dir / ".powerserve-ready").touch()
    assert resolve_adapter(Settings(model=model_dir)) == (DEFAULT_ADAPTER_DIR if shipped else None)
    assert engine_adapters(Settings(model=model_dir, distilled_adapter=adapter)) == {
        DISTILLED_ADAPTER: adapter
    }


# --- build_engine --------------------------------------------------------------------------------


def test_build_engine_with_workers_builds_a_remote_engine_with_the_pool_options(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, adapter: Path
) -> None:
    monkeypatch.setattr(WORKER_POOL, "snapshot", WORKER_POOL.snapshot)  # restored afterwards
    settings = Settings(
        workers=" http://w1:8001/ , http://w2:8001,",
        model_name="served",
        distilled_adapter=adapter,
        worker_health_interval_s=3,
        worker_probe_timeout_s=7,
        worker_stall_probes=4,
        worker_backoff_initial_s=0.5,
        worker_backoff_max_s=10,
        worker_timeout_s=90,
        worker_timeout_per_token_s=0.25,
    )
    missing = tmp_path / "no-such-model"  # the engine reads it only when it starts
    engine = build_engine(settings, missing)
    assert isinstance(engine, RemoteEngine)
    assert not missing.exists()
    assert [worker.url for worker in engine.pool.workers] == ["http://w1:8001", "http://w2:8001"]
    assert engine.model_dir == missing
    assert (engine._model_id, engine._adapters) == ("served", (DISTILLED_ADAPTER,))
    options = {
        "health_interval_s": engine._monitor._interval_s,
        "probe_timeout_s": engine._monitor._probe_timeout_s,
        "stall_probes": engine._monitor._stall_probes,
        "backoff_initial_s": engine._monitor._backoff_initial_s,
        "backoff_max_s": engine._monitor._backoff_max_s,
        "request_timeout_s": engine._request_timeout_s,
        "timeout_per_token_s": engine._timeout_per_token_s,
    }
    assert options == settings.worker_pool_options()
    assert options == {
        "health_interval_s": 3.0,
        "probe_timeout_s": 7.0,
        "stall_probes": 4,
        "backoff_initial_s": 0.5,
        "backoff_max_s": 10.0,
        "request_timeout_s": 90.0,
        "timeout_per_token_s": 0.25,
    }
    assert engine._client._request_timeout_s == 90.0
    assert WORKER_POOL.snapshot == engine.worker_snapshot  # its workers are on /metrics


def test_build_engine_without_workers_builds_the_in_process_engine(
    model_dir: Path, adapter: Path
) -> None:
    settings = Settings(model=model_dir, distilled_adapter=adapter, kv_cache_gib=3)
    engine = build_engine(settings, model_dir)
    assert isinstance(engine, LocalEngine)
    assert engine._engine_kwargs == engine_arguments(settings, model_dir)
    assert engine.adapters == {DISTILLED_ADAPTER: adapter}
    assert engine._kv_cache_gib == 3
