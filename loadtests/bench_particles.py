"""Benchmark of Power-SMC's particles against their floor, and of load-adaptive N (issue 22).

The same chat prompts (``max_tokens`` 64, unseeded, so that the route may choose N) on the embedded
default model, through the service, in one run:

  (i)  one request at a time: p50 latency, self-reward (mean log p per token under the base model)
       and cost of plain sampling, plain sampling at temperature 1/alpha (what a skeptic compares
       sharpening to), the floors (plain with n = N at temperature 1/alpha: N sequences decoded in
       one batch at the particles' temperature, the least N particles can cost), SMC at fixed N = 4,
       8 and 16, the same re-submitted every block (asked of a second service, started with
       POWERSERVE_POWER_HELD_PARTICLES=false), SMC with load-adaptive N (4 to 8:
       POWERSERVE_POWER_PARTICLES_MAX=8), and for comparison MH (4 steps, blocks of 16) and the
       distilled model;
  (ii) 8 prompts at once, one burst: the same, with SMC's generated tokens/s against plain
       decoding's at the same number of sequences in flight (n = 4 per prompt, at temperature
       1/alpha);
  (iii) 8 requests in flight, sustained: 8 clients each asking ``--rounds`` prompts back to back,
       SMC at N = 4 against that floor and against SMC that never resamples (one block), in
       ``--reps`` turns taken in turn: generated tokens/s where the batch stays full, not only
       while one burst drains;
  (iv) the held-out problem families of the distillation data (``--heldout-prompts``, 8 at a
       time): accuracy and self-reward of every way to answer of (i), on problems no part of the
       project was built from.

Each configuration of a part runs on every prompt in turn, prompt by prompt (so a slow minute of
this shared machine falls on all of them alike), and every ratio is formed within this run. The
gateway's CPU time (its own process: the engine core is another) is read from /proc around each
configuration and reported per generated token. Results go to loadtests/results/bench_particles.json,
a picture of latency against self-reward and cost to loadtests/results/bench_particles.png, and a
Markdown table to stdout.

    make bench-particles
    python -m loadtests.bench_particles [--prompts 12 --heldout-prompts 100 --max-tokens 64]
    python -m loadtests.bench_particles --replot     (the picture again, from the JSON)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from loadtests import bench_pool
from loadtests.bench_methods import ask, summary_of
from loadtests.harness import ServiceProcess
from loadtests.load_report import RESULTS
from loadtests.prompts import PROMPTS
from service.config import DEFAULT_MODEL_NAME, Settings
from service.distill.data import DEFAULT_PROMPTS, read_prompts
from service.model_store import ensure_default_model

# What its test checks.
__all__ = [
    "configs",
    "heldout_routes",
    "plot",
    "ratios",
    "readme_table",
    "resubmitted",
    "row_of",
    "sustained_configs",
    "table",
]

_TICKS = os.sysconf("SC_CLK_TCK")
# POWERSERVE_POWER_PARTICLES_MAX of the benchmark's service (the default, 4, fixes N).
ADAPTIVE_MAX = 8
# Requests in flight in parts (ii) to (iv).
CONCURRENCY = 8
# SMC's N also asked of a service that re-submits its particles every block (part (i)).
RESUBMITTED_N = (4, 8, 16)
# The settings of the service those rows are asked of.
RESUBMITTING = {"POWERSERVE_POWER_HELD_PARTICLES": "false"}
# vLLM's counters read around the rows of (ii) and (iii).
ENGINE_COUNTERS = (
    "vllm:prompt_tokens_total",
    "vllm:prompt_tokens_cached_total",
    "vllm:generation_tokens_total",
)
# A client and the service it asks (whose gateway's CPU is read).
Asked = tuple[httpx.AsyncClient, ServiceProcess]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--prompts", type=int, default=len(PROMPTS), help="Chat prompts of (i).")
    parser.add_argument("--rounds", type=int, default=2, help="Requests per client a turn in (iii).")
    parser.add_argument("--reps", type=int, default=4, help="Turns of each row in (iii).")
    parser.add_argument("--heldout-prompts", type=int, default=100, help="Problems of (iv).")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--alpha", type=float, default=4.0)
    parser.add_argument("--out", type=Path, default=RESULTS / "bench_particles.json")
    parser.add_argument("--replot", action="store_true", help="only redraw the picture from --out")
    return parser.parse_args()


def configs(alpha: float, *, concurrent: bool) -> dict[str, dict[str, Any]]:
    """Request parameters of each row ("model" names the route)."""
    power = {"model": "power", "temperature": 1 / alpha}
    # SMC rows name their resampling schedule, so that they stay what they are whatever the default.
    smc = power | {"power_method": "smc", "power_resample_at": "block"}
    rows: dict[str, dict[str, Any]] = {
        "plain": {"model": "plain"},
        "plain, temperature 1/alpha": {"model": "plain", "temperature": 1 / alpha},
        # The floors decode at the particles' temperature, so that answers are as long as theirs.
        "floor: plain n=4": {"model": "plain", "n": 4, "temperature": 1 / alpha},
    }
    if not concurrent:
        for n in (8, 16):
            rows[f"floor: plain n={n}"] = {"model": "plain", "n": n, "temperature": 1 / alpha}
    rows["smc N=4"] = smc | {"power_particles": 4}
    # The same, resampling only where a copy prefills at most one block (power_resample_at).
    rows["smc N=4, kv_block"] = rows["smc N=4"] | {"power_resample_at": "kv_block"}
    if not concurrent:
        rows["smc N=8"] = smc | {"power_particles": 8}
        rows["smc N=16"] = smc | {"power_particles": 16}
    rows["smc adaptive N"] = smc
    if not concurrent:  # the other ways to the same end, for the picture (slow, and not the point)
        rows["mh 4 steps, B=16"] = power | {"power_method": "mh", "mcmc_steps": 4, "block_size": 16}
        rows["distilled"] = {"model": "distilled"}
    return rows


def gateway_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) the gateway process has used, its threads included."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS  # utime, stime


def engine_counts(service: ServiceProcess) -> dict[str, float]:
    """vLLM's own counters, on the gateway's /metrics: prompt tokens prefilled, those of them the
    prefix cache held, and tokens decoded (those of aborted requests, a dropped particle's
    run-ahead, included)."""
    return service.metrics(*ENGINE_COUNTERS)


@dataclass
class Spent:
    """What a row has spent so far: wall seconds, the gateway's CPU seconds, and the change in
    engine_counts."""

    seconds: float = 0.0
    cpu_s: float = 0.0
    engine: dict[str, float] = field(default_factory=lambda: dict.fromkeys(ENGINE_COUNTERS, 0.0))


@contextmanager
def spending(service: ServiceProcess, spent: Spent) -> Iterator[Spent]:
    """Add to ``spent`` what the service spends while the block runs."""
    counts = engine_counts(service)
    cpu_s, began = gateway_cpu_s(service.process.pid), time.monotonic()
    yield spent
    spent.seconds += time.monotonic() - began
    spent.cpu_s += gateway_cpu_s(service.process.pid) - cpu_s
    for name, value in engine_counts(service).items():
        spent.engine[name] += value - counts[name]


def row_of(
    results: list[dict],
    seconds: float | None,
    cpu_s: float,
    engine: dict[str, float] | None = None,
) -> dict[str, Any]:
    """A row's summary; ``engine``: the change in engine_counts over the row."""
    row = summary_of(results, seconds)
    row["gateway_cpu_ms_per_generated_token"] = 1000 * cpu_s / max(row["tokens_generated"], 1)
    chosen = Counter(r["power"]["particles"] for r in results if "particles" in r.get("power", {}))
    if chosen:
        row["particles_chosen"] = dict(sorted(chosen.items()))
        finals = Counter(r["power"]["final_particles"] for r in results)
        row["particles_at_end"] = dict(sorted(finals.items()))
    if engine is not None and seconds:
        prompt, cached, decoded = (engine[name] for name in ENGINE_COUNTERS)
        row["engine_decoded_tokens_per_s"] = decoded / seconds
        # The prefill work a row adds beside its decode: a copy's uncached tail, every prompt.
        row["engine_prefilled_per_decoded_token"] = (prompt - cached) / max(decoded, 1)
    # A plain request with n > 1 answers n choices: its self-reward is the first's.
    return row


