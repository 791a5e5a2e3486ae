"""The shared prompts stay importable from the load tools' environment, which lacks the service."""

from __future__ import annotations

import ast
from pathlib import Path

from loadtests.prompts import PROMPTS, messages

LOADTESTS = Path(__file__).resolve().parents[2] / "loadtests"


def imported_modules(path: Path) -> set[str]:
    nodes = list(ast.walk(ast.parse(path.read_text())))
    names = {alias.name for node in nodes if isinstance(node, ast.Import) for alias in node.names}
    return names | {node.module for node in nodes if isinstance(node, ast.ImportFrom) and node.module}


def test_prompts_import_nothing() -> None:
    assert imported_modules(LOADTESTS / "prompts.py") == {"__future__"}


def test_the_locustfile_imports_no_service_code() -> None:
    first_party = {
        name
        for name in imported_modules(LOADTESTS / "locustfile.py")
        if name.split(".")[0] in {"service", "tests", "loadtests"}
    }
    assert first_party == {"loadtests.prompts"}
    assert (LOADTESTS / "__init__.py").read_text().strip() == ""  # importing the package costs nothing


def test_prompts_are_short_chat_messages() -> None:
    assert len(set(PROMPTS)) == len(PROMPTS) >= 8  # bench_power's default --prompts
    # A word per token on the tiny model: a prompt leaves room for an answer in its 64-token context.
    assert max(len(prompt.split()) for prompt in PROMPTS) <= 16
    assert messages("hi") == [{"role": "user", "content": "hi"}]
