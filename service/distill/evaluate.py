"""Stage 3, ``eval``: the distilled model against plain and power sampling, on held-out prompts.

Routes, each on the same prompts and seeds, one route after the other (so latencies compare):

- ``base``: plain sampling at temperature 1;
- ``base-low-temperature``: plain sampling at temperature 1/alpha, the baseline any sharpening must
  beat, since it costs nothing to build;
- ``power``: the power route with the teacher's sampler (``power-mh`` beside it when the teacher is
  SMC and the MH row is asked for);
- ``distilled``: the adapter at temperature 1 (it is trained to *be* p^alpha), and
  ``distilled-low-temperature`` at 1/alpha.

Per route: mean self-reward per token under the base model (what power sampling raises), tokens
generated per returned token (the cost), latency, and accuracy with a 95% interval where the prompts
carry answers, overall and per problem family. The headlines are the shares of the power route's
accuracy and self-reward gains over plain sampling that the distilled model keeps, and whether it
beats plain sampling at temperature 1/alpha. Writes ``eval.json``, ``eval.md`` and ``eval.png``.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from service.distill.data import PromptItem, answer_is_correct
from service.distill.teacher import Generator, PowerParams, answer, run_bounded
from service.plotting import saved_figure

__all__ = [
    "EvalRoute",
    "eval_routes",
    "evaluate",
    "markdown_table",
    "summarise",
    "wilson_interval",
    "write_report",
]


@dataclass(frozen=True)
class EvalRoute:
    name: str
    model: str  # "base", "power" or "distilled"
    low_temperature: bool = False  # sample at 1/alpha instead of 1 (the power route always does)
    power: PowerParams | None = None


def eval_routes(power: PowerParams, *, compare_mh: bool = False) -> tuple[EvalRoute, ...]:
    routes = [
        EvalRoute("base", "base"),
        EvalRoute("base-low-temperature", "base", low_temperature=True),
        EvalRoute("power", "power", power=power),
    ]
    if compare_mh and power.method == "smc":
        routes.append(EvalRoute("power-mh", "power", power=replace(power, method="mh")))
    routes += [
        EvalRoute("distilled", "distilled"),
        EvalRoute("distilled-low-temperature", "distilled", low_temperature=True),
    ]
    return tuple(routes)


async def evaluate(
    generator: Generator,
    items: Sequence[PromptItem],
    *,
    power: PowerParams,
    concurrency: int = 8,
    seed: int = 1,
    distilled_model: str | None = None,
    compare_mh: bool = False,
) -> dict[str, list[dict[str, Any]]]:
    """Answers of every route of ``eval_routes`` for every item. ``distilled_model``: the distilled
    route's model id (default ``<base>-distilled``)."""
    base = generator.base_model
    model_ids = {
        "base": base,
        "power": f"{base}-power",
        "distilled": distilled_model or f"{base}-distilled",
    }
    records: dict[str, list[dict[str, Any]]] = {}
    for route in eval_routes(power, compare_mh=compare_mh):

        def job(i: int, item: PromptItem, route: EvalRoute = route) -> Callable[[], Awaitable[dict]]:
            cold = route.power is not None or route.low_temperature
            return lambda: answer(
                generator,
                model_ids[route.model],
                item,
                max_tokens=power.max_tokens,
                temperature=1.0 / power.alpha if cold else 1.0,
                seed=seed * 1_000_003 + i,
                power=route.power,
            )

        await job(-1, items[0])()  # warm-up: the first request of a route pays one-off costs
        records[route.name] = []
        await run_bounded(
            [job(i, item) for i, item in enumerate(items)],
            concurrency=concurrency,
            on_done=records[route.name].append,
            description=f"eval {route.name}",
        )
    return records


def wilson_interval(successes: int, total: int, z: float = 1.96) -> tuple[float, float]:
    """The 95% Wilson score interval of a proportion (sound at small counts and near 0 or 1)."""
    if total == 0:
        return 0.0, 1.0
    share = successes / total
    centre = (share + z * z / (2 * total)) / (1 + z * z / total)
    half = z * math.sqrt(share * (1 - share) / total + z * z / (4 * total * total)) / (1 + z * z / total)
    return max(0.0, centre - half), min(1.0, centre + half)


