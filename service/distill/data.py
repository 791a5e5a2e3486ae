"""Prompts for power self-distillation, and the task checker of the evaluation.

The shipped set (data/arithmetic.jsonl, made by ``make_arithmetic_prompts``) is short arithmetic word
problems of 20 families (templates), each with its answer, split by family into ``train`` (teacher
prompts, 15 families, 480 prompts) and ``heldout`` (evaluation only: 5 families never trained on,
one per operation, 200 prompts). Any JSONL file of ``{"id", "split", "messages" | "prompt",
"answer"?, "family"?}`` lines works instead.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "DEFAULT_PROMPTS",
    "FAMILIES",
    "HELDOUT_FAMILIES",
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
    family: str | None = None  # the template it was made from (the split is by family)

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
_ITEMS = [("notebook", "notebooks"), ("ticket", "tickets"), ("pen", "pens"), ("cake", "cakes")]
_INSTRUCTIONS = ["Answer with the number.", "Give only the final number.", "Reply with just the number."]

Problem = tuple[str, int]  # the question and its answer


# Problem families: one template of phrasing each, grouped by the operation it asks for. The split is
# by family, so that the evaluation asks questions phrased in ways training never showed (an
# evaluation on held-out prompts of the trained templates measures memorised templates instead).
def _gift(r: random.Random) -> Problem:
    name, other, things, a, b = (
        *r.sample(_NAMES, 2),
        r.choice(_THINGS),
        r.randint(2, 20),
        r.randint(2, 12),
    )
    return (
        f"{name} has {a} {things} and {other} gives {name} {b} more. "
        f"How many {things} does {name} have now?",
        a + b,
    )


def _age_older(r: random.Random) -> Problem:
    name, other, a, b = *r.sample(_NAMES, 2), r.randint(5, 40), r.randint(2, 15)
    return f"{name} is {a} years old. {other} is {b} years older than {name}. How old is {other}?", a + b


def _temperature_rise(r: random.Random) -> Problem:
    a, b = r.randint(2, 25), r.randint(2, 15)
    return (
        f"In the morning it was {a} degrees. By noon it was {b} degrees warmer. "
        f"How warm was it at noon?",
        a + b,
    )


def _two_shelves(r: random.Random) -> Problem:
    a, b = r.randint(5, 40), r.randint(5, 40)
    return (
        f"One shelf holds {a} books and another holds {b} books. How many books are on the two shelves?",
        a + b,
    )


def _give_away(r: random.Random) -> Problem:
    name, other, things, a, b = (
        *r.sample(_NAMES, 2),
        r.choice(_THINGS),
        r.randint(2, 20),
        r.randint(2, 12),
    )
    return (
        f"{name} had {a + b} {things} and gave {b} of them to {other}. "
        f"How many {things} does {name} have left?",
        a,
    )


def _change(r: random.Random) -> Problem:
    name, price, bill = r.choice(_NAMES), r.randint(1, 19), r.choice([20, 50])
    return (
        f"{name} buys a toy for {price} dollars and pays with a {bill}-dollar bill. "
        f"How much change does {name} get?",
        bill - price,
    )


def _compare(r: random.Random) -> Problem:
    name, other, things, a, b = (
        *r.sample(_NAMES, 2),
        r.choice(_THINGS),
        r.randint(10, 40),
        r.randint(2, 9),
    )
    return (
        f"{name} has {a} {things} and {other} has {a - b}. "
        f"How many more {things} does {name} have than {other}?",
        b,
    )


def _pages_left(r: random.Random) -> Problem:
    name, total, read = r.choice(_NAMES), r.randint(30, 90), r.randint(5, 25)
    return (
        f"A book has {total} pages. {name} has read {read} pages. How many pages are left to read?",
        total - read,
    )


def _boxes(r: random.Random) -> Problem:
    things, a, b = r.choice(_THINGS), r.randint(2, 20), r.randint(2, 12)
    return (
        f"There are {b} boxes with {a} {things} in each box. How many {things} are there in all?",
        a * b,
    )


def _price(r: random.Random) -> Problem:
    (one, many), a, b = r.choice(_ITEMS), r.randint(2, 12), r.randint(2, 9)
    return f"One {one} costs {a} dollars. How much do {b} {many} cost?", a * b


def _seats(r: random.Random) -> Problem:
    a, b = r.randint(3, 15), r.randint(4, 12)
    return (
        f"A hall has {a} rows of chairs with {b} chairs in each row. How many chairs are in the hall?",
        a * b,
    )


def _weekly_savings(r: random.Random) -> Problem:
    name, a, b = r.choice(_NAMES), r.randint(2, 15), r.randint(2, 10)
    return (
        f"{name} saves {a} dollars every week. How many dollars has {name} saved after {b} weeks?",
        a * b,
    )


def _share(r: random.Random) -> Problem:
    name, things, a, b = r.choice(_NAMES), r.choice(_THINGS), r.randint(2, 20), r.randint(2, 12)
    return (
        f"{name} shares {a * b} {things} equally among {b} friends. "
        f"How many {things} does each friend get?",
        a,
    )


def _teams(r: random.Random) -> Problem:
    a, b = r.randint(2, 12), r.randint(2, 8)
    return f"{a * b} children are split into teams of {b}. How many teams are there?", a


def _bags(r: random.Random) -> Problem:
    things, a, b = r.choice(_THINGS), r.randint(2, 12), r.randint(2, 9)
    return f"{a * b} {things} are packed {b} to a bag. How many bags are filled?", a


def _half(r: random.Random) -> Problem:
    name, things, a = r.choice(_NAMES), r.choice(_THINGS), r.randint(3, 30)
    return (
        f"{name} had {2 * a} {things} and gave half of them away. "
        f"How many {things} does {name} have now?",
        a,
    )


def _buy_lose(r: random.Random) -> Problem:
    name, things, a, b = r.choice(_NAMES), r.choice(_THINGS), r.randint(2, 20), r.randint(2, 12)
    c = r.randint(1, a)
    return (
        f"{name} has {a} {things}, buys {b} more and then loses {c}. "
        f"How many {things} does {name} have now?",
        a + b - c,
    )


def _bus(r: random.Random) -> Problem:
    a, b, c = r.randint(10, 40), r.randint(1, 9), r.randint(1, 9)
    return (
        f"A bus has {a} people on it. At the stop {b} people get off and {c} get on. "
        f"How many people are on the bus now?",
        a - b + c,
    )


def _bakery(r: random.Random) -> Problem:
    a, b, c = r.randint(20, 60), r.randint(5, 19), r.randint(5, 20)
    return (
        f"A baker makes {a} muffins, sells {b} of them and then bakes {c} more. "
        f"How many muffins does the baker have?",
        a - b + c,
    )


def _packs_plus(r: random.Random) -> Problem:
    name, a, b, c = r.choice(_NAMES), r.randint(2, 6), r.randint(3, 10), r.randint(1, 9)
    return (
        f"{name} buys {a} packs of {b} cards and finds {c} more cards. How many cards does {name} have?",
        a * b + c,
    )


FAMILIES: dict[str, tuple[str, Callable[[random.Random], Problem]]] = {
    "gift": ("add", _gift),
    "age-older": ("add", _age_older),
    "temperature-rise": ("add", _temperature_rise),
    "two-shelves": ("add", _two_shelves),
    "give-away": ("subtract", _give_away),
    "change": ("subtract", _change),
    "compare": ("subtract", _compare),
    "pages-left": ("subtract", _pages_left),
    "boxes": ("multiply", _boxes),
    "price": ("multiply", _price),
    "seats": ("multiply", _seats),
    "weekly-savings": ("multiply", _weekly_savings),
    "share": ("divide", _share),
    "teams": ("divide", _teams),
    "bags": ("divide", _bags),
    "half": ("divide", _half),
    "buy-lose": ("two-step", _buy_lose),
    "bus": ("two-step", _bus),
    "bakery": ("two-step", _bakery),
    "packs-plus": ("two-step", _packs_plus),
}
# One family of each operation is never trained on: the evaluation's "heldout" split.
HELDOUT_FAMILIES = ("age-older", "change", "seats", "teams", "bus")


def make_arithmetic_prompts(
    train_per_family: int = 32, heldout_per_family: int = 40, seed: int = 0
) -> list[PromptItem]:
    """Arithmetic word problems with their answers: ``train_per_family`` of each training family,
    then ``heldout_per_family`` of each family in ``HELDOUT_FAMILIES`` (split "heldout"). Each
    family draws from a random stream of its own, so that changing one family's count leaves the
    others' prompts (and teacher answers already made for them) as they were."""
    items = []
    for family, (_, make) in FAMILIES.items():
        rng = random.Random(f"{seed}:{family}")
        heldout = family in HELDOUT_FAMILIES
        for i in range(heldout_per_family if heldout else train_per_family):
            question, answer = make(rng)
            items.append(
                PromptItem(
                    id=f"{family}-{i:03d}",
                    split="heldout" if heldout else "train",
                    family=family,
                    messages=[{"role": "user", "content": f"{question} {rng.choice(_INSTRUCTIONS)}"}],
                    answer=str(answer),
                )
            )
    # Interleave the families, so that --limit takes some of each.
    random.Random(seed).shuffle(items)
    return sorted(items, key=lambda item: item.split != "train")


_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def answer_is_correct(completion: str, answer: str) -> bool:
    """The checker: the last number in the completion equals the reference answer (models often
    restate the question's numbers before the result)."""
    found = _NUMBER.findall(completion.replace(",", ""))
    return bool(found) and float(found[-1]) == float(answer)


def write_prompts(path: Path, items: Iterable[PromptItem]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(item.to_json()) + "\n" for item in items))
