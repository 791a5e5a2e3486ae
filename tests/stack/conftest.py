"""The remote-mode stack: two real `powerserve worker` processes (stock vLLM OpenAI servers on the
tiny model) and a gateway on them, started once for the package, with fine-tuning on (the workers
load a job's adapter at run time from the gateway's state directory). Modules run in file order, and
test_remote_mode.py, last, ends by killing the workers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from loadtests.harness import ServiceProcess
from tests.conftest import start_service, tiny_engine_args


class Stack:
    def __init__(
        self, gateway: ServiceProcess, workers: list[ServiceProcess], args: list[str], logs: Path
    ):
        self.gateway = gateway
        self.workers = workers
        self.args = args  # the model arguments workers and gateways share
        self.logs = logs

    def restart_worker(self, index: int) -> ServiceProcess:
        """Stop worker ``index`` and start a fresh one at its address (the gateway's list)."""
        old = self.workers[index]
        old.stop()
        log = self.logs / f"worker-{index}-again.log"
        worker = ServiceProcess(self.args, log, command="worker", port=old.port).wait_ready()
        self.workers[index] = worker
        return worker

    @property
    def worker_urls(self) -> str:
        return ",".join(worker.url for worker in self.workers)

    def requests_by_worker(self) -> list[float]:
        return [
            # The gateway labels each worker by its index in POWERSERVE_WORKERS (worker_urls' order).
            self.gateway.metric("powerserve_worker_requests_total", worker=str(i))
            for i in range(len(self.workers))
        ]


@pytest.fixture(scope="package")
def stack(
    tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, tiny_adapter: Path
) -> Iterator[Stack]:
    args = [*tiny_engine_args(tiny_model_dir), "--distilled-adapter", str(tiny_adapter)]
    args += ["--fine-tuning", "true"]
    logs = tmp_path_factory.mktemp("remote")
    state = tmp_path_factory.mktemp("remote-state")
    workers = [ServiceProcess(args, logs / f"worker-{i}.log", command="worker") for i in range(2)]
    gateway = None
    try:
        for worker in workers:
            worker.wait_ready()
        urls = ",".join(worker.url for worker in workers)
        gateway = start_service(
            tmp_path_factory,
            "gateway",
            [
                *args,
                *("--max-n", "512", "--worker-health-interval-s", "1", "--power-method", "mh"),
                *("--state-dir", str(state)),
            ],
            env={"POWERSERVE_WORKERS": urls},
        )
        yield Stack(gateway, workers, args, logs)
    finally:
        for process in [gateway, *workers]:
            if process is not None:
                process.stop()
