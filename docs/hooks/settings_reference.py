"""MkDocs hook: the configuration reference, rendered from ``service.config.Settings``.

A page asks for it with a placeholder line:

    <!-- settings-reference -->                every group, in the order of `powerserve serve --help`
    <!-- settings-reference: JobsSettings -->  one group

Each group becomes a heading (its class name) with its docstring, then a table of its settings: the
environment variables (``environment_names``), the flag of ``powerserve serve`` (read from the
command's own parser, ``cli_settings_source``), the default and the description. The page cannot
rot: a new setting appears as soon as it is a field of a group (tests/test_docs.py checks it).
"""

from __future__ import annotations

import inspect
import re
from argparse import ArgumentParser, _SubParsersAction
from pathlib import Path
from typing import Any

from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined
from pydantic_settings import BaseSettings

from service.cli import cli_settings_source
from service.config import SETTINGS_GROUPS, environment_names

PLACEHOLDER = re.compile(r"^<!-- settings-reference(?::\s*(\w+))? -->$", re.MULTILINE)


def serve_flags() -> dict[str, str]:
    """Each setting's flag on ``powerserve serve``, by setting name (``max_model_len``)."""
    root: ArgumentParser = cli_settings_source().root_parser
    commands = next(a for a in root._actions if isinstance(a, _SubParsersAction))
    serve = commands.choices["serve"]
    return {
        action.dest.rpartition(".")[2]: action.option_strings[0]
        for action in serve._actions
        if action.option_strings and action.dest.startswith("serve.")
    }


def format_default(field: FieldInfo) -> str:
    value: Any = field.default
    if value is PydanticUndefined or value is None:
        return "unset"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, Path):
        value = str(value).replace(str(Path.home()), "~", 1)  # not the build machine's home
    return f"`{value}`"


def table_cell(text: str) -> str:
    """Markdown-safe text for a table cell: no raw HTML (``<model>``), no column breaks."""
    text = " ".join(text.split()).replace("``", "`")
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("|", "\\|")


def group_section(group: type[BaseSettings], flags: dict[str, str], heading: str) -> str:
    doc = " ".join((inspect.getdoc(group) or "").split()).replace("``", "`")
    rows = [
        "| environment | flag | default | meaning |",
        "|---|---|---|---|",
    ]
    for name, field in group.model_fields.items():
        environment = ", ".join(f"`{env}`" for env in environment_names(name))
        flag = f"`{flags[name]}`" if name in flags else "–"
        meaning = table_cell(field.description or "")
        rows.append(f"| {environment} | {flag} | {format_default(field)} | {meaning} |")
    return "\n".join([f"{heading} {group.__name__}", "", doc, "", *rows, ""])


def settings_reference(group_name: str | None = None) -> str:
    """Every group under its own heading, or one group (a section of another page) a level lower."""
    groups = [g for g in SETTINGS_GROUPS if group_name in (None, g.__name__)]
    if not groups:
        raise ValueError(f"no settings group {group_name!r}")
    flags = serve_flags()
    heading = "##" if group_name is None else "###"
    return "\n".join(group_section(group, flags, heading) for group in groups)


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    return PLACEHOLDER.sub(lambda match: settings_reference(match.group(1)), markdown)
