"""Benchmark of the power samplers against plain sampling, in one run (``make bench``, part 2).

The same prompts (chat, ``max_tokens`` 64) on the embedded default model, through the service:

  (i)  one request at a time, the interactive case: p50 latency and self-reward (mean log p per
       token under the base model) of plain sampling, Power-SMC at several particle counts N,
       suffix MH at 4 steps and blocks of 16, and MH at the route's defaults (10 steps, blocks of
       max_tokens / 16; on fewer prompts: it is slow); and, streamed, the time to the first token
       of plain sampling and of SMC;
  (ii) all prompts at once: the same figures with the cost multiplier, and SMC's generated tokens/s
       against the engine's raw tokens/s at the same number of engine sequences (plain sampling
       with n = N per prompt);
  (iii) accuracy on held-out arithmetic prompts of the distillation set: plain, SMC (the route's
       default N), MH (4 steps, blocks of 16) and the distilled model.

Ratios are formed within this run. The default method and N of the power route are the ones with
the highest self-reward gain over plain per second of latency in (i). Results go to
loadtests/results/bench_methods.json and a Markdown table on stdout.

    make bench          (then bench_power)
    python -m loadtests.bench_methods [--prompts 8 --max-tokens 64 --particles 4 8 16]
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

from loadtests.bench_power import UNCACHED
from loadtests.harness import ServiceProcess
from loadtests.load_report import RESULTS
from loadtests.prompts import PROMPTS, messages
from service.config import DEFAULT_MODEL_NAME, Settings
from service.distill.data import DEFAULT_PROMPTS, read_prompts
from service.distill.evaluate import answer_is_correct
from service.model_store import ensure_default_model

__all__ = ["ask", "summary_of"]  # what bench_particles uses


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--particles", type=int, nargs="+", default=[4, 8, 16])
    parser.add_argument("--mh-default-prompts", type=int, default=2)
    parser.add_argument("--accuracy-prompts", type=int, default=32)
    parser.add_argument("--alpha", type=float, default=4.0)
    parser.add_argument("--out", type=Path, default=RESULTS / "bench_methods.json")
    return parser.parse_args()


def configs(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Request parameters of each method (the model id's route is in "model")."""
    power = {"model": "power", "temperature": 1 / args.alpha}
    out: dict[str, dict[str, Any]] = {"plain": {"model": "plain"}}
    for n in args.particles:
        out[f"smc N={n}"] = power | {"power_method": "smc", "power_particles": n}
    out["mh 4 steps, B=16"] = power | {"power_method": "mh", "mcmc_steps": 4, "block_size": 16}
    out["mh defaults"] = power | {"power_method": "mh"}
    return out


async def ask(
    client: httpx.AsyncClient,
    base: str,
    params: dict[str, Any],
    prompt: str,
    seed: int | None,
    max_tokens: int,
) -> dict:
    route = params["model"]
    model = {"plain": base, "power": f"{base}-power", "distilled": f"{base}-distilled"}[route]
    body = {"messages": messages(prompt), "max_tokens": max_tokens, "seed": seed} | params | UNCACHED
    body["model"] = model
    began = time.monotonic()
    response = await client.post("/v1/chat/completions", json=body)
    response.raise_for_status()
    data = response.json()
    data["latency_s"] = time.monotonic() - began
    return data


def summary_of(results: list[dict], seconds: float | None = None) -> dict[str, Any]:
    returned = sum(r["usage"]["completion_tokens"] for r in results)
    generated = sum(
        r.get("power", {}).get("tokens_generated", r["usage"]["completion_tokens"]) for r in results
    )
    row = {
        "requests": len(results),
        "latency_p50_s": statistics.median(r["latency_s"] for r in results),
        "self_reward": statistics.mean(r["self_reward"]["mean_logprob"] for r in results),
        "cost_multiplier": generated / max(returned, 1),
        "tokens_returned": returned,
        "tokens_generated": generated,
    }
    if seconds is not None:
        row["batch_seconds"] = seconds
        row["generated_tokens_per_s"] = generated / seconds
    return row


