"""The HTTP API: OpenAI protocol over the router. Knows nothing of MCMC, vLLM or Redis."""

from service.api.app import create_app

__all__ = ["create_app"]
