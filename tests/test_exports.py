"""Every module under service/ says what it exports (``__all__``), and says it exactly.

Like httpx's tests/test_exported_members.py, for every module: each name in ``__all__`` exists, and
each public class or function the module defines itself is in ``__all__``. An HTTP endpoint is
exported by the router it is registered on (service/api/routes/*.py export ``router``).

Importing every module must stay cheap: vLLM is imported only inside functions of service/engines,
peft and matplotlib (the distill extra) only inside the functions that train and plot.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
from fastapi import APIRouter
from fastapi.routing import APIRoute

import service


def _module_names() -> list[str]:
    walked = pkgutil.walk_packages(service.__path__, prefix="service.")
    return ["service", *sorted(info.name for info in walked)]


MODULES = _module_names()


def _defined_here(module: ModuleType) -> set[str]:
    """Public classes and functions the module defines (not those it imports)."""
    return {
        name
        for name, obj in vars(module).items()
        if not name.startswith("_")
        and (inspect.isclass(obj) or inspect.isfunction(obj))
        and obj.__module__ == module.__name__
    }


def _endpoints(module: ModuleType) -> set[str]:
    """Names of the functions registered as routes on the module's routers."""
    return {
        route.endpoint.__name__
        for router in vars(module).values()
        if isinstance(router, APIRouter)
        for route in router.routes
        if isinstance(route, APIRoute)
    }


def test_walk_finds_the_packages() -> None:
    for name in ("service.api.routes.chat", "service.engines.remote.pool", "service.pipeline.resolve"):
        assert name in MODULES


@pytest.mark.parametrize("name", MODULES)
def test_module_declares_its_exports(name: str) -> None:
    module = importlib.import_module(name)
    assert hasattr(module, "__all__"), f"{name} has no __all__"
    exported = list(module.__all__)
    assert len(set(exported)) == len(exported), f"{name}.__all__ repeats a name"
    absent = [n for n in exported if not hasattr(module, n)]
    assert not absent, f"{name}.__all__ names what it does not have: {absent}"
    missing = _defined_here(module) - set(exported) - _endpoints(module)
    assert not missing, f"{name} defines public {sorted(missing)} but leaves them out of __all__"


def test_importing_every_module_loads_no_engine_or_extra() -> None:
    """In a fresh interpreter: this one may have imported vLLM for other tests."""
    script = (
        "import importlib, sys\n"
        f"for name in {MODULES!r}:\n"
        "    importlib.import_module(name)\n"
        "print(sorted(m for m in ('vllm', 'peft', 'matplotlib') if m in sys.modules))\n"
    )
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=root, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
