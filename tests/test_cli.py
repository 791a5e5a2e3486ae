"""service/cli.py: each ``powerserve`` subcommand takes the settings groups it uses, its ``--help``
lists them under their group's heading with their environment variables, and its flags still set
the same fields."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic_settings import BaseSettings, CliApp

from service.cli import Powerserve, Worker, cli_settings_source
from service.config import (
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
)
from service.distill.commands import Eval, Generate, Train
from tests.test_config import CONTRACT, MODEL_DIR

ROOT = Path(__file__).resolve().parents[1]


# No setting from the machine running the tests, and no .env but the test's own.
pytestmark = pytest.mark.usefixtures("clean_settings_environment")


def help_of(*command: str, capsys: pytest.CaptureFixture[str]) -> str:
    """``powerserve <command> --help`` as ``main`` builds it, its whitespace collapsed."""
    with pytest.raises(SystemExit) as exit_:
        CliApp.run(Powerserve, cli_args=[*command, "--help"], cli_settings_source=cli_settings_source())
    assert exit_.value.code == 0
    return " ".join(capsys.readouterr().out.split())


def parse(*args: str) -> Powerserve:
    """The command line parsed into the commands, none run."""
    return Powerserve(_cli_settings_source=cli_settings_source()(args=list(args)))


def flags(help_text: str) -> set[str]:
    return set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", help_text)) - {"--help"}


def setting_flags(*groups: type[BaseSettings]) -> set[str]:
    return {"--" + name.replace("_", "-") for group in groups for name in group.model_fields}


def env_help(name: str) -> str:
    return f"(env {' or '.join(environment_names(name))})"


# --- help ------------------------------------------------------------------------------------------


def test_worker_help_shows_its_groups_only(capsys: pytest.CaptureFixture[str]) -> None:
    text = help_of("worker", capsys=capsys)
    groups: list[type[BaseSettings]] = [ServerSettings, ModelSettings, EngineSettings, LoRASettings]
    assert flags(text) == setting_flags(*groups) | {"--powerserve-host", "--powerserve-port"}
    headings = re.findall(r"(\w+Settings):", text)
    assert headings == [group.__name__ for group in groups]
    unused = {"--api-keys", "--rate-limit-rpm", "--batch-concurrency", "--max-inflight-requests",
              "--redis-url", "--workers", "--power-alpha", "--max-n", "--drain-timeout-s"}  # fmt: skip
    assert not unused & flags(text)
    assert "POWERSERVE_API_KEYS" not in text and "POWERSERVE_BATCH_CONCURRENCY" not in text
    for group in groups:
        for name in group.model_fields:
            assert env_help(name) in text
    assert "(default: 8001) (env PORT or POWERSERVE_PORT)" in text  # the worker's own port default


def test_distill_train_help_shows_the_model_and_its_own_options(
    capsys: pytest.CaptureFixture[str],
) -> None:
    text = help_of("distill", "train", capsys=capsys)
    own = {"--teacher", "--adapter", "--rank", "--mlp", "--epochs", "--learning-rate", "--batch-size",
           "--max-steps", "--train-seed"}  # fmt: skip
    assert flags(text) == setting_flags(ModelSettings) | own
    assert re.findall(r"(\w+Settings):", text) == ["ModelSettings"]
    assert env_help("model") in text and env_help("cache_dir") in text
    for absent in ("--api-keys", "--batch-concurrency", "--max-model-len", "--rate-limit-rpm"):
        assert absent not in flags(text)
    assert "POWERSERVE_API_KEYS" not in text and "POWERSERVE_BATCH" not in text


@pytest.mark.parametrize("stage", ["generate", "eval"])
def test_distill_stages_show_what_the_service_without_http_reads(
    stage: str, capsys: pytest.CaptureFixture[str]
) -> None:
    text = help_of("distill", stage, capsys=capsys)
    groups: list[type[BaseSettings]] = [
        ModelSettings, EngineSettings, LoRASettings, WorkerPoolSettings, RequestSettings,
        PowerSettings, CacheSettings,
    ]  # fmt: skip
    assert re.findall(r"(\w+Settings):", text) == [group.__name__ for group in groups]
    assert setting_flags(*groups) <= flags(text)
    assert not flags(text) & setting_flags(ServerSettings, JobsSettings, LimitsSettings)
    assert "--limit" in text and "--alpha" in text  # the stage's own options


def test_serve_help_shows_every_group_and_every_environment_name(
    capsys: pytest.CaptureFixture[str],
) -> None:
    text = help_of("serve", capsys=capsys)
    assert re.findall(r"(\w+Settings):", text) == [group.__name__ for group in SETTINGS_GROUPS]
    aliases = {"--powerserve-host", "--powerserve-port", "--powerserve-redis-url"}
    assert flags(text) == setting_flags(*SETTINGS_GROUPS) | aliases
    assert len(setting_flags(*SETTINGS_GROUPS)) >= 56
    for name in Settings.model_fields:
        assert env_help(name) in text
    assert "(env HOST or POWERSERVE_HOST)" in text
    assert "(env POWERSERVE_MAX_MODEL_LEN)" in text


def test_the_installed_command_prints_the_same_grouped_help() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "service", "worker", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "EngineSettings:" in done.stdout and "--api-keys" not in done.stdout


# --- parsing ---------------------------------------------------------------------------------------


def test_every_serve_flag_sets_its_field(tmp_path: Path) -> None:
    args: list[str] = []
    expected = {}
    for name, (field, raw, value) in CONTRACT.items():
        if name != f"POWERSERVE_{field.upper()}":
            continue  # HOST, PORT, REDIS_URL: the same field as POWERSERVE_HOST...
        args += ["--" + field.replace("_", "-"), str(tmp_path) if raw == MODEL_DIR else raw]
        expected[field] = tmp_path if value == MODEL_DIR else value
    serve = parse("serve", *args).serve
    assert isinstance(serve, Settings)
    assert {field: getattr(serve, field) for field in expected} == expected
    assert len(expected) == 56


def test_alias_flags_still_parse() -> None:
    serve = parse("serve", "--powerserve-host", "0.0.0.0", "--PORT", "9001", "--powerserve-redis-url",
                  "redis://r:6379/0").serve  # fmt: skip
    assert serve is not None
    assert (serve.host, serve.port, serve.redis_url) == ("0.0.0.0", 9001, "redis://r:6379/0")


def test_worker_flags_and_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("POWERSERVE_MAX_NUM_SEQS", "7")  # one of the worker's groups
    monkeypatch.setenv("POWERSERVE_WORKERS", "http://a:1")  # not: read by the full Settings
    worker = parse("worker", "--model", str(tmp_path), "--max-model-len", "4096", "--port", "8100",
                   "--fine-tuning", "true").worker  # fmt: skip
    assert isinstance(worker, Worker) and not isinstance(worker, Settings)
    assert (worker.model, worker.max_model_len, worker.port, worker.max_num_seqs) == (
        tmp_path, 4096, 8100, 7,
    )  # fmt: skip
    assert worker.fine_tuning is True
    assert parse("worker").worker.port == 8001  # type: ignore[union-attr]

    settings = Settings.from_command(worker)
    assert (settings.model, settings.max_model_len, settings.port, settings.max_num_seqs) == (
        tmp_path, 4096, 8100, 7,
    )  # fmt: skip
    assert settings.workers == "http://a:1"


def test_worker_refuses_settings_it_does_not_use(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        parse("worker", "--api-keys", "a=sk-a")
    assert exit_.value.code == 2
    assert "unrecognized arguments: --api-keys" in capsys.readouterr().err


def test_distill_commands_parse_into_their_groups(tmp_path: Path) -> None:
    train = parse("distill", "train", "--model", str(tmp_path), "--max-steps", "3").distill
    assert train is not None and isinstance(train.train, Train)
    assert (train.train.model, train.train.max_steps) == (tmp_path, 3)
    assert Settings.from_command(train.train).model == tmp_path

    generate = parse("distill", "generate", "--max-model-len", "64", "--limit", "2").distill
    assert generate is not None and isinstance(generate.generate, Generate)
    assert (generate.generate.max_model_len, generate.generate.limit) == (64, 2)

    evaluation = parse("distill", "eval", "--kv-cache-gib", "1", "--adapter", "/srv/a").distill
    assert evaluation is not None and isinstance(evaluation.eval, Eval)
    settings = Settings.from_command(evaluation.eval, distilled_adapter=evaluation.eval.adapter)
    assert (settings.kv_cache_gib, settings.distilled_adapter) == (1, Path("/srv/a"))
