"""MkDocs hook: the figures the benchmarks and the distillation write, served from where they are.

They live beside their results (``loadtests/results/*.png``, the shipped adapter's ``eval.png`` and
``loss.png``), not in docs/; this hook adds them to the site under their repository path, so a page
embeds ``loadtests/results/soak.png`` by that path (relative to the page, as any link) and
``mkdocs build --strict`` checks the link like any other. Nothing is copied into docs/.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

FIGURES = ("loadtests/results/*.png", "service/distill/adapters/*/*.png")


def on_files(files: Files, config: Any) -> Files:
    root = Path(config["config_file_path"]).parent
    for pattern in FIGURES:
        for path in sorted(root.glob(pattern)):
            src_uri = path.relative_to(root).as_posix()
            files.append(File.generated(config, src_uri, abs_src_path=str(path)))
    return files
