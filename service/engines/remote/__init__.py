"""The remote engine: the engine contract served by a pool of vLLM OpenAI servers.

engine.py   RemoteEngine: lifecycle, and the one failover loop of generate and score
pool.py     what is known of each worker; affinity, then least-loaded choice
health.py   the active health monitor, its backoff and the late-probe rule
client.py   aiohttp calls, SSE parsing, what a worker's HTTP error means
wire.py     request bodies and response translation (vLLM JSON, Prometheus text)
"""

from service.engines.remote.engine import RemoteEngine
from service.engines.remote.pool import WorkerSnapshot, WorkerState

__all__ = ["RemoteEngine", "WorkerSnapshot", "WorkerState"]
