"""Stage 2, ``train``: supervised fine-tuning of the base model on its own power samples (LoRA).

Power self-distillation (Tomihari & Sato, arXiv 2605.04542, sec. 5): p(y | x) ** alpha is the optimum
of KL-regularised RL with the model's log-likelihood as reward, and fitting the base model to samples
of it amortises the sampler's cost into training. Each example is the chat-templated prompt followed
by the teacher's answer, as the very token ids the engine produced (nothing is re-tokenised); the
loss covers the answer tokens only. The adapter (peft LoRA) is what vLLM serves as ``<model>-distilled``.

Writes ``out/``: the adapter (adapter_config.json, adapter_model.safetensors), ``training.json``
(configuration, data, loss per step, timing) and ``loss.png``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from service.distill.data import read_jsonl
from service.engines.base import LORA_TARGET_MODULES
from service.plotting import saved_figure

__all__ = ["MLP_MODULES", "TrainConfig", "main", "train_adapter"]

logger = logging.getLogger(__name__)

MLP_MODULES = ("gate_proj", "up_proj", "down_proj")  # Llama's MLP, beside the attention projections


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    rank: int = 8  # LoRA rank: 8 on the attention projections is ~1M parameters (a few MB)
    lora_alpha: int = 16
    dropout: float = 0.0
    target_modules: tuple[str, ...] = LORA_TARGET_MODULES
    learning_rate: float = 3e-4
    epochs: int = 3
    batch_size: int = 8
    max_steps: int | None = None  # overrides epochs when set
    warmup_steps: int = 5
    grad_clip: float = 1.0
    seed: int = 0


def _examples(teacher: Path) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, answer ids) of every teacher record with an answer."""
    examples = []
    for record in read_jsonl(teacher):
        if record.get("token_ids"):
            examples.append((list(record["prompt_ids"]), list(record["token_ids"])))
    if not examples:
        raise ValueError(f"{teacher} holds no teacher answers")
    return examples


def _batch(examples: list[tuple[list[int], list[int]]], pad_id: int) -> dict[str, Any]:
    import torch

    length = max(len(p) + len(a) for p, a in examples)
    ids, labels, mask = [], [], []
    for prompt, answer in examples:
        sequence = prompt + answer
        pad = length - len(sequence)
        ids.append(sequence + [pad_id] * pad)
        # -100: no loss on the prompt nor the padding, only on the teacher's answer.
        labels.append([-100] * len(prompt) + answer + [-100] * pad)
        mask.append([1] * len(sequence) + [0] * pad)
    return {
        "input_ids": torch.tensor(ids),
        "labels": torch.tensor(labels),
        "attention_mask": torch.tensor(mask),
    }


def train_adapter(
    model_dir: Path,
    teacher: Path,
    out: Path,
    config: TrainConfig,
    *,
    on_step: Callable[[int, int, float], None] | None = None,
) -> dict[str, Any]:
    """Train, write the adapter and its summary to ``out``, return the summary. ``on_step(step,
    steps, loss)`` sees each optimiser step."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    random.seed(config.seed)
    torch.manual_seed(config.seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    examples = _examples(teacher)
    base = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    base = base.to(device)  # type: ignore[arg-type]
    pad_id = base.config.pad_token_id if base.config.pad_token_id is not None else 0
    model = get_peft_model(
        base,
        LoraConfig(
            r=config.rank,
            lora_alpha=config.lora_alpha,
            lora_dropout=config.dropout,
            target_modules=list(config.target_modules),
            task_type="CAUSAL_LM",
        ),
    )
    steps_per_epoch = math.ceil(len(examples) / config.batch_size)
    total_steps = config.max_steps or steps_per_epoch * config.epochs
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=config.learning_rate
    )
    # Linear warm-up, then linear decay to zero.
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: min((step + 1) / max(config.warmup_steps, 1), (total_steps - step) / total_steps),
    )
    logger.info(
        "training a rank-%d LoRA on %d answers, %d steps, on %s",
        config.rank,
        len(examples),
        total_steps,
        device,
    )
    model.train()
    losses: list[float] = []
    began = time.monotonic()
    order: list[int] = []
    for _ in tqdm(range(total_steps), desc="LoRA steps", unit="step"):
        if len(order) < config.batch_size:
            order += random.sample(range(len(examples)), len(examples))  # reshuffle each epoch
        chosen, order = order[: config.batch_size], order[config.batch_size :]
        batch = {k: v.to(device) for k, v in _batch([examples[i] for i in chosen], pad_id).items()}
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        losses.append(loss.detach().item())
        if on_step is not None:
            on_step(len(losses), total_steps, losses[-1])

    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out))
    (out / "README.md").unlink(missing_ok=True)  # peft's model-card template; training.json says it all
    summary = {
        "base_model": str(model_dir),
        # Tokens of the examples drawn: steps x batch, each example's prompt and answer.
        "trained_tokens": sum(len(p) + len(a) for p, a in examples)
        * (total_steps * config.batch_size)
        // len(examples),
        "teacher": str(teacher),
        "teacher_sha256": hashlib.sha256(teacher.read_bytes()).hexdigest(),
        "examples": len(examples),
        "steps": total_steps,
        "device": device,
        "seconds": round(time.monotonic() - began, 1),
        "config": asdict(config),
        "loss": losses,
    }
    (out / "training.json").write_text(json.dumps(summary, indent=2))
    _plot_loss(losses, out / "loss.png")
    logger.info("adapter written to %s (loss %.3f -> %.3f)", out, losses[0], losses[-1])
    return summary


def _plot_loss(losses: list[float], path: Path) -> None:
    with saved_figure(path, dpi=120, figsize=(6, 3.5)) as (_, axis):
        axis.plot(range(1, len(losses) + 1), losses, linewidth=1)
        axis.set_xlabel("step")
        axis.set_ylabel("loss on teacher answers (nats/token)")
        axis.set_title("power self-distillation")
        axis.grid(alpha=0.3)


def main() -> None:
    """``python -m service.distill.train MODEL_DIR TEACHER OUT CONFIG_JSON``: a training run in a
    process of its own (a fine-tuning job's), each step reported on stdout as a JSON line."""
    import sys

    model_dir, teacher, out, config = sys.argv[1:5]
    fields = json.loads(config)
    fields["target_modules"] = tuple(fields.get("target_modules", LORA_TARGET_MODULES))

    def report(step: int, steps: int, loss: float) -> None:
        print(json.dumps({"step": step, "steps": steps, "train_loss": loss}), flush=True)  # noqa: T201

    summary = train_adapter(
        Path(model_dir), Path(teacher), Path(out), TrainConfig(**fields), on_step=report
    )
    print(json.dumps({"done": True, "trained_tokens": summary["trained_tokens"]}), flush=True)  # noqa: T201


if __name__ == "__main__":
    main()
