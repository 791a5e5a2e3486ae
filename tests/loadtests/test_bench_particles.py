"""bench_particles' arithmetic and picture, on a report of made-up rows: every target is the ratio
of the two rows it names, and the picture is drawn from the JSON alone (``--replot``); and what a
row spent, read around real requests to the tiny service."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import openai
import pytest

from loadtests.bench_particles import (
    Spent,
    configs,
    heldout_routes,
    plot,
    ratios,
    readme_table,
    resubmitted,
    row_of,
    spending,
    sustained_configs,
    table,
)
from loadtests.bench_power import UNCACHED
from loadtests.harness import ServiceProcess
from service.config import DEFAULT_MODEL_NAME
from tests.conftest import TINY_MODEL_NAME, TINY_PROMPT
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


def one_at_a_time_rows() -> dict[str, dict[str, Any]]:
    """Part (i): ``rows(False)``, and the re-submitted particles at twice the latency of the held."""
    one = rows(False)
    return one | {
        name: one[name.removesuffix(", re-submitted")]
        | {"latency_p50_s": 2 * one[name.removesuffix(", re-submitted")]["latency_p50_s"]}
        for name in resubmitted(4.0)
    }


def sustained_rows() -> dict[str, dict[str, Any]]:
    """The floor at 100 generated tokens/s, SMC at 93 (97 resampling at KV-block horizons), SMC
    that never resamples at 101."""
    return {
        "floor: plain n=4": rows(True)["floor: plain n=4"] | {"generated_tokens_per_s": 100.0},
        "smc N=4": rows(True)["smc N=4"] | {"generated_tokens_per_s": 93.0},
        "smc N=4, kv_block": rows(True)["smc N=4"] | {"generated_tokens_per_s": 97.0},
        "smc N=4, one block": rows(True)["smc N=4"] | {"generated_tokens_per_s": 101.0},
    }


def heldout_rows() -> dict[str, dict[str, Any]]:
    """Each way to answer's accuracy: 10% for the first, 2 points more for each after it."""
    return {
        name: {
            "accuracy": 0.1 + 0.02 * i,
            "accuracy_ci95": [0.05, 0.2],
            "self_reward_per_token": -0.5 + i / 100,
        }
        for i, name in enumerate(heldout_routes(4.0))
    }


def test_each_target_is_the_ratio_of_the_rows_it_names() -> None:
    one, many = one_at_a_time_rows(), rows(True)
    found = ratios(one, many, sustained_rows())
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
    assert found["smc N=4 generated tok/s / plain n=4 tok/s (8 at once, one burst)"] == pytest.approx(
        at(names_many, "smc N=4") / at(names_many, "floor: plain n=4")
    )
    assert found["smc N=4 generated tok/s / plain n=4 tok/s (8 in flight, sustained)"] == pytest.approx(
        0.93
    )
    kv_block = "smc N=4 kv_block generated tok/s / plain n=4 tok/s (8 in flight, sustained)"
    assert found[kv_block] == pytest.approx(0.97)
    assert found["smc N=4 kv_block self-reward - N=4 self-reward (one at a time)"] == pytest.approx(
        one["smc N=4, kv_block"]["self_reward"] - one["smc N=4"]["self_reward"]
    )
    no_resampling = "smc N=4 one block (no resampling) tok/s / plain n=4 tok/s (8 in flight, sustained)"
    assert found[no_resampling] == pytest.approx(1.01)
    assert found["smc N=16 p50 / floor n=16 (one at a time)"] == pytest.approx(
        at(names_one, "smc N=16") / at(names_one, "floor: plain n=16")
    )
    for n in (4, 8, 16):
        assert found[f"smc N={n} p50: held / re-submitted (one at a time)"] == pytest.approx(0.5)
    report = {
        "one_at_a_time": one,
        "all_at_once": many,
        "sustained": sustained_rows(),
        "heldout": heldout_rows(),
        "ratios": found,
    }
    assert "| smc adaptive N |" in table(report)


def test_the_sustained_part_sets_smc_apart_from_its_resampling() -> None:
    rows = sustained_configs(4.0, max_tokens=64)
    assert list(rows) == ["floor: plain n=4", "smc N=4", "smc N=4, kv_block", "smc N=4, one block"]
    assert rows["smc N=4, kv_block"] == rows["smc N=4"] | {"power_resample_at": "kv_block"}
    assert rows["floor: plain n=4"]["n"] == 4
    # One block as long as the answer: the weights are compared once, at the end, so it never
    # resamples; otherwise the same request as SMC at N = 4.
    assert rows["smc N=4, one block"] == rows["smc N=4"] | {"block_size": 64}
    assert "block_size" not in rows["smc N=4"]
    # Every SMC row names its schedule, so that a change of the service's default leaves the rows
    # alone; no other row does (the API refuses it with MH).
    for params in configs(4.0, concurrent=False).values():
        smc = params.get("power_method") == "smc"
        assert (params.get("power_resample_at") in ("block", "kv_block")) == smc, params
    assert rows["smc N=4"]["power_resample_at"] == "block"


