"""How close each sampler's law is to p^alpha, against what it costs, on the enumerable model
(``make bench-fidelity``; no engine, no service: pure math, a minute on 2 cores).

On the tiny 4-token model of the exactness tests (alpha 4, answers of up to 3 tokens, blocks of 1),
every answer's probability is known, so each sampler's law can be set against p^alpha:

- suffix MH at 0..64 steps per block: its exact law (loadtests/oracle.py, no sampling noise);
- Power-SMC at N = 1..128 particles: the law of the pure-Python reference the served sampler is
  tested against (loadtests/smc_reference.py), over ``--runs`` runs;
- importance sampling over a pool of N whole answers (loadtests/smc_reference.py ``importance_law``),
  one answer kept with chance proportional to its weight: from plain samples (weights p^(alpha - 1),
  the "importance pool" alternative to SMC) and from samples at temperature 1/alpha (the
  constrained sampler's proposal);
- plain sampling at temperature 1/alpha, the skeptic's baseline (SMC at N = 1);
- Power-SMC's resampling variants, on answers of up to ``VARIANT_HORIZON`` tokens where resampling
  has room to matter: systematic resampling (the served sampler's), chopthin resampling, and
  systematic with exponent bridging (alpha ramped from 1 over the first tokens), at blocks of 1 and
  2 tokens. They generate the same tokens at the same N: only the law differs.

Cost is tokens generated per answer (MH: the oracle's expectation; the others: N times the mean
answer length of their proposals). The Monte Carlo laws carry their own noise, about
``noise_floor`` in TV at ``--runs``; below it a curve is flat. Writes
loadtests/results/bench_fidelity.json and .png (TV against N or steps, and TV against cost).

    make bench-fidelity
    python -m loadtests.bench_fidelity [--runs 40000] [--variant-runs 200000] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
from pathlib import Path
from typing import Any

from loadtests.load_report import RESULTS
from loadtests.oracle import chain_run
from loadtests.smc_reference import importance_law, smc_law
from loadtests.stats import total_variation
from loadtests.tiny_model import (
    EOS_ID,
    SHARP_PROMPT,
    SHARP_SEED,
    SHARP_WEIGHT_SCALE,
    ExactModel,
    build_tiny_model,
)
from service.plotting import saved_figure

__all__ = ["fidelity", "plot"]

ALPHA = 4.0
HORIZON = 3
STEPS = (0, 1, 2, 5, 10, 20, 40, 64)
PARTICLES = (1, 2, 4, 8, 16, 32, 64, 128)
VARIANT_HORIZON = 6
VARIANT_PARTICLES = (2, 4, 8, 16)
VARIANT_BLOCKS = (1, 2)
VARIANTS: dict[str, dict[str, Any]] = {
    "systematic": {},
    "chopthin": {"resampling": "chopthin"},
    "bridged": {"ramp_tokens": 3},  # alpha 1 -> 4 over the first half of the horizon
}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=40_000, help="Monte Carlo runs per law.")
    parser.add_argument(
        "--variant-runs", type=int, default=200_000, help="Runs per resampling variant's law."
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "bench_fidelity.json")
    return parser.parse_args()


def _mean_length(law: dict[tuple[int, ...], float]) -> float:
    return sum(p * len(y) for y, p in law.items())


def _noise_floor(target: dict[tuple[int, ...], float], runs: int) -> float:
    """TV of an empirical law of ``runs`` samples from the target itself: the Monte Carlo floor."""
    return 0.5 * sum(math.sqrt(p * (1 - p) / runs) for p in target.values())


def _smc_law(exact: ExactModel, horizon: int, **options: Any) -> dict[tuple[int, ...], float]:
    """The reference Power-SMC's law on the model at alpha ALPHA (``options``: smc_law's)."""
    return smc_law(
        exact.next_logprobs, absorbing=frozenset({EOS_ID}), alpha=ALPHA, max_tokens=horizon, **options
    )


def resampling_variants(
    exact: ExactModel, *, runs: int, horizon: int = VARIANT_HORIZON
) -> dict[str, Any]:
    """TV to p^alpha of each SMC resampling variant by block size and N, on longer answers."""
    target = exact.power_distribution(horizon, ALPHA)
    rows = []
    for block_size in VARIANT_BLOCKS:
        for name, options in VARIANTS.items():
            for n in VARIANT_PARTICLES:
                law = _smc_law(
                    exact, horizon, block_size=block_size, particles=n, runs=runs, seed=1, **options
                )
                rows.append(
                    {
                        "variant": name,
                        "block_size": block_size,
                        "particles": n,
                        "tv": total_variation(law, target),
                    }
                )
    tempered = exact.tempered_distribution(horizon, 1 / ALPHA)
    return {
        "horizon": horizon,
        "runs": runs,
        "noise_floor": _noise_floor(target, runs),
        "plain_low_temperature_tv": total_variation(tempered, target),
        "mean_tokens_low_temperature": _mean_length(tempered),
        "rows": rows,
    }


def fidelity(
    model_dir: Path, *, runs: int, variant_runs: int, variant_horizon: int = VARIANT_HORIZON
) -> dict[str, Any]:
    """Every sampler's TV to p^alpha and its cost, as JSON rows."""
    exact = ExactModel(model_dir, SHARP_PROMPT)
    target = exact.power_distribution(HORIZON, ALPHA)
    tempered = exact.tempered_distribution(HORIZON, 1 / ALPHA)
    base = exact.tempered_distribution(HORIZON, 1.0)
    rows: dict[str, list[dict[str, float]]] = {"mh": [], "smc": [], "pool": [], "tempered pool": []}
    for steps in STEPS:
        law, tokens = chain_run(
            exact.next_logprobs,
            eos=EOS_ID,
            alpha=ALPHA,
            max_tokens=HORIZON,
            block_size=1,
            mcmc_steps=steps,
        )
        rows["mh"].append({"steps": steps, "tv": total_variation(law, target), "tokens": tokens})
    for n in PARTICLES:
        law = _smc_law(exact, HORIZON, block_size=1, particles=n, runs=runs)
        # About: a resampled particle's copies continue from its length, not from the start.
        cost = n * _mean_length(tempered)
        rows["smc"].append({"particles": n, "tv": total_variation(law, target), "tokens": cost})
        for name, proposal in (("pool", base), ("tempered pool", tempered)):
            law = importance_law(proposal, target, particles=n, runs=runs)
            rows[name].append(
                {
                    "particles": n,
                    "tv": total_variation(law, target),
                    "tokens": n * _mean_length(proposal),
                }
            )
    return {
        "model": "tiny 4-token Llama (loadtests/tiny_model.py)",
        "alpha": ALPHA,
        "horizon": HORIZON,
        "runs": runs,
        "noise_floor": _noise_floor(target, runs),
        "plain_low_temperature": {
            "tv": total_variation(tempered, target),
            "tokens": _mean_length(tempered),
        },
        "rows": rows,
        "resampling": resampling_variants(exact, runs=variant_runs, horizon=variant_horizon),
    }