def resubmitted(alpha: float) -> dict[str, dict[str, Any]]:
    """Rows of (i) asked of the second service, whose SMC re-submits every particle each block."""
    held = configs(alpha, concurrent=False)
    return {f"smc N={n}, re-submitted": held[f"smc N={n}"] for n in RESUBMITTED_N}


async def one_at_a_time(
    held: Asked, resubmitting: Asked, args: argparse.Namespace
) -> dict[str, dict[str, Any]]:
    rows: dict[str, tuple[dict[str, Any], Asked]] = {}
    for name, params in configs(args.alpha, concurrent=False).items():
        rows[name] = (params, held)
        if name == "smc N=16":  # beside the held rows, in the tables too
            rows |= {n: (p, resubmitting) for n, p in resubmitted(args.alpha).items()}
    results: dict[str, list[dict]] = {name: [] for name in rows}
    cpu: dict[str, float] = dict.fromkeys(rows, 0.0)
    previous = None
    for prompt in PROMPTS[: args.prompts]:
        for name, (params, (client, service)) in rows.items():
            if service is not previous:
                # An engine idle for the other service's rows is slow to its first request (both
                # runs before this had the first row after a switch slowest): wake it untimed.
                await ask(client, DEFAULT_MODEL_NAME, {"model": "plain"}, prompt, None, 1)
                previous = service
            before = gateway_cpu_s(service.process.pid)
            results[name].append(
                await ask(client, DEFAULT_MODEL_NAME, params, prompt, None, args.max_tokens)
            )
            cpu[name] += gateway_cpu_s(service.process.pid) - before
        print(f"(i) prompt {len(results['plain'])} done", flush=True)
    return {name: row_of(results[name], None, cpu[name]) for name in rows}


