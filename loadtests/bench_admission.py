"""Admission control under overload (``python -m loadtests.bench_admission``), on loopback:

  1. the service's capacity: a closed loop of ``--concurrency`` clients, requests/s and latency;
  2. an open loop at ``--overload`` times that rate for ``--seconds``, against the service without
     admission control (every request queues) and with ``POWERSERVE_MAX_INFLIGHT_REQUESTS`` set to
     the concurrency (requests past it get 503 at once);
  3. p50/p99 latency of the admitted (200) requests, and how many were refused.

Plain completions on the tiny test model by default (``--model default``: the embedded default
model). Results: loadtests/results/bench_admission.json and a Markdown table on stdout.

    make bench-admission [ADMISSION_ARGS="--model default --concurrency 8 --max-tokens 32 --seconds 30"]
    python -m loadtests.bench_admission [--model tiny|default --concurrency 4 --overload 2 ...]

Load from httpx lanes (loadtests/client.py: one connection per request in flight, as many as the open
loop needs), so that the client's own cost stays out of the figures on a 2-core machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import tempfile
import time
from pathlib import Path

from loadtests.client import Lanes
from loadtests.harness import ServiceProcess
from loadtests.load_report import RESULTS, percentile
from loadtests.tiny_model import build_tiny_model


def p(values: list[float], rank: int) -> float:
    return percentile(values, rank, method="nearest")


async def one(lanes: Lanes, url: str, body: dict) -> tuple[int, float]:
    began = time.monotonic()
    response = await lanes.post(url, json=body)
    return response.status_code, time.monotonic() - began


async def closed_loop(url: str, body: dict, clients: int, seconds: float) -> dict:
    latencies: list[float] = []
    deadline = time.monotonic() + seconds

    async def client(lanes: Lanes) -> None:
        while time.monotonic() < deadline:
            status, took = await one(lanes, url, body)
            assert status == 200, status
            latencies.append(took)

    async with Lanes(timeout=300) as lanes:
        began = time.monotonic()
        await asyncio.gather(*(client(lanes) for _ in range(clients)))
        elapsed = time.monotonic() - began
    return {
        "requests_per_s": len(latencies) / elapsed,
        "p50_s": p(latencies, 50),
        "p99_s": p(latencies, 99),
    }


async def open_loop(url: str, body: dict, rate: float, seconds: float, seed: int = 7) -> dict:
    """Poisson arrivals at ``rate``/s for ``seconds``; every request is awaited to its end."""
    rng = random.Random(seed)
    results: list[tuple[int, float]] = []
    async with Lanes(timeout=600) as lanes:  # no cap: a connection per request in flight
        tasks = []
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            tasks.append(asyncio.ensure_future(one(lanes, url, body)))
            await asyncio.sleep(rng.expovariate(rate))
        results = list(await asyncio.gather(*tasks))
    admitted = [took for status, took in results if status == 200]
    refused = [took for status, took in results if status == 503]
    return {
        "sent": len(results),
        "admitted": len(admitted),
        "refused_503": len(refused),
        "other": len(results) - len(admitted) - len(refused),
        "admitted_p50_s": p(admitted, 50),
        "admitted_p99_s": p(admitted, 99),
        "refusal_p99_s": p(refused, 99),
    }


async def measure(opts: argparse.Namespace, work: Path) -> dict:
    if opts.model == "tiny":
        model_dir = build_tiny_model(work / "tiny", seed=1, weight_scale=20.0)
        args = ["--model", str(model_dir), "--max-model-len", "64", "--kv-cache-gib", "1"]
        body = {"model": "tiny", "prompt": "a b", "max_tokens": opts.max_tokens}
    else:
        args = []
        body = {"model": "smollm2-135m-instruct", "prompt": "Once upon a time",
                "max_tokens": opts.max_tokens}  # fmt: skip
    report: dict = {"model": opts.model, "max_tokens": opts.max_tokens, "runs": {}}
    for name, env in (
        ("without admission control", {}),
        ("with admission control", {"POWERSERVE_MAX_INFLIGHT_REQUESTS": str(opts.concurrency)}),
    ):
        service = ServiceProcess(args, work / f"{name.replace(' ', '-')}.log", env).wait_ready()
        try:
            url = f"{service.base_url}/completions"
            await closed_loop(url, body, opts.concurrency, 3)  # warm-up
            if "capacity" not in report:
                report["capacity"] = await closed_loop(url, body, opts.concurrency, opts.seconds / 2)
                report["capacity"]["concurrency"] = opts.concurrency
            rate = opts.overload * report["capacity"]["requests_per_s"]
            report["offered_per_s"] = rate
            report["runs"][name] = await open_loop(url, body, rate, opts.seconds)
        finally:
            service.stop()
    return report


def table(report: dict) -> str:
    cap = report["capacity"]
    lines = [
        f"Capacity ({cap['concurrency']} clients in a closed loop): {cap['requests_per_s']:.1f} "
        f"requests/s, p50 {cap['p50_s']:.2f} s, p99 {cap['p99_s']:.2f} s. Offered: "
        f"{report['offered_per_s']:.1f} requests/s.",
        "",
        "| | sent | admitted | refused (503) | admitted p50 | admitted p99 | refusal p99 |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, run in report["runs"].items():
        lines.append(
            f"| {name} | {run['sent']} | {run['admitted']} | {run['refused_503']} | "
            f"{run['admitted_p50_s']:.2f} s | {run['admitted_p99_s']:.2f} s | "
            f"{run['refusal_p99_s'] * 1000:.0f} ms |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["tiny", "default"], default="tiny")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--overload", type=float, default=2.0)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--max-tokens", type=int, default=48)
    opts = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        report = asyncio.run(measure(opts, Path(tmp)))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "bench_admission.json").write_text(json.dumps(report, indent=2) + "\n")
    print(table(report))


if __name__ == "__main__":
    main()
