"""run_load end to end: locust's traffic mix against the tiny service (its three routes, Redis as the
response cache), summarised per kind of request. Needs .venv-load, the load tools' environment."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from loadtests.harness import ServiceProcess
from loadtests.load_report import output_path
from loadtests.run_load import LOAD_VENV, ROOT

pytestmark = pytest.mark.skipif(
    not (LOAD_VENV / "bin" / "locust").exists(),
    reason=f"no {LOAD_VENV}: python3.11 -m venv .venv-load && "
    ".venv-load/bin/pip install -r loadtests/requirements-load.txt",
)

KINDS = ("plain", "power", "distilled", "cached", "stream")


def test_every_kind_of_request_served_and_summarised(
    tiny_service: ServiceProcess, tmp_path: Path
) -> None:
    out = tmp_path / "load"
    weights = [arg for kind in KINDS for arg in (f"--weight-{kind}", "1")]
    command = [
        sys.executable, "-m", "loadtests.run_load",
        "--url", tiny_service.url, "--users", "3", "--seconds", "8", "--stop-timeout", "30",
        "--out", str(out), "--think-time", "0.1", "--cached-keys", "1", *weights,
    ]  # fmt: skip
    subprocess.run(command, check=True, timeout=240, cwd=ROOT)

    report = json.loads(output_path(out, ".json").read_text())
    routes = report["routes"]
    assert sorted(routes) == [
        "cached (tiny-power)",
        "distilled (tiny-distilled)",
        "plain (tiny)",
        "power (tiny-power)",
        "stream (tiny)",
    ]
    for name, summary in routes.items():
        assert summary["errors"] == 0, name
        assert summary["requests"] > 0 and summary["latency_s"]["p50"] > 0, name
    assert routes["cached (tiny-power)"]["cache_hits"] >= 1  # one key: every request after the first
    power = routes["power (tiny-power)"]
    assert power["generated_tokens_per_s"] > power["completion_tokens_per_s"]  # the chains' cost
    assert routes["stream (tiny)"]["ttft_s"]["p50"] > 0
    assert output_path(out, ".png").exists()
