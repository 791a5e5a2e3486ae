"""The reference algorithm, implemented the straightforward way: for the benchmark's baseline.

Karan & Du's Algorithm 1 (with the same fixes as service/power/mh.py, so that both compute the
same thing) on Hugging Face ``generate``: one chain at a time, every proposal a fresh ``generate``
call that re-reads its whole prefix, as the paper's code runs. Only the engine differs.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

__all__ = ["ReferenceResult", "ReferenceSampler"]


@dataclass
class ReferenceResult:
    token_ids: list[int]
    tokens_generated: int
    proposals: int
    accepted: int
    seconds: float


class ReferenceSampler:
    def __init__(self, model_dir: Path):
        self.tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        self.model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
        eos = self.model.generation_config.eos_token_id
        self.eos = set(eos if isinstance(eos, list) else [eos])

    @torch.no_grad()
    def _propose(
        self, prompt: list[int], prefix: list[int], max_new: int, alpha: float
    ) -> tuple[list[int], list[float]]:
        """Suffix from the base model at temperature 1/alpha, with zeta_t of each position."""
        input_ids = torch.tensor([prompt + prefix])
        out = self.model.generate(
            input_ids,
            attention_mask=torch.ones_like(input_ids),
            do_sample=True,
            temperature=1.0 / alpha,
            top_k=0,
            top_p=1.0,
            max_new_tokens=max_new,
            output_logits=True,
            return_dict_in_generate=True,
            eos_token_id=sorted(self.eos),
            pad_token_id=sorted(self.eos)[0],
        )
        tokens = out.sequences[0, input_ids.shape[1] :].tolist()
        zetas = []
        for step, logits in enumerate(out.logits[: len(tokens)]):
            logp = torch.log_softmax(logits[0].double(), dim=-1)
            zetas.append(float(torch.logsumexp(alpha * logp, dim=-1)))
            if tokens[step] in self.eos:
                tokens = tokens[: step + 1]
                break
        return tokens, zetas[: len(tokens)]

    def sample(
        self,
        prompt: list[int],
        *,
        alpha: float,
        max_tokens: int,
        block_size: int,
        mcmc_steps: int,
        seed: int,
    ) -> ReferenceResult:
        began = time.monotonic()
        rng = np.random.default_rng(seed)
        torch.manual_seed(seed)
        tokens: list[int] = []
        zetas: list[float] = []
        generated = proposals = accepted = 0
        for block in range(1, math.ceil(max_tokens / block_size) + 1):
            horizon = min(block * block_size, max_tokens)
            ended = bool(tokens) and tokens[-1] in self.eos
            if not ended and len(tokens) < horizon:
                grown, grown_zetas = self._propose(prompt, tokens, horizon - len(tokens), alpha)
                tokens, zetas = tokens + grown, zetas + grown_zetas
                generated += len(grown)
            for _ in range(mcmc_steps):
                cut = int(rng.integers(len(tokens)))
                suffix, suffix_zetas = self._propose(prompt, tokens[:cut], horizon - cut, alpha)
                generated += len(suffix)
                proposals += 1
                log_accept = (
                    sum(suffix_zetas)
                    - sum(zetas[cut:])
                    + math.log(len(tokens))
                    - math.log(cut + len(suffix))
                )
                if log_accept >= 0 or rng.random() < math.exp(log_accept):
                    tokens, zetas = tokens[:cut] + suffix, zetas[:cut] + suffix_zetas
                    accepted += 1
        return ReferenceResult(tokens, generated, proposals, accepted, time.monotonic() - began)
