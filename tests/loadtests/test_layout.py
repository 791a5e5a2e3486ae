"""The benchmark toolkit's shape: one results directory, one percentile helper, one HTTP client, no
import from tests/, and every runnable module behind a make target."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LOADTESTS = ROOT / "loadtests"
MODULES = sorted(LOADTESTS.glob("*.py"))


def tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text())


def imported(path: Path) -> set[str]:
    """Every module a file imports, at the top or inside a function."""
    nodes = list(ast.walk(tree(path)))
    names = {alias.name for node in nodes if isinstance(node, ast.Import) for alias in node.names}
    return names | {node.module for node in nodes if isinstance(node, ast.ImportFrom) and node.module}


def assigned(path: Path) -> set[str]:
    """Names bound at module level."""
    return {
        target.id
        for node in tree(path).body
        if isinstance(node, ast.Assign | ast.AnnAssign)
        for target in (node.targets if isinstance(node, ast.Assign) else [node.target])
        if isinstance(target, ast.Name)
    }


def defined(path: Path) -> set[str]:
    return {node.name for node in ast.walk(tree(path)) if isinstance(node, ast.FunctionDef)}


def runnable(path: Path) -> bool:
    return 'if __name__ == "__main__":' in path.read_text()


def test_loadtests_import_nothing_from_tests() -> None:
    for path in MODULES:
        assert not {m for m in imported(path) if m.split(".")[0] == "tests"}, path.name


def test_one_results_directory_and_one_percentile() -> None:
    assert [p.name for p in MODULES if "RESULTS" in assigned(p)] == ["load_report.py"]
    assert [p.name for p in MODULES if defined(p) & {"percentile", "percentiles"}] == ["load_report.py"]


def test_one_http_client() -> None:
    """httpx for every script; the locustfile runs inside locust, whose HttpUser is requests'."""
    others = {"aiohttp", "openai", "requests", "urllib.request", "http.client"}
    users = {p.name: imported(p) & others for p in MODULES}
    assert {name: found for name, found in users.items() if found} == {"locustfile.py": {"requests"}}


def test_every_runnable_module_has_a_make_target() -> None:
    makefile = (ROOT / "Makefile").read_text()
    run = set(re.findall(r"-m loadtests\.(\w+)", makefile))
    assert {p.stem for p in MODULES if runnable(p)} <= run
    assert re.search(r"^bench-admission:", makefile, re.MULTILINE)


def test_modules_say_what_they_do_and_what_they_export() -> None:
    imported_by_others = {
        m.split(".")[1]
        for p in [*MODULES, *ROOT.joinpath("tests").rglob("*.py")]
        for m in imported(p)
        if m.startswith("loadtests.")
    }
    for path in MODULES:
        if path.name == "__init__.py":
            continue
        assert ast.get_docstring(tree(path)), path.name
        if path.stem in imported_by_others:
            assert "__all__" in assigned(path), path.name
