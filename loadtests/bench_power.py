"""Benchmark of the power route, in one run on one machine and model (``make bench``).

For a batch of prompts, with equal alpha, mcmc_steps, block_size and max_tokens everywhere:

  (a) the service's power route (all chains batched on vLLM) against the reference algorithm run the
      straightforward way (loadtests/reference_sampler.py: transformers, one chain at a time);
  (b) the power route against plain sampling: tokens generated per returned token, and latency;
  (c) the power route's generated tokens/s against the engine's raw tokens/s at the same
      concurrency (as many plain streams as there are chains, kept busy for the same time).

Each figure is the median of --repeats runs; ratios are formed within one run (this machine is shared
and noisy). Results go to loadtests/results/bench_power.json and a Markdown table on stdout.

    make bench          (after bench_methods)
    python -m loadtests.bench_power [--prompts 8 --max-tokens 32 --block-size 8 --mcmc-steps 4]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from pathlib import Path
from typing import Any

import httpx

from loadtests.harness import ServiceProcess
from loadtests.load_report import RESULTS, measure_table
from loadtests.prompts import PROMPTS, messages
from service.config import DEFAULT_MODEL_NAME, Settings
from service.model_store import ensure_default_model

__all__ = ["UNCACHED"]  # what the other benches and the tests use

# Seeds repeat from one run to the next: the service's response cache must stay out of the figures.
UNCACHED = {"cache": {"no-cache": True, "no-store": True}}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model", type=Path, default=None, help="model directory (default: the embedded one)"
    )
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--block-size", type=int, default=8)
    parser.add_argument("--mcmc-steps", type=int, default=4)
    parser.add_argument("--alpha", type=float, default=4.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--warmup-seconds", type=float, default=15.0, help="(c): before the window opens"
    )
    parser.add_argument("--window-seconds", type=float, default=30.0, help="(c): the measured window")
    parser.add_argument("--skip-reference", action="store_true", help="skip (a), the slow baseline")
    parser.add_argument("--out", type=Path, default=RESULTS / "bench_power.json")
    return parser.parse_args()


async def run_batch(
    client: httpx.AsyncClient, model: str, args: argparse.Namespace, seed: int, **params: object
) -> tuple[list[dict], float]:
    """One chat request per prompt, all at once: the responses and the batch's wall-clock seconds."""

    async def one(i: int, prompt: str) -> dict:
        body = (
            {
                "model": model,
                "messages": messages(prompt),
                "max_tokens": args.max_tokens,
                "seed": seed * 1000 + i,
            }
            | params
            | UNCACHED
        )
        response = await client.post("/v1/chat/completions", json=body)
        response.raise_for_status()
        return response.json()

    began = time.monotonic()
    results = await asyncio.gather(*(one(i, p) for i, p in enumerate(PROMPTS[: args.prompts])))
    return results, time.monotonic() - began


async def run_power(client: httpx.AsyncClient, model: str, args: argparse.Namespace, seed: int) -> dict:
    results, seconds = await run_batch(
        client,
        f"{model}-power",
        args,
        seed,
        temperature=1 / args.alpha,
        block_size=args.block_size,
        mcmc_steps=args.mcmc_steps,
    )
    generated = sum(r["power"]["tokens_generated"] for r in results)
    returned = sum(r["usage"]["completion_tokens"] for r in results)
    return {
        "seconds": seconds,
        "tokens_generated": generated,
        "tokens_returned": returned,
        "generated_tokens_per_s": generated / seconds,
        "cost_multiplier": generated / returned,
        "acceptance_rate": statistics.mean(r["power"]["acceptance_rate"] or 0 for r in results),
        "self_reward_mean_logprob": statistics.mean(r["self_reward"]["mean_logprob"] for r in results),
    }


async def run_plain(client: httpx.AsyncClient, model: str, args: argparse.Namespace, seed: int) -> dict:
    results, seconds = await run_batch(client, model, args, seed)
    return {
        "seconds": seconds,
        "tokens_returned": sum(r["usage"]["completion_tokens"] for r in results),
        "self_reward_mean_logprob": statistics.mean(r["self_reward"]["mean_logprob"] for r in results),
    }