async def sequential(client: httpx.AsyncClient, base: str, args: argparse.Namespace) -> dict:
    rows = {}
    for name, params in configs(args).items():
        count = args.mh_default_prompts if name == "mh defaults" else args.prompts
        results = [
            await ask(client, base, params, prompt, 100 + i, args.max_tokens)
            for i, prompt in enumerate(PROMPTS[:count])
        ]
        rows[name] = summary_of(results)
        print(f"(i) {name}: {rows[name]}", flush=True)
    plain = rows["plain"]
    for row in rows.values():
        row["latency_over_plain"] = row["latency_p50_s"] / plain["latency_p50_s"]
        row["gain_per_s"] = (row["self_reward"] - plain["self_reward"]) / row["latency_p50_s"]
    return rows


async def time_to_first_token(
    client: httpx.AsyncClient, base: str, params: dict[str, Any], prompt: str, seed: int, max_tokens: int
) -> tuple[float, float]:
    """(seconds to the first streamed content, seconds to the end) of one streamed request."""
    route = params["model"]
    model = {"plain": base, "power": f"{base}-power"}[route]
    body = {"messages": messages(prompt), "max_tokens": max_tokens, "seed": seed, "stream": True}
    body |= params | UNCACHED | {"model": model}
    began, first = time.monotonic(), None
    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if first is None and line.startswith("data: {"):
                chunk = json.loads(line[len("data: ") :])
                if chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                    first = time.monotonic() - began
    total = time.monotonic() - began
    return (total if first is None else first), total


async def streaming(client: httpx.AsyncClient, base: str, args: argparse.Namespace) -> dict:
    """Time to first token, one streamed request at a time: plain, and SMC (its shared prefix goes
    out as the particles coalesce)."""
    rows = {}
    for name, params in configs(args).items():
        if name.startswith("mh"):
            continue  # MH sends its answer when the chain ends: first token = whole answer
        times = [
            await time_to_first_token(client, base, params, prompt, 500 + i, args.max_tokens)
            for i, prompt in enumerate(PROMPTS[: args.prompts])
        ]
        rows[name] = {
            "ttft_p50_s": statistics.median(t for t, _ in times),
            "total_p50_s": statistics.median(total for _, total in times),
        }
        print(f"(i) streamed {name}: {rows[name]}", flush=True)
    for row in rows.values():
        row["ttft_over_plain"] = row["ttft_p50_s"] / rows["plain"]["ttft_p50_s"]
    return rows


async def concurrent(client: httpx.AsyncClient, base: str, args: argparse.Namespace) -> dict:
    rows = {}
    for name, params in configs(args).items():
        if name == "mh defaults":
            continue
        began = time.monotonic()
        results = await asyncio.gather(
            *(
                ask(client, base, params, prompt, 200 + i, args.max_tokens)
                for i, prompt in enumerate(PROMPTS[: args.prompts])
            )
        )
        rows[name] = summary_of(list(results), time.monotonic() - began)
        print(f"(ii) {name}: {rows[name]}", flush=True)
    # The engine's raw tokens/s with as many sequences as SMC runs particles: plain, n = N.
    for n in args.particles:
        began = time.monotonic()
        results = await asyncio.gather(
            *(
                ask(client, base, {"model": "plain", "n": n}, prompt, 300 + i, args.max_tokens)
                for i, prompt in enumerate(PROMPTS[: args.prompts])
            )
        )
        seconds = time.monotonic() - began
        raw = sum(r["usage"]["completion_tokens"] for r in results) / seconds
        smc = rows[f"smc N={n}"]
        smc["raw_tokens_per_s_same_sequences"] = raw
        smc["share_of_raw_throughput"] = smc["generated_tokens_per_s"] / raw
        print(f"(ii) raw n={n}: {raw:.1f} tok/s", flush=True)
    plain = rows["plain"]
    for row in rows.values():
        row["latency_over_plain"] = row["batch_seconds"] / plain["batch_seconds"]
    return rows


