"""The load tests' summaries: locust samples and guidellm reports reduced to the common format."""

from __future__ import annotations

import json
import math
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from loadtests.guidellm_sweep import overhead, strategy_label
from loadtests.guidellm_sweep import summarise as summarise_guidellm
from loadtests.harness import ServiceProcess
from loadtests.load_report import (
    RESULTS,
    RouteSummary,
    measure_table,
    output_path,
    percentile,
    percentiles,
    replot,
    write_report,
)
from loadtests.run_load import sampled_memory, timeline
from loadtests.run_load import summarise as summarise_locust


def sample(kind: str, start: float, latency: float, **fields: Any) -> dict[str, Any]:
    record = {
        "kind": kind,
        "route": {"power": "m-power", "cached": "m-power"}.get(kind, "m"),
        "start": start,
        "latency_s": latency,
        "ok": True,
        "status": 200,
        "error": None,
        "ttft_s": None,
        "chunk_gaps_s": [],
        "completion_tokens": 4,
        "generated_tokens": 4,
        "cache": "bypass",
    }
    return record | fields


def test_locust_samples_summarised_per_kind_over_the_run_window() -> None:
    samples = [
        sample("plain", 0.0, 1.0),
        sample("plain", 1.0, 3.0),
        sample("plain", 2.0, 0.5, ok=False, status=500, completion_tokens=0, generated_tokens=0),
        sample("power", 0.0, 10.0, generated_tokens=120),
        sample("cached", 3.0, 1.0, generated_tokens=60, cache="miss"),
        sample("cached", 5.0, 0.1, generated_tokens=60, cache="hit"),
        sample("stream", 4.0, 2.0, ttft_s=0.5, chunk_gaps_s=[0.1, 0.3]),
    ]
    window, routes = summarise_locust(samples)
    assert window == 10.0  # first sent at 0, last answered at 10
    plain = routes["plain (m)"]
    assert (plain.requests, plain.errors) == (2, 1)
    assert plain.latency_s == {"p50": 2.0, "p95": pytest.approx(2.9), "p99": pytest.approx(2.98)}
    assert plain.requests_per_s == 0.2
    assert routes["power (m-power)"].generated_tokens_per_s == 12.0  # power.tokens_generated
    assert routes["power (m-power)"].completion_tokens_per_s == 0.4
    cached = routes["cached (m-power)"]
    assert cached.cache_hits == 1
    assert cached.generated_tokens_per_s == 6.0  # the hit made the engine generate nothing
    stream = routes["stream (m)"]
    assert stream.ttft_s == {"p50": 0.5, "p95": 0.5}
    assert stream.itl_s == {"p50": pytest.approx(0.2), "p95": pytest.approx(0.29)}
    assert plain.ttft_s is None and plain.itl_s is None


def guidellm_benchmark(strategy: dict[str, Any], latency_p50: float, rps: float) -> dict[str, Any]:
    def stats(p50: float, count: int = 10) -> dict[str, Any]:
        ranks = {"p50": p50, "p95": 2 * p50, "p99": 3 * p50}
        return {"successful": {"count": count, "mean": p50, "percentiles": ranks}}

    return {
        "config": {"strategy": strategy},
        "metrics": {
            "request_totals": {"successful": 10, "errored": 1, "incomplete": 0, "total": 11},
            "request_latency": stats(latency_p50),
            "time_to_first_token_ms": stats(20.0),
            "inter_token_latency_ms": stats(0.0, count=0),
            "requests_per_second": {"successful": {"mean": rps}},
            "output_tokens_per_second": {"successful": {"mean": 16 * rps}},
        },
    }


def test_guidellm_reports_side_by_side_with_the_gateway_overhead() -> None:
    sync, rate = {"type_": "synchronous"}, {"type_": "constant", "rate": 2.5}
    reports = {
        "worker": {
            "benchmarks": [guidellm_benchmark(sync, 0.1, 8.0), guidellm_benchmark(rate, 0.2, 2.5)]
        },
        "gateway": {"benchmarks": [guidellm_benchmark(sync, 0.15, 6.0)]},
    }
    routes = summarise_guidellm(reports)
    assert list(routes) == ["synchronous worker", "synchronous gateway", "constant@2.50/s worker"]
    gateway = routes["synchronous gateway"]
    assert (gateway.requests, gateway.errors) == (10, 1)
    assert gateway.ttft_s == {"p50": 0.02, "p95": 0.04}  # milliseconds become seconds
    assert gateway.itl_s is None  # no samples
    assert gateway.generated_tokens_per_s == 96.0
    added = overhead(routes)
    assert list(added) == ["synchronous"]  # the only strategy run on both
    assert added["synchronous"]["added_latency_p50_s"] == pytest.approx(0.05)
    assert added["synchronous"]["added_ttft_p50_s"] == 0.0
    assert added["synchronous"]["requests_per_s_ratio"] == 0.75
    assert strategy_label({"type_": "concurrent", "streams": 4}) == "concurrent@4"