async def all_at_once(
    client: httpx.AsyncClient, service: ServiceProcess, args: argparse.Namespace
) -> dict[str, dict[str, Any]]:
    out = {}
    for name, params in configs(args.alpha, concurrent=True).items():
        with spending(service, Spent()) as spent:
            results = await asyncio.gather(
                *(
                    ask(client, DEFAULT_MODEL_NAME, params, p, None, args.max_tokens)
                    for p in PROMPTS[:CONCURRENCY]
                )
            )
        out[name] = row_of(list(results), spent.seconds, spent.cpu_s, spent.engine)
        print(f"(ii) {name}: {out[name]}", flush=True)
    return out


def sustained_configs(alpha: float, max_tokens: int) -> dict[str, dict[str, Any]]:
    """Rows of (iii): SMC at N = 4, its floor, SMC at N = 4 resampling at KV-block horizons only,
    and SMC at N = 4 with one block (it never resamples: what held particles decode at, the cost of
    resampling apart)."""
    rows = configs(alpha, concurrent=True)
    return {
        "floor: plain n=4": rows["floor: plain n=4"],
        "smc N=4": rows["smc N=4"],
        "smc N=4, kv_block": rows["smc N=4, kv_block"],
        "smc N=4, one block": rows["smc N=4"] | {"block_size": max_tokens},
    }


async def sustained(
    client: httpx.AsyncClient, service: ServiceProcess, args: argparse.Namespace
) -> dict[str, dict[str, Any]]:
    """Each row with CONCURRENCY requests always in flight: each client asks ``args.rounds``
    prompts back to back, so the batch drains only once a turn. The rows take ``args.reps`` turns
    each, in turn, so that the drift of this shared machine falls on all of them alike."""
    rows = sustained_configs(args.alpha, args.max_tokens)
    results: dict[str, list[dict]] = {name: [] for name in rows}
    spent = {name: Spent() for name in rows}
    for rep in range(args.reps):
        for name, params in rows.items():

            async def client_loop(k: int, params: dict[str, Any] = params, rep: int = rep) -> list[dict]:
                first = k + rep * args.rounds
                prompts = [PROMPTS[(first + r) % len(PROMPTS)] for r in range(args.rounds)]
                return [
                    await ask(client, DEFAULT_MODEL_NAME, params, p, None, args.max_tokens)
                    for p in prompts
                ]

            with spending(service, spent[name]):
                per_client = await asyncio.gather(*(client_loop(k) for k in range(CONCURRENCY)))
            results[name] += [r for answers in per_client for r in answers]
        print(f"(iii) turn {rep + 1} done", flush=True)
    return {
        name: row_of(results[name], row.seconds, row.cpu_s, row.engine) for name, row in spent.items()
    }