def _accuracy(answers: list[dict[str, Any]]) -> dict[str, Any] | None:
    checked = [r for r in answers if r.get("answer") is not None]
    if not checked:
        return None
    right = sum(answer_is_correct(r["completion"], r["answer"]) for r in checked)
    low, high = wilson_interval(right, len(checked))
    return {"accuracy": right / len(checked), "accuracy_ci95": [low, high], "checked": len(checked)}


def _row(answers: list[dict[str, Any]]) -> dict[str, Any]:
    tokens = sum(len(r["token_ids"]) for r in answers)
    accuracy = _accuracy(answers)
    families = sorted({r["family"] for r in answers if r.get("family")})
    return {
        "answers": len(answers),
        "self_reward_per_token": sum(r["self_reward"]["sum_logprob"] for r in answers) / max(tokens, 1),
        "mean_answer_tokens": tokens / max(len(answers), 1),
        "cost_per_returned_token": sum(r["tokens_generated"] for r in answers) / max(tokens, 1),
        "latency_s_median": statistics.median(r["latency_s"] for r in answers),
        "accuracy": None if accuracy is None else accuracy["accuracy"],
        "accuracy_ci95": None if accuracy is None else accuracy["accuracy_ci95"],
        "accuracy_by_family": {
            family: checked["accuracy"]
            for family in families
            if (checked := _accuracy([r for r in answers if r.get("family") == family]))
        },
    }


def _kept(rows: dict[str, dict[str, Any]], key: str) -> float | None:
    """The share of the power route's gain over plain sampling that the distilled model keeps."""
    base, power, distilled = (rows[r][key] for r in ("base", "power", "distilled"))
    if base is None or power is None or distilled is None or power == base:
        return None
    return (distilled - base) / (power - base)