LABELS = {
    "mh": "suffix MH (exact law; x: steps per block)",
    "smc": "Power-SMC (x: particles)",
    "pool": "importance pool of plain samples (x: pool size)",
    "tempered pool": "importance pool at temperature 1/alpha (x: pool size)",
}


STYLES = {"tempered pool": {"linestyle": "--", "marker": "x"}}  # it lies on SMC's curve at B = 1


def plot(report: dict[str, Any], path: Path) -> None:
    """TV to p^alpha against the sampler's own knob (left), against tokens generated (middle), and
    SMC's resampling variants against N on longer answers (right)."""
    with saved_figure(path, dpi=120, figsize=(18, 4.8), ncols=3) as (figure, (knob, cost, variants)):
        for name, rows in report["rows"].items():
            style = {"marker": "o"} | STYLES.get(name, {})
            x = [max(r.get("steps", r.get("particles")), 0.5) for r in rows]  # 0 steps: the edge
            tv = [r["tv"] for r in rows]
            knob.plot(x, tv, **style)
            cost.plot([r["tokens"] for r in rows], tv, label=LABELS[name], **style)
        low = report["plain_low_temperature"]
        for axis in (knob, cost):
            axis.axhline(low["tv"], color="black", linestyle="--", linewidth=1)
            axis.axhline(report["noise_floor"], color="grey", linestyle=":", linewidth=1)
            axis.set_xscale("log", base=2)
            axis.set_yscale("log")
            axis.set_ylabel("total variation to p^alpha")
            axis.grid(alpha=0.3, which="both")
        cost.annotate("plain sampling at 1/alpha", (4, low["tv"] * 1.1), fontsize=8)
        knob.annotate("Monte Carlo noise floor", (0.6, report["noise_floor"] * 1.1), fontsize=8)
        knob.set_xlabel("MH steps per block (0 at the left edge) / particles / pool size")
        cost.set_xlabel("tokens generated per answer")
        cost.legend(loc="lower left", fontsize=8)  # the corner the curves leave empty
        _plot_variants(variants, report["resampling"])
        figure.suptitle(
            f"Fidelity to p^{report['alpha']:g} on the enumerable model "
            f"(answers of up to {report['horizon']} tokens)"
        )


