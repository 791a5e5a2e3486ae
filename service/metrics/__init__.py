"""Prometheus metrics of the service: ``registry.py`` declares them (``workers.py`` the remote
workers', read at scrape time); they change only through ``record``."""

from service.metrics import record
from service.metrics.registry import REGISTRY, prime, render_latest, watch_engine
from service.metrics.workers import register_worker_pool

__all__ = ["REGISTRY", "prime", "record", "register_worker_pool", "render_latest", "watch_engine"]
