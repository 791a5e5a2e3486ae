"""Scale-out benchmark, in one run (``make bench-remote``): two `powerserve worker` processes on the
default model, each pinned to its own CPU core (on a GPU host: one GPU each), and gateways in front.

  (a) gateway overhead: plain chat requests from C concurrent clients, straight to a worker vs through
      a gateway that drives only that worker; alternated, medians over repeats;
  (b) power throughput with one worker vs two: the same batch of power requests through a gateway over
      worker 0 only, and over both workers.

Results go to loadtests/results/bench_remote.json and a Markdown table on stdout.

    make bench-remote
    python -m loadtests.bench_remote [--clients 4 --seconds 30 --repeats 3 --power-prompts 8]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from pathlib import Path

import httpx

from loadtests.bench_power import UNCACHED
from loadtests.harness import ServiceProcess
from loadtests.load_report import RESULTS, measure_table
from loadtests.prompts import PROMPTS, messages
from service.config import DEFAULT_MODEL_NAME, Settings
from service.model_store import ensure_default_model

MODEL = DEFAULT_MODEL_NAME


async def plain_load(url: str, clients: int, seconds: float, max_tokens: int, *, gateway: bool) -> dict:
    """Closed loop: ``clients`` each send the next request as the last returns, for ``seconds``."""
    latencies: list[float] = []
    tokens = 0
    deadline = time.monotonic() + seconds

    async def client_loop(i: int, client: httpx.AsyncClient) -> None:
        nonlocal tokens
        n = 0
        while time.monotonic() < deadline:
            body = {"model": MODEL, "messages": messages(PROMPTS[(i + n) % len(PROMPTS)]),
                    "max_tokens": max_tokens, "temperature": 1.0, "seed": i * 7919 + n}  # fmt: skip
            if gateway:
                body |= UNCACHED
            began = time.monotonic()
            response = await client.post(f"{url}/v1/chat/completions", json=body)
            response.raise_for_status()
            latencies.append(time.monotonic() - began)
            tokens += response.json()["usage"]["completion_tokens"]
            n += 1

    began = time.monotonic()
    async with httpx.AsyncClient(timeout=600) as client:
        await asyncio.gather(*(client_loop(i, client) for i in range(clients)))
    elapsed = time.monotonic() - began
    return {
        "tokens_per_s": tokens / elapsed,
        "latency_p50_s": statistics.median(latencies),
        "requests": len(latencies),
    }


async def power_batch(url: str, prompts: int, max_tokens: int, block_size: int, steps: int) -> dict:
    async def one(i: int, client: httpx.AsyncClient) -> int:
        body = {
            "model": f"{MODEL}-power",
            "messages": messages(PROMPTS[i % len(PROMPTS)]),
            "max_tokens": max_tokens,
            "block_size": block_size,
            "mcmc_steps": steps,
            "seed": 500 + i,
        } | UNCACHED
        response = await client.post(f"{url}/v1/chat/completions", json=body)
        response.raise_for_status()
        return int(response.json()["power"]["tokens_generated"])

    began = time.monotonic()
    async with httpx.AsyncClient(timeout=3600) as client:
        generated = await asyncio.gather(*(one(i, client) for i in range(prompts)))
    elapsed = time.monotonic() - began
    return {
        "seconds": elapsed,
        "tokens_generated": sum(generated),
        "generated_tokens_per_s": sum(generated) / elapsed,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--power-prompts", type=int, default=8)
    parser.add_argument("--power-max-tokens", type=int, default=32)
    parser.add_argument("--out", type=Path, default=RESULTS / "bench_remote.json")
    args = parser.parse_args()
    RESULTS.mkdir(exist_ok=True)
    model_dir = ensure_default_model(Settings().cache_dir)
    model = ["--model", str(model_dir), "--model-name", MODEL]

    processes: list[ServiceProcess] = []
    try:
        workers = [
            ServiceProcess(
                model,
                RESULTS / f"bench_remote.worker-{i}.log",
                command="worker",
                env={"VLLM_CPU_OMP_THREADS_BIND": str(i)},
            )
            for i in range(2)
        ]
        processes += workers
        for worker in workers:
            worker.wait_ready()
        one = ServiceProcess(
            model, RESULTS / "bench_remote.gateway-1.log", env={"POWERSERVE_WORKERS": workers[0].url}
        )
        two = ServiceProcess(
            model,
            RESULTS / "bench_remote.gateway-2.log",
            env={"POWERSERVE_WORKERS": f"{workers[0].url},{workers[1].url}"},
        )
        processes += [one, two]
        one.wait_ready()
        two.wait_ready()

        overhead_runs = []
        load = (args.clients, args.seconds, args.max_tokens)
        asyncio.run(plain_load(workers[0].url, args.clients, 5, args.max_tokens, gateway=False))
        for repeat in range(args.repeats):
            direct = asyncio.run(plain_load(workers[0].url, *load, gateway=False))
            gateway = asyncio.run(plain_load(one.url, *load, gateway=True))
            overhead_runs.append({"direct": direct, "gateway": gateway})
            print(f"repeat {repeat}: direct {direct['tokens_per_s']:.1f} tok/s, gateway", end=" ")
            print(f"{gateway['tokens_per_s']:.1f} tok/s", flush=True)
        power_runs = []
        for repeat in range(args.repeats):
            single = asyncio.run(power_batch(one.url, args.power_prompts, args.power_max_tokens, 8, 4))
            double = asyncio.run(power_batch(two.url, args.power_prompts, args.power_max_tokens, 8, 4))
            power_runs.append({"one_worker": single, "two_workers": double})
            print(f"repeat {repeat}: power one worker {single['seconds']:.1f} s,", end=" ")
            print(f"two {double['seconds']:.1f} s", flush=True)
    finally:
        for process in processes:
            process.stop()

    ratios = lambda runs, a, b, key: [r[a][key] / r[b][key] for r in runs]  # noqa: E731
    summary = {
        "gateway_throughput_over_direct": statistics.median(
            ratios(overhead_runs, "gateway", "direct", "tokens_per_s")
        ),
        "gateway_latency_over_direct": statistics.median(
            ratios(overhead_runs, "gateway", "direct", "latency_p50_s")
        ),
        "direct_tokens_per_s": statistics.median(r["direct"]["tokens_per_s"] for r in overhead_runs),
        "two_workers_over_one_power_throughput": statistics.median(
            ratios(power_runs, "two_workers", "one_worker", "generated_tokens_per_s")
        ),
        "one_worker_power_tokens_per_s": statistics.median(
            r["one_worker"]["generated_tokens_per_s"] for r in power_runs
        ),
    }
    report = {
        "args": vars(args) | {"out": str(args.out)},
        "summary": summary,
        "overhead_runs": overhead_runs,
        "power_runs": power_runs,
    }
    args.out.write_text(json.dumps(report, indent=2))
    overhead = 1 - summary["gateway_throughput_over_direct"]
    rows = [
        (f"(a) plain, {args.clients} clients: gateway throughput / worker alone",
         f"{summary['gateway_throughput_over_direct']:.3f} (overhead {overhead:.1%}); p50 latency x"
         f"{summary['gateway_latency_over_direct']:.3f}"),
        ("(b) power throughput, two workers / one worker (one core each)",
         f"{summary['two_workers_over_one_power_throughput']:.2f}x "
         f"({summary['one_worker_power_tokens_per_s']:.1f} generated tok/s with one)"),
    ]  # fmt: skip
    print(measure_table(rows))


if __name__ == "__main__":
    main()
