"""One gateway on the tiny model with a state directory, shared by the jobs tests (files, batches,
the restart test that kills it and starts it again on the same directory), with API keys of three
projects and an operator's admin key (the tenants test; the other tests call as the operator)."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from loadtests.harness import ServiceProcess
from service.limits import hash_key
from tests.conftest import start_service, tiny_engine_args

# name -> (key, project, admin); the keys file holds their hashes. red has two keys; green's key
# has a requests-per-minute limit (whose headers show what a batch was charged); alan's power
# requests that set no power_budget get his key's, and bob's a power_latency_target no answer can
# meet.
KEYS = {
    "ops": ("sk-ops", "ops", True),
    "alice": ("sk-alice", "red", False),
    "alan": ("sk-alan", "red", False),
    "bob": ("sk-bob", "blue", False),
    "batcher": ("sk-batcher", "green", False),
}
RPM = {"batcher": 1000}
POWER_BUDGET = {"alan": 2.0}
LATENCY_TARGET = {"bob": 1e-6}
ADMIN_KEY = KEYS["ops"][0]


def write_keys_file(path: Path) -> Path:
    entries = [
        f'[keys.{name}]\nsha256 = "{hash_key(key)}"\nproject = "{project}"\n'
        + ("admin = true\n" if admin else "")
        + (f"rpm = {RPM[name]}\n" if name in RPM else "")
        + (f"power_budget = {POWER_BUDGET[name]}\n" if name in POWER_BUDGET else "")
        + (f"power_latency_target = {LATENCY_TARGET[name]}\n" if name in LATENCY_TARGET else "")
        for name, (key, project, admin) in KEYS.items()
    ]
    path.write_text("\n".join(entries))
    return path


class JobsGateway:
    """A gateway that tests may kill (-9) and start again on the same state directory."""

    def __init__(self, factory: pytest.TempPathFactory, args: list[str], state_dir: Path):
        self.factory = factory
        keys_file = write_keys_file(factory.mktemp("keys") / "keys.toml")
        self.args = [*args, "--state-dir", str(state_dir), "--api-keys-file", str(keys_file)]
        self.state_dir = state_dir
        self.starts = 0
        self.service = self._start()

    def _start(self) -> ServiceProcess:
        self.starts += 1
        return start_service(self.factory, f"jobs-{self.starts}", self.args)

    def client(self, timeout: float = 120, *, key: str = ADMIN_KEY) -> openai.OpenAI:
        """A client with ``key`` (by default the operator's, which sees every project)."""
        return openai.OpenAI(base_url=self.service.base_url, api_key=key, max_retries=0, timeout=timeout)

    def kill_and_restart(self) -> None:
        """SIGKILL the whole process group (gateway and engine core), then start afresh."""
        os.killpg(self.service.process.pid, signal.SIGKILL)
        self.service.process.wait(timeout=30)
        self.service.stop()
        self.service = self._start()

    def stop(self) -> None:
        self.service.stop()


@pytest.fixture(scope="package")
def jobs_gateway(
    tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, tiny_adapter: Path
) -> Iterator[JobsGateway]:
    args = [
        *tiny_engine_args(tiny_model_dir),
        "--distilled-adapter",
        str(tiny_adapter),
        "--power-method",
        "mh",
        "--files-max-bytes",
        "20000",
        "--files-max-lines",
        "200",
        "--batch-concurrency",
        "2",
    ]
    gateway = JobsGateway(tmp_path_factory, args, tmp_path_factory.mktemp("state"))
    yield gateway
    gateway.stop()


@pytest.fixture
def jobs_client(jobs_gateway: JobsGateway) -> openai.OpenAI:
    return jobs_gateway.client()
