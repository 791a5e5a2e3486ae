"""Prometheus metrics of the service: declared in ``registry.py``, changed only through ``record``."""

from service.metrics import record
from service.metrics.registry import REGISTRY, prime, render_latest, watch_engine

__all__ = ["REGISTRY", "prime", "record", "render_latest", "watch_engine"]
