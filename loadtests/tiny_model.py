"""Build tiny Llama checkpoints whose every answer can be enumerated.

A vocabulary of four tokens (three words and an end-of-sequence token) and two layers: small enough that
vLLM loads it in seconds and that the exact distribution over all answers of a short horizon can be
computed by brute force (``ExactModel``), which the exactness tests compare samples with. The tests'
fixtures and the benchmarks' smoke runs (``run_load --tiny``, ``guidellm_sweep --tiny``,
``bench_admission``) build it from here.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

__all__ = [
    "CHAT_TEMPLATE",
    "EOS",
    "EOS_ID",
    "SHARP_PROMPT",
    "SHARP_SEED",
    "SHARP_WEIGHT_SCALE",
    "VOCAB",
    "WORDS",
    "ExactModel",
    "answers",
    "build_tiny_model",
]

WORDS = ("a", "b", "c")
EOS = "</s>"
VOCAB = {word: i for i, word in enumerate(WORDS)} | {EOS: len(WORDS)}
EOS_ID = VOCAB[EOS]

CHAT_TEMPLATE = "{% for message in messages %}{{ message['content'] }} {% endfor %}"

# The model of the exactness tests (tests/conftest.py) and of the fidelity benchmark: seed and weight
# scale chosen so that p**4 and temperature-1/4 sampling differ a lot (total variation 0.46 at a
# horizon of 3 tokens; tests/test_tiny_model.py checks that it still does), asked "a b".
SHARP_SEED = 1
SHARP_WEIGHT_SCALE = 20.0
SHARP_PROMPT = (0, 1)


def build_tiny_model(out_dir: Path, *, seed: int = 0, weight_scale: float = 1.0) -> Path:
    """Write a randomly initialised 2-layer Llama with the 4-token vocabulary to ``out_dir``.

    ``weight_scale`` multiplies the initialisation std: larger weights give peakier next-token
    distributions, where sampling p**alpha and sampling at temperature 1/alpha differ markedly.
    """
    out_dir = Path(out_dir)
    config = LlamaConfig(
        vocab_size=len(VOCAB),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,  # head_dim 32: the CPU attention kernels reject 16
        num_key_value_heads=2,
        max_position_embeddings=128,
        bos_token_id=VOCAB["a"],
        eos_token_id=EOS_ID,
        pad_token_id=EOS_ID,
        tie_word_embeddings=False,
        initializer_range=0.02 * weight_scale,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).to(torch.float32)
    model.save_pretrained(out_dir)

    backend = Tokenizer(models.WordLevel(vocab=VOCAB, unk_token=EOS))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token=EOS, pad_token=EOS, unk_token=EOS
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(out_dir)
    (out_dir / "generation_config.json").write_text(
        json.dumps({"eos_token_id": EOS_ID, "pad_token_id": EOS_ID})
    )
    return out_dir


def answers(horizon: int, absorbing: frozenset[int] = frozenset({EOS_ID})) -> list[tuple[int, ...]]:
    """Every answer of at most ``horizon`` tokens: ended by an absorbing token (EOS, or a stop word
    too), or cut by the horizon."""
    out: list[tuple[int, ...]] = []
    frontier: list[tuple[int, ...]] = [()]
    for _ in range(horizon):
        grown = []
        for prefix in frontier:
            out.extend((*prefix, t) for t in sorted(absorbing))
            grown.extend((*prefix, t) for t in VOCAB.values() if t not in absorbing)
        frontier = grown
    return out + frontier


class ExactModel:
    """Next-token log-probs of a checkpoint for every prefix, computed once with transformers."""

    def __init__(self, model_dir: Path, prompt: tuple[int, ...]):
        self.model = LlamaForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
        self.prompt = tuple(prompt)
        self._cache: dict[tuple[int, ...], torch.Tensor] = {}

    def next_logprobs(self, prefix: tuple[int, ...]) -> torch.Tensor:
        if prefix not in self._cache:
            ids = torch.tensor([self.prompt + prefix])
            with torch.no_grad():
                logits = self.model(ids).logits[0, -1].double()
            self._cache[prefix] = torch.log_softmax(logits, dim=-1)
        return self._cache[prefix]

    def answer_logprob(self, answer: tuple[int, ...], temperature: float = 1.0) -> float:
        """log of the chance that sampling at ``temperature`` token by token produces ``answer``."""
        total = 0.0
        for t, token in enumerate(answer):
            logp = self.next_logprobs(answer[:t])
            total += float(torch.log_softmax(logp / temperature, dim=-1)[token])
        return total

    def power_distribution(
        self, horizon: int, alpha: float, absorbing: frozenset[int] = frozenset({EOS_ID})
    ) -> dict[tuple[int, ...], float]:
        """pi_alpha(y) ∝ p(y)**alpha over all answers of the horizon."""
        logw = {y: alpha * self.answer_logprob(y) for y in answers(horizon, absorbing)}
        return _normalise(logw)

    def tempered_distribution(self, horizon: int, temperature: float) -> dict[tuple[int, ...], float]:
        """The law of plain token-by-token sampling at ``temperature``."""
        return _normalise({y: self.answer_logprob(y, temperature) for y in answers(horizon)})


def _normalise(logw: dict[tuple[int, ...], float]) -> dict[tuple[int, ...], float]:
    top = max(logw.values())
    weights = {y: float(torch.exp(torch.tensor(v - top))) for y, v in logw.items()}
    total = sum(weights.values())
    return {y: w / total for y, w in weights.items()}