def test_report_written_as_json_and_png(tmp_path: Path) -> None:
    summary = RouteSummary(
        requests=3,
        errors=1,
        latency_s=percentiles([0.1, 0.2, 0.3], 50, 95, 99),
        ttft_s=None,
        itl_s=None,
        requests_per_s=0.3,
        generated_tokens_per_s=9.0,
        completion_tokens_per_s=3.0,
    )
    out = tmp_path / "results" / "run.v1"
    path = write_report(out, {"tool": "test", "title": "t"}, {"plain (m)": summary})
    assert path == output_path(out, ".json") == tmp_path / "results" / "run.v1.json"
    assert json.loads(path.read_text())["routes"]["plain (m)"]["latency_s"]["p50"] == 0.2
    assert output_path(out, ".png").read_bytes().startswith(b"\x89PNG")
    assert percentiles([], 50) is None


def test_a_soaks_timeline_windows_latency_and_carries_memory(tmp_path: Path) -> None:
    """Latency percentiles per kind and window (by when a request ended), memory on the same clock;
    written beside the routes' figure as <out>.time.png, and drawn again by replot."""
    samples = [sample("plain", 1000.0 + i, 0.5) for i in range(20)]  # ends at 0.5, 1.5, ... 19.5
    samples += [sample("power", 1000.0, 12.0), sample("power", 1000.0, 1.0, ok=False)]
    memory = [{"time": 1000.0 + t, "gateway_mib": 300.0 + t, "engine_mib": 900.0} for t in (0, 10)]
    result = timeline(samples, memory, window_s=10.0)
    plain = result["latency"]["plain"]
    assert [(w["t_s"], w["requests"]) for w in plain] == [(5.0, 10), (15.0, 10)]
    assert plain[0]["p50"] == plain[0]["p95"] == 0.5
    assert result["latency"]["power"] == [{"t_s": 15.0, "requests": 1, "p50": 12.0, "p95": 12.0}]
    assert [p["t_s"] for p in result["memory"]] == [0.0, 10.0]
    summary = summarise_locust(samples)[1]
    out = tmp_path / "soak"
    path = write_report(out, {"tool": "locust", "title": "t", "timeline": result}, summary)
    time_png = output_path(out, ".time.png")
    assert time_png.read_bytes().startswith(b"\x89PNG")
    time_png.unlink()
    replot(path)
    assert time_png.exists()


def test_memory_is_sampled_from_the_gateway_and_its_engine_core(tiny_service: ServiceProcess) -> None:
    with sampled_memory(tiny_service, every_s=0.05) as points:
        while len(points) < 3:
            time.sleep(0.05)
    assert len(points) >= 3
    assert all(p["gateway_mib"] > 50 and p["engine_mib"] > 50 for p in points)
    assert [p["time"] for p in points] == sorted(p["time"] for p in points)


def old_nearest_rank(values: list[float], q: float) -> float:
    """The nearest-rank percentile bench_admission, bench_batch and bench_serving each defined."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def test_nearest_percentile_is_the_benchmarks_former_definition() -> None:
    rng = random.Random(0)
    for n in [1, 2, 3, 4, 5, 10, 11, 12, 50, 99, 100, 101, 1000]:
        values = [rng.expovariate(1.0) for _ in range(n)]
        for rank, q in ((50, 0.5), (90, 0.9), (99, 0.99)):
            assert percentile(values, rank, method="nearest") == old_nearest_rank(values, q)
    # A sample itself; halfway indexes go to the even one: 1.5 to 2, 2.5 to 2.
    assert percentile([4.0, 1.0, 3.0, 2.0], 50, method="nearest") == 3.0
    assert percentile([6.0, 5.0, 4.0, 3.0, 2.0, 1.0], 50, method="nearest") == 3.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5  # linear: between the two


def test_linear_percentiles_are_numpys() -> None:
    values = [0.3, 0.1, 0.7, 0.2, 0.9]
    assert percentile(values, 95) == pytest.approx(float(np.percentile(values, 95)))
    assert percentiles(values, 50, 99) == {
        "p50": pytest.approx(0.3),
        "p99": pytest.approx(float(np.percentile(values, 99))),
    }


def test_no_values_give_nan_or_none() -> None:
    assert math.isnan(percentile([], 50))
    assert math.isnan(percentile([], 99, method="nearest"))  # bench_admission's refusals, none refused
    assert percentiles([], 50, 95) is None


def test_measure_table_and_results_directory() -> None:
    assert measure_table([("decode", "12.8 tokens/s"), ("hit p50", "2 ms")]) == (
        "| measure | result |\n|---|---|\n| decode | 12.8 tokens/s |\n| hit p50 | 2 ms |"
    )
    assert Path(__file__).resolve().parents[2] / "loadtests" / "results" == RESULTS
