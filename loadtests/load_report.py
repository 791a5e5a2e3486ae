"""Results and reports of every benchmark and load test: where they go, their percentiles, their tables.

- ``RESULTS``: loadtests/results/, the one directory every script writes to (the manual's benchmark
  pages, docs/benchmarks/, cite its files).
- ``percentile`` / ``percentiles``: the one percentile helper. ``method="nearest"`` (a sample itself,
  the benchmarks' small samples) or ``"linear"`` (numpy's default, the load tests' summaries).
- ``measure_table``: the two-column Markdown table (measure | result) the benchmarks print.
- The load tests' common result: one summary per route, as JSON and as a PNG comparing the routes.

Both runners reduce their raw results to this shape: run_load.py (locust traffic mixes, one entry per
kind of request) and guidellm_sweep.py (guidellm rate sweeps, one entry per target and rate). Times
are in seconds; token rates count the tokens the engine generated (on the power route, every chain's
proposals: ``power.tokens_generated``), and ``completion_tokens_per_s`` those returned to clients.

    {"tool": "locust", "settings": {...}, "window_s": 60.2,
     "routes": {"plain": {"requests": 212, "errors": 0,
                          "latency_s": {"p50": 0.41, "p95": 0.93, "p99": 1.2},
                          "ttft_s": null, "itl_s": null,
                          "requests_per_s": 3.5, "generated_tokens_per_s": 52.1,
                          "completion_tokens_per_s": 52.1, "cache_hits": 0}, ...}}
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from service.plotting import saved_figure

__all__ = [
    "RESULTS",
    "RouteSummary",
    "measure_table",
    "output_path",
    "percentile",
    "percentiles",
    "plot_routes",
    "plot_timeline",
    "replot",
    "route_labels",
    "table",
    "write_report",
]

RESULTS = Path(__file__).resolve().parent / "results"


def output_path(out: Path, suffix: str) -> Path:
    """A result file of the run whose prefix is ``out``: ``output_path(Path("r/load"), ".json")``."""
    return out.parent / f"{out.name}{suffix}"


def percentile(
    values: Sequence[float], rank: float, *, method: Literal["linear", "nearest"] = "linear"
) -> float:
    """The ``rank``-th percentile (0 to 100) of ``values``; NaN when there are none.

    ``linear`` interpolates between the two samples around the rank (numpy's default). ``nearest`` is
    a sample itself: ``sorted(values)[round(rank / 100 * (n - 1))]``, ties to the even index.
    """
    if not len(values):
        return math.nan
    if method == "nearest":
        ordered = sorted(values)
        return ordered[min(len(ordered) - 1, round(rank / 100 * (len(ordered) - 1)))]
    return float(np.percentile(values, rank))


def percentiles(values: Sequence[float], *ranks: int) -> dict[str, float] | None:
    """``{"p50": .., "p95": ..}`` of ``values`` (linear); None when there are none."""
    if not len(values):
        return None
    return {f"p{rank}": percentile(values, rank) for rank in ranks}


def measure_table(rows: Iterable[tuple[str, str]]) -> str:
    """A Markdown table of (measure, result) rows, as the benchmarks print their summaries."""
    return "\n".join(["| measure | result |", "|---|---|"] + [f"| {a} | {b} |" for a, b in rows])


@dataclass
class RouteSummary:
    requests: int  # completed without error
    errors: int
    latency_s: dict[str, float] | None  # p50, p95, p99 of the whole request
    ttft_s: dict[str, float] | None  # p50, p95 of the time to first token (streams only)
    itl_s: dict[str, float] | None  # p50, p95 of the gaps between streamed chunks
    requests_per_s: float
    generated_tokens_per_s: float
    completion_tokens_per_s: float
    cache_hits: int | None = None  # x-powerserve-cache: hit (None where unknown)


def write_report(out: Path, report: dict[str, Any], routes: dict[str, RouteSummary]) -> Path:
    """``<out>.json`` and ``<out>.png`` (and ``<out>.time.png`` when the report has a timeline);
    returns the JSON's path."""
    out.parent.mkdir(parents=True, exist_ok=True)
    path = output_path(out, ".json")
    report = report | {"routes": {name: asdict(summary) for name, summary in routes.items()}}
    path.write_text(json.dumps(report, indent=2))
    plot_routes(routes, output_path(out, ".png"), title=report.get("title", ""))
    if "timeline" in report:
        plot_timeline(report["timeline"], output_path(out, ".time.png"), title=report["title"])
    return path


def table(routes: dict[str, RouteSummary]) -> str:
    def ms(stats: dict[str, float] | None, rank: str) -> str:
        return f"{stats[rank] * 1000:.0f}" if stats else "-"

    rows = ["| route | ok | errors | p50 / p95 / p99 ms | TTFT p50 / p95 ms | ITL p50 / p95 ms "
            "| req/s | generated tok/s | cache hits |", "|---" * 9 + "|"]  # fmt: skip
    for name, r in routes.items():
        latency = " / ".join(ms(r.latency_s, k) for k in ("p50", "p95", "p99"))
        ttft = " / ".join(ms(r.ttft_s, k) for k in ("p50", "p95"))
        itl = " / ".join(ms(r.itl_s, k) for k in ("p50", "p95"))
        hits = "-" if r.cache_hits is None else str(r.cache_hits)
        rows.append(
            f"| {name} | {r.requests} | {r.errors} | {latency} | {ttft} | {itl} "
            f"| {r.requests_per_s:.2f} | {r.generated_tokens_per_s:.1f} | {hits} |"
        )
    return "\n".join(rows)


def route_labels(names: Sequence[str]) -> tuple[list[str], str]:
    """Short x labels for ``names`` of the form "kind (model)", and the base model they share: the
    kind over the model's route ("cached" over "power route"), or the names as they are."""
    parsed = [re.fullmatch(r"(.+) \((.+)\)", name) for name in names]
    if not all(parsed):
        return list(names), ""
    models = [m[2] for m in parsed if m]
    base = min(models, key=len)
    if not all(model.startswith(base) for model in models):
        return list(names), ""
    routes = [(model[len(base) :].lstrip("-") or "plain") + " route" for model in models]
    return [f"{m[1]}\n{route}" for m, route in zip(parsed, routes, strict=True) if m], base


def plot_routes(routes: dict[str, RouteSummary], path: Path, *, title: str = "") -> None:
    """Four panels: latency, streaming latencies, requests/s, tokens/s; one group of bars a route."""
    names = list(routes)
    labels, model = route_labels(names)
    labels = [
        f"{label}\n({routes[n].errors} errors)" if routes[n].errors else label
        for label, n in zip(labels, names, strict=True)
    ]
    x = np.arange(len(names))

    def bars(ax: Any, series: dict[str, list[float]], ylabel: str) -> None:
        width = 0.8 / max(1, len(series))
        for i, (label, values) in enumerate(series.items()):
            ax.bar(x + (i - (len(series) - 1) / 2) * width, values, width, label=label)
        ax.set_xticks(x, labels, fontsize="small")
        ax.set_ylabel(ylabel)
        ax.margins(y=0.3)  # headroom: the legend sits above the bars, not on them
        ax.legend(fontsize="small", loc="upper left", ncols=len(series))
        ax.grid(axis="y", alpha=0.3)

    def pick(field: str, rank: str) -> list[float]:
        return [(getattr(routes[n], field) or {}).get(rank, 0.0) for n in names]

    size = (max(11, 1.8 * len(names) + 4), 8.5)
    with saved_figure(path, dpi=100, nrows=2, ncols=2, figsize=size) as (fig, axes):
        latency = {f"latency {r}": pick("latency_s", r) for r in ("p50", "p95", "p99")}
        bars(axes[0][0], latency, "seconds")
        axes[0][0].set_title("request latency")
        streaming = {f"TTFT {r}": pick("ttft_s", r) for r in ("p50", "p95")}
        streaming |= {f"ITL {r}": pick("itl_s", r) for r in ("p50", "p95")}
        bars(axes[0][1], streaming, "seconds")
        axes[0][1].set_title("streaming: time to first token (TTFT), inter-token (ITL)")
        bars(axes[1][0], {"requests/s": [routes[n].requests_per_s for n in names]}, "requests/s")
        axes[1][0].set_title("throughput (completed requests)")
        tokens = {
            "generated tokens/s": [routes[n].generated_tokens_per_s for n in names],
            "returned tokens/s": [routes[n].completion_tokens_per_s for n in names],
        }
        bars(axes[1][1], tokens, "tokens/s")
        axes[1][1].set_title("token throughput")
        fig.suptitle(f"{title}\nmodel: {model}" if model else title)


def plot_timeline(timeline: dict[str, Any], path: Path, *, title: str = "") -> None:
    """Two panels over the run's time: each kind's latency p50 and p95 per window, and the
    gateway's and its engine core's resident memory."""
    with saved_figure(path, dpi=100, nrows=2, ncols=1, figsize=(11, 8), sharex=True) as (fig, axes):
        latency, memory = axes
        for index, (kind, windows) in enumerate(timeline["latency"].items()):
            color = f"C{index}"
            t = [w["t_s"] / 60 for w in windows]
            latency.plot(t, [w["p50"] for w in windows], color=color, marker=".", label=f"{kind} p50")
            latency.plot(
                t, [w["p95"] for w in windows], color=color, linestyle="--", label=f"{kind} p95"
            )
        latency.set_yscale("log")
        latency.set_ylabel("latency (s), per window")
        latency.set_title(f"latency over time ({timeline['window_s']:g} s windows)")
        latency.grid(alpha=0.3, which="both")
        latency.legend(fontsize="x-small", ncols=5, loc="upper center")
        top = max((w["p95"] for windows in timeline["latency"].values() for w in windows), default=1)
        latency.set_ylim(top=top * 8)  # room for the legend above the curves
        points = timeline["memory"]
        t = [p["t_s"] / 60 for p in points]
        memory.plot(t, [p["gateway_mib"] for p in points], label="gateway")
        memory.plot(t, [p["engine_mib"] for p in points], label="engine core (gateway's children)")
        memory.set_ylabel("resident memory (MiB)")
        memory.set_xlabel("minutes into the run")
        memory.set_title("memory over time")
        highest = max((max(p["gateway_mib"], p["engine_mib"]) for p in points), default=1.0)
        memory.set_ylim(0, highest * 1.15)
        memory.grid(alpha=0.3)
        memory.legend(fontsize="small", loc="lower right")
        fig.suptitle(title)


def replot(report_path: Path) -> Path:
    """Draw a report's PNGs again from its JSON (after a change to the figure); returns the first's
    path."""
    report = json.loads(report_path.read_text())
    routes = {name: RouteSummary(**summary) for name, summary in report["routes"].items()}
    png = report_path.with_suffix(".png")
    plot_routes(routes, png, title=report.get("title", ""))
    if "timeline" in report:
        timeline_png = output_path(png.with_suffix(""), ".time.png")
        plot_timeline(report["timeline"], timeline_png, title=report.get("title", ""))
    return png


if __name__ == "__main__":
    import sys

    for argument in sys.argv[1:]:  # python -m loadtests.load_report loadtests/results/load.json ...
        print(replot(Path(argument)))
