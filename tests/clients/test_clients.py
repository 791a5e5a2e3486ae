"""Third-party clients against the embedded default model: LangChain (structured output, tools,
the Responses API) and LiteLLM (responses(), tool calls). They live in an environment of their own
(.venv-clients, `make test` creates it: their pins are not the service's), so the checks run there
as a script, once, and each is asserted here."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from loadtests.harness import ServiceProcess
from tests.clients.client_checks import CHECKS

ROOT = Path(__file__).resolve().parents[2]
PYTHON = ROOT / ".venv-clients" / "bin" / "python"
MODEL = "smollm2-135m-instruct"


@pytest.fixture(scope="module")
def results(default_service: ServiceProcess) -> dict[str, Any]:
    if not PYTHON.exists():
        pytest.fail("the client libraries are installed by `make test` into .venv-clients")
    script = Path(__file__).with_name("client_checks.py")
    done = subprocess.run(
        [str(PYTHON), str(script), default_service.base_url, MODEL],
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


@pytest.mark.parametrize("check", sorted(CHECKS))
def test_client(results: dict[str, Any], check: str) -> None:
    assert results[check] == "ok", results[check]