def test_the_held_out_part_asks_every_way_to_answer_but_the_floors() -> None:
    routes = heldout_routes(4.0)
    assert set(routes) == {name for name in configs(4.0, concurrent=False) if "floor" not in name}
    assert routes["plain"]["model"] == DEFAULT_MODEL_NAME
    assert routes["smc N=16"]["model"] == f"{DEFAULT_MODEL_NAME}-power"
    assert routes["smc N=16"]["power_particles"] == 16
    assert routes["distilled"]["model"] == f"{DEFAULT_MODEL_NAME}-distilled"
    # A seeded request runs the default N whatever the load: adaptive N is asked unseeded.
    assert routes["smc adaptive N"]["seed"] is None
    assert "seed" not in routes["smc N=4"]


def test_the_readme_table_joins_latency_to_held_out_accuracy() -> None:
    report = {"one_at_a_time": one_at_a_time_rows(), "heldout": heldout_rows()}
    lines = readme_table(report).splitlines()
    by_name = {line.split(" | ")[0].removeprefix("| "): line for line in lines[2:]}
    assert list(by_name) == [*configs(4.0, concurrent=False), *resubmitted(4.0)]
    # A floor has a latency and nothing else; "smc N=4" is the 3rd answering row (10% + 2 x 2%)
    # and the 6th of the one-at-a-time rows (6 s, 6x plain, 6x its tokens).
    assert by_name["floor: plain n=16"].endswith("| | | | |")
    assert "| 6.00 s | 6.00x | 6.0 | -0.500 | 14.0% (5%–20%) | -0.480 |" in by_name["smc N=4"]
    # Re-submitted particles sample the held ones' law: no held-out columns of their own.
    assert by_name["smc N=4, re-submitted"].endswith("| 12.00 s | 12.00x | 6.0 | -0.500 | | |")


def test_the_picture_is_drawn_from_the_report(tmp_path: Path) -> None:
    report = {"one_at_a_time": rows(False), "all_at_once": rows(True)}
    path = plot(report, tmp_path / "bench_particles.png")
    assert png_size(path) == (1320, 576)


def test_a_row_counts_the_engines_prefill_and_the_particles_let_go() -> None:
    """vLLM's counters over a row: prompt tokens less those the prefix cache held, per token the
    engine decoded; and the N each answer started and ended with."""
    answer = {
        "latency_s": 1.0,
        "usage": {"completion_tokens": 10},
        "self_reward": {"mean_logprob": -1.0},
        "power": {"tokens_generated": 40, "particles": 8, "final_particles": 4},
    }
    engine = {
        "vllm:prompt_tokens_total": 300.0,
        "vllm:prompt_tokens_cached_total": 100.0,
        "vllm:generation_tokens_total": 50.0,
    }
    row = row_of([answer, answer], 2.0, 0.0, engine)
    assert row["engine_decoded_tokens_per_s"] == 25.0
    assert row["engine_prefilled_per_decoded_token"] == 4.0
    assert (row["particles_chosen"], row["particles_at_end"]) == ({8: 2}, {4: 2})
    assert "engine_decoded_tokens_per_s" not in row_of([answer], None, 0.0)


def test_spending_adds_what_the_service_spent_over_the_block(
    tiny_service: ServiceProcess, tiny_client: openai.OpenAI
) -> None:
    """A row's wall time, its gateway's CPU and vLLM's counters, read around a real request and
    added to what the row spent before (a sustained row sums its turns)."""
    spent = Spent(seconds=1.0, cpu_s=5.0)
    with spending(tiny_service, spent):
        answer = tiny_client.completions.create(
            model=TINY_MODEL_NAME, prompt="a b", max_tokens=3, n=2, seed=3, extra_body=UNCACHED
        )
    # Added to, not replaced (the gateway's CPU over one tiny request may be under a clock tick).
    assert spent.seconds > 1.0 and spent.cpu_s >= 5.0
    decoded = spent.engine["vllm:generation_tokens_total"]
    assert decoded >= answer.usage.completion_tokens > 0
    assert spent.engine["vllm:prompt_tokens_total"] >= 2 * len(TINY_PROMPT)
