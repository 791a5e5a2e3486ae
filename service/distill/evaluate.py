"""Stage 3, ``eval``: base vs power vs distilled on held-out prompts.

Per route: mean self-reward per token under the base model (what power sampling raises), tokens
generated per returned token (the cost), latency, and accuracy where the prompts carry answers.
Writes ``eval.json``, ``eval.md`` (the table) and ``eval.png`` (self-reward against cost).

The base and distilled routes sample at temperature 1, as plain sampling does; the power route uses
the teacher's settings. The headline is the share of the power route's self-reward gain over plain
sampling that the distilled model recovers, and at what cost.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from service.distill.data import PromptItem, answer_is_correct
from service.distill.teacher import Generator, PowerParams, answer, run_bounded
from service.plotting import saved_figure

__all__ = ["evaluate", "markdown_table", "summarise", "write_report"]

ROUTES = ("base", "power", "distilled")


async def evaluate(
    generator: Generator,
    items: Sequence[PromptItem],
    *,
    power: PowerParams,
    concurrency: int = 8,
    seed: int = 1,
    distilled_model: str | None = None,
) -> dict[str, list[dict[str, Any]]]:
    """Answers of every route for every item, one route after the other (so latencies compare).
    ``distilled_model``: the distilled route's model id (default ``<base>-distilled``)."""
    base = generator.base_model
    model_ids = {
        "base": base,
        "power": f"{base}-power",
        "distilled": distilled_model or f"{base}-distilled",
    }
    records: dict[str, list[dict[str, Any]]] = {}
    for route in ROUTES:
        is_power = route == "power"

        def job(
            i: int, item: PromptItem, model_id: str = model_ids[route], is_power: bool = is_power
        ) -> Callable[[], Awaitable[dict]]:
            return lambda: answer(
                generator,
                model_id,
                item,
                max_tokens=power.max_tokens,
                temperature=1.0 / power.alpha if is_power else 1.0,
                seed=seed * 1_000_003 + i,
                power=power if is_power else None,
            )

        await job(-1, items[0])()  # warm-up: the first request of a route pays one-off costs
        records[route] = []
        await run_bounded(
            [job(i, item) for i, item in enumerate(items)],
            concurrency=concurrency,
            on_done=records[route].append,
            description=f"eval {route}",
        )
    return records


def summarise(records: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    rows: dict[str, dict[str, Any]] = {}
    for route, answers in records.items():
        tokens = sum(len(r["token_ids"]) for r in answers)
        checked = [r for r in answers if r.get("answer") is not None]
        rows[route] = {
            "answers": len(answers),
            "self_reward_per_token": sum(r["self_reward"]["sum_logprob"] for r in answers)
            / max(tokens, 1),
            "mean_answer_tokens": tokens / max(len(answers), 1),
            "cost_per_returned_token": sum(r["tokens_generated"] for r in answers) / max(tokens, 1),
            "latency_s_median": statistics.median(r["latency_s"] for r in answers),
            "accuracy": (
                sum(answer_is_correct(r["completion"], r["answer"]) for r in checked) / len(checked)
                if checked
                else None
            ),
        }
    base, power, distilled = (rows[r]["self_reward_per_token"] for r in ROUTES)
    gain = power - base
    return {
        "routes": rows,
        "gain_recovered": (distilled - base) / gain if gain else None,
        "distilled_cost_vs_base": rows["distilled"]["cost_per_returned_token"]
        / rows["base"]["cost_per_returned_token"],
    }


def write_report(out: Path, summary: dict[str, Any], records: dict[str, list[dict]], meta: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval.json").write_text(
        json.dumps({"meta": meta, "summary": summary, "answers": records}, indent=2)
    )
    (out / "eval.md").write_text(markdown_table(summary, meta))
    _plot(summary, out / "eval.png")


def markdown_table(summary: dict[str, Any], meta: dict) -> str:
    lines = [
        "| route | self-reward (mean log p / token) | tokens generated / returned | accuracy | "
        "median latency (s) | mean answer tokens |",
        "|---|---|---|---|---|---|",
    ]
    for route, row in summary["routes"].items():
        accuracy = "n/a" if row["accuracy"] is None else f"{row['accuracy']:.1%}"
        lines.append(
            f"| {route} | {row['self_reward_per_token']:.3f} | {row['cost_per_returned_token']:.2f} | "
            f"{accuracy} | {row['latency_s_median']:.1f} | {row['mean_answer_tokens']:.1f} |"
        )
    recovered = summary["gain_recovered"]
    lines += [
        "",
        f"Distilled recovers {'n/a' if recovered is None else f'{recovered:.0%}'} of the power route's "
        f"self-reward gain over plain sampling, at {summary['distilled_cost_vs_base']:.2f}x plain "
        f"sampling's generated tokens per returned token ({meta.get('prompts', '?')} held-out prompts; "
        f"{meta.get('power', '')}).",
        "",
    ]
    return "\n".join(lines)


def _plot(summary: dict[str, Any], path: Path) -> None:
    colours = {"base": "tab:gray", "power": "tab:red", "distilled": "tab:blue"}
    with saved_figure(path, dpi=120, figsize=(6, 4)) as (_, axis):
        for route, row in summary["routes"].items():
            x, y = row["cost_per_returned_token"], row["self_reward_per_token"]
            axis.scatter([x], [y], s=80, color=colours.get(route), label=route, zorder=3)
            axis.annotate(route, (x, y), textcoords="offset points", xytext=(8, 4))
        axis.set_xscale("log", base=2)
        costs = [row["cost_per_returned_token"] for row in summary["routes"].values()]
        axis.set_xlim(min(costs) / 1.5, max(costs) * 2)  # room for the labels
        axis.set_xlabel("tokens generated per returned token (cost, log scale)")
        axis.set_ylabel("self-reward: mean log p per token (base model)")
        axis.set_title("power vs distilled vs plain sampling")
        axis.grid(alpha=0.3)
