"""bench_particles' arithmetic and picture, on a report of made-up rows: every target is the ratio
of the two rows it names, and the picture is drawn from the JSON alone (``--replot``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from loadtests.bench_particles import configs, plot, ratios, table
from tests.test_plotting import png_size

pytest.importorskip("matplotlib")


def rows(concurrent: bool) -> dict[str, dict[str, Any]]:
    """Each configuration's row: latency i + 1 seconds, self-reward -1 + i / 10, i + 1 ms of
    gateway CPU per token, tokens/s 10 (i + 1)."""
    return {
        name: {
            "latency_p50_s": i + 1.0,
            "self_reward": -1 + i / 10,
            "cost_multiplier": 1.0 + i,
            "gateway_cpu_ms_per_generated_token": i + 1.0,
            "generated_tokens_per_s": 10.0 * (i + 1),
        }
        for i, name in enumerate(configs(4.0, concurrent=concurrent))
    }


def test_each_target_is_the_ratio_of_the_rows_it_names() -> None:
    one, many = rows(False), rows(True)
    found = ratios(one, many)
    names_one, names_many = list(one), list(many)

    def at(names: list[str], name: str) -> int:
        return names.index(name) + 1

    assert found["smc N=4 p50 / floor n=4 (one at a time)"] == pytest.approx(
        at(names_one, "smc N=4") / at(names_one, "floor: plain n=4")
    )
    assert found["adaptive p50 / N=4 p50 (8 at once)"] == pytest.approx(
        at(names_many, "smc adaptive N") / at(names_many, "smc N=4")
    )
    gain = {
        name: (many[name]["self_reward"] - many["plain"]["self_reward"]) / at(names_many, name)
        for name in ("smc adaptive N", "smc N=4")
    }
    assert found["adaptive gain per s / N=4 gain per s (8 at once)"] == pytest.approx(
        gain["smc adaptive N"] / gain["smc N=4"]
    )
    assert found["smc N=4 generated tok/s / plain n=4 tok/s (8 at once)"] == pytest.approx(
        at(names_many, "smc N=4") / at(names_many, "floor: plain n=4")
    )
    report = {"one_at_a_time": one, "all_at_once": many, "ratios": found}
    assert "| smc adaptive N |" in table(report)


def test_the_picture_is_drawn_from_the_report(tmp_path: Path) -> None:
    report = {"one_at_a_time": rows(False), "all_at_once": rows(True)}
    path = plot(report, tmp_path / "bench_particles.png")
    assert png_size(path) == (1320, 576)