def summarise(records: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    rows = {route: _row(answers) for route, answers in records.items()}
    low, distilled = rows["base-low-temperature"], rows["distilled"]
    return {
        "routes": rows,
        "gain_recovered": _kept(rows, "self_reward_per_token"),  # the self-reward share, as before
        "accuracy_gain_kept": _kept(rows, "accuracy"),
        "beats_low_temperature": {
            "self_reward": distilled["self_reward_per_token"] > low["self_reward_per_token"],
            "accuracy": None
            if distilled["accuracy"] is None
            else distilled["accuracy"] > low["accuracy"],
        },
        "distilled_cost_vs_base": distilled["cost_per_returned_token"]
        / rows["base"]["cost_per_returned_token"],
    }


# What eval.json keeps of each answer: enough to check every figure, without the token ids (which
# would make the shipped adapter's report megabytes).
ANSWER_FIELDS = ("id", "family", "answer", "completion", "finish_reason", "self_reward", "latency_s")


def write_report(out: Path, summary: dict[str, Any], records: dict[str, list[dict]], meta: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    answers = {
        route: [
            {k: r[k] for k in ANSWER_FIELDS if k in r}
            | {"tokens": len(r["token_ids"]), "tokens_generated": r["tokens_generated"]}
            for r in rows
        ]
        for route, rows in records.items()
    }
    (out / "eval.json").write_text(
        json.dumps({"meta": meta, "summary": summary, "answers": answers}, indent=1)
    )
    (out / "eval.md").write_text(markdown_table(summary, meta))
    _plot(summary, out / "eval.png")


def _share(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0%}"


def markdown_table(summary: dict[str, Any], meta: dict) -> str:
    lines = [
        "| route | accuracy (95% interval) | self-reward (mean log p / token) | "
        "tokens generated / returned | median latency (s) | mean answer tokens |",
        "|---|---|---|---|---|---|",
    ]
    for route, row in summary["routes"].items():
        accuracy = "n/a"
        if row["accuracy"] is not None:
            low, high = row["accuracy_ci95"]
            accuracy = f"{row['accuracy']:.1%} ({low:.0%}–{high:.0%})"
        lines.append(
            f"| {route} | {accuracy} | {row['self_reward_per_token']:.3f} | "
            f"{row['cost_per_returned_token']:.2f} | {row['latency_s_median']:.1f} | "
            f"{row['mean_answer_tokens']:.1f} |"
        )
    routes, beats = summary["routes"], summary["beats_low_temperature"]
    distilled, low = routes["distilled"], routes["base-low-temperature"]
    verdict = {True: "better", False: "not better", None: "n/a"}
    accuracy = (
        "n/a"
        if distilled["accuracy"] is None
        else f"{distilled['accuracy']:.1%} against {low['accuracy']:.1%}"
    )
    base, power = routes["base"], routes["power"]
    points = ""
    if base["accuracy"] is not None:
        points = (
            f" ({100 * (power['accuracy'] - base['accuracy']):+.1f} points for the power route, "
            f"{100 * (distilled['accuracy'] - base['accuracy']):+.1f} for the distilled model"
        )
        if power["accuracy_ci95"][0] <= base["accuracy_ci95"][1]:
            points += "; the power route's and plain sampling's 95% intervals overlap"
        points += ")"
    lines += [
        "",
        f"The distilled model keeps {_share(summary['accuracy_gain_kept'])} of the power route's "
        f"accuracy gain over plain sampling{points} and {_share(summary['gain_recovered'])} of its "
        f"self-reward gain, at {summary['distilled_cost_vs_base']:.2f}x plain sampling's generated "
        f"tokens per returned token. Against plain sampling at temperature 1/alpha: accuracy {accuracy} "
        f"({verdict[beats['accuracy']]}), self-reward {distilled['self_reward_per_token']:.3f} against "
        f"{low['self_reward_per_token']:.3f} ({verdict[beats['self_reward']]}). "
        f"{meta.get('prompts', '?')} held-out prompts{meta.get('families', '')}; "
        f"{meta.get('power', '')}.",
        "",
    ]
    families = sorted({f for row in summary["routes"].values() for f in row["accuracy_by_family"]})
    if families:
        lines += ["| route | " + " | ".join(families) + " |", "|---|" + "---|" * len(families)]
        for route, row in summary["routes"].items():
            by_family = row["accuracy_by_family"]
            lines.append(
                f"| {route} | " + " | ".join(f"{by_family.get(f, 0):.0%}" for f in families) + " |"
            )
        lines.append("")
    return "\n".join(lines)


def _plot(summary: dict[str, Any], path: Path) -> None:
    """Accuracy (with its interval) and self-reward per route, side by side; each route's cost is in
    its label (the routes at plain cost would sit on one point of a cost axis)."""
    routes = list(summary["routes"])
    rows = [summary["routes"][r] for r in routes]
    labels = [
        f"{r}\n{row['cost_per_returned_token']:.1f}x tokens" for r, row in zip(routes, rows, strict=True)
    ]
    colours = [
        "tab:red" if r.startswith("power") else "tab:blue" if r.startswith("distilled") else "tab:gray"
        for r in routes
    ]
    y = list(range(len(routes)))
    size = (10, 0.6 * len(routes) + 1.6)
    with saved_figure(path, dpi=120, figsize=size, ncols=2, sharey=True) as (figure, axes):
        accuracy_axis, reward_axis = axes
        if all(row["accuracy"] is not None for row in rows):
            accuracy = [row["accuracy"] for row in rows]
            below = [a - row["accuracy_ci95"][0] for a, row in zip(accuracy, rows, strict=True)]
            above = [row["accuracy_ci95"][1] - a for a, row in zip(accuracy, rows, strict=True)]
            accuracy_axis.barh(y, accuracy, xerr=[below, above], color=colours, capsize=3)
        accuracy_axis.set_xlabel("accuracy (95% interval)")
        accuracy_axis.set_yticks(y, labels)
        accuracy_axis.invert_yaxis()
        reward_axis.barh(y, [row["self_reward_per_token"] for row in rows], color=colours)
        reward_axis.set_xlabel("self-reward: mean log p per token (higher is sharper)")
        for axis in axes:
            axis.grid(axis="x", alpha=0.3)
        figure.suptitle("held-out prompts: distilled vs plain (T = 1 and 1/alpha) vs power")
