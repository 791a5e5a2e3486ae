"""The local engine: vLLM's ``AsyncLLM`` inside the gateway process (its engine core in a child).

Prompts go in as token ids (``TokensPrompt``), never re-tokenised text, and every sampled token comes
back with its raw log-probability (vLLM's default ``raw_logprobs`` mode: before temperature, top-p
and penalties), which is what the power sampler and the self-reward need.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from service.engines.base import (
    Constraint,
    Engine,
    EngineInfo,
    Generated,
    SamplingOptions,
    current_priority,
    new_request_id,
    structured_outputs_fields,
)
from service.errors import EngineError, EngineUnavailableError, InvalidRequestError
from service.model_store import eos_token_ids

__all__ = ["LocalEngine", "adapter_lora_settings", "platform_arguments", "vllm_environment"]

logger = logging.getLogger(__name__)


def vllm_environment(*, kv_cache_gib: int) -> dict[str, str]:
    """Environment vLLM needs on this kind of machine; values already set by the user win.

    Loopback for its internal sockets, no usage reports, no model hub, both cores for the CPU
    kernels (vLLM reserves one for the frontend by default, which halves decode speed on 2 cores).
    """
    defaults = {
        "VLLM_HOST_IP": "127.0.0.1",
        "VLLM_NO_USAGE_STATS": "1",
        "VLLM_DO_NOT_TRACK": "1",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "VLLM_CPU_KVCACHE_SPACE": str(kv_cache_gib),
        "VLLM_CPU_NUM_OF_RESERVED_CPU": "0",
        "VLLM_LOGGING_LEVEL": "WARNING",
    }
    return {key: os.environ.get(key, value) for key, value in defaults.items()}


class LocalEngine(Engine):
    """``AsyncLLM`` on a local model directory, optionally with LoRA adapters ({name: directory})."""

    def __init__(
        self,
        engine_args: Mapping[str, Any],
        *,
        model_id: str,
        adapters: Mapping[str, Path] | None = None,
        kv_cache_gib: int = 2,
    ):
        """``engine_args``: vLLM ``EngineArgs`` fields (``runtime.engine_arguments``), LoRA enabled
        for ``adapters`` when there are any."""
        self.model_dir = Path(engine_args["model"])
        self.adapters = dict(adapters or {})
        self._model_id = model_id
        self._engine_kwargs = dict(engine_args)
        self._kv_cache_gib = kv_cache_gib
        self._llm: Any = None  # vllm AsyncLLM, imported lazily: only engines/ touches vLLM
        self._lora_requests: dict[str, Any] = {}
        self._starting = False
        self._priority_scheduling = engine_args.get("scheduling_policy") == "priority"

    # --- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        os.environ.update(vllm_environment(kv_cache_gib=self._kv_cache_gib))
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.lora.request import LoRARequest
        from vllm.v1.engine.async_llm import AsyncLLM

        self._starting = True
        began = time.monotonic()
        try:
            args = AsyncEngineArgs(**self._engine_kwargs)
            # Building the engine blocks for tens of seconds (model load, KV-cache set-up); a
            # thread keeps the event loop answering /health with 503 meanwhile.
            self._llm = await asyncio.to_thread(AsyncLLM.from_engine_args, args)
        finally:
            self._starting = False
        self._lora_requests = {
            name: LoRARequest(lora_name=name, lora_int_id=i + 1, lora_path=str(path))
            for i, (name, path) in enumerate(self.adapters.items())
        }
        model_config = self._llm.vllm_config.model_config
        self.info = EngineInfo(
            model_id=self._model_id,
            max_model_len=model_config.max_model_len,
            vocab_size=model_config.get_vocab_size(),
            eos_token_ids=eos_token_ids(self.model_dir, self._llm.get_tokenizer().eos_token_id),
            adapters=tuple(self.adapters),
        )
        logger.info(
            "engine ready in %.1f s: %s (context %d, vocabulary %d, adapters %s)",
            time.monotonic() - began,
            self.model_dir,
            self.info.max_model_len,
            self.info.vocab_size,
            list(self.adapters) or "none",
        )

    @property
    def adds_adapters(self) -> bool:
        return bool(self._engine_kwargs.get("enable_lora"))

    async def add_adapter(self, name: str, path: Path) -> None:
        from vllm.lora.request import LoRARequest

        if not self.adds_adapters:
            await super().add_adapter(name, path)
        if name in self._lora_requests:
            return
        # Ids are the engine's keys for its adapter slots: one per name, never reused.
        lora = LoRARequest(lora_name=name, lora_int_id=len(self._lora_requests) + 1, lora_path=str(path))
        if not await self._llm.add_lora(lora):  # loads it now: a broken adapter fails here
            raise EngineError(f"The engine could not load the adapter in {path}.")
        self._lora_requests[name] = lora
        self.adapters[name] = Path(path)
        self.info = replace(self.info, adapters=(*self.info.adapters, name))
        logger.info("serving adapter %s from %s", name, path)

    async def close(self) -> None:
        if self._llm is not None:
            self._llm.shutdown()
            self._llm = None

    async def check_health(self) -> None:
        if self._llm is None:
            if self._starting:
                raise EngineUnavailableError("The engine is starting.", retry_after=5)
            raise EngineUnavailableError("The engine is not running.")
        if self._llm.errored:
            raise EngineUnavailableError("The engine has died; the service needs a restart.")

    def num_running_requests(self) -> int:
        if self._llm is None:
            return 0
        return int(self._llm.output_processor.get_num_unfinished_requests())

    # --- generation ----------------------------------------------------------------------------

    async def generate(
        self,
        prompt_ids: Sequence[int],
        options: SamplingOptions,
        *,
        request_id: str | None = None,
        stream: bool = False,
        affinity: str | None = None,  # one engine: every request shares its prefix cache
    ) -> AsyncIterator[Generated]:
        from vllm import SamplingParams, TokensPrompt
        from vllm.sampling_params import RequestOutputKind

        await self.check_health()
        options = self.within_vocabulary(options)
        params = SamplingParams(
            n=1,
            structured_outputs=_structured_outputs(options.constraint),
            logit_bias=dict(options.logit_bias) or None,
            max_tokens=options.max_tokens,
            temperature=options.temperature,
            top_p=options.top_p,
            top_k=0,
            min_p=0.0,
            presence_penalty=options.presence_penalty,
            frequency_penalty=options.frequency_penalty,
            repetition_penalty=1.0,
            stop=list(options.stop) or None,
            seed=options.seed,
            logprobs=options.top_logprobs,
            flat_logprobs=True,
            detokenize=options.detokenize,
            output_kind=RequestOutputKind.DELTA if stream else RequestOutputKind.FINAL_ONLY,
        )
        async for output in self._run(
            TokensPrompt(prompt_token_ids=list(prompt_ids)),
            params,
            request_id or new_request_id(),
            options.adapter,
        ):
            completion = output.outputs[0]
            yield _to_generated(completion, with_top=options.top_logprobs > 0)

    async def score(
        self, token_ids: Sequence[int], start: int, *, adapter: str | None = None
    ) -> list[float]:
        from vllm import SamplingParams, TokensPrompt
        from vllm.sampling_params import RequestOutputKind

        await self.check_health()
        params = SamplingParams(
            max_tokens=1,
            temperature=0.0,
            prompt_logprobs=0,
            flat_logprobs=True,
            detokenize=False,
            output_kind=RequestOutputKind.FINAL_ONLY,
        )
        final = None
        async for output in self._run(
            TokensPrompt(prompt_token_ids=list(token_ids)), params, new_request_id("score"), adapter
        ):
            final = output
        if final is None or final.prompt_logprobs is None:
            raise EngineError("The engine returned no prompt log-probs.")
        flat = final.prompt_logprobs
        # Position t holds log p(token_ids[t] | token_ids[:t]) first; position 0 has none.
        return [flat.logprobs[flat.start_indices[t]] for t in range(max(start, 1), len(token_ids))]

    async def _run(
        self, prompt: Any, params: Any, request_id: str, adapter: str | None
    ) -> AsyncIterator[Any]:
        """vLLM's generate, with its exceptions mapped onto the service's."""
        from vllm.exceptions import VLLMValidationError
        from vllm.v1.engine.exceptions import EngineDeadError, EngineGenerateError

        lora = None
        if adapter is not None:
            if adapter not in self._lora_requests:  # routes only name adapters the engine has
                raise EngineError(f"The engine has no adapter {adapter!r}.")
            lora = self._lora_requests[adapter]
        try:
            # Cancellation (client gone) propagates into AsyncLLM.generate, which aborts the request.
            # The priority (batch work yields) counts only under scheduling_policy="priority".
            priority = current_priority() if self._priority_scheduling else 0
            async for output in self._llm.generate(
                prompt, params, request_id, lora_request=lora, priority=priority
            ):
                yield output
        except EngineDeadError as exc:
            raise EngineUnavailableError("The engine has died; the service needs a restart.") from exc
        except VLLMValidationError as exc:  # input vLLM refuses: the client's to fix
            raise InvalidRequestError(str(exc), param=exc.parameter) from exc
        except EngineGenerateError as exc:
            raise EngineError(f"The engine failed on this request: {exc.__cause__ or exc}") from exc


def _structured_outputs(constraint: Constraint | None) -> Any:
    from vllm.sampling_params import StructuredOutputsParams

    if constraint is None:
        return None
    return StructuredOutputsParams(**structured_outputs_fields(constraint))


def _to_generated(completion: Any, *, with_top: bool) -> Generated:
    flat = completion.logprobs
    token_ids = list(completion.token_ids)
    starts, ends = flat.start_indices, flat.end_indices
    # FlatLogprobs keeps, per position, the sampled token first and then the top-k.
    logprobs = [flat.logprobs[starts[t]] for t in range(len(token_ids))]
    top: list[dict[int, float]] = []
    if with_top:
        top = [
            dict(
                zip(
                    flat.token_ids[starts[t] : ends[t]], flat.logprobs[starts[t] : ends[t]], strict=False
                )
            )
            for t in range(len(token_ids))
        ]
    return Generated(
        token_ids=token_ids,
        logprobs=logprobs,
        top_logprobs=top,
        text=completion.text or "",
        finish_reason=completion.finish_reason,
    )


def platform_arguments(max_model_len: int) -> dict[str, Any]:
    """Engine arguments this vLLM build needs. The CPU build (``vllm-cpu``) kills its engine core
    with "CPU Generator does not use offset" when a seeded request's prefill is split over steps
    (chunked prefill rewinds the request's generator, which CPU generators cannot do); every MCMC
    proposal and SMC particle of a seeded power request is seeded, and a busy engine splits
    prefills. So on CPU, prefills are never split, and one step holds a whole prompt."""
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        distribution("vllm-cpu")
    except PackageNotFoundError:
        return {}
    return {"enable_chunked_prefill": False, "max_num_batched_tokens": max(max_model_len, 2048)}


def adapter_lora_settings(
    adapter_dirs: list[Path], *, min_rank: int = 0, modules: Sequence[str] = ()
) -> dict[str, Any]:
    """vLLM's LoRA settings for serving these peft adapters, and adapters of up to ``min_rank`` on
    ``modules`` added later."""
    configs = [json.loads((Path(d) / "adapter_config.json").read_text()) for d in adapter_dirs]
    rank = max([min_rank, *(int(c.get("r", 8)) for c in configs)])
    return {
        # vLLM sizes LoRA buffers for a fixed set of ranks: the smallest one that fits.
        "max_lora_rank": next(r for r in (8, 16, 32, 64, 128, 256, 320, 512) if r >= rank),
        # Wrap only the layers the adapters train. Without this vLLM also wraps the lm_head, whose
        # LoRA path breaks prompt log-probs (the self-reward's scoring pass) on CPU.
        "lora_target_modules": sorted({*modules, *(m for c in configs for m in c["target_modules"])}),
    }