def _plot_variants(axis: Any, section: dict[str, Any]) -> None:
    for block_size in VARIANT_BLOCKS:
        for name in VARIANTS:
            rows = [r for r in section["rows"] if r["variant"] == name and r["block_size"] == block_size]
            axis.plot(
                [r["particles"] for r in rows],
                [r["tv"] for r in rows],
                marker="o",
                linestyle="-" if block_size == 1 else "--",
                label=f"{name}, blocks of {block_size}",
            )
    axis.axhline(section["noise_floor"], color="grey", linestyle=":", linewidth=1)
    axis.set_xscale("log", base=2)
    axis.set_yscale("log")
    axis.set_xlabel("particles")
    axis.set_ylabel("total variation to p^alpha")
    axis.set_title(f"Power-SMC resampling, answers of up to {section['horizon']} tokens", fontsize=10)
    axis.grid(alpha=0.3, which="both")
    axis.legend(loc="lower left", fontsize=8)


def main() -> None:
    args = parse_args()
    with tempfile.TemporaryDirectory() as work:
        model_dir = build_tiny_model(
            Path(work) / "tiny", seed=SHARP_SEED, weight_scale=SHARP_WEIGHT_SCALE
        )
        report = fidelity(model_dir, runs=args.runs, variant_runs=args.variant_runs)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    plot(report, args.out.with_suffix(".png"))
    print("| sampler | knob | TV to p^alpha | tokens per answer |")
    print("|---|---|---|---|")
    low = report["plain_low_temperature"]
    print(f"| plain, T = 1/alpha | | {low['tv']:.3f} | {low['tokens']:.2f} |")
    for name, rows in report["rows"].items():
        for r in rows:
            knob = r.get("steps", r.get("particles"))
            print(f"| {name} | {knob} | {r['tv']:.3f} | {r['tokens']:.1f} |")
    section = report["resampling"]
    print(f"\nResampling, answers of up to {section['horizon']} tokens (TV to p^alpha):")
    print("| variant | blocks of | " + " | ".join(f"N = {n}" for n in VARIANT_PARTICLES) + " |")
    print("|---|---|" + "---|" * len(VARIANT_PARTICLES))
    for block_size in VARIANT_BLOCKS:
        for name in VARIANTS:
            tvs = [
                f"{r['tv']:.4f}"
                for r in section["rows"]
                if r["variant"] == name and r["block_size"] == block_size
            ]
            print(f"| {name} | {block_size} | " + " | ".join(tvs) + " |")


if __name__ == "__main__":
    main()
