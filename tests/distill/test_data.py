"""The shipped prompt set: problem families split whole between training and evaluation, answers
that are right, and a file that its generator reproduces."""

from __future__ import annotations

import random
import re
from collections import Counter

from service.distill.data import (
    DEFAULT_PROMPTS,
    FAMILIES,
    HELDOUT_FAMILIES,
    answer_is_correct,
    make_arithmetic_prompts,
    read_prompts,
)


def test_the_shipped_file_is_what_the_generator_makes() -> None:
    assert read_prompts(DEFAULT_PROMPTS) == make_arithmetic_prompts()


def test_no_family_is_both_trained_on_and_evaluated() -> None:
    items = make_arithmetic_prompts()
    train = Counter(item.family for item in items if item.split == "train")
    heldout = Counter(item.family for item in items if item.split == "heldout")
    assert set(heldout) == set(HELDOUT_FAMILIES) and not set(train) & set(heldout)
    assert set(train) | set(heldout) == set(FAMILIES)
    assert sum(train.values()) == 480 and sum(heldout.values()) == 200
    # Every operation is trained on, and evaluated in a phrasing never trained on.
    operations = {FAMILIES[f][0] for f in HELDOUT_FAMILIES}
    assert operations == {FAMILIES[f][0] for f in train} == {op for op, _ in FAMILIES.values()}
    # The prompts' order interleaves families, so that --limit takes some of each.
    assert len({item.family for item in items[:40]}) >= 10


def _arithmetic(question: str, operation: str) -> set[int]:
    """What the question's numbers could give under its family's operation: the answer must be one
    of them."""
    numbers = [int(n) for n in re.findall(r"\d+", question)]
    if len(numbers) == 1:  # "gave half of them away"
        return {numbers[0] // 2}
    a, b, *rest = numbers
    if operation == "add":
        return {a + b}
    if operation == "subtract":
        return {abs(a - b)}
    if operation == "multiply":
        return {a * b}
    if operation == "divide":
        return {a // b}
    (c,) = rest
    return {a + b - c, a - b + c, a * b + c}


def test_every_answer_follows_from_its_question() -> None:
    for family, (operation, make) in FAMILIES.items():
        rng = random.Random(family)
        for _ in range(50):
            question, answer = make(rng)
            assert answer > 0, (family, question)
            assert answer in _arithmetic(question, operation), (family, question, answer)


def test_the_checker_reads_the_last_number() -> None:
    assert answer_is_correct("3 + 4 = 7", "7")
    assert answer_is_correct("The answer is 1,200.", "1200")
    assert not answer_is_correct("7 apples and 3 more", "7")
    assert not answer_is_correct("no number", "7")
