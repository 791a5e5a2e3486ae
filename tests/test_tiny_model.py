"""The tiny model stays a model on which power sampling and low-temperature sampling differ a lot:
the exactness tests (tests/power/test_exactness.py) can only tell them apart if it does."""

from __future__ import annotations

from pathlib import Path

import pytest

from loadtests.stats import total_variation
from loadtests.tiny_model import ExactModel, answers
from tests.conftest import TINY_PROMPT

ALPHA = 4.0
HORIZON = 3


@pytest.fixture(scope="module")
def exact(tiny_model_dir: Path) -> ExactModel:
    return ExactModel(tiny_model_dir, TINY_PROMPT)


def test_the_laws_cover_every_answer(exact: ExactModel) -> None:
    power = exact.power_distribution(HORIZON, ALPHA)
    for law in (power, exact.tempered_distribution(HORIZON, 1 / ALPHA)):
        assert set(law) == set(answers(HORIZON))
        assert sum(law.values()) == pytest.approx(1.0)


def test_p_to_the_alpha_and_temperature_one_over_alpha_differ(exact: ExactModel) -> None:
    power = exact.power_distribution(HORIZON, ALPHA)
    tempered = exact.tempered_distribution(HORIZON, 1 / ALPHA)
    assert total_variation(power, tempered) > 0.4  # 0.46 with the conftest's seed and weight scale
