"""Prompts for power self-distillation, and the task checker of the evaluation.

The shipped set (data/arithmetic.jsonl, made by ``make_arithmetic_prompts``) is short arithmetic word
problems, each with its answer, split into ``train`` (teacher prompts) and ``heldout`` (evaluation
only). Any JSONL file of ``{"id", "split", "messages" | "prompt", "answer"?}`` lines works instead.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "DEFAULT_PROMPTS",
    "PromptItem",
    "answer_is_correct",
    "append_jsonl",
    "make_arithmetic_prompts",
    "read_jsonl",
    "read_prompts",
    "write_prompts",
]

DEFAULT_PROMPTS = Path(__file__).parent / "data" / "arithmetic.jsonl"


@dataclass(frozen=True)
class PromptItem:
    id: str
    split: str
    messages: list[dict[str, str]] | None = None  # chat prompts
    prompt: str | list[int] | None = None  # completion prompts: text or token ids
    answer: str | None = None  # the reference answer, when the task has a checker

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


def read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    with open(path) as lines:
        for line in lines:
            if line.strip():
                yield json.loads(line)


def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    """Append one record and flush it, so an interrupted run loses at most the line being written."""
    with open(path, "a") as out:
        out.write(json.dumps(record) + "\n")
        out.flush()


def read_prompts(path: Path, split: str | None = None, limit: int | None = None) -> list[PromptItem]:
    items = [PromptItem(**record) for record in read_jsonl(path)]
    if split is not None:
        items = [item for item in items if item.split == split]
    return items[:limit] if limit is not None else items


_NAMES = ["Tom", "Sara", "Ali", "Mia", "Ben", "Lena", "Omar", "Ivy", "Sam", "Nora", "Leo", "Zoe"]
_THINGS = ["apples", "marbles", "books", "stickers", "pencils", "cookies", "stamps", "shells"]


def _problem(rng: random.Random) -> tuple[str, int]:
    name, other = rng.sample(_NAMES, 2)
    things = rng.choice(_THINGS)
    kind = rng.choice(["add", "subtract", "multiply", "divide", "two-step"])
    a, b = rng.randint(2, 20), rng.randint(2, 12)
    if kind == "add":
        question = f"{name} has {a} {things} and {other} gives {name} {b} more."
        return f"{question} How many {things} does {name} have now?", a + b
    if kind == "subtract":
        question = f"{name} had {a + b} {things} and gave {b} of them to {other}."
        return f"{question} How many {things} does {name} have left?", a
    if kind == "multiply":
        question = f"There are {b} boxes with {a} {things} in each box."
        return f"{question} How many {things} are there in all?", a * b
    if kind == "divide":
        question = f"{name} shares {a * b} {things} equally among {b} friends."
        return f"{question} How many {things} does each friend get?", a
    c = rng.randint(1, a)
    question = f"{name} has {a} {things}, buys {b} more and then loses {c}."
    return f"{question} How many {things} does {name} have now?", a + b - c


def make_arithmetic_prompts(count: int = 320, heldout: int = 64, seed: int = 0) -> list[PromptItem]:
    """Arithmetic word problems with their answers; the last ``heldout`` are the held-out split."""
    rng = random.Random(seed)
    items = []
    for i in range(count):
        question, answer = _problem(rng)
        items.append(
            PromptItem(
                id=f"arith-{i:04d}",
                split="heldout" if i >= count - heldout else "train",
                messages=[{"role": "user", "content": f"{question} Answer with the number."}],
                answer=str(answer),
            )
        )
    return items


_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def answer_is_correct(completion: str, answer: str) -> bool:
    """The checker: the last number in the completion equals the reference answer (models often
    restate the question's numbers before the result)."""
    found = _NUMBER.findall(completion.replace(",", ""))
    return bool(found) and float(found[-1]) == float(answer)


def write_prompts(path: Path, items: Iterable[PromptItem]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(item.to_json()) + "\n" for item in items))
