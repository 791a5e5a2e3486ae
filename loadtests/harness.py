"""Real servers as subprocesses on loopback, for the test suite and the benchmarks alike.

``ServiceProcess`` runs ``powerserve serve`` (or ``worker``) on a free port, ``RedisProcess`` a
throw-away ``redis-server``, ``PrometheusProcess`` a ``prometheus`` scraping given targets;
``free_port`` and ``wait_for_http`` are their building blocks. It lives here, under loadtests/, so that
the benchmarks need nothing from tests/; the tests import it from here too (one copy).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import httpx

if TYPE_CHECKING:  # prometheus_client is imported where /metrics is read (not every venv has it)
    from prometheus_client.samples import Sample

__all__ = [
    "LOOPBACK",
    "PrometheusProcess",
    "RedisProcess",
    "ServiceProcess",
    "children_rss_mib",
    "free_port",
    "rss_mib",
    "stop_process_group",
    "wait_for_http",
]

LOOPBACK = "127.0.0.1"


def rss_mib(pid: int) -> float:
    """Resident memory of one process, in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def children_rss_mib(pid: int) -> float:
    """Resident memory of a process's children (the gateway's engine core), in MiB."""
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            # "pid (comm) state ppid ...": the command may hold spaces, so split after its ")".
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                total += rss_mib(int(stat.parent.name))
    return total


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def wait_for_http(url: str, *, timeout: float, alive: subprocess.Popen | None = None) -> None:
    """Poll ``url`` until it answers 200; fail early if ``alive`` (the server's process) exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if alive is not None and alive.poll() is not None:
            raise RuntimeError(f"the process serving {url} exited with {alive.returncode}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2).status_code == 200:
                return
        time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer 200 in {timeout} s")


class ServiceProcess:
    """``powerserve serve`` (or ``worker``) in a child process, on a free loopback port, its log in
    ``log_path``."""

    def __init__(
        self,
        args: list[str],
        log_path: Path,
        env: dict[str, str] | None = None,
        *,
        command: str = "serve",
        port: int | None = None,
    ):
        self.port = port or free_port()
        self.url = f"http://{LOOPBACK}:{self.port}"
        # One client for the test's calls, made now: a client made while the engine keeps both
        # cores busy can spend seconds loading CA certificates (ssl.create_default_context), which
        # a test would read as the service being slow.
        self.http = httpx.Client(timeout=60)
        self.log_path = log_path
        self._log = open(log_path, "w")  # noqa: SIM115 - closed in stop()
        address = ["--host", LOOPBACK, "--port", str(self.port)]
        self.process = subprocess.Popen(
            [sys.executable, "-m", "service", command, *address, *args],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=os.environ | {"VLLM_HOST_IP": LOOPBACK} | (env or {}),
            start_new_session=True,  # its own process group: stop() reaches the engine core too
        )

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    def wait_ready(self, timeout: float = 600) -> ServiceProcess:
        """Wait until /health answers 200; on failure (or interruption) the process is stopped, so
        that no caller leaves a half-started engine behind."""
        try:
            wait_for_http(f"{self.url}/health", timeout=timeout, alive=self.process)
        except (RuntimeError, TimeoutError) as exc:
            tail = self.log_tail()
            self.stop()
            raise RuntimeError(f"{exc}:\n{tail}") from exc
        except BaseException:
            self.stop()
            raise
        return self

    def metric(self, name: str, **labels: str) -> float:
        """A sample's value from /metrics (0 when absent): ``metric("powerserve_tokens_total",
        route="power", kind="generated")``."""
        return _value(self._samples(), name, labels)

    def metrics(self, *names: str) -> dict[str, float]:
        """The first sample of each family named, from one read of /metrics (0 when absent)."""
        samples = self._samples()
        return {name: _value(samples, name, {}) for name in names}

    def _samples(self) -> list[Sample]:
        from prometheus_client.parser import text_string_to_metric_families

        text = self.http.get(f"{self.url}/metrics", timeout=10).text
        return [sample for family in text_string_to_metric_families(text) for sample in family.samples]

    def rss_mib(self) -> float:
        """The gateway process's resident memory (not its engine core's), in MiB."""
        return rss_mib(self.process.pid)

    def children_rss_mib(self) -> float:
        """The resident memory of the gateway's child processes (its engine core), in MiB."""
        return children_rss_mib(self.process.pid)

    def log_tail(self, lines: int = 60) -> str:
        self._log.flush()
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        stop_process_group(self.process)
        self.http.close()
        self._log.close()


def _value(samples: list[Sample], name: str, labels: Mapping[str, str]) -> float:
    for sample in samples:
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
            return float(sample.value)
    return 0.0


def stop_process_group(process: subprocess.Popen) -> None:
    """SIGTERM to a process started with ``start_new_session`` and its children (a vLLM engine
    core), SIGKILL after 30 s."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


class RedisProcess:
    """A throw-away ``redis-server`` on a loopback port, without persistence."""

    def __init__(self, port: int | None = None):
        self.port = port or free_port()
        self.url = f"redis://{LOOPBACK}:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> RedisProcess:
        args = ["--bind", LOOPBACK, "--port", str(self.port), "--save", "", "--appendonly", "no"]
        self.process = subprocess.Popen(
            ["redis-server", *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                socket.create_connection((LOOPBACK, self.port), timeout=0.5).close()
                return self
            time.sleep(0.05)
        raise TimeoutError("redis-server did not start")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)


class PrometheusProcess:
    """A real ``prometheus`` on loopback, scraping the given jobs: {job name: [base URL, ...]}."""

    def __init__(
        self, jobs: dict[str, list[str]], workdir: Path, *, port: int | None = None, interval: str = "1s"
    ):
        self.port = port or free_port()
        self.url = f"http://{LOOPBACK}:{self.port}"
        self.http = httpx.Client(timeout=60)  # made now, as ServiceProcess.http
        self.workdir = Path(workdir)
        self.jobs = jobs
        self.interval = interval
        self.process: subprocess.Popen[bytes] | None = None

    def config(self) -> str:
        jobs = "".join(
            f"  - job_name: {name}\n    static_configs:\n      - targets: "
            f"[{', '.join(repr(u.split('://', 1)[-1]) for u in urls)}]\n"
            for name, urls in self.jobs.items()
        )
        return f"global:\n  scrape_interval: {self.interval}\nscrape_configs:\n{jobs}"

    def start(self) -> PrometheusProcess:
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "prometheus.yml"
        config.write_text(self.config())
        self.process = subprocess.Popen(
            [
                "prometheus",
                f"--config.file={config}",
                f"--storage.tsdb.path={self.workdir / 'data'}",
                f"--web.listen-address={LOOPBACK}:{self.port}",
            ],
            stdout=open(self.workdir / "prometheus.log", "w"),  # noqa: SIM115 - lives with the process
            stderr=subprocess.STDOUT,
        )
        wait_for_http(f"{self.url}/-/ready", timeout=60, alive=self.process)
        return self

    def query(self, expr: str) -> list[dict]:
        """An instant query's result vector (empty when the expression has no data)."""
        response = self.http.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=30)
        response.raise_for_status()
        return list(response.json()["data"]["result"])

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)
        self.http.close()
