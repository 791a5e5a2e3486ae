"""Power-SMC's resampling schemes on problem families never trained on (``make bench-resampling``):
systematic resampling (the default) against chopthin (``power_resampling: "chopthin"``), at equal
N (4; ``--particles 4 8`` for more), beside plain sampling at temperature 1/alpha, on the same
prompts and seeds in one run.

On the enumerable model chopthin is the closer to p^alpha where resampling is frequent (blocks of
one token: TV 0.006 against 0.022 at N = 4) and level with systematic at blocks of two
(docs/benchmarks/fidelity.md); this measures whether that shows in real answers (the served
block is max_tokens / 16 tokens). Writes loadtests/results/bench_resampling.json and a Markdown
table on stdout.

    make bench-resampling
    python -m loadtests.bench_resampling [--prompts 200 --particles 4 8 --concurrency 8]
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from loadtests.bench_pool import held_out_run
from loadtests.load_report import RESULTS
from service.config import DEFAULT_MODEL_NAME

__all__: list[str] = []


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--prompts", type=int, default=200, help="Held-out prompts to ask.")
    parser.add_argument("--particles", type=int, nargs="+", default=[4], help="SMC's N (several: 4 8).")
    parser.add_argument("--alpha", type=float, default=4.0)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--out", type=Path, default=RESULTS / "bench_resampling.json")
    return parser.parse_args()


def routes(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    cold = 1 / args.alpha
    rows: dict[str, dict[str, Any]] = {
        "plain at 1/alpha": {"model": DEFAULT_MODEL_NAME, "temperature": cold}
    }
    for n in args.particles:
        for scheme in ("systematic", "chopthin"):
            rows[f"smc N={n}, {scheme}"] = {
                "model": f"{DEFAULT_MODEL_NAME}-power",
                "temperature": cold,
                "power_method": "smc",
                "power_particles": n,
                "power_resampling": scheme,
            }
    return rows


def main() -> None:
    args = parse_args()
    held_out_run(args, routes(args), "bench_resampling")


if __name__ == "__main__":
    main()
