"""``powerserve distill ...``: the pipeline's stages as commands (each also a pydantic-settings model,
holding the settings groups it uses: generate and eval run the service without HTTP, so they take the
model, engine, workers, request, power and cache groups (--model, --max-model-len, ...); train takes
the model group alone).

    powerserve distill generate --limit 192     teacher answers   -> runs/distill/teacher.jsonl
    powerserve distill train                    LoRA fine-tuning  -> runs/distill/adapter/
    powerserve distill eval --adapter DIR       held-out comparison -> runs/distill/eval/
    powerserve distill all                      the three in a row
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, CliApp, CliSubCommand

from service.config import (
    CacheSettings,
    EngineSettings,
    LoRASettings,
    ModelSettings,
    PowerSettings,
    RequestSettings,
    Settings,
    WorkerPoolSettings,
)
from service.distill.data import DEFAULT_PROMPTS, read_prompts
from service.distill.evaluate import evaluate, summarise, write_report
from service.distill.teacher import PowerParams, generate_teacher, pending, teacher_items
from service.distill.train import MLP_MODULES, TrainConfig, train_adapter
from service.engines.base import LORA_TARGET_MODULES
from service.runtime import resolve_model_dir, running_services

__all__ = ["All", "Distill", "Eval", "Generate", "Train"]

logger = logging.getLogger(__name__)

RUNS = Path("runs") / "distill"


# The groups the service without HTTP reads (service/runtime.py running_services: the engine, the
# request path, the response cache), last to first as in Settings.
class _Stage(
    CacheSettings,
    PowerSettings,
    RequestSettings,
    WorkerPoolSettings,
    LoRASettings,
    EngineSettings,
    ModelSettings,
):
    prompts: Path = Field(DEFAULT_PROMPTS, description="Prompt set (JSONL).")
    limit: int | None = Field(None, ge=1, description="Use only the first N prompts of the split.")
    alpha: float = Field(4.0, ge=1, description="Power of the teacher (and of the eval's power route).")
    answer_tokens: int = Field(64, ge=1, description="max_tokens of every answer.")
    block_size: int = Field(16, ge=1, description="Power route block size.")
    mcmc_steps: int = Field(
        4, ge=0, description="MH steps per block (--power-method mh, and the eval's MH row)."
    )
    concurrency: int = Field(8, ge=1, description="Prompts in flight at once (the engine batches them).")
    seed: int = 0

    @property
    def power(self) -> PowerParams:
        return PowerParams(
            alpha=self.alpha,
            max_tokens=self.answer_tokens,
            block_size=self.block_size,
            method=self.power_method,
            mcmc_steps=self.mcmc_steps,
            particles=self.power_particles,
        )


class Generate(_Stage):
    """Stage 1: teacher answers from the power route (resumable)."""

    split: str = "train"
    teacher: Path = Field(RUNS / "teacher.jsonl", description="Output JSONL (appended to, resumable).")
    answers_per_prompt: int = Field(1, ge=1, le=64, description="Teacher answers to each prompt.")

    def cli_cmd(self) -> None:
        asyncio.run(self.generate_answers())

    async def generate_answers(self) -> None:
        items = read_prompts(self.prompts, self.split, self.limit)
        if not pending(teacher_items(items, self.answers_per_prompt), self.teacher):
            logger.info("%s already answers every prompt", self.teacher)
            return
        async with running_services(Settings.from_command(self)) as services:
            written = await generate_teacher(
                services,
                items,
                self.teacher,
                power=self.power,
                concurrency=self.concurrency,
                seed=self.seed,
                answers_per_prompt=self.answers_per_prompt,
            )
        logger.info("%d teacher answers written to %s", written, self.teacher)


class Train(ModelSettings):
    """Stage 2: LoRA fine-tuning of the base model on the teacher answers."""

    teacher: Path = RUNS / "teacher.jsonl"
    adapter: Path = Field(RUNS / "adapter", description="Output adapter directory.")
    rank: int = 8
    mlp: bool = Field(False, description="Adapt the MLP projections too, not only attention's.")
    epochs: int = 3
    learning_rate: float = 3e-4
    batch_size: int = 8
    max_steps: int | None = None
    train_seed: int = 0

    def cli_cmd(self) -> None:
        self.train_adapter()

    def train_adapter(self) -> None:
        config = TrainConfig(
            rank=self.rank,
            target_modules=LORA_TARGET_MODULES + (MLP_MODULES if self.mlp else ()),
            lora_alpha=2 * self.rank,
            epochs=self.epochs,
            learning_rate=self.learning_rate,
            batch_size=self.batch_size,
            max_steps=self.max_steps,
            seed=self.train_seed,
        )
        model_dir = resolve_model_dir(Settings.from_command(self))
        train_adapter(model_dir, self.teacher, self.adapter, config)


class Eval(_Stage):
    """Stage 3: the distilled model against plain sampling (at temperature 1 and 1/alpha) and the
    power route, on the held-out prompts (problem families never trained on)."""

    split: str = "heldout"
    compare_mh: bool = Field(
        True, description="With an SMC power route, also evaluate MH (--mcmc-steps) as a row."
    )
    adapter: Path = Field(RUNS / "adapter", description="The distilled adapter to evaluate.")
    report: Path = Field(RUNS / "eval", description="Output directory: eval.json, eval.md, eval.png.")

    def cli_cmd(self) -> None:
        asyncio.run(self.evaluate_routes())

    async def evaluate_routes(self) -> None:
        items = read_prompts(self.prompts, self.split, self.limit)
        settings = Settings.from_command(self, distilled_adapter=self.adapter)
        async with running_services(settings) as services:
            records = await evaluate(
                services,
                items,
                power=self.power,
                concurrency=self.concurrency,
                seed=self.seed + 1,
                compare_mh=self.compare_mh,
            )
        summary = summarise(records)
        families = sorted({item.family for item in items if item.family})
        sampler = (
            f"{self.power_particles} SMC particles"
            if self.power_method == "smc"
            else f"{self.mcmc_steps} MH steps"
        )
        meta = {
            "prompts": len(items),
            "prompt_file": str(self.prompts),
            "families": f" of {len(families)} families never trained on" if families else "",
            "adapter": str(self.adapter),
            "power": f"alpha {self.alpha:g}, {sampler}, blocks of {self.block_size}, "
            f"max_tokens {self.answer_tokens}",
        }
        write_report(self.report, summary, records, meta)
        print((self.report / "eval.md").read_text())  # noqa: T201 - the command's output


class All(Generate, Eval, Train):
    """generate, train and eval in a row: teacher answers for the train split (``--limit``), the
    evaluation on the held-out split (``--eval-limit``)."""

    eval_limit: int | None = Field(None, ge=1, description="Evaluate on the first N held-out prompts.")

    def cli_cmd(self) -> None:
        asyncio.run(self.model_copy(update={"split": "train"}).generate_answers())
        self.train_adapter()
        evaluation = self.model_copy(update={"split": "heldout", "limit": self.eval_limit})
        asyncio.run(evaluation.evaluate_routes())


class Distill(BaseSettings, cli_kebab_case=True):
    """Power self-distillation pipeline."""

    generate: CliSubCommand[Generate] = Field(description="teacher answers from the power route")
    train: CliSubCommand[Train] = Field(description="LoRA fine-tuning on the teacher answers")
    eval: CliSubCommand[Eval] = Field(description="base vs power vs distilled on held-out prompts")
    all: CliSubCommand[All] = Field(description="generate, train and eval in a row")

    def cli_cmd(self) -> None:
        CliApp.run_subcommand(self)
