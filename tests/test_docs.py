"""The manual (docs/, mkdocs.yml) and the README, as a reader meets them.

- ``mkdocs build --strict`` succeeds: no broken link or anchor, every page in the nav.
- The configuration page lists every setting of ``service.config.Settings`` (it is generated from
  them by docs/hooks/settings_reference.py, so it cannot fall behind).
- Every example runs against the default model. In README.md and docs/, every ```python block
  runs, and every ```sh / ```bash block that calls curl, unless the line before its fence says why
  not: ``<!-- not run: a job takes minutes -->``. A page's Python blocks run in order in one
  namespace (as a reader types them into one session); each shell block runs in bash with curl
  failing on an HTTP error. Both reach the test's server instead of http://127.0.0.1:8000.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from loadtests.harness import ServiceProcess
from service.config import Settings, environment_names

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
DOCUMENTED_URLS = ("http://127.0.0.1:8000", "http://localhost:8000")
FENCE = re.compile(r"^(```+)\s*([\w+-]*)")
NOT_RUN = re.compile(r"^<!-- not run: (?P<reason>.+?) -->$")
SHELLS = ("sh", "bash", "shell")
# A documented curl fails the block on an HTTP error status, as the example's reader would notice.
SHELL_PRELUDE = (
    'set -euo pipefail\ncurl() { command curl --fail-with-body --silent --show-error "$@"; }\n'
)


@dataclass(frozen=True)
class Example:
    page: Path
    line: int  # of the first line of code, counting from 1
    language: str
    code: str
    not_run: str | None  # the reason, when the page says it does not run

    @property
    def runnable(self) -> bool:
        if self.not_run is not None:
            return False
        return self.language == "python" or (self.language in SHELLS and "curl " in self.code)


def examples(page: Path) -> list[Example]:
    """The fenced code blocks of a page, with the not-run reason written above each."""
    lines = page.read_text().splitlines()
    found: list[Example] = []
    index = 0
    while index < len(lines):
        fence = FENCE.match(lines[index])
        if fence is None:
            index += 1
            continue
        end = next((i for i in range(index + 1, len(lines)) if lines[i].strip() == fence.group(1)), None)
        assert end is not None, f"{page}:{index + 1}: a code block that never closes"
        previous = next((line for line in reversed(lines[:index]) if line.strip()), "")
        marker = NOT_RUN.match(previous.strip())
        code = "\n".join(lines[index + 1 : end]) + "\n"
        found.append(
            Example(page, index + 2, fence.group(2), code, marker.group("reason") if marker else None)
        )
        index = end + 1
    return found


def page_id(page: Path) -> str:
    return page.relative_to(ROOT).as_posix()


def pointed_at(code: str, service: ServiceProcess) -> str:
    for url in DOCUMENTED_URLS:
        code = code.replace(url, service.url)
    return code


RUNNABLE_PAGES = [page for page in PAGES if any(e.runnable for e in examples(page))]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("site")
    build = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stdout + build.stderr
    return out


def test_the_manual_builds_strictly(site: Path) -> None:
    assert (site / "index.html").is_file()
    assert (site / "loadtests" / "results" / "soak.png").is_file()  # figures served from their place


def test_the_configuration_page_lists_every_setting(site: Path) -> None:
    page = (site / "operations" / "configuration" / "index.html").read_text()
    assert "settings-reference" not in page, "a placeholder was left unrendered"
    missing = [
        env for name in Settings.model_fields for env in environment_names(name) if env not in page
    ]
    assert not missing


def test_every_not_run_marker_stands_above_an_example() -> None:
    """A marker with nothing under it, or without a reason, is a typo that hides nothing."""
    for page in PAGES:
        text = page.read_text()
        markers = re.findall(r"^<!-- not run:.*-->$", text, re.MULTILINE)
        marked = [e for e in examples(page) if e.not_run is not None]
        assert len(markers) == len(marked), f"{page_id(page)}: a not-run marker not above a fence"
        assert all(e.not_run.strip() for e in marked)


def test_the_readme_examples_all_run() -> None:
    """The Quick start is what a newcomer copies first: none of it may opt out."""
    readme = examples(ROOT / "README.md")
    assert not [e for e in readme if e.not_run is not None]
    assert {"python", "sh"} <= {e.language for e in readme if e.runnable}


@pytest.mark.parametrize("page", RUNNABLE_PAGES, ids=page_id)
def test_the_examples_run(page: Path, default_service: ServiceProcess) -> None:
    namespace: dict[str, object] = {"__name__": "__docs__"}
    for example in examples(page):
        if not example.runnable:
            continue
        code = pointed_at(example.code, default_service)
        if example.language == "python":
            # Blank lines first, so a traceback names the line of the page.
            source = "\n" * (example.line - 1) + code
            exec(compile(source, str(example.page), "exec"), namespace)
        else:
            shell = subprocess.run(
                ["bash", "-c", SHELL_PRELUDE + code], capture_output=True, text=True, timeout=120
            )
            where = f"{page_id(page)}:{example.line}"
            assert shell.returncode == 0, f"{where}\n{shell.stdout}\n{shell.stderr}"
