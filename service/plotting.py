"""Figures written straight to a file: the distillation's plots and the load tests' share this.

matplotlib (the ``distill`` extra) is imported only when a figure is made, with the Agg backend, so
that neither the service nor a headless machine needs a display::

    with saved_figure(out / "loss.png", dpi=120, figsize=(6, 3.5)) as (figure, axis):
        axis.plot(losses)
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["saved_figure"]


@contextmanager
def saved_figure(path: Path, *, dpi: int, **subplots: Any) -> Iterator[tuple[Figure, Any]]:
    """``plt.subplots(**subplots)``'s figure and axes; on leaving, the figure is laid out (tight),
    written to ``path`` at ``dpi`` and closed. An error in the block writes nothing."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(**subplots)
    try:
        yield figure, axes
        figure.tight_layout()
        figure.savefig(path, dpi=dpi)
    finally:
        plt.close(figure)
