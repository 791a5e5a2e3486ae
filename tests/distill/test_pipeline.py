"""The whole self-distillation pipeline, end to end on the tiny model, through its commands:
teacher answers from the power route, LoRA fine-tuning, and the evaluation that serves the adapter
through vLLM beside the base and power routes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from service.distill.data import read_jsonl
from tests.conftest import TINY_PROMPT, tiny_engine_args

# The teacher is MH here (SMC is the default), so that the proposals per answer are exact.
POWER = [
    "--alpha", "4", "--answer-tokens", "3", "--block-size", "1", "--power-method", "mh",
    "--mcmc-steps", "20",
]  # fmt: skip


def distill(*args: str, cwd: Path) -> None:
    command = [sys.executable, "-m", "service", "distill", *args]
    completed = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    work = tmp_path_factory.mktemp("distill")
    prompts = work / "prompts.jsonl"
    with open(prompts, "w") as out:
        for i in range(56):
            split = "train" if i < 24 else "heldout"
            out.write(json.dumps({"id": f"p{i}", "split": split, "prompt": list(TINY_PROMPT)}) + "\n")
    engine = tiny_engine_args(tiny_model_dir)
    teacher, adapter, report = work / "teacher.jsonl", work / "adapter", work / "eval"
    generate = ["generate", *engine, *POWER, "--prompts", str(prompts), "--teacher", str(teacher)]
    distill(*generate, "--answers-per-prompt", "2", cwd=work)
    # Resumable: a second run finds every prompt answered and adds nothing.
    distill(*generate, "--answers-per-prompt", "2", cwd=work)
    distill(
        "train", "--model", str(tiny_model_dir), "--teacher", str(teacher), "--adapter", str(adapter),
        "--max-steps", "40", "--learning-rate", "0.01", "--batch-size", "8", cwd=work,
    )  # fmt: skip
    distill(
        "eval", *engine, *POWER, "--prompts", str(prompts), "--adapter", str(adapter),
        "--report", str(report), cwd=work,
    )  # fmt: skip
    return work


def test_teacher_answers_are_power_samples_with_reports(pipeline: Path) -> None:
    records = list(read_jsonl(pipeline / "teacher.jsonl"))
    # Two answers to each of the 24 training prompts, each with a seed of its own.
    assert sorted(r["id"] for r in records) == sorted(f"p{i}/{k}" for i in range(24) for k in (0, 1))
    # The same prompt under the same seed would give the same answer: the copies' answers differ.
    answers = {r["id"]: tuple(r["token_ids"]) for r in records}
    assert any(answers[f"p{i}/0"] != answers[f"p{i}/1"] for i in range(24))
    for record in records:
        assert record["route"] == "tiny-power"
        assert record["prompt_ids"] == list(TINY_PROMPT)
        assert 1 <= len(record["token_ids"]) <= 3
        assert record["power"]["proposals"] == 3 * 20
        assert record["self_reward"]["sum_logprob"] <= 0


def test_training_writes_an_adapter_with_its_config_and_loss_curve(pipeline: Path) -> None:
    adapter = pipeline / "adapter"
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["r"] == 8 and set(config["target_modules"]) == {"q_proj", "k_proj", "v_proj", "o_proj"}
    assert (adapter / "adapter_model.safetensors").stat().st_size > 0
    training = json.loads((adapter / "training.json").read_text())
    assert training["steps"] == 40 and len(training["loss"]) == 40 and training["examples"] == 48
    assert sum(training["loss"][-10:]) < sum(training["loss"][:10])  # it learned something
    assert (adapter / "loss.png").read_bytes()[:4] == b"\x89PNG"


def test_distilled_model_moves_toward_the_power_route(pipeline: Path) -> None:
    report = json.loads((pipeline / "eval" / "eval.json").read_text())
    routes = report["summary"]["routes"]
    assert list(routes) == [
        "base",
        "base-low-temperature",
        "power",
        "distilled",
        "distilled-low-temperature",
    ]  # fmt: skip  (an MH teacher: no second power row)
    assert all(row["answers"] == 32 for row in routes.values())
    assert (
        routes["base-low-temperature"]["self_reward_per_token"] > routes["base"]["self_reward_per_token"]
    )
    base, power, distilled = (routes[r]["self_reward_per_token"] for r in ("base", "power", "distilled"))
    assert power > base + 0.1  # on this toy power sampling shifts the distribution a lot ...
    assert distilled > base + 0.5 * (power - base)  # ... and the distilled model follows
    assert routes["power"]["cost_per_returned_token"] > 10
    assert routes["distilled"]["cost_per_returned_token"] == pytest.approx(1.0)
    assert "| distilled |" in (pipeline / "eval" / "eval.md").read_text()
    assert (pipeline / "eval" / "eval.png").read_bytes()[:4] == b"\x89PNG"
