"""saved_figure: a figure written to its file at its size, and closed whatever happens; the load
reports' figure, redrawn from its JSON."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from service.plotting import saved_figure

plt = pytest.importorskip("matplotlib.pyplot")


def png_size(path: Path) -> tuple[int, int]:
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", header[16:24])
    return width, height


def test_the_figure_is_written_at_its_size_and_closed(tmp_path: Path) -> None:
    path = tmp_path / "plot.png"
    with saved_figure(path, dpi=50, figsize=(4, 2)) as (figure, axis):
        axis.plot([1, 2, 3])
        assert not path.exists()  # written on leaving
    assert png_size(path) == (200, 100)
    assert figure.number not in plt.get_fignums()


def test_subplot_grids(tmp_path: Path) -> None:
    with saved_figure(tmp_path / "grid.png", dpi=20, nrows=2, ncols=3, figsize=(6, 4)) as (_, axes):
        assert axes.shape == (2, 3)
    assert png_size(tmp_path / "grid.png") == (120, 80)


def test_an_error_writes_nothing_and_still_closes(tmp_path: Path) -> None:
    path = tmp_path / "plot.png"
    with pytest.raises(ValueError), saved_figure(path, dpi=50) as (figure, _):
        raise ValueError("bad data")
    assert not path.exists()
    assert figure.number not in plt.get_fignums()


def test_load_reports_label_routes_by_kind_and_redraw_from_their_json(tmp_path: Path) -> None:
    from loadtests.load_report import RouteSummary, replot, route_labels, write_report

    names = ["cached (m-power)", "plain (m)", "distilled (m-distilled)"]
    assert route_labels(names) == (
        ["cached\npower route", "plain\nplain route", "distilled\ndistilled route"],
        "m",
    )
    assert route_labels(["rate 2", "rate 4"]) == (["rate 2", "rate 4"], "")
    summary = RouteSummary(
        requests=3,
        errors=1,
        latency_s={"p50": 1.0, "p95": 2.0, "p99": 3.0},
        ttft_s=None,
        itl_s=None,
        requests_per_s=0.5,
        generated_tokens_per_s=4.0,
        completion_tokens_per_s=2.0,
        cache_hits=0,
    )
    report = write_report(tmp_path / "load", {"title": "t"}, dict.fromkeys(names, summary))
    png = report.with_suffix(".png")
    png.unlink()
    assert replot(report) == png and png_size(png) == (1100, 850)  # 11 x 8.5 in at 100 dpi