async def vllm_counters(client: httpx.AsyncClient) -> dict[str, float]:
    """vLLM's own token counters (incremented every engine step), from the service's /metrics."""
    text = (await client.get("/metrics")).text
    wanted = {"vllm:generation_tokens_total": "generated", "vllm:prompt_tokens_total": "prefilled"}
    found = {name: 0.0 for name in wanted.values()}
    for line in text.splitlines():
        name = line.split("{")[0].split(" ")[0]
        if name in wanted:
            found[wanted[name]] += float(line.rsplit(" ", 1)[1])
    return found


async def engine_throughput(
    client: httpx.AsyncClient, model: str, args: argparse.Namespace, *, power: bool
) -> dict:
    """The engine's tokens/s with --prompts request streams kept busy (each issues its next request as
    the last ends), counted by vLLM per step inside a window that starts after a warm-up and ends
    before any stream stops: a steady state, free of start and tail effects."""

    async def stream_worker(i: int) -> None:
        for n in range(1_000_000):
            body = {
                "model": f"{model}-power" if power else model,
                "messages": messages(PROMPTS[(i + n) % len(PROMPTS)]),
                "max_tokens": args.max_tokens,
                "temperature": 1 / args.alpha,
                "seed": i * 7919 + n,
            } | UNCACHED
            if power:
                body |= {"block_size": args.block_size, "mcmc_steps": args.mcmc_steps}
            (await client.post("/v1/chat/completions", json=body)).raise_for_status()

    workers = [asyncio.create_task(stream_worker(i)) for i in range(args.prompts)]
    try:
        await asyncio.sleep(args.warmup_seconds)
        before, began = await vllm_counters(client), time.monotonic()
        await asyncio.sleep(args.window_seconds)
        after, ended = await vllm_counters(client), time.monotonic()
    finally:
        for worker in workers:
            worker.cancel()  # the service aborts their engine requests
        await asyncio.gather(*workers, return_exceptions=True)
    seconds = ended - began
    return {
        "seconds": seconds,
        "tokens_per_s": (after["generated"] - before["generated"]) / seconds,
        "prefill_tokens_per_s": (after["prefilled"] - before["prefilled"]) / seconds,
    }


async def service_phase(service: ServiceProcess, model: str, args: argparse.Namespace) -> list[dict]:
    runs = []
    async with httpx.AsyncClient(base_url=service.url, timeout=3600) as client:
        await run_plain(client, model, args, seed=99)  # warm-up
        for repeat in range(args.repeats):
            power = await run_power(client, model, args, seed=repeat)
            plain = await run_plain(client, model, args, seed=repeat)
            raw = await engine_throughput(client, model, args, power=False)
            power_loop = await engine_throughput(client, model, args, power=True)
            await asyncio.sleep(2)  # let the aborted requests leave the engine
            runs.append({"power": power, "plain": plain, "raw": raw, "power_loop": power_loop})
            print(
                f"repeat {repeat}: power {power['seconds']:.1f} s, plain {plain['seconds']:.1f} s, "
                f"raw {raw['tokens_per_s']:.1f} tok/s, "
                f"power loop {power_loop['tokens_per_s']:.1f} tok/s",
                flush=True,
            )
    return runs


def reference_phase(model_dir: Path, args: argparse.Namespace) -> list[dict]:
    from loadtests.reference_sampler import ReferenceSampler

    sampler = ReferenceSampler(model_dir)
    runs = []
    for repeat in range(args.repeats):
        began = time.monotonic()
        generated = 0
        for i, prompt in enumerate(PROMPTS[: args.prompts]):
            ids = sampler.tokenizer.apply_chat_template(
                messages(prompt), add_generation_prompt=True, tokenize=True
            )
            ids = list(ids["input_ids"] if hasattr(ids, "keys") else ids)
            result = sampler.sample(
                ids,
                alpha=args.alpha,
                max_tokens=args.max_tokens,
                block_size=args.block_size,
                mcmc_steps=args.mcmc_steps,
                seed=repeat * 1000 + i,
            )
            generated += result.tokens_generated
        seconds = time.monotonic() - began
        runs.append(
            {
                "seconds": seconds,
                "tokens_generated": generated,
                "generated_tokens_per_s": generated / seconds,
            }
        )
        print(f"reference repeat {repeat}: {seconds:.1f} s", flush=True)
    return runs


def median(runs: list[dict], *path: str) -> float:
    values = []
    for run in runs:
        value: Any = run
        for key in path:
            value = value[key]
        values.append(value)
    return statistics.median(values)


