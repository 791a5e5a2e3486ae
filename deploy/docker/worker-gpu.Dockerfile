# syntax=docker/dockerfile:1
#
# A powerserve vLLM worker on one NVIDIA GPU: `powerserve worker`, a stock vLLM OpenAI server with the
# gateway's engine settings, on vLLM's release image (CUDA, PyTorch and vLLM as vLLM ships them).
# The model directory is mounted (see docker-compose.yml and deploy/k8s). Build from the repository
# root:
#
#   docker build -f deploy/docker/worker-gpu.Dockerfile -t powerserve-worker-gpu .

FROM vllm/vllm-openai:v0.32.0

# The release image's Python is 3.12 while pyproject.toml declares 3.11 (the pinned CPU set was
# resolved there), hence --ignore-requires-python. The image's vllm already satisfies the gpu extra's
# vllm==0.32.0, so pip keeps it and resolves powerserve's other pins around it; the check after the
# install fails the build if it did not.
WORKDIR /opt/powerserve
COPY pyproject.toml README.md* ./
COPY service/ service/
# DL3013 (pin pip packages): the project's pins are in pyproject.toml.
# hadolint ignore=DL3013
RUN python3 -m pip install --no-cache-dir --ignore-requires-python ".[gpu]" \
    && python3 -c "import vllm; assert vllm.__version__.startswith('0.32.'), vllm.__version__"

RUN useradd --create-home --uid 10001 --user-group powerserve

# The gateway's defaults suit a CPU; on a GPU: the model's own dtype, CUDA graphs, and most of the
# GPU's memory (each worker owns one GPU).
ENV POWERSERVE_DTYPE=auto \
    POWERSERVE_ENFORCE_EAGER=false \
    POWERSERVE_GPU_MEMORY_UTILIZATION=0.9 \
    VLLM_NO_USAGE_STATS=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1

USER 10001:10001
WORKDIR /home/powerserve
EXPOSE 8001

# vLLM's /health: 200 once the model is loaded and CUDA graphs are captured (minutes on first start).
HEALTHCHECK --interval=10s --timeout=5s --start-period=600s --retries=3 \
    CMD ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8001/health', timeout=4)"]

# The release image's entrypoint is `vllm serve`; powerserve's worker command replaces it.
ENTRYPOINT []
CMD ["powerserve", "worker", "--host", "0.0.0.0", "--port", "8001", \
     "--model", "/var/cache/powerserve/models/smollm2-135m-instruct"]