def heldout_routes(alpha: float) -> dict[str, dict[str, Any]]:
    """Part (i)'s ways to answer as request fields of the held-out part (the floors are latencies,
    not answers); adaptive N unseeded, so that the load may choose its N."""
    models = {"plain": "", "power": "-power", "distilled": "-distilled"}
    routes = {}
    for name, params in configs(alpha, concurrent=False).items():
        if name.startswith("floor"):
            continue
        routes[name] = params | {"model": DEFAULT_MODEL_NAME + models[params["model"]]}
    routes["smc adaptive N"]["seed"] = None
    return routes


async def heldout(url: str, args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    items = read_prompts(DEFAULT_PROMPTS, "heldout", args.heldout_prompts)
    pool_args = argparse.Namespace(concurrency=CONCURRENCY, max_tokens=args.max_tokens, alpha=args.alpha)
    return await bench_pool.run(url, items, pool_args, heldout_routes(args.alpha))


def ratios(
    one: dict[str, dict[str, Any]], many: dict[str, dict[str, Any]], kept: dict[str, dict[str, Any]]
) -> dict[str, float]:
    """The issue's targets, each a ratio of two rows of this run."""

    def p50(rows: dict[str, dict[str, Any]], name: str) -> float:
        return float(rows[name]["latency_p50_s"])

    def gain_per_s(rows: dict[str, dict[str, Any]], name: str) -> float:
        gain = rows[name]["self_reward"] - rows["plain"]["self_reward"]
        return float(gain / rows[name]["latency_p50_s"])

    def rate(rows: dict[str, dict[str, Any]], name: str) -> float:
        return float(rows[name]["generated_tokens_per_s"])

    def cpu(rows: dict[str, dict[str, Any]], name: str) -> float:
        return float(rows[name]["gateway_cpu_ms_per_generated_token"])

    return {
        "smc N=4 p50 / floor n=4 (one at a time)": p50(one, "smc N=4") / p50(one, "floor: plain n=4"),
        "smc N=8 p50 / floor n=8 (one at a time)": p50(one, "smc N=8") / p50(one, "floor: plain n=8"),
        "smc N=16 p50 / floor n=16 (one at a time)": p50(one, "smc N=16")
        / p50(one, "floor: plain n=16"),
        **{
            f"smc N={n} p50: held / re-submitted (one at a time)": p50(one, f"smc N={n}")
            / p50(one, f"smc N={n}, re-submitted")
            for n in RESUBMITTED_N
        },
        "adaptive p50 / N=4 p50 (one at a time)": p50(one, "smc adaptive N") / p50(one, "smc N=4"),
        "adaptive self-reward - N=4 self-reward (one at a time)": one["smc adaptive N"]["self_reward"]
        - one["smc N=4"]["self_reward"],
        "adaptive p50 / N=4 p50 (8 at once)": p50(many, "smc adaptive N") / p50(many, "smc N=4"),
        "adaptive gain per s / N=4 gain per s (8 at once)": gain_per_s(many, "smc adaptive N")
        / gain_per_s(many, "smc N=4"),
        "smc N=4 generated tok/s / plain n=4 tok/s (8 at once, one burst)": rate(many, "smc N=4")
        / rate(many, "floor: plain n=4"),
        "smc N=4 generated tok/s / plain n=4 tok/s (8 in flight, sustained)": rate(kept, "smc N=4")
        / rate(kept, "floor: plain n=4"),
        "smc N=4 kv_block generated tok/s / plain n=4 tok/s (8 at once, one burst)": rate(
            many, "smc N=4, kv_block"
        )
        / rate(many, "floor: plain n=4"),
        "smc N=4 kv_block generated tok/s / plain n=4 tok/s (8 in flight, sustained)": rate(
            kept, "smc N=4, kv_block"
        )
        / rate(kept, "floor: plain n=4"),
        "smc N=4 kv_block p50 / floor n=4 (one at a time)": p50(one, "smc N=4, kv_block")
        / p50(one, "floor: plain n=4"),
        "smc N=4 kv_block self-reward - N=4 self-reward (one at a time)": one["smc N=4, kv_block"][
            "self_reward"
        ]
        - one["smc N=4"]["self_reward"],
        "smc N=4 one block (no resampling) tok/s / plain n=4 tok/s (8 in flight, sustained)": rate(
            kept, "smc N=4, one block"
        )
        / rate(kept, "floor: plain n=4"),
        "gateway CPU per token: smc N=4 / plain (one at a time)": cpu(one, "smc N=4")
        / cpu(one, "plain"),
        "gateway CPU per token: smc N=4 / plain (8 at once)": cpu(many, "smc N=4") / cpu(many, "plain"),
    }


def table(report: dict[str, Any]) -> str:
    lines = []
    parts = (
        ("one_at_a_time", "one request at a time"),
        ("all_at_once", "8 at once, one burst"),
        ("sustained", "8 in flight, sustained"),
    )
    for part, title in parts:
        lines += [
            f"\n{title}\n",
            "| | p50 | self-reward | cost | generated tok/s | engine decoded tok/s "
            "| engine prefill / decoded token | gateway CPU ms/token | N chosen | N at the end |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for name, row in report[part].items():
            rate = row.get("generated_tokens_per_s")
            decoded = row.get("engine_decoded_tokens_per_s")
            prefill = row.get("engine_prefilled_per_decoded_token")
            lines.append(
                f"| {name} | {row['latency_p50_s']:.2f} s | {row['self_reward']:.3f} "
                f"| {row['cost_multiplier']:.2f} | {'' if rate is None else f'{rate:.0f}'} "
                f"| {'' if decoded is None else f'{decoded:.0f}'} "
                f"| {'' if prefill is None else f'{prefill:.3f}'} "
                f"| {row['gateway_cpu_ms_per_generated_token']:.2f} "
                f"| {row.get('particles_chosen', '')} | {row.get('particles_at_end', '')} |"
            )
    lines += ["\n| target | ratio |", "|---|---|"]
    lines += [f"| {name} | {value:.3f} |" for name, value in report["ratios"].items()]
    return "\n".join([*lines, "", readme_table(report)])


def readme_table(report: dict[str, Any]) -> str:
    """One row per way to answer: latency and cost one request at a time (chat prompts), and
    accuracy and self-reward on the held-out problem families (not asked of the re-submitted
    particles: the same law as the held ones)."""
    one, held = report["one_at_a_time"], report["heldout"]
    plain = one["plain"]["latency_p50_s"]
    lines = [
        "| | p50, one at a time | vs plain | tokens generated / returned | self-reward "
        "| held-out accuracy (95% interval) | held-out self-reward |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, row in one.items():
        latency = f"{row['latency_p50_s']:.2f} s | {row['latency_p50_s'] / plain:.2f}x"
        if name.startswith("floor"):  # a latency, not a way to answer
            lines.append(f"| {name} | {latency} | | | | |")
            continue
        cost = f"{row['cost_multiplier']:.1f} | {row['self_reward']:.3f}"
        if name not in held:
            lines.append(f"| {name} | {latency} | {cost} | | |")
            continue
        low, high = held[name]["accuracy_ci95"]
        lines.append(
            f"| {name} | {latency} | {cost} "
            f"| {held[name]['accuracy']:.1%} ({low:.0%}–{high:.0%}) "
            f"| {held[name]['self_reward_per_token']:.3f} |"
        )
    return "\n".join(lines)


async def run(
    service: ServiceProcess, resubmitting: ServiceProcess, args: argparse.Namespace
) -> dict[str, Any]:
    async with (
        httpx.AsyncClient(base_url=service.url, timeout=3600) as client,
        httpx.AsyncClient(base_url=resubmitting.url, timeout=3600) as other,
    ):
        for params in configs(args.alpha, concurrent=False).values():  # warm every path up
            await ask(client, DEFAULT_MODEL_NAME, params, PROMPTS[0], None, 8)
        for params in resubmitted(args.alpha).values():
            await ask(other, DEFAULT_MODEL_NAME, params, PROMPTS[0], None, 8)
        one = await one_at_a_time((client, service), (other, resubmitting), args)
        many = await all_at_once(client, service, args)
        kept = await sustained(client, service, args)
    held = await heldout(service.url, args)
    return {
        "one_at_a_time": one,
        "all_at_once": many,
        "sustained": kept,
        "heldout": held,
        "ratios": ratios(one, many, kept),
    }


def plot(report: dict[str, Any], path: Path) -> Path:
    """Self-reward against p50 latency, one panel per part; the legend gives each row's cost."""
    from matplotlib import colormaps
    from matplotlib.ticker import ScalarFormatter

    from service.plotting import saved_figure

    colours = colormaps["tab20"]  # more rows than the default cycle's 10 colours

    parts = (("one_at_a_time", "one request at a time"), ("all_at_once", "8 requests at once"))
    with saved_figure(path, dpi=120, figsize=(11, 4.8), ncols=2) as (_figure, axes):
        for axis, (part, title) in zip(axes, parts, strict=True):
            for i, (name, row) in enumerate(report[part].items()):
                if name.startswith("floor"):
                    continue  # latency only: the floor of SMC's, not a way to answer
                marker = "o" if name.startswith(("smc", "mh")) else "s"
                label = f"{name} ({row['cost_multiplier']:.1f}x tokens)"
                axis.scatter(
                    [row["latency_p50_s"]],
                    [row["self_reward"]],
                    marker=marker,
                    s=40,
                    color=colours(i % colours.N),
                    label=label,
                )
            axis.set_xscale("log")
            axis.xaxis.set_major_formatter(ScalarFormatter())
            axis.xaxis.set_minor_formatter(ScalarFormatter())
            axis.tick_params(axis="x", which="minor", labelsize=7)
            axis.set_xlabel("p50 latency (s, log scale)")
            axis.set_ylabel("self-reward (mean log p per token)")
            axis.set_title(title, fontsize=10)
            axis.grid(alpha=0.3)
            axis.legend(fontsize=7, loc="lower right")
    return path


def main() -> None:
    args = parse_args()
    if args.replot:
        print(plot(json.loads(args.out.read_text()), args.out.with_suffix(".png")))
        return
    settings = Settings()
    ensure_default_model(settings.cache_dir)
    RESULTS.mkdir(exist_ok=True)
    # The embedded default as `make serve` runs it, with load-adaptive N up to 8.
    adaptive = {"POWERSERVE_POWER_PARTICLES_MAX": str(ADAPTIVE_MAX)}
    service = ServiceProcess([], RESULTS / "bench_particles.service.log", adaptive).wait_ready()
    try:
        # Beside it, idle but for its rows of (i): SMC as it was before held particles.
        log = RESULTS / "bench_particles.resubmitting.log"
        resubmitting = ServiceProcess([], log, RESUBMITTING).wait_ready()
        try:
            report = asyncio.run(run(service, resubmitting, args))
        finally:
            resubmitting.stop()
    finally:
        service.stop()
    report["args"] = {k: str(v) for k, v in vars(args).items()}
    report["settings"] = {
        "power_particles": settings.power_particles,
        "power_particles_max": ADAPTIVE_MAX,
        "power_batch_room": settings.power_batch_room,
    }
    report["date"] = time.strftime("%Y-%m-%d")
    args.out.write_text(json.dumps(report, indent=2))
    plot(report, args.out.with_suffix(".png"))
    print(table(report))


if __name__ == "__main__":
    main()