def summarise(service_runs: list[dict], reference_runs: list[dict], args: argparse.Namespace) -> dict:
    ratio = lambda a, b: [x / y for x, y in zip(a, b, strict=True)]  # noqa: E731
    power_s = [r["power"]["seconds"] for r in service_runs]
    summary = {
        "power_seconds": statistics.median(power_s),
        "plain_seconds": median(service_runs, "plain", "seconds"),
        "cost_multiplier": median(service_runs, "power", "cost_multiplier"),
        "acceptance_rate": median(service_runs, "power", "acceptance_rate"),
        "power_latency_over_plain": statistics.median(
            ratio(power_s, [r["plain"]["seconds"] for r in service_runs])
        ),
        "batch_power_tokens_per_s": median(service_runs, "power", "generated_tokens_per_s"),
        "power_tokens_per_s": median(service_runs, "power_loop", "tokens_per_s"),
        "raw_tokens_per_s": median(service_runs, "raw", "tokens_per_s"),
        "power_throughput_fraction": statistics.median(
            ratio(
                [r["power_loop"]["tokens_per_s"] for r in service_runs],
                [r["raw"]["tokens_per_s"] for r in service_runs],
            )
        ),
        "self_reward_power": median(service_runs, "power", "self_reward_mean_logprob"),
        "self_reward_plain": median(service_runs, "plain", "self_reward_mean_logprob"),
    }
    if reference_runs:
        summary["reference_seconds"] = median(reference_runs, "seconds")
        summary["speedup_over_reference"] = statistics.median(
            ratio([r["seconds"] for r in reference_runs], power_s)
        )
    return summary


def table(summary: dict, args: argparse.Namespace) -> str:
    rows = [
        (
            "setting",
            f"{args.prompts} prompts, max_tokens {args.max_tokens}, block {args.block_size}, "
            f"{args.mcmc_steps} MH steps, alpha {args.alpha:g}, median of {args.repeats}",
        ),
    ]
    if "speedup_over_reference" in summary:
        rows.append(
            (
                "(a) power route vs sequential transformers reference",
                f"{summary['speedup_over_reference']:.2f}x faster "
                f"({summary['power_seconds']:.1f} s vs {summary['reference_seconds']:.1f} s)",
            )
        )
    rows += [
        ("(b) cost multiplier (generated / returned tokens)", f"{summary['cost_multiplier']:.1f}x"),
        (
            "(b) latency, power / plain",
            f"{summary['power_latency_over_plain']:.1f}x "
            f"({summary['power_seconds']:.1f} s vs {summary['plain_seconds']:.1f} s)",
        ),
        (
            f"(c) power generated tok/s / raw engine tok/s, {args.prompts} streams kept busy",
            f"{summary['power_throughput_fraction']:.2f} "
            f"({summary['power_tokens_per_s']:.1f} vs {summary['raw_tokens_per_s']:.1f} tok/s)",
        ),
        (
            "power generated tok/s over the batch (a), tail included",
            f"{summary['batch_power_tokens_per_s']:.1f}",
        ),
        ("acceptance rate", f"{summary['acceptance_rate']:.2f}"),
        (
            "self-reward (mean log p per token), power vs plain",
            f"{summary['self_reward_power']:.3f} vs {summary['self_reward_plain']:.3f}",
        ),
    ]
    return measure_table(rows)


def main() -> None:
    args = parse_args()
    settings = Settings()
    model_dir = args.model or ensure_default_model(settings.cache_dir)
    model = args.model.name if args.model else DEFAULT_MODEL_NAME
    RESULTS.mkdir(exist_ok=True)
    log = RESULTS / "bench_power.service.log"
    service = ServiceProcess(["--model", str(model_dir), "--model-name", model], log)
    try:
        service.wait_ready()
        service_runs = asyncio.run(service_phase(service, model, args))
    finally:
        service.stop()
    # The baseline runs with the service stopped, so that both have the machine to themselves.
    reference_runs = [] if args.skip_reference else reference_phase(model_dir, args)
    summary = summarise(service_runs, reference_runs, args)
    report = {
        "args": {k: str(v) for k, v in vars(args).items()},
        "summary": summary,
        "service_runs": service_runs,
        "reference_runs": reference_runs,
    }
    args.out.write_text(json.dumps(report, indent=2))
    print(table(summary, args))


if __name__ == "__main__":
    main()
