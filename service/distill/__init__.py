"""Power self-distillation: teacher answers from the power route, LoRA fine-tuning, evaluation."""

from service.distill.data import DEFAULT_PROMPTS, PromptItem, answer_is_correct, read_prompts
from service.distill.evaluate import evaluate, summarise, write_report
from service.distill.teacher import PowerParams, generate_teacher
from service.distill.train import TrainConfig, train_adapter

__all__ = [
    "DEFAULT_PROMPTS",
    "PowerParams",
    "PromptItem",
    "TrainConfig",
    "answer_is_correct",
    "evaluate",
    "generate_teacher",
    "read_prompts",
    "summarise",
    "train_adapter",
    "write_report",
]