async def accuracy(client: httpx.AsyncClient, base: str, args: argparse.Namespace, smc_n: int) -> dict:
    items = read_prompts(DEFAULT_PROMPTS, "heldout", args.accuracy_prompts)
    power = {"model": "power", "temperature": 1 / args.alpha}
    routes = {
        "plain": {"model": "plain"},
        f"smc N={smc_n}": power | {"power_method": "smc", "power_particles": smc_n},
        "mh 4 steps, B=16": power | {"power_method": "mh", "mcmc_steps": 4, "block_size": 16},
        "distilled": {"model": "distilled"},
    }
    gate = asyncio.Semaphore(8)
    rows = {}
    for name, params in routes.items():

        async def one(i: int, item: Any, params: dict = params) -> bool:
            async with gate:
                prompt = item.messages[-1]["content"] if item.messages else item.prompt
                data = await ask(client, base, params, prompt, 400 + i, args.max_tokens)
            return answer_is_correct(data["choices"][0]["message"]["content"], item.answer)

        correct = await asyncio.gather(*(one(i, item) for i, item in enumerate(items)))
        rows[name] = {"prompts": len(items), "accuracy": sum(correct) / len(items)}
        print(f"(iii) {name}: {rows[name]}", flush=True)
    return rows


def table(report: dict) -> str:
    head = (
        "| method | (i) p50 s | (i) vs plain | (i) self-reward | (i) gain/s | (ii) batch s "
        "| (ii) vs plain | (ii) cost | (ii) share of raw tok/s |"
    )
    lines = [head, "|---|---|---|---|---|---|---|---|---|"]
    for name, row in report["sequential"].items():
        conc = report["concurrent"].get(name, {})
        share = conc.get("share_of_raw_throughput")
        lines.append(
            f"| {name} | {row['latency_p50_s']:.1f} | {row['latency_over_plain']:.2f}x | "
            f"{row['self_reward']:.3f} | {row['gain_per_s']:.3f} | "
            + (
                f"{conc['batch_seconds']:.1f} | {conc['latency_over_plain']:.2f}x | "
                f"{conc['cost_multiplier']:.1f}x | "
                if conc
                else "- | - | - | "
            )
            + (f"{share:.2f} |" if share is not None else "- |")
        )
    lines += [
        "",
        "| streamed, one at a time | TTFT p50 s | vs plain | whole answer p50 s |",
        "|---|---|---|---|",
    ]
    for name, row in report["streaming"].items():
        lines.append(
            f"| {name} | {row['ttft_p50_s']:.2f} | {row['ttft_over_plain']:.1f}x "
            f"| {row['total_p50_s']:.1f} |"
        )
    lines += ["", "| route | held-out accuracy |", "|---|---|"]
    lines += [
        f"| {name} | {row['accuracy']:.1%} ({row['prompts']} prompts) |"
        for name, row in report["accuracy"].items()
    ]
    return "\n".join(lines)


async def run(service: ServiceProcess, base: str, args: argparse.Namespace) -> dict:
    async with httpx.AsyncClient(base_url=service.url, timeout=3600) as client:
        await ask(client, base, {"model": "plain"}, PROMPTS[0], 1, 8)  # warm-up
        await ask(client, base, configs(args)[f"smc N={args.particles[0]}"], PROMPTS[0], 1, 8)
        seq = await sequential(client, base, args)
        streamed = await streaming(client, base, args)
        best = max((n for n in args.particles), key=lambda n: seq[f"smc N={n}"]["gain_per_s"])
        conc = await concurrent(client, base, args)
        acc = await accuracy(client, base, args, best)
    return {
        "sequential": seq,
        "streaming": streamed,
        "concurrent": conc,
        "accuracy": acc,
        "best_smc_particles": best,
    }


def main() -> None:
    args = parse_args()
    ensure_default_model(Settings().cache_dir)
    RESULTS.mkdir(exist_ok=True)
    # The embedded default as `make serve` runs it, with its shipped distilled adapter.
    service = ServiceProcess([], RESULTS / "bench_methods.service.log")
    try:
        service.wait_ready()
        report = asyncio.run(run(service, DEFAULT_MODEL_NAME, args))
    finally:
        service.stop()
    report["args"] = {k: str(v) for k, v in vars(args).items()}
    args.out.write_text(json.dumps(report, indent=2))
    print(table(report))


if __name__ == "__main__":
    main()
