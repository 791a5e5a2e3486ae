"""The evaluation's arithmetic: Wilson intervals, the shares of the power route's gains that the
distilled model keeps, the verdict against plain sampling at temperature 1/alpha, the report."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from service.distill.evaluate import eval_routes, summarise, wilson_interval, write_report
from service.distill.teacher import PowerParams


def test_wilson_intervals_match_the_textbook_values() -> None:
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert wilson_interval(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert wilson_interval(80, 80)[1] == 1.0 and wilson_interval(80, 80)[0] > 0.95
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_the_routes_compare_with_low_temperature_sampling() -> None:
    smc = PowerParams(method="smc")
    names = [route.name for route in eval_routes(smc, compare_mh=True)]
    assert names == [
        "base", "base-low-temperature", "power", "power-mh", "distilled", "distilled-low-temperature",
    ]  # fmt: skip
    assert "power-mh" not in [r.name for r in eval_routes(PowerParams(method="mh"), compare_mh=True)]
    assert "power-mh" not in [r.name for r in eval_routes(smc)]


def _answers(right: int, total: int, logprob: float, family: str = "f") -> list[dict[str, Any]]:
    """``total`` answers of 2 tokens each, the first ``right`` of them correct."""
    return [
        {
            "answer": "7",
            "family": family,
            "completion": "7" if i < right else "8",
            "token_ids": [1, 2],
            "tokens_generated": 2,
            "self_reward": {"sum_logprob": 2 * logprob},
            "latency_s": 1.0,
        }
        for i in range(total)
    ]


def _records(distilled: tuple[int, float], low: tuple[int, float]) -> dict[str, list[dict]]:
    return {
        "base": _answers(2, 20, -1.8),
        "base-low-temperature": _answers(low[0], 20, low[1]),
        "power": _answers(6, 20, -0.4),
        "distilled": _answers(distilled[0], 20, distilled[1]),
        "distilled-low-temperature": _answers(5, 20, -0.3),
    }


def test_gains_kept_and_the_verdict_against_low_temperature(tmp_path: Path) -> None:
    summary = summarise(_records(distilled=(5, -0.5), low=(3, -0.6)))
    assert summary["accuracy_gain_kept"] == pytest.approx((5 - 2) / (6 - 2))
    assert summary["gain_recovered"] == pytest.approx((-0.5 + 1.8) / (-0.4 + 1.8))
    assert summary["beats_low_temperature"] == {"accuracy": True, "self_reward": True}
    row = summary["routes"]["distilled"]
    assert row["accuracy"] == 0.25 and row["accuracy_ci95"] == pytest.approx(wilson_interval(5, 20))
    assert row["accuracy_by_family"] == {"f": 0.25}

    worse = summarise(_records(distilled=(3, -0.7), low=(3, -0.6)))
    assert worse["beats_low_temperature"] == {"accuracy": False, "self_reward": False}

    write_report(tmp_path, summary, _records((5, -0.5), (3, -0.6)), {"prompts": 20, "power": "x"})
    table = (tmp_path / "eval.md").read_text()
    assert "| distilled | 25.0% (11%–47%) | -0.500 |" in table
    assert (
        "keeps 75% of the power route's accuracy gain over plain sampling (+20.0 points for the "
        "power route, +15.0 for the distilled model; the power route's and plain sampling's 95% "
        "intervals overlap) and 93% of its self-reward gain"
    ) in table
    assert "accuracy 25.0% against 15.0% (better), self-reward -0.500 against -0.600 (better)" in table
    assert (tmp_path / "eval.png").read_bytes()[:4] == b"\x89PNG"
