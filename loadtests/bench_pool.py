"""An importance pool of plain answers against Power-SMC at equal cost, on problem families never
trained on (``make bench-pool``): issue 22's third alternative, measured where the route is used.

A pool of N whole answers sampled plainly (temperature 1), one kept with chance proportional to
p(y)^(alpha - 1): the law of a self-normalised importance sampler with proposal p and target
p^alpha. The weights need each answer's log p under the base model, which every choice carries
(``self_reward.sum_logprob``; at temperature 1 it is the proposal's own log-probability), so the
pool is computed here from the plain route's ``n`` = N answers, exactly as a route would. Beside it,
on the same prompts and seeds in one run: plain sampling at temperature 1 and at 1/alpha, and the
power route (SMC) at N particles. On the enumerable model the pool is the closest to p^alpha at equal
cost (docs/benchmarks/fidelity.md); this measures whether that carries to answers of
tens of tokens. Writes loadtests/results/bench_pool.json and a Markdown table on stdout.

    make bench-pool
    python -m loadtests.bench_pool [--prompts 200 --particles 4 --concurrency 8]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

from loadtests.bench_power import UNCACHED
from loadtests.harness import ServiceProcess
from loadtests.load_report import RESULTS
from service.config import DEFAULT_MODEL_NAME, Settings
from service.distill.data import DEFAULT_PROMPTS, PromptItem, answer_is_correct, read_prompts
from service.distill.evaluate import wilson_interval
from service.model_store import ensure_default_model

__all__ = ["held_out_run", "pick", "run", "table"]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--prompts", type=int, default=200, help="Held-out prompts to ask.")
    parser.add_argument("--particles", type=int, default=4, help="Pool size and SMC's N.")
    parser.add_argument("--alpha", type=float, default=4.0)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--out", type=Path, default=RESULTS / "bench_pool.json")
    return parser.parse_args()


def pick(sum_logprobs: Sequence[float], alpha: float, rng: random.Random) -> int:
    """The index of the answer an importance pool keeps: chance proportional to p^(alpha - 1)."""
    top = max(sum_logprobs)
    weights = [math.exp((alpha - 1) * (s - top)) for s in sum_logprobs]
    return rng.choices(range(len(weights)), weights=weights)[0]


def _routes(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    base = DEFAULT_MODEL_NAME
    cold = 1 / args.alpha
    return {
        "plain": {"model": base, "temperature": 1.0},
        "plain at 1/alpha": {"model": base, "temperature": cold},
        f"smc N={args.particles}": {
            "model": f"{base}-power",
            "temperature": cold,
            "power_method": "smc",
            "power_particles": args.particles,
        },
        f"pool N={args.particles}": {"model": base, "temperature": 1.0, "n": args.particles},
    }


async def _answer(
    client: httpx.AsyncClient, params: dict[str, Any], item: PromptItem, seed: int, args: Any
) -> dict[str, Any]:
    body = {"messages": item.messages, "max_tokens": args.max_tokens, "seed": seed} | params
    began = time.monotonic()
    response = await client.post("/v1/chat/completions", json=body | UNCACHED)
    response.raise_for_status()
    data = response.json()
    choices = data["choices"]
    kept = 0
    if len(choices) > 1:
        kept = pick([c["self_reward"]["sum_logprob"] for c in choices], args.alpha, random.Random(seed))
    choice = choices[kept]
    reward = choice["self_reward"]
    # Its length: the reward's sum over its mean (usage counts every choice of the pool).
    returned = round(reward["sum_logprob"] / reward["mean_logprob"]) if reward["mean_logprob"] else 1
    generated = data.get("power", {}).get("tokens_generated", data["usage"]["completion_tokens"])
    return {
        "id": item.id,
        "correct": answer_is_correct(choice["message"]["content"] or "", item.answer or ""),
        "sum_logprob": reward["sum_logprob"],
        "tokens": returned,
        "generated": generated,
        "latency_s": time.monotonic() - began,
    }


def summarise(answers: list[dict[str, Any]]) -> dict[str, Any]:
    tokens = sum(a["tokens"] for a in answers)
    right = sum(a["correct"] for a in answers)
    return {
        "answers": len(answers),
        "accuracy": right / len(answers),
        "accuracy_ci95": wilson_interval(right, len(answers)),
        "self_reward_per_token": sum(a["sum_logprob"] for a in answers) / max(tokens, 1),
        "cost_per_returned_token": sum(a["generated"] for a in answers) / max(tokens, 1),
        "latency_s_median": statistics.median(a["latency_s"] for a in answers),
    }


async def run(
    url: str,
    items: list[PromptItem],
    args: argparse.Namespace,
    routes: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Every route (request fields by name; this benchmark's own by default) on every prompt, with
    the same seeds, ``args.concurrency`` at a time: a summary row per route."""
    gate = asyncio.Semaphore(args.concurrency)
    rows = {}
    async with httpx.AsyncClient(base_url=url, timeout=600) as client:
        for name, params in (routes or _routes(args)).items():

            async def one(i: int, item: PromptItem, params: dict[str, Any] = params) -> dict:
                async with gate:
                    return await _answer(client, params, item, 1_000 + i, args)

            await one(-1, items[0])  # warm-up
            answers = await asyncio.gather(*(one(i, item) for i, item in enumerate(items)))
            rows[name] = summarise(list(answers))
            print(f"{name}: {rows[name]}", flush=True)
    return rows


def table(report: dict[str, Any]) -> str:
    lines = [
        "| route | accuracy (95% interval) | self-reward (mean log p / token) | "
        "tokens generated / returned | p50 latency (s) |",
        "|---|---|---|---|---|",
    ]
    for name, row in report["rows"].items():
        low, high = row["accuracy_ci95"]
        lines.append(
            f"| {name} | {row['accuracy']:.1%} ({low:.0%}–{high:.0%}) | "
            f"{row['self_reward_per_token']:.3f} | {row['cost_per_returned_token']:.2f} | "
            f"{row['latency_s_median']:.2f} |"
        )
    return "\n".join(lines)


def held_out_run(args: argparse.Namespace, routes: dict[str, dict[str, Any]], name: str) -> None:
    """Start the embedded default, ask every route the held-out prompts, write ``args.out`` (with
    the service's log beside it as ``<name>.service.log``) and print the table."""
    ensure_default_model(Settings().cache_dir)
    RESULTS.mkdir(exist_ok=True)
    items = read_prompts(DEFAULT_PROMPTS, "heldout", args.prompts)
    service = ServiceProcess([], RESULTS / f"{name}.service.log")
    try:
        service.wait_ready()
        rows = asyncio.run(run(service.url, items, args, routes))
    finally:
        service.stop()
    report = {
        "args": {k: str(v) for k, v in vars(args).items()},
        "prompts": f"{len(items)} held-out prompts of {DEFAULT_PROMPTS.name} (unseen families)",
        "date": time.strftime("%Y-%m-%d"),
        "rows": rows,
    }
    args.out.write_text(json.dumps(report, indent=2))
    print(table(report))


def main() -> None:
    args = parse_args()
    held_out_run(args, _routes(args), "bench_pool")


if __name__ == "__main__":
    main()
